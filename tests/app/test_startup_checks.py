"""`codecomplete serve` refuses at start-up what would make it answer every request with an error: a prompt budget
too small for the completion format's own tokens (each editor request was a 400)."""
import json
import os
import re
import signal
import socket
import subprocess
import time

import httpx
import pytest
from server_process import ServerProcess


def _refused(script, cli_env, served_repo, folder, *options: str) -> str:
    """The log of a server that must not start: it exits 2 with one error line."""
    folder.mkdir()
    with pytest.raises(RuntimeError, match="exited with 2") as refused:
        ServerProcess(script, served_repo, cli_env, folder, *options).stop()   # (started: not refused, fails)
    log = (folder / "server.log").read_text()
    errors = [line for line in log.splitlines() if line.startswith("codecomplete: error:")]
    assert len(errors) == 1 and "Traceback" not in log, log
    return errors[0]


def test_a_budget_too_small_for_the_completion_format_is_refused_at_start_up_naming_the_smallest(
        script, cli_env, served_repo, tmp_path):
    """`serve --context-tokens 1` started, then answered every editor request 400 (the budget cannot hold the
    format's own tokens). Now it exits 2 at start-up, naming the smallest budget that works; that budget serves an
    infill, one fewer is refused."""
    line = _refused(script, cli_env, served_repo, tmp_path / "one", "--context-tokens", "1", "--max-tokens", "8")
    assert "--context-tokens" in line and "format's own tokens" in line, line
    smallest = int(re.search(r"at least ([\d,]+)", line)[1].replace(",", ""))
    assert smallest > 1
    (tmp_path / "smallest").mkdir()
    server = ServerProcess(script, served_repo, cli_env, tmp_path / "smallest", "--context-tokens", str(smallest),
                           "--max-tokens", "8")
    try:
        assert server.info["prompt_budget"] == smallest
        answer = httpx.post(server.url + "/infill", json={"input_prefix": "def f():\n", "input_suffix": "",
                                                          "n_predict": 4}, timeout=120)
        assert answer.status_code == 200, answer.text
        assert answer.json()["tokens_evaluated"] <= smallest
    finally:
        assert server.stop() == 0, server.log()
    line = _refused(script, cli_env, served_repo, tmp_path / "fewer", "--context-tokens", str(smallest - 1),
                    "--max-tokens", "8")
    assert f"at least {smallest:,}" in line, line


def test_the_user_facing_switches_take_the_usual_words_for_off(script, cli_env, served_repo, tmp_path):
    """CODECOMPLETE_WARM_PROMPTS, _GC_FREEZE and _CPU_BF16 took only "0" as off: `=false`, `=no`, `=off` silently
    meant on. Now they take 0/false/no/off and 1/true/yes/on, in any case; the server's log and its announced
    engine say they were read as off."""
    from models.options import cpu_has_bf16_dots

    env = {**cli_env, "CODECOMPLETE_WARM_PROMPTS": "false", "CODECOMPLETE_GC_FREEZE": "No",
           "CODECOMPLETE_CPU_BF16": "OFF", "CODECOMPLETE_COMPILE": "off"}
    server = ServerProcess(script, served_repo, env, tmp_path, "--context-tokens", "64", "--max-tokens", "8")
    try:
        assert "the prompts of" not in server.log(), server.log()          # no prompts warmed
        if cpu_has_bf16_dots():     # (else float32 anyway)
            assert server.info["engine"]["matmul_dtype"] == server.info["engine"]["dtype"] == "float32"
    finally:
        assert server.stop() == 0, server.log()


@pytest.mark.parametrize("name, value", [("CODECOMPLETE_WARM_PROMPTS", "bogus"), ("CODECOMPLETE_GC_FREEZE", "2"),
                                         ("CODECOMPLETE_CPU_BF16", "disabled"), ("CODECOMPLETE_FUSED", "nope")])
def test_a_switch_of_another_value_is_refused_at_start_up(script, cli_env, served_repo, tmp_path, name, value):
    """Anything but those words is a usage error (exit 2, one line naming the variable), before the model loads:
    for `serve` and for the command line."""
    env = {**cli_env, name: value}
    line = _refused(script, env, served_repo, tmp_path / "serve", "--context-tokens", "64")
    assert name in line and repr(value) in line and "false" in line, line
    run = subprocess.run([str(script), "--prompt", "def f():", "--max-tokens", "1", "--no-server"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and run.stdout == "", run
    assert run.stderr.count("\n") == 1 and name in run.stderr, run.stderr


def test_switches_read_the_usual_words_and_are_written_back_for_the_layers_below(monkeypatch):
    """`on` reads each word in any case (empty as unset: on); `check_environment` writes every switch set back as
    "0" or "1", which models and kernels (`!= "0"`) read as meant, and refuses other values."""
    from codecomplete import switches
    from codecomplete.errors import UsageError

    for value, want in [("0", False), ("FALSE", False), (" no ", False), ("Off", False), ("1", True), ("True", True),
                        ("YES", True), ("on", True), ("", True)]:
        monkeypatch.setenv("CODECOMPLETE_WARM_PROMPTS", value)
        assert switches.on("CODECOMPLETE_WARM_PROMPTS") is want, value
    monkeypatch.delenv("CODECOMPLETE_WARM_PROMPTS")
    assert switches.on("CODECOMPLETE_WARM_PROMPTS") is True
    monkeypatch.setenv("CODECOMPLETE_COMPILE", "false")
    monkeypatch.setenv("CODECOMPLETE_PDL", "Yes")
    monkeypatch.setenv("CODECOMPLETE_FUSED", "")
    switches.check_environment()
    assert [os.environ[name] for name in ("CODECOMPLETE_COMPILE", "CODECOMPLETE_PDL", "CODECOMPLETE_FUSED")] == \
        ["0", "1", ""]
    monkeypatch.setenv("CODECOMPLETE_TUNED_PLANS", "nein")
    with pytest.raises(UsageError, match=r"^\$CODECOMPLETE_TUNED_PLANS is 'nein': it takes 0, false, no, off"):
        switches.check_environment()
    # every switch the lower layers read as `!= "0"` is one check_environment writes back
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    read = {name for package in ("models", "kernels") for source in (root / package).rglob("*.py")
            for name in re.findall(r'environ\.get\("(CODECOMPLETE_[A-Z0-9_]+)", "1"\) != "0"', source.read_text())}
    assert read and read <= set(switches.SWITCHES), read - set(switches.SWITCHES)


def test_a_server_starts_on_an_empty_folder_and_indexes_files_as_they_come(script, cli_env, tmp_path):
    """A new project (`mkdir proj && cd proj && codecomplete serve`, an editor opening its first file) exited 2,
    "nothing to index": a running server whose files all went answered on, and one that starts empty serves too,
    saying in its log that nothing is indexed yet, and a file added later is in the next request's prompt."""
    root = tmp_path / "proj"
    root.mkdir()
    (tmp_path / "server").mkdir()
    server = ServerProcess(script, root, cli_env, tmp_path / "server", "--context-tokens", "256", "--max-tokens", "8")
    try:
        assert "nothing to index in" in server.log() and "yet" in server.log(), server.log()
        assert "Traceback" not in server.log()
        answer = httpx.post(server.url + "/infill", json={"input_prefix": "def f():\n", "input_suffix": "",
                                                          "n_predict": 2}, timeout=120)
        assert answer.status_code == 200, answer.text
        (root / "helpers.py").write_text("def zebra_unique_helper(x):\n    return x + 1\n")
        # The command line through the server: its answer lists the context, the new file's definition in it.
        run = subprocess.run([str(script), str(root), "--file", "main.py", "--stdin", "--server", server.url,
                              "--context-tokens", "256", "--max-tokens", "2", "--json"],
                             input="from helpers import zebra_unique_helper\n\nprint(zebra_", capture_output=True,
                             text=True, env=cli_env, timeout=120)
        assert run.returncode == 0, run.stderr
        assert "helpers.py" in {item["path"] for item in json.loads(run.stdout)["context"]}, run.stdout
        chat = httpx.post(server.url + "/v1/chat/completions", json={"messages": [
            {"role": "user", "content": "What does zebra_unique_helper return?"}], "max_tokens": 2}, timeout=120)
        assert chat.status_code == 200, chat.text
    finally:
        assert server.stop() == 0, server.log()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_requests_while_the_model_loads_are_answered_503_loading_model(script, cli_env, served_repo, tmp_path):
    """The port is taken before the model loads (a taken port fails at once), but nothing answered on it until the
    server was ready: a client polling /health while it loaded (tens of seconds with a 7B model on a GPU) got no
    answer at all, its connection accepted by the kernel and left waiting. llama.cpp's server answers 503 "Loading
    model" then; so does this one, in each route's shape (Ollama's on /api/), and serves once ready."""
    port = _free_port()
    log = open(tmp_path / "server.log", "wb")
    process = subprocess.Popen([str(script), "serve", str(served_repo), "--port", str(port), "--context-tokens", "64",
                                "--max-tokens", "8"], env=cli_env, stdout=log, stderr=subprocess.STDOUT)
    seen: dict[int, list] = {}
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            except httpx.ConnectError:      # not listening yet
                time.sleep(0.05)
                continue
            except httpx.TimeoutException:  # listening, not answering (the defect)
                seen.setdefault(0, []).append(None)
                continue
            seen.setdefault(answer.status_code, []).append(answer)
            if answer.status_code == 200:
                break
            ollama = httpx.post(f"http://127.0.0.1:{port}/api/generate", json={"model": "m", "prompt": "x"},
                                timeout=5)
            if ollama.status_code == 503:
                seen.setdefault("ollama", []).append(ollama)
            time.sleep(0.05)
        assert 200 in seen, (seen, (tmp_path / "server.log").read_text())
        assert 0 not in seen, "a /health during the load went unanswered"
        loading = seen[503][0]
        assert loading.json() == {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
        assert loading.headers["retry-after"] == "1"
        assert seen["ollama"][0].json() == {"error": "Loading model"}
        served = httpx.post(f"http://127.0.0.1:{port}/completion", json={"prompt": "def f(", "n_predict": 2},
                            timeout=120)
        assert served.status_code == 200, served.text
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
        log.close()
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def test_the_command_line_says_a_server_is_still_loading():
    """`--server URL` while that server loads: "error: Loading model" alone, now what it means."""
    from codecomplete import client

    error = client._error("http://127.0.0.1:8012", 503, json.dumps(
        {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}).encode())
    assert str(error) == "the server at http://127.0.0.1:8012 is still loading its model: ask again once it serves"
    assert client._error("", 503, b'{"error": {"code": 503, "message": "busy", "type": "x"}}').args == ("busy",)


def test_the_kernels_files_and_folder_are_checked_at_start_up(monkeypatch, tmp_path, script, cli_env):
    """CODECOMPLETE_FUSED_CONFIGS, _FUSED_INT8_CONFIGS and _FEW_ROWS_PLANS are read by kernels as they are imported,
    on a GPU after the model loaded: a missing file (a typo) ended the run as an "internal error" (exit 1), a folder
    or a FIFO the same or a wait for ever; CODECOMPLETE_PLANS_DIR naming no folder silently meant the heuristic's
    plans. Each is now a usage error at start-up (exit 2, one line naming the variable), on every device."""
    from codecomplete import switches
    from codecomplete.errors import UsageError

    good = {"CODECOMPLETE_FUSED_CONFIGS": tmp_path / "fused.json", "CODECOMPLETE_FUSED_INT8_CONFIGS": tmp_path / "fused.json",
            "CODECOMPLETE_FEW_ROWS_PLANS": tmp_path / "plans.json"}
    good["CODECOMPLETE_FUSED_CONFIGS"].write_text('{"gemv": [2, 512, 2, 4], "gemv 8192x4096": [4, 1024, 4, 3]}')
    good["CODECOMPLETE_FEW_ROWS_PLANS"].write_text('{"4096x4096": [32, 256, 4, 3, 2]}')
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "values.json").write_text('{"gemv": 3}')
    (tmp_path / "text.json").write_text("gemv 2 512")
    os.mkfifo(tmp_path / "fifo.json")
    for name in switches.FILES:
        for path, words in [(tmp_path / "none.json", "No such file"), (tmp_path, "not a file"),
                            (tmp_path / "fifo.json", "not a file"), (tmp_path / "list.json", "not a JSON object"),
                            (tmp_path / "values.json", "not a JSON object"), (tmp_path / "text.json", "not a JSON file")]:
            monkeypatch.setenv(name, str(path))
            with pytest.raises(UsageError, match=rf"^\${name} is '{path}': {words}"):
                switches.check_environment()
        monkeypatch.setenv(name, str(good[name]))
        switches.check_environment()
        monkeypatch.setenv(name, "")                    # (empty: unset)
        switches.check_environment()
    monkeypatch.setenv("CODECOMPLETE_PLANS_DIR", str(tmp_path / "none"))
    with pytest.raises(UsageError, match="CODECOMPLETE_PLANS_DIR is .*: no such folder"):
        switches.check_environment()
    (tmp_path / "plans").mkdir()     # (tmp_path's *.json are no plan tables: the next test's case)
    monkeypatch.setenv("CODECOMPLETE_PLANS_DIR", str(tmp_path / "plans"))
    switches.check_environment()
    monkeypatch.setenv("CODECOMPLETE_PLANS_DIR", str(tmp_path))     # a FIFO named .json there: said, not waited on
    with pytest.raises(UsageError, match=r"CODECOMPLETE_PLANS_DIR is .*: fifo.json: not a file"):
        switches.check_environment()
    env = {**cli_env, "CODECOMPLETE_FUSED_CONFIGS": str(tmp_path / "none.json")}
    run = subprocess.run([str(script), "--prompt", "def f():", "--max-tokens", "1", "--no-server"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and run.stdout == "", run
    assert run.stderr.count("\n") == 1 and "CODECOMPLETE_FUSED_CONFIGS" in run.stderr, run.stderr


def test_a_kernels_file_nested_too_deeply_is_said_as_json_that_is_not_theirs(monkeypatch, tmp_path):
    """A configurations file or plan table of arrays in arrays (a file a tool wrote wrong, or not JSON meant for
    this): Python's JSON reader ran out of recursion, "internal error: RecursionError" (exit 1, --debug to see).
    A usage error naming the variable and the file, as any other file that is not the JSON the kernels read."""
    from codecomplete import switches
    from codecomplete.errors import UsageError

    deep = tmp_path / "plans" / "deep.json"
    deep.parent.mkdir()
    deep.write_text("[" * 100_000 + "]" * 100_000)
    for name in switches.FILES:
        monkeypatch.setenv(name, str(deep))
        with pytest.raises(UsageError, match=rf"^\${name} is '{deep}': not a JSON file \(it nests too deeply\)"):
            switches.check_environment()
        monkeypatch.delenv(name)
    monkeypatch.setenv("CODECOMPLETE_PLANS_DIR", str(deep.parent))
    with pytest.raises(UsageError, match=r"CODECOMPLETE_PLANS_DIR is .*: deep.json: it nests too deeply"):
        switches.check_environment()


def _one_shot(script, env) -> subprocess.CompletedProcess:
    return subprocess.run([str(script), "--prompt", "def f():", "--max-tokens", "1", "--no-server"], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name, value, words", [
    ("CODECOMPLETE_FUSED_CONFIGS", {"gemm": [2, 512, 2, 4]}, "unknown kernel kind 'gemm' in 'gemm' (known: qkv_rope, "),
    ("CODECOMPLETE_FUSED_CONFIGS", {"gemv": [2, 512, 2]}, "'gemv': [2, 512, 2] is 3 values; an entry is [block_n, "
                                                          "block_k, num_warps, num_stages(, interleave(, dp4a))]"),
    ("CODECOMPLETE_FUSED_INT8_CONFIGS", {"qkv_rope 5120x8192": [8, 512, 2, 4, True, False, 1]}, "is 7 values"),
    ("CODECOMPLETE_FUSED_INT8_CONFIGS", {"gemv": [2, 500, 2, 4]}, "block_k is 500, not a power of two"),
    ("CODECOMPLETE_FEW_ROWS_PLANS", {"gemv": [32, 256, 4, 3, 2]}, "'gemv' is not \"NxK\""),
    ("CODECOMPLETE_FEW_ROWS_PLANS", {"4096x4096": [32, 256, 4, 3]}, "is 4 values; an entry is [block_n, block_k, "
                                                                    "num_warps, num_stages, split_k]"),
    ("CODECOMPLETE_GEMV", "bogus", "'bogus': choose from wide (deep ones on cuBLAS (the default)), 1 ("),
    ("CODECOMPLETE_GEMV", " 1", "' 1': choose from wide"),
])
def test_a_kernel_setting_the_kernels_would_refuse_is_refused_at_start_up(script, cli_env, served_repo, tmp_path,
                                                                          name, value, words):
    """The kernels read these on a GPU after the model loaded: a configurations file naming an unknown kernel kind or
    holding the wrong count of numbers failed the kernels' import there (exit 1, after a 30 s load), and
    CODECOMPLETE_GEMV=bogus was refused (exit 2) only then; on a CPU neither was ever read. Now both are usage errors
    at start-up on any machine (exit 2, one line naming the variable and the entry), for the command line and serve."""
    if isinstance(value, dict):
        (tmp_path / "settings.json").write_text(json.dumps(value))
        value = str(tmp_path / "settings.json")
    env = {**cli_env, name: value}
    run = _one_shot(script, env)
    assert run.returncode == 2 and run.stdout == "", run
    assert run.stderr.count("\n") == 1 and f"${name} is " in run.stderr and words in run.stderr, run.stderr
    line = _refused(script, env, served_repo, tmp_path / "serve", "--context-tokens", "64")
    assert f"${name} is " in line and words in line, line


def test_good_kernel_settings_are_taken_on_a_cpu(script, cli_env, tmp_path):
    """What the kernels' benchmarks write (every field, or the numbers alone) and every GEMV mode pass the check;
    a CPU run then goes on as usual (the kernels read them only on a GPU)."""
    from kernels.settings import GEMV_MODES
    (tmp_path / "fused.json").write_text(json.dumps({"gemv": [2, 512, 2, 4], "qkv_rope 5120x8192": [8, 512, 2, 4, True],
                                                     "gemv_norm 32016x4096": [16, 256, 1, 3, False, True]}))
    (tmp_path / "plans.json").write_text(json.dumps({"4096x4096": [32, 128, 8, 4, 3]}))
    env = {**cli_env, "CODECOMPLETE_FUSED_CONFIGS": str(tmp_path / "fused.json"),
           "CODECOMPLETE_FUSED_INT8_CONFIGS": str(tmp_path / "fused.json"),
           "CODECOMPLETE_FEW_ROWS_PLANS": str(tmp_path / "plans.json")}
    run = _one_shot(script, {**env, "CODECOMPLETE_GEMV": "1"})
    assert run.returncode == 0 and run.stderr == "", run
    from codecomplete import switches
    for mode in GEMV_MODES:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("CODECOMPLETE_GEMV", mode)
            switches.check_environment()


@pytest.mark.parametrize("change, words", [
    (lambda entry: entry["key"].update(kind="bf17"), "entries[0]: key.kind is \"bf17\", not one of bf16, fp8, int8"),
    (lambda entry: entry["key"].pop("S"), "entries[0]: key.S is missing"),
    (lambda entry: entry["plan"].update(num_split=2), "entries[0]: plan: num_split is no field of a launch plan"),
    (lambda entry: entry["plan"].update(num_warps="4"), "entries[0]: plan: num_warps is \"4\", not an integer"),
    (lambda entry: entry["plan"].update(step_launch="soon"), "entries[0]: plan: step_launch 'soon'"),
    (lambda entry: entry.update(lend="false"), "entries[0]: lend is \"false\", not true or false"),
])
def test_a_plans_folder_holding_a_table_the_planner_would_refuse_is_refused_at_start_up(script, cli_env, tmp_path,
                                                                                       change, words):
    """CODECOMPLETE_PLANS_DIR's tables are read by the planner at a GPU's first attention call, after the model loaded:
    an entry of an unknown cache kind, a plan field the planner does not know or of the wrong type failed there. Every
    `*.json` in the folder is now checked at start-up as the planner reads a table (exit 2, one line naming the file
    and the entry); the committed table passes."""
    from pathlib import Path
    committed = Path(__file__).resolve().parents[2] / "kernels" / "plans" / "nvidia-h200.json"
    table = json.loads(committed.read_text())
    change(table["entries"][0])
    folder = tmp_path / "plans"
    folder.mkdir()
    (folder / "nvidia-h200.json").write_text(json.dumps(table))
    run = _one_shot(script, {**cli_env, "CODECOMPLETE_PLANS_DIR": str(folder)})
    assert run.returncode == 2 and run.stdout == "", run
    assert run.stderr.count("\n") == 1 and "$CODECOMPLETE_PLANS_DIR is " in run.stderr, run.stderr
    assert "nvidia-h200.json: " + words in run.stderr, run.stderr
    from codecomplete import switches
    (folder / "nvidia-h200.json").write_text(committed.read_text())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CODECOMPLETE_PLANS_DIR", str(folder))
        switches.check_environment()

"""Argument checks that need no model, in process."""
import subprocess
import sys

import pytest

from codecomplete import cli
from codecomplete.errors import UsageError


def parse(*argv):
    args = cli.build_parser().parse_args(list(argv))
    cli.check(args)
    return args


def test_json_takes_a_file_or_nothing(tmp_path):
    assert parse(str(tmp_path), "--file", "a.py", "--json").json == "-"
    assert parse("--bench", "--json", "out.json").json == "out.json"
    # `--json REPO ...`: the folder after --json is the repository, not the output file.
    args = parse("--json", str(tmp_path), "--file", "a.py")
    assert (args.repo, args.json) == (str(tmp_path), "-")
    with pytest.raises(UsageError, match="is a folder"):     # --bench's repository is optional: a folder is a mistake
        parse("--bench", "--json", str(tmp_path))


def test_json_may_not_name_the_plot_or_the_file_to_complete(tmp_path, monkeypatch):
    """`--bench --json b.png --plot b.png` wrote the plot, then the JSON over it, without a word."""
    monkeypatch.chdir(tmp_path)
    for json_name in ("b.png", str(tmp_path / "b.png"), "./b.png"):
        with pytest.raises(UsageError, match="--json and --plot name the same file"):
            parse("--bench", "--json", json_name, "--plot", "b.png")
    assert parse("--bench", "--json", "b.json", "--plot", "b.png").plot == "b.png"
    # `--file app.py --json app.py` (an editor's `%` in the wrong place) wrote the result over the source
    (tmp_path / "app.py").write_text("x = 1\n")
    for json_name in ("app.py", str(tmp_path / "app.py")):
        with pytest.raises(UsageError, match="is the file to complete"):
            parse(str(tmp_path), "--file", "app.py", "--json", json_name)
        assert cli.main([str(tmp_path), "--file", "app.py", "--json", json_name]) == 2    # and no error object in it
        # nor when another mistake is found first
        assert cli.main([str(tmp_path), "--file", "app.py", "--col", "3", "--json", json_name]) == 2
    assert (tmp_path / "app.py").read_text() == "x = 1\n"


@pytest.mark.parametrize("argv, message", [
    (["r", "--col", "3", "--file", "a.py"], "--col goes with --line"),
    (["r", "--stdin"], "--stdin goes with --file"),
    (["r", "--plot", "x.png"], "--plot goes with --bench"),
])
def test_combinations(argv, message):
    with pytest.raises(UsageError, match=message):
        parse(*argv)


def test_bench_refuses_the_sampling_options_it_would_ignore():
    """--bench times greedy decoding: --temperature, --top-p and --seed were dropped without a word."""
    for argv, named in ((["--temperature", "0.7"], "--temperature"), (["--top-p", "0.9"], "--top-p"),
                        (["--seed", "0"], "--seed"), (["--temperature", "1", "--seed", "3"], "--temperature, --seed")):
        with pytest.raises(UsageError, match=f"^{named}: --bench times greedy decoding"):
            parse("--bench", *argv)
    assert parse("--bench", "--temperature", "0", "--top-p", "1").bench      # the defaults, said out loud


def test_json_says_a_failure_as_an_error_object(tmp_path, monkeypatch, capsys):
    """An editor reading --json got nothing on a failure: now an error object with the exit code and the one-line
    message, where the result would have gone (stdout or FILE); a cancelled result already out is not followed
    by one."""
    import json

    assert cli.main([str(tmp_path), "--file", "nope.py", "--json"]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out) == {"error": {"code": 2, "message": "file not found: nope.py", "type": "usage"}}
    assert out.count("\n") == 1 and err == "codecomplete: error: file not found: nope.py\n"
    target = tmp_path.parent / f"{tmp_path.name}-out.json"
    assert cli.main(["--bench", "--seed", "1", "--json", str(target)]) == 2
    assert json.loads(target.read_text())["error"]["message"].startswith("--seed: --bench times greedy decoding")

    def failing(exc):
        def command(args):
            raise exc
        return lambda args: command

    for exc, code, kind in ((RuntimeError("boom"), 1, "internal"), (KeyboardInterrupt(), 130, "interrupted")):
        monkeypatch.setattr(cli, "_command", failing(exc))
        assert cli.main(["--prompt", "x", "--json"]) == code
        error = json.loads(capsys.readouterr().out)["error"]
        assert (error["code"], error["type"]) == (code, kind) and error["message"]

    monkeypatch.setattr(cli, "_quiet_stdout", lambda: None)     # it points fd 1 at /dev/null: not pytest's
    monkeypatch.setattr(cli, "_command", failing(BrokenPipeError()))
    assert cli.main(["--prompt", "x", "--json", str(target)]) == 141
    assert json.loads(target.read_text())["error"]["type"] == "pipe_closed"
    monkeypatch.setattr("codecomplete.server.serve.run_serve", failing(BrokenPipeError())(None))
    assert cli.main(["serve", "--port", "0"]) == 141        # serve's options have no --json to write to

    def cancelled(args):
        print('{"text": "partial", "finish_reason": "cancelled"}')
        raise cli.Cancelled
    monkeypatch.setattr(cli, "_command", lambda args: cancelled)
    assert cli.main(["--prompt", "x", "--json"]) == 130
    assert json.loads(capsys.readouterr().out)["finish_reason"] == "cancelled"       # one object: the result


def test_a_model_path_too_long_for_the_system_compares_as_given():
    """Path.exists() raised ENAMETOOLONG: with a server announced, `--model <300 characters>` was an internal error."""
    from codecomplete.client import model_spec
    assert model_spec("m" * 300) == "m" * 300


def test_a_server_url_the_resolver_cannot_encode_is_a_usage_error(tmp_path, capsys):
    """A host label over 63 characters failed in the resolver's IDNA encoding: an internal error, exit 1."""
    (tmp_path / "a.py").write_text("x = 1\n")
    for url in ("http://" + "a" * 300, "a" * 64 + ":8012"):
        assert cli.main([str(tmp_path), "--file", "a.py", "--server", url]) == 2
        assert "expected http://HOST:PORT" in capsys.readouterr().err


def test_a_bad_server_url_from_the_environment_is_said_as_the_variable(tmp_path, capsys, monkeypatch):
    """`CODECOMPLETE_SERVER=notaurl` was refused as "--server notaurl", an option the user never typed; the README's
    exit-code table names both. A bare HOST:PORT is accepted too, which the message now says."""
    (tmp_path / "a.py").write_text("x = 1\n")
    monkeypatch.setenv("CODECOMPLETE_SERVER", "notaurl")
    assert cli.main([str(tmp_path), "--file", "a.py"]) == 2
    assert capsys.readouterr().err == ("codecomplete: error: $CODECOMPLETE_SERVER=notaurl: expected http://HOST:PORT "
                                       "or HOST:PORT\n")
    assert cli.main([str(tmp_path), "--file", "a.py", "--server", "notaurl"]) == 2
    assert capsys.readouterr().err == "codecomplete: error: --server notaurl: expected http://HOST:PORT or HOST:PORT\n"


def test_a_server_url_with_a_user_and_password_is_refused_without_showing_the_password(tmp_path, capsys):
    """`--server http://me:s3cret@host:8012`: the user and password were dropped unsaid (never sent: the server
    answered 401, or another server did) and the error said the password on stderr, into logs."""
    (tmp_path / "a.py").write_text("x = 1\n")
    for url in ("http://me:s3cret@127.0.0.1:9", "me:s3cret@127.0.0.1:9", "http://s3cret@127.0.0.1:9"):
        assert cli.main([str(tmp_path), "--file", "a.py", "--server", url]) == 2
        err = capsys.readouterr().err
        assert "s3cret" not in err and err.count("\n") == 1, err
        assert "not sent" in err and "CODECOMPLETE_API_KEY" in err, err


def test_help_mentions_every_command(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["--help"])
    assert exit.value.code == 0
    text = capsys.readouterr().out
    for command in ("--file", "--ask", "--prompt", "--bench", "--stdin", "--attention", "exit codes"):
        assert command in text


def test_serve_help_names_the_apis_and_its_exit_codes():
    """`serve --help` named neither Tabby's API nor an exit code, though serve's differ from a command's: Ctrl-C or
    SIGTERM once it serves is a clean stop (0), while it starts 130 or 143 (the README's exit codes)."""
    text = cli.build_serve_parser().format_help()
    flat = " ".join(text.split())
    assert "Tabby" in flat
    assert "exit codes: 0 stopped by Ctrl-C or SIGTERM once serving" in flat, flat
    for said in ("1 runtime failure", "2 usage or input error", "130/143", "129"):
        assert said in flat, said


def test_the_readme_documents_every_option():
    """Each option of `codecomplete` and `codecomplete serve` is named in the README (`--version` was not), and serve's
    own (listening, requests) in its section: `serve --max-tokens`, what a request without a limit gets, was not."""
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    server_section = readme.split("## Server for editors", 1)[1].split("\n## ", 1)[0]
    named = lambda option, text: any(option + end in text for end in ("`", " ", "]"))
    missing = [option for build in (cli.build_parser, cli.build_serve_parser) for action in build()._actions
               for option in action.option_strings if option not in ("-h", "--help") and not named(option, readme)]
    serve_groups = [group for group in cli.build_serve_parser()._action_groups
                    if group.title in ("listening", "requests")]
    missing += [f"serve {option}" for group in serve_groups for action in group._group_actions
                for option in action.option_strings if not named(option, server_section)]
    assert missing == []



def _parsers(catch_parser):
    """The parsers of `codecomplete`, `codecomplete serve`, `python -m kernels.bench` and `python -m models.bench`
    (the benchmarks build theirs inside main: caught as main parses)."""
    import importlib
    caught = [catch_parser(lambda: importlib.import_module(program).main([]))
              for program in ("models.bench", "kernels.bench")]
    return [cli.build_parser(), cli.build_serve_parser(), *caught]


def test_help_says_every_options_default(catch_parser):
    """An option that has a default says it in --help: models.bench's --hf, --ttft, --kv-caches, --weights, --methods
    and --backends, and kernels.bench's --cases, said nothing of theirs (a run timed static and dynamic HF caches, and
    three backends, unasked)."""
    import argparse
    silent = [f"{parser.prog} {action.option_strings[0]} (default {action.default!r})"
              for parser in _parsers(catch_parser) for action in parser._actions
              if action.option_strings and action.default not in (None, False, "", argparse.SUPPRESS)
              and not isinstance(action, argparse._VersionAction) and "default" not in (action.help or "")]
    assert silent == []


def test_the_models_bench_help_names_every_backend_variant(catch_parser):
    """--backends takes NAME:unfused, :nopdl, :wideint8 and :nodp4a; its help named only the first two."""
    from models.bench import _backend
    parser = next(parser for parser in _parsers(catch_parser) if parser.prog == "python -m models.bench")
    backends = next(action for action in parser._actions if "--backends" in action.option_strings)
    for variant in ("unfused", "nopdl", "wideint8", "nodp4a"):
        assert _backend(f"flash:{variant}") and f"NAME:{variant}" in backends.help, variant


def test_the_readme_documents_every_route_and_names_none_that_is_not():
    """`codecomplete serve` answers llama.cpp's aliases without /v1 (`/completions`, `/chat/completions`, `/models`,
    `/models/{id}`), which the README's server section named nowhere; and each path its endpoint table names is
    served."""
    import re
    from pathlib import Path
    from codecomplete.server import app, llama_cpp, mistral, ollama, openai_api, tabby, tgi
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Server for editors", 1)[1].split("\n## ", 1)[0]
    shown = lambda path: re.sub(r"\{(\w+)(:\w+)?\}", "{id}", path)
    served = {shown(route.path) for module in (llama_cpp, ollama, openai_api, tabby, mistral, tgi)
              for router in (module.router, getattr(module, "public", None)) if router is not None
              for route in router.routes} | {"/v1/completions"}
    assert "/v1/completions" in app.create_app.__code__.co_consts                       # the one route app.py adds
    unnamed = sorted(path for path in served if not re.search(r"[` ]" + re.escape(path) + r"[`,) ]", section))
    table = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    named = {path for cell in table for path in re.findall(r"(/[\w/{}.-]*)", cell) if not path.startswith("/codecomplete")}
    assert unnamed == [] and sorted(named - served) == []


def test_the_readme_documents_every_environment_switch():
    """Each CODECOMPLETE_* variable the packages read is named in the README: the switches for measuring and
    debugging (CODECOMPLETE_PDL, _COMPILE, _TUNED_PLANS, ...) were documented only in comments."""
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text(encoding="utf-8")
    read = {name for package in ("codecomplete", "models", "kernels", "prompts")
            for source in (root / package).rglob("*.py")
            for name in re.findall(r"\b(CODECOMPLETE_[A-Z0-9_]*[A-Z0-9])\b", source.read_text(encoding="utf-8"))}
    assert {"CODECOMPLETE_PDL", "CODECOMPLETE_MODEL"} <= read          # the scan itself finds names
    assert sorted(name for name in read if f"`{name}" not in readme) == []

def test_threads_must_be_a_positive_number(capsys):
    assert parse("r", "--file", "a.py", "--threads", "1").threads == 1
    with pytest.raises(SystemExit) as exit:
        parse("r", "--file", "a.py", "--threads", "0")
    assert exit.value.code == 2 and "--threads" in capsys.readouterr().err


def test_too_many_threads_are_refused_before_any_work(monkeypatch):
    """Said by the argument check, not at model load: a command that a running server answers loads no model, and
    exited 0 there where alone it exits 2."""
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert parse("--prompt", "x", "--threads", "2").threads == 2
    with pytest.raises(UsageError, match="--threads 3: this process may use 2 cores"):
        parse("--prompt", "x", "--threads", "3")


def test_threads_default_to_the_idle_cores_and_leave_omp_num_threads_alone(monkeypatch):
    import torch

    from codecomplete.engines import set_threads

    before = torch.get_num_threads()
    monkeypatch.setattr("codecomplete.engines._torch_default_threads", lambda: 2)  # 2 physical cores
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    try:
        assert set_threads(3, "cpu") == 3  # asked for: given, on any device
        monkeypatch.setattr("os.getloadavg", lambda: (2.8, 1.0, 1.0))  # about three of four cores busy
        assert set_threads(None, "cpu") == 1
        monkeypatch.setattr("os.getloadavg", lambda: (7.5, 7.0, 7.0))  # overloaded: still one thread
        assert set_threads(None, "cpu") == 1
        monkeypatch.setattr("os.getloadavg", lambda: (0.0, 0.0, 0.0))  # idle: torch's default caps it
        assert set_threads(None, "cpu") == 2
        monkeypatch.setattr("os.getloadavg", lambda: (1.2, 1.0, 1.0))
        assert set_threads(None, "cpu") == 2
        torch.set_num_threads(1)
        assert set_threads(None, "cuda") == 1  # on a GPU the default is left as it is
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        torch.set_num_threads(3)
        monkeypatch.setattr("os.getloadavg", lambda: (3.9, 1.0, 1.0))
        assert set_threads(None, "cpu") == 3  # the user's environment decides
    finally:
        torch.set_num_threads(before)


def test_an_out_of_range_cursor_counts_in_good_english():
    from codecomplete.complete import cursor
    with pytest.raises(UsageError, match="line 1 has 1 character$"):
        cursor("}\n", 1, 3)
    with pytest.raises(UsageError, match="line 1 has 2 characters$"):
        cursor("{}\n", 1, 4)
    with pytest.raises(UsageError, match="the buffer has 1 line$"):
        cursor("x", 2, None)


def test_a_cursor_counts_lone_carriage_returns_as_line_ends():
    """A classic Mac OS file ("\\r" line ends) has the lines an editor shows: `--line 3` was out of range of its one
    line, as prompts counted it too."""
    from codecomplete.complete import cursor
    assert cursor("a = 1\rb = 2\r\rc", 3, None) == (3, 1) and cursor("a = 1\rb = 2\r\rc", 4, 2) == (4, 2)
    assert cursor("a = 1\rb = 2\r", None, None) == (3, 1)
    with pytest.raises(UsageError, match="line 2 has 5 characters$"):
        cursor("a = 1\rb = 2\r", 2, 7)


def test_a_byte_order_mark_is_no_column_of_a_file_or_of_standard_input(tmp_path, monkeypatch):
    """The check before the model loads counted a Windows editor's byte-order mark as line 1's first character, as
    prompts no longer does: `--col 11` on `import os` passed it, then failed after the model loaded."""
    import io

    from codecomplete.complete import _read, cursor
    from codecomplete.workspace import read_stdin
    (tmp_path / "bom.py").write_bytes(b"\xef\xbb\xbfimport os\r\n")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"\xef\xbb\xbfimport os\n")))
    for buffer in (_read(tmp_path / "bom.py"), read_stdin()):
        assert buffer.startswith("import os")
        with pytest.raises(UsageError, match="line 1 has 9 characters$"):
            cursor(buffer, 1, 11)


def refused_by_commands_and_server(monkeypatch, capsys, name: str, values, expected: str) -> None:
    """Each value of the environment variable `name` is a one-line usage error "NAME=value: expected", for a
    command and for `serve` alike, before anything loads."""
    for value in values:
        monkeypatch.setenv(name, value)
        with pytest.raises(UsageError, match=f"^{name}={value}: {expected}$"):
            parse("--prompt", "x")
        assert cli.main(["serve", "--port", "0"]) == 2            # the server says it too, before it loads
        assert capsys.readouterr().err.count("\n") == 1


def test_a_bad_torch_distributed_debug_is_a_usage_error(monkeypatch, capsys):
    """torch refuses these on importing torch.distributed, which every model load does: each command ended in an
    internal error. An empty value is as good as unset (torch refuses it too: it is removed)."""
    refused_by_commands_and_server(monkeypatch, capsys, "TORCH_DISTRIBUTED_DEBUG", ("bogus", "1", "DETAILS"),
                                   "expected OFF, INFO or DETAIL")
    for value in ("OFF", "info", "Detail"):                        # torch's own forms
        monkeypatch.setenv("TORCH_DISTRIBUTED_DEBUG", value)
        parse("--prompt", "x")
    monkeypatch.setenv("TORCH_DISTRIBUTED_DEBUG", "")
    parse("--prompt", "x")
    assert "TORCH_DISTRIBUTED_DEBUG" not in cli.os.environ
    proc = subprocess.run([sys.executable, "-c", "import torch.distributed"], capture_output=True, text=True,
                          env={**cli.os.environ, "TORCH_DISTRIBUTED_DEBUG": "bogus"})
    assert "must be OFF, INFO, or DETAIL" in proc.stderr          # (what the check stands in front of)


def test_a_bad_omp_num_threads_is_a_usage_error(monkeypatch, capsys):
    """libgomp printed four lines of warnings for these (on the editor's stderr too) and torch ran on its own
    default, where the README says $OMP_NUM_THREADS decides; an empty value is as good as unset."""
    refused_by_commands_and_server(monkeypatch, capsys, "OMP_NUM_THREADS", ("abc", "0", "-2", "4,x", "1.5"),
                                   "expected a number of threads from 1 up")
    for value in ("2", " 3 ", "4,2"):                              # libgomp's own forms
        monkeypatch.setenv("OMP_NUM_THREADS", value)
        parse("--prompt", "x")
        assert cli.os.environ["OMP_NUM_THREADS"] == value
    monkeypatch.setenv("OMP_NUM_THREADS", " ")
    parse("--prompt", "x")
    assert "OMP_NUM_THREADS" not in cli.os.environ


def test_an_unknown_random_preset_is_a_usage_error(monkeypatch):
    """A typo in random:PRESET is a bad option value (exit status 2, said before any work), not a model failure
    (1) found at load; with --bench, where random weights belong, too."""
    for argv in (["--bench", "--model", "random:CodeLama-7B"], ["--prompt", "x", "--model", "random:nope:/tmp"],
                 ["--bench", "--model", "random:"]):
        with pytest.raises(UsageError, match=r"^--model random:\S*: unknown preset '\w*-?\w*' \(known: CodeLlama-7B"):
            parse(*argv)
    monkeypatch.setenv("CODECOMPLETE_MODEL", "random:nope")
    with pytest.raises(UsageError, match="^CODECOMPLETE_MODEL=random:nope: unknown preset 'nope'"):
        parse("--bench")
    assert parse("--bench", "--model", "random:codellama-7b").model == "random:codellama-7b"   # any case
    with pytest.raises(UsageError, match="random weights have no tokenizer"):     # an empty folder: an internal error
        parse("--prompt", "x", "--model", "random:SmolLM2-135M:")


def test_the_random_presets_are_all_named_where_random_weights_are_documented():
    """--help and the README listed CodeLlama-7B/13B/34B and SmolLM2-135M; random:CodeLlama-70B (the tensor-parallel
    benchmarks' model) loads too."""
    import re
    from pathlib import Path

    from models.config import PRESETS
    help_text = next(a.help for a in cli.build_parser()._actions if "--model" in a.option_strings)
    listed = {f"{family}-{size}" for family, sizes in re.findall(r"(CodeLlama|SmolLM2)-([\dBM/]+)", help_text)
              for size in sizes.split("/")}
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    sentence = readme.split("No checkpoint on the GPU machine?", 1)[1].split("\n\n", 1)[0]
    in_readme = {name for name in PRESETS if any(f"`{word}`" in sentence or f"random:{word}`" in sentence
                                                  for word in (name, "-" + name.rsplit("-", 1)[1]))}
    assert (listed, in_readme) == (set(PRESETS), set(PRESETS))


def test_serve_refuses_empty_values(monkeypatch, capsys):
    """`serve --api-key "$KEY"` with KEY unset served with no key at all; an empty --host bound every interface."""
    served = []
    monkeypatch.setattr("codecomplete.server.serve.run_serve", served.append)
    for option in ("--api-key", "--host", "--model", "--device"):
        assert cli.main(["serve", option, " "]) == 2
        assert capsys.readouterr().err == f"codecomplete: error: {option} is empty\n"
    assert cli.main(["serve", ""]) == 2         # `serve "$REPO"` unset: not the current folder unasked
    assert capsys.readouterr().err == "codecomplete: error: REPO is empty (give the repository's folder; . for the " \
                                      "current one)\n"
    assert not served
    assert cli.main(["serve", "--api-key", "k"]) == 0 and served[0].api_key == "k"

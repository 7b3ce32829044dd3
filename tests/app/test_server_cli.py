"""The command line with a server running for its repository: it finds the server, and prints exactly what it prints
alone (stdout, the --json object, exit codes); the server keeps the repository's index fresh as files change."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from server_process import raw_post

from codecomplete.session import Sampling, Session

CURSOR = ["--file", "app.py", "--line", "5", "--col", "5", "--max-tokens", "8", "--context-tokens", "300"]
MEASURED = ("timings", "reused_prefix_tokens")      # how long it took and what the cache held: not the output
ROOT = Path(__file__).resolve().parents[2]


def run(script, env, *args, input=None):
    proc = subprocess.run([str(script), *map(str, args)], input=input, capture_output=True, text=True, env=env,
                          timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def via_server(script, server):
    """Run the command line where it finds the test server (its runtime dir)."""
    return lambda *args, input=None: run(script, server.env, *args, input=input)


def same_output(served: str, alone: str) -> None:
    served, alone = json.loads(served), json.loads(alone)
    for key in MEASURED:
        served.pop(key), alone.pop(key)
    assert served == alone


def test_a_completion_through_the_server_is_the_one_it_computes_alone(via_server, server, served_repo):
    geometry, app = served_repo / "shapes" / "geometry.py", served_repo / "app.py"
    originals = geometry.read_text(), app.read_text()
    # Files changed after the server indexed them: it must see them, as a fresh process does. The request's own
    # file at once; another file (its definition is in the prompt at this cursor, and a longer docstring changes
    # its token count) once a request has gone by, between requests.
    old_doc = '"""The area of a circle of the given radius."""'
    assert old_doc in originals[0]
    geometry.write_text(originals[0].replace(old_doc, '"""Pi times the radius squared: the area of the disc."""'))
    app.write_text(originals[1] + "\n\ndef unused_helper():\n    return report(1.0)\n")
    assert one_request(server) == 200
    try:
        requests_before = server.log().count("/codecomplete/v1/complete")
        code, served, err = via_server(served_repo, *CURSOR, "--json")
        assert code == 0 and err == "", err
        assert server.log().count("/codecomplete/v1/complete") == requests_before + 1    # it went to the server
        code, alone, err = via_server(served_repo, *CURSOR, "--json", "--no-server")
        assert code == 0, err
        same_output(served, alone)
        assert "shapes/geometry.py" in [item["path"] for item in json.loads(served)["context"]]
        code, plain, _ = via_server(served_repo, *CURSOR)
        assert code == 0 and plain == json.loads(alone)["completion"]       # the bare text, as alone
    finally:
        geometry.write_text(originals[0])
        app.write_text(originals[1])


def test_a_file_changed_just_before_the_command_is_seen_through_the_server(via_server, server, served_repo):
    """No request went by since another file changed (an edit, a new file, a deletion): the command line through
    the server still prints what it prints alone, which reads the repository as it is now."""
    geometry, added, gone = served_repo / "shapes" / "geometry.py", served_repo / "shapes" / "disc.py", \
        served_repo / "README.md"
    originals = geometry.read_text(), gone.read_text()
    assert one_request(server) == 200           # the server is tidy: what follows happens after its last sweep
    geometry.write_text(originals[0].replace("def area_of_circle(radius: float) -> float:",
                                             "def area_of_circle(radius: float, scale: float = 1.0) -> float:"))
    added.write_text("def area_of_disc(radius):\n    return 3.14159 * radius * radius\n")
    gone.unlink()
    try:
        code, served, err = via_server(served_repo, *CURSOR, "--json")
        assert code == 0 and err == "", err
        code, alone, err = via_server(served_repo, *CURSOR, "--json", "--no-server")
        assert code == 0, err
        same_output(served, alone)
    finally:
        geometry.write_text(originals[0])
        added.unlink()
        gone.write_text(originals[1])
        assert one_request(server) == 200


def test_an_editors_request_after_a_quiet_spell_has_the_context_files_as_they_are_now(server, served_repo):
    """Files changed while no request came (a `git checkout`, a save in another window): an editor's request, which
    does not catch the whole index up as the command line's does, still puts no text in its prompt that the disk no
    longer holds. The rolling rescan had not reached them, and the old text went into the prompt."""
    geometry = served_repo / "shapes" / "geometry.py"
    original = geometry.read_text()
    old, new = "The area of a circle of the given radius.", "Pi times the radius squared: the disc's area."
    assert one_request(server) == 200
    time.sleep(2)                   # its sweep, which runs after the answer went out, is over: none sees the change
    geometry.write_text(original.replace(old, new))
    try:
        body = {"input_prefix": (served_repo / "app.py").read_text().split("area = ")[0] + "area = ",
                "input_suffix": "\n", "filename": "app.py", "n_predict": 0}
        answer = httpx.post(server.url + "/infill", json=body, timeout=300).json()
        assert new in answer["prompt"] and old not in answer["prompt"]
    finally:
        geometry.write_text(original)
        assert one_request(server) == 200


def test_a_file_created_after_a_quiet_spell_is_in_the_next_editors_prompt(server, served_repo):
    """The editor user writes a new module, then calls it from another file: its definition is in the prompt of the
    first request that imports it. The new file waited for the rolling rescan, which runs after requests only."""
    helper = served_repo / "new_helper.py"
    assert one_request(server) == 200
    time.sleep(2)                   # the sweep after that request is over: no walk is under way
    helper.write_text('def perimeter_of_square(side):\n    """Four sides of the square."""\n    return 4 * side\n')
    try:
        prefix = ("from new_helper import perimeter_of_square\n" + (served_repo / "app.py").read_text()
                  + "\n\ndef square_report(side):\n    return perimeter_of_square(")
        body = {"input_prefix": prefix, "input_suffix": ")\n", "filename": "app.py", "n_predict": 0}
        answer = httpx.post(server.url + "/infill", json=body, timeout=300).json()
        assert "Four sides of the square." in answer["prompt"]
    finally:
        helper.unlink()
        assert one_request(server) == 200


def one_request(server) -> int:
    """Any request (this one only fills the cache): the server tidies its index after each."""
    return raw_post(server.url, "/completion", b'{"prompt": "x", "n_predict": 0}', {})[0]


def test_raw_generation_and_questions_through_the_server(via_server, server, served_repo):
    # (a healed prompt's first token, which only makes its space again, is the prompt's in both)
    for prompt in (["--prompt", "def fibonacci(n):", "--max-tokens", "8"], ["--prompt", "x = ", "--max-tokens", "3"]):
        code, served, err = via_server(*prompt, "--json")
        assert code == 0 and err == "", err
        code, alone, _ = via_server(*prompt, "--json", "--no-server")
        assert code == 0
        same_output(served, alone)
    code, answer, err = via_server(served_repo, "--ask", "What does area_of_circle return?", "--max-tokens", "6",
                                   "--context-tokens", "300", "--json")
    assert code == 0, err
    answer = json.loads(answer)
    assert answer["answer"] and answer["context"] and answer["completion_tokens"] >= 1
    assert "/codecomplete/v1/chat" in server.log() and "/codecomplete/v1/raw" in server.log()


def test_a_sampled_answer_through_the_server_draws_as_its_speculate_option_says(via_server, server):
    """Speculative sampling draws its random numbers per verification step: the same seed gives other tokens with
    another --speculate, so the server must use the command line's (its default here is not 0)."""
    prompt = ["--prompt", "1, 2, 3, 4, 5, 6, 7, 8,", "--max-tokens", "24", "--temperature", "0.9", "--seed", "3",
              "--speculate", "0", "--json"]
    code, served, err = via_server(*prompt)
    assert code == 0 and err == "", err
    code, alone, _ = via_server(*prompt, "--no-server")
    assert code == 0
    assert json.loads(served)["tokens"] == json.loads(alone)["tokens"]


def test_a_buffer_of_megabytes_through_the_server_is_completed_as_alone(via_server, served_repo):
    """--stdin takes a buffer of up to 64 MiB: through the server too, not only the 1 MiB an editor's request may
    carry."""
    # ~1.5 MB, with characters JSON escapes (code lines: a long run of comment lines after an indented block is
    # quadratic in tree-sitter's Python grammar)
    buffer = (served_repo / "app.py").read_text() + 'FILLER = "ünïcödé \\"quoted\\" üüüüüüüüüüüüüüüüüüüü"\n' * 30_000
    assert len(buffer.encode()) > 1.5 * 2 ** 20
    command = [served_repo, *CURSOR, "--stdin", "--json"]
    code, served, err = via_server(*command, input=buffer)
    assert code == 0 and err == "", err
    code, alone, err = via_server(*command, "--no-server", input=buffer)
    assert code == 0, err
    same_output(served, alone)


def test_errors_through_the_server_have_the_same_message_and_exit_code(via_server, served_repo):
    tiny = [served_repo, "--file", "app.py", "--max-tokens", "4", "--context-tokens", "3"]
    served = via_server(*tiny)
    alone = via_server(*tiny, "--no-server")
    assert served[0] == alone[0] == 2
    assert served[2] == alone[2] and "cannot hold" in served[2] and len(served[2].strip().splitlines()) == 1


def test_each_keystroke_reuses_the_prompt_before_it(via_server, server, served_repo, engine):
    """An editor sending its unsaved buffer as it is typed: the second request reuses the first one's prompt, and
    its greedy completion is what a fresh session computes for that cursor and budget."""
    from prompts import index_repository

    text = (served_repo / "app.py").read_text()
    results = []
    for typed in ("    total = 0", "    total = 0."):
        buffer = text + typed
        line = buffer.count("\n") + 1
        code, out, err = via_server(served_repo, "--file", "app.py", "--stdin", "--line", line, "--max-tokens", "6",
                                    "--context-tokens", "300", "--json", input=buffer)
        assert code == 0, err
        results.append(json.loads(out))
    second = results[1]
    assert second["reused_prefix_tokens"] >= 0.9 * second["prompt_tokens"]
    engine.clear_prefix_cache()
    session = Session(engine, index_repository(served_repo))
    buffer = text + "    total = 0."
    fresh = session.complete("app.py", text=buffer, line=buffer.count("\n") + 1, sampling=Sampling(max_tokens=6),
                             budget=300).run()
    # (the tokens that only made the healed text again are the prompt's, left out of "tokens")
    assert second["completion"] == fresh.text and second["tokens"] == fresh.token_ids[fresh.healing_tokens:]


def test_a_server_for_another_repository_is_not_used(script, server, repo):
    code, out, err = run(script, {**server.env, "CODECOMPLETE_SERVER": server.url}, repo, "--file", "app.py",
                         "--max-tokens", "2")
    assert code == 2 and "serves" in err and str(repo) in err and out == ""


def test_the_command_line_stays_light_with_a_server(server, served_repo):
    """Through a server, a suggestion imports neither torch nor the server's stack; --help neither, for serve too."""
    code = ("import contextlib, io, sys\n"
            "from codecomplete.cli import main\n"
            f"assert main([{str(served_repo)!r}, '--file', 'app.py', '--max-tokens', '2', '--context-tokens', '300'"
            "]) == 0\n"
            "for argv in (['--help'], ['serve', '--help']):\n"
            "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()): main(argv)\n"
            "heavy = [m for m in ('torch', 'transformers', 'fastapi', 'uvicorn', 'pydantic') if m in sys.modules]\n"
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], env=server.env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


# --- What the command line believes about a server, without a model: a stand-in speaking the protocol. ---

ENGINE = {"name": "stand-in", "device": "cpu", "dtype": "float32", "attention": "sdpa", "kv_cache": "float32",
          "context_length": 8192, "model_max_positions": 8192, "load_s": 0.0}


@pytest.fixture
def stand_in():
    """start(info, stream=b"", headers={}) serves `info` (bytes as they are, else JSON, with this code's build unless
    it names one) at /codecomplete/v1/info and `stream` with `headers` for every POST; yields (url, posts) where
    posts counts the POSTs it got. Each request's Authorization header (None: none) goes to start.authorizations."""
    import http.server
    import threading

    from codecomplete.client import build

    servers, posts, authorizations = [], [], []

    def start(info, stream: bytes = b"", headers: dict[str, str] = {}):
        if isinstance(info, dict):
            info = {"build": build(), **info}
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_):
                pass

            def do_GET(self):
                authorizations.append(self.headers.get("Authorization"))
                body = info if isinstance(info, bytes) else json.dumps(info).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                authorizations.append(self.headers.get("Authorization"))
                self.rfile.read(int(self.headers["Content-Length"]))
                posts.append(self.path)
                self.send_response(200)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(stream)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", posts
    start.authorizations = authorizations
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def args_for(*argv):
    from codecomplete.cli import build_parser
    return build_parser().parse_args([str(arg) for arg in argv])


def announce_file(folder, url, repo, pid, api_key=None):
    """A runtime file as `codecomplete serve` writes it; `pid` is alive (this process)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{pid}.json"
    from codecomplete.client import build
    path.write_text(json.dumps({"url": url, "repo": str(repo), "model_spec": None, "engine": ENGINE, "pid": pid,
                                "api_key": api_key, "build": build()}))
    path.chmod(0o600)
    return path


def test_a_runtime_file_that_outlived_its_server_is_not_believed(stand_in, tmp_path, monkeypatch):
    """The server was killed (its file stays), its process id went to another process, and its port to another
    program or to a server for another repository: the command line runs in process, never sends the code there."""
    import os

    from codecomplete import client

    monkeypatch.setenv("CODECOMPLETE_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("CODECOMPLETE_SERVER", raising=False)
    monkeypatch.delenv("CODECOMPLETE_MODEL", raising=False)
    repo, other = tmp_path / "repo", tmp_path / "other"
    args = args_for(repo, "--file", "a.py", "--device", "cpu")
    for info in (b"<html>a web app took the port</html>", {"repo": str(other), "model_spec": None, "engine": ENGINE}):
        url, _ = stand_in(info)
        announce_file(tmp_path / "run" / "servers", url, repo, os.getpid())
        assert client.connect(args, repo, 8) is None
    url, _ = stand_in({"repo": str(repo), "model_spec": None, "engine": ENGINE})
    announce_file(tmp_path / "run" / "servers", url, repo, os.getpid())
    assert client.connect(args, repo, 8).url == url          # (the same file, with a server that fits: used)
    # The same folder by another name (macOS's ~/Proj for ~/proj; a link plays it here) is the same repository.
    repo.mkdir(exist_ok=True)
    (tmp_path / "Repo").symlink_to(repo)
    assert "serves" not in (client.mismatch({"repo": str(tmp_path / "Repo")}, args, repo, 8) or "")
    assert "serves" in client.mismatch({"repo": str(other)}, args, repo, 8)


def test_a_server_started_with_other_options_than_the_defaults_is_not_used_without_them():
    """A server started with --dtype bfloat16 or --kv-cache int8 prints other text than this process, which leaves
    them out, would; one whose options are this machine's defaults, named or not, is used."""
    from codecomplete import client

    def server(device=None, **engine):       # (a CPU server's defaults; a test's engine holds what it was given)
        return {"repo": None, "model_spec": None, "default_device": "cpu", "device": device,
                "defaults": {"dtype": "float32", "attention": "sdpa"}, "engine": {**ENGINE, **engine}}
    plain = args_for("--prompt", "x")
    assert "--dtype bfloat16" in client.mismatch(server(dtype="bfloat16", kv_cache="bfloat16"), plain, None, 8)
    assert "--kv-cache int8" in client.mismatch({**server(kv_cache="int8"), "kv_cache": "int8"}, plain, None, 8)
    assert "--attention eager" in client.mismatch(server(attention="eager"), plain, None, 8)
    assert client.mismatch(server(), plain, None, 8) is None
    assert client.mismatch(server(device="cpu"), plain, None, 8) is None
    assert client.mismatch(server(kv_cache="int8"), args_for("--prompt", "x", "--kv-cache", "int8"), None, 8) is None
    assert client.mismatch(server(), args_for("--prompt", "x", "--kv-cache", "fp32"), None, 8) is None
    on_gpu = {**server(), "default_device": "cuda"}       # a CPU server on a machine whose default is the GPU
    assert "--device cpu" in client.mismatch(on_gpu, plain, None, 8)


def test_the_defaults_a_server_announces_are_what_a_command_line_leaving_options_out_gets():
    """The command line imports no torch, so it cannot tell which attention the engine picks; it restated the rule
    (flash on CUDA) and missed the head dim: a CUDA server for a model whose head dim the kernels do not take runs
    sdpa by default, and a command line on its defaults ran alone instead of through it. It compares against the
    server's announced defaults; a record from before them is read as its engine and the options it was given."""
    from codecomplete import client

    cuda = {**ENGINE, "device": "cuda", "dtype": "bfloat16", "kv_cache": "bfloat16"}
    odd_head = {"repo": None, "model_spec": None, "default_device": "cuda", "device": None, "dtype": None,
                "attention": None, "defaults": {"dtype": "bfloat16", "attention": "sdpa"}, "engine": cuda}
    plain = args_for("--prompt", "x")
    assert client.mismatch(odd_head, plain, None, 8) is None
    assert "--attention sdpa" in client.mismatch(odd_head, args_for("--prompt", "x", "--attention", "flash"), None, 8)
    old = {key: value for key, value in odd_head.items() if key != "defaults"}
    assert client.mismatch(old, plain, None, 8) is None                     # started without options: its defaults
    assert "--dtype bfloat16" in client.mismatch({**old, "dtype": "bfloat16"}, plain, None, 8)   # given: unknown
    assert client.mismatch({**old, "dtype": "bfloat16"}, args_for("--prompt", "x", "--dtype", "bfloat16"), None,
                           8) is None
    # Started with --dtype bfloat16, which is the default there: a command line without it is served.
    assert client.mismatch({**odd_head, "dtype": "bfloat16"}, plain, None, 8) is None


def test_a_server_announces_its_defaults_where_it_was_given_options(served_repo, monkeypatch):
    """A real server's description: the dtype a command line leaving --dtype out gets here, whatever the server was
    given; the attention only where the server was started without one (only its engine decides it)."""
    from codecomplete import client
    from codecomplete.cli import build_serve_parser
    from codecomplete.server import serve

    argv = [served_repo, "--dtype", "float32", "--attention", "sdpa"]
    session = serve_until_loaded(monkeypatch, *argv)
    args = build_serve_parser().parse_args([*map(str, argv), "--device", "cpu"])
    info = serve._description("http://127.0.0.1:1", served_repo, args, session.engine)
    assert info["defaults"] == {"dtype": "float32", "matmul_dtype": "float32", "attention": None}   # (suite: no bf16)
    assert info["engine"]["dtype"] == "float32" and info["engine"]["attention"] == "sdpa"
    assert info["build"] == client.build() and client.other_build(info) is None     # (test_upgrades.py)
    named = args_for(served_repo, "--file", "app.py", "--attention", "sdpa")
    assert client.mismatch(info, named, served_repo, 8) is None
    assert "--attention sdpa" in client.mismatch(info, args_for(served_repo, "--file", "app.py"), served_repo, 8)


def test_a_named_server_gets_the_api_key_its_runtime_file_holds_and_no_other_url_does(stand_in, tmp_path,
                                                                                      monkeypatch):
    """--server URL used only $CODECOMPLETE_API_KEY: a server with --api-key that announced itself answered 401
    unless the user exported its key too. Its key now goes to the URL its trusted runtime file names (written as
    the user likes: no scheme, a slash), and to no other URL; a file discovery would not believe gives none."""
    import os

    from codecomplete import client

    monkeypatch.setenv("CODECOMPLETE_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("CODECOMPLETE_SERVER", raising=False)
    monkeypatch.delenv("CODECOMPLETE_API_KEY", raising=False)
    monkeypatch.delenv("CODECOMPLETE_MODEL", raising=False)
    url, _ = stand_in({"repo": None, "model_spec": None, "engine": ENGINE})
    other, _ = stand_in({"repo": None, "model_spec": None, "engine": ENGINE})
    folder = tmp_path / "run" / "servers"
    announce_file(folder, url, tmp_path, os.getpid(), api_key="secret")
    for named in (url, url.removeprefix("http://") + "/"):
        assert client.connect(args_for("--prompt", "x", "--server", named, "--device", "cpu"), None, 1).api_key \
            == "secret"
        assert stand_in.authorizations.pop() == "Bearer secret"
    assert client.connect(args_for("--prompt", "x", "--server", other, "--device", "cpu"), None, 1).api_key is None
    assert stand_in.authorizations.pop() is None
    monkeypatch.setenv("CODECOMPLETE_API_KEY", "exported")          # elsewhere: the user's own key, as before
    assert client.connect(args_for("--prompt", "x", "--server", other, "--device", "cpu"), None, 1).api_key \
        == "exported"
    assert stand_in.authorizations.pop() == "Bearer exported"
    folder.chmod(0o777)                                             # a folder everyone may write to: not believed
    assert client.connect(args_for("--prompt", "x", "--server", url, "--device", "cpu"), None, 1).api_key \
        == "exported"
    assert stand_in.authorizations == ["Bearer exported"]
    folder.chmod(0o700)


def test_a_runtime_file_another_user_could_have_written_is_not_believed(stand_in, tmp_path, monkeypatch):
    import os

    from codecomplete import client

    monkeypatch.setenv("CODECOMPLETE_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("CODECOMPLETE_SERVER", raising=False)
    monkeypatch.delenv("CODECOMPLETE_MODEL", raising=False)
    repo, folder = tmp_path / "repo", tmp_path / "run" / "servers"
    args = args_for(repo, "--file", "a.py", "--device", "cpu")
    url, posts = stand_in({"repo": str(repo), "model_spec": None, "engine": ENGINE})
    path = announce_file(folder, url, repo, os.getpid())
    assert client.connect(args, repo, 8) is not None           # as written: believed
    folder.chmod(0o777)                                         # a folder everyone may write to
    assert client.connect(args, repo, 8) is None
    folder.chmod(0o700)
    path.chmod(0o666)                                           # a file everyone may write to
    assert client.connect(args, repo, 8) is None
    path.rename(folder / "elsewhere")
    path.symlink_to(folder / "elsewhere")                       # a link (to wherever someone likes)
    assert client.connect(args, repo, 8) is None


def test_a_server_announced_in_a_folder_others_may_write_to_keeps_its_key_to_itself(tmp_path, monkeypatch, capsys):
    from codecomplete.server.discovery import announce

    monkeypatch.setenv("CODECOMPLETE_RUNTIME_DIR", str(tmp_path))
    (tmp_path / "servers").mkdir(mode=0o777)
    (tmp_path / "servers").chmod(0o777)
    with announce({"api_key": "secret"}) as path:
        assert path is None and list((tmp_path / "servers").iterdir()) == []
    assert "not announcing" in capsys.readouterr().err


def test_a_runtime_directory_that_cannot_be_trusted_means_no_server_not_a_crash(monkeypatch, tmp_path, capsys):
    """platformdirs refuses a /tmp/runtime-UID that another user created first (PermissionError): the command line
    runs in process and a server serves unannounced, each instead of failing."""
    import platformdirs

    from codecomplete import client
    from codecomplete.server.discovery import announce

    def refused(*_args, **_kwargs):
        raise PermissionError("runtime directory /tmp/runtime-1000 is owned by uid 1001, not 1000")
    monkeypatch.delenv("CODECOMPLETE_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("CODECOMPLETE_SERVER", raising=False)
    monkeypatch.setattr(platformdirs, "user_runtime_dir", refused)
    assert client.connect(args_for(tmp_path, "--file", "a.py"), tmp_path, 8) is None
    with announce({"api_key": None}) as path:
        assert path is None
    assert "owned by uid 1001" in capsys.readouterr().err


def test_a_server_whose_runtime_file_cannot_be_written_serves_unannounced(tmp_path, monkeypatch, capsys):
    """A full disk (or quota) under the runtime directory: the write's OSError came out of `announce` and the server
    stopped with an error after loading its model, leaving an empty file behind. Now it serves, unannounced, as it
    does where the directory cannot be trusted, and leaves no file."""
    import errno

    from codecomplete.server import discovery

    def disk_full(record, file):
        file.write(json.dumps(record)[:10])
        file.flush()
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setenv("CODECOMPLETE_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setattr(discovery.json, "dump", disk_full)
    with discovery.announce({"url": "http://127.0.0.1:1", "api_key": "k"}) as path:
        assert path is None and list((tmp_path / "servers").iterdir()) == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not announcing this server (No space left on device)" in err


def test_a_server_whose_record_was_removed_writes_it_again_while_it_serves(tmp_path, monkeypatch):
    """A cleaner that ages files out of /tmp (where platformdirs falls back to /tmp/runtime-UID) or a hand removed a
    server's record, folder and all, and every command line after ran in its own process while the server lived.
    The server now looks every RECORD_CHECK_S and writes the record again, the same record, into its private folder;
    once the server stops the record goes, and is never written after."""
    import time

    from codecomplete.server import discovery

    monkeypatch.setenv("CODECOMPLETE_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setattr(discovery, "RECORD_CHECK_S", 0.05)
    info = {"url": "http://127.0.0.1:1", "repo": str(tmp_path / "repo"), "api_key": "k"}

    def back(path) -> bool:
        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return path.exists()
    with discovery.announce(info) as path:
        first = path.read_text(encoding="utf-8")
        path.unlink()
        assert back(path) and path.read_text(encoding="utf-8") == first
        path.unlink()
        path.parent.rmdir()                             # its folder too
        assert back(path) and path.read_text(encoding="utf-8") == first
        assert (path.parent.stat().st_mode & 0o777) == 0o700
        assert [server["url"] for server in discovery.running_servers()] == [info["url"]]
    assert not path.exists()
    time.sleep(0.3)                                     # (six looks' time: the keeper stopped with the server)
    assert not path.exists()


def test_servers_are_found_newest_announced_first_whenever_their_records_were_written(tmp_path, monkeypatch):
    """Two servers of one repository: the command line takes the first found, the newest. Ordered by the records'
    mtimes, an older server whose record the keeper wrote again (its folder cleaned) came first."""
    from codecomplete.server import discovery

    monkeypatch.setenv("CODECOMPLETE_RUNTIME_DIR", str(tmp_path))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])     # the older server's process
    try:
        with discovery.announce({"url": "http://127.0.0.1:2", "api_key": "k"}) as newer:
            older = newer.with_name(f"{other.pid}.json")
            record = {**json.loads(newer.read_text(encoding="utf-8")), "url": "http://127.0.0.1:1", "pid": other.pid}
            older.write_text(json.dumps({**record, "announced": record["announced"] - 60}), encoding="utf-8")
            older.chmod(0o600)
            os.utime(newer, (0, 0))                             # the newer record written first...
            assert [info["url"] for info in discovery.running_servers()] == ["http://127.0.0.1:2",
                                                                              "http://127.0.0.1:1"]
            older.write_text(json.dumps({**record, "announced": float("nan")}), encoding="utf-8")
            assert [info["url"] for info in discovery.running_servers()] == ["http://127.0.0.1:1",
                                                                              "http://127.0.0.1:2"]
    finally:
        other.kill()
        other.wait()


# A server killed (SIGKILL, the OOM killer) while it writes its runtime file: half a record stays.
KILLED_WHILE_ANNOUNCING = """
import json, os, signal
from codecomplete.server import discovery

def killed(record, file):
    file.write(json.dumps(record)[:10])
    file.flush()
    os.kill(os.getpid(), signal.SIGKILL)

discovery.json.dump = killed
with discovery.announce({"url": "http://127.0.0.1:1", "api_key": None}):
    pass
"""


def test_half_a_runtime_file_goes_once_its_server_is_gone(tmp_path, monkeypatch):
    """Clients remove the file of a server that is gone by the process id in it: half a record has none, so the file
    of a server killed while writing it stayed for good. Its name says the process: gone, the file goes; alive (a
    server writing it this moment), it stays and is not believed."""
    import signal
    import subprocess

    from codecomplete.server import discovery

    monkeypatch.setenv("CODECOMPLETE_RUNTIME_DIR", str(tmp_path))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    killed = subprocess.run([sys.executable, "-c", KILLED_WHILE_ANNOUNCING], env=env, capture_output=True, text=True,
                            timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    [half] = (tmp_path / "servers").iterdir()
    writing = tmp_path / "servers" / f"{os.getpid()}.json"          # a live server's, half written
    writing.write_text(half.read_text())
    writing.chmod(0o600)
    assert discovery.running_servers() == []
    assert list((tmp_path / "servers").iterdir()) == [writing]


@pytest.mark.parametrize("pid", ["2147483648", "1e400"])
def test_a_record_whose_pid_no_process_can_have_is_passed_over(tmp_path, monkeypatch, pid):
    """os.kill takes no id past 2**31 - 1: such a record (Infinity too) made every command line fail with an internal
    OverflowError while it looked for a server."""
    from codecomplete.server import discovery

    monkeypatch.setenv("CODECOMPLETE_RUNTIME_DIR", str(tmp_path))
    folder = tmp_path / "servers"
    folder.mkdir(mode=0o700)
    (folder / "odd.json").write_text(f'{{"url": "http://127.0.0.1:1", "pid": {pid}}}')
    (folder / "odd.json").chmod(0o600)
    assert discovery.running_servers() == []


@pytest.mark.parametrize("damage", [
    {"url": None}, {"url": 5}, {"repo": 5}, {"model_spec": 5}, {"engine": None}, {"engine": "x"},
    {"engine": {**ENGINE, "context_length": None}}, {"api_key": "a\nb"}, {"api_key": 5}, "no url"])
def test_a_runtime_file_of_another_shape_is_not_believed(tmp_path, monkeypatch, damage):
    """A record of a live process with a field missing or of another type (damaged in place, edited by hand, written
    by another version) made every command line for that repository fail with an internal error (TypeError,
    KeyError: 'url', ValueError: Invalid header value) until the server ended; it is passed over as half a record
    is, and the command runs in process."""
    from codecomplete import client
    from codecomplete.server import discovery

    monkeypatch.setenv("CODECOMPLETE_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("CODECOMPLETE_SERVER", raising=False)
    monkeypatch.delenv("CODECOMPLETE_MODEL", raising=False)
    repo = tmp_path / "repo"
    path = announce_file(tmp_path / "run" / "servers", "http://127.0.0.1:1", repo, os.getpid())
    record = json.loads(path.read_text())
    if damage == "no url":
        del record["url"]
    else:
        record.update(damage)
    path.write_text(json.dumps(record))
    assert discovery.running_servers() == []
    assert client.connect(args_for(repo, "--file", "a.py", "--device", "cpu"), repo, 8) is None
    assert path.exists()            # (its process lives: the file is not removed)


def test_servers_are_announced_and_found_on_windows(monkeypatch, tmp_path):
    """Windows has no os.geteuid or O_NOFOLLOW (announcing a server, and every command looking for one, was an
    AttributeError), every folder reads as mode 0777 there, and os.kill(pid, 0) is TerminateProcess: asking
    whether a server lives would have ended it. Windows' kernel32 is played by a stand-in that knows this process."""
    import ctypes

    from codecomplete.server import discovery

    class Kernel32:
        def __init__(self, *_args, **_kwargs):
            self.OpenProcess = lambda _access, _inherit, pid: 7 if pid == os.getpid() else 0

        def GetExitCodeProcess(self, handle, code):
            assert handle.value == 7
            ctypes.cast(code, ctypes.POINTER(ctypes.c_ulong)).contents.value = 259    # STILL_ACTIVE
            return 1

        def CloseHandle(self, handle):
            return 1

    def kill(*_args):
        raise AssertionError("os.kill on Windows terminates the process")
    monkeypatch.setenv("CODECOMPLETE_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delattr(os, "geteuid")
    monkeypatch.delattr(os, "O_NOFOLLOW")
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(ctypes, "WinDLL", Kernel32, raising=False)
    monkeypatch.setattr(os, "kill", kill)
    with discovery.announce({"url": "http://127.0.0.1:1", "api_key": "k"}) as path:
        assert path is not None
        (tmp_path / "servers").chmod(0o777)                     # as Windows reports every folder
        (tmp_path / "servers" / "4194304.json").write_text('{"url": "http://127.0.0.1:2", "pid": 4194304}')
        assert [info["url"] for info in discovery.running_servers()] == ["http://127.0.0.1:1"]
    assert list((tmp_path / "servers").iterdir()) == []        # the dead server's file removed, ours at exit


def test_on_windows_a_second_server_cannot_take_a_port_one_listens_on(monkeypatch):
    """Windows' SO_REUSEADDR lets a second socket bind a port that one already listens on: two servers shared the
    requests of one port, neither with an error. There the listener asks for SO_EXCLUSIVEADDRUSE instead."""
    import socket

    from codecomplete.server import serve

    options = []

    def setsockopt(self, level, option, value):
        options.append(option)
        if option == socket.SO_REUSEADDR:       # (the stand-in's SO_EXCLUSIVEADDRUSE is not Linux's to set)
            socket.socket.setsockopt(self, level, option, value)
    monkeypatch.setattr(serve._Listener, "setsockopt", setsockopt)     # (the listener's class: serve._Listener)
    monkeypatch.setattr(socket, "SO_EXCLUSIVEADDRUSE", -5, raising=False)     # ~SO_REUSEADDR, as Windows has it
    serve._listen("127.0.0.1", 0).close()
    assert options == [-5]
    monkeypatch.delattr(socket, "SO_EXCLUSIVEADDRUSE")                         # POSIX
    serve._listen("127.0.0.1", 0).close()
    assert options == [-5, socket.SO_REUSEADDR]


def test_a_host_this_machine_cannot_listen_on_is_a_usage_error(monkeypatch):
    """`serve --host [::1]` (IPv6 as URLs write it) was refused as "reachable from other machines"; a host that names
    no address here (a typo, another machine's address) was exit status 1, a runtime failure, where the README's
    table says 2 for a bad option value. A port another program holds stays 1."""
    import socket

    from codecomplete import cli
    from codecomplete.errors import AppError, UsageError
    from codecomplete.server import serve

    args = cli.build_serve_parser().parse_args(["--host", "[::1]"])
    cli.check_serve(args)
    assert args.host == "::1" and serve._is_loopback(args.host)
    with pytest.raises(UsageError, match="cannot listen on 192.0.2.1:0"):      # TEST-NET-1: no machine's own
        serve._listen("192.0.2.1", 0)

    def unknown(self, address):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    with monkeypatch.context() as patch:
        patch.setattr(socket.socket, "bind", unknown)
        with pytest.raises(UsageError, match="cannot listen on no-such-host:8012: Name or service not known"):
            serve._listen("no-such-host", 8012)
    taken = serve._listen("127.0.0.1", 0)
    with pytest.raises(AppError) as failure:
        serve._listen("127.0.0.1", taken.getsockname()[1])
    taken.close()
    assert not isinstance(failure.value, UsageError)


def test_a_record_windows_will_not_remove_while_it_is_read_is_no_crash(monkeypatch, tmp_path):
    """Windows refuses to remove a file that another process has open: a client reading a server's record as the
    server stopped ended the server in an internal error, and a client removing a stale record as another read it
    ended in one too. The record stays until the next client finds its process gone."""
    from pathlib import Path

    from codecomplete.server import discovery

    def refused(self, missing_ok=False):
        raise PermissionError(13, "The process cannot access the file because it is being used by another process")
    monkeypatch.setenv("CODECOMPLETE_RUNTIME_DIR", str(tmp_path))
    with discovery.announce({"url": "http://127.0.0.1:1"}) as path:
        (tmp_path / "servers" / "4194304.json").write_text('{"url": "http://127.0.0.1:2", "pid": 4194304}')
        monkeypatch.setattr(Path, "unlink", refused)
        assert [info["url"] for info in discovery.running_servers()] == ["http://127.0.0.1:1"]
    assert path.exists()


def test_a_server_never_announces_itself_inside_its_repository(monkeypatch, tmp_path, capsys):
    from codecomplete.server.discovery import announce

    monkeypatch.setenv("CODECOMPLETE_RUNTIME_DIR", str(tmp_path / "repo" / ".run"))
    (tmp_path / "repo").mkdir()
    with announce({"repo": str(tmp_path / "repo"), "api_key": "secret"}) as path:
        assert path is None
    assert list((tmp_path / "repo").iterdir()) == [] and "inside the repository" in capsys.readouterr().err


@pytest.mark.parametrize("url", ["http://127.0.0.1:abc", "http://[::1", "http://127.0.0.1:99999", "http://a b:80",
                                 "ftp://127.0.0.1:1", "  ", "notaurl", "http:notaurl", "localhost"])
def test_a_bad_server_url_is_a_usage_error(url, capsys):
    """`notaurl` was taken for a bare host at port 80, and its failed lookup exited 1: neither http://HOST[:PORT] nor
    a bare HOST:PORT is a usage error, said before any connection."""
    from codecomplete.cli import main

    assert main(["--prompt", "x", "--server", url, "--max-tokens", "1"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "internal error" not in err and "--server" in err, err


@pytest.mark.parametrize("info", [b"<html>not json</html>",
                                  {"repo": None, "model_spec": 5, "engine": ENGINE},
                                  {"repo": None, "model_spec": None, "engine": {**ENGINE, "context_length": "8k"}}])
def test_something_else_at_the_server_url_is_an_error_not_a_crash(stand_in, info, capsys):
    from codecomplete.cli import main

    url, _ = stand_in(info)
    assert main(["--prompt", "x", "--server", url, "--max-tokens", "1"]) == 2
    err = capsys.readouterr().err
    assert "does not answer as `codecomplete serve`" in err and len(err.strip().splitlines()) == 1, err


def test_a_port_that_does_not_speak_http_is_not_a_server(tmp_path, monkeypatch, capsys):
    """SSH (or anything not HTTP) at the port, named with --server or in a runtime file that outlived its server:
    exit 2 with one line, or run in process. http.client's BadStatusLine was an internal error either way, so a
    stale runtime file broke every command for that repository."""
    import os
    import socket
    import threading

    from codecomplete import client
    from codecomplete.cli import main

    listener = socket.create_server(("127.0.0.1", 0))

    def answer():
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:         # closed: the test is over
                return
            with connection:
                connection.recv(65536)
                connection.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
    threading.Thread(target=answer, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        assert main(["--prompt", "x", "--server", url, "--max-tokens", "1"]) == 2
        err = capsys.readouterr().err
        assert "does not answer as `codecomplete serve`" in err and len(err.strip().splitlines()) == 1, err
        monkeypatch.setenv("CODECOMPLETE_RUNTIME_DIR", str(tmp_path / "run"))
        monkeypatch.delenv("CODECOMPLETE_SERVER", raising=False)
        monkeypatch.delenv("CODECOMPLETE_MODEL", raising=False)
        announce_file(tmp_path / "run" / "servers", url, tmp_path, os.getpid())
        assert client.connect(args_for(tmp_path, "--file", "a.py", "--device", "cpu"), tmp_path, 8) is None
    finally:
        listener.close()


def test_a_server_killed_mid_answer_is_an_error_not_a_crash(stand_in, capsys):
    """The stream ends inside a chunk (the server was killed): what the command line says, as for any cut."""
    from codecomplete.cli import main

    first = (b'{"id": "j", "prompt": {"ids": [1], "context": [], "stop_token_ids": [], "stop_strings": [], '
             b'"format": "raw"}}\n')
    stream = b"%x\r\n%s\r\n" % (len(first), first) + b'64\r\n{"text": "ab"}\n'      # 0x64 bytes promised
    url, _ = stand_in({"repo": None, "model_spec": None, "engine": ENGINE}, stream, {"Transfer-Encoding": "chunked"})
    assert main(["--prompt", "x", "--server", url, "--max-tokens", "1", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "closed the connection mid-answer" in err and "internal error" not in err, err


@pytest.mark.parametrize("stream", [b'{"hello": 1}\n',
                                    b'{"id": "j", "prompt": {"ids": [1], "context": [], "stop_token_ids": [], '
                                    b'"stop_strings": [], "format": "raw"}}\n{"text": "ab"}\n<html>\n',
                                    b'{"id": "j", "prompt": {"ids": [1], "context": [], "stop_token_ids": [], '
                                    b'"stop_strings": [], "format": "raw"}}\n{"result": {"text": "ab"}}\n',
                                    # a line that is not an object, a text that is not a string
                                    *[b'{"id": "j", "prompt": {"ids": [1], "context": [], "stop_token_ids": [], '
                                      b'"stop_strings": [], "format": "raw"}}\n' + line
                                      for line in (b'"text"\n', b'[1]\n', b'{"text": 5}\n', b'{"text": null}\n')]])
def test_a_broken_answer_from_a_server_is_an_error_not_a_crash(stand_in, stream, capsys):
    from codecomplete.cli import main

    url, posts = stand_in({"repo": None, "model_spec": None, "engine": ENGINE}, stream)
    assert main(["--prompt", "x", "--server", url, "--max-tokens", "1", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert posts and "not part of an answer" in err and "internal error" not in err, err



def serve_until_loaded(monkeypatch, *argv):
    """`codecomplete serve ARGV`, stopped once its session is open: the session."""
    from codecomplete.cli import build_serve_parser
    from codecomplete.server import serve

    class Loaded(Exception):
        pass

    def open_session(*args, **kwargs):
        raise Loaded(real(*args, **kwargs))
    real = serve.open_session
    monkeypatch.setattr(serve, "open_session", open_session)
    with pytest.raises(Loaded) as loaded:
        serve.run_serve(build_serve_parser().parse_args([*map(str, argv), "--port", "0", "--device", "cpu"]))
    return loaded.value.args[0]


def test_sigterm_while_a_server_starts_says_so_in_one_line_and_exits_143(served_repo, monkeypatch, capsys):
    """`kill` while `serve` loaded the model ended it with 143 and nothing in its log, where Ctrl-C there says
    "interrupted" (130): the log now says why it ended."""
    import signal

    from codecomplete import cli
    from codecomplete.server import serve

    def open_session(*args, **kwargs):      # the signal arrives while the model loads
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the start-up")
    monkeypatch.setattr(serve, "open_session", open_session)
    handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGHUP)}
    try:
        with pytest.raises(SystemExit) as stopped:
            cli.main(["serve", str(served_repo), "--port", "0", "--device", "cpu"])
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    assert stopped.value.code == 143
    assert capsys.readouterr().err == "codecomplete: stopped by SIGTERM\n"


def test_a_server_on_its_defaults_answers_a_question_on_its_defaults(served_repo, monkeypatch):
    """`codecomplete serve REPO` on a CPU, then `codecomplete REPO --ask Q`: the server's cache must hold the prompt
    budget and an answer's default 512 tokens. It held 1,024 + 256, so --ask ran alone (or, with --server, exit 2)."""
    from codecomplete import chat, client

    session = serve_until_loaded(monkeypatch, served_repo)
    info = {"repo": str(served_repo), "model_spec": None, "default_device": "cpu",
            "engine": {**ENGINE, "context_length": session.engine.context_length}}
    question = args_for(served_repo, "--ask", "why?")
    assert client.mismatch(info, question, served_repo, chat.DEFAULT_MAX_TOKENS) is None
    assert session.prompt_budget(256) == 1024           # an editor's prompts: the budget they had


def test_a_server_for_a_small_model_starts_on_the_defaults(served_repo, monkeypatch, tmp_path, converted_model):
    """The answer's headroom is given only where the model holds it: a 512-position checkpoint serves as before."""
    from test_hostile_inputs import checkpoint

    small = checkpoint(converted_model, tmp_path / "small", max_position_embeddings=512)
    session = serve_until_loaded(monkeypatch, served_repo, "--model", small)
    assert session.engine.context_length == 512 and session.prompt_budget(256) == 256


def test_a_server_split_over_ranks_is_used_only_by_a_command_line_that_asks_for_as_many():
    """A model split over ranks (--gpus 2) sums its all-reduced parts in another order than one process does, and
    the command line leaving --gpus out runs one: it used any server, --gpus 2 included, as if it matched."""
    from codecomplete import client

    def server(gpus):
        return {"repo": None, "model_spec": None, "default_device": "cpu", "device": "cpu", "gpus": gpus,
                "defaults": {"dtype": "float32", "attention": "sdpa"}, "engine": ENGINE}
    plain, one, two = (args_for("--prompt", "x", *gpus) for gpus in ((), ("--gpus", "1"), ("--gpus", "2")))
    assert "runs --gpus 2, not 1 (the default)" in client.mismatch(server(2), plain, None, 8)
    assert "runs --gpus 2, not 1" in client.mismatch(server(2), one, None, 8)
    assert "runs --gpus 1, not 2" in client.mismatch(server(None), two, None, 8)
    assert client.mismatch(server(2), two, None, 8) is None
    for gpus in (None, 1):
        assert client.mismatch(server(gpus), plain, None, 8) is None
        assert client.mismatch(server(gpus), one, None, 8) is None


def test_an_option_a_server_does_not_announce_is_not_dropped_on_the_way(stand_in, tmp_path, monkeypatch):
    """A server from before --speculate reached the protocol ignores it (request bodies drop unknown fields): the
    command line naming it used that server, which answered with its own default. A server announces the options it
    takes; one that does not announce --speculate is not used for a command line that names it (named: an error)."""
    import os
    import types

    from codecomplete import client
    from codecomplete.errors import UsageError
    from codecomplete.server import serve

    engine = types.SimpleNamespace(**{**ENGINE, "kv_cache_dtype": "float32", "matmul_dtype": "float32"})
    info = serve._description("http://127.0.0.1:1", tmp_path, args_for(tmp_path, "--device", "cpu"), engine)
    assert "speculate" in info["options"]
    asked = args_for("--prompt", "x", "--speculate", "0", "--device", "cpu")
    assert client.mismatch(info, asked, None, 8) is None
    old = {key: value for key, value in info.items() if key != "options"}
    assert client.mismatch(old, asked, None, 8) == "does not take --speculate (an older version)"
    assert client.mismatch(old, args_for("--prompt", "x", "--device", "cpu"), None, 8) is None   # (left out: its default)
    monkeypatch.setenv("CODECOMPLETE_RUNTIME_DIR", str(tmp_path / "run"))
    url, posts = stand_in(old)
    monkeypatch.setenv("CODECOMPLETE_SERVER", url)
    with pytest.raises(UsageError, match=f"^the server at {url} does not take --speculate"):
        client.connect(asked, None, 8)
    monkeypatch.delenv("CODECOMPLETE_SERVER")
    announce_file(tmp_path / "run" / "servers", url, tmp_path, os.getpid())     # found, not named: run in process
    assert client.connect(asked, None, 8) is None and client.connect(args_for("--prompt", "x"), None, 8).url == url
    assert posts == []


def test_a_completion_through_the_server_knows_its_texts_line_end(server, served_repo):
    """The command line's repeated-lines stop splits the suggestion where the text's line ends put them
    (codecomplete/repeats.py): through a server, the prompt it gets back says the line end the server writes the
    answer with ("\\r" for a lone-CR buffer), as the in-process prompt does; a "\\n" buffer's stays "\\n"."""
    from codecomplete import client

    remote = client.RemoteSession(server.url, server.info, None, 300)
    for text, line_end in [("def f():\r    return 1\r\rdef g():\r    ", "\r"),
                           ("def f():\r\n    return 1\r\n\r\ndef g():\r\n    ", "\r\n"),
                           ("def f():\n    return 1\n\ndef g():\n    ", "\n")]:
        generation = remote.complete("cr.py", text=text, line=5, col=5, sampling=Sampling(max_tokens=2))
        assert generation.prompt.line_end == line_end
        result = generation.run()
        assert "\n" not in result.text or line_end != "\r"


def test_the_client_reads_context_items_with_fields_it_does_not_know():
    """A newer server's context items may carry more fields (`buffer` came so): the client keeps those it knows
    instead of refusing the answer as malformed; one it needs and lacks still is."""
    from codecomplete import client
    item = client._context_item({"path": "a.py", "start_line": 3, "end_line": 9, "tokens": 40, "form": "whole",
                                 "buffer": True, "added_later": [1, 2]})
    assert (item.path, item.start_line, item.end_line, item.tokens, item.buffer) == ("a.py", 3, 9, 40, True)
    with pytest.raises(TypeError):
        client._context_item({"path": "a.py", "start_line": 3, "tokens": 40})


def test_a_server_for_a_repository_whose_path_is_not_utf8_answers_and_is_used(script, cli_env, tmp_path):
    """A repository folder whose name is not UTF-8 (`r\\xff`, as os gives it: a lone surrogate): every JSON answer
    that named it failed to encode, a 500 with a traceback in the log: /codecomplete/v1/info, which the command line
    asks first, so that it never used the server and ran alone; and an error naming the repository. Now the name
    goes out as its JSON \\u escape, and the command line prints through the server what it prints alone."""
    from server_process import ServerProcess

    root = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"repo_\xff")))
    root.mkdir()
    (root / "geometry.py").write_text("def area_of_square(side):\n    return side * side\n")
    (root / "app.py").write_text("from geometry import area_of_square\n\n\ndef total(sides):\n    return sum(area_")
    (tmp_path / "server").mkdir()
    server = ServerProcess(script, root, cli_env, tmp_path / "server", "--context-tokens", "256", "--max-tokens", "8")
    try:
        info = httpx.get(server.url + "/codecomplete/v1/info", timeout=60)
        assert info.status_code == 200 and info.json()["repo"] == str(root), info.text
        outside = httpx.post(server.url + "/codecomplete/v1/complete", json={"path": "/etc/passwd", "max_tokens": 2}, timeout=60)
        assert outside.status_code == 400 and str(root) in outside.json()["error"]["message"], outside.text
        args = [root, "--file", "app.py", "--max-tokens", "3", "--context-tokens", "256", "--json"]
        code, served, err = run(script, server.env, *args)
        assert code == 0 and err == "", err
        assert server.log().count("POST /codecomplete/v1/complete") == 1, server.log()     # it went to the server
        code, alone, err = run(script, server.env, *args, "--no-server")
        assert code == 0, err
        same_output(served, alone)
    finally:
        assert server.stop() == 0, server.log()
    assert "Traceback" not in server.log(), server.log()


def test_a_file_name_that_is_not_utf8_is_completed_alone_not_sent_to_the_server(script, cli_env, tmp_path):
    """`--file h_\\xff.py` with a server running for the repository: the name reached the server with U+FFFD in
    place of the byte, another name, and the command failed "file not found: h_\\ufffd.py" (exit 2), though it
    completes alone. Such a name is completed in process, as it prints alone; a server named with --server says why
    it cannot take it (exit 2)."""
    from server_process import ServerProcess

    root = tmp_path / "repo"
    root.mkdir()
    (root / "geometry.py").write_text("def area_of_square(side):\n    return side * side\n")
    name = os.fsdecode(b"h_\xff.py")
    (root / name).write_text("from geometry import area_of_square\n\n\ndef total(sides):\n    return sum(area_")
    (tmp_path / "server").mkdir()
    server = ServerProcess(script, root, cli_env, tmp_path / "server", "--context-tokens", "256", "--max-tokens", "8")
    try:
        args = [root, "--file", name, "--max-tokens", "3", "--context-tokens", "256", "--json"]
        code, found, err = run(script, server.env, *args)
        assert code == 0 and err == "", err
        code, alone, err = run(script, server.env, *args, "--no-server")
        assert code == 0, err
        same_output(found, alone)
        code, named, err = run(script, server.env, *args, "--server", server.url)
        assert code == 2 and "not UTF-8" in err and "--no-server" in err, err
        assert "/codecomplete/v1/complete" not in server.log()        # nothing sent: another file's name
    finally:
        assert server.stop() == 0, server.log()


@pytest.mark.parametrize("key", ["ключ", "a\nb", "tab\there", "bell\x07"])
def test_an_api_key_no_header_can_carry_is_a_usage_error(script, cli_env, tmp_path, key):
    """$CODECOMPLETE_API_KEY with a character an HTTP header cannot carry (non-ASCII, a newline) made `--server URL`
    fail inside httpx: "internal error: UnicodeEncodeError ..." or "ValueError: Invalid header value", exit 1. `serve`
    refuses such a key at start-up (exit 2); the client now says the same of it, before any connection."""
    env = {**cli_env, "CODECOMPLETE_API_KEY": key, "CODECOMPLETE_RUNTIME_DIR": str(tmp_path / "run")}
    code, out, err = run(script, env, "--prompt", "x", "--max-tokens", "1", "--server", "http://127.0.0.1:9")
    assert (code, out) == (2, ""), err
    assert err.count("\n") == 1 and "$CODECOMPLETE_API_KEY must be printable ASCII" in err, err
    assert "internal error" not in err, err


def test_a_file_name_whose_bytes_here_are_not_its_utf_8_is_completed_in_process(monkeypatch):
    """A server takes a file's name as UTF-8. Under a Latin-1 locale this process reads the name `naïve.py` (UTF-8
    bytes on disk) as `naÃ¯ve.py`, which went to the server and named no file there: "file not found: naïve.py",
    exit 2, where `--no-server` completed it. Only a name whose bytes here are its UTF-8 is sent."""
    from codecomplete import client

    monkeypatch.setattr(os, "fsencode", lambda name: name.encode("latin-1", "surrogateescape"))  # a Latin-1 system
    assert client._unsendable("na\u00c3\u00afve.py") is not None
    assert client._unsendable("plain/app.py") is None and client._unsendable(None) is None

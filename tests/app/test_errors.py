"""Every failure is one line on stderr with its exit code, and never a traceback."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from child_process import wait_until_reading_stdin
from unreadable import deny_folder


def check_error(run, code, *words):
    assert run.returncode == code, (run.returncode, run.stderr)
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "Traceback" not in run.stderr
    for word in words:
        assert word in lines[0]


@pytest.mark.parametrize("args, words", [
    (["{missing}", "--file", "a.py"], ["repository not found"]),
    (["{repo}", "--file", "nope.py"], ["file not found", "nope.py"]),
    (["{repo}", "--file", "../outside.py"], ["outside the repository"]),
    (["{repo}", "--file", "app.py", "--line", "999"], ["line 999 is out of range"]),
    (["{repo}", "--file", "app.py", "--line", "1", "--col", "300"], ["column 300 is out of range"]),
    (["{repo}", "--file", "app.py", "--line", "0"], ["--line"]),
    (["{repo}", "--line", "3"], ["--line goes with --file"]),
    (["{repo}", "--ask", "why?", "--spm-infill"], ["--spm-infill goes with --file"]),    # an infill prompt's order
    (["--prompt", "x", "--spm-infill"], ["--spm-infill goes with --file"]),
    (["{repo}", "--file", "app.py", "--ask", "why?"], ["not allowed with"]),
    (["--prompt", "x", "{repo}"], ["--prompt takes no repository"]),
    ([], ["give a repository"]),
    (["{repo}", "--temperature", "-1"], ["--temperature"]),
    (["--prompt", "x", "--device", "tpu:0"], ["--device tpu:0"]),
    (["--prompt", "x", "--device", "cpu:99"], ["--device cpu:99", "takes no index"]),
    (["--prompt", "x", "--device", "cpu", "--threads", "100000"], ["--threads 100000: this process may use"]),
    (["--prompt", "x", "--device", "cuda:99"], ["--device cuda:99"]),   # no GPU here, or not 100 of them
    # an unquantized cache holds the model's dtype (the engine's own check, said before the weights load)
    (["--prompt", "x", "--device", "cpu", "--kv-cache", "bf16"], ["--kv-cache bf16", "bf16 model", "float32 here"]),
    (["{repo}"], ["needs a terminal"]),             # the REPL, with stdin not a terminal
])
def test_usage_and_input_errors_exit_2(codecomplete, repo, tmp_path, args, words):
    (tmp_path.parent / "outside.py").write_text("x = 1\n")
    args = [a.format(repo=repo, missing=tmp_path / "missing") for a in args]
    check_error(codecomplete(*args), 2, *words)


def test_a_huge_file_to_complete_in_is_refused_unread(codecomplete, tmp_path):
    """8 GB on paper (sparse: no blocks on disk): read whole, it took 34 s before "looks binary", or ran out of
    memory. (A folder of its own: the session's shared repository is copied by other tests.)"""
    repo = tmp_path / "huge"
    repo.mkdir()
    (repo / "app.py").write_text("x = 1\n")
    with open(repo / "sparse.py", "wb") as sparse:
        sparse.truncate(8 * 2 ** 30)
    try:
        check_error(codecomplete(str(repo), "--file", "sparse.py"), 2, "sparse.py is over 64 MiB")
    finally:
        (repo / "sparse.py").unlink()


def test_empty_repository_exits_2(codecomplete, tmp_path):
    (tmp_path / "empty").mkdir()
    check_error(codecomplete(tmp_path / "empty", "--ask", "anything?"), 2, "nothing to index")


def _git_folder(folder, remote: str):
    """A git folder as `git init --bare` lays one out (HEAD, objects, refs, a config naming a remote)."""
    for name in ("objects", "refs/heads", "hooks"):
        (folder / name).mkdir(parents=True)
    (folder / "HEAD").write_text("ref: refs/heads/main\n")
    (folder / "config").write_text(f'[core]\n\tbare = true\n[remote "origin"]\n\turl = {remote}\n')
    (folder / "hooks" / "pre-commit.sample").write_text("#!/bin/sh\nexit 0\n")
    return folder


@pytest.mark.parametrize("where", ["bare", ".git", ".git/hooks"])
@pytest.mark.parametrize("args", [["--ask", "What is the remote's url?"], ["--file", "config"], ["serve"]])
def test_a_git_folder_given_as_the_repository_is_refused(codecomplete, tmp_path, where, args):
    """A bare repository (`proj.git`), a checkout's `.git` or a folder in it has git's own files, no checked-out
    ones: they were indexed as the repository, and `config` (which may hold a remote's token) went into the prompt
    of `--ask`, a suggestion or a server's every request. Refused as git refuses (not a work tree), exit 2 (the
    checkout's own folder: the next test)."""
    checkout, git = _checkout_and_git_folder(tmp_path, where)
    repo = git if where == "bare" else checkout / where
    argv = ["serve", str(repo), "--port", "0"] if args == ["serve"] else [str(repo), *args]
    run = codecomplete(*argv, timeout=120)
    check_error(run, 2, str(repo), "git")
    assert "ghp_SECRET" not in run.stderr


# The two layouts the test above makes: a bare `proj.git` beside the checkout, or the checkout's own `.git` (the same
# files whether the refused folder was `.git` or `.git/hooks`, whatever the refused command was).
@pytest.mark.parametrize("where", ["bare", ".git"])
def test_a_checkout_beside_or_holding_a_git_folder_is_served_as_before(codecomplete, tmp_path, where):
    """A checkout's own folder, with its git folder beside it or in it, completes as before (exit 0)."""
    checkout, _ = _checkout_and_git_folder(tmp_path, where)
    assert codecomplete(checkout, "--file", "main.py", "--max-tokens", "1", "--no-server").returncode == 0


def _checkout_and_git_folder(tmp_path, where: str):
    """(checkout, git folder): `proj` with one file, and `proj.git` beside it ("bare") or `proj/.git`, whose config
    names a remote with a token in its url."""
    token = "https://alice:ghp_SECRET@example.com/alice/proj.git"
    checkout = tmp_path / "proj"
    checkout.mkdir()
    (checkout / "main.py").write_text("def main():\n    return 1\n")
    return checkout, _git_folder(tmp_path / "proj.git" if where == "bare" else checkout / ".git", token)


def test_model_not_found_exits_2(codecomplete, tmp_path):
    check_error(codecomplete("--model", tmp_path / "nowhere.gguf", "--prompt", "x"), 2, "nowhere.gguf")


def test_a_missing_model_in_the_environment_exits_2_naming_the_variable(script, cli_env, tmp_path):
    missing = tmp_path / "nowhere.gguf"
    run = subprocess.run([str(script), "--prompt", "x"], capture_output=True, text=True,
                         env={**cli_env, "CODECOMPLETE_MODEL": str(missing)}, timeout=300)
    check_error(run, 2, f"CODECOMPLETE_MODEL={missing}: no such file or directory")


@pytest.mark.parametrize("setting", ["CODECOMPLETE_PREFILL_BUCKET=abc", "CODECOMPLETE_GEMV=2"])
def test_a_bad_environment_setting_is_a_usage_error(script, cli_env, setting):
    """The tuning settings are the user's input like options: a one-line error and exit 2, not an internal error.
    (CODECOMPLETE_GEMV is read on a GPU only: checked here through the models package.)"""
    name, value = setting.split("=")
    if name == "CODECOMPLETE_GEMV":
        from codecomplete.errors import classify
        from models import SettingError
        from models.llama import use_gemv
        with pytest.raises(SettingError) as error:
            use_gemv(value)
        assert classify(error.value)[0] == 2
        return
    run = subprocess.run([str(script), "--prompt", "x", "--max-tokens", "1"], capture_output=True, text=True,
                         env={**cli_env, name: value}, timeout=300)
    check_error(run, 2, setting.replace("=", "='") + "'")


def test_unreadable_model_exits_1(codecomplete, tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    check_error(codecomplete("--model", broken, "--prompt", "x"), 1, "broken.gguf")


def test_a_git_lfs_pointer_for_a_model_exits_1_saying_to_pull_it(codecomplete, tmp_path):
    """A clone made without git-lfs: the same exit code as any unreadable model, and the one thing to do about it."""
    pointer = tmp_path / "clone" / "model.gguf"
    pointer.parent.mkdir()
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 98000000\n")
    check_error(codecomplete("--model", pointer, "--prompt", "x"), 1, "model.gguf: a Git LFS pointer",
                f"run `git lfs pull` in {pointer.parent}")


def test_another_package_named_kernels_is_said_as_such(script, cli_env, tmp_path):
    """Hugging Face's `kernels` (transformers 5.25 installs it) is a top-level `kernels` too: found first, our first
    import of kernels failed as an internal error naming neither package. A stand-in of it, first on the path. (The
    Triton interpreter's attention imports ours on a CPU; sdpa there needs none of it, and answers.)"""
    hidden = tmp_path / "site" / "kernels"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text('__version__ = "0.11.0"\n\ndef get_kernel(repo_id):\n    raise NotImplementedError\n')
    path = os.pathsep.join(filter(None, [str(hidden.parent), cli_env.get("PYTHONPATH")]))
    run = subprocess.run([str(script), "--prompt", "x", "--max-tokens", "1", "--device", "cpu", "--attention", "flash"],
                         capture_output=True,
                         text=True, env={**cli_env, "PYTHONPATH": path}, timeout=300)
    check_error(run, 1, "another package named 'kernels'", str(hidden / "__init__.py"), "pip uninstall kernels")
    run = subprocess.run([str(script), "--prompt", "x", "--max-tokens", "1", "--device", "cpu"], capture_output=True,
                         text=True, env={**cli_env, "PYTHONPATH": path}, timeout=300)
    assert run.returncode == 0 and run.stdout, (run.returncode, run.stderr)


def test_an_import_error_inside_our_own_kernels_is_not_blamed_on_another_package():
    from codecomplete.errors import hidden_kernels
    import kernels
    assert kernels.DISTRIBUTION == "codecomplete"
    assert hidden_kernels(ImportError("cannot import name 'x' from 'kernels'", name="kernels")) is None
    assert hidden_kernels(ImportError("no triton", name="triton")) is None


def test_help_and_usage_errors_do_not_import_torch(tmp_path):
    code = ("import contextlib, io, sys; from codecomplete.cli import main\n"
            f"assert main([{str(tmp_path / 'missing')!r}, '--file', 'a.py']) == 2\n"
            f"assert main(['serve', {str(tmp_path / 'missing')!r}]) == 2\n"     # (the server's modules are imported)
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()): main(['--help'])\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def _cli_in_a_child_without_torch(body: str) -> None:
    """Run `body` in a fresh Python (no server or model named by the environment): its lines indented by four spaces
    call `main` with stderr read into `err`, the others check it; then torch must not have been imported."""
    code = ("import contextlib, io, os, sys; from codecomplete.cli import main\n"
            "err = io.StringIO()\n"
            "with contextlib.redirect_stderr(err):\n" + body +
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120,
                   env={**os.environ, "CODECOMPLETE_SERVER": "", "CODECOMPLETE_MODEL": ""})


def _one_file_repo(tmp_path):
    """tmp_path/repo holding a.py, for a command line that completes in it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.py").write_text("x = 1\n")
    return repo


def test_a_missing_model_is_said_before_torch_is_imported(tmp_path):
    """`--model ~/models/typo.gguf`: the missing file was said only after torch, transformers and the repository's
    index had loaded (4-6 s on a CPU, a whole index on a large repository). Said at once now, with the same message
    and exit code, for --model, $CODECOMPLETE_MODEL and `serve`; not where --server names a server, which loads its
    own model (the path need not exist here)."""
    missing = str(tmp_path / "models" / "typo.gguf")
    repo = _one_file_repo(tmp_path)
    _cli_in_a_child_without_torch(
            f"    assert main(['--model', {missing!r}, '--prompt', 'x']) == 2\n"
            f"    assert main([{str(repo)!r}, '--file', 'a.py', '--model', {missing!r}]) == 2\n"
            f"    assert main(['serve', {str(repo)!r}, '--model', {missing!r}]) == 2\n"
            f"    os.environ['CODECOMPLETE_MODEL'] = {missing!r}\n"
            "    assert main(['--prompt', 'x']) == 2\n"
            "    del os.environ['CODECOMPLETE_MODEL']\n"
            f"    assert main([{str(repo)!r}, '--file', 'a.py', '--model', {missing!r}, '--server',"
            " 'http://127.0.0.1:9']) == 1\n"
            "lines = err.getvalue().splitlines()\n"
            f"assert lines[:4] == ['codecomplete: error: ' + {missing!r} + ': no such file or directory'] * 3 + ["
            f"'codecomplete: error: CODECOMPLETE_MODEL=' + {missing!r} + ': no such file or directory'], lines\n"
            "assert 'cannot reach the server' in lines[4], lines\n")


def test_a_model_folder_without_a_checkpoint_is_said_before_torch_is_imported(tmp_path):
    """`--model ~/models` (the folder above the checkpoint's): "no config.json" came after torch and the index."""
    empty = tmp_path / "models"
    empty.mkdir()
    repo = _one_file_repo(tmp_path)
    _cli_in_a_child_without_torch(
            f"    assert main([{str(repo)!r}, '--file', 'a.py', '--model', {str(empty)!r}]) == 2\n"
            f"assert err.getvalue().startswith('codecomplete: error: ' + {str(empty)!r} + ': no config.json'), "
            "err.getvalue()\n")


def test_serve_given_a_file_does_not_offer_an_option_it_lacks(tmp_path):
    """`codecomplete serve repo/a.py` was told "give the repository, then --file repo/a.py": serve takes no --file
    (an editor names the file in each request)."""
    (tmp_path / "a.py").write_text("x = 1\n")
    code = ("import contextlib, io; from codecomplete.cli import main\n"
            "err = io.StringIO()\n"
            "with contextlib.redirect_stderr(err):\n"
            f"    assert main(['serve', {str(tmp_path / 'a.py')!r}]) == 2\n"
            f"assert err.getvalue() == 'codecomplete: error: not a folder: ' + {str(tmp_path / 'a.py')!r} + "
            "' (give the repository\\'s folder; an editor names the file in each request)\\n', err.getvalue()")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_starts_where_the_platform_has_no_sighup(tmp_path):
    """Windows' signal module has no SIGHUP: reaching for it ended every command in an AttributeError traceback
    before the first line ran. SIGTERM still unwinds like an exit there, and so does SIGBREAK (a closed console
    window), played here by SIGUSR1."""
    code = ("import signal; del signal.SIGHUP; signal.SIGBREAK = signal.SIGUSR1\n"
            "from codecomplete.cli import main, _exit_on_signal\n"
            f"assert main([{str(tmp_path / 'missing')!r}, '--file', 'a.py']) == 2\n"
            "assert signal.getsignal(signal.SIGTERM) is signal.getsignal(signal.SIGBREAK) is _exit_on_signal")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_pipe_on_windows_gets_utf_8_and_the_model_s_own_line_ends(monkeypatch):
    """Windows gives a piped stdout the ANSI code page (cp1252) and turns "\\n" into "\\r\\n": an editor reading a
    completion got "?" for "→", a cp1252 byte for "é", and line ends the model never wrote."""
    import io

    from codecomplete import cli

    piped = io.TextIOWrapper(io.BytesIO(), encoding="cp1252", newline="\r\n")     # as Windows opens a pipe
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(sys, "stdout", piped)
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(io.BytesIO(), encoding="cp1252", newline="\r\n"))
    cli._standard_streams()
    sys.stdout.write("é → x\n")
    sys.stdout.flush()
    assert piped.buffer.getvalue() == "é → x\n".encode()


def test_json_on_standard_output_is_utf_8_whatever_the_locale(monkeypatch):
    """JSON between programs is UTF-8 (RFC 8259), and `--json FILE` was; `--json` on stdout followed the locale's
    encoding: under a Latin-1 locale "é" came out as the byte E9, which no JSON reader takes as text, and under an
    ASCII one as "?", the text lost."""
    import io

    from codecomplete import render

    for encoding in ("latin-1", "ascii"):
        piped = io.TextIOWrapper(io.BytesIO(), encoding=encoding, errors="codecomplete-replace")
        monkeypatch.setattr(sys, "stdout", piped)
        render.emit_json("-", {"completion": "café → 日本"})
        assert json.loads(piped.buffer.getvalue().decode("utf-8")) == {"completion": "café → 日本"}


def test_the_json_error_object_is_utf_8_whatever_the_locale(script, cli_env, repo):
    run = subprocess.run([str(script), str(repo), "--file", "café.py", "--json"], capture_output=True,
                         env={**cli_env, "PYTHONIOENCODING": "latin-1"}, timeout=300)
    assert run.returncode == 2
    assert json.loads(run.stdout.decode("utf-8"))["error"]["message"] == "file not found: café.py"


def test_every_text_file_is_opened_with_an_encoding():
    """open() and Path.read_text/write_text without encoding= use the locale's, cp1252 on Windows: a server log with
    "·" was read back as "Â·" (serve_bench matched none of its lines), and text outside cp1252 could not be written."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    missing = []
    for path in sorted(p for package in ("codecomplete", "prompts", "models", "kernels")
                       for p in (root / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            func = getattr(node, "func", None)
            name = getattr(func, "attr", None) or getattr(func, "id", None)
            if name not in ("open", "fdopen", "read_text", "write_text") or any(k.arg == "encoding"
                                                                                 for k in node.keywords):
                continue
            if isinstance(func, ast.Attribute) and getattr(func.value, "id", None) == "os" and name == "open":
                continue        # os.open: a descriptor, no text
            modes = [a.value for a in node.args[1:2] if isinstance(a, ast.Constant)]
            modes += [k.value.value for k in node.keywords if k.arg == "mode" and isinstance(k.value, ast.Constant)]
            if name in ("open", "fdopen") and (not node.args or any("b" in str(mode) for mode in modes)):
                continue        # binary, or not a file's open (safe_open's keywords)
            missing.append(f"{path.relative_to(root)}:{node.lineno}")
    assert missing == []


def test_on_windows_a_pipe_whose_reader_left_is_a_closed_pipe(monkeypatch):
    """Windows says a pipe's reader went away (`codecomplete ... | more`, quit early) with EINVAL, not EPIPE: it was
    "cannot write the output: Invalid argument" and exit 1 where a closed pipe ends quietly with 141."""
    import errno

    from codecomplete.render import PlainView

    class Pipe:
        def write(self, text):
            raise OSError(errno.EINVAL, "Invalid argument")
    monkeypatch.setattr(sys, "platform", "win32")
    view = PlainView(Pipe())
    view.on_text("def")
    assert view.closed


def test_closed_pipe_exits_quietly(script, cli_env):
    # head takes 10 bytes and leaves; the generation must stop without a word on stderr.
    shell = f"{script} --prompt 'def main():' --max-tokens 64 2>err | head -c 10; echo \" ${{PIPESTATUS[0]}}\""
    proc = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, env=cli_env,
                          cwd=cli_env["HOME"], timeout=300)
    text, status = proc.stdout.rsplit(" ", 1)
    assert len(text.encode()) == 10
    assert status.strip() == "141"
    assert open(os.path.join(cli_env["HOME"], "err")).read() == ""


@pytest.mark.parametrize("json", [[], ["--json"]])
def test_a_full_disk_is_an_error_not_a_bug(script, cli_env, json):
    """`> /dev/full`: the text, or the JSON object, cannot be written. That is said in one line with exit 1, not as
    an internal error that asks for --debug."""
    with open("/dev/full", "w") as full:
        proc = subprocess.run([str(script), "--prompt", "def main():", "--max-tokens", "4", *json], stdout=full,
                              stderr=subprocess.PIPE, text=True, env=cli_env, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr == "codecomplete: error: cannot write the output: No space left on device\n"


def test_ctrl_c_during_generation_exits_130(script, cli_env):
    proc = subprocess.Popen([str(script), "--prompt", "def main():", "--max-tokens", "400"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env)
    assert proc.stdout.read(1)                 # generation has started
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert err.decode().strip() == "codecomplete: interrupted"


def test_a_hangup_ignored_at_start_stays_ignored_as_nohup_asks(script, cli_env):
    """`nohup codecomplete serve &` starts with SIGHUP ignored; closing the terminal must not end it. A process
    started normally ends on SIGHUP with 129 (and shows the handlers were in place when the signal came)."""
    def start(ignore_hangup: bool):
        return subprocess.Popen([str(script), "--prompt", "-", "--max-tokens", "1"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env,
                                # "normally": SIGHUP's default even where this session runs under nohup
                                preexec_fn=lambda: signal.signal(signal.SIGHUP,
                                                                 signal.SIG_IGN if ignore_hangup else signal.SIG_DFL))
    plain, nohup = start(False), start(True)
    for proc in (plain, nohup):
        wait_until_reading_stdin(proc)
    for proc in (plain, nohup):
        proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    out, err = plain.communicate("def f():", timeout=120)
    assert plain.returncode == 128 + signal.SIGHUP, err
    out, err = nohup.communicate("def f():", timeout=300)
    assert nohup.returncode == 0, err


def test_random_weights_are_for_the_benchmark_only(codecomplete):
    """`random:PRESET` times like the real model but has no tokenizer: any other command refuses it."""
    check_error(codecomplete("--model", "random:SmolLM2-135M", "--prompt", "x"), 2,
                "random weights have no tokenizer")


def test_a_long_path_with_a_newline_is_one_short_line(codecomplete, repo, capsys):
    """A path 3,000 characters long was said in full, and a newline in it broke the message in two (in the REPL and
    the server's log; the CLI made it a space). Every error is one line: a long word cut to its start and end,
    a newline written \\n. The server's log lines go the same way."""
    from codecomplete.server.worker import EngineWorker

    path = "sub/" * 750 + "new\nline.py"
    run = codecomplete(repo, "--file", path)
    check_error(run, 2, "sub/sub/sub/", "…", "sub/new\\nline.py")
    check_error(codecomplete(repo, "--file", "line\u2028separator.py"), 2, "line\\u2028separator.py")
    assert len(run.stderr) < 400, run.stderr
    worker = EngineWorker()
    try:
        worker._log(f"request 1 · error: PromptError: no such file: {path}")
    finally:
        worker.shutdown()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sub/new\\nline.py" in err and len(err) < 400, err


def test_a_path_this_system_cannot_encode_is_said_to_be_so(tmp_path):
    """A lone surrogate has no bytes to give the system: that, not 'a NUL character' (both are ValueErrors)."""
    from codecomplete.errors import UsageError
    from codecomplete.workspace import file_in

    with pytest.raises(UsageError, match=r"^\\ud800\.py: not a file name this system can encode$"):
        file_in(tmp_path, "\ud800.py")
    with pytest.raises(UsageError, match="a path cannot contain a NUL character"):
        file_in(tmp_path, "a\0b.py")


def test_a_file_named_with_a_slash_at_its_end_is_not_that_file(tmp_path):
    """`--file a.py/` names a folder a.py, which the system refuses ("Not a directory"): the slash was dropped
    (Path("a.py/") is a.py) and a.py completed; with --stdin, a new file "new.py/" was taken as new.py."""
    from codecomplete.errors import UsageError
    from codecomplete.workspace import file_in

    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "sub").mkdir()
    for must_exist in (True, False):
        for path in ("a.py/",) if must_exist else ("a.py/", "new.py/", "sub/a.py/"):
            with pytest.raises(UsageError, match=rf"^{re.escape(path)}: not a folder \(a file's name ends without "
                                                 r"a slash\)$"):
                file_in(tmp_path, path, must_exist)
        with pytest.raises(UsageError, match=r"^sub/ is a folder, not a file$"):
            file_in(tmp_path, "sub/", must_exist)
    assert file_in(tmp_path, "a.py") == "a.py"


def test_a_path_from_an_editor_on_windows_finds_the_file_or_says_what_it_is(tmp_path):
    """`src\\main.py` was a file of that name at the root (with a buffer given: a new file, the real one's chunks
    ranked as context), `C:\\repo\\src\\main.py` likewise: now the file, or one clear line."""
    from codecomplete.errors import UsageError
    from codecomplete.workspace import file_in

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "main.py").write_text("x = 1\n")
    (tmp_path / "odd\\name.py").write_text("y = 1\n")       # a backslash is a name's own where such a name exists
    for must_exist in (True, False):
        assert file_in(tmp_path, "src\\main.py", must_exist) == "src/main.py"
        assert file_in(tmp_path, "odd\\name.py", must_exist) == "odd\\name.py"
        for windows in ("C:\\repo\\src\\main.py", "c:/repo/src/main.py", "\\\\server\\share\\repo\\src\\main.py"):
            with pytest.raises(UsageError, match=r"^.* is a Windows path: give the file as this system names it"):
                file_in(tmp_path, windows, must_exist)
    assert file_in(tmp_path, "src\\new.py", must_exist=False) == "src/new.py"     # an unsaved buffer
    with pytest.raises(UsageError, match=r"^file not found: src\\new\.py$"):
        file_in(tmp_path, "src\\new.py")


def test_a_file_given_from_the_current_folder_with_dot_slash_is_that_folders(tmp_path, monkeypatch):
    """`./m.py` typed in pkg/ is pkg/m.py, as for the shell and every tool: it was looked up in the repository first,
    so the root's m.py was completed in, another file than the one meant. A plain `m.py` stays the repository's."""
    from codecomplete.workspace import file_in

    (tmp_path / "pkg").mkdir()
    for path in ("m.py", "pkg/m.py", "app.py"):
        (tmp_path / path).write_text("x = 1\n")
    monkeypatch.chdir(tmp_path / "pkg")
    for must_exist in (True, False):
        assert file_in(tmp_path, "./m.py", must_exist) == "pkg/m.py"
        assert file_in(tmp_path, ".\\m.py", must_exist) == "pkg/m.py"     # from an editor on Windows
        assert file_in(tmp_path, "m.py", must_exist) == "m.py"
        assert file_in(tmp_path, "../app.py", must_exist) == "app.py"
    assert file_in(tmp_path, "./new.py", must_exist=False) == "pkg/new.py"     # an unsaved buffer


def test_on_a_disk_that_ignores_case_a_file_spelled_otherwise_is_in_the_repository(tmp_path, disk_ignoring_case):
    """macOS: the editor's /Users/me/Proj/a.py is the repository ~/proj's a.py, though resolve() keeps each
    spelling: it was refused as outside the repository."""
    from codecomplete.errors import UsageError
    from codecomplete.workspace import file_in

    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "a.py").write_text("a = 1\n")
    assert file_in(tmp_path / "repo", str(tmp_path / "Repo" / "a.py")) == "a.py"
    with pytest.raises(UsageError, match="is outside the repository"):
        file_in(tmp_path / "repo", str(tmp_path / "other.py"), must_exist=False)


def test_on_windows_a_windows_path_not_found_is_said_as_not_found(tmp_path, monkeypatch):
    """On Windows `C:\\repo\\a.py` is this system's own kind of path: "give the file as this system names it" was
    wrong advice there."""
    from codecomplete.errors import UsageError
    from codecomplete.workspace import file_in

    monkeypatch.setattr(sys, "platform", "win32")
    with pytest.raises(UsageError, match=r"^file not found: C:\\repo\\a\.py$"):
        file_in(tmp_path, "C:\\repo\\a.py")


def test_running_out_of_memory_on_a_cpu_is_a_failure_not_a_bug():
    """torch's CPU allocator says so with a plain RuntimeError (torch.OutOfMemoryError is CUDA's): it was taken for a
    bug, an internal error on the command line, and the end of the REPL during a question."""
    import torch

    from codecomplete.errors import classify

    with pytest.raises(RuntimeError) as error:
        torch.empty(2**50, dtype=torch.uint8)          # a PiB: refused by the allocator, nothing is touched
    assert classify(error.value) == (1, "out of memory: try a smaller --context-tokens")
    assert classify(error.value, options=False) == (1, "out of memory")
    assert classify(RuntimeError("expected scalar type Float but found Half")) is None   # a bug stays one


MEMORY_LIMITED = """
import resource, torch
from codecomplete.errors import classify
resource.setrlimit(resource.RLIMIT_AS, (16 * 2**30, resource.getrlimit(resource.RLIMIT_AS)[1]))
try:
    torch.empty(2**40, dtype=torch.uint8)
except RuntimeError as error:
    print(classify(error)[1]); print(classify(error, options=False)[1])
"""


@pytest.mark.skipif(sys.platform == "win32", reason="no RLIMIT_AS on Windows")
def test_out_of_memory_under_a_memory_limit_names_the_limit():
    """Under `ulimit -v` the model's load failed with "out of memory: try a smaller --context-tokens", where the
    context was not what failed."""
    run = subprocess.run([sys.executable, "-c", MEMORY_LIMITED], capture_output=True, text=True, timeout=120)
    assert run.stdout.splitlines() == [
        "out of memory: this process may map at most 16.0 GiB (ulimit -v 16777216); raise it, or try a smaller "
        "--context-tokens",
        "out of memory: this process may map at most 16.0 GiB (ulimit -v 16777216)"], run.stderr[-2000:]


def _not_a_number_result():
    from models.generation import GenerationResult, Timings
    return GenerationResult("def f", [5, 6, 2], 4, 0, "stop", Timings(ttft_ms=1.0), not_a_number=True)


def test_an_answer_ended_by_nan_logits_is_a_500_and_a_log_line_naming_the_request():
    """A NaN or inf in the logits mid-answer takes the end of text (models.sampling.pick): the answer went out as a
    finished one ("stop", a 200) and the log said nothing. Now the request ends with a 500 that says so (in a stream:
    an error event after the text sent, as vLLM ends a generation that failed), and the log names the request.
    The command line's own routes get the result as it is, for the command to warn (`failures_in_result`)."""
    import asyncio
    from types import SimpleNamespace

    from codecomplete.server.errors import ApiError
    from codecomplete.server.worker import EngineWorker

    lines = []
    worker = EngineWorker(log=lines.append)
    generation = SimpleNamespace(run=lambda on_text=None, should_stop=None: _not_a_number_result())

    async def submit(**how):
        job = worker.submit(lambda: generation, "POST /v1/completions", **how)
        return job, [event async for event in job.events()]

    try:
        job, events = asyncio.run(submit())
        native, native_events = asyncio.run(submit(failures_in_result=True))
    finally:
        worker.shutdown()
    last = events[-1]
    assert last.kind == "error" and isinstance(last.value, ApiError) and last.value.status == 500, events
    assert "not a number (NaN or inf) at token 3 of the answer" in last.value.message, last.value.message
    assert native_events[-1].kind == "done" and native_events[-1].value.not_a_number
    for request in (job, native):
        assert any(f"request {request.id}" in line and "not a number" in line for line in lines), lines


def test_the_command_line_warns_where_the_model_ended_its_answer_on_nan(monkeypatch):
    """In process, or through a server's command-line route (the flag travels with the result), one warning line;
    an answer that ended as the model chose, none."""
    from dataclasses import replace
    from types import SimpleNamespace

    from codecomplete import client, engines
    from codecomplete.server import native

    class View:
        closed, on_text = False, None

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def finish(self, result, engine):
            pass

    warned = []
    monkeypatch.setattr(engines, "warn", warned.append)
    broken = _not_a_number_result()
    for result in (broken, replace(broken, not_a_number=False)):
        assert client._result(native.result_object(result)) == result
        engines.generate(SimpleNamespace(engine=None, run=lambda on_text, should_stop: result), View())
    assert len(warned) == 1 and "not a number (NaN or inf) at token 3 of the answer" in warned[0], warned


def test_the_command_lines_json_says_the_answer_ended_on_nan():
    """--json goes to scripts and editors, which do not read stderr's warning."""
    from dataclasses import replace
    from types import SimpleNamespace

    from codecomplete.render import result_json

    engine = SimpleNamespace(name="m", device="cpu", attention="flash")
    broken = _not_a_number_result()
    assert result_json("completion", broken, engine)["not_a_number"] is True
    assert result_json("completion", replace(broken, not_a_number=False), engine)["not_a_number"] is False


def test_a_suggestion_in_an_empty_repository_completes_the_buffer(codecomplete, tmp_path):
    """The first file of a new project (`--file main.py --stdin` in an empty folder, or a file saved empty) was
    refused, "nothing to index": the buffer is the text to complete. A question about nothing is still refused."""
    empty = tmp_path / "new"
    empty.mkdir()
    run = codecomplete(empty, "--file", "main.py", "--stdin", "--max-tokens", "2", "--json", input="def add(a, b):\n")
    assert run.returncode == 0 and run.stderr == "", run.stderr
    assert json.loads(run.stdout)["context"][0]["path"] == "main.py"
    (empty / "main.py").write_text("")
    run = codecomplete(empty, "--file", "main.py", "--max-tokens", "2", "--json")
    assert run.returncode == 0 and run.stderr == "", run.stderr
    check_error(codecomplete(empty, "--ask", "anything?"), 2, "nothing to index")


def test_an_empty_tuning_setting_is_unset(script, cli_env, monkeypatch):
    """Every CODECOMPLETE_* variable reads empty as unset (README: `CODECOMPLETE_MODEL`, the switches), so that a
    script can clear one with `VAR=`; CODECOMPLETE_PREFILL_BUCKET= refused the command (exit 2, "''": a number of
    tokens), and _TP_TIMEOUT=, _ALLREDUCE= and _GEMV= were refused where read (tensor parallelism, a GPU)."""
    run = subprocess.run([str(script), "--prompt", "def f(", "--max-tokens", "1", "--no-server"], capture_output=True,
                         text=True, env={**cli_env, "CODECOMPLETE_PREFILL_BUCKET": ""}, timeout=300)
    assert run.returncode == 0, run.stderr
    from models.distributed import DEFAULT_TIMEOUT_S, collective_timeout
    from models.engine import PREFILL_BUCKET, prefill_bucket
    from models.llama import DEFAULT_GEMV
    from models.tp import ALL_REDUCE_METHODS

    for blank in ("", " "):
        monkeypatch.setenv("CODECOMPLETE_PREFILL_BUCKET", blank)
        monkeypatch.setenv("CODECOMPLETE_TP_TIMEOUT", blank)
        assert prefill_bucket("cuda", type("Config", (), {"dynamic_rope": False})()) == PREFILL_BUCKET["cuda"]
        assert collective_timeout().total_seconds() == DEFAULT_TIMEOUT_S
    import inspect

    import models.llama
    import models.tp
    # (read on a GPU and by a tensor-parallel rank only: their reading of an empty value, by their source)
    assert 'os.environ.get("CODECOMPLETE_GEMV") or DEFAULT_GEMV' in inspect.getsource(models.llama)
    assert 'os.environ.get("CODECOMPLETE_ALLREDUCE") or "auto"' in inspect.getsource(models.tp)
    assert DEFAULT_GEMV and "auto" in ALL_REDUCE_METHODS


def test_files_skipped_are_told_before_nothing_to_index(tmp_path, monkeypatch):
    """A repository whose only folder cannot be read: --ask in a terminal said "nothing to index: no text files
    with content" alone, the skipped folder's warning dropped with the index's exception."""
    from codecomplete import workspace
    from prompts import PromptError

    root = tmp_path / "repo"
    (root / "secret").mkdir(parents=True)
    (root / "secret" / "a.py").write_text("a = 1\n")
    deny_folder(monkeypatch, "secret")
    told = []
    monkeypatch.setattr(workspace, "warn", told.append)
    monkeypatch.setenv("CODECOMPLETE_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(PromptError, match="nothing to index"):
        workspace.index(root)
    assert told == ["skipped secret: Permission denied"]


def _full_pipe():
    """A pipe whose buffer is full (nobody has read it yet): its read and write ends."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        while True:
            os.write(write_end, b"x" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(write_end, True)
    return read_end, write_end


@pytest.mark.skipif(sys.platform == "win32", reason="select takes sockets only there")
def test_the_command_lines_last_line_waits_a_moment_for_a_reader_that_drains(monkeypatch):
    """The line a command ends with (its error, "interrupted") on a standard error that is full for the moment: a
    pipe whose reader pages (`codecomplete ... 2>&1 | less`) or a terminal behind a slow link, after a long answer.
    It was dropped at once, as a server's log line is (whose reader may never drain); it now waits a moment."""
    from codecomplete import cli

    read_end, write_end = _full_pipe()
    stream = open(write_end, "w", encoding="utf-8", closefd=True)
    monkeypatch.setattr(sys, "stderr", stream)
    drained = bytearray()

    def drain():
        time.sleep(0.3)
        while chunk := os.read(read_end, 1 << 16):      # (to the end: the line, or none)
            drained.extend(chunk)
    reader = __import__("threading").Thread(target=drain)
    reader.start()
    try:
        cli._say("codecomplete: error: the last line")
        stream.close()
        reader.join(timeout=30)
    finally:
        os.close(read_end)
    assert drained.endswith(b"codecomplete: error: the last line\n"), drained[-80:]


@pytest.mark.skipif(sys.platform == "win32", reason="select takes sockets only there")
def test_a_log_line_is_dropped_only_where_it_would_wait(tmp_path):
    """`errors.would_wait`, which a server's log lines ask: a full pipe would wait; a regular file, /dev/null, a new
    pipe, a terminal with room and a stream without a descriptor would not."""
    import pty

    from codecomplete.errors import would_wait

    read_end, write_end = _full_pipe()
    with open(write_end, "w", closefd=True) as full:
        assert would_wait(full)
        os.read(read_end, 1 << 20)              # room again
        assert not would_wait(full)
    os.close(read_end)
    with open(tmp_path / "log", "w") as regular, open(os.devnull, "w") as null:
        assert not would_wait(regular) and not would_wait(null)
    controller, terminal = pty.openpty()
    with open(terminal, "w", closefd=True) as stream:
        assert not would_wait(stream)
    os.close(controller)
    assert not would_wait(__import__("io").StringIO())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's pipes: room for a page takes a page")
def test_a_long_log_record_into_a_pipe_with_little_room_is_cut_not_waited_for():
    """A server's log record longer than a pipe's page (a request's internal error with its traceback) where its
    reader never drains the pipe: `select` says a page is free, and the record's write waited at the second page
    for good, on the event loop that logs it. It is written a piece at a time while each fits, the rest dropped."""
    import logging
    import threading

    from codecomplete.server.serve import _LogHandler

    read_end, write_end = _full_pipe()
    os.read(read_end, 4096)                 # one page of room
    stream = open(write_end, "w", encoding="utf-8", closefd=True)
    handler = _LogHandler(stream)
    record = logging.LogRecord("codecomplete.server", logging.ERROR, __file__, 1, "Traceback: " + "x" * 20000,
                               None, None)
    emitting = threading.Thread(target=handler.emit, args=(record,), daemon=True)
    emitting.start()
    emitting.join(timeout=5)
    waited = emitting.is_alive()
    os.set_blocking(read_end, False)
    try:
        while emitting.is_alive() or os.read(read_end, 1 << 16):    # (the old code's write let go)
            try:
                os.read(read_end, 1 << 16)
            except BlockingIOError:
                time.sleep(0.01)
    except BlockingIOError:
        pass
    emitting.join(timeout=5)
    stream.close()
    os.close(read_end)
    assert not waited, "the record's write waited for a reader that never reads"

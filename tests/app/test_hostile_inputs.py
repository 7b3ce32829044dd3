"""Hostile but realistic input through the real command line, each in a fresh process: special files, odd
names, a repository whose git config runs commands, broken checkpoints, caches in odd places, closed
descriptors, bad option values. Every case ends in its documented exit code with one line on stderr (or
succeeds), executes nothing from the repository and writes nothing into it. Most fail before a model loads."""
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from child_process import wait_until_reading_stdin
from test_errors import check_error

TIMEOUT = 120      # the bar is 30 s a case on an idle machine; this one is shared


def run_cli(script, env, *args, cwd, input="", **extra_env):
    proc = subprocess.run([str(script), *map(str, args)], input=input.encode(), capture_output=True,
                          env={**env, **extra_env}, cwd=cwd, timeout=TIMEOUT)
    return Run(proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace"))


class Run:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def make_repository(repo):
    """make_repository(folder): a fresh copy of the session's small repository, for a test to spoil."""
    return lambda folder: Path(shutil.copytree(repo, folder))


def snapshot(root: Path) -> list:
    return sorted((bytes(p), p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*"))


def special_file(path: Path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 5))     # /dev/zero: reading never ends
    else:
        socket.socket(socket.AF_UNIX).bind(str(path))


@pytest.mark.parametrize("kind", ["fifo", "device", "socket"])
def test_file_must_be_a_regular_file(make_repository, script, cli_env, tmp_path, kind):
    root = make_repository(tmp_path / "repo")
    special_file(root / "special.py", kind)
    check_error(run_cli(script, cli_env, root, "--file", "special.py", cwd=tmp_path), 2, "not a regular file")


# (argv, extra environment, words of the one-line error): all refused with exit 2 before torch is imported.
REFUSED_AT_ONCE = [
    (["--prompt", ""], {}, ["--prompt is empty"]),
    (["{repo}", "--file", ""], {}, ["--file is empty"]),
    (["", "--file", "app.py"], {}, ["REPO is empty"]),        # `codecomplete "$REPO"` unset: was the current folder
    (["  ", "--bench"], {}, ["REPO is empty"]),
    (["{repo}", "--ask", "  "], {}, ["--ask is empty"]),
    (["--prompt", "x", "--model", ""], {}, ["--model is empty"]),
    (["--prompt", "x", "--seed", "1180591620717411303424", "--temperature", "1"], {}, ["--seed"]),
    (["--prompt", "x", "--seed", "-1"], {}, ["--seed"]),
    (["{repo}", "--file", "app.py", "--model", "random:CodeLlama-7B"], {}, ["random weights have no tokenizer"]),
    (["--prompt", "x"], {"CODECOMPLETE_MODEL": "random:CodeLlama-7B"}, ["CODECOMPLETE_MODEL=random:"]),
    (["--prompt", "x"], {"CODECOMPLETE_MODEL": "  "}, ['CODECOMPLETE_MODEL="  " is empty']),
    (["{repo}", "--file", "app.py"], {"CODECOMPLETE_MODEL": " \t"}, ['CODECOMPLETE_MODEL=" \t" is empty']),
    (["--bench", "--plot", "/nonexistent/p.png"], {}, ["--plot /nonexistent/p.png", "No such file"]),
    (["--bench", "--json", "/nonexistent/b.json"], {}, ["--json /nonexistent/b.json", "No such file"]),
    (["{repo}", "--file", "app.py", "--json", "/nonexistent/b.json"], {}, ["--json /nonexistent/b.json"]),
    (["{repo}", "--file", "app.py", "--json", "{repo}/app.py/b.json"], {}, ["cannot write it"]),
    (["{repo}", "--file", "app.py", "--json", "{repo}"], {}, ["is a folder"]),
    (["--bench", "--plot", "plot.gif"], {}, ["--plot plot.gif"]),
    (["--bench", "--contexts", ","], {}, ["--contexts"]),
    (["--bench", "--contexts", "256,,1024"], {}, ["--contexts", "an empty length in '256,,1024'"]),
    (["--bench", "--contexts", "256,"], {}, ["--contexts", "an empty length"]),
    (["{repo}", "--file", "shapes"], {}, ["shapes is a folder"]),
    (["{repo}", "--file", "x" * 300 + ".py"], {}, ["File name too long"]),
    (["{repo}", "--file", "../outside.py", "--stdin"], {}, ["outside the repository"]),
    (["{repo}", "--file", "blob.py"], {}, ["blob.py looks binary"]),
    (["--prompt", "x", "--max-tokens", "99999999999"], {}, ["--max-tokens", "10,000,000"]),
]

MAIN_MANY_TIMES = """
import contextlib, io, json, os, sys
from codecomplete.cli import main
cases, results = json.loads(sys.argv[1]), []
for argv, env in cases:
    os.environ.pop("CODECOMPLETE_MODEL", None)
    os.environ.update(env)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            code = main(argv)
        except SystemExit as exit:
            code = exit.code
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps({"results": results, "torch": "torch" in sys.modules}))
"""


def run_main_many_times(cases, env, cwd) -> tuple[list[Run], bool]:
    """Each (argv, environment) through the command line's main() in one fresh interpreter, which pays for
    imports once; the runs, and whether torch got imported."""
    out = subprocess.run([sys.executable, "-c", MAIN_MANY_TIMES, json.dumps(cases)], capture_output=True,
                         text=True, env=env, cwd=cwd, timeout=TIMEOUT, check=True).stdout
    report = json.loads(out)
    return [Run(*result) for result in report["results"]], report["torch"]


def test_bad_values_are_refused_before_any_work(make_repository, tmp_path, cli_env):
    repo = make_repository(tmp_path / "repo")
    (repo / "blob.py").write_bytes(b"\x7fELF\x00\x01\x02 not text")
    before = snapshot(repo)
    cases = [([a.format(repo=repo) for a in argv], env) for argv, env, _ in REFUSED_AT_ONCE]
    runs, imported_torch = run_main_many_times(cases, cli_env, tmp_path)
    for (argv, _, words), run in zip(REFUSED_AT_ONCE, runs):
        check_error(run, 2, *words)
    assert not imported_torch, "a usage error imported torch (it should fail before any work)"
    assert snapshot(repo) == before and not list(tmp_path.glob("*.gif"))


def test_a_dash_leading_file_name_is_a_value_not_an_option():
    from codecomplete import cli

    assert cli.build_parser().parse_args(["r", "--file", "-dash.py", "--line", "1"]).file == "-dash.py"
    assert cli.build_parser().parse_args(["r", "--file", "-x/y.py"]).file == "-x/y.py"


@pytest.mark.parametrize("shell, words", [
    ("{cc} --prompt - <&-", ["standard input is closed", "--prompt -"]),
    ("{cc} {repo} --ask - <&-", ["standard input is closed", "--ask -"]),
    ("{cc} {repo} --file app.py --stdin <&-", ["standard input is closed", "--stdin"]),
    ("{cc} --prompt x >&-", ["standard output is closed"]),
    ("{cc} {repo} --ask why >&-", ["standard output is closed"]),
    # --bench timed its contexts and exited 0, its table (or its JSON, --json -) gone nowhere
    ("{cc} {repo} --bench --contexts 64 --max-tokens 2 >&-", ["standard output is closed"]),
    ("{cc} {repo} --bench --contexts 64 --max-tokens 2 --json - --plot {repo}/../p.png >&-",
     ["standard output is closed"]),
])
def test_closed_descriptors_are_usage_errors(make_repository, script, cli_env, tmp_path, shell, words):
    repo = make_repository(tmp_path / "repo")
    proc = subprocess.run(["bash", "-c", shell.format(cc=script, repo=repo)], capture_output=True, text=True,
                          env=cli_env, timeout=TIMEOUT)
    check_error(Run(proc.returncode, proc.stdout, proc.stderr), 2, *words)


def test_a_closed_stderr_never_sends_the_error_to_stdout(make_repository, script, cli_env, tmp_path):
    repo = make_repository(tmp_path / "repo")
    proc = subprocess.run(["bash", "-c", f"{script} {repo} --file nope.py 2>&-"], capture_output=True,
                          text=True, env=cli_env, timeout=TIMEOUT)
    assert (proc.returncode, proc.stdout) == (2, "")


def test_a_repository_whose_files_are_all_ignored_says_so(make_repository, script, cli_env, tmp_path):
    repo = make_repository(tmp_path / "repo")
    (repo / ".gitignore").write_text("*\n")
    check_error(run_cli(script, cli_env, repo, "--ask", "why?", cwd=tmp_path), 2, "nothing to index",
                "ignored by .gitignore")


def unprivileged(argv: list[str]) -> list[str]:
    """`argv` run so that file modes bind it: as is for a user; for root (this sandbox, CI containers) without the
    capabilities that read past them (setpriv); the test is skipped where neither can be had."""
    if os.geteuid() != 0:
        return argv
    caps = "-dac_override,-dac_read_search"
    prefix = [shutil.which("setpriv") or "setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}"]
    try:        # (a container may not let it drop them: no CAP_SETPCAP)
        usable = subprocess.run([*prefix, "true"], capture_output=True, timeout=TIMEOUT).returncode == 0
    except OSError:
        usable = False
    if not usable:
        pytest.skip("root without a working setpriv: file modes do not stop a read")
    return [*prefix, *argv]


# nothing allowed; names not listable (files open by name); names listable, files not reachable
@pytest.mark.parametrize("mode", [0o000, 0o311, 0o444])
@pytest.mark.parametrize("args", [["--ask", "why?"], ["--file", "app.py"], ["serve", "--port", "0"]])
def test_a_repository_that_cannot_be_listed_says_so(make_repository, script, cli_env, tmp_path, mode, args):
    """Another user's folder (mode 700): --ask said "nothing to index: no text files with content" and serve served
    no context for good, its cause unsaid (a raw `<frozen os>:361: ScanWarning` line in its log)."""
    repo = make_repository(tmp_path / "repo")
    repo.chmod(mode)
    try:
        argv = [str(script), *(args[:1] if args[0] == "serve" else []), str(repo),
                *(args[1:] if args[0] == "serve" else args)]
        proc = subprocess.run(unprivileged(argv), capture_output=True, text=True, env=cli_env, cwd=tmp_path,
                              timeout=TIMEOUT)
    finally:
        repo.chmod(0o755)
    check_error(Run(proc.returncode, proc.stdout, proc.stderr), 2, f"cannot read the repository {repo}",
                "Permission denied")


# ---- checkpoints: config.json is read before any weight, so these fail in the time torch takes to import

def checkpoint(converted: Path, folder: Path, **config_changes) -> Path:
    """A Hugging Face folder sharing the embedded model's weights and tokenizer, with config.json changed."""
    folder.mkdir()
    for file in converted.iterdir():
        if file.name != "config.json":
            os.symlink(file, folder / file.name)
    config = json.loads((converted / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **config_changes}))
    return folder


BAD_CONFIGS = [
    ({"rope_parameters": None, "rope_scaling": {"type": "linear"}}, ["config.json", "factor"]),
    ({"hidden_size": "big"}, ["config.json", "hidden_size", "'big'"]),
    ({"num_attention_heads": 0}, ["config.json", "num_attention_heads"]),
]


def test_bad_checkpoints_and_sizes_fail_on_reading_the_config(tmp_path, cli_env, converted_model):
    """Bad config values are one-line model errors (no torch warning before them); an explicit budget beyond what
    memory holds says how many tokens fit (before building tables that size); bench contexts beyond what runs here
    fail before loading."""
    cases = [(["--prompt", "def add(a, b):", "--model", str(checkpoint(converted_model, tmp_path / f"bad{n}", **change)),
               "--max-tokens", "1"], {}) for n, (change, _) in enumerate(BAD_CONFIGS)]
    small = checkpoint(converted_model, tmp_path / "small", max_position_embeddings=512)
    cases += [(["--prompt", "x", "--model", str(small), "--context-tokens", "9000000"], {}),
              (["--prompt", "x", "--model", str(small), "--max-tokens", "600"], {}),
              (["--bench", "--contexts", "100000", "--device", "cpu"], {})]
    runs, _ = run_main_many_times(cases, cli_env, tmp_path)
    for (_, words), run in zip(BAD_CONFIGS, runs):
        check_error(run, 1, *words)       # exactly one line: no torch warning before it
    check_error(runs[-3], 1, "KV cache of 9000256 tokens", "tokens would fit")
    check_error(runs[-2], 2, "--max-tokens 600 leaves no room for a prompt", "512")
    check_error(runs[-1], 2, "--contexts 100000", "4,096")


def test_a_small_model_works_with_the_defaults(script, cli_env, tmp_path, converted_model):
    model = checkpoint(converted_model, tmp_path / "small", max_position_embeddings=512)
    # The defaults (a 1,024-token prompt budget on a CPU, 256 new tokens) shrink to the model's 512 positions.
    run = run_cli(script, cli_env, "--prompt", "def add(a, b):", "--model", model, "--max-tokens", "2", cwd=tmp_path)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    assert run.stdout
    # An explicit budget may go past the training length, as llama.cpp allows (a warning on a terminal only).
    run = run_cli(script, cli_env, "--prompt", "def add(a, b):", "--model", model, "--max-tokens", "2",
                  "--context-tokens", "1000", "--json", "-", cwd=tmp_path)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    assert json.loads(run.stdout)["completion_tokens"] >= 1


def test_a_budget_too_small_names_the_file_and_the_option(codecomplete, repo):
    long_name = "pkg/" + "x" * 2000 + ".py"
    run = codecomplete(repo, "--file", long_name, "--stdin", "--context-tokens", "64", input="import os\n")
    # The name by its start and end (errors.one_line): the message is one line, not 2,000 characters of name.
    check_error(run, 2, long_name[:60], "…", long_name[-60:], "--context-tokens", "prompt budget of 64 tokens")
    assert len(run.stderr) < 500, run.stderr


# ---- model runs (a few tokens each)

HOSTILE_GIT = {
    ".git/config": "[core]\n\tfsmonitor = \"touch {marker}/fsmonitor; false\"\n\thooksPath = {marker}\n"
                   "[filter \"evil\"]\n\tclean = touch {marker}/clean\n\tsmudge = touch {marker}/smudge\n",
    ".git/HEAD": "ref: refs/heads/main\n",
    ".git/hooks/post-index-change": "#!/bin/sh\ntouch {marker}/hook\n",
    ".gitattributes": "* filter=evil\n",
}
ODD_NAMES = [b"helpers_\xff.py", b"new\nline.py", b"-dash.py", b"l" * 240 + b".py"]


def test_python_m_codecomplete_imports_nothing_from_the_current_folder(tmp_path, cli_env):
    """`python -m` puts the current folder first on the module path, and that folder is usually the repository read:
    an ML project's `models/` package (or a `prompts/`, a `rich/`) was imported in place of ours, and ran."""
    folder, marker = tmp_path / "ml-project", tmp_path / "ran"
    for package in ("models", "prompts", "kernels", "rich"):
        (folder / package).mkdir(parents=True)
        (folder / package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (folder / "train.py").write_text("from models import build\n\n\ndef train(config):\n    return build(config)\n")
    before = snapshot(folder)
    proc = subprocess.run([sys.executable, "-m", "codecomplete", ".", "--file", "train.py", "--max-tokens", "1"],
                          cwd=folder, env=cli_env, capture_output=True, text=True, timeout=TIMEOUT)
    assert not marker.exists(), "the current folder's package ran"
    assert proc.returncode == 0, proc.stderr
    assert snapshot(folder) == before


def test_python_m_codecomplete_starts_in_a_current_folder_deleted_under_it(tmp_path, cli_env):
    """Leaving the current folder off the module path asked for that folder's name, which a folder deleted under
    the shell (a branch switched, a build folder cleaned) no longer has: a traceback before the command began, where
    `--help` worked before."""
    (tmp_path / "gone").mkdir()
    proc = subprocess.run(["sh", "-c", 'cd gone && rmdir "$0/gone" && exec "$1" -m codecomplete --help',
                           str(tmp_path), sys.executable], cwd=tmp_path, env=cli_env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "usage: codecomplete" in proc.stdout


def test_a_command_runs_in_a_current_folder_deleted_under_it(tmp_path, script, cli_env, repo):
    """torch's MKL asks for the current folder as torch loads and ends the process where it is gone (`cd build`,
    then a `git checkout` or a clean removes it): `Intel oneMKL FATAL ERROR: Cannot load .../libtorch_cpu.so`,
    exit 2, for `codecomplete /abs/repo --file ...` as for `--prompt`. `.` as the repository was an internal
    error. Now the one runs, the other is a usage error that says why."""
    def run(*args):
        (tmp_path / "gone").mkdir()
        return subprocess.run(["sh", "-c", 'cd gone && rmdir "$0/gone" && exec "$@"', str(tmp_path),
                               str(script), *args, "--max-tokens", "1", "--no-server"],
                              cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=TIMEOUT)

    done = run(str(repo), "--file", "shapes/geometry.py", "--line", "4", "--col", "1")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    refused = run(".", "--file", "shapes/geometry.py")
    check_error(refused, 2, "the current folder was deleted")


def test_a_hostile_repository_with_odd_names_completes_runs_nothing_and_writes_nothing(
        make_repository, script, cli_env, tmp_path, cache_dir):
    repo = make_repository(tmp_path / "repo")
    marker = tmp_path / "marker"
    marker.mkdir()
    for name, text in HOSTILE_GIT.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text.format(marker=marker))
    (repo / ".git/hooks/post-index-change").chmod(0o755)
    for name in ODD_NAMES:
        with open(os.path.join(os.fsencode(repo), name), "wb") as file:
            file.write(b"from shapes.geometry import area_of_circle\n")
    before = snapshot(repo)
    # The cache dir named is inside the repository: the user cache dir (XDG_CACHE_HOME/codecomplete, here the
    # session's, where the model is already converted) serves instead.
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    os.symlink(cache_dir, xdg / "codecomplete")
    # The name that is not UTF-8 goes through argv as its own bytes.
    run = run_cli(script, cli_env, repo, "--file", os.fsdecode(ODD_NAMES[0]), "--max-tokens", "1", "--json",
                  cwd=repo, CODECOMPLETE_CACHE_DIR=".cc-cache", XDG_CACHE_HOME=str(xdg))
    assert run.returncode == 0 and run.stderr == "", run.stderr
    result = json.loads(run.stdout)
    assert {item["path"] for item in result["context"]} >= {"helpers_\ufffd.py", "-dash.py"}
    assert list(marker.iterdir()) == [] and snapshot(repo) == before


def test_every_unusable_cache_dir_falls_back_to_a_temporary_one(make_repository, tmp_path, monkeypatch):
    from codecomplete import caches

    repo = make_repository(tmp_path / "repo")
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setattr(caches, "_chosen", None)
    monkeypatch.setenv("CODECOMPLETE_CACHE_DIR", str(tmp_path / "a-file"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(repo / ".cache"))
    warned = []
    monkeypatch.setattr(caches, "warn", warned.append)
    chosen = caches.prepare(repo)
    assert os.environ["CODECOMPLETE_CACHE_DIR"] == str(chosen) and chosen.is_dir()
    assert not chosen.is_relative_to(repo) and not (repo / ".cache").exists()
    (message,) = warned
    assert "a-file is not a folder" in message and "inside the repository" in message and "this run only" in message
    assert caches.prepare(repo) == chosen and len(warned) == 1      # decided and said once
    shutil.rmtree(chosen)


# Every cache folder unusable, and the disk of the temporary folder full too.
NO_TEMPORARY_FOLDER = """
import errno, sys, tempfile
from codecomplete.cli import main

def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

tempfile.mkdtemp = disk_full
sys.exit(main(sys.argv[1:]))
"""


def test_no_folder_at_all_for_the_caches_is_a_one_line_failure(make_repository, tmp_path, cli_env):
    """With no cache folder usable and no temporary one to be made, the run ended in "internal error: OSError" (a bug,
    said the message); it is a failure of the machine's (exit 1) that says which folders and what to set."""
    repo = make_repository(tmp_path / "repo")
    (tmp_path / "a-file").write_text("x")
    env = {**cli_env, "CODECOMPLETE_CACHE_DIR": str(tmp_path / "a-file"), "XDG_CACHE_HOME": str(tmp_path / "a-file"),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", NO_TEMPORARY_FOLDER, str(repo), "--file", "app.py"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=TIMEOUT)
    run = Run(proc.returncode, proc.stdout, proc.stderr)
    check_error(run, 1, "a-file is not a folder", "nor a temporary folder (No space left on device)",
                "CODECOMPLETE_CACHE_DIR")
    assert "internal error" not in run.stderr


# A run with no usable cache folder, in a temporary one: it says which, then is killed outright ("killed") or waits
# for its standard input to close ("alive").
RUN_IN_A_TEMPORARY_CACHE = """
import os, signal, sys
from pathlib import Path
from codecomplete import caches

print(caches.prepare(Path(sys.argv[1])), flush=True)
if sys.argv[2] == "killed":
    os.kill(os.getpid(), signal.SIGKILL)
sys.stdin.read()
"""


def test_the_temporary_cache_of_a_run_killed_outright_goes_with_the_next_one(make_repository, tmp_path, cli_env,
                                                                             monkeypatch):
    """A run with no usable cache folder caches in a temporary one, removed at exit; one killed by SIGKILL (an editor
    stopping its server, the OOM killer) left it, converted model and all, in /tmp for good. The next such run removes
    those of runs that are gone, and never the folder of one that still runs."""
    import tempfile

    from codecomplete import caches

    repo = make_repository(tmp_path / "repo")
    (tmp_path / "a-file").write_text("x")
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {**cli_env, "CODECOMPLETE_CACHE_DIR": str(tmp_path / "a-file"), "XDG_CACHE_HOME": str(tmp_path / "a-file"),
           "TMPDIR": str(temporary),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}

    def run(how):
        return subprocess.Popen([sys.executable, "-c", RUN_IN_A_TEMPORARY_CACHE, str(repo), how], env=env, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    alive = run("alive")
    try:
        alive_folder = Path(alive.stdout.readline().strip())
        killed = run("killed")
        killed_folder = Path(killed.stdout.readline().strip())
        assert killed.wait(60) == -signal.SIGKILL and killed_folder.is_dir() and alive_folder.is_dir()
        (killed_folder / "gguf").mkdir()                 # what it cached, say a converted model
        monkeypatch.setattr(caches, "_chosen", None)
        monkeypatch.setattr(caches, "warn", lambda message: None)
        monkeypatch.setattr(tempfile, "tempdir", str(temporary))
        monkeypatch.setenv("CODECOMPLETE_CACHE_DIR", str(tmp_path / "a-file"))
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a-file"))
        chosen = caches.prepare(repo)
        assert sorted(temporary.iterdir()) == sorted([alive_folder, chosen])
        shutil.rmtree(chosen)
    finally:
        alive.communicate("", timeout=60)
    assert alive.returncode == 0 and list(temporary.iterdir()) == []     # its own, removed at its exit


def test_a_cache_dir_that_every_user_may_write_to_is_passed_over(make_repository, tmp_path, monkeypatch):
    """What is cached is read back (converted weights, the index): a folder anyone can write to is not used."""
    from codecomplete import caches

    repo = make_repository(tmp_path / "repo")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    monkeypatch.setattr(caches, "_chosen", None)
    monkeypatch.setenv("CODECOMPLETE_CACHE_DIR", str(shared))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    warned = []
    monkeypatch.setattr(caches, "warn", warned.append)
    chosen = caches.prepare(repo)
    assert chosen == (tmp_path / "xdg" / "codecomplete").resolve() and chosen.stat().st_mode & 0o777 == 0o700
    (message,) = warned
    assert f"{shared} can be written by every user" in message


def test_a_cache_dir_inside_the_repository_by_another_case_is_passed_over(make_repository, tmp_path, monkeypatch,
                                                                       disk_ignoring_case):
    """macOS's default disk ignores case, and resolve() keeps the case it is given: a cache folder set to
    ~/Proj/.cache for the repository ~/proj was taken as outside it, and the caches were written into the
    repository."""
    from codecomplete import caches

    repo = make_repository(tmp_path / "repo")
    monkeypatch.setattr(caches, "_chosen", None)
    monkeypatch.setenv("CODECOMPLETE_CACHE_DIR", str(tmp_path / "Repo" / ".cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    warned = []
    monkeypatch.setattr(caches, "warn", warned.append)
    assert caches.prepare(repo) == (tmp_path / "xdg" / "codecomplete").resolve()
    (message,) = warned
    assert f"{tmp_path / 'Repo' / '.cache'} is inside the repository" in message
    assert "Repo" not in os.listdir(tmp_path)          # nothing made there either


def test_the_cache_dir_is_kept_on_windows_where_owners_and_modes_cannot_be_read(make_repository, tmp_path,
                                                                                  monkeypatch):
    """Windows' stat shows every folder as mode 0777 and has no os.geteuid: the user's own cache folder was passed
    over as writable by every user on each run, and the model converted anew into a temporary one."""
    from codecomplete import caches

    repo = make_repository(tmp_path / "repo")
    own = tmp_path / "own"
    own.mkdir()
    own.chmod(0o777)                                # as Windows reports a folder
    monkeypatch.delattr(os, "geteuid")
    monkeypatch.setattr(caches, "_chosen", None)
    monkeypatch.setenv("CODECOMPLETE_CACHE_DIR", str(own))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    warned = []
    monkeypatch.setattr(caches, "warn", warned.append)
    assert caches.prepare(repo) == own.resolve() and warned == []


def test_sigterm_unwinds_quietly_with_143(script, cli_env, tmp_path):
    """`kill` ends the run as an exit (so `finally` blocks remove temporary files), code 128 + 15, no traceback."""
    proc = subprocess.Popen([str(script), "--prompt", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=cli_env, cwd=tmp_path)
    wait_until_reading_stdin(proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert (proc.returncode, out, err) == (143, b"", b"")


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_leaves_json_s_error_object_not_an_earlier_result(script, cli_env, tmp_path, number):
    """--json FILE from an earlier run held its result after this run was killed (an editor's timeout): read as this
    run's. Like every other ending, the stop writes the error object where the result would have gone."""
    result = tmp_path / "out.json"
    result.write_text('{"text": "an earlier run", "finish_reason": "stop"}\n')
    proc = subprocess.Popen([str(script), "--prompt", "-", "--json", str(result)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env, cwd=tmp_path)
    wait_until_reading_stdin(proc)
    proc.send_signal(number)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert (proc.returncode, out, err) == (128 + number, b"", b"")
    assert json.loads(result.read_text()) == {"error": {"code": 128 + number, "type": "interrupted",
                                                        "message": f"stopped by {signal.Signals(number).name}"}}


def test_a_utf16_file_is_completed_not_refused_as_binary(make_repository, script, cli_env, tmp_path):
    """A UTF-16 file with a byte-order mark (Visual Studio's C and C++ sources) is text, as editors open it: `--file`
    refused it as "binary (a NUL byte near its start)". Its cursor counts its characters, as for any file."""
    root = make_repository(tmp_path / "repo")
    source = "from shapes.geometry import area_of_circle\r\n\r\n\r\ndef circle_report(r):\r\n    return area_of_"
    (root / "report.py").write_bytes(b"\xff\xfe" + source.encode("utf-16-le"))
    before = snapshot(root)
    run = run_cli(script, cli_env, root, "--file", "report.py", "--line", "5", "--col", "20", "--max-tokens", "3",
                  "--json", cwd=tmp_path)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    result = json.loads(run.stdout)
    assert result["completion_tokens"] >= 1
    assert {item["path"] for item in result["context"]} >= {"report.py", "shapes/geometry.py"}
    # The same buffer on standard input (`--stdin < report.py`): the same suggestion.
    piped = subprocess.run([str(script), str(root), "--file", "report.py", "--stdin", "--line", "5", "--col", "20",
                            "--max-tokens", "3", "--json"], input=(root / "report.py").read_bytes(),
                           capture_output=True, env=cli_env, cwd=tmp_path, timeout=TIMEOUT)
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["completion"] == result["completion"]
    assert snapshot(root) == before

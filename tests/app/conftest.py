"""End-to-end fixtures: the installed console script, a small repository, and one cache dir
for the whole session (the GGUF dequantization cache and the index are built once)."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

FIXTURE_FILES = {
    "shapes/__init__.py": '"""Plane shapes."""\n',
    "shapes/geometry.py": '''\
"""Areas and perimeters of plane shapes."""
import math


def area_of_circle(radius: float) -> float:
    """The area of a circle of the given radius."""
    return math.pi * radius ** 2


class Rectangle:
    def __init__(self, width: float, height: float) -> None:
        self.width = width
        self.height = height

    def area(self) -> float:
        return self.width * self.height
''',
    "app.py": '''\
from shapes.geometry import Rectangle, area_of_circle


def report(radius: float) -> str:
    area = area_of_circle(radius)
    return f"circle of radius {radius}: {area:.2f}"


def total_area(rectangles: list[Rectangle]) -> float:
    """The sum of the areas of the rectangles."""
''',
    "README.md": "# shapes\nA tiny geometry package used as the test repository.\n",
}


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="session")
def script() -> Path:
    """The console script `pip install -e .` put beside this interpreter."""
    return Path(sys.executable).parent / "codecomplete"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """The session's cache folder, the embedded model's conversion in it (made once a run: embedded_conversion)."""
    from embedded_conversion import copy_into

    cache = tmp_path_factory.mktemp("cache")
    copy_into(cache, tmp_path_factory)
    return cache


@pytest.fixture(scope="session")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    for name, text in FIXTURE_FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.fixture(scope="session")
def cli_env(cache_dir, tmp_path_factory) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("CODECOMPLETE_MODEL", "CODECOMPLETE_SERVER", "CODECOMPLETE_API_KEY"):
        env.pop(name, None)                    # the embedded model and no server, whatever the shell says
    env.update(CODECOMPLETE_CACHE_DIR=str(cache_dir), NO_COLOR="1", TOKENIZERS_PARALLELISM="false",
               # the user's own dirs stay untouched (history, hub cache), and no server of theirs is found
               HOME=str(tmp_path_factory.mktemp("home")),
               CODECOMPLETE_RUNTIME_DIR=str(tmp_path_factory.mktemp("runtime")))
    return env


@pytest.fixture(scope="session")
def codecomplete(script, cli_env, repo):
    """Run the console script; stdout and stderr are pipes, as in an editor.

    Every call checks that nothing was written inside the repository."""
    def run(*args, input: str | None = None, timeout: float = 300) -> Run:
        before = snapshot(repo)
        proc = subprocess.run([str(script), *map(str, args)], input=input, capture_output=True, text=True,
                              env=cli_env, timeout=timeout, cwd=repo.parent)
        assert snapshot(repo) == before, "codecomplete wrote inside the repository"
        return Run(proc.returncode, proc.stdout, proc.stderr)
    return run


@pytest.fixture(scope="session")
def engine(cache_dir):
    """The embedded model, loaded in this process once, for the tests that drive the app in process."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CODECOMPLETE_CACHE_DIR", str(cache_dir))
    mp.delenv("CODECOMPLETE_MODEL", raising=False)
    from models import load_model
    yield load_model(device="cpu", max_context=2048)
    mp.undo()


@pytest.fixture(scope="session")
def converted_model(engine, cache_dir) -> Path:
    """The embedded model's converted folder, which the session's engine fixture made (other tests' GGUFs may be
    converted into the same cache: under pytest-xdist a worker's files run in any order)."""
    from models.loading import EMBEDDED_FILE

    (folder,) = [p for p in (cache_dir / "gguf").glob(Path(EMBEDDED_FILE).stem + "-*") if p.is_dir()]  # no .lock
    return folder


@pytest.fixture(scope="session")
def served_repo(tmp_path_factory) -> Path:
    """A repository of its own for the server tests (some of them change its files)."""
    root = tmp_path_factory.mktemp("served") / "shapes_repo"
    for name, text in FIXTURE_FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.fixture(scope="session")
def server(script, cli_env, served_repo, tmp_path_factory):
    """One `codecomplete serve` for the server tests: small prompts, so that they stay quick on two cores."""
    yield from _serving(script, cli_env, served_repo, tmp_path_factory.mktemp("server"))


def _serving(script, cli_env, served_repo, folder, *options):
    """A session's `codecomplete serve` of served_repo with the server tests' options (and `options`), stopped
    cleanly at the end, without a traceback in its log or a file of the repository written."""
    from server_process import ServerProcess

    before = contents(served_repo)
    process = ServerProcess(script, served_repo, cli_env, folder, *options, "--context-tokens", "512",
                            "--max-tokens", "64")
    try:
        yield process
    finally:
        code = process.stop()
        assert code == 0, process.log()
        assert "Traceback" not in process.log(), process.log()
    assert contents(served_repo) == before      # nothing written (tests that edit files put them back)


@pytest.fixture(scope="session")
def table_model(cache_dir, tmp_path_factory) -> Path:
    """next_token_table's checkpoint: the embedded model's tokenizer, a known greedy answer, hundreds of tokens a
    second on a CPU (for tests of how answers are carried, not of what the embedded model writes)."""
    from models.loading import EMBEDDED_FILE
    from next_token_table import save_table_model

    # (any conversion of the embedded model: a test may add another of other weights; the tokenizer is the same)
    embedded = min(p for p in (cache_dir / "gguf").glob(Path(EMBEDDED_FILE).stem + "-*") if p.is_dir())
    return save_table_model(tmp_path_factory.mktemp("table-model"), embedded)


@pytest.fixture(scope="session")
def table_engine(table_model):
    """The table model loaded in this process as `engine` loads the embedded one, for tests of how prompts and caches
    are reused, whatever a model answers."""
    from models import load_model
    return load_model(str(table_model), device="cpu", max_context=2048)


@pytest.fixture(scope="session")
def table_server(script, cli_env, served_repo, table_model, tmp_path_factory):
    """`server`'s options and repository, the table model's weights."""
    yield from _serving(script, cli_env, served_repo, tmp_path_factory.mktemp("table-server"),
                        "--model", str(table_model))


@pytest.fixture
def serve_options(served_repo, monkeypatch):
    """What `codecomplete serve REPO ARGS...` hands the Server it builds (options by name), read where the server
    would start: no model loaded beyond the test engine's, no port taken, no warm-up run."""
    from codecomplete.cli import build_serve_parser
    from codecomplete.server import serve

    class Built(Exception):
        pass

    def server(session, **options):
        raise Built(options)
    monkeypatch.setattr(serve, "Server", server)
    monkeypatch.setattr(serve, "PromptWarmer", lambda *args, **kwargs: None)

    def options(*args: str) -> dict:
        with pytest.raises(Built) as built:
            serve.run_serve(build_serve_parser().parse_args(
                [str(served_repo), "--port", "0", "--device", "cpu", *args]))
        return built.value.args[0]
    return options


def contents(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def disk_ignoring_case(monkeypatch):
    """os.stat as on a disk that ignores case (macOS's default): a path through a folder spelled "Repo" finds the
    folder "repo" (resolve() keeps whichever spelling it is given)."""
    real_stat = os.stat

    def stat(path, *args, **kwargs):
        try:
            return real_stat(path, *args, **kwargs)
        except FileNotFoundError:
            return real_stat(os.fspath(path).replace(f"{os.sep}Repo", f"{os.sep}repo"), *args, **kwargs)
    monkeypatch.setattr(os, "stat", stat)

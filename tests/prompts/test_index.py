"""The index: chunks of every file, the on-disk cache, progress, warnings and errors."""

import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from process_state import exited

import prompts.index
from prompts import PromptError, ScanWarning, index_repository
from prompts.ranking import Query, rank
from prompts.scan import source_file

FILES = {
    "pkg/__init__.py": "",
    "pkg/util.py": "import os\n\n\ndef helper(x):\n    return x * 2\n",
    "pkg/main.py": "from pkg.util import helper\n\n\ndef run(v):\n    return helper(v)\n",
    "README.md": "# Demo\n",
    "blob.txt": b"binary\0data",
}


def _snapshot(root):
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


@pytest.fixture
def count_parses(monkeypatch):
    parsed = []
    real = prompts.index.analyze_source

    def counting(path, text, *args):
        parsed.append(path)
        return real(path, text, *args)

    monkeypatch.setattr(prompts.index, "analyze_source", counting)
    return parsed


def test_first_index_chunks_every_text_file_and_reports_progress(make_repo, cache_dir):
    root = make_repo(FILES)
    calls = []
    index = index_repository(root, progress=lambda done, total: calls.append((done, total)))
    assert index.root == root.resolve()
    assert index.files == ["README.md", "pkg/__init__.py", "pkg/main.py", "pkg/util.py"]  # not the binary one
    assert [(c.path, c.start_line, c.end_line) for c in index.chunks] == [
        ("README.md", 1, 1), ("pkg/main.py", 1, 1), ("pkg/main.py", 4, 5), ("pkg/util.py", 1, 1), ("pkg/util.py", 4, 5),
    ]
    assert calls[-1] == (5, 5) and [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert index.definers["helper"] == [4]
    assert list(cache_dir.rglob("*.pickle"))


def test_warm_run_reparses_only_changed_files_and_never_writes_into_the_repository(make_repo, count_parses):
    root = make_repo(FILES, git=True)
    index_repository(root)
    assert sorted(count_parses) == ["README.md", "pkg/__init__.py", "pkg/main.py", "pkg/util.py"]
    before = _snapshot(root)

    count_parses.clear()
    calls = []
    warm = index_repository(root, progress=lambda done, total: calls.append((done, total)))
    assert count_parses == [] and calls == []
    assert len(warm.chunks) == 5

    (root / "pkg/util.py").write_text("def helper(x):\n    return x * 3\n\n\ndef extra():\n    pass\n")
    (root / "README.md").unlink()
    after = index_repository(root)
    assert count_parses == ["pkg/util.py"]
    assert after.files == ["pkg/__init__.py", "pkg/main.py", "pkg/util.py"]
    assert [c.defines for c in after.chunks if c.path == "pkg/util.py"] == [("helper",), ("extra",)]
    _assert_terms_match_references(after)  # the cached numbering was extended, not mixed up
    changed = {"README.md", "pkg/util.py"}
    assert [e for e in _snapshot(root) if e[0] not in changed] == [e for e in before if e[0] not in changed]

    # New text under the old modification time (cp -p, rsync -t, a tar extracted over it): the size tells.
    main = root / "pkg/main.py"
    stamp = main.stat().st_mtime_ns
    main.write_text("def run(v):\n    return v\n\n\ndef stop():\n    pass\n")
    os.utime(main, ns=(stamp, stamp))
    count_parses.clear()
    assert [c.defines for c in index_repository(root).chunks if c.path == "pkg/main.py"] == [("run",), ("stop",)]
    assert count_parses == ["pkg/main.py"]


def test_a_warm_run_reads_racily_clean_files_again_until_their_stamps_can_be_trusted(make_repo, count_parses, clock,
                                                                                    file_clock, reads, cache_dir):
    """A file saved again within the file clock's tick of its indexing, at the same size (git's "racy git"), is
    told by its text on the next run: the cache keeps when each file was read. The clocks are set, not slept on."""
    root = make_repo(FILES)
    written = clock[0]
    clock[0] += 1000  # indexed just after the save
    for path in FILES:
        file_clock[path] = written - 10**12  # long unchanged
    file_clock["pkg/main.py"] = written
    main = root / "pkg/main.py"
    index_repository(root)

    main.write_text(main.read_text().replace("run", "go!"))  # as long, within the same tick
    count_parses.clear()
    reads.clear()
    assert "go!" in "".join(c.text for c in index_repository(root).chunks) and count_parses == ["pkg/main.py"]
    assert reads == ["pkg/main.py", "pkg/main.py"]  # compared, then parsed
    # A tick later: read once more (the same text, not parsed), and trusted by its stamps from then on.
    clock[0] = written + 3 * 10**9
    count_parses.clear()
    reads.clear()
    index_repository(root)
    assert count_parses == [] and reads == ["pkg/main.py"]
    index_repository(root)
    assert count_parses == [] and reads == ["pkg/main.py"]


def _assert_terms_match_references(index):
    names = {number: name for name, number in index.vocabulary.items()}
    start = 0
    for chunk, count in zip(index.chunks, index.reference_counts):
        assert {names[number] for number in index.term_ids[start : start + count]} == chunk.references
        start += count
    assert start == len(index.term_ids)


def test_the_vocabulary_stays_bounded_over_many_updates_and_dropping_names_changes_no_ranking(make_repo, tmp_path,
                                                                                              cache_dir):
    # app.js is saved again and again with a new name each time (an identifier being typed): the names no file
    # references any more are dropped once they are as many as those in use, and every ranking stays that of an
    # index built from scratch. ("match" stops being referenced while h.py still defines it: a Python keyword, so
    # not a reference there.)
    files = {f"m{i}.py": f"def f{i}(value):\n    return helper(value) + {i}\n" for i in range(6)}
    helpers = "def helper(x):\n    return x\n\n\nclass Box:\n    def match(self):\n        pass\n"
    root = make_repo(files | {"h.py": helpers, "app.js": "function main(box) {\n  return box.match();\n}\n"})
    index = index_repository(root)
    query = Query(weights={"helper": 1.0, "match": 0.8, "value": 0.5, "name_3": 0.7}, path="app.js")
    dropped = 0
    for n in range(40):
        (root / "app.js").write_text(f"function main(value) {{\n  return name_{n}(value);\n}}\n")
        os.utime(root / "app.js", ns=(10**18 + n, 10**18 + n))  # (a new stamp each time, however fast the loop)
        entry = prompts.index.parse_file(root, source_file(root, "app.js"), 1 << 20)
        before, index = index, index.updated({"app.js": entry})
        assert len(index.vocabulary) <= 2 * sum(index.document_frequency > 0)
        dropped += len(index.vocabulary) < len(before.vocabulary)
        _assert_terms_match_references(index)
        fresh = index_repository(root, cache_dir=tmp_path / f"fresh-{n}")
        assert list(rank(index, query)) == list(rank(fresh, query))
        assert list(rank(index, query, definitions_only=True)) == list(rank(fresh, query, definitions_only=True))
        index_repository(root)  # a warm start that parses app.js again, extending the cached numbering
    assert dropped >= 3
    (cache_file,) = cache_dir.rglob("*.pickle")
    cached = pickle.loads(cache_file.read_bytes())
    in_use = set().union(*(chunk.references for entry in cached["files"].values() for chunk in entry.chunks))
    assert in_use <= cached["vocabulary"].keys() and len(cached["vocabulary"]) <= 2 * len(in_use)


def test_a_cache_inside_the_repository_is_refused(make_repo):
    root = make_repo(FILES)
    with pytest.warns(ScanWarning, match="inside the repository"):
        index = index_repository(root, cache_dir=root / ".cache")
    assert index.files and not (root / ".cache").exists()


def test_a_corrupt_cache_is_rebuilt(make_repo, cache_dir, count_parses):
    root = make_repo(FILES)
    index_repository(root)
    for cache_file in cache_dir.rglob("*.pickle"):
        cache_file.write_bytes(b"not a pickle")
    count_parses.clear()
    assert len(index_repository(root).chunks) == 5
    assert len(count_parses) == 4
    for cache_file in cache_dir.rglob("*.pickle"):
        assert pickle.loads(cache_file.read_bytes())["root"] == str(root.resolve())


def test_a_cache_parsed_by_other_grammars_is_parsed_again(make_repo, cache_dir, count_parses, monkeypatch):
    """A grammar upgraded under the same codecomplete (`pip install -U tree-sitter-python`) may chunk some code
    otherwise: the files are parsed again, not kept with the old grammar's chunks until each changes; with the same
    grammars nothing is parsed. The stamps are the installed bindings' (no grammar imported to take them)."""
    import prompts.index
    from prompts.languages import grammars_stamp

    stamp = grammars_stamp()
    assert [module for module, _ in stamp][:2] == ["tree_sitter", "tree_sitter_c"] and all(files for _, files in stamp)
    root = make_repo(FILES)
    index_repository(root)
    count_parses.clear()
    index_repository(root)
    assert count_parses == []
    upgraded = ((stamp[0]), *((module, ((name, size + 1, mtime),)) for module, ((name, size, mtime),) in stamp[1:]))
    monkeypatch.setattr(prompts.index, "grammars_stamp", lambda: upgraded)
    assert len(index_repository(root).chunks) == 5 and len(count_parses) == 4
    count_parses.clear()
    index_repository(root)      # (saved with the new grammars' stamps)
    assert count_parses == []


class _Planted:
    """What a planted cache file would carry: a call made while it unpickles."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_cache_file_that_would_run_code_is_refused_and_rebuilt(make_repo, cache_dir, count_parses, tmp_path):
    """An index pickle may name only the index's own types and numpy's array rebuilders: a cache folder someone
    else could write to must not make indexing run their code."""
    root = make_repo(FILES)
    index_repository(root)
    marker = tmp_path / "ran"
    (cache_file,) = cache_dir.rglob("*.pickle")
    saved = pickle.loads(cache_file.read_bytes())
    saved["planted"] = _Planted(marker)
    cache_file.write_bytes(pickle.dumps(saved))
    count_parses.clear()
    assert len(index_repository(root).chunks) == 5
    assert not marker.exists() and len(count_parses) == 4       # refused whole, rebuilt from the files


def test_an_unreadable_file_warns_and_the_rest_is_indexed(make_repo, refuse_open):
    root = make_repo(FILES)
    refuse_open("main.py")
    with pytest.warns(ScanWarning, match="skipped pkg/main.py: Permission denied"):
        index = index_repository(root)
    assert index.files == ["README.md", "pkg/__init__.py", "pkg/util.py"]


def test_errors_for_a_missing_folder_and_an_empty_repository(make_repo, tmp_path):
    with pytest.raises(PromptError, match="not a directory"):
        index_repository(tmp_path / "nowhere")
    root = make_repo({"empty.py": "", "image.png": b"\x89PNG"})
    with pytest.raises(PromptError, match="nothing to index"):
        index_repository(root)


def test_worker_processes_give_the_same_index(make_repo, monkeypatch, cache_dir):
    files = {f"pkg/mod_{i}.py": f"import os\n\n\ndef function_{i}(x):\n    return x + {i}\n" for i in range(40)}
    root = make_repo(files)
    serial = index_repository(root, workers=1, cache_dir=cache_dir / "serial")
    monkeypatch.setattr(prompts.index, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(prompts.index, "BATCH_BYTES", 500)
    calls = []
    parallel = index_repository(
        root, workers=2, cache_dir=cache_dir / "parallel", progress=lambda done, total: calls.append(done)
    )
    assert parallel.chunks == serial.chunks
    assert calls[-1] == 40 and len(calls) > 1


def test_worker_processes_import_nothing_from_the_current_folder(make_repo, monkeypatch, cache_dir, tmp_path):
    """A worker is a new Python started with `-c`, which puts the current folder first on its module path: run from
    inside a hostile repository (`codecomplete . --file x.py`, the usual way), its `multiprocessing.py` ran as
    the worker started, as any module the worker imports would have. (On Python 3.10, which cannot leave that
    folder out, the files are parsed in this process.)"""
    files = {f"pkg/mod_{i}.py": f"def function_{i}(x):\n    return x + {i}\n" for i in range(8)}
    marker = tmp_path / "ran"
    root = make_repo({**files, "multiprocessing.py": f"open({str(marker)!r}, 'w').close()\n"})
    monkeypatch.chdir(root)
    monkeypatch.delenv("PYTHONSAFEPATH", raising=False)      # (as a user's shell has it; conftest puts it back)
    monkeypatch.setattr(prompts.index, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(prompts.index, "BATCH_BYTES", 100)
    serial = index_repository(root, workers=1, cache_dir=cache_dir / "serial")
    parallel = index_repository(root, workers=2, cache_dir=cache_dir / "parallel")
    assert not marker.exists(), "a worker ran the repository's multiprocessing.py"
    assert parallel.chunks == serial.chunks


def test_worker_processes_leave_this_process_s_environment_as_it_was(make_repo, monkeypatch, cache_dir):
    """PYTHONSAFEPATH is for the workers only: left set in this process, a library user's later
    `subprocess.run([sys.executable, "tools/train.py"])` lost the script's own folder from its module path (its
    sibling modules no longer imported), and every Python the app started after the first index inherited it."""
    files = {f"pkg/mod_{i}.py": f"def function_{i}(x):\n    return x + {i}\n" for i in range(8)}
    root = make_repo(files)
    monkeypatch.setattr(prompts.index, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(prompts.index, "BATCH_BYTES", 100)
    for before in (None, "x"):                               # unset as in most shells, or a user's own value
        if before is None:
            monkeypatch.delenv("PYTHONSAFEPATH", raising=False)
        else:
            monkeypatch.setenv("PYTHONSAFEPATH", before)
        index_repository(root, workers=2, cache_dir=cache_dir / str(before))
        assert os.environ.get("PYTHONSAFEPATH") == before


def test_overlapping_worker_starts_put_the_environment_back_once_the_last_ends(monkeypatch):
    """Two indexes built at once (threads of one process) share the variable: the first to end must not take it
    away from the second's workers still starting."""
    monkeypatch.delenv("PYTHONSAFEPATH", raising=False)
    first, second = prompts.index._children_skip_current_folder(), prompts.index._children_skip_current_folder()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert os.environ.get("PYTHONSAFEPATH") == "1"
    second.__exit__(None, None, None)
    assert "PYTHONSAFEPATH" not in os.environ


def test_relative_paths_stay_inside_the_repository(make_repo):
    root = make_repo(FILES)
    index = index_repository(root)
    assert index.relative_path("pkg/main.py") == "pkg/main.py"
    assert index.relative_path(root / "pkg" / "main.py") == "pkg/main.py"
    assert index.relative_path("pkg/../README.md") == "README.md"
    for outside in ("../elsewhere.py", "/etc/passwd", root.parent):
        with pytest.raises(PromptError, match="outside the repository"):
            index.relative_path(outside)
    os.symlink(root.parent, root / "parent")
    with pytest.raises(PromptError, match="outside the repository"):
        index.relative_path("parent/x.py")
    with pytest.raises(PromptError, match="^an empty path is outside"):     # not " is outside ..."
        index.relative_path("")


def test_a_path_in_another_case_is_the_indexed_file_where_the_disk_says_it_is_the_same(make_repo):
    """On a disk that ignores case an editor's `Pkg/Main.py` names pkg/main.py, but resolving keeps the case given:
    the file's own chunks and imports were not found, and it was ranked as context for itself. (A hard link stands
    in for such a disk here; a different file whose name differs in case keeps its own name.)"""
    root = make_repo(FILES)
    index = index_repository(root)
    os.link(root / "pkg" / "main.py", root / "pkg" / "Main.py")
    (root / "readme.md").write_text("another file\n")
    assert index.relative_path("pkg/Main.py") == "pkg/main.py"
    assert index.relative_path("readme.md") == "readme.md"
    assert index.relative_path("pkg/MAIN.py") == "pkg/MAIN.py"        # (no such file: a new buffer's name, as given)
    # macOS lists `cafe\u0301.py` (é as e and an accent) where an editor sends `caf\u00e9.py`.
    root = make_repo({"cafe\u0301.py": "x = 1\n"}, name="accents")
    index = index_repository(root)
    os.link(root / "cafe\u0301.py", root / "caf\u00e9.py")
    assert index.relative_path("caf\u00e9.py") == "cafe\u0301.py"


@pytest.mark.parametrize("damage", [
    lambda saved: {**saved, "files": {path: tuple(entry) for path, entry in saved["files"].items()}},
    lambda saved: {**saved, "files": {path: entry._replace(chunks=("text",)) for path, entry in saved["files"].items()}},
    lambda saved: {**saved, "term_ids": saved["term_ids"].tolist()},
    lambda saved: {**saved, "term_ids": saved["term_ids"][:-1], "owners": saved["owners"][:-1]},
    lambda saved: {**saved, "owners": saved["owners"] + 100},
    lambda saved: {**saved, "owners": saved["owners"].astype("int64")},
    lambda saved: {**saved, "vocabulary": {}},
    lambda saved: {**saved, "files": None},
    lambda saved: [saved],
], ids=["entries-are-tuples", "chunks-are-strings", "term-ids-are-a-list", "term-ids-too-few", "owners-no-chunks",
        "owners-of-another-type", "vocabulary-lost", "no-files", "a-list"])
def test_a_well_pickled_cache_of_the_wrong_shape_is_rebuilt(make_repo, cache_dir, count_parses, damage):
    root = make_repo(FILES)
    index_repository(root)
    (cache_file,) = cache_dir.rglob("*.pickle")
    cache_file.write_bytes(pickle.dumps(damage(pickle.loads(cache_file.read_bytes()))))
    count_parses.clear()
    index = index_repository(root)
    assert index.definers["helper"] == [4] and len(count_parses) == 4
    assert isinstance(next(iter(pickle.loads(cache_file.read_bytes())["files"].values())), prompts.index.FileEntry)


def test_a_failed_cache_write_leaves_no_temporary_file(make_repo, cache_dir, monkeypatch):
    root = make_repo(FILES)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prompts.index.pickle, "dump", disk_full)
    with pytest.warns(ScanWarning, match="could not write the index cache .*No space left on device"):
        index_repository(root)
    assert [p for p in cache_dir.rglob("*") if p.is_file()] == []


def test_a_folder_in_the_cache_files_place_is_replaced(make_repo, cache_dir, count_parses):
    """A folder where the pickle goes: "could not write the index cache ...: Is a directory" at every run, and
    every run parsed the whole repository again."""
    root = make_repo(FILES)
    index_repository(root)
    (cache_file,) = cache_dir.rglob("*.pickle")
    cache_file.unlink()
    (cache_file / "inside").mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScanWarning)
        index_repository(root)
    count_parses.clear()
    index = index_repository(root)
    assert cache_file.is_file() and index.definers["helper"] == [4] and count_parses == []


ROOT = Path(__file__).resolve().parents[2]
# A process killed by SIGKILL (the OOM killer, `kill -9` of a stuck server) halfway through writing the index cache.
KILLED_WHILE_WRITING = """
import os, pickle, signal, sys
import prompts.index

def killed_while_writing(saved, file, protocol=None):
    file.write(pickle.dumps(saved, protocol=protocol)[:64])     # half a pickle on disk...
    file.flush()
    os.kill(os.getpid(), signal.SIGKILL)                         # ...and no `finally` runs

prompts.index.pickle.dump = killed_while_writing
prompts.index.index_repository(sys.argv[1])
"""


def test_a_write_killed_midway_is_never_read_and_its_temporary_file_goes_in_time(make_repo, cache_dir, count_parses):
    """SIGKILL skips the write's cleanup: its temporary file stayed in the cache folder for good, as large as the
    index. The next run builds the index from the files, never from the half-written pickle; a later write removes
    the dead write's file once it is too old to be a write under way (one that still writes keeps it fresh)."""
    root = make_repo(FILES)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    killed = subprocess.run([sys.executable, "-c", KILLED_WHILE_WRITING, str(root)], env=env, capture_output=True,
                            text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    folder = cache_dir / f"index-v{prompts.index.CACHE_VERSION}"
    [dead] = folder.iterdir()                   # the half-written temporary file, and no cache file
    index = index_repository(root)
    assert index.definers["helper"] == [4] and len(count_parses) == 4
    assert dead.exists() and len(list(folder.glob("*.pickle"))) == 1     # fresh: it may be a write under way
    an_hour_ago = time.time_ns() - (prompts.index.STALE_TEMPORARY_S + 60) * 10**9
    os.utime(dead, ns=(an_hour_ago, an_hour_ago))
    (root / "pkg" / "util.py").write_text("def helper(x):\n    return x * 3\n")   # (so that the next run writes)
    index_repository(root)
    assert sorted(folder.iterdir()) == sorted(folder.glob("*.pickle")) and len(list(folder.iterdir())) == 1


# A process killed outright while its worker processes parse (the OOM killer, an editor's `kill -9` of its server
# during a first index): the workers are up, have sent a batch back and wait for more.
KILLED_WHILE_WORKERS_PARSE = """
import multiprocessing, os, signal, sys
from pathlib import Path
import prompts.index as index
from prompts.scan import scan_repository

root = Path(sys.argv[1]).resolve()
index.BATCH_BYTES = 1
batches = index._parse_in_workers(root, scan_repository(root, index.MAX_FILE_BYTES), index.MAX_FILE_BYTES, 2)
next(batches)
print(" ".join(str(worker.pid) for worker in multiprocessing.active_children()), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.skipif(sys.platform == "win32" or sys.version_info < (3, 11), reason="spawned workers on POSIX, 3.11+")
def test_worker_processes_end_with_a_process_killed_outright(make_repo):
    """A first index of a large repository parses in worker processes. Killed outright (SIGKILL: no `finally`, no
    shutdown of the pool), the process left its workers, and multiprocessing's resource tracker, waiting for work
    for good (seen: still there 10 minutes on, 35 MB each), and they held its standard output and error open: a
    plugin or a script reading the server's output to its end (`$(codecomplete ...)`) waited for ever too."""
    files = {f"pkg/mod_{i}.py": f"def function_{i}(x):\n    return x + {i}\n" for i in range(6)}
    root = make_repo(files)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    killed = subprocess.Popen([sys.executable, "-c", KILLED_WHILE_WORKERS_PARSE, str(root)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    workers = [int(pid) for pid in killed.stdout.readline().split()]
    assert killed.wait(timeout=120) == -signal.SIGKILL and workers
    left = [pid for pid in workers if not exited(pid, within=10)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    killed.stdout.close()
    assert not left, "worker processes outlived the process that started them"


# A first parallel index where workers cannot start: 16 descriptors (`ulimit -n 16`), too few for their pipes.
INDEXED_WITH_FEW_DESCRIPTORS = """
import resource, sys
from pathlib import Path
import prompts.index as index

index.BATCH_BYTES, index.PARALLEL_MIN_BYTES = 1, 1
resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))
built = index.index_repository(Path(sys.argv[1]), workers=2)
print(sorted(built.definers))
"""


@pytest.mark.skipif(sys.platform == "win32" or sys.version_info < (3, 11), reason="spawned workers on POSIX, 3.11+")
def test_workers_that_cannot_start_leave_the_index_to_this_process(make_repo):
    """Under `ulimit -n 16` a first index large enough for worker processes failed as an internal error ("OSError:
    [Errno 24] Too many open files" from the pipes of a worker's start)."""
    files = {f"pkg/mod_{i}.py": f"def function_{i}(x):\n    return x + {i}\n" for i in range(6)}
    root = make_repo(files)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               CODECOMPLETE_CACHE_DIR=str(root.parent / "index-cache"))
    run = subprocess.run([sys.executable, "-c", INDEXED_WITH_FEW_DESCRIPTORS, str(root)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == str(sorted(f"function_{i}" for i in range(6)))


def test_on_windows_the_cache_is_written_once_a_reader_lets_go(make_repo, cache_dir, monkeypatch):
    """Windows will not replace a file another process has open: a second process loading the index at that moment
    made the write fail with a warning (and the next start parse again)."""
    import sys
    import warnings

    root = make_repo(FILES)
    real_replace, refusals = os.replace, [2]

    def replace(source, target):
        if refusals[0]:
            refusals[0] -= 1
            raise PermissionError(13, "Access is denied")
        real_replace(source, target)
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(prompts.index.os, "replace", replace)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScanWarning)
        index_repository(root)
    assert refusals == [0] and len(list(cache_dir.rglob("*.pickle"))) == 1


def test_the_caches_of_earlier_versions_go_when_this_version_writes_its_own(make_repo, cache_dir, tmp_path):
    """Each version bump of the cache layout left the earlier version's folder in the user's cache for good (a pickle
    per repository). Only what the index writes goes: not a newer version's folder, not a link to a folder, not a
    folder or file of another name, not a write that may be under way."""
    import warnings

    version = prompts.index.CACHE_VERSION
    key = "0123456789abcdef0123"
    for old in range(1, version):
        (cache_dir / f"index-v{old}").mkdir()
        (cache_dir / f"index-v{old}" / f"{key}.pickle").write_bytes(b"an old index")
    (cache_dir / "index-v1" / "tmpa1b2c3d4.tmp").write_bytes(b"a write that crashed long ago")
    os.utime(cache_dir / "index-v1" / "tmpa1b2c3d4.tmp", ns=(10**18, 10**18))
    (cache_dir / f"index-v{version - 1}" / "tmpz9y8x7w6.tmp").write_bytes(b"a write under way")
    (cache_dir / "index-v2" / "notes.txt").write_text("the user's")
    # an old file of the user's named like a temporary file, but not as tempfile names one (tmp + 8 of [a-z0-9_])
    for name in ("tmpnotes.tmp", "tmpNOTES123.tmp"):
        (cache_dir / "index-v2" / name).write_text("the user's")
        os.utime(cache_dir / "index-v2" / name, ns=(10**18, 10**18))
    kept = {f"index-v{version + 1}/{key}.pickle": b"a newer version's", "index-v3-backup/x.pickle": b"other",
            "index-v03/x.pickle": b"other", "models/weights.bin": b"other"}
    for name, data in kept.items():
        (cache_dir / name).parent.mkdir(exist_ok=True)
        (cache_dir / name).write_bytes(data)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / f"{key}.pickle").write_bytes(b"not ours")
    shutil.rmtree(cache_dir / "index-v4")
    (cache_dir / "index-v4").symlink_to(elsewhere, target_is_directory=True)
    real_unlink = os.unlink

    def unlink(path, *args, **kwargs):  # another process removed it first
        real_unlink(path, *args, **kwargs)
        if "index-v3" in str(path):
            raise FileNotFoundError(2, "No such file or directory", str(path))
    root = make_repo(FILES)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(os, "unlink", unlink)
            index_repository(root)
    left = sorted(p.relative_to(cache_dir).as_posix() for p in cache_dir.rglob("*") if not p.is_dir() or
                  p.is_symlink())
    assert left == sorted([*kept, "index-v2/notes.txt", "index-v2/tmpnotes.tmp", "index-v2/tmpNOTES123.tmp",
                           f"index-v{version - 1}/tmpz9y8x7w6.tmp", "index-v4",
                           f"index-v{version}/{next(cache_dir.glob(f'index-v{version}/*.pickle')).name}"])
    assert (elsewhere / f"{key}.pickle").read_bytes() == b"not ours"


def test_a_cache_dir_that_is_a_file_is_said_once_before_any_parsing(make_repo, tmp_path, count_parses):
    root = make_repo(FILES)
    (tmp_path / "cache-file").write_text("x")
    with pytest.warns(ScanWarning) as caught:
        index_repository(root, cache_dir=tmp_path / "cache-file")
    assert [str(w.message) for w in caught] == [f"not caching the index: the cache folder "
                                                f"{(tmp_path / 'cache-file').resolve()} is not a folder"]
    assert (tmp_path / "cache-file").read_text() == "x"


def test_code_between_two_chunks_is_found_by_line_order(make_repo):
    """Bisection over a file's chunks (they are in line order) gives what a scan of them gave."""
    text = "".join(f"def f{i}():\n    return {i}\n\n" for i in range(40))
    index = index_repository(make_repo({"m.py": text}))
    chunks = [index.chunks[n] for n in index.chunk_numbers("m.py")]
    assert [c.start_line for c in chunks] == sorted(c.start_line for c in chunks) and len(chunks) >= 10

    def scanned(first, second):
        return any(first.end_line < c.start_line < second.start_line for c in chunks)
    for i in range(len(chunks)):
        for j in range(i, len(chunks)):
            assert index.code_between(chunks[i], chunks[j]) == scanned(chunks[i], chunks[j]) == (j > i + 1)


@pytest.mark.parametrize("argv", [["--cold-runs", "0"], ["--budget", "0"]])
def test_prompts_bench_refuses_a_run_of_nothing_before_indexing(argv, monkeypatch, capsys):
    """bench/prompts_bench.py --cold-runs 0 was a traceback (the best of no first runs): status 2, said first."""
    import importlib.util
    import sys
    from pathlib import Path
    script = Path(__file__).parents[2] / "bench" / "prompts_bench.py"
    monkeypatch.syspath_prepend(str(script.parent))
    spec = importlib.util.spec_from_file_location("prompts_bench", script)
    prompts_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prompts_bench)
    monkeypatch.setattr(prompts_bench, "index_repository", lambda *a, **kw: pytest.fail("indexed"))
    monkeypatch.setattr(sys, "argv", ["prompts_bench.py", *argv])
    with pytest.raises(SystemExit) as exit:
        prompts_bench.main()
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "--cold-runs and --budget take 1 or more" in err and err.count("\n") == 1


def test_prompts_bench_leaves_no_cache_folders_behind(tmp_path, monkeypatch):
    """Each cold run indexed into a fresh `prompts-bench-*` folder under the system's temporary folder, and no run
    removed them: a folder of index caches left behind per run. Now they go at the end, and when a step fails."""
    import importlib.util
    import sys
    from pathlib import Path
    from types import SimpleNamespace
    script = Path(__file__).parents[2] / "bench" / "prompts_bench.py"
    monkeypatch.syspath_prepend(str(script.parent))
    spec = importlib.util.spec_from_file_location("prompts_bench", script)
    prompts_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prompts_bench)
    caches = []

    def index_repository(path, cache_dir):
        caches.append(Path(cache_dir))
        Path(cache_dir).mkdir(parents=True, exist_ok=True)     # (as index_repository makes its cache's folder)
        (Path(cache_dir) / "index.bin").write_bytes(b"x")
        return SimpleNamespace(files=[], chunks=[])

    def warm_run(stdlib, cache):
        assert Path(cache) in caches and Path(cache).is_dir()       # the warm runs read the last cold run's cache
        return {"index_s": 0.1, "process_s": 0.2, "import_s": 0.0, "chunks": 0}

    monkeypatch.setattr(prompts_bench, "index_repository", index_repository)
    monkeypatch.setattr(prompts_bench, "_warm_run", warm_run)
    monkeypatch.setattr(prompts_bench, "_rank_and_pack", lambda index, budget: {"first_ms": 1.0,
                                                                                 "keystroke_median_ms": 1.0})
    monkeypatch.setattr(prompts_bench, "_markdown", lambda results: "")
    monkeypatch.setattr(sys, "argv", ["prompts_bench.py", "--out", str(tmp_path / "out"), "--cold-runs", "2"])
    prompts_bench.main()
    assert len(caches) == 2 and len(set(caches)) == 2 and not any(cache.exists() for cache in caches), caches

    caches.clear()
    monkeypatch.setattr(prompts_bench, "_rank_and_pack", lambda index, budget: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        prompts_bench.main()
    assert caches and not any(cache.exists() for cache in caches), caches


def test_a_utf16_file_is_indexed_and_its_definitions_found(make_repo):
    source = "int add_numbers(int a, int b) {\r\n    return a + b;\r\n}\r\n"
    root = make_repo({"util.c": b"\xff\xfe" + source.encode("utf-16-le"), "main.c": "int main(void) { return 0; }\n"})
    index = index_repository(root)
    assert index.files == ["main.c", "util.c"]
    [number] = index.definers["add_numbers"]
    assert index.chunks[number].text == source.replace("\r\n", "\n").rstrip("\n")

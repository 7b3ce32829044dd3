"""FreshIndex: a long-lived index follows the files (saved, added, deleted) with bounded work per request."""

import builtins
import io
import os
import time
from collections import Counter

import pytest

import prompts.index
from prompts import index_repository
from prompts.freshness import FreshIndex


def chunks_of(index):
    return [(c.path, c.start_line, c.end_line, c.text) for c in index.chunks]


def test_changes_on_disk_reach_the_index(make_repo, cache_dir):
    files = {f"pkg/m{i}.py": f"def f{i}(x):\n    return x + {i}\n" for i in range(30)}
    root = make_repo(files | {".gitignore": "ignored.py\n", "app.py": "def main():\n    return 0\n"})
    fresh = FreshIndex(index_repository(root), files_per_refresh=8)
    first = fresh.index

    # The request's own file is looked at before every request: saved just now, seen at once.
    (root / "app.py").write_text("def main():\n    return run()\n\n\ndef run():\n    return 1\n")
    index = fresh.refresh("app.py")
    assert index is not first
    assert [c.defines for c in index.chunks if c.path == "app.py"] == [("main",), ("run",)]

    # Others are found by the walk between requests, a slice each time: added, changed, deleted, and an ignored
    # one left out.
    (root / "pkg/new.py").write_text("def brand_new():\n    return 2\n")
    (root / "pkg/m3.py").write_text("def f3_renamed(x):\n    return x\n")
    (root / "pkg/m7.py").unlink()
    (root / "ignored.py").write_text("def hidden():\n    pass\n")
    for _ in range(2 * (len(files) + 3) // 8 + 2):  # two passes of the walk at most
        index = fresh.sweep()
    assert chunks_of(index) == chunks_of(index_repository(root))
    assert "pkg/new.py" in index.files and "pkg/m7.py" not in index.files and "ignored.py" not in index.files
    assert index.definers["f3_renamed"] and "f3" not in index.definers

    # Nothing changed: the same index object, no rebuild.
    assert fresh.refresh("app.py") is index

    # New text under the old modification time (cp -p, rsync -t): the size tells.
    stamp = (root / "app.py").stat().st_mtime_ns
    (root / "app.py").write_text("def main():\n    return 0\n")
    os.utime(root / "app.py", ns=(stamp, stamp))
    assert [c.defines for c in fresh.refresh("app.py").chunks if c.path == "app.py"] == [("main",)]



def test_an_edit_within_the_tick_of_the_last_reading_is_seen_by_its_text(make_repo, cache_dir, clock, file_clock,
                                                                         reads):
    """Git's "racy git": the editor saves again within the file clock's tick of the server's reading, at the same
    size, and every stamp of a stat stays as it was. The clocks are set, not slept on."""
    root = make_repo({"a.py": "def a():\n    pass\n", "app.py": "def main():\n    return 1\n"})
    written = clock[0] = time.time_ns()  # the tick both saves fall in; the server reads just after the first save
    clock[0] += 1000
    file_clock["app.py"] = written
    file_clock["a.py"] = written - 10**12  # long unchanged: never read again
    fresh = FreshIndex(index_repository(root))

    (root / "app.py").write_text("def main():\n    return 2\n")  # as long, within the same tick
    index = fresh.refresh("app.py")
    assert [c.text for c in index.chunks if c.path == "app.py"] == ["def main():\n    return 2"]
    # Still racily clean (read within the tick): read again at each look, yet the same text is no new index.
    reads.clear()
    assert fresh.refresh("app.py") is index and not fresh.recheck(["app.py"]) and reads == ["app.py", "app.py"]
    # Once a reading comes a tick after the change, the stamps are trusted again.
    clock[0] = written + 3 * 10**9
    reads.clear()
    assert fresh.refresh("app.py") is index and fresh.refresh("app.py") is index and reads == ["app.py"]
    assert fresh.rescan() is index and reads == ["app.py"]


def test_a_file_dated_in_the_future_is_read_again_only_until_a_tick_after_its_change(make_repo, cache_dir, clock,
                                                                                      reads):
    """`touch -d tomorrow` (or a tool's, or another machine's, clock): the modification time is no time the file
    clock told, and compared with the reading's it made the file racily clean until tomorrow: read again at every
    look, every request and every warm start. The change time, which a stat gives too, tells when it changed."""
    root = make_repo({"later.py": "def later():\n    return 1\n"})
    tomorrow = time.time_ns() + 86_400 * 10**9
    os.utime(root / "later.py", ns=(tomorrow, tomorrow))
    changed = (root / "later.py").stat().st_ctime_ns
    clock[0] = changed + 1000                   # indexed just after: racily clean, as any file just written
    fresh = FreshIndex(index_repository(root))
    clock[0] = changed + 3 * 10**9              # a tick later
    reads.clear()
    for _ in range(3):
        assert fresh.refresh("later.py") is fresh.index and not fresh.recheck(["later.py"])
    assert reads == ["later.py"]                # compared once more, then trusted by its stamps
    reads.clear()
    index_repository(root)                      # a warm start: the same, and what it learnt is saved
    index_repository(root)
    assert reads == ["later.py"]
    # An edit at the same size, dated tomorrow again (cp -p): the change time moved.
    (root / "later.py").write_text("def later():\n    return 2\n")
    os.utime(root / "later.py", ns=(tomorrow, tomorrow))
    assert [c.text for c in fresh.refresh("later.py").chunks if c.path == "later.py"] == \
        ["def later():\n    return 2"]


def test_where_the_file_clock_runs_ahead_of_this_one_a_file_is_trusted_a_tick_after_its_first_reading(
        make_repo, cache_dir, clock, file_clock, reads):
    """A network disk whose clock runs a day ahead of this machine's: every stamp is in this clock's future. The
    tick of a file's stamps began before its first reading, so a reading a tick after that one can trust them;
    an edit within that tick at the same size is still told by its text."""
    root = make_repo({"app.py": "def main():\n    return 1\n"})
    file_clock["app.py"] = time.time_ns()
    clock[0] = file_clock["app.py"] - 86_400 * 10**9
    fresh = FreshIndex(index_repository(root))
    (root / "app.py").write_text("def main():\n    return 2\n")     # within the tick, as long: the same stamps
    clock[0] += 10**9
    index = fresh.refresh("app.py")
    assert [c.text for c in index.chunks if c.path == "app.py"] == ["def main():\n    return 2"]
    clock[0] += 3 * 10**9
    reads.clear()
    for _ in range(3):
        assert fresh.refresh("app.py") is index and not fresh.recheck(["app.py"])
    assert reads == ["app.py"]


def test_a_folder_replaced_by_a_link_out_of_the_repository_is_not_followed(make_repo, tmp_path, cache_dir):
    """The walk never enters a linked folder, but the request's own file was looked at through one: `conf/`
    swapped for a link to a folder outside brought that folder's settings.py into the index."""
    root = make_repo({"a.py": "def a():\n    pass\n", "conf/settings.py": "TOKEN = 'in the repository'\n"})
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "settings.py").write_text("SECRET = 'outside the repository'\n")
    fresh = FreshIndex(index_repository(root))
    for part in (root / "conf").iterdir():
        part.unlink()
    (root / "conf").rmdir()
    (root / "conf").symlink_to(outside, target_is_directory=True)
    index = fresh.refresh("conf/settings.py")
    assert "SECRET" not in index.vocabulary and index.files == ["a.py"]
    assert fresh.rescan().files == ["a.py"]


def test_a_recheck_of_a_prompt_s_files_leaves_out_each_one_under_a_folder_turned_link_or_git_folder(make_repo, tmp_path,
                                                                                               cache_dir):
    """A recheck looks at each folder on its files' paths once (prompts.scan.source_file's folders_seen): every
    file under a folder now a link out of the repository, or now a git folder of its own, leaves the index; the
    files beside them in the folders above stay."""
    files = {"pkg/linked/a.py": "A = 1\n", "pkg/linked/b.py": "B = 2\n", "pkg/sub/c.py": "C = 3\n",
             "pkg/nested/d.py": "D = 4\n", "pkg/e.py": "E = 5\n", "f.py": "F = 6\n"}
    root = make_repo(files)
    fresh = FreshIndex(index_repository(root))
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("a.py", "b.py"):
        (outside / name).write_text("SECRET = 'outside the repository'\n")
    for part in (root / "pkg/linked").iterdir():
        part.unlink()
    (root / "pkg/linked").rmdir()
    (root / "pkg/linked").symlink_to(outside, target_is_directory=True)
    git = root / "pkg/nested"               # a repository of its own now (git init there)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "objects").mkdir()
    (git / "refs").mkdir()
    assert fresh.recheck(list(files))
    index = fresh.index
    assert index.files == ["f.py", "pkg/e.py", "pkg/sub/c.py"] and "SECRET" not in index.vocabulary
    assert index.files == index_repository(root).files

@pytest.mark.parametrize("rules", [".gitignore", "pkg/.gitignore", ".codecompleteignore", ".git/info/exclude"])
def test_a_file_ignored_while_served_leaves_the_index_at_the_next_request(make_repo, cache_dir, rules):
    """A user adds a file of secrets to .gitignore while a server runs: the walk that finds it gone takes a pass of
    the repository (tens of requests on a large one), and meanwhile every prompt that ranked it carried it. The
    ignore files of the root and of the request's path are looked at (a stat each) before each request; changed,
    the files they now leave out go at once, and a walk under way (the old rules) starts again."""
    files = {f"pkg/m{i}.py": f"def f{i}(x):\n    return x + {i}\n" for i in range(40)}
    root = make_repo(files | {"pkg/secrets.py": "API_KEY = 'hunter2'\n", "app.py": "def main():\n    return 0\n",
                              ".git/info/exclude": "", ".gitignore": "", "pkg/.gitignore": ""})
    fresh = FreshIndex(index_repository(root), files_per_refresh=4)
    assert "pkg/secrets.py" in fresh.refresh("pkg/m1.py").files
    fresh.sweep()                                       # a walk under way, with the rules as they were
    (root / rules).write_text("secrets.py\n")
    index = fresh.refresh("pkg/m1.py")
    assert "pkg/secrets.py" not in index.files and "pkg/m2.py" in index.files
    for _ in range(2 * len(files) // 4 + 4):            # the walks find the same: it stays out
        index = fresh.sweep()
    assert fresh.walked and "pkg/secrets.py" not in index.files
    assert chunks_of(index) == chunks_of(index_repository(root))
    (root / rules).write_text("")                       # ignored no more: back with the walk
    fresh.refresh("pkg/m1.py")
    for _ in range(2 * len(files) // 4 + 4):
        index = fresh.sweep()
    assert "pkg/secrets.py" in index.files


def test_a_file_created_next_to_the_requests_file_is_in_the_index_at_that_request(make_repo, cache_dir):
    """An editor user creates a module and imports it from another file: the folders on the request's path are looked
    at before it (listed when a file was added), where the new module waited for the rolling walk to reach it. A
    new file elsewhere is found by the sweeps' round of the folders, before the walk gets there."""
    files = {f"pkg{f}/m{i}.py": f"def f{f}_{i}(x):\n    return x + {i}\n" for f in range(4) for i in range(40)}
    root = make_repo(files | {".gitignore": "*.log\nscratch/\n", "app.py": "def main():\n    return 0\n"})
    fresh = FreshIndex(index_repository(root), files_per_refresh=4, folders_per_sweep=2)
    fresh.sweep()                                      # a walk under way, past pkg0 (sorted first) by the end
    (root / "new_helper.py").write_text("def new_helper():\n    return 1\n")
    (root / "tools" / "deep").mkdir(parents=True)      # a new package, its module in a folder below it
    (root / "tools" / "deep" / "cut.py").write_text("def cut_corners():\n    return 2\n")
    (root / "pkg0" / "late.py").write_text("def arrived_late():\n    return 3\n")
    (root / "pkg3" / "debug.log").write_text("def not_code():\n    pass\n")    # ignored: never indexed
    (root / "scratch").mkdir()
    (root / "scratch" / "tmp.py").write_text("def scratch():\n    pass\n")
    index = fresh.refresh("app.py")
    assert index.definers["new_helper"] and index.definers["cut_corners"]
    assert "arrived_late" not in index.definers                      # not on the request's path: the sweeps'
    for _ in range(3):                                               # a round of the 7 folders, 2 a sweep
        index = fresh.sweep()
    assert index.definers["arrived_late"] and fresh.walked == 0      # ... long before the walk's end
    assert fresh.refresh("pkg3/new.py") is index                     # a new file's own path: nothing more there
    # The walk ends: what the folders brought in stays (the walk had gone past pkg0), and it is what a scan finds.
    for _ in range(len(files) // 4 + 10):
        index = fresh.sweep()
    assert fresh.walked and chunks_of(index) == chunks_of(index_repository(root))
    assert "pkg3/debug.log" not in index.files and "scratch" not in index.definers


def test_a_file_added_within_the_tick_of_its_folders_listing_is_found_at_the_next_look(make_repo, cache_dir, clock,
                                                                                       monkeypatch):
    """A folder's modification time moves when an entry is added, except within the file clock's tick of the last
    change: a listing in that tick may be missing a file that keeps the folder's stamp. The clock is set, and the
    folder's stamps held, as a coarse file clock would hold them (the change time, which utime cannot set, read as
    the modification time)."""
    import prompts.freshness

    monkeypatch.setattr(prompts.freshness, "change_time", lambda info: info.st_mtime_ns)
    root = make_repo({"pkg/a.py": "def a():\n    pass\n", "app.py": "def main():\n    return 0\n"})
    fresh = FreshIndex(index_repository(root))
    (root / "pkg" / "b.py").write_text("def b():\n    pass\n")
    stamp = (root / "pkg").stat().st_mtime_ns
    clock[0] = stamp + 1000                   # listed just after that change
    assert fresh.refresh("pkg/a.py").definers["b"]
    (root / "pkg" / "c.py").write_text("def c():\n    pass\n")
    os.utime(root / "pkg", ns=(stamp, stamp))  # within the same tick
    assert fresh.refresh("pkg/a.py").definers["c"]
    clock[0] = stamp + 3 * 10**9              # a listing a tick later: the stamp is trusted from then on
    assert fresh.refresh("pkg/a.py").definers["c"]
    (root / "pkg" / "d.py").write_text("def d():\n    pass\n")
    os.utime(root / "pkg", ns=(stamp, stamp))  # (no file clock does this a tick later: it shows the stamp is kept)
    assert "d" not in fresh.refresh("pkg/a.py").definers


@pytest.mark.parametrize("dated", ["tomorrow", "by a clock ahead"])
def test_a_folder_dated_in_the_future_is_listed_again_only_until_a_tick_after_its_change(make_repo, cache_dir,
                                                                                           clock, monkeypatch, dated):
    """A folder's modification time set tomorrow (`touch -d`, an archive's), or a disk whose clock runs ahead of
    this one: its listing is trusted a tick after its change, as a file's reading is, not listed at every look
    until its date comes."""
    import prompts.freshness

    root = make_repo({"pkg/a.py": "def a():\n    pass\n", "app.py": "def main():\n    return 0\n"})
    fresh = FreshIndex(index_repository(root))
    (root / "pkg" / "b.py").write_text("def b():\n    pass\n")
    day = 86_400 * 10**9
    changed = (root / "pkg").stat().st_ctime_ns
    if dated == "tomorrow":
        os.utime(root / "pkg", ns=(changed + day, changed + day))
        changed = (root / "pkg").stat().st_ctime_ns
        clock[0] = changed + 1000
    else:
        clock[0] = changed - day                  # this clock a day behind the disk's
    listings = Counter()
    listed = prompts.freshness.list_folder
    monkeypatch.setattr(prompts.freshness, "list_folder",
                        lambda root, folder, *args, **kwargs: listings.update([folder]) or listed(root, folder,
                                                                                             *args, **kwargs))
    assert fresh.refresh("pkg/a.py").definers["b"]
    clock[0] += 3 * 10**9                         # a tick later: listed once more, then trusted
    fresh.refresh("pkg/a.py")
    for _ in range(3):
        fresh.refresh("pkg/a.py")
    assert listings["pkg"] == 2


def test_a_recheck_parses_every_named_file_that_changed_however_small_the_slice(make_repo, cache_dir):
    """The files a prompt's context came from, looked at again after it was built: each one changed or deleted is
    parsed (or dropped) at once, past the per-request limit; nothing changed, the same index object."""
    files = {f"pkg/m{i}.py": f"def f{i}(x):\n    return x + {i}\n" for i in range(12)}
    root = make_repo(files)
    fresh = FreshIndex(index_repository(root), files_per_refresh=1, parses_per_refresh=1)
    index = fresh.index
    assert not fresh.recheck(["pkg/m1.py", "pkg/m2.py", "not/indexed.py"]) and fresh.index is index
    for i in (1, 2, 3):
        (root / f"pkg/m{i}.py").write_text(f"def g{i}_renamed(x):\n    return x * {i}\n")
    (root / "pkg/m4.py").unlink()
    assert fresh.recheck(["pkg/m1.py", "pkg/m2.py", "pkg/m3.py", "pkg/m4.py", "pkg/m5.py"])
    assert all(fresh.index.definers[f"g{i}_renamed"] for i in (1, 2, 3)) and "pkg/m4.py" not in fresh.index.files
    assert not fresh.recheck(["pkg/m1.py", "pkg/m2.py", "pkg/m3.py", "pkg/m4.py"])


def test_a_rescan_catches_up_in_one_call_whatever_the_slice(make_repo, cache_dir):
    """An interactive prompt's way (the REPL, between questions): one whole pass and every parse it calls for,
    however small the slices a server would use; midway through a server's pass it starts its own."""
    files = {f"pkg/m{i}.py": f"def f{i}(x):\n    return x + {i}\n" for i in range(30)}
    root = make_repo(files)
    fresh = FreshIndex(index_repository(root), files_per_refresh=4, parses_per_refresh=1)
    fresh.sweep()                                                    # a pass begun
    (root / "pkg/m3.py").write_text("def f3_renamed(x):\n    return x\n")
    (root / "pkg/m7.py").unlink()
    (root / "pkg/m9.py").rename(root / "pkg/moved.py")
    (root / "pkg/new.py").write_text("def brand_new():\n    return 2\n")
    index = fresh.rescan()
    assert chunks_of(index) == chunks_of(index_repository(root))
    assert {"pkg/new.py", "pkg/moved.py"} <= set(index.files) and not {"pkg/m7.py", "pkg/m9.py"} & set(index.files)
    assert fresh.rescan() is index                                   # nothing changed since: no rebuild


@pytest.fixture(scope="module")
def big_repo(tmp_path_factory):
    """20,000 small Python files in 200 folders, indexed once. (A tick after they were written: files changed just
    before they were read are racily clean, read again when looked at, as the racy test above has it.)"""
    root = tmp_path_factory.mktemp("big") / "repo"
    for folder in range(200):
        (root / f"pkg{folder:03d}").mkdir(parents=True)
        for number in range(100):
            path = root / f"pkg{folder:03d}" / f"m{number:03d}.py"
            path.write_text(f"def f_{folder}_{number}(x):\n    return x + {number}\n")
    time.sleep(prompts.index.RACY_NS / 10**9)
    return root, index_repository(root, cache_dir=tmp_path_factory.mktemp("big-cache"))


def count_file_system_calls(monkeypatch) -> Counter:
    """Every stat, directory listing and open from now on, counted (os.walk and pathlib go through these)."""
    calls = Counter()

    def counting(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    for name in ("stat", "lstat", "scandir", "listdir"):
        monkeypatch.setattr(os, name, counting(name, getattr(os, name)))
    opener = counting("open", builtins.open)
    monkeypatch.setattr(builtins, "open", opener)
    monkeypatch.setattr(io, "open", opener)
    return calls


def test_a_request_touches_a_bounded_number_of_files_on_a_20k_file_repository(big_repo, monkeypatch):
    root, index = big_repo
    assert len(index.files) == 20_000
    fresh = FreshIndex(index)
    (root / "pkg100" / "m050.py").write_text("def edited_by_someone_else():\n    return 0\n")
    calls = count_file_system_calls(monkeypatch)
    touched = []
    for request in range(90):  # a little more than one whole pass of the walk
        before = sum(calls.values())
        # before the request: a stat of the file, of each folder on its path, and of the ignore files there (.gitignore
        # and .codecompleteignore of each, info/exclude), and of each folder's HEAD (a git folder's files are no
        # sources: prompts.scan.source_file)
        fresh.refresh("pkg000/m000.py")
        assert sum(calls.values()) - before <= (2 + 2 + 5 + 1 if request else 8 + 5 + 1)   # (the first lists 2 folders)
        fresh.sweep()  # after it
        touched.append(sum(calls.values()) - before)
    # About files_per_refresh stats, plus the folders the walk lists on the way (the first call lists the root's
    # 200 sub-folders): never a rescan of the 20,000 files.
    assert max(touched) <= 2 * fresh.files_per_refresh + 100, touched
    assert sum(touched) / len(touched) <= 1.2 * fresh.files_per_refresh + 20, touched
    assert sum(touched) >= 20_000  # ... and yet the whole repository was looked at over the calls
    assert "edited_by_someone_else" in fresh.index.definers


def test_a_sweep_stops_early_when_a_request_waits_and_the_work_still_gets_done(make_repo, cache_dir):
    from prompts.freshness import SLICE

    files = {f"pkg/m{i:03d}.py": f"def f{i}(x):\n    return x + {i}\n" for i in range(120)}
    root = make_repo(files)
    fresh = FreshIndex(index_repository(root))
    for i in range(120):    # every file changed: one sweep would walk them all and parse 8
        (root / f"pkg/m{i:03d}.py").write_text(f"def g{i}(x):\n    return x - {i}\n")
    asked = []

    def waiting() -> bool:
        asked.append(1)
        return True

    index = fresh.sweep(should_stop=waiting)
    assert asked and index is fresh.index
    assert not any(name.startswith("g") for name in index.definers)      # nothing parsed while a request waits
    assert len(fresh._seen) == SLICE - 1                                  # one slice walked
    # Requests themselves parse what is pending (the refresh before each), and quiet sweeps finish the rest.
    fresh.refresh()
    assert sum(name.startswith("g") for name in fresh.index.definers) == min(SLICE - 1, fresh.parses_per_refresh)
    for _ in range(40):
        fresh.sweep()
    assert chunks_of(fresh.index) == chunks_of(index_repository(root))


def test_a_repository_whose_every_file_is_gone_still_builds_prompts_from_the_editors_text(make_repo, cache_dir,
                                                                                          smollm2_tokenizer):
    """A long-lived index can lose its last file (deleted, or turned binary, after the session began); an editor's
    buffer still completes, with no repository context. It used to fail inside ranking (an empty float array used
    as indices) and warn "Mean of empty slice" on every question."""
    import warnings

    from prompts.chat import build_chat_prompt
    from prompts.completion import build_completion_prompt
    root = make_repo({"main.py": "def area(w, h):\n    return w * h\n"})
    fresh = FreshIndex(index_repository(root))
    (root / "main.py").unlink()
    index = fresh.rescan()
    assert index.files == [] and len(index.chunks) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        packed = build_completion_prompt(index, smollm2_tokenizer, "main.py", text="def area(w, h):\n    return ",
                                         line=2, col=12, budget_tokens=256)
        assert {item.path for item in packed.context} == {"main.py"} and len(packed.ids) > 5   # the buffer alone
        chat = build_chat_prompt(index, smollm2_tokenizer, [{"role": "user", "content": "What is area?"}],
                                 budget_tokens=256)
        assert chat.context == []

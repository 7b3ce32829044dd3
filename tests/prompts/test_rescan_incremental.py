"""FreshIndex.rescan lists again only the folders whose stamps moved: after random changes to a small repository,
every pass leaves the index as a build from nothing finds the disk, whichever folders it took as they were."""

import os
import random
import shutil
import time
import warnings

import pytest

from prompts.freshness import FreshIndex
from prompts.index import RACY_NS, FileEntry, index_repository, parse_file
from prompts.scan import scan_repository

MAX_FILE_BYTES = 600            # small: a file grows past it and shrinks back
ROUNDS = 80
PATTERNS = ["*.log", "gen/", "m1*.py", "!keep.log", "sub*/", "# a comment", "/top.py", "deep/**/x*.py", "b/",
            "*.txt", "!*.py", "a/m2.py"]
NAMES = ["m1.py", "m2.py", "x.py", "keep.log", "other.log", "notes.txt", "top.py", "HEAD", "package-lock.json",
         "y.js", "z.min.js", "gen"]
MORE_OFTEN = {"do_repository": 3, "do_ignore_file": 3, "do_edit_within_the_tick": 2, "do_link_file": 2,
              "do_swap_link_target": 2}     # the traps that take a few changes in a row
FOLDERS = ["a", "b", "a/sub1", "a/sub1/deep", "b/gen", "sub2", "node_modules", "c/d/e", "deep/q"]


def as_built(entries):
    """What an index holds of each file, but when it was read."""
    return {path: (entry.size, entry.mtime_ns, entry.changed_ns, entry.inode, entry.indexed, entry.digest,
                   entry.imports, tuple(chunk.text for chunk in entry.chunks))
            for path, entry in entries.items()}


def built_from_nothing(root):
    """A build without a cache: the scan, and every file it finds parsed (index_repository's first build)."""
    entries = {}
    for source in scan_repository(root, MAX_FILE_BYTES):
        entry = parse_file(root, source, MAX_FILE_BYTES)
        if isinstance(entry, FileEntry):
            entries[source.path] = entry
    return as_built(entries)


class Disk:
    """The random changes, on a repository in ``root``; links and moved-away folders kept in ``aside``."""

    def __init__(self, root, aside, rng, clock, file_clock):
        self.root, self.aside, self.rng, self.clock, self.file_clock = root, aside, rng, clock, file_clock
        self.moved_away = {}        # folder -> where it waits while a link stands in its place

    def files(self):
        """The files on the disk (not the links), wherever the walk would take them or not."""
        return sorted(os.path.relpath(os.path.join(folder, name), self.root)
                      for folder, _, names in os.walk(self.root) if "/.git" not in folder + "/"
                      for name in names if not os.path.islink(os.path.join(folder, name)))

    def folders(self):
        """The folders on the disk but the root (a link to one too, not what it names)."""
        return sorted(os.path.relpath(folder, self.root) for folder, _, _ in os.walk(self.root)
                      if folder != str(self.root) and "/.git" not in folder + "/")

    def text(self, size=None):
        """Python source, now and then past MAX_FILE_BYTES; ``size`` characters of it if given."""
        words = ["def f():\n    return 1\n", "import os\n", "class K:\n    x = 2\n", "value = 3\n"]
        body = "".join(self.rng.choice(words) for _ in range(self.rng.randint(1, 6)))
        body += f"def g{self.rng.randint(0, 10**6)}():\n    pass\n"
        if self.rng.random() < 0.08:
            body += "# padding\n" * 70         # past MAX_FILE_BYTES
        return body if size is None else (body * (size // len(body) + 1))[:size]

    def some_folder(self):
        return self.rng.choice(["", *self.folders()])

    def write(self, path, text):
        """``text`` written to ``path`` (its folders made), unless a folder or a link on the way is in the way."""
        full = self.root / path
        if not self.placeable(path):
            return
        full.parent.mkdir(parents=True, exist_ok=True)
        if full.is_dir() and not full.is_symlink():
            return
        if full.is_symlink():
            full.unlink()
        full.write_text(text)
        self.file_clock.pop(path, None)

    def change(self):
        """One change of the disk, drawn among the ``do_`` methods."""
        changes = [name for name in dir(self) if name.startswith("do_")]
        getattr(self, self.rng.choices(changes, [MORE_OFTEN.get(name, 1) for name in changes])[0])()

    def do_edit(self):
        if self.files():
            self.write(self.rng.choice(self.files()), self.text())

    def do_edit_within_the_tick(self):
        """The same size and the same stamps (a save within the file clock's tick of the last one): its text tells."""
        frozen = [path for path, stamp in self.file_clock.items() if (self.root / path).is_file()
                  and self.clock[0] < stamp + RACY_NS]
        if frozen and self.rng.random() < 0.7:
            path = self.rng.choice(frozen)
            full = self.root / path
            full.write_text(self.text(len(full.read_bytes())))     # (ASCII: as many characters as bytes)
        elif self.files():
            path = self.rng.choice(self.files())
            self.write(path, self.text())
            self.file_clock[path] = self.clock[0]      # its stamps from now on, while it is written within the tick

    def do_add(self):
        self.write(posixpath_join(self.some_folder(), self.rng.choice(NAMES + [f"n{self.rng.randint(0, 99)}.py"])),
                   self.text())

    def do_add_deep(self):
        """A file moved into a folder that did not exist."""
        files = self.files()
        if files:
            source = self.rng.choice(files)
            target = posixpath_join(self.rng.choice(FOLDERS), f"new{self.rng.randint(0, 9)}", "moved.py")
            if not (self.root / target).exists() and self.placeable(target):
                (self.root / target).parent.mkdir(parents=True, exist_ok=True)
                os.rename(self.root / source, self.root / target)
                self.file_clock.pop(source, None)

    def placeable(self, path):
        """Whether no folder on the path is a file or a link."""
        parent = (self.root / path).parent
        while parent != self.root:
            if parent.is_symlink() or parent.exists() and not parent.is_dir():
                return False
            parent = parent.parent
        return True

    def do_delete(self):
        if self.files():
            self.remove(self.rng.choice(self.files()))

    def remove(self, path):
        """A file deleted: its stamps are the disk's again (a new file there may take its inode)."""
        (self.root / path).unlink()
        self.file_clock.pop(path, None)

    def do_rename(self):
        files = self.files()
        if files:
            source = self.rng.choice(files)
            target = posixpath_join(os.path.dirname(source), self.rng.choice(NAMES))
            if not (self.root / target).exists():
                os.rename(self.root / source, self.root / target)
                self.file_clock.pop(source, None)

    def do_folder(self):
        """A folder made (with files), removed, or renamed."""
        choice = self.rng.random()
        folders = [f for f in self.folders() if not (self.root / f).is_symlink()]
        if choice < 0.5 or not folders:
            folder = self.rng.choice(FOLDERS)
            for _ in range(self.rng.randint(1, 3)):
                self.write(posixpath_join(folder, self.rng.choice(NAMES)), self.text())
        elif choice < 0.75:
            folder = self.rng.choice(folders)
            shutil.rmtree(self.root / folder)
            self.forget(folder)
        else:
            folder = self.rng.choice(folders)
            target = posixpath_join(os.path.dirname(folder), self.rng.choice(["r1", "r2", "sub3", "gen"]))
            if not (self.root / target).exists():
                os.rename(self.root / folder, self.root / target)
                self.forget(folder)

    def forget(self, folder):
        for path in [p for p in self.file_clock if p.startswith(folder + "/")]:
            del self.file_clock[path]

    def do_ignore_file(self):
        """A line added to or taken from a .gitignore or .codecompleteignore (at the root or in a folder), or the
        file made or removed."""
        name = self.rng.choice([".gitignore", ".gitignore", ".codecompleteignore"])
        path = posixpath_join(self.rng.choice(["", "", *self.folders()]), name)
        full = self.root / path
        if not self.placeable(path) or full.is_dir():
            return
        lines = full.read_text().splitlines() if full.is_file() else []
        choice = self.rng.random()
        if choice < 0.15 and full.exists():
            self.remove(path)
            return
        if choice < 0.4 and lines:
            lines.pop(self.rng.randrange(len(lines)))
        else:
            lines.insert(self.rng.randint(0, len(lines)), self.rng.choice(PATTERNS))
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_text("".join(line + "\n" for line in lines))

    def do_exclude(self):
        """.git/info/exclude rewritten."""
        patterns = self.rng.sample(PATTERNS, self.rng.randint(0, 3))
        (self.root / ".git/info/exclude").write_text("".join(p + "\n" for p in patterns))

    def do_link_folder(self):
        """A folder swapped for a link (to a folder of the repository, or outside it), or back."""
        if self.moved_away and self.rng.random() < 0.5:
            folder, away = self.moved_away.popitem()
            link = self.root / folder
            if link.is_symlink():
                link.unlink()
                if not link.exists() and self.placeable(folder):
                    os.rename(away, link)
            return
        folders = [f for f in self.folders() if not (self.root / f).is_symlink() and "/" not in f]
        if folders:
            folder = self.rng.choice(folders)
            away = self.aside / f"away{self.rng.randrange(10**9)}"
            os.rename(self.root / folder, away)
            self.forget(folder)
            target = self.rng.choice([away, self.root / self.some_folder()])
            (self.root / folder).symlink_to(target, target_is_directory=True)
            self.moved_away[folder] = away

    def do_link_file(self):
        """A link to a file of the repository (kept where that file is), to a folder of it, or to a file outside."""
        files = self.files()
        if files:
            target = self.rng.choice([self.root / self.rng.choice(files), self.root / self.some_folder(),
                                      self.aside / "outside.py"])
            link = self.root / posixpath_join(self.some_folder(), f"link{self.rng.randint(0, 3)}.py")
            if not os.path.lexists(link) and self.placeable(os.path.relpath(link, self.root)):
                link.symlink_to(target)

    def do_chmod(self):
        """A folder made unreadable, or readable again (a change of its change time; root reads it all the same)."""
        folders = [f for f in self.folders() if not (self.root / f).is_symlink()]
        if folders:
            folder = self.root / self.rng.choice(folders)
            folder.chmod(0o755 if folder.stat().st_mode & 0o777 == 0 else 0)

    def do_file_to_folder(self):
        """A file replaced by a folder of the same name, or a folder by a file."""
        files = self.files()
        if files and self.rng.random() < 0.5:
            path = self.rng.choice(files)
            self.remove(path)
            self.write(posixpath_join(path, "inner.py"), self.text())
        else:
            folders = [f for f in self.folders() if not (self.root / f).is_symlink()]
            if folders:
                folder = self.rng.choice(folders)
                shutil.rmtree(self.root / folder)
                self.forget(folder)
                self.write(folder, self.text())

    def do_repository(self):
        """A folder made a nested repository, its .git's HEAD rewritten in place (valid or not: a repository or none)
        or its info/exclude (no folder of the walk moves), or its .git removed; now and then a folder made a git
        folder (HEAD, objects, refs in it), its HEAD rewritten in place or removed."""
        folders = [f for f in self.folders() if not (self.root / f).is_symlink()]
        if not folders:
            return
        folder = self.root / self.rng.choice([f for f in ("c", "c/d") if f in folders] * 6 + folders)
        git = folder / ".git"
        choice = self.rng.random()
        if (folder / "HEAD").is_file() and (folder / "objects").is_dir():
            if choice < 0.5:
                (folder / "HEAD").write_text(self.rng.choice(["ref: refs/heads/main\n", "not a ref\n"]))
            else:
                self.remove(os.path.relpath(folder / "HEAD", self.root))
        elif git.is_dir() and (git / "HEAD").is_file():
            if choice < 0.35:
                (git / "HEAD").write_text(self.rng.choice(["ref: refs/heads/main\n", "not a ref\n"]))
            elif choice < 0.7:
                (git / "info" / "exclude").write_text(self.rng.choice(PATTERNS) + "\n")
            else:
                shutil.rmtree(git)
        elif not os.path.lexists(git):
            git = git if choice < 0.85 else folder
            try:
                for part in ("objects", "refs", "info"):
                    (git / part).mkdir(parents=True, exist_ok=True)
                (git / "HEAD").write_text("ref: refs/heads/main\n")
                (git / "info" / "exclude").write_text(self.rng.choice(PATTERNS) + "\n")
            except OSError:         # (a file in the way)
                pass

    def do_swap_link_target(self):
        """What a link in the repository names turned from a file into a folder, or back: the link's folder keeps
        its stamps."""
        links = [os.path.join(folder, name) for folder, dirs, names in os.walk(self.root)
                 for name in dirs + names if os.path.islink(os.path.join(folder, name))]
        targets = [os.path.realpath(link) for link in links]
        targets = [t for t in targets if t.startswith(str(self.root) + "/") and os.path.lexists(t)
                   and not os.path.islink(t)]
        if not targets:
            return
        target = self.rng.choice(targets)
        path = os.path.relpath(target, self.root)
        if os.path.isdir(target):
            shutil.rmtree(target)
            self.forget(path)
            self.write(path, self.text())
        else:
            self.remove(path)
            self.write(posixpath_join(path, "inner.py"), self.text())


def posixpath_join(*parts):
    return "/".join(part for part in parts if part)


@pytest.mark.parametrize("seed", range(int(os.environ.get("RESCAN_SEEDS", 6))))
def test_every_rescan_leaves_the_index_as_a_build_from_nothing(make_repo, tmp_path, clock, file_clock, seed):
    """Random changes between passes (several at a time), the clock now and then a tick or more ahead: the folders
    whose listings were trusted are taken as they were, and the index after each pass is the disk's all the same."""
    rng = random.Random(seed)
    files = {f"{folder}/m{i}.py": f"def f{i}():\n    return {i}\n" for folder in FOLDERS[:6] for i in range(3)}
    root = make_repo(files | {".gitignore": "*.log\n", "top.py": "x = 1\n", ".git/info/exclude": "",
                              "a/.gitignore": "m2.py\n", "c/d/e/keep.log": "kept = 1\n", "c/d/other.log": "x = 2\n"})
    aside = tmp_path / "aside"
    aside.mkdir()
    (aside / "outside.py").write_text("SECRET = 1\n")
    disk = Disk(root, aside, rng, clock, file_clock)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh = FreshIndex(index_repository(root, max_file_bytes=MAX_FILE_BYTES), max_file_bytes=MAX_FILE_BYTES)
        ahead = 0
        for _ in range(ROUNDS):
            # The clock a tick (or more) ahead of the disk's at times: folders and files listed or read then are
            # trusted from then on. (A change in the file clock's tick of such a listing would keep its stamps, which
            # no real clock allows: the tick is let pass first.)
            ahead += rng.choice([0, 0, 0, 10**8, RACY_NS + 10**8])
            wait_for_the_next_tick(aside / "probe")
            clock[0] = time.time_ns() + ahead
            for _ in range(rng.choice([1, 1, 2, 3])):
                disk.change()
            index = fresh.rescan()
            assert as_built(index.entries) == built_from_nothing(root)
            assert index.files == sorted(path for path, entry in index.entries.items() if entry.indexed)
        for folder in disk.folders():           # (for the clean-up)
            if not (root / folder).is_symlink():
                (root / folder).chmod(0o755)


def test_a_file_added_within_the_tick_of_its_folders_listing_is_found_at_the_next_rescan(make_repo, clock,
                                                                                         monkeypatch):
    """A folder listed within the file clock's tick of its last change is listed again at the next pass, however its
    stamps stayed; once a listing comes a tick later, its stamps are trusted. The folder's stamps are held as a
    coarse file clock would hold them (the change time, which utime cannot set, read as the modification time)."""
    import prompts.freshness

    monkeypatch.setattr(prompts.freshness, "change_time", lambda info: info.st_mtime_ns)
    root = make_repo({"pkg/a.py": "def a():\n    pass\n", "app.py": "def main():\n    return 0\n"})
    fresh = FreshIndex(index_repository(root))
    stamp = (root / "pkg").stat().st_mtime_ns
    clock[0] = stamp + 1000                     # listed just after the folder's last change
    fresh.rescan()
    (root / "pkg" / "b.py").write_text("def b():\n    pass\n")
    os.utime(root / "pkg", ns=(stamp, stamp))   # within the same tick
    assert fresh.rescan().definers["b"]
    clock[0] = stamp + 3 * 10**9                # a listing a tick later: the stamps are trusted from then on
    assert fresh.rescan().definers["b"]
    (root / "pkg" / "c.py").write_text("def c():\n    pass\n")
    os.utime(root / "pkg", ns=(stamp, stamp))   # (no file clock does this a tick later: it shows the stamps are kept)
    assert "c" not in fresh.rescan().definers


def test_a_nested_repository_s_rules_decide_inside_it_whenever_it_becomes_one_or_none(make_repo, tmp_path, clock):
    """Inside a nested repository its own rules decide (its info/exclude, not the root's .gitignore): its HEAD
    rewritten in place, its info/exclude rewritten, its .git made or removed, the folders inside it are listed
    again, though only the .git folder's stamps moved, or only its own folder's."""
    root = make_repo({".gitignore": "*.log\n", ".git/info/exclude": "", "c/d/m.py": "A = 1\n",
                      "c/d/other.log": "B = 2\n", "c/d/e/keep.log": "C = 3\n", "c/d/e/m1.py": "D = 4\n",
                      "c/d/.git/info/exclude": "m1.py\n", "c/d/.git/HEAD": "ref: refs/heads/main\n"})
    git = root / "c/d/.git"
    (git / "objects").mkdir()
    (git / "refs").mkdir()
    fresh = FreshIndex(index_repository(root))
    probe = tmp_path / "probe"

    def rescanned():
        wait_for_the_next_tick(probe)
        clock[0] = time.time_ns() + 2 * RACY_NS    # every listing trusted from now on
        return as_built(fresh.rescan().entries)

    assert sorted(rescanned()) == sorted(rescanned()) == [".gitignore", "c/d/e/keep.log", "c/d/m.py", "c/d/other.log"]
    changes = [lambda: (git / "HEAD").write_text("no ref here\n"),       # a repository no more
               lambda: (git / "HEAD").write_text("ref: refs/heads/main\n"),
               lambda: (git / "info/exclude").write_text("*.py\n"),
               lambda: shutil.rmtree(git),
               lambda: [(git / part).mkdir(parents=True) for part in ("objects", "refs", "info")]
               and (git / "HEAD").write_text("ref: refs/heads/main\n")]
    for change in changes:
        change()
        assert rescanned() == built_from_nothing(root) and rescanned() == built_from_nothing(root)


def test_a_file_a_request_found_then_ignored_stays_out_after_a_rescan(make_repo):
    """A request's look found new files and parsed one (the rest wait for the next slices); one of them is ignored
    before the next pass: the pass's own findings are what it parses, not what waited."""
    root = make_repo({"app.py": "def main():\n    return 0\n", ".gitignore": ""})
    fresh = FreshIndex(index_repository(root), parses_per_refresh=1)
    for number in range(3):
        (root / "pkg").mkdir(exist_ok=True)
        (root / "pkg" / f"n{number}.py").write_text(f"def n{number}():\n    return {number}\n")
    fresh.refresh("pkg/n0.py")
    assert fresh.parsing
    (root / ".gitignore").write_text("n2.py\n")
    assert fresh.rescan().files == [".gitignore", "app.py", "pkg/n0.py", "pkg/n1.py"]


def wait_for_the_next_tick(probe):
    """Until the file clock has moved on since the last pass (here a change time apart; a kernel's coarse clock: a
    few milliseconds)."""
    probe.touch()
    last = probe.stat().st_ctime_ns
    while probe.stat().st_ctime_ns == last:
        time.sleep(0.0002)
        probe.touch()

"""Keeping an index up to date while a long-lived process (the server) serves from it, with bounded work per request.

Files change under a server: saved from the editor, switched by git, added, deleted. Rescanning the repository on
every keystroke would cost a stat of every file and folder (37k files: a third of a second on a 2-core CPU, and a
cold disk's worth of seeks), so the work comes in bounded slices:

- ``refresh(path)``, before a request: one stat of the file the request is about, so that a file saved a moment
  ago is seen at once, and one of each folder on its path, listed again when its modification time moved (an entry
  was added or removed in it), so that a module created a moment ago next to it (or the request's own new file) is
  in the index too; then the parsing of what changed (at most ``parses_per_refresh`` files, that one first);
- ``sweep()``, after a request, while the editor types the next key: the next ``files_per_refresh`` files of a
  walk through the repository that each call resumes where the last one stopped (a finished walk tells which
  files are gone, and the next one starts), and the parsing of what it found changed. ``should_stop`` (a request
  arrived) ends it early, between slices of ``SLICE`` files: the next request does not wait for a whole sweep.
  Each sweep also looks at the next ``folders_per_sweep`` folders of the repository in turn, as ``refresh`` looks at
  those of the request's path: a new file anywhere is found in a few sweeps, where the walk takes a pass.
  A server sweeps on in its quiet moments until a walk begun after the last request has ended
  (``walks_begun``, ``walked``).

``rescan()`` makes one whole pass at once instead, where the index must be as the disk is now: between the REPL's
questions, and for a request of the command line on a server. It lists again only the folders whose stamps moved
since its last pass (or whose ignore rules did), and takes the others' listings as they were: a pass that lists
every folder and asks the ignore rules about every name costs five times one that stats every folder and file.

When something changed, the index is rebuilt from the entries it holds (``RepoIndex.updated``), without reading the
files that did not change. The walk applies the same rules as the scan that built the index. A file changed within a
tick of the file clock before it was last read is read at each look, to compare its text (``index.unchanged``): an
edit saved in that tick at the same size keeps every stamp a stat sees.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from .index import RACY_NS, FileEntry, RepoIndex, parse_file, unchanged
from .scan import (IGNORE_FILE, MAX_FILE_BYTES, FolderListing, IgnoreRules, ScanWarning, SourceFile, change_time,
                   folder_listing, git_dir, ignored_with_folders, list_folder, repository_rules, source_file,
                   walk_sources, walked_source)

FILES_PER_REFRESH = 256  # a full pass over 20k files every ~80 requests
FOLDERS_PER_SWEEP = 32   # folders looked at after a request: 2,000 (20k files) every ~60 requests
LISTINGS_PER_REFRESH = 8  # folders listed before a request, at most: those on the request's path, then new ones
PARSES_PER_REFRESH = 8
SLICE = 8                # files a sweep walks between looks at should_stop (a fraction of a millisecond)


class FreshIndex:
    """The current index of one repository; ``refresh(path)`` before each request keeps it close to the disk."""

    def __init__(self, index: RepoIndex, *, files_per_refresh: int = FILES_PER_REFRESH,
                 parses_per_refresh: int = PARSES_PER_REFRESH, folders_per_sweep: int = FOLDERS_PER_SWEEP,
                 max_file_bytes: int = MAX_FILE_BYTES):
        self.index = index
        self.files_per_refresh = files_per_refresh
        self.parses_per_refresh = parses_per_refresh
        self.max_file_bytes = max_file_bytes
        self.folders_per_sweep = folders_per_sweep
        # Folder -> its stamps (modification and change times) when last listed (None: not yet, or not to be
        # trusted yet): a file added to a folder moves them. Those of the indexed files to begin with, and their
        # parents; those found new when their parent is listed.
        self._folders: dict[str, tuple[int, int] | None] = dict.fromkeys(_with_parents(index.entries))
        # Folder -> (its stamps, when their tick began by this clock) for a folder listed within that tick
        self._unsettled: dict[str, tuple[tuple[int, int], int]] = {}
        self._ring: deque[str] = deque()  # folders the sweeps look at next
        self._walk: Iterator[SourceFile] | None = None
        self._seen: set[str] = set()  # files the current walk has met
        self._pending: dict[str, SourceFile | None] = {}  # to parse again (None: gone), oldest first
        self.walks_begun = 0      # walks through the repository begun so far (the one under way included)
        self.walked = 0           # the number of the last walk that went through it all (0: none yet)
        # Ignore file -> its stamps when last looked at (None: there was none): the root's and those of the folders
        # on requests' paths, so that a file the user has just ignored leaves the index at the next request.
        self._rule_stamps: dict[Path, tuple | None] = {}
        self._exclude = git_dir(self.root) / "info" / "exclude"     # (where .git points: read once)
        self._rules_changed([""])       # (the root's, as the index was built)
        # Every folder the last whole pass (rescan) entered, as it listed it; and the rules outside the folders then
        self._listed: dict[str, _Listed] = {}
        self._outer_rules: tuple | None = None

    @property
    def root(self) -> Path:
        return self.index.root

    @property
    def parsing(self) -> bool:
        """Whether files found changed wait to be parsed."""
        return bool(self._pending)

    def refresh(self, path: str | None = None) -> RepoIndex:
        """Before a request: look at ``path`` (relative to the root) and parse what changed; returns the index, a new
        object if anything changed."""
        with _quiet():
            if self._rules_changed(_folders_on_path(self.root, path) if path is not None else [""]):
                self._drop_ignored()
            if path is not None:
                self._look_at_folders(_folders_on_path(self.root, path), LISTINGS_PER_REFRESH)
                if path in self.index.entries:
                    self._compare(path, source_file(self.root, path, self.max_file_bytes))
                if path in self._pending:  # the request's own file goes first
                    self._pending = {path: self._pending.pop(path), **self._pending}
            return self._update()

    def recheck(self, paths: Iterable[str]) -> bool:
        """After a prompt was built: one stat of each file its context came from, and the parsing of every one that
        changed (or went); whether any did. A file saved (a ``git checkout``) while no request came stayed as
        indexed until the rolling rescan reached it, and its old text went into prompts."""
        with _quiet():
            stale, folders_seen = {}, {}
            for path in dict.fromkeys(paths):
                if path in self.index.entries:
                    self._compare(path, source_file(self.root, path, self.max_file_bytes, folders_seen))
                    if path in self._pending:
                        stale[path] = self._pending.pop(path)
            if not stale:
                return False
            self._pending = {**stale, **self._pending}
            self._update(limit=len(stale))
            return True

    def sweep(self, should_stop: Callable[[], bool] | None = None) -> RepoIndex:
        """Between requests: the next part of the rolling rescan, and the parsing of what it found changed; less
        of both once ``should_stop()`` says so."""
        with _quiet():
            self._sweep_folders(should_stop)
            self._walk_on(should_stop)
            return self._update(should_stop)

    def rescan(self) -> RepoIndex:
        """One whole pass at once, and the parsing of everything it found changed: for an interactive prompt
        between questions, and for a request of the command line on a server, where a server spreads its passes
        over its idle moments. A stat of every folder the walk enters and of every file it looks at; a folder is
        listed again only where its stamps moved since the last pass (or the ignore rules deciding it changed): on a
        2-core CPU with nothing changed, 0.08 s for 8.4k indexed files and 0.33 s for 37k, where listing every folder
        (the first pass, or after the root's .gitignore changed) takes 0.37 s and 1.7 s."""
        with _quiet():
            self._walk = None              # (a sweep's walk under way: this pass is one of its own)
            self.walks_begun += 1
            self._pending.clear()          # (what the pass finds changed is all there is to parse)
            rules = repository_rules(self.root)
            found = set()
            for listed in self._folders_now(rules).values():
                for path in listed.listing.files:
                    source = walked_source(self.root, path, self.max_file_bytes, rules)
                    if source is not None:
                        found.add(path)
                        self._compare(path, source)
            for gone in self.index.entries.keys() - found:
                self._pending[gone] = None
            self.walked = self.walks_begun
            changed: dict[str, FileEntry] = {}
            removed: list[str] = []
            while self._pending:
                more, gone = self._parse_some()
                changed.update(more)
                removed += gone
            if changed or removed:
                self.index = self.index.updated(changed, removed)
            return self.index

    def _folders_now(self, rules: IgnoreRules) -> dict[str, _Listed]:
        """Every folder the walk enters now, with its listing: the last pass's where that is proven the same, else
        a new one. The ignore rules outside the folders (info/exclude, the excludes file, core.ignorecase) changed,
        or the root lies in a checkout, every folder is listed again."""
        outer = rules.outer_rules()
        trusted = outer == self._outer_rules and not outer[1]   # (a checkout's folders above the root: not followed)
        self._outer_rules = outer
        folders: dict[str, _Listed] = {}
        queue = deque([("", trusted)])
        while queue:
            folder, trusted = queue.popleft()
            listed, rules_kept = self._listed_now(folder, rules, trusted)
            if listed is not None:
                folders[folder] = listed
                queue.extend((subfolder, rules_kept) for subfolder in listed.listing.folders)
        self._listed = folders
        return folders

    def _listed_now(self, folder: str, rules: IgnoreRules, trusted: bool) -> tuple[_Listed | None, bool]:
        """The folder as the walk lists it now (None: gone, a link, unreadable), and whether the rules deciding in
        the folders below it are proven as they were (``trusted``: those deciding in it are).

        Its listing is the last pass's where its stamps are those taken before that listing (an entry added, removed
        or renamed moves them), that listing came a tick of the file clock after they last moved (a change within
        the tick keeps them: listed again, as in ``_look_at_folders``), its names alone decided it (no link, no git
        folder, no nested repository in it) and its ignore files read as they did."""
        try:
            status = os.lstat(os.path.join(self.root, folder))
        except OSError:
            return None, False
        if not stat.S_ISDIR(status.st_mode):
            return None, False
        stamps = (status.st_mtime_ns, change_time(status), status.st_ino)
        before = self._listed.get(folder)
        if trusted and before is not None and before.trusted and before.stamps == stamps and (
                not before.listing.ignore_files or rules.folder_rules(folder) == before.rules):
            return before, True
        listed_ns = time.time_ns()
        listing = folder_listing(self.root, folder, rules)
        if listing is None:
            return None, False
        own_rules = rules.folder_rules(folder) if listing.ignore_files else []
        tick_ns = before.tick_ns if before is not None and before.stamps == stamps else min(stamps[1], listed_ns)
        steady = listing.steady and not listing.repository
        listed = _Listed(listing, stamps, tick_ns, own_rules, steady and listed_ns >= tick_ns + RACY_NS)
        rules_kept = (trusted and before is not None and own_rules == before.rules
                      and not listing.repository and not before.listing.repository)
        return listed, rules_kept

    def _rules_changed(self, folders: list[str]) -> bool:
        """One stat of each ignore file in these folders (with the root, of the repository's info/exclude too): whether
        one looked at before has changed, appeared or gone since. One seen for the first time counts as unchanged (the
        index was built with it, or the walk finds what it changes)."""
        files = [self.root / folder / name for folder in folders for name in (".gitignore", IGNORE_FILE)]
        if "" in folders:
            files.append(self._exclude)
        changed = False
        for file in files:
            try:
                info = os.stat(file)
                stamps = (info.st_mtime_ns, change_time(info), info.st_size, info.st_ino)
            except (OSError, ValueError):
                stamps = None
            if file in self._rule_stamps and self._rule_stamps[file] != stamps:
                changed = True
            self._rule_stamps[file] = stamps
        return changed

    def _drop_ignored(self) -> None:
        """The ignore rules changed: the indexed files they now leave out go at once (the walk would take a pass to
        find them gone, and meanwhile prompts carried a file its user had just ignored: a secret, say). Files they
        no longer leave out come with the walk."""
        rules = repository_rules(self.root)
        ignored = {path for path in self.index.entries if ignored_with_folders(rules, path)}
        # (first: a slice of parsing ends at its count of parsed files, whatever it had still to remove)
        self._pending = {**dict.fromkeys(ignored), **{p: s for p, s in self._pending.items() if p not in ignored}}
        self._walk = None       # one under way reads the rules as they were: it would bring them back

    def _update(self, should_stop: Callable[[], bool] | None = None, limit: int | None = None) -> RepoIndex:
        changed, removed = self._parse_some(should_stop, limit)
        if changed or removed:
            self.index = self.index.updated(changed, removed)
        return self.index

    def _sweep_folders(self, should_stop: Callable[[], bool] | None) -> None:
        """The next ``folders_per_sweep`` folders of a round through all of them."""
        if not self._ring:
            self._ring.extend(self._folders)        # a new round
        for count in range(self.folders_per_sweep):
            if not self._ring or should_stop is not None and count % SLICE == SLICE - 1 and should_stop():
                return
            self._look_at_folders([self._ring.popleft()], 1)

    def _look_at_folders(self, folders: list[str], listings: int) -> None:
        """One stat of each folder known, in order, and for each one whose modification time moved, a listing: the
        files new to the index in it go to be parsed, its new subfolders are listed next. At most ``listings``
        listings; the new folders left over wait for the sweeps."""
        rules = repository_rules(self.root)     # (its files are read at its first question: most looks ask none)
        queue = deque(folders)
        while queue:
            folder = queue.popleft()
            if folder not in self._folders:
                continue                    # not a folder the walk enters (or no longer)
            try:
                status = os.lstat(self.root / folder)
            except OSError:
                status = None
            if status is None or not stat.S_ISDIR(status.st_mode):
                del self._folders[folder]   # gone, or now a link: its files are left to the walk and rechecks
                self._unsettled.pop(folder, None)
                continue
            stamps = (status.st_mtime_ns, change_time(status))
            if stamps == self._folders[folder]:
                continue
            if listings == 0:
                self._ring.appendleft(folder)
                continue
            listings -= 1
            listed_ns = time.time_ns()
            listed = list_folder(self.root, folder, rules, self.max_file_bytes, known_files=self.index.entries,
                                 known_folders=self._folders)
            if listed is None:
                del self._folders[folder]
                self._unsettled.pop(folder, None)
                continue
            # The stamps were taken before the listing: a file added since moves them. Unless it comes within the
            # file clock's tick of the listing, which that leaves as they were: a folder listed within that tick of
            # its last change is listed again at its next look. The tick is the change time's, which no tool sets
            # (a folder dated tomorrow was listed at every look until tomorrow), or where the file clock runs ahead
            # of this one, the first listing that saw these stamps, as for a file (index._racy).
            unsettled = self._unsettled.pop(folder, None)
            tick_ns = unsettled[1] if unsettled is not None and unsettled[0] == stamps else min(stamps[1], listed_ns)
            if listed_ns >= tick_ns + RACY_NS:
                self._folders[folder] = stamps
            else:
                self._folders[folder], self._unsettled[folder] = None, (stamps, tick_ns)
            sources, subfolders = listed
            for source in sources:
                self._compare(source.path, source)
                if self._walk is not None:
                    self._seen.add(source.path)   # the walk under way may be past it: it is no file gone
            for subfolder in subfolders:
                self._folders[subfolder] = None
                queue.append(subfolder)

    def _walk_on(self, should_stop: Callable[[], bool] | None) -> None:
        for count in range(self.files_per_refresh):
            if should_stop is not None and count % SLICE == SLICE - 1 and should_stop():
                return
            if self._walk is None:
                self._walk, self._seen = walk_sources(self.root, self.max_file_bytes), set()
                self.walks_begun += 1
            source = next(self._walk, None)
            if source is None:  # a whole pass: what it never met is gone
                for gone in self.index.entries.keys() - self._seen:
                    self._pending.setdefault(gone, None)
                self._walk, self.walked = None, self.walks_begun
                return
            self._seen.add(source.path)
            self._compare(source.path, source)

    def _compare(self, path: str, source: SourceFile | None) -> None:
        entry = self.index.entries.get(path)
        if source is None:
            if entry is not None:
                self._pending[path] = None
            return
        kept = unchanged(self.root, entry, source, self.max_file_bytes) if entry is not None else None
        if kept is None:
            self._pending[path] = source
        else:
            if kept is not entry:  # read again (racily clean), the same text: restamped, the index's content as it was
                self.index.entries[path] = kept
            self._pending.pop(path, None)  # changed back, or parsed meanwhile

    def _parse_some(self, should_stop: Callable[[], bool] | None = None, limit: int | None = None
                    ) -> tuple[dict[str, FileEntry], list[str]]:
        changed: dict[str, FileEntry] = {}
        removed: list[str] = []
        limit = self.parses_per_refresh if limit is None else limit
        while self._pending and len(changed) < limit:
            if should_stop is not None and should_stop():
                break
            path, source = next(iter(self._pending.items()))
            del self._pending[path]
            result = parse_file(self.root, source, self.max_file_bytes) if source is not None else None
            if isinstance(result, FileEntry):
                changed[path] = result
            elif path in self.index.entries:  # deleted, or no longer readable
                removed.append(path)
        return changed, removed



class _Listed(NamedTuple):
    """A folder as a whole pass (``rescan``) listed it."""

    listing: FolderListing
    stamps: tuple[int, int, int]    # its modification and change times and inode, taken before the listing
    tick_ns: int                    # when the file clock's tick of these stamps began, by this clock (see _listed_now)
    rules: list                     # its ignore files' patterns that decided the listing (IgnoreRules.folder_rules)
    trusted: bool                   # whether the next pass may take the listing as it is while the stamps stay


def _with_parents(paths: Iterable[str]) -> list[str]:
    """The folders of ``paths`` (posix, relative to the root) and all the folders above them, the root ("") first."""
    folders = {""}
    for folder in {posixpath.dirname(path) for path in paths}:
        while folder not in folders:
            folders.add(folder)
            folder = posixpath.dirname(folder)
    return sorted(folders)


def _folders_on_path(root: Path, path: str) -> list[str]:
    """The folders from the root down to the one of ``path`` (relative to the root, or absolute inside it), without
    touching the disk; the root alone for a path outside it."""
    full = Path(path)
    if full.is_absolute():
        if not full.is_relative_to(root):
            return [""]
        path = full.relative_to(root).as_posix()
    parts = posixpath.normpath(path.replace(os.sep, "/")).split("/")[:-1]
    if ".." in parts:
        return [""]
    return ["", *("/".join(parts[:n]) for n in range(1, len(parts) + 1))]


@contextlib.contextmanager
def _quiet():
    """Problems with single files were told once, as warnings, when the index was built."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScanWarning)
        yield

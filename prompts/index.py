"""The repository index: every file's chunks, cached on disk so that a warm start only reparses what changed.

The cache lives in the user's cache directory (``$CODECOMPLETE_CACHE_DIR`` overrides it), one pickle per
repository, keyed inside by path and what a stat says (size, modification and change times, inode; and, for a file
changed about when it was read, its text: see ``unchanged``); nothing is ever written inside the repository.
The first index of a large repository parses in worker processes, reporting ``progress(done, total)``.

Besides the chunks, the index numbers every name the chunks reference (a vocabulary, and per file the term ids
of its chunks one after another), so that ranking scores all chunks at once with numpy. The numbers are cached
too: numbering a million names again would cost more than the rest of a warm start.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import gc
import hashlib
import os
import pickle
import posixpath
import re
import shutil
import sys
import tempfile
import threading
import time
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, count
from pathlib import Path
from typing import NamedTuple

from .chunking import Chunk, analyze_source
from .errors import PromptError
from .imports import Import, PathTable
from .languages import grammars_stamp, language_family, language_name
from .scan import MAX_FILE_BYTES, ScanWarning, SourceFile, count_ignored, lies_within, read_source, scan_repository

CACHE_VERSION = 16  # bump whenever chunking or the cached layout changes (8: CommonJS requires and exports, Rust
                    # uses inside inline modules; 9: `module.exports = require(...)`, TypeScript's `import x = require`;
                    # 10: UTF-16 files with a byte-order mark are text, which 9's caches hold as binary, left out;
                    # 11: C prototypes with their names in parentheses declare them; 12: C names declared in a
                    # function's body define nothing; 13: JavaScript and TypeScript class properties holding functions,
                    # functions in exported objects, JavaScript top-level `obj.f = function`; 14: contextual keywords
                    # used as names are chunks' references, `app.get(`; 15: Jupyter notebooks are their code cells,
                    # which 14's caches hold as minified (left out) or as JSON text; 16: the term ids in one array,
                    # and the postings saved)
STALE_TEMPORARY_S = 3600  # a temporary file of the cache this old is no write under way (a write keeps it fresh)
PARALLEL_MIN_BYTES = 2 * 1024 * 1024  # below this much text to parse, worker start-up costs more than it saves
BATCH_BYTES = 256 * 1024  # text per task sent to a worker: small enough to balance, large enough to amortise
RACY_NS = 2 * 10**9  # the coarsest tick of a file's modification time (FAT: 2 s; ext3, HFS+: 1 s; ext4: a few ms)

Progress = Callable[[int, int], None]


class FileEntry(NamedTuple):
    """One file as the cache keeps it."""

    size: int
    mtime_ns: int
    changed_ns: int  # (the stamps of SourceFile)
    inode: int
    indexed: bool  # False: read once and left out (binary, minified); cached so warm runs do not reread it
    imports: tuple[Import, ...]
    chunks: tuple[Chunk, ...]
    read_ns: int  # the clock just before the file was last read
    tick_ns: int  # the latest the file clock's tick of its stamps began, by this clock (see _racy)
    digest: bytes  # of the text read (b"" when left out): what tells a file racily clean (see unchanged) changed


_ABSENT = FileEntry(0, 0, 0, 0, False, (), (), 0, 0, b"")  # what a file missing from the index counts as


def _folded(path: str) -> str:
    """A name as a disk that ignores case and Unicode normalization compares it."""
    return unicodedata.normalize("NFC", path).casefold()


class RepoIndex:
    """The chunks of one repository, with the lookups ranking needs.

    ``files`` lists the indexed files (posix paths relative to ``root``), ``chunks`` all their chunks in path
    and line order.
    """

    def __init__(self, root: Path, entries: dict[str, FileEntry], vocabulary: dict[str, int], term_ids: dict,
                 paths: PathTable | None = None, *, base: RepoIndex | None = None,
                 touched: frozenset[str] = frozenset(), owners=None):
        self.root = root
        self.entries = entries  # every file as the cache keeps it, left-out ones included
        self._term_ids = term_ids
        self.files = sorted(path for path, entry in entries.items() if entry.indexed)
        self.chunks: list[Chunk] = []
        self._file_chunks: dict[str, range] = {}
        for path in self.files:
            start = len(self.chunks)
            self.chunks.extend(entries[path].chunks)
            self._file_chunks[path] = range(start, len(self.chunks))
        self._imports = {path: entries[path].imports for path in self.files}
        # ``paths``: a table of exactly these files (and manifests), to reuse
        self.paths = paths or PathTable(self.files, root.name, self._text)
        # ``base``: an index whose entries differ from these only in the files ``touched`` (changed, added or gone):
        # what the others hold is taken from it, not built again (RepoIndex.updated: a server's index after a save)
        # (every chunk at its place in ``base``: the same files indexed, the touched ones with as many chunks as before,
        # as after an edit inside a function)
        same_places = base is not None and base.files == self.files and all(
            len(base._file_chunks[path]) == len(self._file_chunks[path]) for path in touched
            if path in self._file_chunks)
        # (else each of base's chunks has a number here, its file's chunks shifted by those added or gone before them)
        moved = self._moved(base, touched) if base is not None and not same_places else None
        # name -> positions in ``chunks`` of the chunks defining it
        self.definers = self._definers(base, touched, moved)
        # ``owners``: the postings' chunks as saved with exactly these files and term ids (the cache of a warm start)
        self._arrange_terms(vocabulary, term_ids, base, touched, same_places, owners, moved)
        if same_places and "chunk_families" in base.__dict__:
            self.chunk_families = base.chunk_families

    def _moved(self, base: RepoIndex, touched: frozenset[str]):
        """Each of ``base``'s chunks' position here (-1 for those of the touched files): the other files' chunks keep
        their order, each file's shifted by the chunks added or gone before it."""
        import numpy as np

        shifts = [0 if path in touched else self._file_chunks[path].start - base._file_chunks[path].start
                  for path in base.files]
        moved = np.arange(len(base.chunks), dtype=np.int64) + np.repeat(
            np.array(shifts, dtype=np.int64), [len(base._file_chunks[path]) for path in base.files])
        for path in touched:
            if path in base._file_chunks:
                span = base._file_chunks[path]
                moved[span.start:span.stop] = -1
        return moved

    def _definers(self, base: RepoIndex | None, touched: frozenset[str], moved=None) -> dict[str, list[int]]:
        """Every defined name's chunks, by position. From ``base`` (its positions ``moved`` where chunks moved), the
        names the touched files define (before or now) looked at again; else from every chunk. (At 37k files the
        renumbering takes ~0.05 s, the build from every chunk 0.2 s: a file added or gone paid it.)"""
        if base is not None:
            if moved is None:
                definers = dict(base.definers)
            else:
                position = moved.tolist()
                definers = {name: [position[n] for n in numbers] for name, numbers in base.definers.items()}
            old_spans = [base._file_chunks[path] for path in touched if path in base._file_chunks]
            spans = [self._file_chunks[path] for path in touched if path in self._file_chunks]
            names = {name for span in old_spans for number in span for name in base.chunks[number].defines}
            names.update(name for span in spans for number in span for name in self.chunks[number].defines)
            for name in names:
                # (a touched file's chunks before: where chunks moved, at -1; else in its place now)
                numbers = [n for n in definers.get(name, ()) if n != -1 and not any(n in span for span in spans)]
                numbers += [n for span in spans for n in span for defined in self.chunks[n].defines if defined == name]
                if numbers:
                    definers[name] = sorted(numbers)
                else:
                    definers.pop(name, None)
            return definers
        definers: dict[str, list[int]] = {}
        for number, chunk in enumerate(self.chunks):
            for name in chunk.defines:
                definers.setdefault(name, []).append(number)
        return definers

    def _arrange_terms(self, vocabulary: dict[str, int], term_ids: dict, base: RepoIndex | None = None,
                       touched: frozenset[str] = frozenset(), same_places: bool = False, owners=None,
                       moved=None) -> None:
        """The references of all chunks as one sparse chunk-by-term matrix, in coordinates, and the folder of
        every chunk: what ranking needs as arrays (the postings and reference counts of files not ``touched`` taken
        from ``base``, renumbered where chunks ``moved``, and where every chunk has its place there, the folders too;
        or the postings' ``owners`` as saved)."""
        import numpy as np

        postings_base = base
        self.term_ids = np.concatenate([term_ids[path] for path in self.files] or [np.zeros(0, np.int32)])
        self.document_frequency = np.bincount(self.term_ids, minlength=len(vocabulary))
        in_use = self.document_frequency > 0
        if len(vocabulary) > 2 * np.count_nonzero(in_use):
            # Names no file references any more (each identifier typed and saved adds one) are as many as those in
            # use: renumber without them, so that a long-lived index's vocabulary, and its copy per update, stay
            # bounded. Names keep their order, so ranking (which looks terms up by name) is unchanged.
            renumbered = np.cumsum(in_use, dtype=np.int32) - 1  # old term id -> new one, for the ids in use
            vocabulary = {name: int(renumbered[number]) for name, number in vocabulary.items() if in_use[number]}
            self._term_ids = term_ids = {path: renumbered[ids] for path, ids in term_ids.items()}
            self.term_ids = renumbered[self.term_ids]
            self.document_frequency = self.document_frequency[in_use]
            postings_base = None   # (base's postings number the terms as they were)
        self.vocabulary = vocabulary  # name -> term id
        if base is not None:
            if moved is None:
                self.reference_counts = base.reference_counts.copy()
            else:
                self.reference_counts = np.zeros(len(self.chunks), dtype=np.int64)
                kept = moved >= 0
                self.reference_counts[moved[kept]] = base.reference_counts[kept]
            for span in (self._file_chunks[path] for path in touched if path in self._file_chunks):
                self.reference_counts[span.start:span.stop] = [len(self.chunks[n].references) for n in span]
        else:
            self.reference_counts = np.fromiter((len(c.references) for c in self.chunks), np.int64, len(self.chunks))
        if same_places:
            self.folders, self.folder_of_chunk = base.folders, base.folder_of_chunk
        else:
            self.folders = sorted({posixpath.dirname(path) for path in self.files})
            folder_number = {folder: number for number, folder in enumerate(self.folders)}
            folder_of_file = [folder_number[posixpath.dirname(path)] for path in self.files]
            self.folder_of_chunk = self._of_chunks(folder_of_file)
        self.term_owner = np.repeat(np.arange(len(self.chunks)), self.reference_counts)  # chunk of each term id
        # The same matrix by term: the chunks referencing term t are owners[starts[t]:starts[t + 1]], so a query
        # reads the rows of its few hundred terms instead of every reference in the repository. Built here, not
        # on the first query: a stable sort of every reference (88 ms for the standard library's 1.2 million)
        # belongs to loading the index, not to the first keystroke after it; nor to a request after a save, which
        # sorts only the saved file's references into the rest (the whole sort took 0.6 s of 8.8 million).
        starts = np.zeros(len(vocabulary) + 1, dtype=np.int64)
        np.cumsum(self.document_frequency, out=starts[1:])
        if owners is not None:      # (renumbering keeps the terms' order, so a stable sort by them too)
            owners = owners.astype(np.int64)
        elif postings_base is not None:
            owners = self._postings_from(postings_base, touched, moved)
        if owners is None:
            owners = self.term_owner[_stable_order(self.term_ids)]
        self.postings = (starts, owners)

    def _postings_from(self, base: RepoIndex, touched: frozenset[str], moved=None):
        """The postings' chunks (owners, term by term, each term's chunks in order) as a stable sort of every
        reference by term would make them, from ``base``'s: the terms the touched files reference (before or now) are
        merged again, the others' chunks copied, renumbered where chunks moved (a renumbering that keeps their order).
        None where the terms are not numbered as in ``base``."""
        import numpy as np

        old_starts, old_owners = base.postings
        old_terms = len(old_starts) - 1
        if old_terms > len(self.vocabulary):
            return None
        if moved is not None:       # (each of base's chunks as numbered here; a touched file's at -1, dropped below)
            old_owners = moved[old_owners]
        touched_paths = sorted(touched)
        old_spans = [base._file_chunks[path] for path in touched_paths if path in base._file_chunks]
        spans = [self._file_chunks[path] for path in touched_paths if path in self._file_chunks]
        empty = np.zeros(0, dtype=np.int64)
        removed_chunks = np.concatenate([np.arange(span.start, span.stop) for span in old_spans] or [empty])
        removed_terms = np.concatenate([base.term_ids[base.term_starts[span.start]:base.term_starts[span.stop]]
                                        for span in old_spans] or [empty])
        added_terms = np.concatenate([self.term_ids[self.term_starts[span.start]:self.term_starts[span.stop]]
                                      for span in spans] or [empty]).astype(np.int64)
        added_owners = np.concatenate([self.term_owner[self.term_starts[span.start]:self.term_starts[span.stop]]
                                       for span in spans] or [empty])
        order = np.lexsort((added_owners, added_terms)) if len(added_terms) else empty
        added_terms, added_owners = added_terms[order], added_owners[order]
        pieces, done = [], 0
        for term in np.union1d(removed_terms, added_terms).tolist():
            first, end = old_starts[min(term, old_terms)], old_starts[min(term + 1, old_terms)]
            pieces.append(old_owners[done:first])
            # (the chunks of the touched files, by base's numbers: none of the chunks now is a renumbered one of them)
            kept = old_owners[first:end][~np.isin(base.postings[1][first:end], removed_chunks)]
            low, high = np.searchsorted(added_terms, [term, term + 1])
            pieces.append(np.sort(np.concatenate([kept, added_owners[low:high]])))
            done = end
        pieces.append(old_owners[done:])
        return np.concatenate(pieces)

    @functools.cached_property
    def term_starts(self):
        """Where each chunk's term ids begin in ``term_ids`` (and, last, their end)."""
        import numpy as np

        starts = np.zeros(len(self.chunks) + 1, dtype=np.int64)
        np.cumsum(self.reference_counts, out=starts[1:])
        return starts

    @functools.cached_property
    def chunk_families(self):
        """(language family -> its number, that number for every chunk): the family (languages.language_family) of
        each chunk's file, for ranking to keep a cursor's context to code of its own language family."""
        numbers: dict[str, int] = {}
        of_file = [numbers.setdefault(language_family(language_name(path)), len(numbers)) for path in self.files]
        return numbers, self._of_chunks(of_file)

    def _of_chunks(self, of_file: list[int]):
        """A number per file (in ``files``' order) as one per chunk."""
        import numpy as np

        return np.repeat(np.array(of_file, dtype=np.int64),   # int64 when empty as well
                         [len(self._file_chunks[p]) for p in self.files])

    @property
    def name(self) -> str:
        """The repository's folder name."""
        return self.root.name

    def chunk_numbers(self, path: str) -> range:
        """Positions in ``chunks`` of one file's chunks (empty for a file not indexed)."""
        return self._file_chunks.get(path, range(0))

    def relative_path(self, path: str | os.PathLike) -> str:
        """A path given by the user (absolute, or relative to the root) as a posix path relative to the root.

        Raises PromptError for a path outside the repository."""
        full = Path(os.path.normpath(self.root / Path(os.path.expanduser(path))))
        try:
            full = full.parent.resolve() / full.name  # resolve links in the folders, keep the file's own name
        except (OSError, RuntimeError):  # a link loop: judged by the path as written
            pass
        if not full.is_relative_to(self.root) or full == self.root:
            raise PromptError(f"{path or 'an empty path'} is outside the repository {self.root}")
        relative = full.relative_to(self.root).as_posix()
        return relative if relative in self.entries else self._as_indexed(relative)

    def _as_indexed(self, relative: str) -> str:
        """On a disk that ignores case (macOS, Windows' through WSL), `Src/Main.py` is the file indexed as
        src/main.py (resolving a path keeps the case it was given), and on macOS an editor's `café.py` (é one
        character) the one listed as `cafe\u0301.py`: that name, where the disk says it is the same file, so that
        the file's own chunks and imports are found (not ranked as another file's context)."""
        for known in self._by_folded_case.get(_folded(relative), ()):
            with contextlib.suppress(OSError):
                if os.path.samefile(self.root / relative, self.root / known):
                    return known
        return relative

    @functools.cached_property
    def _by_folded_case(self) -> dict[str, list[str]]:
        folded: dict[str, list[str]] = {}
        for path in self.entries:
            folded.setdefault(_folded(path), []).append(path)
        return folded

    def code_between(self, first: Chunk, second: Chunk) -> bool:
        """Whether the file of two chunks has other chunks between them (else only blank lines separate them:
        every non-blank line belongs to a chunk). A file's chunks are in line order: the first one starting after
        ``first`` is found by bisection (a scan of the file's chunks per pair made packing quadratic: 1.9 s for
        32k tokens from a file of 16,000 one-line functions)."""
        numbers = self.chunk_numbers(first.path)
        after = bisect.bisect_right(numbers, first.end_line, key=lambda n: self.chunks[n].start_line)
        return after < len(numbers) and self.chunks[numbers[after]].start_line < second.start_line

    def _text(self, path: str) -> str:
        """An indexed file's text as its chunks hold it (the lines of its blank edges and blank windows apart)."""
        return "\n".join(chunk.text for chunk in self.entries[path].chunks)

    def imports(self, path: str) -> tuple[Import, ...]:
        """The imports of an indexed file as written in its source."""
        return self._imports.get(path, ())

    def updated(self, changed: dict[str, FileEntry], removed: Iterable[str] = ()) -> RepoIndex:
        """A new index with some files parsed again (or added) and some gone, built from what this one holds: no
        file is read. (The on-disk cache is left alone; the next ``index_repository`` brings it up to date.)"""
        entries = dict(self.entries)
        for path in removed:
            entries.pop(path, None)
        vocabulary = dict(self.vocabulary)  # this index keeps its own numbering
        term_ids = {path: ids for path, ids in self._term_ids.items() if path in entries and path not in changed}
        for path, entry in changed.items():
            entry = entries[path] = _share_names(entry)
            if entry.indexed:
                term_ids[path] = _number_terms(entry.chunks, vocabulary)
        touched = frozenset([*changed, *removed])
        indexed_before = {p for p in touched if self.entries.get(p, _ABSENT).indexed}
        indexed_now = {p for p in touched if entries.get(p, _ABSENT).indexed}
        added, gone = sorted(indexed_now - indexed_before), sorted(indexed_before - indexed_now)
        # (the manifests the path table reads: Rust's crate names, Go's module paths; one touched builds it again)
        same_manifests = not any(posixpath.basename(p) in ("Cargo.toml", "go.mod") for p in touched)
        paths = None
        if same_manifests:
            paths = self.paths.with_changes(added, gone) if added or gone else self.paths
        with collector_paused():
            return RepoIndex(self.root, entries, vocabulary, term_ids, paths=paths, base=self, touched=touched)

    def __repr__(self) -> str:
        return f"RepoIndex({str(self.root)!r}, files={len(self.files)}, chunks={len(self.chunks)})"


def index_repository(
    root: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    *,
    max_file_bytes: int = MAX_FILE_BYTES,
    workers: int | None = None,
    allow_empty: bool = False,
) -> RepoIndex:
    """Scan and chunk the repository at ``root``, reusing the on-disk cache for unchanged files.

    ``progress(done, total)`` is called while files are (re)parsed, last with done == total; not at all when
    nothing changed. ``workers`` caps the worker processes for a large first index (default: the CPU count);
    they are started by "spawn", so a script that indexes a large repository needs the usual
    ``if __name__ == "__main__":`` guard. Raises PromptError when ``root`` is not a directory or, unless
    ``allow_empty`` (a server or a suggestion in a new project: the files come later, the buffer is the text), holds
    nothing to index (`nothing_to_index` says why).
    """
    root_path = Path(os.path.expanduser(root))
    if not root_path.is_dir():
        raise PromptError(f"not a directory: {root}")
    root_path = root_path.resolve()
    with collector_paused():
        index = _index(root_path, cache_dir, progress, max_file_bytes, workers)
    if not index.chunks and not allow_empty:
        raise PromptError(nothing_to_index(root_path))
    return index


def nothing_to_index(root: Path) -> str:
    """Why a repository's index holds no chunk, in a sentence (the ignore rules, where they left files out)."""
    ignored = count_ignored(root)
    because = f" ({ignored:,} files are ignored by .gitignore or .codecompleteignore rules)" if ignored else ""
    return f"nothing to index in {root}: no text files with content{because}"


@contextlib.contextmanager
def collector_paused(freeze: bool = False):
    """Pause Python's cycle collector: building or loading an index makes millions of objects and no cycles, and
    the collector, set off by every few hundred allocations, would otherwise scan them all again and again
    (loading a large cache takes a third of the time without it). ``freeze``: and keep what was made inside out of its
    sight for good (gc.freeze, before it resumes), for an index that lives as long as the process: all young, they
    were walked whole by its next young, middle and full passes (3.8 s of a one-shot at 37k files)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        gc.enable()


def _index(
    root_path: Path, cache_dir, progress: Progress | None, max_file_bytes: int, workers: int | None
) -> RepoIndex:
    sources = scan_repository(root_path, max_file_bytes)
    cache_file = _cache_file(root_path, cache_dir)
    saved = _load_cache(cache_file, root_path)
    cached: dict[str, FileEntry] = saved["files"]
    entries = {}
    stale = []
    restamped = False
    for source in sources:
        entry = cached.get(source.path)
        kept = unchanged(root_path, entry, source, max_file_bytes) if entry is not None else None
        if kept is not None:
            entries[source.path] = kept
            restamped |= kept is not entry and not _racy(kept)  # (saved once it can be trusted from now on)
        else:
            stale.append(source)
    vocabulary = saved["vocabulary"]
    term_ids = {path: saved["term_ids"][path] for path, entry in entries.items() if entry.indexed}
    for source, result in _parse_all(root_path, stale, max_file_bytes, progress, workers):
        # While the workers parse on, this process shares and numbers the names of what they sent back.
        if isinstance(result, FileEntry):
            entry = entries[source.path] = _share_names(result)
            if entry.indexed:
                term_ids[source.path] = _number_terms(entry.chunks, vocabulary)
        elif result is not None:
            warnings.warn(f"skipped {source.path}: {result}", ScanWarning, stacklevel=2)
    # Nothing parsed and nothing gone: the files, their term ids and so the postings are those saved
    as_saved = not stale and len(entries) == len(cached)
    index = RepoIndex(root_path, entries, vocabulary, term_ids, owners=saved["owners"] if as_saved else None)
    if not as_saved or restamped:
        _save_cache(cache_file, _saved(index))
    return index


def _saved(index: RepoIndex) -> dict:
    """What the cache keeps of an index: its entries, its numbering (without the names no file references any
    more), the term ids of all its files as one array (in ``files``' order: one buffer to read, where an array per
    file took 30k) and the chunks of its postings (a warm start that finds nothing changed takes them as they are,
    in place of sorting 8.8 million references again). The root first: `_indexed_root` reads it from the start."""
    import numpy as np

    return {"root": str(index.root), "grammars": grammars_stamp(), "files": index.entries,
            "vocabulary": index.vocabulary, "term_ids": index.term_ids.astype(np.int32, copy=False),
            "owners": index.postings[1].astype(np.int32)}


def _stable_order(term_ids):
    """``np.argsort(term_ids, kind="stable")``, as two passes of numpy's radix sort over 16-bit halves (least
    significant first: each pass stable, so the whole is): 0.28 s for 8.8 million references, where a merge sort of
    the 32-bit ids takes 0.52 s."""
    import numpy as np

    low = (term_ids & 0xFFFF).astype(np.uint16)
    if not len(term_ids) or term_ids.max() <= 0xFFFF:
        return np.argsort(low, kind="stable")
    order = np.argsort(low, kind="stable")
    return order[np.argsort((term_ids[order] >> 16).astype(np.uint16), kind="stable")]


def _share_names(entry: FileEntry) -> FileEntry:
    """The entry with every name string shared (interned) with equal ones of other files: a far smaller cache
    (pickle stores a shared object once) that loads faster, and less memory."""
    chunks = tuple(
        chunk._replace(
            defines=tuple(map(sys.intern, chunk.defines)), references=frozenset(map(sys.intern, chunk.references))
        )
        for chunk in entry.chunks
    )
    return entry._replace(chunks=chunks)


def _number_terms(chunks: tuple[Chunk, ...], vocabulary: dict[str, int]):
    """The term ids of the chunks' references, chunk after chunk; new names join the vocabulary. (Set and map
    operations rather than a loop: a million names take a few tenths of a second less.)"""
    import numpy as np

    names = list(chain.from_iterable(chunk.references for chunk in chunks))
    new = set(names).difference(vocabulary)
    vocabulary.update(zip(new, count(len(vocabulary))))
    return np.fromiter(map(vocabulary.__getitem__, names), dtype=np.int32, count=len(names))


def default_cache_dir() -> Path:
    """``$CODECOMPLETE_CACHE_DIR``, else the platform's user cache directory for codecomplete."""
    override = os.environ.get("CODECOMPLETE_CACHE_DIR")
    if override:
        return Path(os.path.expanduser(override))
    import platformdirs

    return Path(platformdirs.user_cache_dir("codecomplete"))


def _cache_file(root: Path, cache_dir: str | os.PathLike | None) -> Path | None:
    """Where this repository's index is cached; None (said once, here) if that would be inside the repository
    itself or the cache folder is not a folder."""
    folder = (Path(os.path.expanduser(cache_dir)) if cache_dir is not None else default_cache_dir()).resolve()
    if lies_within(folder, root):
        warnings.warn(f"not caching the index: {folder} is inside the repository", ScanWarning, stacklevel=3)
        return None
    if folder.exists() and not folder.is_dir():
        warnings.warn(f"not caching the index: the cache folder {folder} is not a folder", ScanWarning, stacklevel=3)
        return None
    key = hashlib.sha256(str(root).encode("utf-8", "surrogateescape")).hexdigest()[:20]
    return folder / f"index-v{CACHE_VERSION}" / f"{key}.pickle"


def _replace(source: str, target: Path, attempts: int = 40) -> None:
    """os.replace. Windows will not replace a file another process has open: there a reader (another process
    loading this index, a server and a command started together) is waited for, up to about two seconds."""
    for attempt in range(attempts):
        try:
            os.replace(source, target)
            return
        except PermissionError:
            if sys.platform != "win32" or attempt == attempts - 1:
                raise
            time.sleep(0.05)


def _load_cache(cache_file: Path | None, root: Path) -> dict:
    """The saved index (`_saved`), with its term ids split by file: {"root", "grammars", "files": {path: FileEntry},
    "vocabulary", "term_ids": {path: array}, "owners": array}; an empty one when there is none, when it was parsed
    by other grammars than those installed now (`grammars_stamp`), or when what is there is not a well-formed index
    of this root (then it is rebuilt)."""
    empty = {"root": str(root), "files": {}, "vocabulary": {}, "term_ids": {}, "owners": None}
    if cache_file is None:
        return empty
    try:
        with open(cache_file, "rb") as file:
            saved = _CacheUnpickler(file).load()
        current = isinstance(saved, dict) and saved.get("grammars") == grammars_stamp()
        if not (current and _well_formed(saved, root)):
            return empty
        return {**saved, "term_ids": _by_file(saved["files"], saved["term_ids"])}
    except Exception:  # missing, truncated by a crash, or from an incompatible version: rebuild it
        return empty


class _CacheUnpickler(pickle.Unpickler):
    """Unpickles an index and nothing else: a pickle can name any importable callable to call while it loads, so a
    cache file written by someone else (a shared or planted cache folder) could run code. An index holds dicts,
    strings, tuples, frozensets, its own named tuples and numpy arrays; any other global refuses the file."""

    ALLOWED = frozenset({
        ("prompts.index", "FileEntry"), ("prompts.chunking", "Chunk"), ("prompts.imports", "Import"),
        ("numpy", "dtype"), ("numpy", "ndarray"),
        ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
    })

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of an index")
        return super().find_class(module, name)


def _well_formed(saved, root: Path) -> bool:
    """Whether a loaded cache has the layout and types ``_index`` relies on: a damaged or foreign pickle would
    otherwise fail the same way on every run."""
    if not isinstance(saved, dict) or saved.get("root") != str(root):
        return False
    files, vocabulary, term_ids, owners = (saved.get(key) for key in ("files", "vocabulary", "term_ids", "owners"))
    if not (isinstance(files, dict) and isinstance(vocabulary, dict) and _int32_vector(term_ids)
            and _int32_vector(owners) and len(owners) == len(term_ids)):
        return False
    references = chunks = 0
    for path, entry in files.items():
        if not (isinstance(path, str) and isinstance(entry, FileEntry) and isinstance(entry.size, int)
                and isinstance(entry.mtime_ns, int) and isinstance(entry.changed_ns, int)
                and isinstance(entry.inode, int) and isinstance(entry.read_ns, int) and isinstance(entry.tick_ns, int)
                and isinstance(entry.digest, bytes) and isinstance(entry.imports, tuple)
                and all(isinstance(binding, Import) for binding in entry.imports)
                and isinstance(entry.chunks, tuple) and all(map(_chunk_well_formed, entry.chunks))):
            return False
        if entry.indexed:
            references += sum(len(chunk.references) for chunk in entry.chunks)
            chunks += len(entry.chunks)
    # (every id a term of the vocabulary, every owner a chunk: a damaged array would fail ranking on every run)
    return len(term_ids) == references and (not references or (
        0 <= term_ids.min() and term_ids.max() < len(vocabulary) and 0 <= owners.min() and owners.max() < chunks))


def _int32_vector(array) -> bool:
    import numpy as np

    return isinstance(array, np.ndarray) and array.dtype == np.int32 and array.ndim == 1


def _by_file(files: dict[str, FileEntry], term_ids):
    """The saved term ids (`_saved`: the indexed files', in path order) as each file's own: views, not copies."""
    by_file, start = {}, 0
    for path in sorted(path for path, entry in files.items() if entry.indexed):
        end = start + sum(len(chunk.references) for chunk in files[path].chunks)
        by_file[path] = term_ids[start:end]
        start = end
    return by_file


def _chunk_well_formed(chunk) -> bool:
    return (isinstance(chunk, Chunk) and isinstance(chunk.path, str) and isinstance(chunk.text, str)
            and isinstance(chunk.start_line, int) and isinstance(chunk.end_line, int)
            and isinstance(chunk.defines, tuple) and isinstance(chunk.references, frozenset))


def _save_cache(cache_file: Path | None, saved: dict) -> None:
    """Write atomically (temporary file, then rename) so a concurrent reader never sees half a file; whatever
    stops the write (a full disk, Ctrl-C) removes the temporary file."""
    if cache_file is None:
        return
    temporary = None
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        if cache_file.is_dir() and not cache_file.is_symlink():
            # A folder where the pickle goes (a hand's, another program's) is nothing this cache wrote; left, no
            # rename could replace it and every run parsed the whole repository again.
            shutil.rmtree(cache_file)
        with tempfile.NamedTemporaryFile(dir=cache_file.parent, suffix=".tmp", delete=False) as file:
            temporary = file.name
            pickle.dump(saved, file, protocol=pickle.HIGHEST_PROTOCOL)
        _replace(temporary, cache_file)
        temporary = None
        _remove_dead_writes(cache_file.parent)
        _remove_gone_repositories(cache_file.parent, cache_file)
        _remove_older_versions(cache_file.parent.parent)
    except OSError as error:
        warnings.warn(f"could not write the index cache {cache_file}: {error.strerror or error}", ScanWarning,
                      stacklevel=3)
    finally:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


_VERSION_FOLDER = re.compile(r"index-v([1-9][0-9]{0,5})")
_CACHE_FILE = re.compile(r"[0-9a-f]{20}\.pickle")
_TEMPORARY_FILE = re.compile(r"tmp[a-z0-9_]{8}\.tmp")   # tempfile's names: tmp + 8 of [a-z0-9_]
ROOT_PREFIX_BYTES = 64 * 1024    # a pickle's start that holds its repository's path (the dict's first item)


def _indexed_root(cache_file: str) -> str | None:
    """The repository a pickle of the index indexes, read from its start (its dict's first item, "root", as
    _save_cache writes it), not from the whole of it (hundreds of megabytes); None where that start says otherwise."""
    import pickletools

    with open(cache_file, "rb") as file:
        start = file.read(ROOT_PREFIX_BYTES)
    strings = []
    try:
        for opcode, argument, _ in pickletools.genops(start):
            if isinstance(argument, str) and "UNICODE" in opcode.name:
                strings.append(argument)
                if len(strings) == 2:
                    break
    except Exception:       # (a start cut short, or no pickle: no repository said)
        return None
    return strings[1] if len(strings) == 2 and strings[0] == "root" else None


def _remove_gone_repositories(folder: Path, keep: Path) -> None:
    """Remove the index caches of repositories that are gone: a temporary checkout, a clone deleted, a subfolder once
    opened as the repository and since removed. Each index of a repository is as large as a fair part of it (95 MB for
    8.4k files, 330 MB for 37k) and was kept for good, one per folder ever indexed. A repository counts as gone where
    the folder above it is there and it is not (not where a whole disk or share is away: its index comes back
    with it)."""
    with contextlib.suppress(OSError):
        with os.scandir(folder) as listing:
            caches = [entry.path for entry in listing if _CACHE_FILE.fullmatch(entry.name)
                      and entry.is_file(follow_symlinks=False) and entry.path != str(keep)]
        for cache in caches:
            with contextlib.suppress(OSError):
                root = _indexed_root(cache)
                if root is not None and os.path.isabs(root) and os.path.isdir(os.path.dirname(root)) \
                        and not os.path.lexists(root):
                    os.unlink(cache)


def _remove_older_versions(cache_folder: Path) -> None:
    """Remove the caches of earlier versions of the index (``index-v1``.. below ``CACHE_VERSION``), which no version
    from this one on reads: each a pickle per repository, left behind for good at every version bump. Only what
    this program writes there goes (its pickles, and its temporary files once too old to be a write under way), and
    then the folder if that left it empty; a folder holding anything else, a link, or a newer version's folder is
    left alone. Another process removing them too, or files that cannot be removed, are no error: the next write
    tries again."""
    try:
        with os.scandir(cache_folder) as listing:
            folders = [entry.path for entry in listing if _older_version(entry)]
    except OSError:
        return
    for folder in folders:
        with contextlib.suppress(OSError):
            with os.scandir(folder) as listing:
                ours = [entry for entry in listing if entry.is_file(follow_symlinks=False) and _ours(entry)]
            for entry in ours:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
            os.rmdir(folder)     # (refused while anything is left in it)


def _remove_dead_writes(folder: Path) -> None:
    """Remove the temporary files of writes into ``folder`` that a process killed outright (SIGKILL, a power cut: no
    ``finally`` runs) left behind, each as large as its index; only once too old to be a write under way."""
    with contextlib.suppress(OSError):
        with os.scandir(folder) as listing:
            dead = [entry.path for entry in listing if entry.is_file(follow_symlinks=False) and _dead_write(entry)]
        for path in dead:
            with contextlib.suppress(OSError):     # (another process removed it first)
                os.unlink(path)


def _older_version(entry: os.DirEntry) -> bool:
    match = _VERSION_FOLDER.fullmatch(entry.name)
    return match is not None and int(match[1]) < CACHE_VERSION and entry.is_dir(follow_symlinks=False)


def _ours(entry: os.DirEntry) -> bool:
    """A pickle of the index, or a temporary file of its write too old to be a write under way."""
    return bool(_CACHE_FILE.fullmatch(entry.name)) or _dead_write(entry)


def _dead_write(entry: os.DirEntry) -> bool:
    """A temporary file of a cache write, untouched too long to be a write under way."""
    return bool(_TEMPORARY_FILE.fullmatch(entry.name)) and \
        entry.stat(follow_symlinks=False).st_mtime_ns < time.time_ns() - STALE_TEMPORARY_S * 10**9


def parse_file(root: Path, source: SourceFile, max_file_bytes: int) -> FileEntry | str | None:
    """Read and chunk one file: its entry, or why it could not be read; None when it is gone since the scan found it
    (deleted, or its folder moved away: nothing to tell, as of a file deleted before the scan)."""
    read_ns = time.time_ns()
    try:
        text = read_source(root, source.path, max_file_bytes)
    except FileNotFoundError:
        return None
    except OSError as error:
        return error.strerror or str(error)
    stamps = _stamps(source)
    tick_ns = min(source.changed_ns, read_ns)   # (a change time after the reading: the file clock runs ahead)
    if text is None:
        return FileEntry(*stamps, False, (), (), read_ns, tick_ns, _digest(text))
    try:
        analysis = analyze_source(source.path, text)
    except RecursionError:  # code nested thousands deep (generated or hostile): one file, not the whole index
        return "nested too deeply to chunk"
    return FileEntry(*stamps, True, analysis.imports, analysis.chunks, read_ns, tick_ns, _digest(text))


def unchanged(root: Path, entry: FileEntry, source: SourceFile, max_file_bytes: int) -> FileEntry | None:
    """``entry`` if the file (``source``, as stat sees it now) still holds the text it was read with, restamped if
    telling took reading it again; None if it changed.

    The stamps of a stat tell (size, modification and change times, inode), except for a file changed less than a
    tick of the file clock before it was read: text saved again within that tick at the same size leaves them all
    as they were (git's "racy git"). Such a racily clean file is read again and its text compared, until a reading
    comes a tick after its change. The change time, not the modification time, which a tool may set anywhere: a
    file dated tomorrow (`touch -d`, clock skew) was read again at every look until tomorrow."""
    if _stamps(entry) != _stamps(source):
        return None
    if not _racy(entry):
        return entry
    read_ns = time.time_ns()
    try:
        text = read_source(root, source.path, max_file_bytes)
    except OSError:
        return None
    return entry._replace(read_ns=read_ns) if _digest(text) == entry.digest else None


def _stamps(file: FileEntry | SourceFile) -> tuple[int, int, int, int]:
    return file.size, file.mtime_ns, file.changed_ns, file.inode


def _racy(entry: FileEntry) -> bool:
    """Whether a write after the entry's last reading could have kept its stamps: whether that reading came less than
    a tick after the tick of the stamps began. That is the change time by the file clock, or, where the file clock
    runs ahead of this one (a network disk), the first reading with these stamps, which came after the write."""
    return entry.read_ns < entry.tick_ns + RACY_NS


def _digest(text: str | None) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest() if text is not None else b""


def _parse_batch(root: Path, sources: list[SourceFile], max_file_bytes: int) -> list[FileEntry | str | None]:
    with collector_paused():
        return [parse_file(root, source, max_file_bytes) for source in sources]


def _parse_all(
    root: Path, sources: list[SourceFile], max_file_bytes: int, progress: Progress | None, workers: int | None
) -> Iterator[tuple[SourceFile, FileEntry | str | None]]:
    """Parse files in this process, or in worker processes when there is enough to do."""
    total = len(sources)
    workers = workers or os.cpu_count() or 1
    if workers > 1 and sum(s.size for s in sources) >= PARALLEL_MIN_BYTES and sys.version_info >= (3, 11):
        # (3.10 cannot leave the current folder off a child's module path: see _children_skip_current_folder)
        results = _parse_in_workers(root, sources, max_file_bytes, workers)
    else:
        results = _parse_here(root, sources, max_file_bytes)
    done = 0
    for batch in results:
        yield from batch
        done += len(batch)
        if progress is not None:
            progress(done, total)


def _parse_here(root: Path, sources: list[SourceFile], max_file_bytes: int
                ) -> Iterator[list[tuple[SourceFile, FileEntry | str | None]]]:
    """Parse in this process, a file a batch (as the workers' batches are yielded)."""
    return ([(source, parse_file(root, source, max_file_bytes))] for source in sources)


_SAFE_PATH_LOCK = threading.Lock()
_safe_path_starts = 0                   # worker starts under way in this process (indexes built in threads)
_safe_path_before: str | None = None    # PYTHONSAFEPATH as it was before the first of them


@contextlib.contextmanager
def _children_skip_current_folder() -> Iterator[None]:
    """While inside, the Pythons this process starts leave the current folder off their module path (3.11's
    PYTHONSAFEPATH). A worker starts as `python -c ...`, which puts the current folder first: run from inside a
    hostile repository (`codecomplete . --file x.py`), its `multiprocessing.py` or any module the worker imports ran
    in the worker. Put back as it was once the last start that overlaps ends: left set, a library user's later
    `python tools/x.py` lost its own folder from its path too."""
    global _safe_path_starts, _safe_path_before
    with _SAFE_PATH_LOCK:
        if _safe_path_starts == 0:
            _safe_path_before = os.environ.get("PYTHONSAFEPATH")
            os.environ["PYTHONSAFEPATH"] = "1"
        _safe_path_starts += 1
    try:
        yield
    finally:
        with _SAFE_PATH_LOCK:
            _safe_path_starts -= 1
            if _safe_path_starts == 0:
                if _safe_path_before is None:
                    os.environ.pop("PYTHONSAFEPATH", None)
                else:
                    os.environ["PYTHONSAFEPATH"] = _safe_path_before


def _end_with_parent() -> None:
    """In a worker process: end the moment the process that started it ends. One killed outright (SIGKILL, the OOM
    killer) shuts no pool down: its workers, and multiprocessing's resource tracker after them, waited for work for
    good, holding its standard output and error open (a reader of them waited for their end for good too)."""
    import multiprocessing

    parent = multiprocessing.parent_process()
    if parent is not None:      # (its sentinel: a pipe only the parent writes to, or on Windows its process handle)
        threading.Thread(target=_exit_after, args=(parent,), name="end-with-parent", daemon=True).start()


def _exit_after(parent) -> None:
    parent.join()               # (a _ParentProcess: waits on its sentinel)
    os._exit(1)


def _parse_in_workers(
    root: Path, sources: list[SourceFile], max_file_bytes: int, workers: int
) -> Iterable[list[tuple[SourceFile, FileEntry | str | None]]]:
    # Largest files first so that no worker is left with a big one at the end.
    batches: list[list[SourceFile]] = [[]]
    batch_bytes = 0
    for source in sorted(sources, key=lambda s: -s.size):
        if batch_bytes >= BATCH_BYTES:
            batches.append([])
            batch_bytes = 0
        batches[-1].append(source)
        batch_bytes += source.size
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # "spawn": forking a process that may run threads (tokenizers, torch) is unsafe.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(batches)), mp_context=context,
                             initializer=_end_with_parent) as pool:
        try:
            with _children_skip_current_folder():   # (submit starts the workers, and the resource tracker)
                futures = {pool.submit(_parse_batch, root, batch, max_file_bytes): batch for batch in batches}
        except OSError:
            # Workers that cannot start (out of descriptors: a low `ulimit -n`; of processes: `ulimit -u`) were an
            # internal error; this process parses everything instead, as it does a small repository.
            pool.shutdown(cancel_futures=True)
            yield from _parse_here(root, sources, max_file_bytes)
            return
        for future in as_completed(futures):
            yield list(zip(futures[future], future.result()))


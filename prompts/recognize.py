"""Which indexed file an editor's unnamed text is.

llama.vim's and llama.vscode's `/infill` (and an OpenAI or Ollama request with a `suffix`) send the text around the
cursor without the file's name: llama.cpp's own prompt writes the literal word "filename" there. Taken as an
untitled buffer, the file's copy on disk is another file to the index: its chunks come back as repository context
next to the window that shows them, and its version of the very line being typed comes back as an example line (in
a replay typing through models/engine.py, bench/keystroke_prompts.py, that example appearing mid-line re-prefilled
the ~2,600-token window four times in 39 keystrokes). Named, the file is the current one: its disk lines are matched
to the text's rows (alignment.py) and the prompt says its name.

The text is recognized by its lines. A line tells files apart only if it is long enough (MIN_CHARS, stripped) and
names something few chunks name (an identifier referenced by at most RARE_SHARE of the chunks): a licence header, a
block of common imports or `return self.value` is in many files, and a new file that begins as its neighbours do is
no copy of them. Candidates are the files referencing the most of the text's rare identifiers (the index's
postings); the one holding at least SHARED of the text's telling lines (and at least MIN_LINES of them) is the
file. A buffer with unsaved edits still shares most of its telling lines with its saved copy, and one with new code
typed below the saved lines still has only those to tell (new names are in no chunk); a new file or a scratch
buffer has none on disk, and stays untitled.
"""

from __future__ import annotations

import heapq
from collections import Counter

from .alignment import disk_rows
from .chunking import IDENTIFIER
from .index import RepoIndex

MIN_CHARS = 16      # a line shorter than this (`return x`, `}`, `else:`) is in too many files to tell them apart
MIN_LINES = 8       # fewer telling lines: too little text to name its file
SHARED = 0.5        # of the text's telling lines, the file must hold at least this share
RARE_SHARE = 0.01   # an identifier referenced by more of the chunks than this picks no candidate, tells no line
CANDIDATES = 3      # files whose lines are compared


def recognize(index: RepoIndex, text: str) -> str | None:
    """The path (relative to the repository, as the index has it) of the indexed file `text` is a version of, or
    None where no file holds at least SHARED of its telling lines."""
    memo = _memo_for(index)
    named = [_named(line) for line in text.splitlines()]                        # (stripped line, its identifiers)
    rare = memo.rare_among(set().union(*(names for _, names in named)))
    lines = {stripped for stripped, names in named if len(stripped) >= MIN_CHARS and not rare.isdisjoint(names)}
    if len(lines) < MIN_LINES:
        return None
    scored = [(len(lines & memo.file_lines(path)), path) for path in memo.candidates(rare)]
    shared, path = max(scored, key=lambda pair: pair[0], default=(0, None))    # (equal: the one with more votes)
    return path if shared >= max(MIN_LINES, SHARED * len(lines)) else None


# An editor asks again at every few keystrokes with nearly the same text: what a line says, whether a name is rare,
# the candidates of a set of rare names and a file's lines are remembered (1.8 ms a keystroke of a 20 KB llama.vim
# text on a CPU, most of the server's cost of naming the file, bench/results/NOTES.md, Run 47).
_LINES_KEPT = 1 << 14      # lines whose identifiers are remembered, any index's (then forgotten all at once)
_LONGEST_KEPT = 512        # characters of a line, name or path remembered: lines and names take ~25 MB at most
_NAMES_KEPT = 1 << 16      # names whose rarity is remembered, an index's
_FILES_KEPT = 8            # files whose lines are remembered, the last index's (each at most scan.MAX_FILE_BYTES)
_lines: dict[str, tuple[str, frozenset[str]]] = {}


def _named(line: str) -> tuple[str, frozenset[str]]:
    """The line stripped, and the identifiers it names."""
    known = _lines.get(line)
    if known is None:
        stripped = line.strip()
        known = _remember(_lines, _LINES_KEPT, line, (stripped, frozenset(IDENTIFIER.findall(stripped))))
    return known


def _remember(memo: dict, most: int, key: str, value):
    """`value`, kept in `memo` under `key` unless the key is longer than _LONGEST_KEPT; a memo holding `most` is
    forgotten all at once first."""
    if len(key) <= _LONGEST_KEPT:
        if len(memo) >= most:
            memo.clear()
        memo[key] = value
    return value


class _Memo:
    """What recognize has looked up in one index (an index changes by becoming a new object: prompts.freshness)."""

    def __init__(self, index: RepoIndex) -> None:
        self.index = index
        self._rare: dict[str, bool] = {}
        self._limit = max(2, RARE_SHARE * len(index.chunks))
        self._candidates: tuple[frozenset[str], list[str]] | None = None   # (rare names, their candidates), the last
        self._file_lines: dict[str, set[str]] = {}

    def rare_among(self, names: set[str]) -> set[str]:
        """Those of `names` that some chunk references, and at most RARE_SHARE of them do."""
        known, found = self._rare, set()
        for name in names:
            is_rare = known.get(name)
            if is_rare is None:
                term = self.index.vocabulary.get(name)
                is_rare = _remember(known, _NAMES_KEPT, name,
                                    term is not None and 0 < self.index.document_frequency[term] <= self._limit)
            if is_rare:
                found.add(name)
        return found

    def candidates(self, rare: set[str]) -> list[str]:
        """The CANDIDATES files referencing the most of the rare identifiers (of as many, the first by path)."""
        key = frozenset(rare)
        if self._candidates is None or self._candidates[0] != key:
            starts, owners = self.index.postings
            votes: Counter[str] = Counter()
            for name in rare:
                term = self.index.vocabulary[name]
                votes.update({self.index.chunks[chunk].path for chunk in owners[starts[term]:starts[term + 1]]})
            # (ties by path: in the order the votes came, a file and its copy were ranked by the set of names'
            # order, which follows the process's string hashes, so another process named the other copy)
            best = heapq.nsmallest(CANDIDATES, votes.items(), key=lambda vote: (-vote[1], vote[0]))
            self._candidates = key, [path for path, _ in best]
        return self._candidates[1]

    def file_lines(self, path: str) -> set[str]:
        lines = self._file_lines.get(path)
        if lines is None:
            # (alignment's rows of the file: remembered, and the recognized file's are what its alignment reads next)
            rows = disk_rows(self.index.entries[path].chunks)
            lines = _remember(self._file_lines, _FILES_KEPT, path, {row.strip() for row in rows})
        return lines


_memo: _Memo | None = None


def _memo_for(index: RepoIndex) -> _Memo:
    global _memo
    if _memo is None or _memo.index is not index:
        _memo = _Memo(index)        # (the last index's only: an older one's memory goes with it)
    return _memo

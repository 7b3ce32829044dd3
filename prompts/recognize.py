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
    named = [(stripped, set(IDENTIFIER.findall(stripped))) for line in text.splitlines()
             if (stripped := line.strip())]                                    # (line, its identifiers)
    rare = _rare_names(index, set().union(*(names for _, names in named)))
    lines = {stripped for stripped, names in named if len(stripped) >= MIN_CHARS and not rare.isdisjoint(names)}
    if len(lines) < MIN_LINES:
        return None
    scored = [(len(lines & _file_lines(index, path)), path) for path in _candidates(index, rare)]
    shared, path = max(scored, key=lambda pair: pair[0], default=(0, None))    # (equal: the one with more votes)
    return path if shared >= max(MIN_LINES, SHARED * len(lines)) else None


def _rare_names(index: RepoIndex, names: set[str]) -> set[str]:
    """Those of `names` that some chunk references, and at most RARE_SHARE of them do."""
    limit = max(2, RARE_SHARE * len(index.chunks))
    return {name for name in names
            if (term := index.vocabulary.get(name)) is not None and 0 < index.document_frequency[term] <= limit}


def _candidates(index: RepoIndex, rare: set[str]) -> list[str]:
    """The CANDIDATES files referencing the most of the rare identifiers."""
    starts, owners = index.postings
    votes: Counter[str] = Counter()
    for name in rare:
        term = index.vocabulary[name]
        votes.update({index.chunks[chunk].path for chunk in owners[starts[term]:starts[term + 1]]})
    return [path for path, _ in votes.most_common(CANDIDATES)]


def _file_lines(index: RepoIndex, path: str) -> set[str]:
    # (alignment's rows of the file: remembered, and the recognized file's are what its alignment reads next)
    return {row.strip() for row in disk_rows(index.entries[path].chunks)}

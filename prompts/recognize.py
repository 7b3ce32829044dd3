"""Which indexed file an editor's unnamed text is.

llama.vim's and llama.vscode's `/infill` (and an OpenAI or Ollama request with a `suffix`) send the text around the
cursor without the file's name: llama.cpp's own prompt writes the literal word "filename" there. Taken as an
untitled buffer, the file's copy on disk is another file to the index: its chunks come back as repository context
next to the window that shows them, and its version of the very line being typed comes back as an example line (in
a replay typing through models/engine.py, bench/keystroke_prompts.py, that example appearing mid-line re-prefilled
the ~2,600-token window four times in 39 keystrokes). Named, the file is the current one: its disk lines are matched
to the text's rows (alignment.py) and the prompt says its name.

The text is recognized by its lines: candidates are the files that reference the most of the text's rare
identifiers (the index's postings; a term in more than RARE_SHARE of the chunks tells nothing), and the one whose
lines hold at least SHARED of the text's distinctive lines (stripped, at least MIN_CHARS long; at least MIN_LINES
of them) is the file. A buffer with unsaved edits still shares most of its lines with its saved copy; a new file, a
scratch buffer or a text pasted from elsewhere in pieces does not, and stays untitled.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .chunking import IDENTIFIER
from .index import RepoIndex

MIN_CHARS = 16      # a line shorter than this (`return x`, `}`, `else:`) is in too many files to tell them apart
MIN_LINES = 8       # fewer distinctive lines: too little text to name its file
SHARED = 0.5        # of the text's distinctive lines, the file must hold at least this share
RARE_SHARE = 0.01   # identifiers referenced by more of the chunks than this do not pick candidates
CANDIDATES = 3      # files whose lines are compared


def recognize(index: RepoIndex, text: str) -> str | None:
    """The path (relative to the repository, as the index has it) of the indexed file `text` is a version of, or
    None where no file holds at least SHARED of its distinctive lines."""
    lines = {stripped for line in text.splitlines() if len(stripped := line.strip()) >= MIN_CHARS}
    if len(lines) < MIN_LINES:
        return None
    scored = [(len(lines & _file_lines(index, path)), path) for path in _candidates(index, text)]
    shared, path = max(scored, key=lambda pair: pair[0], default=(0, None))    # (equal: the one with more votes)
    return path if shared >= max(MIN_LINES, SHARED * len(lines)) else None


def _candidates(index: RepoIndex, text: str) -> list[str]:
    """The CANDIDATES files referencing the most of the text's rare identifiers."""
    terms = [index.vocabulary[name] for name in set(IDENTIFIER.findall(text)) if name in index.vocabulary]
    if not terms:
        return []
    terms = np.array(terms, dtype=np.int64)
    rare = terms[index.document_frequency[terms] <= max(2, RARE_SHARE * len(index.chunks))]
    starts, owners = index.postings
    votes: Counter[str] = Counter()
    for term in rare:
        files = {index.chunks[chunk].path for chunk in owners[starts[term]:starts[term + 1]]}
        votes.update(files)
    return [path for path, _ in votes.most_common(CANDIDATES)]


def _file_lines(index: RepoIndex, path: str) -> set[str]:
    return {line.strip() for number in index.chunk_numbers(path) for line in index.chunks[number].text.split("\n")}

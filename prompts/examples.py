"""Example lines: lines of the repository that begin as the cursor's line does, for a model to copy from.

A small model completes a line best from a line of the same shape in view (``def tokenize(state: `` -> a sibling
rule's signature, ``self._accept_guard = `` -> ``ResourceGuard("...")``); definitions of the names it may use
move it far less (bench/results/NOTES.md, "Repository context", rounds 3 and 4). The lines come from the best
chunks of the context ranking: the current file's other parts, code like the code at the cursor.

They are looked up by the cursor's line up to its last word boundary, indentation aside, so typing inside a word
does not change them, nor the prompt before the current file, which they are part of; while the repository context
is held, a word completed does not change them either unless lines that begin as the line now does are more among
the fresh ones than among them (holding.py: a new name typed begins no line, and the lines found before it stay),
nor a new line while the file's window begins where it began, until the new line finds lines of its own.
A line that so far holds only keywords (``return ``, ``raise ``, ``self.``) gets none: lines of every shape begin so.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .chunking import Chunk

EXAMPLES = 4  # lines at most
LONGEST_KEY = 256  # characters: a longer start of a line looks up nothing (and bounds the regex's work)
_TYPED_WORD = re.compile(r"\w+$")
_WORD = re.compile(r"\w+")


def example_key(before_cursor: str, keywords: frozenset[str]) -> str:
    """What an example line must begin with: the cursor's line up to the cursor, without its indentation and the
    word being typed; empty (no examples) while it holds no word but keywords."""
    if len(before_cursor) > LONGEST_KEY:  # (a minified line: `\w+$` is quadratic in a long run of word characters)
        return ""
    key = _TYPED_WORD.sub("", before_cursor).lstrip()
    return key if any(word not in keywords for word in _WORD.findall(key)) else ""


def example_lines(chunks: Iterable[Chunk], key: str, limit: int = EXAMPLES) -> list[tuple[Chunk, int, str]]:
    """Up to ``limit`` distinct lines of the chunks, best chunk first, that begin with ``key`` (indentation aside)
    and go on past it: (chunk, 1-based line number, the line as written)."""
    found: list[tuple[Chunk, int, str]] = []
    if not key:
        return found
    seen = set()
    for chunk in chunks:
        for number, line in enumerate(chunk.text.split("\n"), chunk.start_line):
            code = line.strip()
            if len(code) > len(key) and code.startswith(key) and code not in seen:
                seen.add(code)
                found.append((chunk, number, line))
                if len(found) == limit:
                    return found
    return found

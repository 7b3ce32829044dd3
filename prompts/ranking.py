"""Ranking the repository's chunks by what the code at the cursor (or a chat question) uses.

Four signals, summed with fixed weights:

- definitions: a chunk that defines an identifier used near the cursor, shared among the chunks defining it
  (``__init__`` tells little, ``parse_header`` a lot) and somewhat discounted for names used everywhere;
- imports: chunks of the files the current file imports;
- lexical similarity: BM25 between the weighted identifiers of the query and those of each chunk, normalised to
  the best match;
- proximity: a little for files near the current one in the folder tree, to break ties.

Query identifiers weigh more the nearer they are to the cursor (before it counts twice as much as after it);
the partial word under the cursor is left out, so the ranking does not change with every keystroke.
"""

from __future__ import annotations

import math
import posixpath
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from .chunking import IDENTIFIER, Chunk
from .index import RepoIndex

DEFINITION_WEIGHT = 3.0
IMPORT_WEIGHT = 1.0
LEXICAL_WEIGHT = 1.0
PROXIMITY_WEIGHT = 0.25
MENTION_WEIGHT = 2.0  # chat: a file the question names

K1, B = 1.2, 0.75  # BM25's usual constants
LINES_BEFORE, LINES_AFTER = 60, 20  # the neighbourhood of the cursor that the query reads closely
DISTANCE_SCALE = 10  # lines at which an identifier's weight halves
FILE_WEIGHT = 0.2  # every identifier elsewhere in the current file still counts this much
FILE_LINES = 2000  # how far from the cursor the rest of the file is read
MAX_TERMS = 256  # the heaviest identifiers make the query

_PARTIAL_BEFORE = re.compile(r"\w+$")
_PARTIAL_AFTER = re.compile(r"^\w+")


@dataclass(frozen=True)
class Query:
    """What to look for in the repository."""

    weights: dict[str, float]  # identifier -> importance in (0, 1]
    path: str | None = None  # the current file, if any
    imported: frozenset[str] = frozenset()  # files the current file imports
    shown: tuple[int, int] | None = None  # lines of ``path`` already in the prompt, never returned
    mentioned: frozenset[str] = field(default_factory=frozenset)  # files named in a chat question


def cursor_weights(lines: list[str], row: int, col: int, keywords: frozenset[str]) -> dict[str, float]:
    """Identifier weights around a cursor at 0-based ``row``, ``col`` of ``lines``."""
    cursor_line = lines[row] if row < len(lines) else ""
    lines = lines[max(0, row - FILE_LINES) : row] + [
        _PARTIAL_BEFORE.sub("", cursor_line[:col]) + " " + _PARTIAL_AFTER.sub("", cursor_line[col:])
    ] + lines[row + 1 : row + FILE_LINES]
    row = min(row, FILE_LINES)
    weights = dict.fromkeys(IDENTIFIER.findall("\n".join(lines)), FILE_WEIGHT)
    for number in range(max(0, row - LINES_BEFORE), min(len(lines), row + LINES_AFTER + 1)):
        distance = row - number if number <= row else 2 * (number - row)
        weight = 1.0 / (1.0 + distance / DISTANCE_SCALE)
        for name in IDENTIFIER.findall(lines[number]):
            if weights[name] < weight:
                weights[name] = weight
    return _heaviest(weights, keywords)


def text_weights(text: str, keywords: frozenset[str] = frozenset(), weight: float = 1.0) -> dict[str, float]:
    """Identifier weights of a chat question or a pinned file: every identifier alike."""
    return _heaviest(dict.fromkeys(IDENTIFIER.findall(text), weight), keywords)


def _heaviest(weights: dict[str, float], keywords: frozenset[str]) -> dict[str, float]:
    for keyword in keywords.intersection(weights):
        del weights[keyword]
    if len(weights) > MAX_TERMS:
        weights = dict(sorted(weights.items(), key=lambda item: -item[1])[:MAX_TERMS])
    return weights


def rank(index: RepoIndex, query: Query) -> Iterator[tuple[float, Chunk]]:
    """Chunks related to the query, best first, without duplicates (equal text) and without the lines the
    prompt already shows."""
    chunks = index.chunks
    weights = query.weights
    terms = frozenset(weights)
    hits = [(n, common) for n, chunk in enumerate(chunks) if (common := chunk.references & terms)]
    document_frequency = Counter(term for _, common in hits for term in common)
    total = len(chunks)
    idf = {t: math.log(1 + (total - n + 0.5) / (n + 0.5)) for t, n in document_frequency.items()}
    rarest = math.log(1 + (total - 0.5) / 1.5)  # the idf of a name found in one chunk

    scores: dict[int, float] = {}
    lexical = {}
    for number, common in hits:
        length = K1 * (1 - B + B * len(chunks[number].references) / index.mean_references)
        lexical[number] = sum(weights[t] * idf[t] for t in common) * (K1 + 1) / (1 + length)
    best = max(lexical.values(), default=0.0) or 1.0
    for number, value in lexical.items():
        scores[number] = LEXICAL_WEIGHT * value / best
    for term, weight in weights.items():
        definers = index.definers.get(term)
        if definers:
            rarity = 0.5 + 0.5 * idf.get(term, rarest) / rarest
            bonus = DEFINITION_WEIGHT * weight * rarity / len(definers)
            for number in definers:
                scores[number] = scores.get(number, 0.0) + bonus
    for path, bonus in [(p, IMPORT_WEIGHT) for p in query.imported] + [(p, MENTION_WEIGHT) for p in query.mentioned]:
        for number in index.chunk_numbers(path):
            scores[number] = scores.get(number, 0.0) + bonus

    if query.path is not None:
        here = _folders(query.path)
        nearness: dict[str, float] = {}
        for number in scores:
            path = chunks[number].path
            if path not in nearness:
                nearness[path] = PROXIMITY_WEIGHT * _proximity(here, _folders(path))
            scores[number] += nearness[path]
        if query.shown is not None:
            first, last = query.shown
            for number in index.chunk_numbers(query.path):
                if chunks[number].start_line <= last and chunks[number].end_line >= first:
                    scores.pop(number, None)

    seen: set[str] = set()
    for number, score in sorted(scores.items(), key=lambda item: (-item[1], item[0])):
        chunk = chunks[number]
        if chunk.text not in seen:
            seen.add(chunk.text)
            yield score, chunk


def _folders(path: str) -> list[str]:
    folder = posixpath.dirname(path)
    return folder.split("/") if folder else []


def _proximity(here: list[str], there: list[str]) -> float:
    """1 in the same folder, falling with the number of steps through the folder tree."""
    common = 0
    for a, b in zip(here, there):
        if a != b:
            break
        common += 1
    return 1.0 / (1 + len(here) + len(there) - 2 * common)

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
    prompt already shows. All chunks are scored at once, as vectors over the index's chunk-by-term matrix."""
    import numpy as np

    scores, rarity = _lexical_scores(index, query.weights)
    for term, weight in query.weights.items():
        definers = index.definers.get(term)
        if definers:
            # (a name defined but referenced nowhere, say a method named like a keyword, counts as rare)
            scores[definers] += DEFINITION_WEIGHT * weight * rarity.get(term, 1.0) / len(definers)
    for paths, bonus in ((query.imported, IMPORT_WEIGHT), (query.mentioned, MENTION_WEIGHT)):
        for path in paths:
            numbers = index.chunk_numbers(path)
            scores[numbers.start : numbers.stop] += bonus
    if query.path is not None:
        here = _parts(posixpath.dirname(query.path))
        nearness = np.array([_proximity(here, _parts(folder)) for folder in index.folders])
        candidates = scores > 0
        scores[candidates] += PROXIMITY_WEIGHT * nearness[index.folder_of_chunk[candidates]]
        if query.shown is not None:
            first, last = query.shown
            for number in index.chunk_numbers(query.path):
                if index.chunks[number].start_line <= last and index.chunks[number].end_line >= first:
                    scores[number] = 0.0

    candidates = np.flatnonzero(scores > 0)
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    seen: set[str] = set()
    for number, score in zip(order.tolist(), scores[order].tolist()):
        chunk = index.chunks[number]
        if chunk.text not in seen:
            seen.add(chunk.text)
            yield score, chunk


def _lexical_scores(index: RepoIndex, weights: dict[str, float]):
    """BM25 of every chunk, counting a name once per chunk, normalised to the best match; and each known query
    term's rarity, from 1 (found in one chunk) down to 0.5 (found in all)."""
    import numpy as np

    total = len(index.chunks)
    known = [(term, index.vocabulary[term], weight) for term, weight in weights.items() if term in index.vocabulary]
    term_ids = np.array([number for _, number, _ in known], dtype=np.int64)
    frequency = index.document_frequency[term_ids]
    idf = np.log1p((total - frequency + 0.5) / (frequency + 0.5))
    rarest = math.log1p((total - 0.5) / 1.5)  # the idf of a name found in a single chunk

    term_weight = np.zeros(len(index.vocabulary))
    term_weight[term_ids] = np.array([weight for _, _, weight in known]) * idf
    matched = np.bincount(index.term_owner, weights=term_weight[index.term_ids], minlength=total)
    counts = index.reference_counts
    lexical = matched * (K1 + 1) / (1 + K1 * (1 - B + B * counts / max(counts.mean(), 1.0)))
    best = lexical.max()
    rarity = dict(zip([term for term, _, _ in known], (0.5 + 0.5 * idf / rarest).tolist()))
    return LEXICAL_WEIGHT * lexical / (best if best > 0 else 1.0), rarity


def _parts(folder: str) -> list[str]:
    return folder.split("/") if folder else []


def _proximity(here: list[str], there: list[str]) -> float:
    """1 in the same folder, falling with the number of steps through the folder tree."""
    common = 0
    for a, b in zip(here, there):
        if a != b:
            break
        common += 1
    return 1.0 / (1 + len(here) + len(there) - 2 * common)

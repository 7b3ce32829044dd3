"""Filling a token budget with ranked chunks, assembling the ids, and reporting what went in.

Every piece of a prompt is encoded on its own (tokens.py), so the packer knows its exact cost before choosing
it, and the ids of the finished prompt are the concatenation of what it chose. Chosen chunks are laid out in an
order that changes little between keystrokes, so the model can reuse the cached keys and values of the prompt's
start: files from the least to the most relevant (the most relevant nearest the cursor), each file's chunks
in line order, and the text around the cursor last.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from .chunking import Chunk
from .formats import Segment
from .tokens import Encoder

ENCODE_BATCH = 32  # candidates encoded per call to the tokenizer
GIVE_UP_AFTER = 64  # candidates in a row that did not fit: the budget is as full as it will get


@dataclass(frozen=True)
class ContextItem:
    """A part of the repository included in a prompt: for ``--json`` and the UI."""

    path: str
    start_line: int
    end_line: int
    tokens: int


@dataclass
class PackedPrompt:
    """A prompt ready for the model."""

    ids: list[int]  # special tokens included; never longer than the budget
    context: list[ContextItem]  # what was included, in prompt order
    stop_token_ids: list[int]
    stop_strings: list[str]
    format: str  # "codellama-infill" | "starcoder-fim" | "left-to-right" | "chat"


@dataclass(frozen=True)
class Layout:
    """How the chosen chunks are written: the segments that open a file's section, hold a chunk, and mark a gap
    between two chunks of one file that are not adjacent."""

    section: Callable[[Chunk], list[Segment]]
    chunk: Callable[[Chunk], list[Segment]]
    gap: Callable[[Chunk], list[Segment]]


@dataclass
class _Picked:
    chunk: Chunk
    ids: list[int]


@dataclass
class Selection:
    """Chunks chosen for a budget, grouped by file in the order the files were first chosen (best first)."""

    layout: Layout
    files: dict[str, list[_Picked]] = field(default_factory=dict)
    section_ids: dict[str, list[int]] = field(default_factory=dict)
    gap_ids: dict[str, list[int]] = field(default_factory=dict)
    tokens: int = 0  # an upper bound: every chunk after a file's first is charged a gap

    def __bool__(self) -> bool:
        return bool(self.files)

    def chunks(self, path: str) -> list[Chunk]:
        return [picked.chunk for picked in self.files.get(path, [])]

    def drop_last(self) -> None:
        """Remove the least relevant chunk (the one chosen last)."""
        path = next(reversed(self.files))
        picked = self.files[path].pop()
        self.tokens -= len(picked.ids) + (len(self.gap_ids[path]) if self.files[path] else len(self.section_ids[path]))
        if not self.files[path]:
            del self.files[path]

    def ordered(self) -> Iterator[tuple[str, list[Chunk]]]:
        """Files from the least to the most relevant, each with its chunks in line order."""
        for path in reversed(self.files):
            yield path, sorted((picked.chunk for picked in self.files[path]), key=lambda c: c.start_line)

    def render(self) -> tuple[list[int], list[ContextItem]]:
        """The ids of all sections in ``ordered`` order, and what each chunk cost (its section's opening and
        gap included)."""
        ids: list[int] = []
        items = []
        chunk_ids = {id(picked.chunk): picked.ids for pickeds in self.files.values() for picked in pickeds}
        for path, chunks in self.ordered():
            cost = len(self.section_ids[path])
            ids += self.section_ids[path]
            previous = None
            for chunk in chunks:
                if previous is not None and chunk.start_line > previous.end_line + 1:
                    ids += self.gap_ids[path]
                    cost += len(self.gap_ids[path])
                ids += chunk_ids[id(chunk)]
                items.append(ContextItem(chunk.path, chunk.start_line, chunk.end_line, cost + len(chunk_ids[id(chunk)])))
                cost, previous = 0, chunk
        return ids, items


def select_chunks(encoder: Encoder, layout: Layout, ranked: Iterable[tuple[float, Chunk]], budget: int) -> Selection:
    """Take ranked chunks, best first, while they fit into ``budget`` tokens (sections and gaps included)."""
    selection = Selection(layout)
    misses = 0
    batch: list[Chunk] = []
    for _, chunk in ranked:
        left = budget - selection.tokens
        if left <= 0 or misses >= GIVE_UP_AFTER:
            break
        if chunk.approx_tokens > 2 * left:  # hopeless: not worth encoding
            misses += 1
            continue
        batch.append(chunk)
        if len(batch) == ENCODE_BATCH:
            misses = _take(encoder, selection, batch, budget, misses)
            batch = []
    if batch and budget > selection.tokens and misses < GIVE_UP_AFTER:
        _take(encoder, selection, batch, budget, misses)
    return selection


def _take(encoder: Encoder, selection: Selection, batch: list[Chunk], budget: int, misses: int) -> int:
    layout = selection.layout
    for chunk, ids in zip(batch, encode_all(encoder, [layout.chunk(c) for c in batch])):
        path = chunk.path
        opening = path not in selection.files
        if opening and path not in selection.section_ids:
            selection.section_ids[path] = encode_all(encoder, [layout.section(chunk)])[0]
            selection.gap_ids[path] = encode_all(encoder, [layout.gap(chunk)])[0]
        cost = len(ids) + len(selection.section_ids[path] if opening else selection.gap_ids[path])
        if selection.tokens + cost > budget:
            misses += 1
            continue
        misses = 0
        selection.files.setdefault(path, []).append(_Picked(chunk, ids))
        selection.tokens += cost
    return misses


def encode_all(encoder: Encoder, segment_lists: list[list[Segment]]) -> list[list[int]]:
    """Ids of many segment lists, their texts encoded as mid-prompt pieces in one call to the tokenizer."""
    texts = [s for segments in segment_lists for s in segments if isinstance(s, str)]
    encoded = iter(encoder.encode_many(texts))
    return [[i for s in segments for i in ([s] if isinstance(s, int) else next(encoded))] for segments in segment_lists]


class Assembler:
    """Concatenates a prompt's ids. The first text of the prompt is encoded the tokenizer's own way (with
    SentencePiece's leading space, as CodeLlama's reference format does); all later text as mid-prompt pieces."""

    def __init__(self, encoder: Encoder):
        self.encoder = encoder
        self.ids: list[int] = []
        self._text_seen = False

    def add(self, segments: list[Segment]) -> int:
        """Append segments; returns how many ids they took."""
        before = len(self.ids)
        for segment in segments:
            if isinstance(segment, int):
                self.ids.append(segment)
            else:
                self.ids += self.encoder.encode(segment) if self._text_seen else self.encoder.encode_lead(segment)
                self._text_seen = True
        return len(self.ids) - before

    def add_ids(self, ids: list[int]) -> None:
        """Append text already encoded as mid-prompt pieces."""
        self.ids += ids
        self._text_seen = self._text_seen or bool(ids)

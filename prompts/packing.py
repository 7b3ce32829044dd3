"""Filling a token budget with ranked chunks, assembling the ids, and reporting what went in.

Every piece of a prompt is encoded on its own (tokens.py), so the packer knows its exact cost before choosing
it, and the ids of the finished prompt are the concatenation of what it chose (the encoder remembers the
pieces, so assembling them costs nothing more). Chosen chunks are laid out in an order that changes little
between keystrokes, so the model can reuse the cached keys and values of the prompt's start: files from the
least to the most relevant (the most relevant nearest the cursor), each file's chunks in line order, and the
text around the cursor last.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from .chunking import Chunk
from .formats import Segment
from .tokens import Encoder

ENCODE_BATCH = 32  # candidates encoded per call to the tokenizer
MAX_BLANK_LINES = 2  # blank lines kept between two chunks shown together (PEP 8's two between definitions)
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
    heal_text: str = ""  # left out of the prompt's end: the generation must begin with it (token healing)


@dataclass(frozen=True)
class Layout:
    """How the chosen chunks are written: the segments that open a file's section and hold a chunk, and those
    between two chunks of a file: ``gap`` where code was left out, else ``blank`` once per blank line."""

    section: Callable[[Chunk], list[Segment]]
    chunk: Callable[[Chunk], list[Segment]]
    gap: Callable[[Chunk], list[Segment]]
    blank: Callable[[Chunk], list[Segment]]
    code_between: Callable[[Chunk, Chunk], bool]  # whether the file has code between two of its chunks


@dataclass
class Selection:
    """Chunks chosen for a budget, grouped by file in the order the files were first chosen (best first), with
    the tokens each took when encoded on its own."""

    layout: Layout
    files: dict[str, list[tuple[Chunk, int]]] = field(default_factory=dict)
    section_tokens: dict[str, int] = field(default_factory=dict)
    separator_tokens: dict[str, int] = field(default_factory=dict)  # the longer of a gap and the blank lines
    tokens: int = 0  # an upper bound of the whole

    def __bool__(self) -> bool:
        return bool(self.files)

    def chunks(self, path: str) -> list[Chunk]:
        return [chunk for chunk, _ in self.files.get(path, [])]

    def add(self, chunk: Chunk, tokens: int) -> None:
        path = chunk.path
        self.tokens += tokens + (self.separator_tokens[path] if path in self.files else self.section_tokens[path])
        self.files.setdefault(path, []).append((chunk, tokens))

    def drop_last(self) -> None:
        """Remove the least relevant chunk (the one chosen last)."""
        path = next(reversed(self.files))
        _, tokens = self.files[path].pop()
        self.tokens -= tokens + (self.separator_tokens[path] if self.files[path] else self.section_tokens[path])
        if not self.files[path]:
            del self.files[path]

    def ordered(self) -> Iterator[tuple[str, list[tuple[Chunk, int]]]]:
        """Files from the least to the most relevant, each with its chunks (and their tokens) in line order."""
        for path in reversed(self.files):
            yield path, sorted(self.files[path], key=lambda pair: pair[0].start_line)

    def segments(self) -> tuple[list[Segment], list[ContextItem]]:
        """All sections in ``ordered`` order, as the pieces that were counted, and the items."""
        segments: list[Segment] = []
        items = []
        layout = self.layout
        for path, pairs in self.ordered():
            segments += layout.section(pairs[0][0])
            cost = self.section_tokens[path]
            previous = None
            for chunk, tokens in pairs:
                if previous is not None:
                    if layout.code_between(previous, chunk):
                        segments += layout.gap(chunk)
                    else:
                        segments += layout.blank(chunk) * min(chunk.start_line - previous.end_line - 1, MAX_BLANK_LINES)
                    cost = self.separator_tokens[path]
                segments += layout.chunk(chunk)
                items.append(ContextItem(path, chunk.start_line, chunk.end_line, cost + tokens))
                previous = chunk
        return segments, items


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
            misses = _take_batch(encoder, selection, batch, budget, misses)
            batch = []
    if batch and budget > selection.tokens and misses < GIVE_UP_AFTER:
        _take_batch(encoder, selection, batch, budget, misses)
    return selection


def _take_batch(encoder: Encoder, selection: Selection, batch: list[Chunk], budget: int, misses: int) -> int:
    """Take each chunk of ``batch`` that still fits; returns the count of misses in a row."""
    layout = selection.layout
    for chunk, ids in zip(batch, encode_all(encoder, [layout.chunk(c) for c in batch])):
        path = chunk.path
        if path not in selection.section_tokens:
            section, gap, blank = encode_all(encoder, [layout.section(chunk), layout.gap(chunk), layout.blank(chunk)])
            selection.section_tokens[path] = len(section)
            selection.separator_tokens[path] = max(len(gap), MAX_BLANK_LINES * len(blank))
        opening = selection.section_tokens[path] if path not in selection.files else selection.separator_tokens[path]
        if selection.tokens + len(ids) + opening > budget:
            misses += 1
            continue
        misses = 0
        selection.add(chunk, len(ids))
    return misses


def encode_all(encoder: Encoder, segment_lists: list[list[Segment]]) -> list[list[int]]:
    """Ids of many segment lists, their texts encoded as mid-prompt pieces in one call to the tokenizer."""
    texts = [s for segments in segment_lists for s in segments if isinstance(s, str)]
    encoded = iter(encoder.encode_many(texts))
    return [[i for s in segments for i in ([s] if isinstance(s, int) else next(encoded))] for segments in segment_lists]


class Assembler:
    """Concatenates a prompt's ids. The first text of the prompt is encoded the tokenizer's own way (with
    SentencePiece's leading space, as CodeLlama's reference format does), all later text as mid-prompt pieces."""

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

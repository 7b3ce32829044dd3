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
OUTLINE_TOKENS = 4096  # filled with the outlines of the best chunks before any goes in whole
WHOLE_MIN_TOKENS = 64  # chunks this short always go in whole
MAX_WHOLE_ESTIMATE = 8192  # chunks estimated longer are not encoded whole (only outlined)


@dataclass(frozen=True)
class ContextItem:
    """A part of the repository included in a prompt: for ``--json`` and the UI."""

    path: str
    start_line: int
    end_line: int
    tokens: int
    outline: bool = False  # only the chunk's outline (signatures, docstring first lines), not its body


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
    """How the chosen chunks are written: the segments that open a file's section and hold a chunk (or its
    outline: None where it has none), and those between two chunks of a file: ``gap`` where code was left out,
    else ``blank`` once per blank line."""

    section: Callable[[Chunk], list[Segment]]
    chunk: Callable[[Chunk], list[Segment]]
    gap: Callable[[Chunk], list[Segment]]
    blank: Callable[[Chunk], list[Segment]]
    code_between: Callable[[Chunk, Chunk], bool]  # whether the file has code between two of its chunks
    outline: Callable[[Chunk], list[Segment] | None] = lambda chunk: None


@dataclass
class Choice:
    """A chunk in the prompt, whole or as its outline, with the tokens it takes encoded on its own."""

    chunk: Chunk
    tokens: int
    outline: bool = False
    whole_tokens: int | None = None  # an outline's chunk, whole (None: not counted yet)


@dataclass
class Selection:
    """Chunks chosen for a budget, grouped by file in the order the files were first chosen (best first), with
    the tokens each took when encoded on its own."""

    layout: Layout
    files: dict[str, list[Choice]] = field(default_factory=dict)
    order: list[Choice] = field(default_factory=list)  # best first
    section_tokens: dict[str, int] = field(default_factory=dict)
    separator_tokens: dict[str, int] = field(default_factory=dict)  # the longer of a gap and the blank lines
    tokens: int = 0  # an upper bound of the whole

    def __bool__(self) -> bool:
        return bool(self.files)

    def chunks(self, path: str) -> list[Chunk]:
        return [choice.chunk for choice in self.files.get(path, [])]

    def opening(self, path: str) -> int:
        """Tokens that one more chunk of ``path`` costs besides its own: a section, or a separator."""
        return self.separator_tokens[path] if path in self.files else self.section_tokens[path]

    def add(self, choice: Choice) -> None:
        path = choice.chunk.path
        self.tokens += choice.tokens + self.opening(path)
        self.files.setdefault(path, []).append(choice)
        self.order.append(choice)

    def make_whole(self, choice: Choice) -> None:
        """Show an outlined chunk whole instead."""
        self.tokens += choice.whole_tokens - choice.tokens
        choice.tokens, choice.outline = choice.whole_tokens, False

    def drop_last(self) -> None:
        """Remove the least relevant chunk (the one chosen last)."""
        choice = self.order.pop()
        path = choice.chunk.path
        self.files[path].remove(choice)
        self.tokens -= choice.tokens + (self.separator_tokens[path] if self.files[path] else self.section_tokens[path])
        if not self.files[path]:
            del self.files[path]

    def ordered(self) -> Iterator[tuple[str, list[Choice]]]:
        """Files from the least to the most relevant, each with its chunks in line order."""
        for path in reversed(self.files):
            yield path, sorted(self.files[path], key=lambda choice: choice.chunk.start_line)

    def segments(self) -> tuple[list[Segment], list[ContextItem]]:
        """All sections in ``ordered`` order, as the pieces that were counted, and the items."""
        segments: list[Segment] = []
        items = []
        layout = self.layout
        for path, choices in self.ordered():
            segments += layout.section(choices[0].chunk)
            cost = self.section_tokens[path]
            previous = None
            for choice in choices:
                chunk = choice.chunk
                if previous is not None:
                    if layout.code_between(previous, chunk):
                        segments += layout.gap(chunk)
                    else:
                        segments += layout.blank(chunk) * min(chunk.start_line - previous.end_line - 1, MAX_BLANK_LINES)
                    cost = self.separator_tokens[path]
                segments += layout.outline(chunk) if choice.outline else layout.chunk(chunk)
                items.append(ContextItem(path, chunk.start_line, chunk.end_line, cost + choice.tokens, choice.outline))
                previous = chunk
        return segments, items


def select_chunks(encoder: Encoder, layout: Layout, ranked: Iterable[tuple[float, Chunk]], budget: int) -> Selection:
    """Take ranked chunks, best first, while they fit into ``budget`` tokens (sections and gaps included).

    First the best candidates go in as outlines (chunks shorter than WHOLE_MIN_TOKENS whole) until they fill
    the budget or OUTLINE_TOKENS, so that a small budget holds the definitions of many names; then those
    outlines become whole chunks, best first, as far as the budget allows; then the rest of the ranking goes
    in whole where it fits, else outlined. A large budget so carries the bodies of the best chunks, and the
    outlines of many more."""
    selection = Selection(layout)
    candidates = _Candidates(encoder, layout, ranked)
    misses = 0
    for chunk, whole in candidates:
        if selection.tokens >= min(budget, OUTLINE_TOKENS) or misses >= GIVE_UP_AFTER:
            candidates.put_back(chunk, whole)
            break
        misses = 0 if _take(encoder, selection, chunk, whole, budget, outline_first=True) else misses + 1
    for choice in selection.order:
        room = budget - selection.tokens + choice.tokens
        if choice.outline and choice.chunk.approx_tokens <= 2 * room:
            if choice.whole_tokens is None:
                choice.whole_tokens = len(encode_all(encoder, [layout.chunk(choice.chunk)])[0])
            if choice.whole_tokens <= room:
                selection.make_whole(choice)
    for chunk, whole in candidates:
        if selection.tokens >= budget or misses >= GIVE_UP_AFTER:
            break
        misses = 0 if _take(encoder, selection, chunk, whole, budget, outline_first=False) else misses + 1
    return selection


class _Candidates:
    """Ranked chunks with the tokens each takes whole (None when surely too long to be worth encoding),
    encoded ENCODE_BATCH at a time."""

    def __init__(self, encoder: Encoder, layout: Layout, ranked: Iterable[tuple[float, Chunk]]):
        self.encoder, self.layout, self.ranked = encoder, layout, iter(ranked)
        self.ready: list[tuple[Chunk, int | None]] = []

    def __iter__(self):
        return self

    def __next__(self) -> tuple[Chunk, int | None]:
        if not self.ready:
            batch = [chunk for _, (_, chunk) in zip(range(ENCODE_BATCH), self.ranked)]
            if not batch:
                raise StopIteration
            worth = [c for c in batch if c.approx_tokens <= MAX_WHOLE_ESTIMATE]
            costs = dict(zip(map(id, worth), map(len, encode_all(self.encoder, [self.layout.chunk(c) for c in worth]))))
            self.ready = [(chunk, costs.get(id(chunk))) for chunk in reversed(batch)]
        return self.ready.pop()

    def put_back(self, chunk: Chunk, whole: int | None) -> None:
        self.ready.append((chunk, whole))


def _take(encoder: Encoder, selection: Selection, chunk: Chunk, whole: int | None, budget: int,
          outline_first: bool) -> bool:
    """Add a chunk whole or as its outline if either fits; whether it went in."""
    layout = selection.layout
    path = chunk.path
    if path not in selection.section_tokens:
        section, gap, blank = encode_all(encoder, [layout.section(chunk), layout.gap(chunk), layout.blank(chunk)])
        selection.section_tokens[path] = len(section)
        selection.separator_tokens[path] = max(len(gap), MAX_BLANK_LINES * len(blank))
    left = budget - selection.tokens - selection.opening(path)
    if whole is not None and whole <= left and (not outline_first or whole <= WHOLE_MIN_TOKENS):
        selection.add(Choice(chunk, whole))
        return True
    outlined = layout.outline(chunk)
    if outlined is not None:
        tokens = len(encode_all(encoder, [outlined])[0])
        if tokens <= left and (whole is None or tokens < whole):
            selection.add(Choice(chunk, tokens, outline=True, whole_tokens=whole))
            return True
    if whole is not None and whole <= left:  # no shorter outline: whole after all
        selection.add(Choice(chunk, whole))
        return True
    return False


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

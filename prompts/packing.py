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
from itertools import chain, islice
from typing import TYPE_CHECKING

from .chunking import Chunk
from .formats import Segment
from .tokens import Encoder

if TYPE_CHECKING:
    from .chat import HeldExcerpts
    from .holding import HeldContext

ENCODE_BATCH = 32  # candidates encoded per call to the tokenizer
MAX_BLANK_LINES = 2  # blank lines kept between two chunks shown together (PEP 8's two between definitions)
GIVE_UP_AFTER = 64  # candidates in a row that did not fit: the budget is as full as it will get
OUTLINE_TOKENS = 4096  # filled with the compact forms of the best chunks before any goes in whole
BRIEF_TOKENS = 512  # ... of which briefs (where asked for) fill the first: a small budget's many definitions
WHOLE_MIN_TOKENS = 64  # chunks this short always go in whole
CHARS_PER_TOKEN_AT_MOST = 8  # ordinary code: a text of more than 8 x N characters takes more than N tokens

WHOLE, OUTLINE, BRIEF = "whole", "outline", "brief"  # the forms a chunk is shown in, longest first
EXAMPLE = "example"  # one line of a chunk, shown for the model to copy its shape (examples.py)


@dataclass(frozen=True)
class ContextItem:
    """A part of the repository included in a prompt: for ``--json`` and the UI."""

    path: str
    start_line: int
    end_line: int
    tokens: int
    form: str = WHOLE  # or OUTLINE (signatures, docstring first lines), BRIEF (what a caller needs): no body;
                       # or EXAMPLE: one line
    buffer: bool = False  # the lines are rows of the editor's text of the file being completed (its window, and its
                          # chunks where they lie on its rows), not lines of the file as indexed (the disk's)

    @property
    def outline(self) -> bool:
        """Whether only an outline or brief of the lines went in."""
        return self.form in (OUTLINE, BRIEF)


@dataclass
class PackedPrompt:
    """A prompt ready for the model."""

    ids: list[int]  # special tokens included; never longer than the budget
    context: list[ContextItem]  # what was included, in prompt order
    stop_token_ids: list[int]
    stop_strings: list[str]
    format: str  # "codellama-infill" | "starcoder-fim" | "left-to-right" | "chat" | "raw"
    heal_text: str = ""  # left out of the prompt's end: the generation must begin with it (token healing)
    chosen: list[tuple[str, int]] = field(default_factory=list)  # repository chunks (path, first line), in the
                                                                  # order chosen: the next prompt's `previous`
    cut: bool = False  # the current file's text did not fit whole: its far ends gave way (llama.cpp's `truncated`)
    history: int = 0  # chat: the earlier messages carried before the question (older ones gave way to the budget)
    anchor: tuple[int, str] | None = None  # completion: a row where a block of the current file began (0-based) and
                                            # the text of its first rows: the next prompt's `anchor`
    line_end: str = "\n"  # completion and raw: the client's text's ("\r\n" where it had one; a completion's "\r"
                          # where its breaks are lone CRs: scan.line_end), which the prompt reads as "\n": the text
                          # generated is to be written with it
    held: HeldContext | HeldExcerpts | None = None  # its repository context as the next prompt may hold it:
                                                     # a completion's (holding.py), a chat's excerpts (chat.py)


@dataclass(frozen=True)
class Layout:
    """How the chosen chunks are written: the segments that open a file's section and hold a chunk (or its
    outline, or its brief: None where it has none), and those between two chunks of a file: ``gap`` where code
    was left out, else ``blank`` once per blank line."""

    section: Callable[[Chunk], list[Segment]]
    chunk: Callable[[Chunk], list[Segment]]
    gap: Callable[[Chunk], list[Segment]]
    blank: Callable[[Chunk], list[Segment]]
    code_between: Callable[[Chunk, Chunk], bool]  # whether the file has code between two of its chunks
    outline: Callable[[Chunk], list[Segment] | None] = lambda chunk: None
    brief: Callable[[Chunk], list[Segment] | None] = lambda chunk: None

    def form(self, chunk: Chunk, form: str) -> list[Segment] | None:
        """The segments of a chunk in a form (None: it has no such form)."""
        return self.chunk(chunk) if form == WHOLE else self.outline(chunk) if form == OUTLINE else self.brief(chunk)


@dataclass
class Choice:
    """A chunk in the prompt, whole, outlined or in brief, with the tokens it takes encoded on its own."""

    chunk: Chunk
    tokens: int
    form: str = WHOLE


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

    def reform(self, choice: Choice, form: str, tokens: int) -> None:
        """Show a chosen chunk in a longer form instead (``tokens``: what it takes so)."""
        self.tokens += tokens - choice.tokens
        choice.tokens, choice.form = tokens, form

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
                segments += layout.form(chunk, choice.form)
                items.append(ContextItem(path, chunk.start_line, chunk.end_line, cost + choice.tokens, choice.form))
                previous = chunk
        return segments, items


def select_chunks(encoder: Encoder, layout: Layout, ranked: Iterable[tuple[float, Chunk]], budget: int,
                  selection: Selection | None = None, compact: str = OUTLINE) -> Selection:
    """Take ranked chunks, best first, while they fit into ``budget`` tokens (sections and gaps included).

    First the best candidates go in in a compact form (outlines, or while they take less than BRIEF_TOKENS
    and ``compact`` asks for them, briefs; chunks of up to WHOLE_MIN_TOKENS whole) until they fill the budget
    or OUTLINE_TOKENS, so that a small budget holds the definitions of many names; then those become whole
    chunks (or outlines, from briefs), best first, as far as the budget allows; then the rest of the ranking
    goes in whole where it fits, else outlined. A large budget so carries the bodies of the best chunks, and
    the outlines of many more. Candidates are encoded a batch at a time, and only in the form they are
    considered in.
    Given a ``selection``, it goes on filling that one (``budget`` counts what it holds), skipping its chunks."""
    if selection is None:
        selection = Selection(layout)
    chosen = {(choice.chunk.path, choice.chunk.start_line) for choice in selection.order}
    candidates = iter(chunk for _, chunk in ranked if (chunk.path, chunk.start_line) not in chosen)
    misses, leftover = 0, []
    while selection.tokens < min(budget, OUTLINE_TOKENS) and misses < GIVE_UP_AFTER:
        batch = list(islice(candidates, ENCODE_BATCH))
        if not batch:
            break
        form = compact if selection.tokens < BRIEF_TOKENS else OUTLINE  # (briefs for the first few dozen only)
        forms = [_short_or_compact(layout, chunk, form) for chunk in batch]
        for number, (chunk, (form, segments), tokens) in enumerate(zip(batch, forms, count_all(encoder, [
                segments for _, segments in forms]))):
            if selection.tokens >= min(budget, OUTLINE_TOKENS):
                leftover = batch[number:]
                break
            if _opened(encoder, selection, chunk) + tokens <= budget - selection.tokens:
                selection.add(Choice(chunk, tokens, form))
                misses = 0
            else:
                misses += 1
    _enlarge(encoder, selection, budget)
    for batch in _batches(chain(leftover, candidates)):
        if selection.tokens >= budget or misses >= GIVE_UP_AFTER:
            break
        left = budget - selection.tokens
        worth = [c for c in batch if c.approx_tokens <= 2 * left]  # (longer ones are not worth encoding whole)
        wholes = dict(zip(map(id, worth), count_all(encoder, [layout.chunk(c) for c in worth])))
        hopeless = [c for c in batch if wholes.get(id(c), left + 1) > left]  # whole: neither now nor later
        outlined = [(c, layout.outline(c)) for c in hopeless]
        # (an outline far longer than the room left is not encoded: near a full budget most are)
        outlined = [(c, segments) for c, segments in outlined
                    if segments is not None and _characters(segments) <= CHARS_PER_TOKEN_AT_MOST * left]
        outlines = dict(zip([id(c) for c, _ in outlined], count_all(encoder, [s for _, s in outlined])))
        for chunk in batch:
            taken = _whole_or_outline(encoder, selection, chunk, wholes.get(id(chunk)), outlines.get(id(chunk)), budget)
            misses = 0 if taken else misses + 1
    return selection


def selection_of(encoder: Encoder, layout: Layout, choices: Iterable[tuple[Chunk, str]]) -> Selection | None:
    """The chunks in the forms given, chosen in this order, each counted again (a held context, holding.py: the same
    choices make the same segments, so the same tokens); None where one of them has no such form."""
    selection = Selection(layout)
    choices = list(choices)
    forms = [layout.form(chunk, form) for chunk, form in choices]
    if any(segments is None for segments in forms):
        return None
    for (chunk, form), tokens in zip(choices, count_all(encoder, forms)):
        _opened(encoder, selection, chunk)
        selection.add(Choice(chunk, tokens, form))
    return selection


def _short_or_compact(layout: Layout, chunk: Chunk, compact: str) -> tuple[str, list[Segment]]:
    """A chunk as the first pass considers it: whole when short, else in the most compact form it has of
    ``compact`` and the longer ones."""
    if chunk.approx_tokens > WHOLE_MIN_TOKENS:
        for form in (BRIEF, OUTLINE) if compact == BRIEF else (OUTLINE,):
            segments = layout.form(chunk, form)
            if segments is not None:
                return form, segments
    return WHOLE, layout.chunk(chunk)


def _enlarge(encoder: Encoder, selection: Selection, budget: int) -> None:
    """Chosen chunks shown in a longer form, best first, while the budget allows: whole, or else (briefs)
    outlined."""
    layout = selection.layout
    room = budget - selection.tokens
    worth = [c for c in selection.order if c.form != WHOLE and c.chunk.approx_tokens <= 2 * (room + c.tokens)]
    for choice, tokens in zip(worth, count_all(encoder, [layout.chunk(c.chunk) for c in worth])):
        if tokens <= budget - selection.tokens + choice.tokens:
            selection.reform(choice, WHOLE, tokens)
    briefs = [c for c in selection.order if c.form == BRIEF]
    outlines = [(c, layout.outline(c.chunk)) for c in briefs]
    outlines = [(c, segments) for c, segments in outlines if segments is not None
                and _characters(segments) <= CHARS_PER_TOKEN_AT_MOST * (budget - selection.tokens + c.tokens)]
    for (choice, _), tokens in zip(outlines, count_all(encoder, [segments for _, segments in outlines])):
        if tokens <= budget - selection.tokens + choice.tokens:
            selection.reform(choice, OUTLINE, tokens)


def _whole_or_outline(encoder: Encoder, selection: Selection, chunk: Chunk, whole: int | None,
                      outline: int | None, budget: int) -> bool:
    """Add a chunk whole if it fits, else its outline if that fits; whether it went in. (The tokens each takes,
    if known; an outline not yet counted is counted here.)"""
    left = budget - selection.tokens - _opened(encoder, selection, chunk)
    if whole is not None and whole <= left:
        selection.add(Choice(chunk, whole))
        return True
    if outline is None and whole is not None:  # it fitted when its batch began, no longer
        outlined = selection.layout.outline(chunk)
        outline = None if outlined is None else count_all(encoder, [outlined])[0]
    if outline is not None and outline <= left:
        selection.add(Choice(chunk, outline, OUTLINE))
        return True
    return False


def _opened(encoder: Encoder, selection: Selection, chunk: Chunk) -> int:
    """What one more chunk of this file costs besides itself (a section, or a separator); counted once a file."""
    path = chunk.path
    if path not in selection.section_tokens:
        layout = selection.layout
        section, gap, blank = count_all(encoder, [layout.section(chunk), layout.gap(chunk), layout.blank(chunk)])
        selection.section_tokens[path] = section
        selection.separator_tokens[path] = max(gap, MAX_BLANK_LINES * blank)
    return selection.opening(path)


def _characters(segments: list[Segment]) -> int:
    return sum(len(s) for s in segments if isinstance(s, str))


def _batches(chunks: Iterable[Chunk]) -> Iterator[list[Chunk]]:
    chunks = iter(chunks)
    while batch := list(islice(chunks, ENCODE_BATCH)):
        yield batch


def count_all(encoder: Encoder, segment_lists: list[list[Segment]]) -> list[int]:
    """The tokens each of many segment lists takes, their texts encoded as mid-prompt pieces in one call to the
    tokenizer: packing needs only each form's cost (building the lists of ids took a third of a keystroke's
    packing)."""
    texts = [s for segments in segment_lists for s in segments if isinstance(s, str)]
    lengths = iter(map(len, encoder.encode_many(texts)))
    return [sum(1 if isinstance(segment, int) else next(lengths) for segment in segments) for segments in segment_lists]


class Assembler:
    """Concatenates a prompt's ids. The first text of the prompt is encoded the tokenizer's own way (with
    SentencePiece's leading space, as CodeLlama's reference format does), all later text as mid-prompt pieces."""

    def __init__(self, encoder: Encoder):
        self.encoder = encoder
        self.ids: list[int] = []
        self._text_seen = False

    def add(self, segments: list[Segment], may_lead: bool = True) -> int:
        """Append segments; returns how many ids they took. ``may_lead``: False for text that never opens the
        prompt's text, even when it comes first (a suffix-first infill's suffix: text from the middle of a file)."""
        before = len(self.ids)
        for segment in segments:
            if isinstance(segment, int):
                self.ids.append(segment)
            elif self._text_seen or not may_lead:
                self.ids += self.encoder.encode(segment)
            else:
                self.ids += self.encoder.encode_lead(segment)
                self._text_seen = True
        return len(self.ids) - before

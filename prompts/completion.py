"""The prompt for a completion at a cursor: the text around the cursor, plus the repository context that fits.

The budget is shared like this: the current file's text around the cursor gets up to half (more when the
repository has less to offer), three quarters of that before the cursor; ranked chunks fill the rest; what they
leave goes back to the text around the cursor. The file's share grows in steps, and a cut-off prefix starts at a
line that is a multiple of 32, so that the repository context and the start of the prompt stay the same while
the user types, and the model's prefix cache keeps working.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from pathlib import Path

from .chunking import Chunk, source_imports
from .errors import PromptError
from .formats import CompletionFormat, completion_format
from .imports import resolve_imports
from .index import RepoIndex
from .languages import comment_marker, language_for, language_name
from .packing import Assembler, ContextItem, Layout, PackedPrompt, encode_all, select_chunks
from .ranking import Query, cursor_weights, rank
from .tokens import Encoder, encoder_for

FILE_SHARE = 0.5  # of the budget, for the text around the cursor while the repository has more to offer
PREFIX_SHARE = 0.75  # of the current file's share, before the cursor
SHARE_STEPS = 16  # the current file's share changes in steps of 1/16 of the budget
PREFIX_STEP_LINES = 32  # a cut-off prefix starts at a multiple of this line
MAX_CHARS_PER_TOKEN = 8  # only this many characters per token of budget are tokenized around the cursor

_NEWLINE = re.compile("\n")


def build_completion_prompt(
    index: RepoIndex,
    tokenizer,
    path: str,
    text: str | None = None,
    line: int | None = None,
    col: int | None = None,
    budget_tokens: int = 4096,
    reserve_tokens: int = 0,
) -> PackedPrompt:
    """The prompt for completing ``path`` (relative to the repository root, or absolute inside it) at a cursor.

    ``text`` is the editor's buffer (None: read the file). ``line`` and ``col`` are 1-based; no line means the
    end of the file, no column the end of the line. The ids never exceed ``budget_tokens - reserve_tokens``.
    """
    relative = index.relative_path(path)
    if text is None:
        text = _read(index.root / relative, path)
    text = text.replace("\r\n", "\n")
    rows = text.split("\n")
    row, column = _cursor(rows, line, col)
    offset = sum(len(r) + 1 for r in rows[:row]) + column

    encoder = encoder_for(tokenizer)
    form = completion_format(encoder)
    language = language_name(relative)
    comment = comment_marker(language)
    limit = budget_tokens - reserve_tokens
    before, after = form.cursor(relative, comment, "", "", True)
    fixed = len(encode_all(encoder, [form.opening(index.name, comment, True) + before + after])[0])
    space = limit - fixed - int(encoder.leading_space)  # the first text may gain SentencePiece's leading space
    if space < 1:
        raise PromptError(f"a budget of {limit} tokens cannot hold the {form.name} prompt format ({fixed} tokens)")

    window = _Window(encoder, text, offset, form.fim is not None, space)
    share = window.need if window.need <= space * FILE_SHARE else int(space * FILE_SHARE)
    step = max(1, space // SHARE_STEPS)
    share = min(space, -(-share // step) * step)
    window.fit(share)

    spec = language_for(relative)
    query = Query(
        weights=cursor_weights(rows, row, column, spec.keywords if spec else frozenset()),
        path=relative,
        imported=frozenset(resolve_imports(index.paths, relative, language, source_imports(relative, text))),
        shown=window.lines(),
    )
    layout = Layout(
        section=lambda chunk: form.section(chunk.path, comment),
        chunk=lambda chunk: form.chunk(chunk.text, comment),
        gap=lambda chunk: form.gap(comment_marker(chunk.language), comment),
        blank=lambda chunk: form.blank(comment),
        code_between=index.code_between,
    )
    selection = select_chunks(encoder, layout, rank(index, query), space - share)
    window.grow(space - selection.tokens, selection.chunks(relative))

    while True:
        assembler = Assembler(encoder)
        assembler.add(form.opening(index.name, comment, bool(selection)))
        context_segments, context = selection.segments()
        assembler.add(context_segments)
        context += _add_cursor(assembler, form, relative, comment, window, bool(selection))
        if len(assembler.ids) <= limit:
            break
        # The window's cost was estimated a few tokens short (rare): give up the least relevant chunk, or a line.
        if selection:
            selection.drop_last()
        else:
            window.shrink()
    return PackedPrompt(
        ids=assembler.ids,
        context=context,
        stop_token_ids=list(form.stop_token_ids),
        stop_strings=form.stop_strings(mid_line=bool(rows[row][column:].strip())),
        format=form.name,
    )


def _read(full: Path, shown: str) -> str:
    try:
        return full.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise PromptError(f"no such file: {shown}") from None
    except IsADirectoryError:
        raise PromptError(f"not a file: {shown}") from None
    except OSError as error:
        raise PromptError(f"cannot read {shown}: {error.strerror}") from None


def _cursor(rows: list[str], line: int | None, col: int | None) -> tuple[int, int]:
    """0-based row and column of a 1-based cursor; no line: the end of the file; no column: the end of the line.

    ``rows`` are the text split at every newline, so a file ending with one has an empty last row, as editors
    show it."""
    if line is None:
        if col is not None:
            raise PromptError("a column needs a line")
        return len(rows) - 1, len(rows[-1])
    if not 1 <= line <= len(rows):
        raise PromptError(f"line {line} is out of range: the file has {len(rows)} lines")
    length = len(rows[line - 1])
    if col is None:
        return line - 1, length
    if not 1 <= col <= length + 1:
        raise PromptError(f"column {col} is out of range: line {line} has {length} characters")
    return line - 1, col - 1


def _add_cursor(
    assembler: Assembler, form: CompletionFormat, path: str, comment: str, window: _Window, has_context: bool
) -> list[ContextItem]:
    """Add the text around the cursor; report it as up to two items, before and after the cursor."""
    prefix, suffix = window.prefix(), window.suffix()
    before, after = form.cursor(path, comment, prefix, suffix, has_context)
    first, last = window.lines()
    cursor_line = window.row_of(window.offset) + 1
    items = [ContextItem(path, first, cursor_line, assembler.add(before))]
    tokens = assembler.add(after)
    if suffix:
        items.append(ContextItem(path, cursor_line, last, tokens))
    return items


class _Window:
    """The current file's text around the cursor, where it can be cut, and roughly what each cut costs.

    Costs come from tokenizing the text once and counting the tokens that start on either side of a cut; the
    prompt itself then encodes the chosen text exactly. Cuts fall at line boundaries, except when not even the
    cursor's own line fits.
    """

    def __init__(self, encoder: Encoder, text: str, offset: int, with_suffix: bool, space: int):
        self.text, self.offset = text, offset
        reach = space * MAX_CHARS_PER_TOKEN  # beyond this, text could never fit: a huge file costs no more
        self.low = max(0, offset - reach)
        self.high = min(len(text), offset + reach) if with_suffix else offset
        self.before = [self.low + s for s in encoder.token_starts(text[self.low : offset])]
        self.after = [offset + s for s in encoder.token_starts(text[offset : self.high])] if with_suffix else []
        self.line_starts = ([0] if self.low == 0 else []) + [m.end() for m in _NEWLINE.finditer(text, self.low, offset)]
        self.line_ends = [m.end() for m in _NEWLINE.finditer(text, offset, self.high)]
        if not self.line_ends or self.line_ends[-1] != self.high:
            self.line_ends.append(self.high)
        self.start = self.end = offset
        self.need = len(self.before) + len(self.after)

    def prefix(self) -> str:
        return self.text[self.start : self.offset]

    def suffix(self) -> str:
        return self.text[self.offset : self.end]

    def row_of(self, position: int) -> int:
        return self.text.count("\n", 0, position)

    def lines(self) -> tuple[int, int]:
        """First and last line (1-based) of the file shown around the cursor."""
        last = self.end - 1 if self.end > self.offset and self.text[self.end - 1] == "\n" else self.end
        return self.row_of(self.start) + 1, self.row_of(max(last, self.offset)) + 1

    def _prefix_cost(self, start: int) -> int:
        return len(self.before) - bisect_left(self.before, start)

    def _suffix_cost(self, end: int) -> int:
        return bisect_left(self.after, end)

    def fit(self, share: int, floor: int = 0, ceiling: int | None = None) -> None:
        """Choose the window for ``share`` tokens: up to three quarters before the cursor, unless the text after
        it needs less; never above ``floor`` or below ``ceiling`` (character offsets)."""
        ceiling = self.high if ceiling is None else min(ceiling, self.high)
        floor = max(floor, self.low)
        prefix_need, suffix_need = self._prefix_cost(floor), self._suffix_cost(ceiling)
        suffix_budget = min(suffix_need, share - min(prefix_need, int(share * PREFIX_SHARE)))
        self.start = self._prefix_start(share - suffix_budget, floor)
        self.end = self._suffix_end(share - self._prefix_cost(self.start), ceiling)

    def _prefix_start(self, budget: int, floor: int) -> int:
        starts = self.line_starts[bisect_left(self.line_starts, floor) :]
        # Costs fall as the start moves right: find the first line start that fits.
        fitting = bisect_left(starts, True, key=lambda start: self._prefix_cost(start) <= budget)
        if fitting == len(starts):  # not even the cursor's line fits: keep its last tokens
            keep = min(budget, len(self.before))
            return self.before[len(self.before) - keep] if keep > 0 else self.offset
        if fitting == 0:
            return starts[0]
        row = self.row_of(starts[fitting])
        stable_row = -(-row // PREFIX_STEP_LINES) * PREFIX_STEP_LINES
        skip = stable_row - row  # move down to the next multiple of PREFIX_STEP_LINES, if still before the cursor
        return starts[fitting + skip] if fitting + skip < len(starts) else starts[fitting]

    def _suffix_end(self, budget: int, ceiling: int) -> int:
        ends = self.line_ends[: bisect_right(self.line_ends, ceiling)]
        fitting = bisect_right(ends, False, key=lambda end: self._suffix_cost(end) > budget)
        if fitting == 0:  # not even the rest of the cursor's line fits: keep its first tokens
            return self.after[budget] if budget < len(self.after) else self.offset
        return ends[fitting - 1]

    def grow(self, share: int, same_file: list[Chunk]) -> None:
        """Refit with a larger share, without reaching into chunks of this file already in the context."""
        floor, ceiling = 0, None
        line_offsets = None
        for chunk in same_file:
            if line_offsets is None:
                line_offsets = [0] + [m.end() for m in _NEWLINE.finditer(self.text)]
            if chunk.end_line <= self.row_of(self.start):
                floor = max(floor, line_offsets[min(chunk.end_line, len(line_offsets) - 1)])
            else:
                start = line_offsets[min(chunk.start_line - 1, len(line_offsets) - 1)]
                ceiling = start if ceiling is None else min(ceiling, start)
        self.fit(share, floor, ceiling)

    def shrink(self) -> None:
        """Give up the first line before the cursor, else the last after it, else a token."""
        later = bisect_right(self.line_starts, self.start)
        if self.start < self.offset:
            self.start = self.line_starts[later] if later < len(self.line_starts) else self.start + 1
            self.start = min(self.start, self.offset)
        elif self.end > self.offset:
            self.end = max(self.offset, self.text.rfind("\n", self.offset, self.end - 1) + 1)
        else:
            raise PromptError("the budget is too small for this prompt")

"""The prompt for a completion at a cursor: the text around the cursor, plus the repository context that fits.

The budget is shared like this: the current file's text around the cursor gets up to 40% (more when the
repository has less to offer), three quarters of that before the cursor. Of the rest, up to EXAMPLE_TOKENS go to
example lines (examples.py), laid out just before the current file; of what remains, 60% goes first to the
definitions of the names the cursor uses (as briefs first, then whole), then what is left to the best of
everything else: the current file's own other parts, code like the code at the cursor, the files it imports.
What they leave goes back to the text around the cursor. (Measured with the embedded model, bench/results/
NOTES.md, "Repository context": definitions alone crowd out the nearby code such a small model copies from best;
nearby code alone leaves most definitions out; lines of the cursor line's shape, where the repository has them,
it copies from.)

The current file enters the prompt in blocks of 32 lines, counted from the top of the file, plus the two partial
blocks next to the cursor. While the user types, the blocks further away keep their text and therefore their
tokens: the tokenizer need not see them again, and the model's cache of the prompt's start stays valid. An editor
that sends only the lines around the cursor (llama.vim: the 256 above it) moves the text's top down a line with
every line typed, and blocks counted from there would move over the code with it: so the blocks are counted from
where the last prompt's were (its ``anchor``: a row where one began, found again by its text). The
file's share of the budget grows in steps for the same reason: the repository context does not change with
every keystroke; and within it the text typing changes (the prefix's piece at the cursor) holds its tokens in
steps, so that the far ends of the text before and after the cursor stay where they are while the user types. The
prompt ends one token before the cursor, that token's text left for the model to write (token healing).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import accumulate, chain, islice
from pathlib import Path

from .alignment import BufferLines
from .chunking import Chunk, source_imports
from .errors import BudgetError, PromptError
from .examples import example_key, example_lines
from .formats import CompletionFormat, Segment, completion_format
from .holding import (HEAD, HeldContext, Place, found_again, held_chunks, held_examples, still_at,
                      still_wanted)
from .imports import completions, follow_imports, qualified_definitions, qualifier_files
from .index import RepoIndex
from .inherited import inherited_members
from .languages import comment_marker, language_family, language_for, language_name
from .members import type_members
from .variables import variable_members
from .outline import brief, outline
from .packing import (BRIEF, CHARS_PER_TOKEN_AT_MOST, EXAMPLE, Assembler, ContextItem, Layout, PackedPrompt, Selection,
                      count_all, select_chunks, selection_of)
from .ranking import Query, cursor_terms, ordered, score_both
from .scan import MAX_BUFFER_BYTES, MAX_FILE_BYTES, decode_source, line_end, read_regular_file, unix_newlines
from .tokens import Encoder, encoder_for, tokenizable

FILE_SHARE = 0.4  # of the budget, for the text around the cursor while the repository has more to offer
NAME_TOKENS = 32  # the file name's tokens an editor's chunks leave room for, whichever file is completed
PREFIX_SHARE = 0.75  # of the current file's share, before the cursor
DEFINITION_SHARE = 0.6  # of the repository's share, first for the definitions of the names the cursor uses
EXAMPLE_TOKENS = 128  # at most, of the repository's share (and at most half of it), for example lines
EXAMPLE_CHUNKS = 200  # the best chunks of the context ranking that example lines are taken from
SHARE_STEPS = 16  # the current file's share changes in steps of 1/16 of the budget, and the cursor's piece holds
                  # its share in steps of 1/16 of that
BLOCK_LINES = 32  # the current file enters the prompt in blocks of this many lines
PART_LINES = 8  # a block too large for what is left enters by its nearest parts of this many lines
ENCODE_AHEAD = 8  # blocks encoded per call to the tokenizer
LONGEST_TOKEN = 128  # characters: longer than any token of a real vocabulary (SmolLM2's longest is 81)
USUAL_TOKEN_CHARS = 8  # characters a token covers at most in ordinary code (3-4 on average)
HEAL_LOOKBACK = 256  # characters before the cursor that decide where its last token starts
AHEAD_CHARS = 16384  # longer pieces are encoded only once they are needed, never ahead
FRESH = 4  # of each ranking's best, those the last prompt did not have go first (if above all it had)
ANCHOR_LINES = 4  # rows whose text marks where a block began (the next prompt's blocks are counted from there)
ANCHOR_CHARS = 4096  # longer rows mark nothing
KEEP_REACH, KEEP_SLACK = 2, 16  # a chunk of the last prompt keeps its place while it ranks within 2 N + 16 (N: how
                                # many that prompt chose)


def build_completion_prompt(
    index: RepoIndex,
    tokenizer,
    path: str,
    text: str | None = None,
    line: int | None = None,
    col: int | None = None,
    budget_tokens: int = 4096,
    reserve_tokens: int = 0,
    extra: Sequence[tuple[str, str]] = (),
    *,
    heal: bool = True,
    previous: Sequence[tuple[str, int]] = (),
    anchor: tuple[int, str] | None = None,
    suffix_first: bool = False,
    held: HeldContext | None = None,
) -> PackedPrompt:
    """The prompt for completing ``path`` (relative to the repository root, or absolute inside it) at a cursor.

    ``text`` is the editor's buffer (None: read the file). ``line`` and ``col`` are 1-based; no line means the
    end of the file, no column the end of the line. The ids never exceed ``budget_tokens - reserve_tokens``.
    ``extra`` holds chunks an editor chose, ``(filename, text)`` oldest first (llama.cpp's ``input_extra``): they
    go ahead of the ranked repository context, the newest kept when not all fit.
    ``heal``: leave the last token before the cursor to the model (``PackedPrompt.heal_text``).
    ``previous``: the repository chunks the last prompt at this file chose (``PackedPrompt.chosen``): those that
    still rank near the top keep their places, so the prompt's start, and the model's cache of it, survive the
    small shifts of ranking that moving to the next line makes.
    ``anchor``: the last prompt's at this file (``PackedPrompt.anchor``): where its blocks of the current file began,
    so that they begin at the same text again wherever the editor's text now starts.
    ``suffix_first``: a FIM format's text after the cursor goes before the text before it (SPM, formats.py), so
    that the prompt ends at the cursor.
    ``held``: the last prompt's at this file (``PackedPrompt.held``): its repository context, kept token for token
    while the cursor stays near where it was chosen and the ranking does not clearly prefer other chunks (holding.py),
    and with it its example lines while lines that begin as the cursor's line now does are no more among the fresh
    ones than among them, and the cursor's line goes on as the one they were found for or the file's window begins
    where the last prompt's began; a cursor that left that place gets the context of its new place, ``previous``
    ignored.
    """
    relative = index.relative_path(path)
    imports = index.imports(relative) if text is None else None  # the file as indexed, unless it is being edited
    if text is None:
        text = _read(index.root / relative, path)
    ends = line_end(text)
    text = unix_newlines(tokenizable(text))      # (a caller's lone surrogates: U+FFFD, as the app's own)
    rows = text.split("\n")
    row, column = _cursor(rows, line, col)

    encoder = encoder_for(tokenizer)
    form = completion_format(encoder, suffix_first)
    language = language_name(relative)
    comment = comment_marker(language)
    limit = budget_tokens - reserve_tokens
    fixed = _fixed_tokens(encoder, form, index.name, relative, comment)
    space = limit - fixed - int(encoder.leading_space)  # the first text may gain SentencePiece's leading space
    if space < 1:
        raise BudgetError(f"a prompt budget of {limit} tokens cannot hold the {form.name} format's own tokens and "
                          f"the file name {relative} ({fixed} tokens) and any code: it takes at least "
                          f"{limit - space + 1} tokens")

    if held is not None and not still_at(held.place, rows, row):
        held, previous = None, ()       # (another place: what the last prompt chose is no guide here)
    heal_text = _partial_token(encoder, rows, row, column) if heal else ""
    window = _Window(encoder, text, rows, row, column, with_suffix=form.fim is not None, heal=len(heal_text),
                     origin=_block_origin(rows, anchor), suffix_first=form.suffix_first)
    share = _file_share(window, space)
    window.fit(share)
    if imports is None:     # a buffer's, from as much of it as the index reads of a file: its grammar's query
        head = text[:MAX_FILE_BYTES]    # reads 0.6 MB a second at worst (a 64 MiB buffer: two minutes a keystroke)
        imports = source_imports(relative, head[:head.rfind("\n") + 1] if len(text) > MAX_FILE_BYTES else text)
    # The file's chunks are numbered by the disk's lines, the window by the buffer's rows: compared through their text
    own = index.entries[relative].chunks if relative in index.entries else ()
    lines = BufferLines(own, rows) if own else None
    query = _query(index, relative, language, imports, rows, row, column,
                   lines and lines.lines_on(*(line - 1 for line in window.lines())))
    wanted = frozenset(query.weights).union(query.imported_names)  # names whose definitions a brief shows

    def layout_showing(wanted: frozenset[str]) -> Layout:  # (a brief shows the wanted names)
        return Layout(
            section=lambda chunk: form.section(chunk.path, comment),
            chunk=lambda chunk: form.chunk(chunk.text, comment),
            gap=lambda chunk: form.gap(comment_marker(chunk.language), comment),
            blank=lambda chunk: form.blank(comment),
            code_between=index.code_between,
            outline=lambda chunk: _outlined(form, chunk, comment),
            brief=lambda chunk: _outlined(form, chunk, comment, wanted),
        )
    # (their room costs an encoding of the format's markers: only a request with chunks pays it, not every keystroke)
    extras = _fit_extra(encoder, form, comment, extra,
                        _extra_room(encoder, form, index.name, comment, limit, space)) if extra else []
    given = sum(tokens for _, _, tokens in extras)
    if share > space - given:   # (a file needing a little more than its largest share: the chunks' room stays theirs)
        share = space - given
        window.fit(share)
    definition_scores, scores = score_both(index, query)
    definitions, ranked = ordered(index, query, definition_scores), ordered(index, query, scores)
    head = list(islice(definitions, HEAD))      # (a held context is judged by these on their own too)
    definitions = chain(head, definitions)
    best = list(islice(ranked, EXAMPLE_CHUNKS))  # (example lines come from these; they are ranked again below)
    spec = language_for(relative)
    key = example_key(rows[row][:column], spec.keywords if spec else frozenset())
    found = example_lines((chunk for _, chunk in best), key)
    example_room = min(EXAMPLE_TOKENS, (space - share - given) // 2)
    examples = _fit_examples(encoder, form, comment, found, example_room)
    # The definitions of what the cursor uses get their part of the repository's share first; code like the
    # code at the cursor (the file's own other parts first) the rest. The examples' room is kept whether or not
    # lines like the cursor's are found: the context must not grow and shrink with them as the cursor moves.
    repository = space - share - given - example_room
    layout = layout_showing(wanted)
    selection = select_chunks(encoder, layout, _keep_previous(definitions, previous),
                              int(repository * DEFINITION_SHARE), compact=BRIEF)
    selection = select_chunks(encoder, layout, _keep_previous(chain(best, ranked), previous), repository, selection)
    # The last prompt's context, token for token, unless the cursor left its place or the choice just made is
    # clearly better (holding.py): a word typed nudges the scores, and a nudge must not cost the model's cache.
    if held is not None:
        # (its room: what the file's text leaves, not its share: a file that fits whole has its share in steps, and
        # a step crossed as the text grows would otherwise push the context out, where the window needs no more)
        room = repository + share - min(window.need(up_to=share), share)
        kept = _held_selection(index, encoder, layout_showing(held.wanted), held, query, room)
        if kept is not None and still_wanted(index, [choice.chunk for choice in kept.order],
                                             [choice.chunk for choice in selection.order], scores,
                                             [chunk for _, chunk in head], definition_scores):
            selection = kept
        else:
            held = None
    # The example lines held with the context, unless the fresh ones are clearly better (holding.py): a word completed
    # on the cursor's line changes what they look for, and a change of them prefills the file's window again.
    # While the file's window begins where it began in the last prompt, lines found for another line (a new line,
    # one typed over) stay until better ones are found, as a change of them would prefill the whole window again;
    # once the window moves (a far end crossed a step, a part gave way), it is prefilled again anyway, and those
    # give way.
    if held is not None:
        shown_lines = query.shown and (relative, *query.shown)
        held_lines = held_examples(index, held, key, len(examples), shown_lines)
        kept = _fit_examples(encoder, form, comment, held_lines, example_room) if held_lines is not None else []
        if held_lines is None or len(kept) != len(held_lines):
            kept = None
        elif not key.startswith(held.example_key):      # found for another line: where does the window begin now?
            window.fit(space - given - sum(tokens for _, _, tokens in kept) - selection.tokens,
                       avoid=_avoided(lines, relative, selection))
            if _window_start(window, form) != held.window_start:
                kept = None
        if kept is not None:
            examples = kept
        else:
            held = replace(held, examples=_example_choices(found, examples), example_key=key)
    shown = sum(tokens for _, _, tokens in examples)
    # The room examples did not use goes to the file's window: both follow the repository's context, so a change
    # of examples re-reads the window anyway, while the context's tokens, and the model's cache of them, stay.
    given += shown
    window.fit(space - given - selection.tokens, avoid=_avoided(lines, relative, selection))  # what the context left
    offered, step = space - given - selection.tokens, max(1, space // SHARE_STEPS)
    # (the examples' room stays theirs or the window's, as when the context was chosen: the context must not grow and
    # shrink with the example lines found)
    spare = offered + shown - example_room - window.tokens
    if spare >= step and window.walled(offered):
        # A line too long for the whole prompt stopped the window (it has no holes): the room it cannot use goes to
        # more of the repository's context, in whole steps, so that typing at the cursor seldom moves it; the window
        # is fitted again clear of the chunks that came in.
        more = spare // step * step
        selection = select_chunks(encoder, layout, _keep_previous(ordered(index, query, scores), previous),
                                  selection.tokens + more, selection)
        window.fit(space - given - selection.tokens, avoid=_avoided(lines, relative, selection))

    while True:
        has_context = bool(selection or extras or examples)
        assembler = Assembler(encoder)
        assembler.add(form.opening(index.name, comment, has_context))
        context = [replace(item, tokens=assembler.add(segments)) for segments, item, _ in extras]
        context_segments, ranked = selection.segments()
        assembler.add(context_segments)
        context += _on_rows(lines, relative, ranked + [replace(item, tokens=assembler.add(segments))
                                                       for segments, item, _ in examples])
        context += _add_cursor(assembler, form, relative, comment, window, has_context)
        excess = len(assembler.ids) - limit
        if excess <= 0:
            break
        # Every piece was counted exactly; only a tokenizer whose leading space defeats the infill encoding
        # (tokens.py) gets here. Give up the least relevant chunk, the oldest extra one, or lines of the file.
        if selection:
            selection.drop_last()
        elif extras:
            extras.pop(0)
        elif examples:
            examples.pop()
        elif window.tokens > 0:
            before = window.tokens
            window.fit(before - excess)
            if window.tokens >= before:     # no smaller cut of the text fits (it did not shrink): none of it, then
                window.fit(0)
        else:
            raise BudgetError(f"a prompt budget of {limit} tokens does not hold even the prompt format's markers")
    choices = tuple((choice.chunk.path, choice.chunk.start_line, choice.form) for choice in selection.order)
    if held is not None:    # (what the loop gave up is not held: the next prompt holds what this one holds)
        shown_examples = _shown_examples(examples)
        held = replace(held, choices=choices,
                       examples=tuple(line for line in held.examples if line[:2] in shown_examples),
                       window_start=_window_start(window, form))
    return PackedPrompt(
        ids=list(assembler.ids),
        context=context,
        stop_token_ids=list(form.stop_token_ids),
        stop_strings=form.stop_strings(mid_line=bool(rows[row][column:].strip())),
        format=form.name,
        heal_text=heal_text,
        chosen=[(choice.chunk.path, choice.chunk.start_line) for choice in selection.order],
        cut=not window.whole(),
        anchor=window.anchor(),
        line_end=ends,
        held=held or HeldContext(choices, wanted, Place(row, window.anchor()), _example_choices(found, examples), key,
                                 _window_start(window, form)),
    )


def smallest_budget(tokenizer, repo_name: str, path: str, *, suffix_first: bool = False) -> int:
    """The fewest prompt tokens (``budget_tokens - reserve_tokens``) that ``build_completion_prompt`` accepts for a
    file at ``path`` (relative) in a repository named ``repo_name``: the completion format's own tokens with the
    names it writes, and room for one token of code. A smaller budget is its BudgetError whatever the text."""
    encoder = encoder_for(tokenizer)
    form = completion_format(encoder, suffix_first)
    fixed = _fixed_tokens(encoder, form, repo_name, path, comment_marker(language_name(path)))
    return fixed + int(encoder.leading_space) + 1


def _fixed_tokens(encoder, form, repo_name: str, relative: str, comment: str) -> int:
    """The tokens every completion prompt for ``relative`` takes, whatever its text and context: the format's
    opening and cursor markers with the repository's and the file's names (laid out as with context: the most)."""
    before, after = form.cursor(relative, comment, [], [], True)
    return count_all(encoder, [form.opening(repo_name, comment, True) + before + after])[0]


def _on_rows(lines: BufferLines | None, path: str, items: list[ContextItem]) -> list[ContextItem]:
    """The items, those of the file being completed (``path``) numbered as the window is, by the rows of the editor's
    text, where they lie on its rows (else by the disk's lines, as the index has them: unsaved deletions, lines outside
    the part of the file an editor sent)."""
    def on_rows(item: ContextItem) -> ContextItem:
        span = lines.rows_on(item.start_line, item.end_line) if item.path == path and lines else None
        return item if span is None else replace(item, start_line=span[0] + 1, end_line=span[1] + 1, buffer=True)

    return [on_rows(item) for item in items]


def _keep_previous(ranked: Iterator[tuple[float, Chunk]], previous: Sequence[tuple[str, int]]
                   ) -> Iterator[tuple[float, Chunk]]:
    """The ranking, reordered for a prompt that changes little: of the FRESH best, those ranked above all that the
    last prompt had first (what became most relevant always gets in; chosen first, it is laid out nearest the
    cursor), then the last prompt's chunks that still rank within reach of the top, in the order that prompt
    chose them (so they are laid out as before, and the prompt's start with them), then the rest of the ranking."""
    if not previous:
        yield from ranked
        return
    order = {key: number for number, key in enumerate(previous)}
    head = list(islice(ranked, FRESH + KEEP_REACH * len(previous) + KEEP_SLACK))
    known = [(item[1].path, item[1].start_line) in order for item in head]
    # Only the fresh ones ranked above every kept one go first: one ranked below a kept one was passed over
    # for it last time, and put first now it would push that one out, which would come back first next time
    # (the same request twice made two prompts, in turn, and the cache kept neither's start).
    fresh = min(FRESH, known.index(True) if True in known else len(head))
    yield from head[:fresh]
    yield from sorted((item for item, was in zip(head, known) if was),
                      key=lambda item: order[item[1].path, item[1].start_line])
    yield from (item for item, was in zip(head[fresh:], known[fresh:]) if not was)
    yield from ranked


def _block_origin(rows: list[str], anchor: tuple[int, str] | None) -> int:
    """Where the current file's blocks begin, as a row modulo BLOCK_LINES: at the anchor's text where it is found
    again (holding.found_again), else at the top."""
    found = found_again(rows, anchor) if anchor is not None else None
    return 0 if found is None else found % BLOCK_LINES


def _held_selection(index: RepoIndex, encoder: Encoder, layout: Layout, held: HeldContext, query: Query,
                    room: int) -> Selection | None:
    """The held context as this prompt's selection, where it may still hold: every chunk still in the index in its
    form and none in the lines of the file the prompt shows, all within ``room``. (Whether the cursor is still at its
    place is asked first, whether the ranking still wants it after: holding.py.)"""
    chunks = held_chunks(index, held)
    first, last = query.shown or (0, -1)
    if chunks is None or any(chunk.path == query.path and chunk.start_line <= last and chunk.end_line >= first
                             for chunk, _ in chunks):
        return None
    kept = selection_of(encoder, layout, chunks)
    return kept if kept is not None and kept.tokens <= room else None


def _partial_token(encoder: Encoder, rows: list[str], row: int, column: int) -> str:
    """Token healing: the text of the last token before the cursor, which the prompt leaves for the model to
    write. A prompt ending inside a token the model would write whole (a space before a word, indentation
    after a newline, a partly typed name) ends where the model has hardly ever been in training; ending one
    token earlier, with generation constrained to begin with that token's text, avoids it. Nothing is healed
    when that token is all the text before the cursor (the prompt would lose the file's whole start)."""
    tail, earlier = rows[row][:column][-HEAL_LOOKBACK:], row
    while len(tail) < HEAL_LOOKBACK and earlier > 0:  # the text before the cursor, a few hundred characters
        earlier -= 1
        tail = rows[earlier][-HEAL_LOOKBACK:] + "\n" + tail
    last = encoder.last_token(tail)
    return "" if len(last) >= len(tail) else last


def _query(index: RepoIndex, path: str, language: str, imports, rows: list[str], row: int, column: int,
           shown: tuple[int, int] | None) -> Query:
    """What the cursor's surroundings ask of the repository: the names near it, and what the file imports;
    ``shown``: the lines of the file (as the index numbers them) that the window shows."""
    spec = language_for(path)
    imported = follow_imports(index, path, language, imports)
    terms = cursor_terms(rows, row, column, spec.keywords if spec else frozenset(), comment_marker(language),
                         imported.declared, spec.contextual if spec else frozenset())
    own = {name for number in index.chunk_numbers(path) for name in index.chunks[number].defines}
    module = qualifier_files(index, path, language, imports, imported.modules, terms.qualifier) if (
        terms.qualifier) else []
    members = inherited_members(index, path, language, rows, row, column, imports, imported, terms.counts) or (
        type_members(index, path, terms.qualifier, imported.definitions, imported.files, module, terms.partial,
                     terms.counts) if terms.qualifier else {}) or (
        {} if module else variable_members(index, path, language, rows, row, column, imports, imported, terms.counts))
    return Query(
        weights=terms.weights,
        path=path,
        imported=frozenset(imported.files),
        imported_names=imported.definitions,
        module_at_cursor=module,
        completing=members or completions(index, module, terms.partial, terms.counts),
        local=(terms.local | own) - imported.declared,
        uses=terms.counts,
        shown=shown,
        expects=terms.expects,
        qualified={use: (terms.qualified[use], chunks) for use, chunks in
                   qualified_definitions(index, language, imported.modules, terms.qualified).items()},
        family=language_family(language) if spec else None,     # (a cursor in code keeps to its language)
    )


def _outlined(form: CompletionFormat, chunk: Chunk, comment: str, wanted: frozenset[str] | None = None) -> list | None:
    """The chunk's outline, or (given the ``wanted`` names) its brief, as segments of the format."""
    text = outline(chunk) if wanted is None else brief(chunk, wanted)
    return None if text is None else form.chunk(text, comment)


def _extra_room(encoder: Encoder, form: CompletionFormat, repo_name: str, comment: str, limit: int,
                space: int) -> int:
    """The tokens an editor's chunks may take: what the current file's largest share leaves, counted as for a file
    whose name takes NAME_TOKENS, so that it is one number for every file and cursor at a budget, whatever the
    file's text needs. llama.vim fills the model's cache with its chunks alone (its ring: an empty buffer,
    `n_predict` 0) so that the keystrokes after begin with the same tokens; a room that took a short file's unused
    share cut the oldest chunk at another line than a long file's did, and the next keystroke read the whole prompt
    again (8 of 944 tokens shared at a budget of 1,024). llama.cpp's room for them is likewise n_ctx - n_batch -
    2 n_predict, whatever the file. ``space``: this prompt's, after its own fixed tokens (less only for a longer
    name)."""
    nameless = limit - _fixed_tokens(encoder, form, repo_name, "", comment) - NAME_TOKENS - int(encoder.leading_space)
    return max(0, min(nameless - int(nameless * FILE_SHARE), space - int(space * FILE_SHARE)))


def _fit_extra(
    encoder: Encoder, form: CompletionFormat, comment: str, extra: Sequence[tuple[str, str]], budget: int
) -> list[tuple[list[Segment], ContextItem, int]]:
    """The client's chunks that fit into ``budget``, the newest taken first, in the client's order: each a file
    section of its own, as (segments, the item reporting it, tokens). Only the newest whose characters could fit
    are encoded: a request's thousands of chunks (or one of megabytes) are not, when the budget holds a few. The
    newest chunk that does not fit whole leaves its last lines that do, as llama.cpp keeps the end of the extra
    context (its n_extra_take tokens counted from the end): dropped whole, a chunk larger than the budget left
    none at all."""
    pieces, texts, characters = [], [], 0
    for filename, text in reversed(extra):
        text = unix_newlines(text).removesuffix("\n")     # its lines as the editor shows them (a lone "\r" too)
        if text.strip():
            texts.append((filename, text))
            characters += len(filename) + len(text)
            if characters > CHARS_PER_TOKEN_AT_MOST * budget:
                break
            segments = form.section(filename, comment) + form.chunk(text, comment)
            pieces.append((segments, ContextItem(filename, 1, text.count("\n") + 1, 0)))
    kept = _fit_sections(encoder, pieces, budget)
    if len(kept) < len(texts):
        tail = _tail(encoder, form, comment, *texts[len(kept)], budget - sum(tokens for _, _, tokens in kept))
        kept[:0] = [tail] if tail else []
    return kept


def _tail(encoder: Encoder, form: CompletionFormat, comment: str, filename: str, text: str,
          budget: int) -> tuple[list[Segment], ContextItem, int] | None:
    """The most last lines of a chunk that fit into ``budget`` under its file header, as (segments, item, tokens), or
    None. Only lines whose characters could fit are encoded; each line's own count picks how many, and the section
    is counted whole to check it (pieces merge across a line break), fewer lines until it fits."""
    lines = text.split("\n")
    start, room = len(lines), CHARS_PER_TOKEN_AT_MOST * budget
    while start > 0 and len(lines[start - 1]) < room:
        start -= 1
        room -= len(lines[start]) + 1
    header, *costs = count_all(encoder, [form.section(filename, comment)] + [[f"{line}\n"] for line in lines[start:]])
    take, used = 0, header
    for cost in reversed(costs):
        if used + cost > budget:
            break
        take, used = take + 1, used + cost
    while take > 0 and "\n".join(lines[-take:]).strip():
        segments = form.section(filename, comment) + form.chunk("\n".join(lines[-take:]), comment)
        tokens = count_all(encoder, [segments])[0]
        if tokens <= budget:
            return segments, ContextItem(filename, len(lines) - take + 1, len(lines), 0), tokens
        take = min(take - 1, take * budget // tokens)
    return None


def _fit_examples(encoder: Encoder, form: CompletionFormat, comment: str, found: list[tuple[Chunk, int, str]],
                  budget: int) -> list[tuple[list[Segment], ContextItem, int]]:
    """The example lines that fit into ``budget``, the best taken first, laid out best last (nearest the cursor):
    each a file section of its own, as (segments, the item reporting it, tokens). Lines too long to fit are
    never encoded (a minified line of megabytes)."""
    sections = [(form.section(chunk.path, comment) + form.chunk(line, comment),
                 ContextItem(chunk.path, number, number, 0, EXAMPLE))
                for chunk, number, line in found if len(line) <= CHARS_PER_TOKEN_AT_MOST * budget]
    return _fit_sections(encoder, sections, budget)


def _example_choices(found: list[tuple[Chunk, int, str]], examples: list[tuple[list[Segment], ContextItem, int]]
                     ) -> tuple[tuple[str, int, str], ...]:
    """The example lines the prompt shows (``examples``, fitted from ``found``) as HeldContext keeps them, best
    first."""
    shown = _shown_examples(examples)
    return tuple((chunk.path, number, line) for chunk, number, line in found if (chunk.path, number) in shown)


def _shown_examples(examples: list[tuple[list[Segment], ContextItem, int]]) -> set[tuple[str, int]]:
    """The (path, line number) of each example line the prompt shows."""
    return {(item.path, item.start_line) for _, item, _ in examples}


def _avoided(lines: BufferLines | None, relative: str, selection: Selection) -> list[tuple[int, int]]:
    """The rows of the buffer that chunks of the file in ``selection`` show (the window must not show them again)."""
    if lines is None:
        return []
    return [span for span in map(lines.rows_of, selection.chunks(relative)) if span is not None]


def _window_start(window: _Window, form: CompletionFormat) -> tuple[str, ...]:
    """Where the file's window begins in prompt order, as text typing leaves alone: its far end before the cursor (the
    text of its farthest piece; the first line of the cursor's piece where that is all there is), and, in SPM, where
    the suffix, laid out first, ends. Two prompts whose windows begin alike share their tokens up to the cursor's
    piece (its far blocks do not change): the example lines just before the window are then all that a change of
    them would prefill again."""
    def far(pieces: list[_Piece], before: bool) -> str:
        if not pieces:
            return ""
        if len(pieces) > 1:
            return pieces[-1].text
        text = pieces[0].text
        return text.split("\n", 1)[0] if before else text[-ANCHOR_CHARS:]

    return (far(window.prefix, True),) + ((far(window.suffix, False),) if form.suffix_first else ())


def _fit_sections(encoder: Encoder, sections: list[tuple[list[Segment], ContextItem]],
                  budget: int) -> list[tuple[list[Segment], ContextItem, int]]:
    """Of (segments, item) sections in the order they are wanted, the leading ones that fit into ``budget``, laid
    out the other way round (the most wanted last, nearest the cursor), as (segments, item, tokens)."""
    kept, used = [], 0
    for (segments, item), tokens in zip(sections, count_all(encoder, [segments for segments, _ in sections])):
        if used + tokens > budget:
            break
        kept.append((segments, item, tokens))
        used += tokens
    return kept[::-1]


def _file_share(window: _Window, space: int) -> int:
    """The current file's share of ``space``: all it needs up to FILE_SHARE, in steps of a sixteenth."""
    half = int(space * FILE_SHARE)
    need = window.need(up_to=half)
    if need > half:
        return half
    # (at least a step: a healed prompt's window of one token or none, the cursor below a line it cannot reach past,
    # must not take a step and give it back as a word is typed, the context changing with it)
    return min(space, _in_steps(max(need, 1), max(1, space // SHARE_STEPS)))


def _in_steps(tokens: int, step: int) -> int:
    """``tokens`` rounded up to whole steps: what it decides moves once a step, not with every token typed."""
    return -(-tokens // step) * step


def _read(full: Path, shown: str) -> str:
    try:
        data = read_regular_file(full, MAX_BUFFER_BYTES + 1)  # never a FIFO (it would block) or a device (no end)
    except FileNotFoundError:
        raise PromptError(f"no such file: {shown}") from None
    except IsADirectoryError:
        raise PromptError(f"not a file: {shown}") from None
    except OSError as error:
        raise PromptError(f"cannot read {shown}: {error.strerror}") from None
    except ValueError:  # a NUL, or a surrogate that no file name's bytes decode to (a caller's, not the disk's)
        raise PromptError(f"not a file name: {shown!r}") from None
    if data is None:
        raise PromptError(f"not a regular file: {shown}")
    if len(data) > MAX_BUFFER_BYTES:
        raise PromptError(f"{shown} is over {MAX_BUFFER_BYTES // 2 ** 20} MiB: not a file to complete in")
    return decode_source(data)  # as the index reads a file (UTF-8, or UTF-16 with a byte-order mark)


def _cursor(rows: list[str], line: int | None, col: int | None) -> tuple[int, int]:
    """0-based row and column of a 1-based cursor; no line: the end of the file; no column: the end of the line.

    ``rows`` are the text split at every newline, so a file ending with one has an empty last row, as editors
    show it."""
    if line is None:
        if col is not None:
            raise PromptError("a column needs a line")
        return len(rows) - 1, len(rows[-1])
    if not 1 <= line <= len(rows):
        raise PromptError(f"line {line} is out of range: the file has {len(rows)} line{'s' * (len(rows) != 1)}")
    length = len(rows[line - 1])
    if col is None:
        return line - 1, length
    if not 1 <= col <= length + 1:
        raise PromptError(f"column {col} is out of range: line {line} has {length} character{'s' * (length != 1)}")
    return line - 1, col - 1


def _add_cursor(
    assembler: Assembler, form: CompletionFormat, path: str, comment: str, window: _Window, has_context: bool
) -> list[ContextItem]:
    """Add the text around the cursor; report it as up to two items, before and after the cursor."""
    before, after = form.cursor(
        path, comment, [p.text for p in reversed(window.prefix)], [p.text for p in window.suffix], has_context
    )
    first, last = window.lines()
    tokens = {}
    for segments, is_before in form.in_order(before, after):
        # SPM's suffix comes first but is text from mid-file: no SentencePiece leading space (the prefix gets it)
        tokens[is_before] = assembler.add(segments, may_lead=is_before or not form.suffix_first)
    items = [ContextItem(path, first, window.row + 1, tokens[True], buffer=True)]
    if any(p.text for p in window.suffix):
        items.append(ContextItem(path, window.row + 1, last, tokens[False], buffer=True))
    return items


@dataclass(frozen=True)
class _Piece:
    """Rows first..last (0-based) of the current file, or part of them next to the cursor."""

    first: int
    last: int
    text: str


class _Window:
    """The current file around the cursor as pieces, nearest first: the partial block up to the cursor, then
    whole blocks upwards (the prefix); the partial block from the cursor, then whole blocks downwards (the
    suffix). A window is a run of pieces from the cursor outwards, so it never has holes. The prefix ends
    ``heal`` characters before the cursor: that text is the model's to write (token healing).

    Costs are bounded by the budget, not the file: text longer than LONGEST_TOKEN characters per token of
    the budget cannot fit and is never tokenized whole (a minified line of megabytes)."""

    def __init__(
        self, encoder: Encoder, text: str, rows: list[str], row: int, column: int, with_suffix: bool, heal: int = 0,
        origin: int = 0, suffix_first: bool = False,
    ):
        """``origin``: the blocks begin at the rows equal to it modulo BLOCK_LINES (and at the text's top);
        ``suffix_first``: the prompt lays the suffix out before the prefix (SPM; which far end gives way, `fit`)."""
        self.encoder, self.text, self.row, self.rows = encoder, text, row, rows
        self.suffix_first = suffix_first
        self.starts = [0, *accumulate(len(r) + 1 for r in rows[:-1]), len(text)]  # offset of each row, and the end
        self.cursor = self.starts[row] + column  # where the suffix starts
        self.end = self.cursor - heal  # where the prefix ends
        self.end_row = bisect_right(self.starts, self.end, hi=row + 1) - 1
        self.origin = origin
        top = max(self.end_row - (self.end_row - origin) % BLOCK_LINES, 0)
        self.above = [_Piece(top, self.end_row, text[self.starts[top] : self.end])] + [
            self._block(max(first, 0), first + BLOCK_LINES) for first in range(top - BLOCK_LINES, -BLOCK_LINES,
                                                                               -BLOCK_LINES)
        ]
        bottom = min(row + BLOCK_LINES - (row - origin) % BLOCK_LINES, len(rows))
        self.below = [_Piece(row, bottom - 1, text[self.cursor : self.starts[bottom]])] + [
            self._block(first, first + BLOCK_LINES) for first in range(bottom, len(rows), BLOCK_LINES)
        ] if with_suffix else []
        self._costs: dict[str, int] = {}
        self._avoid: list[tuple[int, int]] = []
        self.prefix: list[_Piece] = []
        self.suffix: list[_Piece] = []
        self.tokens = 0
        self._step = 1  # the prefix's piece at the cursor holds its tokens in steps of this many (`fit`)

    def _block(self, first: int, end: int) -> _Piece:
        last = min(end, len(self.rows))
        return _Piece(first, last - 1, self.text[self.starts[first] : self.starts[last]])

    def anchor(self) -> tuple[int, str] | None:
        """The row where the last block wholly above the cursor's line begins (with a few rows to spare: the next
        prompt looks for their text, which typing does not change), and their text; None above the first one."""
        last = self.row - ANCHOR_LINES
        first = last - (last - self.origin) % BLOCK_LINES
        text = "\n".join(self.rows[first:first + ANCHOR_LINES]) if first >= 0 else ""
        return (first, text) if text and len(text) <= ANCHOR_CHARS else None  # (not megabytes of a minified line)

    def lines(self) -> tuple[int, int]:
        """First and last line (1-based) of the file the window shows."""
        first = self.prefix[-1].first if self.prefix else self.end_row
        last = self.suffix[-1].last if self.suffix else self.row
        return first + 1, last + 1

    def need(self, up_to: int) -> int:
        """Tokens of the whole file, or of as much of it as passes ``up_to`` (then possibly an estimate). A line that
        alone takes more than ``up_to`` (a data URI of hundreds of KB among short lines) is as far as a window of
        ``up_to`` reaches that way, having no holes: the text beyond it is not needed, and the share it would have
        had goes to the rest of the prompt (it stayed unused)."""
        total = 0
        for before, pieces in ((True, self.above), (False, self.below)):
            for number in range(len(pieces)):
                piece = pieces[number]
                if not (_too_long(piece.text, up_to - total) or total + self._cost(pieces, number) > up_to):
                    total += self._cost(pieces, number)
                    continue
                wall = self._wall_in(piece, number, before, up_to)
                if wall is None:
                    return up_to + 1 if _too_long(piece.text, up_to - total) else total + self._cost(pieces, number)
                reach = self._reach(piece, number, before, wall)
                if _too_long(reach, up_to - total):
                    return up_to + 1
                total += self._text_cost(reach)
                if total > up_to:
                    return total
                break       # (the other way, if any)
        return total

    def walled(self, budget: int) -> bool:
        """Whether the window, fitted, ends at a line that alone takes more than ``budget`` tokens on a side where text
        is left (not where the text ends, or a chunk of the context is shown: those leave no room the window could
        have used but the examples', see need)."""
        first = self.prefix[-1].first if self.prefix else self.end_row + 1
        if first > 0 and any(self._is_wall(row, budget) for row in range(first - 1, max(first - PART_LINES, 0) - 1, -1)
                             if row != self.end_row):
            return True
        if not self.below:
            return False
        last = self.suffix[-1].last if self.suffix else self.row - 1
        return any(self._is_wall(row, budget) for row in range(last + 1, min(last + PART_LINES, len(self.rows) - 1) + 1)
                   if row != self.row)

    def _wall_in(self, piece: _Piece, number: int, before: bool, budget: int) -> int | None:
        """The row of ``piece`` nearest the cursor (not the cursor's own: that one is cut within) that alone takes more
        than ``budget`` tokens, if one does."""
        if before:
            rows = range(min(piece.last, self.end_row - 1) if number == 0 else piece.last, piece.first - 1, -1)
        else:
            rows = range(max(piece.first, self.row + 1) if number == 0 else piece.first, piece.last + 1)
        return next((row for row in rows if self._is_wall(row, budget)), None)

    def _is_wall(self, row: int, budget: int) -> bool:
        line = self.rows[row]           # (a line of no more characters than the budget's tokens always fits)
        return len(line) > budget and (_too_long(line, budget) or self._text_cost(line) > budget)

    def _reach(self, piece: _Piece, number: int, before: bool, wall: int) -> str:
        """The text of ``piece`` between the cursor's side and the row ``wall``."""
        if before:
            return self.text[self.starts[wall + 1]:self.end if number == 0 else self.starts[piece.last + 1]]
        return self.text[self.cursor if number == 0 else self.starts[piece.first]:self.starts[wall]]

    def _text_cost(self, text: str) -> int:
        if text not in self._costs:
            self._costs[text] = len(self.encoder.encode(text))
        return self._costs[text]

    def whole(self) -> bool:
        """Whether the window holds all of the text: else its far ends gave way (the text after the cursor is only
        ever part of a window in a format with a suffix)."""
        before, after = sum(len(p.text) for p in self.prefix), sum(len(p.text) for p in self.suffix)
        return before == self.end and (not self.below or after == len(self.text) - self.cursor)

    def fit(self, share: int, avoid: list[tuple[int, int]] | None = None) -> None:
        """Choose the window for ``share`` tokens: up to three quarters before the cursor, more if the text after
        it needs less; never over the rows to ``avoid`` (first, last: those of chunks in the prompt already, as they
        lie in this text; kept for refits).

        Typing changes only the prefix's piece at the cursor. Counted exactly, its tokens moved the far ends of both
        windows whenever they crossed a part's worth (the suffix gets what the prefix leaves), and the model's cache
        prefilled everything after the moved end again; so it counts in steps of a sixteenth of the share, as the
        file's share is of the budget, and a keystroke moves neither far end until it crosses a step. Which end a
        crossing moves depends on the prompt's order (below). A text that fits whole has no far ends to move and is
        taken whole."""
        if avoid is not None:
            self._avoid = avoid
        share = max(share, 0)
        self._step = 1 if self.need(up_to=share) <= share else max(1, share // SHARE_STEPS)
        if self.suffix_first:
            # SPM ([SUF] suffix [PRE] prefix): whichever far end a step crossed moves, the first changed token is the
            # suffix's end or the prefix's top, one [PRE] apart, and the whole prefix is prefilled again; letting the
            # prefix's top alone give way saved that [PRE] but fitted the window worse (it gives way by 8 lines, the
            # suffix's piece at the cursor by one), so both ends follow the stepped count
            _, _, wanted = self._take(self.above, int(share * PREFIX_SHARE), before=True)
            self.suffix, suffix, _ = self._take(self.below, share - wanted)
            self.prefix, prefix, _ = self._take(self.above, share - suffix, before=True)
        else:
            # PSM ([PRE] prefix [SUF] suffix): every new token prefills the suffix again anyway, while a moved top
            # prefills the whole window: the top is chosen from text typing on the line leaves alone (the suffix's
            # quarter, and the cursor's piece up to its line), and the suffix's far end gives way at a step
            _, quarter, _ = self._take(self.below, share - int(share * PREFIX_SHARE))
            top = self.above[0]
            settled = [replace(top, text=top.text[:self.starts[top.last] - self.starts[top.first]])] + self.above[1:]
            far, _, _ = self._take(settled, share - quarter, before=True)
            self.prefix, prefix, held = self._take([top] + far[1:], share, before=True)
            self.suffix, suffix, _ = self._take(self.below, share - held)
        self.tokens = prefix + suffix

    def _take(self, pieces: list[_Piece], budget: int, before: bool = False) -> tuple[list[_Piece], int, int]:
        """The nearest pieces that fit together into ``budget``: the first one cut down if need be, and the next one,
        where it does not fit whole, by its lines nearest the cursor in parts of PART_LINES; as (pieces, their
        tokens, the tokens they hold of the budget: the prefix's piece at the cursor in steps, see `fit`); ``before``:
        they are the prefix's."""
        taken, tokens, held = [], 0, 0
        for number, piece in enumerate(pieces):
            cleared = self._clear_of_avoided(piece, before, number)
            if cleared is not None:  # the window ends where a chunk in the prompt begins, within a block too
                if cleared.first > cleared.last:
                    break
                pieces = pieces[:number] + [cleared]  # (the last piece: the loop ends with it)
                piece = cleared
            too_long = _too_long(piece.text, budget - held)
            if too_long or held + self._cost(pieces, number) > budget:
                if number == 0:  # the cursor's own block is too long: keep the part nearest the cursor
                    block = piece
                    piece = (self._steps_down(piece, budget) if before else None) or piece
                    if _too_long(piece.text, budget) or self._cost([piece], 0) > budget:
                        piece = self._cut(piece, budget, keep_end=before)
                    cost = self._cost([piece], 0)
                    # It fills the budget, however it is cut, but where a line too long for all of it stopped it:
                    # then what it leaves goes to the other side of the cursor (need() counts so)
                    beyond = (range(max(block.first, piece.first - PART_LINES), piece.first) if before
                              else range(piece.last + 1, min(piece.last + PART_LINES, block.last) + 1))
                    walled = any(row != self.row and self._is_wall(row, budget) for row in beyond)
                    return [piece], cost, min(_in_steps(cost, self._step), budget) if walled else budget
                # A cursor in the first lines of its block would otherwise see none of the block above it (at the
                # CPU's 1,024-token budget a dense block of 32 lines does not fit what is left). Only that block: a
                # farther one gives way whole, as the window's far end moves less often so (what it moves, the
                # model's cache prefills again).
                part = self._part(piece, budget - held, keep_end=before) if number == 1 else None
                if part is not None:
                    taken.append(part)
                    tokens += self._cost([part], 0)
                    held += self._cost([part], 0)
                break
            taken.append(piece)
            tokens += self._cost(pieces, number)
            held += min(_in_steps(tokens, self._step), budget) if number == 0 and before else (
                self._cost(pieces, number))
            if cleared is not None:
                break
        return taken, tokens, held

    def _clear_of_avoided(self, piece: _Piece, before: bool, number: int) -> _Piece | None:
        """The ``number``-th piece (``before``: of the prefix's) without the rows to avoid in it and those beyond them,
        the cursor's row kept (no rows left: first past last); None where it has none. Stopped at the block instead,
        a window that grew past the share it had when the context was ranked left out the rows between (their
        chunks, shown then, were not chosen), and in the cursor's own block, which was never stopped, showed a chunk
        the context held (it was not shown then) a second time."""
        inside = [(first, last) for first, last in self._avoid if first <= piece.last and last >= piece.first]
        if not inside:
            return None
        if before:  # (the prefix's pieces begin at their first row)
            first = max(last for _, last in inside) + 1
            first = min(first, self.end_row) if number == 0 else first
            offset = self.starts[min(first, piece.last + 1)] - self.starts[piece.first]
            return _Piece(first, piece.last, piece.text[offset:])
        last = min(first for first, _ in inside) - 1
        last = max(last, self.row) if number == 0 else last
        start = self.cursor if number == 0 else self.starts[piece.first]  # (the suffix's first begins at the cursor)
        return _Piece(piece.first, last, piece.text[:max(self.starts[last + 1] - start, 0)])

    def _part(self, piece: _Piece, budget: int, keep_end: bool) -> _Piece | None:
        """The most of a whole block's lines nearest the cursor that fit into ``budget``, in steps of PART_LINES
        counted from its far end (so that a keystroke, which changes what is left by a token, seldom moves where
        the window starts, and the prompt's start stays what the model's cache holds); None if no step fits."""
        starts, last = self.starts, piece.last + 1
        for lines in range(piece.last - piece.first + 1 - PART_LINES, 0, -PART_LINES):
            first, end = (last - lines, last) if keep_end else (piece.first, piece.first + lines)
            part = _Piece(first, end - 1, self.text[starts[first]:starts[end]])
            if not _too_long(part.text, budget) and self._cost([part], 0) <= budget:
                return part
        return None

    def _steps_down(self, piece: _Piece, budget: int) -> _Piece | None:
        """The cursor's own block, too long for ``budget`` before the cursor: its lines from the first start PART_LINES
        apart counted from the block's top (the same starts as `_part`'s) whose text fits, or the last such start's
        if none does (for `_cut` to go on from). Cut line by line, the window's far end moved down a line with every
        line typed, and the model's cache prefilled the whole window again each time; so it moves once in 8 lines.
        None where the block holds no such start."""
        starts, end = self.starts, self.end
        part = None
        for first in range(piece.first + PART_LINES, piece.last + 1, PART_LINES):
            part = _Piece(first, piece.last, self.text[starts[first]:end])
            if not _too_long(part.text, budget) and self._cost([part], 0) <= budget:
                return part
        return part

    def _cost(self, pieces: list[_Piece], number: int) -> int:
        if pieces[number].text not in self._costs:
            ahead = [p.text for p in pieces[number + 1 : number + ENCODE_AHEAD]]
            batch = [pieces[number].text] + [t for t in ahead if len(t) <= AHEAD_CHARS and t not in self._costs]
            for piece_text, ids in zip(batch, self.encoder.encode_many(batch)):
                self._costs[piece_text] = len(ids)
        return self._costs[pieces[number].text]

    def _cut(self, piece: _Piece, budget: int, keep_end: bool) -> _Piece:
        """The whole lines of ``piece`` nearest the cursor that fit into ``budget``; within the cursor's line, the
        tokens nearest the cursor."""
        text, starts = self.text, self.starts

        def fits(first: int, end: int) -> bool:
            return not _too_long(text[first:end], budget) and len(self.encoder.encode(text[first:end])) <= budget

        if keep_end:  # a prefix piece: drop lines from its start (costs fall as the start moves down)
            end, row = self.end, self.end_row
            rows = range(piece.first, row + 1)
            found = bisect_left(rows, True, key=lambda r: fits(starts[r], end))
            if found < len(rows):
                return _Piece(rows[found], row, text[starts[rows[found]] : end])
            line = text[starts[row] : end]
            return _Piece(row, row, line[len(line) - len(self._tokens_of(line, budget, from_end=True)) :])
        cursor, row = self.cursor, self.row
        ends = range(row + 1, piece.last + 2)  # a suffix piece: drop lines from its end (costs grow with it)
        found = bisect_right(ends, False, key=lambda end: not fits(cursor, starts[end]))
        if found:
            return _Piece(row, ends[found - 1] - 1, text[cursor : starts[ends[found - 1]]])
        return _Piece(row, row, self._tokens_of(text[cursor : starts[row + 1]], budget, from_end=False))

    def _tokens_of(self, line: str, budget: int, from_end: bool) -> str:
        """The text of the ``budget`` tokens at the end (or the start) of a line, tokenizing only a slice of it
        that holds them: first a slice of a usual length, else one no token sequence can exceed."""
        if budget <= 0:
            return ""
        for chars in (budget * USUAL_TOKEN_CHARS, budget * LONGEST_TOKEN):
            part = line[-chars:] if from_end else line[:chars]
            token_starts = self.encoder.token_starts(part)
            if len(token_starts) > budget:
                if not from_end:    # the tokens starting before the budget's first excluded one: at most budget
                    return part[: token_starts[budget]]
                # From the end: the first token of the last `budget` that starts a character of its own (the byte
                # tokens of one character share a start; cut at one of them, the character came whole, and with it
                # more tokens than the budget, and the prompt's fitting loop never ended).
                first = bisect_right(token_starts, token_starts[-budget - 1])
                return part[token_starts[first]:] if first < len(token_starts) else ""
            if len(part) == len(line):
                return line
        return ""  # more than LONGEST_TOKEN characters a token: unreachable with real vocabularies


def _too_long(text: str, budget: int) -> bool:
    """Whether ``text`` surely takes more than ``budget`` tokens, judged by its length alone."""
    return len(text) > max(budget, 0) * LONGEST_TOKEN

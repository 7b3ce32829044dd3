"""Holding a completion's repository context still while the user types at one place.

Each keystroke is a new request, and the ranking is made anew from the words at the cursor: a completed word, or
one more of them, nudges the scores, a chunk near the edge of what fits gives way to another, and the model's
cache prefills everything after the first change again (at 8,192 tokens, ~3,900 tokens for one keystroke). The
context that fits is what matters to the model, not which of two nearly equal chunks it holds; so, as a thermostat
does (hysteresis), a prompt keeps the last prompt's context, the same chunks in the same forms and order and so
the same tokens, unless

- the cursor is no longer where that context was chosen: more than PLACE_LINES rows from there (llama.vim takes
  new chunks of the ring once the cursor moved 32 lines), or the text that marked the place is gone;
- it no longer fits the room the repository's context has now, or a chunk of it is gone from the index, lost its
  form, or is now in the file's own window;
- the ranking now clearly prefers other chunks: what the packer would choose now is worth HOLD_MARGIN more than the
  held ones, worth being the sum of the chunks' scores for this cursor, over all of them or over the head of the
  definitions ranking (its HEAD best: a name just completed whose definition the context lacks is what the model
  needs next, and one more chunk among dozens would hardly move the sum of all).

The example lines (examples.py) are laid out after the context, just before the current file, and are looked up by
the words on the cursor's line: each word completed changes what they look for, and a change of them prefills the
file's whole window again. While the context is held they are held too, unless one of them is gone from the index or
lies in the file's window now, they no longer fit their room, or the fresh lines are clearly better: more of the
fresh ones than of the held ones begin as the cursor's line now does (a word typed that lines of the repository begin
with brings those lines in, once the word is complete; a new name typed begins no line, so the lines of the words
before it stay). Held lines found for another line (the start of the line they were found for, `example_key`, no
longer begins the cursor's line: a new line, or the line typed over) give way too, unless the file's window begins
where the last prompt's began (`HeldContext.window_start`): then they stay until the line finds better ones, since a
change of them would prefill the window again (llama.vim's replay: example lines going at a new line, where nothing
was found yet, prefilled the ~2,600 tokens of the window). Holding them whatever the line finds, while the window
holds, took that replay's last such re-prefill away too, but the line's own lines then came in a quarter as often
and the model lost ~2 points where the prompts differed (bench/results/NOTES.md, "Example lines no longer re-prefill
the window"): one change a line, when its lines are first found, is kept.

A held context is a pure function of the request and the last prompt's `HeldContext`: the same two give the same
prompt. What replaces it is the ranking's own choice (with `previous`, completion.py's, keeping what still ranks
near the top in its place), and the place moves to the cursor.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .chunking import Chunk
from .index import RepoIndex

HOLD_MARGIN = 0.2  # the fresh choice must be worth this much more (a fifth) than the held one to replace it
HEAD = 4  # the definitions ranking's best, whose worth is compared on its own
PLACE_LINES = 32  # rows the cursor may stray from where the context was chosen before it is chosen again
ANCHOR_REACH = 1024  # rows from where a text was that are searched for it


@dataclass(frozen=True)
class Place:
    """Where a cursor was: its row, and rows above it that mark it by their text (their first row and the text: the
    window's anchor; None where the cursor's block is the text's first), so that it is found again in an editor's
    text whose top moves (llama.vim's 256 lines above the cursor)."""

    row: int
    anchor: tuple[int, str] | None


@dataclass(frozen=True)
class HeldContext:
    """A completion prompt's repository context as the next prompt at its file may hold it: the chunks, as (path,
    first line, form) in the order chosen, the names their briefs showed (a brief shows the wanted ones), where
    the cursor was when they were chosen, and the example lines, as (path, line number, line), best first, with the
    start of the cursor's line they were found for (examples.example_key), and where the file's window began in
    prompt order (completion.py's `_window_start`: while it begins there, a change of the example lines is what
    would prefill the window again)."""

    choices: tuple[tuple[str, int, str], ...]
    wanted: frozenset[str]
    place: Place
    examples: tuple[tuple[str, int, str], ...] = ()
    example_key: str = ""
    window_start: tuple[str, ...] = ()


def found_again(rows: list[str], anchor: tuple[int, str]) -> int | None:
    """The row where the anchor's text begins in ``rows``, the nearest its old row first (the editor's text may have
    gained or lost lines above it), above it before below at the same distance (a line typed under it, in an editor
    that sends the lines above the cursor, moves it up); None where it is not within ANCHOR_REACH rows."""
    near, text = anchor
    lines = text.split("\n")
    for distance in range(ANCHOR_REACH):
        # (a tuple, not a set: a set of two ints iterates by their hash modulo its table's size, so which of the two
        # came first depended on the row)
        for found in (near - distance, near + distance) if distance else (near,):
            if 0 <= found < len(rows) and rows[found] == lines[0] and rows[found:found + len(lines)] == lines:
                return found
    return None


def still_at(place: Place, rows: list[str], row: int) -> bool:
    """Whether a cursor at ``row`` of ``rows`` is within PLACE_LINES rows of ``place``, measured from the place's
    marking rows where it has them."""
    if place.anchor is None:
        return abs(row - place.row) <= PLACE_LINES
    found = found_again(rows, place.anchor)
    return found is not None and abs((row - found) - (place.row - place.anchor[0])) <= PLACE_LINES


def held_chunks(index: RepoIndex, held: HeldContext) -> list[tuple[Chunk, str]] | None:
    """The held choices as (chunk, form) of the index as it is now; None where one of them is gone."""
    chunks = []
    for path, first_line, form in held.choices:
        number = chunk_number(index, path, first_line)
        if number is None:
            return None
        chunks.append((index.chunks[number], form))
    return chunks


def held_examples(index: RepoIndex, held: HeldContext, key: str, fresh: int, shown: tuple[str, int, int] | None
                  ) -> list[tuple[Chunk, int, str]] | None:
    """The held example lines as (chunk, line number, line) of the index as it is now, where they may still hold:
    each still in its chunk as it was and not in the ``shown`` lines (path, first, last) of the file's window, and no
    fewer of them begin with ``key`` (the cursor's line, as examples.example_lines asks of a line) than of the
    ``fresh`` lines found for it; else None. Whatever line they were found for: lines of another line (``key`` no
    longer begins with `example_key`) are the caller's to keep only while the file's window holds (completion.py)."""
    found = []
    for path, number, line in held.examples:
        chunk = _chunk_at(index, path, number)
        if chunk is None or chunk.text.split("\n")[number - chunk.start_line] != line or (
                shown is not None and path == shown[0] and shown[1] <= number <= shown[2]):
            return None
        found.append((chunk, number, line))
    code = [line.strip() for _, _, line in found]
    begins = sum(1 for line in code if key and len(line) > len(key) and line.startswith(key))
    return found if begins >= fresh else None


def _chunk_at(index: RepoIndex, path: str, number: int) -> Chunk | None:
    """The chunk of ``path`` that holds line ``number``, if one does."""
    numbers = index.chunk_numbers(path)
    found = bisect_right(numbers, number, key=lambda at: index.chunks[at].start_line) - 1
    chunk = index.chunks[numbers[found]] if found >= 0 else None
    return chunk if chunk is not None and number <= chunk.end_line else None


def chunk_number(index: RepoIndex, path: str, first_line: int) -> int | None:
    """The position in ``index.chunks`` of the chunk of ``path`` starting at ``first_line``, if there is one."""
    numbers = index.chunk_numbers(path)
    found = bisect_left(numbers, first_line, key=lambda number: index.chunks[number].start_line)
    return numbers[found] if found < len(numbers) and index.chunks[numbers[found]].start_line == first_line else None


def worth(index: RepoIndex, chunks: Iterable[Chunk], scores) -> float:
    """What chunks are worth to a cursor: the sum of their ``scores`` (the general ranking's, per chunk number)."""
    numbers = (chunk_number(index, chunk.path, chunk.start_line) for chunk in chunks)
    return sum(float(scores[number]) for number in numbers if number is not None)


def still_wanted(index: RepoIndex, held: Sequence[Chunk], fresh: Sequence[Chunk], scores, head: Sequence[Chunk],
                 definition_scores) -> bool:
    """Whether the held chunks stay, against the ``fresh`` choice: it is worth no HOLD_MARGIN more than they are, by
    the general ranking's ``scores`` over all their chunks, nor by the ``definition_scores`` over those of the
    definitions ranking's ``head`` each holds."""
    def in_head(chunks: Sequence[Chunk]) -> list[Chunk]:
        keys = {(chunk.path, chunk.start_line) for chunk in chunks}
        return [chunk for chunk in head if (chunk.path, chunk.start_line) in keys]

    return (_holds(worth(index, held, scores), worth(index, fresh, scores))
            and _holds(worth(index, in_head(held), definition_scores), worth(index, in_head(fresh), definition_scores)))


def _holds(held_worth: float, fresh_worth: float) -> bool:
    return fresh_worth <= held_worth * (1 + HOLD_MARGIN)

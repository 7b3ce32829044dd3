"""The current file's own chunks against the editor's buffer (prompts/alignment.py): the index numbers them by the
disk's lines, the window shows rows of the text the editor sent, which differs from the disk where the user has
unsaved edits, and is only part of the file where the editor sends the lines around the cursor (llama.vscode,
llama.vim). A chunk the window shows must not be repeated as context, and one it does not show must not be dropped
as shown."""
import pytest

from prompts import build_completion_prompt, index_repository
from prompts.alignment import BufferLines
from prompts.chunking import analyze_source
from prompts.packing import EXAMPLE

STEPS = 40


def step(k: int) -> str:
    return f"def step_{k}(value):\n    total = value * {k}\n    return total + {k}\n"


DISK = "import os\n\n\n" + "\n\n".join(step(k) for k in range(STEPS))
ROWS = DISK.split("\n")
CURSOR = ROWS.index("def step_20(value):") + 1  # (0-based) the body's first line of step_20
DEFINITIONS = [number for number, row in enumerate(ROWS) if row.startswith("def ")]


@pytest.fixture
def index(make_repo):
    return index_repository(make_repo({"app.py": DISK, "other.py": "def helper(x):\n    return x\n"}))


def inserted(rows: list[str], above: str, lines: list[str]) -> list[str]:
    at = rows.index(above)
    return rows[:at] + lines + rows[at:]


NEW_LINES = [f"def extra_{i}(item):\n    return item - {i}\n\n".split("\n") for i in range(8)]
INSERTED = inserted(ROWS, "def step_9(value):", [row for lines in NEW_LINES for row in lines])
DELETED = [row for number, row in enumerate(ROWS)
           if not any(ROWS.index(f"def step_{k}(value):") <= number < ROWS.index(f"def step_{k}(value):") + 5
                      for k in (12, 13, 14, 15, 16))]


def window_and_own(packed, rows: list[str]) -> tuple[list[str], list[int]]:
    """The rows of the buffer the window shows, and the first lines (1-based, the disk's) of the file's own chunks in
    the repository context."""
    own = [item for item in packed.context if item.path == "app.py" and item.form != EXAMPLE]
    window = own[-2:] if len(own) > 1 and own[-1].start_line == own[-2].end_line else own[-1:]
    first, last = window[0].start_line, window[-1].end_line
    # (the file's items are numbered by the buffer's rows where they lie on them: test_context_numbering.py; each
    # chunk's first line is the disk file's only such line)
    return rows[first - 1:last], [ROWS.index(rows[item.start_line - 1]) + 1 if item.buffer else item.start_line
                                  for item in own[:-len(window)]]


def check_neither_repeated_nor_dropped(packed, rows: list[str], all_fit: bool, whole: bool = True) -> None:
    """``rows``: the buffer; ``all_fit``: every chunk fits the budget; ``whole``: the buffer is the whole file (else
    a part of it). A function's chunk is shown where one of its three lines is (each is the file's only such line)."""
    shown, own = window_and_own(packed, rows)
    repeated = [line for line in own if any(row and row in shown for row in ROWS[line - 1:line + 2])]
    assert repeated == [], f"the file's own chunks at disk lines {repeated} repeat what the window shows"
    if all_fit:  # every definition is in the window or in the context (a whole buffer's: those it still has)
        dropped = [number + 1 for number in DEFINITIONS if (ROWS[number] in rows or not whole)
                   and not any(row and row in shown for row in ROWS[number:number + 3]) and number + 1 not in own]
        assert dropped == [], f"the file's own chunks at disk lines {dropped} were dropped, though not shown"


@pytest.mark.parametrize("suffix_first", [False, True], ids=["psm", "spm"])
@pytest.mark.parametrize("budget", [1200, 4000])
@pytest.mark.parametrize("buffer", ["disk", "inserted", "deleted"])
def test_an_edited_buffer_neither_repeats_nor_drops_the_file_s_own_chunks(index, starcoder_tokenizer, budget,
                                                                          suffix_first, buffer):
    """Unsaved edits above the cursor: 32 lines inserted (8 new functions) or 25 deleted (5 functions). Compared by
    number, the window's rows were the disk's lines 32 further down (or 25 further up): chunks the window showed went
    into the context again, and chunks it did not show were left out as shown. At 4,000 tokens every chunk fits."""
    rows = {"disk": ROWS, "inserted": INSERTED, "deleted": DELETED}[buffer]
    row = rows.index("def step_20(value):") + 1
    packed = build_completion_prompt(index, starcoder_tokenizer, "app.py", text="\n".join(rows), line=row + 1,
                                     col=5, budget_tokens=budget, suffix_first=suffix_first)
    shown, own = window_and_own(packed, rows)
    assert own and len(shown) < len(rows) - 20  # (the premise: the file's own chunks are chosen; the window is cut)
    check_neither_repeated_nor_dropped(packed, rows, all_fit=budget == 4000)


@pytest.mark.parametrize("suffix_first", [False, True], ids=["psm", "spm"])
@pytest.mark.parametrize("budget", [1200, 4000])
def test_the_part_of_the_file_llama_vscode_sends_neither_repeats_nor_drops_the_file_s_own_chunks(
        index, starcoder_tokenizer, budget, suffix_first):
    """llama.vscode sends the lines around the cursor (input_prefix, input_suffix): the buffer's row 0 is the disk's
    line 60 or so. Compared by number, the window's rows were the file's first lines: the first chunks were left out
    as shown, and the chunks the window shows were chosen as context again."""
    top, bottom = CURSOR - 25, CURSOR + 14
    rows = ROWS[top:bottom]
    packed = build_completion_prompt(index, starcoder_tokenizer, "app.py", text="\n".join(rows),
                                     line=CURSOR - top + 1, col=5, budget_tokens=budget, suffix_first=suffix_first)
    shown, own = window_and_own(packed, rows)
    assert own     # (the premise)
    check_neither_repeated_nor_dropped(packed, rows, all_fit=budget == 4000, whole=False)
    assert set(own).isdisjoint(range(top + 1, top + 1 + len(shown)))  # (nothing of the part the window shows)


def test_the_cursor_s_own_block_does_not_grow_over_a_chunk_chosen_as_context(index, starcoder_tokenizer):
    """The window is cut to the file's share when the context is ranked, then given what the context leaves: it grew
    over the rest of the cursor's own 32-line block whatever the context held, so a chunk chosen there (not shown
    when ranked) was in the prompt twice, the disk's text as it is."""
    packed = build_completion_prompt(index, starcoder_tokenizer, "app.py", line=CURSOR + 1, col=5, budget_tokens=900)
    shown, own = window_and_own(packed, ROWS)
    assert any(CURSOR < line - 1 < CURSOR + 32 - CURSOR % 32 for line in own)  # (the premise: one in its block)
    check_neither_repeated_nor_dropped(packed, ROWS, all_fit=False)


# BufferLines, alone

CHUNKS = analyze_source("app.py", DISK).chunks


def chunk_at(name: str):
    return next(chunk for chunk in CHUNKS if chunk.text.startswith(f"def {name}("))


def test_lines_inserted_or_deleted_above_a_chunk_move_its_rows():
    lines, more, fewer = BufferLines(CHUNKS, INSERTED), len(INSERTED) - len(ROWS), len(ROWS) - len(DELETED)
    chunk = chunk_at("step_20")
    assert lines.rows_of(chunk) == (chunk.start_line - 1 + more, chunk.end_line - 1 + more)
    above = chunk_at("step_3")
    assert lines.rows_of(above) == (above.start_line - 1, above.end_line - 1)
    assert lines.lines_on(chunk.start_line - 1 + more, chunk.end_line - 1 + more) == (chunk.start_line, chunk.end_line)
    new = INSERTED.index("def extra_0(item):")
    assert lines.lines_on(new, new + 20) is None  # rows typed in: no disk line lies on them
    lines = BufferLines(CHUNKS, DELETED)
    assert lines.rows_of(chunk_at("step_14")) is None  # deleted
    assert lines.rows_of(chunk) == (chunk.start_line - 1 - fewer, chunk.end_line - 1 - fewer)


def test_a_part_of_the_file_and_its_edited_rows_lie_where_their_text_is():
    top = CURSOR - 25
    part = ROWS[top:CURSOR + 14]
    lines = BufferLines(CHUNKS, part)
    assert lines.rows_of(chunk_at("step_1")) is None and lines.rows_of(chunk_at("step_39")) is None
    chunk = chunk_at("step_20")
    assert lines.rows_of(chunk) == (chunk.start_line - 1 - top, chunk.end_line - 1 - top)
    assert lines.lines_on(0, len(part) - 1) == (top + 1, CURSOR + 12)  # (its two blank last rows lie nowhere)
    # the part's top row edited (the disk's lines above it not sent): the edited row is the disk's line it replaced
    edited = ["# edited"] + part[1:]
    assert BufferLines(CHUNKS, edited).lines_on(0, 0) == (top + 1, top + 1)
    # a line typed on: it lies where the disk's line it replaced lies
    typed = ROWS[:CURSOR] + [ROWS[CURSOR] + " + 1"] + ROWS[CURSOR + 1:]
    assert BufferLines(CHUNKS, typed).lines_on(CURSOR, CURSOR) == (CURSOR + 1, CURSOR + 1)
    # blank rows with spaces, and a final newline, are blank
    spaced = ["    " if not row else row for row in ROWS] + [""]
    assert BufferLines(CHUNKS, spaced).rows_of(chunk) == (chunk.start_line - 1, chunk.end_line - 1)
    # a text with nothing in common with the file: nothing of it lies anywhere
    assert BufferLines(CHUNKS, ["x = 1", "y = 2"]).lines_on(0, 1) is None


@pytest.mark.parametrize("suffix_first", [False, True], ids=["psm", "spm"])
def test_a_held_context_is_not_kept_where_the_window_now_shows_its_chunks(index, starcoder_tokenizer, suffix_first):
    """Holding (holding.py) keeps the last prompt's context unless a chunk of it now lies in the file's window. The
    functions between the cursor's and the context's first chunk below the window are deleted (10 lines: the cursor
    stays at its place), and the window now shows that chunk's text; compared by number (the disk's lines below the
    deletion are 10 rows further down than the buffer shows them) the held chunks stayed and were shown twice."""
    from types import SimpleNamespace

    from codecomplete.session import Sampling, Session

    session = Session(SimpleNamespace(tokenizer=starcoder_tokenizer, check_prompt=lambda ids: None,
                                      context_length=8192), index, suffix_first=suffix_first)

    def complete(rows: list[str]):
        return session.complete("app.py", text="\n".join(rows), line=rows.index("def step_20(value):") + 2, col=5,
                                sampling=Sampling(max_tokens=0), budget=1200).prompt

    first = complete(ROWS)
    check_neither_repeated_nor_dropped(first, ROWS, all_fit=False)
    below = [line for line in window_and_own(first, ROWS)[1] if line > CURSOR]
    assert below   # (the premise: a chunk below the window in the context)
    gone = range(ROWS.index("def step_21(value):"), below[0] - 1)
    rows = [row for number, row in enumerate(ROWS) if number not in gone]
    assert 0 < len(gone) <= 16
    check_neither_repeated_nor_dropped(complete(rows), rows, all_fit=False)


def test_lines_edited_all_over_the_file_lie_where_they_were():
    """A rename across the file, not yet saved: every tenth row differs from the disk's, each stays where it was. Two
    functions swapped: the rows keep their order on both sides, so one of them is found where it went and the other
    lies nowhere (a move is a deletion and an insertion); the rest stay."""
    edited = [row + "  # renamed" if number % 10 == 0 and row else row for number, row in enumerate(ROWS)]
    lines = BufferLines(CHUNKS, edited)
    assert all(lines.rows_of(chunk) == (chunk.start_line - 1, chunk.end_line - 1) for chunk in CHUNKS)
    assert lines.lines_on(0, len(ROWS) - 1) == (1, CHUNKS[-1].end_line)
    first, second = chunk_at("step_30"), chunk_at("step_31")
    swapped = (ROWS[:first.start_line - 1] + ROWS[second.start_line - 1:second.end_line] + ["", ""]
               + ROWS[first.start_line - 1:first.end_line] + ROWS[second.end_line:])
    moved = BufferLines(CHUNKS, swapped)
    assert moved.rows_of(chunk_at("step_20")) == (chunk_at("step_20").start_line - 1, chunk_at("step_20").end_line - 1)
    found = {chunk.text.split("\n")[0]: moved.rows_of(chunk) for chunk in (first, second)}
    assert sum(rows is None for rows in found.values()) == 1
    assert all(swapped[rows[0]] == head for head, rows in found.items() if rows is not None)

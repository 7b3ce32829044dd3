"""Where the current file's chunks lie in the editor's buffer.

The index chunks a file as it is on disk and numbers its chunks by the disk's lines; the prompt's window is rows of
the text the editor sent, which differs from the disk wherever the user has unsaved edits (lines typed, inserted or
deleted above the cursor) and, for llama.vscode and llama.vim, is only part of the file (lines around the cursor).
Compared by number, a chunk the window shows could be chosen again as context (the same code twice in the prompt,
which a small model copies), and one it does not show could be dropped as shown. So the two are aligned by text:
the lines the buffer shares with the disk are matched (after the rows both begin and end with, which for an editor
typing at one place leave only a few rows to match, by the rows each side has once: `_matching_blocks`), and a run
of disk lines the buffer replaced is where the buffer's run between the same matched lines is. Blank lines are compared as empty (the index does not
keep the blank lines between chunks); the buffer's trailing blank rows match nothing.

A run replaced at the buffer's top or bottom edge, with more disk lines than buffer rows, is paired from its inner
end: the buffer is a part of the file whose edge row was edited, and the disk lines beyond it are not in the buffer.
A run inside the buffer is paired line for line where it has as many rows on both sides, else as a whole (every
disk line of it lies on every buffer row of it). Disk lines the buffer does not have (deleted, or outside the part
sent) lie on no row; buffer rows the disk does not have (inserted) belong to no disk line.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Sequence

from .chunking import Chunk

_PAIRED, _WHOLE = True, False  # a run matched line for line, or as a whole
_MEMO_SIZE = 4  # files whose disk rows are remembered (the file being edited, and a few switched to)
_disk_memo: list[tuple[tuple[Chunk, ...], list[str]]] = []


class BufferLines:
    """How the lines of a file, as the index's ``chunks`` of it number them (1-based), lie on the rows (0-based) of
    the editor's ``rows``."""

    def __init__(self, chunks: Sequence[Chunk], rows: Sequence[str]):
        disk = disk_rows(tuple(chunks))
        buffer = ["" if row.isspace() else row for row in rows]
        end = len(buffer)
        while end and not buffer[end - 1]:  # (a final newline's empty row, blank rows after the last chunk)
            end -= 1
        self._runs = _runs(disk, buffer[:end])  # (disk first, disk end, buffer first, buffer end, paired)
        self._disk_starts = [run[0] for run in self._runs]
        self._buffer_starts = [run[2] for run in self._runs]

    def rows_of(self, chunk: Chunk) -> tuple[int, int] | None:
        """The first and last buffer rows the chunk's lines lie on; None where none of them is in the buffer."""
        return self.rows_on(chunk.start_line, chunk.end_line)

    def rows_on(self, first_line: int, last_line: int) -> tuple[int, int] | None:
        """The first and last buffer rows disk lines ``first_line``..``last_line`` (1-based) lie on; None where none
        of them is in the buffer."""
        return _image(self._runs, self._disk_starts, first_line - 1, last_line - 1, 0)

    def lines_on(self, first_row: int, last_row: int) -> tuple[int, int] | None:
        """The first and last disk lines (1-based) lying on buffer rows ``first_row``..``last_row``; None where no
        disk line does (the rows were all typed in)."""
        found = _image(self._runs, self._buffer_starts, first_row, last_row, 2)
        return None if found is None else (found[0] + 1, found[1] + 1)


def disk_rows(chunks: tuple[Chunk, ...]) -> list[str]:
    """The file's rows as its chunks hold them, blank between chunks (a file's every other line is blank); the last
    few files' remembered (the index's tuple of a file's chunks is the key)."""
    for known, rows in _disk_memo:
        if known is chunks:
            return rows
    rows: list[str] = []
    for chunk in chunks:
        rows.extend([""] * (chunk.start_line - 1 - len(rows)))
        rows.extend("" if line.isspace() else line for line in chunk.text.split("\n"))
    _disk_memo.insert(0, (chunks, rows))
    del _disk_memo[_MEMO_SIZE:]
    return rows


def _runs(disk: list[str], buffer: list[str]) -> list[tuple[int, int, int, int, bool]]:
    """The disk's and the buffer's rows in corresponding runs, in order: (disk first, disk end, buffer first, buffer
    end, paired line for line or as a whole); rows of one side with none on the other are in no run."""
    head = _common_head(disk, buffer)
    tail = _common_head(disk[head:][::-1], buffer[head:][::-1])
    runs = [(0, head, 0, head, _PAIRED)] if head else []
    middle_disk, middle_buffer = disk[head:len(disk) - tail], buffer[head:len(buffer) - tail]
    if middle_disk and middle_buffer:
        blocks = _matching_blocks(middle_disk, middle_buffer)
        if head or tail or blocks:  # (nothing in common: nothing lies anywhere)
            i, j = 0, 0
            for block_i, block_j, size in [*blocks, (len(middle_disk), len(middle_buffer), 0)]:
                if i < block_i and j < block_j:  # a run replaced between two matched ones (or the edges)
                    runs.append(_run(i + head, block_i + head, j + head, block_j + head, len(buffer)))
                if size:
                    runs.append((block_i + head, block_i + size + head, block_j + head, block_j + size + head, _PAIRED))
                i, j = block_i + size, block_j + size
    if tail:
        runs.append((len(disk) - tail, len(disk), len(buffer) - tail, len(buffer), _PAIRED))
    return runs


def _matching_blocks(a: list[str], b: list[str]) -> list[tuple[int, int, int]]:
    """Runs of rows alike in ``a`` and ``b``, as (first in a, first in b, rows), increasing in both: the rows found
    once in each are anchors, the longest chain of them in the same order on both sides is kept, and each kept one
    grows into the rows alike around it (patience diffing's idea). Linear but for the chain's bisection: difflib's
    matching, which rescans its ranges as it recurses, took 145 ms for a file of 6,400 rows with every tenth edited
    (a rename across the file, not yet saved), this a few."""
    count_a, count_b = Counter(a), Counter(b)
    where = {row: number for number, row in enumerate(a) if count_a[row] == 1}
    anchors = [(where[row], number) for number, row in enumerate(b) if count_b[row] == 1 and row in where]
    tails: list[int] = []  # the longest increasing chain of the anchors' rows in a (their rows in b increase)
    ends: list[int] = []   # the anchor ending each chain length's best chain
    back = [-1] * len(anchors)
    for number, (row, _) in enumerate(anchors):
        length = bisect_left(tails, row)
        back[number] = ends[length - 1] if length else -1
        if length == len(tails):
            tails.append(row)
            ends.append(number)
        else:
            tails[length], ends[length] = row, number
    chain, number = [], ends[-1] if ends else -1
    while number >= 0:
        chain.append(anchors[number])
        number = back[number]
    blocks: list[tuple[int, int, int]] = []
    done_a = done_b = 0
    for i, j in reversed(chain):
        if i < done_a:  # (within the last block: an anchor on its diagonal)
            continue
        first_i, first_j = i, j
        while first_i > done_a and first_j > done_b and a[first_i - 1] == b[first_j - 1]:
            first_i, first_j = first_i - 1, first_j - 1
        done_a, done_b = i + 1, j + 1
        while done_a < len(a) and done_b < len(b) and a[done_a] == b[done_b]:
            done_a, done_b = done_a + 1, done_b + 1
        blocks.append((first_i, first_j, done_a - first_i))
    return blocks


def _run(i1: int, i2: int, j1: int, j2: int, rows: int) -> tuple[int, int, int, int, bool]:
    """Disk lines i1..i2-1 and buffer rows j1..j2-1 between the same matched lines (or the texts' edges)."""
    size = min(i2 - i1, j2 - j1)
    if i2 - i1 == j2 - j1:
        return i1, i2, j1, j2, _PAIRED
    if j1 == 0 and j2 < rows and i2 - i1 > j2 - j1:  # the buffer's top row was edited, lines above it not sent
        return i2 - size, i2, j1, j2, _PAIRED
    if j2 == rows and j1 > 0 and i2 - i1 > j2 - j1:  # its bottom row, the same
        return i1, i1 + size, j1, j2, _PAIRED
    return i1, i2, j1, j2, _WHOLE


def _common_head(a: list[str], b: list[str]) -> int:
    """How many rows ``a`` and ``b`` begin with alike (by halving: list slices compare in C)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[low:middle] == b[low:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _image(runs, starts: list[int], first: int, last: int, side: int) -> tuple[int, int] | None:
    """The other side's first and last rows of rows ``first``..``last`` of one side (``side``: 0 the disk's, 2 the
    buffer's), over the runs."""
    found: list[int] = []
    for number in range(max(bisect_right(starts, first) - 1, 0), len(runs)):
        run = runs[number]
        begin, end = run[side], run[side + 1]
        if begin > last:
            break
        if end <= first:
            continue
        other = run[2 - side]
        if run[4]:  # paired: row r of this side is row other + (r - begin) of the other
            found += [other + max(first, begin) - begin, other + min(last, end - 1) - begin]
        else:
            found += [other, run[3 - side] - 1]
    return (min(found), max(found)) if found else None

"""The prompt's report of the current file (`PackedPrompt.context`, `--json`'s "context"): its window is rows of the
editor's buffer, its own chunks in the context were lines of the disk's file; where the two differ (unsaved lines
above), the numbers of one item could not be compared with another's. Every item of the current file is now numbered
by the buffer's rows (`ContextItem.buffer`), those that lie on none by the disk's lines, and says which."""
import json
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from codecomplete import render
from prompts import build_completion_prompt, index_repository
from prompts.packing import EXAMPLE

from test_buffer_alignment import DELETED, DISK, INSERTED, ROWS


@pytest.fixture
def index(make_repo):
    return index_repository(make_repo({"app.py": DISK, "other.py": "def helper(x):\n    return x\n"}))


@pytest.mark.parametrize("suffix_first", [False, True], ids=["psm", "spm"])
@pytest.mark.parametrize("buffer", ["disk", "inserted", "deleted"])
def test_the_current_file_s_items_are_numbered_by_the_buffer_s_rows(index, starcoder_tokenizer, buffer, suffix_first):
    rows = {"disk": ROWS, "inserted": INSERTED, "deleted": DELETED}[buffer]
    row = rows.index("def step_20(value):") + 1
    packed = build_completion_prompt(index, starcoder_tokenizer, "app.py", text="\n".join(rows), line=row + 1, col=5,
                                     budget_tokens=1200, suffix_first=suffix_first)
    own = [item for item in packed.context if item.path == "app.py" and item.form != EXAMPLE]
    window, chunks = own[-2:], own[:-2]
    assert chunks and window[0].end_line == row + 1 == window[1].start_line      # (the premise; the cursor's row)
    assert all(item.buffer for item in own)
    for item in chunks:     # each chunk's first line is where the buffer has it: def step_k(value), or import os
        first = next(line for line in index.entries["app.py"].chunks if line.start_line == _disk_line(item, rows))
        assert rows[item.start_line - 1] == first.text.split("\n")[0]
        assert rows[item.end_line - 1] == first.text.split("\n")[-1]
    assert all(not item.buffer for item in packed.context if item.path != "app.py")


def _disk_line(item, rows: list[str]) -> int:
    """The disk line whose text the buffer has at the item's first row (each of the file's first lines is unique)."""
    return ROWS.index(rows[item.start_line - 1]) + 1


def test_the_json_says_which_lines_each_item_counts(index, starcoder_tokenizer):
    packed = build_completion_prompt(index, starcoder_tokenizer, "app.py", text="\n".join(INSERTED), line=100,
                                     budget_tokens=1200)
    result = SimpleNamespace(text="x", token_ids=[1], healing_tokens=0, reused_prefix_tokens=0, finish_reason="stop",
                             not_a_number=False, timings=Timings(), token_counts=lambda: (5, 1))
    out = render.result_json("completion", result, SimpleNamespace(name="m", device="cpu", attention="sdpa"),
                             packed.context)
    numbered = {(item["path"], item["lines"]) for item in json.loads(json.dumps(out))["context"]}
    assert numbered == {("app.py", "buffer"), ("other.py", "disk")} or numbered == {("app.py", "buffer")}


@dataclass
class Timings:
    load_s: float = 0.0

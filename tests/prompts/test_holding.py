"""The repository context holds still while the user types (prompts/holding.py): a keystroke's prompt keeps the last
one's context token for token unless the cursor left the place where it was chosen or the ranking clearly prefers
other chunks. Built through the session, as every route builds completion prompts."""
from types import SimpleNamespace

import pytest

from codecomplete.session import Sampling, Session

METHODS = ("area", "perimeter", "scaled", "moved", "rotated", "mirrored")
SHAPE = ("class Shape:\n    \"\"\"A polygon.\"\"\"\n\n"
         "    def __init__(self, points):\n        self.points = list(points)\n"
         + "".join(
    f"\n    def {name}(self, factor=1.0):\n        \"\"\"The shape {name}.\"\"\"\n"
    f"        result = [(x * factor, y * factor) for x, y in self.points]\n"
    f"        return Shape(result) if result else None\n" for name in METHODS))
RUN = ("def run(points):\n    shape = Shape(points)\n    total = shape.area()\n    \n    return total\n")
CURSOR_ROW = 7  # (0-based) the empty line in `run`, in the file below (11 with the far functions' imports)


@pytest.fixture
def repo(make_repo):
    return shapes_repository(make_repo, far=False)


@pytest.fixture
def far_repo(make_repo):
    return shapes_repository(make_repo, far=True)


def shapes_repository(make_repo, far: bool):
    """A class whose brief shows the methods the cursor's words name, a dozen small functions like the code at the
    cursor, a helper the cursor does not use yet; ``far``: and functions far below `run` that use other imports."""
    from prompts import index_repository

    below = "".join(f"def filler_{n}(value):\n    return value + {n}\n\n\n" for n in range(12))
    show = "def show(item):\n" + "".join(f"    item = gadget_{i}(item)\n" for i in range(4)) + "    \n    return item\n"
    text = ("from lib.shapes import Shape\nfrom lib.colors import color_1, color_2\n"
            + "".join(f"from other.g{i} import gadget_{i}\n" for i in range(4 if far else 0)) + "\n\n" + RUN
            + ("\n\n" + below + show if far else ""))
    root = make_repo({
        "lib/__init__.py": "",
        "lib/shapes.py": SHAPE,
        "lib/colors.py": "".join(f"def color_{i}(value):\n    return value + {i}\n\n\n" for i in range(12)),
        "lib/tools.py": "def polish(shape, amount=2):\n    \"\"\"Round a shape's corners.\"\"\"\n    return shape\n",
        **{f"other/g{i}.py": f"def gadget_{i}(item):\n    return item.render({i})\n" for i in range(4)},
        "app.py": text,
    })
    assert text.split("\n")[CURSOR_ROW + 4 * far] == "    "
    return index_repository(root), text


def typed_prompts(tokenizer, index, text: str, row: int, typed: str, budget: int, suffix_first: bool,
                  session=None) -> list:
    """One request a character typed on ``row`` (after its indentation), as an editor sends them."""
    session = session or Session(SimpleNamespace(tokenizer=tokenizer, check_prompt=lambda ids: None,
                                                 context_length=4096), index, suffix_first=suffix_first)
    rows = text.split("\n")
    prompts = []
    for count in range(len(typed) + 1):
        rows[row] = "    " + typed[:count]
        prompts.append(session.complete("app.py", text="\n".join(rows), line=row + 1, col=5 + count,
                                        sampling=Sampling(max_tokens=0), budget=budget).prompt)
    return prompts


def context_ids(packed) -> list[int]:
    """The prompt's ids before the current file's own text and example lines: the opening and the repository's."""
    after = sum(item.tokens for item in packed.context if item.path == "app.py" or item.form == "example")
    return packed.ids[:len(packed.ids) - after]


@pytest.mark.parametrize("suffix_first", [False, True], ids=["psm", "spm"])
@pytest.mark.parametrize("budget", [700, 900])
def test_typing_within_a_word_and_past_it_keeps_the_repository_context(repo, starcoder_tokenizer, budget,
                                                                       suffix_first):
    """`half = perimeter / 2` typed under `total = shape.area()`. The context was chosen anew at each keystroke: the
    file's share of the budget grew a step as its text grew (all of it fits; at 900 tokens the repository's room fell
    from 591 to 536 at the 6th character), and a completed word may change what Shape's brief shows (the methods the
    cursor's words name); the context changed from the 6th or the 9th character on, and the model's cache prefilled
    it and everything after it again. Held, it keeps its tokens while the ranking's own choice is worth no more than
    a fifth more."""
    index, text = repo
    prompts = typed_prompts(starcoder_tokenizer, index, text, CURSOR_ROW, "half = perimeter / 2", budget, suffix_first)
    assert ("lib/shapes.py", 1) in prompts[0].chosen and len(prompts[0].chosen) > 4      # (the premise)
    first = context_ids(prompts[0])
    assert [count for count, packed in enumerate(prompts) if context_ids(packed) != first] == []
    assert all(packed.held == prompts[0].held for packed in prompts)


def test_a_completed_name_whose_definition_the_context_lacks_brings_it_in(repo, starcoder_tokenizer):
    """Held is not stale: `polish(`, a name defined in lib/tools.py that nothing near the cursor used before, puts its
    definition at the head of the definitions ranking, and a context without it is replaced once the name is
    complete (not while it is being typed)."""
    index, text = repo
    prompts = typed_prompts(starcoder_tokenizer, index, text, CURSOR_ROW, "shape = polish(", 900, True)
    assert ("lib/tools.py", 1) not in prompts[0].chosen
    changed = [count for count, packed in enumerate(prompts) if context_ids(packed) != context_ids(prompts[0])]
    assert changed and changed[0] >= len("shape = polish"), changed
    assert ("lib/tools.py", 1) in prompts[-1].chosen


@pytest.mark.parametrize("suffix_first", [False, True], ids=["psm", "spm"])
def test_a_cursor_moved_far_away_gets_the_context_of_its_new_place(far_repo, starcoder_tokenizer, suffix_first):
    """After typing in `run`, the cursor goes to `show`, 60 lines down: the context held for `run` is not kept there;
    it is chosen for `show` (the gadgets it calls), as a session without that history chooses it."""
    index, text = far_repo
    session = Session(SimpleNamespace(tokenizer=starcoder_tokenizer, check_prompt=lambda ids: None,
                                      context_length=4096), index, suffix_first=suffix_first)
    at_run = typed_prompts(starcoder_tokenizer, index, text, CURSOR_ROW + 4, "half = ", 900, suffix_first, session)
    show_row = text.split("\n").index("def show(item):") + 5
    at_show = typed_prompts(starcoder_tokenizer, index, text, show_row, "", 900, suffix_first, session)[0]
    alone = typed_prompts(starcoder_tokenizer, index, text, show_row, "", 900, suffix_first)[0]
    assert show_row - (CURSOR_ROW + 4) > 32
    assert at_show.held != at_run[-1].held and at_show.held.place.row == show_row
    assert sorted(at_show.chosen) == sorted(alone.chosen)
    assert {f"other/g{i}.py" for i in range(4)} <= {path for path, _ in at_show.chosen}


def test_a_place_is_found_again_by_its_text_where_the_editor_s_text_moved():
    """llama.vim sends the 256 lines above the cursor: a line typed moves the text's top, and rows shift. The place
    is measured from the rows that marked it, found again by their text; without them (the text's first block),
    by the row itself."""
    from prompts.holding import PLACE_LINES, Place, still_at

    rows = [f"line {n}" for n in range(200)]
    place = Place(row=120, anchor=(96, "\n".join(rows[96:100])))
    assert still_at(place, rows, 120) and still_at(place, rows, 120 + PLACE_LINES)
    assert not still_at(place, rows, 121 + PLACE_LINES)
    shifted = rows[10:]                                     # ten lines fewer above: the same place ten rows up
    assert still_at(place, shifted, 110 + PLACE_LINES) and not still_at(place, shifted, 111 + PLACE_LINES)
    assert not still_at(place, [f"other {n}" for n in range(200)], 120)       # its text is gone
    assert still_at(Place(row=5, anchor=None), rows, 5 + PLACE_LINES)
    assert not still_at(Place(row=5, anchor=None), rows, 6 + PLACE_LINES)

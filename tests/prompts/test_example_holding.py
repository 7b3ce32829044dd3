"""Example lines hold still while the user types (prompts/holding.py, `held_examples`): they are laid out just before
the current file, so a change of them prefills the file's whole window again. A keystroke's prompt keeps the last
one's example lines while its repository context is held and the file's window begins where it began (whatever the
cursor's line finds); once the window moves (it is prefilled again anyway), they are kept while the fresh lines
(those that begin as the cursor's line now does) are no more than the held ones that still do (`window_moves`: every
prompt's window counted as moved). Built through the session, as every route builds completion prompts."""
from itertools import count
from types import SimpleNamespace

import pytest

from codecomplete.session import Sampling, Session
from test_holding import typed_prompts

OPS = ("def summary(values):\n"
       "    total = compute_sum(values, 1)\n    total = compute_sum(values, 2)\n"
       "    total = compute_sum(values, 3)\n    total = compute_sum(values, 4)\n    return total\n\n\n"
       "def spread(values):\n"
       + "".join(f"    total = compute_mean(values, {n})\n" for n in range(1, 7)) + "    return total\n")
APP = ("from lib.ops import summary\n\n\ndef run(values):\n    values = sorted(values)\n    \n    return values\n"
       + "".join(f"\n\ndef filler_{n}(value):\n    return value + {n}\n" for n in range(24))
       + "\n\ndef far(values):\n    \n    return values\n")
ROW = 5  # (0-based) the empty line in `run`


@pytest.fixture
def window_moves(monkeypatch):
    """Every prompt's file window counted as begun elsewhere than the last one's (as where typing crossed a step)."""
    from prompts import completion

    numbers = count()
    monkeypatch.setattr(completion, "_window_start", lambda window, form: (str(next(numbers)),))


@pytest.fixture
def repo(make_repo):
    from prompts import index_repository

    root = make_repo({"lib/__init__.py": "", "lib/ops.py": OPS, "app.py": APP})
    assert APP.split("\n")[ROW] == "    "
    return index_repository(root)


def typed(session, row: int, text: str, budget: int) -> list:
    """One request a character typed on ``row`` (after its indentation)."""
    return typed_prompts(None, None, APP, row, text, budget, session.suffix_first, session=session)


def once(tokenizer, index, row: int, text: str, budget: int, suffix_first: bool, session=None):
    """The prompt a session without history (or ``session``) builds for ``text`` on ``row``, in one request."""
    rows = APP.split("\n")
    rows[row] = "    " + text
    return (session or new_session(tokenizer, index, suffix_first)).complete(
        "app.py", text="\n".join(rows), line=row + 1, col=5 + len(text), sampling=Sampling(max_tokens=0),
        budget=budget).prompt


def new_session(tokenizer, index, suffix_first: bool) -> Session:
    return Session(SimpleNamespace(tokenizer=tokenizer, check_prompt=lambda ids: None, context_length=4096), index,
                   suffix_first=suffix_first)


def examples(packed) -> list[tuple[str, int]]:
    return [(item.path, item.start_line) for item in packed.context if item.form == "example"]


def before_file(packed) -> list[int]:
    """The prompt's ids before the current file's own text: the opening, the repository's context, the examples."""
    return packed.ids[:len(packed.ids) - sum(item.tokens for item in packed.context if item.path == "app.py")]


@pytest.mark.parametrize("suffix_first", [False, True], ids=["psm", "spm"])
@pytest.mark.parametrize("budget", [600, 1200])
def test_typing_a_new_name_keeps_the_example_lines(window_moves, repo, starcoder_tokenizer, budget, suffix_first):
    """`total = brand_new(values)` typed: `total ` finds the lines that begin so (compute_sum's, the best chunk's
    first); `total = brand_new(` begins no line of the repository, and the examples vanished (before: from that
    keystroke on, the prompt changed from the examples, the file's whole window after them prefilled again). The
    lines of `total = ` are still the best examples there are: they stay, and with them every token before the
    file."""
    prompts = typed(new_session(starcoder_tokenizer, repo, suffix_first), ROW, "total = brand_new(values)", budget)
    start = len("total ")
    assert examples(prompts[start]) and examples(prompts[start - 1]) == []      # (the premise)
    assert [count for count, packed in enumerate(prompts[start:], start)
            if before_file(packed) != before_file(prompts[start])] == []
    # (what a prompt without history has there)
    assert examples(once(starcoder_tokenizer, repo, ROW, "total = brand_new(", budget, suffix_first)) == []


@pytest.mark.parametrize("suffix_first", [False, True], ids=["psm", "spm"])
def test_lines_that_begin_as_the_typed_line_does_replace_held_ones_that_no_longer_do(window_moves, repo,
                                                                                       starcoder_tokenizer,
                                                                                       suffix_first):
    """`total = compute_mean(` typed after `total = ` held compute_sum's lines: the fresh lines (compute_mean's)
    begin as the line does, the held ones no longer do, so the fresh ones come in, at the `(` that completes the word,
    not before; and they are what a prompt without history shows."""
    prompts = typed(new_session(starcoder_tokenizer, repo, suffix_first), ROW, "total = compute_mean(", 1200)
    sums = examples(prompts[len("total = ")])
    assert sums and all(line <= 5 for _, line in sums)                           # compute_sum's (lines 2-5)
    changed = [count for count, packed in enumerate(prompts) if count > len("total ")
               and examples(packed) != examples(prompts[count - 1])]
    assert changed == [len("total = compute_mean(")]
    alone = once(starcoder_tokenizer, repo, ROW, "total = compute_mean(", 1200, suffix_first)
    assert examples(prompts[-1]) == examples(alone) and all(line >= 10 for _, line in examples(alone))


@pytest.mark.parametrize("suffix_first", [False, True], ids=["psm", "spm"])
def test_a_cursor_moved_far_away_gets_the_example_lines_of_its_new_place(window_moves, repo, starcoder_tokenizer, suffix_first):
    """After `total = ` in `run` (compute_sum's lines), the cursor goes to `far`, over 32 lines down: the lines are
    not held there; its line gets what a session without history gives it (none: no line begins `total = brand_new(`).
    """
    session = new_session(starcoder_tokenizer, repo, suffix_first)
    at_run = typed(session, ROW, "total = ", 1200)
    far_row = APP.split("\n").index("def far(values):") + 1
    assert far_row - ROW > 32 and examples(at_run[-1])
    at_far = once(starcoder_tokenizer, repo, far_row, "total = brand_new(", 1200, suffix_first, session)
    alone = once(starcoder_tokenizer, repo, far_row, "total = brand_new(", 1200, suffix_first)
    assert examples(at_far) == examples(alone) == []


def test_held_example_lines_that_no_longer_fit_give_way(window_moves, repo, starcoder_tokenizer):
    """The examples' room shrinks with the budget: held lines that no longer fit it are not kept; the prompt has what
    a session without history has."""
    session = new_session(starcoder_tokenizer, repo, False)
    rows = APP.split("\n")
    rows[ROW] = "    total = brand_new("
    text = "\n".join(rows)
    request = dict(text=text, line=ROW + 1, col=len(rows[ROW]) + 1, sampling=Sampling(max_tokens=0))
    rows[ROW] = "    total = "
    first = session.complete("app.py", text="\n".join(rows), line=ROW + 1, col=len(rows[ROW]) + 1,
                             sampling=Sampling(max_tokens=0), budget=1200).prompt
    assert examples(first)
    small = session.complete("app.py", budget=300, **request).prompt
    alone = new_session(starcoder_tokenizer, repo, False).complete("app.py", budget=300, **request).prompt
    assert examples(small) == examples(alone)


@pytest.mark.parametrize("suffix_first", [False, True], ids=["psm", "spm"])
def test_held_example_lines_belong_to_the_line_they_were_found_for(window_moves, repo, starcoder_tokenizer, suffix_first):
    """Held lines are only those a prompt at an earlier keystroke of the same line found: after `total = brand_new(`
    (compute_sum's lines held), a new line below it, or the line typed over with another start, gets what a session
    without history gives it (no example lines), not the lines of `total `."""
    session = new_session(starcoder_tokenizer, repo, suffix_first)
    assert examples(typed(session, ROW, "total = brand_new(", 1200)[-1])
    rows = APP.split("\n")
    rows[ROW:ROW + 1] = ["    total = brand_new(values)", "    "]
    below = session.complete("app.py", text="\n".join(rows), line=ROW + 2, col=5, sampling=Sampling(max_tokens=0),
                             budget=1200).prompt
    assert examples(below) == []
    assert examples(typed(session, ROW, "total = brand_new(", 1200)[-1])
    assert examples(once(starcoder_tokenizer, repo, ROW, "count = brand_new(", 1200, suffix_first, session)) == []


@pytest.mark.parametrize("suffix_first", [False, True], ids=["psm", "spm"])
def test_what_an_overflow_gives_up_is_not_held(window_moves, repo, starcoder_tokenizer, monkeypatch, suffix_first):
    """The prompt's fitting loop gives up chunks of the context, then example lines, where the exact count overflows
    (a tokenizer whose leading space defeats the infill encoding; forced here): the held state still named what was
    given up until the next prompt fitted it again. It names what the prompt holds."""
    from prompts import completion
    from prompts.packing import Assembler

    session = new_session(starcoder_tokenizer, repo, suffix_first)
    last = typed(session, ROW, "total ", 1200)[-1]
    assert len(examples(last)) >= 2 and last.chosen          # (the premise: lines and a context to hold)
    overflows = [len(last.chosen) + 1]                       # every chunk of the context, then one example line

    class Overflowing(Assembler):
        def __init__(self, encoder):
            super().__init__(encoder)
            if overflows[0] > 0:
                overflows[0] -= 1
                self.ids += [0] * 100_000

    monkeypatch.setattr(completion, "Assembler", Overflowing)
    packed = once(starcoder_tokenizer, repo, ROW, "total =", 1200, suffix_first, session=session)
    assert packed.chosen == [] and len(examples(packed)) == len(examples(last)) - 1   # (the premise: given up)
    assert [(path, line) for path, line, _ in packed.held.choices] == packed.chosen
    assert sorted((path, number) for path, number, _ in packed.held.examples) == sorted(examples(packed))


def assert_changed_only_where_the_window_moved(prompts: list) -> None:
    """Each prompt's ids before the file are the last one's unless its window began elsewhere."""
    assert [number for number in range(1, len(prompts)) if before_file(prompts[number]) != before_file(
        prompts[number - 1]) and prompts[number].held.window_start == prompts[number - 1].held.window_start] == []


@pytest.mark.parametrize("suffix_first", [False, True], ids=["psm", "spm"])
@pytest.mark.parametrize("budget", [600, 1200])
def test_a_new_line_keeps_the_last_lines_examples_while_the_window_holds(repo, starcoder_tokenizer, budget,
                                                                         suffix_first):
    """`total = compute_mean(values, 7)` typed, then a new line below it. The examples come in as the line finds
    them (compute_mean's at `(`: one change, the old rule's); at the new line, which finds none of its own, they went
    before, and the file's whole window after them was prefilled again (llama.vim's replay: ~2,600 tokens at 8,160,
    keystroke #23). Now, while the window begins where it began, the new line keeps them, and every token before
    the file."""
    session = new_session(starcoder_tokenizer, repo, suffix_first)
    prompts = typed(session, ROW, "total = compute_mean(values, 7)", budget)
    rows = APP.split("\n")
    rows[ROW:ROW + 1] = ["    total = compute_mean(values, 7)", "    "]
    new_line = session.complete("app.py", text="\n".join(rows), line=ROW + 2, col=5,
                                sampling=Sampling(max_tokens=0), budget=budget).prompt
    line_end = prompts[-1]
    assert examples(line_end) == examples(once(starcoder_tokenizer, repo, ROW, "total = compute_mean(", budget,
                                                  suffix_first))              # (what its `(` found)
    assert examples(line_end)
    if not suffix_first:
        assert new_line.held.window_start == line_end.held.window_start       # (the premise)
    if new_line.held.window_start == line_end.held.window_start:
        assert examples(new_line) == examples(line_end) and before_file(new_line) == before_file(line_end)


@pytest.mark.parametrize("suffix_first", [False, True], ids=["psm", "spm"])
def test_example_lines_found_first_stay_over_other_lines_while_the_window_holds(repo, starcoder_tokenizer,
                                                                                suffix_first):
    """The first request at the place has `total ` (compute_sum's lines); the line is then typed over as
    `count = brand_new(` and a new line is begun below: the lines stay (they are in the index as they were, and not
    in the file's window), and every token before the file with them, while the window begins where it began."""
    session = new_session(starcoder_tokenizer, repo, suffix_first)
    first = once(starcoder_tokenizer, repo, ROW, "total ", 1200, suffix_first, session)
    assert examples(first)
    prompts = typed(session, ROW, "count = brand_new(", 1200)
    rows = APP.split("\n")
    rows[ROW:ROW + 1] = ["    count = brand_new(", "    "]
    prompts.append(session.complete("app.py", text="\n".join(rows), line=ROW + 2, col=5,
                                    sampling=Sampling(max_tokens=0), budget=1200).prompt)
    if not suffix_first:
        assert all(before_file(packed) == before_file(first) for packed in prompts)
        assert all(examples(packed) == examples(first) for packed in prompts)
    assert_changed_only_where_the_window_moved([first] + prompts)


def test_a_moved_window_lets_the_example_lines_of_another_line_go(repo, starcoder_tokenizer):
    """The held state names where the window began; at a new line that finds no lines of its own, a prompt whose
    window begins where it began keeps the last line's example lines, one whose window begins elsewhere (forced here:
    the held state's start replaced) has what a prompt without history has (none), at no extra cost."""
    from dataclasses import replace

    from prompts.completion import build_completion_prompt

    rows = APP.split("\n")
    rows[ROW] = "    total "
    first = build_completion_prompt(repo, starcoder_tokenizer, "app.py", text="\n".join(rows), line=ROW + 1,
                                    col=len(rows[ROW]) + 1, budget_tokens=1200)
    rows[ROW:ROW + 1] = ["    total = brand_new(", "    "]
    request = dict(text="\n".join(rows), line=ROW + 2, col=5, budget_tokens=1200)
    held = build_completion_prompt(repo, starcoder_tokenizer, "app.py", held=first.held, **request)
    moved = build_completion_prompt(repo, starcoder_tokenizer, "app.py",
                                    held=replace(first.held, window_start=("elsewhere",)), **request)
    alone = build_completion_prompt(repo, starcoder_tokenizer, "app.py", **request)
    assert held.held.window_start == first.held.window_start                 # (the premise)
    assert examples(held) == examples(first) != examples(alone) == []
    assert examples(moved) == examples(alone)

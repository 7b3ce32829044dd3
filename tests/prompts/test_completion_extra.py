"""Client-supplied chunks (llama.cpp's input_extra) in a completion prompt: ahead of the ranked context, each in a
section of its own, in the client's order, the oldest dropped first when they do not all fit."""

import pytest

from prompts import build_completion_prompt, index_repository

REPO = {
    "lib/shapes.py": "def area(width, height):\n    return width * height\n\n\ndef perimeter(width, height):\n"
                     "    return 2 * (width + height)\n",
    "app.py": "from lib.shapes import area\n\n\ndef report(w, h):\n    total = area(w, h)\n    return total\n",
}
EXTRA = [("notes/first.py", "FIRST = 'oldest chunk'\n"), ("notes/second.py", "SECOND = 'middle chunk'\n"),
         ("/abs/third.py", "THIRD = 'newest chunk'\n")]


@pytest.fixture
def repo_index(make_repo):
    return index_repository(make_repo(REPO))


@pytest.mark.parametrize("tokenizer_name", ["starcoder_tokenizer", "codellama_tokenizer"])
def test_extra_chunks_come_first_in_their_own_sections(repo_index, tokenizer_name, request):
    tokenizer = request.getfixturevalue(tokenizer_name)
    packed = build_completion_prompt(repo_index, tokenizer, "app.py", line=5, col=5, budget_tokens=4000,
                                     extra=EXTRA)
    text = tokenizer.decode(packed.ids)
    positions = [text.index(word) for word in ("oldest chunk", "middle chunk", "newest chunk", "def perimeter",
                                               "total = area")]
    assert positions == sorted(positions), text     # client order, then ranked context, then the cursor
    for filename, _ in EXTRA:
        assert f"{filename}\n" in text               # each chunk under its own file header
    assert [item.path for item in packed.context[:3]] == [name for name, _ in EXTRA]
    assert all(item.tokens > 0 and item.start_line == item.end_line == 1 for item in packed.context[:3])
    assert "lib/shapes.py" in [item.path for item in packed.context[3:]]


def test_the_oldest_extra_chunks_go_first_when_the_budget_is_short(repo_index, starcoder_tokenizer):
    many = [(f"ring/{i}.py", f"VALUE_{i} = {i} * 1000 + {i}\n" * 3) for i in range(40)]
    without = build_completion_prompt(repo_index, starcoder_tokenizer, "app.py", line=5, col=5, budget_tokens=300)
    packed = build_completion_prompt(repo_index, starcoder_tokenizer, "app.py", line=5, col=5, budget_tokens=300,
                                     extra=many)
    assert len(packed.ids) <= 300
    kept = [item.path for item in packed.context if item.path.startswith("ring/")]
    assert 0 < len(kept) < len(many)
    assert kept == [name for name, _ in many[-len(kept):]]     # the newest, in order
    assert "total = area" in starcoder_tokenizer.decode(packed.ids)   # the text at the cursor stays


def test_an_extra_chunk_with_classic_mac_line_ends_has_its_lines(repo_index, starcoder_tokenizer):
    unix = build_completion_prompt(repo_index, starcoder_tokenizer, "app.py", line=5, col=5, budget_tokens=500,
                                   extra=[("old/mac.py", "A = 1\nB = 2\nC = 3\n")])
    mac = build_completion_prompt(repo_index, starcoder_tokenizer, "app.py", line=5, col=5, budget_tokens=500,
                                  extra=[("old/mac.py", "A = 1\rB = 2\rC = 3\r")])
    assert mac.ids == unix.ids and mac.context == unix.context        # three lines, not raw "\r"s on one
    assert (mac.context[0].start_line, mac.context[0].end_line) == (1, 3)


def test_no_extra_leaves_the_prompt_as_it_was(repo_index, starcoder_tokenizer):
    plain = build_completion_prompt(repo_index, starcoder_tokenizer, "app.py", line=5, col=5, budget_tokens=500)
    blank = build_completion_prompt(repo_index, starcoder_tokenizer, "app.py", line=5, col=5, budget_tokens=500,
                                    extra=[("empty.py", "\n"), ("spaces.py", "   ")])
    assert blank.ids == plain.ids and blank.context == plain.context


def test_thousands_of_extra_chunks_cost_what_the_budget_holds(repo_index, starcoder_tokenizer):
    """A request's input_extra of 20,000 chunks (500 KB) was encoded whole (2 s a keystroke) and a chunk of
    megabytes too, for a budget that holds a few: only the newest whose characters could fit are encoded."""

    class Counting:
        characters = 0

        def __call__(self, text, *args, **kwargs):
            Counting.characters += sum(map(len, [text] if isinstance(text, str) else text))
            return starcoder_tokenizer(text, *args, **kwargs)

        def __getattr__(self, name):
            return getattr(starcoder_tokenizer, name)

    many = [(f"ring/{i}.py", f"VALUE_{i} = {i}\n") for i in range(20_000)]
    for extra in (many, [("huge.py", "x = 1\n" * 500_000), ("last.py", "LAST = 1\n")]):
        Counting.characters = 0
        packed = build_completion_prompt(repo_index, Counting(), "app.py", line=5, col=5, budget_tokens=1000,
                                         extra=extra)
        assert len(packed.ids) <= 1000 and extra[-1][0] in [item.path for item in packed.context]  # the newest
        assert Counting.characters < 20 * 1000, Counting.characters    # (all of them: 500 KB, or 3 MB)


def test_a_file_read_from_disk_with_a_byte_order_mark_counts_columns_without_it(make_repo, starcoder_tokenizer):
    """A Windows editor's byte-order mark was read as a character of line 1: `--line 1 --col 10` (the end of
    `import os`, as the editor counts) put the cursor before the `s`, and the mark went into the prompt."""
    root = make_repo({"bom.py": b"\xef\xbb\xbfimport os\r\nx = os.sep\r\n"})
    packed = build_completion_prompt(index_repository(root), starcoder_tokenizer, "bom.py", line=1, col=10,
                                     budget_tokens=500, heal=False)
    prompt = starcoder_tokenizer.decode(packed.ids)
    assert "\ufeff" not in prompt and "import os<fim_suffix>" in prompt


def test_a_chunk_too_large_to_fit_whole_leaves_its_last_lines(repo_index, starcoder_tokenizer):
    """As llama.cpp keeps the end of the extra context (n_extra_take tokens from the end): a newest chunk larger than
    the budget gives its last lines under its header, not nothing; an older one the rest of the room the same way."""
    big = "".join(f"ROW_{i} = {i} * 7\n" for i in range(400))
    packed = build_completion_prompt(repo_index, starcoder_tokenizer, "app.py", line=5, col=5, budget_tokens=300,
                                     extra=[("ring/big.py", big)])
    text = starcoder_tokenizer.decode(packed.ids)
    item = packed.context[0]
    assert len(packed.ids) <= 300 and item.path == "ring/big.py" and item.end_line == 400 and item.start_line > 300
    assert "ROW_399 = 399 * 7" in text and f"ROW_{item.start_line - 1} = " in text and "ROW_0 " not in text
    assert "ring/big.py\n" in text and "total = area" in text        # its header, and the text at the cursor
    packed = build_completion_prompt(repo_index, starcoder_tokenizer, "app.py", line=5, col=5, budget_tokens=300,
                                     extra=[("ring/big.py", big), ("ring/new.py", "NEWEST = 1\n")])
    assert [(c.path, c.end_line) for c in packed.context[:2]] == [("ring/big.py", 400), ("ring/new.py", 1)]


@pytest.mark.parametrize("budget", [600, 1000])
def test_the_chunks_room_is_the_same_for_an_empty_buffer_and_a_long_file(make_repo, starcoder_tokenizer, budget):
    """llama.vim fills the model's cache with its chunks alone (its ring: an empty buffer, n_predict 0) for the next
    keystrokes to begin with the same tokens. Their room was what the file left, so an empty buffer's took the
    file's unused share, the oldest chunk was cut at another line than under a long file's, and the two prompts
    parted after 8 tokens (of 944, at 1,024 tokens with the embedded tokenizer): every keystroke read its chunks again.
    Now the room is one number whatever the file needs and whatever its name (up to NAME_TOKENS)."""
    long_file = "".join(f"def step_{i}(state):\n    return state * {i} + {i % 7}\n\n\n" for i in range(200))
    root = make_repo({**REPO, "pkg/module_for_cursor.py": long_file})
    index = index_repository(root)
    ring = [(f"ring/{i}.py", "".join(f"VALUE_{i}_{j} = {i} * {j} + 1\n" for j in range(4))) for i in range(12)]
    warm = build_completion_prompt(index, starcoder_tokenizer, "untitled", text="", line=1, col=1,
                                   budget_tokens=budget, extra=ring)
    chunks = [item for item in warm.context if item.path.startswith("ring/")]
    assert 0 < len(chunks) < len(ring)                               # not all fit
    extras = sum(item.tokens for item in chunks)
    for path, line in (("pkg/module_for_cursor.py", 402), ("app.py", 5)):
        real = build_completion_prompt(index, starcoder_tokenizer, path, line=line, col=5, budget_tokens=budget,
                                       extra=ring)
        assert len(real.ids) <= budget
        assert [item for item in real.context if item.path.startswith("ring/")] == chunks
        assert real.ids[:extras] == warm.ids[:extras], path     # the cache of the chunks serves the keystroke

"""Packing: the budget is never exceeded, the text before the cursor is always there, the start of the prompt
stays put while the user types, and bad input is a PromptError."""

import random

import pytest

from prompts import PromptError, build_completion_prompt, index_repository


def _module(i: int) -> str:
    body = "".join(f"    total = total + value * {j}  # step {j} of helper {i}\n" for j in range(12))
    return f"import os\n\n\ndef helper_{i}(value):\n    total = 0\n{body}    return total\n"


REPO = {f"lib/helpers_{i}.py": _module(i) for i in range(12)} | {
    "app/main.py": (
        "from lib.helpers_3 import helper_3\nfrom lib.helpers_7 import helper_7\n\n\n"
        + "".join(f"def step_{k}(x):\n    y = helper_3(x) + helper_7(x)\n    return y * {k}\n\n\n" for k in range(40))
        + "def main():\n    result = helper_3(1)\n    print(result)\n"
    ),
}


@pytest.fixture(scope="module")
def repo_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("packing") / "repo"
    for path, text in REPO.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return index_repository(root, cache_dir=tmp_path_factory.mktemp("packing-cache"))


@pytest.mark.parametrize("tokenizer_name", ["smollm2_tokenizer", "codellama_tokenizer"])
def test_random_budgets_are_never_exceeded_and_keep_the_text_before_the_cursor(repo_index, tokenizer_name, request):
    tokenizer = request.getfixturevalue(tokenizer_name)
    rows = REPO["app/main.py"].split("\n")
    rng = random.Random(4)
    for _ in range(25):
        row = rng.randrange(len(rows))
        col = rng.randint(0, len(rows[row]))
        budget = rng.choice([48, 64, 100, 300, 700, 1500, 4000])
        reserve = rng.choice([0, 16])
        packed = build_completion_prompt(
            repo_index, tokenizer, "app/main.py", line=row + 1, col=col + 1, budget_tokens=budget + reserve,
            reserve_tokens=reserve,
        )
        assert len(packed.ids) <= budget
        before_cursor = "\n".join(rows[:row] + [rows[row][:col]])
        assert before_cursor.endswith(packed.heal_text)  # healing leaves the last token to the model
        shown = before_cursor[: len(before_cursor) - len(packed.heal_text)]
        assert shown.split("\n")[-1][-12:].strip() in tokenizer.decode(packed.ids)
        here = [i for i in packed.context if i.path == "app/main.py" and i.start_line <= row + 1 <= i.end_line]
        assert here, packed.context
        for item in packed.context:
            assert 1 <= item.start_line <= item.end_line <= len(REPO[item.path].split("\n"))


def test_a_large_budget_takes_the_whole_file_and_the_related_chunks(repo_index, smollm2_tokenizer):
    source = REPO["app/main.py"]
    row = source.split("\n").index("    print(result)")
    packed = build_completion_prompt(
        repo_index, smollm2_tokenizer, "app/main.py", line=row + 1, col=5, budget_tokens=8000
    )
    text = smollm2_tokenizer.decode(packed.ids)
    assert packed.heal_text == "\n    "  # the newline and the indentation are one token, left to the model
    assert text.endswith("<file_sep>app/main.py\n" + source.split("\n    print(result)")[0])  # the whole prefix
    paths = [item.path for item in packed.context]
    assert paths.index("lib/helpers_3.py") < paths.index("app/main.py")
    assert {"lib/helpers_3.py", "lib/helpers_7.py"} <= set(paths)
    assert len(packed.ids) <= 8000
    assert packed.format == "left-to-right"
    assert packed.stop_strings == ["\n"]  # inside a line: complete the line
    assert smollm2_tokenizer.convert_tokens_to_ids("<file_sep>") in packed.stop_token_ids


def test_typing_at_the_cursor_keeps_the_start_of_the_prompt(repo_index, smollm2_tokenizer):
    """The model reuses the cached keys and values of an unchanged prompt start: while the user types a word,
    everything before the current file's section must stay the same."""
    file_sep = smollm2_tokenizer.convert_tokens_to_ids("<file_sep>")
    base = REPO["app/main.py"]
    starts = []
    for typed in ["", "r", "re", "res", "resu", "resul", "result"]:
        text = base.replace("    print(result)\n", f"    print(result)\n    {typed}\n")
        row = text.split("\n").index(f"    {typed}")
        packed = build_completion_prompt(
            repo_index, smollm2_tokenizer, "app/main.py",
            text=text, line=row + 1, col=5 + len(typed), budget_tokens=1200,
        )
        last_section = len(packed.ids) - packed.ids[::-1].index(file_sep) - 1
        starts.append(packed.ids[: last_section + 1])
        assert len(packed.ids) <= 1200
    assert all(start == starts[0] for start in starts)
    assert len(starts[0]) > 300  # there is repository context to reuse


def test_input_errors_are_prompt_errors(repo_index, smollm2_tokenizer):
    def build(path="app/main.py", **kwargs):
        return build_completion_prompt(repo_index, smollm2_tokenizer, path, **kwargs)

    with pytest.raises(PromptError, match="no such file: app/missing.py"):
        build("app/missing.py")
    with pytest.raises(PromptError, match="outside the repository"):
        build("../elsewhere.py")
    for name in ("app/a\x00b.py", "app/\ud800.py"):     # (os.open refuses them with ValueError)
        with pytest.raises(PromptError, match="not a file name"):
            build(name)
    with pytest.raises(PromptError, match="line 999 is out of range"):
        build(line=999)
    with pytest.raises(PromptError, match="column 80 is out of range"):
        build(line=1, col=80)
    with pytest.raises(PromptError, match="budget of 3 tokens"):
        build(budget_tokens=3)
    # A new, unsaved buffer is fine: its text is given.
    packed = build("app/new.py", text="import os\nresult = helper_3(", budget_tokens=500)
    assert smollm2_tokenizer.decode(packed.ids).endswith("<file_sep>app/new.py\nimport os\nresult = helper_3")
    assert packed.heal_text == "("


class _CountingTokenizer:
    """A tokenizer that adds up the characters it is asked to tokenize."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.characters = 0

    def __call__(self, text, *args, **kwargs):
        self.characters += sum(map(len, [text] if isinstance(text, str) else text))
        return self._tokenizer(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


@pytest.mark.parametrize("tokenizer_name", ["smollm2_tokenizer", "codellama_tokenizer"])
def test_a_line_of_megabytes_costs_what_the_budget_holds_not_what_the_file_holds(make_repo, tokenizer_name, request):
    """Issue 15, item 4: a 5 MB single-line file was tokenized whole about five times (94 s). Now only slices
    the budget could hold go to the tokenizer, before, after and in the middle of the line."""
    line = "data = [" + ", ".join(str(i * 7919 % 10**6) for i in range(700_000)) + "]"  # 5.5 MB
    index = index_repository(make_repo({"big.py": line + "\n", "small.py": "def f(x):\n    return x\n"}))
    for col in (None, len(line) // 2, 1):
        counting = _CountingTokenizer(request.getfixturevalue(tokenizer_name))
        packed = build_completion_prompt(index, counting, "big.py", line=1, col=col, budget_tokens=1024)
        assert len(packed.ids) <= 1024
        if col != 1 or packed.format != "left-to-right":  # (at the file's start, left to right shows nothing)
            assert len(packed.ids) >= 900  # as much of the line as fits
        assert counting.characters < 2_000_000


@pytest.mark.parametrize("tokenizer_name", ["smollm2_tokenizer", "codellama_tokenizer"])
def test_a_line_too_long_for_the_budget_leaves_its_room_to_the_rest_of_the_prompt(make_repo, tokenizer_name, request):
    """The window never has holes, so a line that alone outgrows the file's share (a 200 KB data URI among short
    functions) is as far as it reaches that way. The share was still half the budget, which the window could not
    use, so the prompt held about half its budget (450 of 1,024 tokens, 4,136 of 8,192 below a 400 KB line): that
    room goes to the repository's context, and (with a suffix) to the text on the other side of the cursor. The
    prompt is then as full as the same file's with the long line short (whose blocks leave what they leave) but for
    the examples' room, which stays theirs or the window's: the context does not change with the example lines found."""
    from prompts.completion import EXAMPLE_TOKENS

    tokenizer = request.getfixturevalue(tokenizer_name)
    functions = [f"def scale_{i}(x):\n    return x * {i} + {i % 7}\n\n\n" for i in range(600)]
    uri = 'ICON = "data:image/png;base64,' + "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk" * 3300 + '"'
    sizes = {}
    for name, line_text in (("long", uri), ("short", "ICON = 1")):
        text = "".join(functions[:300]) + line_text + "\n" + "".join(functions[300:])
        index = index_repository(make_repo({"big.py": text, "util.py": "def clamp(x, lo, hi):\n    return x\n"},
                                           name=name))
        wall = text.split("\n").index(line_text) + 1
        for line in (wall + 1, wall + 21) + ((wall - 4, wall - 20) if tokenizer_name == "codellama_tokenizer" else ()):
            packed = build_completion_prompt(index, tokenizer, "big.py", line=line, col=5, budget_tokens=1024)
            sizes[name, line - wall] = len(packed.ids)
            assert len(packed.ids) <= 1024 and "data:image" not in tokenizer.decode(packed.ids)
    assert all(sizes["long", at] >= sizes["short", at] - EXAMPLE_TOKENS for _, at in sizes), sizes
    assert all(sizes["long", at] >= 750 for _, at in sizes), sizes


def test_the_encoder_forgets_the_least_recently_used_pieces_never_the_ones_it_returns(smollm2_tokenizer, monkeypatch):
    """A full cache evicts while a call is under way: the pieces the call returns (cached ones among them) are
    never the ones it forgets, and the pieces used most recently stay."""
    import prompts.tokens
    from prompts.tokens import Encoder

    monkeypatch.setattr(prompts.tokens, "CACHE_PIECES", 4)
    encoder = Encoder(smollm2_tokenizer)
    plain = lambda text: smollm2_tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    kept = "def kept(value):\n"
    encoder.encode_many([kept, "a = 1\n", "b = 2\n"])
    texts = [kept] + [f"piece_{i} = {i} * {i}\n" for i in range(6)]  # a cached piece among more than fit
    assert [list(ids) for ids in encoder.encode_many(texts)] == [plain(text) for text in texts]
    encoder.encode_many(["x = 1\n", kept, "y = 2\n"])
    encoder.encode_many(["z = 3\n"])
    assert (kept, False) in encoder._cache and ("a = 1\n", False) not in encoder._cache  # used last, kept


def test_the_encoder_forgets_many_pieces_in_one_pass(smollm2_tokenizer):
    """Forgetting one piece at a time by the dict's first key walked past every slot deleted before it: 80,000
    pieces in one call took 6.3 s where the tokenizer took 2.1 s. The cache is walked once per call."""
    from prompts.tokens import CACHE_PIECES, Encoder

    class Walked(dict):
        def __iter__(self):
            walks.append(1)
            return super().__iter__()

    walks = []
    encoder = Encoder(smollm2_tokenizer)
    encoder._cache = Walked()
    texts = [f"v{i} = {i}\n" for i in range(3 * CACHE_PIECES)]
    assert [list(ids) for ids in encoder.encode_many(texts)[-2:]] == [
        smollm2_tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts[-2:]]
    assert len(encoder._cache) == CACHE_PIECES and (texts[-1], False) in encoder._cache
    assert len(walks) <= 2       # (one a piece forgotten: 16,384)


def test_the_last_prompts_chunks_keep_their_places_behind_the_freshest_best():
    """_keep_previous: those of the new ranking's FRESH best that rank above all the last prompt had first, then
    the last prompt's chunks that still rank within reach, in the order that prompt chose them, then the rest of
    the ranking; one out of reach is not kept."""
    from prompts.chunking import Chunk
    from prompts.completion import FRESH, KEEP_REACH, KEEP_SLACK, _keep_previous

    chunks = [Chunk(f"f{i}.py", 1, 2, "python", "definition", (f"d{i}",), frozenset(), "x = 1", 3) for i in range(80)]
    ranked = [(100.0 - i, chunk) for i, chunk in enumerate(chunks)]
    previous = [("f9.py", 1), ("f1.py", 1), ("f7.py", 1), ("f79.py", 1), ("gone.py", 1)]
    reach = FRESH + KEEP_REACH * len(previous) + KEEP_SLACK
    order = [chunk.path for _, chunk in _keep_previous(iter(ranked), previous)]
    assert order[:4] == ["f0.py", "f9.py", "f1.py", "f7.py"]  # the new best, then the kept in the last prompt's order
    assert order[4:4 + FRESH - 2] == [f"f{i}.py" for i in range(2, FRESH)]  # fresh, but below a kept one: after them
    fresher = [("f9.py", 1)]
    assert [chunk.path for _, chunk in _keep_previous(iter(ranked), fresher)][:FRESH + 1] == [
        *(f"f{i}.py" for i in range(FRESH)), "f9.py"]  # (FRESH of the new best at most)
    assert 79 >= reach and order.index("f79.py") == 79  # out of reach: where the ranking puts it
    assert sorted(order) == sorted(chunk.path for chunk in chunks)  # nothing lost, nothing twice
    assert [chunk.path for _, chunk in _keep_previous(iter(ranked), ())] == [chunk.path for chunk in chunks]


def test_the_same_request_again_makes_the_same_prompt(make_repo, starcoder_tokenizer):
    """Two definitions rank at the top and only one fits. Given the last prompt's `chosen`, the one left out went
    first as a fresh best and pushed the other out, which then went first the time after: the same request made
    two prompts in turn, and the model's cache of the prompt's start served neither."""
    from prompts import build_completion_prompt, index_repository

    body = "".join(f"    step_{i} = value * {i}\n" for i in range(12))
    index = index_repository(make_repo({
        "lib/a.py": f"def helper_a(value):\n{body}    return value\n",
        "lib/b.py": f"def helper_b(value):\n{body}    return value\n",
        "app.py": "from lib.a import helper_a\nfrom lib.b import helper_b\n\n\ndef run(total):\n"
                  "    total = helper_a(total) + helper_b(total)\n    \n",
    }))
    prompts = [build_completion_prompt(index, starcoder_tokenizer, "app.py", line=7, col=5, budget_tokens=160)]
    for _ in range(3):
        prompts.append(build_completion_prompt(index, starcoder_tokenizer, "app.py", line=7, col=5,
                                               budget_tokens=160, previous=prompts[-1].chosen))
    assert len(prompts[0].chosen) == 1     # (the premise: one of the two fits)
    assert [p.ids for p in prompts] == [prompts[0].ids] * 4


def test_the_next_line_keeps_the_repository_context_and_the_prompts_start(make_repo, smollm2_tokenizer):
    """A function calling twenty helpers, one per line: the nearer a call to the cursor, the higher its helper's
    definition ranks, so moving the cursor one line down slides the window of definitions that fit. Given the
    last prompt's `chosen`, the context stays (behind the FRESH best) and so does the prompt's start."""
    from prompts import build_completion_prompt, index_repository

    helpers = {f"lib/h{i}.py": f"def helper_{i}(value, scale={i}):\n    return value * scale + {i}\n" for i in range(20)}
    head = "".join(f"from lib.h{i} import helper_{i}\n" for i in range(20)) + "\n\ndef run(total):\n"
    calls = [f"    total += helper_{i}(total)\n" for i in range(20)]

    def at(k: int) -> tuple[str, int]:  # the buffer with the cursor on a new line after call k
        text = head + "".join(calls[:k + 1]) + "    \n" + "".join(calls[k + 1:]) + "    return total\n"
        return text, head.count("\n") + k + 2

    index = index_repository(make_repo({**helpers, "app.py": at(9)[0]}))

    def build(k: int, previous=()):
        text, line = at(k)
        return build_completion_prompt(index, smollm2_tokenizer, "app.py", text=text, line=line, col=5,
                                       budget_tokens=400, previous=previous)

    def repository(packed):
        return [(item.path, item.start_line) for item in packed.context if item.path.startswith("lib/")]

    def common(a, b):
        return next((n for n, (x, y) in enumerate(zip(a.ids, b.ids)) if x != y), min(len(a.ids), len(b.ids)))

    first = build(9)
    assert len(first.chosen) >= 4 and set(repository(first)) <= set(first.chosen)
    plain, sticky = build(10), build(10, previous=first.chosen)
    assert repository(plain) != repository(first)  # (the premise: the window slides)
    assert repository(sticky) == repository(first)
    assert common(sticky, first) > common(plain, first)


    # The session keeps a completion's choice for the next one in the same file; a completion that is not sticky
    # (the command line's, through a server) neither uses nor changes it: it is what a session without history builds.
    from types import SimpleNamespace

    from codecomplete.session import Sampling, Session

    session = Session(SimpleNamespace(tokenizer=smollm2_tokenizer, check_prompt=lambda ids: None, context_length=2048),
                      index)
    sampling = Sampling(max_tokens=8)

    def complete(k: int, sticky: bool = True):
        text, line = at(k)
        return session.complete("app.py", text=text, line=line, col=5, sampling=sampling, budget=400,
                                sticky=sticky).prompt

    assert repository(complete(9)) == repository(first)
    assert complete(10, sticky=False).ids == plain.ids
    assert complete(10).ids == sticky.ids          # still the choice of the sticky one before

@pytest.mark.parametrize("tokenizer_name, before, after, cut", [
    ("smollm2_tokenizer", "def f(x):\n    return ", "x + 1\n", False),      # all of it fits
    ("smollm2_tokenizer", "word " * 2000, "", True),                         # one line over the budget: cut within
    ("smollm2_tokenizer", "x = 1\n" * 600, "", True),                        # lines from the top gave way
    ("smollm2_tokenizer", "def f(x):\n    return ", "\ny = 2" * 600, False),  # left to right: no suffix, by design
    ("starcoder_tokenizer", "def f(x):\n    return ", "x + 1\n", False),
    ("starcoder_tokenizer", "def f(x):\n    return ", "\ny = 2" * 600, True),  # FIM: lines from the bottom gave way
])
def test_the_prompt_says_whether_the_files_text_was_cut(make_repo, request, tokenizer_name, before, after, cut):
    """llama.cpp's `truncated`: a 10,000-character single-line prefix said False, as only the first kept line
    was compared with line 1 (the cursor's own line had been cut from its start), and the suffix's end was
    never looked at."""
    index = index_repository(make_repo({"small.py": "def g():\n    pass\n"}))
    text = before + after
    line, col = before.count("\n") + 1, len(before.rsplit("\n", 1)[-1]) + 1
    packed = build_completion_prompt(index, request.getfixturevalue(tokenizer_name), "buffer.py", text=text,
                                     line=line, col=col, budget_tokens=512)
    assert packed.cut is cut and len(packed.ids) <= 512


@pytest.mark.parametrize("tokenizer_name", ["smollm2_tokenizer", "starcoder_tokenizer"])
def test_characters_of_several_tokens_at_a_small_budget_cut_and_end(make_repo, request, tokenizer_name):
    """A character the tokenizer writes as several byte tokens shares one start among them: cut there, the window
    kept the whole character and more tokens than its budget, and the prompt's fitting loop rebuilt the same window
    for ever (one request froze a server). Every budget now ends within itself, or says it cannot."""
    import signal

    from prompts.errors import BudgetError
    tokenizer = request.getfixturevalue(tokenizer_name)
    index = index_repository(make_repo({"k.py": 's = "キキキキキキキキ"\nt = "😀😀😀😀😀😀"\nu = "e\u0301e\u0301e\u0301"\n'}))
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("the prompt never fitted")))
    signal.alarm(120)
    try:
        for line, col in [(1, 7), (1, 9), (1, 11), (2, 8), (2, 10), (3, 6), (3, 8)]:
            for budget in range(2, 40):
                try:
                    packed = build_completion_prompt(index, tokenizer, "k.py", line=line, col=col,
                                                     budget_tokens=budget)
                except BudgetError:
                    continue
                assert len(packed.ids) <= budget, (line, col, budget)
    finally:
        signal.alarm(0)


def test_a_buffer_with_a_lone_surrogate_builds_a_prompt(make_repo, smollm2_tokenizer):
    """Library callers may pass what the app cleans first (a lone surrogate): it becomes U+FFFD, offsets kept."""
    index = index_repository(make_repo({"a.py": "x = 1\n"}))
    packed = build_completion_prompt(index, smollm2_tokenizer, "a.py", text="x = 'ab\ud800", budget_tokens=64)
    assert "\ufffd" in smollm2_tokenizer.decode(packed.ids) + packed.heal_text


def test_a_buffer_of_megabytes_has_its_imports_read_from_its_head(make_repo, starcoder_tokenizer, monkeypatch):
    """An editor buffer's imports were read by querying all of it (a 2 MB buffer of assignments: 4.4 s a
    keystroke; --stdin takes 64 MiB): now from as much of it as the index reads of any file, its imports still
    followed."""
    import prompts.completion
    from prompts.scan import MAX_FILE_BYTES

    queried = []
    real = prompts.completion.source_imports
    monkeypatch.setattr(prompts.completion, "source_imports",
                        lambda path, text: queried.append(text) or real(path, text))
    index = index_repository(make_repo({"lib.py": "def helper(value):\n    return value * 2\n", "app.py": "x = 1\n"}))
    buffer = "from lib import helper\n" + "".join(f"v{i} = f{i}(b{i})\n" for i in range(150_000)) + "y = helper("
    packed = build_completion_prompt(index, starcoder_tokenizer, "app.py", text=buffer, budget_tokens=500)
    assert any(item.path == "lib.py" for item in packed.context)
    assert len(queried) == 1 and len(queried[0]) <= MAX_FILE_BYTES and queried[0].endswith("\n")


def test_an_encoder_remembered_for_a_tokenizer_does_not_keep_it_alive():
    """encoder_for remembers one Encoder per tokenizer, weakly keyed, but the Encoder held its tokenizer: every
    tokenizer ever used stayed alive, one more each time the REPL's /model loaded a model."""
    import gc
    import weakref

    from prompts.tokens import encoder_for
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.BPE(vocab={character: i for i, character in
                                          enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    assert list(encoder_for(tokenizer).encode("ab")) == tokenizer("ab", add_special_tokens=False)["input_ids"]
    assert encoder_for(tokenizer) is encoder_for(tokenizer)          # remembered while the tokenizer lives
    gone = weakref.ref(tokenizer)
    del tokenizer
    gc.collect()
    assert gone() is None


def test_chosen_chunks_stay_within_their_budget_and_are_laid_out_in_line_order(smollm2_tokenizer):
    """select_chunks on its own, many budgets: what it counts never passes the budget, is at least what the laid-out
    segments take (an upper bound, separators included), and each file's chunks come out in line order, the most
    relevant file last. (The whole prompt has a last-resort trim that hid a chooser one token over its share.)"""
    from prompts.chunking import Chunk
    from prompts.packing import Layout, count_all, select_chunks
    from prompts.tokens import Encoder

    encoder = Encoder(smollm2_tokenizer)
    layout = Layout(section=lambda c: [f"# file: {c.path}\n"], chunk=lambda c: [c.text + "\n"],
                    gap=lambda c: ["    ...\n"], blank=lambda c: ["\n"],
                    code_between=lambda a, b: a.end_line + 3 < b.start_line,
                    outline=lambda c: [c.text.split("\n")[0] + "\n"])
    rng = random.Random(7)
    chunks = []
    for f in range(10):
        line = 1
        for k in range(8):
            n = rng.randint(1, 40)          # (past WHOLE_MIN_TOKENS: outlined first, then enlarged if room)
            text = "\n".join(f"    value_{f}_{k}_{i} = compute({i}, {rng.randint(0, 999)})" for i in range(n))
            chunks.append(Chunk(f"pkg/mod_{f}.py", line, line + n - 1, "python", "code", (), frozenset(), text,
                                len(text) // 4))
            line += n + rng.choice([0, 1, 2, 5])
    ranked = [(1.0, chunk) for chunk in rng.sample(chunks, len(chunks))]      # best first, files interleaved
    for budget in [*range(20, 400, 7), *range(700, 9000, 97)]:   # (past OUTLINE_TOKENS: the second pass)
        selection = select_chunks(encoder, layout, ranked, budget)
        segments, items = selection.segments()
        assert count_all(encoder, [segments])[0] <= selection.tokens <= budget, budget
        files = [path for path, _ in selection.ordered()]
        assert files == list(reversed(selection.files))                          # the best file nearest the cursor
        for path in files:
            starts = [item.start_line for item in items if item.path == path]
            assert starts == sorted(starts), (budget, path, starts)
    big = max(chunks, key=lambda chunk: chunk.approx_tokens)         # outlined first, whole only if it all fits
    exact = sum(count_all(encoder, [layout.section(big), layout.chunk(big)]))
    for budget in (exact - 1, exact):
        selection = select_chunks(encoder, layout, [(1.0, big)], budget)
        assert selection.tokens <= budget and (selection.order[0].form == "whole") == (budget == exact), budget


def test_architecture_lists_every_field_of_a_packed_prompt():
    """ARCHITECTURE.md's `packed.` lines left out `chosen` (the next prompt's `previous`) and `cut` (/infill's
    `truncated`), which the session and the server read."""
    import dataclasses
    import re
    from pathlib import Path

    from prompts.packing import PackedPrompt
    text = (Path(__file__).resolve().parents[2] / "ARCHITECTURE.md").read_text(encoding="utf-8")
    documented = re.findall(r"^packed\.(\w+):", text, re.M)
    assert documented == [f.name for f in dataclasses.fields(PackedPrompt)]


@pytest.mark.parametrize("cursor_row", [33, 34, 66])        # (0-based: the first lines of a 32-line block)
def test_a_cursor_at_the_top_of_a_block_still_sees_the_code_above_it(repo_index, smollm2_tokenizer, cursor_row):
    """The current file enters in blocks of 32 lines: a cursor in the first lines of a block, under a block too
    dense for what the file's share has left, saw only those first lines (1-4 tokens of its own file at the CPU's
    1,024-token budget, the model completing blind). It now gets the nearest lines of the block above, in parts of 8
    lines, up to the share."""
    rows = [f"    value_{n} = compute(value_{n - 1}, factor={n} * scale, name='v{n}', offset=base + {n})"
            for n in range(100)]
    text = "def pipeline(base, scale):\n" + "\n".join(rows) + "\n"
    budget = 1024                                               # the CPU's default
    packed = build_completion_prompt(repo_index, smollm2_tokenizer, "app/new.py", text=text,
                                     line=cursor_row + 1, col=5, budget_tokens=budget)
    shown = smollm2_tokenizer.decode(packed.ids)
    lines_above = [line for line in text.split("\n")[:cursor_row] if line in shown]
    assert len(packed.ids) <= budget
    # The file's share: 40% of the budget, three quarters of it before the cursor, ~300 tokens: 9 of these lines.
    assert len(lines_above) >= 6, shown[-400:]
    assert text.split("\n")[cursor_row - 1] in shown            # the line just above the cursor, whatever else


def test_typing_lines_into_a_dense_block_moves_the_window_s_far_end_in_steps(repo_index, smollm2_tokenizer):
    """The cursor's own block, too long for what the file's share leaves, was cut line by line: every line typed
    moved the window's first line down by one, and the model's cache prefilled the whole window again (the warm
    server at 1,024 tokens). Its far end now moves in steps of 8 lines counted from the block's top, as the block
    above the cursor's does."""
    rows = [f"    value_{n} = compute(value_{n - 1}, factor={n} * scale, name='v{n}', offset=base + {n})"
            for n in range(64)]
    firsts = []
    for typed in range(48, 64):                                 # one more line each time, the cursor under it
        text = "def pipeline(base, scale):\n" + "\n".join(rows[:typed]) + "\n"
        packed = build_completion_prompt(repo_index, smollm2_tokenizer, "app/new.py", text=text, budget_tokens=600)
        window = next(item for item in packed.context if item.path == "app/new.py")
        assert window.end_line == typed + 2 and len(packed.ids) <= 600  # (the header, the lines, the cursor's)
        firsts.append(window.start_line)
    assert {(first - 1) % 8 for first in firsts} == {0}, firsts  # (0-based: a block's top, or 8, 16, 24 lines on)
    assert len(set(firsts)) <= 3, firsts                        # 16 lines typed: a step of 8 at most twice


def test_an_editor_sending_the_lines_above_the_cursor_keeps_the_window_s_tokens_line_after_line(
        repo_index, smollm2_tokenizer):
    """llama.vim sends the 256 lines above the cursor, so each line typed moves the text's top down a line. The
    blocks of the window were counted from that top: they moved over the code with it, and every new line changed
    the whole window's tokens (the warm server prefilled ~500 tokens again at 1,024). Counted from the last
    prompt's anchor, found again by its text, the window keeps its tokens: only the cursor's end changes."""
    rows = [f"    value_{n} = compute(value_{n - 1}, factor={n} * scale, name='v{n}', offset=base + {n})"
            for n in range(400)]
    prompts = []
    for typed in range(300, 306):                               # the cursor at the start of the next line each time
        above = rows[typed - 256:typed]                         # llama.vim's input_prefix: 256 lines
        text = "\n".join(above) + "\n    "
        anchor = prompts[-1].anchor if prompts else None
        prompts.append(build_completion_prompt(repo_index, smollm2_tokenizer, "app/new.py", text=text,
                                               budget_tokens=1024, anchor=anchor))
    moved = 0
    for before, after in zip(prompts, prompts[1:]):
        shared = next((n for n, (a, b) in enumerate(zip(before.ids, after.ids)) if a != b), len(before.ids))
        moved += shared < len(before.ids) - 60                  # more than the last line and the cursor's end changed
    assert moved <= 1, [p.context[-1] for p in prompts]         # (the far end's step of 8 lines, at most once)


def test_an_anchor_found_both_above_and_below_its_row_is_taken_above_as_typing_moved_it(
        repo_index, smollm2_tokenizer):
    """The last prompt's anchor is looked for at its old row, then one row away on either side, and so on. llama.vim
    sends the 256 lines above the cursor, so a line typed moves the anchor's text one row up. Where its text stood
    one row below too (lines repeating every other line: a table, alternating assignments), the row below was taken
    at some rows and the row above at others (the order of a set of two ints: row 224, the first anchor of such a
    text, iterated 225 before 223): the blocks were counted two rows off, and the window's tokens changed."""
    rows = [f"    value_{n} = compute(value_{n - 1}, factor={n} * scale, name='v{n}', offset=base + {n})"
            for n in range(400)]
    rows[268:274] = ["    left = right", "    right = left"] * 3     # the first prompt's anchor rows (its 224..227)
    firsts = []
    prompts = []
    for typed in (300, 301):
        text = "\n".join(rows[typed - 256:typed]) + "\n    "
        anchor = prompts[-1].anchor if prompts else None
        prompts.append(build_completion_prompt(repo_index, smollm2_tokenizer, "app/new.py", text=text,
                                               budget_tokens=1024, anchor=anchor))
        window = next(item for item in prompts[-1].context if item.path == "app/new.py")
        firsts.append(typed - 256 + window.start_line - 1)         # the window's first row of `rows`
    assert prompts[0].anchor == (224, "\n".join(rows[268:272]))    # (the premise: the repeating rows)
    assert firsts[0] == firsts[1], firsts                          # the window begins at the same code
    assert prompts[1].anchor[0] == 223                             # found again where typing moved it


def test_the_windows_far_ends_move_only_when_the_cursor_s_piece_crosses_a_step(starcoder_tokenizer):
    """Typing changes only the prefix's piece at the cursor. Its tokens, counted exactly, moved the far ends of both
    windows whenever a part of 8 lines stopped (or started) fitting; held in steps of a sixteenth of the share, they
    move only when those steps are crossed, and the window never exceeds its share."""
    from prompts.completion import SHARE_STEPS, _in_steps, _Window
    from prompts.tokens import encoder_for

    encoder = encoder_for(starcoder_tokenizer)     # a token a byte
    rows = [f"    v{n} = f(v{n - 1}, {n})" for n in range(400)]
    share = 600
    ends: dict[int, set] = {}
    for count in range(150):                        # a line typed (its block fits 3/4 of the share)
        text = "\n".join(rows[:300] + ["    " + "x" * count] + rows[300:])
        window = _Window(encoder, text, text.split("\n"), 300, 4 + count, with_suffix=True, heal=1)
        window.fit(share)
        assert window.tokens <= share
        held = _in_steps(window._cost(window.above, 0), share // SHARE_STEPS)
        ends.setdefault(held, set()).add((window.prefix[-1].first, window.suffix[-1].last))
    assert all(len(found) == 1 for found in ends.values()), ends
    assert len(ends) >= 5 and len(set().union(*ends.values())) > 1      # (the premise: steps crossed, ends moved)


def test_a_step_crossed_while_typing_moves_the_suffix_s_end_not_the_prefix_s_top(starcoder_tokenizer):
    """A step crossed must move a far end, and the model's cache prefills everything after the first changed token
    again. PSM ([PRE] prefix [SUF] suffix) prefills its suffix again with every new token anyway, and the whole window
    when the prefix's top moves: while a line is typed the top holds and the suffix's end gives way (both moved
    before). SPM's two far ends are one [PRE] apart in the prompt: it keeps the plain split (not tested here)."""
    from prompts.completion import _Window
    from prompts.tokens import encoder_for

    encoder = encoder_for(starcoder_tokenizer)     # a token a byte
    rows = [f"    v{n} = f(v{n - 1}, {n})" for n in range(400)]
    share = 500
    tops, bottoms = set(), set()
    for count in range(150):                        # a line typed: steps of 31 tokens crossed
        text = "\n".join(rows[:300] + ["    " + "x" * count] + rows[300:])
        window = _Window(encoder, text, text.split("\n"), 300, 4 + count, with_suffix=True, heal=1)
        window.fit(share)
        assert window.tokens <= share
        tops.add(window.prefix[-1].first)
        bottoms.add(window.suffix[-1].last)
    assert len(tops) == 1 and len(bottoms) > 1, (tops, bottoms)

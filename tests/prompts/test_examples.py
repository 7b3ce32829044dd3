"""Example lines (prompts/examples.py): lines of the repository that begin as the cursor's line does, looked up by
the line up to its last word boundary, laid out just before the current file."""

from prompts import build_completion_prompt, index_repository
from prompts.chunking import Chunk
from prompts.examples import LONGEST_KEY, example_key, example_lines
from prompts.languages import language_for
from prompts.packing import EXAMPLE

KEYWORDS = language_for("x.py").keywords


def chunk(path: str, start: int, text: str) -> Chunk:
    return Chunk(path, start, start + text.count("\n"), "python", "code", (), frozenset(), text, len(text) // 4)


def test_the_key_is_the_line_to_its_last_word_boundary_without_indentation():
    assert example_key("        self._guard = Resource", KEYWORDS) == "self._guard = "
    assert example_key("    def tokenize(state: ", KEYWORDS) == "def tokenize(state: "
    assert example_key("    area = polygon_ar", KEYWORDS) == "area = "
    # typing inside a word leaves the key (and so the examples) as they were
    assert example_key("    x = foo.ba", KEYWORDS) == example_key("    x = foo.bar_", KEYWORDS)


def test_lines_of_keywords_only_or_overlong_lines_look_up_nothing():
    assert example_key("        return ", KEYWORDS) == ""
    assert example_key("    raise Clos", KEYWORDS) == ""          # 'raise' then the word being typed
    assert example_key("", KEYWORDS) == ""
    assert example_key("x" * (LONGEST_KEY + 1), KEYWORDS) == ""   # a minified line: bounded work, no lookup


def test_lines_come_best_chunk_first_distinct_and_longer_than_the_key():
    best = chunk("a.py", 10, "def f():\n    total = area(w, h)\n    total = area(w, h)\n    total = ")
    other = chunk("b.py", 3, "total = perimeter(a, b)\ntotals = []\ntotal = volume(x)\ntotal = depth(y)")
    found = example_lines([best, other], "total = ", limit=3)
    assert [(c.path, number, line) for c, number, line in found] == [
        ("a.py", 11, "    total = area(w, h)"), ("b.py", 3, "total = perimeter(a, b)"), ("b.py", 5, "total = volume(x)")]
    assert example_lines([best, other], "") == []


REPO = {
    "lib/tokens.py": "def make_token(kind, value):\n    return (kind, value)\n",
    "lib/rules.py": "from lib.tokens import make_token\n\n\ndef rule_name(state, text):\n"
                    "    token = make_token('name', text)\n    return token\n",
    "app.py": "from lib.tokens import make_token\n\n\ndef handle(state, text):\n    token = make_to\n",
}


def test_an_example_line_sits_just_before_the_current_file_and_survives_typing(make_repo, starcoder_tokenizer):
    index = index_repository(make_repo(REPO))
    packed = build_completion_prompt(index, starcoder_tokenizer, "app.py", line=5, col=20, budget_tokens=1024)
    text = starcoder_tokenizer.decode(packed.ids)
    examples = [item for item in packed.context if item.form == EXAMPLE]
    assert [(item.path, item.start_line) for item in examples] == [("lib/rules.py", 5)]
    example_at = text.index("    token = make_token('name', text)")
    assert example_at < text.index("def handle(state, text)")         # before the current file's text
    typed = build_completion_prompt(index, starcoder_tokenizer, "app.py", text=REPO["app.py"].replace(
        "make_to\n", "make_tok\n"), line=5, col=21, budget_tokens=1024)
    head = len(starcoder_tokenizer.encode(text[:text.index("def handle")]))
    assert typed.ids[:head] == packed.ids[:head]                       # the prompt up to the file is reused


def test_the_repository_context_does_not_grow_and_shrink_with_the_examples_found(make_repo, starcoder_tokenizer,
                                                                                 monkeypatch):
    # Moving the cursor finds example lines at one line and none at the next; the repository context between the
    # prompt's opening and the examples must stay token for token, or the server re-reads it all each time.
    files = {f"lib/part{n}.py": "".join(f"def make_{n}_{k}(state, text):\n    token = make_token('{n}{k}', text)\n"
                                         f"    return token\n\n\n" for k in range(6)) for n in range(12)}
    files["app.py"] = "from lib.part1 import make_1_1\n\n\n" + "".join(f"def step_{k}(state):\n    return state + {k}\n\n\n"
                                                                for k in range(200)) + "def handle(state, text):\n    token = make_to\n"
    index = index_repository(make_repo(files))

    def prompt():
        return build_completion_prompt(index, starcoder_tokenizer, "app.py", line=805, col=20, budget_tokens=768)

    with_examples = prompt()
    monkeypatch.setattr("prompts.completion.example_lines", lambda chunks, key: [])
    without = prompt()

    def repository(packed):
        return [(item.path, item.start_line, item.tokens) for item in packed.context if item.path != "app.py"
                and item.form != EXAMPLE]

    assert any(item.form == EXAMPLE for item in with_examples.context)
    assert repository(with_examples) == repository(without) != []
    assert with_examples.chosen == without.chosen
    head = sum(item.tokens for item in with_examples.context if item.form != EXAMPLE and item.path != "app.py")
    assert with_examples.ids[:head] == without.ids[:head]
    # the room the examples did not use is the file's window's, where its own chunks shown above do not bound it
    shown = sum(item.tokens for item in with_examples.context if item.form == EXAMPLE)
    assert len(without.ids) - head >= len(with_examples.ids) - head - shown

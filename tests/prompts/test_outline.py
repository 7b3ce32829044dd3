"""Definition outlines: signatures, class heads with their members' signatures, docstring first lines; and the
packer choosing them where bodies do not fit, so a small budget carries many definitions."""

import pytest

from prompts import build_completion_prompt, index_repository
from prompts.chunking import analyze_source
from prompts.outline import outline

PYTHON = '''\
import os


@dataclass
class Segment(NamedTuple):
    """A piece of text with a style.

    Longer explanation that the outline leaves out.
    """

    text: str
    style: Optional[Style] = None  # the style

    @property
    def cell_length(self) -> int:
        """Cells the text takes."""
        total = 0
        for character in self.text:
            total += 1
        return total

    def split(
        self, cut: int, keep: bool = True
    ) -> tuple["Segment", "Segment"]:
        if cut < 0:
            raise ValueError(cut)
        return Segment(self.text[:cut], self.style), Segment(self.text[cut:], self.style)


def render(segments: list[Segment], width: int = 80) -> str:
    """Render segments into a line.

    More.
    """
    line = "".join(s.text for s in segments)
    return line[:width]
'''


def test_a_python_class_keeps_its_head_fields_and_method_signatures():
    chunks = analyze_source("pkg/segment.py", PYTHON).chunks
    assert outline(chunks[1]) == '''\
@dataclass
class Segment(NamedTuple):
    """A piece of text with a style."""
    text: str
    style: Optional[Style] = None  # the style
    @property
    def cell_length(self) -> int:
        ...
    def split(
        self, cut: int, keep: bool = True
    ) -> tuple["Segment", "Segment"]:
        ...'''
    assert outline(chunks[2]) == '''\
def render(segments: list[Segment], width: int = 80) -> str:
    """Render segments into a line."""
    ...'''
    compile(outline(chunks[1]) + "\n" + outline(chunks[2]), "outline", "exec")  # still Python


def test_indented_method_groups_and_braced_languages_are_outlined_too():
    methods = "".join(f"    def step_{i}(self, a):\n        '''Step {i}.'''\n" + "        a += 1\n" * 40
                      + "        return a\n\n" for i in range(4))
    chunks = analyze_source("m.py", "class Big:\n" + methods).chunks
    assert len(chunks) > 1 and chunks[1].text.startswith("    def step_")  # a group of methods, indented
    group = outline(chunks[1])
    assert group.startswith(chunks[1].text.split("\n")[0] + "\n        '''Step")
    assert group.count("def step_") == chunks[1].text.count("def step_") and "a += 1" not in group
    js = "export class Button {\n  constructor(label) {\n    this.label = label;\n  }\n\n  render() {\n" \
         "    return `<b>${this.label}</b>`;\n  }\n}\n"
    assert outline(analyze_source("b.js", js).chunks[0]) == (
        "export class Button {\n  constructor(label) {\n    // ...\n  }\n  render() {\n    // ...\n  }\n}")
    go = "func (s *Store) Open(path string) (*File, error) {\n\tf, err := os.Open(path)\n\treturn f, err\n}\n"
    assert outline(analyze_source("s.go", go).chunks[0]) == (
        "func (s *Store) Open(path string) (*File, error) {\n\t// ...\n}")  # the body's own indentation


def test_a_class_head_cut_inside_its_docstring_and_a_long_enum_stay_short():
    """A chunk that ends inside a class's docstring (the chunker cut a long class there) outlines to its head,
    not to the whole unparsed docstring; a class of many constants shows the first MAX_FIELDS, then one elision
    line, and still every method's signature."""
    from prompts.chunking import Chunk
    from prompts.outline import MAX_FIELDS

    docstring = '    """A console.\n\n    Args:\n' + "".join(f"        option_{i} (int): what option {i} does.\n"
                                                            for i in range(40))
    cut = Chunk("pkg/console.py", 1, 44, "python", "definition", ("Console",), frozenset(),
                "class Console:\n" + docstring.rstrip("\n"), 600)
    assert outline(cut) == "class Console:\n    ..."
    members = "".join(f'    KEY_{i} = "k{i}"\n' for i in range(40))
    enum = "class Keys(str, Enum):\n" + members + "\n    def describe(self) -> str:\n        return self.value\n"
    shown = outline(analyze_source("keys.py", enum).chunks[0]).split("\n")
    assert shown[1:MAX_FIELDS + 1] == [f'    KEY_{i} = "k{i}"' for i in range(MAX_FIELDS)]
    assert shown[MAX_FIELDS + 1:] == ["    ...", "    def describe(self) -> str:", "        ..."]


def test_no_outline_when_it_would_not_be_shorter():
    chunks = analyze_source("c.py", "X = 1\n\n\ndef one():\n    return 1\n").chunks
    assert all(outline(chunk) is None or len(outline(chunk)) < len(chunk.text) for chunk in chunks)
    assert outline(analyze_source("notes.md", "# Title\nText.\n").chunks[0]) is None


def _big_class(name: str) -> str:
    methods = "".join(
        f"    def {name.lower()}_{i}(self, value: int) -> int:\n"
        + "".join(f"        value = value * {j} + {i}  # a step of the computation\n" for j in range(6))
        + "        return value\n\n"
        for i in range(4)
    )
    return f"class {name}:\n    \"\"\"The {name}.\"\"\"\n\n{methods}"


@pytest.fixture
def big_index(make_repo):
    files = {f"lib/{name.lower()}.py": _big_class(name) for name in ("Alpha", "Beta", "Gamma", "Delta")}
    files["app.py"] = "from lib.alpha import Alpha\nfrom lib.beta import Beta\nfrom lib.gamma import Gamma\n" \
                      "from lib.delta import Delta\n\n\ndef main():\n    items = [Alpha(), Beta(), Gamma(), Delta()]\n    return \n"
    return index_repository(make_repo(files))


def test_a_small_budget_carries_the_outlines_of_many_definitions_a_large_one_their_bodies(big_index, smollm2_tokenizer):
    def build(budget):
        return build_completion_prompt(big_index, smollm2_tokenizer, "app.py", line=9, col=12, budget_tokens=budget)

    small = build(600)
    repository = [item for item in small.context if item.path.startswith("lib/")]
    assert len(repository) == 4 and all(item.outline for item in repository)  # one body alone takes ~430 tokens
    text = smollm2_tokenizer.decode(small.ids)
    assert "    def alpha_0(self, value: int) -> int:\n        ...\n" in text
    assert "a step of the computation" not in text
    assert len(small.ids) <= 600
    large = build(4000)
    repository = [item for item in large.context if item.path.startswith("lib/")]
    assert len(repository) == 4 and not any(item.outline for item in repository)
    assert "a step of the computation" in smollm2_tokenizer.decode(large.ids)


def test_a_brief_keeps_a_class_head_and_its_constructor_or_first_fields_and_a_function_signature():
    from prompts.outline import BRIEF_FIELDS, brief

    chunks = analyze_source("pkg/segment.py", PYTHON).chunks
    assert brief(chunks[1]) == (  # no constructor: its first fields, no methods, no docstring
        '@dataclass\nclass Segment(NamedTuple):\n    text: str\n    style: Optional[Style] = None  # the style\n'
        "    ...")
    assert brief(chunks[2]) == "def render(segments: list[Segment], width: int = 80) -> str:\n    ..."
    fields = "".join(f"    field_{i}: int = {i}\n" for i in range(10))
    record = analyze_source("r.py", "class Record:\n" + fields).chunks[0]
    assert brief(record).split("\n")[1:] == [f"    field_{i}: int = {i}" for i in range(BRIEF_FIELDS)] + ["    ..."]
    service = analyze_source("s.py", (
        "class Service:\n    '''A service.'''\n\n    RETRIES = 3\n\n    def __init__(self, host: str, port: int = 80):\n"
        "        self.host = host\n        self.port = port\n\n    def start(self) -> None:\n        pass\n")).chunks[0]
    assert brief(service) == "class Service:\n    def __init__(self, host: str, port: int = 80):\n        ...\n    ..."
    for chunk in [*chunks[1:], record, service]:  # never longer than the outline
        assert len(brief(chunk)) <= len(outline(chunk) or chunk.text)
    compile(brief(chunks[1]) + "\n" + brief(chunks[2]) + "\n" + brief(service), "brief", "exec")  # still Python
    js = "export class Button {\n  constructor(label) {\n    this.label = label;\n  }\n\n  render() {\n" \
         "    return `<b>${this.label}</b>`;\n  }\n}\n"
    assert brief(analyze_source("b.js", js).chunks[0]) == (
        "export class Button {\n  constructor(label) {\n    // ...\n  }\n  // ...\n}")


def test_a_brief_of_many_definitions_shows_the_wanted_ones_and_cuts_a_long_signature():
    from prompts.outline import BRIEF_HEAD_LINES, brief

    aliases = "from typing import Any, Callable\n\n" + "".join(f"Alias{i} = Callable[[int], Any]\n" for i in range(12))
    header = analyze_source("types.py", aliases).chunks[0]
    assert brief(header, frozenset({"Alias3", "Alias7", "unrelated"})) == (
        "Alias3 = Callable[[int], Any]\nAlias7 = Callable[[int], Any]")
    assert brief(header).count("\n") == 11  # nothing wanted that it defines: every definition, no import
    parameters = "".join(f"        option_{i}: int = {i},\n" for i in range(20))
    long = analyze_source("c.py", f"class Client:\n    def __init__(\n        self,\n{parameters}    ) -> None:\n"
                                  "        self.options = 20\n").chunks[0]
    lines = brief(long).split("\n")
    assert lines[:BRIEF_HEAD_LINES - 1] == ["class Client:", "    def __init__(", "        self,",
                                            *[f"        option_{i}: int = {i}," for i in range(BRIEF_HEAD_LINES - 4)]]
    assert lines[BRIEF_HEAD_LINES - 1:] == ["        ...", "    ) -> None:", "        ..."]


def test_a_small_budget_carries_the_briefs_of_many_imported_definitions(make_repo, smollm2_tokenizer, monkeypatch):
    """Twelve imported classes of ~200 tokens each: at 512 tokens the definitions' share holds their briefs (the
    constructor's signature, a few dozen tokens each), at least twice as many as it holds outlines."""
    import prompts.completion

    files = {}
    for i in range(12):
        body = "".join(f"    def method_{j}(self, value: int) -> int:\n        return value * {j}\n\n" for j in range(6))
        files[f"lib/part{i}.py"] = (f"class Part{i}:\n    def __init__(self, size_{i}: int, name: str = 'p{i}'):\n"
                                    f"        self.size = size_{i}\n\n{body}")
    uses = "\n".join(f"    part{i} = Part{i}(1)" for i in range(12))
    files["app.py"] = "".join(f"from lib.part{i} import Part{i}\n" for i in range(12)) + \
        f"\n\ndef main():\n{uses}\n    return \n"
    index = index_repository(make_repo(files))
    rows = files["app.py"].count("\n")

    def shown():
        packed = build_completion_prompt(index, smollm2_tokenizer, "app.py", line=rows, col=11, budget_tokens=512)
        assert len(packed.ids) <= 512
        repository = [item for item in packed.context if item.path.startswith("lib/")]
        assert {item.form for item in repository} <= {"whole", "outline", "brief"}
        return {item.path for item in repository if item.form == "brief" or not briefs_on}, smollm2_tokenizer.decode(
            packed.ids)

    briefs_on = True
    briefs, text = shown()  # (the files shown in brief)
    assert "def __init__(self, size_11: int, name: str = 'p11'):\n        ...\n    ...\n" in text
    assert "return value * 5" not in text
    monkeypatch.setattr(prompts.completion, "brief", lambda chunk, names: None)
    briefs_on = False
    outlines, _ = shown()  # (every file shown, none can be in brief)
    assert len(briefs) >= 2 * len(outlines) >= 2, (briefs, outlines)

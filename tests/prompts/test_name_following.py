"""Ranking that follows names: an imported name resolves to the chunk defining it (through re-exports, relative
and absolute imports, aliases, in Python and JavaScript, and by path in Java and Rust), its definition outranks
the rest of the files merely imported, and comment words and local names pull in nothing."""

import pytest

from prompts import build_completion_prompt, index_repository
from prompts.imports import Import, follow_imports
from prompts.ranking import Query, cursor_terms, rank


def _class(name: str, methods: int) -> str:
    body = "".join(f"    def {name.lower()}_step_{i}(self, value):\n        return value + {i}\n\n" for i in range(methods))
    return f"class {name}:\n    \"\"\"A {name}.\"\"\"\n\n{body}"


PYTHON = {
    "pkg/__init__.py": "from .segment import Segment\nfrom .style import *\n",
    "pkg/segment.py": "import os\n\n\n" + _class("Segment", 3) + "\n\n" + _class("Unrelated", 3),
    "pkg/style.py": "__all__ = ['Style']\n\n\n" + _class("Style", 2),
    "pkg/text/__init__.py": "from ..segment import Segment as Piece\n",
    "pkg/geometry.py": "def area(shape):\n    return shape.width * shape.height\n",
}


@pytest.fixture
def python_index(make_repo):
    return index_repository(make_repo(PYTHON, name="pkg_repo"))


def _defined(index, chunks):
    return {(index.chunks[n].path, index.chunks[n].defines[0]) for n in chunks}


def test_imported_names_resolve_through_reexports_aliases_and_star_imports(python_index):
    imports = [
        Import("pkg", "Segment"),  # re-exported by pkg/__init__.py
        Import("pkg", "Style"),  # star-imported into pkg/__init__.py
        Import("pkg.text", "Piece", "Chunk"),  # re-exported under another name, imported under a third
        Import("pkg.geometry", None, "geo"),  # a module bound to an alias
        Import(".", "geometry"),  # a module imported from its package
    ]
    found = follow_imports(python_index, "pkg/app.py", "python", imports)
    assert _defined(python_index, found.definitions["Segment"]) == {("pkg/segment.py", "Segment")}
    assert _defined(python_index, found.definitions["Style"]) == {("pkg/style.py", "Style")}
    assert _defined(python_index, found.definitions["Chunk"]) == {("pkg/segment.py", "Segment")}
    assert found.modules == {"geo": ["pkg/geometry.py"], "geometry": ["pkg/geometry.py"]}
    assert {"pkg/__init__.py", "pkg/segment.py", "pkg/style.py", "pkg/geometry.py"} <= found.files


def test_a_package_opened_as_the_repository_imports_itself_by_its_folder_name(make_repo):
    root = make_repo({"__init__.py": "", "segment.py": _class("Segment", 1), "console.py": ""}, name="rich")
    index = index_repository(root)
    found = follow_imports(index, "console.py", "python", [Import("rich.segment", "Segment")])
    assert _defined(index, found.definitions["Segment"]) == {("segment.py", "Segment")}


def test_javascript_named_imports_follow_index_reexports(make_repo):
    index = index_repository(make_repo({
        "src/lib/index.js": 'export { Button as Btn } from "./button";\nexport * from "./theme";\n',
        "src/lib/button.js": "export class Button {\n  render() {\n    return 1;\n  }\n}\n",
        "src/lib/theme.js": "export function dark() {\n  return 2;\n}\n",
        "src/app.js": 'import { Btn as B, dark } from "./lib";\n',
    }))
    imports = index.imports("src/app.js")
    assert Import("./lib", "Btn", "B") in imports and Import("./lib", "dark") in imports
    found = follow_imports(index, "src/app.js", "javascript", imports)
    assert _defined(index, found.definitions["B"]) == {("src/lib/button.js", "Button")}
    assert _defined(index, found.definitions["dark"]) == {("src/lib/theme.js", "dark")}


def test_java_and_rust_imports_name_their_last_part(make_repo):
    index = index_repository(make_repo({
        "src/com/acme/Store.java": "package com.acme;\n\npublic class Store {\n    void open() {}\n}\n",
        "src/geo/shapes.rs": "pub struct Circle {\n    r: f64,\n}\n\npub fn unit() -> Circle {\n    Circle { r: 1.0 }\n}\n",
    }))
    java = follow_imports(index, "src/Main.java", "java", [Import("com.acme.Store")])
    assert _defined(index, java.definitions["Store"]) == {("src/com/acme/Store.java", "Store")}
    rust = follow_imports(index, "src/main.rs", "rust", [Import("crate::geo::shapes::{Circle, unit as one}")])
    assert _defined(index, rust.definitions["Circle"]) == {("src/geo/shapes.rs", "Circle")}
    assert _defined(index, rust.definitions["one"]) == {("src/geo/shapes.rs", "unit")}


def _filler(count: int) -> dict[str, str]:
    return {f"pkg/mod_{i}.py": _class(f"Thing{i}", 4) for i in range(count)}


def test_the_definition_of_an_imported_name_outranks_files_merely_imported(make_repo):
    """Issue 14, item 2: a file importing 30 modules no longer lifts them all equally; at the first use of a
    name, whose only other mention is the import line, its definition comes first."""
    imports = "".join(f"from .mod_{i} import Thing{i}\n" for i in range(30))
    app = imports + "from .segment import Segment\n\n\ndef render(value):\n    parts = []\n    return \n"
    index = index_repository(make_repo(_filler(30) | PYTHON | {"pkg/app.py": app}))
    rows = app.split("\n")
    packed = build_completion_prompt(index, _Tokenizer(), "pkg/app.py", line=len(rows) - 1, col=12,
                                     budget_tokens=4000)
    assert packed.context[0].path != "pkg/app.py"
    terms = cursor_terms(rows, len(rows) - 2, 11, frozenset({"def", "return", "from", "import"}))
    found = follow_imports(index, "pkg/app.py", "python", index.imports("pkg/app.py"))
    query = Query(weights=terms.weights, path="pkg/app.py", imported=frozenset(found.files),
                  imported_names=found.definitions, local=terms.local, uses=terms.counts)
    ranked = [chunk for _, chunk in rank(index, query) if chunk.path != "pkg/app.py"]
    definitions = {chunk.defines[0] for chunk in ranked[:31] if chunk.defines}
    assert {f"Thing{i}" for i in range(30)} | {"Segment"} <= definitions  # every imported definition first
    assert not any(chunk.defines and chunk.defines[0] == "Unrelated" for chunk in ranked[:31])


def test_comment_words_and_local_names_pull_in_no_definitions(make_repo):
    """Issue 14, item 4: `pad` (a local) and `the` (a comment word) are defined elsewhere as functions; the
    call being written is to `area`, imported."""
    app = (
        "from pkg.geometry import area\n\n\ndef draw(shape):\n    pad = 2  # pad the shape on the left\n"
        "    total = area(shape) + pad\n    return \n"
    )
    index = index_repository(make_repo(PYTHON | {
        "pkg/app.py": app,
        "pkg/pads.py": "def pad(text):\n    return ' ' + text\n\n\ndef the(text):\n    return text\n",
    }))
    rows = app.split("\n")
    terms = cursor_terms(rows, 6, 11, frozenset({"def", "return", "from", "import"}))
    assert "pad" in terms.local and terms.weights["the"] < terms.weights["area"]
    found = follow_imports(index, "pkg/app.py", "python", index.imports("pkg/app.py"))
    query = Query(weights=terms.weights, path="pkg/app.py", imported=frozenset(found.files),
                  imported_names=found.definitions, local=terms.local, uses=terms.counts)
    ranked = [chunk for _, chunk in rank(index, query, definitions_only=True)]
    assert ranked[0].path == "pkg/geometry.py"
    pads = [i for i, chunk in enumerate(ranked) if chunk.path == "pkg/pads.py"]
    assert not pads or pads[0] > 0


def test_imports_count_wherever_they_are_in_a_long_file(make_repo):
    """Issue 14, item 5: the import line 3,000 lines above the cursor still brings the definition."""
    app = "from .segment import Segment\n" + "x = 1\n" * 3000 + "def last():\n    return \n"
    index = index_repository(make_repo(PYTHON | {"pkg/app.py": app}))
    rows = app.split("\n")
    packed = build_completion_prompt(index, _Tokenizer(), "pkg/app.py", line=len(rows) - 1, col=12,
                                     budget_tokens=600)
    assert any(item.path == "pkg/segment.py" and item.start_line == 4 for item in packed.context)


class _Tokenizer:
    """A stand-in tokenizer (one token per 4 characters, no special tokens): ranking tests need no real one."""

    bos_token_id = eos_token_id = None
    all_special_ids: list[int] = []
    chat_template = None

    def __call__(self, texts, add_special_tokens=True, split_special_tokens=False, return_offsets_mapping=False):
        many = isinstance(texts, list)
        encoded = [self._encode(t) for t in (texts if many else [texts])]
        if return_offsets_mapping:
            return {"input_ids": encoded[0], "offset_mapping": [(i, min(i + 4, len(texts))) for i in range(0, len(texts), 4)]}
        return {"input_ids": encoded if many else encoded[0]}

    @staticmethod
    def _encode(text: str) -> list[int]:
        return [100 + (hash(text[i : i + 4]) % 1000) for i in range(0, len(text), 4)]

    def convert_ids_to_tokens(self, ids):
        return [f"t{i}" for i in ids] if isinstance(ids, list) else f"t{ids}"

    def convert_tokens_to_ids(self, token):
        return 0


def test_definitions_keep_their_part_of_the_budget_beside_the_files_own_code(make_repo):
    """The repository's share goes first to the definitions of the names the cursor uses (60%), then to the
    rest: the file's own other parts, which are many here and all alike the code at the cursor."""
    own = "".join(f"def handler_{i}(request):\n    value = Segment(request.text)\n    return value.render({i})\n\n\n"
                  for i in range(40))
    app = "from .segment import Segment\n\n\n" + own + "def last(request):\n    value = \n"
    index = index_repository(make_repo(PYTHON | {"pkg/app.py": app}))
    rows = app.split("\n")
    packed = build_completion_prompt(index, _Tokenizer(), "pkg/app.py", line=len(rows) - 1, col=13,
                                     budget_tokens=700)
    paths = [item.path for item in packed.context]
    assert "pkg/segment.py" in paths  # the definition of Segment
    assert paths.count("pkg/app.py") > 2  # and the file's own handlers, beyond the text around the cursor


@pytest.mark.parametrize("before, expects", [
    ("def f(x: ", "type"), ("    ) -> ", "type"), ("    y: Optional[", "type"), ("    z: A | ", "type"),
    ("    raise ", "exception"), ("    except (ValueError, ", "exception"), ("    @", "decorator"),
    ("    x = ", None), ("    call(", None), ("    d = {'a': ", None), ("    s = items[1:", None),
])
def test_the_text_before_the_cursor_says_when_it_expects_a_type_an_exception_or_a_decorator(before, expects):
    assert cursor_terms([before + "Partial"], 0, len(before) + 3, frozenset()).expects == expects


def test_a_name_of_the_wrong_shape_for_an_annotation_ranks_below_a_type(make_repo):
    """After ``-> `` the definition of a capitalised imported name outranks that of a function name used as
    near the cursor; elsewhere the function, used nearer, comes first."""
    index = index_repository(make_repo({
        "lib/shapes.py": _class("Shape", 2),
        "lib/helpers.py": "def make_shape(width):\n    return width\n",
        "app.py": "from lib.shapes import Shape\nfrom lib.helpers import make_shape\n\n\n"
                  "def build(width) -> \n    return make_shape(width)\n",
    }))

    def first(line: str, col: int) -> str:
        text = index.root.joinpath("app.py").read_text().split("\n")
        text[4] = line
        terms = cursor_terms(text, 4, col, frozenset())
        found = follow_imports(index, "app.py", "python", [Import("lib.shapes", "Shape"), Import("lib.helpers",
                                                                                                  "make_shape")])
        query = Query(weights=terms.weights, path="app.py", imported=frozenset(found.files),
                      imported_names=found.definitions, local=terms.local, uses=terms.counts, expects=terms.expects)
        return next(chunk.defines[0] for _, chunk in rank(index, query, definitions_only=True))

    assert first("def build(width) -> ", len("def build(width) -> ")) == "Shape"
    assert first("    value = ", len("    value = ")) == "make_shape"


def test_re_exports_are_followed_by_depth_not_by_files_visited(make_repo):
    """pkg/__init__ star-imports three modules, each star-importing a private one; Target is two re-exports away.
    The limit counted every file visited in any branch, so with two siblings before the right one it was lost."""
    files = {"pkg/__init__.py": "from .m0 import *\nfrom .m1 import *\nfrom .last import *\n",
             "pkg/m0.py": "from ._impl0 import *\n", "pkg/_impl0.py": "def helper0():\n    pass\n",
             "pkg/m1.py": "from ._impl1 import *\n", "pkg/_impl1.py": "def helper1():\n    pass\n",
             "pkg/last.py": "from ._impl_last import *\n",
             "pkg/_impl_last.py": "class Target:\n    pass\n",
             "main.py": "from pkg import Target\n\nTarget()\n"}
    index = index_repository(make_repo(files))
    found = follow_imports(index, "main.py", "python", index.imports("main.py"))
    assert [index.chunks[n].path for n in found.definitions["Target"]] == ["pkg/_impl_last.py"]


def test_star_imports_that_fan_out_are_followed_within_one_budget_for_all_the_names(make_repo, monkeypatch):
    """60 modules star-importing one another and a file importing 60 names that none defines: each name's search
    read all 60 files' 60 imports (216,000 resolved; at 200 modules 8 million, 39 s for one prompt). The searches
    of one file's names now share a budget of import statements read; the names first in the file still resolve."""
    import prompts.imports as imports_module

    modules = {f"pkg/m{i}.py": "".join(f"from .m{j} import *\n" for j in range(60)) + f"def f{i}():\n    pass\n"
               for i in range(60)}
    main = "from pkg.m0 import f7\n" + "".join(f"from pkg.m{i} import missing{i}\n" for i in range(60))
    index = index_repository(make_repo(modules | {"main.py": main}))
    resolved = []
    real = imports_module.module_files
    monkeypatch.setattr(imports_module, "module_files", lambda *args: resolved.append(args) or real(*args))
    found = follow_imports(index, "main.py", "python", index.imports("main.py"))
    assert {index.chunks[n].path for n in found.definitions["f7"]} == {"pkg/m7.py"}
    assert not any(name.startswith("missing") for name in found.definitions)
    assert len(resolved) <= imports_module.MAX_FOLLOWED_IMPORTS + 200      # (unbounded: 216,000)

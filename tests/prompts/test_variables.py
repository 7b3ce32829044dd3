"""The members of a variable's type, after ``x.``, ``self.x.``, ``this.x.`` (variables.py): which declaration says
the type, and where nothing is said. The prompts these members rank into are tested in test_qualified_cursor.py."""

import pytest

from prompts import index_repository
from prompts.imports import follow_imports
from prompts.languages import language_name
from prompts.variables import variable_members

BASE = ("class BaseParser:\n    def __init__(self, text):\n        self.text = text\n\n"
        "    def parse(self, rules):\n        return rules\n\n    def reset(self):\n        self.text = ''\n")
FILES = {"pkg/__init__.py": "", "pkg/base.py": BASE,
         "pkg/grammar.py": "from .base import BaseParser\n\n\nclass Grammar(BaseParser):\n"
                           "    def parse_rules(self):\n        return []\n",
         "pkg/old.py": "class OldParser:\n    def parse_old(self):\n        return 0\n"}


def _members(make_repo, files: dict[str, str], path: str, marker: str) -> dict[str, list[str]]:
    """Member -> the files of the chunks defining it, for a cursor right after ``marker`` (its last occurrence) in
    ``path``."""
    index = index_repository(make_repo(files))
    rows = files[path].split("\n")
    row = max(number for number, text in enumerate(rows) if marker in text)
    column = rows[row].rindex(marker) + len(marker)
    language = language_name(path)
    imports = index.imports(path)
    found = variable_members(index, path, language, rows, row, column, imports,
                             follow_imports(index, path, language, imports))
    return {member: sorted({index.chunks[n].path for n in chunks}) for member, chunks in found.items()}


def test_a_subclass_instance_reaches_its_bases_members(make_repo):
    """`parser = Grammar(text)`: Grammar's own `parse_rules` and its base's `parse`, read from Grammar's head."""
    app = "from .grammar import Grammar\n\n\ndef run(text):\n    parser = Grammar(text)\n    return parser.pa\n"
    assert _members(make_repo, FILES | {"pkg/app.py": app}, "pkg/app.py", "parser.pa") == {
        "parse_rules": ["pkg/grammar.py"], "parse": ["pkg/base.py"]}


def test_the_nearest_declaration_above_the_cursor_says_the_type(make_repo):
    app = ("from .base import BaseParser\nfrom .old import OldParser\n\n\ndef run(text):\n"
           "    parser = OldParser()\n    parser.parse_old()\n    parser = BaseParser(text)\n    return parser.pa\n")
    assert _members(make_repo, FILES | {"pkg/app.py": app}, "pkg/app.py", "parser.pa") == {"parse": ["pkg/base.py"]}


@pytest.mark.parametrize("app", [
    "from .base import BaseParser\n\n\ndef run(text):\n    parser = make_parser(text)\n    return parser.pa\n",
    "from .base import BaseParser\n\n\ndef run(text):\n    parser = dict(text=text)\n    return parser.pa\n",
    "from .base import BaseParser\n\n\ndef run(parser):\n    return parser.pa\n",
    "from .base import BaseParser\n\n\nclass App:\n    def __init__(self, text):\n"
    "        self.parser = BaseParser(text)\n\n    def run(self, parser):\n        return parser.pa\n",
    "from . import base\n\n\ndef run(text):\n    return base.pa\n",
    "from .base import BaseParser\n\n\ndef run(text):\n    parser = BaseParser(text)\n    return parser.x.pa\n",
], ids=["a-function-called", "a-type-of-no-file", "an-unannotated-parameter", "another-names-attribute",
        "a-module", "an-attribute-of-the-variable"])
def test_nothing_where_no_declaration_names_a_type_of_the_repository(make_repo, app):
    """A call of a function (no class of the name), `dict(...)`, a parameter of no annotation, `self.parser`
    (not the local `parser`), a module, and an attribute of the variable (whose type no declaration states): none."""
    assert _members(make_repo, FILES | {"pkg/app.py": app}, "pkg/app.py", ".pa") == {}


JAVA_BASE = ("package com.acme;\n\npublic class BaseParser {\n    public String parse(String rules) {\n"
             "        return rules;\n    }\n}\n")


def test_a_statement_that_reads_like_a_declaration_hides_no_declaration_above_it(make_repo):
    """`return parser;` reads as Java's `Type name;` with the type `return`: it was the nearest "declaration" above
    the cursor, so BaseParser's, on the line before it, was never reached."""
    app = ("package com.acme;\n\npublic class App {\n    public Object run(String text) {\n"
           "        BaseParser parser = new BaseParser(text);\n        if (text.isEmpty()) return parser;\n"
           "        return parser.pa\n    }\n}\n")
    files = {"src/com/acme/BaseParser.java": JAVA_BASE, "src/com/acme/App.java": app}
    assert _members(make_repo, files, "src/com/acme/App.java", "parser.pa") == {
        "parse": ["src/com/acme/BaseParser.java"]}

"""The members a class inherits, after ``self.``/``this.``/``super().`` (inherited.py): which class encloses the
cursor, which bases its head names, and where the search stops. The prompts these members rank into are tested
in test_qualified_cursor.py."""

import pytest

from prompts import index_repository
from prompts.imports import follow_imports
from prompts.inherited import inherited_members
from prompts.languages import language_name

BASE = ("class BaseParser:\n    def __init__(self, text):\n        self.text = text\n\n"
        "    def parse(self, rules):\n        return rules\n\n    def reset(self):\n        self.text = ''\n")


def _members(make_repo, files: dict[str, str], path: str, marker: str) -> dict[str, list[str]]:
    """Inherited member -> the files of the chunks defining it, for a cursor right after ``marker`` in ``path``."""
    index = index_repository(make_repo(files))
    rows = files[path].split("\n")
    row = next(number for number, text in enumerate(rows) if marker in text)
    column = rows[row].index(marker) + len(marker)
    language = language_name(path)
    imports = index.imports(path)
    found = inherited_members(index, path, language, rows, row, column, imports,
                              follow_imports(index, path, language, imports))
    return {member: sorted({index.chunks[n].path for n in chunks}) for member, chunks in found.items()}


def test_the_bases_members_beginning_with_the_word_typed(make_repo):
    files = {"pkg/__init__.py": "", "pkg/base.py": BASE,
             "pkg/parser.py": "from .base import BaseParser\n\n\nclass Parser(BaseParser):\n"
                              "    def run(self):\n        return self.pa\n"}
    assert _members(make_repo, files, "pkg/parser.py", "self.pa") == {"parse": ["pkg/base.py"]}


@pytest.mark.parametrize("parser", [
    "from .base import BaseParser\n\n\nclass Parser(BaseParser):\n    pass\n\n\ndef run(self):\n    return self.pa\n",
    "from .base import BaseParser\n\n\nclass Parser(dict):\n    def run(self):\n        return self.pa\n",
    "from .base import BaseParser\n\n\nclass Parser:\n    def run(self):\n        return self.pa\n",
    "from .base import BaseParser\n\n\nclass Parser(BaseParser):\n    def run(self):\n        return this.pa\n",
    "from .base import BaseParser\n\n\nclass Parser(BaseParser):\n    def run(self):\n        return myself.pa\n",
    "from .base import BaseParser\n\n\nclass Parser(BaseParser):\n    def run(self):\n        return self.x.pa\n",
], ids=["outside-any-class", "base-not-in-the-repository", "no-base", "not-pythons-self", "a-longer-name",
        "an-attribute"])
def test_nothing_where_no_base_of_the_repository_is_meant(make_repo, parser):
    """A function after a subclass, a class of `dict` or of no base, and qualifiers that are not the instance
    itself: no members (a class merely above the cursor is not around it)."""
    files = {"pkg/__init__.py": "", "pkg/base.py": BASE, "pkg/parser.py": parser}
    assert _members(make_repo, files, "pkg/parser.py", ".pa") == {}


def test_a_cyclic_hierarchy_ends(make_repo):
    """A imports B and B imports A, each the other's base, and C bases itself on C: each class is looked at once."""
    files = {"pkg/__init__.py": "",
             "pkg/a.py": "from .b import B\n\n\nclass A(B):\n    def parse_a(self):\n        return 1\n",
             "pkg/b.py": "from .a import A\n\n\nclass B(A):\n    def parse_b(self):\n        return 2\n",
             "pkg/c.py": "from .a import A\n\n\nclass C(C, A):\n    def run(self):\n        return self.pa\n"}
    assert _members(make_repo, files, "pkg/c.py", "self.pa") == {"parse_a": ["pkg/a.py"], "parse_b": ["pkg/b.py"]}


def test_the_nearest_base_defines_a_name_two_define_and_depth_is_bounded(make_repo):
    """`parse` of the parent, not of the grandparent it overrides; a fourth generation is too far."""
    chain = {"pkg/__init__.py": "", "pkg/g4.py": "class G4:\n    def part4(self):\n        return 4\n"}
    for level, base in ((3, "G4"), (2, "G3"), (1, "G2")):
        chain[f"pkg/g{level}.py"] = (f"from .g{level + 1} import {base}\n\n\nclass G{level}({base}):\n"
                                     f"    def parse(self):\n        return {level}\n\n"
                                     f"    def part{level}(self):\n        return {level}\n")
    chain["pkg/parser.py"] = "from .g1 import G1\n\n\nclass Parser(G1):\n    def run(self):\n        return self.pa\n"
    assert _members(make_repo, chain, "pkg/parser.py", "self.pa") == {
        "parse": ["pkg/g1.py"], "part1": ["pkg/g1.py"], "part2": ["pkg/g2.py"], "part3": ["pkg/g3.py"]}


def test_the_class_in_the_buffer_is_found_where_the_index_has_none(make_repo):
    """The class was written after the file was indexed: the text above the cursor says which it is."""
    files = {"pkg/__init__.py": "", "pkg/base.py": BASE, "pkg/parser.py": "from .base import BaseParser\n"}
    index = index_repository(make_repo(files))
    rows = ["from .base import BaseParser", "", "", "class Parser(BaseParser):", "    def run(self):",
            "        return self.re"]
    imports = index.imports("pkg/parser.py")
    found = inherited_members(index, "pkg/parser.py", "python", rows, 5, len(rows[5]), imports,
                              follow_imports(index, "pkg/parser.py", "python", imports))
    assert list(found) == ["reset"]


def test_a_nested_class_is_the_one_around_the_cursor(make_repo):
    files = {"pkg/__init__.py": "", "pkg/base.py": BASE + "\n\nclass Other:\n    def part(self):\n        return 0\n",
             "pkg/parser.py": "from .base import BaseParser, Other\n\n\nclass Parser(Other):\n"
                              "    class Inner(BaseParser):\n        def run(self):\n            return self.pa\n"}
    assert _members(make_repo, files, "pkg/parser.py", "self.pa") == {"parse": ["pkg/base.py"]}


@pytest.mark.parametrize("files, path, marker", [
    ({"src/base.ts": "export class BaseParser<T> {\n  parse(rules: T[]): T[] {\n    return rules;\n  }\n}\n",
      "src/parser.ts": "import * as base from './base';\n\n// a class { in a comment\n"
                       "export class Parser<T extends object> extends base.BaseParser<T> {\n"
                       "  run(): string {\n    const s = '}}'; // } closes nothing\n    return this.pa\n  }\n}\n"},
     "src/parser.ts", "this.pa"),
    ({"src/base.js": "export class BaseParser {\n  parse(rules) {\n    return rules;\n  }\n}\n",
      "src/parser.js": "import { BaseParser } from './base.js';\n\nclass Parser extends BaseParser {\n"
                       "  run() {\n    return [1].map((x) => super.pa\n  }\n}\n"},
     "src/parser.js", "super.pa"),
    ({"src/base.h": "#pragma once\n\nnamespace acme {\nclass BaseParser {\n public:\n  int parse(int rules);\n};\n}\n",
      "src/parser.cpp": '#include "base.h"\n\nclass Parser final : public virtual acme::BaseParser {\n public:\n'
                        "  int run() {\n    return this->pa\n  }\n};\n"},
     "src/parser.cpp", "this->pa"),
    ({"src/a/BaseParser.java": "package a;\n\npublic class BaseParser {\n  public int parse() {\n    return 1;\n"
                               "  }\n}\n",
      "src/a/Other.java": "package a;\n\npublic class Other {\n  public int part() {\n    return 1;\n  }\n}\n",
      "src/a/Parser.java": "package a;\n\npublic class Parser extends Other {\n"
                           "  static class Inner extends BaseParser implements Runnable {\n"
                           "    public void run() {\n      int n = this.pa\n    }\n  }\n}\n"},
     "src/a/Parser.java", "this.pa"),
], ids=["typescript-module-qualified-generic", "javascript-super-in-an-arrow", "cpp-this-arrow", "java-inner-class"])
def test_the_bases_of_a_brace_languages_class(make_repo, files, path, marker):
    """The innermost brace still open that a class's head opened (braces in comments and strings left out; an inner
    class, not the outer one), its base as written (`base.BaseParser<T>`, `public virtual acme::BaseParser`)."""
    base = next(file for file in files if "base" in file.lower())
    assert _members(make_repo, files, path, marker) == {"parse": [base]}


def test_a_cpp_method_defined_outside_its_class_has_its_class_and_bases_members(make_repo):
    """`int Parser::run() { this->|`: the class is declared in the header, not around the cursor; its own members
    (there, not in this file) and its base's come next, and a chunk of this file naming Parser (its constructor)
    does not hide the header's class."""
    files = {"src/base.h": "#pragma once\n\nclass BaseParser {\n public:\n  int parse(int rules);\n};\n",
             "src/parser.h": '#pragma once\n#include "base.h"\n\nclass Parser : public BaseParser {\n public:\n'
                             "  Parser();\n  int run();\n  int part();\n};\n",
             "src/parser.cpp": '#include "parser.h"\n\nParser::Parser() : BaseParser() {\n}\n\n'
                               "int Parser::run() {\n  if (Parser::ok()) {\n    return this->pa\n  }\n}\n"}
    assert _members(make_repo, files, "src/parser.cpp", "this->pa") == {"part": ["src/parser.h"],
                                                                        "parse": ["src/base.h"]}


RUST_STORE = {
    "src/lib.rs": "pub mod evict;\npub mod store;\npub mod ops;\npub mod app;\npub mod legacy;\n",
    "src/evict.rs": "pub trait Clear {\n    fn clear_all(&mut self);\n}\n\n"
                    "pub trait Evict: Clear + Send {\n    fn evict(&mut self);\n\n"
                    "    fn evict_later(&mut self) {\n        self.evict();\n    }\n}\n",
    "src/store.rs": "/// Entries, evicted past a limit.\npub struct Store<T> {\n    pub entries: Vec<T>,\n"
                    "    pub(crate) limit: usize,\n}\n\nimpl<T> Store<T> {\n    pub fn new() -> Self {\n"
                    "        Store { entries: Vec::new(), limit: 0 }\n    }\n}\n",
    "src/ops.rs": "use crate::store::Store;\n\nimpl<T: Clone + Into<String>> Store<T> {\n"
                  "    pub fn extend(&mut self, more: &[T]) {\n        self.entries.extend_from_slice(more);\n"
                  "    }\n}\n",
    "src/legacy.rs": "pub struct Store {\n    pub rows: Vec<u8>,\n}\n\nimpl Store {\n    pub fn erase(&mut self) {\n"
                     "    }\n}\n",
}
RUST_APP = ("use crate::evict::Evict;\nuse crate::store::Store;\n\n"
            "impl<T> Evict for Store<T>\nwhere\n    T: Clone,\n{\n    fn evict(&mut self) {\n"
            "        let first = '{';\n        if self.e\n    }\n}\n")


@pytest.mark.parametrize("line, expected", [
    ("if self.e", {"entries": ["src/store.rs"], "extend": ["src/ops.rs"], "evict": ["src/app.rs"],
                   "evict_later": ["src/evict.rs"]}),
    ("if self.", {"entries": ["src/store.rs"], "limit": ["src/store.rs"], "new": ["src/store.rs"],
                  "extend": ["src/ops.rs"], "evict": ["src/app.rs"], "evict_later": ["src/evict.rs"],
                  "clear_all": ["src/evict.rs"]}),
    ("if Self::ne", {"new": ["src/store.rs"]}),
], ids=["self-partial", "self-everything", "Self-path"])
def test_rust_self_in_an_impl_is_the_types_fields_and_methods_and_the_traits(make_repo, line, expected):
    """`self.e|` in `impl Evict for Store<T>` found no class: now the struct's fields (not after `Self::`), the
    methods of every `impl Store` block (of this Store, not legacy's; `impl<T: Into<String>>` too), the trait's and
    its supertrait's methods come next (a `'{'` opens nothing)."""
    files = RUST_STORE | {"src/app.rs": RUST_APP.replace("if self.e", line)}
    assert _members(make_repo, files, "src/app.rs", line) == expected


def test_rust_self_in_a_traits_default_method_is_the_traits_and_its_supertraits(make_repo):
    files = RUST_STORE | {"src/app.rs": "pub fn open() {\n}\n"}
    files["src/evict.rs"] = files["src/evict.rs"].replace("self.evict();", "self.cl")
    assert _members(make_repo, files, "src/evict.rs", "self.cl") == {"clear_all": ["src/evict.rs"]}


@pytest.mark.parametrize("app", [
    "use crate::store::Store;\n\nfn run(store: &Store<u8>) {\n    if self.e\n}\n",
    "use crate::store::Store;\n\nimpl Unknown {\n    fn run(&self) {\n        if self.e\n    }\n}\n",
    "use crate::store::Store;\n\nimpl Store<u8> {\n    fn run(&self) {\n        if myself.e\n    }\n}\n",
], ids=["outside-any-impl", "a-type-not-in-the-repository", "a-longer-name"])
def test_rust_nothing_outside_an_impl_of_a_type_of_the_repository(make_repo, app):
    files = RUST_STORE | {"src/app.rs": app}
    assert _members(make_repo, files, "src/app.rs", ".e") == {}


GO_SERVER = {
    "go.mod": "module example.com/shop\n\ngo 1.22\n",
    "internal/store/cache.go": "package store\n\ntype Cache struct {\n\tEntries []string\n"
                               "\tdata    map[string]interface{}\n}\n\n// Get reads one entry.\n"
                               "func (c *Cache) Get(key string) string {\n\treturn key\n}\n",
    "internal/srv/base.go": "package srv\n\ntype Closer interface {\n\tClose() error\n}\n\n"
                            "type Base struct {\n\tCloser\n\tname string `json:\"name\"`\n}\n\n"
                            "func (b Base) Name() string {\n\treturn b.name\n}\n",
    "internal/srv/server.go": "package srv\n\nimport \"example.com/shop/internal/store\"\n\ntype Server struct {\n"
                              "\tBase\n\t*store.Cache // the hot entries\n\taddr, host string\n"
                              "\tpool       struct {\n\t\tsize int\n\t}\n}\n\n"
                              "func (s *Server) Addr() string {\n\treturn s.addr\n}\n",
    "internal/other/server.go": "package other\n\ntype Server struct {\n\tport int\n}\n\n"
                                "func (s *Server) Port() int {\n\treturn s.port\n}\n",
}
GO_RUN = ("package srv\n\nimport \"fmt\"\n\nfunc (s *Server) Run(\n\tverbose bool,\n) error {\n"
          "\tfmt.Println(verbose)\n\tif s.\n}\n")


@pytest.mark.parametrize("line, expected", [
    ("if s.", {"Base": ["internal/srv/server.go"], "Cache": ["internal/srv/server.go"],
               "addr": ["internal/srv/server.go"], "host": ["internal/srv/server.go"],
               "pool": ["internal/srv/server.go"], "Addr": ["internal/srv/server.go"],
               "Run": ["internal/srv/run.go"],
               "Closer": ["internal/srv/base.go"], "name": ["internal/srv/base.go"], "Name": ["internal/srv/base.go"],
               "Close": ["internal/srv/base.go"], "Entries": ["internal/store/cache.go"],
               "data": ["internal/store/cache.go"], "Get": ["internal/store/cache.go"]}),
    ("if s.Cl", {"Closer": ["internal/srv/base.go"], "Close": ["internal/srv/base.go"]}),
    ("if s.Ge", {"Get": ["internal/store/cache.go"]}),
], ids=["everything", "embedded-interface", "embedded-pointer-of-another-package"])
def test_go_a_methods_receiver_has_its_types_fields_and_methods_and_the_embedded_types(make_repo, line, expected):
    """`s.|` in `func (s *Server) Run(...)` named no class: now Server's fields (not a nested struct's) and the
    methods of its package's files (not another package's Server's), then those its embedded types bring, an
    interface's methods too, as a subclass has its bases'."""
    files = GO_SERVER | {"internal/srv/run.go": GO_RUN.replace("if s.", line)}
    assert _members(make_repo, files, "internal/srv/run.go", line) == expected


@pytest.mark.parametrize("run", [
    GO_RUN.replace("\tif s.", "\tif fmt.Pr"),
    GO_RUN.replace("\tif s.", "\tif server.A"),
    GO_RUN.replace("func (s *Server) Run(", "func Run(s *Server,"),
    GO_RUN.replace("\tif s.\n}\n", "\treturn nil\n}\n\nvar v = s."),
], ids=["a-package", "another-name", "a-function-not-a-method", "after-the-method"])
def test_go_nothing_but_after_the_methods_receiver(make_repo, run):
    files = GO_SERVER | {"internal/srv/run.go": run}
    marker = next(word for word in ("fmt.Pr", "server.A", "v = s.", "if s.") if word in run)
    assert _members(make_repo, files, "internal/srv/run.go", marker) == {}


JAVA_SHAPES = {
    "src/a/Shape.java": "package a;\n\npublic interface Shape {\n    double area();\n\n"
                        "    default String label() {\n        return \"shape\";\n    }\n}\n",
    "src/a/BaseParser.java": "package a;\n\npublic class BaseParser {\n    public int parse() {\n        return 1;\n"
                             "    }\n}\n",
    "src/a/Other.java": "package a;\n\npublic class Other {\n    public int part() {\n        return 1;\n    }\n}\n",
}


POINT = ("package a;\n\npublic record Point(@Size(max = 3) Integer x, java.util.List<Map<String, Integer>> ys)\n"
         "        implements Shape, Comparable<Point> {\n    public double area() {\n        return 0;\n    }\n\n"
         "    public double norm() {\n        return this.x;\n    }\n}\n")


@pytest.mark.parametrize("point, marker, expected", [
    (POINT, "this.", {"x": ["src/a/Point.java"], "ys": ["src/a/Point.java"], "area": ["src/a/Point.java"],
                      "norm": ["src/a/Point.java"], "label": ["src/a/Shape.java"]}),
    (POINT.replace("this.x", "this.label()"), "this.l", {"label": ["src/a/Shape.java"]}),
    (POINT.replace("this.x;", "this."), "this.", {"area": ["src/a/Shape.java"], "label": ["src/a/Shape.java"]}),
], ids=["everything", "the-interfaces-method", "as-typed-the-index-has-no-record"])
def test_java_a_records_components_and_methods_then_its_interfaces(make_repo, point, marker, expected):
    """`this.|` in a record named no class: now its components (annotated, of generic types) and its body's
    methods where the index has the record (not in a file that does not parse), then the methods of the
    interfaces its head names."""
    files = JAVA_SHAPES | {"src/a/Point.java": point}
    assert _members(make_repo, files, "src/a/Point.java", marker) == expected


@pytest.mark.parametrize("files, path, expected", [
    ({"src/a/Parser.java": "package a;\n\npublic class Parser extends Other {\n    void run() {\n"
                           "        Runnable r = new BaseParser(\"x\", f(1)) {\n            public void go() {\n"
                           "                int n = this.pa\n            }\n        };\n    }\n}\n"},
     "src/a/Parser.java", {"parse": ["src/a/BaseParser.java"]}),
    ({"src/a/Parser.java": "package a;\n\npublic class Parser extends Other {\n    void run() {\n"
                           "        Runnable r = new Runnable() {\n            public void run() {\n"
                           "                int n = this.pa\n            }\n        };\n    }\n}\n"},
     "src/a/Parser.java", {}),
    ({"src/a/Parser.java": "package a;\n\npublic class Parser extends Other {\n    void run() {\n"
                           "        Runnable r = () -> {\n            int n = this.pa\n        };\n    }\n}\n"},
     "src/a/Parser.java", {"part": ["src/a/Other.java"]}),
    ({"src/a/Parser.java": "package a;\n\npublic class Parser extends Other {\n    enum Mode implements Runnable {\n"
                           "        FAST;\n\n        public void run() {\n            int n = this.pa\n        }\n"
                           "    }\n}\n"},
     "src/a/Parser.java", {}),
    ({"src/base.ts": "export class BaseParser {\n  parse(): number {\n    return 1;\n  }\n}\n\n"
                     "export class Other {\n  part(): number {\n    return 1;\n  }\n}\n",
      "src/parser.ts": "import { BaseParser, Other } from './base';\n\nexport class Parser extends Other {\n"
                       "  make() {\n    return new (class extends BaseParser {\n      run() {\n"
                       "        return this.pa\n      }\n    })();\n  }\n}\n"},
     "src/parser.ts", {"parse": ["src/base.ts"]}),
    ({"src/base.ts": "export class Other {\n  part(): number {\n    return 1;\n  }\n}\n",
      "src/parser.ts": "import { Other } from './base';\n\nexport class Parser extends Other {\n"
                       "  make() {\n    return class {\n      run() {\n        return this.pa\n      }\n    };\n"
                       "  }\n}\n"},
     "src/parser.ts", {}),
], ids=["java-anonymous-of-a-class", "java-anonymous-of-an-interface-elsewhere", "java-lambda-keeps-this",
        "java-nested-enum", "typescript-class-expression", "typescript-class-expression-of-no-base"])
def test_this_in_an_anonymous_class_is_that_class_not_the_outer_one(make_repo, files, path, expected):
    """`this.pa|` in `new BaseParser(...) { ... }` (or a class expression) ranked the OUTER class's base's `part`:
    `this` there is the anonymous class, whose base is the named type (none: nothing); a lambda's is the outer; a
    nested enum's is the enum."""
    assert _members(make_repo, JAVA_SHAPES | files, path, "this.pa") == expected

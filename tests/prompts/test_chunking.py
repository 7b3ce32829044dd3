"""Chunking: expected chunks for small files in each language, long definitions, syntax errors, plain text."""

import pytest

from prompts.chunking import analyze_source, source_imports
from prompts.imports import Import

# name -> (source, expected chunks as (kind, first line, last line, defined names), import bindings)
SAMPLES = {
    "sample.py": (
        '''\
"""Shapes."""
import math
from .base import Shape

UNIT = 1.0


# The area of a circle.
@cache
def circle_area(r):
    return math.pi * r * r


class Square(Shape):
    def __init__(self, side):
        self.side = side

    def area(self):
        return self.side ** 2
''',
        [
            ("header", 1, 5, ("UNIT",)),
            ("definition", 8, 11, ("circle_area",)),  # with its comment and decorator
            ("definition", 14, 19, ("Square", "__init__", "area")),
        ],
        (Import("math"), Import(".base", "Shape")),
    ),
    "sample.js": (
        """\
import { Shape } from "./base.js";
const math = require("./math");

// The area of a circle.
export function circleArea(r) {
  return Math.PI * r * r;
}

class Square extends Shape {
  area() {
    return this.side ** 2;
  }
}

const double = (x) => x * 2;
""",
        [
            ("header", 1, 2, ("math",)),
            ("definition", 4, 7, ("circleArea",)),
            ("definition", 9, 13, ("Square", "area")),
            ("definition", 15, 15, ("double",)),
        ],
        (Import("./base.js"), Import("./base.js", "Shape"), Import("./math", "default", "math"), Import("./math")),
    ),
    "sample.ts": (
        """\
import { Shape } from "./base";

export interface Sized {
  size(): number;
}

/** The area of a circle. */
export function circleArea(r: number): number {
  return Math.PI * r * r;
}

export class Square implements Sized {
  constructor(private side: number) {}
  size(): number {
    return this.side ** 2;
  }
}

type Id = string;
""",
        [
            ("header", 1, 1, ()),
            ("definition", 3, 5, ("Sized",)),
            ("definition", 7, 10, ("circleArea",)),
            ("definition", 12, 17, ("Square", "constructor", "size")),
            ("definition", 19, 19, ("Id",)),
        ],
        (Import("./base"), Import("./base", "Shape")),
    ),
    "sample.tsx": (
        """\
import React from "react";

export function Greeting(props: { name: string }) {
  return <p>Hello {props.name}</p>;
}

export const Button = () => <button>OK</button>;
""",
        [
            ("header", 1, 1, ()),
            ("definition", 3, 5, ("Greeting",)),
            ("definition", 7, 7, ("Button",)),
        ],
        (Import("react"), Import("react", "default", "React")),
    ),
    "sample.go": (
        """\
// Package shapes computes areas.
package shapes

import (
	"math"

	"example.com/geo/base"
)

// Circle is round.
type Circle struct {
	R float64
}

func (c Circle) Area() float64 {
	return math.Pi * c.R * c.R
}

func NewCircle(r float64) Circle {
	return Circle{R: base.Check(r)}
}
""",
        [
            ("header", 1, 8, ()),
            ("definition", 10, 13, ("Circle",)),
            ("definition", 15, 17, ("Area",)),
            ("definition", 19, 21, ("NewCircle",)),
        ],
        (Import("math"), Import("example.com/geo/base")),
    ),
    "sample.rs": (
        """\
use std::f64::consts::PI;
use crate::base::Shape;

/// A circle.
#[derive(Debug)]
pub struct Circle {
    r: f64,
}

impl Shape for Circle {
    fn area(&self) -> f64 {
        PI * self.r * self.r
    }
}

pub fn unit() -> Circle {
    Circle { r: 1.0 }
}
""",
        [
            ("header", 1, 2, ()),
            ("definition", 4, 8, ("Circle",)),  # doc comment and attribute included
            ("definition", 10, 14, ("Circle", "area")),
            ("definition", 16, 18, ("unit",)),
        ],
        (Import("std::f64::consts::PI"), Import("crate::base::Shape")),
    ),
    "sample.c": (
        """\
#include <math.h>
#include "base.h"

#define UNIT 1.0

/* A circle. */
struct circle {
    double r;
};

static double square(double x) { return x * x; }

double circle_area(const struct circle *c) {
    return M_PI * square(c->r);
}
""",
        [
            ("header", 1, 4, ("UNIT",)),
            ("definition", 6, 9, ("circle",)),
            ("definition", 11, 11, ("square",)),
            ("definition", 13, 15, ("circle_area",)),
        ],
        (Import("<math.h>"), Import("base.h")),
    ),
    "sample.cpp": (
        """\
#include <cmath>
#include "base.hpp"

namespace shapes {

// A circle.
class Circle : public Shape {
 public:
  explicit Circle(double r) : r_(r) {}
  double area() const override;

 private:
  double r_;
};

double Circle::area() const { return M_PI * r_ * r_; }

}  // namespace shapes
""",
        [
            ("header", 1, 2, ()),
            ("definition", 4, 18, ("shapes", "Circle", "area")),  # a short namespace stays whole
        ],
        (Import("<cmath>"), Import("base.hpp")),
    ),
    "Sample.java": (
        """\
package shapes;

import java.util.List;
import shapes.base.Shape;

/** A circle. */
public class Circle implements Shape {
    private final double r;

    public Circle(double r) {
        this.r = r;
    }

    @Override
    public double area() {
        return Math.PI * r * r;
    }
}
""",
        [
            ("header", 1, 4, ()),
            ("definition", 6, 18, ("Circle", "r", "area")),
        ],
        (Import("java.util.List"), Import("shapes.base.Shape")),
    ),
}


@pytest.mark.parametrize("name", SAMPLES)
def test_each_language_chunks_into_definitions_with_a_header(name):
    source, expected, imports = SAMPLES[name]
    analysis = analyze_source(f"src/{name}", source)
    assert [(c.kind, c.start_line, c.end_line, c.defines) for c in analysis.chunks] == expected
    assert analysis.imports == imports
    assert source_imports(f"src/{name}", source) == imports
    lines = source.split("\n")
    for chunk in analysis.chunks:
        assert chunk.text == "\n".join(lines[chunk.start_line - 1 : chunk.end_line])
        assert chunk.path == f"src/{name}"
        assert chunk.approx_tokens > 0


@pytest.mark.parametrize("extension", ["h", "hpp"])
def test_a_c_prototype_with_its_name_in_parentheses_declares_it(extension):
    """`int (lua_gettop) (lua_State *L);`: a prototype's name in parentheses, so that no function-like macro of
    that name expands there (Lua's lua.h declares all of its API so, behind LUA_API). It declared nothing, so a
    call of lua_gettop had only its definition in lapi.c, which nothing includes, to be followed to."""
    source = ("#ifndef LUA_H\n#define LUA_H\n\nint (plain_paren) (int x);\n"
              "LUA_API int   (lua_gettop) (lua_State *L);\nLUA_API void  (lua_settop) (lua_State *L, int idx);\n"
              "LUA_API const char *(lua_tolstring) (lua_State *L, int idx, size_t *len);\n"
              "LUAI_FUNC void luaD_hook (lua_State *L, int event);\n\n#endif\n")
    defines = {name for chunk in analyze_source(f"include/lua.{extension}", source).chunks for name in chunk.defines}
    assert {"plain_paren", "lua_gettop", "lua_settop", "lua_tolstring", "luaD_hook"} <= defines
    assert not {"int", "void", "lua_State", "L"} & defines


@pytest.mark.parametrize("extension", ["c", "cpp"])
def test_a_c_declaration_inside_a_function_defines_nothing_outside_it(extension):
    """A declaration in a function's body is local to it; and where tree-sitter reads a call as one (Lua's ldo.c
    calls `f(L, ud);` inside a C++ `try` compiled as C), a one-letter name became a definition of the repository,
    whose chunk every nearby `f` then pulled in."""
    source = ("int helper(int x);\n\nstatic void protect (lua_State *L, Pfunc f, void *ud) {\n  try {\n"
              "    f(L, ud);\n  }\n  catch (...) {\n    L->status = -1;\n  }\n}\n\n"
              "int run(void) {\n  int local_helper(int);\n  return local_helper(helper(1));\n}\n")
    defines = {name for chunk in analyze_source(f"src/ldo.{extension}", source).chunks for name in chunk.defines}
    assert {"helper", "protect", "run"} <= defines
    assert not {"f", "local_helper"} & defines


def test_chunks_carry_language_and_referenced_identifiers_without_keywords():
    source, _, _ = SAMPLES["sample.py"]
    chunks = analyze_source("shapes.py", source).chunks
    assert {c.language for c in chunks} == {"python"}
    circle = chunks[1]
    assert {"math", "pi", "cache", "circle_area"} <= circle.references
    assert not {"def", "return"} & circle.references


def _long_class(methods: int, body_lines: int) -> str:
    parts = ["import os", "", "", "class Big:", '    """Many methods."""', ""]
    for m in range(methods):
        parts += [f"    # Method {m}.", "    @staticmethod", f"    def method_{m}(x):"]
        parts += [f"        x = x + {j}  # step {j}" for j in range(body_lines)]
        parts += ["        return x", ""]
    parts += ["", "def after():", "    return Big()", ""]
    return "\n".join(parts)


def test_a_long_definition_splits_at_its_methods():
    source = _long_class(methods=12, body_lines=6)
    lines = source.split("\n")
    chunks = analyze_source("big.py", source, max_tokens=200).chunks
    pieces = [c for c in chunks if c.kind == "definition" and c.start_line < lines.index("def after():")]
    assert len(pieces) > 2
    assert pieces[0].defines[0] == "Big" and lines[pieces[0].start_line - 1] == "class Big:"
    for piece in pieces[1:]:  # each later piece starts at a method's comment, never mid-method
        assert lines[piece.start_line - 1].startswith("    # Method ")
    for before, after in zip(pieces, pieces[1:]):
        assert before.end_line < after.start_line  # no overlap, no line lost but blank ones
        assert all(not line.strip() for line in lines[before.end_line : after.start_line - 1])
    for piece in pieces:
        assert piece.approx_tokens <= 200
    all_methods = [name for piece in pieces for name in piece.defines if name.startswith("method_")]
    assert all_methods == [f"method_{m}" for m in range(12)]
    assert chunks[-1].defines == ("after",)


def test_a_definition_without_inner_structure_splits_at_lines():
    source = "DATA = [\n" + "".join(f"    {i},\n" for i in range(400)) + "]\n"
    chunks = analyze_source("data.py", source, max_tokens=100).chunks
    assert len(chunks) > 3
    assert chunks[0].start_line == 1 and chunks[-1].end_line == 402
    assert all(a.end_line + 1 == b.start_line for a, b in zip(chunks, chunks[1:]))


def test_a_syntax_error_still_yields_chunks_with_the_definitions_after_it():
    source = "\n".join([
        "import os",
        "",
        "def good_one(x):",
        "    return x + 1",
        "",
        "def broken(x:",
        "    return x +",
        "",
        "def good_two(y):",
        "    return y * 2",
        "",
        "class After:",
        "    def method(self):",
        "        pass",
        "",
    ])
    chunks = analyze_source("broken.py", source).chunks
    spans = {c.defines: (c.start_line, c.end_line) for c in chunks}
    assert spans[("good_one",)] == (3, 4)
    assert spans[("good_two",)] == (9, 10)
    assert spans[("After", "method")] == (12, 14)
    covered = {line for c in chunks for line in range(c.start_line, c.end_line + 1)}
    assert {6, 7} <= covered  # the broken part is kept as code


@pytest.mark.parametrize("path, nested, after", [
    ("data.py", "def f():\n    x = " + "[\n" * 3000 + "]\n" * 3000 + "    return x\n", "def g():\n    return f()\n"),
    ("data.js", "const T = " + "(\n" * 3000 + "1" + ")\n" * 3000 + ";\n", "function g() { return T; }\n"),
])
def test_code_nested_thousands_deep_is_chunked_and_the_definitions_after_it_found(path, nested, after):
    """Generated data nested deeper than Python's recursion limit: the walk for cut points recursed once a level,
    and the whole file (`g` with it) was left out of the index as "nested too deeply to chunk"."""
    source = nested + "\n" + after
    chunks = analyze_source(path, source).chunks
    assert [c.defines for c in chunks if "g" in c.defines] == [("g",)]
    last = source.count("\n")
    assert chunks[-1].end_line == last and chunks[0].start_line == 1
    assert all(a.end_line < b.start_line for a, b in zip(chunks, chunks[1:]))


def test_other_text_files_fall_back_to_line_windows():
    source = "".join(f"line {i} of the notes\n" for i in range(1, 101))
    chunks = analyze_source("docs/notes.md", source).chunks
    assert [(c.start_line, c.end_line) for c in chunks] == [(1, 40), (41, 80), (81, 100)]
    assert {c.kind for c in chunks} == {"text"} and {c.language for c in chunks} == {"markdown"}
    assert "notes" in chunks[0].references


def test_empty_and_blank_files_have_no_chunks():
    assert analyze_source("empty.py", "").chunks == ()
    assert analyze_source("blank.txt", "\n\n  \n").chunks == ()


def test_a_file_its_grammar_cannot_parse_in_time_is_chunked_as_text(monkeypatch):
    """tree-sitter-python takes time quadratic in a run of comment lines (8,000: 3 s; 60,000: minutes, in one
    C call). Past its deadline a parse is cancelled and the file chunked in line windows; the parser is reset, so
    the next file parses as usual."""
    from prompts import languages
    monkeypatch.setattr(languages, "PARSE_SECONDS", 0.02)
    monkeypatch.setattr(languages, "PARSE_SECONDS_PER_MB", 0.0)
    hostile = "import os\n\n\ndef f():\n    return 1\n" + "# a comment\n" * 8000
    analysis = analyze_source("hostile.py", hostile)
    assert analysis.chunks and all(chunk.kind == "text" for chunk in analysis.chunks)
    assert "".join(chunk.text + "\n" for chunk in analysis.chunks).count("# a comment") == 8000
    assert source_imports("hostile.py", hostile) == ()
    monkeypatch.setattr(languages, "PARSE_SECONDS", 0.5)
    after = analyze_source("fine.py", "import os\n\n\ndef g():\n    return os.sep\n")
    assert [chunk.kind for chunk in after.chunks] == ["header", "definition"] and after.imports == (Import("os"),)


def test_a_buffers_imports_cost_its_parse_not_a_query_of_every_definition(monkeypatch):
    """An editor buffer's imports are read on every request: matching and decoding every definition's name only to
    drop them took 2-3 s of a 512 KB buffer of assignments (the head of a 2.2 MB one), the parse 0.3 s. So the
    imports come from the import patterns alone, the definitions' query never runs, and they are what the whole
    analysis finds."""
    from prompts import chunking

    piece = "from lib import helper\n" + "".join(f"v{i} = f{i}(b{i})\n" for i in range(300))
    piece += "def g():\n    import os.path as p\n    return p\n"
    imports = (Import("lib", "helper"), Import("os.path", None, "p"))
    assert analyze_source("app.py", piece).imports == imports

    def no_definitions_query(*args, **kwargs):
        raise AssertionError("the definitions' query ran for a buffer's imports")

    monkeypatch.setattr(chunking, "_SyntaxChunker", no_definitions_query)
    assert source_imports("app.py", piece) == imports
    assert source_imports("app.py", piece * 40) == imports


def test_a_file_that_parses_as_one_error_of_many_pieces_is_chunked_as_text_in_bounded_time():
    """The query's walk of an error holding a long run of brackets is quadratic in its pieces, in one C call that
    cannot be cancelled (tree-sitter 0.26's query progress callback crashes the process): 450 KB of `[` took three
    minutes to index. Such a file is chunked in line windows; a file with an ordinary syntax error still by syntax."""
    import time
    hostile = ("{[" * 1000 + "\n") * 30
    started = time.perf_counter()
    analysis = analyze_source("hostile.js", hostile)
    assert time.perf_counter() - started < 1.0          # (4 s and more before, growing with the square)
    assert len(analysis.chunks) == 30 and all(chunk.kind == "text" for chunk in analysis.chunks)
    typed = "[\nexport function f() {\n  return a;\n}\n\nfunction g() {\n  return [1, 2\n}\n"
    assert [(chunk.kind, chunk.defines) for chunk in analyze_source("typed.js", typed).chunks] == [
        ("header", ()), ("definition", ("f",)), ("definition", ("g",))]


def _nodes(root) -> list[tuple]:
    """Every node of a tree with its place: (type, start and end byte, start and end point)."""
    found, stack = [], [root]
    while stack:
        node = stack.pop()
        found.append((node.type, node.start_byte, node.end_byte, node.start_point, node.end_point))
        stack.extend(reversed(node.children))
    return found


@pytest.mark.parametrize("name", [*SAMPLES, "chunking.py"])
def test_a_buffer_reparsed_from_its_last_version_has_a_fresh_parse_s_tree_and_imports(name):
    """An editor's buffer is reparsed from the grammar's last buffer's tree, told the edit between the two texts
    (chunking._reparse): after keystrokes, deletions, pasted lines (imports among them), multi-byte characters and
    a switch to another buffer, every node sits where a fresh parse puts it and the imports are the whole
    analysis's."""
    import random

    from pathlib import Path

    from prompts import chunking
    from prompts.languages import language_for, load_grammar

    source = Path(chunking.__file__).read_text(encoding="utf-8") if name == "chunking.py" else SAMPLES[name][0]
    path = f"src/{name}"
    grammar = load_grammar(language_for(path))
    pastes = [line for sample, _, _ in SAMPLES.values() for line in sample.split("\n")[:4]]
    rng = random.Random(name)
    text = source
    for step in range(60):
        at = rng.randrange(len(text) + 1)
        choice = rng.random()
        if choice < 0.5:
            text = text[:at] + rng.choice(["a", "é", " ", "\n", "(", "{", "}", "\"", "_x1", "→"]) + text[at:]
        elif choice < 0.8:
            text = text[:at] + text[at + rng.randrange(1, 40):]
        elif choice < 0.95:
            text = text[:at] + rng.choice(pastes) + "\n" + text[at:]
        else:
            text = rng.choice([sample for sample, _, _ in SAMPLES.values()])      # another buffer
        encoded = "\n".join(chunking.split_lines(text)).encode("utf-8")
        assert _nodes(chunking._reparse(grammar, encoded)) == _nodes(grammar.parse(encoded).root_node), step
        assert source_imports(path, text) == analyze_source(path, text).imports, step


def test_a_buffer_whose_parse_recovers_from_an_error_is_reparsed_as_parsed_whole():
    """tree-sitter's incremental parse may recover from a syntax error otherwise than a fresh parse of the same text
    (upstream: tree-sitter/tree-sitter#4001, #1645): `if` typed on to `ifa` in this C buffer (a stray `}` before it)
    came back as an error and a return statement, where a fresh parse finds a declaration. Found by the warm against
    cold fuzz (tests/prompts/test_warm_against_cold.py, seed 32: 7 of 200 sequences, in C and JavaScript)."""
    from prompts import chunking
    from prompts.languages import language_for, load_grammar

    grammar = load_grammar(language_for("src/object.c"))
    before = b"  } else if(PyArray_Check(obj)) {\n    }\n  else\n  return sz;"
    after = before.replace(b"if(", b"ifa(")
    chunking._reparse(grammar, before)
    assert _nodes(chunking._reparse(grammar, after)) == _nodes(grammar.parse(after).root_node)


def test_a_clean_buffer_s_first_error_keystroke_is_parsed_whole_too():
    """The reparse pays two parses on the keystroke that brings the first error (the incremental one, then the
    whole): its incremental result cannot be kept even where it started from a tree without errors. Typing `=` over
    `n f` of `return function` in this JavaScript (cut from matplotlib's mpl.js; 1 of 251 such edits there) comes
    back from the incremental parse without the `identifier` a fresh parse keeps inside the error."""
    from prompts import chunking
    from prompts.languages import language_for, load_grammar

    grammar = load_grammar(language_for("web/mpl.js"))
    before = (
        b"mpl.figure.prototype._make_on_message_function = function (fig) {\n"
        b"    return function socket_on_message(evt) {\n"
        b"        if (evt.data instanceof Blob) {\n"
        b"            if (img.type !== 'image/png') {\n            }\n"
        b"        } else if (\n            evt.data.slice(0, 21) === 'data:image/png;base64'\n        ) {\n        }\n"
        b"        if (callback) {\n            try {\n                console.log(\n                );\n            }\n"
        b"        }\n    };\n    if (name === 'key_press') {\n    }\n};"
    )
    after = before.replace(b"return function", b"retur=unction")
    assert not chunking._reparse(grammar, before).has_error
    assert _nodes(chunking._reparse(grammar, after)) == _nodes(grammar.parse(after).root_node)

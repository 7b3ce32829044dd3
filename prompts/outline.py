"""Definition outlines: a chunk reduced to what a caller of its definitions needs, like aider's repo map.

Signatures (decorators and multi-line parameter lists included), class heads with the signatures of their
methods and their one-line fields, the first line of each docstring; bodies are elided with ``...`` (a
comment ``...`` in languages where that is not code). A class of 300-800 tokens becomes a few dozen, so a
small budget can carry the definitions of many names where whole bodies would fit one.

The outline is made from the chunk's own text, parsed on its own (indented method groups are dedented
first), when packing asks for it; it is a choice of the chunk's lines plus elision lines, in their order.

A brief is shorter still, for the smallest budgets: what a caller needs to write the next line that uses a name.
Signatures without docstrings; a class's head with its constructor's signature (or its first few fields) but no
other members; and, of a chunk that defines many names (a header of constants and type aliases), only the
definitions of the names asked for. A brief of a few lines lets 1,024 tokens carry a dozen definitions.
"""

from __future__ import annotations

import functools
import re
import textwrap

from .chunking import IDENTIFIER, Chunk
from .languages import ParseTimeout, comment_marker, language_for, load_grammar

SHORT_STATEMENT_LINES = 2  # statements in a class body (fields, constants) kept whole up to this many lines
MAX_FIELDS = 24  # fields and constants an outline shows per class (an enum of 160 members is not a signature)
CLOSING = ("}", "};", "},", "})", "end")  # last lines of a braced definition, kept after its elided body
_IMPORTS = ("import", "include", "use_declaration", "package")  # statements an outline leaves out
BRIEF_FIELDS = 4  # fields a brief shows of a class without a constructor (a dataclass, a NamedTuple, an enum)
BRIEF_HEAD_LINES = 8  # a longer signature shows in a brief as its first 6 lines, an elision line and its last
CONSTRUCTORS = frozenset({"__init__", "__new__", "constructor", "new", "init"})


def outline(chunk: Chunk) -> str | None:
    """The outline of a chunk, or None when it has none shorter than itself (or its language no grammar)."""
    if chunk.kind == "text" or language_for(chunk.path) is None:
        return None
    return _outline(chunk.path, chunk.text)


def brief(chunk: Chunk, names: frozenset[str] = frozenset()) -> str | None:
    """The brief of a chunk (None when it has none shorter than itself): only the definitions of ``names``
    where the chunk defines any of them, else of everything it defines."""
    if chunk.kind == "text" or language_for(chunk.path) is None:
        return None
    wanted = frozenset(names.intersection(chunk.defines))
    return _outline(chunk.path, chunk.text, True, wanted)


@functools.lru_cache(maxsize=4096)
def _outline(path: str, text: str, brief: bool = False, wanted: frozenset[str] = frozenset()) -> str | None:
    spec = language_for(path)
    lines = text.split("\n")
    source = textwrap.dedent(text) if text[:1] in (" ", "\t") else text
    try:
        root = load_grammar(spec).parse(source.encode("utf-8")).root_node
    except ParseTimeout:
        return None
    elision = "..." if spec.name == "python" else f"{comment_marker(spec.name)} ..."
    builder = _Builder(lines, elision, python=spec.name == "python", brief=brief, wanted=wanted)
    for node in root.named_children:
        builder.node(node, top=True)
    result = builder.text()
    return result if result and len(result) < len(text) else None


class _Builder:
    """Collects the chosen lines of a chunk (by row) and the elision lines after given rows. ``brief``: the
    brief form; ``wanted``: the names whose definitions alone it shows (all, if empty)."""

    def __init__(self, lines: list[str], elision: str, python: bool, brief: bool = False,
                 wanted: frozenset[str] = frozenset()):
        self.lines, self.elision, self.python = lines, elision, python
        self.brief, self.wanted = brief, wanted
        self.rows: dict[int, str] = {}  # row -> the text to show there (a line, or a line and an elision)

    def keep(self, first: int, last: int) -> None:
        for row in range(first, last + 1):
            self.rows.setdefault(row, self.lines[row])

    def elide_after(self, row: int, indent: str) -> None:
        """An elision line after ``row``, indented by ``indent``."""
        self.rows[row] = self.rows.get(row, self.lines[row]) + "\n" + indent + self.elision

    def indent(self, row: int, deeper: bool = False) -> str:
        """The indentation of a row (one level deeper)."""
        line = self.lines[row]
        return line[: len(line) - len(line.lstrip())] + ("    " if deeper else "")

    def node(self, node, top: bool = False) -> None:
        if top and self.wanted and not self.wanted.intersection(_binds(node)):
            return
        body = node.child_by_field_name("body")
        definition = node.child_by_field_name("definition")  # Python's decorated_definition
        if definition is not None:
            self.keep(node.start_point.row, definition.start_point.row - 1)  # the decorators
            self.node(definition, top)
            return
        if body is None:
            members = [c for c in node.named_children if _has_body(c) or _is_binding(c)]
            if members and node.type not in ("expression_statement",):
                for child in members:  # export statements, variable declarations holding functions
                    self.node(child, top)
            elif "comment" in node.type or any(word in node.type for word in _IMPORTS):
                return
            elif node.end_point.row - node.start_point.row < SHORT_STATEMENT_LINES:
                self.keep(node.start_point.row, node.end_point.row)
            else:
                self.keep(node.start_point.row, node.start_point.row)
                self.elide_after(node.start_point.row, self.indent(node.start_point.row, deeper=True))
            return
        head_end = body.start_point.row if self.python else max(body.start_point.row, node.start_point.row)
        if self.python and body.start_point.row > node.start_point.row:
            head_end = body.start_point.row - 1
        colon = next((c for c in node.children if c.type == ":"), None) if self.python else None
        if colon is not None:  # (a Python head ends at its colon: a body that does not parse, as in a chunk ending
            head_end = colon.end_point.row  # inside its docstring, starts late; an empty one, on the colon's row)
        if self.brief and head_end - node.start_point.row >= BRIEF_HEAD_LINES:  # a long parameter list: its start
            first = node.start_point.row
            self.keep(first, first + BRIEF_HEAD_LINES - 3)
            self.elide_after(first + BRIEF_HEAD_LINES - 3, self.indent(first + 1))
            self.keep(head_end, head_end)
        else:
            self.keep(node.start_point.row, head_end)
        children = body.named_children
        docstring = children[0] if self.python and children and _is_docstring(children[0]) else None
        if docstring is not None and top and not self.brief:  # (a class's methods show their signatures only)
            self._docstring(docstring)
        if not _is_function(node):  # a class (struct, namespace, impl, module...): its members
            if self.brief:
                self._brief_members(node, children, head_end)
                return
            fields = 0
            for child in children:
                if child is docstring or "comment" in child.type or _is_docstring(child):
                    continue  # (strings after fields document them: left out with the comments)
                if not _has_body(child):  # a field or constant: the first MAX_FIELDS show, then one elision line
                    fields += 1
                    if fields == MAX_FIELDS + 1:
                        self.elide_after(max(self.rows), self.indent(child.start_point.row))
                    if fields > MAX_FIELDS:
                        continue
                self.node(child)
            if max(self.rows) == head_end and node.end_point.row > head_end:  # no member shown: say there are some
                self.elide_after(head_end, self.indent(node.start_point.row, deeper=True))
        elif node.end_point.row > head_end:  # (a one-line definition is kept as it is)
            first_row = children[0].start_point.row if children else node.start_point.row
            inner = self.indent(first_row) if first_row > head_end else self.indent(node.start_point.row, True)
            shows_docstring = docstring is not None and top and not self.brief
            last_kept = max(head_end, docstring.start_point.row if shows_docstring else head_end)
            self.elide_after(last_kept, inner)
        self._close(node, head_end)

    def _close(self, node, head_end: int) -> None:
        """A braced definition's closing line, kept after its elided body."""
        last = node.end_point.row
        if not self.python and last > head_end and self.lines[last].strip() in CLOSING:
            self.keep(last, last)

    def _brief_members(self, node, children: list, head_end: int) -> None:
        """A class's brief: its constructor's signature, or else its first BRIEF_FIELDS fields; one elision line
        for all the rest."""
        members = [c for c in children if "comment" not in c.type and not _is_docstring(c)]
        shown = [c for c in members if _has_body(c) and _binds(c) & CONSTRUCTORS]
        if not shown:
            shown = [c for c in members if not _has_body(c)][:BRIEF_FIELDS]
        for child in shown:
            self.node(child)
        if len(shown) < len(members) or not members and node.end_point.row > head_end:
            indent = self.indent(shown[0].start_point.row) if shown else self.indent(node.start_point.row, True)
            self.elide_after(max(self.rows), indent)
        self._close(node, head_end)

    def _docstring(self, node) -> None:
        row = node.start_point.row
        first = self.lines[row]
        quote = next((q for q in ('"""', "'''", '"', "'") if q in first.lstrip()[:4]), None)
        if node.end_point.row == row or quote is None:
            self.keep(row, row)
            return
        opening = first.strip()
        summary = opening if len(opening) > len(quote) else (opening + " " + self.lines[row + 1].strip())
        self.rows[row] = first[: len(first) - len(first.lstrip())] + summary + quote

    def text(self) -> str:
        return "\n".join(self.rows[row] for row in sorted(self.rows))


def _binds(node) -> set[str]:
    """The names a top-level node defines: a definition's name (through decorators and export statements), or
    the identifiers an assignment binds (those before its first ``=``)."""
    name = node.child_by_field_name("name")
    if name is not None:
        return {name.text.decode("utf-8", "replace")}
    inner = node.child_by_field_name("definition") or node.child_by_field_name("declaration")
    if inner is not None:
        return _binds(inner)
    if _has_body(node) or any(_has_body(c) or _is_binding(c) for c in node.named_children):
        return {n for c in node.named_children for n in _binds(c)}
    text = node.text.decode("utf-8", "replace").split("\n", 1)[0]
    target = re.split(r"(?<![=!<>])=(?!=)", text, maxsplit=1)
    return set(IDENTIFIER.findall(target[0])) if len(target) == 2 else set()


def _is_function(node) -> bool:
    """Whether a node with a body is a function (its body elided) rather than a container of members."""
    kind = node.type
    return any(word in kind for word in ("function", "method", "lambda", "constructor", "arrow")) or kind in (
        "function_item", "closure_expression")


def _has_body(node) -> bool:
    """A definition (its own body, or Python's decorated one) rather than a plain statement."""
    return node.child_by_field_name("body") is not None or node.child_by_field_name("definition") is not None


def _is_docstring(node) -> bool:
    return node.type == "expression_statement" and node.named_child_count == 1 and node.named_children[0].type in (
        "string", "concatenated_string")


def _is_binding(node) -> bool:
    """A declaration that binds a function or class (``const f = () => ...``), which has a body deeper down."""
    return node.type in ("variable_declarator", "lexical_declaration", "variable_declaration") and any(
        c.child_by_field_name("body") is not None for c in node.named_children
        if c.type in ("arrow_function", "function_expression", "function", "class", "variable_declarator"))

"""Definition outlines: a chunk reduced to what a caller of its definitions needs, like aider's repo map.

Signatures (decorators and multi-line parameter lists included), class heads with the signatures of their
methods and their one-line fields, the first line of each docstring; bodies are elided with ``...`` (a
comment ``...`` in languages where that is not code). A class of 300-800 tokens becomes a few dozen, so a
small budget can carry the definitions of many names where whole bodies would fit one.

The outline is made from the chunk's own text, parsed on its own (indented method groups are dedented
first), when packing asks for it; it is a choice of the chunk's lines plus elision lines, in their order.
"""

from __future__ import annotations

import functools
import textwrap

from .chunking import Chunk
from .languages import comment_marker, language_for, load_grammar

SHORT_STATEMENT_LINES = 2  # statements in a class body (fields, constants) kept whole up to this many lines
MAX_FIELDS = 24  # fields and constants an outline shows per class (an enum of 160 members is not a signature)
CLOSING = ("}", "};", "},", "})", "end")  # last lines of a braced definition, kept after its elided body
_IMPORTS = ("import", "include", "use_declaration", "package")  # statements an outline leaves out


def outline(chunk: Chunk) -> str | None:
    """The outline of a chunk, or None when it has none shorter than itself (or its language no grammar)."""
    if chunk.kind == "text" or language_for(chunk.path) is None:
        return None
    return _outline(chunk.path, chunk.text)


@functools.lru_cache(maxsize=4096)
def _outline(path: str, text: str) -> str | None:
    spec = language_for(path)
    lines = text.split("\n")
    source = textwrap.dedent(text) if text[:1] in (" ", "\t") else text
    root = load_grammar(spec).parser.parse(source.encode("utf-8")).root_node
    elision = "..." if spec.name == "python" else f"{comment_marker(spec.name)} ..."
    builder = _Builder(lines, elision, python=spec.name == "python")
    for node in root.named_children:
        builder.node(node, top=True)
    result = builder.text()
    return result if result and len(result) < len(text) else None


class _Builder:
    """Collects the chosen lines of a chunk (by row) and the elision lines after given rows."""

    def __init__(self, lines: list[str], elision: str, python: bool):
        self.lines, self.elision, self.python = lines, elision, python
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
            colon = next((c for c in node.children if c.type == ":"), None)
            if colon is not None:  # (a body that does not parse, as in a chunk ending inside its docstring,
                head_end = min(head_end, colon.end_point.row)  # starts late: the head still ends at its colon)
        self.keep(node.start_point.row, head_end)
        children = body.named_children
        docstring = children[0] if self.python and children and _is_docstring(children[0]) else None
        if docstring is not None and top:  # (a class's methods show their signatures only)
            self._docstring(docstring)
        if not _is_function(node):  # a class (struct, namespace, impl, module...): its members
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
            last_kept = max(head_end, docstring.start_point.row if docstring is not None and top else head_end)
            self.elide_after(last_kept, inner)
        last = node.end_point.row
        if not self.python and last > head_end and self.lines[last].strip() in CLOSING:
            self.keep(last, last)

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

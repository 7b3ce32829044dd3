"""The names the functions around a cursor bind: their parameters and the variables their bodies declare.

Ranking counts such names as the current file's own (ranking.cursor_terms' ``local``): they weigh less and pull in
no definitions from elsewhere. For Python the regular expressions of ranking.py find them (``def f(a, b)``, ``x =``);
in the languages with typed declarations a name's place says what it is (``read(JsonReader in)``, ``int n;``,
``h Handler``), so it is read from the syntax tree: the functions around the cursor (a lambda and the method it is
in), their parameters and declarations by a query per grammar over the outermost.
The buffer's tree is the one the imports were just read from (chunking reparses only what an edit touched).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from .chunking import _reparse, split_lines
from .languages import ParseTimeout, language_for, load_grammar

MAX_SOURCE_BYTES = 1 << 20  # a larger buffer is not parsed for its locals (the regular expressions still read it)

_JS_FUNCTIONS = ("function_declaration", "function_expression", "function", "arrow_function", "method_definition",
                 "generator_function_declaration", "generator_function")
_JS_BINDINGS = """
(formal_parameters (_) @bound)
(arrow_function parameter: (_) @bound)
(variable_declarator name: (_) @bound)
(for_in_statement left: (_) @bound)
(catch_clause parameter: (_) @bound)
"""
_C_BINDINGS = """
(parameter_declaration declarator: (_) @bound)
(declaration declarator: (_) @bound)
"""
# language -> (the node types of functions, the query whose @bound nodes bind names: a name or a pattern of names)
_LANGUAGES = {
    "javascript": (_JS_FUNCTIONS, _JS_BINDINGS),
    "typescript": (_JS_FUNCTIONS, _JS_BINDINGS),
    "tsx": (_JS_FUNCTIONS, _JS_BINDINGS),
    "java": (("method_declaration", "constructor_declaration", "compact_constructor_declaration",
              "lambda_expression"), """
(formal_parameter name: (_) @bound)
(spread_parameter (variable_declarator name: (_) @bound))
(local_variable_declaration declarator: (variable_declarator name: (_) @bound))
(enhanced_for_statement name: (_) @bound)
(catch_formal_parameter name: (_) @bound)
(resource name: (_) @bound)
(lambda_expression parameters: (identifier) @bound)
(inferred_parameters (identifier) @bound)
"""),
    "c": (("function_definition",), _C_BINDINGS),
    "cpp": (("function_definition", "lambda_expression"), _C_BINDINGS + """
(optional_parameter_declaration declarator: (_) @bound)
(for_range_loop declarator: (_) @bound)
"""),
    "go": (("function_declaration", "method_declaration", "func_literal"), """
(parameter_declaration name: (_) @bound)
(variadic_parameter_declaration name: (_) @bound)
(short_var_declaration left: (expression_list (identifier) @bound))
(range_clause left: (expression_list (identifier) @bound))
(var_spec name: (_) @bound)
(const_spec name: (_) @bound)
"""),
    "rust": (("function_item", "closure_expression"), """
(parameter pattern: (_) @bound)
(closure_parameters (identifier) @bound)
(let_declaration pattern: (_) @bound)
(for_expression pattern: (_) @bound)
(let_condition pattern: (_) @bound)
"""),
}

# where a function's head begins (its parameter list, or a C function's declarator), seen in an error's parts
_HEADS = frozenset({"formal_parameters", "parameter_list", "parameters", "function_declarator"})
_NAMES = frozenset({"identifier", "shorthand_property_identifier_pattern", "shorthand_field_identifier"})
# patterns and declarators whose names lie in one field (`b = g()`: b; `d: e`: e; `*p`: p)
_IN_FIELD = {"assignment_pattern": "left", "object_assignment_pattern": "left", "pair_pattern": "value",
             "required_parameter": "pattern", "optional_parameter": "pattern", "parameter": "pattern",
             "init_declarator": "declarator", "pointer_declarator": "declarator", "array_declarator": "declarator"}
# ... or in all their parts but the type (`Some(x)`, `Point { x, y: b }`, `[a, ...rest]`, `&r`, `(*f)`)
_IN_PARTS = frozenset({"rest_pattern", "object_pattern", "array_pattern", "tuple_pattern", "slice_pattern",
                       "ref_pattern", "reference_pattern", "mut_pattern", "or_pattern", "captured_pattern",
                       "tuple_struct_pattern", "struct_pattern", "reference_declarator", "parenthesized_declarator"})


def function_locals(path: str, rows: Sequence[str], row: int, column: int) -> frozenset[str]:
    """The names the functions around 0-based ``row``, ``column`` of ``rows`` bind (parameters, local declarations,
    loop and catch variables; not those of the closures beside the cursor's); none for Python, for a file of no grammar, outside
    functions, and for a buffer over MAX_SOURCE_BYTES or one its grammar does not parse in time."""
    spec = language_for(path)
    if spec is None or spec.name not in _LANGUAGES:
        return frozenset()
    source = "\n".join(split_lines("\n".join(rows))).encode("utf-8")  # (as source_imports reads the buffer)
    if len(source) > MAX_SOURCE_BYTES:
        return frozenset()
    from tree_sitter import QueryCursor

    grammar = load_grammar(spec)
    try:
        root = _reparse(grammar, source)
    except ParseTimeout:
        return frozenset()
    line = rows[row] if row < len(rows) else ""
    offset = sum(len(text.encode("utf-8")) + 1 for text in rows[:row]) + len(line[:column].encode("utf-8"))
    end = min(offset, len(source))
    while end > 0 and source[end - 1] in b" \t\r\n":
        end -= 1
    if end == 0:
        return frozenset()
    functions, _ = _LANGUAGES[spec.name]
    scope, start, unfinished, around = None, 0, None, set()
    node = root.descendant_for_byte_range(end - 1, end - 1)  # the last token before the cursor
    while node is not None:
        # (a function ends before the cursor where it lacks its closing brace, or where the cursor is past it)
        if node.type in functions and (node.end_byte >= offset or node.has_error):
            scope = node
            around.add(node.id)
        elif node.type == "ERROR":
            unfinished = node
        node = node.parent
    if unfinished is not None and (scope is None or unfinished.start_byte < scope.start_byte):
        # A function still being written parses as an error holding its head's parts: its scope begins at its
        # parameter list, the last one in the error before the cursor (earlier ones belong to earlier functions)
        heads = [child for child in unfinished.children if child.type in _HEADS and child.start_byte < offset]
        if heads:
            scope, start = unfinished, heads[-1].start_byte
            around.add(unfinished.id)
    if scope is None:
        return frozenset()
    cursor = QueryCursor(_bindings(spec))
    cursor.set_byte_range(max(start, scope.start_byte), scope.end_byte)
    names: set[str] = set()
    for bound in cursor.captures(scope).get("bound", ()):
        if _binder(bound, functions, around).id in around:  # (not a sibling closure's: another `it(...)` callback)
            _bound_names(bound, names)
    return frozenset(names)


@functools.cache
def _bindings(spec):
    from tree_sitter import Query

    return Query(load_grammar(spec).parser.language, _LANGUAGES[spec.name][1])


def _binder(node, functions, around: set[int]):
    """The function (or the error standing for one) whose parameter or local ``node`` is."""
    node = node.parent
    while node.parent is not None and node.type not in functions and node.id not in around:
        node = node.parent
    return node


def _bound_names(node, names: set[str]) -> None:
    """Add the names a pattern or declarator binds (a stack, not recursion: patterns nest without limit)."""
    to_read = [node]
    while to_read:
        node = to_read.pop()
        if node.type in _NAMES:
            names.add(node.text.decode("utf-8", "replace"))
        elif node.type in _IN_FIELD:
            part = node.child_by_field_name(_IN_FIELD[node.type])
            if part is not None:
                to_read.append(part)
        elif node.type == "field_pattern":  # Rust `Point { x, y: b }`: x, b
            to_read.append(node.child_by_field_name("pattern") or node.child_by_field_name("name"))
        elif node.type == "function_declarator":  # a pointer to a function (`int (*cmp)(...)`), not a prototype
            inner = node.child_by_field_name("declarator")
            if inner is not None and inner.type == "parenthesized_declarator":
                to_read.append(inner)
        elif node.type in _IN_PARTS:
            kind = node.child_by_field_name("type")
            to_read.extend(part for part in node.named_children if kind is None or part.id != kind.id)

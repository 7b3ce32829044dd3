"""The names each function of a syntax tree binds: its parameters and the variables its body declares.

bench/context_eval_languages.py's site finder leaves out a bare name that a function around it binds: hiredis's
adapters' ``void *privdata`` parameter is no use of test.c's ``privdata``. Read from the tree because in the typed
languages a name's place says what it is (``read(JsonReader in)``, ``int n;``, ``h Handler``). The queries are those of
the experiment a98400fa (prompts/locals.py there, reverted: as a ranking feature it gained nothing), here the eval's
own, over a whole file as on disk (no function still being written).
"""

from __future__ import annotations

import functools

from prompts.languages import load_grammar

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

# a parameter whose list is the scope of its name even without a body (`int attach(void *privdata);`)
_PARAMETERS = frozenset({"parameter_declaration", "optional_parameter_declaration", "variadic_parameter_declaration"})
_NAMES = frozenset({"identifier", "shorthand_property_identifier_pattern", "shorthand_field_identifier"})
# patterns and declarators whose names lie in one field (`b = g()`: b; `d: e`: e; `*p`: p)
_IN_FIELD = {"assignment_pattern": "left", "object_assignment_pattern": "left", "pair_pattern": "value",
             "required_parameter": "pattern", "optional_parameter": "pattern", "parameter": "pattern",
             "init_declarator": "declarator", "pointer_declarator": "declarator", "array_declarator": "declarator"}
# ... or in all their parts but the type (`Some(x)`, `Point { x, y: b }`, `[a, ...rest]`, `&r`, `(*f)`)
_IN_PARTS = frozenset({"rest_pattern", "object_pattern", "array_pattern", "tuple_pattern", "slice_pattern",
                       "ref_pattern", "reference_pattern", "mut_pattern", "or_pattern", "captured_pattern",
                       "tuple_struct_pattern", "struct_pattern", "reference_declarator", "parenthesized_declarator"})


def bound_by_function(spec, root) -> dict[int, frozenset[str]]:
    """Function node id -> the names that function itself binds (parameters, local declarations, loop and catch
    variables; a function inside it binds its own), for the tree ``root`` of ``spec``'s grammar; empty for a
    language without functions here. A name a function binds is bound anywhere inside it. A C, C++ or Go parameter
    list binds its parameters' names as well (the key is the list's id): a prototype's are no uses either."""
    if spec is None or spec.name not in _LANGUAGES:
        return {}
    from tree_sitter import QueryCursor

    functions = _LANGUAGES[spec.name][0]
    bound: dict[int, set[str]] = {}
    for node in QueryCursor(_bindings(spec)).captures(root).get("bound", ()):
        function = node.parent
        while function is not None and function.type not in functions:
            function = function.parent
        if function is not None:  # (a declaration outside functions is the file's own definition, no local)
            _bound_names(node, bound.setdefault(function.id, set()))
        if node.parent.type in _PARAMETERS and node.parent.parent is not None:  # its list too: a prototype
            _bound_names(node, bound.setdefault(node.parent.parent.id, set()))
    return {key: frozenset(names) for key, names in bound.items()}


@functools.cache
def _bindings(spec):
    from tree_sitter import Query

    return Query(load_grammar(spec).parser.language, _LANGUAGES[spec.name][1])


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

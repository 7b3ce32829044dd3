"""The languages prompts understands, as data: file extensions, grammars, comment markers, keywords and queries.

Each tree-sitter language carries two queries (in the spirit of aider's repo map and the grammars' tags.scm):

``definitions``
    ``@name`` captures a name the file defines. When the same match also captures ``@definition``, that node
    is a definition worth a chunk of its own: a top-level node that is, or directly contains, a ``@definition``
    starts a definition chunk (so ``export function f``, ``template <...> T f()`` and decorated Python functions
    count). ``@name`` without ``@definition`` names something that stays in the surrounding chunk (module
    constants, macros, prototypes).
``imports``
    ``@module`` captures an imported module, file or package as written in the source; ``@member`` a name
    imported from it (``from m import x``, ``import { x } from "m"``, re-exports too), ``@alias`` the name it
    is bound to when that differs (or the name a whole module is bound to: ``import m as alias``,
    ``import * as alias``), ``@star`` marks an import of every name (``from m import *``) and ``@default`` a
    module's default export bound to a name (``import x from "m"``: its member ``default``). A match without
    ``@module`` exports a name of the file itself under another (``export default g``, ``export { g as h }``).
    (A JavaScript ``export default`` declaration defines the name ``default`` too: what such an import finds. So
    does CommonJS's ``module.exports = function``, its ``@name`` marked ``@default``; ``const x = require("m")``
    binds m's default, and ``module.exports = f``, ``@default`` without ``@module``, exports the file's f as it.)

Other text files are chunked into line windows; ``PLAIN_TEXT`` names a few so that commented file sections
and chat code fences use the right syntax.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import os
import posixpath
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class LanguageSpec:
    """How to read one programming language with tree-sitter."""

    name: str
    grammar: str  # "module:function" in the grammar package, e.g. "tree_sitter_typescript:language_tsx"
    definitions: str
    imports: str
    keywords: frozenset[str]  # words that are never interesting identifiers
    # keywords that the grammar reads as one only where they begin a clause (`get size() {}`, `for (x of xs)`,
    # `match x:`): elsewhere they are names (`app.get(`, `get(path) {}`, `{ get: ... }`), see chunking.dropped_words
    contextual: frozenset[str] = frozenset()
    comment: str = "//"  # line comment marker
    leading: frozenset[str] = frozenset({"comment"})  # node types that belong to the definition right below them


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


PYTHON = LanguageSpec(
    name="python",
    grammar="tree_sitter_python:language",
    comment="#",
    definitions="""
        (function_definition name: (identifier) @name) @definition
        (class_definition name: (identifier) @name) @definition
        (decorated_definition
          definition: [(function_definition name: (identifier) @name)
                       (class_definition name: (identifier) @name)]) @definition
        (module (expression_statement (assignment left: (identifier) @name)))
    """,
    imports="""
        (import_statement name: (dotted_name) @module)
        (import_statement name: (aliased_import name: (dotted_name) @module alias: (identifier) @alias))
        (import_from_statement module_name: (_) @module name: (dotted_name) @member)
        (import_from_statement module_name: (_) @module
          name: (aliased_import name: (dotted_name) @member alias: (identifier) @alias))
        (import_from_statement module_name: (_) @module (wildcard_import) @star)
    """,
    keywords=_words("""
        False None True and as assert async await break class continue def del elif else except finally for
        from global if import in is lambda nonlocal not or pass raise return try while with yield match case
        self cls print len str int float bool list dict set tuple object super isinstance range
    """),
    contextual=_words("match case"),  # soft keywords: `re.match(`, `match = ...`, `if match:` are names
)

_JS_KEYWORDS = """
    break case catch class const continue debugger default delete do else export extends finally for function
    if import in instanceof new return super switch this throw try typeof var void while with yield let static
    async await of get set null undefined true false require module exports console
"""
# (Express's `app.get(` and `router.get(`, RxJS's `of(`, `express.static(`, the async library's `async.map(`)
_JS_CONTEXTUAL = "get set of static async"

# Variables bound to functions or classes are definitions; other top-level variables are names only.
_JS_BINDINGS = """
    (variable_declarator name: (identifier) @name
      value: [(arrow_function) (function_expression) (class)]) @definition
    (export_statement (lexical_declaration (variable_declarator name: (identifier) @name
      value: [(arrow_function) (function_expression) (class)]))) @definition
    (program [(lexical_declaration (variable_declarator name: (identifier) @name))
              (variable_declaration (variable_declarator name: (identifier) @name))])
    (program (export_statement (lexical_declaration (variable_declarator name: (identifier) @name))))
    (export_statement "default" @name declaration: (_)) @definition
    (export_statement "default" @name value: [(arrow_function) (function_expression) (class)]) @definition
"""

# Class properties holding functions are members as methods are: `route = (path) => {...}`, `static create = function
# () {...}`, a private `#dispatch = ...` (and a private method; the word `dispatch` is what a use site shows, see
# chunking), and a function a method assigns to `this.x` (a constructor's `this.use = (...) => {...}`). Properties
# holding anything else are fields, which the index records for none of these languages.
_JS_CLASS_MEMBERS = """
    (method_definition name: (private_property_identifier) @name) @definition
    (class_body (method_definition body: (statement_block (expression_statement (assignment_expression
      left: (member_expression object: (this) property: (property_identifier) @name)
      right: [(arrow_function) (function_expression)])))))
"""

# Functions in an exported object literal are the module's names: `export const helpers = { format: (x) => x }`,
# `export default { mount: (el) => el }` (a method written `render() {}` is a method definition already).
_JS_EXPORTED_OBJECTS = """
    (export_statement (lexical_declaration (variable_declarator value: (object
      (pair key: (property_identifier) @name value: [(arrow_function) (function_expression)])))))
    (export_statement value: (object
      (pair key: (property_identifier) @name value: [(arrow_function) (function_expression)])))
"""

# CommonJS exports (JavaScript's only: TypeScript writes `export =`): `module.exports = function` is the module's
# default, `exports.f = function` and `module.exports.f = ...` define f; other values exported are names only.
_COMMONJS_DEFINITIONS = """
    (expression_statement (assignment_expression
      left: (member_expression object: (identifier) @_module property: (property_identifier) @name @default)
      right: [(arrow_function) (function_expression) (class)]) (#eq? @_module "module") (#eq? @name "exports"))
      @definition
    (expression_statement (assignment_expression
      left: (member_expression object: (identifier) @_module property: (property_identifier) @_exports)
      right: [(function_expression name: (identifier) @name) (class name: (_) @name)])
      (#eq? @_module "module") (#eq? @_exports "exports"))
    (expression_statement (assignment_expression
      left: (member_expression
        object: [(identifier) @_exports (member_expression property: (property_identifier) @_exports)]
        property: (property_identifier) @name)
      right: [(arrow_function) (function_expression) (class)]) (#eq? @_exports "exports")) @definition
    (program (expression_statement (assignment_expression
      left: (member_expression
        object: [(identifier) @_exports (member_expression property: (property_identifier) @_exports)]
        property: (property_identifier) @name)
      right: [(object) (array) (number) (string) (template_string) (call_expression) (new_expression)])
      (#eq? @_exports "exports")))
    (expression_statement (assignment_expression
      left: (member_expression object: (identifier) @_module property: (property_identifier) @_exports)
      right: (object (pair key: (property_identifier) @name value: [(arrow_function) (function_expression)])))
      (#eq? @_module "module") (#eq? @_exports "exports"))
"""

# A function assigned to an object's property at a JavaScript file's top: Express's `app.use = function use(fn)`,
# `res.send = ...`, a prototype's `Router.prototype.handle = function (req)`: what `app.use(` calls.
_JS_MEMBER_ASSIGNMENTS = """
    (program (expression_statement (assignment_expression
      left: (member_expression object: [(identifier) (member_expression)] property: (property_identifier) @name)
      right: [(arrow_function) (function_expression)]) (#not-eq? @name "exports")) @definition)
"""

# ES modules and CommonJS requires (TypeScript's too): `const x = require("m")` binds m's default, `const { a, b: c }
# = require("m")` names of it.
_JS_IMPORTS = """
    (import_statement source: (string (string_fragment) @module))
    (import_statement (import_clause (identifier) @alias @default) source: (string (string_fragment) @module))
    (import_statement (import_clause (namespace_import (identifier) @alias))
      source: (string (string_fragment) @module))
    (import_statement (import_clause (named_imports (import_specifier name: _ @member alias: (_)? @alias)))
      source: (string (string_fragment) @module))
    (export_statement source: (string (string_fragment) @module))
    (export_statement "*" @star source: (string (string_fragment) @module))
    (export_statement (export_clause (export_specifier name: _ @member alias: _? @alias))
      source: (string (string_fragment) @module))
    (export_statement (export_clause (export_specifier name: _ @member alias: _ @alias)) !source)
    (export_statement "default" @alias value: (identifier) @member)
    (call_expression function: (identifier) @_require
      arguments: (arguments . (string (string_fragment) @module))
      (#eq? @_require "require"))
    (variable_declarator
      name: [(identifier) @alias @default
             (object_pattern [(shorthand_property_identifier_pattern) @member
                              (object_assignment_pattern left: (shorthand_property_identifier_pattern) @member)
                              (pair_pattern key: (property_identifier) @member value: (identifier) @alias)])]
      value: (call_expression function: (identifier) @_require
        arguments: (arguments . (string (string_fragment) @module)))
      (#eq? @_require "require"))
"""

# The file's own names that CommonJS exports under others: `module.exports = f` (its default), `module.exports =
# { h: g }`, `exports.h = g`, `module.exports.h = g`; and `module.exports = require("./m")`, all of m's as its own.
_COMMONJS_EXPORTS = """
    (expression_statement (assignment_expression
      left: (member_expression object: (identifier) @_module property: (property_identifier) @_exports)
      right: (call_expression function: (identifier) @_require
        arguments: (arguments . (string (string_fragment) @module))) @star)
      (#eq? @_module "module") (#eq? @_exports "exports") (#eq? @_require "require"))
    (expression_statement (assignment_expression
      left: (member_expression object: (identifier) @_module property: (property_identifier) @_exports)
      right: [(identifier) @member @default
              (object (pair key: (property_identifier) @alias value: (identifier) @member))])
      (#eq? @_module "module") (#eq? @_exports "exports"))
    (expression_statement (assignment_expression
      left: (member_expression
        object: [(identifier) @_exports (member_expression property: (property_identifier) @_exports)]
        property: (property_identifier) @alias)
      right: (identifier) @member)
      (#eq? @_exports "exports"))
"""

JAVASCRIPT = LanguageSpec(
    name="javascript",
    grammar="tree_sitter_javascript:language",
    definitions="""
        [(function_declaration name: (identifier) @name)
         (generator_function_declaration name: (identifier) @name)
         (class_declaration name: (identifier) @name)
         (method_definition name: (property_identifier) @name)] @definition
        (field_definition property: [(property_identifier) (private_property_identifier)] @name
          value: [(arrow_function) (function_expression)]) @definition
    """ + _JS_CLASS_MEMBERS + _JS_EXPORTED_OBJECTS + _JS_BINDINGS + _COMMONJS_DEFINITIONS + _JS_MEMBER_ASSIGNMENTS,
    imports=_JS_IMPORTS + _COMMONJS_EXPORTS,
    keywords=_words(_JS_KEYWORDS),
    contextual=_words(_JS_CONTEXTUAL),
)

_TYPESCRIPT_DEFINITIONS = """
    [(function_declaration name: (identifier) @name)
     (generator_function_declaration name: (identifier) @name)
     (function_signature name: (identifier) @name)
     (class_declaration name: (type_identifier) @name)
     (abstract_class_declaration name: (type_identifier) @name)
     (interface_declaration name: (type_identifier) @name)
     (type_alias_declaration name: (type_identifier) @name)
     (enum_declaration name: (identifier) @name)
     (internal_module name: (identifier) @name)
     (method_definition name: (property_identifier) @name)] @definition
    ; a property holding a function, or typed as one (`fetch: (request: Request) => Response`)
    (public_field_definition name: [(property_identifier) (private_property_identifier)] @name
      value: [(arrow_function) (function_expression)]) @definition
    (public_field_definition name: [(property_identifier) (private_property_identifier)] @name
      type: (type_annotation (function_type))) @definition
""" + _JS_CLASS_MEMBERS + _JS_EXPORTED_OBJECTS + _JS_BINDINGS

_TYPESCRIPT_KEYWORDS = _JS_KEYWORDS + """
    interface type enum implements private protected public readonly abstract declare namespace any number
    string boolean never unknown keyof as is infer
"""

# TypeScript's own CommonJS: `import x = require("m")` binds m's `export =` (else m itself), `export = f` exports f
# as the file's default.
_TYPESCRIPT_IMPORTS = """
    (import_statement (import_require_clause (identifier) @alias @default source: (string (string_fragment) @module)))
    (export_statement "=" (identifier) @member @default)
"""

TYPESCRIPT = LanguageSpec(
    name="typescript",
    grammar="tree_sitter_typescript:language_typescript",
    definitions=_TYPESCRIPT_DEFINITIONS,
    imports=_JS_IMPORTS + _TYPESCRIPT_IMPORTS,
    keywords=_words(_TYPESCRIPT_KEYWORDS),
    # (not the type names: `x: string,` is no name; nor words reserved in strict code, `public`, `interface`)
    contextual=_words(_JS_CONTEXTUAL + " type declare readonly abstract namespace is infer keyof as"),
)

TSX = dataclasses.replace(TYPESCRIPT, name="tsx", grammar="tree_sitter_typescript:language_tsx")

GO = LanguageSpec(
    name="go",
    grammar="tree_sitter_go:language",
    definitions="""
        (function_declaration name: (identifier) @name) @definition
        (method_declaration name: (field_identifier) @name) @definition
        (type_declaration (type_spec name: (type_identifier) @name)) @definition
        (source_file (const_declaration (const_spec name: (identifier) @name)))
        (source_file (var_declaration (var_spec name: (identifier) @name)))
    """,
    imports="""
        (import_spec !name path: (interpreted_string_literal (interpreted_string_literal_content) @module))
        (import_spec name: (package_identifier) @alias
          path: (interpreted_string_literal (interpreted_string_literal_content) @module))
        (import_spec name: (dot) @star path: (interpreted_string_literal (interpreted_string_literal_content) @module))
    """,
    keywords=_words("""
        break case chan const continue default defer else fallthrough for func go goto if import interface map
        package range return select struct switch type var nil true false iota int int8 int16 int32 int64 uint
        uint8 uint16 uint32 uint64 uintptr float32 float64 string bool byte rune error any make len cap append
        new panic
    """),
)

RUST = LanguageSpec(
    name="rust",
    grammar="tree_sitter_rust:language",
    leading=frozenset({"line_comment", "block_comment", "attribute_item"}),
    definitions="""
        [(function_item name: (identifier) @name)
         (function_signature_item name: (identifier) @name)
         (struct_item name: (type_identifier) @name)
         (enum_item name: (type_identifier) @name)
         (union_item name: (type_identifier) @name)
         (trait_item name: (type_identifier) @name)
         (type_item name: (type_identifier) @name)
         (macro_definition name: (identifier) @name)
         (mod_item name: (identifier) @name body: (_))
         (impl_item type: [(type_identifier) @name
                           (generic_type type: (type_identifier) @name)
                           (scoped_type_identifier name: (type_identifier) @name)])] @definition
        (source_file [(const_item name: (identifier) @name) (static_item name: (identifier) @name)])
    """,
    imports="""
        (use_declaration argument: (_) @module)
        (mod_item name: (identifier) @module !body)
    """,
    keywords=_words("""
        as async await break const continue crate dyn else enum extern false fn for if impl in let loop match
        mod move mut pub ref return self Self static struct super trait true type unsafe use where while u8 u16
        u32 u64 u128 usize i8 i16 i32 i64 i128 isize f32 f64 bool char str String Option Some None Result Ok
        Err Vec Box derive
    """),
)

_C_DEFINITIONS = """
    (function_definition declarator: [
      (function_declarator declarator: (identifier) @name)
      (pointer_declarator declarator: (function_declarator declarator: (identifier) @name))
      (pointer_declarator declarator: (pointer_declarator
        declarator: (function_declarator declarator: (identifier) @name)))]) @definition
    [(struct_specifier name: (type_identifier) @name body: (_))
     (union_specifier name: (type_identifier) @name body: (_))
     (enum_specifier name: (type_identifier) @name body: (_))
     (type_definition declarator: (type_identifier) @name)] @definition
    (preproc_def name: (identifier) @name)
    (preproc_function_def name: (identifier) @name)
    (declaration declarator: (function_declarator declarator: (identifier) @name))
    ; a prototype's name in parentheses, kept from function-like macros (`int (f) (int x);`), after an export macro
    ; too (`LUA_API int (lua_gettop) (lua_State *L);`, which parses as the call of a function named as the type)
    (declaration declarator: [
      (function_declarator declarator: (parenthesized_declarator (identifier) @name))
      (pointer_declarator declarator: (function_declarator declarator: (parenthesized_declarator (identifier) @name)))
      (function_declarator declarator: (function_declarator declarator: (identifier)
        parameters: (parameter_list . (parameter_declaration type: (type_identifier) @name !declarator) .)))])
"""

_C_KEYWORDS = """
    auto break case char const continue default do double else enum extern float for goto if inline int long
    register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while
    include define ifdef ifndef endif NULL size_t bool true false uint8_t uint16_t uint32_t uint64_t int8_t
    int16_t int32_t int64_t
"""

C = LanguageSpec(
    name="c",
    grammar="tree_sitter_c:language",
    definitions=_C_DEFINITIONS,
    imports="""
        (preproc_include path: [(string_literal (string_content) @module) (system_lib_string) @module])
    """,
    keywords=_words(_C_KEYWORDS),
)

CPP = LanguageSpec(
    name="cpp",
    grammar="tree_sitter_cpp:language",
    definitions=_C_DEFINITIONS + """
        (function_definition declarator: (function_declarator declarator: [
          (field_identifier) @name
          (qualified_identifier name: (identifier) @name)
          (qualified_identifier name: (qualified_identifier name: (identifier) @name))])) @definition
        (function_definition declarator: (reference_declarator
          (function_declarator declarator: [(identifier) @name (qualified_identifier name: (identifier) @name)])))
          @definition
        [(class_specifier name: (type_identifier) @name body: (_))
         (struct_specifier name: (type_identifier) @name body: (_))
         (namespace_definition name: (namespace_identifier) @name)] @definition
        (field_declaration declarator: (function_declarator declarator: (field_identifier) @name))
    """,
    imports=C.imports,
    keywords=_words(_C_KEYWORDS + """
        class namespace template typename public private protected virtual override this new delete nullptr
        operator using friend explicit noexcept constexpr std string vector
    """),
)

JAVA = LanguageSpec(
    name="java",
    grammar="tree_sitter_java:language",
    leading=frozenset({"line_comment", "block_comment"}),
    definitions="""
        [(class_declaration name: (identifier) @name)
         (interface_declaration name: (identifier) @name)
         (enum_declaration name: (identifier) @name)
         (record_declaration name: (identifier) @name)
         (annotation_type_declaration name: (identifier) @name)
         (method_declaration name: (identifier) @name)
         (constructor_declaration name: (identifier) @name)] @definition
        (field_declaration declarator: (variable_declarator name: (identifier) @name))
    """,
    imports="""
        (import_declaration [(scoped_identifier) (identifier)] @module)
    """,
    keywords=_words("""
        abstract assert boolean break byte case catch char class const continue default do double else enum
        extends final finally float for goto if implements import instanceof int interface long native new
        package private protected public return short static strictfp super switch synchronized this throw
        throws transient try void volatile while true false null var record String Object Override
    """),
    contextual=_words("var record"),  # (`record.value()`, `Record record = ...`)
)

TREE_SITTER_LANGUAGES: dict[str, LanguageSpec] = {
    ".py": PYTHON, ".pyi": PYTHON, ".ipynb": PYTHON,     # (a notebook is read as its code cells: scan.notebook_code)
    ".js": JAVASCRIPT, ".jsx": JAVASCRIPT, ".mjs": JAVASCRIPT, ".cjs": JAVASCRIPT,
    ".ts": TYPESCRIPT, ".mts": TYPESCRIPT, ".cts": TYPESCRIPT,
    ".tsx": TSX,
    ".go": GO,
    ".rs": RUST,
    ".c": C,
    # C++'s grammar reads C headers well and C++ headers correctly; C's would fail on the latter.
    ".h": CPP, ".cc": CPP, ".cpp": CPP, ".cxx": CPP, ".hh": CPP, ".hpp": CPP, ".hxx": CPP,
    ".java": JAVA,
}

# Other text files: (language name, line comment marker).
PLAIN_TEXT: dict[str, tuple[str, str]] = {
    ".md": ("markdown", "#"), ".rst": ("rst", ".."), ".txt": ("text", "#"),
    ".sh": ("shell", "#"), ".bash": ("shell", "#"), ".zsh": ("shell", "#"),
    ".toml": ("toml", "#"), ".yaml": ("yaml", "#"), ".yml": ("yaml", "#"), ".cfg": ("ini", "#"),
    ".ini": ("ini", "#"), ".json": ("json", "#"), ".html": ("html", "#"), ".css": ("css", "//"),
    ".sql": ("sql", "--"), ".lua": ("lua", "--"), ".rb": ("ruby", "#"), ".kt": ("kotlin", "//"),
    ".swift": ("swift", "//"), ".cs": ("csharp", "//"), ".php": ("php", "//"), ".scala": ("scala", "//"),
}
DEFAULT_PLAIN = ("text", "#")


@functools.cache
def grammars_stamp() -> tuple:
    """The tree-sitter and grammars installed, as the stamps (name, size, modification time) of their compiled
    bindings, found without importing them (~1 ms): an index cached with other ones may hold other chunks (a grammar
    upgraded under the same codecomplete parses some code differently), so that cache is parsed again."""
    modules = ["tree_sitter", *sorted({spec.grammar.split(":")[0] for spec in TREE_SITTER_LANGUAGES.values()})]
    stamps = []
    for module in modules:
        found = importlib.util.find_spec(module)
        binaries = []
        if found is not None and found.origin:
            with os.scandir(os.path.dirname(found.origin)) as entries:
                for entry in entries:
                    if entry.name.endswith((".so", ".pyd", ".dylib")):
                        info = entry.stat()
                        binaries.append((entry.name, info.st_size, info.st_mtime_ns))
        stamps.append((module, tuple(sorted(binaries))))
    return tuple(stamps)


def language_for(path: str) -> LanguageSpec | None:
    """The tree-sitter language of a file, by its extension; None for other text."""
    return TREE_SITTER_LANGUAGES.get(_extension(path))


def language_name(path: str) -> str:
    """The name chunks of this file carry: a tree-sitter language or a plain-text kind."""
    spec = language_for(path)
    return spec.name if spec else PLAIN_TEXT.get(_extension(path), DEFAULT_PLAIN)[0]


# Languages whose files use each other's code: a TypeScript file's neighbours in JavaScript, C++'s in C headers (as
# Tabby's retrieval groups them).
LANGUAGE_FAMILIES = {"typescript": "javascript", "tsx": "javascript", "cpp": "c"}


def language_family(language: str) -> str:
    """The family of a language name as ``language_name`` gives it (itself, for most)."""
    return LANGUAGE_FAMILIES.get(language, language)


@functools.lru_cache(maxsize=65536)
def _extension(path: str) -> str:
    # (cached: ranking and packing ask for every candidate chunk's language on every keystroke)
    return posixpath.splitext(path)[1].lower()


_COMMENTS = {spec.name: spec.comment for spec in TREE_SITTER_LANGUAGES.values()} | {
    name: comment for name, comment in PLAIN_TEXT.values()
}


def comment_marker(language: str) -> str:
    """The line comment marker of a language name as ``language_name`` gives it."""
    return _COMMENTS.get(language, DEFAULT_PLAIN[1])


class ParseTimeout(Exception):
    """tree-sitter did not finish a file within its time (``Grammar.parse``)."""


@dataclass(frozen=True)
class Grammar:
    """A loaded tree-sitter grammar with its queries compiled into one, so that one walk of a tree runs both: the
    patterns from ``first_import_pattern`` on are the imports. Not thread-safe (the parser holds state)."""

    parser: object  # tree_sitter.Parser
    query: object  # tree_sitter.Query
    first_import_pattern: int
    import_query: object  # tree_sitter.Query: the imports alone, for a file whose definitions are not wanted

    def parse(self, source: bytes, old_tree=None):
        """The tree of ``source``, or ParseTimeout past PARSE_SECONDS + PARSE_SECONDS_PER_MB of it. Real files parse
        at 10 MB/s or more, but tree-sitter-python takes time quadratic in a run of comment lines (8,000 of them:
        3 s, and a hostile file of 60,000 minutes, one uninterruptible C call); a deadline keeps one file from
        holding an index build or the server's engine thread. ``old_tree``: an earlier text's tree, edited to where
        ``source`` differs from that text (tree-sitter's ``Tree.edit``), whose unchanged parts are reused."""
        deadline = time.monotonic() + PARSE_SECONDS + PARSE_SECONDS_PER_MB * len(source) / 2**20
        try:
            return self.parser.parse(lambda offset, _point: source[offset:offset + 65536],
                                     *(() if old_tree is None else (old_tree,)),
                                     progress_callback=lambda *_state: time.monotonic() > deadline)
        except ValueError:      # "Parsing failed": cancelled by the callback
            self.parser.reset()  # (else the next parse would resume this one)
            raise ParseTimeout from None


PARSE_SECONDS, PARSE_SECONDS_PER_MB = 0.5, 1.0     # a 1.3 MB real module parses in 0.12 s


@functools.cache
def load_grammar(spec: LanguageSpec) -> Grammar:
    """Load and compile a grammar once per process (tree-sitter is imported only here, on first use)."""
    import tree_sitter

    module_name, function = spec.grammar.split(":")
    language = tree_sitter.Language(getattr(importlib.import_module(module_name), function)())
    query = tree_sitter.Query(language, spec.definitions + spec.imports)
    import_query = tree_sitter.Query(language, spec.imports)
    return Grammar(  # (the definitions' patterns counted without compiling them again: 25-70 ms for JavaScript's)
        parser=tree_sitter.Parser(language),
        query=query,
        first_import_pattern=query.pattern_count - import_query.pattern_count,
        import_query=import_query,
    )

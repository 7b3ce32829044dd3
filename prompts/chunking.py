"""Cutting a source file into chunks: top-level definitions, the file header, and line windows for other text.

A chunk is a run of whole lines. For the eight tree-sitter languages, each top-level definition (function,
class, struct, impl, namespace...) is a chunk together with the comments and attributes right above it; the
statements before the first definition (imports, module docstring, constants) form the header chunk, and
statements between definitions form code chunks. A chunk longer than the limit is cut at the start rows of its
nested definitions or statements, recursing into whichever of them is itself too long, so a long class becomes
groups of methods. Identifiers come from a regular expression rather than the syntax tree: it is many times
faster, and for ranking the names in comments count as much as the names in code.
"""

from __future__ import annotations

import functools
import re
from bisect import bisect_left
from itertools import accumulate
from typing import NamedTuple

from .imports import Import, outside_inline_modules
from .languages import LanguageSpec, ParseTimeout, language_for, language_name, load_grammar

MAX_CHUNK_TOKENS = 768  # a chunk of up to ~70 lines of code: whole functions, yet not whole modules
WINDOW_LINES = 40  # the line windows that chunk other text files
CHARS_PER_TOKEN = 3  # a deliberately low estimate: code tokenizers average 3-4 characters per token
NAME_DEPTH = 6  # how deep in the syntax tree defined names are looked for (methods of classes in namespaces)
MAX_ERROR_CHILDREN = 10_000  # a file that parses as one error of more pieces is chunked as text (see _SyntaxChunker)

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]+")
_NOT_A_START = ("", " ", "\t", "}", ")", "]")  # first characters of lines that continue something


class Chunk(NamedTuple):
    """A run of whole lines of one file, with what it defines and uses."""

    path: str  # posix, relative to the repository root
    start_line: int  # 1-based, inclusive
    end_line: int  # 1-based, inclusive
    language: str  # "python", ..., or a plain-text kind such as "markdown"
    kind: str  # "header" | "definition" | "code" | "text"
    defines: tuple[str, ...]  # names defined in the chunk, in order of appearance
    references: frozenset[str]  # identifiers it mentions (its own definitions included), minus keywords
    text: str  # the lines, joined by "\n", without a final newline
    approx_tokens: int  # len(text) / CHARS_PER_TOKEN; the packer counts exactly with the model's tokenizer


class SourceAnalysis(NamedTuple):
    """What chunking learns about one file."""

    chunks: tuple[Chunk, ...]
    imports: tuple[Import, ...]  # what the import statements bind, modules as written


def split_lines(text: str) -> list[str]:
    """Lines as tree-sitter counts rows: split at "\\n" only; a final newline does not start a line."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def analyze_source(path: str, text: str, max_tokens: int = MAX_CHUNK_TOKENS) -> SourceAnalysis:
    """Chunk a file (``path`` is relative to the repository root and picks the language). A file its grammar
    does not parse in time (``Grammar.parse``) is chunked like plain text, in line windows."""
    lines = split_lines(text)
    spec = language_for(path)
    if spec is not None:
        try:
            chunker = _SyntaxChunker(path, lines, spec, max_tokens)
            return SourceAnalysis(tuple(chunker.chunks()), chunker.imports)
        except ParseTimeout:
            pass
    sizes = _LineSizes(lines)
    spans = _windows(0, len(lines) - 1, sizes, max_tokens)
    chunks = [_make_chunk(path, language_name(path), "text", span, lines, [], frozenset()) for span in spans]
    return SourceAnalysis(tuple(c for c in chunks if c.text.strip()), ())


def source_imports(path: str, text: str) -> tuple[Import, ...]:
    """Just the imports of a file (say, an editor buffer), as ``analyze_source`` would find them: by the import
    patterns alone (every definition's name, matched and decoded only to be dropped, took 1.3 s of a 512 KB
    buffer's 1.6 s, on every request)."""
    spec = language_for(path)
    if spec is None:
        return ()
    grammar = load_grammar(spec)
    try:
        root = _reparse(grammar, "\n".join(split_lines(text)).encode("utf-8"))
    except ParseTimeout:
        return ()
    cursor = _cursor(grammar.import_query)
    return tuple(dict.fromkeys(_import(match) for _, match in cursor.matches(root)))


# Each grammar's last buffer and its tree: an editor's next request is the same buffer a few keystrokes on, and
# tree-sitter re-reads only what an edit touched (a 20 KB buffer: 1.0 ms parsed whole, Run 47's notes).
_last_trees: dict[object, tuple[bytes, object]] = {}


def _reparse(grammar, source: bytes):
    """``_parse``'s root of ``source``, reparsed from the grammar's last buffer's tree where there is one and neither
    tree holds a syntax error. An incremental parse may recover from an error otherwise than a fresh parse of the same
    text (tree-sitter/tree-sitter#4001, #1645; a C buffer's `if` typed on to `ifa` after a stray `}`: a return
    statement where a fresh parse finds a declaration), and a buffer's imports are to be the whole analysis's."""
    last = _last_trees.pop(grammar, None)       # (a parse that times out keeps none)
    tree = grammar.parse(source, _edited(*last, source)) if last is not None else None
    if tree is None or tree.root_node.has_error:
        tree = grammar.parse(source)
    root = _checked(tree.root_node)
    if not root.has_error:                      # (only a tree without errors is reparsed from)
        _last_trees[grammar] = source, tree
    return root


def _edited(old: bytes, tree, new: bytes):
    """``tree`` (of ``old``) told the one edit that turns ``old`` into ``new``: the bytes between their common
    prefix and their common suffix replaced."""
    start = _common_length(old, new, len(old), len(new), lambda a, n: a[:n])
    ends = _common_length(old, new, len(old) - start, len(new) - start, lambda a, n: a[len(a) - n:])
    old_end, new_end = len(old) - ends, len(new) - ends
    if start == old_end == new_end:
        return tree
    tree.edit(start_byte=start, old_end_byte=old_end, new_end_byte=new_end, start_point=_point(old, start),
              old_end_point=_point(old, old_end), new_end_point=_point(new, new_end))
    return tree


def _common_length(a: bytes, b: bytes, most_a: int, most_b: int, part) -> int:
    """The longest n <= both limits with part(a, n) == part(b, n), by bisection (each test one C comparison)."""
    low, high = 0, min(most_a, most_b)
    while low < high:
        middle = (low + high + 1) // 2
        if part(a, middle) == part(b, middle):
            low = middle
        else:
            high = middle - 1
    return low


def _point(source: bytes, offset: int) -> tuple[int, int]:
    """tree-sitter's (row, byte column) of a byte offset."""
    return source.count(b"\n", 0, offset), offset - (source.rfind(b"\n", 0, offset) + 1)


def _parse(grammar, lines: list[str]):
    """The root node of the lines' tree; ParseTimeout also for a file that parses as one error of too many pieces:
    the query's walk of an error holding a long run of brackets is quadratic in its pieces (450 KB of `[` took
    three minutes, one uninterruptible C call; tree-sitter 0.26's query progress_callback crashes the process);
    such a file is not code to chunk by its syntax."""
    return _checked(grammar.parse("\n".join(lines).encode("utf-8")).root_node)


def _checked(root):
    """`root`, or ParseTimeout where the whole text parsed as one error of more than MAX_ERROR_CHILDREN pieces."""
    if root.type == "ERROR" and root.child_count > MAX_ERROR_CHILDREN:
        raise ParseTimeout
    return root


def _cursor(query):
    from tree_sitter import QueryCursor

    cursor = QueryCursor(query)
    cursor.set_max_start_depth(NAME_DEPTH)  # spares walking whole function bodies
    return cursor


def _import(match: dict) -> Import:
    """What one match of an import pattern binds. ``@default`` with a module imports its default export (``import
    x from "m"``, ``const x = require("m")``); without one it exports the file's own name as its default
    (``module.exports = f``)."""
    text = {key: nodes[0].text.decode("utf-8", "replace") for key, nodes in match.items()}
    if "default" in text and "module" not in text:
        return Import("", text.get("member"), "default")
    member = "*" if "star" in text else "default" if "default" in text else text.get("member")
    module = text.get("module", "")
    if module and match["module"][0].parent.type == "use_declaration":  # (Rust)
        module = outside_inline_modules(module, _inline_modules(match["module"][0].parent))
    return Import(module, member, text.get("alias"))


def _inline_modules(node) -> int:
    """How many Rust inline modules (``mod tests { ... }``) a node is inside. One whose code is being written (an
    unfinished call) parses as an error that holds the tokens `mod name {` and then the node."""
    depth = 0
    while (parent := node.parent) is not None:
        if parent.type == "mod_item":
            depth += 1
        elif parent.type == "ERROR":
            before, sibling = [], node.prev_sibling
            while sibling is not None and len(before) < MODULE_OPENING_SIBLINGS:
                before.append(sibling.type)
                sibling = sibling.prev_sibling
            depth += sum(before[i : i + 3] == ["{", "identifier", "mod"] for i in range(len(before) - 2))
        node = parent
    return depth


MODULE_OPENING_SIBLINGS = 256  # how far back in an error an inline module's opening is looked for


class _LineSizes:
    """Approximate token counts of line ranges, in O(1) from prefix sums of line lengths."""

    def __init__(self, lines: list[str]):
        self._ends = [0, *accumulate(map(len, lines))]  # characters before each row, newlines not counted

    def tokens(self, first: int, last: int) -> int:
        """Approximate tokens of rows first..last (0-based, inclusive), newlines included."""
        return (self._ends[last + 1] - self._ends[first] + last + 1 - first) // CHARS_PER_TOKEN


def _last_row(node) -> int:
    """The last row a node has text on (a node ending at column 0 ends on the row before)."""
    row, column = node.end_point
    return row - 1 if column == 0 and row > node.start_point.row else row


_BLOCK_SCOPED = ("c", "cpp")  # languages whose names declared in a function's body are local to it


def _in_a_block(node) -> bool:
    """Whether a node lies in a function's body (a C compound statement)."""
    node = node.parent
    while node is not None:
        if node.type == "compound_statement":
            return True
        node = node.parent
    return False


def _word(name) -> str:
    """A defined name as the identifiers of a use show it: a JavaScript private member `#dispatch` is `dispatch`
    (IDENTIFIER reads `this.#dispatch(` so, in the buffer and in chunks alike)."""
    text = name.text.decode("utf-8", "replace")
    return text[1:] if name.type == "private_property_identifier" else text


class _SyntaxChunker:
    """Chunks the lines of one file (or, when recovering from a syntax error, a part of it) with a grammar."""

    def __init__(self, path: str, lines: list[str], spec: LanguageSpec, max_tokens: int, first_row: int = 0):
        self.path, self.lines, self.spec, self.max_tokens = path, lines, spec, max_tokens
        self.first_row = first_row  # where these lines start in the file
        self.sizes = _LineSizes(lines)
        grammar = load_grammar(spec)
        self.root = _parse(grammar, lines)
        self.definition_ids, self.names, self.imports = self._query(grammar)

    def _query(self, grammar) -> tuple[set[int], list[tuple[int, str]], tuple[Import, ...]]:
        """One walk of the tree for both queries: the ids of definition nodes, (row, name) of every defined name
        in row order, and the imports."""
        definition_ids, names, imports = set(), [], []
        for pattern, match in _cursor(grammar.query).matches(self.root):
            if pattern >= grammar.first_import_pattern:
                imports.append(_import(match))
                continue
            name = match["name"][0]  # (`@default` marks the name of a default export: `module.exports = function`)
            if self.spec.name in _BLOCK_SCOPED and _in_a_block(name):
                continue  # a C declaration in a function's body is its own (or a call tree-sitter misread)
            if "definition" in match:
                definition_ids.add(match["definition"][0].id)
            names.append((name.start_point.row, "default" if "default" in match else _word(name)))
        names.sort(key=_row)
        return definition_ids, names, tuple(dict.fromkeys(imports))

    def chunks(self, recover: bool = True) -> list[Chunk]:
        chunks = []
        for kind, nodes in self._runs(self.definition_ids):
            first, last = nodes[0].start_point.row, _last_row(nodes[-1])
            if kind == "error":
                if recover:
                    chunks.extend(self._recover(first, last))
                    continue
                kind = "code"
            for span in self._split(first, last, nodes):
                chunk = _make_chunk(self.path, self.spec.name, kind, span, self.lines, self.names, self.spec.keywords,
                                    self.first_row, self.spec.contextual)
                if chunk.text.strip():
                    chunks.append(chunk)
        return chunks

    def _recover(self, first: int, last: int) -> list[Chunk]:
        """Chunk a region tree-sitter could not parse by parsing, on its own, each part that starts with a line
        at column 0: whatever follows a half-typed definition is usually fine again."""
        starts = [first] + [row for row in range(first + 1, last + 1) if self.lines[row][:1] not in _NOT_A_START]
        chunks = []
        for start, end in zip(starts, starts[1:] + [last + 1]):
            part = _SyntaxChunker(self.path, self.lines[start:end], self.spec, self.max_tokens, self.first_row + start)
            chunks.extend(part.chunks(recover=False))
        return chunks

    def _runs(self, definition_ids: set[int]):
        """Group the top-level nodes into (kind, nodes): definitions with their leading comments, code between."""
        runs: list[tuple[str, list]] = []
        pending: list = []  # comments/attributes waiting to see whether a definition follows them

        def add_code(nodes):
            if runs and runs[-1][0] in ("header", "code"):
                runs[-1][1].extend(nodes)
            else:
                runs.append(("header" if not runs and self.first_row == 0 else "code", list(nodes)))

        for node in self.root.named_children:
            if runs and not pending and (
                node.start_point.row == _last_row(runs[-1][1][-1])  # a trailing comment on the last line
                or (runs[-1][0] == "error" and self.lines[node.start_point.row][:1] in _NOT_A_START)
            ):
                runs[-1][1].append(node)  # ... or the indented rest of what a syntax error cut off
                continue
            if node.type == "ERROR" and node.start_point.row < _last_row(node):
                if pending:
                    add_code(pending)
                    pending = []
                runs.append(("error", [node]))
                continue
            if node.type in self.spec.leading:
                if pending and node.start_point.row > _last_row(pending[-1]) + 1:
                    add_code(pending)
                    pending = []
                pending.append(node)
                continue
            is_definition = node.id in definition_ids or any(c.id in definition_ids for c in node.named_children)
            if pending and not (is_definition and node.start_point.row <= _last_row(pending[-1]) + 1):
                add_code(pending)
                pending = []
            if is_definition:
                runs.append(("definition", pending + [node]))
                pending = []
            else:
                add_code([node])
        if pending:
            add_code(pending)
        return runs

    def _split(self, first: int, last: int, nodes: list) -> list[tuple[int, int]]:
        """Cut rows first..last into spans under the limit, at the starts of nested nodes, never mid-line."""
        if self.sizes.tokens(first, last) <= self.max_tokens:
            return [(first, last)]
        cuts: set[int] = set()
        self._collect_cuts(nodes, cuts)
        return _pack(first, last, sorted(cuts), self.sizes, self.max_tokens)

    def _collect_cuts(self, nodes: list, cuts: set[int]) -> None:
        """Rows where a piece may start: each node's start (its leading comments' start, if any), descending
        into nodes over the limit; a node too long and without children may be cut at any of its rows. The
        sibling lists still to walk are a stack, not Python's: an expression nested a thousand levels deep
        (generated data) was a RecursionError, and its file left out of the index."""
        to_walk = [nodes]
        while to_walk:
            previous = None
            for node in to_walk.pop():
                glued = (
                    previous is not None
                    and previous.type in self.spec.leading
                    and _last_row(previous) + 1 >= node.start_point.row
                )
                if not glued:
                    cuts.add(node.start_point.row)
                first, last = node.start_point.row, _last_row(node)
                if self.sizes.tokens(first, last) > self.max_tokens:
                    children = node.named_children
                    if children:
                        to_walk.append(children)
                    else:
                        cuts.update(range(first + 1, last + 1))
                previous = node


def _pack(first: int, last: int, cuts: list[int], sizes: _LineSizes, limit: int) -> list[tuple[int, int]]:
    """Greedily make spans as long as the limit allows, each ending just before a cut row."""
    spans, start, fitting = [], first, None
    for cut in [c for c in cuts if first < c <= last] + [last + 1]:
        if sizes.tokens(start, cut - 1) <= limit:
            fitting = cut
            continue
        if fitting is not None:
            spans.append((start, fitting - 1))
            start = fitting
        if sizes.tokens(start, cut - 1) <= limit:
            fitting = cut
        else:  # nothing smaller to cut at: an over-long span, but whole lines
            spans.append((start, cut - 1))
            start, fitting = cut, None
    if start <= last:
        spans.append((start, last))
    return spans


def _windows(first: int, last: int, sizes: _LineSizes, limit: int) -> list[tuple[int, int]]:
    """Line windows of at most WINDOW_LINES lines and, unless a single line is longer, ``limit`` tokens."""
    spans = []
    for start in range(first, last + 1, WINDOW_LINES):
        end = min(start + WINDOW_LINES - 1, last)
        spans.extend(_pack(start, end, list(range(start + 1, end + 1)), sizes, limit))
    return spans


def _row(row_and_name: tuple[int, str]) -> int:
    return row_and_name[0]


def dropped_words(text: str, keywords: frozenset[str], contextual: frozenset[str]) -> frozenset[str]:
    """The ``keywords`` to leave out of ``text``'s words: all but the ``contextual`` ones that it uses as names
    somewhere, after a dot (`app.get(`, `re.match(`) or anywhere they begin no clause (`get(path) {`, `{ get }`,
    `match = ...`); `get size() {}`, `for (x of xs)`, `match x:` use them as keywords."""
    if not contextual:
        return keywords
    named = {member or word for member, word in _named_pattern(contextual).findall(text)}
    return keywords.difference(named)


@functools.lru_cache(maxsize=16)
def _named_pattern(contextual: frozenset[str]) -> re.Pattern:
    """The contextual words used as names: after a dot (group 1), or followed by no clause (group 2), which begins
    with a name, a quote, a bracket or a star after a space (`get size()`, `async (req) =>`, `from "m"`)."""
    words, edge = "|".join(sorted(contextual)), "[A-Za-z0-9_$]"
    return re.compile(rf"\.[ \t]*({words})(?!{edge})|(?<!{edge})({words})(?!{edge})(?![ \t]+[\w$#\[*'\"`({{])")


def _make_chunk(path, language, kind, span, lines, names, keywords, first_row=0,
                contextual: frozenset[str] = frozenset()) -> Chunk:
    """The chunk of rows ``span`` of ``lines`` (which start at row ``first_row`` of the file), naming what
    ``names`` (row, name) in row order say is defined on its rows."""
    first, last = span
    while first < last and not lines[first].strip():  # no blank lines at the edges
        first += 1
    while last > first and not lines[last].strip():
        last -= 1
    text = "\n".join(lines[first : last + 1])
    lo = bisect_left(names, first, key=_row)
    hi = bisect_left(names, last + 1, key=_row)
    defines = tuple(dict.fromkeys(name for _, name in names[lo:hi]))
    references = frozenset(IDENTIFIER.findall(text)).difference(dropped_words(text, keywords, contextual))
    return Chunk(
        path=path,
        start_line=first_row + first + 1,
        end_line=first_row + last + 1,
        language=language,
        kind=kind,
        defines=defines,
        references=references,
        text=text,
        approx_tokens=len(text) // CHARS_PER_TOKEN + 1,
    )

"""Ranking the repository's chunks by what the code at the cursor (or a chat question) uses.

Signals, summed with fixed weights:

- imported names: the chunk defining each name the current file imports, followed through re-exports
  (imports.py), weighted by how near the cursor the name is used; every imported name keeps a base weight, so
  a name about to be used for the first time (its only mention the import line) still has its definition in;
  shared among its chunks, but a file's first chunk defining it less so (overloads, constructors, impl blocks
  are one definition, not rivals);
- definitions: a chunk that defines an identifier used near the cursor, shared among the chunks defining it
  (``__init__`` tells little, ``parse_header`` a lot), somewhat discounted for names used everywhere, and
  raised where the current file imports the defining file;
- a module at the cursor: right after ``module.`` (or ``a.b.``, ``crate::a::``), the chunks of that module's files;
  more for the definitions of the names likeliest to come next: after ``module.Ne``, a word partly typed, those
  beginning with it (what the user is about to complete); right after the dot, those the file already uses; after
  a type rather than a module (``Store::ne``, ``Price.fr``), the chunks defining its members so named
  (members.py); after the instance itself (``self.pa``, ``super().pa``, ``this.pa``), those of the members of the
  enclosing class's base classes, defined in other files as often as not (inherited.py);
- qualified uses (Go): ``pkg.Name`` near the cursor is a use of that imported package's Name, weighted by
  nearness as an imported name is (two packages both define ``New``: ``store.New(`` is store's); a chat question's
  ``Client.send`` ("the client's send") is that class's ``send`` (question_terms.py), weighted by the question's age;
- lexical similarity: BM25 between the weighted identifiers of the query and those of each chunk, normalised to
  the best match;
- imports: a little for every chunk of a file the current file imports, shared among those files;
- proximity: a little for files near the current one in the folder tree, to break ties.

A cursor in code keeps to its language family (``Query.family``): chunks of files of other languages count only
where the current file imports them or the names it uses (a monorepo's other parts share its words, not its code).

Where the code right before the cursor expects a type (an annotation), an exception or a decorator, a name of
the wrong shape for it (``parse_header`` after ``-> ``) counts for less among the definitions.

Query identifiers weigh more the nearer they are to the cursor (before it counts twice as much as after it);
words in comments and strings, and names the current file binds itself (local variables, parameters, its own
definitions), weigh less and never pull in definitions from elsewhere. The partial word under the cursor is left
out of them, so the ranking does not change with every keystroke; only after a module's or a type's qualifier
(``pr.Ne|``, ``Store::ne|``), ``self.``/``this.`` (``self.pa|``), or a variable whose type the code above states
(``parser.pa|`` after ``parser = Parser(text)``), does it say which definitions come first.
"""

from __future__ import annotations

import functools
import math
import posixpath
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from .chunking import IDENTIFIER, Chunk, dropped_words
from .index import RepoIndex

DEFINITION_WEIGHT = 3.0
IMPORTED_NAME_WEIGHT = 3.0  # the definition of an imported name, at full nearness
IMPORTED_NAME_BASE = 0.25  # ... and for every imported name, however far from the cursor
IMPORTED_FILE_BOOST = 2.0  # a definition of a name used near the cursor, in a file the current file imports
MODULE_WEIGHT = 2.0  # the chunks of the module right before the cursor (`nodes.|`), shared among them
COMPLETION_WEIGHT = 8.0  # the definitions of its names likeliest next (beginning with the word typed, `nodes.Se|`;
                         # or used in the file, `nodes.|`), shared among the names (by the square root): one name
                         # alone outweighs any other name's definition (at most DEFINITION_WEIGHT *
                         # IMPORTED_FILE_BOOST = 6)
IMPORT_WEIGHT = 0.5  # every chunk of the imported files, shared among the files
LEXICAL_WEIGHT = 3.0  # code like the code at the cursor: what a small model copies from best
PROXIMITY_WEIGHT = 0.25
SAME_FILE_WEIGHT = 3.0  # the current file's own chunks beyond the text around the cursor
MENTION_WEIGHT = 4.0  # chat: a file the question names (over LEXICAL_WEIGHT: "What's in utils.py?" is about it)
PROSE_MENTION_WEIGHT = 2.0  # ... or whose stem is a word of its prose ("what does termui do?", "the response"),
                            # shared among the words of its prose (Query.prose_words): one word among seven that
                            # describe code ("closing a cached file") is hardly the file

SHAPE_MISMATCH = 0.3  # a definition whose name has the wrong shape for what the cursor expects
PROSE_FACTOR = 0.3  # identifiers in comments and strings
LOCAL_FACTOR = 0.5  # names the current file binds itself

K1, B = 1.2, 0.75  # BM25's usual constants
LINES_BEFORE, LINES_AFTER = 60, 20  # the neighbourhood of the cursor that the query reads closely
DISTANCE_SCALE = 10  # lines at which an identifier's weight halves
FILE_WEIGHT = 0.2  # every identifier elsewhere in the current file still counts this much
USE_WEIGHT, USE_WEIGHT_MAX = 0.15, 0.6  # an imported name used n times in the file: at least 0.15 * sqrt(n), up
                                        # to 0.6 (the names a file uses most are the likeliest to come next)
FILE_LINES = 2000  # how far from the cursor the rest of the file is read
LINE_CHARS = 1000  # of a longer line, only the part nearest the cursor is read (a minified line of megabytes)
MAX_TERMS = 256  # the heaviest identifiers make the query

_QUALIFIED = re.compile(r"\b[A-Za-z_]\w*\.[A-Za-z_]\w*")  # `pkg.Name`, wherever it stands: `f(pkg.Name(`
_PARTIAL_BEFORE = re.compile(r"\w+$")
_PARTIAL_AFTER = re.compile(r"^\w+")
# `module.`, `a.b.`, Rust's `crate::a::`: a path of names right before the cursor (none after `)` or `]`: a call's
# result is no module).
_MODULE_BEFORE = re.compile(r"(?<![\w.:)\]])([A-Za-z_]\w*(?:(?:\.|::)[A-Za-z_]\w*)*)(?:\.|::)$")
# Names a file binds itself: assignment targets (and keyword arguments), loop variables, `as` names, parameters.
_ASSIGNED = re.compile(r"\b([A-Za-z_]\w*)\s*(?::=|(?:[-+*/%&|^@]|//|\*\*|>>|<<)?=(?!=))")
_LOOP_OR_AS = re.compile(r"\b(?:for|as)\s+([A-Za-z_][\w\s,()]*?)\s*(?:\bin\b|:|\)|$)", re.MULTILINE)
_PARAMETERS = re.compile(r"\b(?:def|function|func|fn)\s+\w*\s*\(([^)]*)")
_PARAMETER = re.compile(r"(?:^|[(,])\s*\*{0,2}([A-Za-z_]\w*)\s*(?=[:=,)]|$)")
# What the text before the cursor expects next: a type (after `x: `, `-> `, or inside `Optional[`, `A | `),
# an exception (after `raise `, `except (`), a decorator (`@` at the start of a line).
_EXPECTS = (
    ("type", re.compile(r"(?:(?:[A-Za-z_]\w*|[)\]])\s*:|->)\s*(?:[\w.]+\s*(?:\[|\||,)\s*)*$")),
    ("exception", re.compile(r"\b(?:raise|except)\s*(?:\(\s*(?:[\w.]+\s*,\s*)*)?$")),
    ("decorator", re.compile(r"^\s*@$")),
)


@dataclass(frozen=True)
class Query:
    """What to look for in the repository."""

    weights: dict[str, float]  # identifier -> importance in (0, 1]
    path: str | None = None  # the current file, if any
    imported: frozenset[str] = frozenset()  # files the current file imports
    imported_names: Mapping[str, Sequence[int]] = field(default_factory=dict)  # name -> chunks defining it
    module_at_cursor: Sequence[str] = ()  # files of the module whose attribute is being typed (`nodes.|`)
    # the module's (or type's, `Store::ne|`; the enclosing class's bases', `self.pa|`; a variable's type's and its
    # bases', `parser.pa|`) names likeliest next
    # (beginning with the word typed after it, `nodes.Se|`) -> chunks defining each
    completing: Mapping[str, Sequence[int]] = field(default_factory=dict)
    local: frozenset[str] = frozenset()  # names the current file binds itself
    uses: Mapping[str, int] = field(default_factory=dict)  # identifier -> occurrences in the current file
    shown: tuple[int, int] | None = None  # lines of ``path`` (as indexed) already in the prompt, never returned
    expects: str | None = None  # what the code before the cursor expects (CursorTerms.expects)
    mentioned: frozenset[str] = field(default_factory=frozenset)  # files named in a chat question
    mentioned_in_prose: frozenset[str] = field(default_factory=frozenset)  # files whose stem its prose says
    prose_words: int = 1  # the words of that prose but its stop words (question_terms.content_words)
    # "pkg.Name" used near the cursor -> (nearness, the chunks of pkg's files defining Name)
    qualified: Mapping[str, tuple[float, Sequence[int]]] = field(default_factory=dict)
    # the cursor's language family (languages.language_family), where it is in code: chunks of files of other
    # families count only where the current file imports them or a name it uses (None: every file counts)
    family: str | None = None


@dataclass(frozen=True)
class CursorTerms:
    """What the text around a cursor says: identifier weights, the names it binds, the word before a dot."""

    weights: dict[str, float]
    local: frozenset[str]
    qualifier: str | None  # `name` when the cursor follows `name.` or `name.Pa`; a path: `a.b`, `crate::a`
    counts: Mapping[str, int] = field(default_factory=dict)  # identifier -> occurrences in the file
    expects: str | None = None  # "type" | "exception" | "decorator": what the code before the cursor expects
    qualified: Mapping[str, float] = field(default_factory=dict)  # "module.name" in the code near it -> nearness
    partial: str = ""  # the word typed after the qualifier, up to the cursor (`Pa` of `name.Pa|`)


def cursor_terms(
    lines: list[str], row: int, col: int, keywords: frozenset[str], comment: str = "#",
    declared: frozenset[str] | set[str] = frozenset(), contextual: frozenset[str] = frozenset(),
) -> CursorTerms:
    """The identifiers around a cursor at 0-based ``row``, ``col`` of ``lines``, weighted by nearness.
    ``declared``: names that imports bind with what reads as an assignment (``const fmt = require(...)``), not
    local. ``contextual``: the ``keywords`` that count where the code uses them as names (``app.get(``)."""
    cursor_line = lines[row] if row < len(lines) else ""
    before, after = cursor_line[:col][-LINE_CHARS:], cursor_line[col:][:LINE_CHARS]
    partial = _PARTIAL_BEFORE.search(before)
    written = before[: partial.start()] if partial else before
    qualifier = _MODULE_BEFORE.search(written[-200:])
    first, top = max(0, row - FILE_LINES), max(0, row - LINES_BEFORE)
    # the close reading's top may lie inside a docstring that began above it: the file's text above decides
    opener = _open_string("".join(_clip(line) + "\n" for line in lines[:top]), comment)
    lines = [_clip(line) for line in lines[first:row]] + [
        written + " " + _PARTIAL_AFTER.sub("", after)
    ] + [_clip(line) for line in lines[row + 1 : row + FILE_LINES]]
    row, top = row - first, top - first
    read = "\n".join(lines)
    counts = Counter(IDENTIFIER.findall(read))
    weights = dict.fromkeys(counts, FILE_WEIGHT)
    bottom = min(len(lines), row + LINES_AFTER + 1)
    code, prose = _split_prose("\n".join(lines[top:bottom]), comment, opener)
    qualified: dict[str, float] = {}
    for factor, text in ((1.0, code), (PROSE_FACTOR, prose)):
        for number, line in enumerate(text.split("\n"), top):
            distance = row - number if number <= row else 2 * (number - row)
            weight = factor / (1.0 + distance / DISTANCE_SCALE)
            for name in IDENTIFIER.findall(line):
                if weights[name] < weight:
                    weights[name] = weight
            if factor == 1.0 and "." in line:  # (code, not comments)
                for use in _QUALIFIED.findall(line):
                    qualified[use] = max(qualified.get(use, 0.0), weight)
    local = _bound_names(code).difference(declared)
    for name in local.intersection(weights):
        weights[name] *= LOCAL_FACTOR
    expects = next((kind for kind, pattern in _EXPECTS if pattern.search(written[-200:])), None)
    dropped = dropped_words(read, keywords, contextual)
    return CursorTerms(_heaviest(weights, dropped), local, qualifier.group(1) if qualifier else None, counts,
                       expects, qualified, partial.group() if partial and qualifier else "")


def fits_expected(name: str, expects: str | None) -> bool:
    """Whether a name has the shape of what the cursor expects: types and exceptions are capitalised words
    (``Segment``, not ``CONSTANT``), decorators are not."""
    if expects is None:
        return True
    capitalised = name[:1].isupper() and not name.isupper()
    return capitalised if expects in ("type", "exception") else not capitalised


def text_weights(text: str) -> dict[str, float]:
    """Identifier weights of a chat question: every identifier alike (a pinned file's are its chunks' references)."""
    return _heaviest(dict.fromkeys(IDENTIFIER.findall(text), 1.0), frozenset())


def _clip(line: str) -> str:
    return line if len(line) <= LINE_CHARS else line[:LINE_CHARS]


def _split_prose(text: str, comment: str, opener: str = "") -> tuple[str, str]:
    """``text`` as code with comments and string literals blanked out, and as those alone (lines kept).
    ``opener``: the quote of a string that ``text`` begins inside (``_open_string``)."""
    text = opener + text  # (its string then reads as one, and is cut off again below)
    code, prose, end = [], [], 0
    for match in _prose_pattern(comment).finditer(text):
        start, stop = match.span()
        code.append(text[end:start])
        prose.append(re.sub(r"[^\n]", " ", text[end:start]))
        code.append(re.sub(r"[^\n]", " ", match.group()))
        prose.append(match.group())
        end = stop
    code.append(text[end:])
    prose.append(re.sub(r"[^\n]", " ", text[end:]))
    return "".join(code)[len(opener):], "".join(prose)[len(opener):]


@functools.lru_cache(maxsize=4)  # (keystrokes at one place scan the same text above the window again)
def _open_string(text: str, comment: str) -> str:
    """The quote (triple or a backtick) of the string still open at the end of ``text``, whole lines each ending in
    a newline, as ``_split_prose`` reads them; "" when none is. Only an unclosed multi-line string's match takes in
    the last newline (one-line strings and comments stop before it). About 1 ms for 75 kB."""
    last = None
    for last in _prose_pattern(comment).finditer(text):
        pass
    if last is None or last.end() < len(text):
        return ""
    return last.group()[:1] if last.group().startswith("`") else last.group()[:3]


_PROSE_PATTERNS: dict[str, re.Pattern] = {}


def _prose_pattern(comment: str) -> re.Pattern:
    """Triple-quoted strings, one-line strings, backtick strings and line comments (an approximation good enough for
    weights). A multi-line string left open runs to the end of the text (``_open_string`` tells by that)."""
    if comment not in _PROSE_PATTERNS:
        _PROSE_PATTERNS[comment] = re.compile(
            r'"""[\s\S]*?(?:"""|$(?![\s\S]))|\'\'\'[\s\S]*?(?:\'\'\'|$(?![\s\S]))'
            r'|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'|`(?:\\.|[^`\\])*(?:`|$(?![\s\S]))'
            + "|" + re.escape(comment) + r"[^\n]*"
        )
    return _PROSE_PATTERNS[comment]


def _bound_names(code: str) -> frozenset[str]:
    """Names the code binds: assignment targets, loop and `as` variables, function parameters."""
    names = set(_ASSIGNED.findall(code))
    for group in _LOOP_OR_AS.findall(code):
        names.update(IDENTIFIER.findall(group))
    for parameters in _PARAMETERS.findall(code):
        names.update(_PARAMETER.findall(parameters))
    return frozenset(names)


def _heaviest(weights: dict[str, float], keywords: frozenset[str]) -> dict[str, float]:
    for keyword in keywords.intersection(weights):
        del weights[keyword]
    if len(weights) > MAX_TERMS:
        weights = dict(sorted(weights.items(), key=lambda item: -item[1])[:MAX_TERMS])
    return weights


def rank(index: RepoIndex, query: Query, definitions_only: bool = False) -> Iterator[tuple[float, Chunk]]:
    """Chunks related to the query, best first, without duplicates (equal text) and without the lines the
    prompt already shows. All chunks are scored at once, as vectors over the index's chunk-by-term matrix.
    ``definitions_only``: score by the definition signals alone (what the names at the cursor are)."""
    foreign = _foreign(index, query)
    definitions = _zeroed(_definition_scores(index, query), foreign)
    return ordered(index, query, definitions if definitions_only else _with_context(index, query, definitions, foreign))


def score_both(index: RepoIndex, query: Query):
    """The scores per chunk that ``rank(definitions_only=True)`` and ``rank()`` order by, the definition signals
    scored once (``ordered`` yields them as ``rank`` does; the general ones also say what a choice of chunks is worth,
    holding.py)."""
    foreign = _foreign(index, query)
    definitions = _zeroed(_definition_scores(index, query), foreign)
    return definitions.copy(), _with_context(index, query, definitions, foreign)


def _foreign(index: RepoIndex, query: Query):
    """Whether each chunk is of another language family than the cursor's (``query.family``), but for those of the
    files the current file imports and the definitions of the names it imports or completes: the chunks whose scores
    are 0. In a monorepo SymPy's and Django's Python went into C++ and JavaScript prompts by the words they share (14%
    of 40 cursors' context tokens); Tabby's retrieval keeps to the language too. None: every chunk counts."""
    if query.family is None:
        return None
    numbers, families = index.chunk_families
    foreign = families != numbers.get(query.family, -1)
    if query.imported:
        foreign &= ~_in_files(index, query.imported)
    linked = [chunks for chunks in (*query.imported_names.values(), *query.completing.values(),
                                    *(chunks for _, chunks in query.qualified.values())) if chunks]
    for chunks in linked:
        foreign[list(chunks)] = False
    for path in query.module_at_cursor:
        numbers_of_file = index.chunk_numbers(path)
        foreign[numbers_of_file.start:numbers_of_file.stop] = False
    return foreign


def _zeroed(scores, foreign):
    """``scores`` with those of the ``foreign`` chunks (``_foreign``) set to 0 in place."""
    if foreign is not None:
        scores[foreign] = 0.0
    return scores


def _with_context(index: RepoIndex, query: Query, scores, foreign):
    """The definition scores (changed in place) plus the context signals, the ``foreign`` chunks' 0, with proximity
    breaking ties."""
    import numpy as np

    scores += _context_scores(index, query)
    _zeroed(scores, foreign)
    if query.path is not None:  # (only where something else speaks for a chunk: proximity breaks ties)
        here = _parts(posixpath.dirname(query.path))
        nearness = np.array([_proximity(here, _parts(folder)) for folder in index.folders])
        candidates = scores > 0
        scores[candidates] += PROXIMITY_WEIGHT * nearness[index.folder_of_chunk[candidates]]
    return scores


def ordered(index: RepoIndex, query: Query, scores) -> Iterator[tuple[float, Chunk]]:
    """The chunks with positive scores (those of lines the prompt shows set to 0 in place), best first, as ``rank``
    yields them."""
    import numpy as np

    if query.path is not None and query.shown is not None:
        first, last = query.shown
        for number in index.chunk_numbers(query.path):
            if index.chunks[number].start_line <= last and index.chunks[number].end_line >= first:
                scores[number] = 0.0
    candidates = np.flatnonzero(scores > 0)
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    seen: set[str] = set()
    for number, score in zip(order.tolist(), scores[order].tolist()):
        chunk = index.chunks[number]
        if chunk.text not in seen:
            seen.add(chunk.text)
            yield score, chunk


def _definition_scores(index: RepoIndex, query: Query):
    """Per chunk: how likely it defines a name the code at the cursor uses."""
    import numpy as np

    scores = np.zeros(len(index.chunks))
    rarity = _rarity(index, query.weights)
    imported_chunks = _in_files(index, query.imported)
    imported = np.zeros(len(index.chunks))  # a chunk defining several imported names counts the nearest
    for name, chunks in query.imported_names.items():
        uses = min(USE_WEIGHT_MAX, USE_WEIGHT * math.sqrt(query.uses.get(name, 0)))
        nearness = max(query.weights.get(name, 0.0), uses) if name not in query.local else 0.0
        fit = 1.0 if fits_expected(name, query.expects) else SHAPE_MISMATCH
        weight, numbers = fit * (IMPORTED_NAME_BASE + nearness), list(chunks)
        imported[numbers] = np.maximum(imported[numbers], weight / len(numbers))
        # A file's first chunk defining the name is its definition (the class, the struct, the first overload), not a
        # rival of the file's others (constructors, impl blocks, overloads): its share is taken among the files as
        # much as among the chunks (their geometric mean; by the files alone, a struct's impl blocks crowd out the
        # other names' definitions)
        first_in_file: dict[str, int] = {}
        for number in sorted(numbers):
            first_in_file.setdefault(index.chunks[number].path, number)
        firsts = list(first_in_file.values())
        imported[firsts] = np.maximum(imported[firsts], weight / math.sqrt(len(firsts) * len(numbers)))
    for use, (nearness, chunks) in query.qualified.items():  # `pkg.Name`: the Name of that package
        fit = 1.0 if fits_expected(use.rpartition(".")[2], query.expects) else SHAPE_MISMATCH
        weight, numbers = fit * (IMPORTED_NAME_BASE + nearness), list(chunks)
        imported[numbers] = np.maximum(imported[numbers], weight / len(numbers))
    scores += IMPORTED_NAME_WEIGHT * imported
    for term, weight in query.weights.items():
        definers = index.definers.get(term)
        if definers and term not in query.local and term not in query.imported_names:
            # (a name defined but referenced nowhere, say a method named like a keyword, counts as rare)
            boost = np.where(imported_chunks[definers], IMPORTED_FILE_BOOST, 1.0)
            fit = 1.0 if fits_expected(term, query.expects) else SHAPE_MISMATCH
            scores[definers] += DEFINITION_WEIGHT * weight * rarity.get(term, 1.0) * boost * fit / len(definers)
    if query.module_at_cursor:
        numbers = [n for path in query.module_at_cursor for n in index.chunk_numbers(path)]
        scores[numbers] += MODULE_WEIGHT / math.sqrt(max(len(numbers), 1))
    if query.completing:
        completing = np.zeros(len(index.chunks))  # (a chunk defining two of the names counts once)
        for chunks in query.completing.values():
            completing[list(chunks)] = COMPLETION_WEIGHT / math.sqrt(len(query.completing))
        scores += completing
    return scores


def _context_scores(index: RepoIndex, query: Query):
    """Per chunk: how much it resembles the code at the cursor or belongs with it (the file itself, the files it
    imports, the files a question names)."""
    scores = _lexical_scores(index, query.weights)
    if query.imported:
        scores[_in_files(index, query.imported)] += IMPORT_WEIGHT / math.sqrt(len(query.imported))
    prose = PROSE_MENTION_WEIGHT / max(query.prose_words, 1)
    for paths, weight in ((query.mentioned, MENTION_WEIGHT), (query.mentioned_in_prose, prose)):
        for path in paths:
            numbers = index.chunk_numbers(path)
            scores[numbers.start : numbers.stop] += weight
    if query.path is not None:
        numbers = index.chunk_numbers(query.path)
        scores[numbers.start : numbers.stop] += SAME_FILE_WEIGHT
    return scores


def _in_files(index: RepoIndex, paths: frozenset[str]):
    """A boolean per chunk: whether it belongs to one of ``paths``."""
    import numpy as np

    inside = np.zeros(len(index.chunks), dtype=bool)
    for path in paths:
        numbers = index.chunk_numbers(path)
        inside[numbers.start : numbers.stop] = True
    return inside


def _lexical_scores(index: RepoIndex, weights: dict[str, float]):
    """BM25 of every chunk, counting a name once per chunk, normalised to the best match."""
    import numpy as np

    total = len(index.chunks)
    known = [(index.vocabulary[term], weight) for term, weight in weights.items() if term in index.vocabulary]
    term_ids = np.array([number for number, _ in known], dtype=np.int64)
    frequency = index.document_frequency[term_ids]
    idf = np.log1p((total - frequency + 0.5) / (frequency + 0.5))
    starts, owners = index.postings
    rows = [owners[starts[t]:starts[t + 1]] for t in term_ids.tolist()]
    weights_of_rows = np.repeat(np.array([weight for _, weight in known]) * idf, frequency)
    matched = np.bincount(np.concatenate(rows) if rows else owners[:0], weights=weights_of_rows, minlength=total)
    counts = index.reference_counts
    mean_count = counts.mean() if total else 1.0        # (no chunks at all: every file gone since the session began)
    lexical = matched * (K1 + 1) / (1 + K1 * (1 - B + B * counts / max(mean_count, 1.0)))
    best = lexical.max() if total else 0.0
    return LEXICAL_WEIGHT * lexical / (best if best > 0 else 1.0)


def _rarity(index: RepoIndex, weights: dict[str, float]) -> dict[str, float]:
    """Each known query term's rarity, from 1 (found in one chunk) down to 0.5 (found in all)."""
    total = len(index.chunks)
    rarest = math.log1p((total - 0.5) / 1.5)  # the idf of a name found in a single chunk
    rarity = {}
    for term in weights:
        # (a name no chunk references any more, numbered until the index drops it, is as unknown as a new one)
        frequency = int(index.document_frequency[index.vocabulary[term]]) if term in index.vocabulary else 0
        if frequency:
            rarity[term] = 0.5 + 0.5 * math.log1p((total - frequency + 0.5) / (frequency + 0.5)) / rarest
    return rarity


def _parts(folder: str) -> list[str]:
    return folder.split("/") if folder else []


def _proximity(here: list[str], there: list[str]) -> float:
    """1 in the same folder, falling with the number of steps through the folder tree."""
    common = len(posixpath.commonprefix([here, there]))     # (of the lists: the folders the two paths share)
    return 1.0 / (1 + len(here) + len(there) - 2 * common)

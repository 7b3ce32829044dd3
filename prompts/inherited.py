"""The members a class inherits, for a cursor after the instance or class itself: ``self.pa|``, ``cls.pa|``,
``super().pa|`` (Python), ``this.pa|``, ``super.pa|`` (JavaScript, TypeScript, Java), ``this->pa|`` (C++),
``self.pa|``, ``Self::pa|`` (Rust), ``s.pa|`` after a method's receiver (Go).

Such a qualifier names no module and no type, yet what comes next is often a method of a base class defined in
another file. The class around the cursor is found in the text above it, not in the index (the buffer may be
newer than the index, and a long class is cut into several chunks there): in Python the nearest line above that
is indented less and begins a class, elsewhere the innermost brace still open whose head declares one (or an
anonymous one, not the class around it: Java's ``new Runnable() {``, whose base is Runnable, a class expression's
``class extends B {``). Its base classes are read from that head as written (``class A(B, mod.C, Generic[T])``,
``extends B implements I``, ``: public B``) and each is resolved as a type qualifier is (members.py: the file's
imports, aliases and re-exports, ``module.Type``, the file's own types, a Java package's classes); then their own
bases, read from the chunks declaring them and resolved from their files, up to MAX_DEPTH levels, each class once
(a cyclic hierarchy ends). The bases' members that may come next are the answer (the nearest base's first where
two define a name); the class's own members are in the current file, which the prompt shows anyway, but for a C++
method defined outside its class (``int Parser::run() { this->|``): there the class's own declaration (a
header's) comes first.
So in Rust, where a type's methods are spread over ``impl`` blocks anywhere and its fields are in another item:
in ``impl Store`` or ``impl Evict for Store``, Store's struct fields (read from its declaration: the index records
no field) and the methods of all its impl blocks (members.py), then the trait's and its supertraits' methods; in
a trait's own block, the trait's and its supertraits'. And in Go, after a method's receiver (``s.`` in
``func (s *Server) Run() {``, the method found by the top-level declaration the cursor is in): Server's fields
and its package's methods of Server, then its embedded types' (``struct { Base; *pkg.Cache }``) as bases. A Java
record's components and methods (where the index has it) come before its interfaces' methods.
The work per keystroke is one regular expression on the cursor's line; only after such a qualifier, a walk up
the text and a few chunks' regular expressions (Go: after any name's dot, a walk up the rows of the declaration
the cursor is in; after the receiver's, a match on the first lines of each chunk of the package, once: 0.7 ms for
600 methods).
"""

from __future__ import annotations

import re
from collections.abc import Container, Sequence

from .imports import Import, ImportedNames, follow_imports, qualifier_files
from .languages import language_name
from .members import GO_RECEIVER, likeliest_members, members_of, type_heads

MAX_DEPTH = 3  # levels of base classes followed: parents, grandparents, great-grandparents
MAX_CLASSES = 12  # base classes looked at in all (a class of many bases, each of many)
CLASS_REACH = 2000  # lines above the cursor searched for the class around it
REACH_CHARS = 131072  # ... and at most so many characters
HEAD_LINES = 20  # lines a class's head may span (`class A(\n    B,\n    C,\n):`)
HEAD_CHARS = 4000  # characters of each line of a class's head that are read
LINE_CHARS = 1000  # of the cursor's line, the part before the cursor that is read (and of the text before a brace)

# The instance or class itself right before the cursor (and the word typed after it), in the languages that give
# the word that meaning.
_PYTHON_SELF = r"(?<![\w.])(?:self|cls|super\(\s*(?:\w+\s*,\s*\w+\s*)?\))\.\w*$"
_BRACES_SELF = r"(?<![\w.$])(?:this|super)\.[\w$]*$"
_SELF = {
    "python": re.compile(_PYTHON_SELF),
    "javascript": re.compile(_BRACES_SELF), "typescript": re.compile(_BRACES_SELF), "tsx": re.compile(_BRACES_SELF),
    "java": re.compile(_BRACES_SELF),
    "cpp": re.compile(r"(?<![\w.])this\s*->\s*\w*$"),
    "rust": re.compile(r"(?<![\w.:])(?:self\.|Self::)\w*$"),
    "go": re.compile(r"(?<![\w.])([A-Za-z_]\w*)\.\w*$"),  # any name's: the method's receiver, if it is (checked after)
}
_PARTIAL = re.compile(r"[\w$]*$")

_INDENT = re.compile(r"[ \t]*")
_PYTHON_CLASS = re.compile(r"class\s+([A-Za-z_]\w*)")
_PYTHON_BLOCK = re.compile(r"(?:class|def|async|if|elif|else|for|while|with|try|except|finally|match|case)\b")
# Braces, and the strings and comments whose braces do not count (the lookahead skips other text faster).
_BRACE_TOKENS = re.compile(r"""(?=[{}"'`/])(?:[{}]|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'|`(?:\\.|[^`\\])*`"""
                           r"|//[^\n]*|/\*[\s\S]*?\*/)")
# Rust's: a string may span lines, a quote is a one-character literal ('{', '\u{7b}') or a lifetime ('a, which
# closes nothing: read as a string it hid the brace of `where T: 'a {`).
_RUST_BRACE_TOKENS = re.compile(r"(?=[{}\"'/])(?:[{}]|\"(?:\\.|[^\"\\])*\"|'(?:\\(?:x\w\w|u\{\w*\}|.)|[^'\\\n])'"
                                r"|//[^\n]*|/\*[\s\S]*?\*/)")
_BASE_NAME = re.compile(r"[A-Za-z_$][\w$]*(?:(?:\.|::)[A-Za-z_$][\w$]*)*")
# A C++ method defined outside its class (`int Parser::run(int n) const {`, `Parser::Parser() : Base() {`): its
# class's name.
_CPP_OUTSIDE = re.compile(r"\s*(?:[\w:<>,*&]+\s+|[*&]\s*)*?([A-Za-z_]\w*)(?:<[^<>{};]*>)?::~?[A-Za-z_]\w*\s*\(")
# Rust: the block whose `self` and `Self` are a type, `impl<T> Trait<T> for path::Type<T> where ...` (type
# arguments and arrows' `>` left out first), an item that begins a line (not `fn f() -> impl Iterator {`): the
# trait (group 1, if any) and the type (2); a trait's block, whose `self` is any of its implementers.
_RUST_ITEM = r"^[ \t]*(?:(?:pub(?:\([^)\n]*\))?|unsafe|default|auto)\s+)*"
_RUST_IMPL = re.compile(_RUST_ITEM + r"impl\s+(?:!?\s*((?:[A-Za-z_]\w*::)*[A-Za-z_]\w*)\s+for\s+)?[&\s]*(?:'\w+\s+)?"
                        r"(?:(?:mut|dyn)\s+)*((?:[A-Za-z_]\w*::)*[A-Za-z_]\w*)\s*(?:where\b[^{};]*)?$", re.M)
_RUST_TRAIT = re.compile(_RUST_ITEM + r"trait\s+([A-Za-z_]\w*)\s*(?::[^{};]*)?$", re.M)
# Go: a row that begins a top-level declaration or ends one (gofmt writes both at the line's start), or continues
# none (blank, a head's parameters closing, a comment).
_GO_TOP_LEVEL = re.compile(r"[^\s)/]")
# Go: an embedded field, alone on its row of a struct's (or interface's) fields: `Base`, `*pkg.Base[T] // note`.
_GO_EMBEDDED = re.compile(r"^[ \t]*\*?[ \t]*((?:[A-Za-z_]\w*\.)?[A-Za-z_]\w*)(?:\[[^\]\n]*\])?[ \t]*"
                          r"(?:`[^`\n]*`|\"[^\"\n]*\")?[ \t]*(?://[^\n]*)?$", re.M)
# The words that declare a type whose head names its bases, where other than class, struct and interface.
_DECLARING = {"rust": "trait", "java": "class|interface|record|enum"}
# A brace's head that declares a class: its keyword (group 1), its name (2) and the rest, its bases (3).
_BRACE_CLASS = {language: re.compile(rf"\b({words})\s+(?!(?:extends|implements)\b)([A-Za-z_$][\w$]*)([^{{}};]*)$")
                for language, words in [("", "class|struct|interface"), ("java", _DECLARING["java"])]}
# An anonymous class's head, its base (group 1): Java's `new Runnable() {`, whose `this` is that class, not the one
# around it; a class expression's `class extends Base {` (JavaScript, TypeScript).
_CLASS_EXPRESSION = re.compile(r"(?<![\w$.])class(\s+(?:extends|implements)\b[^{};]*)?\s*$")
_ANONYMOUS = {
    "java": re.compile(r"(?<![\w$.])new\s+((?:[A-Za-z_$][\w$]*\.)*[A-Za-z_$][\w$]*)\s*(?:<[^{};]*>)?\s*"
                       r"\((?:[^(){};]|\([^(){};]*\))*\)\s*$"),
    "javascript": _CLASS_EXPRESSION, "typescript": _CLASS_EXPRESSION, "tsx": _CLASS_EXPRESSION,
}
# A type's fields that its declaration lists and the index records no name for (it records definitions): per
# language, where the list opens after the type's name (a pattern of the name), a field's name in the list (after
# what stands between the brackets named last is left out: a nested type's fields, type and annotations' arguments).
_FIELD_LISTS = {
    "rust": (r"\bstruct\s+{}\b[^{{;(]*\{{",
             re.compile(r"^[ \t]*(?:pub(?:\s*\([^)\n]*\))?\s+)?([A-Za-z_]\w*)\s*:(?!:)", re.M), ("{}", "()", "<>")),
    # a struct's fields (`a, b int`; an embedded type's name, `*pkg.Base`: Base), an interface's methods
    "go": (r"(?m)(?:\btype[ \t]+|^[ \t]+){}(?:\[[^\]\n]*\])?[ \t]+(?:struct|interface)[ \t]*\{{",
           re.compile(r"^[ \t]*(?:\*[ \t]*)?(?:[A-Za-z_]\w*\.)?([A-Za-z_]\w*(?:[ \t]*,[ \t]*[A-Za-z_]\w*)*)"
                      r"(?=[ \t(\[]|$)(?![ \t]*\|)", re.M), ("{}", "()")),   # (`<-chan T` is no bracket)
    # a record's components (`@Size(max = 3) List<T> ys`: ys)
    "java": (r"\brecord\s+{}\b\s*(?:<[^(]*>)?\s*\(", re.compile(r"([A-Za-z_$][\w$]*)\s*(?:,|$)"), ("()", "<>")),
}
_CLAUSE = re.compile(r"\b(extends|implements)\b")
_CPP_ACCESS = re.compile(r"\b(?:public|protected|private|virtual)\b")


def inherited_members(index, path: str, language: str, rows: Sequence[str], row: int, column: int,
                      imports: Sequence[Import], imported: ImportedNames, used: Container[str] = ()
                      ) -> dict[str, list[int]]:
    """The members of the base classes of the class around the cursor (0-based ``row``, ``column`` of ``rows``, the
    file at ``path``) that may come next after ``self.``, ``this.`` or ``super().`` there, each with the chunks
    defining it, as ``members.likeliest_members`` picks them; empty where the cursor follows no such qualifier, is
    in no class, or the class has no base the repository defines. ``imports`` and ``imported``: the file's, as
    written and as followed (``imports.follow_imports``); ``used``: the names the file uses."""
    pattern = _SELF.get(language)
    before = rows[row][:column][-LINE_CHARS:]
    qualifier = pattern.search(before) if pattern else None
    if qualifier is None:
        return {}
    if language == "go":  # a method's receiver, its type's own members first (its methods are in other files too)
        receiver = _go_receiver(rows, row)
        head, own = None, (receiver[1],) if receiver and receiver[0] == qualifier.group(1) else ()
    else:
        head, own = _enclosing_class(language, rows, row, column)
    if head is None and not own:
        return {}
    instance = not qualifier.group().startswith("Self::")  # (`Self::` names no field)
    # Types whose own members are not around the cursor (a C++ method defined outside its class, a Rust impl block
    # of a type and a trait, a Go method's receiver) come first, their bases read from where the index declares them;
    # a Java record's components, not in the index's names, come first too, its bases are its head's.
    level = [(path, name) for name in own] + [(path, base) for base in (_bases(language, head) if head else ())]
    members = hierarchy_members(index, level, {path: (imports, imported)}, instance, MAX_DEPTH + (head is None))
    return likeliest_members(members, _PARTIAL.search(before).group(), used)


def hierarchy_members(index, level: list[tuple[str, str]], scopes: dict, instance: bool = True,
                      depth: int = MAX_DEPTH) -> dict[str, list[int]]:
    """Member name -> the chunks defining it, of the types ``level`` names (each a file and a type as written
    there) and of their bases, ``depth`` levels in all, the nearest type's first where two define a name; with the
    fields their declarations list where the index records none, for an ``instance``. ``scopes``: file -> its
    imports as written and followed (``_resolve``)."""
    members: dict[str, list[int]] = {}
    seen_heads, looked_at, packages = set(), 0, {}
    for _ in range(depth):
        following = []
        for file, written in level:
            if looked_at >= MAX_CLASSES:
                break
            name, heads = _resolve(index, file, written, scopes)
            heads = [n for n in heads if n not in seen_heads]
            if not heads:
                continue
            looked_at += 1
            seen_heads.update(heads)
            for member, chunks in members_of(index, name, heads, packages).items():
                members.setdefault(member, chunks)
            for number in heads:
                chunk = index.chunks[number]
                for field in _fields(chunk.language, chunk.text, name) if instance else ():
                    members.setdefault(field, [number])
                following += [(chunk.path, base) for base in _declared_bases(chunk.language, chunk.text, name)]
        level = following
    return members


def _resolve(index, file: str, written: str, scopes: dict) -> tuple[str, list[int]]:
    """The class a base as written in ``file`` names: its own name and the chunks declaring it (members.type_heads).
    ``scopes``: file -> its imports as written and followed, filled in here for the files a hierarchy goes through."""
    if file not in scopes:
        written_imports = index.imports(file)
        scopes[file] = (written_imports, follow_imports(index, file, language_name(file), written_imports))
    imports, imported = scopes[file]
    dotted = written != re.split(r"\.|::", written)[-1]
    module = qualifier_files(index, file, language_name(file), imports, imported.modules, written) if dotted else []
    return type_heads(index, file, written, imported.definitions, imported.files, module)


def _enclosing_class(language: str, rows: Sequence[str], row: int, column: int
                     ) -> tuple[str | None, tuple[str, ...]]:
    """The head of the innermost class around the cursor, from its name on (``Parser(BaseParser):``,
    ``Parser extends BaseParser implements Sized ``), None outside any class; or, where the cursor is in a block
    whose own members are declared elsewhere, the types declaring them (a C++ method defined outside its class: the
    class; a Rust impl block: its type, then its trait; a trait's block: the trait)."""
    if language == "python":
        return _python_class(rows, row), ()
    first, size = row, column
    while first > 0 and row - first < CLASS_REACH and size < REACH_CHARS:
        first -= 1
        size += len(rows[first]) + 1
    text = "\n".join([*rows[first:row], rows[row][:column]])[-REACH_CHARS:]   # (not megabytes of a minified line)
    opened: list[int] = []
    for token in (_RUST_BRACE_TOKENS if language == "rust" else _BRACE_TOKENS).finditer(text):
        if token.group() == "{":
            opened.append(token.start())
        elif token.group() == "}" and opened:
            opened.pop()
    for brace in reversed(opened):
        low = max(0, brace - LINE_CHARS)
        start = max(text.rfind(character, low, brace) for character in ";{}") + 1   # (the statement before it ends)
        head = text[max(start, low):brace]
        if language == "rust":
            if "impl" in head or "trait" in head:   # (most blocks are neither: no type arguments to take out)
                plain = _without_nested(head.replace("->", "- "), "<", ">")
                block = _RUST_IMPL.search(plain) or _RUST_TRAIT.search(plain)
                if block:
                    return None, tuple(name for name in block.groups()[::-1] if name)
            continue
        declared = _BRACE_CLASS.get(language, _BRACE_CLASS[""]).search(head)
        if declared:  # (a record's own components and methods too, which the index has where the file parsed)
            return declared.group(2) + declared.group(3), (declared.group(2),) if declared.group(1) == "record" else ()
        anonymous = _ANONYMOUS[language].search(head) if language in _ANONYMOUS else None
        if anonymous:
            return (f" extends {anonymous.group(1)}" if language == "java" else anonymous.group(1) or ""), ()
        method = _CPP_OUTSIDE.match(head) if language == "cpp" else None
        if method:
            return None, (method.group(1),)
    return None, ()


def _go_receiver(rows: Sequence[str], row: int) -> tuple[str, str] | None:
    """Go: the receiver's name and type of the method around the cursor's row (``func (s *Server) Run(``), found by
    the top-level declaration it is in (gofmt writes them at the line's start); None outside any method."""
    for number in range(row, max(-1, row - CLASS_REACH), -1):
        if _GO_TOP_LEVEL.match(rows[number]):
            method = GO_RECEIVER.match(rows[number])
            return method.group("receiver", "type") if method and method.group("receiver") else None
    return None


def _python_class(rows: Sequence[str], row: int) -> str | None:
    """Python: the head of the class around the cursor's row, found by indentation (lines that begin no block, a
    multi-line string's or expression's, do not count)."""
    indent = _INDENT.match(rows[row]).end()
    for number in range(row - 1, max(-1, row - 1 - CLASS_REACH), -1):
        text = rows[number]
        level = _INDENT.match(text).end()
        if level >= indent or not _PYTHON_BLOCK.match(text, level):
            continue
        declared = _PYTHON_CLASS.match(text, level)
        if declared:
            lines = [text[level:level + HEAD_CHARS], *(r[:HEAD_CHARS] for r in rows[number + 1:number + HEAD_LINES])]
            return _declaration("python", "\n".join(lines), declared.group(1))
        if level == 0:
            return None
        indent = level
    return None


def _declaration(language: str, text: str, name: str) -> str | None:
    """The head of the class ``name`` that ``text`` declares, from its name up to its body (``:`` or ``{``)."""
    keywords = _DECLARING.get(language, "class|struct|interface")
    found = re.search(rf"\b(?:{keywords})\s+({re.escape(name)})\b", text)
    if found is None:
        return None
    rest = text[found.start(1):found.start(1) + HEAD_CHARS]
    if language != "python":
        return re.split(r"[{;]", rest, maxsplit=1)[0]
    depth = 0
    for position, character in enumerate(rest):
        depth += (character in "([{") - (character in ")]}")
        if character == ":" and depth == 0:
            return rest[:position]
    return None


def _declared_bases(language: str, text: str, name: str) -> list[str]:
    """The bases, as written, of the type ``name`` that ``text`` declares: those its head names, a Go struct's (or
    interface's) embedded types."""
    if language == "go":
        listed = _listed(language, text, name)
        return _GO_EMBEDDED.findall(_without_nested(listed, "{", "}")) if listed else []
    declared = _declaration(language, text, name)
    return _bases(language, declared) if declared else []


def _bases(language: str, head: str) -> list[str]:
    """The base classes a class's head names, as written (``mod.Base``; type arguments left out), in order."""
    name = re.match(r"[\w$]*", head).group()
    rest = head[len(name):]
    if language == "python":
        if not rest.lstrip().startswith("("):
            return []
        inside = _without_nested(_without_nested(rest.strip()[1:-1], "[", "]"), "(", ")", "?")
        parts = [part.strip() for part in inside.split(",")]
        return [part for part in parts if _BASE_NAME.fullmatch(part)]  # (not `metaclass=M`, `*mixins`, `f(x)`)
    rest = _without_nested(rest, "<", ">")
    if language == "rust":  # a trait's supertraits: `Evict: Clear + fmt::Debug + 'static where ...`
        rest = rest.lstrip()
        parts = re.split(r"\bwhere\b", rest[1:], maxsplit=1)[0].split("+") if rest.startswith(":") else []
        return [part.strip() for part in parts if _BASE_NAME.fullmatch(part.strip())]
    if language == "cpp":
        colon = re.search(r"(?<!:):(?!:)", rest)
        parts = rest[colon.end():].split(",") if colon else []
        names = [_CPP_ACCESS.sub("", part).strip() for part in parts]     # (`public virtual ns::Base`: ns::Base)
        return [name.rsplit("::", 1)[-1] for name in names if _BASE_NAME.fullmatch(name)]
    clauses = _CLAUSE.split(rest)
    parts = [part.strip() for clause in clauses[2::2] for part in clause.split(",")]
    return [part for part in parts if _BASE_NAME.fullmatch(part) and "::" not in part]


def _fields(language: str, text: str, name: str) -> list[str]:
    """The fields that the declaration of the type ``name`` in ``text`` lists, where the index records none (a Rust
    or Go struct's; a Go interface's methods), not those of a type nested in it."""
    listed = _listed(language, text, name)
    if not listed:
        return []
    _, field, nested = _FIELD_LISTS[language]
    for opening, closing in nested:
        listed = _without_nested(listed, opening, closing)
    found = field.findall(listed)
    return [field.strip() for names in found for field in names.split(",")]


def _listed(language: str, text: str, name: str) -> str | None:
    """The text between the brackets of the field list that the declaration of ``name`` in ``text`` opens, where
    the language has one in _FIELD_LISTS."""
    shape = _FIELD_LISTS.get(language)
    opened = re.search(shape[0].format(re.escape(name)), text) if shape else None
    if opened is None:
        return None
    opening = text[opened.end() - 1]
    closing = {"{": "}", "(": ")"}[opening]
    depth = 1
    for bracket in re.finditer(re.escape(opening) + "|" + re.escape(closing), text[opened.end():]):
        depth += 1 if bracket.group() == opening else -1
        if depth == 0:
            return text[opened.end():opened.end() + bracket.start()]
    return text[opened.end():]


def _without_nested(text: str, opening: str, closing: str, instead: str = "") -> str:
    """``text`` with what stands between ``opening`` and ``closing`` (nested too, those included) replaced by
    ``instead``: type arguments left out (``Generic[T]``, ``Base<T>``), a call's arguments (``f?``) whose commas
    then split nothing."""
    pattern = re.compile(f"{re.escape(opening)}[^{re.escape(opening + closing)}]*{re.escape(closing)}")
    for _ in range(8):
        text, count = pattern.subn(instead, text)
        if not count:
            break
    return text

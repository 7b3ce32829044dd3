"""The members of a variable's type, for a cursor after the variable: ``store.ev|`` where the code above says what
``store`` is (``store = Store(...)``, ``store: Store``, ``Store store``, ``store := &Store{}``, ``let store =
Store::new()``), and ``self.store.ev|``, ``this.store.ev|`` after an attribute or field declared so.

A variable names no module and no type (members.py), yet its declaration often names the type whose method comes
next, defined in another file. The declaration is read from the text of the buffer (it may be newer than the
index): the nearest one above the cursor (a parameter, a local, a field: whichever is nearest), and for an
attribute or field (``self.x``, ``this.x``) failing that the first below it (a class's fields may follow its
methods). What reads as a declaration is a few patterns per language (DECLARATIONS: data, as aider's repository map
keeps its queries); a type that the repository does not define is no answer (``int``, ``List<Store>``, a function
called like a constructor), so a pattern may be loose. The type as written is resolved as a type qualifier is
(members.py: the file's imports, ``module.Type``, the file's own types, a Go or Java package's), and its members,
then its bases' (inherited.py's walk: ``app.route`` where Hono extends HonoBase), are weighted as after ``Type.``.
Only after a name and a member operator is any of this done: a few regular expressions over the lines above the
cursor that name the variable.
"""

from __future__ import annotations

import re
from collections.abc import Container, Sequence

from .imports import Import, ImportedNames
from .inherited import MAX_DEPTH, hierarchy_members
from .languages import language_for
from .members import likeliest_members

REACH_LINES = 2000  # lines above the cursor searched for a declaration (and below it, for a field)
REACH_CHARS = 262144  # ... and at most so many characters of them in all
LINE_CHARS = 1000  # of each line, the part that is read (of the cursor's, the end of the part before the cursor)

# The variable right before the cursor (group "name"; "attribute" where it is an instance's, `self.x`, `this.x`)
# and the word typed after its member operator.
_BEFORE_DOT = re.compile(r"(?<![\w.$])(?P<attribute>(?:self|this)\.)?(?P<name>[A-Za-z_$][\w$]*)\.[\w$]*$")
_BEFORE_ARROW = re.compile(r"(?<![\w.$>])(?P<attribute>this\s*->\s*)?(?P<name>[A-Za-z_]\w*)\s*(?:\.|->)\w*$")
_PARTIAL = re.compile(r"[\w$]*$")
_NOT_VARIABLES = frozenset({"self", "cls", "this", "super", "Self", "crate"})  # (inherited.py's, or a path's)

# A type as written: a path of names (`Store`, `pkg.Store`, `crate::cache::Store`).
_TYPE = r"(?P<type>[A-Za-z_$][\w$]*(?:(?:\.|::)[A-Za-z_$][\w$]*)*)"
_GO_TYPE = r"(?P<type>(?:[A-Za-z_]\w*\.)?[A-Za-z_]\w*)"
_RUST_BORROW = r"(?:&\s*(?:'\w+\s+)?(?:mut\s+)?)?(?:(?:dyn|impl)\s+)?"
_ARGUMENTS = r"(?:<[^;=(){{}}]*>)?"  # type arguments, left out: `Map<K, V> m` (braces doubled: a format)
# Per language, what declares the variable ``{name}`` (a pattern of it, any instance's prefix included) of a type
# (group "type"; Go's `pkg.NewStore(` says pkg.Store: group "package" then "type").
DECLARATIONS = {
    "python": (
        r"{name}\s*:\s*['\"]?(?:(?:typing\.)?Optional\[)?" + _TYPE,  # a parameter's or a variable's annotation
        r"{name}\s*=\s*" + _TYPE + r"\s*\(",  # an instance made: `x = Store(...)`, `self.x = mod.Store(...)`
    ),
    "go": (
        r"[(,]\s*{name}(?:\s*,\s*[A-Za-z_]\w*)*\s+\*?" + _GO_TYPE + r"\s*[,)\[]",  # a parameter (a receiver)
        r"\bvar\s+{name}\s+\*?" + _GO_TYPE,
        r"{name}(?:\s*,\s*[A-Za-z_]\w*)*\s*:?=\s*&?" + _GO_TYPE + r"\s*\{{",  # a composite literal
        r"{name}(?:\s*,\s*[A-Za-z_]\w*)*\s*:?=\s*(?:(?P<package>[A-Za-z_]\w*)\.)?New(?P<type>[A-Z]\w*)\s*\(",
    ),
    "java": (
        _TYPE + r"\s*" + _ARGUMENTS + r"(?:\s*\[\s*\])*\s+{name}\s*[=;,):]",  # a local, a parameter, a field
        r"{name}\s*=\s*new\s+" + _TYPE,  # (`var x = new Store(...)`, `this.x = new Store()`)
    ),
    "typescript": (
        r"{name}\s*\??\s*:\s*" + _TYPE,  # a parameter (a constructor's property), a variable, a class's field
        r"{name}\s*=\s*new\s+" + _TYPE,
    ),
    "javascript": (r"{name}\s*=\s*new\s+" + _TYPE,),
    "rust": (
        r"{name}\s*:\s*" + _RUST_BORROW + _TYPE,  # a parameter, a typed local, a struct's field
        # an instance made: `let x = Store::new(...)`, `let mut x = Store {`
        r"\blet\s+(?:mut\s+)?{name}\s*=\s*" + _RUST_BORROW + _TYPE
        + r"\s*(?:::\s*[A-Za-z_]\w*\s*(?:::<[^;]*?>)?\s*\(|\{{)",
    ),
    "cpp": (
        _TYPE + r"\s*" + _ARGUMENTS + r"\s*(?:[*&]+\s*|const\s+)*{name}\s*[;=,)({{\[]",  # `Store s;`, `Store *p`
        r"{name}\s*=\s*new\s+" + _TYPE,
        r"\bauto\s*[*&]*\s*{name}\s*=\s*" + _TYPE + r"\s*[({{]",
    ),
}
DECLARATIONS["tsx"] = DECLARATIONS["typescript"]


def variable_members(index, path: str, language: str, rows: Sequence[str], row: int, column: int,
                     imports: Sequence[Import], imported: ImportedNames, used: Container[str] = ()
                     ) -> dict[str, list[int]]:
    """The members of the type of the variable right before the cursor (0-based ``row``, ``column`` of ``rows``,
    the file at ``path``) that may come next, each with the chunks defining it, as ``members.likeliest_members``
    picks them; empty where the cursor follows no variable, no declaration of it is found, or its type is none the
    repository defines. ``imports`` and ``imported``: the file's, as written and as followed; ``used``: the names
    the file uses."""
    patterns = DECLARATIONS.get(language)
    before = rows[row][:column][-LINE_CHARS:]
    variable = (_BEFORE_ARROW if language == "cpp" else _BEFORE_DOT).search(before) if patterns else None
    if variable is None or variable.group("name") in _NOT_VARIABLES:
        return {}
    spec = language_for(path)
    written = declared_type(language, rows, row, column - len(before) + variable.start(), variable.group("name"),
                            bool(variable.group("attribute")), spec.keywords if spec else frozenset())
    if written is None:
        return {}
    members = hierarchy_members(index, [(path, written)], {path: (imports, imported)}, True, MAX_DEPTH + 1)
    return likeliest_members(members, _PARTIAL.search(before).group(), used) if members else {}


def declared_type(language: str, rows: Sequence[str], row: int, column: int, name: str, attribute: bool,
                  keywords: Container[str] = frozenset()) -> str | None:
    """The type, as written, that the nearest declaration of the variable ``name`` above the cursor (the text
    before 0-based ``row``, ``column``) gives it; for an ``attribute`` (``self.x``, ``this.x``), failing that the
    first below it. None where no declaration is found. A "type" that is one of the language's ``keywords`` says
    the match is a statement, no declaration (Java's `return x;`, TypeScript's `case x: return`)."""
    # (a field's declaration or assignment, `this.x = new Store()`, declares the plain name too where a class's fields
    # are in scope without `this`: Java's, C++'s)
    instance = r"(?:(?:self|this)\s*(?:\.|->)\s*)?" if attribute or language in ("java", "cpp") else ""
    variable = r"(?<![\w.$'\">])" + instance + re.escape(name) if instance else r"(?<![\w.$'\"])" + re.escape(name)
    patterns = [re.compile(pattern.format(name=variable)) for pattern in DECLARATIONS[language]]
    # (each line's first LINE_CHARS read: a declaration begins its line, and a pattern that begins with a type's path
    # would try every place of a minified line, each as far as the path goes)
    lines = [(rows[row][:column][-LINE_CHARS:], True)] + [
        (rows[n][:LINE_CHARS], True) for n in range(row - 1, max(-1, row - REACH_LINES), -1)]
    if attribute:
        lines += [(rows[row][column:][:LINE_CHARS], False)] + [
            (rows[n][:LINE_CHARS], False) for n in range(row + 1, min(len(rows), row + REACH_LINES))]
    nearest, size = None, 0
    for line, upwards in lines:   # (only the lines naming the variable are matched: most are not)
        size += len(line) + 1
        if size > REACH_CHARS:
            break
        if name in line:
            found = [match for pattern in patterns for match in pattern.finditer(line)
                     if re.match(r"[\w$]*", match.group("type")).group() not in keywords]
            if found:   # (on the line above, the last declaration on it; on one below, the first)
                nearest = (max if upwards else min)(found, key=lambda match: match.start())
                break
    if nearest is None:
        return None
    package = nearest.groupdict().get("package")
    return f"{package}.{nearest.group('type')}" if package else nearest.group("type")

"""Git's ignore patterns, matched as git matches them: one path at a time, knowing whether it is a folder.

pathspec, which this replaced, matches a folder as "its path and a slash", as if asking about what lies inside it,
so that `docs/**` excluded the folder `docs` itself (git: only what is inside, so `!docs/keep.py` brings that file
back) and the whitelist idiom `*`, `!*/`, `!*.py` kept every folder out. Here each pattern becomes one regular
expression that must match the whole path (relative to the folder of the ignore file), and a pattern that ends in
a slash applies to folders only. The walk asks about a folder before anything in it and never enters an ignored
one, which is how git applies "a file cannot be re-included if a parent folder is excluded".

The rules, from gitignore(5): blank lines and `#` comments are skipped; trailing spaces are dropped unless escaped;
`!` negates; a slash at the start or in the middle anchors the pattern to the ignore file's folder, otherwise it
matches a name at any depth; `*` and `?` do not cross a slash; `[...]` is a set (never matching a slash; a slash
inside it is a member, not a separator, and anchors the pattern as any slash does); `**` as a whole segment is any
number of folders (`**/x`, `a/**/b`, `a/**` = everything inside `a`); any other run of stars is one star. Names and
patterns are matched as bytes, as git's wildmatch reads them: `?` and a set take one byte (`??.py` matches é.py).

Stars cannot make matching slow: a star followed by more text takes the first place that text fits and keeps it
(what fnmatch does; a lookahead and a back-reference make it atomic), so `*a*a*a*a*a*a*a*a*b` against a long name
of `a`s is linear, where a plain regular expression backtracks through every way of splitting the name.

Nor can many patterns: an ignore file may list thousands of generated paths (up to 100 MiB, as git reads them), and
asking each of them about each of a repository's thousands of files took minutes. A pattern that is a plain name, a
plain path, or ends with an extension (`*.ext`, `build/lib*.o`) is filed under the name, path or extension it
needs, and one whose last part starts with plain text (`gen*`, `npm-debug.log*`) under that text; a path is asked
only of those filed under its own path, name, extension or a start of its name, and of the other patterns.
"""
from __future__ import annotations

import functools
import heapq
import re
from typing import NamedTuple

_GLOB = re.compile(r"[*?\[\\]")
_EXTENSION = re.compile(r".*\.([^*?\[\]\\/.]*)")   # `*.ext`, `src/lib*.py`: a last part that ends so


class Pattern(NamedTuple):
    regex: re.Pattern | None    # None: a plain path or name, matched by its key alone
    negated: bool
    folders_only: bool
    key: tuple[str, str] | None = None  # ("path", p), ("name", n), ("ext", e), ("start", s): what its paths have


class Rules:
    """The patterns of one ignore file, in order; with ``ignorecase`` (git's core.ignorecase) matched ignoring ASCII
    case, as git's wildmatch folds: names and literal text, and a set's members and ranges (`[A-C]` takes b,
    `[[:upper:]]` a lower-case letter), but not a class's name (`[[:UPPER:]]` is no class)."""

    def __init__(self, lines: list[str], ignorecase: bool = False) -> None:
        self.ignorecase = ignorecase
        self.patterns = [p for p in (compile_pattern(line, ignorecase) for line in lines) if p is not None]
        self._filed: dict[tuple[str, str], list[int]] = {}   # key -> numbers of the patterns filed under it
        self._others: list[int] = []
        for number, pattern in enumerate(self.patterns):
            if pattern.key:
                self._filed.setdefault(pattern.key, []).append(number)
            else:
                self._others.append(number)
        # (a name of any length is asked only the starts of these lengths: one lookup each, not a pattern each)
        self._start_lengths = sorted({len(key[1]) for key in self._filed if key[0] == "start"})

    def decide(self, path: str, is_dir: bool) -> bool | None:
        """True (ignored) or False (re-included) by the last pattern that matches `path`, or None if none does."""
        path = as_bytes(path)
        if self.ignorecase:
            path = path.translate(_ASCII_LOWER)     # (the keys are folded; a regex folds by its flag)
        name = path.rpartition("/")[2]
        _, dot, extension = name.rpartition(".")
        keys = [("path", path), ("name", name)] + ([("ext", extension)] if dot else [])
        keys += [("start", name[:length]) for length in self._start_lengths if length <= len(name)]
        candidates = [self._filed.get(key, ()) for key in keys] + [self._others]
        for number in heapq.merge(*(reversed(numbers) for numbers in candidates if numbers), reverse=True):
            pattern = self.patterns[number]
            if (is_dir or not pattern.folders_only) and (pattern.regex is None or pattern.regex.fullmatch(path)):
                return not pattern.negated
        return None


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def compile_pattern(line: str, ignorecase: bool = False) -> Pattern | None:
    """One line of an ignore file; None for a blank line, a comment, or a pattern git would not read. With
    ``ignorecase`` the pattern's key is folded to lower case, and its regex ignores ASCII case."""
    line = _strip_trailing_spaces(as_bytes(line).rstrip("\r\n"))
    if not line or line.startswith("#"):
        return None
    negated = line.startswith("!")
    if negated:
        line = line[1:]
    folders_only = line.endswith("/") and not line.endswith("\\/")
    line = line.rstrip("/") if folders_only else line
    if not line:
        return None
    anchored = "/" in line     # as git: any slash, one in a set or escaped too
    segments = _split(line.lstrip("/"))
    if not any(segments):
        return None
    key = _key(segments, anchored)
    if key and ignorecase:
        key = (key[0], key[1].translate(_ASCII_LOWER))
    if key and key[0] in ("path", "name"):  # a plain path or name matches exactly the paths filed under it: no regex
        return Pattern(None, negated, folders_only, key)   # (compiling 40,000 of them took 2.5 s every walk)
    groups = iter(range(1 << 30))
    body = _path_regex(segments, groups, ignorecase)
    try:
        regex = re.compile(body if anchored else f"(?:.*/)?{body}",
                           re.DOTALL | (re.IGNORECASE | re.ASCII if ignorecase else 0))
    except re.error:
        return None
    return Pattern(regex, negated, folders_only, key)


def ascii_lower(text: str) -> str:
    """``text`` with ASCII letters in lower case, as git folds (C's tolower): É stays É."""
    return text.translate(_ASCII_LOWER)


def wildmatch(pattern: str, text: str, ignorecase: bool = False) -> bool:
    """Whether the whole of ``text`` matches the glob ``pattern`` as git's wildmatch with WM_PATHNAME matches it (a
    config's `gitdir:` and `onbranch:` conditions): `*`, `?` and sets take no slash, `**` as a whole segment takes
    any number of folders; matched as bytes, ignoring ASCII case with ``ignorecase``."""
    regex = _wildmatch_regex(pattern, ignorecase)
    return regex is not None and regex.fullmatch(as_bytes(text)) is not None


@functools.lru_cache(maxsize=256)
def _wildmatch_regex(pattern: str, ignorecase: bool) -> re.Pattern | None:
    try:
        return re.compile(_path_regex(_split(as_bytes(pattern)), iter(range(1 << 30)), ignorecase),
                          re.DOTALL | (re.IGNORECASE | re.ASCII if ignorecase else 0))
    except re.error:
        return None


def as_bytes(text: str) -> str:
    """`text` (a name or pattern as os.fsdecode reads it) one character per byte of its UTF-8, as git's wildmatch reads
    both: "?" and a set take one byte, so `??.py` matches é.py and `?.py` does not."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("latin-1")
    except UnicodeEncodeError:      # a surrogate that no undecodable byte made (not from the disk)
        return text.encode("utf-8", "surrogatepass").decode("latin-1")


def _key(segments: list[str], anchored: bool) -> tuple[str, str] | None:
    """What every path the pattern matches has: the pattern's own path or name when it has no special character,
    else the extension its last part ends with (`*.ext`, `build/lib*.o`), else the plain text its last part starts
    with (`gen*`: the last part of the pattern matches the path's name, unless it is a `**`); None for the others."""
    if not any(_GLOB.search(segment) for segment in segments):
        return ("path", "/".join(segments)) if anchored else ("name", segments[0])
    extension = _EXTENSION.fullmatch(segments[-1])
    if extension:
        return ("ext", extension.group(1))
    glob = _GLOB.search(segments[-1])
    plain = segments[-1][:glob.start()] if glob else segments[-1]   # (`gen*/out`: the whole name)
    return ("start", plain) if plain else None


def _path_regex(segments: list[str], groups, fold: bool = False) -> str:
    """The segments as one expression; "**" segments split them into pieces (`a/**/b/**/c`: a, b, c). A piece
    after a "**" is taken at the shallowest folder where it fits, and kept, except the last, which must end the
    path: a deeper fit never leaves more for the pieces after it, and trying them all is exponential."""
    pieces: list[list[str]] = [[]]
    for segment in segments:
        if not _is_globstar(segment):
            pieces[-1].append(segment)
        elif pieces[-1] or len(pieces) == 1:       # "**/**" is one "**"
            pieces.append([])
    leading, trailing = not pieces[0], not pieces[-1]
    pieces = [piece for piece in pieces if piece]
    if not pieces:
        return ".*"
    out = []
    for n, piece in enumerate(pieces):
        text = "/".join(_segment(segment, groups, fold) for segment in piece)
        follows_globstar = n > 0 or leading
        last = n == len(pieces) - 1 and not trailing
        if not follows_globstar:
            out.append(text if last else text + "/")
        elif last:
            out.append(f"(?:.*/)?{text}")
        else:
            group = f"g{next(groups)}"
            out.append(f"(?=(?P<{group}>(?:.*?/)??{text}/))(?P={group})")
    return "".join(out) + (".*" if trailing else "")


def _split(line: str) -> list[str]:
    """The pattern's path segments. A slash inside a set does not end a segment: git's wildmatch reads `a[!/x]b` as
    one set (which, like `?`, never matches a slash); an escaped slash is a slash, as wildmatch matches it."""
    segments, current, i = [], [], 0
    while i < len(line):
        if line.startswith("\\/", i) or line[i] == "/":
            segments.append("".join(current))
            current = []
            i += 2 if line[i] == "\\" else 1
        elif line[i] == "\\":
            current.append(line[i:i + 2])
            i += 2
        elif line[i] == "[" and (end := _set_end(line, i)) is not None:
            current.append(line[i:end + 1])
            i = end + 1
        else:
            current.append(line[i])
            i += 1
    return [*segments, "".join(current)]


def _is_globstar(segment: str) -> bool:
    return len(segment) > 1 and not segment.strip("*")


def _strip_trailing_spaces(line: str) -> str:
    stripped = line.rstrip(" ")
    if stripped.endswith("\\") and len(stripped) < len(line):   # "a\ " keeps its escaped space
        stripped += " "
    return stripped


def _segment(segment: str, groups, fold: bool = False) -> str:
    """A regular expression for one path segment; runs of stars are one star; each star but the last atomic."""
    pieces = _star_split(segment)
    out = [_fixed(pieces[0], fold)]
    for n, piece in enumerate(pieces[1:], start=1):
        text = _fixed(piece, fold)
        if n == len(pieces) - 1:            # the last piece must end the segment: a plain star may backtrack here
            out.append(f"[^/]*{text}")
        else:                               # the first place the piece fits, kept (an atomic group on Python 3.10)
            group = f"g{next(groups)}"
            out.append(f"(?=(?P<{group}>[^/]*?{text}))(?P={group})")
    return "".join(out)


def _star_split(segment: str) -> list[str]:
    """The segment's text between runs of unescaped stars (an escaped star, or one in a set such as `[*]`, stays
    in its piece: git reads it as a member of the set)."""
    pieces, current, i = [], [], 0
    while i < len(segment):
        if segment[i] == "\\":
            current.append(segment[i:i + 2])
            i += 2
        elif segment[i] == "[" and (end := _set_end(segment, i)) is not None:
            current.append(segment[i:end + 1])
            i = end + 1
        elif segment[i] == "*":
            pieces.append("".join(current))
            current = []
            while i < len(segment) and segment[i] == "*":
                i += 1
        else:
            current.append(segment[i])
            i += 1
    return [*pieces, "".join(current)]


def _fixed(text: str, fold: bool = False) -> str:
    """Star-free text: `?`, `[...]` sets and backslash escapes; everything else literal. With ``fold``, an escaped
    upper-case letter matches nothing, as in git's wildmatch, which folds the name and the pattern's plain letters
    but not an escaped one."""
    out, i = [], 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            out.append("(?!)" if fold and "A" <= text[i + 1] <= "Z" else re.escape(text[i + 1]))
            i += 2
            continue
        if char == "?":
            out.append("[^/]")
        elif char == "[":
            end = _set_end(text, i)
            if end is None:
                return "(?!)"       # git's wildmatch gives up at a set never closed: the pattern matches nothing
            out.append(_set(text[i + 1:end], fold))
            i = end + 1
            continue
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


def _set_end(text: str, start: int) -> int | None:
    """The index of the `]` that closes the set opening at `start`, or None (an unclosed set)."""
    i = start + 1
    if i < len(text) and text[i] in "!^":
        i += 1
    if i < len(text) and text[i] == "]":       # a "]" first in the set is a member
        i += 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if (end := _class_end(text, i)) is not None:    # `[:alpha:]`: its "]" does not close the set
            i = end + 1
            continue
        if text[i] == "]":
            return i
        i += 1
    return None


# The character classes of git's wildmatch (C's ctype, ASCII), as members of a regular expression's set.
_CLASSES = {
    "alnum": "a-zA-Z0-9", "alpha": "a-zA-Z", "blank": " \\t", "cntrl": "\\x00-\\x1f\\x7f", "digit": "0-9",
    "graph": "!-~", "lower": "a-z", "print": " -~", "punct": "!-/:-@\\[-`{-~", "space": " \\t\\n\\r\\f\\v",
    "upper": "A-Z", "xdigit": "0-9A-Fa-f",
}


def _class_end(text: str, i: int) -> int | None:
    """The index of the `]` ending a class such as `[:alpha:]` that starts at `i`, or None (then `[` is a member,
    as in git, which also reads `[:` up to the next `]` and wants `:` before it)."""
    if not text.startswith("[:", i):
        return None
    close = text.find("]", i + 2)
    return close if close > i + 2 and text[close - 1] == ":" else None


def _set(inner: str, fold: bool = False) -> str:
    """A set as a regular expression's. With ``fold`` (the regex then ignores case), an upper-case letter that
    stands alone in the set is left out: git's wildmatch folds the name to lower case but not the set's members, so
    under core.ignorecase `[P]` matches nothing and `[!P]` every letter (a range, `[A-C]`, is asked in both cases)."""
    negated = inner[:1] in ("!", "^")
    inner = inner[1:] if negated else inner
    members: list[tuple[str, str | None]] = []     # (its expression, the member's one character, if it is one)
    i = 0
    while i < len(inner):
        if inner[i] == "\\" and i + 1 < len(inner):
            members.append((re.escape(inner[i + 1]), inner[i + 1]))
            i += 2
            continue
        if (end := _class_end(inner, i)) is not None:
            if inner[i + 2:end - 1] not in _CLASSES:
                return "(?!)"                   # git: a malformed class, and the pattern matches nothing
            members.append((_CLASSES[inner[i + 2:end - 1]], None))
            i = end + 1
            continue
        dash = inner[i] == "-" and 0 < i < len(inner) - 1
        members.append(("-", None) if dash else (re.escape(inner[i]), inner[i]))
        i += 1
    if fold:
        ranged = {n + step for n, member in enumerate(members) if member == ("-", None) for step in (-1, 1)}
        members = [member for n, member in enumerate(members)
                   if n in ranged or member[1] is None or not ("A" <= member[1] <= "Z")]
    body = "".join(expression for expression, _ in members)
    if not body:
        return "[^/]" if negated else "(?!)"
    return f"[^/{body}]" if negated else f"(?!/)[{body}]"

"""Git config files read as git reads them, never by running git: a repository's own config can name commands that
any git call would run (core.fsmonitor, a pager, filters), so the few settings the scan needs (core.excludesFile,
core.ignorecase) are read from the files' text here, and nothing in them is ever run.

`entries` parses a file's text as git's config parser does: section headers with a quoted subsection (case kept,
escapes read, a "]" inside the quotes is text), keys after a header on the same line, values with quotes, escapes,
comments (`#` or `;` anywhere outside quotes) and line continuations. A line git could not parse ends the file
(git refuses to run with it). `include_condition_holds` answers an `[includeIf "..."]` section's condition as git
does: `gitdir:` and `gitdir/i:` (a glob against the repository's git folder: `~/` is the home folder, `./` the
config file's folder, a pattern starting with none of those or `/` gets `**/` before it, one ending in `/` gets `**`
after it), `onbranch:` (a glob against the branch HEAD names) and `hasconfig:remote.*.url:` (a glob against each
remote's URL); any other condition is false.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from .gitignore import ascii_lower, wildmatch


class Entry(NamedTuple):
    section: str                # lower case ("core", "include", "includeif")
    subsection: str | None      # as written, case kept; None without one
    key: str                    # lower case
    value: str | None           # None: a key without "=" (a boolean true)


def entries(text: str) -> Iterator[Entry]:
    """The settings of one config file's text, in order (up to a line git would refuse)."""
    reader = _Reader(text)
    section, subsection = "", None
    while True:
        c = reader.next()
        if c is None:
            return
        if c.isspace():
            continue
        if c in "#;":
            reader.skip_line()
        elif c == "[":
            header = _header(reader)
            if header is None:
                return
            section, subsection = header
        elif c.isascii() and c.isalpha():
            key = [c]
            while (c := reader.next()) is not None and c.isascii() and (c.isalnum() or c == "-"):
                key.append(c)
            while c in (" ", "\t"):
                c = reader.next()
            value = None
            if c is not None and c != "\n":
                if c != "=":
                    return
                value = _value(reader)
                if value is None:
                    return
            yield Entry(section, subsection, "".join(key).lower(), value)
        else:
            return


class _Reader:
    """The text a character at a time, "\\r\\n" read as "\\n" (git's get_next_char)."""

    def __init__(self, text: str) -> None:
        self.text, self.at = text, 0

    def next(self) -> str | None:
        if self.at >= len(self.text):
            return None
        c = self.text[self.at]
        self.at += 1
        if c == "\r" and self.text.startswith("\n", self.at):
            self.at += 1
            return "\n"
        return c

    def skip_line(self) -> None:
        while (c := self.next()) is not None and c != "\n":
            pass


def _header(reader: _Reader) -> tuple[str, str | None] | None:
    """A section header after its "[": (name in lower case, subsection or None), or None where git gives up."""
    name = []
    while True:
        c = reader.next()
        if c is None:
            return None
        if c == "]":
            return "".join(name), None
        if c.isspace():
            while c is not None and c.isspace():
                c = reader.next()
            if c != '"':
                return None
            subsection = []
            while True:
                c = reader.next()
                if c is None or c == "\n":
                    return None
                if c == '"':
                    break
                if c == "\\":
                    c = reader.next()
                    if c is None or c == "\n":
                        return None
                subsection.append(c)
            return ("".join(name), "".join(subsection)) if reader.next() == "]" else None
        if not (c.isascii() and (c.isalnum() or c in "-.")):
            return None
        name.append(c.lower())


_ESCAPES = {"t": "\t", "b": "\b", "n": "\n", "\\": "\\", '"': '"'}


def _value(reader: _Reader) -> str | None:
    """A value after its "=", as git's parse_value reads it; None where git gives up (an open quote at the line's
    end, an unknown escape)."""
    value: list[str] = []
    spaces, quoted, comment = 0, False, False
    while True:
        c = reader.next()
        if c is None or c == "\n":
            return None if quoted else "".join(value)
        if comment:
            continue
        if c.isspace() and not quoted:
            if value:
                spaces += 1
            continue
        if not quoted and c in "#;":
            comment = True
            continue
        value.extend(" " * spaces)
        spaces = 0
        if c == "\\":
            c = reader.next()
            if c == "\n":
                continue        # a line continued
            if c not in _ESCAPES:
                return None
            value.append(_ESCAPES[c])
        elif c == '"':
            quoted = not quoted
        else:
            value.append(c)


def expand_path(value: str, home: Path) -> str:
    """A path setting as git's interpolate_path expands it: `~/` is the home folder, `~user/` that user's."""
    if value.startswith("~/") or value == "~":
        return str(home) + value[1:]
    if value.startswith("~"):
        return os.path.expanduser(value)
    return value


class Repository(NamedTuple):
    """What a conditional include asks of the repository whose config is read."""

    git_dir: Path | None        # its own git folder (a worktree's, a submodule's), None outside one
    branch: str | None          # the branch HEAD names (refs/heads/...), None for a detached or unreadable HEAD
    remote_urls: tuple[str, ...] | None     # every remote.*.url of its config; None while they are being gathered


def include_condition_holds(condition: str, config: Path, repository: Repository, home: Path) -> bool:
    """Whether an `[includeIf "<condition>"]` in the config file ``config`` includes its path for ``repository``."""
    for kind, ignorecase in (("gitdir:", False), ("gitdir/i:", True)):
        if condition.startswith(kind):
            return repository.git_dir is not None and _gitdir_matches(condition[len(kind):], config,
                                                                      repository.git_dir, home, ignorecase)
    if condition.startswith("hasconfig:remote.*.url:"):
        pattern = condition[len("hasconfig:remote.*.url:"):]
        return repository.remote_urls is None or any(wildmatch(pattern, url) for url in repository.remote_urls)
    if condition.startswith("onbranch:"):
        pattern = condition[len("onbranch:"):]
        return bool(pattern) and repository.branch is not None and wildmatch(
            pattern + "**" if pattern.endswith("/") else pattern, repository.branch)
    return False


def _gitdir_matches(pattern: str, config: Path, git_dir: Path, home: Path, ignorecase: bool) -> bool:
    """git's include_by_gitdir: the pattern against the git folder's real path, then its absolute one."""
    pattern = expand_path(pattern, home)
    prefix = ""
    if pattern.startswith("./"):
        prefix = os.path.dirname(os.path.realpath(config)).rstrip("/") + "/"
        pattern = prefix + pattern[2:]
    elif not pattern.startswith("/"):
        pattern = "**/" + pattern
    if pattern.endswith("/"):
        pattern += "**"
    for text in (os.path.realpath(git_dir), os.path.abspath(git_dir)):
        if prefix:      # the config file's folder is matched as text: no character in it is a wildcard
            if len(text) < len(prefix) or not _same(text[:len(prefix)], prefix, ignorecase):
                continue
        if wildmatch(pattern[len(prefix):], text[len(prefix):], ignorecase):
            return True
    return False


def _same(a: str, b: str, ignorecase: bool) -> bool:
    return ascii_lower(a) == ascii_lower(b) if ignorecase else a == b

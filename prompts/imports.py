"""Which repository files an import statement refers to, and which definitions the names it imports are.

Each language's import string is turned into candidate paths: anchored ones (relative imports, resolved from
the importing file's folder) that must match exactly, and unanchored ones (``a.b.c``, ``crate::a::b``,
``"github.com/x/y/pkg"``) that may match at the end of any path, so source roots such as ``src/`` need no
configuration. Standard library and third-party imports simply match nothing.

A name imported from a file (``from .segment import Segment``) is followed to the chunk that defines it; when
the file only re-exports it (a package's ``__init__.py``: ``from .segment import Segment``, or ``import *``,
or a JavaScript ``index.js``: ``export { Segment } from "./segment"``), through that file's own imports. A
JavaScript default import is the module's ``default`` export (``export default function f``, or
``export default f``: f); a Go import binds its package's name. What a file sees without importing it counts as
imported too: a Go or Java file's own package (its folder).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import NamedTuple

from .languages import language_name

MAX_REEXPORTS = 4  # re-exports a name is followed through (a chain's depth) before its definition
MAX_FOLLOWED_FILES = 256  # files one name's search may read at all: star imports can fan out widely
MAX_FOLLOWED_IMPORTS = 50_000  # import statements all the names of one file may be followed through, together:
                               # 200 names, each through 200 files star-importing each other, read 8 million (39 s)


class Import(NamedTuple):
    """One binding an import statement makes."""

    module: str  # as written: "pkg.mod", ".segment", "./lib/x", "crate::a::b", "stdio.h"
    name: str | None = None  # the name taken from it ("Segment"), "*" for all of them, None for the module
    alias: str | None = None  # the name it is bound to here, when not its own

    @property
    def bound(self) -> str | None:
        """The name this file uses for what it imported (None: a module bound to no name, or ``*``)."""
        return self.alias or (self.name if self.name != "*" else None)


class PathTable:
    """Repository paths looked up by their last component, with or without extension, and by folder.
    ``root_name`` is the repository folder's own name: a package opened as the repository imports itself
    under it (``rich/console.py`` says ``from rich.segment import Segment``)."""

    def __init__(self, paths: Iterable[str], root_name: str = ""):
        self.root_name = root_name
        self.by_name: dict[str, list[str]] = {}
        self.by_stem: dict[str, list[str]] = {}
        self.by_folder_name: dict[str, list[str]] = {}
        # The same by the last two parts: a target with a folder (`pkg/__init__`) looked up by its last part alone
        # went through every `__init__.py` of the repository, for every import of the file and of its re-exports.
        self._by_name_tail: dict[str, list[str]] = {}
        self._by_stem_tail: dict[str, list[str]] = {}
        self._by_folder_tail: dict[str, list[str]] = {}
        for path in paths:
            pure = PurePosixPath(path)
            self.by_name.setdefault(pure.name, []).append(path)
            self.by_stem.setdefault(pure.stem, []).append(path)
            self.by_folder_name.setdefault(pure.parent.name, []).append(path)
            self._by_name_tail.setdefault(_tail(path), []).append(path)
            self._by_stem_tail.setdefault(_tail(_strip_extension(path)), []).append(path)
            self._by_folder_tail.setdefault(_tail(posixpath.dirname(path)), []).append(path)

    def files(self, target: str, anchored: bool, extension: bool = False) -> list[str]:
        """Paths equal to ``target`` (``anchored``) or ending with it at a ``/``; without ``extension`` the
        target names a path minus its extension."""
        if "/" in target:
            candidates = (self._by_name_tail if extension else self._by_stem_tail).get(_tail(target), [])
        else:
            candidates = self.by_name.get(target, []) if extension else self.by_stem.get(target, [])
        return [p for p in candidates if _ends_with(p if extension else _strip_extension(p), target, anchored)]

    def folder(self, target: str, anchored: bool) -> list[str]:
        """The files directly in a folder equal to, or ending with, ``target``."""
        candidates = self._by_folder_tail.get(_tail(target), []) if "/" in target else self.by_folder_name.get(
            target, [])
        return [p for p in candidates if _ends_with(posixpath.dirname(p), target, anchored)]


def _tail(path: str) -> str:
    """The last two parts of a path: those of any path that ends with it, when it has two."""
    return "/".join(path.rsplit("/", 2)[-2:])


def _strip_extension(path: str) -> str:
    head, dot, tail = path.rpartition(".")
    return head if dot and "/" not in tail else path


def _ends_with(path: str, target: str, anchored: bool) -> bool:
    return path == target or (not anchored and path.endswith("/" + target))


def module_files(table: PathTable, path: str, language: str, module: str) -> list[str]:
    """The files a module as written in the file at ``path`` refers to."""
    resolver = _RESOLVERS.get(language)
    return resolver(table, posixpath.dirname(path), module.strip()) if resolver else []


def _submodule_files(table: PathTable, path: str, language: str, imported: Import) -> list[str]:
    """Python's ``from pkg import sub``: the files of module ``pkg.sub``, if there is one."""
    if language != "python" or imported.name in (None, "*"):
        return []
    module = imported.module
    return module_files(table, path, language, module + imported.name if module.endswith(".") else
                        f"{module}.{imported.name}")


@dataclass
class ImportedNames:
    """What the imports of one file bind, followed into the repository."""

    definitions: dict[str, list[int]] = field(default_factory=dict)  # bound name -> chunks defining it
    modules: dict[str, list[str]] = field(default_factory=dict)  # name bound to a module -> its files
    files: set[str] = field(default_factory=set)  # every repository file imported


def follow_imports(index, path: str, language: str, imports: Iterable[Import]) -> ImportedNames:
    """Resolve the imports of the file at ``path``: modules to files, imported names to the chunks that
    define them (``index`` is a RepoIndex: its paths, definers, chunks and every file's imports)."""
    found = ImportedNames()
    table = index.paths
    budget = [MAX_FOLLOWED_IMPORTS]  # what the re-export searches may still read, shared by all the names
    for imported in imports:
        if not imported.module:
            continue  # a name of this file exported under another: binds nothing here
        files = [f for f in module_files(table, path, language, imported.module) if f != path]
        found.files.update(files)
        submodule = [f for f in _submodule_files(table, path, language, imported) if f != path]
        if submodule:  # a module, bound to its own name or an alias
            found.files.update(submodule)
            found.modules[imported.bound] = submodule
            continue
        for name, bound in _names(language, imported):
            if name is None:
                if bound and files:
                    found.modules[bound] = files
                continue
            chunks = _definitions(index, files, name, set(), budget)
            if chunks:
                found.definitions.setdefault(bound, []).extend(chunks)
                found.files.update(index.chunks[n].path for n in chunks)  # (re-exported: where it lives)
            elif name == "default" and bound and files:  # a default export that is no definition (an object of
                found.modules[bound] = files                 # functions): `bound.` is the module's
    if language in ("go", "java"):  # a file sees the names of its own package, its folder's files, unimported
        folder = posixpath.dirname(path)
        found.files.update(f for f in table.folder(folder, True) if f != path and language_name(f) == language)
    return found


def _names(language: str, imported: Import) -> list[tuple[str | None, str | None]]:
    """(name in the module, name bound here) pairs of an import: explicit for Python and JavaScript, the last
    part of the path for Java (``a.b.Shape``) and Rust (``a::b::Shape``, ``a::b::{C, D}``); a Go package is bound
    to its alias or its name."""
    if imported.name == "*":
        return []
    if language == "go" and imported.name is None:
        return [(None, imported.alias or _go_package(imported.module))]
    if imported.name is not None or language not in ("java", "rust"):
        return [(imported.name, imported.bound)]
    if language == "java":
        last = imported.module.rsplit(".", 1)[-1]
        return [(last, last)] if last != "*" else []
    module = imported.module
    if "{" in module:
        names = module[module.index("{") + 1 : module.rindex("}") if "}" in module else len(module)].split(",")
    else:
        names = [module.rsplit("::", 1)[-1]]
    pairs = []
    for part in names:
        name, _, alias = part.strip().partition(" as ")
        if name and name not in ("self", "*") and "::" not in name:
            pairs.append((name, alias.strip() or name))
    return pairs


def _go_package(module: str) -> str:
    """The name a Go import binds unaliased: the package's, which is its path's last part but for a major version
    (``example.com/x/v2``: x; ``gopkg.in/yaml.v3``: yaml)."""
    parts = module.split("/")
    last = parts[-2] if len(parts) > 1 and re.fullmatch(r"v[0-9]+", parts[-1]) else parts[-1]
    return re.sub(r"\.v[0-9]+$", "", last)


def _definitions(index, files: list[str], name: str, seen: set[str], budget: list[int], depth: int = 0) -> list[int]:
    """Chunks of ``files`` defining ``name``; failing that, its definitions where those files import it from, up to
    MAX_REEXPORTS re-exports deep. ``seen``: the files looked through already, in any branch (a cycle ends there);
    ``budget``: how many more import statements may be read (a one-item list, spent here)."""
    inside = set(files)
    found = [n for n in index.definers.get(name, ()) if index.chunks[n].path in inside]
    if found or depth >= MAX_REEXPORTS:
        return found
    for file in files:
        if file in seen or len(seen) >= MAX_FOLLOWED_FILES or budget[0] <= 0:
            continue
        seen.add(file)
        language = language_name(file)
        budget[0] -= len(index.imports(file))
        for imported in index.imports(file):
            if imported.bound == name or imported.name == "*":
                original = name if imported.name == "*" else imported.name
                if original is None:
                    continue  # a module bound to the name: not a definition
                if imported.module:
                    reexported = [f for f in module_files(index.paths, file, language, imported.module) if f != file]
                else:  # the file's own name, exported under another (`export default g`, `export { g as h }`)
                    reexported = [file]
                    seen.discard(file)
                found += _definitions(index, reexported, original, seen, budget, depth + 1)
    return found


def _relative(folder: str, target: str) -> str | None:
    """``target`` (may hold ``..``) from ``folder``, or None if it climbs out of the repository."""
    joined = posixpath.normpath(posixpath.join(folder, target))
    if joined == ".." or joined.startswith("../"):
        return None
    return "" if joined == "." else joined


def _python(table: PathTable, folder: str, module: str) -> list[str]:
    name = module.lstrip(".")
    dots = len(module) - len(name)
    target = name.replace(".", "/")
    if dots:  # from . import x / from ..pkg import y: relative to the importing package
        base = _relative(folder, "/".join([".."] * (dots - 1)) or ".")
        if base is None:
            return []
        target = posixpath.join(base, target) if target else base
        return table.files(target, True) + table.files(target + "/__init__", True)
    found = table.files(target, False) + table.files(target + "/__init__", False)
    top, _, inside = target.partition("/")
    if not found and top == table.root_name:  # the repository is the package itself
        found = table.files(inside, True) + table.files(inside + "/__init__", True) if inside else table.files(
            "__init__", True)
    return found


_COMPILED_JAVASCRIPT = (".js", ".jsx", ".mjs", ".cjs")  # what TypeScript's own imports name a .ts file by


def _javascript(table: PathTable, folder: str, module: str) -> list[str]:
    if module.startswith("."):
        target = _relative(folder, module)
        if target is None:
            return []
        anchored = True
    elif "/" not in module:
        return []  # a package from node_modules
    else:
        target = module.split("/", 1)[1] if module[0] in "@~" else module  # "@/lib/x" or "~/lib/x": aliases of src
        anchored = False
    exact = table.files(target, anchored, extension=True) if anchored else []
    if exact:
        return exact
    if posixpath.splitext(target)[1] in _COMPILED_JAVASCRIPT:  # `./format.js` from TypeScript: format.ts
        target = _strip_extension(target)
    return table.files(target, anchored) + table.files(target + "/index", anchored)


def _go(table: PathTable, folder: str, module: str) -> list[str]:
    # An import path ends with the package's folder; its last two parts rarely collide.
    return table.folder("/".join(module.split("/")[-2:]), False) if "/" in module else []


def _rust(table: PathTable, folder: str, module: str) -> list[str]:
    path = module.split("{")[0].rstrip(":").split(" as ")[0]
    parts = [p for p in path.split("::") if p and p != "*"]
    if not parts:
        return []
    if len(parts) == 1 and module == parts[0]:  # `mod util;`: a file next to this one
        target = posixpath.join(folder, parts[0])
        return table.files(target, True) + table.files(target + "/mod", True)
    if parts[0] in ("std", "core", "alloc"):
        return []
    if parts[0] in ("crate", "self", "super"):
        parts = parts[1:]
    found = []
    for length in range(len(parts), 0, -1):  # the longest prefix that names a module file; the rest are items
        target = "/".join(parts[:length])
        found = table.files(target, False) + table.files(target + "/mod", False)
        if found:
            break
    return found


def _c(table: PathTable, folder: str, module: str) -> list[str]:
    target = module.strip('<>"').replace("\\", "/")   # `#include "net\socket.h"`: code written on Windows
    local = _relative(folder, target)
    nearby = table.files(local, True, extension=True) if local is not None else []
    return nearby or table.files(target, False, extension=True)


def _java(table: PathTable, folder: str, module: str) -> list[str]:
    target = module.replace(".", "/")
    return table.files(target, False) or table.folder(target, False)


_RESOLVERS = {
    "python": _python,
    "javascript": _javascript, "typescript": _javascript, "tsx": _javascript,
    "go": _go,
    "rust": _rust,
    "c": _c, "cpp": _c,
    "java": _java,
}

"""Which repository files an import statement refers to.

Each language's import string is turned into candidate paths: anchored ones (relative imports, resolved from
the importing file's folder) that must match exactly, and unanchored ones (``a.b.c``, ``crate::a::b``,
``"github.com/x/y/pkg"``) that may match at the end of any path, so source roots such as ``src/`` need no
configuration. Standard library and third-party imports simply match nothing.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from pathlib import PurePosixPath


class PathTable:
    """Repository paths looked up by their last component, with or without extension, and by folder."""

    def __init__(self, paths: Iterable[str]):
        self.by_name: dict[str, list[str]] = {}
        self.by_stem: dict[str, list[str]] = {}
        self.by_folder_name: dict[str, list[str]] = {}
        for path in paths:
            pure = PurePosixPath(path)
            self.by_name.setdefault(pure.name, []).append(path)
            self.by_stem.setdefault(pure.stem, []).append(path)
            self.by_folder_name.setdefault(pure.parent.name, []).append(path)

    def files(self, target: str, anchored: bool, extension: bool = False) -> list[str]:
        """Paths equal to ``target`` (``anchored``) or ending with it at a ``/``; without ``extension`` the
        target names a path minus its extension."""
        name = target.rsplit("/", 1)[-1]
        candidates = self.by_name.get(name, []) if extension else self.by_stem.get(name, [])
        return [p for p in candidates if _ends_with(p if extension else _strip_extension(p), target, anchored)]

    def folder(self, target: str, anchored: bool) -> list[str]:
        """The files directly in a folder equal to, or ending with, ``target``."""
        name = target.rsplit("/", 1)[-1]
        return [p for p in self.by_folder_name.get(name, []) if _ends_with(posixpath.dirname(p), target, anchored)]


def _strip_extension(path: str) -> str:
    head, dot, tail = path.rpartition(".")
    return head if dot and "/" not in tail else path


def _ends_with(path: str, target: str, anchored: bool) -> bool:
    return path == target or (not anchored and path.endswith("/" + target))


def resolve_imports(table: PathTable, path: str, language: str, imports: Iterable[str]) -> set[str]:
    """The repository files that the imports of the file at ``path`` (in ``language``) refer to."""
    resolver = _RESOLVERS.get(language)
    if resolver is None:
        return set()
    folder = posixpath.dirname(path)
    found: set[str] = set()
    for module in imports:
        found.update(resolver(table, folder, module.strip()))
    found.discard(path)
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
    return table.files(target, False) + table.files(target + "/__init__", False)


def _javascript(table: PathTable, folder: str, module: str) -> list[str]:
    if module.startswith("."):
        target = _relative(folder, module)
        if target is None:
            return []
        exact = table.files(target, True, extension=True)
        return exact or table.files(target, True) + table.files(target + "/index", True)
    if "/" not in module:
        return []  # a package from node_modules
    target = module.split("/", 1)[1] if module[0] in "@~" else module  # "@/lib/x" or "~/lib/x": aliases of src
    return table.files(target, False) + table.files(target + "/index", False)


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
    target = module.strip('<>"')
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

"""Which repository files an import statement refers to, and which definitions the names it imports are.

Each language's import string is turned into candidate paths: anchored ones (relative imports, resolved from
the importing file's folder) that must match exactly, and unanchored ones (``a.b.c``, ``crate::a::b``,
``"github.com/x/y/pkg"``) that may match at the end of any path, so source roots such as ``src/`` need no
configuration (Rust's ``crate::``, ``self::`` and ``super::`` paths are tried from the crate's root or the file's
module first, and a path beginning with the name of another crate of the workspace from that crate's root, as its
Cargo.toml says; where no module file lies below, the path names that module's own items: ``super::Price``). A use
inside an inline module (``mod tests { use super::*; }``) is read as the file's module would write it. Standard
library and third-party imports simply match nothing.

A name imported from a file (``from .segment import Segment``) is followed to the chunk that defines it; when
the file only re-exports it (a package's ``__init__.py``: ``from .segment import Segment``, or ``import *``,
a JavaScript ``index.js``: ``export { Segment } from "./segment"``, a Rust ``pub use``), through that file's own
imports. A JavaScript default import is the module's ``default`` export (``export default function f``, or
``export default f``: f), and so is CommonJS's ``const x = require("./m")`` (what ``module.exports =`` names;
``const { a, b: c } = require(...)`` imports names, which ``exports.a =`` and ``module.exports = { a }`` export;
``module.exports = require("./x")`` re-exports all of x, and TypeScript's ``import x = require("./m")`` is read as
``const x = require`` is);
a Go import binds its package's name, and its path is a module's (as a go.mod's ``module`` line says) and a folder
below that go.mod. What a file sees without importing it counts as
imported too: a Go or Java file's own package (its folder), and the source file of a C or C++ header's name,
which defines what the header declares.
"""

from __future__ import annotations

import bisect
import copy
import functools
import posixpath
import re
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import NamedTuple

from .languages import language_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as the package tomli (a dependency there)
    import tomli as tomllib

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
    under it (``rich/console.py`` says ``from rich.segment import Segment``). ``read`` gives the text of a file of
    the table: its Cargo.toml files name the Rust crates that other crates of the workspace use by name, its go.mod
    files the Go modules whose paths imports begin with."""

    def __init__(self, paths: Iterable[str], root_name: str = "", read: Callable[[str], str] | None = None):
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
            for lookup, key in zip(self._lookups(), _keys(path)):
                lookup.setdefault(key, []).append(path)
        manifests = {path: read(path) for path in self.by_name.get("Cargo.toml", ())} if read else {}
        self.crates = rust_crates(manifests)  # a library crate's name in `use` paths -> its root file
        go_manifests = {path: read(path) for path in self.by_name.get("go.mod", ())} if read else {}
        self.go_modules = go_modules(go_manifests)  # a Go module's path -> the folder of its go.mod
        self.crate_roots = {posixpath.dirname(root): root for root in self.crates.values()}  # folder -> root file

    def _lookups(self) -> tuple[dict[str, list[str]], ...]:
        """The tables a path is filed in, in the order of ``_keys``."""
        return (self.by_name, self.by_stem, self.by_folder_name, self._by_name_tail, self._by_stem_tail,
                self._by_folder_tail)

    def with_changes(self, added: Iterable[str], removed: Iterable[str]) -> PathTable:
        """This table of sorted paths (RepoIndex's) with some paths added and some gone, equal to the one built from
        scratch: each touched list, in path order, copied and changed; the rest shared with this table, which stays
        as it is. Building it again took 0.2 s at 37k files, at every save that added or deleted one. The manifests
        are taken as they were: a Cargo.toml or go.mod added or gone needs a table built from scratch."""
        table = copy.copy(self)
        lookups = tuple(dict(lookup) for lookup in self._lookups())
        (table.by_name, table.by_stem, table.by_folder_name, table._by_name_tail, table._by_stem_tail,
         table._by_folder_tail) = lookups
        copied: set[tuple[int, str]] = set()    # (lookup, key) whose list is this table's own copy already
        for path, adding in [*((path, False) for path in removed), *((path, True) for path in added)]:
            for number, (lookup, key) in enumerate(zip(lookups, _keys(path))):
                if (number, key) not in copied:
                    copied.add((number, key))
                    lookup[key] = list(lookup.get(key, ()))
                paths = lookup.setdefault(key, [])     # (one emptied and deleted above may fill again)
                if adding:
                    bisect.insort(paths, path)
                else:
                    paths.remove(path)
                    if not paths:
                        del lookup[key]
        return table

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


def _keys(path: str) -> tuple[str, ...]:
    """What a path is filed under in each of PathTable's lookups: its name, stem and folder's name, and the last two
    parts of it, of it without its extension and of its folder."""
    pure = PurePosixPath(path)
    return (pure.name, pure.stem, pure.parent.name, _tail(path), _tail(_strip_extension(path)),
            _tail(posixpath.dirname(path)))


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
    return resolver(table, path, module.strip()) if resolver else []


def _submodule_files(table: PathTable, path: str, language: str, imported: Import) -> list[str]:
    """Python's ``from pkg import sub``, Rust's ``use crate::pkg::sub``: the files of module ``pkg.sub``, if there
    is one."""
    if imported.name in (None, "*"):
        return []
    module = imported.module
    if language == "rust":
        return _rust_module_files(table, path, f"{module}::{imported.name}")
    if language != "python":
        return []
    return module_files(table, path, language, module + imported.name if module.endswith(".") else
                        f"{module}.{imported.name}")


def bindings(language: str, imports: Iterable[Import]) -> list[Import]:
    """The imports of a file in ``language``, one name bound by each: a Rust use tree split into its names
    (``a::{b::C, D as E}``: C from ``a::b``, and D from ``a`` bound to E; ``mod m;``: module m bound to m)."""
    if language != "rust":
        return list(imports)
    return [leaf for imported in imports for leaf in _rust_leaves(imported)]


@functools.lru_cache(maxsize=65536)  # (the same statements are read again for every name followed through them)
def _rust_leaves(imported: Import) -> tuple[Import, ...]:
    if imported.name is not None:  # one name already
        return (imported,)
    text = " ".join(imported.module.split())  # (a use tree may span lines)
    return tuple(_use_tree(text, ""))


def _use_tree(text: str, prefix: str) -> list[Import]:
    """The names a Rust use tree (``a::{b::C, D as E, self}``) below the path ``prefix`` imports."""
    text = text.strip()
    if "{" in text:
        brace = text.index("{")
        if not text.endswith("}"):
            return []  # (code being written)
        base = _rust_join(prefix, text[:brace].strip().removesuffix("::"))
        return [leaf for part in _top_level_parts(text[brace + 1 : -1]) for leaf in _use_tree(part, base)]
    path, _, alias = text.partition(" as ")
    full = _rust_join(prefix, path.strip())
    module, _, name = full.rpartition("::")
    if name == "self":  # `a::{self}`: module a itself
        full = module
        module, _, name = full.rpartition("::")
    if not name:
        return []
    if not module:  # `mod m;`, `use m;`: a module bound to its name
        return [Import(name, None, alias.strip() or name)]
    return [Import(module, "*" if name == "*" else name, alias.strip() or None)]


def _rust_join(prefix: str, path: str) -> str:
    return f"{prefix}::{path}" if prefix and path else prefix or path


def _top_level_parts(text: str) -> list[str]:
    """``text`` split at the commas outside braces."""
    parts, depth, start = [], 0, 0
    for position, character in enumerate(text):
        depth += (character == "{") - (character == "}")
        if character == "," and depth == 0:
            parts.append(text[start:position])
            start = position + 1
    return parts + [text[start:]]


@dataclass
class ImportedNames:
    """What the imports of one file bind, followed into the repository."""

    definitions: dict[str, list[int]] = field(default_factory=dict)  # bound name -> chunks defining it
    modules: dict[str, list[str]] = field(default_factory=dict)  # name bound to a module -> its files
    files: set[str] = field(default_factory=set)  # every repository file imported
    # Names bound by an import that reads as a declaration (`const fmt = require("./money")`): imported, not the
    # file's own variables, though they look like them.
    declared: set[str] = field(default_factory=set)


def follow_imports(index, path: str, language: str, imports: Iterable[Import]) -> ImportedNames:
    """Resolve the imports of the file at ``path``: modules to files, imported names to the chunks that
    define them (``index`` is a RepoIndex: its paths, definers, chunks and every file's imports)."""
    found = ImportedNames()
    table = index.paths
    budget = [MAX_FOLLOWED_IMPORTS]  # what the re-export searches may still read, shared by all the names
    for imported in bindings(language, imports):
        if not imported.module:
            continue  # a name of this file exported under another: binds nothing here
        if language in _DECLARING_IMPORTS and imported.bound:
            found.declared.add(imported.bound)
        files = [f for f in module_files(table, path, language, imported.module) if f != path]
        found.files.update(files)
        if language in ("c", "cpp"):  # what a header declares, its source file defines
            found.files.update(source for header in files for source in _sources_of(index, header))
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
        folder = posixpath.dirname(path)            # (a Go package's tests only from its tests)
        found.files.update(f for f in table.folder(folder, True) if f != path and language_name(f) == language
                           and (language != "go" or _go_test(path) or not _go_test(f)))
    return found


_DECLARING_IMPORTS = ("javascript", "typescript", "tsx")  # languages where `require` binds a name as `const` does


def _names(language: str, imported: Import) -> list[tuple[str | None, str | None]]:
    """(name in the module, name bound here) pairs of an import (as ``bindings`` gives it): explicit for Python,
    JavaScript and Rust, the last part of the path for Java (``a.b.Shape``, ``a.b.Shape.member``); a Go package
    is bound to its alias or its name."""
    if imported.name == "*":
        return []
    if language == "java" and imported.name is None:
        last = imported.module.rsplit(".", 1)[-1]
        return [(last, last)] if last != "*" else []
    if language == "go" and imported.name is None:
        return [(None, imported.alias or _go_package(imported.module))]
    return [(imported.name, imported.bound)]


_QUALIFIED_LANGUAGES = ("go",)  # where every use of an imported name is qualified by its package: `pkg.Name`


def qualified_definitions(index, language: str, modules: dict[str, list[str]], uses: Iterable[str]
                          ) -> dict[str, list[int]]:
    """The chunks defining each qualified use (``"pkg.Name"``) whose qualifier is bound to a module here, among
    that module's files (Go: two packages that both define New, `store.New` is store's)."""
    if language not in _QUALIFIED_LANGUAGES:
        return {}
    found = {}
    for use in uses:
        qualifier, _, name = use.partition(".")
        files = modules.get(qualifier)
        if files:
            inside = set(files)
            chunks = [n for n in index.definers.get(name, ()) if index.chunks[n].path in inside]
            if chunks:
                found[use] = chunks
    return found


def qualifier_files(index, path: str, language: str, imports: Iterable[Import], modules: dict[str, list[str]],
                    qualifier: str) -> list[str]:
    """The files of the module a qualifier right before the cursor names (``pr`` of ``pr.Ne|``, ``crate::cache`` of
    ``crate::cache::Sto|``): of its longest prefix that is a name bound here to a module, or a module path as the
    file's imports write them (Python's ``a.b`` where ``import a...`` binds a; Rust's ``crate::``, ``self::``,
    ``super::`` or a workspace crate's paths). The rest of the path is inside that module (``pr.Price.``: Price's
    methods, in pricing's files)."""
    separator = "::" if "::" in qualifier else "."
    parts = qualifier.split(separator)
    for length in range(len(parts), 0, -1):
        prefix = separator.join(parts[:length])
        if prefix in modules:
            return modules[prefix]
        if _written_module(index.paths, language, imports, parts[0]):
            files = [f for f in module_files(index.paths, path, language, prefix) if f != path]
            if files:
                return files
    return []


def _written_module(table: PathTable, language: str, imports: Iterable[Import], head: str) -> bool:
    """Whether a path beginning with ``head`` names a module as written in code (not a variable's attribute)."""
    if language == "python":  # `import a.b` binds a: `a.b.` is that module
        return any(i.name is None and i.alias is None and i.module.split(".")[0] == head for i in imports)
    return language == "rust" and (head in _RUST_PATH_KEYWORDS or head in table.crates)


MAX_COMPLETION_NAMES = 64  # imported names of a module that may come next, followed to their definitions


def completions(index, files: list[str], partial: str, used: Container[str] = ()) -> dict[str, list[int]]:
    """The names of a module (its ``files``) that may come next after its qualifier, each with the chunks defining
    it: those that begin with ``partial``, the word being typed (as typed, or failing that in any case: ``fmt.pr``
    for Println); with no word typed yet (``pr.|``), those the file has ``used`` already, the likeliest to come
    next. A module's names are those its files define, those of the files they import every name from (a barrel's
    ``from .segment import *``, ``export * from``), and the names they import, followed to their definitions."""
    if not partial and not used:
        return {}
    own, imported_names = list(files), []
    for file in files:
        for imported in bindings(language_name(file), index.imports(file)):
            if imported.name == "*" and imported.module:
                own += module_files(index.paths, file, language_name(file), imported.module)
            elif imported.bound:
                imported_names.append((file, imported.bound))
    found = _names_defined(index, own, imported_names, partial, used, fold=False)
    return found if found or not partial else _names_defined(index, own, imported_names, partial, used, fold=True)


def _names_defined(index, own: list[str], imported_names: list[tuple[str, str]], partial: str, used: Container[str],
                   fold: bool) -> dict[str, list[int]]:
    """``completions`` matched as typed or (``fold``) in any case: the wanted names the files ``own`` define, and
    those of ``imported_names`` (file, name bound there), followed to their definitions."""
    prefix = partial.casefold() if fold else partial

    def wanted(name: str) -> bool:
        return (name.casefold() if fold else name).startswith(prefix) if prefix else name in used

    found: dict[str, list[int]] = {}
    for file in dict.fromkeys(own):
        for number in index.chunk_numbers(file):
            for name in filter(wanted, index.chunks[number].defines):
                found.setdefault(name, []).append(number)
    budget = [MAX_FOLLOWED_IMPORTS]
    for file, name in [item for item in imported_names if wanted(item[1])][:MAX_COMPLETION_NAMES]:
        found.setdefault(name, []).extend(_definitions(index, [file], name, set(), budget))
    return {name: list(dict.fromkeys(chunks)) for name, chunks in found.items() if chunks}


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
    found = [n for n in index.definers.get(name, ()) if index.chunks[n].path in inside] or _exported_macros(
        index, files, name)
    if found or depth >= MAX_REEXPORTS:
        return found
    for file in files:
        if file in seen or len(seen) >= MAX_FOLLOWED_FILES or budget[0] <= 0:
            continue
        seen.add(file)
        language = language_name(file)
        imports = bindings(language, index.imports(file))
        budget[0] -= len(imports)
        for imported in imports:
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


def _exported_macros(index, files: list[str], name: str) -> list[int]:
    """Rust: the chunks defining a ``#[macro_export]`` macro ``name`` in the crate of a crate root among ``files``
    (such a macro is an item of the crate's root wherever in the crate it is defined: ``use serde_json::json;``)."""
    roots = [posixpath.dirname(f) for f in files if f.endswith(".rs") and (
        posixpath.basename(f) in ("lib.rs", "main.rs") or f in index.paths.crate_roots.values())]
    if not roots:
        return []
    exported = re.compile(rf"#\[macro_export[^\]]*\]\s*(?:#\[[^\]]*\]\s*)*macro_rules!\s*{re.escape(name)}\b")
    in_crate = [n for n in index.definers.get(name, ()) if any(
        not root or index.chunks[n].path.startswith(root + "/") for root in roots)]
    return [n for n in in_crate if exported.search(index.chunks[n].text)]


def _relative(folder: str, target: str) -> str | None:
    """``target`` (may hold ``..``) from ``folder``, or None if it climbs out of the repository."""
    joined = posixpath.normpath(posixpath.join(folder, target))
    if joined == ".." or joined.startswith("../"):
        return None
    return "" if joined == "." else joined


def _python(table: PathTable, path: str, module: str) -> list[str]:
    name = module.lstrip(".")
    dots = len(module) - len(name)
    target = name.replace(".", "/")
    if dots:  # from . import x / from ..pkg import y: relative to the importing package
        base = _relative(posixpath.dirname(path), "/".join([".."] * (dots - 1)) or ".")
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


def _javascript(table: PathTable, path: str, module: str) -> list[str]:
    if module.startswith("."):
        target = _relative(posixpath.dirname(path), module)
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


def _go(table: PathTable, path: str, module: str) -> list[str]:
    """The .go files of the package's folder: below the go.mod of the longest module path the import path begins
    with (``github.com/go-chi/chi/v5/middleware``: middleware/ beside chi's go.mod); else, a module not in the
    repository's go.mod files, the folder ending with the path's last two parts, which rarely collide."""
    for prefix in _path_prefixes(module):
        if prefix in table.go_modules:
            folder = posixpath.join(table.go_modules[prefix], module[len(prefix) + 1 :])
            found = [f for f in table.folder(folder.rstrip("/"), True) if f.endswith(".go") and not _go_test(f)]
            if found:
                return found
            break
    if "/" not in module:
        return []
    return [f for f in table.folder("/".join(module.split("/")[-2:]), False) if not _go_test(f)]


def _go_test(path: str) -> bool:
    """A Go test file: compiled into its package's tests alone, never into what imports the package."""
    return path.endswith("_test.go")


def _path_prefixes(module: str) -> list[str]:
    """An import path and each shorter path it begins with, longest first."""
    parts = module.split("/")
    return ["/".join(parts[:length]) for length in range(len(parts), 0, -1)]


def go_modules(manifests: dict[str, str]) -> dict[str, str]:
    """The Go modules that go.mod files (path -> text) define: module path -> the go.mod's folder."""
    modules: dict[str, str] = {}
    for path, text in sorted(manifests.items()):
        declared = _GO_MODULE_LINE.search(text)
        if declared:
            modules.setdefault(declared.group(1).strip('"`'), posixpath.dirname(path))
    return modules


_GO_MODULE_LINE = re.compile(r"^\s*module\s+(\S+)", re.MULTILINE)


_RUST_PATH_KEYWORDS = ("crate", "self", "super")


def _rust(table: PathTable, path: str, module: str) -> list[str]:
    """The files of the longest prefix of a path that names a module (``crate::net::client::Client``: client.rs);
    as written in a use tree, only its path before ``{`` counts. A path from a known module (``crate::``,
    ``super::``, ``self::``, a workspace crate's name) with no module file below it names that module's own items
    (``super::Price``: the parent module's file)."""
    written = module.split("{")[0].rstrip(":").split(" as ")[0]
    parts = [p for p in written.split("::") if p and p != "*"]
    if not parts or parts[0] in ("std", "core", "alloc"):
        return []
    rooted = parts[0] in _RUST_PATH_KEYWORDS or parts[0] in table.crates
    if len(parts) == 1 and module == parts[0] and parts[0] not in _RUST_PATH_KEYWORDS:  # `mod util;`: a child
        found = (_rust_files(table, _rust_children(path), parts, anchored=True)  # module (or, in a crate root such
                 or _rust_files(table, posixpath.dirname(path), parts, anchored=True))  # as src/bin/tool.rs, a
        if found or not rooted:                                                        # sibling); or a crate
            return found
    base, parts = _rust_start(table, path, parts)
    for anchored in (True, False) if base is not None else (False,):
        for length in range(len(parts), 0, -1):  # the longest prefix that names a module file; the rest are items
            found = _rust_files(table, base, parts[:length], anchored)
            if found:
                return found
        if anchored and rooted:
            own = _rust_module_file(table, base)
            if own:
                return own
    return []


def _rust_module_files(table: PathTable, path: str, module: str) -> list[str]:
    """The files of a Rust path that names a module as a whole (``crate::net``), if one does."""
    parts = [p for p in module.split("::") if p]
    if not parts or parts[0] in ("std", "core", "alloc"):
        return []
    base, parts = _rust_start(table, path, parts)
    return _rust_files(table, base, parts, anchored=base is not None) if parts else []


def _rust_start(table: PathTable, path: str, parts: list[str]) -> tuple[str | None, list[str]]:
    """The folder a Rust path's first module is in (None: not known) and the rest of the path: ``crate::`` from
    the crate's root (the nearest folder above holding lib.rs or main.rs), ``self::`` and a path of the file's
    own child modules from its child modules' folder, each ``super::`` one folder up from there."""
    if parts[0] == "crate":
        return _crate_root(table, path), parts[1:]
    if parts[0] in table.crates:  # another crate of the workspace
        return posixpath.dirname(table.crates[parts[0]]), parts[1:]
    base = _rust_children(path)
    if parts[0] == "self":
        return base, parts[1:]
    while parts and parts[0] == "super":
        base, parts = posixpath.dirname(base), parts[1:]
    return base, parts


def _rust_children(path: str) -> str:
    """The folder of a Rust file's child modules: its own for lib.rs, main.rs and mod.rs, else the one named as the
    file (src/net.rs: src/net/)."""
    folder, name = posixpath.split(path)
    return folder if name in ("lib.rs", "main.rs", "mod.rs") else posixpath.join(folder, name.removesuffix(".rs"))


def _rust_module_file(table: PathTable, folder: str) -> list[str]:
    """The file of the module whose child modules are in ``folder``: a crate's root (as its Cargo.toml says, else
    lib.rs or main.rs), mod.rs, or the file named as the folder (src/pricing: src/pricing.rs)."""
    candidates = [table.crate_roots.get(folder, ""), *(posixpath.join(folder, name) for name in _RUST_MODULE_FILES)]
    for candidate in candidates + ([folder + ".rs"] if folder else []):
        if candidate and table.files(candidate, True, extension=True):
            return [candidate]
    return []


_RUST_MODULE_FILES = ("lib.rs", "main.rs", "mod.rs")


def _crate_root(table: PathTable, path: str) -> str | None:
    folder = posixpath.dirname(path)
    while True:
        if folder in table.crate_roots or any(table.files(posixpath.join(folder, root), True, extension=True)
                                              for root in ("lib.rs", "main.rs")):
            return folder
        if not folder:
            return None
        folder = posixpath.dirname(folder)


def _rust_files(table: PathTable, base: str | None, parts: list[str], anchored: bool) -> list[str]:
    """The file of the module ``parts`` below the folder ``base`` (``anchored``), or anywhere: ``a/b.rs`` or
    ``a/b/mod.rs``."""
    target = "/".join(parts)
    if anchored:
        target = posixpath.join(base, target) if base else target
    return [f for f in table.files(target, anchored) + table.files(target + "/mod", anchored) if f.endswith(".rs")]


def rust_crates(manifests: dict[str, str]) -> dict[str, str]:
    """The library crates that Cargo.toml files (path -> text) define: the name other crates' `use` paths give one
    (``[lib] name``, else ``[package] name`` with hyphens as underscores) -> its root file (``[lib] path``, else
    src/lib.rs beside the manifest). A manifest that does not parse is left out."""
    crates: dict[str, str] = {}
    for path, text in sorted(manifests.items()):
        crate = _library_crate(path, text)
        if crate:
            crates.setdefault(*crate)
    return crates


@functools.lru_cache(maxsize=4096)  # (read again whenever the path table is built: a vendor/ folder holds hundreds)
def _library_crate(path: str, text: str) -> tuple[str, str] | None:
    try:
        manifest = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError):  # (not TOML, or arrays nested thousands deep)
        return None
    package, library = manifest.get("package"), manifest.get("lib", {})
    if not isinstance(package, dict) or not isinstance(library, dict):
        return None
    name, root = library.get("name") or package.get("name"), library.get("path", "src/lib.rs")
    if not isinstance(name, str) or not isinstance(root, str):
        return None
    return name.replace("-", "_"), posixpath.normpath(posixpath.join(posixpath.dirname(path), root))


def outside_inline_modules(path: str, depth: int) -> str:
    """A Rust use path written inside ``depth`` inline modules (``mod tests { use super::*; }``) as the file's own
    module would write it: each ``super`` up to ``depth`` steps out of an inline module, within the file
    (``super::helpers::f``: ``self::helpers::f``), the rest out of the file's module."""
    parts = path.split("::")
    supers = next((n for n, part in enumerate(parts) if part.strip() != "super"), len(parts))
    if not depth or not supers:
        return path
    return "::".join(["self", *parts[supers:]] if supers <= depth else parts[depth:])


def _c(table: PathTable, path: str, module: str) -> list[str]:
    target = module.strip('<>"').replace("\\", "/")   # `#include "net\socket.h"`: code written on Windows
    local = _relative(posixpath.dirname(path), target)
    nearby = table.files(local, True, extension=True) if local is not None else []
    return nearby or table.files(target, False, extension=True)


_C_HEADERS = (".h", ".hh", ".hpp", ".hxx")
_C_SOURCES = (".c", ".cc", ".cpp", ".cxx")


def _sources_of(index, header: str) -> list[str]:
    """The source files that define what a C or C++ header declares: those named as it (net/socket.h: socket.c,
    socket.cpp), those of them that include it if any do, and of several the nearest to it in the folder tree."""
    name = posixpath.basename(header)
    stem, extension = posixpath.splitext(name)
    if extension.lower() not in _C_HEADERS:
        return []
    sources = [p for p in index.paths.by_stem.get(stem, ()) if posixpath.splitext(p)[1].lower() in _C_SOURCES]
    sources = [p for p in sources if any(_included_name(i.module) == name for i in index.imports(p))] or sources
    if len(sources) <= 1:
        return sources
    folders = header.split("/")[:-1]
    shared = [len(posixpath.commonprefix([folders, p.split("/")[:-1]])) for p in sources]   # folders in common
    return [p for p, common in zip(sources, shared) if common == max(shared)]


def _included_name(module: str) -> str:
    return posixpath.basename(module.strip('<>"').replace("\\", "/"))


def _java(table: PathTable, path: str, module: str) -> list[str]:
    target = module.replace(".", "/")
    # a class, a package (`import a.b.*`), or a class whose member is imported (`import static a.b.Util.format`)
    return table.files(target, False) or table.folder(target, False) or (
        table.files(posixpath.dirname(target), False) if "/" in target else [])


_RESOLVERS = {
    "python": _python,
    "javascript": _javascript, "typescript": _javascript, "tsx": _javascript,
    "go": _go,
    "rust": _rust,
    "c": _c, "cpp": _c,
    "java": _java,
}

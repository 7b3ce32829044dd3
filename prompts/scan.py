"""Which files of a repository are worth reading, and reading them.

The files are those git would not ignore, found by a walk that honours ``.gitignore`` at every level,
``.git/info/exclude`` and the user's global excludes file as git does (with core.ignorecase, ignoring ASCII case),
without ever running git: a repository's own ``.git/config`` can name commands (core.fsmonitor, hooks, filters,
pagers) that any git call would run, and opening an untrusted checkout must execute nothing from it. A
``.codecompleteignore`` (gitignore syntax, at any level) removes more, and vendored or generated folders, lock
files, minified files, binaries and files over the size limit are left out. Problems that a user may want to know
about (an unreadable file or folder, a broken symbolic link, a link loop or a link out of the repository, a FIFO or
device) are reported as ``ScanWarning`` and never stop the scan. Only regular files are ever opened, so a FIFO or a
device never blocks or floods it.
"""

from __future__ import annotations

import codecs
import errno
import functools
import json
import os
import re
import stat
import sys
import warnings
from collections.abc import Container, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from . import gitconfig
from .gitignore import Rules

MAX_FILE_BYTES = 512 * 1024  # larger files are almost always generated or data
MAX_BUFFER_BYTES = 64 * 1024 * 1024  # the file being edited: none is this large (an 8 GB sparse one is not read whole)
IGNORE_FILE = ".codecompleteignore"
GIT_EXCLUDES = ""       # (the name the rules of info/exclude and the excludes file go by)
GIT_IGNORE_FILES = (".gitignore", GIT_EXCLUDES)     # a repository's own: not a nested repository's

SKIPPED_DIRS = frozenset({
    ".git", ".hg", ".svn", "node_modules", ".venv", "venv", "__pycache__", "build", "dist", ".tox", ".nox",
    ".mypy_cache", ".pytest_cache", ".ruff_cache", ".eggs", "site-packages", ".next", ".gradle", ".idea",
})
SKIPPED_NAMES = frozenset({   # lockfiles (those not ending in .lock): resolved versions and hashes, no one's code
    "package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml", "Cargo.lock", "poetry.lock", "uv.lock",
    "Pipfile.lock", "composer.lock", "go.sum", "Gemfile.lock", "packages.lock.json", "gradle.lockfile",
    "Package.resolved",
})
SKIPPED_SUFFIXES = (
    ".min.js", ".min.css", ".map", ".lock",
    # binary formats, skipped without reading them
    ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".ico", ".webp", ".pdf", ".zip", ".gz", ".tgz", ".bz2", ".xz",
    ".7z", ".tar", ".whl", ".jar", ".class", ".so", ".dylib", ".dll", ".exe", ".o", ".a", ".lib", ".pyc",
    ".pyd", ".woff", ".woff2", ".ttf", ".otf", ".eot", ".mp3", ".mp4", ".wav", ".ogg", ".mov", ".avi",
    ".sqlite", ".db", ".bin", ".gguf", ".safetensors", ".pt", ".npy", ".npz", ".pkl",
)
SNIFF_BYTES = 8192  # a NUL byte in the first 8 KiB marks a binary file, as git decides
MINIFIED_LINE_CHARS = 400  # text whose lines average longer than this is minified or generated
MAX_DEPTH = 64  # folder levels walked; real repositories stay far below
NOTEBOOK_SUFFIX = ".ipynb"  # a Jupyter notebook: JSON, read as its code cells (notebook_code)
NOTEBOOK_BYTES_FACTOR = 32  # a notebook's outputs (plots as base64) are most of its bytes: it may be this much larger
MAX_RULES_BYTES = 1024 * 1024  # a git config file (or .git pointer) larger than this is not one a person wrote
# An ignore file may be generated (tens of thousands of paths): git reads one up to this size, and skips a larger one.
MAX_IGNORE_BYTES = 100 * 1024 * 1024 - 1


class ScanWarning(UserWarning):
    """A file left out of the index for a reason the user may want to fix."""


class SourceFile(NamedTuple):
    """A candidate file: path relative to the root (posix), with what the cache keys on (its stamps: a write moves
    one of them, unless it falls within the file clock's tick of the last one)."""

    path: str
    size: int
    mtime_ns: int
    changed_ns: int  # the inode's change time, which a write and a utime both set to now (Windows: mtime, see below)
    inode: int


def scan_repository(root: Path, max_file_bytes: int = MAX_FILE_BYTES) -> list[SourceFile]:
    """The files of the repository at ``root`` (an absolute, resolved directory), sorted by path."""
    return sorted(walk_sources(root, max_file_bytes))


def walk_sources(root: Path, max_file_bytes: int = MAX_FILE_BYTES) -> Iterator[SourceFile]:
    """The repository's files as a walk that honours the ignore files finds them, lazily and unsorted: a caller can
    take a few at a time (a server keeping its index fresh)."""
    rules = repository_rules(root)
    for path in _walk(root, rules):
        if not _skipped_by_name(path):
            source = _stat(root, path, max_file_bytes, rules)
            if source is not None:
                yield source


def source_file(root: Path, path: str, max_file_bytes: int = MAX_FILE_BYTES,
                folders_seen: dict[str, bool] | None = None) -> SourceFile | None:
    """One file as the scan would list it now (its size and mtime), or None if the scan would leave it out: also
    when a folder on its path is a link, which the walk never enters (a folder replaced since by a link out of the
    repository would bring in the file of that name there). `folders_seen`: folder -> whether the walk enters it,
    shared by the calls of one look at several files (a prompt's context: 36 files of 8k tokens, in a few folders)."""
    if _skipped_by_name(path):
        return None
    folders_seen = {} if folders_seen is None else folders_seen
    end = path.find("/")
    while end != -1:
        folder = path[:end]
        entered = folders_seen.get(folder)
        if entered is None:
            full = os.path.join(root, folder)
            entered = folders_seen[folder] = not (os.path.islink(full) or os.path.isfile(os.path.join(full, "HEAD"))
                                                  and _is_git_dir(Path(full)))
        if not entered:
            return None     # (a link the walk never enters, a git folder it leaves out)
        end = path.find("/", end + 1)
    return _stat(root, path, max_file_bytes)


def count_ignored(root: Path) -> int:
    """How many files the ignore rules leave out: said when they leave nothing to index. Quiet: its walks repeat the
    index's, whose warnings were told (in `serve`'s log they came out raw, `<frozen os>:361: ScanWarning: ...`)."""
    rules = repository_rules(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScanWarning)
        kept = set(_walk(root, rules))
        return sum(1 for path in _walk(root, IgnoreRules(root, ())) if path not in kept)


def unix_newlines(text: str) -> str:
    """Every line break as "\\n": Windows' "\\r\\n" and classic Mac OS's lone "\\r", which editors (and LSP's
    positions) count as a line break too: a file of lone "\\r" was one line to the chunker and the cursor."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def line_end(text: str, lone_cr: bool = True) -> str:
    """The line end a completion in `text` writes: "\\r\\n" where the text has one (a Windows editor's; Tabby's server
    decides so too); with `lone_cr`, "\\r" where its line breaks are all lone "\\r"s (classic Mac OS's, a line break to
    the prompt too); else "\\n". The model reads "\\n" either way (unix_newlines); the app writes its text back
    (codecomplete/line_ends.py)."""
    if "\r\n" in text:
        return "\r\n"
    return "\r" if lone_cr and "\r" in text and "\n" not in text else "\n"


UTF16_MARKS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def decode_source(data: bytes) -> str:
    """A file's or an editor buffer's bytes as text: UTF-16 where a UTF-16 byte-order mark begins them (Visual Studio
    saves C and C++ sources so, and editors open them as text; read as UTF-8, every ASCII character's zero byte made
    the file look binary), else UTF-8. Undecodable bytes become U+FFFD; the byte-order mark is dropped (it is not
    text, nor a column). A UTF-32 mark begins as UTF-16's: its text holds NULs, and so is binary as before."""
    if data[:2] in UTF16_MARKS:
        return data.decode("utf-16", errors="replace")
    return data.decode("utf-8-sig", errors="replace")


def read_source(root: Path, path: str, max_file_bytes: int = MAX_FILE_BYTES) -> str | None:
    """The text of a file, or None when it is binary (a NUL byte near its start, as git decides; in UTF-16 text, a
    NUL character), too large or minified.

    Text as decode_source reads it (UTF-8, or UTF-16 with a byte-order mark), with Windows' and classic Mac OS's line
    ends "\\n". OSError propagates (an unreadable file, or a file swapped since the scan for a link the scan would not
    keep).
    """
    if os.path.islink(root / path):  # a link the scan kept: read the file it names now, if the scan would keep it
        target = (root / path).resolve()
        inside = target.relative_to(root).as_posix() if target.is_relative_to(root) else None
        rules = repository_rules(root)
        if inside is None or _skipped_by_name(inside) or ignored_with_folders(rules, inside):
            raise OSError(errno.ELOOP, "a symbolic link the scan would not follow", path)
        path = inside
    limit = _size_limit(path, max_file_bytes)
    data = _read_inside(root, path, limit + 1)
    if data is None:
        raise OSError(errno.EINVAL, "not a regular file", path)  # swapped for a FIFO or device since the scan
    utf16 = data[:2] in UTF16_MARKS
    if len(data) > limit or not utf16 and b"\0" in data[:SNIFF_BYTES]:
        return None         # (a binary file is not decoded whole first: most of a repository's left-out files are)
    text = decode_source(data)
    if utf16 and "\0" in text[:SNIFF_BYTES // 2]:
        return None
    text = unix_newlines(text)
    if _is_notebook(path):
        text = notebook_code(text)
        if text is None or len(text) > max_file_bytes:
            return None
    if len(text) > 4 * MINIFIED_LINE_CHARS and len(text) > MINIFIED_LINE_CHARS * (text.count("\n") + 1):
        return None
    return text


def _is_notebook(path: str) -> bool:
    """Whether ``path`` is a Jupyter notebook's (read as its code cells: notebook_code)."""
    return path.lower().endswith(NOTEBOOK_SUFFIX)


def _size_limit(path: str, max_file_bytes: int) -> int:
    """The largest file read at ``path``: a notebook's code is a small part of it."""
    return max_file_bytes * NOTEBOOK_BYTES_FACTOR if _is_notebook(path) else max_file_bytes


_MAGIC = re.compile(r"^(\s*)([%!?])", re.MULTILINE)     # IPython's `%matplotlib inline`, `!pip install x`, `?obj`


def notebook_code(text: str) -> str | None:
    """A Jupyter notebook's code cells as one Python file, in jupytext's percent format (a `# %%` line before each
    cell; IPython's magics and shell lines commented out): its code without the outputs (plots as base64, tables) that
    are most of its bytes, which made it look minified, and without the JSON around it. None for text that is no
    notebook, or a notebook of another kernel's language than Python."""
    try:
        notebook = json.loads(text)
    except ValueError:
        return None
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        return None
    metadata = notebook.get("metadata") if isinstance(notebook.get("metadata"), dict) else {}
    kernel, info = metadata.get("kernelspec"), metadata.get("language_info")
    language = (kernel.get("language") if isinstance(kernel, dict) else None) or (
        info.get("name") if isinstance(info, dict) else None) or "python"
    if not isinstance(language, str) or language.lower() != "python":
        return None
    cells = []
    for cell in notebook["cells"]:
        if isinstance(cell, dict) and cell.get("cell_type") == "code":
            source = cell.get("source", "")
            if isinstance(source, list):
                source = "".join(line for line in source if isinstance(line, str))
            if isinstance(source, str):
                cells.append("# %%\n" + _MAGIC.sub(r"\1# \2", unix_newlines(source).rstrip("\n")))
    return "\n\n".join(cells) + "\n" if cells else ""


def _read_inside(root: Path, path: str, limit: int) -> bytes | None:
    """read_regular_file of ``root / path`` that follows no link on the way, not even in a folder: one checked
    before (a file swapped for a link to a secret since the scan was seen as a file) cannot be read (ELOOP)."""
    nofollow = getattr(os, "O_NOFOLLOW", 0)  # (not on Windows, where links need rights to make)
    *folders, name = path.split("/")
    if os.open not in os.supports_dir_fd:
        # Windows opens no folder and no file relative to one: each folder is checked by name instead, which a
        # link made between the check and the read could still pass (making one there needs rights or developer mode).
        for depth in range(1, len(folders) + 1):
            inner = root.joinpath(*folders[:depth])
            if _is_link(inner):
                raise OSError(errno.ELOOP, "a symbolic link the scan would not follow", path)
        return read_regular_file(root.joinpath(*folders, name), limit, follow_links=False)
    folder = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        for part in folders:
            inner = os.open(part, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | nofollow, dir_fd=folder)
            os.close(folder)
            folder = inner
        return read_regular_file(Path(name), limit, follow_links=False, dir_fd=folder)
    finally:
        os.close(folder)


def lies_within(path: Path, root: Path) -> bool:
    """Whether ``path`` (resolved; it need not exist yet) is ``root`` or inside it, as the disk sees it: on macOS's
    default disk, which ignores case, ~/Proj/.cache is inside ~/proj, though resolve() keeps each spelling."""
    return relative_within(path, root) is not None


def relative_within(path: Path, root: Path) -> str | None:
    """``path`` (resolved) as a posix path relative to ``root``, where it lies within it as the disk sees it (see
    lies_within; the part below the root keeps the spelling given), else None."""
    if path.is_relative_to(root):
        return path.relative_to(root).as_posix()
    try:
        root_status = os.stat(root)
    except (OSError, ValueError):
        return None
    for folder in (path, *path.parents):
        try:
            if os.path.samestat(os.stat(folder), root_status):
                return path.relative_to(folder).as_posix()
        except (OSError, ValueError):       # not there yet
            continue
    return None


IO_REPARSE_TAG_MOUNT_POINT = 0xA0000003    # a junction's reparse tag (stat names it on Windows only)


def _is_link(path) -> bool:
    """A symbolic link, or a Windows junction: a link to a folder (anywhere) that any user may make, which
    os.path.islink does not call a link."""
    try:
        status = os.lstat(path)     # (one call, as os.path.islink's: the walk asks it of every folder)
    except (OSError, ValueError):
        return False
    return stat.S_ISLNK(status.st_mode) or getattr(status, "st_reparse_tag", 0) == IO_REPARSE_TAG_MOUNT_POINT


def _skipped_by_name(path: str) -> bool:
    parts = [part for part in path.split("/") if part and part != "."]    # (PurePosixPath(path).parts, a fifth of the
    return (                                                                # time: asked of every file of the walk)
        any(part in SKIPPED_DIRS for part in parts[:-1])
        or parts[-1] in SKIPPED_NAMES
        or parts[-1].lower().endswith(SKIPPED_SUFFIXES)
    )


def _walk(root: Path, rules: IgnoreRules) -> Iterator[str]:
    """Every file under ``root`` that the ignore rules keep, without following directory links, lazily."""

    def unreadable(error: OSError) -> None:
        _warn(Path(error.filename).relative_to(root).as_posix(), error.strerror or "unreadable folder")

    for directory, dirnames, filenames in os.walk(root, onerror=unreadable):
        relative = Path(directory).relative_to(root).as_posix()
        prefix = "" if relative == "." else relative + "/"
        if prefix.count("/") >= MAX_DEPTH and dirnames:  # os.walk recurses: a hostile depth would overflow it
            _warn(relative, f"folders nested deeper than {MAX_DEPTH} levels")
            dirnames.clear()
        if prefix and _a_git_folder(directory, filenames):
            dirnames.clear()
            continue
        dirnames[:] = _kept_folders(directory, prefix, dirnames, rules)
        yield from _kept_files(prefix, filenames, rules)


def _kept_folders(directory: str, prefix: str, names: Iterable[str], rules: IgnoreRules) -> list[str]:
    """The folders named ``names`` in ``directory`` (``prefix``: its path below the root, with a "/") that the walk
    enters, sorted."""
    return sorted(d for d in names if d not in SKIPPED_DIRS and not _is_link(os.path.join(directory, d))
                  and not rules.ignored(prefix + d, is_dir=True))


def _a_git_folder(directory: str, file_names: Iterable[str]) -> bool:
    """Whether ``directory``, whose files are ``file_names``, is a git folder (a bare repository committed as files,
    such as ``vendor/tool.git``): git's files, not sources, whose config may hold a remote's token, as a checkout's
    ``.git`` (skipped by name) may. The walk leaves it out as it lists it: no look into other folders."""
    return "HEAD" in file_names and _is_git_dir(Path(directory))


def _kept_files(prefix: str, names: Iterable[str], rules: IgnoreRules) -> Iterator[str]:
    return (prefix + f for f in names if f != ".git" and not rules.ignored(prefix + f))


def list_folder(root: Path, folder: str, rules: IgnoreRules, max_file_bytes: int = MAX_FILE_BYTES,
                known_files: Container[str] = frozenset(), known_folders: Container[str] = frozenset()
                ) -> tuple[list[SourceFile], list[str]] | None:
    """One folder as the walk sees it (``folder``: posix, relative to the root, "" for the root): the files in it that
    the walk would yield and the subfolders it would enter, as paths relative to the root, but for those known
    (not looked at); None when it is gone, unreadable, or reached through a link (the walk never enters one).
    ``rules``: ``repository_rules(root)``."""
    parts = folder.split("/") if folder else []
    if any(_is_link(root.joinpath(*parts[:n])) for n in range(1, len(parts) + 1)):
        return None
    directory = os.path.join(root, *parts)
    try:
        with os.scandir(directory) as listing:
            names = [(entry.name, entry.is_dir()) for entry in listing]   # (is_dir follows a link, as os.walk's)
    except OSError:
        return None
    prefix = folder + "/" if folder else ""
    if prefix and _a_git_folder(directory, (n for n, is_dir in names if not is_dir)):
        return [], []
    folders = [prefix + d for d in _kept_folders(directory, prefix, (n for n, is_dir in names if is_dir
                                                                     and prefix + n not in known_folders), rules)
               ] if len(parts) < MAX_DEPTH else []
    sources = []
    for path in _kept_files(prefix, (n for n, is_dir in names if not is_dir and prefix + n not in known_files), rules):
        if not _skipped_by_name(path):
            source = _stat(root, path, max_file_bytes, rules)
            if source is not None:
                sources.append(source)
    return sources, folders


class FolderListing(NamedTuple):
    """One folder as the walk sees it, with what may change that while its names stay as they were."""

    files: tuple[str, ...]      # the files the walk looks at in it (a stat each), as paths relative to the root
    folders: tuple[str, ...]    # the subfolders it enters
    ignore_files: bool          # whether it holds an ignore file (.gitignore, .codecompleteignore)
    steady: bool                # no name in it is a link (whose target decides), nor a git folder's HEAD (its text)
    repository: bool            # it holds a .git: whether it is a nested repository, with rules of its own, may change


def folder_listing(root: Path, folder: str, rules: IgnoreRules) -> FolderListing | None:
    """``folder`` (posix, relative to the root, "" for the root) as the walk lists it: the same decisions, without a
    stat of its files; None when it is gone or unreadable. ``rules``: ``repository_rules(root)``."""
    directory = os.path.join(root, folder)
    try:
        with os.scandir(directory) as listing:
            names = [(entry.name, _is_folder(entry), entry.is_symlink()) for entry in listing]
    except OSError:
        return None
    prefix = folder + "/" if folder else ""
    file_names = [name for name, is_dir, _ in names if not is_dir]
    ignore_files = any(name in rules.filenames for name in file_names)
    steady = "HEAD" not in file_names and not any(link for _, _, link in names)
    repository = bool(prefix) and any(name == ".git" for name, _, _ in names)
    if prefix and _a_git_folder(directory, file_names):
        return FolderListing((), (), ignore_files, steady, repository)
    subfolders = (name for name, is_dir, _ in names if is_dir)
    folders = [prefix + name for name in _kept_folders(directory, prefix, subfolders, rules)
               ] if prefix.count("/") < MAX_DEPTH else []
    files = [path for path in _kept_files(prefix, file_names, rules) if not _skipped_by_name(path)]
    return FolderListing(tuple(files), tuple(folders), ignore_files, steady, repository)


def _is_folder(entry: os.DirEntry) -> bool:
    """Whether os.walk takes the entry for a folder (a link to one too)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def walked_source(root: Path, path: str, max_file_bytes: int, rules: IgnoreRules) -> SourceFile | None:
    """A file of a ``folder_listing`` as the walk yields it now (a stat), or None where the walk leaves it out."""
    return _stat(root, path, max_file_bytes, rules)


def repository_rules(root: Path) -> IgnoreRules:
    """The ignore rules the walk honours."""
    return IgnoreRules(root, (".gitignore", IGNORE_FILE), git_exclude=True)


def _stat(root: Path, path: str, max_file_bytes: int, rules: IgnoreRules | None = None) -> SourceFile | None:
    """The file's size and mtime, or None (with a warning where the user can act) if it is not a candidate. A link
    is one if its target is: inside the repository, and a file the scan itself would keep (`rules`: the walk's)."""
    try:
        info = os.lstat(os.path.join(root, path))     # (not Path's: its joins took a tenth of a walk's time)
    except OSError:
        return None  # deleted since the walk saw it
    if stat.S_ISLNK(info.st_mode):
        full = root / path
        try:
            target = full.resolve(strict=True)
        except FileNotFoundError:
            return _warn(path, "broken symbolic link")
        except (OSError, RuntimeError):  # RuntimeError: a link loop on Python < 3.13
            return _warn(path, "symbolic link loop")
        if not target.is_relative_to(root):
            return _warn(path, "symbolic link to outside the repository")
        inside = target.relative_to(root).as_posix()
        if _skipped_by_name(inside):
            return None  # a link into .git (its config may hold a remote's token) or node_modules: left out as those
        if ignored_with_folders(rules or repository_rules(root), inside):
            return None  # settings.py -> .env: what the user keeps out of git (secrets) stays out of prompts
        try:
            info = target.stat()
        except OSError as error:
            return _warn(path, error.strerror or "unreadable")
    if not stat.S_ISREG(info.st_mode):
        if not stat.S_ISDIR(info.st_mode):  # a FIFO or device would block or never end
            _warn(path, "not a regular file")
        return None
    if info.st_size > _size_limit(path, max_file_bytes):
        return None
    return SourceFile(path, info.st_size, info.st_mtime_ns, change_time(info), info.st_ino)


def change_time(info: os.stat_result) -> int:
    """When the file last changed by the file clock, whatever its mtime says (`touch -d`, `cp -p`): the inode's
    change time, except on Windows, where st_ctime is the creation time."""
    return info.st_mtime_ns if sys.platform == "win32" else info.st_ctime_ns


def ignored_with_folders(rules: IgnoreRules, path: str) -> bool:
    """Whether the walk would leave `path` out: it or one of its folders is ignored."""
    parts = path.split("/")
    return any(rules.ignored("/".join(parts[:n]), is_dir=True) for n in range(1, len(parts))) or rules.ignored(path)


def _warn(path: str, reason: str) -> None:
    warnings.warn(f"skipped {path}: {reason}", ScanWarning, stacklevel=3)


class IgnoreRules:
    """Gitignore-style rules read from files of the given names in every directory, as git applies them.

    The deepest directory with a matching pattern decides, and within a file the last matching pattern (so
    ``!keep.log`` can re-include); ``.git/info/exclude`` and then the user's global excludes file count as the
    weakest files of the root. Rule files are read only when they are regular files of sane size (git itself
    does not follow a symbolic link named ``.gitignore``).

    Inside a nested repository (a clone in third_party/, a submodule) its own rules decide, as git run there
    decides: its ignore files, its info/exclude and its config's excludes file and ignorecase, not those of the
    folders above it (which decide only whether the walk enters it).
    """

    def __init__(self, root: Path, filenames: tuple[str, ...], git_exclude: bool = False):
        self.root, self.filenames, self.git_exclude = root, filenames, git_exclude
        # (repository, folder in it) -> its files' rules, by file name
        self._specs: dict[tuple[str, str], list[tuple[str, Rules]]] = {}
        self._repositories: dict[str, bool] = {}                # folder below the top -> holds a nested repository
        self._ignorecases: dict[str, bool] = {}                 # repository -> its core.ignorecase
        self._plans: dict[str, list] = {}                       # folder below the top -> the rules deciding in it

    @functools.cached_property
    def _checkout(self) -> tuple[Path, str]:
        """A folder of a checkout (`codecomplete services/api`) keeps the checkout's rules: those of its top and of
        the folders down to the root, asked about the root's path below the top. (Found at the first question, as
        the rule files are read.)"""
        return enclosing_checkout(self.root) if self.git_exclude else (self.root, "")

    @property
    def top(self) -> Path:
        """The checkout's top folder (the root, unless it lies in a checkout): its .git and global rules are read."""
        return self._checkout[0]

    def _ignorecase(self, repository: str) -> bool:
        """core.ignorecase of the repository in folder ``repository`` below the top ("": the top's) (git sets it in a
        repository on a disk that ignores case: macOS, Windows): `secrets.env` then ignores Secrets.env too, as git's
        matching folds ASCII letters. Only the matching folds: the folders whose ignore files are read keep their
        names (Sub/.gitignore, not sub/.gitignore). (Read at the first question: rules made for a listing that finds
        nothing new read no file.)"""
        if repository not in self._ignorecases:
            self._ignorecases[repository] = self.git_exclude and _is_true(_git_setting(self.top / repository,
                                                                                      "ignorecase"))
        return self._ignorecases[repository]

    def ignored(self, path: str, is_dir: bool = False) -> bool:
        """Whether ``path`` (posix, relative to the root; a folder if ``is_dir``) is ignored."""
        full = self._checkout[1] + path
        folder = full.rpartition("/")[0]
        plan = self._plans.get(folder)
        if plan is None:
            plan = self._plans[folder] = self._plan(folder)
        for offset, outside, specs in plan:
            below = full[offset:]
            for name, rules in reversed(specs):
                if outside and name in GIT_IGNORE_FILES:
                    continue
                decision = rules.decide(below, is_dir)
                if decision is not None:
                    return decision
        return False

    def outer_rules(self) -> tuple:
        """What decides everywhere beside the folders' own ignore files, as these rules read it: the checkout the root
        lies in, the root's core.ignorecase, the patterns of info/exclude and the user's excludes file. Equal for two
        rules objects, they decide alike wherever the folders' ignore files read alike (`folder_rules`)."""
        top, below = self._checkout
        excludes = [rules.patterns for name, rules in self._specs_of("", "") if name == GIT_EXCLUDES]
        return top, below, self._ignorecase(""), excludes

    def folder_rules(self, folder: str) -> list:
        """The patterns of the ignore files in ``folder`` (below the root, outside any nested repository) as these
        rules read them."""
        directory = (self._checkout[1] + folder).rstrip("/")
        return [(name, rules.patterns) for name, rules in self._specs_of("", directory) if name != GIT_EXCLUDES]

    def _plan(self, folder: str) -> list[tuple[int, bool, list[tuple[str, Rules]]]]:
        """The rules that decide the paths in ``folder`` (below the top; "" for the top), deepest folder first: for
        each folder on the way that has any, where a path's part below that folder begins, whether it lies above the
        path's repository (there only codecomplete's own files decide: git's are another repository's), and its files'
        rules. The same for every path in the folder, so found once for all of them: asked path by path (every folder
        up to the top, the joins of their names), it took 1.6 s of a walk through 37k files."""
        parts = folder.split("/") if folder else []
        path_parts = [*parts, ""]       # (a path in the folder: only its folders are looked at)
        start = self._repository_depth(path_parts)
        plan = []
        for depth in range(len(parts), -1, -1):  # deepest directory first
            holder = start if depth >= start else self._repository_depth(path_parts[:depth + 1])
            specs = self._specs_of("/".join(parts[:holder]), "/".join(parts[holder:depth]))
            if specs:
                plan.append((len("/".join(parts[:depth])) + 1 if depth else 0, depth < start, specs))
        return plan

    def _repository_depth(self, parts: list[str]) -> int:
        """How many of the path's leading parts name the folder of the deepest repository holding it (0: the top)."""
        if not self.git_exclude:
            return 0
        for depth in range(len(parts) - 1, 0, -1):
            folder = "/".join(parts[:depth])
            if folder not in self._repositories:
                self._repositories[folder] = is_repository(self.top / folder)
            if self._repositories[folder]:
                return depth
        return 0

    def _specs_of(self, repository: str, directory: str) -> list[tuple[str, Rules]]:
        """The rules of the files in ``directory`` of the repository in folder ``repository`` (both below its top),
        with each file's name (GIT_EXCLUDES for info/exclude and the excludes file)."""
        if (repository, directory) not in self._specs:
            top = self.top / repository
            # (a folder's own ignore file is not followed where it is a link, as git reads it; info/exclude and the
            # excludes file are, wherever they are: a shared list, dotfiles)
            files = [(name, top / directory / name, False) for name in self.filenames]
            if self.git_exclude and not directory:
                files[:0] = [(GIT_EXCLUDES, file, True)
                             for file in (*global_excludes_files(top), git_dir(top) / "info" / "exclude")]
            specs = []
            for name, file, follow_links in files:
                text = _read_rules(file, follow_links, MAX_IGNORE_BYTES)
                if text is not None:
                    # git's lines: not at a form feed or U+2028
                    specs.append((name, Rules(text.split("\n"), self._ignorecase(repository))))
            self._specs[repository, directory] = specs
        return self._specs[repository, directory]


def read_regular_file(path: Path, limit: int, follow_links: bool = True, dir_fd: int | None = None) -> bytes | None:
    """Up to ``limit`` bytes of a regular file, or None when it is not one (a FIFO, a device, a folder).

    Opened without blocking (a FIFO would wait for a writer forever) and checked after opening (a device such
    as /dev/zero never ends), so the check cannot be raced. Without ``follow_links`` a symbolic link is refused
    with OSError, like a missing or unreadable file. ``dir_fd``: ``path`` is relative to that open folder.
    """
    # Windows has no O_NONBLOCK (nor FIFOs among files), and opens a descriptor in text mode unless given O_BINARY:
    # "\r\n" would be read as "\n" and a Ctrl-Z byte would end the file there.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    if not follow_links:
        if hasattr(os, "O_NOFOLLOW"):
            flags |= os.O_NOFOLLOW
        elif _is_link(path):     # Windows: checked by name, before the open
            raise OSError(errno.ELOOP, "a symbolic link, not followed", str(path))
    with open(path, "rb", opener=lambda name, _flags: os.open(name, flags, dir_fd=dir_fd)) as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            return None
        return file.read(limit)


def _read_rules(path: Path, follow_links: bool = False, limit: int = MAX_RULES_BYTES) -> str | None:
    """The text of an ignore or config file; None when there is none that can be read as a small regular file."""
    try:
        data = read_regular_file(path, limit + 1, follow_links)
    except (OSError, ValueError):  # ValueError: a NUL in a path that a .git file or a git config names
        return None
    if data is None or len(data) > limit:
        return None
    # Bytes that are not UTF-8 as the walk's file names hold them, so that they match; a byte-order mark (Windows
    # editors write one) dropped, as git does, or it would be part of the first pattern, which would match nothing.
    return os.fsdecode(data.removeprefix(codecs.BOM_UTF8))


def enclosing_checkout(root: Path) -> tuple[Path, str]:
    """(the top folder of the git checkout ``root`` lies in, ``root``'s path below it with a "/"), as git finds it:
    the nearest folder above with a ``.git``; (root, "") when root has its own or none is found. A checkout another
    user owns is not taken, as git's safe.directory refuses it: a /tmp/.git does not decide for every folder in /tmp.
    """
    for folder in (root, *root.parents):
        if os.path.lexists(folder / ".git"):
            if folder == root or not _owned(folder):
                break
            return folder, root.relative_to(folder).as_posix() + "/"
    return root, ""


def _owned(folder: Path) -> bool:
    """Whether this process's user owns ``folder`` (always, on Windows: git checks an owner's SID there)."""
    try:
        return not hasattr(os, "geteuid") or os.stat(folder).st_uid == os.geteuid()
    except OSError:
        return False


def git_dir(root: Path) -> Path:
    """The folder that holds the repository's ``info/exclude``: ``.git``; or, when ``.git`` is a file (a linked
    worktree, a submodule), the folder its ``gitdir:`` line names, or that folder's ``commondir`` (a worktree's
    exclude file is its main repository's), as git finds it. Read, never run: at worst a wrong path, read as rules."""
    return _common_dir(_own_git_dir(root))


def _own_git_dir(root: Path) -> Path:
    """``root``'s ``.git`` folder, or the one its ``.git`` file's ``gitdir:`` line names (relative to the root)."""
    folder = root / ".git"
    text = _read_rules(folder)  # None for a folder
    if text is not None and text.startswith("gitdir:"):
        folder = root / text.partition("\n")[0][len("gitdir:"):].strip()  # relative to the root, or absolute
    return folder


def _common_dir(folder: Path) -> Path:
    common = _read_rules(folder / "commondir", follow_links=True)
    return folder / common.strip() if common and common.strip() else folder


_HEAD = re.compile(r"ref:\s*refs/.*|[0-9a-f]{40}(?:[0-9a-f]{24})?\s*", re.DOTALL)


def is_repository(folder: Path) -> bool:
    """Whether ``folder`` holds a git repository as git tells one (is_git_directory): its ``.git`` (a folder, or a
    file naming one) has a HEAD naming a branch or a commit, and objects and refs folders (a worktree's in its
    commondir). An empty .git, or a .git folder an archive brought, is no repository: git treats its folder as a
    plain one of the repository above."""
    return os.path.lexists(folder / ".git") and _is_git_dir(_own_git_dir(folder))


def _is_git_dir(folder: Path) -> bool:
    """git's is_git_directory: a HEAD naming a branch or a commit, and objects and refs (in its commondir)."""
    head = _read_rules(folder / "HEAD", follow_links=True)
    common = _common_dir(folder)
    return (head is not None and _HEAD.fullmatch(head) is not None
            and os.path.isdir(common / "objects") and os.path.isdir(common / "refs"))


def git_folder_around(root: Path) -> Path | None:
    """The git folder ``root`` is or lies in (a bare repository, a checkout's ``.git``, a folder of either), as git
    finds one going up (setup_git_directory: the first folder with a ``.git`` is a work tree, one that is itself a
    git folder has none); None for a work tree or no repository. Its files are git's, not sources: config may hold
    a remote's token."""
    for folder in (root, *root.parents):
        if os.path.lexists(folder / ".git"):
            return None
        if _is_git_dir(folder):
            return folder
    return None


def global_excludes_files(root: Path) -> list[Path]:
    """The user's global excludes file as git finds it: core.excludesFile in the repository's .git/config,
    ~/.gitconfig or the XDG git config (or a file they include), else $XDG_CONFIG_HOME/git/ignore. Read from the
    files themselves: git is never run. A relative setting names a file in the repository's top folder, where git
    runs from (not the current folder)."""
    home = Path(os.environ.get("HOME") or "/nonexistent")
    configured = _git_setting(root, "excludesfile")
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "git"
    # (an absolute `configured` stays itself)
    return [root / gitconfig.expand_path(configured, home) if configured else xdg / "ignore"]


def _git_setting(root: Path, name: str) -> str | None:
    """A [core] setting (lower case) as git finds it: the later file wins, the repository's own config last, a
    setting in the environment over all (read as text: nothing in it is run)."""
    home = Path(os.environ.get("HOME") or "/nonexistent")
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "git"
    own = _own_git_dir(root)
    repository = gitconfig.Repository(own if os.path.lexists(own) else None, None, None)
    if repository.git_dir is not None:
        head = _read_rules(own / "HEAD", follow_links=True) or ""
        branch = head.partition("\n")[0].removeprefix("ref:").strip() if head.startswith("ref:") else ""
        repository = repository._replace(branch=branch.removeprefix("refs/heads/")
                                         if branch.startswith("refs/heads/") else None)
    local = git_dir(root) / "config"
    configs = (*_system_and_global_configs(home, xdg), local)
    if _is_true(_last(_config_entries(local, home, repository), "extensions", "worktreeconfig")):
        configs += (own / "config.worktree",)     # `git config --worktree`: the worktree's own, read last
    # hasconfig:remote.*.url: asks the remotes' URLs, which git gathers first from all of the files (every hasconfig
    # include taken: a file it includes may not name a remote)
    urls = tuple(entry.value for config in configs for entry in _config_entries(config, home, repository)
                 if entry.section == "remote" and entry.subsection is not None and entry.key == "url" and entry.value)
    repository = repository._replace(remote_urls=urls)
    value = None
    for config in configs:
        for entry in _config_entries(config, home, repository):
            if entry.section == "core" and entry.subsection is None and entry.key == name:
                value = "true" if entry.value is None else entry.value or None
    return _environment_setting(name) or value


SYSTEM_CONFIG = Path("/etc/gitconfig")      # where a packaged git keeps its system-wide config (not on Windows)


def _system_and_global_configs(home: Path, xdg: Path) -> list[Path]:
    """The config files git reads before the repository's, as its environment names them: $GIT_CONFIG_SYSTEM (else
    /etc/gitconfig) unless $GIT_CONFIG_NOSYSTEM; $GIT_CONFIG_GLOBAL alone where it is set (empty or /dev/null: none),
    else the XDG config and ~/.gitconfig."""
    files = []
    if not _is_true(os.environ.get("GIT_CONFIG_NOSYSTEM")) and sys.platform != "win32":
        files.append(Path(os.environ.get("GIT_CONFIG_SYSTEM") or SYSTEM_CONFIG))
    configured = os.environ.get("GIT_CONFIG_GLOBAL")
    if configured is None:
        return [*files, xdg / "config", home / ".gitconfig"]
    return [*files, Path(configured)] if configured else files


def _environment_setting(name: str) -> str | None:
    """A [core] setting given as `git -c` gives it through the environment ($GIT_CONFIG_COUNT, with
    $GIT_CONFIG_KEY_<n> and $GIT_CONFIG_VALUE_<n>): it wins over every file, as in git."""
    try:
        count = int(os.environ.get("GIT_CONFIG_COUNT") or 0)
    except ValueError:          # git refuses to run with it
        return None
    value = None
    for n in range(min(count, 10_000)):
        section, _, key = os.environ.get(f"GIT_CONFIG_KEY_{n}", "").rpartition(".")
        if section.lower() == "core" and key.lower() == name:
            value = os.environ.get(f"GIT_CONFIG_VALUE_{n}")
    return value


def _last(entries: Iterable[gitconfig.Entry], section: str, key: str) -> str | None:
    """The last value of section.key (lower case, no subsection) among ``entries``; a bare key is "true"."""
    value = None
    for entry in entries:
        if entry.section == section and entry.subsection is None and entry.key == key:
            value = "true" if entry.value is None else entry.value
    return value


def _is_true(value: str | None) -> bool:
    return value is not None and value.lower() in ("true", "yes", "on", "1")


MAX_INCLUDE_DEPTH = 10  # git's own limit on [include] within [include]: a loop of them ends
# Files included in all, from one config file: a file that includes itself four times over was read 4 ** 10 times
# (git refuses it at once, "exceeded maximum include depth"; no real setup comes near).
MAX_INCLUDES = 100


def _config_entries(config: Path, home: Path, repository: gitconfig.Repository, depth: int = 0,
                    included: list[int] | None = None) -> Iterator[gitconfig.Entry]:
    """The settings of a git config file in order, with those of the files its [include] sections name, and its
    [includeIf] sections whose condition holds for ``repository``, in their place, as git reads them (dotfile setups
    keep settings in an included ~/.gitconfig.local, a work profile in a file included for gitdir:~/work/).
    ``included``: how many files have been included so far (at most MAX_INCLUDES)."""
    included = [0] if included is None else included
    text = _read_rules(config, follow_links=True)  # dotfile managers link these
    for entry in gitconfig.entries(text or ""):
        if entry.key == "path" and entry.value and depth < MAX_INCLUDE_DEPTH and included[0] < MAX_INCLUDES and (
                (entry.section == "include" and entry.subsection is None)
                or (entry.section == "includeif" and entry.subsection is not None
                    and gitconfig.include_condition_holds(entry.subsection, config, repository, home))):
            included[0] += 1
            yield from _config_entries(config.parent / gitconfig.expand_path(entry.value, home), home, repository,
                                       depth + 1, included)
        else:
            yield entry

"""Which files of a repository are worth reading, and reading them.

The files are those git would track: ``git ls-files`` (tracked plus untracked-but-not-ignored) in a git work
tree, else a walk that honours ``.gitignore`` at every level and ``.git/info/exclude`` as git does. Either way a
``.codecompleteignore`` (gitignore syntax, at any level) removes more, and vendored or generated folders, lock
files, minified files, binaries and files over the size limit are left out. Problems that a user may want to
know about (an unreadable file, a broken symbolic link, a link loop or a link out of the repository) are
reported as ``ScanWarning`` and never stop the scan. Nothing outside the root is ever read.
"""

from __future__ import annotations

import os
import stat
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import pathspec

MAX_FILE_BYTES = 512 * 1024  # larger files are almost always generated or data
IGNORE_FILE = ".codecompleteignore"

SKIPPED_DIRS = frozenset({
    ".git", ".hg", ".svn", "node_modules", ".venv", "venv", "__pycache__", "build", "dist", ".tox", ".nox",
    ".mypy_cache", ".pytest_cache", ".ruff_cache", ".eggs", "site-packages", ".next", ".gradle", ".idea",
})
SKIPPED_NAMES = frozenset({
    "package-lock.json", "yarn.lock", "pnpm-lock.yaml", "Cargo.lock", "poetry.lock", "uv.lock", "Pipfile.lock",
    "composer.lock", "go.sum", "Gemfile.lock",
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


class ScanWarning(UserWarning):
    """A file left out of the index for a reason the user may want to fix."""


class SourceFile(NamedTuple):
    """A candidate file: path relative to the root (posix), with what the cache keys on."""

    path: str
    size: int
    mtime_ns: int


def scan_repository(root: Path, max_file_bytes: int = MAX_FILE_BYTES) -> list[SourceFile]:
    """The files of the repository at ``root`` (an absolute, resolved directory), sorted by path."""
    listed = _git_files(root)
    if not listed:
        return sorted(walk_sources(root, max_file_bytes))
    own_rules = IgnoreRules(root, (IGNORE_FILE,))
    found = []
    for path in listed:
        if _skipped_by_name(path) or own_rules.ignored(path):
            continue
        source = _stat(root, path, max_file_bytes)
        if source is not None:
            found.append(source)
    return sorted(found)


def walk_sources(root: Path, max_file_bytes: int = MAX_FILE_BYTES) -> Iterator[SourceFile]:
    """The repository's files as a walk that honours the ignore files finds them, lazily and unsorted: a caller can
    take a few at a time (a server keeping its index fresh)."""
    for path in _walk(root, IgnoreRules(root, (".gitignore", IGNORE_FILE), git_exclude=True)):
        if not _skipped_by_name(path):
            source = _stat(root, path, max_file_bytes)
            if source is not None:
                yield source


def source_file(root: Path, path: str, max_file_bytes: int = MAX_FILE_BYTES) -> SourceFile | None:
    """One file as the scan would list it now (its size and mtime), or None if the scan would leave it out."""
    return None if _skipped_by_name(path) else _stat(root, path, max_file_bytes)


def read_source(root: Path, path: str, max_file_bytes: int = MAX_FILE_BYTES) -> str | None:
    """The text of a file, or None when it is binary, too large or minified.

    Undecodable bytes become U+FFFD and Windows line ends become "\\n". OSError propagates (unreadable file).
    """
    with open(root / path, "rb") as file:
        data = file.read(max_file_bytes + 1)
    if len(data) > max_file_bytes or b"\0" in data[:SNIFF_BYTES]:
        return None
    text = data.decode("utf-8", errors="replace").replace("\r\n", "\n")
    if len(text) > 4 * MINIFIED_LINE_CHARS and len(text) > MINIFIED_LINE_CHARS * (text.count("\n") + 1):
        return None
    return text


def _skipped_by_name(path: str) -> bool:
    parts = PurePosixPath(path).parts
    return (
        any(part in SKIPPED_DIRS for part in parts[:-1])
        or parts[-1] in SKIPPED_NAMES
        or parts[-1].lower().endswith(SKIPPED_SUFFIXES)
    )


def _git_files(root: Path) -> list[str] | None:
    """Files git tracks or would track under ``root``; None when ``root`` is not in a work tree (or no git)."""
    try:
        result = subprocess.run(
            ["git", "-c", "core.quotepath=off", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root, capture_output=True, check=True, timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    # Deleted-but-tracked files and gitlinks (submodules) show up too: _stat drops them.
    return [p for p in result.stdout.decode("utf-8", "surrogateescape").split("\0") if p and not p.endswith("/")]


def _walk(root: Path, rules: IgnoreRules) -> Iterator[str]:
    """Every file under ``root`` that the ignore rules keep, without following directory links, lazily."""
    for directory, dirnames, filenames in os.walk(root):
        relative = Path(directory).relative_to(root).as_posix()
        prefix = "" if relative == "." else relative + "/"
        dirnames[:] = sorted(
            d for d in dirnames
            if d not in SKIPPED_DIRS and not os.path.islink(os.path.join(directory, d))
            and not rules.ignored(prefix + d, is_dir=True)
        )
        yield from (prefix + f for f in filenames if not rules.ignored(prefix + f))


def _stat(root: Path, path: str, max_file_bytes: int) -> SourceFile | None:
    """The file's size and mtime, or None (with a warning where the user can act) if it is not a candidate."""
    full = root / path
    try:
        info = full.lstat()
    except OSError:
        return None  # deleted since git listed it
    if stat.S_ISLNK(info.st_mode):
        try:
            target = full.resolve(strict=True)
        except FileNotFoundError:
            return _warn(path, "broken symbolic link")
        except (OSError, RuntimeError):  # RuntimeError: a link loop on Python < 3.13
            return _warn(path, "symbolic link loop")
        if not target.is_relative_to(root):
            return _warn(path, "symbolic link to outside the repository")
        info = target.stat()
    if not stat.S_ISREG(info.st_mode):
        if not stat.S_ISDIR(info.st_mode):  # a FIFO or device would block or never end
            _warn(path, "not a regular file")
        return None
    if info.st_size > max_file_bytes:
        return None
    return SourceFile(path, info.st_size, info.st_mtime_ns)


def _warn(path: str, reason: str) -> None:
    warnings.warn(f"skipped {path}: {reason}", ScanWarning, stacklevel=3)


class IgnoreRules:
    """Gitignore-style rules read from files of the given names in every directory, as git applies them.

    The deepest directory with a matching pattern decides, and within a file the last matching pattern (so
    ``!keep.log`` can re-include); ``.git/info/exclude`` counts as the weakest file of the root.
    """

    def __init__(self, root: Path, filenames: tuple[str, ...], git_exclude: bool = False):
        self.root, self.filenames, self.git_exclude = root, filenames, git_exclude
        self._specs: dict[str, list[pathspec.GitIgnoreSpec]] = {}

    def ignored(self, path: str, is_dir: bool = False) -> bool:
        """Whether ``path`` (posix, relative to the root) is ignored; directories are tested with a slash."""
        parts = path.split("/")
        for depth in range(len(parts) - 1, -1, -1):  # deepest directory first
            directory = "/".join(parts[:depth])
            below = "/".join(parts[depth:]) + ("/" if is_dir else "")
            for spec in reversed(self._specs_of(directory)):
                decision = spec.check_file(below).include
                if decision is not None:
                    return decision
        return False

    def _specs_of(self, directory: str) -> list[pathspec.GitIgnoreSpec]:
        import pathspec  # noqa: F811 (on first use: keeps `import prompts` quick)

        if directory not in self._specs:
            folder = self.root / directory
            names = ([".git/info/exclude"] if self.git_exclude and not directory else []) + list(self.filenames)
            specs = []
            for name in names:
                try:
                    lines = (folder / name).read_text(encoding="utf-8", errors="replace").splitlines()
                except OSError:
                    continue
                specs.append(pathspec.GitIgnoreSpec.from_lines(lines))
            self._specs[directory] = specs
        return self._specs[directory]

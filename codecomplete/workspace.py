"""The user's repository: check the paths the user typed, then index it (read-only).

The checks run before the model loads, so a typo costs milliseconds, not a model load.
Nothing is ever written inside the repository: the index cache lives in the user cache dir.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from .errors import UsageError
from .render import progress_bar, warn


def repository(path: str) -> Path:
    root = Path(path).expanduser()
    if not root.exists():
        raise UsageError(f"repository not found: {path}")
    if not root.is_dir():
        raise UsageError(f"not a folder: {path} (give the repository, then --file {path})")
    return root.resolve()


def file_in(root: Path, path: str, must_exist: bool = True) -> str:
    """The file as a posix path relative to root.

    A relative path is looked up in the repository first, then in the current directory,
    so both `codecomplete ~/proj --file src/a.py` and an editor's `--file %` work.
    """
    given = Path(path).expanduser()
    candidates = [given] if given.is_absolute() else [root / given, Path.cwd() / given]
    found = next((c for c in candidates if c.exists()), None)
    if found is None and must_exist:
        raise UsageError(f"file not found: {path}")
    resolved = (found or candidates[0]).resolve()
    if not resolved.is_relative_to(root):
        raise UsageError(f"{path} is outside the repository {root}")
    if resolved.is_dir():
        raise UsageError(f"{path} is a folder, not a file")
    return resolved.relative_to(root).as_posix()


def index(root: Path):
    """Scan and chunk the repository (cached across runs), with a progress bar on stderr.

    Files the scan skips (unreadable, broken links) become one warning line each."""
    from prompts import ScanWarning, index_repository

    with warnings.catch_warnings(record=True) as caught, progress_bar(f"Indexing {root.name}") as progress:
        warnings.simplefilter("always", ScanWarning)
        repo_index = index_repository(root, progress=progress)
    for warning in caught:
        if issubclass(warning.category, ScanWarning):
            warn(str(warning.message))
    return repo_index

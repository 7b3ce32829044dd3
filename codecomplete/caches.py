"""The cache folder (converted models, the repository index): chosen once, up front, never inside the repository.

prompts and models each read $CODECOMPLETE_CACHE_DIR; the app decides once which folder that is for this run
and sets it, so both write to the same place and a problem is said once, before any work. The choice: the
folder the user set, else the user cache dir; one that is inside the repository (a cache dir set to
`REPO/.cache`, or HOME being the repository), that is not a folder, cannot be written, belongs to another user or
everyone may write to (what is cached is read back: weights, the index) is passed over, with
a warning; when none is usable, a temporary folder serves this run and is removed at exit (where none can be made,
an AppError: exit 1).
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from prompts.scan import lies_within

from .errors import AppError
from .render import warn

VARIABLE = "CODECOMPLETE_CACHE_DIR"
_chosen: Path | None = None


def prepare(root: Path | None = None) -> Path:
    """The cache folder for this run (set in $CODECOMPLETE_CACHE_DIR); `root` is the repository, if any."""
    global _chosen
    if _chosen is not None:
        return _chosen
    problems = []
    for folder in _candidates():
        problem = _problem(folder, root)
        if problem is None:
            _chosen, lasting = folder.resolve(), ""
            break
        problems.append(f"{folder} {problem}")
    else:
        try:
            _chosen, lasting = Path(tempfile.mkdtemp(prefix="codecomplete-cache-")), " for this run only"
        except OSError as exc:          # a full disk under the temporary folder too: the machine's failure, said
            raise AppError(f"no folder can hold the caches: {'; nor '.join(problems)}; nor a temporary folder "
                           f"({exc.strerror or exc}): set {VARIABLE} to a writable folder of your own") from None
        atexit.register(shutil.rmtree, _chosen, ignore_errors=True)
    if problems:
        warn(f"not caching in {'; nor in '.join(problems)}: caching in {_chosen}{lasting} (set {VARIABLE} to choose)")
    os.environ[VARIABLE] = str(_chosen)
    return _chosen


def _candidates() -> list[Path]:
    import platformdirs

    default = Path(platformdirs.user_cache_dir("codecomplete"))
    configured = os.environ.get(VARIABLE)
    return [Path(os.path.expanduser(configured)), default] if configured else [default]


def _problem(folder: Path, root: Path | None) -> str | None:
    """Why `folder` cannot hold the caches, or None."""
    try:
        resolved = folder.resolve()
    except (OSError, RuntimeError) as exc:      # a link loop
        return f"cannot be resolved ({getattr(exc, 'strerror', None) or exc})"
    if root is not None and lies_within(resolved, root.resolve()):
        return "is inside the repository, where nothing is ever written"
    if resolved.exists() and not resolved.is_dir():
        return "is not a folder"
    try:
        resolved.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=resolved):     # writable for real (root ignores permission bits)
            pass
        owner, mode = resolved.stat().st_uid, resolved.stat().st_mode
    except OSError as exc:
        return f"cannot be written ({exc.strerror or exc})"
    # What is cached is read back as code's input (converted weights, the index): a folder that another user
    # owns or anyone may write to would let them choose it. Windows' stat has no owner and shows every folder as
    # mode 0777 (it was passed over every run, the model converted anew): there this cannot be checked.
    if not hasattr(os, "geteuid"):
        return None
    if owner != os.geteuid():
        return "belongs to another user"
    if mode & 0o002:
        return "can be written by every user"
    return None

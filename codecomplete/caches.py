"""The cache folder (converted models, the repository index): chosen once, up front, never inside the repository.

prompts and models each read $CODECOMPLETE_CACHE_DIR; the app decides once which folder that is for this run
and sets it, so both write to the same place and a problem is said once, before any work. The choice: the
folder the user set, else the user cache dir; one that is inside the repository (a cache dir set to
`REPO/.cache`, or HOME being the repository), that is not a folder, cannot be written, belongs to another user or
everyone may write to (what is cached is read back: weights, the index) is passed over, with
a warning; when none is usable, a temporary folder serves this run and is removed at exit, or by a later run if this
one is killed outright (where none can be made, an AppError: exit 1).
"""
from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from prompts.scan import lies_within

from .errors import AppError
from .render import warn

VARIABLE = "CODECOMPLETE_CACHE_DIR"
TEMPORARY_PREFIX = "codecomplete-cache-"
IN_USE = ".in-use"          # the file in a temporary cache folder its run holds a lock on
_chosen: Path | None = None
_held: list = []            # the open lock files of this process's temporary cache folders


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
            _chosen, lasting = _temporary_folder(), " for this run only"
        except OSError as exc:          # a full disk under the temporary folder too: the machine's failure, said
            raise AppError(f"no folder can hold the caches: {'; nor '.join(problems)}; nor a temporary folder "
                           f"({exc.strerror or exc}): set {VARIABLE} to a writable folder of your own") from None
    if problems:
        warn(f"not caching in {'; nor in '.join(problems)}: caching in {_chosen}{lasting} (set {VARIABLE} to choose)")
    os.environ[VARIABLE] = str(_chosen)
    return _chosen


def _temporary_folder() -> Path:
    """A cache folder for this run only, removed at exit. A run killed outright (SIGKILL: no exit handlers) cannot
    remove its own, converted model and all: a run holds a lock on a file in its folder while it lives, and each new
    temporary folder first removes those whose lock nobody holds (where there are no locks, Windows, none)."""
    _remove_abandoned_folders()
    folder = Path(tempfile.mkdtemp(prefix=TEMPORARY_PREFIX))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    with contextlib.suppress(ImportError, OSError):     # (without it, this folder is merely never taken for dead)
        import fcntl
        held = open(folder / f"{IN_USE}.new", "w", encoding="utf-8")  # noqa: SIM115 (open while this run lives)
        fcntl.flock(held, fcntl.LOCK_SH)
        os.replace(folder / f"{IN_USE}.new", folder / IN_USE)     # only ever seen locked
        _held.append(held)
    return folder


def _remove_abandoned_folders() -> None:
    try:
        import fcntl
        folders = list(Path(tempfile.gettempdir()).glob(f"{TEMPORARY_PREFIX}*"))
    except (ImportError, OSError):
        return
    for folder in folders:
        # Only our own folders, with the lock file a run makes (one without it may be a run making it now).
        with contextlib.suppress(OSError):
            if folder.is_symlink() or not folder.is_dir() or folder.stat().st_uid != os.geteuid():
                continue
            with open(folder / IN_USE, encoding="utf-8") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)    # BlockingIOError (an OSError): a run holds it
                shutil.rmtree(folder, ignore_errors=True)


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

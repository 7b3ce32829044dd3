"""The user's repository: check the paths the user typed, then index it (read-only).

The checks run before the model loads, so a typo costs milliseconds, not a model load.
Nothing is ever written inside the repository: the index cache lives in the user cache dir.
"""
from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path

from prompts.scan import MAX_BUFFER_BYTES, decode_source, git_folder_around, relative_within

from . import caches
from .errors import UsageError
from .render import progress_bar, warn


def repository(path: str, serving: bool = False) -> Path:
    """The repository's folder, resolved (``serving``: for `serve`, which takes no --file)."""
    root = Path(os.path.expanduser(path))
    if not _exists(root, path):
        raise UsageError(f"repository not found: {path}")
    if not root.is_dir():
        hint = "give the repository's folder; an editor names the file in each request" if serving else \
            f"give the repository, then --file {path}"
        raise UsageError(f"not a folder: {path} ({hint})")
    _check_listable(root, path)
    root = root.resolve()
    _check_work_tree(root, path)
    caches.prepare(root)        # before any work: the caches never go inside the repository
    return root


def _check_listable(root: Path, shown: str) -> None:
    """A folder whose names cannot be read (another user's, mode 700; or 311), or whose files cannot be reached
    (444), has no files to index: `--ask` said "nothing to index: no text files with content", and `serve` served no
    context for good, the cause unsaid."""
    try:
        with os.scandir(root):
            pass
        os.stat(os.path.join(root, "."))        # a name looked up in it: the folder must be searchable
    except OSError as exc:
        raise UsageError(f"cannot read the repository {shown}: {exc.strerror or exc}") from None


def _check_work_tree(root: Path, shown: str) -> None:
    """A bare repository, a checkout's .git or a folder in either holds git's own files, none checked out: indexed,
    they went into prompts, config with a remote's token too. Refused, as git refuses it ("must be run in a work
    tree")."""
    git = git_folder_around(root)
    if git is None:
        return
    inside = "" if git == root else "inside "
    if git.name == ".git":
        raise UsageError(f"{shown} is {inside}git's own folder {git}, not a checkout: give the repository, {git.parent}")
    raise UsageError(f"{shown} is {inside}the bare git repository {git}, which has no files checked out: give a "
                     f"checkout of it (git clone, git worktree add)")


def _cwd() -> list[Path]:
    """The current directory, or none when it was deleted under us."""
    try:
        return [Path.cwd()]
    except OSError:
        return []


def _exists(path: Path, shown: str) -> bool:
    """Path.exists, with the errors it does not swallow (a name too long, a permission) as usage errors."""
    try:
        path.stat()
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise UsageError(f"{shown}: {exc.strerror}") from None
    except UnicodeEncodeError:  # a lone surrogate (an undecodable byte from another system's name) has no bytes
        raise UsageError(f"{shown.encode('utf-8', 'backslashreplace').decode()}: not a file name this system can "
                         f"encode") from None
    except ValueError:          # os.stat refuses a NUL character before asking the system
        raise UsageError(f"{shown.replace(chr(0), '^@')}: a path cannot contain a NUL character") from None


def file_in(root: Path, path: str, must_exist: bool = True) -> str:
    """The file as a posix path relative to root.

    A relative path is looked up in the repository first, then in the current directory,
    so both `codecomplete ~/proj --file src/a.py` and an editor's `--file %` work; `./a.py` and `../a.py` are looked
    up in the current directory first, as the shell reads them. An editor on Windows
    writes `src\\a.py` (a backslash): where no file has the backslashes in its own name, they separate folders.
    """
    candidates, found = _candidates(root, path)
    # (never a path of this system, and never inside the root; on Windows, its own kind of path: not found is all)
    if found is None and sys.platform != "win32" and _WINDOWS_ABSOLUTE.match(path):
        raise UsageError(f"{path} is a Windows path: give the file as this system names it, or relative to the "
                         f"repository")
    if found is None and "\\" in path:
        candidates, found = _candidates(root, path.replace("\\", "/"))
    if found is None and must_exist:
        raise UsageError(f"file not found: {path}")
    resolved = (found or candidates[0]).resolve()
    relative = relative_within(resolved, root)     # (by the disk: on macOS ~/Proj/a.py is in the repository ~/proj)
    if relative is None:
        raise UsageError(f"{path} is outside the repository {root}")
    if resolved.is_dir():
        raise UsageError(f"{path} is a folder, not a file")
    if path.endswith(("/", os.sep)):    # a.py/ names a folder (the system says "Not a directory"); Path drops the slash
        raise UsageError(f"{path}: not a folder (a file's name ends without a slash)")
    if found is not None and not resolved.is_file():
        # Reading a FIFO would wait forever, a device such as /dev/zero would never end.
        raise UsageError(f"{path} is not a regular file (a FIFO, socket or device)")
    return relative


_WINDOWS_ABSOLUTE = re.compile(r"[A-Za-z]:[\\/]|\\\\")   # `C:\repo\a.py`, `C:/repo/a.py`, `\\server\share`


def _candidates(root: Path, path: str) -> tuple[list[Path], Path | None]:
    """Where a relative path may be (the repository, then the current folder; the current folder first for one
    that starts with `./` or `../`, as the shell reads it), and the first that exists."""
    given = Path(os.path.expanduser(path))
    here = [folder / given for folder in _cwd()]
    if given.is_absolute():
        candidates = [given]
    elif path.split("/")[0] in (".", ".."):     # (Path("./m.py") is "m.py": asked of the text)
        candidates = [*here, root / given]
    else:
        candidates = [root / given, *here]
    return candidates, next((c for c in candidates if _exists(c, path)), None)


MAX_STDIN_BYTES = MAX_BUFFER_BYTES     # no editor buffer is this large; `< /dev/zero` would never end


def read_stdin(what: str = "a buffer to complete (--stdin)") -> str:
    """Standard input as text (an editor's buffer, a prompt, a question: `what`, as a refusal names it); bytes that
    are not UTF-8 become U+FFFD, a leading byte-order mark is dropped."""
    import sys

    try:
        data = sys.stdin.buffer.read(MAX_STDIN_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read standard input: {exc.strerror}") from None
    if len(data) > MAX_STDIN_BYTES:
        raise UsageError(f"standard input is over {MAX_STDIN_BYTES // 2 ** 20} MiB: not {what}")
    return decode_source(data)  # as the index reads a file (UTF-8, or UTF-16 with a byte-order mark)


def index(root: Path, allow_empty: bool = False):
    """Scan and chunk the repository (cached across runs), with a progress bar on stderr; `allow_empty`:
    index_repository's.

    Files the scan skips (unreadable, broken links) become one warning line each."""
    from prompts import ScanWarning, index_repository

    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught, progress_bar(f"Indexing {root.name}") as progress:
            warnings.simplefilter("always", ScanWarning)
            return index_repository(root, progress=progress, allow_empty=allow_empty)
    finally:    # also before "nothing to index", which a folder that could not be read may explain
        for warning in caught:
            if issubclass(warning.category, ScanWarning):
                warn(str(warning.message))

"""`python -m codecomplete`, the same as the console script."""
import os
import sys


def _leave_out_the_current_folder() -> None:
    """`python -m` puts the current folder first on the module path, and that folder is usually the repository we
    read: its `models/` (an ML project's own package), `prompts/` or `rich/` was imported in place of ours, and ran.
    The console script's path starts at its own folder instead. Where codecomplete itself comes from the current
    folder (a source checkout run in place), that folder is ours and stays."""
    if getattr(sys.flags, "safe_path", False) or not sys.path:
        return
    try:
        here = os.getcwd()
    except OSError:                     # a folder deleted under the shell: nothing to import from, nothing to keep
        here = None
    if sys.path[0] not in ("", here):
        return
    ours = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if here is None or os.path.realpath(here) != os.path.realpath(ours):
        del sys.path[0]


_leave_out_the_current_folder()

from .cli import main  # noqa: E402  (after the module path is set)

if __name__ == "__main__":      # worker processes started by "spawn" (a large first index) import this module too
    sys.exit(main())

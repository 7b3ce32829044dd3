"""Whether a process a test started (or its children) has ended, as the tests of orphans need it."""
import os
import time


def exited(pid: int, within: float = 10.0) -> bool:
    """Whether process `pid` has exited, waiting up to `within` seconds (0: look once). A zombie that no parent has
    reaped yet counts as exited: it runs no more and holds nothing open."""
    deadline = time.monotonic() + within
    while True:
        if not _running(pid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:             # no /proc (macOS)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

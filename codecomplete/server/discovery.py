"""How the command line finds a running server: each server writes a small JSON file about itself into the user's
runtime directory while it runs (`announce`), and `running_servers` reads them back, dropping those of processes
that are gone. The directory is private to the user (0700), so a server's API key can sit in its file. A folder or
file that another user owns or may write to is neither written nor believed: a record planted there would send the
user's code and API key to someone else's server. Nor is a record whose address another user listens on (where the
system tells: Linux): a server killed without removing its record (SIGKILL, the OOM killer), its process id gone
to another process of the user's, leaves its port to whoever takes it next.

$CODECOMPLETE_RUNTIME_DIR moves the directory (tests give each server its own, so they never see each other's).
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import os
import socket
import stat
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from prompts.scan import lies_within

from ..errors import say

RUNTIME_ENV = "CODECOMPLETE_RUNTIME_DIR"
# Linux's tables of this network namespace's TCP sockets: each socket's local address and port, state and owner.
SOCKET_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
LISTEN = "0A"           # (the kernel's TCP_LISTEN, as the tables write it)
TABLE_READ_BYTES = 1 << 20      # (~7,000 rows: the listeners of any machine)


def runtime_dir() -> Path:
    override = os.environ.get(RUNTIME_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    with warnings.catch_warnings():      # "XDG_RUNTIME_DIR is not set": its fallback is fine here
        warnings.simplefilter("ignore")
        return Path(platformdirs.user_runtime_dir("codecomplete"))


# How often a server looks for its record: a cleaner that ages files out of /tmp (systemd-tmpfiles, after 10 days,
# where platformdirs falls back to /tmp/runtime-UID) or a hand could remove it, and every command line after would
# run in its own process, silently, for as long as the server lived. A record found missing is written again.
RECORD_CHECK_S = 30.0


@contextlib.contextmanager
def announce(info: dict) -> Iterator[Path]:
    """Write `info` (with "url", "repo" and this process's id) where clients look, for as long as the block runs,
    and again whenever it is found gone meanwhile (`RECORD_CHECK_S`)."""
    try:
        folder = _servers_folder(info)
    except OSError as exc:      # platformdirs refuses a /tmp/runtime-UID that another user made first
        _not_announcing(str(exc))
        yield None
        return
    # "announced" orders servers newest first: a record written again later (the keeper below) keeps its place.
    path, record = folder / f"{os.getpid()}.json", {**info, "pid": os.getpid(), "announced": time.time()}
    try:
        path.unlink(missing_ok=True)        # a file (or link) left by a server that had this process id
        _write_record(path, record)
    except OSError as exc:      # a full disk or quota: serve all the same, leaving no half-written record
        _not_announcing(exc.strerror or str(exc))
        yield None
        return
    stop = threading.Event()
    keeper = threading.Thread(target=_keep_record, args=(info, path, record, stop), name="announce", daemon=True)
    keeper.start()
    try:
        yield path
    finally:
        stop.set()
        keeper.join()           # (before the record goes: it must not write it again after)
        # (Windows refuses to remove a file a client is reading that moment: then the next client finds the
        # process gone and removes it)
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def _servers_folder(info: dict) -> Path:
    """The user's private folder of records, made if need be; OSError where none may be written or trusted."""
    folder = runtime_dir() / "servers"
    if info.get("repo") and lies_within(folder.resolve(), Path(info["repo"])):
        raise OSError(f"{folder} is inside the repository, where nothing is ever written")
    _make_private(folder)
    if not _private(folder):
        raise OSError(f"{folder}: another user owns it or may write to it")
    return folder


def _make_private(folder: Path) -> None:
    """Make `folder`, and each folder above it that is missing, 0700. A $XDG_RUNTIME_DIR named but not there was made
    with the umask's 0755 as a parent: platformdirs then refuses it ("not 0700") and every command line looked in
    /tmp/runtime-UID instead, where this server was never found."""
    missing = [path for path in (folder, *folder.parents) if not path.exists()]
    for path in reversed(missing):
        path.mkdir(mode=0o700, exist_ok=True)


def _write_record(path: Path, record: dict) -> None:
    """Write a record whole or not at all (OSError, nothing left behind), never through a link planted at `path`."""
    try:
        # (O_EXCL alone refuses a link planted since; Windows has no O_NOFOLLOW)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(record, file)
    except OSError:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        raise


def _keep_record(info: dict, path: Path, record: dict, stop: threading.Event) -> None:
    """Until `stop`: every RECORD_CHECK_S, write the record again where it is gone (its folder too), as it was first
    written; a folder that can no longer be made or trusted, or a full disk, only waits for the next look."""
    while not stop.wait(RECORD_CHECK_S):
        if os.path.lexists(path):
            continue
        with contextlib.suppress(OSError):
            _write_record(_servers_folder(info) / path.name, record)


def _not_announcing(problem: str) -> None:
    say(f"codecomplete: warning: not announcing this server ({problem}); set ${RUNTIME_ENV} to a private folder")


def running_servers() -> list[dict]:
    """What the live servers announced, newest first."""
    try:
        folder = runtime_dir() / "servers"
    except OSError:             # no runtime directory this user may trust: no server announced in it
        return []
    if not _private(folder):
        return []
    found, owners = [], None
    for path in folder.glob("*.json"):
        try:
            if not _private(path, regular=True):
                continue
            info, written = _record(path.read_text(encoding="utf-8", errors="replace")), path.stat().st_mtime
            announced = info.get("announced") if info is not None else None
            if isinstance(announced, (int, float)) and math.isfinite(announced):
                written = announced     # (not the mtime: the keeper may have written an old record again)
        except OSError:
            continue
        # Half a record (a server writing it this moment, or one killed while it did) is not believed; its name, the
        # process id the server writes it under, says whether that server is gone.
        pid = _pid(info["pid"]) if info is not None else _pid(path.stem)
        if pid is None:
            continue
        if not _alive(pid):
            with contextlib.suppress(OSError):      # (another client reading it, on Windows)
                path.unlink(missing_ok=True)     # a server that was killed: its file is stale
        elif info is not None:
            owners = _listener_owners() if owners is None else owners     # (read only where a record is found)
            if not _listened_on_by_another_user(info["url"], owners):
                found.append((written, info))
    return [info for _, info in sorted(found, key=lambda pair: pair[0], reverse=True)]


def _record(text: str) -> dict | None:
    """A server's whole record (an object with its process id, and the fields clients read of their types), or None."""
    try:
        info = json.loads(text)
        return info if _pid(info["pid"]) is not None and _readable(info) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _readable(info: dict) -> bool:
    """Whether a record holds what the command line reads from it, of the types it reads: one damaged in place, edited
    by hand or written by another version (a field missing, a number for a path, a key no header can carry) made
    every command line for that repository fail with an internal error while its process lived."""
    from ..client import sendable_key

    engine, key = info.get("engine", {}), info.get("api_key")
    return (isinstance(info["url"], str)
            and all(isinstance(info.get(name) or "", str) for name in ("repo", "model_spec"))
            and isinstance(engine, dict) and isinstance(engine.get("context_length", 0), int)
            and (key is None or isinstance(key, str) and sendable_key(key)))


def _listener_owners() -> dict[tuple[str, int], set[int]]:
    """The users (ids) listening on each (address, port), as Linux's SOCKET_TABLES tell; empty where there are none."""
    owners: dict[tuple[str, int], set[int]] = {}
    for table in SOCKET_TABLES:
        try:
            descriptor = os.open(table, os.O_RDONLY)
            try:
                # One read: the kernel writes the listeners first, and each read walks its whole table of connections
                # (5-12 ms a read on the 2-core CPU; one to the end, two: a command line's start paid ~24 ms)
                text = os.read(descriptor, TABLE_READ_BYTES).decode("ascii", "replace")
            finally:
                os.close(descriptor)
        except OSError:
            continue
        for row in (line.split() for line in text.splitlines()[1:]):
            try:
                if row[3] == LISTEN:
                    address, _, port = row[1].partition(":")
                    owners.setdefault((_table_address(address), int(port, 16)), set()).add(int(row[7]))
            except (IndexError, ValueError):         # (a row the read cut short)
                continue
    return owners


def _table_address(hexadecimal: str) -> str:
    """An address as the tables write it: its bytes in 32-bit words, each word printed as a number in the host's
    byte order (127.0.0.1 is 0100007F on x86)."""
    raw = bytes.fromhex(hexadecimal)
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(raw)
    return str(getattr(address, "ipv4_mapped", None) or address)


def _listened_on_by_another_user(url: str, owners: dict[tuple[str, int], set[int]]) -> bool:
    """Whether another user listens where `url` points (a record's: a numeric address, as servers write it), at its
    address or at the wildcard of its port. (Nobody listening there: the connection fails; not in the tables: cannot
    tell.)"""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or 80
    except ValueError:
        return False
    addresses = _addresses(host, resolve=False)
    if not hasattr(os, "geteuid") or not addresses:
        return False
    return any(uid != os.geteuid() for uid in _listeners(addresses, port, owners))


def listeners_of(host: str, port: int) -> set[int]:
    """The users listening where a connection to `host` (a name resolved as a connection resolves it) and `port` may
    land, as the socket tables tell (empty where they cannot). `localhost` is ::1 and 127.0.0.1, and a client may try
    ::1 first while the user's server took 127.0.0.1 only: another user listening at ::1 would get its code and key."""
    return _listeners(_addresses(host, resolve=True), port, _listener_owners())


def _listeners(addresses: set[str], port: int, owners: dict[tuple[str, int], set[int]]) -> set[int]:
    """The users listening at any of `addresses`, or at the wildcard, of `port`."""
    return {uid for place in (*addresses, "0.0.0.0", "::") for uid in owners.get((place, port), ())}


def _addresses(host: str, resolve: bool) -> set[str]:
    """`host`'s addresses as the socket tables write them (an IPv4 address mapped into IPv6 as IPv4); a name only
    where `resolve` (none where it does not resolve: the connection fails the same way)."""
    try:
        found = [ipaddress.ip_address(host)]
    except ValueError:
        if not resolve:
            return set()
        try:
            found = [ipaddress.ip_address(info[4][0].partition("%")[0])
                     for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)]
        except (OSError, UnicodeError, ValueError):
            return set()
    return {str(getattr(address, "ipv4_mapped", None) or address) for address in found}


def _pid(value) -> int | None:
    """A process id written in a record or a file's name (`announce` writes `PID.json`), or None where it is none
    (os.kill takes no id past 2**31 - 1, and 0 or one below it would ask about a process group)."""
    try:
        pid = int(value)
    except (ValueError, TypeError, OverflowError):    # (OverflowError: Infinity)
        return None
    return pid if 0 < pid < 2**31 else None


def _private(path: Path, regular: bool = False) -> bool:
    """This user's own folder (or, with `regular`, plain file, not a link), which no other user may write to."""
    try:
        status = path.lstat() if regular else path.stat()
    except OSError:
        return False
    if regular and not stat.S_ISREG(status.st_mode):
        return False
    if not hasattr(os, "geteuid"):
        # Windows: stat has no owner and every folder reads as mode 0777, so this cannot be checked here; the
        # default folder lies in the user's profile, which its access list keeps to that user.
        return True
    return status.st_uid == os.geteuid() and not status.st_mode & 0o022


def _alive(pid: int) -> bool:
    if sys.platform == "win32":
        return _alive_on_windows(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # someone else's process with a recycled id
        return False
    return True


def _alive_on_windows(pid: int) -> bool:
    """Whether process `pid` still runs, asked without os.kill: on Windows os.kill(pid, 0) is TerminateProcess, so
    every command that looked for a server ended it."""
    import ctypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.restype = ctypes.c_void_p          # a HANDLE: pointer-sized
    handle = kernel32.OpenProcess(0x1000, False, pid)      # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:          # gone, or another user's process with a recycled id
        return False
    handle = ctypes.c_void_p(handle)
    try:
        code = ctypes.c_ulong()
        return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259   # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)

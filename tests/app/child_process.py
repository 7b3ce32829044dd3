"""Waiting for a child process to reach a state, instead of sleeping long enough for it on a slow machine."""
from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path

READ_SYSCALL = {"x86_64": 0, "aarch64": 63}.get(platform.machine())   # Linux's number for read(2)


def wait_until_reading_stdin(proc: subprocess.Popen, timeout: float = 120, fallback_s: float = 5) -> None:
    """Return once `proc`'s main thread is blocked in read(0, ...) (its signal handlers are in place by then: the
    command line installs them first). Where /proc/PID/syscall cannot say so, sleep `fallback_s` as before."""
    syscall = Path(f"/proc/{proc.pid}/syscall")
    if not sys.platform.startswith("linux") or READ_SYSCALL is None or not syscall.exists():
        time.sleep(fallback_s)
        return
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            number, fd = syscall.read_text().split()[:2]   # "running" while on a CPU
        except (OSError, ValueError):
            number = fd = ""
        if number == str(READ_SYSCALL) and fd == "0x0":
            return
        time.sleep(0.02)
    raise AssertionError(f"process {proc.pid} never waited for standard input (exit code {proc.poll()})")

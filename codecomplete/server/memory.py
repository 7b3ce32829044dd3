"""Handing the memory requests freed back to the system.

glibc's malloc keeps the memory a process frees for its next allocations; a heap gives pages back only from its
top. A server's requests each allocate and free hundreds of MB in pieces of every size (a prefill's activations, a
saved prompt's K/V copied in and out), while what stays between them (the engine's caches, the prompts' memos,
oneDNN's kernels for each new prefill length) lands among the free pages: the resident memory only grew. On a CPU
with the embedded model, four clients of editor traffic took a server from 735 MB to 1.80 GB in five minutes (a
200 MiB prompt cache), of which malloc_trim gave back 390 MB; another four minutes, 1.85 GB and 380 MB
(bench/results/NOTES.md, "Adversarial sweep, round 11"). Trimming once the server is quiet costs 5 ms, then 0.1.
"""
from __future__ import annotations

import ctypes
import functools


def release_freed() -> None:
    """Give the free pages of malloc's heaps back to the system (glibc's malloc_trim); nothing where the C library
    has no such call (musl, macOS, Windows), whose allocators return memory their own way."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):    # (Windows: no CDLL(None); elsewhere: no malloc_trim)
        return None

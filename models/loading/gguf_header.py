"""A bound on what a GGUF's header asks a reader to build, checked before `gguf.GGUFReader` parses it.

The reader turns every element of a metadata array into numpy views of its own: 200,000 one-letter strings cost it
3.3 s and ~120 MB, so a 10 MB file of ten million array elements would take minutes and tens of GB before any
check of ours runs. This walks the header the way the format lays it out (GGUF v2/v3: counts, then key/value pairs,
then tensor infos), skipping over values by their sizes, and refuses a header whose counts no model comes near.
The largest real vocabularies (Llama 3's 128k tokens and 280k merges, Gemma's 256k tokens with scores and types)
hold well under half the array limit.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from models.errors import ModelError

MAX_ARRAY_ELEMENTS = 1 << 20    # over all metadata arrays, nested ones included
MAX_KEYS = 1 << 16
MAX_TENSORS = 1 << 16           # CodeLlama-34B has 435
MAX_DIMS = 4                    # GGML_MAX_DIMS

STRING, ARRAY = 8, 9
FIXED_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


class _Truncated(Exception):
    pass


class _Cursor:
    """Reads little- or big-endian integers from a memory map, raising _Truncated past its end."""

    def __init__(self, data, order: str):
        self.data, self.order, self.at = data, order, 0

    def take(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        if self.at + size > len(self.data):
            raise _Truncated
        (value,) = struct.unpack_from(self.order + fmt, self.data, self.at)
        self.at += size
        return value

    def skip(self, size: int) -> None:
        if size > len(self.data) - self.at:
            raise _Truncated
        self.at += size

    def skip_string(self) -> None:
        self.skip(self.take("Q"))


def check_header_bounds(path: Path) -> None:
    """Raise a one-line ModelError if the GGUF header at `path` declares more metadata array elements, keys or
    tensors than MAX_*, or a tensor of more than MAX_DIMS dimensions. Headers of other versions and truncated
    headers are left to the reader, which names them."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        try:
            _walk(data, path)
        except _Truncated:
            pass                        # the reader reports a truncated file with its size


def _walk(data, path: Path) -> int | None:
    """Step over the header; returns the offset where its tensor infos end (None for another version)."""
    version = struct.unpack_from("<I", data, 4)[0] if len(data) >= 8 else 0
    order = "<" if version in (2, 3) else ">"           # a big-endian file reads as version 2 << 24 or 3 << 24
    cursor = _Cursor(data, order)
    cursor.skip(4)
    if cursor.take("I") not in (2, 3):
        return None
    n_tensors, n_keys = cursor.take("Q"), cursor.take("Q")
    if n_keys > MAX_KEYS or n_tensors > MAX_TENSORS:
        raise ModelError(f"{path}: the GGUF header declares {n_keys:,} metadata keys and {n_tensors:,} tensors "
                         f"(at most {MAX_KEYS:,} and {MAX_TENSORS:,} are read; corrupt file?)")
    elements = 0
    for _ in range(n_keys):
        cursor.skip_string()                                # the key
        elements += _skip_value(cursor, cursor.take("I"), path)
        if elements > MAX_ARRAY_ELEMENTS:
            raise ModelError(f"{path}: the GGUF metadata holds over {MAX_ARRAY_ELEMENTS:,} array elements "
                             "(no model's vocabulary comes near; corrupt or hostile file)")
    for _ in range(n_tensors):
        cursor.skip_string()                                # the name
        n_dims = cursor.take("I")
        if n_dims > MAX_DIMS:
            raise ModelError(f"{path}: a GGUF tensor declares {n_dims:,} dimensions (at most {MAX_DIMS}; corrupt file)")
        cursor.skip(8 * n_dims + 4 + 8)                     # dims, type, offset
    return cursor.at


def _skip_value(cursor: _Cursor, kind: int, path: Path) -> int:
    """Skip one value of type `kind`; returns how many array elements it held."""
    if kind in FIXED_SIZES:
        cursor.skip(FIXED_SIZES[kind])
        return 0
    if kind == STRING:
        cursor.skip_string()
        return 0
    if kind != ARRAY:
        raise ModelError(f"{path}: unknown GGUF metadata value type {kind} (corrupt file)")
    item, count = cursor.take("I"), cursor.take("Q")
    if count > MAX_ARRAY_ELEMENTS:
        raise ModelError(f"{path}: a GGUF metadata array declares {count:,} elements "
                         f"(at most {MAX_ARRAY_ELEMENTS:,} are read; corrupt or hostile file)")
    if item in FIXED_SIZES:
        cursor.skip(FIXED_SIZES[item] * count)
        return count
    nested = 0
    for _ in range(count):
        nested += _skip_value(cursor, item, path)
        if nested > MAX_ARRAY_ELEMENTS:
            break
    return count + nested

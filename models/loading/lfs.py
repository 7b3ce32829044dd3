"""Git LFS pointers: what a clone without git-lfs holds in place of a model's large files.

Hugging Face repositories keep weights, tokenizers and GGUFs in Git LFS; cloned where git-lfs is not installed (or
with GIT_LFS_SKIP_SMUDGE=1), each is a ~130-byte text file naming the data by its hash. Parsed as the data it only
fails obscurely ("header too large", "unreadable JSON"), so a loader that fails asks here what to say instead.
"""

from __future__ import annotations

from pathlib import Path

POINTER_START = b"version https://git-lfs.github.com/spec/v1"   # the first line of every pointer (the LFS spec)


def pointer_message(path: Path) -> str | None:
    """The one-line error for a file that is a Git LFS pointer, or None when it is not one (or cannot be read: the
    caller's own error says that). Reads the first bytes only, of regular files only (a FIFO would block)."""
    try:
        if not path.is_file():
            return None
        with open(path, "rb") as f:
            if f.read(len(POINTER_START)) != POINTER_START:
                return None
    except OSError:
        return None
    return f"{path}: a Git LFS pointer, not the file's data: run `git lfs pull` in {path.parent}"

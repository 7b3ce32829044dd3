"""Git LFS pointers (and their forerunners: Hawser's, git-media's): what a clone without git-lfs holds in place of a
model's large files.

Hugging Face repositories keep weights, tokenizers and GGUFs in Git LFS; cloned where git-lfs is not installed (or
with GIT_LFS_SKIP_SMUDGE=1), each is a ~130-byte text file naming the data by its hash. Parsed as the data it only
fails obscurely ("header too large", "unreadable JSON"), so a loader that fails asks here what to say instead.
"""

from __future__ import annotations

import re
from pathlib import Path

# The first line of a pointer, by the versions git-lfs reads (its lfs/pointer.go): the public launch's, its pre-release
# name Hawser's and its alpha's (git-media's v2); `git lfs pull` fetches the data of each.
LFS_VERSIONS = (b"https://git-lfs.github.com/spec/v1", b"https://hawser.github.com/spec/v1", b"http://git-media.io/v/2")
POINTER_START = b"version " + LFS_VERSIONS[0]
# git-media's own pointers, which git-lfs does not read: the spec's INI form, and the first one, a comment naming the
# tool (or "external") above the id, under 100 bytes in all (the spec's own test for one).
GIT_MEDIA_INI = b"[git-media]"
GIT_MEDIA_COMMENT = re.compile(rb"# (.*git-media|external)")
MAX_POINTER_BYTES = 1024        # git-lfs looks no further for a pointer


def pointer_message(path: Path) -> str | None:
    """The one-line error for a file that is a Git LFS (or git-media) pointer, or None when it is not one (or cannot
    be read: the caller's own error says that). Reads the first bytes only, of regular files only (a FIFO would
    block)."""
    try:
        if not path.is_file():
            return None
        with open(path, "rb") as f:
            head = f.read(MAX_POINTER_BYTES + 1)
    except OSError:
        return None
    first = head.partition(b"\n")[0].rstrip(b"\r")
    if any(head.startswith(b"version " + version) for version in LFS_VERSIONS):
        kind, run = "a Git LFS pointer", "git lfs pull"
    elif first.strip() == GIT_MEDIA_INI or (len(head) < 100 and GIT_MEDIA_COMMENT.match(first)):
        kind, run = "a git-media pointer", "git media sync"
    else:
        return None
    return f"{path}: {kind}, not the file's data: run `{run}` in {path.parent}"

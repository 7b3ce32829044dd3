"""Warming the prompt caches before and between requests, so that a first request in a file builds its prompt like
a later one.

The first prompt built in a file tokenizes the context chunks it selects and parses their outlines: on a 2-core
CPU 84-98 ms at an 8k budget, against 10-27 ms once the Encoder (8,192 pieces) and the outline cache hold them
(bench/results/NOTES.md, Run 8). The server builds, and throws away, a completion prompt at the middle of each
indexed file, source code first, then the most recently modified first, at most `MAX_FILES` files (about 25 new
pieces a file in this repository: 147 Python files filled 3,743 pieces, so the warmed pieces stay within what the
caches keep). It does so before it announces itself, for up to `STARTUP_S` seconds, then one file per `idle_s`
seconds (worker.py: 0.5) without a request on the engine thread (a request arriving meanwhile waits for that one
file at most), again for a file whose text changed.
CODECOMPLETE_WARM_PROMPTS=0 (or false, no, off: codecomplete/switches.py) turns it off.
"""
from __future__ import annotations

import time

from prompts.languages import language_for
from prompts.tokens import CACHE_PIECES

from ..switches import WARM_PROMPTS, on

STARTUP_S = 6.0                  # at most, added to a start that loads and compiles a model for tens of seconds
MAX_FILES = CACHE_PIECES // 32   # files warmed per repository (256)
VARIABLE = WARM_PROMPTS


def enabled() -> bool:
    return on(VARIABLE)


class PromptWarmer:
    """Which files to warm, and warming them one at a time through the session (on the thread that owns it)."""

    def __init__(self, session, budget: int, max_files: int = MAX_FILES) -> None:
        self.session = session
        self.budget = budget                   # the prompt tokens an editor's request gets
        self.max_files = max_files
        # path -> the digest of its text when warmed: what a warmed prompt depends on (an mtime missed text saved
        # under the old date, `cp -p`, and warmed again a file saved unchanged)
        self.warmed: dict[str, bytes] = {}
        self._order: tuple[object, list[str]] | None = None   # (index, its files to warm, newest first)

    def pending(self) -> list[str]:
        """The files still to warm, in order: of the files that have chunks, the `max_files` first by (source code
        before other text, the most recently modified first, path), those not warmed yet or whose text changed since."""
        index = self.session.index
        if index is None:
            return []
        entries = index.entries
        if self._order is None or self._order[0] is not index:
            files = sorted((p for p in index.files if entries[p].chunks),
                           key=lambda p: (language_for(p) is None, -entries[p].mtime_ns, p))
            self._order = (index, files[:self.max_files])
        return [p for p in self._order[1] if self.warmed.get(p) != entries[p].digest]

    def step(self) -> bool:
        """Warm the next file; whether any is left after it."""
        todo = self.pending()
        if not todo:
            return False
        path = todo[0]
        entry = self.session.index.entries[path]
        self.warmed[path] = entry.digest
        try:
            self.session.warm_prompt(path, line=max(1, entry.chunks[-1].end_line // 2), budget=self.budget)
        except Exception:        # a file that cannot make a prompt (gone, unreadable) is not retried until it changes
            pass
        return len(todo) > 1

    def run(self, seconds: float, should_stop=lambda: False) -> int:
        """Warm files until none is left, `seconds` have passed or `should_stop()`; how many were warmed."""
        deadline, count = time.perf_counter() + seconds, 0
        while time.perf_counter() < deadline and not should_stop() and self.pending():
            self.step()
            count += 1
        return count

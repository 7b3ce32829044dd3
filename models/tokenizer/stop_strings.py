"""Stop strings over streamed text: stop at the first match, and never emit any part of it.

A stop string may straddle token boundaries ("\\n\\n" + "\\n"), so text that could be the start of
one is held back until the next delta shows whether it completes the match.
"""

from __future__ import annotations

from collections.abc import Iterable


class StopStringMatcher:
    def __init__(self, stop_strings: Iterable[str]):
        self.stops = [s for s in stop_strings if s]
        self.longest = max(map(len, self.stops), default=0)
        self.text = ""        # everything accepted so far (truncated at a stop string once found)
        self.emitted = 0      # how much of self.text the caller has been given
        self.hit = ""         # the stop string that ended the text ("" while none has)

    def feed(self, delta: str) -> tuple[str, bool]:
        """Add text; return (what may be emitted now, whether a stop string was found)."""
        search_from = max(0, len(self.text) - self.longest + 1)
        self.text += delta
        hits = [(i, -len(s), s) for s in self.stops if (i := self.text.find(s, search_from)) >= 0]
        if hits:
            at, _, self.hit = min(hits)          # the first to start (of those, the longest)
            self.text = self.text[:at]
            return self.flush(), True
        safe = len(self.text) - self._partial_match_length()
        out = self.text[self.emitted:safe]
        self.emitted = max(self.emitted, safe)
        return out, False

    def flush(self) -> str:
        """Everything not yet emitted (generation ended without completing a stop string)."""
        out = self.text[self.emitted:]
        self.emitted = len(self.text)
        return out

    def _partial_match_length(self) -> int:
        """Length of the longest suffix of the text that is a proper prefix of some stop string."""
        for n in range(min(self.longest - 1, len(self.text)), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0

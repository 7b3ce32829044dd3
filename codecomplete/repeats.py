"""A suggestion (or a chat answer) that loops on one line, stopped where the loop starts.

At a cursor a small model often writes a line and then the same line again until its token budget is spent (the
embedded 135M model at this project's models/llama.py:40, the README's first command, wrote `    end: int` sixteen
times). Editors' agents trim such text after the fact (Tabby's removeRepetitiveLines); an inline suggestion here
stops generating at the loop instead, and never shows it: a finished line equal to the one before it (not blank) is
held back, and a line written REPEATS times running ends the generation with the held copies dropped. Held text is
let through as soon as what follows differs, so what streams is what the result says, token for token. The REPL's
and --ask's answers stop the same way (codecomplete/chat.py): the embedded model asked what a function does listed
one line about it until its 512 tokens ran out.

The suggestion's first line ends the cursor's line, so that line is compared whole, its text before the cursor too
(`line_start`): a model at the end of `    end: int` that writes it twice more has written it three times running.
The text after the cursor is no part of it: an editor puts it after the suggestion's last line, which is never
compared (only finished lines are).

Lines end where the text's own line ends put them (`line_end`, the prompt's, which the session's LineEnds writes:
codecomplete/line_ends.py `line_break`): at "\\n" in a "\\n" or "\\r\\n" text (a "\\r\\n"'s "\\r" is its line's), at
"\\r" in a classic Mac OS one, whose suggestion holds no "\\n" (split at "\\n" only, it had no finished line, and a
loop ran to its token limit).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from .line_ends import LF, line_break

REPEATS = 3     # a line and two copies of it in a row: code rarely writes one line three times running


class RepeatedLines:
    """Text deltas in (`feed`, generation's on_text), the same text out to `on_text` less a line's third copy in a
    row and all after it; `looped` once that happened (the generation's should_stop); `finish` passes on what is
    still held and says the result as it was shown. `line_start`: the cursor's line before the cursor; `line_end`:
    the text's ("\\n", "\\r\\n" or "\\r")."""

    def __init__(self, on_text: Callable[[str], None], line_start: str = "", line_end: str = LF) -> None:
        self._on_text = on_text
        self._break = line_break(line_end)      # what ends a line of the text
        self.shown: list[str] = []      # what was passed on
        self.looped = False
        self._last: str | None = None   # the last finished line shown (without its line break)
        self._copies = 0                # finished copies of it held back
        self._line = line_start         # the line being written (the first: the cursor's, which the buffer shows)
        self._held_line = False         # whether it is held back too (it may still become a copy)

    def feed(self, delta: str) -> None:
        *finished, rest = delta.split(self._break)
        for line in finished:
            if self.looped:
                return
            self._write(line)
            self._end_line()
        if not self.looped:
            self._write(rest)

    def finish(self, result):
        """The generation's result as shown: held text passed on where the loop never came, else the text up to the
        loop and finish_reason "stop" (the engine says "cancelled" for a stop it was asked for)."""
        if not self.looped:
            self._show(self._held())
            return result
        return replace(result, text="".join(self.shown), finish_reason="stop")

    def _write(self, text: str) -> None:
        if not text:
            return
        self._line += text
        if not self._held_line:
            self._show(text)
        elif not self._may_repeat(self._line):
            self._show(self._held())

    def _end_line(self) -> None:
        if self._held_line and self._line == self._last:
            self._copies += 1
            self.looped = self._copies + 1 >= REPEATS
        else:
            self._show(self._held() + self._break)
            self._last = self._line
        self._line = ""
        self._held_line = self._may_repeat("")

    def _may_repeat(self, line: str) -> bool:
        return bool(self._last and self._last.strip()) and self._last.startswith(line)

    def _held(self) -> str:
        """What is held back, released: the copies, then the line so far; nothing held after it."""
        copies = (self._last + self._break) * self._copies if self._copies else ""
        text = copies + (self._line if self._held_line else "")
        self._copies, self._held_line = 0, False
        return text

    def _show(self, text: str) -> None:
        if text:
            self.shown.append(text)
            self._on_text(text)

"""A completion written with the line ends of the text it completes.

The prompts read a file, an editor's buffer or a raw prompt with "\\n" line ends (prompts.scan.unix_newlines): the
model sees code as it was trained on it, and writes "\\n". Where the client's text ends its lines with "\\r\\n" (a
Windows editor's file; `PackedPrompt.line_end` says so), the text it puts in must too, or its new lines differ from
their neighbours: the session (`Session._generation`) hands every route, and the command line, the model's text
through `LineEnds`, as Tabby's server answers. What the model writes is the same either way, token for token: its
tokens, their pieces and the offsets the engine counts are the model's text (`position` maps an offset into the text
written), and so is what a stop string or a limit is matched against on the engine's side.
"""
from __future__ import annotations

import bisect
import re
from collections.abc import Callable
from dataclasses import replace

CRLF = "\r\n"
_BARE_LF = re.compile(r"(?<!\r)\n")        # a "\n" the model wrote without its "\r"


def written(text: str, line_end: str) -> str:
    """`text` (the model's, or a prompt's as the model read it) with `line_end` ending its lines."""
    return _BARE_LF.sub(CRLF, text) if line_end == CRLF else text


class LineEnds:
    """The model's text, streamed (`feed`, then `flush`) or whole (`written`), with "\\r\\n" line ends. A piece that
    ends with "\\r" keeps it back until the next piece says whether a "\\n" follows: a "\\r\\n" the model writes in two
    tokens is never sent in halves (and its "\\n" is not doubled)."""

    def __init__(self) -> None:
        self._held = ""                 # a "\r" that ended the last piece
        self._seen = 0                  # characters of the model's text fed
        self._crs: list[int] = []       # where a "\r" went in: before the model's character at each of these

    def feed(self, text: str) -> str:
        start = self._seen - len(self._held)        # where `self._held + text` begins in the model's text
        self._seen += len(text)
        text, self._held = self._held + text, ""
        self._crs += (start + match.start() for match in _BARE_LF.finditer(text))
        text = written(text, CRLF)
        if text.endswith("\r"):
            text, self._held = text[:-1], "\r"
        return text

    def flush(self) -> str:
        """What is still held back, at the end of the text."""
        held, self._held = self._held, ""
        return held

    def position(self, offset: int) -> int:
        """Where the model's character at `offset` (of the text fed so far) is in the text written."""
        return offset + bisect.bisect_left(self._crs, offset)

    def run(self, generate: Callable, on_text: Callable[[str], None] | None):
        """`generate(on_text)`'s result with its text written so, its deltas streamed to `on_text` so."""
        def converted(delta: str) -> None:
            piece = self.feed(delta)
            if piece and on_text is not None:
                on_text(piece)
        result = generate(converted)
        rest = self.flush()
        if rest and on_text is not None:
            on_text(rest)
        return replace(result, text=written(result.text, CRLF))

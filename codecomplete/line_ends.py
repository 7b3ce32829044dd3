"""A completion written with the line ends of the text it completes, and stopped where that text says.

The prompts read a file, an editor's buffer or a raw prompt with "\\n" line ends (prompts.scan.unix_newlines): the
model sees code as it was trained on it, and writes "\\n". Where the client's text ends its lines otherwise
(`PackedPrompt.line_end`: "\\r\\n", a Windows editor's file; "\\r", a classic Mac OS one), the text it puts in must
too, or its new lines differ from their neighbours: the session (`Session._generation`) hands every route, and the
command line, the model's text through `LineEnds`, as Tabby's server answers. What the model writes is the same
either way, token for token; the text the client gets is the model's written so (`written`):
- "\\r\\n": each "\\n" the model wrote without a "\\r" before it becomes "\\r\\n" (a "\\r\\n" of its own stays one,
  a lone "\\r" stays as it is);
- "\\r": each "\\n", or "\\r\\n", becomes "\\r" (a lone "\\r", a line break to the prompt too, stays).
Stop strings (the client's and the prompt format's) are matched in that written text, where the client sees it: a
stop is written with the same line ends first (its "\\n" is the client's line end; a "\\r\\n" in it stays one), and
the text is cut before the first place the written text holds it, as llama.cpp and OpenAI cut the text they return.
So in a CRLF answer "\\r\\n" and "\\r\\n\\r\\n" stop where the client's text has them, and "\\n" (written "\\r\\n")
stops where it did, before the whole line end, never between its "\\r" and its "\\n". The engine gets no stop
strings then; a hit stops it at the next token (`should_stop`), and the result is cut back to the token that
completed the stop, as the engine's own stop would have cut it. A stream never ends a piece between a "\\r" and its
"\\n". The engine's offsets (TokenLogprobs.text_offset) count the model's text: `position` maps them into the text
written, and `token_text` / `token_bytes` write a token's own text so (its "\\n" as the text's line end), so that the
tokens' texts spell the text returned.
"""
from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Sequence
from dataclasses import replace

LF, CRLF, CR = "\n", "\r\n", "\r"
_BARE_LF = re.compile(r"(?<!\r)\n")        # a "\n" the model wrote without its "\r"
_LINE_BREAK = re.compile(r"\r?\n")         # a "\n", or a "\r\n", the model wrote: one line break


def line_break(line_end: str) -> str:
    """The character that ends a line of text written with `line_end`: "\\r" for "\\r" (no "\\n" is left in it),
    else "\\n" (a "\\r\\n"'s "\\r" is its line's last character)."""
    if line_end not in (LF, CRLF, CR):
        raise ValueError(f"a line end is '\\n', '\\r\\n' or '\\r', got {line_end!r}")
    return CR if line_end == CR else LF


def written(text: str, line_end: str) -> str:
    """`text` (the model's, or a prompt's as the model read it) with `line_end` ending its lines."""
    if line_end == CRLF:
        return _BARE_LF.sub(CRLF, text)
    if line_end == CR:
        return _LINE_BREAK.sub(CR, text)
    return text


def _written_after(text: str, line_end: str, after_cr: bool) -> str:
    """`written` of text after a "\\r" (`after_cr`) in the model's text: a "\\n" it begins with is that "\\r"'s."""
    if after_cr and text.startswith(LF):
        return (LF if line_end == CRLF else "") + written(text[1:], line_end)
    return written(text, line_end)


class LineEnds:
    """The model's text, streamed (`feed`, then `flush`) or whole (`run`), with `line_end` ("\\r\\n" or "\\r") line
    ends and `stops` (as the request gave them) matched in the text so written."""

    def __init__(self, line_end: str = CRLF, stops: Sequence[str] = ()) -> None:
        if line_end not in (CRLF, CR):
            raise ValueError(f"a line end to write is '\\r\\n' or '\\r', got {line_end!r}")
        from models.tokenizer.stop_strings import StopStringMatcher

        self.line_end = line_end
        self._model = ""                # the model's text fed so far
        self._marks: list[int] = []     # where a character went in (CRLF) or out (CR): at the model's offsets
        self._step = 1 if line_end == CRLF else -1
        # the stops as matched (written) -> as given; where two write the same, the later given (the client's) names it
        self._named = {written(stop, line_end): stop for stop in stops if stop}
        self._stops = StopStringMatcher(self._named)
        self._held = ""                 # a "\r" that ended the last piece sent
        self.hit = ""                   # the stop string that ended the text, as given
        self.hit_tokens: int | None = None   # the tokens generated when it did (the one that completed it the last)

    # ---- the text ----------------------------------------------------------------------------------

    def _write(self, text: str) -> str:
        """The model's next text, written (nothing held back)."""
        start, after_cr = len(self._model), self._model.endswith(CR)
        self._model += text
        if self.line_end == CRLF:
            self._marks += (start + m.start() for m in _BARE_LF.finditer(text) if m.start() or not after_cr)
        else:       # each "\n" after a "\r" goes out (the "\r" is the line end)
            self._marks += (start + i for i, c in enumerate(text) if c == LF and (text[i - 1] == CR if i else after_cr))
        return _written_after(text, self.line_end, after_cr)

    def feed(self, text: str) -> str:
        """The model's next text in; what may go out now (the text before a stop, less a "\\r" that ends it)."""
        if self.hit:
            return ""
        out, hit = self._stops.feed(self._write(text))
        if hit:
            self.hit = self._named[self._stops.hit]
        return self._send(out)

    def flush(self) -> str:
        """What is still held back, at the end of the text."""
        out = "" if self.hit else self._stops.flush()
        held, self._held = self._held + out, ""
        return held

    def _send(self, text: str) -> str:
        text, self._held = self._held + text, ""
        if text.endswith(CR) and self.line_end == CRLF:       # (its "\n" may come next: never half a CRLF)
            text, self._held = text[:-1], CR
        return text

    @property
    def text(self) -> str:
        """The text written so far, cut at the stop that ended it."""
        return self._stops.text

    # ---- the engine's offsets and tokens --------------------------------------------------------------

    def position(self, offset: int) -> int:
        """Where the model's character at `offset` (of the text fed so far) is in the text written."""
        return offset + self._step * bisect.bisect_left(self._marks, offset)

    def token_text(self, text: str, offset: int) -> str:
        """A token's text (its piece as the model wrote it), beginning at `offset` of the model's text, written."""
        return _written_after(text, self.line_end, 0 < offset <= len(self._model) and self._model[offset - 1] == CR)

    def token_bytes(self, piece: bytes, offset: int) -> bytes:
        """`token_text`'s for a token's bytes ("\\r" and "\\n" are never part of another UTF-8 character)."""
        return self.token_text(piece.decode("latin-1"), offset).encode("latin-1")

    # ---- a generation ----------------------------------------------------------------------------------

    def run(self, generate: Callable, on_text: Callable[[str], None] | None,
            should_stop: Callable[[], bool] | None = None, tokens: Callable[[], Sequence[int]] | None = None):
        """`generate(on_text, should_stop)`'s result with its text written so and cut at the first stop, its deltas
        streamed to `on_text` so; `tokens()`: the ids generated so far (the engine's live_tokens), to cut the result's
        back to the one that completed a stop."""
        def converted(delta: str) -> None:
            was = self.hit
            piece = self.feed(delta)
            if self.hit and not was and tokens is not None:
                self.hit_tokens = len(tokens()) or None     # (none: an engine that does not show them, all kept)
            if piece and on_text is not None:
                on_text(piece)

        def stop() -> bool:
            return bool(self.hit) or (should_stop is not None and bool(should_stop()))
        result = generate(converted, stop)
        rest = self.flush()
        if rest and on_text is not None:
            on_text(rest)
        if not self.hit:
            return replace(result, text=self.text)
        n = len(result.token_ids) if self.hit_tokens is None else self.hit_tokens
        return replace(result, text=self.text, finish_reason="stop", stop_string=self.hit,
                       token_ids=result.token_ids[:n], not_a_number=False,
                       logprobs=None if result.logprobs is None else result.logprobs[:n])

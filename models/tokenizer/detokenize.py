"""Incremental detokenization: turn a growing list of token ids into correct text deltas.

Decoding tokens one by one is wrong in three ways: SentencePiece drops the leading space of the
first token it decodes ("▁world" alone is "world"), byte-fallback pieces (<0xE2><0x82><0xAC>) and
byte-level BPE split one UTF-8 character over several tokens, and some decoders merge pieces.
So each step decodes a short sliding window of ids twice, with and without the new token, and emits
the difference; while the window's text ends in an incomplete character ('\ufffd'), nothing is emitted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

PROMPT_CONTEXT_TOKENS = 5   # prompt tokens seeding the window, so the first token's leading space survives
CONTINUATION_PIECES = re.compile(r"<0x[89AB][0-9A-F]>", re.IGNORECASE)   # byte fallback's UTF-8 continuation bytes


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_ids: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[_window_start(tokenizer, prompt_ids):])
        self.prefix_offset = 0               # window start
        self.read_offset = len(self.ids)     # ids before this have been emitted

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        """Add one id; return the text it completes (possibly "", when a character is still incomplete)."""
        self.ids.append(token_id)
        emitted = self._decode(self.ids[self.prefix_offset:self.read_offset])
        text = self._decode(self.ids[self.prefix_offset:])
        if len(text) <= len(emitted) or self._inside_a_character(text):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return text[len(emitted):]

    def flush(self) -> str:
        """The held-back text at the end of generation, less the character its last tokens left incomplete (a
        length limit can stop between a character's bytes): it would show as '\ufffd', which an editor inserts."""
        emitted = self._decode(self.ids[self.prefix_offset:self.read_offset])
        text = self._decode(self.ids[self.prefix_offset:])
        unfinished = self._inside_a_character(text)
        self.prefix_offset = self.read_offset = len(self.ids)
        return text[len(emitted):].rstrip("\ufffd") if unfinished else text[len(emitted):]

    def _inside_a_character(self, text: str) -> bool:
        """Whether the window's `text` ends in a U+FFFD that stands for bytes of a character still to come, not one
        the model wrote whole (the bytes EF BF BD: a file read with replacements holds them, and the model copies
        them; taken for an unfinished character, it was held back, then dropped at the end)."""
        if not text.endswith("\ufffd"):
            return False
        from models.healing import vocabulary_bytes     # (only here: most text never ends in U+FFFD)
        pieces, tail = vocabulary_bytes(self.tokenizer).pieces, b""
        for token in reversed(self.ids[self.prefix_offset:]):
            piece = pieces[token] if token < len(pieces) else None
            if not piece:
                break
            tail = piece + tail
            if len(tail) >= 3:
                break
        return not tail.endswith("\N{REPLACEMENT CHARACTER}".encode())


def _window_start(tokenizer, prompt_ids: Sequence[int]) -> int:
    """Where the window's prompt tokens start: PROMPT_CONTEXT_TOKENS back, then back to the start of a character.
    Byte-fallback decoding makes a run of byte pieces that is not valid UTF-8 one U+FFFD per byte, so a window
    opening on a continuation byte (a prompt ending in two CJK characters or emoji) turned every byte piece the
    model wrote after it into U+FFFD too: held back as incomplete, then dropped or shown as garbage."""
    start = max(len(prompt_ids) - PROMPT_CONTEXT_TOKENS, 0)
    for _ in range(3):      # a UTF-8 character has at most three continuation bytes
        if start == 0 or not CONTINUATION_PIECES.fullmatch(tokenizer.convert_ids_to_tokens(prompt_ids[start]) or ""):
            break
        start -= 1
    return start

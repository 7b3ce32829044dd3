"""How long the texts a fast tokenizer is asked to encode are, recorded at its Rust tokenizer (every encode of
transformers' tokenizers passes there), for tests of what a prompt builder encodes."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator


class _Recording:
    def __init__(self, inner, lengths: list[int]) -> None:
        self._inner, self._lengths = inner, lengths

    def __getattr__(self, name):
        attribute = getattr(self._inner, name)
        if not (callable(attribute) and name.startswith("encode")):
            return attribute

        def recorded(texts, *args, **kwargs):
            for text in texts if isinstance(texts, list) else [texts]:
                self._lengths.append(sum(map(len, text)) if isinstance(text, (tuple, list)) else len(text))
            return attribute(texts, *args, **kwargs)
        return recorded


@contextlib.contextmanager
def encoded_lengths(tokenizer) -> Iterator[list[int]]:
    """The character counts of the texts `tokenizer` encodes inside the block, in order."""
    lengths: list[int] = []
    inner = tokenizer._tokenizer
    tokenizer._tokenizer = _Recording(inner, lengths)
    try:
        yield lengths
    finally:
        tokenizer._tokenizer = inner

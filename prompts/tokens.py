"""Exact token counts with the model's tokenizer, for prompts assembled piece by piece.

A prompt is built from pieces (a chunk, a file header, the text before the cursor) encoded one at a time and
joined as ids, so that every piece's cost is exact and additive and the budget can be met to the token.
SentencePiece tokenizers (Llama, CodeLlama) put an implicit space in front of whatever they encode; a piece in
the middle of a prompt must not get one, so ``encode`` drops it (CodeLlama's ``encode_infilling``), while
``encode_lead`` keeps it for the first text of a prompt, which the model saw with it in training.
Special-token strings inside text (a file that contains "<file_sep>") stay text and never become control ids.
"""

from __future__ import annotations

import weakref

_SENTINEL = "\n"  # encoded in front of a piece and dropped again: SentencePiece's space lands on it
_ENCODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def encoder_for(tokenizer) -> Encoder:
    """The Encoder of a tokenizer, built once per tokenizer object (reading the vocabulary takes a while)."""
    try:
        return _ENCODERS[tokenizer]
    except KeyError:
        encoder = _ENCODERS[tokenizer] = Encoder(tokenizer)
        return encoder
    except TypeError:  # not weak-referenceable
        return Encoder(tokenizer)


class Encoder:
    """Encodes prompt pieces with a transformers tokenizer so that their ids can simply be concatenated."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.vocab: dict[str, int] = tokenizer.get_vocab()
        first_token = tokenizer.convert_ids_to_tokens(self._plain(["a"])[0][:1])
        self.leading_space = bool(first_token) and first_token[0].startswith("\u2581")  # SentencePiece's "▁"
        self._sentinel_ids = self._plain([_SENTINEL])[0] if self.leading_space else []
        with_specials = tokenizer("a")["input_ids"]
        plain = self._plain(["a"])[0]
        # The ids the tokenizer puts in front of every text by default (Llama's BOS; none for most BPE models).
        self.start_ids: list[int] = with_specials[: with_specials.index(plain[0])] if plain else []

    def token_id(self, token: str) -> int | None:
        """The id of a token of the vocabulary, or None."""
        return self.vocab.get(token)

    def encode(self, text: str) -> list[int]:
        """Ids of a piece inside a prompt: no implicit leading space."""
        return self.encode_many([text])[0]

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        """``encode`` for many pieces in one call to the tokenizer (much faster than one at a time)."""
        if not texts:
            return []
        if not self.leading_space:
            return self._plain(texts)
        n = len(self._sentinel_ids)
        encoded = self._plain([_SENTINEL + text for text in texts])
        return [ids[n:] if ids[:n] == self._sentinel_ids else self._plain([text])[0] for ids, text in zip(encoded, texts)]

    def encode_lead(self, text: str) -> list[int]:
        """Ids of the first text of a prompt, the tokenizer's own way (SentencePiece: with its leading space)."""
        return self._plain([text])[0] if text else []

    def token_starts(self, text: str) -> list[int]:
        """The character offset where each token of ``text`` starts: an estimate of where tokens fall in a
        longer text, to choose a window before counting it exactly."""
        offsets = self.tokenizer(
            text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True
        )["offset_mapping"]
        return [start for start, _ in offsets]

    def _plain(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]

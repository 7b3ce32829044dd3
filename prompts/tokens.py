"""Exact token counts with the model's tokenizer, for prompts assembled piece by piece.

A prompt is built from pieces (a chunk, a file header, the text before the cursor) encoded one at a time and
joined as ids, so that every piece's cost is exact and additive and the budget can be met to the token.
SentencePiece tokenizers (Llama, CodeLlama) put an implicit space in front of whatever they encode; a piece in
the middle of a prompt must not get one, so ``encode`` drops it (CodeLlama's ``encode_infilling``), while
``encode_lead`` keeps it for the first text of a prompt, which the model saw with it in training.
Special-token strings inside text (a file that contains "<file_sep>") stay text and never become control ids; only a
chat template's own markup does (``encode_markup``). ``token_starts`` and ``last_token`` tell where the tokenizer
cuts a text (token healing).
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from array import array
from collections.abc import Sequence
from itertools import islice

_SENTINEL = "\n"  # encoded in front of a piece and dropped again: SentencePiece's space lands on it
_ENCODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LONGEST: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()     # tokenizer -> its longest piece's characters
CACHE_PIECES = 8192  # encoded pieces remembered per tokenizer (as 4-byte ids: a few MB)


def tokenizable(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD, one character for one, so offsets still match.

    File names that are not UTF-8 reach Python as lone surrogates (os.fsdecode's "surrogateescape"), and so
    may command-line text; tokenizers refuse them outright."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= char <= "\udfff" else char for char in text)


def encoder_for(tokenizer, rows: int | None = None) -> Encoder:
    """The Encoder of a tokenizer, one per tokenizer object, so that what it remembers serves every prompt.

    ``rows``: how many ids the model embeds (its embedding table's rows), told once by whoever pairs the tokenizer
    with a model; from then on every prompt built with this tokenizer names no special token past them. (A tokenizer
    may know tokens its model cannot embed: transformers' CodeLlamaTokenizer appends the infill tokens to
    CodeLlama-34B's 32,000 pieces.)"""
    try:
        encoder = _ENCODERS[tokenizer]
    except KeyError:
        # The value must not hold its key: a strong reference kept every tokenizer (and all it remembered)
        # alive for good, one more each time the REPL's /model loaded a model.
        encoder = _ENCODERS[tokenizer] = Encoder(weakref.proxy(tokenizer))
    except TypeError:  # not weak-referenceable
        return Encoder(tokenizer, rows)
    if rows is not None and rows != encoder.rows:
        encoder.rows = rows
        encoder._token_ids.clear()
    return encoder


def surely_over(tokenizer, text: str, limit: int) -> bool:
    """Whether ``text`` surely encodes to more than ``limit`` tokens, told from a start of it, not the whole: a
    client's question or raw prompt of 16 MB took 24-108 s and 3.4 GB of memory to encode only to be refused (the
    command line's sends up to 64 MiB). A token writes at most as many characters as its longest piece spells
    (a byte-level piece one character a byte, a SentencePiece byte token more than its byte), so a start of 4 x that
    many characters a token is at least 4 x (limit + 1) tokens, well past any difference its cut end makes. A
    normalizer that makes text shorter could leave it under that: then False, and the whole is encoded, as before."""
    if len(text) <= 4 * (limit + 1):       # (no piece is shorter than a character: nothing to look up)
        return False
    start = 4 * (limit + 1) * _longest_piece(tokenizer)
    if len(text) <= start:
        return False
    return len(tokenizer.encode(text[:start], add_special_tokens=False)) > 2 * (limit + 1)


def _longest_piece(tokenizer) -> int:
    """The characters of the tokenizer's longest piece (remembered: the vocabulary is tens of thousands)."""
    try:
        return _LONGEST[tokenizer]
    except (KeyError, TypeError):
        longest = max(1, max(map(len, tokenizer.get_vocab()), default=1))
    with contextlib.suppress(TypeError):     # (not weak-referenceable: looked up each time)
        _LONGEST[tokenizer] = longest
    return longest


def embedded_rows(tokenizer) -> int | None:
    """The rows ``encoder_for`` was told for this tokenizer (None: never told), without making an Encoder."""
    try:
        encoder = _ENCODERS.get(tokenizer)
    except TypeError:  # not weak-referenceable
        return None
    return encoder.rows if encoder is not None else None


def tokenizer_copy(tokenizer):
    """A deep copy of ``tokenizer`` for another thread (a fast tokenizer keeps `encode_special_tokens` as state that
    each call sets), told the embedding rows the original was (``encoder_for``): what a prompt or a check built with
    the copy refuses, one built with the original refuses too."""
    copied = copy.deepcopy(tokenizer)
    rows = embedded_rows(tokenizer)
    if rows is not None:
        encoder_for(copied, rows)
    return copied


class Encoder:
    """Encodes prompt pieces with a transformers tokenizer so that their ids can simply be concatenated.

    Pieces recur from one keystroke to the next (chunks, blocks of the current file), so the ids of recent
    pieces are remembered: only what changed is tokenized again."""

    def __init__(self, tokenizer, rows: int | None = None):
        self.tokenizer = tokenizer
        self.rows = rows  # the ids the model embeds are 0..rows - 1 (None: every id of the tokenizer)
        self._cache: dict[tuple[str, bool], array] = {}
        self._token_ids: dict[str, int | None] = {}
        first_token = tokenizer.convert_ids_to_tokens(self._plain(["a"])[0][:1])
        self.leading_space = bool(first_token) and first_token[0].startswith("\u2581")  # SentencePiece's "▁"
        self._sentinel_ids = self._plain([_SENTINEL])[0] if self.leading_space else []
        with_specials = tokenizer("a")["input_ids"]
        plain = self._plain(["a"])[0]
        # The ids the tokenizer puts in front of every text by default (Llama's BOS; none for most BPE models).
        self.start_ids: list[int] = with_specials[: with_specials.index(plain[0])] if plain else []

    def token_id(self, token: str) -> int | None:
        """The id of a token of the vocabulary that the model embeds, or None. (Asked token by token: reading the
        whole vocabulary takes a tenth of a second.)"""
        if token not in self._token_ids:
            number = self.tokenizer.convert_tokens_to_ids(token)
            known = number is not None and self.tokenizer.convert_ids_to_tokens(number) == token
            known = known and (self.rows is None or number < self.rows)
            self._token_ids[token] = number if known else None
        return self._token_ids[token]

    def encode(self, text: str) -> Sequence[int]:
        """Ids of a piece inside a prompt: no implicit leading space."""
        return self.encode_many([text])[0]

    def encode_many(self, texts: list[str], lead: bool = False) -> list[Sequence[int]]:
        """``encode`` (or ``encode_lead``) for many pieces, the new ones in one call to the tokenizer."""
        cache = self._cache
        missing = list(dict.fromkeys(t for t in texts if (t, lead) not in cache))
        if missing:
            for text, ids in zip(missing, self._lead(missing) if lead else self._infill(missing)):
                cache[text, lead] = array("i", ids)
        found = [cache[t, lead] for t in texts]
        for text in texts:  # (used again: the newest; the pieces of every prompt stay while others go)
            cache[text, lead] = cache.pop((text, lead))
        # Forget the least recently used (what this call returns is in hand), in one pass: a dict's first key,
        # taken again after each deletion, is found past every deleted slot (80,000 pieces: 6.3 s, not 2.1 s).
        for key in list(islice(cache, max(0, len(cache) - CACHE_PIECES))):
            del cache[key]
        return found

    def encode_lead(self, text: str) -> Sequence[int]:
        """Ids of the first text of a prompt, the tokenizer's own way (SentencePiece: with its leading space)."""
        return self.encode_many([text], lead=True)[0]

    def _infill(self, texts: list[str], encode=None) -> list[list[int]]:
        """`encode` (default: as text) without SentencePiece's implicit leading space: each text is encoded behind
        a sentinel whose ids are then dropped."""
        encode = encode or self._plain
        if not self.leading_space:
            return encode(texts)
        n = len(self._sentinel_ids)
        encoded = encode([_SENTINEL + text for text in texts])
        return [ids[n:] if ids[:n] == self._sentinel_ids else encode([text])[0] for ids, text in zip(encoded, texts)]

    def encode_markup(self, text: str, lead: bool = False) -> list[int]:
        """Ids of a chat template's own text, whose special-token strings ("<|im_start|>") are control tokens;
        `lead`: the prompt's first text (SentencePiece's leading space), else none, as ``encode``. Never for text
        a user or a repository wrote."""
        if not text:
            return []
        return self._markup([text])[0] if lead else self._infill([text], self._markup)[0]

    def _markup(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer([tokenizable(t) for t in texts], add_special_tokens=False)["input_ids"]

    def _lead(self, texts: list[str]) -> list[list[int]]:
        return [ids if text else [] for ids, text in zip(self._plain(texts), texts)]

    def token_starts(self, text: str) -> list[int]:
        """The character offset where each token of ``text`` starts: where a text too long for the budget can be
        cut between tokens."""
        return [start for start, _ in self._with_offsets(text)["offset_mapping"]]

    def last_token(self, text: str) -> str:
        """The text of the last token the tokenizer makes of ``text`` ("" for no text, and for an unknown token: a
        vocabulary without byte pieces has no token that writes that text, so it is no text to leave to the model)."""
        encoded = self._with_offsets(text)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        if not ids or ids[-1] in self.tokenizer.all_special_ids:
            return ""
        return text[offsets[-1][0] :]

    def _with_offsets(self, text: str):
        """``text``'s tokens and where each lies in it (input_ids, offset_mapping), special-token text as text."""
        return self.tokenizer(
            tokenizable(text), add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True
        )

    def _plain(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(list(map(tokenizable, texts)), add_special_tokens=False, split_special_tokens=True)[
            "input_ids"
        ]

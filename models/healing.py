"""Token healing: generation constrained to begin with a given text, which is then left out of the output.

A prompt that ends inside what the model would write as one token (a cursor after ``area = `` ends the prompt
with a lone space token, which byte-level vocabularies almost only have before digits) makes the model continue
from a position it never saw in training. The prompt builder removes that partial token and asks for its text
as ``GenerationConfig.required_prefix``; here the first sampled tokens are restricted to those that either lie
inside the text still to produce or begin with all of it (``" "`` allows ``" polygon"``), and the text is cut
from what the caller sees, streamed or returned, so stop strings apply to what follows it.

Matching is on bytes: every token's bytes come from its vocabulary entry (byte-level BPE's printable-byte
alphabet, or SentencePiece's ``▁`` and ``<0xNN>`` pieces), so a prefix that ends inside a multi-byte character,
or one a vocabulary spells only in byte pieces, is still reachable. Special and added tokens never heal.
"""

from __future__ import annotations

import functools
from bisect import bisect_left
from collections.abc import Set

import torch


class VocabularyBytes:
    """The bytes of every ordinary token of a tokenizer, sorted so that the tokens beginning with some bytes
    are one slice, and grouped by their bytes so that the tokens equal to some bytes are one lookup."""

    def __init__(self, tokenizer):
        pieces = token_bytes(tokenizer)
        # (ids sorted by their bytes, a stable sort: equal bytes in id order; sorting (bytes, id) pairs took 2x)
        self.sorted_ids = sorted((number for number, piece in enumerate(pieces) if piece), key=pieces.__getitem__)
        self.sorted_bytes = [pieces[number] for number in self.sorted_ids]
        self.by_bytes: dict[bytes, list[int]] = {}
        for number in self.sorted_ids:
            self.by_bytes.setdefault(pieces[number], []).append(number)
        self.pieces = pieces  # by id; None for tokens that never heal

    def allowed(self, remaining: bytes, excluding: Set[int] = frozenset()) -> list[int]:
        """Ids of the tokens that lie inside ``remaining`` from its start, or begin with all of it; of those inside,
        only the ones after which the rest can still be written (always, where every byte is a token: byte-level
        BPE, byte fallback; a vocabulary without byte pieces has dead ends, where every token would be masked).
        ``excluding``: tokens that may not be used (a request's bans), neither now nor for the rest."""
        writable = self._writable(remaining, excluding)
        ids = [number for end in range(1, len(remaining)) if writable[end]
               for number in self.by_bytes.get(remaining[:end], ())]
        start, stop = self._beginning_with(remaining)
        ids += self.sorted_ids[start:stop]
        return [number for number in ids if number not in excluding] if excluding else ids

    def can_write(self, text: bytes, excluding: Set[int] = frozenset()) -> bool:
        """Whether some sequence of tokens, none of them in ``excluding``, begins with ``text``."""
        return self._writable(text, excluding)[0]

    def _beginning_with(self, text: bytes) -> tuple[int, int]:
        """The slice of sorted_bytes (and sorted_ids) that begin with ``text``."""
        start = bisect_left(self.sorted_bytes, text)
        successor = _successor(text)
        stop = len(self.sorted_bytes) if successor is None else bisect_left(self.sorted_bytes, successor, lo=start)
        return start, stop

    def _writable(self, text: bytes, excluding: Set[int] = frozenset()) -> list[bool]:
        """For each offset i of ``text``, whether tokens not in ``excluding`` can write text[i:] from there (the last
        may run past it)."""
        def usable(ids) -> bool:
            return any(number not in excluding for number in ids) if excluding else bool(ids)

        writable = [False] * len(text) + [True]
        for i in range(len(text) - 1, -1, -1):
            start, stop = self._beginning_with(text[i:])
            begins = usable(self.sorted_ids[j] for j in range(start, stop)) if excluding else start < stop
            writable[i] = begins or any(writable[end] and usable(self.by_bytes.get(text[i:end], ()))
                                        for end in range(i + 1, len(text)))
        return writable


@functools.lru_cache(maxsize=4)
def vocabulary_bytes(tokenizer) -> VocabularyBytes:
    """The table of a tokenizer, built once per tokenizer (a vocabulary of 50k tokens takes ~0.1 s)."""
    return VocabularyBytes(tokenizer)


class HealingConstraint:
    """Per sequence, the bytes of the required prefix not produced yet. ``restrict`` masks logits to the tokens
    allowed next; ``advance`` takes the sampled tokens. ``active`` while any sequence still has bytes to go."""

    def __init__(self, table: VocabularyBytes, required_prefix: str, batch: int, excluding: Set[int] = frozenset()):
        self.table = table
        self.remaining = [required_prefix.encode("utf-8")] * batch
        self.excluding = excluding      # tokens the request bans: the prefix is written without them

    @property
    def active(self) -> bool:
        return any(self.remaining)

    def restrict(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) with every token that would break the prefix at -inf (rows already healed untouched)."""
        if not self.active:
            return logits
        restricted = logits.clone()
        for row, remaining in enumerate(self.remaining):
            if remaining:
                allowed = torch.tensor(self.table.allowed(remaining, self.excluding), dtype=torch.long,
                                       device=logits.device)
                keep = restricted[row, allowed]
                restricted[row] = float("-inf")
                restricted[row, allowed] = keep
        return restricted

    def advance(self, tokens: list[int]) -> None:
        for row, token in enumerate(tokens):
            remaining = self.remaining[row]
            if remaining:
                piece = self.table.pieces[token] if token < len(self.table.pieces) else None
                # (a token outside the allowed set can only come from a caller that did not restrict: give up)
                self.remaining[row] = remaining[len(piece):] if piece and remaining.startswith(piece) else b""


class PrefixStripper:
    """Drops the first characters of a text stream: the required prefix, which the generation begins with."""

    def __init__(self, prefix: str):
        self.left = len(prefix)

    def feed(self, text: str) -> str:
        if self.left:
            cut = min(self.left, len(text))
            self.left -= cut
            return text[cut:]
        return text


def token_bytes(tokenizer) -> list[bytes | None]:
    """Each id's bytes as the decoder writes them mid-text; None for special and added tokens."""
    size = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
    skip = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = repr(getattr(backend, "decoder", None))
    if "ByteLevel" in decoder:
        convert = _byte_level_bytes
    elif "ByteFallback" in decoder or "Metaspace" in decoder or "\u2581" in decoder:
        convert = _sentencepiece_bytes
    else:
        convert = lambda token: token.encode("utf-8")  # noqa: E731
    return [None if number in skip or token is None else convert(token) for number, token in enumerate(tokens)]


def _byte_level_bytes(token: str) -> bytes | None:
    """A byte-level BPE token's bytes (each character of the alphabet one byte); None if it has another character."""
    try:
        return token.translate(_FROM_BYTE_ALPHABET).encode("latin-1")
    except UnicodeEncodeError:
        return None


def _sentencepiece_bytes(token: str) -> bytes:
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        try:
            return bytes([int(token[3:5], 16)])
        except ValueError:
            pass
    return token.replace("\u2581", " ").encode("utf-8")


def _byte_alphabet() -> dict[int, str]:
    """Byte-level BPE's byte -> printable character map (GPT-2's): printable Latin-1 bytes stand for themselves,
    the others for the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


# character of the byte alphabet -> the Latin-1 character of its byte; a Latin-1 character outside the alphabet (a
# space, a control character) -> one Latin-1 cannot encode, so that a token holding one has no bytes
_FROM_BYTE_ALPHABET = {code: "\uffff" for code in range(256)} | {
    ord(character): chr(byte) for byte, character in _byte_alphabet().items()}


def _successor(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string beginning with ``prefix`` (None: there is none)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])

"""`logit_bias` as OpenAI and llama.cpp read it, checked at the edge: (token id, bias) pairs for the engine, which
adds them to the logits before every sampler (models/sampling.py), or a 400 naming what is wrong.

OpenAI (/v1/completions, /v1/chat/completions): an object mapping token ids, written as decimal strings, to a bias
from -100 to 100 ("-100 or 100 should result in a ban or exclusive selection"; added as given, as vLLM does).

llama.cpp (/completion, /infill; tools/server params_from_json_cmpl): a list of `[token, bias]` pairs or an object
`{token: bias}`. A token is an id, or text: every token of its tokenization (no BOS, special-token text read as
text) gets the bias. A bias is any number, or `false`: a ban (-inf). llama.cpp silently skips what it cannot use (an
id outside the vocabulary, `true`, a malformed pair); here each is a 400, as a bias quietly dropped would let the
answer pass for one that honoured it.
"""
from __future__ import annotations

import math
import re

from .errors import ApiError

OPENAI_RANGE = 100.0
_ID = re.compile(r"\s*[+-]?[0-9]+")        # what llama.cpp's strtol reads whole as an id


def openai(bias: dict | None, vocab_size: int) -> tuple[tuple[int, float], ...]:
    """OpenAI's map {"token id": -100..100}."""
    pairs = []
    for key, value in (bias or {}).items():
        if not re.fullmatch(r"[0-9]+", key):
            raise ApiError(400, f"logit_bias: {key!r} is not a token id (keys are token ids as decimal strings)")
        pairs.append((_token_id(int(key), vocab_size, key), _number(value, f"logit_bias[{key!r}]")))
        if not -OPENAI_RANGE <= pairs[-1][1] <= OPENAI_RANGE:
            raise ApiError(400, f"logit_bias[{key!r}]: {value} is outside -100..100")
    return tuple(pairs)


def llama_cpp(bias: list | dict | None, vocab_size: int) -> tuple[tuple[tuple[int, float], ...],
                                                                 tuple[tuple[str, float], ...]]:
    """llama.cpp's list of [token, bias] pairs or map {token: bias}; a token is an id or text to tokenize. Checked
    here, on the event loop; the (id, bias) pairs, and the (text, bias) ones, which `tokenized` makes pairs on the
    engine thread (a text of a body's size took 1-2 s to tokenize, which every other request waited for)."""
    if bias is None:
        return (), ()
    if isinstance(bias, dict):
        entries = [(key, value, f"logit_bias[{key!r}]") for key, value in bias.items()]
    else:
        entries = []
        for i, pair in enumerate(bias):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise ApiError(400, f"logit_bias[{i}]: expected a [token, bias] pair, got {pair!r}")
            entries.append((pair[0], pair[1], f"logit_bias[{i}]"))
    pairs, texts = [], []
    for token, value, where in entries:
        value = -math.inf if value is False else _number(value, where, " or false (a ban)")   # llama.cpp's ban
        if isinstance(token, str) and _ID.fullmatch(token):         # an object's keys are strings: "15" is an id
            token = int(token)
        if isinstance(token, bool) or not isinstance(token, (int, str)):
            raise ApiError(400, f"{where}: a token is an id or text, got {token!r}")
        if isinstance(token, int):
            pairs.append((_token_id(token, vocab_size, where), value))
        else:
            texts.append((token, value))
    return tuple(pairs), tuple(texts)


def tokenized(texts: tuple[tuple[str, float], ...], tokenizer) -> tuple[tuple[int, float], ...]:
    """llama.cpp's (text, bias) pairs as (id, bias) ones: every token of the text's tokenization (no BOS, special-
    token text read as text) gets the bias."""
    pairs = []
    for text, value in texts:
        pairs += [(i, value) for i in tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)]
    return tuple(pairs)


def _number(value, where: str, or_else: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ApiError(400, f"{where}: a bias is a finite number{or_else}, got {value!r}")
    return float(value)


def _token_id(token: int, vocab_size: int, where) -> int:
    if not 0 <= token < vocab_size:
        raise ApiError(400, f"logit_bias: token id {token} ({where}) is outside the vocabulary (0..{vocab_size - 1})")
    return token

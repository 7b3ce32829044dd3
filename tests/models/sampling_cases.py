"""Random sampler-chain cases and the whole-row draw they are held to (tests/models/test_sampling_candidates.py on a
CPU, bench/gpu/candidates_cuda.py on CUDA): logits with ties, -inf, NaN rows; chains in every route's order."""
import random
from types import SimpleNamespace

import torch

from models.generation import SAMPLERS, GenerationConfig
from models.infill import InfillSampler
from models.penalties import Penalties
from models.sampling import chain, pick

NEG_INF = float("-inf")
ORDERS = [SAMPLERS, ("penalties", "top_k", "top_p", "min_p", "temperature"),          # vLLM's; llama.cpp's default
          ("penalties", "top_k", "temperature", "top_p", "min_p"),                      # Ollama's
          ("min_p", "top_p", "temperature", "top_k", "penalties"),
          ("top_k", "top_p", "infill", "penalties", "temperature", "min_p"),           # llama.vim's
          ("infill", "top_k", "top_p", "penalties", "temperature", "min_p")]


def whole_row_sample(logits, config, generator, penalize=None, infill=None, bias=None, end=None):
    """The draw as it was before candidates: the chain on whole rows, then argmax(softmax / exponential_)."""
    rows = chain(logits, config, penalize, infill, bias, compact=False).row()
    if config.temperature <= 0:
        return pick(rows, end)
    weights = rows.softmax(dim=-1)
    return pick(weights / torch.empty_like(weights).exponential_(1.0, generator=generator), end)


def vocabulary(rng: random.Random, vocab: int):
    """Short texts over a 3-letter alphabet (prefixes everywhere, for infill's merges); ids 0-2 special."""
    pieces = [None] * 3 + [bytes(rng.choice(b"ab ") for _ in range(rng.randint(1, 3))) for _ in range(vocab - 3)]
    by_bytes: dict[bytes, list[int]] = {}
    for number, piece in enumerate(pieces):
        if piece:
            by_bytes.setdefault(piece, []).append(number)
    return SimpleNamespace(pieces=pieces, by_bytes=by_bytes)


def random_case(rng: random.Random):
    """A batch of rows and a request's chain: ties (rounded logits), -inf (bans, healing's restriction), NaN rows,
    top_k 1, k >= V, min_keep, either tie rule, penalties, a logit bias, infill."""
    vocab = rng.choice([7, 50, 300, 1000])
    rows = rng.choice([1, 1, 2, 3])
    generator = torch.Generator().manual_seed(rng.randrange(2**31))     # the case from `rng` alone, whatever ran before
    logits = torch.randn(rows, vocab, generator=generator)
    logits *= rng.choice([0.5, 3.0, 8.0])
    if rng.random() < 0.3:
        logits = (logits * rng.choice([0.5, 2.0])).round()                     # many ties
    if rng.random() < 0.3:
        logits[torch.rand(rows, vocab, generator=generator) < rng.random()] = NEG_INF
    if rng.random() < 0.05:
        logits[0] = float("nan")
    order = rng.choice(ORDERS)
    config = GenerationConfig(temperature=rng.choice([0.0, 0.2, 0.7, 1.0, 2.0]),
                              top_k=rng.choice([0, 1, 5, 40, vocab, vocab + 3]),
                              top_p=rng.choice([1.0, 0.9, 0.5, 0.99]), min_p=rng.choice([0.0, 0.05, 0.3]),
                              top_k_ties=rng.random() < 0.5, top_p_strict=rng.random() < 0.3,
                              min_keep=rng.choice([0, 0, 1, 3]), sampler_order=order)
    infill = InfillSampler(vocabulary(rng, vocab), [0, 1], 1) if "infill" in order and rng.random() < 0.8 else None
    penalize = None
    if rng.random() < 0.4:
        penalties = GenerationConfig(repeat_penalty=1.3, presence_penalty=0.5, penalty_last_n=-1)
        history = [[rng.randrange(vocab) for _ in range(8)] for _ in range(rows)]
        penalize = Penalties(penalties, history, 100).apply
    bias = None
    if rng.random() < 0.3:
        bias = torch.zeros(vocab)
        bias[rng.randrange(vocab)] = NEG_INF
        bias[rng.randrange(vocab)] = 2.0
    return logits, config, penalize, infill, bias


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.nan_to_num(nan=123.0), b.nan_to_num(nan=123.0))

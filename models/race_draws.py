"""The exponential race's random numbers (models/sampling.py: argmax(w / E), E ~ Exp(1)), the same ones the draw has
always used for the same generator, at a cost that follows the candidates rather than the vocabulary.

The draw's E are `torch.empty(B, V).exponential_(1.0, generator)`: one Exp(1) per token of the vocabulary, whatever
the chain kept, so a seeded request's tokens, and the generator's state for the next step, depend on them all. A
chain that ends on a few candidates still draws the whole row (the next token's draws must not move), but needs
only the candidates' E:
- CUDA (whose rows the chain keeps whole, models/candidates.py): the whole row's exponential_, cheap there;
- CPU: torch's exponential_ is one scalar loop, a double uniform then -log1p(-u) per token (DistributionsHelper's
  exponential_distribution), ~1 ms for 49,152 tokens on this machine. The same uniforms come from uniform_ on
  float64 (its own loop, a quarter of the time, the same numbers of the generator), and the candidates' E from
  Python's math.log1p (the C library's log1p, the one torch's loop calls): the same float32 numbers, bit for bit.
  Where a wide row needs its E (no sampler cut the row), E >= u bounds each score w / E by w / u: one token's exact
  score bounds the largest from below, and only the few tokens whose bound reaches it get their exact E, so the
  token drawn is still the one exponential_ would have drawn (the others score -inf).
The first CPU draw checks once that uniform_ and log1p give exponential_'s numbers and generator state on this torch
build (both are torch internals); where they do not, the draw uses exponential_ itself.
"""

from __future__ import annotations

import math

import torch

EXACT_WIDTH = 256           # up to this many candidates a row: every E from math.log1p (a Python loop)
CONTENDER_MARGIN = 1e-5     # bounds this close below the best exact score still count (a float32 ulp: ~1.2e-7)

_uniforms_match: bool | None = None


def race_scores(weights: torch.Tensor, generator: torch.Generator | None, ids: torch.Tensor | None = None,
                vocab: int | None = None) -> torch.Tensor:
    """weights (B, W) float32 (non-negative) of tokens `ids` (B, W) int64 (None: the whole row, W = V) -> the race's
    scores (B, W) weights / E, where E are the numbers `torch.empty(B, V).exponential_(1.0, generator=generator)`
    gives at those ids; the generator moves as that call moves it. Each row's first largest score is where
    exponential_'s would be (on a CPU a wide row's scores that cannot be the largest are -inf)."""
    rows, width = weights.shape
    shape = (rows, weights.shape[-1] if ids is None else vocab)
    if weights.is_cuda or not _uniforms_give_exponentials():
        race = torch.empty(shape, dtype=torch.float32, device=weights.device).exponential_(1.0, generator=generator)
        return weights / (race if ids is None else race.gather(-1, ids))
    uniforms = torch.empty(shape, dtype=torch.float64).uniform_(0.0, 1.0, generator=generator)     # (B, V)
    if ids is not None:
        uniforms = uniforms.gather(-1, ids)                                                       # (B, W)
    if width <= EXACT_WIDTH:
        return weights / _exact_exponentials(uniforms)
    # A wide row: E >= u (-log1p(-u) >= u), so w / u bounds each score from above; one token's exact score bounds
    # the largest from below, and only the tokens whose bound reaches it (a few) need their exact E.
    bound = weights / uniforms.float()                                                            # (B, W)
    seed = bound.argmax(dim=-1, keepdim=True)                                                     # (B, 1)
    seed_score = weights.gather(-1, seed) / _exact_exponentials(uniforms.gather(-1, seed))         # (B, 1)
    contenders = torch.nonzero(bound >= seed_score * (1.0 - CONTENDER_MARGIN), as_tuple=True)     # (row, column)
    scores = torch.full_like(weights, float("-inf"))
    scores[contenders] = weights[contenders] / _exact_exponentials(uniforms[contenders])
    if bool(torch.isnan(seed_score).any()):
        # a NaN weight (or 0 / 0) makes the row's largest NaN either way (models.sampling.pick: nothing to draw)
        scores = torch.where(torch.isnan(seed_score), bound, scores)
    return scores


def _exact_exponentials(uniforms: torch.Tensor) -> torch.Tensor:
    """-log1p(-u) as torch's CPU exponential_ computes it (the C library's log1p in double, then float32)."""
    values = [-math.log1p(-u) for u in uniforms.flatten().tolist()]
    return torch.tensor(values, dtype=torch.float64).float().view(uniforms.shape)


def _uniforms_give_exponentials() -> bool:
    """Whether uniform_ on float64 plus the C library's log1p reproduce exponential_ on this torch: its numbers and
    the generator's state after them (checked once)."""
    global _uniforms_match
    if _uniforms_match is None:
        theirs, ours = torch.Generator().manual_seed(20261202), torch.Generator().manual_seed(20261202)
        want = torch.empty(3, 700).exponential_(1.0, generator=theirs)
        got = _exact_exponentials(torch.empty(3, 700, dtype=torch.float64).uniform_(0.0, 1.0, generator=ours))
        _uniforms_match = (torch.equal(want, got)
                           and torch.equal(torch.rand(8, generator=theirs), torch.rand(8, generator=ours)))
    return _uniforms_match

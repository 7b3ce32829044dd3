"""llama.cpp's mirostat samplers: each step's candidates cut so that the text's surprise stays near a target.

Followed: llama.cpp's `llama_sampler_mirostat` and `llama_sampler_mirostat_v2` (src/llama-sampling.cpp), after Basu
et al., "Mirostat" (2021). A request carries mu, its current bound on a token's surprise in bits (-log2 p), which
starts at 2 tau and after each token moves by the error: mu -= eta * (surprise of the token taken - tau), the
surprise read in the distribution the token was drawn from (after the cut).

    v2: keep the tokens whose surprise is at most mu (always the likeliest one), then draw.
    v1: estimate the Zipf exponent s of the distribution from its m = 100 likeliest tokens (least squares of
        ln(p_i / p_i+1) against ln((i + 2) / (i + 1))), keep the k likeliest with
        k = (eps 2^mu / (1 - V^-eps))^(1 / s), eps = s - 1, V the vocabulary's size; then draw.

With mirostat on, llama.cpp's chain (common/sampling.cpp) is the logit bias, the temperature, then mirostat: top-k,
top-p, min-p, the penalties, infill and the dynamic temperature do not run. Temperature <= 0 leaves one token to
mirostat (llama.cpp's temperature sampler at 0 keeps the largest logit alone): the greedy choice. Here token
healing's restriction and the logit bias's bans apply first, as they do for the chain: a token they drop is never
kept (its surprise is infinite).

Where fewer than m tokens can still be drawn (a ban, healing), llama.cpp's v1 divides 0 by 0 in its estimate and
converts a NaN k to an int (undefined); here the estimate uses the pairs of tokens that can be drawn, which is
llama.cpp's sum whenever at least m can, and a k that is no number is 1. A k past the vocabulary keeps every token.

Everything stays on the device: mu is a tensor (B, 1) updated there after each draw, so the decode loop may queue
the next step before reading the token (no host sync), and each sequence of a batch has its own mu.
"""

from __future__ import annotations

import dataclasses

import torch

from models.generation import GenerationConfig
from models.sampling import chained, pick, race

M = 100        # llama.cpp's m: the likeliest tokens v1's estimate reads (common/sampling.cpp passes 100)


class Mirostat:
    """One request's mirostat state (mu per sequence) and its cut, draw and update."""

    def __init__(self, config: GenerationConfig, batch: int, vocab_size: int, device: torch.device):
        self.version, self.tau, self.eta = config.mirostat, config.mirostat_tau, config.mirostat_eta
        self.vocab_size = vocab_size
        # (B, 1) bits, in float32 as llama.cpp's float holds it: a tau past float32's range is an infinite mu, which
        # torch.full refused ("cannot be converted to type float without overflow": a server's 500)
        self.mu = torch.tensor(2.0 * self.tau, dtype=torch.float32, device=device).expand(batch, 1).clone()
        # llama.cpp's chain before mirostat: the logit bias and the temperature, every other sampler neutral
        self.before = dataclasses.replace(config, top_k=0, top_p=1.0, min_p=0.0, dynatemp_range=0.0,
                                          sampler_order=tuple(n for n in config.sampler_order if n != "infill"))

    @classmethod
    def of(cls, config: GenerationConfig, batch: int, logits: torch.Tensor) -> Mirostat | None:
        """The request's mirostat, or None where it asks for none (mirostat 0)."""
        return cls(config, batch, logits.shape[-1], logits.device) if config.mirostat else None

    def choose(self, logits: torch.Tensor, generator: torch.Generator | None, bias: torch.Tensor | None = None,
               end: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 logits (B, V) -> the tokens (B,) and the logits (B, V) they were drawn from (after the bias, the
        temperature and the cut); mu updated. `end`: models.sampling.pick's (a row with nothing to draw)."""
        logits = chained(logits, self.before, bias=bias)
        if self.before.greedy:
            return pick(logits, end), logits
        kept = self.truncate(logits)
        tokens = race(kept.softmax(dim=-1), generator, end)
        self.update(kept, tokens)
        return tokens, kept

    def truncate(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits (B, V) with the tokens this step's mu leaves out at -inf."""
        if self.version == 2:
            surprise = -torch.log2(logits.softmax(dim=-1))                                   # (B, V)
            keep = surprise <= self.mu
            keep.scatter_(-1, logits.argmax(dim=-1, keepdim=True), True)      # none within mu: the likeliest
            return logits.masked_fill(~keep, float("-inf"))
        return _keep_likeliest(logits, self._k(logits))

    def _k(self, logits: torch.Tensor) -> torch.Tensor:
        """v1's k (B, 1) from the estimated Zipf exponent, within 1..V, as a float holding a whole number."""
        m = min(M, logits.shape[-1])
        top = logits.softmax(dim=-1).topk(m, dim=-1).values                                 # (B, m) falling
        i = torch.arange(m - 1, dtype=torch.float32, device=logits.device)
        t = torch.log((i + 2) / (i + 1))                                                     # (m - 1,)
        b = torch.log(top[:, :-1] / top[:, 1:])                                              # (B, m - 1)
        pairs = top[:, 1:] > 0                                       # both tokens of the pair can be drawn
        s = (t * b).where(pairs, 0.0).sum(-1, keepdim=True) / (t * t).where(pairs, 0.0).sum(-1, keepdim=True)
        eps = s - 1                                                                          # (B, 1)
        k = (eps * torch.exp2(self.mu) / (1 - self.vocab_size ** -eps)) ** (1 / s)
        return k.nan_to_num(nan=1.0).clamp(1, logits.shape[-1]).floor()     # llama.cpp: max(int(k), 1)

    def update(self, kept: torch.Tensor, tokens: torch.Tensor) -> None:
        """mu -= eta * (surprise - tau), the surprise of each token taken (B,) in what it was drawn from (B, V);
        a row that drew nothing (its `end`, out of nothing left) keeps its mu."""
        p = kept.softmax(dim=-1).gather(-1, tokens[:, None])                                 # (B, 1)
        surprise = -torch.log2(p)
        self.mu = torch.where(torch.isfinite(surprise), self.mu - self.eta * (surprise - self.tau), self.mu)


def _keep_likeliest(logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The k (B, 1) likeliest tokens of each row kept, the others at -inf; ties ranked by id, lower first."""
    ordered, order = torch.sort(logits, dim=-1, descending=True, stable=True)               # (B, V)
    rank = torch.arange(logits.shape[-1], device=logits.device)
    return torch.full_like(logits, float("-inf")).scatter(-1, order, ordered.masked_fill(rank >= k, float("-inf")))


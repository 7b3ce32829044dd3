"""Speculative decoding by prompt lookup: drafts copied from the text itself, verified in one step.

Code repeats itself, and a repository-scale prompt holds the code a completion is about to copy. So the
draft for the next tokens is what followed the most recent earlier occurrence of the last few tokens
(the longest of a few n-gram lengths that matches), in the prompt or in the text generated so far.
The model then reads the pending token and the k drafts in one (k+1)-token decode step, whose cost is
close to a one-token step where decoding is bound by reading the weights and the KV cache.

Acceptance keeps the output exactly what plain decoding gives:
- greedy: the longest prefix of drafts equal to the model's own argmax, then the model's next token;
- sampling: exact rejection sampling with a point-mass draft: draft d is accepted with probability p(d),
  else the token comes from p with d removed and renormalised, so every token has p's distribution.
Rejected drafts are rolled back by the cache length alone (their slots are overwritten later).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from models.generation import GenerationConfig
from models.sampling import chained, pick, probabilities, race

NGRAM_LENGTHS = (4, 3, 2)   # longest first: a longer match predicts its continuation better


class PromptLookup:
    """Drafts by n-gram lookup over a growing token sequence (the prompt, then each accepted token).

    No index is built: each draft scans the sequence for its suffix with numpy (~20 us at 8k tokens, ~40 us at
    64k on a 2-core CPU), where a dict of every n-gram cost ~6 ms of Python per 8k-token prompt, paid on the way to the first
    token of every request (the engine builds the drafter before its first token; a keystroke's prefill of one
    token is done on an H200 before that). (bench/results/NOTES.md: a single-token match lost on every workload
    measured; longer lengths than 4 and adaptive draft lengths changed nothing.)
    """

    def __init__(self, tokens: Iterable[int]):
        self._tokens = np.zeros(0, dtype=np.int64)      # room to grow; the first `_length` are the sequence
        self._length = 0
        self.extend(tokens)

    @property
    def tokens(self) -> list[int]:
        return self._tokens[:self._length].tolist()

    def extend(self, tokens: Iterable[int]) -> None:
        """Append tokens; each n-gram ending before the newest token becomes findable."""
        new = np.fromiter(tokens, dtype=np.int64)
        end = self._length + len(new)
        if end > len(self._tokens):
            grown = np.empty(max(2 * len(self._tokens), end, 256), dtype=np.int64)
            grown[:self._length] = self._tokens[:self._length]
            self._tokens = grown
        self._tokens[self._length:end] = new
        self._length = end

    def draft(self, k: int) -> list[int]:
        """k tokens that followed the most recent earlier occurrence of the longest matching suffix ([] if none).

        A match close to the end copies its own draft onward, as LZ77 copies overlap: text repeating with a
        period shorter than k (a loop, a run of one token) still gets k tokens."""
        seq, length = self._tokens, self._length
        if length < 2:
            return []
        # Occurrences of the suffix end where the last token occurs again earlier (one scan of the sequence);
        # each n-gram length then checks only those places, the longest first.
        ends = np.flatnonzero(seq[:length - 1] == seq[length - 1]) + 1      # (occurrence end, exclusive)
        for n in NGRAM_LENGTHS:
            found = ends[ends >= n]
            for j in range(2, n + 1):
                found = found[seq[found - j] == seq[length - j]]
            if found.size:
                start = int(found[-1])
                draft = seq[start:min(start + k, length)].tolist()
                while len(draft) < k:
                    draft.append(draft[len(draft) - (length - start)])
                return draft
        return []


def accept(logits: torch.Tensor, drafts: list[int], config: GenerationConfig,
           generator: torch.Generator | None, penalize=None, infill=None, bias=None, end: int | None = None
           ) -> list[int]:
    """The tokens one verification step emits: the accepted drafts, then one token of the model's own.

    logits (T, V) float32 at the pending token and each of the T - 1 drafts (position i predicts what
    follows draft i - 1). One host sync. `end`: models.sampling.sample's (a row with nothing to draw gives it).
    """
    k = len(drafts)
    if config.greedy:
        best = pick(chained(logits, config, penalize, infill, bias), end).tolist()      # (T,)
        a = 0
        while a < k and drafts[a] == best[a]:
            a += 1
        return drafts[:a] + [best[a]]
    probs = probabilities(logits, config, penalize, infill, bias)                   # (T, V)
    if k == 0:
        return race(probs, generator, end).tolist()
    d = torch.tensor(drafts, device=logits.device)                              # (k,)
    rows = torch.arange(k, device=logits.device)                                # (k,)
    p_draft = probs[rows, d]                                                    # (k,)
    u = torch.rand(k, generator=generator, device=logits.device)                # (k,)
    n_accepted = (u < p_draft).int().cumprod(dim=0).sum()                      # leading acceptances
    # Where draft i is rejected the token comes from p_i without d_i; after k acceptances, from p_k.
    residual = probs.clone()                                                    # (T, V)
    residual[rows, d] = 0.0
    # p(d) == 1 leaves nothing, but then d is always accepted: keep p there so the row stays valid.
    residual = torch.where(residual.sum(dim=-1, keepdim=True) > 0, residual, probs)
    picks = race(residual, generator, end)                                      # (T,)
    a, *picked = torch.cat([n_accepted[None], picks]).tolist()
    return drafts[:a] + [picked[a]]

"""A sampler chain's logits as a candidate array: once a sampler has cut a row down to a few tokens (top-k's k), the
samplers after it and the draw work on those few (their logits and token ids) instead of on the whole vocabulary,
as llama.cpp's samplers work on their `llama_token_data_array`.

`Candidates(values, ids, vocab)`: values (B, W) float32 at token ids (B, W) int64, rising along each row; every token
a row does not list has logit -inf. `ids` None: the whole row (W = V, a token's id its position). So every sampler
of models/sampling.py reads the same numbers on the candidates as on the whole row: a dropped token is -inf either
way, ties rank by position, which rises with the id as on the whole row (llama.cpp's and Ollama's "lower ids
first"), and a row's maximum, minimum and sums do not see tokens at -inf. Columns past a row's own candidates (rows
of a batch keep different numbers) are -inf at ids of their own, distinct within the row. (A softmax's sum adds the
same terms in another grouping on W columns than on V: a top-p boundary or a race within float32 rounding of a tie
could fall the other way. tests/models/test_sampling_candidates.py draws thousands of random rows and chains: none
did.)

Only CPU rows are compacted, where the embedded model runs: the chain on its 49,152-token rows cost 1-5 ms a token
and costs a fifth of that on candidates (bench/sampling_bench.py). Compaction reads how many tokens survive on the
host, which there costs nothing. CUDA rows stay whole: a batch-1 chain there costs its kernels' launches (~10-20 us
each on the H200's host, each kernel done sooner), and the candidates' gathers and sorts add launches (measured on
the H200, bench/results/h200-run31: llama.vim's chain 448 -> 746 us a token on candidates), while a whole row of
49,152 logits costs a kernel no more than 40 do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

NEG_INF = float("-inf")
# A CPU row is compacted where at most this share of the vocabulary survives: below it the samplers after the cut and
# the draw cost less on the candidates than the compaction costs (one top-k over the row's positions).
COMPACT_SHARE = 0.25


def host_reads(tensor: torch.Tensor) -> bool:
    """Whether the chain may read a number of this tensor on the host (how many tokens a row kept), and so compact
    it: CPU tensors, where it costs nothing; not CUDA ones (whose queued sampling must not wait for the GPU, and
    whose rows stay whole: the module's docstring says why). The one place the chain decides it: sampling.chain."""
    return not tensor.is_cuda


@dataclass(frozen=True)
class Candidates:
    values: torch.Tensor            # (B, W) float32 logits
    ids: torch.Tensor | None        # (B, W) int64 token ids, rising in each row; None: the whole row, W = V
    vocab: int                      # V

    @property
    def compact(self) -> bool:
        return self.ids is not None

    def with_values(self, values: torch.Tensor) -> Candidates:
        return Candidates(values, self.ids, self.vocab)

    def row(self) -> torch.Tensor:
        """The logits (B, V): the candidates' values at their ids, -inf elsewhere."""
        if self.ids is None:
            return self.values
        full = torch.full((self.values.shape[0], self.vocab), NEG_INF, dtype=self.values.dtype,
                          device=self.values.device)
        return full.scatter_(-1, self.ids, self.values)

    def through_row(self, sampler: Callable[[torch.Tensor], torch.Tensor]) -> Candidates:
        """A sampler written for whole rows (B, V) -> (B, V) run on these candidates: on the row they stand for, then
        read back at the candidates (exact where the sampler never revives a dropped token, as every sampler here)."""
        if self.ids is None:
            return self.with_values(sampler(self.values))
        return self.with_values(sampler(self.row()).gather(-1, self.ids))

    def token(self, position: torch.Tensor) -> torch.Tensor:
        """Column positions (B,) -> token ids (B,)."""
        return position if self.ids is None else self.ids.gather(-1, position[:, None])[:, 0]


def kept(logits: torch.Tensor, keep: torch.Tensor, width: int) -> Candidates:
    """Whole rows (B, V) and which tokens stay (B, V) bool, at most `width` a row -> the kept tokens as candidates of
    that width (rows with fewer: -inf columns at ids no kept token has). On the device, no host sync: one top-k over
    the positions' rank (kept ones first, the lower position first)."""
    vocab = logits.shape[-1]
    rank = torch.arange(vocab, 0, -1, device=logits.device, dtype=torch.int32)        # (V,) V .. 1
    key = torch.where(keep, rank, 0)                                                    # (B, V)
    top, ids = torch.topk(key, width, dim=-1)                                           # (B, W) rising ids first
    values = torch.where(top > 0, logits.gather(-1, ids), NEG_INF)
    return Candidates(values, ids, vocab)


def survivors_width(keep: torch.Tensor) -> int:
    """The most tokens any row keeps (a host read: CPU rows only)."""
    return int(keep.sum(dim=-1).max()) if keep.shape[0] else 0


def compacted(candidates: Candidates) -> Candidates:
    """CPU whole rows whose samplers left few tokens (at most COMPACT_SHARE of V, not -inf) as candidates; anything
    else (rows already compact, rows that kept many) as it is. (The number of survivors is read on the host: the
    chain calls it only where `host_reads`.)"""
    if candidates.compact or candidates.values.shape[0] == 0:
        return candidates
    logits = candidates.values
    alive = logits != NEG_INF                                                  # (B, V) (NaN stays a candidate)
    width = survivors_width(alive)
    if width > COMPACT_SHARE * logits.shape[-1]:
        return candidates
    return kept(logits, alive, max(width, 1))

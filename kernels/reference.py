"""Plain-PyTorch decode attention: the "standard attention" path and the tests' oracle.

Two functions with the contract of `kernels.flash_decode`:
- `flash_decode`: repeat_kv + matmul + softmax, computed in float32 (float64 stays float64),
  what a straightforward implementation of one decode step does;
- `split_kv_decode`: the same split-KV algorithm as the Triton kernels (partial softmax per split,
  then a log-sum-exp combine), so each step of the kernel has a readable twin.
"""

from __future__ import annotations

import torch

from kernels.validation import check_decode_inputs


def _lengths(cache_seqlens: torch.Tensor | None, B: int, S: int, device) -> torch.Tensor:
    if cache_seqlens is None:
        return torch.full((B,), S, dtype=torch.int64, device=device)
    return cache_seqlens.to(device=device, dtype=torch.int64)


def _upcast(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.float()


def flash_decode(q, k_cache, v_cache, cache_seqlens=None, *, softmax_scale=None, num_splits=None,
                 return_lse=False):
    """Decode attention for one query token per sequence, in plain PyTorch.

    q: (B, Hq, D); k_cache, v_cache: (B, Hkv, S, D); cache_seqlens: int32 (B,) or None (= S).
    Returns out (B, Hq, D) in q.dtype, and lse (B, Hq) in float32 if return_lse.
    `num_splits` is accepted for signature parity and ignored: there is nothing to split here.
    """
    B, Hq, D, Hkv, S = check_decode_inputs(q, k_cache, v_cache, cache_seqlens, num_splits)
    scale = D ** -0.5 if softmax_scale is None else softmax_scale
    group = Hq // Hkv
    qf = _upcast(q)                                                   # (B, Hq, D)
    k = _upcast(k_cache).repeat_interleave(group, dim=1)             # (B, Hq, S, D)
    v = _upcast(v_cache).repeat_interleave(group, dim=1)             # (B, Hq, S, D)
    scores = torch.einsum("bhd,bhsd->bhs", qf, k) * scale             # (B, Hq, S)
    lengths = _lengths(cache_seqlens, B, S, q.device)
    valid = torch.arange(S, device=q.device)[None, :] < lengths[:, None]  # (B, S)
    scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)                             # (B, Hq)
    # exp(-inf - -inf) would be NaN for empty rows; those rows get zeros instead.
    probs = torch.exp(scores - lse.masked_fill(lse == float("-inf"), 0.0)[..., None])
    out = torch.einsum("bhs,bhsd->bhd", probs, v).to(q.dtype)
    return (out, lse.float()) if return_lse else out


def split_kv_decode(q, k_cache, v_cache, cache_seqlens=None, *, softmax_scale=None, num_splits=1,
                    block_n=64, return_lse=False):
    """The Triton kernels' algorithm, step by step, in float32 PyTorch.

    Each sequence's valid keys are cut into `num_splits` ranges of whole `block_n` blocks (the last
    ranges may be empty, as in the kernel); each range yields a partial output normalised by its own
    softmax sum, plus its log-sum-exp; the combine rescales the partials by exp(lse_i - lse).
    """
    B, Hq, D, Hkv, S = check_decode_inputs(q, k_cache, v_cache, cache_seqlens, num_splits)
    scale = D ** -0.5 if softmax_scale is None else softmax_scale
    group = Hq // Hkv
    lengths = _lengths(cache_seqlens, B, S, "cpu").tolist()
    out = torch.zeros(B, Hq, D, dtype=torch.float32, device=q.device)
    lse = torch.full((B, Hq), float("-inf"), dtype=torch.float32, device=q.device)
    for b, length in enumerate(lengths):
        n_blocks = -(-length // block_n)
        blocks_per_split = max(1, -(-n_blocks // num_splits))
        partial_out, partial_lse = [], []
        for start_block in range(0, n_blocks, blocks_per_split):
            lo, hi = start_block * block_n, min((start_block + blocks_per_split) * block_n, length)
            k = k_cache[b, :, lo:hi].float().repeat_interleave(group, dim=0)  # (Hq, n, D)
            v = v_cache[b, :, lo:hi].float().repeat_interleave(group, dim=0)  # (Hq, n, D)
            s = torch.einsum("hd,hnd->hn", q[b].float(), k) * scale           # (Hq, n)
            m = s.amax(dim=-1, keepdim=True)
            p = torch.exp(s - m)
            l = p.sum(dim=-1, keepdim=True)
            partial_out.append(torch.einsum("hn,hnd->hd", p, v) / l)          # (Hq, D)
            partial_lse.append((m + torch.log(l)).squeeze(-1))                # (Hq,)
        if partial_out:
            lse_splits = torch.stack(partial_lse)                             # (splits, Hq)
            lse[b] = torch.logsumexp(lse_splits, dim=0)
            weights = torch.exp(lse_splits - lse[b])                          # (splits, Hq)
            out[b] = (weights[..., None] * torch.stack(partial_out)).sum(dim=0)
    out = out.to(q.dtype)
    return (out, lse) if return_lse else out

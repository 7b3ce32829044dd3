"""Flash-Decoding over an 8-bit cache whose sink and window tokens are read exact.

e4m3's 3 mantissa bits cost a model its top-1 next token at ~4% of positions; reading each query's first
`sink` keys (attention sinks) and last `window` keys (KIVI's recent window) from an exact copy recovers most of
it (models/kv_cache.py has the measurements). For the query at position i the keys split in two disjoint sets:
    8-bit:  sink <= j <= i - window            (read by the split kernels)
    exact:  j < sink, or i - window < j <= i   (the cache's `ExactTokens`, at most sink + ring slots)
The 8-bit set is the split kernels' own causal span shifted: the caches seen from slot `sink` on, with lengths
len - sink - window, put query t's last key at (len - T + t) - window (the kernels align their causal mask
bottom-right), so the kernels run unchanged. The exact slots are one more partial, attended in PyTorch (at most
sink + ring keys a row), and the two are merged by their log-sum-exp: `kernels.reference.merge_partials`, the
combine's arithmetic. Graph-safe: the shifted lengths are computed on the device; every shape is static.

Not yet: the exact partial inside the combine kernel (the sketch in bench/results/NOTES.md), which would save
the few small launches this costs a layer.
"""

from __future__ import annotations

import torch

from kernels import reference
from kernels.interface import KERNEL_DTYPES, check_launchable, launch, plan_for
from kernels.validation import ExactTokens, check_decode_inputs, check_exact_tokens, softmax_scale_of


def flash_decode_exact_window(q, k_cache, v_cache, cache_seqlens=None, *, k_scale, v_scale, exact: ExactTokens,
                              softmax_scale=None, num_splits=None, return_lse=False):
    """`kernels.flash_decode` over an 8-bit cache with exact sink and window tokens `exact` (arguments and result
    as flash_decode's; `kernels.reference.flash_decode_exact_window` is the same arithmetic in PyTorch)."""
    B, Hq, Hkv, S, D, T, scaled = check_decode_inputs(q, k_cache, v_cache, cache_seqlens, num_splits,
                                                      k_scale=k_scale, v_scale=v_scale, dtypes=KERNEL_DTYPES)
    check_exact_tokens(exact, B, Hkv, D, q.device, scaled)
    check_launchable(q.device)
    scale = softmax_scale_of(softmax_scale, D)
    lengths = (cache_seqlens if cache_seqlens is not None
               else torch.full((B,), S, dtype=torch.int32, device=q.device))                 # (B,)
    q4 = q.reshape(B, Hq, T, D)                                                              # (B, Hq, T, D)
    query_pos = reference.query_positions(lengths, T)                                        # (B, T)
    fine = reference.masked_partial(q4.float(), exact.k, exact.v, reference.exact_slots_visible(
        exact.pos, query_pos, exact.sink, exact.window), scale)                              # (B, Hq, T, D), (B, Hq, T)
    span = S - exact.sink - exact.window     # the most 8-bit keys a query reads; none at all when <= 0
    if span > 0:
        shifted = (lengths - (exact.sink + exact.window)).clamp_min(0).to(torch.int32)       # (B,)
        tail = slice(exact.sink, None)                       # slots sink.. : query t's keys 0 .. shifted - T + t
        plan = plan_for(q, B, Hq, Hkv, S - exact.sink, D, T, True, num_splits, int8=k_cache.dtype == torch.int8)
        rough = launch(q4, k_cache[:, :, tail], v_cache[:, :, tail], shifted, plan, softmax_scale=scale,
                       k_scale=k_scale[:, :, tail], v_scale=v_scale[:, :, tail])             # (B, Hq, T, D), (B, Hq, T)
        out, lse = reference.merge_partials(*rough, *fine)
    else:
        out, lse = fine
    out, lse = out.to(q.dtype).reshape(q.shape), lse.reshape(q.shape[:-1])
    return (out, lse) if return_lse else out

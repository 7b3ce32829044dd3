"""Flash-Decoding over an 8-bit cache whose sink and window tokens are read exact.

e4m3's 3 mantissa bits cost a model its top-1 next token at ~4% of positions; reading each query's first
`sink` keys (attention sinks) and last `window` keys (KIVI's recent window) from an exact copy recovers most of
it (models/kv_cache.py has the measurements). For the query at position i the keys split in two disjoint sets:
    8-bit:  sink <= j <= i - window            (read by the split kernels)
    exact:  j < sink, or i - window < j <= i   (the cache's `ExactTokens`: sink + window slots gathered)
The 8-bit set is the split kernels' own causal span with both ends moved: `key_start` = sink makes the first
split start there, and `seqlen_shift` = window shortens every length, which puts query t's last key at
(len - T + t) - window (the kernels align their causal mask bottom-right). The exact slots are one more partial
(kernels/exact_combine.py), one program per (batch, query head, token) attending the slots of its sink and window
positions (sink + window keys, found by the cache's layout, however long its ring; on the CUDA cores in float32),
merged with the split kernels' partials by their log-sum-exp: inside the combine where the call
splits (no launch beyond a plain call's), by one merge kernel after an unsplit call
(`kernels.reference.flash_decode_exact_window` is the arithmetic). Graph-safe: the kernels shift the lengths
themselves (a PyTorch op for it cost a 7B step 32 launches); every shape is static.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import triton

from kernels.exact_combine import EXACT_WARPS, _exact_merge_kernel
from kernels.interface import KERNEL_DTYPES, LOG2_E, check_launchable, launch, plan_for
from kernels.validation import ExactTokens, check_decode_inputs, check_exact_tokens, softmax_scale_of


def flash_decode_exact_window(q, k_cache, v_cache, cache_seqlens=None, *, k_scale, v_scale, exact: ExactTokens,
                              softmax_scale=None, num_splits=None, return_lse=False):
    """`kernels.flash_decode` over an 8-bit cache with exact sink and window tokens `exact` (arguments and result
    as flash_decode's; `kernels.reference.flash_decode_exact_window` is the same arithmetic in PyTorch)."""
    B, Hq, Hkv, S, D, T, scaled = check_decode_inputs(q, k_cache, v_cache, cache_seqlens, num_splits,
                                                      k_scale=k_scale, v_scale=v_scale, dtypes=KERNEL_DTYPES)
    check_exact_tokens(exact, B, Hkv, D, q.device, scaled, query_tokens=T)
    check_launchable(q.device)
    scale = softmax_scale_of(softmax_scale, D)
    lengths = (cache_seqlens if cache_seqlens is not None
               else torch.full((B,), S, dtype=torch.int32, device=q.device))                 # (B,)
    q4 = q.reshape(B, Hq, T, D)                                                              # (B, Hq, T, D)
    span = S - exact.sink - exact.window     # the most 8-bit keys a query reads; none at all when <= 0
    if span > 0:
        # The split kernels read query t's keys sink .. len - window - T + t of the whole cache, bounds they apply
        # themselves (`key_start`, `seqlen_shift`): a view from slot sink would put a sequence-major 8-bit V's
        # tiles 16 bytes off their 128-byte lines (the 34B step 10% slower, Run 40).
        # The whole cache's plan: the tuned and forced plans (models/step_plans.py) are keyed by its shape.
        plan = plan_for(q, B, Hq, Hkv, S, D, T, True, num_splits, int8=k_cache.dtype == torch.int8)
        if plan.num_splits > 1 and exact.sink >= plan.block_n:
            # Splits are laid from key 0 and the first starts at the sink: a sink of a whole tile or more can leave
            # the first splits of a short row no key, and the combine would read their unwritten partials. One
            # split always has its keys (models/kv_cache.py's sink of 16 is under every plan's tile: unaffected).
            plan = dataclasses.replace(plan, num_splits=1)
        # split: the combine merges the exact partials too; unsplit: the split kernel writes out, then a merge
        combined = combine_exact_launch(q4, exact, lengths, scale, S) if plan.num_splits > 1 else None
        out, lse = launch(q4, k_cache, v_cache, lengths, plan, softmax_scale=scale, k_scale=k_scale,
                          v_scale=v_scale, exact=combined, seqlen_shift=exact.window, key_start=exact.sink)
    else:
        combined = None
        out = torch.empty(q4.shape, dtype=q.dtype, device=q.device)                         # (B, Hq, T, D)
        lse = torch.empty(q4.shape[:-1], dtype=torch.float32, device=q.device)              # (B, Hq, T)
    if combined is None:
        merge_exact(q4, exact, lengths, out, lse, scale, S, has_quantized=span > 0)
    out, lse = out.reshape(q.shape), lse.reshape(q.shape[:-1])
    return (out, lse) if return_lse else out


class ExactLaunch(NamedTuple):
    """What `kernels.interface.launch` needs to combine a split call's partials with the exact ones
    (`_combine_exact_kernel`): the arguments after the combine's own, and the constexprs beyond its."""
    args: tuple
    constexprs: dict


def exact_arguments(q4, exact: ExactTokens, lengths) -> tuple:
    """The exact kernels' arguments from Q on (after any leading ones), in their order but for D: q4 (B, Hq, T, D),
    lengths int32 (B,) (the rows' own, clamped to S as the kernels clamp them)."""
    _, Hq, T, _ = q4.shape
    return (q4, exact.k, exact.v, exact.pos, lengths,
            *q4.stride()[:3], *exact.k.stride()[:3], *exact.v.stride()[:3], exact.pos.stride(0),
            Hq, T, exact.pos.shape[1])


def merge_exact(q4, exact: ExactTokens, lengths, out, lse, scale: float, S: int, *, has_quantized: bool,
                compile_only: bool = False):
    """Merge each query's exact partial into out (B, Hq, T, D) and lse (B, Hq, T) float32 (natural log), in place:
    they hold the split kernels' result over the 8-bit keys (`has_quantized`; else nothing yet)."""
    B, Hq, T, D = q4.shape
    front = exact_arguments(q4, exact, lengths)
    args = (*front[:5], out, lse, *front[5:], D, S, scale * LOG2_E, exact.sink, exact.window)
    constexprs = exact_merge_constexprs(Hq // exact.k.shape[1], exact.sink + exact.window, D, has_quantized)
    if compile_only:
        return _exact_merge_kernel.warmup(*args, grid=(B * Hq * T,), **constexprs, num_warps=EXACT_WARPS)
    _exact_merge_kernel[(B * Hq * T,)](*args, **constexprs, num_warps=EXACT_WARPS)
    return None


def exact_merge_constexprs(group: int, read: int, D: int, has_quantized: bool) -> dict:
    """read: the exact keys a query reads at most, sink + window (not the ring's slots: they are gathered)."""
    return dict(GROUP=group, HAS_QUANTIZED=has_quantized, EXACT_BLOCK=triton.next_power_of_2(read),
                BLOCK_D=triton.next_power_of_2(D))


def combine_exact_launch(q4, exact: ExactTokens, lengths, scale: float, S: int) -> ExactLaunch:
    """`launch`'s `exact`: the split call's combine then merges the exact partials too."""
    front = exact_arguments(q4, exact, lengths)
    return ExactLaunch((*front, S, scale * LOG2_E, exact.sink, exact.window),
                       dict(GROUP=q4.shape[1] // exact.k.shape[1],
                            EXACT_BLOCK=triton.next_power_of_2(exact.sink + exact.window)))

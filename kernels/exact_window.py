"""Flash-Decoding over an 8-bit cache whose sink and window tokens are read exact.

e4m3's 3 mantissa bits cost a model its top-1 next token at ~4% of positions; reading each query's first
`sink` keys (attention sinks) and last `window` keys (KIVI's recent window) from an exact copy recovers most of
it (models/kv_cache.py has the measurements). For the query at position i the keys split in two disjoint sets:
    8-bit:  sink <= j <= i - window            (read by the split kernels)
    exact:  j < sink, or i - window < j <= i   (the cache's `ExactTokens`, at most sink + ring slots)
The 8-bit set is the split kernels' own causal span shifted: the caches seen from slot `sink` on, with lengths
len - sink - window, put query t's last key at (len - T + t) - window (the kernels align their causal mask
bottom-right), so the kernels run unchanged. The exact slots are one more partial: `_exact_merge_kernel`, one
program per (batch, query head, token), attends its row's exact slots (at most sink + ring keys, on the CUDA
cores in float32) and merges them with the split kernels' result by their log-sum-exp, in place: one launch
more than a plain call (`kernels.reference.flash_decode_exact_window` is its arithmetic). Graph-safe: the shifted
lengths are computed on the device; every shape is static.

Not yet: the exact partial inside the combine kernel itself (the sketch in bench/results/NOTES.md), which would
save that launch where the call splits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.interface import KERNEL_DTYPES, LOG2_E, check_launchable, launch, plan_for
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
    span = S - exact.sink - exact.window     # the most 8-bit keys a query reads; none at all when <= 0
    if span > 0:
        shifted = (lengths - (exact.sink + exact.window)).clamp_min(0).to(torch.int32)       # (B,)
        tail = slice(exact.sink, None)                       # slots sink.. : query t's keys 0 .. shifted - T + t
        # The whole cache's plan: the tuned and forced plans (models/step_plans.py) are keyed by its shape.
        plan = plan_for(q, B, Hq, Hkv, S, D, T, True, num_splits, int8=k_cache.dtype == torch.int8)
        out, lse = launch(q4, k_cache[:, :, tail], v_cache[:, :, tail], shifted, plan, softmax_scale=scale,
                          k_scale=k_scale[:, :, tail], v_scale=v_scale[:, :, tail])          # (B, Hq, T, D), (B, Hq, T)
    else:
        out = torch.empty(q4.shape, dtype=q.dtype, device=q.device)
        lse = torch.empty(q4.shape[:-1], dtype=torch.float32, device=q.device)
    merge_exact(q4, exact, lengths, out, lse, scale, S, has_quantized=span > 0)
    out, lse = out.reshape(q.shape), lse.reshape(q.shape[:-1])
    return (out, lse) if return_lse else out


def merge_exact(q4, exact: ExactTokens, lengths, out, lse, scale: float, S: int, *, has_quantized: bool,
                compile_only: bool = False):
    """Merge each query's exact partial into out (B, Hq, T, D) and lse (B, Hq, T) float32 (natural log), in place:
    they hold the split kernels' result over the 8-bit keys (`has_quantized`; else nothing yet). lengths int32 (B,),
    clamped to S as the kernels clamp them."""
    B, Hq, T, D = q4.shape
    N = exact.pos.shape[1]
    args = (q4, exact.k, exact.v, exact.pos, lengths, out, lse,
            *q4.stride()[:3], *exact.k.stride()[:3], *exact.v.stride()[:3], exact.pos.stride(0),
            Hq, T, N, D, S, scale * LOG2_E, exact.sink, exact.window)
    constexprs = exact_merge_constexprs(Hq // exact.k.shape[1], N, D, has_quantized)
    if compile_only:
        return _exact_merge_kernel.warmup(*args, grid=(B * Hq * T,), **constexprs, num_warps=EXACT_MERGE_WARPS)
    _exact_merge_kernel[(B * Hq * T,)](*args, **constexprs, num_warps=EXACT_MERGE_WARPS)
    return None


EXACT_MERGE_WARPS = 4   # a (slots, head dim) tile of at most 64 x 256 floats a program: 128 threads


def exact_merge_constexprs(group: int, N: int, D: int, has_quantized: bool) -> dict:
    return dict(GROUP=group, HAS_QUANTIZED=has_quantized, BLOCK_N=triton.next_power_of_2(N),
                BLOCK_D=triton.next_power_of_2(D))


@triton.jit
def _exact_merge_kernel(
    Q, EXACT_K, EXACT_V, EXACT_POS, SEQLENS, OUT, LSE,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_pb,
    Hq, T, N, D, S, qk_scale, sink, window,
    GROUP: tl.constexpr, HAS_QUANTIZED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One (batch, query head, token) row: attend the row's exact slots whose positions are the query's sink or
    window keys (softmax in base 2, scores scaled by qk_scale = softmax scale x log2 e), and merge that partial with
    OUT's and LSE's (the 8-bit keys' result, natural log; ignored where its lse is -inf) by log-sum-exp."""
    row = tl.program_id(0).to(tl.int64)                    # (b * Hq + query head) * T + token
    t = row % T
    h = (row // T) % Hq
    b = row // (T * Hq)
    kv = h // GROUP
    i = tl.minimum(tl.load(SEQLENS + b), S) - T + t         # the query's position
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    pos = tl.load(EXACT_POS + b * stride_pb + offs_n, mask=offs_n < N, other=-1)                     # (BLOCK_N,)
    read = (pos >= 0) & (pos <= i) & ((pos < sink) | (pos > i - window))
    q = tl.load(Q + b * stride_qb + h * stride_qh + t * stride_qt + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    tile = read[:, None] & mask_d[None, :]
    k = tl.load(EXACT_K + b * stride_kb + kv * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :],
                mask=tile, other=0.0).to(tl.float32)                                               # (BLOCK_N, BLOCK_D)
    scores = tl.where(read, tl.sum(k * q[None, :], axis=1) * qk_scale, float("-inf"))             # (BLOCK_N,)
    m = tl.max(scores, axis=0)
    m = tl.where(m == float("-inf"), 0.0, m)                # no slot read: weights 0, exp2 finite
    p = tl.exp2(scores - m)
    total = tl.sum(p, axis=0)
    v = tl.load(EXACT_V + b * stride_vb + kv * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :],
                mask=tile, other=0.0).to(tl.float32)
    out = tl.sum(p[:, None] * v, axis=0)                    # (BLOCK_D,) unnormalised, weight exp2(m) x total
    lse2 = m + tl.log2(total)                               # base 2; -inf where nothing was read
    if HAS_QUANTIZED:
        rough_lse2 = tl.load(LSE + row) * 1.4426950408889634
        rough = tl.load(OUT + row * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        top = tl.maximum(lse2, rough_lse2)
        top = tl.where(top == float("-inf"), 0.0, top)
        w_exact = tl.exp2(m - top)                          # scales `out` (its sum is `total`)
        w_rough = tl.exp2(rough_lse2 - top)
        rough = tl.where(rough_lse2 == float("-inf"), 0.0, rough)   # an empty partial's out may be anything
        denom = total * w_exact + w_rough
        merged = (out * w_exact + rough * w_rough) / tl.maximum(denom, 1e-30)
        lse2 = top + tl.log2(denom)
    else:
        merged = out / tl.maximum(total, 1e-30)
    tl.store(OUT + row * D + offs_d, merged.to(OUT.dtype.element_ty), mask=mask_d)
    tl.store(LSE + row, lse2 * 0.6931471805599453)

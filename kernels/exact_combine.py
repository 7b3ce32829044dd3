"""Triton kernels that add an 8-bit cache's exact sink and window tokens to Flash-Decoding's result
(kernels/exact_window.py says what is read where).

`_exact_partial`: one (batch, query head, token) row's attention over the query's sink and window keys' exact
slots, in float32 on the CUDA cores: it computes each wanted position's slot (the cache's layout: `ExactTokens`)
and gathers those sink + window slots, each read only where the slot records that position, so its cost does not
grow with the ring (a cache keeps hundreds of slots a row so that edits need no repair: models/kv_cache.py).
`_combine_exact_kernel`: the combine of a split call (kernels/split_kv.py's `_combine_row`) with that partial as
one more, merged by log-sum-exp: no launch beyond a plain split call's.
`_exact_merge_kernel`: the same merge after an unsplit call (whose split kernel writes the output itself), in place.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from kernels.split_kv import _cache_length, _valid_splits

# A (sink + window slots, head dim) tile of up to 64 x 256 floats a program (K's, then V's): 128 threads, in the
# merge and in the combine that carries it (whose own tiles would take 1 warp at short head dims).
EXACT_WARPS = 4
LOG2_E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _exact_partial(Q, EXACT_K, EXACT_V, EXACT_POS, LENGTHS, row,
                   stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
                   stride_pb, Hq, T, N, D, S, qk_scale, sink, window,
                   GROUP: tl.constexpr, EXACT_BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """Row `row` ((b * Hq + query head) * T + token): (out (BLOCK_D,) unnormalised, m, total), the partial's
    output being out / total and its log-sum-exp (base 2) m + log2(total); total 0 where no slot is read.
    Scores are scaled by qk_scale = softmax scale x log2(e). The N slots: `sink`, then a ring of N - sink
    (>= window); EXACT_BLOCK >= sink + window lanes."""
    t = row % T
    h = (row // T) % Hq
    b = row // (T * Hq)
    kv = h // GROUP
    i = tl.minimum(tl.load(LENGTHS + b), S) - T + t         # the query's position
    lane = tl.arange(0, EXACT_BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    # Lanes 0..sink-1: the sink positions; sink..sink+window-1: the window's, i-window+1 .. i.
    wanted = tl.where(lane < sink, lane, i - window + 1 + (lane - sink))                             # (EXACT_BLOCK,)
    use = (lane < sink + window) & (wanted >= 0) & (wanted <= i) & ((lane < sink) | (wanted >= sink))
    # Their slots, as models/kv_cache.py's exact_slot lays them (a window lane below the sink is not used)
    slot = tl.where(lane < sink, lane, sink + tl.maximum(wanted - sink, 0) % (N - sink))
    pos = tl.load(EXACT_POS + b * stride_pb + slot, mask=use, other=-1)                              # (EXACT_BLOCK,)
    read = use & (pos == wanted)            # a slot holding another position (another lap, a stale draft): not read
    q = tl.load(Q + b * stride_qb + h * stride_qh + t * stride_qt + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    tile = read[:, None] & mask_d[None, :]
    k = tl.load(EXACT_K + b * stride_kb + kv * stride_kh + slot[:, None] * stride_kn + offs_d[None, :],
                mask=tile, other=0.0).to(tl.float32)                                               # (EXACT_BLOCK, BLOCK_D)
    scores = tl.where(read, tl.sum(k * q[None, :], axis=1) * qk_scale, float("-inf"))             # (EXACT_BLOCK,)
    m = tl.max(scores, axis=0)
    m = tl.where(m == float("-inf"), 0.0, m)                # no slot read: weights 0, exp2 finite
    p = tl.exp2(scores - m)
    v = tl.load(EXACT_V + b * stride_vb + kv * stride_vh + slot[:, None] * stride_vn + offs_d[None, :],
                mask=tile, other=0.0).to(tl.float32)
    return tl.sum(p[:, None] * v, axis=0), m, tl.sum(p, axis=0)


@triton.jit
def _exact_merge_kernel(
    Q, EXACT_K, EXACT_V, EXACT_POS, LENGTHS, OUT, LSE,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_pb,
    Hq, T, N, D, S, qk_scale, sink, window,
    GROUP: tl.constexpr, HAS_QUANTIZED: tl.constexpr, EXACT_BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One row: its exact partial merged with OUT's and LSE's (the 8-bit keys' result, natural log; ignored where
    its lse is -inf), or alone without `HAS_QUANTIZED`; written over OUT and LSE."""
    row = tl.program_id(0).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    out, m, total = _exact_partial(Q, EXACT_K, EXACT_V, EXACT_POS, LENGTHS, row, stride_qb, stride_qh, stride_qt,
                                   stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_pb,
                                   Hq, T, N, D, S, qk_scale, sink, window, GROUP, EXACT_BLOCK, BLOCK_D)
    lse2 = m + tl.log2(total)                               # base 2; -inf where nothing was read
    if HAS_QUANTIZED:
        rough_lse2 = tl.load(LSE + row) * LOG2_E
        rough = tl.load(OUT + row * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        top = tl.maximum(lse2, rough_lse2)
        top = tl.where(top == float("-inf"), 0.0, top)
        w_exact = tl.exp2(m - top)                          # scales `out` (whose weights sum to `total`)
        w_rough = tl.exp2(rough_lse2 - top)
        rough = tl.where(rough_lse2 == float("-inf"), 0.0, rough)   # an empty partial's out may be anything
        denom = total * w_exact + w_rough
        merged = (out * w_exact + rough * w_rough) / tl.maximum(denom, 1e-30)
        lse2 = top + tl.log2(denom)
    else:
        merged = out / tl.maximum(total, 1e-30)
    tl.store(OUT + row * D + offs_d, merged.to(OUT.dtype.element_ty), mask=mask_d)
    tl.store(LSE + row, lse2 * LN2)


@triton.jit
def _combine_exact_kernel(
    SEQLENS, PART_OUT, PART_LSE, OUT, LSE,
    S, ROWS_PER_SEQ, D, num_splits,
    Q, EXACT_K, EXACT_V, EXACT_POS, LENGTHS,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_pb,
    Hq, T, N, S_cache, qk_scale, sink, window,
    HAS_SEQLENS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    USE_PDL: tl.constexpr, TRIGGER: tl.constexpr, GROUP: tl.constexpr, EXACT_BLOCK: tl.constexpr,
    SEQLEN_SHIFT: tl.constexpr = 0, KEY_START: tl.constexpr = 0,
):
    """`_combine_kernel` (its first nine arguments and constexprs: the split kernels' lengths are SEQLENS as
    `_cache_length` shifts them, S their view's length) with the row's exact partial as one more: LENGTHS are the
    rows' lengths, S_cache the cache's."""
    row = tl.program_id(0).to(tl.int64)                    # (b * Hq + query head) * T + token
    if HAS_SEQLENS:
        seqlen = _cache_length(SEQLENS + row // ROWS_PER_SEQ, S, SEQLEN_SHIFT, KEY_START)
    else:
        seqlen = S
    # The exact partial before the wait, under the split kernels' stream: it reads only what the step wrote before
    # them (q, the exact copies), complete once this grid runs (it launches as every split program passes its own
    # wait for that writer). After the wait its dependent loads were ~10 µs a layer on the 7B step (Run 40).
    out, m, total = _exact_partial(Q, EXACT_K, EXACT_V, EXACT_POS, LENGTHS, row, stride_qb, stride_qh, stride_qt,
                                   stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_pb,
                                   Hq, T, N, D, S_cache, qk_scale, sink, window, GROUP, EXACT_BLOCK, BLOCK_D)
    if USE_PDL:
        gdc_wait()  # stage 1's partials are complete and visible from here on
        if TRIGGER:
            gdc_launch_dependents()
    n_valid = _valid_splits(seqlen, num_splits, BLOCK_N)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    mask_s = offs_s < n_valid
    lse = tl.load(PART_LSE + row * num_splits + offs_s, mask=mask_s, other=float("-inf"))  # (BLOCK_S,) base 2
    parts = tl.load(PART_OUT + (row * num_splits + offs_s[:, None]) * D + offs_d[None, :],
                    mask=mask_s[:, None] & (offs_d[None, :] < D), other=0.0).to(tl.float32)  # (BLOCK_S, BLOCK_D)
    top = tl.maximum(tl.max(lse, axis=0), m + tl.log2(total))
    top = tl.where(top == float("-inf"), 0.0, top)         # nothing read at all: weights 0, exp2 finite
    w = tl.exp2(lse - top)
    w_exact = tl.exp2(m - top)
    denom = tl.sum(w, axis=0) + total * w_exact
    merged = (tl.sum(parts * w[:, None], axis=0) + out * w_exact) / tl.maximum(denom, 1e-30)
    tl.store(OUT + row * D + offs_d, merged.to(OUT.dtype.element_ty), mask=offs_d < D)
    tl.store(LSE + row, (top + tl.log2(denom)) * LN2)

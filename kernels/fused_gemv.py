"""The batch-1 decode step's dense kernels: a GEMV with its neighbours fused, six launches per layer.

A decode step at batch 1 streams every weight once; what it does between the matrix-vector products
(two RMSNorms, RoPE, the cache write, SwiGLU, two residual adds) moves almost no bytes, but as separate
kernels it costs a launch and a ramp each. Here each of those rides on the GEMV next to it, so a layer is

    qkv_rope      RMSNorm -> x @ wqkv^T -> RoPE on q and k -> k, v into the cache at `pos` (an 8-bit
                  cache quantized by each head's last program to finish: no append kernel)
    (attention)   flash_decode's split and combine kernels
    gemv          attn @ wo^T + x                     (the residual as the epilogue)
    norm_swiglu   RMSNorm -> x @ w13^T -> silu(gate) * up
    gemv          m @ w2^T + h
and the logits are `gemv` with the final norm, stored in float32. On an H200, CodeLlama-7B's step at 4k
context went from 4.74 ms (the compiled general step, about 12 kernels per layer) to 4.07 ms
(bench/results/h200-vs-llamacpp/: 210.9 -> 246.0 tokens/s).

One program reduces BLOCK_N rows of W over all of K in BLOCK_K chunks (fp32). The RMSNorm prologue needs
no extra pass: every program reads all of x anyway, so it sums x^2 along the way and scales its dot
products by rsqrt(mean + eps) at the end (exact: the norm's scalar factors out of the sum). The paired
epilogues need two rows that are far apart in W, so a program takes BLOCK_N / 2 row pairs instead of
BLOCK_N neighbours, with no change to the weights' layout: gate row i with up row ffn_dim + i, and for
RoPE (Hugging Face's rotate-half layout) row j of a head with row j + D/2.

int8 weights (`weight_scale`: a float32 scale per row of W, gpt-fast's int8 weight-only scheme): the program
streams half the bytes, sums each row's integers times x' in fp32 as it would bf16 weights, and multiplies the
row's sum by its scale before the norm's rstd and the epilogue (exact: the scale, like the rstd, factors out of
the row's sum). On the GPU the bytes become fp32 by PRMT and an exact add (`_int8_to_fp32`), not by Triton's
conversion, whose quarter-rate I2F a weight would cost about as long as streaming them. Without a weight_scale
nothing changes: the same instructions as before int8 weights (one more, unused, kernel argument). A launch
configuration with `dp4a` (INT8_CONFIGS' entries where the H200 sweep found it faster: the wide projections, with
many rows a thread) multiplies bytes by bytes instead: each program cuts x' into int8 words as it loads it
(kernels/dp4a.py, `_dot_rows_dp4a`), two DP4As a word of weights where widening took about twelve instructions.

int4 weights (kernels/int4_layout.py: packed nibbles (N, K // 2) with a float16 scale and offset per group of G
columns, `weight_scale` and `weight_offset`): the program runs the one-row 4-bit GEMV's step (kernels/gemv_int4.py
`_slot_words`, `_row_slots`: 16 bytes of a row a thread, denormal nibbles, no I2F, no barrier) with the RMSNorm's
x * NORM_W and x^2 folded into its loads of x; each row's sum comes out with its groups' scales and offsets in it,
so the epilogues are unchanged. Paired rows (SwiGLU, RoPE) always share one interleaved tile. On an H100, CodeLlama-
34B at 128k went from 67.2 tok/s on the compiled general step to 71.6 with an fp8 cache (bench/results/NOTES.md, Run
51), and CodeLlama-7B with int4 weights now decodes faster than with int8 ones (340.6 against 292.7 tok/s at 4k).

Numerics: everything between the loads of W and the store of y is fp32, where Hugging Face rounds to the
activation dtype after the norm, after each projection and inside RoPE: results differ from the unfused
chain by bf16 rounding, not more (tests/kernels/test_fused_gemv.py bounds both against float64).

With PDL (Hopper, `kernels.interface.PDL_SUPPORTED`) each kernel is a programmatic dependent launch: its
programs become resident while the previous kernel drains and wait at `gdc_wait` before touching x, and
it lets its own successor launch as soon as all its programs run. wo, w2 and wqkv load their first tile of
W before that wait (`EARLY_TILE`: W comes from no kernel), which took 60-70 µs off the 7B step on an H200;
asking L2 for more of W there instead (a bulk prefetch of each program's rows) made it 20-930 µs slower.
(Letting it launch only as each program ends, `LATE_DEPENDENTS`, made the 7B step slower with an fp8 cache in
every timing on an H200, by 12-59 µs, and mixed with bf16; qkv_rope alone so, with an int8 cache, 242 µs
faster at 16k but 62 µs slower at 64k: bench/results/NOTES.md, Run 15, has the leads. Run 19 found why: the
attention's programs, resident early, crowd some SMs where its grid leaves room; qkv_rope's `late_dependents`
is now chosen per step by `kernels.interface.late_in_step`.)
"""

from __future__ import annotations

import functools
import math
import os
import re
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from kernels.append import append_kv_triton, quantize_rows
from kernels.devices import on_first_tensors_device
from kernels.dp4a import bf16_words, dot_words, quantize_words
from kernels.dp4a import supported as dp4a_supported
from kernels import gemv as batch1_gemv
from kernels import settings
from kernels.gemv import BLOCK_K, BLOCK_N, NUM_STAGES, NUM_WARPS, _fp32, tickets
from kernels.gemv_int4 import _row_slots, _slot_words
from kernels.validation import SCALED_DTYPES, sequence_major

PLAIN, RESIDUAL, SWIGLU, ROPE = 0, 1, 2, 3     # epilogues
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _wait_for_previous(LATE_DEPENDENTS: tl.constexpr):
    """PDL: wait until the kernel before has finished (x and the residual come from it), then, unless
    LATE_DEPENDENTS, let the next kernel's programs get resident as ours drain."""
    gdc_wait()
    if LATE_DEPENDENTS == 0:
        gdc_launch_dependents()


@triton.jit
def _dot_rows(X, NORM_W, W, rows_a, rows_b, K, stride_wn, BLOCK_K: tl.constexpr, NORM: tl.constexpr,
              PAIRED: tl.constexpr, EARLY_TILE: tl.constexpr = False, USE_PDL: tl.constexpr = False,
              LATE_DEPENDENTS: tl.constexpr = False, INT8_PRMT: tl.constexpr = False,
              NARROW_INT8: tl.constexpr = False, DP4A: tl.constexpr = False, ASM: tl.constexpr = False,
              W_SCALE=None, W_OFFSET=None, stride_sn=0, INT4: tl.constexpr = False, G: tl.constexpr = 32):
    """`_dot_rows_widened`'s sums, or with DP4A `_dot_rows_dp4a`'s (an int8 W and a bf16 x seen as words), or with
    INT4 `_dot_rows_int4`'s (rows_a only: 4-bit weights pair their rows in one tile, INTERLEAVE)."""
    if INT4:
        tl.static_assert(not PAIRED, "int4 weights take paired rows as one interleaved tile")
        a, sumsq = _dot_rows_int4(X, NORM_W, W, W_SCALE, W_OFFSET, rows_a, K, stride_wn, stride_sn, BLOCK_K, G, NORM,
                                  EARLY_TILE, USE_PDL, LATE_DEPENDENTS, True)
        b = a
    elif DP4A:
        a, b, sumsq = _dot_rows_dp4a(X, NORM_W, W, rows_a, rows_b, K, stride_wn, BLOCK_K, NORM, PAIRED, EARLY_TILE,
                                     USE_PDL, LATE_DEPENDENTS, ASM)
    else:
        a, b, sumsq = _dot_rows_widened(X, NORM_W, W, rows_a, rows_b, K, stride_wn, BLOCK_K, NORM, PAIRED,
                                        EARLY_TILE, USE_PDL, LATE_DEPENDENTS, INT8_PRMT, NARROW_INT8)
    return a, b, sumsq


@triton.jit
def _x_words(X, NORM_W, cols, mask, NORM: tl.constexpr, ASM: tl.constexpr):
    """x' = x (* NORM_W) at words `cols` (BLOCK_W,) of four bf16 values, quantized (kernels/dp4a.py): (high, low,
    scale) and the words' sum of x^2 (the RMSNorm's statistic)."""
    a0, a1, a2, a3 = bf16_words(tl.load(X + cols, mask=mask, other=0))
    sumsq = a0 * a0 + a1 * a1 + a2 * a2 + a3 * a3
    if NORM:
        g0, g1, g2, g3 = bf16_words(tl.load(NORM_W + cols, mask=mask, other=0))
        a0, a1, a2, a3 = a0 * g0, a1 * g1, a2 * g2, a3 * g3
    high, low, scale = quantize_words(a0, a1, a2, a3, ASM)
    return high, low, scale, sumsq


@triton.jit
def _dot_rows_dp4a(X, NORM_W, W, rows_a, rows_b, K, stride_wn, BLOCK_K: tl.constexpr, NORM: tl.constexpr,
                   PAIRED: tl.constexpr, EARLY_TILE: tl.constexpr, USE_PDL: tl.constexpr,
                   LATE_DEPENDENTS: tl.constexpr, ASM: tl.constexpr):
    """`_dot_rows_widened`'s sums for an int8 W by integer dot products: X and NORM_W int64 words of four bf16
    values, W int32 words of four weights (stride_wn in words), K in columns; BLOCK_K columns a step. Each program
    quantizes the words of x' it loads, in its tile's layout: once per thread whatever the rows it holds, so
    configurations with many rows a thread pay least for it. The sums are the rows' integers times x's scales."""
    BLOCK_W: tl.constexpr = BLOCK_K // 4
    words = K // 4
    offs = tl.arange(0, BLOCK_W)
    w_a = W + rows_a[:, None].to(tl.int64) * stride_wn                                 # (R, 1) int32 words
    w_b = W + rows_b[:, None].to(tl.int64) * stride_wn
    acc_a = tl.zeros([rows_a.shape[0], BLOCK_W], dtype=tl.float32)
    acc_b = tl.zeros([rows_a.shape[0], BLOCK_W], dtype=tl.float32)
    sumsq = tl.zeros([BLOCK_W], dtype=tl.float32)
    shape: tl.constexpr = (rows_a.shape[0], BLOCK_W)
    k_rest = 0
    if EARLY_TILE:
        mask = offs < words
        first_a = tl.load(w_a + offs[None, :], mask=mask[None, :], other=0)            # (R, BLOCK_W)
        first_b = first_a
        if PAIRED:
            first_b = tl.load(w_b + offs[None, :], mask=mask[None, :], other=0)
        if USE_PDL:
            _wait_for_previous(LATE_DEPENDENTS)
        high, low, scale, sq = _x_words(X, NORM_W, offs, mask, NORM, ASM)
        sumsq += sq
        high, low = tl.broadcast_to(high[None, :], shape), tl.broadcast_to(low[None, :], shape)
        acc_a += dot_words(first_a, high, low, ASM).to(tl.float32) * scale[None, :]
        if PAIRED:
            acc_b += dot_words(first_b, high, low, ASM).to(tl.float32) * scale[None, :]
        k_rest = BLOCK_W
    for k0 in range(k_rest, words, BLOCK_W):
        cols = k0 + offs
        mask = cols < words
        high, low, scale, sq = _x_words(X, NORM_W, cols, mask, NORM, ASM)
        sumsq += sq
        high, low = tl.broadcast_to(high[None, :], shape), tl.broadcast_to(low[None, :], shape)
        w = tl.load(w_a + cols[None, :], mask=mask[None, :], other=0)
        acc_a += dot_words(w, high, low, ASM).to(tl.float32) * scale[None, :]
        if PAIRED:
            w = tl.load(w_b + cols[None, :], mask=mask[None, :], other=0)
            acc_b += dot_words(w, high, low, ASM).to(tl.float32) * scale[None, :]
    return tl.sum(acc_a, axis=1), tl.sum(acc_b, axis=1), tl.sum(sumsq, axis=0)


@triton.jit
def _dot_rows_widened(X, NORM_W, W, rows_a, rows_b, K, stride_wn, BLOCK_K: tl.constexpr, NORM: tl.constexpr,
                      PAIRED: tl.constexpr, EARLY_TILE: tl.constexpr = False, USE_PDL: tl.constexpr = False,
                      LATE_DEPENDENTS: tl.constexpr = False, INT8_PRMT: tl.constexpr = False,
                      NARROW_INT8: tl.constexpr = False):
    """fp32 sums over all of K of W[rows] * x' (x' = x * NORM_W with NORM, else x) for rows_a and, PAIRED,
    rows_b (R,) in the same pass; and the sum of x^2 (the RMSNorm's statistic, read on the way).
    EARLY_TILE: the first BLOCK_K columns of W are loaded first and, with USE_PDL, before waiting on the kernel
    before, which x comes from (W does not), so their latency overlaps its tail; then, unless LATE_DEPENDENTS,
    the next kernel may launch. An int8 W's sums are of its integers (the caller scales each row's)."""
    offs_k = tl.arange(0, BLOCK_K)
    if NARROW_INT8:   # an int8 W (kernels.gemv.NARROW_INT8_LOADS says why; the hint must not cross a call)
        offs_k = tl.max_contiguous(offs_k, 128 // X.dtype.element_ty.primitive_bitwidth)
    w_a = W + rows_a[:, None].to(tl.int64) * stride_wn                                 # (R, 1)
    w_b = W + rows_b[:, None].to(tl.int64) * stride_wn
    acc_a = tl.zeros([rows_a.shape[0], BLOCK_K], dtype=tl.float32)
    acc_b = tl.zeros([rows_a.shape[0], BLOCK_K], dtype=tl.float32)
    sumsq = tl.zeros([BLOCK_K], dtype=tl.float32)
    k_rest = 0
    if EARLY_TILE:
        mask_k = offs_k < K
        first_a = tl.load(w_a + offs_k[None, :], mask=mask_k[None, :], other=0.0)       # (R, BLOCK_K)
        first_b = first_a
        if PAIRED:
            first_b = tl.load(w_b + offs_k[None, :], mask=mask_k[None, :], other=0.0)
        if USE_PDL:
            _wait_for_previous(LATE_DEPENDENTS)
        x = tl.load(X + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        if NORM:
            sumsq += x * x
            x = x * tl.load(NORM_W + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        acc_a += _fp32(first_a, INT8_PRMT) * x[None, :]
        if PAIRED:
            acc_b += _fp32(first_b, INT8_PRMT) * x[None, :]
        k_rest = BLOCK_K
    for k0 in range(k_rest, K, BLOCK_K):
        cols = k0 + offs_k
        mask_k = cols < K
        x = tl.load(X + cols, mask=mask_k, other=0.0).to(tl.float32)                 # (BLOCK_K,)
        if NORM:
            sumsq += x * x
            x = x * tl.load(NORM_W + cols, mask=mask_k, other=0.0).to(tl.float32)
        acc_a += _fp32(tl.load(w_a + cols[None, :], mask=mask_k[None, :], other=0.0), INT8_PRMT) * x[None, :]
        if PAIRED:
            acc_b += _fp32(tl.load(w_b + cols[None, :], mask=mask_k[None, :], other=0.0), INT8_PRMT) * x[None, :]
    return tl.sum(acc_a, axis=1), tl.sum(acc_b, axis=1), tl.sum(sumsq, axis=0)


@triton.jit
def _dot_rows_int4(X, NORM_W, W, W_SCALE, W_OFFSET, rows, K, stride_wn, stride_sn, BLOCK_K: tl.constexpr,
                   G: tl.constexpr, NORM: tl.constexpr, EARLY_TILE: tl.constexpr, USE_PDL: tl.constexpr,
                   LATE_DEPENDENTS: tl.constexpr, DENORMAL: tl.constexpr):
    """`_dot_rows_widened`'s sums for 4-bit W (kernels/int4_layout.py): W the packed bytes as int32 words (N, K // 8)
    (stride_wn in words), W_SCALE, W_OFFSET float16 (N, K // G) (stride_sn); rows (R,) (callers clamp rows outside W
    to a row inside). The one-row int4 GEMV's step (kernels/gemv_int4.py `_slot_words`, `_row_slots`: 16 bytes of a row
    a thread, denormal nibbles, no barrier), x' = x * NORM_W with NORM; each row's sum has its groups' scales and
    offsets in it already (the caller scales nothing). BLOCK_K columns a step, 32 a thread's slot."""
    BLOCK_N: tl.constexpr = rows.shape[0]
    SLOTS: tl.constexpr = BLOCK_K // 32
    offs_w = tl.arange(0, BLOCK_K // 8)                                             # (SLOTS * 4,) words of a step
    offs_s = tl.arange(0, SLOTS)
    offs_i = tl.arange(0, BLOCK_N * SLOTS)                                          # (BLOCK_N * SLOTS,) row-major
    mask_n = rows >= 0                                                              # (all: rows are clamped)
    w_rows = W + rows[:, None].to(tl.int64) * stride_wn                             # (R, 1)
    s_rows_i = tl.reshape(tl.broadcast_to(rows[:, None].to(tl.int64) * stride_sn, [BLOCK_N, SLOTS]),
                          [BLOCK_N * SLOTS])                                         # each slot's row in W_SCALE
    rows_ok_i = s_rows_i >= 0
    acc = tl.zeros([BLOCK_N, SLOTS], dtype=tl.float32)
    sumsq = tl.zeros([SLOTS], dtype=tl.float32)
    k_rest = 0
    if EARLY_TILE:
        w = _slot_words(w_rows, mask_n, 0, K, offs_w)
        if USE_PDL:
            _wait_for_previous(LATE_DEPENDENTS)
        acc, sq = _row_slots(acc, w, X, NORM_W, W_SCALE, W_OFFSET, s_rows_i, rows_ok_i, 0, K, offs_s, offs_i, G, NORM,
                             DENORMAL)
        sumsq += sq
        k_rest = BLOCK_K
    for k0 in range(k_rest, K, BLOCK_K):
        w = _slot_words(w_rows, mask_n, k0, K, offs_w)
        acc, sq = _row_slots(acc, w, X, NORM_W, W_SCALE, W_OFFSET, s_rows_i, rows_ok_i, k0, K, offs_s, offs_i, G,
                             NORM, DENORMAL)
        sumsq += sq
    return tl.sum(acc, axis=1), tl.sum(sumsq, axis=0)


@triton.jit
def _store_kv(K_CACHE, V_CACHE, rows, val, mask, pos, q_rows, kv_rows, stride_ch, stride_cs,
              stride_vh, stride_vs, stride_vd, HEAD_DIM: tl.constexpr):
    """Rows of the fused q/k/v output that are k or v, into the caches at (head, pos, d)."""
    kv = rows - q_rows
    is_kv = mask & (kv >= 0)
    kv = tl.where(is_kv, kv, 0)
    within = kv % kv_rows
    head, d = within // HEAD_DIM, within % HEAD_DIM
    tl.store(K_CACHE + head * stride_ch + pos * stride_cs + d, val.to(K_CACHE.dtype.element_ty),
             mask=is_kv & (kv < kv_rows))
    tl.store(V_CACHE + head * stride_vh + pos * stride_vs + d * stride_vd, val.to(V_CACHE.dtype.element_ty),
             mask=is_kv & (kv >= kv_rows))


@triton.jit
def _quantize_head_when_complete(Y, K_CACHE, V_CACHE, K_SCALE, V_SCALE, TICKETS, pid, pos, q_rows, kv_rows,
                                 stride_ch, stride_cs, stride_vh, stride_vs, stride_vd, stride_sh, stride_ss,
                                 BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """8-bit caches: a program of k or v rows (all of one head) takes a ticket once its rows of Y are stored;
    the head's last program reads the whole head back from Y and quantizes it into the cache at pos, with
    its scale (`kernels.append`'s arithmetic: the same bytes as appending Y's k and v afterwards)."""
    head = (pid * (BLOCK_N // 2)) // (HEAD_DIM // 2)             # of q, k, v heads in that order
    kv = head - q_rows // HEAD_DIM                               # k heads, then v heads
    if kv >= 0:
        tl.debug_barrier()         # every thread's rows of Y are stored before the ticket releases them
        ticket = tl.atomic_add(TICKETS + kv, 1, sem="acq_rel", scope="gpu")
        if ticket == HEAD_DIM // BLOCK_N - 1:     # the head's last program: all of its rows are visible
            offs = tl.arange(0, BLOCK_D)
            mask = offs < HEAD_DIM
            x = tl.load(Y + head * HEAD_DIM + offs, mask=mask, other=0.0, cache_modifier=".cg")
            values, scale = quantize_rows(x.to(tl.float32)[None, :], K_CACHE.dtype.element_ty == tl.int8)
            kv_heads = kv_rows // HEAD_DIM
            h = kv % kv_heads
            scale_offset = h * stride_sh + pos * stride_ss
            if kv < kv_heads:
                tl.store(K_CACHE + h * stride_ch + pos * stride_cs + offs,
                         tl.reshape(values, (BLOCK_D,)).to(K_CACHE.dtype.element_ty), mask=mask)
                tl.store(K_SCALE + scale_offset, tl.sum(scale, axis=0))
            else:  # (a sequence-major V: each value a row of its own, stride_vd apart)
                tl.store(V_CACHE + h * stride_vh + pos * stride_vs + offs * stride_vd,
                         tl.reshape(values, (BLOCK_D,)).to(V_CACHE.dtype.element_ty), mask=mask)
                tl.store(V_SCALE + scale_offset, tl.sum(scale, axis=0))
            tl.atomic_xchg(TICKETS + kv, 0, sem="relaxed", scope="gpu")               # ready for the next launch


@triton.jit
def _fused_gemv_kernel(
    X, NORM_W, W, W_SCALE, W_OFFSET, Y, RES, COS, SIN, POS, K_CACHE, V_CACHE, K_SCALE, V_SCALE, TICKETS,
    N, K, stride_wn, stride_sn, eps, pair_offset, rot_rows, q_rows, kv_rows, stride_ch, stride_cs, stride_vh, stride_vs,
    stride_vd,
    stride_sh, stride_ss, n_slots, EXACT_K, EXACT_V, EXACT_POS, stride_xh, stride_xs, exact_sink, exact_ring,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, NORM: tl.constexpr, EPILOGUE: tl.constexpr,
    HEAD_DIM: tl.constexpr, WRITE_CACHE: tl.constexpr, USE_PDL: tl.constexpr, INTERLEAVE: tl.constexpr,
    QUANT_CACHE: tl.constexpr = False, BLOCK_D: tl.constexpr = 2, LATE_DEPENDENTS: tl.constexpr = False,
    EARLY_TILE: tl.constexpr = False, SCALED_W: tl.constexpr = False, INT8_PRMT: tl.constexpr = False,
    NARROW_INT8: tl.constexpr = False, DP4A: tl.constexpr = False, ASM: tl.constexpr = False,
    EXACT: tl.constexpr = False, INT4: tl.constexpr = False, G: tl.constexpr = 32,
):
    if USE_PDL:
        if EARLY_TILE == 0:        # else inside _dot_rows, once the first tile of W is loaded
            _wait_for_previous(LATE_DEPENDENTS)
    pid = tl.program_id(0)
    if QUANT_CACHE:   # k and v programs first: where the grid takes several waves, their tickets' tail (the
        pid = (pid + q_rows // BLOCK_N) % tl.num_programs(0)     # heads' quantization) overlaps q's streaming
    if EPILOGUE == 2 or EPILOGUE == 3:                       # paired rows: BLOCK_N / 2 pairs per program
        p = pid * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)                          # (BLOCK_N/2,) pair index
        mask = p < N // 2
        p = tl.where(mask, p, 0)
        if EPILOGUE == 2:          # SwiGLU: gate row p, up row pair_offset + p
            rows_a = p
        else:                      # RoPE: rows j and j + D/2 of one head
            rows_a = (p // (HEAD_DIM // 2)) * HEAD_DIM + p % (HEAD_DIM // 2)
        rows_b = rows_a + pair_offset
        if INTERLEAVE:             # one (BLOCK_N, BLOCK_K) tile of rows a0 b0 a1 b1 ..., split after the sum
            pairs = tl.reshape(tl.join(rows_a, rows_b), (BLOCK_N,))
            ab, _, sumsq = _dot_rows(X, NORM_W, W, pairs, pairs, K, stride_wn, BLOCK_K, NORM, False, EARLY_TILE,
                                     USE_PDL, LATE_DEPENDENTS, INT8_PRMT, NARROW_INT8, DP4A, ASM, W_SCALE,
                                     W_OFFSET, stride_sn, INT4, G)
            if SCALED_W:           # an int8 W: each row's sum times its scale
                ab = ab * tl.load(W_SCALE + pairs)
            a, b = tl.split(tl.reshape(ab, (BLOCK_N // 2, 2)))
        else:                      # two (BLOCK_N / 2, BLOCK_K) tiles
            a, b, sumsq = _dot_rows(X, NORM_W, W, rows_a, rows_b, K, stride_wn, BLOCK_K, NORM, True, EARLY_TILE,
                                   USE_PDL, LATE_DEPENDENTS, INT8_PRMT, NARROW_INT8, DP4A, ASM, W_SCALE,
                                   W_OFFSET, stride_sn, INT4, G)
            if SCALED_W:
                a = a * tl.load(W_SCALE + rows_a)
                b = b * tl.load(W_SCALE + rows_b)
        if NORM:
            rstd = 1.0 / tl.sqrt(sumsq / K + eps)
            a = a * rstd
            b = b * rstd
        if EPILOGUE == 2:
            tl.store(Y + p, (a * tl.sigmoid(a) * b).to(Y.dtype.element_ty), mask=mask)
        else:
            pos = tl.load(POS)
            slot_ok = pos < n_slots
            in_cache = (p * 0 + pos) < n_slots    # (BLOCK_N/2,): past the cache is dropped, not written
            pos = tl.where(slot_ok, pos, 0)
            j = p % (HEAD_DIM // 2)
            cos_a = tl.load(COS + pos * HEAD_DIM + j)
            sin_a = tl.load(SIN + pos * HEAD_DIM + j)
            cos_b = tl.load(COS + pos * HEAD_DIM + j + HEAD_DIM // 2)
            sin_b = tl.load(SIN + pos * HEAD_DIM + j + HEAD_DIM // 2)
            rotate = rows_a < rot_rows                                                  # q and k heads
            a_out = tl.where(rotate, a * cos_a - b * sin_a, a)
            b_out = tl.where(rotate, b * cos_b + a * sin_b, b)
            tl.store(Y + rows_a, a_out.to(Y.dtype.element_ty), mask=mask)
            tl.store(Y + rows_b, b_out.to(Y.dtype.element_ty), mask=mask)
            if EXACT:   # an 8-bit cache's exact copies of k and v, in the ring's slot (models/kv_cache.py: exact_slot)
                slot = tl.where(pos < exact_sink, pos, exact_sink + (pos - exact_sink) % exact_ring)
                _store_kv(EXACT_K, EXACT_V, rows_a, a_out, mask & in_cache, slot, q_rows, kv_rows, stride_xh,
                          stride_xs, stride_xh, stride_xs, 1, HEAD_DIM)
                _store_kv(EXACT_K, EXACT_V, rows_b, b_out, mask & in_cache, slot, q_rows, kv_rows, stride_xh,
                          stride_xs, stride_xh, stride_xs, 1, HEAD_DIM)
                if slot_ok & (tl.program_id(0) == 0):
                    tl.store(EXACT_POS + slot, pos)
            if QUANT_CACHE:
                if slot_ok:
                    _quantize_head_when_complete(Y, K_CACHE, V_CACHE, K_SCALE, V_SCALE, TICKETS, pid, pos, q_rows,
                                                 kv_rows, stride_ch, stride_cs, stride_vh, stride_vs, stride_vd,
                                                 stride_sh, stride_ss, BLOCK_N, HEAD_DIM,
                                                 BLOCK_D)
            elif WRITE_CACHE:
                _store_kv(K_CACHE, V_CACHE, rows_a, a_out, mask & in_cache, pos, q_rows, kv_rows, stride_ch, stride_cs,
                          stride_vh, stride_vs, stride_vd, HEAD_DIM)
                _store_kv(K_CACHE, V_CACHE, rows_b, b_out, mask & in_cache, pos, q_rows, kv_rows, stride_ch, stride_cs,
                          stride_vh, stride_vs, stride_vd, HEAD_DIM)
    else:
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)                                   # (BLOCK_N,)
        mask = rows < N
        rows = tl.where(mask, rows, 0)
        y, _, sumsq = _dot_rows(X, NORM_W, W, rows, rows, K, stride_wn, BLOCK_K, NORM, False, EARLY_TILE, USE_PDL,
                               LATE_DEPENDENTS, INT8_PRMT, NARROW_INT8, DP4A, ASM, W_SCALE, W_OFFSET, stride_sn, INT4,
                               G)
        if SCALED_W:
            y = y * tl.load(W_SCALE + rows)
        if NORM:
            y = y / tl.sqrt(sumsq / K + eps)
        if EPILOGUE == 1:
            y += tl.load(RES + rows, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + rows, y.to(Y.dtype.element_ty), mask=mask)
    if USE_PDL and LATE_DEPENDENTS:
        gdc_launch_dependents()


class Config(NamedTuple):
    """How one fused kernel is launched: rows and columns per program step, warps, pipeline stages, for
    paired epilogues whether the two rows of a pair share one tile (interleaved) or load as two, and for int8
    weights with a bf16 x whether the dots are DP4As on words of x quantized by each program (kernels/dp4a.py)
    rather than FMAs of weights widened to fp32."""
    block_n: int = BLOCK_N
    block_k: int = BLOCK_K
    num_warps: int = NUM_WARPS
    num_stages: int = NUM_STAGES
    interleave: bool = False
    dp4a: bool = False


# Launch configurations, keyed by kernel kind (the default for any shape) and by (kind, N, K), N x K the
# weight's shape, where a sweep at that shape found a faster one; `config_for` looks them up.
# - Per kind: the fastest inside CodeLlama-7B's whole decode step on one H200 (bench/gpu/step_parts.py: each
#   of `kernels.fused_gemv_bench.SWEEP`'s configurations timed in the graph-replayed step, then the winners
#   together; bench/results/h200-run15/, 2026-11-30): the step 24-31 µs faster with an fp8 cache at 4k-64k,
#   10-27 µs with bf16, than with the winners of the kernels timed alone (h200-fused-explore/fused-gemv.txt:
#   87% of the copy bandwidth for wqkv, 89% for w13, 81% for w2, 91% for the logits), which PDL's overlap of
#   neighbours does not see.
# - Per shape: the H200 sweep of `python -m kernels.fused_gemv_bench --model 34B/2,34B,70B/2` (CodeLlama-34B
#   and -70B on one rank of two, 34B on one GPU; bench/results/h200-tp-shapes/fused-gemv.txt, 2026-11-30): a
#   shape gets an entry only where its winner beat the kind's default by at least 1% when both were timed
#   again. The other 7 of the 13 shapes swept keep their kind's default (within 1% of their winner).
# CODECOMPLETE_FUSED_CONFIGS=FILE (JSON {"kind" or "kind NxK": [block_n, block_k, num_warps, num_stages,
# interleave]}, as `python -m kernels.fused_gemv_bench --write-configs FILE` writes it) adds or replaces entries.
CONFIGS: dict[str | tuple[str, int, int], Config] = {
    "qkv_rope": Config(32, 256, 8, 4, True), "norm_swiglu": Config(8, 1024, 4, 3, True),
    "gemv": Config(2, 512, 2, 4), "gemv_deep": Config(4, 1024, 4, 3), "gemv_norm": Config(4, 1024, 8, 3),
    # (kind, N, K)                                          where; µs of the kind's default -> this one
    ("qkv_rope", 5120, 8192): Config(8, 512, 4, 4, True),   # wqkv, 34B and 70B on a rank of 2: 32.0 -> 23.2
    ("qkv_rope", 10240, 8192): Config(8, 256, 2, 4, True),  # wqkv, 34B on 1 GPU: 44.0 -> 43.1
    ("gemv_deep", 8192, 11008): Config(2, 1024, 4, 3),      # w2, 34B on a rank of 2: 48.7 -> 45.0
    ("gemv_deep", 8192, 14336): Config(2, 1024, 4, 3),      # w2, 70B on a rank of 2: 61.0 -> 57.1
    ("gemv_deep", 8192, 22016): Config(2, 1024, 4, 4),      # w2, 34B on 1 GPU: 90.7 -> 84.9
    ("gemv_norm", 32000, 8192): Config(4, 512, 4, 4),       # logits, 34B on 1 GPU: 126.2 -> 122.6
}
# Launch configurations for int8 weights, keyed as CONFIGS and consulted first for them; a shape without an entry
# launches with the bf16 ones. From `python -m kernels.fused_gemv_bench --weights int8` on one H200, the kernels
# alone: bench/results/h200-run36/sweep/ (2026-12-03, 8-byte loads) for wo, and bench/results/h200-run37/sweep/
# (2026-12-03, with DP4A configurations) for the others, µs of the previous entry -> this one (% of the copy
# bandwidth). DP4A (kernels/dp4a.py) wins where a program holds many rows a thread (wqkv, w13, the logits); wo and w2
# stay widened to fp32 (their best DP4A configurations 7.3 and 18.5 µs). With these, CodeLlama-7B's int8 step went
# from 352.9 to 372.8 tokens/s at 4k, 237.2 -> 246.5 at 16k, 101.3 -> 102.7 at 64k (Run 37, one call, separate
# processes). CODECOMPLETE_FUSED_INT8_CONFIGS=FILE (`... --write-configs FILE`) adds or replaces entries.
INT8_CONFIGS: dict[str | tuple[str, int, int], Config] = {
    ("qkv_rope", 12288, 4096): Config(32, 1024, 4, 3, True, True),   # wqkv, 7B: 17.8 -> 16.9 (66% -> 70%), DP4A
    ("gemv", 4096, 4096): Config(2, 1024, 2, 5),                    # wo, 7B: 7.6 -> 6.7 (52% -> 59%)
    ("norm_swiglu", 22016, 4096): Config(16, 256, 1, 4, True, True),  # w13, 7B: 30.0 -> 26.5 (70% -> 80%), DP4A
    ("gemv_deep", 4096, 11008): Config(4, 1024, 4, 3),              # w2, 7B: 15.6 -> 15.1 (68% -> 70%)
    ("gemv_norm", 32016, 4096): Config(16, 256, 1, 3, False, True),   # logits, 7B: 42.3 -> 35.2 (73% -> 87%), DP4A
    # 13B and 34B (bench/results/h200-run37/sweep-13b-34b/; before: the bf16 kind defaults). 13B's step went from
    # 175.5 to 211.8 tokens/s at 4k, 126.6 -> 144.5 at 16k (Run 37, separate processes); 34B's kernels went from
    # 10.2 to 9.3 ms a step (the sweep's sum), its step 98.1 -> 108.6 tokens/s at 4k, 94.1 -> 102.9 at 16k (Run 38).
    ("qkv_rope", 15360, 5120): Config(16, 256, 1, 4, True, True),    # wqkv, 13B: 35.8 -> 25.6 (51% -> 72%), DP4A
    ("gemv", 5120, 5120): Config(8, 1024, 2, 3, False, True),        # wo, 13B: 12.1 -> 10.2 (51% -> 60%), DP4A
    ("norm_swiglu", 27648, 5120): Config(16, 256, 1, 4, True, True),  # w13, 13B: 49.5 -> 38.8 (67% -> 85%), DP4A
    ("gemv_deep", 5120, 13824): Config(2, 2048, 4, 4),              # w2, 13B: 26.8 -> 23.5 (62% -> 70%)
    ("gemv_norm", 32016, 5120): Config(16, 256, 1, 3, False, True),   # logits, 13B: 72.2 -> 42.9 (53% -> 90%), DP4A
    ("qkv_rope", 10240, 8192): Config(8, 1024, 2, 3, True, True),    # wqkv, 34B: 30.6 -> 26.6 (64% -> 74%), DP4A
    ("gemv", 8192, 8192): Config(4, 1024, 2, 3, False, True),        # wo, 34B: 21.2 -> 20.7 (74% -> 76%), DP4A
    ("norm_swiglu", 44032, 8192): Config(16, 512, 1, 3, True, True),  # w13, 34B: 108.3 -> 94.7 (78% -> 89%), DP4A
    ("gemv_norm", 32000, 8192): Config(16, 256, 1, 3, False, True),   # logits, 34B: 101.3 -> 66.3 (61% -> 93%), DP4A
    # A rank of 2 (bench/results/h200-run38/tp-int8/, the kernels alone on one H200; before: the bf16 entries where
    # there are some, else the kind defaults). The sweep's sums of a rank's fused kernels a step: 7B 1,503 -> 1,305 µs,
    # 13B 2,740 -> 2,368, 34B 5,668 -> 5,159, 70B 10,961 -> 9,793; a rank's whole step on one GPU: Run 38.
    ("qkv_rope", 6144, 4096): Config(16, 1024, 2, 3, True, True),    # wqkv, 7B/2: 14.0 -> 10.3 (42% -> 57%), DP4A
    ("gemv", 4096, 2048): Config(2, 1024, 2, 4),                    # wo, 7B/2: 4.4 -> 4.1 (45% -> 48%)
    ("norm_swiglu", 11008, 4096): Config(16, 1024, 2, 3, True, True),  # w13, 7B/2: 18.5 -> 16.7 (57% -> 63%), DP4A
    ("gemv_norm", 16008, 4096): Config(4, 512, 1, 4, False, True),    # logits, 7B/2: 32.4 -> 21.0 (47% -> 73%), DP4A
    ("qkv_rope", 7680, 5120): Config(8, 512, 2, 4, True),            # wqkv, 13B/2: 18.6 -> 14.4 (50% -> 64%)
    ("gemv", 5120, 2560): Config(4, 512, 1, 4, False, True),         # wo, 13B/2: 7.0 -> 6.6 (44% -> 47%), DP4A (the
                                    # sweep's 6.5, widened, 4 warps, has 4-byte loads of W: barriers a step)
    ("norm_swiglu", 13824, 5120): Config(8, 512, 1, 4, True, True),   # w13, 13B/2: 27.6 -> 24.1 (60% -> 69%), DP4A
    ("gemv_deep", 5120, 6912): Config(8, 1024, 2, 2, False, True),    # w2, 13B/2: 14.3 -> 13.6 (58% -> 61%), DP4A
    ("gemv_norm", 16008, 5120): Config(4, 512, 1, 4, False, True),    # logits, 13B/2: 37.4 -> 25.3 (51% -> 76%), DP4A
    ("qkv_rope", 5120, 8192): Config(8, 1024, 2, 3, True, True),     # wqkv, 34B/2, 70B/2: 18.3 -> 17.9 (55%), DP4A
    ("norm_swiglu", 22016, 8192): Config(16, 256, 1, 4, True, True),  # w13, 34B/2: 59.8 -> 50.4 (71% -> 84%), DP4A
    ("gemv_deep", 8192, 11008): Config(4, 1024, 4, 3),              # w2, 34B/2: 27.4 -> 26.9 (the kind's default over
                                                                    # the bf16 entry)
    ("gemv_norm", 16000, 8192): Config(4, 512, 1, 4, False, True),    # logits, 34B/2: 53.9 -> 39.4 (57% -> 78%), DP4A
    ("norm_swiglu", 28672, 8192): Config(16, 256, 1, 4, True, True),  # w13, 70B/2: 72.9 -> 59.8 (75% -> 92%), DP4A
    ("gemv_deep", 8192, 14336): Config(4, 1024, 2, 3, False, True),   # w2, 70B/2: 33.7 -> 32.8 (81% -> 84%), DP4A
    ("gemv_norm", 16008, 8192): Config(4, 512, 1, 4, False, True),    # logits, 70B/2: 54.0 -> 39.4 (57% -> 78%), DP4A
}
# Launch configurations for int4 weights (kernels/int4_layout.py), keyed as CONFIGS; every kind starts from the one-row
# int4 GEMV's plan (kernels/gemv_int4.py: 8 rows a program, 32 columns a thread a step, 4 warps; paired rows always
# as one interleaved tile). Per shape: `python -m kernels.fused_gemv_bench --weights int4 --model 34B,7B` on an H100
# (bench/results/h100-run51/int4-fused*/, 2026-12-06; not yet swept on an H200), the kernels alone, µs of the default
# -> this one (% of the copy bandwidth). K = 4096's winners take two steps of 2048 columns where the default takes one.
# (No logits entry: a model's head is int8 under int4 weights, models.options.head_weights, so INT8_CONFIGS' serve it.)
INT4_CONFIGS: dict[str | tuple[str, int, int], Config] = {
    **{kind: Config(8, 4096, 4, 3, True) for kind in ("qkv_rope", "norm_swiglu", "gemv", "gemv_deep", "gemv_norm")},
    ("qkv_rope", 12288, 4096): Config(8, 2048, 2, 3, True),      # wqkv, 7B: 17.0 -> 14.8 (61% -> 70%)
    ("gemv", 4096, 4096): Config(16, 4096, 4, 3, True),          # wo, 7B: 6.4 -> 6.2 (54% -> 56%)
    ("norm_swiglu", 22016, 4096): Config(8, 2048, 2, 3, True),   # w13, 7B: 27.1 -> 25.8 (69% -> 72%)
    ("gemv_deep", 4096, 11008): Config(4, 4096, 4, 3, True),     # w2, 7B: 14.9 -> 13.9 (62% -> 67%)
    ("gemv", 8192, 8192): Config(4, 4096, 4, 3, True),           # wo, 34B: 18.1 -> 17.8 (76% -> 78%)
    ("gemv_deep", 8192, 22016): Config(4, 2048, 2, 4, True),     # w2, 34B: 47.4 -> 45.2 (78% -> 82%)
}
KINDS = settings.FUSED_KINDS
WEIGHTS_BY_PRMT = True   # A/B: False converts int8 weights by Triton's own I2F, a quarter-rate instruction on sm_90
DP4A = True              # A/B: False widens int8 weights to fp32 where a configuration says dp4a
_per_shape = True                      # use_per_shape(False): the per-kind defaults everywhere (A/B runs)
LATE_DEPENDENTS: frozenset = frozenset()   # A/B: epilogues (ROPE, ...) whose programs let the next kernel launch
                                           # at their end, not their start
# Epilogues whose programs load their first tile of W before their PDL wait (W does not come from the kernel
# before): wo, w2 and wqkv. In CodeLlama-7B's step on an H200 that took 43-55 µs off with wo and w2, 15-20 more
# with wqkv; w13 (norm_swiglu) in its configuration became 800 µs slower (bench/results/NOTES.md, Run 16).
EARLY_TILE: frozenset = frozenset({RESIDUAL, ROPE})


def config_key(text: str) -> str | tuple[str, int, int]:
    """A CONFIGS key from its JSON spelling: "gemv" or "gemv 8192x4096" -> ("gemv", 8192, 4096)."""
    return settings.fused_key(text)


def config_name(key: str | tuple[str, int, int]) -> str:
    """The JSON spelling of a CONFIGS key (config_key's inverse)."""
    return key if isinstance(key, str) else f"{key[0]} {key[1]}x{key[2]}"


def read_configs(path: str, name: str = "CODECOMPLETE_FUSED_CONFIGS") -> dict:
    """CONFIGS entries from a JSON file of {"kind" or "kind NxK": [block_n, block_k, num_warps, num_stages
    (, interleave(, dp4a))]}, checked by kernels.settings (the app's start-up check reads them the same way)."""
    return {key: Config(*values) for key, values in settings.read(name, path).items()}


def config_for(kind: str, N: int, K: int, int8: bool = False, int4: bool = False) -> Config:
    """The launch configuration of kernel `kind` on an (N, K) weight: its own entry, else the kind's; for int8
    weights INT8_CONFIGS' entry for the shape or the kind first; for int4 weights INT4_CONFIGS' (only)."""
    if int4:
        return (_per_shape and INT4_CONFIGS.get((kind, N, K))) or INT4_CONFIGS[kind]
    if int8 and (found := (_per_shape and INT8_CONFIGS.get((kind, N, K))) or INT8_CONFIGS.get(kind)):
        return found
    return CONFIGS.get((kind, N, K), CONFIGS[kind]) if _per_shape else CONFIGS[kind]


def use_per_shape(enabled: bool) -> bool:
    """Whether launches take the per-shape entries (True, the default) or only the per-kind ones; returns the
    previous setting. Read at launch: a new CUDA-graph capture of the step sees the change, no recompile."""
    global _per_shape
    previous, _per_shape = _per_shape, enabled
    return previous


if os.environ.get("CODECOMPLETE_FUSED_CONFIGS"):
    CONFIGS.update(read_configs(os.environ["CODECOMPLETE_FUSED_CONFIGS"]))
if os.environ.get("CODECOMPLETE_FUSED_INT8_CONFIGS"):
    INT8_CONFIGS.update(read_configs(os.environ["CODECOMPLETE_FUSED_INT8_CONFIGS"], "CODECOMPLETE_FUSED_INT8_CONFIGS"))


def _config(kind: str, x: torch.Tensor, weight: torch.Tensor, overrides: dict, pairs_per_head: int = 0) -> Config:
    """The launch configuration of `kind` on `weight`, with any fields the caller gives. The CPU interpreter
    runs programs one after another: 16 rows per program there (fewer programs, same arithmetic). Paired rows
    need block_n / 2 to divide a head's pairs."""
    int4 = weight.dtype == torch.uint8
    N, K = weight.shape[0], weight.shape[1] * (2 if int4 else 1)
    config = config_for(kind, N, K, int8=weight.dtype == torch.int8, int4=int4)._replace(**overrides)
    if int4:           # 4-bit weights pair rows only in one tile
        config = config._replace(interleave=True, dp4a=False)
    if not x.is_cuda and "block_n" not in overrides:
        config = config._replace(block_n=16)
    if pairs_per_head and pairs_per_head % (config.block_n // 2):
        config = config._replace(block_n=2 * math.gcd(pairs_per_head, config.block_n // 2))
    return config


def _use_pdl(x: torch.Tensor) -> bool:
    from kernels.interface import PDL_SUPPORTED
    return x.is_cuda and PDL_SUPPORTED and torch.cuda.get_device_capability(x.device)[0] >= 9


def _check(x: torch.Tensor, weight: torch.Tensor, what: str, weight_scale: torch.Tensor | None = None,
           weight_offset: torch.Tensor | None = None) -> int:
    if weight.dtype == torch.uint8 or weight_offset is not None:
        return _check_int4(x, weight, what, weight_scale, weight_offset)
    K = weight.shape[1]
    if x.numel() != K or not x.is_contiguous() or weight.stride(1) != 1:
        raise ValueError(f"{what}: x must hold one contiguous row of {K} (weight {tuple(weight.shape)}, "
                         f"contiguous rows), got x {tuple(x.shape)}")
    if weight_scale is None and weight.dtype == torch.int8:
        raise ValueError(f"{what}: an int8 weight needs its weight_scale (float32, one per row)")
    if weight_scale is None and (x.dtype not in DTYPES or weight.dtype != x.dtype):
        raise ValueError(f"{what}: x and weight must share a dtype of {DTYPES}, got {x.dtype} and {weight.dtype}")
    if weight_scale is not None and (x.dtype not in DTYPES or weight.dtype != torch.int8
                                     or weight_scale.dtype != torch.float32 or weight_scale.shape != weight.shape[:1]
                                     or not weight_scale.is_contiguous()):
        raise ValueError(f"{what}: a weight_scale goes with an int8 weight (N, K), one contiguous float32 scale per "
                         f"row (N,), and x of {DTYPES}: got weight {tuple(weight.shape)} {weight.dtype}, scale "
                         f"{tuple(weight_scale.shape)} {weight_scale.dtype}, x {x.dtype}")
    return K


def _check_int4(x: torch.Tensor, weight: torch.Tensor, what: str, weight_scale: torch.Tensor | None,
                weight_offset: torch.Tensor | None) -> int:
    """A 4-bit weight (kernels/int4_layout.py): packed (N, K // 2) uint8 with weight_scale and weight_offset (N, K // G)
    float16, as the int4 GEMV takes them (`kernels.gemv_int4.check_inputs`); x one contiguous row of K."""
    if weight.dtype != torch.uint8 or weight_scale is None or weight_offset is None:
        raise ValueError(f"{what}: a 4-bit weight is packed uint8 (N, K // 2) with its weight_scale and weight_offset "
                         f"(N, K // G) float16, got weight {weight.dtype}, scale "
                         f"{None if weight_scale is None else weight_scale.dtype}, offset "
                         f"{None if weight_offset is None else weight_offset.dtype}")
    K = 2 * weight.shape[1]
    if x.numel() != K or not x.is_contiguous():
        raise ValueError(f"{what}: x must hold one contiguous row of {K} (4-bit weight {tuple(weight.shape)}), got "
                         f"x {tuple(x.shape)}")
    from kernels.gemv_int4 import check_inputs
    try:
        check_inputs(x.view(1, K), weight, weight_scale, weight_offset)
    except ValueError as error:
        raise ValueError(f"{what}: {error}") from None
    return K


def _by_dp4a(config: Config, x, weight, weight_scale, norm_weight) -> bool:
    """Whether this launch multiplies by DP4A: its configuration says so, DP4A is on, and the inputs allow it."""
    return (DP4A and config.dp4a and weight.dtype == torch.int8 and weight_scale is not None
            and dp4a_supported(x, weight, norm_weight) is None)


def _launch(config: Config, grid_rows: int, x, weight, y, *, norm_weight=None, eps=0.0, epilogue=PLAIN,
            residual=None, rope=None, cache=None, scales=None, tickets=None, pair_offset=0, rot_rows=0, q_rows=0,
            kv_rows=0, head_dim=2, late_dependents: bool = False, weight_scale=None, weight_offset=None,
            exact=None) -> torch.Tensor:
    cos, sin, pos = rope if rope is not None else (y, y, y)
    exact_k, exact_v, exact_pos, exact_sink, exact_ring = exact if exact is not None else (y, y, y, 0, 1)
    stride_xh, stride_xs = (exact_k.stride(1), exact_k.stride(2)) if exact is not None else (0, 0)
    k_cache, v_cache = cache if cache is not None else (y, y)
    k_scale, v_scale = scales if scales is not None else (y, y)
    stride_ch, stride_cs = (k_cache.stride(1), k_cache.stride(2)) if cache is not None else (0, 0)
    stride_vh, stride_vs, stride_vd = v_cache.stride()[1:] if cache is not None else (0, 0, 1)
    stride_sh, stride_ss = (k_scale.stride(1), k_scale.stride(2)) if scales is not None else (0, 0)
    n_slots = min(k_cache.shape[2], cos.shape[0]) if cache is not None else cos.shape[0] if rope else 0
    use_pdl = _use_pdl(x)
    int4 = weight_offset is not None
    K, stride_wn = weight.shape[1] * (2 if int4 else 1), weight.stride(0)     # (int4: two columns a byte)
    block_k = min(config.block_k, triton.next_power_of_2(K))   # no half-empty chunks for small K
    stride_sn, group = 0, 32
    if int4:      # packed nibbles read as int32 words (N, K // 8), 32 columns a thread's slot
        stride_sn, group = weight_scale.stride(0), K // weight_scale.shape[1]
        weight, stride_wn = weight.view(torch.int32), stride_wn // 4
        block_k = max(32, block_k)
    dp4a = _by_dp4a(config, x, weight, weight_scale, norm_weight)
    if dp4a:      # x (and the norm's weight) as int64 words of four bf16 values, W as int32 words of four weights
        x, weight, stride_wn = x.view(torch.int64), weight.view(torch.int32), stride_wn // 4
        norm_weight = norm_weight.view(torch.int64) if norm_weight is not None else None
        block_k = max(block_k, 4)
    # widening's options only where int8 weights are widened on a GPU: DP4A launches what compile_facts builds
    widened_on_gpu = weight_scale is not None and x.is_cuda and not dp4a and not int4
    _fused_gemv_kernel[(grid_rows,)](
        x, norm_weight if norm_weight is not None else x, weight, weight_scale if weight_scale is not None else y,
        weight_offset if int4 else y, y, residual if residual is not None else y,
        cos, sin, pos, k_cache, v_cache, k_scale, v_scale, tickets if tickets is not None else y,
        weight.shape[0], K, stride_wn, stride_sn, float(eps), pair_offset, rot_rows, q_rows, kv_rows,
        stride_ch, stride_cs, stride_vh, stride_vs, stride_vd, stride_sh, stride_ss, n_slots,
        exact_k, exact_v, exact_pos, stride_xh, stride_xs, exact_sink, exact_ring,
        BLOCK_N=config.block_n, BLOCK_K=block_k, NORM=norm_weight is not None, EPILOGUE=epilogue,
        HEAD_DIM=head_dim, WRITE_CACHE=cache is not None, USE_PDL=use_pdl, INTERLEAVE=config.interleave,
        QUANT_CACHE=scales is not None, BLOCK_D=triton.next_power_of_2(head_dim),
        LATE_DEPENDENTS=late_dependents or epilogue in LATE_DEPENDENTS, EARLY_TILE=epilogue in EARLY_TILE,
        SCALED_W=weight_scale is not None and not int4, INT8_PRMT=widened_on_gpu and WEIGHTS_BY_PRMT,
        NARROW_INT8=widened_on_gpu and batch1_gemv.NARROW_INT8_LOADS, DP4A=dp4a, ASM=x.is_cuda, EXACT=exact is not None,
        INT4=int4, G=group, num_warps=config.num_warps, num_stages=config.num_stages,
        **({"launch_pdl": True} if use_pdl else {}))
    return y


@on_first_tensors_device
def gemv(x: torch.Tensor, weight: torch.Tensor, *, residual: torch.Tensor | None = None,
         norm_weight: torch.Tensor | None = None, eps: float = 1e-5, out_dtype: torch.dtype | None = None,
         weight_scale: torch.Tensor | None = None, weight_offset: torch.Tensor | None = None,
         **config) -> torch.Tensor:
    """y (N,) = [residual (N,) +] x' @ weight (N, K)^T, x' = rms_norm(x (K,), norm_weight (K,)) or x.

    The output projection (residual), the logits (norm_weight, out_dtype=torch.float32), any plain one.
    An int8 weight comes with weight_scale (N,) float32: row n is weight[n] * weight_scale[n]. A 4-bit one
    (kernels/int4_layout.py) is packed (N, K // 2) uint8 with weight_scale and weight_offset (N, K // G) float16.
    """
    K = _check(x, weight, "gemv", weight_scale, weight_offset)
    N = weight.shape[0]
    if residual is not None and (residual.numel() != N or not residual.is_contiguous()):
        raise ValueError(f"gemv: residual must be one contiguous row of {N}, got {tuple(residual.shape)}")
    if norm_weight is not None and norm_weight.numel() != K:
        raise ValueError(f"gemv: norm_weight must hold {K} values, got {tuple(norm_weight.shape)}")
    y = torch.empty(N, dtype=out_dtype or x.dtype, device=x.device)
    kind = "gemv_norm" if norm_weight is not None else "gemv_deep" if N < K else "gemv"
    c = _config(kind, x, weight, config)
    return _launch(c, triton.cdiv(N, c.block_n), x, weight, y, norm_weight=norm_weight, eps=eps,
                   epilogue=RESIDUAL if residual is not None else PLAIN, residual=residual, weight_scale=weight_scale,
                   weight_offset=weight_offset)


@on_first_tensors_device
def norm_swiglu(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, w13: torch.Tensor, *,
                weight_scale: torch.Tensor | None = None, weight_offset: torch.Tensor | None = None,
                **config) -> torch.Tensor:
    """silu(gate) * up (F,) with gate, up = split(rms_norm(x (K,), norm_weight) @ w13 (2F, K)^T, F); an int8 w13
    with weight_scale (2F,) float32 per row, a 4-bit one packed (2F, K // 2) uint8 with weight_scale and
    weight_offset (2F, K // G) float16."""
    K = _check(x, w13, "norm_swiglu", weight_scale, weight_offset)
    if w13.shape[0] % 2 or norm_weight.numel() != K:
        raise ValueError(f"norm_swiglu: w13 must stack gate and up (2F, K), norm_weight ({K},): got "
                         f"{tuple(w13.shape)} and {tuple(norm_weight.shape)}")
    F = w13.shape[0] // 2
    y = torch.empty(F, dtype=x.dtype, device=x.device)
    c = _config("norm_swiglu", x, w13, config)
    return _launch(c, triton.cdiv(F, c.block_n // 2), x, w13, y, norm_weight=norm_weight, eps=eps,
                   epilogue=SWIGLU, pair_offset=F, weight_scale=weight_scale, weight_offset=weight_offset)


@on_first_tensors_device
def qkv_rope(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, wqkv: torch.Tensor, cos: torch.Tensor,
             sin: torch.Tensor, pos: torch.Tensor, n_heads: int, n_kv_heads: int,
             cache: tuple[torch.Tensor, torch.Tensor] | None = None,
             scales: tuple[torch.Tensor, torch.Tensor] | None = None, late_dependents: bool = False,
             weight_scale: torch.Tensor | None = None, exact: tuple | None = None,
             weight_offset: torch.Tensor | None = None, **config) -> torch.Tensor:
    """q, k, v of one token: rms_norm(x (K,), norm_weight) @ wqkv ((Hq + 2 Hkv) * D, K)^T, RoPE at position
    pos (1,) int64 on q and k from the tables cos, sin (S_max, D) float32 (rotate-half layout).

    Returns (Hq + 2 Hkv) * D values: q, k, v heads in that order. With `cache` = (k_cache, v_cache), each
    (1, Hkv, S_max, D) with a contiguous last dim (V's may be sequence-major instead), k and v are also stored
    at slot pos (a position past the cache or the tables is not written, and rotates as position 0: the
    caller's to refuse): caches of x's
    dtype as they are; 8-bit caches (float8_e4m3fn, int8) with `scales` = (k_scale, v_scale) float32
    (1, Hkv, S_max) quantized as `kernels.append_kv` quantizes the returned k and v (the same bytes and
    scales): each head's last program to finish does it, so an 8-bit step needs no append kernel.
    `late_dependents`: let the next kernel launch only as each program ends, not as it starts (with PDL): for an
    attention call whose programs would crowd some SMs if placed early, or whose plan says so
    (`kernels.interface.late_in_step`). An int8 wqkv comes with weight_scale ((Hq + 2 Hkv) * D,) float32 per row, a
    4-bit one packed ((Hq + 2 Hkv) * D, K // 2) uint8 with weight_scale and weight_offset (.., K // G) float16.
    `exact` = (k_exact, v_exact, exact_pos, sink, ring): k and v are also stored in x's dtype at slot `pos` below
    `sink`, else sink + (pos - sink) % ring, of k_exact, v_exact (1, Hkv, N, D) (one layout, last dim contiguous),
    and pos at that slot of exact_pos int64 (N,) (an fp8 cache's exact copies, models/kv_cache.py): in this kernel,
    not in a scatter per layer a step.
    """
    K = _check(x, wqkv, "qkv_rope", weight_scale, weight_offset)
    D = cos.shape[-1]
    N = wqkv.shape[0]
    if N != (n_heads + 2 * n_kv_heads) * D or D % 2 or norm_weight.numel() != K or pos.numel() != 1:
        raise ValueError(f"qkv_rope: wqkv {tuple(wqkv.shape)} does not hold {n_heads} + 2 x {n_kv_heads} heads "
                         f"of {D} (or norm_weight {tuple(norm_weight.shape)}, pos {tuple(pos.shape)} is off)")
    if cos.dtype != torch.float32 or sin.shape != cos.shape or pos.dtype != torch.int64:
        raise ValueError("qkv_rope: cos and sin must be float32 tables (S_max, D), pos int64")
    if cache is not None:
        k_cache, v_cache = cache
        want = (1, n_kv_heads, k_cache.shape[2], D)
        dtype = x.dtype if scales is None else k_cache.dtype
        if (k_cache.shape != want or v_cache.shape != want or k_cache.stride(3) != 1
                or (v_cache.stride(3) != 1 and not sequence_major(v_cache)) or k_cache.dtype != dtype
                or v_cache.dtype != dtype
                or (scales is not None and dtype not in SCALED_DTYPES)):
            raise ValueError(f"qkv_rope: caches must be {want} of {x.dtype} (or 8-bit with scales), K with a contiguous "
                             f"last dim, V too or sequence-major, got {tuple(k_cache.shape)} {k_cache.dtype}, strides "
                             f"{k_cache.stride()} {v_cache.stride()}")
        if scales is not None and any(s.shape != want[:3] or s.dtype != torch.float32 for s in scales):
            raise ValueError(f"qkv_rope: 8-bit caches need scales of {want[:3]} float32, got "
                             f"{[(tuple(s.shape), s.dtype) for s in scales]}")
    elif scales is not None:
        raise ValueError("qkv_rope: scales come with 8-bit caches")
    if exact is not None:
        _check_exact(exact, n_kv_heads, D, x.dtype)
    counters = tickets(x.device) if scales is not None else None
    y = torch.empty(N, dtype=x.dtype, device=x.device)
    c = _config("qkv_rope", x, wqkv, config, pairs_per_head=D // 2)
    launch = functools.partial(_launch, c, triton.cdiv(N // 2, c.block_n // 2), x, wqkv, y, norm_weight=norm_weight,
                               eps=eps, epilogue=ROPE, rope=(cos, sin, pos), pair_offset=D // 2,
                               rot_rows=(n_heads + n_kv_heads) * D, q_rows=n_heads * D, kv_rows=n_kv_heads * D,
                               head_dim=D, late_dependents=late_dependents, weight_scale=weight_scale,
                               weight_offset=weight_offset, exact=exact)
    if scales is None:
        return launch(cache=cache)
    if counters is None:           # captured before the tickets exist: quantize in a second kernel
        launch()
        k, v = (t.view(1, n_kv_heads, 1, D) for t in y[n_heads * D:].chunk(2))
        append_kv_triton(k, v, *cache, pos, *scales, use_pdl=_use_pdl(x))
        return y
    return launch(cache=cache, scales=scales, tickets=counters[-2 * n_kv_heads:])


def _check_exact(exact: tuple, n_kv_heads: int, D: int, dtype: torch.dtype) -> None:
    k_exact, v_exact, exact_pos, sink, ring = exact
    n = k_exact.shape[2] if k_exact.dim() == 4 else 0
    if (k_exact.shape != (1, n_kv_heads, n, D) or v_exact.shape != k_exact.shape or k_exact.dtype != dtype
            or v_exact.dtype != dtype or k_exact.stride() != v_exact.stride() or k_exact.stride(3) != 1
            or exact_pos.shape[-1] != n or exact_pos.dtype != torch.int64 or exact_pos.stride(-1) != 1
            or not 0 <= sink < sink + ring <= n):
        raise ValueError(f"qkv_rope: exact copies must be (1, {n_kv_heads}, N, {D}) of {dtype}, K and V in one "
                         f"layout with a contiguous last dim, positions int64 (N,), sink + ring <= N; got "
                         f"{tuple(k_exact.shape)} {k_exact.dtype} {k_exact.stride()}, {tuple(v_exact.shape)} "
                         f"{v_exact.stride()}, {tuple(exact_pos.shape)} {exact_pos.dtype}, sink {sink}, ring {ring}")


_BUILDS = {   # kind: (name, epilogue, RMSNorm prologue, cache write), as the decode step launches it
    "gemv": ("wo+residual", RESIDUAL, False, False), "gemv_deep": ("w2+residual", RESIDUAL, False, False),
    "gemv_norm": ("logits", PLAIN, True, False), "norm_swiglu": ("w13 swiglu", SWIGLU, True, False),
    "qkv_rope": ("wqkv rope cache", ROPE, True, True)}


def _build_specs() -> dict:
    """{name: (kind, config, cache pointer type or None, weights: None, "int8" or "int4")} of every build
    `compile_facts` makes."""
    specs = {}
    keys = [k for k in _BUILDS if k in CONFIGS] + [k for k in CONFIGS if isinstance(k, tuple)]
    # the 8-bit caches' qkv_rope (it quantizes the cache itself), int8 weights: the kind's default configuration,
    # then each per-shape entry of INT8_CONFIGS (DP4A where it says so), and int4 weights: each kind's default,
    # qkv_rope writing an fp8 cache (CodeLlama-34B's long-context step), then each per-shape entry of INT4_CONFIGS
    builds = ([(key, None, None) for key in keys] + [("qkv_rope", "*fp8e4nv", None), ("qkv_rope", "*i8", None)]
              + [(kind, None, "int8") for kind in _BUILDS]
              + [(key, None, "int8") for key in INT8_CONFIGS if isinstance(key, tuple)]
              + [(kind, None, "int4") for kind in _BUILDS] + [("qkv_rope", "*fp8e4nv", "int4")]
              + [(key, None, "int4") for key in INT4_CONFIGS if isinstance(key, tuple)])
    built = set()
    for key, cache_type, weights in builds:
        kind = key if isinstance(key, str) else key[0]
        table = {"int8": INT8_CONFIGS, "int4": INT4_CONFIGS}.get(weights, CONFIGS)
        c = table[key] if weights and (isinstance(key, tuple) or weights == "int4") else CONFIGS[key]
        if (kind, c, cache_type, weights) in built:
            continue
        built.add((kind, c, cache_type, weights))
        name = _BUILDS[kind][0]
        if cache_type:
            name = name.replace("cache", f"{'fp8' if 'fp8' in cache_type else 'int8'} cache")
        if weights:
            name += f" {weights} weights" + (" dp4a" if c.dp4a else "")
        specs[name if isinstance(key, str) else f"{name} {key[1]}x{key[2]}"] = (kind, c, cache_type, weights)
    return specs


def build_names() -> list[str]:
    """The names of `compile_facts`'s builds, in its order (without building anything)."""
    return list(_build_specs())


def compile_facts(arch: int = 90, names=None) -> dict:
    """Build each kernel of the step for a GPU target without a GPU, bf16, PDL on, in every configuration the
    decode step launches it with (`CONFIGS`: each kind's default, then each per-shape entry that differs, named
    "wqkv rope cache 5120x8192"), and each kind's default with int8 weights ("w13 swiglu int8 weights"): facts
    about each binary (must run without TRITON_INTERPRET, see kernels/compile_check.py), among them the global
    loads issued before the PDL wait (EARLY_TILE's), the int8 -> fp32 conversions by I2F (`cvt.rn.f32.s*`)
    and by PRMT, and the barriers in the key loop's SASS. `names`: only those builds (`build_names`)."""
    from triton.backends.compiler import GPUTarget

    from kernels.compile_check import _compile, before_pdl_wait, opcode_count, sass_facts
    pointers = dict(X="*bf16", NORM_W="*bf16", W="*bf16", W_SCALE="*bf16", Y="*bf16", RES="*bf16", COS="*fp32",
                    SIN="*fp32", POS="*i64", K_CACHE="*bf16", V_CACHE="*bf16")
    quantized = dict(K_SCALE="*fp32", V_SCALE="*fp32", TICKETS="*i32")
    facts = {}
    for name, (kind, c, cache_type, weights) in _build_specs().items():
        if names is not None and name not in names:
            continue
        _, epilogue, norm, cache = _BUILDS[kind]
        types = dict(pointers, Y="*fp32") if kind == "gemv_norm" else pointers
        exact = cache_type == "*fp8e4nv"     # an fp8 cache's step writes its exact copies too (models/kv_cache.py)
        if cache_type:
            types = dict(types, K_CACHE=cache_type, V_CACHE=cache_type, **quantized)
        if exact:
            types = dict(types, EXACT_K="*bf16", EXACT_V="*bf16", EXACT_POS="*i64")
        int8_weights, int4 = weights == "int8", weights == "int4"
        if int8_weights:
            types = dict(types, W="*i8", W_SCALE="*fp32")
        if int4:         # packed nibbles as int32 words, float16 scales and offsets per group of 32
            types = dict(types, W="*i32", W_SCALE="*fp16", W_OFFSET="*fp16")
        dp4a = int8_weights and c.dp4a
        if dp4a:         # x and the norm's weight as words of four bf16 values, W as words of four weights
            types = dict(types, X="*i64", NORM_W="*i64", W="*i32")
        # 8-bit caches of GQA models hold V sequence-major (a runtime stride); others' unit stride is specialised
        binary = _compile(_fused_gemv_kernel, types,
                          dict(BLOCK_N=c.block_n, BLOCK_K=c.block_k, NORM=norm, EPILOGUE=epilogue, HEAD_DIM=128,
                               **({} if cache_type else {"stride_vd": 1}),
                               WRITE_CACHE=cache, USE_PDL=True, INTERLEAVE=c.interleave,
                               QUANT_CACHE=cache_type is not None, BLOCK_D=128, EARLY_TILE=epilogue in EARLY_TILE,
                               SCALED_W=int8_weights, INT8_PRMT=int8_weights and not dp4a,
                               NARROW_INT8=int8_weights and not dp4a, DP4A=dp4a, ASM=True, EXACT=exact, INT4=int4,
                               G=32),
                          GPUTarget("cuda", arch, 32), c.num_warps, c.num_stages, floats=("eps",))
        ptx = binary.asm["ptx"]
        sass = sass_facts(binary.asm["cubin"], with_opcodes=True)
        loop = sass.get("loop_opcodes", {})
        facts[name] = {
            "registers": sass.get("registers"), "local_bytes": sass.get("local_bytes"),
            "loop_instructions": sass.get("loop_instructions"),
            "cubin_bytes": len(binary.asm["cubin"]), "vector_loads": sum("ld.global.v4" in line for line in ptx.splitlines()),
            "loads_8_bytes": ptx.count("ld.global.v2.b32"),
            "pdl_wait": "griddepcontrol.wait" in ptx, "tickets": re.search(r"atom\.global\S*acq_rel", ptx) is not None,
            "loads_before_wait": sum("ld.global" in line for line in before_pdl_wait(ptx)),
            "i2f": len(re.findall(r"cvt\.rn\.f32\.s(?:8|16|32)", ptx)), "prmt": ptx.count("prmt.b32"),
            "dp4a": ptx.count("dp4a.s32.s32"), "loop_barriers": opcode_count(loop, "BAR")}
    return facts

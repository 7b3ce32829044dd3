"""A Triton GEMV over 4-bit weights (`--weights int4`): y (M, N) = x (M, K) @ W (N, K)^T for 1 <= M <= MAX_ROWS,
W stored as kernels/int4_layout.py lays it out, read once:

    x       (M, K)        float16, bfloat16 or float32; M = 1 a batch-1 decode step, 2..16 a speculative verification
    packed  (N, K // 2)   uint8, byte j of row n: column 2j in its low nibble, column 2j + 1 in its high one
    scale   (N, K // G)   float16 ((max - min) / 15 of a group of G columns), G = K // scale.shape[1] in 128, 64, 32
    offset  (N, K // G)   float16 (the group's min)
    y       (M, N)        x's dtype, fp32 accumulation

    w[n, k] = q[n, k] * scale[n, g] + offset[n, g],  g = k // G, so a group's share of y[m, n] is
    scale[n, g] * sum_{k in g} q[n, k] x[m, k]  +  offset[n, g] * sum_{k in g} x[m, k]

A batch-1 decode step streams every weight once, so the GEMV is bound by the weight's bytes: 4 bits a weight (and
4 bytes of scale and offset a group: 6% at G = 128) is half of int8's bytes and a quarter of bf16's. What must not
bind it instead is the arithmetic: at ~3 TB/s an H200 SM receives ~13 bytes (26 weights) a clock, and its four
schedulers issue 128 thread-instructions a clock, so a weight may cost ~4 instructions at most. Hence:

One row (`_gemv_int4_row_kernel`, CUDA-core FMAs as kernels/gemv.py does for bf16 and int8): a program takes
BLOCK_N rows of W over a range of K in steps of BLOCK_K columns (ROW_BLOCK_K = 4096: 32 columns a thread). The
packed bytes are read as int32 words (N, K // 8), 8 weights a word, and each thread loads 16 bytes (a "slot": four
words, 32 columns; G // 32 slots a group) of each of its BLOCK_N rows, plus the 32 columns of x they meet, once for all
BLOCK_N rows, in the same layout: nothing passes through shared memory, no barrier and no shuffle a step
(`compile_facts`; x's tile through shared memory is kernels/gemv.py's NARROW_INT8_LOADS lesson). Every load is a
tile with one contiguous dimension (or 1-D): where dimensions tie, Triton 3.6 and 3.9 order them the other way round,
and a 4-D version of this kernel without barriers in 3.9 had 58 a step in 3.6 (the GPU image's). A nibble becomes
fp32 by one AND (a SHF more for three in eight): masked in place, its bits read as a float are the denormal
q * 2^(b - 149) for its bit position b, and x's column was scaled by 2^(149 - b - 74) beforehand (once, for every
row), so that the product is q * x * 2^-74, exact, for |x| in 2^-52..2^53 (`DENORMAL_SHIFT`). No I2F (a quarter-rate
instruction on sm_90: 256 of them a step in Triton's conversion, the `denormal=False` arm) and no 2^23 magic number
to subtract: about 2.1 instructions a weight with its FMA (sm_90 SASS, bf16 x, BLOCK_N 8: 872 a step of 128 bytes a
thread in Triton 3.9, 883 in 3.6, 6.8-6.9 a byte with the x and scale overheads). Each slot's sum of q * x is
scaled by its group's scale (times 2^74) once, and x's sums over the slot take the group's offset; the slots and
groups meet at the end of the row.

Several rows (`_gemv_int4_rows_kernel`, for 2..16 rows as kernels/few_rows_int8.py does int8 ones): a step takes a
wide tile, BLOCK_N rows by BLOCK_K columns (several groups), dequantizes it in registers to x's dtype and multiplies
it with x's tile (all M rows, padded to M_PAD = 16 by masked loads: a tensor-core dot's smallest side) in ONE
tensor-core dot (warpgroup MMAs at BLOCK_N 64 and up), fp32 accumulation, nothing a group. The packed bytes are read
as int32 words; a nibble becomes the fp32 128 + q by one PRMT (no I2F: `_nibbles_fp32`), then one FFMA makes
w = (128 + q) * scale + (offset - 128 * scale), its group's scale and offset broadcast over the group's words, and
w is rounded to x's dtype: the prefill path's numbers (kernels.int4_layout.dequantize_int4(weight, x.dtype), then a
matmul). (128 + q) * scale is exact in fp32, and so is offset - 128 * scale wherever the two lie within 2^13 of
each other; else it is off by half an fp32 ulp of the larger, far below x's rounding. K runs through the dot in a
permuted order that both operands share, so that each thread's share of the W operand is whole words (16-byte
loads, no byte gathers): about 2.5 instructions a weight (PRMT, FFMA, half a pack to 16 bits, an eighth of a word's
AND and SHF), 8.3-9.0 a byte of W in all (ROWS_BLOCK_N's comment), against 20.8 in the one-group-a-step design it
replaced; on an H100 it takes 1.2-1.5x the one-row kernel's time at 8 rows (Run 51), the old design 4.4-6.5x.
float32 x: fp32 dots at IEEE precision, so a float32 model keeps float32 rounding. In the interpreter (CPU) no
inline assembly runs (the nibbles come as 128 + q by shifts and masks: the same fp32 arithmetic) and the dot runs in
fp32, W not rounded to x's dtype (DESIGN.md: its 16-bit arithmetic is wrong).

Deep projections (N < K: CodeLlama-7B's w2, 34B's) split K as kernels/gemv.py does: programs write fp32 partials
(split, M, N), take a ticket from their row block's counter (`kernels.gemv.tickets`, shared by every GEMV: one
stream runs them in turn, each leaves them at zero), and the last adds the partials in split order (deterministic),
stores y and resets the counter, all in one launch. Captured into a CUDA graph before the tickets exist, a call runs
unsplit. `plan(M, N, K, G)` picks kernel, tile and split from the shapes (tests and benchmarks may ask for others).

`torch.ops.codecomplete.gemv_int4(x, packed, scale, offset)` is the op models call, opaque to torch.compile (a fake
implementation gives its output's shape), so compiled code and CUDA graphs can call it. `python -m kernels.gemv_int4`
checks it against float32 on a GPU and times it against int8 weights' GEMV and bf16's cuBLAS at CodeLlama-7B's and
34B's projections.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from kernels.devices import on_first_tensors_device
from kernels.few_rows_int8 import sm_count
from kernels.gemv import MAX_ROW_BLOCKS, split_launch
from kernels.int4_layout import GROUP_SIZES

MAX_ROWS = 16          # x's rows at most; the several-row kernel pads them to M_PAD (a tensor-core dot's side)
M_PAD = 16
# One row: BLOCK_N rows of W a program, ROW_BLOCK_K columns a step: 16 bytes of each row a thread (32 columns),
# 32 threads a warp. Not yet measured on a GPU.
ROW_BLOCK_N, ROW_WARPS, ROW_STAGES = 8, 4, 3
ROW_BLOCK_K = 32 * 32 * ROW_WARPS
# The denormal nibbles' products are q * x * 2^-DENORMAL_SHIFT (`_nibble`): exact for |x| from 2^-52 (smaller
# products lose bits as denormals) to 2^53 (larger x overflows when scaled); fp16 x lies inside, as activations do.
DENORMAL_SHIFT = tl.constexpr(74)
K_PER_PROGRAM = 8192   # deep projections (N < K) split into ranges of at most this many columns (4 KiB a row)
# Several rows: BLOCK_N rows of W a program, ROWS_BLOCK_K columns (at least a group) dequantized a step, one dot.
# Timed on an H100 (Run 51, bf16 x, G = 32, 8 rows; µs at CodeLlama-34B's wqkv / wo / w13 / w2): 64 rows x 256 columns,
# 4 warps 33.6 / 28.0 / 119.0 / 58.0, the sum of a 34B layer's least (1.2-1.5x the one-row kernel's time, where the
# design it replaced took 4.4-6.5x on an H200, Run 50); 64 x 128 33.1 / 26.9 / 145.1 / 64.9; 128 x 128 (the count's
# pick below) 43.1 / 35.1 / 139.8 / 88.5; 256 x 128 with 8 warps 79.8 / 63.4 / 286.4 / 159.9. By instruction count in
# sm_90 SASS (bf16 x, G = 32, the main loop; instructions a byte of W / registers, Triton 3.9 and the GPU image's 3.6
# alike unless told): 128 x 128 8.3 / 185 (3.6: 181; G = 128: 7.6); 128 x 256 8.1-8.3 but at 255 registers; 256 x
# 128 with 8 warps 8.2 / 140; 64 x 256 9.0 / 151 (3.6: 8.6); 64 x 128 9.6 / 96 (3.6: 9.4); 32 x 256 with 2 warps
# (mma.sync) 9.0 / 139 in 3.9 but 12.2 / 255 in 3.6: the count did not rank the tiles as the clock did (more
# programs an SM at 64 rows). The design it replaced (one group a step, two 16-deep dots, then the group's scale and
# offset on the accumulator) counted 20.8 a byte at G = 32 and 11.6 at G = 128.
ROWS_BLOCK_N, ROWS_BLOCK_K, ROWS_WARPS, ROWS_STAGES = 64, 256, 4, 3
PROGRAMS_PER_SM = 2    # several rows: split K where the row blocks alone give fewer programs than this an SM
MIN_GROUPS_PER_SPLIT = 4


@triton.jit
def _nibbles_fp32(w, PRMT: tl.constexpr):
    """int32 words w -> their eight nibbles q as the fp32 128 + q (nibble p: column 8i + p of word i), each w's
    shape. PRMT (the GPU): one PRMT a nibble puts its byte into a float's bits 16-23 under the exponent byte 0x43 (no
    I2F, a quarter-rate instruction on sm_90), after one AND (low nibbles) or SHF and AND (high) per four words'
    bytes. Else (the interpreter: no inline assembly) by shifts, masks and conversions, the same numbers."""
    if PRMT:
        return tl.inline_asm_elementwise(
            "{ .reg .b32 lo, hi; and.b32 lo, $8, 0x0F0F0F0F; shr.b32 hi, $8, 4; and.b32 hi, hi, 0x0F0F0F0F; "
            "prmt.b32 $0, lo, 0x43000000, 0x7044; prmt.b32 $1, hi, 0x43000000, 0x7044; "
            "prmt.b32 $2, lo, 0x43000000, 0x7144; prmt.b32 $3, hi, 0x43000000, 0x7144; "
            "prmt.b32 $4, lo, 0x43000000, 0x7244; prmt.b32 $5, hi, 0x43000000, 0x7244; "
            "prmt.b32 $6, lo, 0x43000000, 0x7344; prmt.b32 $7, hi, 0x43000000, 0x7344; }",
            "=r,=r,=r,=r,=r,=r,=r,=r,r", [w], dtype=(tl.float32,) * 8, is_pure=True, pack=1)
    else:
        return (((w >> 0) & 0xF).to(tl.float32) + 128.0, ((w >> 4) & 0xF).to(tl.float32) + 128.0,
                ((w >> 8) & 0xF).to(tl.float32) + 128.0, ((w >> 12) & 0xF).to(tl.float32) + 128.0,
                ((w >> 16) & 0xF).to(tl.float32) + 128.0, ((w >> 20) & 0xF).to(tl.float32) + 128.0,
                ((w >> 24) & 0xF).to(tl.float32) + 128.0, ((w >> 28) & 0xF).to(tl.float32) + 128.0)


@triton.jit
def _dequantized(n, scale, offset, G: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """Nibbles n (BLOCK_N, WORDS) fp32 -> n * scale + offset in DOT_DTYPE, scale and offset (BLOCK_N, GROUPS) each
    broadcast over its group's G // 8 words."""
    BLOCK_N: tl.constexpr = n.shape[0]
    GROUPS: tl.constexpr = scale.shape[1]
    w = tl.reshape(n, [BLOCK_N, GROUPS, G // 8]) * scale[:, :, None] + offset[:, :, None]
    return tl.reshape(w, [BLOCK_N, GROUPS * (G // 8)]).to(DOT_DTYPE)


@triton.jit
def _store_or_meet(Y, PARTIALS, COUNTERS, value, y_offs, part_offs, mask, pid_n, num_splits, split_stride,
                   SPLIT: tl.constexpr):
    """value (any tile shape) is this program's share of y at y_offs: stored, or (SPLIT) written as fp32 partials at
    part_offs of this split's slice; the last program of the row block to take its ticket adds every split's in
    split order, stores y and resets the counter for the next launch."""
    if SPLIT:
        tl.store(PARTIALS + tl.program_id(1) * split_stride + part_offs, value, mask=mask)
        tl.debug_barrier()          # every thread's partials are written before the ticket releases them
        ticket = tl.atomic_add(COUNTERS + pid_n, 1, sem="acq_rel", scope="gpu")
        if ticket == num_splits - 1:    # the last of the row block's programs: every partial is visible
            total = tl.zeros_like(value)
            for s in range(0, num_splits):      # in split order, whichever program came last: deterministic
                total += tl.load(PARTIALS + s * split_stride + part_offs, mask=mask, other=0.0, cache_modifier=".cg")
            tl.store(Y + y_offs, total.to(Y.dtype.element_ty), mask=mask)
            tl.atomic_xchg(COUNTERS + pid_n, 0, sem="relaxed", scope="gpu")        # ready for the next launch
    else:
        tl.store(Y + y_offs, value.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _nibble(w, p: tl.constexpr, DENORMAL: tl.constexpr):
    """Nibble p of int32 words w (column 8i + p of word i) in fp32. DENORMAL: the nibble masked in place (bits 4p;
    nibbles 5-7 shifted down 12 bits first, to bits 8, 12, 16: a float's mantissa ends at bit 22) and read as a
    float, the denormal q * 2^(b - 149) for its bit position b: one or two integer ops a weight, no I2F (quarter
    rate on sm_90). Else q, by Triton's conversion."""
    if DENORMAL:
        if p < 5:
            bits = w & (0xF << (4 * p))
        else:
            bits = (w >> 12) & (0xF << (4 * (p - 3)))
        return bits.to(tl.float32, bitcast=True)
    else:
        return ((w >> (4 * p)) & 0xF).to(tl.float32)


@triton.jit
def _x_columns(X, NORM_W, first, mask, NORM: tl.constexpr, DENORMAL: tl.constexpr):
    """x's eight columns from first (SLOTS,) (one word's columns of each slot) -> each column (SLOTS,) in fp32 times
    the power of two that makes its nibble's product q * x * 2^-DENORMAL_SHIFT (`_nibble`'s bit position b:
    x * 2^(149 - b - DENORMAL_SHIFT)), their sum unscaled, and the sum of their squares. Loaded as a (SLOTS, 8) tile,
    16 bytes a load (float32 x in two): a thread loads its own slot's columns, in the words' layout (no pass through
    shared memory). NORM (kernels/fused_gemv.py's RMSNorm prologue): the columns are x * NORM_W's, the squares x's."""
    SLOTS: tl.constexpr = first.shape[0]
    if X.dtype.element_ty == tl.float32:
        four = tl.arange(0, 4)[None, :]
        low = tl.load(X + first[:, None] + four, mask=mask, other=0.0)             # (SLOTS, 4) columns 0-3
        high = tl.load(X + first[:, None] + 4 + four, mask=mask, other=0.0)        # columns 4-7
        sumsq = tl.zeros([SLOTS], dtype=tl.float32)
        if NORM:
            sumsq = tl.sum(low * low, axis=1) + tl.sum(high * high, axis=1)
            low = low * tl.load(NORM_W + first[:, None] + four, mask=mask, other=0.0).to(tl.float32)
            high = high * tl.load(NORM_W + first[:, None] + 4 + four, mask=mask, other=0.0).to(tl.float32)
        total = tl.sum(low, axis=1) + tl.sum(high, axis=1)                          # (SLOTS,)
        c0_2, c1_3 = tl.split(tl.reshape(low, [SLOTS, 2, 2]))                       # columns 2k, 2k + 1
        c4_6, c5_7 = tl.split(tl.reshape(high, [SLOTS, 2, 2]))
        x0, x2 = tl.split(c0_2)
        x1, x3 = tl.split(c1_3)
        x4, x6 = tl.split(c4_6)
        x5, x7 = tl.split(c5_7)
    else:
        eight = tl.arange(0, 8)[None, :]
        x = tl.load(X + first[:, None] + eight, mask=mask, other=0.0).to(tl.float32)   # (SLOTS, 8)
        sumsq = tl.zeros([SLOTS], dtype=tl.float32)
        if NORM:
            sumsq = tl.sum(x * x, axis=1)
            x = x * tl.load(NORM_W + first[:, None] + eight, mask=mask, other=0.0).to(tl.float32)
        total = tl.sum(x, axis=1)                                                   # (SLOTS,)
        even, odd = tl.split(tl.reshape(x, [SLOTS, 4, 2]))                          # columns 2j, 2j + 1
        c0_4, c2_6 = tl.split(tl.reshape(even, [SLOTS, 2, 2]))                      # columns 4k, 4k + 2
        c1_5, c3_7 = tl.split(tl.reshape(odd, [SLOTS, 2, 2]))
        x0, x4 = tl.split(c0_4)
        x2, x6 = tl.split(c2_6)
        x1, x5 = tl.split(c1_5)
        x3, x7 = tl.split(c3_7)
    if DENORMAL:           # nibbles 0-4 at bits 0, 4, .., 16; 5, 6, 7 at bits 8, 12, 16
        top: tl.constexpr = 149 - DENORMAL_SHIFT
        x0 = x0 * (2.0 ** top)
        x1 = x1 * (2.0 ** (top - 4))
        x2 = x2 * (2.0 ** (top - 8))
        x3 = x3 * (2.0 ** (top - 12))
        x4 = x4 * (2.0 ** (top - 16))
        x5 = x5 * (2.0 ** (top - 8))
        x6 = x6 * (2.0 ** (top - 12))
        x7 = x7 * (2.0 ** (top - 16))
    return x0, x1, x2, x3, x4, x5, x6, x7, total, sumsq


@triton.jit
def _word_times_x(acc, w, X, NORM_W, first, mask, NORM: tl.constexpr, DENORMAL: tl.constexpr):
    """acc (BLOCK_N, SLOTS) plus word w's eight weights (BLOCK_N, SLOTS) int32 times x's eight columns from first
    (SLOTS,); returns acc, x's sums over those columns and their squares' (SLOTS,) (`_x_columns`)."""
    x0, x1, x2, x3, x4, x5, x6, x7, total, sumsq = _x_columns(X, NORM_W, first, mask, NORM, DENORMAL)
    acc += _nibble(w, 0, DENORMAL) * x0[None, :]
    acc += _nibble(w, 1, DENORMAL) * x1[None, :]
    acc += _nibble(w, 2, DENORMAL) * x2[None, :]
    acc += _nibble(w, 3, DENORMAL) * x3[None, :]
    acc += _nibble(w, 4, DENORMAL) * x4[None, :]
    acc += _nibble(w, 5, DENORMAL) * x5[None, :]
    acc += _nibble(w, 6, DENORMAL) * x6[None, :]
    acc += _nibble(w, 7, DENORMAL) * x7[None, :]
    return acc, total, sumsq


@triton.jit
def _slot_words(w_rows, mask_n, k0, k_end, offs_w):
    """One step's words of W from column k0: (BLOCK_N, SLOTS * 4) int32 of rows w_rows (BLOCK_N, 1) where mask_n
    (BLOCK_N,), 16 bytes a slot (slots past k_end load zeros). Apart from `_row_slots` so that a fused kernel can load
    its first step before waiting on the kernel before it (kernels/fused_gemv.py's EARLY_TILE)."""
    words = k0 // 8 + offs_w                                                        # (SLOTS * 4,)
    mask_w = k0 + 32 * (offs_w // 4) < k_end                                        # by slot: 16-byte loads
    return tl.load(w_rows + words[None, :], mask=mask_n[:, None] & mask_w[None, :], other=0)


@triton.jit
def _row_slots(acc, w, X, NORM_W, SCALE, OFFSET, s_rows_i, rows_ok_i, k0, k_end, offs_s, offs_i,
               G: tl.constexpr, NORM: tl.constexpr, DENORMAL: tl.constexpr):
    """acc (BLOCK_N, SLOTS) fp32 plus the step from column k0 of words w (`_slot_words`); returns it and x's squares
    summed over the step's slots (SLOTS,) (NORM: x' = x * NORM_W multiplies, x's squares are the RMSNorm's statistic;
    else zeros). Slot s is 32 columns, 16 bytes (four words) of a row: the s-th of the step, in group
    (k0 + 32 s) // G. A thread takes one slot in each of the BLOCK_N rows, with x's 32 columns loaded once for all of
    them; its sums of q * x over the slot are scaled by the group's scale there (no shuffle a step: a group's slots
    meet at the end), x's sums over the slot take the offset. Every load is a tile with one contiguous dimension (or
    none: 1-D), so that Triton's choice of layout cannot differ between them (a tie between dimensions is broken one
    way in Triton 3.6, the other in 3.9). s_rows_i, rows_ok_i (BLOCK_N * SLOTS,): each slot's row's offset in SCALE
    and whether the row is inside W, row-major (thread t holds slot t of each row, as for W)."""
    SLOTS: tl.constexpr = offs_s.shape[0]
    BLOCK_N: tl.constexpr = acc.shape[0]
    w = tl.reshape(w, [BLOCK_N, SLOTS, 2, 2])                                       # (BLOCK_N, SLOTS * 4) int32
    even, odd = tl.split(w)
    w0, w2 = tl.split(even)                                                         # (BLOCK_N, SLOTS) each
    w1, w3 = tl.split(odd)
    first = k0 + 32 * offs_s                                                        # (SLOTS,): the slot's column
    x_mask = (first < k_end)[:, None]
    q_x = tl.zeros(acc.shape, dtype=tl.float32)                                    # (BLOCK_N, SLOTS)
    q_x, t0, sq0 = _word_times_x(q_x, w0, X, NORM_W, first, x_mask, NORM, DENORMAL)
    q_x, t1, sq1 = _word_times_x(q_x, w1, X, NORM_W, first + 8, x_mask, NORM, DENORMAL)
    q_x, t2, sq2 = _word_times_x(q_x, w2, X, NORM_W, first + 16, x_mask, NORM, DENORMAL)
    q_x, t3, sq3 = _word_times_x(q_x, w3, X, NORM_W, first + 24, x_mask, NORM, DENORMAL)
    x_sums = (t0 + t1) + (t2 + t3)                                                  # (SLOTS,)
    # the slots' groups' scales and offsets, every row's, as one 1-D tile (BLOCK_N * SLOTS,) then (BLOCK_N, SLOTS):
    # the group index is a division (by an even number: for G = 32 too), so the compiler sees no contiguity and
    # loads element by element
    slot_i = offs_i % SLOTS
    s_offs = s_rows_i + (k0 * 2 + 64 * slot_i) // (2 * G)
    s_mask = rows_ok_i & (k0 + 32 * slot_i < k_end)
    scale = tl.reshape(tl.load(SCALE + s_offs, mask=s_mask, other=0.0).to(tl.float32), [BLOCK_N, SLOTS])
    if DENORMAL:
        scale = scale * (2.0 ** DENORMAL_SHIFT)     # exact: the products were q * x * 2^-DENORMAL_SHIFT
    offset = tl.reshape(tl.load(OFFSET + s_offs, mask=s_mask, other=0.0).to(tl.float32), [BLOCK_N, SLOTS])
    return acc + q_x * scale + offset * x_sums[None, :], (sq0 + sq1) + (sq2 + sq3)


@triton.jit(do_not_specialize=["num_splits"])
def _gemv_int4_row_kernel(X, WORDS, SCALE, OFFSET, Y, PARTIALS, COUNTERS, N, K, stride_wn, stride_sn,
                          chunks_per_split, num_splits, G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          SPLIT: tl.constexpr, DENORMAL: tl.constexpr):
    """y (1, N) = x (1, K) @ W^T, W's packed bytes read as int32 words (N, K // 8): program (i, s) takes rows
    i * BLOCK_N.. over K range s (all of K unless SPLIT) in steps of BLOCK_K columns, BLOCK_K // 32 slots."""
    pid_n = tl.program_id(0)
    row_start = pid_n * BLOCK_N
    rows = row_start + tl.arange(0, BLOCK_N)                                        # (BLOCK_N,)
    mask_n = rows < N
    SLOTS: tl.constexpr = BLOCK_K // 32
    offs_w = tl.arange(0, BLOCK_K // 8)                                             # (SLOTS * 4,) words of a step
    offs_s = tl.arange(0, SLOTS)                                                    # (SLOTS,)
    offs_i = tl.arange(0, BLOCK_N * SLOTS)                                          # (BLOCK_N * SLOTS,) row-major
    if SPLIT:              # in whole chunks: the compiler sees k_start's alignment (16-byte loads of W)
        k_start = tl.program_id(1) * chunks_per_split * BLOCK_K
        k_end = tl.minimum(K, k_start + chunks_per_split * BLOCK_K)
    else:
        k_start = 0
        k_end = K
    w_rows = WORDS + rows[:, None].to(tl.int64) * stride_wn                        # (BLOCK_N, 1)
    row_i = row_start + offs_i // SLOTS                                             # (BLOCK_N * SLOTS,)
    s_rows_i = row_i.to(tl.int64) * stride_sn
    rows_ok_i = row_i < N
    acc = tl.zeros([BLOCK_N, SLOTS], dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        w = _slot_words(w_rows, mask_n, k0, k_end, offs_w)
        acc, _ = _row_slots(acc, w, X, X, SCALE, OFFSET, s_rows_i, rows_ok_i, k0, k_end, offs_s, offs_i, G, False,
                            DENORMAL)
    y = tl.sum(acc, axis=1)                                                         # (BLOCK_N,)
    _store_or_meet(Y, PARTIALS, COUNTERS, y, rows, rows, mask_n, pid_n, num_splits, N, SPLIT)


@triton.jit
def _rows_step(acc, x_rows, w_rows, scale_rows, offset_rows, mask_n, mask_m, k0, k_end, G: tl.constexpr,
               BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr, IEEE_DOT: tl.constexpr, PRMT: tl.constexpr,
               RAGGED: tl.constexpr):
    """acc (BLOCK_N, M_PAD) fp32 plus the step from column k0: W's tile (BLOCK_N, BLOCK_K) dequantized to DOT_DTYPE
    @ x's tile (BLOCK_K, M_PAD), one dot, K in an order that gives each thread of the dot whole int32 words of W.
    RAGGED: the step may run past k_end (a range's last where K is not a whole number of steps), and its groups
    past k_end load zeros; else nothing is masked along K (the main loop)."""
    BLOCK_N: tl.constexpr = acc.shape[0]
    M_PAD: tl.constexpr = acc.shape[1]
    GROUPS: tl.constexpr = BLOCK_K // G
    offs_w = tl.arange(0, BLOCK_K // 8)                                             # (BLOCK_K // 8,) words
    offs_g = tl.arange(0, GROUPS)                                                   # (GROUPS,) groups
    offs_c = k0 + tl.arange(0, BLOCK_K)                                             # (BLOCK_K,) columns
    mask_w = mask_n[:, None]
    mask_s = mask_n[:, None]
    mask_x = mask_m[None, :]
    if RAGGED:             # by group, so that the mask is constant over a group's G // 8 words (16-byte loads)
        mask_w = mask_w & (k0 + G * (offs_w // (G // 8)) < k_end)[None, :]
        mask_s = mask_s & (k0 + G * offs_g < k_end)[None, :]
        mask_x = mask_x & (offs_c < k_end)[:, None]
    words = tl.load(w_rows + (k0 // 8 + offs_w)[None, :], mask=mask_w, other=0)   # (BLOCK_N, BLOCK_K // 8) int32
    groups = (k0 // G + offs_g)[None, :]
    scale = tl.load(scale_rows + groups, mask=mask_s, other=0.0).to(tl.float32)   # (BLOCK_N, GROUPS)
    offset = tl.load(offset_rows + groups, mask=mask_s, other=0.0).to(tl.float32)
    x = tl.load(x_rows + offs_c[:, None], mask=mask_x, other=0.0).to(DOT_DTYPE)   # (BLOCK_K, M_PAD)
    offset = offset - 128.0 * scale      # the nibbles come as 128 + q: w = (128 + q) * scale + (offset - 128 * scale)
    n0, n1, n2, n3, n4, n5, n6, n7 = _nibbles_fp32(words, PRMT)                     # (BLOCK_N, BLOCK_K // 8) each
    e00 = tl.join(_dequantized(n0, scale, offset, G, DOT_DTYPE), _dequantized(n1, scale, offset, G, DOT_DTYPE))
    e01 = tl.join(_dequantized(n2, scale, offset, G, DOT_DTYPE), _dequantized(n3, scale, offset, G, DOT_DTYPE))
    e10 = tl.join(_dequantized(n4, scale, offset, G, DOT_DTYPE), _dequantized(n5, scale, offset, G, DOT_DTYPE))
    e11 = tl.join(_dequantized(n6, scale, offset, G, DOT_DTYPE), _dequantized(n7, scale, offset, G, DOT_DTYPE))
    w = tl.join(tl.join(e00, e01), tl.join(e10, e11))          # (BLOCK_N, BLOCK_K // 8, e, h, a): nibble 4a + 2h + e
    # word i = 4 bb + t, so column 8 i + 4 a + 2 h + e; the dot takes K in the order (bb, a, h, t, e): thread t of a
    # tensor-core dot holds columns 2t, 2t + 1, 2t + 8, 2t + 9 of each 16 (h: the second 8; a: the second 16 of 32),
    # i.e. all eight nibbles of word 4 bb + t
    w = tl.reshape(w, [BLOCK_N, BLOCK_K // 32, 4, 2, 2, 2])                         # (BLOCK_N, bb, t, e, h, a)
    w = tl.reshape(tl.permute(w, [0, 1, 5, 4, 2, 3]), [BLOCK_N, BLOCK_K])          # (BLOCK_N, (bb, a, h, t, e))
    x = tl.reshape(x, [BLOCK_K // 32, 4, 2, 2, 2, M_PAD])                           # (bb, t, a, h, e, M_PAD)
    x = tl.reshape(tl.permute(x, [0, 2, 3, 1, 4, 5]), [BLOCK_K, M_PAD])             # ((bb, a, h, t, e), M_PAD)
    if IEEE_DOT:           # float32 x (and the interpreter): fp32 products, not TF32's
        return tl.dot(w, x, acc, input_precision="ieee")
    else:
        return tl.dot(w, x, acc)                                                    # (BLOCK_N, M_PAD) fp32


@triton.jit(do_not_specialize=["M", "num_splits"])      # one binary for every M and split count
def _gemv_int4_rows_kernel(X, WORDS, SCALE, OFFSET, Y, PARTIALS, COUNTERS, M, N, K, stride_xm, stride_wn, stride_sn,
                           stride_ym, chunks_per_split, num_splits, G: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_K: tl.constexpr, M_PAD: tl.constexpr, SPLIT: tl.constexpr, UPCAST: tl.constexpr,
                           IEEE_DOT: tl.constexpr, PRMT: tl.constexpr):
    """y^T's tile (BLOCK_N, M_PAD) = W's rows (BLOCK_N, range of K) dequantized @ x's columns^T, BLOCK_K columns a
    step (`_rows_step`): whole steps unmasked along K, then a ragged last one where K is not a whole number of
    steps. W's packed bytes are read as int32 words (N, K // 8)."""
    pid_n = tl.program_id(0)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)                                  # (BLOCK_N,) rows of W
    mask_n = rows < N
    offs_m = tl.arange(0, M_PAD)                                                    # (M_PAD,) rows of x
    mask_m = offs_m < M
    if SPLIT:              # this program's range of whole steps (so counted: the compiler sees its alignment)
        k_start = tl.program_id(1) * chunks_per_split * BLOCK_K
        k_end = tl.minimum(K, k_start + chunks_per_split * BLOCK_K)
    else:
        k_start = 0
        k_end = K
    w_rows = WORDS + rows[:, None].to(tl.int64) * stride_wn                         # (BLOCK_N, 1)
    scale_rows = SCALE + rows[:, None].to(tl.int64) * stride_sn                     # (BLOCK_N, 1)
    offset_rows = OFFSET + rows[:, None].to(tl.int64) * stride_sn
    x_rows = X + offs_m[None, :] * stride_xm                                        # (1, M_PAD)
    DOT_DTYPE: tl.constexpr = tl.float32 if UPCAST else X.dtype.element_ty
    acc = tl.zeros([BLOCK_N, M_PAD], dtype=tl.float32)
    k_whole = k_start + (k_end - k_start) // BLOCK_K * BLOCK_K                      # (K is whole groups)
    for k0 in range(k_start, k_whole, BLOCK_K):
        acc = _rows_step(acc, x_rows, w_rows, scale_rows, offset_rows, mask_n, mask_m, k0, k_end, G, BLOCK_K,
                         DOT_DTYPE, IEEE_DOT, PRMT, False)
    if k_whole < k_end:
        acc = _rows_step(acc, x_rows, w_rows, scale_rows, offset_rows, mask_n, mask_m, k_whole, k_end, G, BLOCK_K,
                         DOT_DTYPE, IEEE_DOT, PRMT, True)
    y_offs = offs_m[None, :] * stride_ym + rows[:, None]                            # (BLOCK_N, M_PAD) of y (M, N)
    part_offs = offs_m[None, :] * N + rows[:, None]                                 # of a split's (M, N) partials
    _store_or_meet(Y, PARTIALS, COUNTERS, acc, y_offs, part_offs, mask_n[:, None] & mask_m[None, :], pid_n,
                   num_splits, M * N, SPLIT)


class Plan(NamedTuple):
    """How one call runs: which kernel ("row": M = 1, "rows": 2..16), its tile and compile options, and K cut into
    split_k ranges of k_per_split columns (split_k 1: one range, all of K)."""
    kernel: str
    block_n: int
    block_k: int           # columns a step: a multiple of G (for "rows", the columns dequantized a step)
    num_warps: int
    num_stages: int
    split_k: int = 1
    k_per_split: int = 0


def split_for(N: int, K: int, block_n: int, block_k: int, split_k: int) -> tuple[int, int]:
    """(split_k, k_per_split) for `split_k` ranges asked for: the fewest ranges of whole BLOCK_K chunks with as many
    chunks each, none empty; (1, K) where one range it is."""
    chunks = triton.cdiv(K, block_k)
    if split_k <= 1 or chunks <= 1 or triton.cdiv(N, block_n) > MAX_ROW_BLOCKS:     # (one counter a row block)
        return 1, K
    per_split = triton.cdiv(chunks, min(split_k, chunks))
    split_k = triton.cdiv(chunks, per_split)
    return (split_k, per_split * block_k) if split_k > 1 else (1, K)


def plan(M: int, N: int, K: int, G: int, sms: int = 132) -> Plan:
    """The launch for x (M, K) @ W (N, K)^T with groups of G: one row takes the row kernel in ROW_BLOCK_N rows and
    steps of ROW_BLOCK_K columns, deep projections (N < K) cut into ranges of at most K_PER_PROGRAM columns;
    several rows take the dot kernel in ROWS_BLOCK_N rows and steps of ROWS_BLOCK_K columns (a group at least), K
    split where the row blocks are fewer than PROGRAMS_PER_SM an SM (ranges of at least MIN_GROUPS_PER_SPLIT groups
    and one step). Shapes and SM count only."""
    if M == 1:
        block_k = ROW_BLOCK_K
        split = triton.cdiv(K, K_PER_PROGRAM) if N < K else 1
        return Plan("row", ROW_BLOCK_N, block_k, ROW_WARPS, ROW_STAGES, *split_for(N, K, ROW_BLOCK_N, block_k, split))
    row_blocks = triton.cdiv(N, ROWS_BLOCK_N)
    target = PROGRAMS_PER_SM * sms
    split = 1 if row_blocks >= target else min(triton.cdiv(target, row_blocks), K // G // MIN_GROUPS_PER_SPLIT)
    block_k = max(ROWS_BLOCK_K, G)
    split = min(split, max(1, K // block_k))
    return Plan("rows", ROWS_BLOCK_N, block_k, ROWS_WARPS, ROWS_STAGES,
                *split_for(N, K, ROWS_BLOCK_N, block_k, split))


def check_inputs(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> int:
    """Refuse what the kernels cannot take, in one clear ValueError; returns G."""
    if x.dim() != 2 or packed.dim() != 2 or x.shape[1] != 2 * packed.shape[1]:
        raise ValueError(f"gemv_int4 takes x (M, K) and packed (N, K // 2) with an even K, got x "
                         f"{tuple(x.shape)} and packed {tuple(packed.shape)}")
    M, K = x.shape
    N = packed.shape[0]
    if not 1 <= M <= MAX_ROWS:
        raise ValueError(f"gemv_int4 takes 1 to {MAX_ROWS} rows of x, got {M} (more rows: dequantize and use cuBLAS)")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"gemv_int4: x must be float32, bfloat16 or float16, got {x.dtype}")
    if packed.dtype != torch.uint8 or not packed.is_contiguous():
        raise ValueError(f"gemv_int4: packed must be a contiguous uint8 tensor (two columns a byte), got "
                         f"{packed.dtype} with strides {packed.stride()}")
    if packed.data_ptr() % 4:
        raise ValueError("gemv_int4: packed must start on a 4-byte boundary (the row kernel reads it as int32 words)")
    if scale.dim() != 2 or scale.shape[0] != N or scale.shape[1] == 0 or K % scale.shape[1] != 0:
        raise ValueError(f"gemv_int4: scale must be (N, K // G) = ({N}, K // G) with G dividing K = {K}, got "
                         f"{tuple(scale.shape)}")
    G = K // scale.shape[1]
    if G not in GROUP_SIZES:
        raise ValueError(f"gemv_int4: groups of {G} columns (K = {K}, {scale.shape[1]} groups a row); the layout's "
                         f"are {', '.join(map(str, GROUP_SIZES))}")
    for name, t in (("scale", scale), ("offset", offset)):
        if t.dtype != torch.float16 or t.shape != scale.shape or not t.is_contiguous():
            raise ValueError(f"gemv_int4: {name} must be a contiguous float16 ({N}, {scale.shape[1]}), got "
                             f"{tuple(t.shape)} {t.dtype}" + ("" if t.is_contiguous() else " (not contiguous)"))
    if not x.device == packed.device == scale.device == offset.device:
        raise ValueError(f"gemv_int4: x, packed, scale and offset must share a device, got {x.device}, "
                         f"{packed.device}, {scale.device} and {offset.device}")
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":    # (Triton's own error is a traceback)
        raise ValueError(f"gemv_int4 runs on CUDA tensors (or in Triton's interpreter), not on {x.device}: "
                         f"off the GPU, dequantize (kernels.int4_layout.dequantize_int4) and use F.linear")
    return G


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@on_first_tensors_device
def gemv_int4(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, *,
              kernel: str | None = None, block_n: int | None = None, block_k: int | None = None,
              num_warps: int | None = None, num_stages: int | None = None, split_k: int | None = None,
              denormal: bool = True) -> torch.Tensor:
    """x (M, K), 1 <= M <= MAX_ROWS, float32/bfloat16/float16; packed (N, K // 2) uint8; scale, offset (N, K // G)
    float16 -> y (M, N) in x.dtype. The other arguments (benchmarks, tests) replace `plan`'s: kernel "row" (M = 1
    only) or "rows", the tile (block_k: a power-of-two multiple of G; for "rows", the columns of a step's dot),
    split_k (1: unsplit); denormal False: the row kernel converts nibbles by Triton's I2F (the A/B arm)."""
    G = check_inputs(x, packed, scale, offset)
    M, K = x.shape
    N = packed.shape[0]
    if kernel not in (None, "row", "rows") or kernel == "row" and M != 1:
        raise ValueError(f"gemv_int4: kernel {kernel!r}: 'row' (one row of x) or 'rows'")
    chosen = plan(2 if kernel == "rows" else M, N, K, G, sm_count(x.device))
    kernel = chosen.kernel
    block_n = block_n or chosen.block_n
    block_k = block_k or chosen.block_k
    if block_k % G or not _power_of_two(block_k // G) or not _power_of_two(block_n):
        raise ValueError(f"gemv_int4: block_n {block_n} and block_k / G {block_k} / {G} must be powers of two")
    num_warps, num_stages = num_warps or chosen.num_warps, num_stages or chosen.num_stages
    if split_k is None and (block_n, block_k) == (chosen.block_n, chosen.block_k):
        split_k, k_per_split = chosen.split_k, chosen.k_per_split
    else:
        split_k, k_per_split = split_for(N, K, block_n, block_k, split_k if split_k is not None else chosen.split_k)
    if x.stride(1) != 1:
        x = x.contiguous()
    y, partials, counters, split_k, k_per_split = split_launch(x, N, K, split_k, k_per_split)
    grid = (triton.cdiv(N, block_n), split_k)
    if kernel == "row":
        _gemv_int4_row_kernel[grid](
            x, packed.view(torch.int32), scale, offset, y, partials, counters, N, K, packed.stride(0) // 4,
            scale.stride(0), k_per_split // block_k, split_k, G=G, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT=split_k > 1,
            DENORMAL=denormal, num_warps=num_warps, num_stages=num_stages)
    else:
        upcast = not x.is_cuda         # the interpreter: widen to fp32 at once
        _gemv_int4_rows_kernel[grid](
            x, packed.view(torch.int32), scale, offset, y, partials, counters, M, N, K, x.stride(0),
            packed.stride(0) // 4, scale.stride(0), y.stride(0), k_per_split // block_k, split_k, G=G, BLOCK_N=block_n,
            BLOCK_K=block_k, M_PAD=M_PAD, SPLIT=split_k > 1, UPCAST=upcast, IEEE_DOT=upcast or x.dtype == torch.float32,
            PRMT=not upcast, num_warps=num_warps, num_stages=num_stages)
    return y


@torch.library.custom_op("codecomplete::gemv_int4", mutates_args=())
def gemv_int4_op(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """x (M, K), 1 <= M <= 16, @ W^T for a 4-bit W (kernels/int4_layout.py: packed (N, K // 2) uint8, scale and
    offset (N, K // G) float16) -> (M, N) in x.dtype, the packed bytes read once."""
    return gemv_int4(x, packed, scale, offset)


@gemv_int4_op.register_fake
def _(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.shape[0], packed.shape[0]))


def compile_facts(arch: int = 90) -> list[dict]:
    """Build both kernels for a GPU target without a GPU, as `gemv_int4` launches them at CodeLlama's shapes (the
    plan's tile; split-K where the plan splits): the row kernel for bf16, fp16 and float32 x, groups of 128, 64 and
    32, split-K, and once with Triton's nibble conversion (denormal off, the A/B arm); the several-row kernel for
    bf16, fp16 and float32 x, split and not. Facts about each binary, its main loop's SASS among them. Must run
    without TRITON_INTERPRET (see kernels/compile_check.py)."""
    import re

    from triton.backends.compiler import GPUTarget

    from kernels.compile_check import _compile, opcode_count, sass_facts
    target = GPUTarget("cuda", arch, 32)
    facts = []
    #         kernel, x dtype, G, (N, K), denormal
    builds = [("row", "bf16", 128, (12288, 4096), True), ("row", "bf16", 128, (8192, 22016), True),
              ("row", "fp16", 128, (12288, 4096), True), ("row", "fp32", 128, (12288, 4096), True),
              ("row", "bf16", 64, (1536, 576), True), ("row", "bf16", 32, (4096, 4096), True),
              ("row", "bf16", 128, (12288, 4096), False),
              ("rows", "bf16", 32, (44032, 8192), True), ("rows", "bf16", 128, (4096, 4096), True),
              ("rows", "fp16", 128, (4096, 4096), True), ("rows", "fp32", 128, (4096, 4096), True)]
    for kernel, dtype, G, (N, K), denormal in builds:
        chosen = plan(1 if kernel == "row" else 8, N, K, G)
        pointers = dict(X=f"*{dtype}", SCALE="*fp16", OFFSET="*fp16", Y=f"*{dtype}", PARTIALS="*fp32",
                        COUNTERS="*i32")
        if kernel == "row":
            binary = _compile(_gemv_int4_row_kernel, dict(pointers, WORDS="*i32"),
                              dict(G=G, BLOCK_N=chosen.block_n, BLOCK_K=chosen.block_k, SPLIT=chosen.split_k > 1,
                                   DENORMAL=denormal),
                              target, chosen.num_warps, chosen.num_stages, floats=(), not_divisible=("num_splits",))
        else:
            binary = _compile(_gemv_int4_rows_kernel, dict(pointers, WORDS="*i32"),
                              dict(G=G, BLOCK_N=chosen.block_n, M_PAD=M_PAD, SPLIT=chosen.split_k > 1, UPCAST=False,
                                   IEEE_DOT=dtype == "fp32", PRMT=True, BLOCK_K=chosen.block_k),
                              target, chosen.num_warps, chosen.num_stages, floats=(),
                              not_divisible=("M", "num_splits"))
        sass = sass_facts(binary.asm["cubin"], with_opcodes=True)
        loop = sass.get("loop_opcodes", {})
        ptx = binary.asm["ptx"]
        per_thread = chosen.block_n * chosen.block_k // 2 / (32 * chosen.num_warps)    # W bytes a thread a step
        facts.append({"kernel": kernel, "dtype": dtype, "G": G, "N": N, "K": K, "denormal": denormal,
                      "block_n": chosen.block_n, "block_k": chosen.block_k, "num_warps": chosen.num_warps,
                      "split_k": chosen.split_k, "cubin_bytes": len(binary.asm["cubin"]),
                      "registers": sass.get("registers"), "local_bytes": sass.get("local_bytes"),
                      "loop_instructions": sass.get("loop_instructions"),
                      "instructions_per_byte": round(sass["loop_instructions"][0] / per_thread, 2)
                      if sass.get("loop_instructions") else None,
                      "i2f": opcode_count(loop, ("I2F", "I2FP")), "loop_barriers": opcode_count(loop, "BAR"),
                      "shuffles": opcode_count(loop, "SHFL"), "loads_16_bytes": opcode_count(loop, "LDG.E.128"),
                      "tensor_core_dots": opcode_count(loop, ("HMMA", "HGMMA")),
                      "ftz": bool(re.search(r"\.ftz\.f32", ptx)),
                      "ticket": "atom.global.gpu.acq_rel.add" in ptx, "reset": "atom.global.gpu.relaxed.exch" in ptx,
                      "partials_from_l2": ptx.count("ld.global.cg")})
    return facts


# ---- GPU benchmark -------------------------------------------------------------------------------

# (N, K) of CodeLlama-7B's and -34B's batch-1 projections on one GPU, and each model's layers (a step's sum)
SHAPES = {"7B wo": (4096, 4096), "7B wqkv": (12288, 4096), "7B w13": (22016, 4096), "7B w2": (4096, 11008),
          "34B wqkv": (10240, 8192), "34B wo": (8192, 8192), "34B w13": (44032, 8192), "34B w2": (8192, 22016)}
LAYERS = {"7B": 32, "34B": 48}
# the one-row kernel's other launches timed beside the plan's: (block_n, block_k, num_warps, num_stages, split_k;
# None: the plan's split for that tile), and Triton's nibble conversion (the A/B arm of the denormal one)
# (sm_90 SASS, bf16 x, Triton 3.6, instructions a W byte / registers: BLOCK_N 4 7.9 / 56, 8 6.9 / 64, 16 6.1 / 168,
# 32 5.9 / 255; 2 or 8 warps as 4)
ROW_SWEEP = [(4, 4096, 4, 3, None), (16, 4096, 4, 3, None), (16, 2048, 2, 3, None), (8, 2048, 2, 3, None),
             (8, 8192, 8, 3, None), (8, 4096, 4, 3, 1), (8, 4096, 4, 3, 4)]
ROWS = 8                   # the several-row kernel timed at a verification of 8 tokens
# its other launches timed beside the plan's (ROWS_BLOCK_N 64 x 256 columns, 4 warps, 3 stages): (block_n, block_k,
# num_warps, num_stages); ROWS_BLOCK_N's comment has what they measured on an H100
ROWS_SWEEP = [(128, 128, 4, 3), (64, 128, 4, 3), (64, 256, 4, 4), (128, 256, 8, 3), (128, 128, 8, 3), (32, 256, 4, 3)]


def _error(y: torch.Tensor, x: torch.Tensor, dequantized: torch.Tensor) -> float:
    """Largest |y - x @ W^T| over the sum of |terms| of its output, W dequantized in float32 (NaN: infinite)."""
    want = x.float() @ dequantized.T
    terms = x.float().abs() @ dequantized.abs().T
    err = ((y.float() - want).abs() / terms).max()
    return float("inf") if err.isnan() else err.item()


def measure(name: str, N: int, K: int, *, timer, device: str = "cuda", rotate: int = 0, replays: int = 20,
            sweep: bool = True) -> dict:
    """One shape: gemv_int4's every launch checked against float32 of the dequantized weight (`errors`; `wrong`:
    those not within 1e-2), then timed by `timer(run, replays)` (µs of one call of run(): kernels.bench's
    graph_replay_us on a GPU) over as many copies of each format's weight as fill `rotate` bytes, per copy: int4's
    launches at one row and the plan's at ROWS rows, int8's GEMV and few-row kernel, bf16's cuBLAS and GEMV."""
    import torch.nn.functional as F

    from kernels.few_rows_int8 import few_rows_int8
    from kernels.gemv import gemv, gemv_int8_op
    from kernels.int4_layout import Int4Weight, dequantize_int4, int4_bytes, quantize_int4
    from kernels.reference import quantize_int8
    torch.manual_seed(N + K)
    w = torch.randn(N, K, device=device, dtype=torch.bfloat16) * 0.02
    w4 = quantize_int4(w)
    dequantized = dequantize_int4(w4, torch.float32)
    x = torch.randn(1, K, device=device, dtype=torch.bfloat16)
    xm = torch.randn(ROWS, K, device=device, dtype=torch.bfloat16)
    launches = {"plan": {}} | ({} if not sweep else {
        f"n{c[0]} k{c[1]} w{c[2]} s{c[3]} split {c[4] or 'plan'}": dict(
            kernel="row", block_n=c[0], block_k=c[1], num_warps=c[2], num_stages=c[3], split_k=c[4])
        for c in ROW_SWEEP} | {"I2F nibbles": dict(denormal=False)})
    rows_launches = {"plan": {}} | ({} if not sweep else {
        f"n{c[0]} k{c[1]} w{c[2]} s{c[3]}": dict(kernel="rows", block_n=c[0], block_k=c[1], num_warps=c[2],
                                                 num_stages=c[3])
        for c in ROWS_SWEEP})
    # correctness first: every launch timed below, one row and several, against float32
    errors = {label: _error(gemv_int4(x, *w4, **kw), x, dequantized) for label, kw in launches.items()}
    errors |= {f"{ROWS} rows {label}": _error(gemv_int4(xm, *w4, **kw), xm, dequantized)
               for label, kw in rows_launches.items()}
    row = {"shape": name, "N": N, "K": K, "errors": errors, "wrong": [k for k, e in errors.items() if not e < 1e-2],
           "int4_plan": tuple(plan(1, N, K, K // w4.scale.shape[1])), "int4": {},
           "bytes_int4": int4_bytes(N, K) + 2 * (K + N), "bytes_int8": N * K + 4 * N + 2 * (K + N),
           "bytes_bf16": 2 * N * K + 2 * (K + N)}
    dequantized = None

    def per_copy(call, weights) -> float:
        return timer(lambda: [call(weight) for weight in weights], replays) / len(weights)
    w4s = [Int4Weight(*(t.clone() for t in w4)) for _ in range(max(1, -(-rotate // int4_bytes(N, K))))]
    for label, kw in launches.items():
        row["int4"][label] = per_copy(lambda q: gemv_int4(x, *q, **kw), w4s)
    row["int4_rows"] = {label: per_copy(lambda q: gemv_int4(xm, *q, **kw), w4s) for label, kw in rows_launches.items()}
    row["int4_rows_us"] = row["int4_rows"]["plan"]
    w4s = None                      # (freed before the next format's copies)
    w8, s8 = quantize_int8(w)
    w8s = [(w8.clone(), s8.clone()) for _ in range(max(1, -(-rotate // (N * K))))]
    row["int8_us"] = per_copy(lambda q: gemv_int8_op(x, *q), w8s)
    row["int8_rows_us"] = per_copy(lambda q: few_rows_int8(xm, *q), w8s)
    w8s = w8 = None
    ws = [w.clone() for _ in range(max(1, -(-rotate // (2 * N * K))))]
    row["cublas_us"] = per_copy(lambda v: F.linear(x, v), ws)
    row["bf16_gemv_us"] = per_copy(lambda v: gemv(x, v), ws)
    row["cublas_rows_us"] = per_copy(lambda v: F.linear(xm, v), ws)
    row["best"] = min(row["int4"], key=row["int4"].get)
    return row


def report(row: dict, sweep: bool) -> None:
    """One shape's lines: its check, then µs and TB/s of each format."""
    b4, b8, b16 = row["bytes_int4"], row["bytes_int8"], row["bytes_bf16"]
    check = (f"all {len(row['errors'])} launches within 1e-2 (largest {max(row['errors'].values()):.1e})"
             if not row["wrong"] else "WRONG " + ", ".join(f"{k} {row['errors'][k]:.1e}" for k in row["wrong"]))
    print(f"{row['shape']:9s} N={row['N']:6d} K={row['K']:6d} int4 check against float32: {check}", flush=True)
    us, best = row["int4"]["plan"], row["best"]
    print(f"{'':9s} int4 {us:7.1f} µs {b4 / us / 1e6:5.2f} TB/s (plan {row['int4_plan'][1:6]})  best {best}: "
          f"{row['int4'][best]:7.1f} µs {b4 / row['int4'][best] / 1e6:5.2f} TB/s"
          f"  | int8 {row['int8_us']:7.1f} µs {b8 / row['int8_us'] / 1e6:5.2f} TB/s"
          f"  | bf16 cuBLAS {row['cublas_us']:7.1f} µs {b16 / row['cublas_us'] / 1e6:5.2f} TB/s, GEMV "
          f"{row['bf16_gemv_us']:7.1f}  | {ROWS} rows: int4 {row['int4_rows_us']:7.1f}, int8 "
          f"{row['int8_rows_us']:7.1f}, cuBLAS {row['cublas_rows_us']:7.1f} µs", flush=True)
    if sweep:
        print(f"{'':9s} int4 launches (µs): " + ", ".join(f"{k} {v:.1f}" for k, v in row["int4"].items())
              + f"; at {ROWS} rows: " + ", ".join(f"{k} {v:.1f}" for k, v in row["int4_rows"].items()), flush=True)


def summary(rows: list[dict]) -> None:
    """The final table, and each model's projections summed over its layers (a decode step's weights)."""
    print(f"\n{'shape':9s} {'int4 µs':>8s} {'TB/s':>5s} {'int8 µs':>8s} {'TB/s':>5s} {'bf16 µs':>8s} "
          f"{'TB/s':>5s} {'int8/int4':>9s} {'bf16/int4':>9s} {f'int4 x{ROWS} µs':>12s}")
    for r in rows:
        i4, i8, b16 = r["int4"]["plan"], r["int8_us"], min(r["cublas_us"], r["bf16_gemv_us"])
        print(f"{r['shape']:9s} {i4:8.1f} {r['bytes_int4'] / i4 / 1e6:5.2f} {i8:8.1f} "
              f"{r['bytes_int8'] / i8 / 1e6:5.2f} {b16:8.1f} {r['bytes_bf16'] / b16 / 1e6:5.2f} "
              f"{i8 / i4:9.2f} {b16 / i4:9.2f} {r['int4_rows_us']:12.1f}")
    for model, layers in LAYERS.items():       # (lm_head left out)
        mine = [r for r in rows if r["shape"].startswith(model + " ")]
        if len(mine) == 4:
            int4, int8, bf16 = (layers * sum(get(r) for r in mine) / 1e3 for get in (
                lambda r: r["int4"]["plan"], lambda r: r["int8_us"], lambda r: r["cublas_us"]))
            print(f"{model} step's projections ({layers} layers x 4): int4 {int4:.2f} ms, int8 {int8:.2f} ms, "
                  f"bf16 cuBLAS {bf16:.2f} ms")


def main(argv=None) -> int:
    """GPU: check gemv_int4 against float32 of the dequantized weight at CodeLlama-7B's and -34B's projections,
    then time it as CUDA-graph replays (weights rotated past the L2) against int8 weights' GEMV and bf16's cuBLAS
    and GEMV at one row, and at ROWS rows against cuBLAS and int8's few-row kernel: µs, and TB/s of bytes read."""
    import argparse
    import json
    import time

    from kernels.bench import graph_replay_us, read_bandwidth
    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated shape names (see SHAPES), run in that order")
    parser.add_argument("--json", default="", help="write the rows to this file")
    parser.add_argument("--replays", type=int, default=20, help="graph replays a timing (default: 20)")
    parser.add_argument("--no-sweep", action="store_true", help="time the plan's launch only (not ROW_SWEEP's)")
    parser.add_argument("--budget-s", type=float, default=0.0, help="stop starting shapes after this long (0: none)")
    args = parser.parse_args(argv)
    wanted = [w.strip() for w in args.only.split(",") if w.strip()] or list(SHAPES)
    if unknown := [w for w in wanted if w not in SHAPES]:
        parser.error(f"--only: unknown shapes {unknown} (known: {', '.join(SHAPES)})")
    if not torch.cuda.is_available():
        parser.exit(2, "kernels.gemv_int4 needs a CUDA GPU: it times the GEMV there.\n")
    started = time.perf_counter()
    read_rate, _ = read_bandwidth()
    rotate = max(64 << 20, 2 * (getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) or 0))
    print(f"{torch.cuda.get_device_name()}: read rate {read_rate / 1e12:.2f} TB/s (kernels.bench.read_bandwidth); "
          f"weights rotated over {rotate >> 20} MiB; µs a call (graph replays), TB/s of bytes read", flush=True)
    rows = []
    for name in wanted:
        if args.budget_s and time.perf_counter() - started > args.budget_s:
            print(f"budget of {args.budget_s:.0f} s spent: {name} and later shapes not run", flush=True)
            break
        rows.append(measure(name, *SHAPES[name], timer=graph_replay_us, rotate=rotate, replays=args.replays,
                            sweep=not args.no_sweep))
        report(rows[-1], not args.no_sweep)
        torch.cuda.empty_cache()
    if rows:
        summary(rows)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"device": torch.cuda.get_device_name(), "read_rate": read_rate, "rows": rows}, f, indent=1)
    wrong = [f"{r['shape']} {label}" for r in rows for label in r["wrong"]]
    if wrong:
        print(f"WRONG RESULTS: {', '.join(wrong)}")
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())

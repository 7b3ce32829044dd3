"""Prefill attention over an 8-bit cache whose sink and window tokens are read exact: one Triton kernel.

A prompt's span of T tokens at positions start .. start + T - 1 attends, causally, the row's keys 0 .. i. For the
query at position i the keys split in two disjoint sets (kernels/exact_window.py's, for decoding):
    8-bit:  sink <= j <= i - window            (the cache: its bytes and scales, or a dequantized copy)
    exact:  j < sink, or i - window < j <= i   (the span's own k, v for j >= start, what the model computed; the
                                                row's exact slots, `ExactTokens`, for j < start)
`kernels.reference.prefill_attention_exact` is the same softmax in PyTorch: one masked SDPA over the three sets
side by side, which cannot take SDPA's flash or cuDNN causal kernels (on an H200 it cost an 8k prompt of
CodeLlama-7B 554 ms against 273 with a bf16 cache; bench/results/NOTES.md, Run 39). This kernel: 332.5 ms against
bf16's 267.7 at 8k, 1.64 against 1.41 s at 32k (Run 40, one H200; checked against float64 there, 10 of 10).

The kernel is FlashAttention-2's forward (Triton's fused-attention tutorial): one program per (block of BLOCK_M
queries, query head, row) keeps an online softmax over key blocks of BLOCK_N. A query block's keys fall in three
ranges, visited in order:
    sink   [0, sink)             one narrow tile (16 keys wide for models/kv_cache.py's sink of 16), read exact
    middle [sink, band_lo)       every key 8-bit for every query of the block: a plain flash tile, no mask
    band   [band_lo, last + 1)   mixed tiles: window keys exact, older ones 8-bit, later ones masked (causal)
A mixed tile scores both copies of its keys (two QK dots), picks per (query, key) which one counts, and adds both
PV dots with the probabilities split between them (the sink's tile goes through the same code). Only the
~(BLOCK_M + window) / BLOCK_N band tiles of each query block are mixed, so the cost is about one causal flash
forward plus a thin band.

Where an exact key of the prefix (j < start) comes from: the slot of `prior` that records position j; the kernel
finds it by comparing the tile's positions with the slots' (at most a few dozen), so it needs no layout of the
ring and no gather on the host. A position no slot records is read by neither set (as by the reference): a
repair prefill (`models.llama.Transformer.prefill`) runs so, without the window before its start.

Bytes or a copy (`reads_bytes`). The kernel takes the cache as stored, 8-bit bytes and scales, and can dequantize
each tile as it loads it (as `kernels.reference.dequantize` rounds: the same output, bit for bit, as from a
dequantized copy). Every program converts each tile it reads, so the conversions cost (query blocks x group)
passes over the cache, where a copy is one pass (PyTorch's several kernels: widen, scale, round, write, read back),
and the main loop takes the conversions' instructions (sm_90, the middle's loop at 7B's tiling: 373 instructions a
tile on a bf16 copy, 578 on e4m3 bytes, 745 with -34B's sequence-major V; by estimate 8 warps then issue about as
many cycles as the tile's dots take on the tensor cores, ~1,100). One H200, one layer (bench/results/h200-run42): CodeLlama-7B, an edit's
100 tokens (one query block, MHA: one reader a tile) 2.07 -> 1.04 ms at a 32k prefix, 0.57 -> 0.40 at 8k; whole
prompts from 0 (64-256 blocks) 1.88 -> 2.25 ms at 8k, 20.0 -> 28.2 at 32k; -34B's edit at 131k (group 8: eight
readers) 4.03 -> 7.26. So a call reads the bytes only where one program reads each tile (BYTE_READERS), else it
dequantizes the prefix to a copy first. (Until then `models.kv_cache.KVCache.write` handed every prefill the copy:
an edit of a 32k prompt's last 100 tokens took its first token in 116 ms against bf16's 45-52.)

Split keys (`prefill_splits`). A short span after a long prefix is few programs (7B's 100-token edit: one query
block x 32 heads, on 132 SMs), each through the whole prefix; its blocks' middle tiles are split over up to a wave
of programs and merged by their running maxima and sums (`_merge_splits`), as Flash-Decoding splits a decode step.
One layer on the H200 (Run 42): 7B edit at 32k 2.07 ms (the copy, unsplit) -> 1.10 (bytes) -> 0.50 (bytes, 4
splits); 8 tokens at 32k 2.06 -> 0.49; -34B's edit at 131k 4.07 -> 2.94 (the copy, 2 splits), at 32k 1.08 -> 0.91.
Not graph-captured (prefill never is): the launch reads `start` and the shapes on the host.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from kernels.devices import on_first_tensors_device
from kernels.split_kv import _head_dim_mask
from kernels.validation import (MAX_HEAD_DIM, MIN_HEAD_DIM, SCALED_DTYPES, ExactTokens, check_exact_tokens,
                                softmax_scale_of)

PREFILL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
NEVER = tl.constexpr(1 << 30)     # an age no (query, key) pair reaches
# The most programs that may read each KV head's tiles for a call to read an 8-bit cache's bytes (`reads_bytes`):
# each such program converts every tile it reads, where the copy is one pass (module docstring, "Bytes or a copy").
BYTE_READERS = 1
# The fewest key tiles of the prefix a split reads (`prefill_splits`): a split has a merge to pay for. 4 splits of
# 16 tiles lost at an 8k prefix (7B, 100 tokens: 0.40 ms unsplit, 0.43 split; Run 42) and won at 32k (1.10 -> 0.50).
MIN_SPLIT_TILES = 64
LOG2_E = 1.4426950408889634


class PrefillTiles(NamedTuple):
    """A launch's tiling: queries per program, keys per tile, warps, pipeline stages of the key loops' loads."""
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


# Candidates for a GPU sweep (bench/gpu/prefill_exact_check.py --sweep); the first is the default up to D = 128
# (`default_tiles`): 128 x 64, 8 warps, 3 stages, the fused-attention tutorial's Hopper choice at D = 128.
TILE_CHOICES = (PrefillTiles(128, 64, 8, 3), PrefillTiles(128, 64, 8, 2), PrefillTiles(128, 128, 8, 2),
                PrefillTiles(64, 64, 4, 3), PrefillTiles(128, 32, 8, 3), PrefillTiles(64, 32, 4, 2))


def default_tiles(D: int, dtype: torch.dtype) -> PrefillTiles:
    """The tiling a call takes unless told: 128 x 64 and 8 warps up to D = 128 (with 4 warps a mixed tile's two
    score tiles, its probabilities and the accumulator spill: 200+ STL in sm_90's SASS at D = 64, none with 8);
    64 x 32 for wider heads, whose tiles take twice the registers and shared memory; 32 x 32 for fp32, whose IEEE
    dots run on the CUDA cores (a fallback: models run 16-bit on GPUs)."""
    if dtype == torch.float32:
        return PrefillTiles(32, 32, 4, 2)
    if D > 128:
        return PrefillTiles(64, 32, 4, 2)
    return PrefillTiles(128, 64, 8, 3)


@triton.jit
def _load_rows(ptrs, rows, stride, mask, UPCAST: tl.constexpr):
    """Rows `rows` (BLOCK_N,) of a (rows, head dim) tensor whose columns are `ptrs` (1, BLOCK_D): (BLOCK_N, BLOCK_D),
    0 where `mask` (BLOCK_N, BLOCK_D) is false; widened to float32 in the interpreter (its 16-bit arithmetic is
    wrong)."""
    x = tl.load(ptrs + rows[:, None] * stride, mask=mask, other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _load_cache_rows(ptrs, scale_ptr, rows, stride, stride_s, mask, row_mask, SCALED: tl.constexpr,
                     DTYPE: tl.constexpr, UPCAST: tl.constexpr):
    """`_load_rows` of the cache: rows `rows` (BLOCK_N,) of K or V, (BLOCK_N, BLOCK_D) in DTYPE (the queries'). An
    8-bit cache (SCALED) is dequantized here, tile by tile, as `kernels.reference.dequantize` does the whole cache:
    the byte widened exactly, times its row's scale rounded to DTYPE, the product rounded to DTYPE (under the
    interpreter the float32 product, unrounded). `row_mask`
    (BLOCK_N,) masks the scales' loads (None: every row is real)."""
    if not SCALED:
        return _load_rows(ptrs, rows, stride, mask, UPCAST)
    x = _load_rows(ptrs, rows, stride, mask, False)                         # the bytes
    if row_mask is None:
        scale = tl.load(scale_ptr + rows * stride_s)                        # (BLOCK_N,) float32
    else:
        scale = tl.load(scale_ptr + rows * stride_s, mask=row_mask, other=0.0)
    if UPCAST:      # the interpreter: float32 (its conversions to bf16 truncate, a bias in every key)
        return x.to(tl.float32) * scale[:, None]
    return (x.to(tl.float32) * scale.to(DTYPE).to(tl.float32)[:, None]).to(DTYPE)


@triton.jit
def _dot(a, b, IEEE_DOT: tl.constexpr):
    """a @ b in float32; fp32 inputs in IEEE precision (not tf32), so fp32 callers get fp32 accuracy."""
    if IEEE_DOT:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _quantized_tile(q, m_i, l_i, acc, n0, k_ptrs, v_ptrs, ks_ptr, vs_ptr, stride_kn, stride_vn, stride_ks, stride_vs,
                    offs_n, tile_mask, qk_scale, SCALED: tl.constexpr, DTYPE: tl.constexpr, UPCAST: tl.constexpr,
                    IEEE_DOT: tl.constexpr):
    """Online softmax of q (BLOCK_M, BLOCK_D) over the 8-bit keys n0 .. n0 + BLOCK_N - 1, all read by every query
    (no mask); m_i, l_i (BLOCK_M,) running max and sum (base 2), acc (BLOCK_M, BLOCK_D)."""
    j = n0 + offs_n                                                         # (BLOCK_N,) key positions
    k = _load_cache_rows(k_ptrs, ks_ptr, j, stride_kn, stride_ks, tile_mask, None, SCALED, DTYPE, UPCAST)
    v = _load_cache_rows(v_ptrs, vs_ptr, j, stride_vn, stride_vs, tile_mask, None, SCALED, DTYPE, UPCAST)
    s = _dot(q, tl.trans(k), IEEE_DOT)                                      # (BLOCK_M, BLOCK_N) unscaled
    m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)                   # finite: every key counts
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s * qk_scale - m_new[:, None])              # one FFMA a score (the tutorial's), not a FMUL and a FADD
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE_DOT)
    return m_new, l_i, acc


@triton.jit
def _mixed_tile(q, m_i, l_i, acc, n0, end, i, start, sink, window,
                k_ptrs, v_ptrs, ks_ptr, vs_ptr, kn_ptrs, vn_ptrs, pk_ptrs, pv_ptrs, prior_pos, offs_p,
                stride_kn, stride_vn, stride_ks, stride_vs, stride_knn, stride_vnn, stride_pkn, stride_pvn,
                offs_n, mask_d, qk_scale, PRIOR: tl.constexpr, SCALED: tl.constexpr, DTYPE: tl.constexpr,
                UPCAST: tl.constexpr, IEEE_DOT: tl.constexpr):
    """Online softmax over keys n0 .. n0 + BLOCK_N - 1 where queries i (BLOCK_M,) (positions) read some keys exact
    and some 8-bit: each key's score and value from the copy its (query, key) pair reads; keys past the query, or
    from `end` on (past the block's last query, or the sink's end), not at all. PRIOR: the tile has keys before
    `start`, whose exact copies are the prior's (prior_pos (PRIOR_BLOCK,) its slots' positions, -1 for none; offs_p
    their indices); without it every exact copy is the span's."""
    j = n0 + offs_n                                                         # (BLOCK_N,) key positions
    real = j < end
    tile = real[:, None] & mask_d[None, :]
    kq = _load_cache_rows(k_ptrs, ks_ptr, j, stride_kn, stride_ks, tile, real, SCALED, DTYPE, UPCAST)  # (BLOCK_N,
    vq = _load_cache_rows(v_ptrs, vs_ptr, j, stride_vn, stride_vs, tile, real, SCALED, DTYPE, UPCAST)  # BLOCK_D)
    if PRIOR:   # the span's own copies from j >= start; before it, the prior slot recording j, if one does
        in_span = j >= start
        span_tile = tile & in_span[:, None]
        match = prior_pos[None, :] == j[:, None]                            # (BLOCK_N, PRIOR_BLOCK)
        held = (tl.max(match.to(tl.int32), axis=1) > 0) & (j < start)       # (BLOCK_N,)
        slot = tl.sum(tl.where(match, offs_p[None, :], 0), axis=1)          # (BLOCK_N,) (one slot a position)
        prior_tile = tile & held[:, None]
        ke = tl.where(in_span[:, None], _load_rows(kn_ptrs, j - start, stride_knn, span_tile, UPCAST),
                      _load_rows(pk_ptrs, slot, stride_pkn, prior_tile, UPCAST))
        ve = tl.where(in_span[:, None], _load_rows(vn_ptrs, j - start, stride_vnn, span_tile, UPCAST),
                      _load_rows(pv_ptrs, slot, stride_pvn, prior_tile, UPCAST))
        has_exact = (in_span | held) & real    # (BLOCK_N,): not past `end` (a sink narrower than its tile)
    else:
        ke = _load_rows(kn_ptrs, j - start, stride_knn, tile, UPCAST)
        ve = _load_rows(vn_ptrs, j - start, stride_vnn, tile, UPCAST)
        has_exact = real                                                    # (every key past start has one)
    s_rough = _dot(q, tl.trans(kq), IEEE_DOT)                               # (BLOCK_M, BLOCK_N) unscaled
    s_exact = _dot(q, tl.trans(ke), IEEE_DOT)
    # Which copy each (query, key) pair reads, from how far key j lies behind query i (one compare each a pair):
    # exact for 0 <= age < the key's limit (window; any age for a sink key; none without a copy), unsigned so that
    # a key after its query (age < 0) is never read; 8-bit from age >= window on (never for a sink key, or past end).
    age = i[:, None] - j[None, :]                                           # (BLOCK_M, BLOCK_N)
    sunk = j < sink
    exact_limit = tl.where(has_exact, tl.where(sunk, NEVER, window), 0)    # (BLOCK_N,)
    rough_from = tl.where(real & ~sunk, window, NEVER)
    exact = age.to(tl.uint32) < exact_limit[None, :].to(tl.uint32)
    rough = age >= rough_from[None, :]                                      # (disjoint from `exact`)
    s = tl.where(exact, s_exact, tl.where(rough, s_rough, float("-inf")))
    m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)    # a query without keys yet: p = 0, alpha finite
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s * qk_scale - m_use[:, None])              # 0 where neither set reads the key
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + _dot(tl.where(exact, p, 0.0).to(ve.dtype), ve, IEEE_DOT) \
        + _dot(tl.where(rough, p, 0.0).to(vq.dtype), vq, IEEE_DOT)
    return m_new, l_i, acc


@triton.jit
def _mixed_tiles(q, m_i, l_i, acc, lo, end, i, start, sink, window,
                 k_ptrs, v_ptrs, ks_ptr, vs_ptr, kn_ptrs, vn_ptrs, pk_ptrs, pv_ptrs, prior_pos, offs_p,
                 stride_kn, stride_vn, stride_ks, stride_vs, stride_knn, stride_vnn, stride_pkn, stride_pvn,
                 offs_n, mask_d, qk_scale, BLOCK_N: tl.constexpr, SCALED: tl.constexpr, DTYPE: tl.constexpr,
                 UPCAST: tl.constexpr, IEEE_DOT: tl.constexpr):
    """`_mixed_tile` over the keys lo .. end - 1, BLOCK_N (offs_n's length) at a time; only tiles with keys before
    `start` look at the prior's slots.
    Not software-pipelined (num_stages=1): six tiles of loads a step, whose stages would take more shared memory than
    an SM has (288 KB at 128 x 64, D = 128, 3 stages); they are a few steps a program."""
    for n0 in tl.range(lo, end, BLOCK_N, num_stages=1):
        if n0 < start:
            m_i, l_i, acc = _mixed_tile(q, m_i, l_i, acc, n0, end, i, start, sink, window,
                                        k_ptrs, v_ptrs, ks_ptr, vs_ptr, kn_ptrs, vn_ptrs, pk_ptrs, pv_ptrs,
                                        prior_pos, offs_p, stride_kn, stride_vn, stride_ks, stride_vs,
                                        stride_knn, stride_vnn, stride_pkn, stride_pvn,
                                        offs_n, mask_d, qk_scale, True, SCALED, DTYPE, UPCAST, IEEE_DOT)
        else:
            m_i, l_i, acc = _mixed_tile(q, m_i, l_i, acc, n0, end, i, start, sink, window,
                                        k_ptrs, v_ptrs, ks_ptr, vs_ptr, kn_ptrs, vn_ptrs, pk_ptrs, pv_ptrs,
                                        prior_pos, offs_p, stride_kn, stride_vn, stride_ks, stride_vs,
                                        stride_knn, stride_vnn, stride_pkn, stride_pvn,
                                        offs_n, mask_d, qk_scale, False, SCALED, DTYPE, UPCAST, IEEE_DOT)
    return m_i, l_i, acc


@triton.jit
def _prefill_exact_kernel(
    Q, K, V, K_SCALE, V_SCALE, K_NEW, V_NEW, PRIOR_K, PRIOR_V, PRIOR_POS, OUT, PART_ACC, PART_M, PART_L,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ksb, stride_ksh, stride_kss,
    stride_vsb, stride_vsh, stride_vss,
    stride_knb, stride_knh, stride_knn,
    stride_vnb, stride_vnh, stride_vnn,
    stride_pkb, stride_pkh, stride_pkn,
    stride_pvb, stride_pvh, stride_pvn,
    stride_pb,
    Hq, T, start, N, D, qk_scale, sink, window, splits,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    SINK_BLOCK: tl.constexpr, PRIOR_BLOCK: tl.constexpr, EVEN_D: tl.constexpr, SCALED: tl.constexpr,
    UPCAST: tl.constexpr, IEEE_DOT: tl.constexpr, SPLIT: tl.constexpr,
):
    """Q (B, Hq, T, D); K, V (B, Hkv, >= start + T, D) the cache, any strides: 8-bit with K_SCALE, V_SCALE
    (B, Hkv, >= start + T) float32 where SCALED, else in Q's dtype (the scale pointers unused); K_NEW, V_NEW
    (B, Hkv, T, D) the span's exact keys and values; PRIOR_K, PRIOR_V (B, Hkv, N, D) and PRIOR_POS int64 (B, N) the
    row's exact slots; OUT (B, Hq, T, D) contiguous. Scores are scaled by qk_scale = softmax scale x log2(e) (base 2).
    Grid: (query blocks x splits, Hq, B), the query blocks with the most keys first (the causal triangle's long rows
    start early, so the last wave is short). SPLIT (splits > 1): split s of a block reads the s-th part of its middle
    tiles (the first split also the sink's, the last the band), and writes its unnormalized acc (B, Hq, splits, T, D)
    to PART_ACC, its running max and sum (B, Hq, splits, T) to PART_M, PART_L, for `_merge_splits`."""
    m_block = tl.num_programs(0) // splits - 1 - tl.program_id(0) // splits
    split = tl.program_id(0) % splits
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)       # int64: offsets into long caches overflow 32 bits
    kv = (h // GROUP).to(tl.int64)
    offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)                      # (BLOCK_M,) offsets in the span
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_p = tl.arange(0, PRIOR_BLOCK)
    mask_d = _head_dim_mask(offs_d, D, EVEN_D, BLOCK_D)
    i = start + offs_m                                                      # (BLOCK_M,) query positions
    first = start + m_block * BLOCK_M                                       # the block's first and last query
    last = tl.minimum(first + BLOCK_M, start + T) - 1

    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :],
                mask=(offs_m < T)[:, None] & mask_d[None, :], other=0.0)   # (BLOCK_M, BLOCK_D)
    if UPCAST:
        q = q.to(tl.float32)
    DTYPE: tl.constexpr = OUT.dtype.element_ty                             # what the dots take
    k_ptrs = K + b * stride_kb + kv * stride_kh + offs_d[None, :] * stride_kd   # (1, BLOCK_D) row 0's columns
    v_ptrs = V + b * stride_vb + kv * stride_vh + offs_d[None, :] * stride_vd   # (a sequence-major V: stride_vn 1)
    ks_ptr = K_SCALE + b * stride_ksb + kv * stride_ksh                     # row 0's scale
    vs_ptr = V_SCALE + b * stride_vsb + kv * stride_vsh
    kn_ptrs = K_NEW + b * stride_knb + kv * stride_knh + offs_d[None, :]
    vn_ptrs = V_NEW + b * stride_vnb + kv * stride_vnh + offs_d[None, :]
    pk_ptrs = PRIOR_K + b * stride_pkb + kv * stride_pkh + offs_d[None, :]
    pv_ptrs = PRIOR_V + b * stride_pvb + kv * stride_pvh + offs_d[None, :]
    prior_pos = tl.load(PRIOR_POS + b * stride_pb + offs_p, mask=offs_p < N, other=-1).to(tl.int32)  # (PRIOR_BLOCK,)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # The sink's keys (at most SINK_BLOCK) are one narrow tile of their own; the other tiles are laid from `sink` on,
    # and the band starts at the tile of the block's first query's oldest window key: the middle lies between.
    sink_end = tl.where(split == 0, tl.minimum(sink, last + 1), 0)
    m_i, l_i, acc = _mixed_tiles(q, m_i, l_i, acc, 0, sink_end, i, start, sink, window,                   # sink
                                 k_ptrs, v_ptrs, ks_ptr, vs_ptr, kn_ptrs, vn_ptrs, pk_ptrs, pv_ptrs, prior_pos,
                                 offs_p, stride_kn, stride_vn, stride_kss, stride_vss, stride_knn, stride_vnn,
                                 stride_pkn, stride_pvn, tl.arange(0, SINK_BLOCK), mask_d, qk_scale, SINK_BLOCK,
                                 SCALED, DTYPE, UPCAST, IEEE_DOT)
    band_lo = sink + tl.maximum(first - window + 1 - sink, 0) // BLOCK_N * BLOCK_N
    per_split = tl.cdiv((band_lo - sink) // BLOCK_N, splits) * BLOCK_N     # this block's middle keys a split
    middle_lo = tl.minimum(sink + split * per_split, band_lo)
    middle_hi = tl.minimum(middle_lo + per_split, band_lo)
    whole = tl.full([BLOCK_N], 1, tl.int1)[:, None] & mask_d[None, :]      # (a constant where EVEN_D)
    for n0 in tl.range(middle_lo, middle_hi, BLOCK_N):                     # middle: the hot loop
        m_i, l_i, acc = _quantized_tile(q, m_i, l_i, acc, n0, k_ptrs, v_ptrs, ks_ptr, vs_ptr, stride_kn, stride_vn,
                                        stride_kss, stride_vss, offs_n, whole, qk_scale, SCALED, DTYPE, UPCAST,
                                        IEEE_DOT)
    band_end = tl.where(split == splits - 1, last + 1, band_lo)
    m_i, l_i, acc = _mixed_tiles(q, m_i, l_i, acc, band_lo, band_end, i, start, sink, window,         # band
                                 k_ptrs, v_ptrs, ks_ptr, vs_ptr, kn_ptrs, vn_ptrs, pk_ptrs, pv_ptrs, prior_pos,
                                 offs_p, stride_kn, stride_vn, stride_kss, stride_vss, stride_knn, stride_vnn,
                                 stride_pkn, stride_pvn, offs_n, mask_d, qk_scale, BLOCK_N, SCALED, DTYPE, UPCAST,
                                 IEEE_DOT)

    rows_mask = (offs_m < T)[:, None] & mask_d[None, :]
    if SPLIT:       # a split without keys leaves m = -inf, l = 0, acc = 0: its weight in the merge is 0
        part_rows = ((b * Hq + h) * splits + split) * T + offs_m            # (BLOCK_M,) rows of (B, Hq, splits, T)
        tl.store(PART_ACC + part_rows[:, None] * D + offs_d[None, :], acc, mask=rows_mask)
        tl.store(PART_M + part_rows, m_i, mask=offs_m < T)
        tl.store(PART_L + part_rows, l_i, mask=offs_m < T)
    else:
        # Every query reads at least its own key (exact, from the span): l_i > 0. The guard keeps padding rows finite.
        out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
        out_rows = (b * Hq + h) * T + offs_m                                # (BLOCK_M,) rows of OUT (B, Hq, T)
        tl.store(OUT + out_rows[:, None] * D + offs_d[None, :], out.to(OUT.dtype.element_ty), mask=rows_mask)


def check_prefill_inputs(q, k, v, prior, k_new, v_new, start, k_scale=None, v_scale=None
                         ) -> tuple[int, int, int, int, int]:
    """Validate a `prefill_attention_exact` call (shapes in its docstring); returns (B, Hq, Hkv, T, D)."""
    scaled = isinstance(k, torch.Tensor) and k.dtype in SCALED_DTYPES
    for name, t in (("q", q), ("k", k), ("v", v), ("k_new", k_new), ("v_new", v_new)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-dimensional tensor, got {_described(t)}")
        cache = name in ("k", "v")
        if t.dtype != (k.dtype if cache and scaled else q.dtype):
            raise ValueError(f"{name} has dtype {t.dtype}, q {q.dtype}: all must share one (an 8-bit cache's k and v "
                             f"share theirs)")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device}, q on {q.device}")
        if t.stride(-1) != 1 and not cache:     # (the cache's rows and columns are read by their strides)
            raise ValueError(f"{name} must have a contiguous last dimension (stride 1), got strides {t.stride()}")
    if scaled:
        for name, scale in (("k_scale", k_scale), ("v_scale", v_scale)):
            if not isinstance(scale, torch.Tensor) or scale.dtype != torch.float32 or scale.shape != k.shape[:3] \
                    or scale.device != q.device:
                raise ValueError(f"an 8-bit cache needs {name}: float32 (B, Hkv, S) = {tuple(k.shape[:3])} on "
                                 f"{q.device}, got {_described(scale)}")
    elif k_scale is not None or v_scale is not None:
        raise ValueError(f"k_scale and v_scale go with an 8-bit cache (float8_e4m3fn, int8); k has dtype {k.dtype}")
    if q.dtype not in PREFILL_DTYPES:
        raise ValueError(f"q has dtype {q.dtype}; supported: float16, bfloat16, float32")
    B, Hq, T, D = q.shape
    Hkv = k.shape[1]
    if not MIN_HEAD_DIM <= D <= MAX_HEAD_DIM:
        raise ValueError(f"head dim {D} is outside {MIN_HEAD_DIM}..{MAX_HEAD_DIM}")
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"query heads ({Hq}) must be a multiple of KV heads ({Hkv})")
    if not isinstance(start, int) or isinstance(start, bool) or start < 0:
        raise ValueError(f"start must be an int >= 0, got {start!r}")
    if k.shape != v.shape or k.shape[0] != B or k.shape[3] != D or k.shape[2] < start + T:
        raise ValueError(f"k, v must have shape (B, Hkv, S, D) with S >= start + T = {start + T}, got "
                         f"{tuple(k.shape)} and {tuple(v.shape)}")
    if k_new.shape != (B, Hkv, T, D) or v_new.shape != k_new.shape:
        raise ValueError(f"k_new, v_new must have shape (B, Hkv, T, D) = {(B, Hkv, T, D)}, got "
                         f"{tuple(k_new.shape)} and {tuple(v_new.shape)}")
    check_exact_tokens(prior, B, Hkv, D, q.device, scaled=True)
    if prior.k.dtype != q.dtype:
        raise ValueError(f"prior k, v have dtype {prior.k.dtype}, q {q.dtype}: all must share one")
    return B, Hq, Hkv, T, D


def _described(t) -> str:
    return f"{t.dtype} {tuple(t.shape)} on {t.device}" if isinstance(t, torch.Tensor) else type(t).__name__


@on_first_tensors_device
def prefill_attention_exact(q, k, v, prior: ExactTokens, k_new, v_new, start: int, *, k_scale=None, v_scale=None,
                            softmax_scale=None, tiles: PrefillTiles | None = None, read_bytes: bool | None = None,
                            num_splits: int | None = None, compile_only: bool = False):
    """Causal attention of a span's T queries over an 8-bit cache with exact sink and window tokens (module
    docstring; `kernels.reference.prefill_attention_exact` is the same in PyTorch).

    q (B, Hq, T, D), the queries at positions start .. start + T - 1; k, v (B, Hkv, S, D), S >= start + T, the cache
    (the span's keys included) as stored, any strides (a sequence-major V too): 8-bit (float8_e4m3fn or int8) with
    k_scale, v_scale (B, Hkv, S) float32, read as `kernels.reference.dequantize` reads it, or already in q's dtype
    without scales; prior (`ExactTokens`; k, v (B, Hkv, N, D), pos int64
    (B, N), -1 for an empty slot) the row's exact copies of positions before `start` (slots at or past it are
    ignored; a position is held by one slot at most, as the cache's ring keeps them); k_new, v_new (B, Hkv, T, D)
    the span's exact keys and values. All but an 8-bit k, v in one of fp16, bf16, fp32, on one device, last dimension
    contiguous (k, v: any strides);
    D in 16..256; Hq a multiple of Hkv; softmax_scale (default D ** -0.5) positive. `tiles` (`PrefillTiles`)
    overrides `default_tiles`. An 8-bit cache is read as bytes or first dequantized to a copy as `reads_bytes`
    plans (`read_bytes` overrides it; the same output either way, bit for bit on a GPU). A span of few query blocks
    after a long prefix splits each block's keys over `prefill_splits` programs (`num_splits` overrides it), merged
    after. Returns out (B, Hq, T, D) in q's dtype. `compile_only` builds the kernel without
    launching it and returns its binary. CUDA tensors, or CPU ones under TRITON_INTERPRET=1 (slow)."""
    B, Hq, Hkv, T, D = check_prefill_inputs(q, k, v, prior, k_new, v_new, start, k_scale, v_scale)
    from kernels.interface import check_launchable       # (lazy: interface imports every decode kernel)
    check_launchable(q.device)
    scale = softmax_scale_of(softmax_scale, D)
    if scale <= 0:      # (the key loop takes each tile's largest score before scaling it)
        raise ValueError(f"softmax_scale must be positive here, got {softmax_scale!r}")
    out = torch.empty((B, Hq, T, D), dtype=q.dtype, device=q.device)        # (B, Hq, T, D)
    if T == 0:
        return out
    tiles = tiles or default_tiles(D, q.dtype)
    if k_scale is not None and not (reads_bytes(T, Hq // Hkv, tiles) if read_bytes is None else read_bytes):
        from kernels.reference import dequantize
        k, v = dequantize(k, k_scale, q.dtype), dequantize(v, v_scale, q.dtype)         # (B, Hkv, S, D) copies
        k_scale = v_scale = None
    N = prior.pos.shape[1]
    if num_splits is None:
        num_splits = prefill_splits(T, Hq, B, start, tiles, q.device)
    if not isinstance(num_splits, int) or isinstance(num_splits, bool) or num_splits < 1:
        raise ValueError(f"num_splits must be an int >= 1, got {num_splits!r}")
    grid = (triton.cdiv(T, tiles.block_m) * num_splits, Hq, B)
    scaled = k_scale is not None
    k_scale, v_scale = (k_scale, v_scale) if scaled else (k, v)         # (unread pointers, any strides)
    parts = [out] * 3                                                   # (unread unless split)
    if num_splits > 1:
        parts = [torch.empty((B, Hq, num_splits, T) + (D,) * (n == 0), dtype=torch.float32, device=q.device)
                 for n in range(3)]                                     # acc (B, Hq, s, T, D); m, l (B, Hq, s, T)
    args = (q, k, v, k_scale, v_scale, k_new, v_new, prior.k, prior.v, prior.pos, out, *parts,
            *q.stride()[:3], *k.stride(), *v.stride(), *k_scale.stride()[:3], *v_scale.stride()[:3],
            *k_new.stride()[:3], *v_new.stride()[:3],
            *prior.k.stride()[:3], *prior.v.stride()[:3], prior.pos.stride(0),
            Hq, T, start, N, D, scale * LOG2_E, prior.sink, prior.window, num_splits)
    constexprs = prefill_constexprs(tiles, group=Hq // Hkv, D=D, N=N, sink=prior.sink, scaled=scaled,
                                    upcast=not q.is_cuda, ieee_dot=q.dtype == torch.float32, split=num_splits > 1)
    if compile_only:
        return _prefill_exact_kernel.warmup(*args, grid=grid, **constexprs, num_warps=tiles.num_warps,
                                            num_stages=tiles.num_stages)
    _prefill_exact_kernel[grid](*args, **constexprs, num_warps=tiles.num_warps, num_stages=tiles.num_stages)
    return _merge_splits(*parts, out) if num_splits > 1 else out


def _merge_splits(acc: torch.Tensor, m: torch.Tensor, l: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The splits' partial softmaxes, acc (B, Hq, s, T, D) unnormalized with running max m and sum l (B, Hq, s, T)
    (base 2), into out (B, Hq, T, D): each weighed by 2^(m - the largest m). Every query's own key is in the last
    split, so the largest is finite; a split without keys (m = -inf) weighs 0. A few PyTorch ops on small tensors
    (T x Hq x splits rows), beside a prefill's matmuls."""
    weight = torch.exp2(m - m.amax(dim=2, keepdim=True))                                # (B, Hq, s, T)
    merged = (weight[..., None] * acc).sum(dim=2) / (weight * l).sum(dim=2)[..., None]  # (B, Hq, T, D)
    return out.copy_(merged)


def prefill_splits(T: int, Hq: int, B: int, start: int, tiles: PrefillTiles, device: torch.device) -> int:
    """How many programs share each query block's keys: a span of few blocks after a long prefix (an edit, a
    keystroke) launches fewer programs than a GPU has SMs (CodeLlama-7B, a 100-token span: 32 programs, each through
    the whole prefix, on an H200's 132), so its keys are split until the programs fill one wave (one program an SM:
    the kernel takes 255 registers a thread), each split at least MIN_SPLIT_TILES tiles of the prefix. 1 off a GPU."""
    if device.type != "cuda":
        return 1
    from kernels.interface import device_facts           # (lazy, as check_launchable)
    programs = triton.cdiv(T, tiles.block_m) * Hq * B
    _, sms = device_facts(device.index if device.index is not None else torch.cuda.current_device())
    return max(1, min(sms // programs, start // (tiles.block_n * MIN_SPLIT_TILES)))


def reads_bytes(T: int, group: int, tiles: PrefillTiles) -> bool:
    """Whether a span of T queries reads an 8-bit cache's bytes (each tile dequantized as it loads) rather than a
    dequantized copy of it: where at most BYTE_READERS programs read each KV head's tiles (module docstring)."""
    return triton.cdiv(T, tiles.block_m) * group <= BYTE_READERS


def prefill_constexprs(tiles: PrefillTiles, *, group: int, D: int, N: int, sink: int, scaled: bool, upcast: bool,
                       ieee_dot: bool, split: bool = False) -> dict:
    """The kernel's compile-time arguments (a launch and kernels.compile_check share them)."""
    block_d = max(16, triton.next_power_of_2(D))
    return dict(GROUP=group, BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_D=block_d,
                SINK_BLOCK=max(16, triton.next_power_of_2(max(sink, 1))),
                PRIOR_BLOCK=max(16, triton.next_power_of_2(max(N, 1))), EVEN_D=D == block_d, SCALED=scaled,
                UPCAST=upcast,
                IEEE_DOT=ieee_dot, SPLIT=split)

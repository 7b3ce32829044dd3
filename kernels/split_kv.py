"""Triton kernels of Flash-Decoding: split the KV cache along the sequence, then combine.

Stage 1, `_split_kv_kernel`: one program per (split, batch x KV head). It streams its range of
keys/values once and serves every query head of its group with two `tl.dot`s (GQA packing: the
group's heads are the rows of the q tile, padded to the tensor cores' minimum of 16), keeping an
online softmax. It writes a partial output normalised by its own softmax sum, plus that sum's
log-sum-exp. With a single split it writes the final output directly and the combine is skipped.

Stage 2, `_combine_kernel`: one program per (batch, query head) rescales the partials by
exp2(lse_i - lse) and sums them. On a GPU it is launched as a programmatic dependent launch: its
programs start while stage 1 is still running and wait for its results at `gdc_wait`, which hides
most of a launch (measured on an H100, bench/results/NOTES.md). A combine fused into stage 1,
the last split of each group reducing it, measured 1.2-2.3x slower: one program then reads the
whole group's partials alone.

How a sequence is split is decided inside the kernel from its current length: the grid depends
only on shapes, so a CUDA graph captured once stays valid while the cache fills, and the splits
share out whatever length the sequence has now. Splits past the end of a short sequence exit at
once; the combine counts the same splits and never reads theirs.

Internally scores are in base 2 (exp2 is one instruction); the lse handed out is natural log.
"""

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait


@triton.jit
def _blocks_per_split(seqlen, NUM_SPLITS: tl.constexpr, BLOCK_N: tl.constexpr):
    """A sequence's BLOCK_N-key blocks, and how many of them each split takes."""
    n_blocks = tl.cdiv(seqlen, BLOCK_N)
    return n_blocks, tl.maximum(tl.cdiv(n_blocks, NUM_SPLITS), 1)


@triton.jit
def _split_range(seqlen, split, NUM_SPLITS: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key range [start, end) of `split` for a sequence of `seqlen` keys, in whole blocks."""
    n_blocks, blocks_per_split = _blocks_per_split(seqlen, NUM_SPLITS, BLOCK_N)
    start = split * blocks_per_split * BLOCK_N
    end = tl.minimum(start + blocks_per_split * BLOCK_N, seqlen)
    return start, end


@triton.jit
def _valid_splits(seqlen, NUM_SPLITS: tl.constexpr, BLOCK_N: tl.constexpr):
    """How many leading splits of a `seqlen`-long sequence have keys (those are never empty)."""
    n_blocks, blocks_per_split = _blocks_per_split(seqlen, NUM_SPLITS, BLOCK_N)
    return tl.cdiv(n_blocks, blocks_per_split)


@triton.jit
def _combine_row(PART_OUT, PART_LSE, OUT, LSE, row, n_valid, D,
                 NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """Combine the first n_valid partials of one (batch, query head) row into OUT and LSE."""
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    mask_s = offs_s < n_valid
    lse = tl.load(PART_LSE + row * NUM_SPLITS + offs_s, mask=mask_s, other=float("-inf"))  # (BLOCK_S,)
    parts = tl.load(PART_OUT + (row * NUM_SPLITS + offs_s[:, None]) * D + offs_d[None, :],
                    mask=mask_s[:, None] & (offs_d[None, :] < D), other=0.0)    # (BLOCK_S, BLOCK_D)
    m = tl.max(lse, axis=0)
    m = tl.where(m == float("-inf"), 0.0, m)  # all splits empty: keep exp2 finite, weights 0
    w = tl.exp2(lse - m)
    denom = tl.sum(w, axis=0)
    out = tl.sum(parts * w[:, None], axis=0) / tl.maximum(denom, 1e-30)
    tl.store(OUT + row * D + offs_d, out.to(OUT.dtype.element_ty), mask=offs_d < D)
    tl.store(LSE + row, (m + tl.log2(denom)) * 0.6931471805599453)


@triton.jit
def _attend_range(q, k_ptrs, v_ptrs, stride_kn, stride_vn, start, end, offs_n, mask_d,
                  m_i, l_i, acc, qk_scale,
                  BLOCK_N: tl.constexpr, UPCAST: tl.constexpr, IEEE_DOT: tl.constexpr):
    """Online softmax of the q rows over keys [start, end), one BLOCK_N tile at a time.

    q: (BLOCK_H, BLOCK_D); m_i, l_i: (BLOCK_H,) running max and sum (base 2); acc: (BLOCK_H, BLOCK_D).
    """
    for block_start in range(start, end, BLOCK_N):
        cols = block_start + offs_n                                           # (BLOCK_N,)
        mask_n = cols < end
        mask_kv = mask_n[:, None] & mask_d[None, :]
        k = tl.load(k_ptrs + cols[:, None] * stride_kn, mask=mask_kv, other=0.0)  # (BLOCK_N, BLOCK_D)
        v = tl.load(v_ptrs + cols[:, None] * stride_vn, mask=mask_kv, other=0.0)  # (BLOCK_N, BLOCK_D)
        if UPCAST:  # the CPU interpreter computes 16-bit floats wrongly: widen right after loading
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        if IEEE_DOT:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))                                        # (BLOCK_H, BLOCK_N) fp32
        s = tl.where(mask_n[None, :], s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if IEEE_DOT:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    return m_i, l_i, acc


@triton.jit
def _split_kv_kernel(
    Q, K, V, SEQLENS, OUT, LSE, PART_OUT, PART_LSE,
    stride_qb, stride_qh,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    S, HKV, D, qk_scale,
    GROUP: tl.constexpr, HAS_SEQLENS: tl.constexpr, NUM_SPLITS: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, IEEE_DOT: tl.constexpr, USE_PDL: tl.constexpr,
):
    if USE_PDL:
        gdc_launch_dependents()  # let the combine's programs get resident; they wait for our writes
    split = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // HKV).to(tl.int64)  # int64: offsets into large caches overflow 32 bits
    h = (bh % HKV).to(tl.int64)

    if HAS_SEQLENS:
        seqlen = tl.load(SEQLENS + b)
    else:
        seqlen = S
    start, end = _split_range(seqlen, split, NUM_SPLITS, BLOCK_N)
    if NUM_SPLITS > 1:
        if start >= end:
            return  # past the end of this sequence; the combine does not read this split

    offs_h = tl.arange(0, BLOCK_H)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_h = offs_h < GROUP
    mask_d = offs_d < D
    heads = h * GROUP + offs_h                                                # (BLOCK_H,) query heads

    q_ptrs = Q + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=mask_h[:, None] & mask_d[None, :], other=0.0)   # (BLOCK_H, BLOCK_D)
    if UPCAST:
        q = q.to(tl.float32)
    k_ptrs = K + b * stride_kb + h * stride_kh + offs_d[None, :]
    v_ptrs = V + b * stride_vb + h * stride_vh + offs_d[None, :]

    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    m_i, l_i, acc = _attend_range(q, k_ptrs, v_ptrs, stride_kn, stride_vn, start, end, offs_n, mask_d,
                                  m_i, l_i, acc, qk_scale, BLOCK_N, UPCAST, IEEE_DOT)

    # An empty sequence (only possible with one split) leaves l_i = 0: output zeros, lse -inf.
    has_keys = l_i > 0.0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    lse2 = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
    row_mask = mask_h[:, None] & mask_d[None, :]
    # Rows are (b, query head); the outputs are contiguous, so b * Hq + head indexes a row.
    rows = b * (HKV * GROUP) + heads                                          # (BLOCK_H,)
    if NUM_SPLITS == 1:
        tl.store(OUT + rows[:, None] * D + offs_d[None, :], out.to(OUT.dtype.element_ty), mask=row_mask)
        tl.store(LSE + rows, lse2 * 0.6931471805599453, mask=mask_h)
    else:
        part_rows = rows * NUM_SPLITS + split                                 # (B, Hq, splits) layout
        tl.store(PART_OUT + part_rows[:, None] * D + offs_d[None, :], out, mask=row_mask)
        tl.store(PART_LSE + part_rows, lse2, mask=mask_h)


@triton.jit
def _combine_kernel(
    SEQLENS, PART_OUT, PART_LSE, OUT, LSE,
    S, HQ, D,
    HAS_SEQLENS: tl.constexpr, NUM_SPLITS: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, USE_PDL: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # b * Hq + query head
    if HAS_SEQLENS:
        seqlen = tl.load(SEQLENS + row // HQ)
    else:
        seqlen = S
    if USE_PDL:
        gdc_wait()  # stage 1's partials are complete and visible from here on
    n_valid = _valid_splits(seqlen, NUM_SPLITS, BLOCK_N)
    _combine_row(PART_OUT, PART_LSE, OUT, LSE, row, n_valid, D, NUM_SPLITS, BLOCK_S, BLOCK_D)

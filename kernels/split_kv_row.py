"""Flash-Decoding's split kernel for one query row per KV head (MHA decode), on the CUDA cores.

`kernels.split_kv._split_kv_kernel` serves a KV head's query rows with two `tl.dot`s, padded to
the tensor cores' 16 rows. With one row (MHA, one token: CodeLlama-7B's decode step) 15 of those
16 rows are padding, and an fp8 cache pays for the dots' operand layout besides: Triton gathers V
from shared memory one byte at a time into the P @ V operand (64 `LDS.U8` a tile, sm_90 SASS),
which bounded the fp8 kernel at 3.5 TB/s on the H200 (bench/results/NOTES.md). Here no tensor
core is used: a tile of keys is converted to fp32 in the layout it was loaded in, the scores are
multiply-adds and a reduction across the few lanes that hold one key, and P @ V is a multiply-add
into an accumulator of the tile's own shape. Nothing changes layout inside the key loop.

Each of the BLOCK_N key slots of a tile keeps its own online softmax (running max, sum and a
(BLOCK_D,) accumulator row) over the keys it sees (j, j + BLOCK_N, ...): a tile then needs no
reduction across warps (no shared memory, no barrier) for its max or sum. The slots are merged
once, at the end, exactly as the combine merges splits. The price is one multiply per accumulator
element per tile (each slot's rescale), against the instruction budget of a memory-bound loop.

Same arguments, partial layout and combine as `_split_kv_kernel` (`launch` picks the kernel by
`LaunchPlan.row_kernel`), for GROUP x T == 1 only; options about dots (FP8_DOT, FP8_EARLY,
IEEE_DOT, BLOCK_M, INT8_DOT) do not apply and must be off or are ignored (BLOCK_M, INT8_DOT).
"""

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from kernels.split_kv import LN2, _head_dim_mask, _kv_pointers, _load_tile, _prefetch_split, _sequence_split


@triton.jit
def _int8_to_fp32(x):
    """int8 -> fp32, four values per call in x's own register layout, without I2F (a quarter-rate
    instruction on sm_90; Triton's conversion spends one a value): each byte with its sign bit flipped
    becomes the low byte of the float 2^23 + byte (one PRMT), minus 2^23 + 128 (one exact FADD)."""
    return tl.inline_asm_elementwise(
        "{ .reg .b32 t; xor.b32 t, $4, 0x80808080; "
        "prmt.b32 $0, t, 0x4B000000, 0x7540; prmt.b32 $1, t, 0x4B000000, 0x7541; "
        "prmt.b32 $2, t, 0x4B000000, 0x7542; prmt.b32 $3, t, 0x4B000000, 0x7543; "
        "sub.f32 $0, $0, 0f4B000080; sub.f32 $1, $1, 0f4B000080; "
        "sub.f32 $2, $2, 0f4B000080; sub.f32 $3, $3, 0f4B000080; }",
        "=f,=f,=f,=f,r", [x.to(tl.uint8, bitcast=True)], dtype=tl.float32, is_pure=True, pack=4)


@triton.jit
def _attend_tile_by_slot(q, m_i, l_i, acc, block_start, end, k_ptrs, v_ptrs, k_desc, v_desc, ks_ptrs, vs_ptrs,
                         b, h, stride_kn, stride_vn, stride_ksn, stride_vsn, offs_n, mask_d,
                         MASK_KEYS: tl.constexpr, SCALED: tl.constexpr, INT8_PRMT: tl.constexpr, TMA: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                         CACHE_MODIFIER: tl.constexpr, EVICTION: tl.constexpr):
    """One tile of keys at block_start, slot j taking key block_start + j (keys past `end` masked if
    MASK_KEYS). q: (BLOCK_D,) fp32, already times the softmax scale in base 2; m_i, l_i: (BLOCK_N,);
    acc: (BLOCK_N, BLOCK_D) fp32."""
    cols = block_start + offs_n                                               # (BLOCK_N,)
    if MASK_KEYS:
        mask_n = cols < end
    else:  # a constant: the masks below fold away
        mask_n = tl.full([BLOCK_N], 1, tl.int1)
    k = _load_tile(k_ptrs, k_desc, b, h, block_start, cols, mask_n, mask_d, stride_kn,
                   TMA, BLOCK_N, BLOCK_D, CACHE_MODIFIER, EVICTION)            # (BLOCK_N, BLOCK_D)
    v = _load_tile(v_ptrs, v_desc, b, h, block_start, cols, mask_n, mask_d, stride_vn,
                   TMA, BLOCK_N, BLOCK_D, CACHE_MODIFIER, EVICTION)
    if INT8_PRMT:
        k = _int8_to_fp32(k)
        v = _int8_to_fp32(v)
    else:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    s = tl.sum(k * q[None, :], axis=1)                                        # (BLOCK_N,) base 2
    if SCALED:
        s = s * tl.load(ks_ptrs + cols * stride_ksn, mask=mask_n, other=0.0)
    if MASK_KEYS:
        s = tl.where(mask_n, s, float("-inf"))
    m_new = tl.maximum(m_i, s)
    if MASK_KEYS:  # a slot may have seen no key yet: keep exp2's argument finite (p = 0, alpha = 0)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_use = m_new
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use)
    l_i = l_i * alpha + p
    if SCALED:  # fp32 all the way: p times a small scale stays a normal number
        p = p * tl.load(vs_ptrs + cols * stride_vsn, mask=mask_n, other=0.0)
    acc = acc * alpha[:, None] + p[:, None] * v
    return m_new, l_i, acc


@triton.jit
def _split_kv_row_kernel(
    Q, K, V, K_SCALE, V_SCALE, SEQLENS, OUT, LSE, PART_OUT, PART_LSE, K_BASE, V_BASE,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ksb, stride_ksh, stride_ksn,
    stride_vsb, stride_vsh, stride_vsn,
    S, HKV, D, qk_scale, num_splits,
    GROUP: tl.constexpr, T: tl.constexpr, HAS_SEQLENS: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    SCALED: tl.constexpr, FP8_DOT: tl.constexpr, FP8_EARLY: tl.constexpr, INT8_PRMT: tl.constexpr,
    UPCAST: tl.constexpr, IEEE_DOT: tl.constexpr,
    USE_PDL: tl.constexpr, TMA: tl.constexpr, LOOP_STAGES: tl.constexpr,
    CACHE_MODIFIER: tl.constexpr, EVICTION: tl.constexpr, EVEN_D: tl.constexpr,
    PREFETCH: tl.constexpr = 0, ELEMENT_BYTES: tl.constexpr = 2, INT8_DOT: tl.constexpr = False,
    SEQLEN_SHIFT: tl.constexpr = 0, KEY_START: tl.constexpr = 0,
):
    """Q (B, Hq = Hkv, 1, D) strided; K, V (B, Hkv, S, D) (pointers, or tensor descriptors with TMA);
    K_SCALE, V_SCALE (B, Hkv, S) fp32 with SCALED; OUT (B, Hq, 1, D), LSE (B, Hq, 1) contiguous;
    PART_OUT (B, Hq, 1, num_splits, D), PART_LSE (B, Hq, 1, num_splits) when SPLIT; K_BASE, V_BASE as there."""
    tl.static_assert(GROUP * T == 1, "the row kernel serves one query row per KV head")
    tl.static_assert(not FP8_DOT and not FP8_EARLY, "the row kernel has no dots")
    split = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // HKV).to(tl.int64)  # int64: offsets into large caches overflow 32 bits
    h = (bh % HKV).to(tl.int64)
    if USE_PDL:  # launched as a programmatic dependent (kernels.split_kv)
        if PREFETCH > 0:
            _prefetch_split(K_BASE, V_BASE, SEQLENS, S, D, b, h, split, num_splits, stride_kb, stride_kh, stride_kn,
                            stride_vb, stride_vh, stride_vn, stride_vd, HAS_SEQLENS, BLOCK_N, PREFETCH,
                            ELEMENT_BYTES, SEQLEN_SHIFT, KEY_START)
        gdc_wait()
        gdc_launch_dependents()
    _, start, end = _sequence_split(SEQLENS, S, b, split, num_splits, HAS_SEQLENS, BLOCK_N, SEQLEN_SHIFT, KEY_START)
    if SPLIT:
        if start >= end:
            return  # past the end of this sequence; the combine does not read this split

    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = _head_dim_mask(offs_d, D, EVEN_D, BLOCK_D)
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_d, mask=mask_d, other=0.0)
    q = q.to(tl.float32) * qk_scale                                           # (BLOCK_D,) base 2
    k_ptrs, v_ptrs, ks_ptrs, vs_ptrs = _kv_pointers(Q, K, V, K_SCALE, V_SCALE, b, h, offs_d, stride_kb, stride_kh,
                                                    stride_vb, stride_vh, stride_vd, stride_ksb, stride_ksh,
                                                    stride_vsb, stride_vsh, TMA)

    m_i = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)                # per key slot
    l_i = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    full_end = start + (end - start) // BLOCK_N * BLOCK_N
    for block_start in tl.range(start, full_end, BLOCK_N, num_stages=LOOP_STAGES):  # None: kernel num_stages
        m_i, l_i, acc = _attend_tile_by_slot(
            q, m_i, l_i, acc, block_start, end, k_ptrs, v_ptrs, K, V, ks_ptrs, vs_ptrs, b, h,
            stride_kn, stride_vn, stride_ksn, stride_vsn, offs_n, mask_d,
            False, SCALED, INT8_PRMT, TMA, BLOCK_N, BLOCK_D, CACHE_MODIFIER, EVICTION)
    for tail_start in tl.range(full_end, end, BLOCK_N, num_stages=2):  # one partial tile at most
        m_i, l_i, acc = _attend_tile_by_slot(
            q, m_i, l_i, acc, tail_start, end, k_ptrs, v_ptrs, K, V, ks_ptrs, vs_ptrs, b, h,
            stride_kn, stride_vn, stride_ksn, stride_vsn, offs_n, mask_d,
            True, SCALED, INT8_PRMT, TMA, BLOCK_N, BLOCK_D, CACHE_MODIFIER, EVICTION)

    # Merge the slots (a slot that saw no key has m = -inf: weight 0). An empty split range (one
    # split of an empty sequence) leaves l = 0: output zeros, lse -inf.
    m = tl.max(m_i, axis=0)
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(m_i - m)                                                      # (BLOCK_N,)
    l = tl.sum(l_i * w, axis=0)
    has_keys = l > 0.0
    out = tl.sum(acc * w[:, None], axis=0) / tl.where(has_keys, l, 1.0)       # (BLOCK_D,)
    lse2 = tl.where(has_keys, m + tl.log2(tl.where(has_keys, l, 1.0)), float("-inf"))
    if SPLIT:
        part_row = bh.to(tl.int64) * num_splits + split                      # (B, Hq, 1, splits) layout
        tl.store(PART_OUT + part_row * D + offs_d, out.to(PART_OUT.dtype.element_ty), mask=mask_d)
        tl.store(PART_LSE + part_row, lse2)
    else:
        tl.store(OUT + bh.to(tl.int64) * D + offs_d, out.to(OUT.dtype.element_ty), mask=mask_d)
        tl.store(LSE + bh, lse2 * LN2)

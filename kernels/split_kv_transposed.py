"""Flash-Decoding's split kernel for 8-bit caches on sm_90's 8-bit tensor cores: the cache is the dots' first operand.

The dot kernel (`kernels.split_kv`) computes a tile's scores as q @ K^T, (rows x keys): q, a KV head's few query rows
padded to 16, is the first operand. sm_90's 8-bit tensor-core instructions (wgmma: e4m3 x e4m3 and int8 x int8) take
64 rows of their first operand per warpgroup, so Triton 3.6 lowers that orientation to 16-bit mma.sync instead, and
every cached byte is converted to fp16 on its way there: the 8-bit kernels are instruction-bound (ncu, Run 17: issue
active 58-63%; bench/results/NOTES.md).

Here everything is transposed. The scores are K @ q^T, (keys x rows), and the output out^T = V^T @ P, (D x rows): the
keys, 64 or 128 a tile, are the first operand's rows, so the dots are wgmma (`QGMMA.64x16x32` for e4m3, its int8
twin), which read K and V from shared memory as the cache stores them. K (head dim contiguous) and V (sequence-major:
a (B, Hkv, D, S) tensor, how models store 8-bit GQA caches) are both "K-major", the one operand order 8-bit wgmma
accepts. No cached byte is converted. What becomes 8-bit instead are the small operands, q (once per program) and the
probabilities (BLOCK_N x rows a tile), as digits of the cache's own format:
- e4m3: x = hi + lo (+ a third digit for q), each digit the remainder so far rounded to e4m3's 3 mantissa bits, so
  two digits are within 2^-8 of x (bf16's precision) and three within 2^-12; each digit's dot accumulates onto the
  last one's (a float digit needs no weight: its exponent is its own). q takes three (the GPU check's log-sum-exp
  bound of 1e-3 failed with two), P two.
- int8: x = hi + lo / 254, as `kernels.split_kv`'s INT8_DOT digits of q: within 1/508 of the scale's step; the two
  int32 dots are added exactly, hi * 254 + lo, then converted once.
Each digit costs one more dot; the tensor cores have room for it (at 64 keys a tile the dots are ~15-20% of an SM's
8-bit tensor throughput at the HBM read rate).

E4M3_ACCUMULATION: sm_90's e4m3 warpgroup dots do not accumulate in full fp32 (DeepSeek-V3's report: about 14 bits
kept, the rest truncated), so a sum carried through them loses a little at every dot, always the same way. The
first version accumulated the output onto itself through every tile's PV dots: on an H200 its error grew with the
keys a program reads, 1.4% of the output with 16k keys in 32-key tiles (the tuner's check refused that plan; 3-4e-3
at the tuned 34B plans, 4x the dot kernel's), Run 21. Now a tile's PV dots (its two digits, at most 2 x 128
products) start from zero and the output is carried across tiles in fp32 registers, as DeepGEMM promotes its fp8
accumulators every 128 products; the scores' dots always were one tile's. int8's dots accumulate exactly in int32.

The probabilities are digitised per tile against the tile's own maximum (each row's largest p in the tile is 1) and
times the V scales over the tile's largest V scale: an int8 digit has a fixed step, and a tile far below the running
maximum would otherwise round to nothing, however many keys it holds (tests/kernels/test_flash_decode_digits.py has
such a case). The sums and the output are kept in units of that level (`_attend_tile_transposed`), so moving them to the
next tile's is one multiply a row, and the PV dots accumulate onto the output itself.

The softmax sum is kept per key slot (BLOCK_N x rows, like `kernels.split_kv_row`'s slots) and reduced once at the
end: the keys are spread over all four warps of the warpgroup, so a sum over them every tile would be a reduction
through shared memory and barriers. The running maximum cannot wait: it is reduced every tile, and where the row block
has a padding row (CodeLlama-34B decode: 8 rows in 16) the V scales ride in it through that same reduction.

On an H200 (bench/results/NOTES.md, Runs 20-21): 18-31% fewer instructions a key than the dot kernel (sm_90 SASS), yet
within 0-5% of its tuned plans at batch 1 and level with them batched: ncu's first stall became the barriers of the
per-tile maximum and of P's trip through shared memory to the PV wgmma. The heuristic takes it on Hopper for one token
of a GQA model over an 8-bit cache (1.25-1.57x its plan before at CodeLlama-34B's rows), the tuner where it wins.

Same arguments, partial layout and combine as `_split_kv_kernel` (`kernels.interface.split_kernel` picks this kernel
for `LaunchPlan.transposed` with an 8-bit cache and V sequence-major); the options of the dot kernel's conversions
(FP8_DOT, FP8_EARLY, INT8_PRMT, INT8_DOT, IEEE_DOT) do not apply. With TMA both tiles come through tensor descriptors,
K's over the cache, V's over its (B, Hkv, D, S) storage, straight into the shared memory the warpgroup dots read. In the interpreter (UPCAST) the digits
are fp32 values of the same rounding (its e4m3 conversion rounds wrongly near powers of two; tests/kernels/
kernel_inputs.py) and the dots are fp32.
"""

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from kernels.split_kv import (FP8_MAX, INT8_MAX, LN2, LOW_DIGIT, _head_dim_mask, _prefetch_split,
                              _sequence_split)

ROUNDING_MAGIC = tl.constexpr(12582912.0)  # 1.5 x 2^23: x + it rounds x to an integer held in the low mantissa bits


@triton.jit
def _round_to_e4m3_mantissa(x):
    """x (fp32) rounded (half away from zero) to 3 mantissa bits: an e4m3 value wherever x is one of e4m3's normal
    numbers' magnitude. Two integer instructions, the same on the GPU and in the interpreter (whose e4m3 conversion
    drops the carry into the exponent). Below e4m3's smallest normal (2^-6) the GPU's conversion rounds the result
    once more, by at most 2^-10: nothing next to the digits' range of hundreds."""
    bits = x.to(tl.int32, bitcast=True)
    return ((bits + 0x80000) & -0x100000).to(tl.float32, bitcast=True)


@triton.jit
def _e4m3_digit(x, UPCAST: tl.constexpr):
    """x (fp32) as the dots take an e4m3 digit: rounded to nearest even by the conversion on the GPU (exact for a
    value `_round_to_e4m3_mantissa` made), the same rounding's fp32 value under UPCAST."""
    if UPCAST:
        return _round_to_e4m3_mantissa(x)
    else:
        return x.to(tl.float8e4nv)


@triton.jit
def _digits(x, E4M3: tl.constexpr, UPCAST: tl.constexpr):
    """x (fp32, |x| <= 448 for e4m3, <= 127 for int8) as two 8-bit digits in the dtype the dots take (fp32 values of
    the same digits under UPCAST). e4m3: x ~ hi + lo within 2^-8 of x (a float's second digit needs no weight: its
    exponent is its own); int8: x ~ hi + lo / LOW_DIGIT within 1 / (2 LOW_DIGIT). Also returns e4m3's remainder
    x - hi - lo (fp32), from which a third digit is made."""
    if E4M3:
        hi = _round_to_e4m3_mantissa(x)
        rest = x - hi                                         # exact; within 2^-4 of x
        lo = _e4m3_digit(rest, UPCAST)
        rest = rest - lo.to(tl.float32)
        if not UPCAST:
            hi = hi.to(tl.float8e4nv)
    else:  # |x| <= 127 and |x - hi| <= 1/2: both digits within [-127, 127] without a clamp
        hi_bits = x + ROUNDING_MAGIC                          # the nearest integer (even on ties) in the low bits
        hi_f = hi_bits - ROUNDING_MAGIC
        lo_bits = (x - hi_f) * LOW_DIGIT + ROUNDING_MAGIC
        rest = x
        if UPCAST:
            hi = hi_f
            lo = lo_bits - ROUNDING_MAGIC
        else:  # the low byte of those bits is the digit's two's complement: no F2I (quarter rate on sm_90)
            hi = hi_bits.to(tl.int32, bitcast=True).to(tl.int8)
            lo = lo_bits.to(tl.int32, bitcast=True).to(tl.int8)
    return hi, lo, rest


@triton.jit
def _int8_digits_dot(a, hi, lo, UPCAST: tl.constexpr):
    """a @ (hi * LOW_DIGIT + lo) in fp32 for int8 digits: the two dots summed exactly in int32 (|byte x digit| <=
    127 x 127, at most 256 of them, times 254 < 2^31), then converted once; fp32 dots of their values under UPCAST.
    The caller's scale divides by LOW_DIGIT."""
    if UPCAST:
        return tl.dot(a, hi) * LOW_DIGIT + tl.dot(a, lo)
    else:
        return (tl.dot(a, hi, out_dtype=tl.int32) * 254 + tl.dot(a, lo, out_dtype=tl.int32)).to(tl.float32)


@triton.jit
def _scores(k, q_hi, q_mid, q_lo, E4M3: tl.constexpr, UPCAST: tl.constexpr):
    """k @ q (BLOCK_N, BLOCK_M) fp32 from q's digits: e4m3, three (q within 2^-12, fp16's precision) whose dots
    accumulate onto one another, from zero (E4M3_ACCUMULATION); int8, two (`_int8_digits_dot`; q_lo unused)."""
    if E4M3:
        return tl.dot(k, q_hi, tl.dot(k, q_mid, tl.dot(k, q_lo)))
    else:
        return _int8_digits_dot(k, q_hi, q_mid, UPCAST)


@triton.jit
def _load_tiles(k_src, vt_src, b, h, cols, block_start, mask_n, mask_d, stride_kn, stride_vn,
                TMA: tl.constexpr, MASK_KEYS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                CACHE_MODIFIER: tl.constexpr, EVICTION: tl.constexpr):
    """The tile's K (BLOCK_N, BLOCK_D) and V^T (BLOCK_D, BLOCK_N), 8-bit, zeros outside [block_start, end) x [0, D).
    k_src, vt_src: with TMA, descriptors over K (B, Hkv, S, D) and V's (B, Hkv, D, S) storage, whose tiles land in
    shared memory in the layout the warpgroup dots read (rows past S and D zero-filled); else the KV head's pointers,
    (1, BLOCK_D) and (BLOCK_D, 1)."""
    if TMA:
        b32, h32 = b.to(tl.int32), h.to(tl.int32)
        k = k_src.load([b32, h32, block_start, 0]).reshape(BLOCK_N, BLOCK_D)
        vt = vt_src.load([b32, h32, 0, block_start]).reshape(BLOCK_D, BLOCK_N)
        if MASK_KEYS:  # keys in [end, S) hold whatever the cache holds there (an e4m3 NaN, even): zero them
            k = tl.where(mask_n[:, None], k, tl.zeros_like(k))
            vt = tl.where(mask_n[None, :], vt, tl.zeros_like(vt))
    else:
        k = tl.load(k_src + cols[:, None] * stride_kn, mask=mask_n[:, None] & mask_d[None, :], other=0.0,
                    cache_modifier=CACHE_MODIFIER, eviction_policy=EVICTION)
        vt = tl.load(vt_src + cols[None, :] * stride_vn, mask=mask_d[:, None] & mask_n[None, :], other=0.0,
                     cache_modifier=CACHE_MODIFIER, eviction_policy=EVICTION)
    return k, vt


@triton.jit
def _attend_tile_transposed(q_hi, q_mid, q_lo, q_scale, m_i, u_i, v_ref, l_slots, acc, block_start, end, last_key,
                            k_src, vt_src, ks_ptrs, vs_ptrs, b, h, stride_kn, stride_vn, stride_ksn, stride_vsn,
                            offs_n, offs_m, mask_d,
                            T: tl.constexpr, MASK_KEYS: tl.constexpr, E4M3: tl.constexpr, UPCAST: tl.constexpr,
                            DIGIT_MAX: tl.constexpr, V_IN_PAD: tl.constexpr, TMA: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                            CACHE_MODIFIER: tl.constexpr, EVICTION: tl.constexpr):
    """One tile of keys starting at block_start (keys past `end` masked if MASK_KEYS; k_src, vt_src as `_load_tiles`).

    q_hi, q_mid, q_lo: (BLOCK_D, BLOCK_M) q's digits (`_scores`); q_scale: (BLOCK_M,) a row's digit step times the
    softmax scale (base 2). DIGIT_MAX: the probabilities' digits span [0, DIGIT_MAX] (448 e4m3, 127 int8).
    The state, per row: m_i (BLOCK_M,) the running max of the scores; u_i (BLOCK_M,) the level the last tile's
    probabilities were taken against (its max, or m_i - 40 if that is higher); v_ref, the last tile's largest V scale.
    l_slots (BLOCK_N, BLOCK_M) and acc (BLOCK_D, BLOCK_M) hold the softmax sums per key slot and the output in units
    of exp2(u_i) (and of v_ref times the digits' step): the true sum is sum(l_slots) * exp2(u_i), the true output
    acc * exp2(u_i) * v_ref * step. Moving them to the next tile's units is one multiply a row, whatever the tile's
    level, and the PV dots accumulate onto acc itself.
    """
    cols = block_start + offs_n                                               # (BLOCK_N,)
    if MASK_KEYS:
        mask_n = cols < end
    else:  # a constant: the masks below fold away
        mask_n = tl.full([BLOCK_N], 1, tl.int1)
    k, vt = _load_tiles(k_src, vt_src, b, h, cols, block_start, mask_n, mask_d, stride_kn, stride_vn, TMA, MASK_KEYS,
                        BLOCK_N, BLOCK_D, CACHE_MODIFIER, EVICTION)         # (BLOCK_N, BLOCK_D), (BLOCK_D, BLOCK_N)
    k_scale = tl.load(ks_ptrs + cols * stride_ksn, mask=mask_n, other=0.0)    # (BLOCK_N,) fp32
    v_scale = tl.load(vs_ptrs + cols * stride_vsn, mask=mask_n, other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        vt = vt.to(tl.float32)

    # The scores without q's per-row scale (> 0: it commutes with the max, and joins exp2's argument as one FFMA)
    s = _scores(k, q_hi, q_mid, q_lo, E4M3, UPCAST) * k_scale[:, None]       # (BLOCK_N, BLOCK_M)
    if T > 1:  # causal: row r (token r % T) sees keys up to len - T + r % T
        visible = mask_n[:, None] & (cols[:, None] <= last_key[None, :])
        s = tl.where(visible, s, float("-inf"))
    elif MASK_KEYS:
        s = tl.where(mask_n[:, None], s, float("-inf"))
    if V_IN_PAD:  # the block's last row is padding: the V scales ride in it through the max (one reduction a tile)
        s = tl.where((offs_m == BLOCK_M - 1)[None, :], v_scale[:, None], s)
    tile_max_raw = tl.max(s, axis=0)                                          # (BLOCK_M,)
    if V_IN_PAD:
        v_max = tl.max(tl.where(offs_m == BLOCK_M - 1, tile_max_raw, 0.0), axis=0)
    else:  # a second reduction across the warpgroup (through shared memory)
        v_max = tl.max(v_scale, axis=0)
    v_max = tl.maximum(v_max, 1e-30)
    tile_max = tile_max_raw * q_scale                                         # base 2
    m_new = tl.maximum(m_i, tile_max)
    if T > 1:  # a row may have seen no key yet: keep the level finite (its p are 0 all the same)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_use = m_new
    # The tile's level: its own max, so that its largest p is 1 and an int8 digit's fixed step is fine for it, unless
    # that is 2^-40 below the running max (its weight is nothing then, and the units must not grow without bound).
    u_new = tl.maximum(tile_max, m_use - 40.0)                               # (BLOCK_M,)
    p = tl.exp2(s * q_scale[None, :] - u_new[None, :])                        # (BLOCK_N, BLOCK_M) in [0, 1]
    to_new_units = tl.exp2(u_i - u_new)                                       # (BLOCK_M,); 0 before the first tile
    l_slots = l_slots * to_new_units[None, :] + p
    p_hi, p_lo, _ = _digits(p * (v_scale * (DIGIT_MAX / v_max))[:, None], E4M3, UPCAST)  # within 2^-8 of p
    acc = acc * (to_new_units * (v_ref / v_max))[None, :]
    if E4M3:  # the tile's product, its digits' dots from zero, added to acc in fp32 (E4M3_ACCUMULATION)
        acc += tl.dot(vt, p_hi, tl.dot(vt, p_lo))                            # (BLOCK_D, BLOCK_M)
    else:
        acc += _int8_digits_dot(vt, p_hi, p_lo, UPCAST)
    return m_new, u_new, v_max, l_slots, acc


@triton.jit
def _split_kv_transposed_kernel(
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
    """Q (B, Hq, T, D) strided; K (B, Hkv, S, D) 8-bit, head dim contiguous; V (B, Hkv, S, D) 8-bit, a view of a
    (B, Hkv, D, S) tensor (stride_vn == 1); with TMA, descriptors over K and over V's (B, Hkv, D, S) storage;
    K_SCALE, V_SCALE (B, Hkv, S) fp32; OUT (B, Hq, T, D), LSE (B, Hq, T) contiguous; PART_OUT (B, Hq, T, num_splits,
    D), PART_LSE (B, Hq, T, num_splits) when SPLIT; K_BASE, V_BASE the caches (read by the PREFETCH of the split's
    first keys into L2)."""
    tl.static_assert(SCALED, "the transposed kernel reads 8-bit caches")
    E4M3: tl.constexpr = K_BASE.dtype.element_ty == tl.float8e4nv  # else int8 (K_BASE: a pointer even with TMA)
    DIGIT_MAX: tl.constexpr = FP8_MAX if E4M3 else INT8_MAX       # q and P scaled to [-DIGIT_MAX, DIGIT_MAX]
    ROWS: tl.constexpr = GROUP * T
    ROW_BLOCKS: tl.constexpr = (ROWS + BLOCK_M - 1) // BLOCK_M
    split = tl.program_id(0)
    pid = tl.program_id(1)
    bh = pid // ROW_BLOCKS
    b = (bh // HKV).to(tl.int64)  # int64: offsets into large caches overflow 32 bits
    h = (bh % HKV).to(tl.int64)
    if USE_PDL:  # launched as a programmatic dependent (kernels.split_kv)
        if PREFETCH > 0:
            if pid % ROW_BLOCKS == 0:
                _prefetch_split(K_BASE, V_BASE, SEQLENS, S, D, b, h, split, num_splits, stride_kb, stride_kh,
                                stride_kn, stride_vb, stride_vh, stride_vn, stride_vd, HAS_SEQLENS, BLOCK_N, PREFETCH,
                                ELEMENT_BYTES, SEQLEN_SHIFT, KEY_START)
        gdc_wait()
        gdc_launch_dependents()

    seqlen, start, end = _sequence_split(SEQLENS, S, b, split, num_splits, HAS_SEQLENS, BLOCK_N, SEQLEN_SHIFT,
                                         KEY_START)
    if SPLIT:
        if start >= end:
            return  # past the end of this sequence; the combine does not read this split

    rows = (pid % ROW_BLOCKS) * BLOCK_M + tl.arange(0, BLOCK_M)              # (BLOCK_M,) rows of this KV head
    offs_n = tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    V_IN_PAD: tl.constexpr = ROWS < BLOCK_M  # one row block, its last row padding
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = rows < ROWS
    mask_d = _head_dim_mask(offs_d, D, EVEN_D, BLOCK_D)
    heads = h * GROUP + rows // T                                             # (BLOCK_M,) query heads
    tokens = rows % T
    last_key = seqlen - T + tokens                                            # (BLOCK_M,) causal limit

    q_ptrs = Q + b * stride_qb + heads[None, :] * stride_qh + tokens[None, :] * stride_qt + offs_d[:, None]
    q = tl.load(q_ptrs, mask=mask_d[:, None] & mask_m[None, :], other=0.0).to(tl.float32)  # (BLOCK_D, BLOCK_M)
    q_amax = tl.max(tl.abs(q), axis=0)                                        # (BLOCK_M,)
    q_step = tl.where(q_amax > 0, q_amax / DIGIT_MAX, 1.0)
    q_hi, q_mid, rest = _digits(q * (1.0 / q_step)[None, :], E4M3, UPCAST)  # (BLOCK_D, BLOCK_M) each
    q_lo = _e4m3_digit(rest, UPCAST) if E4M3 else q_mid
    if E4M3:
        q_scale = q_step * qk_scale
    else:  # _int8_digits_dot's sums are in steps of 1/LOW_DIGIT
        q_scale = q_step * (qk_scale / LOW_DIGIT)

    if TMA:
        k_src, vt_src = K, V
    else:
        k_src = K + b * stride_kb + h * stride_kh + offs_d[None, :]           # (1, BLOCK_D)
        vt_src = V + b * stride_vb + h * stride_vh + offs_d[:, None] * stride_vd  # (BLOCK_D, 1)
    ks_ptrs = K_SCALE + b * stride_ksb + h * stride_ksh
    vs_ptrs = V_SCALE + b * stride_vsb + h * stride_vsh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    u_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    v_ref = 1.0
    l_slots = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_D, BLOCK_M], dtype=tl.float32)
    full_end = start + (end - start) // BLOCK_N * BLOCK_N
    for block_start in tl.range(start, full_end, BLOCK_N, num_stages=LOOP_STAGES):  # None: kernel num_stages
        m_i, u_i, v_ref, l_slots, acc = _attend_tile_transposed(
            q_hi, q_mid, q_lo, q_scale, m_i, u_i, v_ref, l_slots, acc, block_start, end, last_key, k_src, vt_src,
            ks_ptrs, vs_ptrs, b, h, stride_kn, stride_vn, stride_ksn, stride_vsn, offs_n, offs_m, mask_d,
            T, False, E4M3, UPCAST, DIGIT_MAX, V_IN_PAD, TMA, BLOCK_N, BLOCK_M, BLOCK_D, CACHE_MODIFIER, EVICTION)
    for tail_start in tl.range(full_end, end, BLOCK_N, num_stages=2):  # one partial tile at most
        m_i, u_i, v_ref, l_slots, acc = _attend_tile_transposed(
            q_hi, q_mid, q_lo, q_scale, m_i, u_i, v_ref, l_slots, acc, tail_start, end, last_key, k_src, vt_src,
            ks_ptrs, vs_ptrs, b, h, stride_kn, stride_vn, stride_ksn, stride_vsn, offs_n, offs_m, mask_d,
            T, True, E4M3, UPCAST, DIGIT_MAX, V_IN_PAD, TMA, BLOCK_N, BLOCK_M, BLOCK_D, CACHE_MODIFIER, EVICTION)

    # In the units of exp2(u_i): the output is acc * v_ref * step / l, the log-sum-exp u_i + log2(l). A row without
    # keys (an empty sequence with one split; an early token's split past its last key) leaves l = 0: output zeros,
    # lse -inf.
    if E4M3:
        digit_step = 1.0 / DIGIT_MAX
    else:  # (the PV sums too are in steps of 1/LOW_DIGIT)
        digit_step = 1.0 / (DIGIT_MAX * LOW_DIGIT)
    l_i = tl.sum(l_slots, axis=0)                                             # (BLOCK_M,)
    has_keys = l_i > 0.0
    out_t = acc * ((v_ref * digit_step) / tl.where(has_keys, l_i, 1.0))[None, :]  # (BLOCK_D, BLOCK_M)
    lse2 = tl.where(has_keys, u_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
    store_mask = mask_d[:, None] & mask_m[None, :]
    out_rows = bh * ROWS + rows                                               # (BLOCK_M,) (b, query head, token)
    if SPLIT:
        part_rows = out_rows.to(tl.int64) * num_splits + split               # (B, Hq, T, splits) layout
        tl.store(PART_OUT + part_rows[None, :] * D + offs_d[:, None], out_t.to(PART_OUT.dtype.element_ty),
                 mask=store_mask)
        tl.store(PART_LSE + part_rows, lse2, mask=mask_m)
    else:
        tl.store(OUT + out_rows[None, :].to(tl.int64) * D + offs_d[:, None], out_t.to(OUT.dtype.element_ty),
                 mask=store_mask)
        tl.store(LSE + out_rows, lse2 * LN2, mask=mask_m)

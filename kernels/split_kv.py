"""Triton kernels of Flash-Decoding: split the KV cache along the sequence, then combine.

Stage 1, `_split_kv_kernel`: one program per (split, batch x KV head x row block). It streams its
range of keys/values once and serves every query row of its KV head with two `tl.dot`s: the rows are
the group's query heads times the T newest tokens (GQA and multi-token packing: row r is head
r // T, token r % T, padded to the tensor cores' minimum of 16), keeping an online softmax. With
T > 1, query token t sees keys up to len - T + t (causal, aligned bottom-right). It writes a partial
output normalised by its own softmax sum, plus that sum's log-sum-exp. With a single split it writes
the final output directly and the combine is skipped.

Stage 2, `_combine_kernel`: one program per (batch, query head, token) row rescales the partials by
exp2(lse_i - lse) and sums them. On a GPU both stages are launched as programmatic dependent launches:
a stage's programs start while the kernel before it is still running and wait for its results at
`gdc_wait`, which hides most of a launch (measured on an H100, bench/results/NOTES.md); the combine in turn
lets the kernel after it (a decode step's wo GEMV) launch as it starts (H200: 34B S=4k 9.8 -> 9.4 µs, the 7B
fp8 step 11-15 µs faster at 4k-16k; NOTES.md, Run 15). Before its wait, each stage-1 program asks for the
first `interface.KV_PREFETCH` bytes of its K and V range in L2 (kernels/prefetch.py), so their latency overlaps
the kernel before (the 7B step 15-36 µs faster at 4k-64k, bf16, fp8 and int8; NOTES.md, Run 16). A combine
fused into stage 1, the last split of each group reducing it, measured 1.2-2.3x slower: one program then reads the
whole group's partials alone.

8-bit caches (SCALED: float8_e4m3fn or int8, one float32 scale per token and KV head): tiles are loaded
as bytes and converted to fp16 (e4m3: one `cvt` per two values on sm_90, bf16 would need a second
conversion each; int8: exactly, by PRMT + HSUB2 per two values, `_int8_to_fp16`, where Triton's own
conversion spends a quarter-rate I2F per value; `INT8_PRMT`, on by default),
q is converted to fp16 once, the K scales multiply the scores per key column and the V scales the
probabilities per key column. p * v_scale can fall below fp16's normal range (a probability of
1e-5 times a scale of 1e-3), so p is multiplied by v_scale / max(v_scale of the tile), which keeps it
in [0, 1], and the tile's product is multiplied back by that max.

Where the bytes become fp16 decides the fp8 kernel's speed (sm_90 SASS of the key loop, 64-key
tiles, 4 warps; bench/results/NOTES.md). Left to Triton (`FP8_EARLY` off), the conversion moves
behind the dots' layout change: V is gathered from shared memory one byte at a time (64 `LDS.U8`
and ~150 packing moves a tile) and both dots take 8-bit operand widths (64 register moves around
the QK mma); run 1 on the H200 was 791 instructions a tile and two programs per SM, instruction-
bound at 54% of the read rate. `FP8_EARLY` converts right after loading, in the loads' own layout,
with an inline-PTX conversion Triton cannot move; the transposes then run on 16-bit values
(`STS.128` + `LDSM.T`): 421 instructions a tile, three programs per SM. Yet on the H200 Triton's
placement ran faster at every plan that fills the GPU (bench/results/h200-explore-2: the same plan
with early conversion 1.3x slower in the median of 131 pairs, 157 vs 272 µs at 7B 64k's best): fewer
instructions did not make the early kernel faster, so it is an option, off by default. The
interpreter cannot run PTX: there the conversion is `.to()`. `FP8_DOT` instead quantizes q to
e4m3 (a scale per row) and computes the scores with fp8 tensor-core dots, skipping K's conversion
(Triton 3.6 lowers them to fp16 HMMA on sm_90 all the same: the bytes are converted anyway).

An 8-bit V's layout decides as much. P @ V takes V as the tensor cores' second operand, reduced along the
sequence, so a register of that operand holds two values of adjacent positions. Stored head-dim-contiguous,
those bytes lie D apart in shared memory and are gathered one at a time (`LDS.U8`, 128 a 64-key tile at
CodeLlama-34B's int8 plan); stored sequence-major (V a (B, Hkv, D, S) tensor seen as (B, Hkv, S, D), as models
store 8-bit GQA caches), they are neighbours and the tile goes through `LDSM`: the key loop 29% shorter there
(1,034 -> 737), and on an H200 the 34B 128k call 86.6 -> 78.2 µs with int8, 91.5 -> 78.8 with e4m3 (one run,
bench/results/NOTES.md, Run 18). The kernel takes V's head-dim stride as an argument; a launch specialises
whichever of V's strides is 1, so each layout gets its own vectorised loads.

`INT8_DOT` (int8 caches) is the one that skips it: sm_90 has int8 tensor-core dots (IMMA, and IGMMA for
64-row blocks). q is written as two int8 digits with a scale per row, q = scale * (high + low / 254),
exact to 1/(127 * 508) of the row's largest element, finer than fp16's 2^-11 relative step; the
scores are the exact int32 dots of both digits with the keys as stored, and only V is converted for
the PV dot. One digit alone cost 0.6 points of top-1 agreement on SmolLM2 (97.8% against 98.4%). The
key loop is 20% shorter (sm_90 SASS, 34B 128k's tile: 610 against 759 instructions). On an H200, in one
run, int8 with its own tuned plans took 85.5 µs at 34B 128k, on e4m3's plan 94.7, e4m3 itself 90.4
(bench/results/NOTES.md, Run 17); with V sequence-major and plans tuned for it, 75.7 and 73.7 (Run 18).
`kernels.split_kv_transposed` goes further for a sequence-major V: the scores and the output transposed, so the
cache itself is the first operand of sm_90's 8-bit warpgroup dots and no byte is converted (Run 20).

How a sequence is split is decided inside the kernel from its current length: the grid depends
only on shapes, so a CUDA graph captured once stays valid while the cache fills, and the splits
share out whatever length the sequence has now. Splits past the end of a short sequence exit at
once; the combine counts the same splits and never reads theirs.

Launch options (chosen by `kernels.plan`, swept by `python -m kernels.bench --tune`): BLOCK_N keys
per tile; LOOP_STAGES (None: the kernel's num_stages) software-pipelines the key loop's loads
(`tl.range(num_stages=)`); CACHE_MODIFIER / EVICTION are load hints for K/V (".cg",
"evict_first": K/V are read once, so they need not displace anything from L2); TMA loads K/V
through host tensor descriptors (their rows past S are zero-filled, rows in [len, S) are masked
after loading).

Internally scores are in base 2 (exp2 is one instruction); the lse handed out is natural log.
"""

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from kernels.prefetch import prefetch_rows

LN2 = tl.constexpr(0.6931471805599453)
FP8_MAX = tl.constexpr(448.0)
INT8_MAX = tl.constexpr(127.0)
LOW_DIGIT = tl.constexpr(254.0)  # the second int8 digit of q under INT8_DOT: a step of 1/254


@triton.jit
def _blocks_per_split(seqlen, num_splits, BLOCK_N: tl.constexpr):
    """A sequence's BLOCK_N-key blocks, and how many of them each split takes."""
    n_blocks = tl.cdiv(seqlen, BLOCK_N)
    return n_blocks, tl.maximum(tl.cdiv(n_blocks, num_splits), 1)


@triton.jit
def _split_range(seqlen, split, num_splits, BLOCK_N: tl.constexpr):
    """Key range [start, end) of `split` for a sequence of `seqlen` keys, in whole blocks."""
    n_blocks, blocks_per_split = _blocks_per_split(seqlen, num_splits, BLOCK_N)
    start = split * blocks_per_split * BLOCK_N
    end = tl.minimum(start + blocks_per_split * BLOCK_N, seqlen)
    return start, end


@triton.jit
def _valid_splits(seqlen, num_splits, BLOCK_N: tl.constexpr):
    """How many leading splits of a `seqlen`-long sequence have keys (those are never empty)."""
    n_blocks, blocks_per_split = _blocks_per_split(seqlen, num_splits, BLOCK_N)
    return tl.cdiv(n_blocks, blocks_per_split)


@triton.jit
def _cache_length(SEQLEN, S, SHIFT: tl.constexpr, KEY_START: tl.constexpr):
    """A sequence's length less SHIFT, at most the cache's S: while a CUDA graph is captured the host cannot check
    the lengths, and a length past S (a decode loop run past the cache) would read beyond it; the combine clamps
    the same way, so both stages count the same splits. SHIFT and KEY_START: the keys a caller reads elsewhere
    (kernels/exact_window.py: an fp8 cache's exact window, its last SHIFT keys, and sink, its first KEY_START),
    applied here rather than by a PyTorch op a call (a launch per layer, and a break in the step's PDL chain); a
    length of KEY_START or less has no keys left: 0."""
    n = tl.load(SEQLEN)
    if SHIFT > 0:
        n = n - SHIFT
    if KEY_START > 0:
        n = tl.where(n > KEY_START, n, 0)
    elif SHIFT > 0:
        n = tl.maximum(n, 0)
    return tl.minimum(n, S)


@triton.jit
def _sequence_split(SEQLENS, S, b, split, num_splits, HAS_SEQLENS: tl.constexpr, BLOCK_N: tl.constexpr,
                    SEQLEN_SHIFT: tl.constexpr, KEY_START: tl.constexpr):
    """(seqlen, start, end): sequence b's length now (`_cache_length`) and the key range [start, end) of `split`,
    from key KEY_START on: the first split's range starts there (so its tiles, only, start off a block; the view
    of the cache stays where the tensor's own alignment keeps a sequence-major 8-bit V's tiles on whole lines)."""
    if HAS_SEQLENS:
        seqlen = _cache_length(SEQLENS + b, S, SEQLEN_SHIFT, KEY_START)
    else:
        seqlen = S
    start, end = _split_range(seqlen, split, num_splits, BLOCK_N)
    if KEY_START > 0:
        start = tl.maximum(start, KEY_START)   # a split past KEY_START is untouched; one of KEY_START or less: empty
    return seqlen, start, end


@triton.jit
def _head_dim_mask(offs_d, D, EVEN_D: tl.constexpr, BLOCK_D: tl.constexpr):
    """(BLOCK_D,) lanes within the head dim; a constant when D == BLOCK_D (loads then need one predicate
    per row, not one per column)."""
    if EVEN_D:
        mask_d = tl.full([BLOCK_D], 1, tl.int1)
    else:
        mask_d = offs_d < D
    return mask_d


@triton.jit
def _kv_pointers(Q, K, V, K_SCALE, V_SCALE, b, h, offs_d,
                 stride_kb, stride_kh, stride_vb, stride_vh, stride_vd, stride_ksb, stride_ksh, stride_vsb, stride_vsh,
                 TMA: tl.constexpr):
    """(k_ptrs, v_ptrs, ks_ptrs, vs_ptrs) of KV head (b, h): its K and V rows' columns (unused with TMA,
    where K and V are descriptors addressed by (b, h, key, 0) in _load_tile) and its scales' start. V's
    columns are stride_vd apart: 1, or the cache's length for a sequence-major V (a launch specialises
    either unit stride to a constant, so each layout gets its own vectorised loads)."""
    if TMA:
        k_ptrs = Q
        v_ptrs = Q
    else:
        k_ptrs = K + b * stride_kb + h * stride_kh + offs_d[None, :]
        v_ptrs = V + b * stride_vb + h * stride_vh + offs_d[None, :] * stride_vd
    ks_ptrs = K_SCALE + b * stride_ksb + h * stride_ksh
    vs_ptrs = V_SCALE + b * stride_vsb + h * stride_vsh
    return k_ptrs, v_ptrs, ks_ptrs, vs_ptrs


@triton.jit
def _prefetch_split(K_BASE, V_BASE, SEQLENS, S, D, b, h, split, num_splits, stride_kb, stride_kh, stride_kn,
                    stride_vb, stride_vh, stride_vn, stride_vd, HAS_SEQLENS: tl.constexpr, BLOCK_N: tl.constexpr,
                    PREFETCH: tl.constexpr, ELEMENT_BYTES: tl.constexpr, SEQLEN_SHIFT: tl.constexpr,
                    KEY_START: tl.constexpr):
    """The first PREFETCH bytes of the split's K and V rows into L2, before the wait on the kernel before
    (K_BASE, V_BASE: the caches' pointers, also under TMA). The lengths are read before that wait: no kernel
    that may run alongside this one's start (the one before it, past its own wait) writes them; the key it
    appends may land after the prefetch, which is no harm: L2 holds the newest bytes either way."""
    _, start, end = _sequence_split(SEQLENS, S, b, split, num_splits, HAS_SEQLENS, BLOCK_N, SEQLEN_SHIFT, KEY_START)
    if start < end:
        prefetch_rows(K_BASE + b * stride_kb + h * stride_kh + start * stride_kn, end - start, D, stride_kn,
                      PREFETCH, ELEMENT_BYTES)
        if stride_vd == 1:  # a sequence-major V's first tiles are D short runs: not one range to ask for
            prefetch_rows(V_BASE + b * stride_vb + h * stride_vh + start * stride_vn, end - start, D, stride_vn,
                          PREFETCH, ELEMENT_BYTES)


@triton.jit
def _combine_row(PART_OUT, PART_LSE, OUT, LSE, row, n_valid, num_splits, D,
                 BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """Combine the first n_valid partials of one (batch, query head, token) row into OUT and LSE."""
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    mask_s = offs_s < n_valid
    lse = tl.load(PART_LSE + row * num_splits + offs_s, mask=mask_s, other=float("-inf"))  # (BLOCK_S,)
    parts = tl.load(PART_OUT + (row * num_splits + offs_s[:, None]) * D + offs_d[None, :],
                    mask=mask_s[:, None] & (offs_d[None, :] < D), other=0.0).to(tl.float32)  # (BLOCK_S, BLOCK_D)
    m = tl.max(lse, axis=0)
    m = tl.where(m == float("-inf"), 0.0, m)  # all splits empty: keep exp2 finite, weights 0
    w = tl.exp2(lse - m)
    denom = tl.sum(w, axis=0)
    out = tl.sum(parts * w[:, None], axis=0) / tl.maximum(denom, 1e-30)
    tl.store(OUT + row * D + offs_d, out.to(OUT.dtype.element_ty), mask=offs_d < D)
    tl.store(LSE + row, (m + tl.log2(denom)) * LN2)


@triton.jit
def _load_tile(ptrs, desc, b, h, block_start, cols, mask_n, mask_d, stride_n,
               TMA: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
               CACHE_MODIFIER: tl.constexpr, EVICTION: tl.constexpr):
    """One (BLOCK_N, BLOCK_D) tile of K or V; zeros outside [start, end) x [0, D)."""
    if TMA:
        tile = desc.load([b.to(tl.int32), h.to(tl.int32), block_start, 0]).reshape(BLOCK_N, BLOCK_D)
        # rows in [end, S) are whatever the cache holds there (garbage, even NaN): zero them, in the tile's
        # own dtype (a float 0.0 would promote an int8 tile to fp32 before its conversion)
        tile = tl.where(mask_n[:, None], tile, tl.zeros_like(tile))
    else:
        tile = tl.load(ptrs + cols[:, None] * stride_n, mask=mask_n[:, None] & mask_d[None, :], other=0.0,
                       cache_modifier=CACHE_MODIFIER, eviction_policy=EVICTION)
    return tile


@triton.jit
def _e4m3_to_fp16(x):
    """e4m3 -> fp16, four values per call (one `cvt` per two), in x's own register layout.

    Impure on purpose: Triton then neither moves the dot's layout change to before it (onto the
    bytes) nor derives the dot operands' width from the 8-bit load behind it."""
    return tl.inline_asm_elementwise(
        "{ .reg .b16 lo, hi; mov.b32 {lo, hi}, $2; cvt.rn.f16x2.e4m3x2 $0, lo; cvt.rn.f16x2.e4m3x2 $1, hi; }",
        "=r,=r,r", [x.to(tl.uint8, bitcast=True)], dtype=tl.float16, is_pure=False, pack=4)


@triton.jit
def _int8_to_fp16(x):
    """int8 -> fp16, four values per call, without I2F (a quarter-rate instruction on sm_90, one a value in
    Triton's conversion): each byte with its sign bit flipped becomes the low byte of the half 1024 + byte
    (one PRMT per two values), minus 1152 (one exact HSUB2 per two). Pure, unlike `_e4m3_to_fp16`: Triton
    places it where it would place its own conversion (after the dots' layout change)."""
    return tl.inline_asm_elementwise(
        "{ .reg .b32 t, m; xor.b32 t, $2, 0x80808080; mov.b32 m, 0x64806480; "
        "prmt.b32 $0, t, 0x64646464, 0x5140; prmt.b32 $1, t, 0x64646464, 0x5342; "
        "sub.f16x2 $0, $0, m; sub.f16x2 $1, $1, m; }",
        "=r,=r,r", [x.to(tl.uint8, bitcast=True)], dtype=tl.float16, is_pure=True, pack=4)


@triton.jit
def _attend_tile(q, q_low, q_row_scale, m_i, l_i, acc, block_start, end, last_key,
                 k_ptrs, v_ptrs, k_desc, v_desc, ks_ptrs, vs_ptrs, b, h,
                 stride_kn, stride_vn, stride_ksn, stride_vsn, offs_n, mask_d, qk_scale,
                 T: tl.constexpr, MASK_KEYS: tl.constexpr, SCALED: tl.constexpr, FP8_DOT: tl.constexpr,
                 INT8_DOT: tl.constexpr,
                 FP8_EARLY: tl.constexpr, INT8_PRMT: tl.constexpr, DOT_DTYPE: tl.constexpr, UPCAST: tl.constexpr,
                 IEEE_DOT: tl.constexpr,
                 TMA: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                 CACHE_MODIFIER: tl.constexpr, EVICTION: tl.constexpr):
    """Online softmax of the q rows over one tile of keys starting at block_start (keys past `end`
    masked if MASK_KEYS, else the tile is whole).

    q: (BLOCK_M, BLOCK_D); m_i, l_i: (BLOCK_M,) running max and sum (base 2); acc: (BLOCK_M, BLOCK_D).
    """
    cols = block_start + offs_n                                               # (BLOCK_N,)
    if MASK_KEYS:
        mask_n = cols < end
    else:  # a constant: the masks below fold away
        mask_n = tl.full([BLOCK_N], 1, tl.int1)
    k = _load_tile(k_ptrs, k_desc, b, h, block_start, cols, mask_n, mask_d, stride_kn,
                   TMA, BLOCK_N, BLOCK_D, CACHE_MODIFIER, EVICTION)           # (BLOCK_N, BLOCK_D)
    v = _load_tile(v_ptrs, v_desc, b, h, block_start, cols, mask_n, mask_d, stride_vn,
                   TMA, BLOCK_N, BLOCK_D, CACHE_MODIFIER, EVICTION)           # (BLOCK_N, BLOCK_D)
    if SCALED:
        k_scale = tl.load(ks_ptrs + cols * stride_ksn, mask=mask_n, other=0.0)  # (BLOCK_N,) fp32
        v_scale = tl.load(vs_ptrs + cols * stride_vsn, mask=mask_n, other=0.0)
        if FP8_EARLY and not UPCAST:
            if not FP8_DOT:
                k = _e4m3_to_fp16(k)
            v = _e4m3_to_fp16(v)
        elif INT8_PRMT:  # (never with UPCAST: the interpreter cannot run PTX)
            if not INT8_DOT:
                k = _int8_to_fp16(k)
            v = _int8_to_fp16(v)
        else:
            if not (FP8_DOT or INT8_DOT):
                k = k.to(DOT_DTYPE)
            v = v.to(DOT_DTYPE)
    elif UPCAST:  # the CPU interpreter computes 16-bit floats wrongly: widen right after loading
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    if INT8_DOT:  # exact integer dots of both digits (in the interpreter fp32 holds them exactly: < 2^24)
        k_t = tl.trans(k.to(tl.float32)) if UPCAST else tl.trans(k)
        high = tl.dot(q, k_t, out_dtype=tl.float32 if UPCAST else tl.int32)
        low = tl.dot(q_low, k_t, out_dtype=tl.float32 if UPCAST else tl.int32)
        s = high.to(tl.float32) + low.to(tl.float32) * (1.0 / LOW_DIGIT)    # (BLOCK_M, BLOCK_N)
    elif FP8_DOT and UPCAST:
        s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)))
    elif IEEE_DOT:
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))                                            # (BLOCK_M, BLOCK_N) fp32
    if FP8_DOT or INT8_DOT:
        s = s * q_row_scale[:, None]
    if SCALED:
        s = s * (k_scale * qk_scale)[None, :]
    else:
        s = s * qk_scale
    if T > 1:  # causal: row r (token r % T) sees keys up to len - T + r % T
        visible = mask_n[None, :] & (cols[None, :] <= last_key[:, None])
    else:
        visible = mask_n[None, :]
    s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    if T > 1:  # a row may have seen no key yet: keep exp2's argument finite (p = 0, alpha = 0)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_use = m_new
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if SCALED:
        v_max = tl.maximum(tl.max(v_scale, axis=0), 1e-30)
        # one reciprocal a tile: a division per key costs ~8 instructions each
        pv = tl.dot((p * (v_scale * (1.0 / v_max))[None, :]).to(v.dtype), v) * v_max
    elif IEEE_DOT:
        pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
    else:
        pv = tl.dot(p.to(v.dtype), v)
    acc = acc * alpha[:, None] + pv
    return m_new, l_i, acc


@triton.jit
def _split_kv_kernel(
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
    """Q (B, Hq, T, D) strided; K, V (B, Hkv, S, D) (pointers, or tensor descriptors with TMA);
    K_SCALE, V_SCALE (B, Hkv, S) fp32 with SCALED; OUT (B, Hq, T, D), LSE (B, Hq, T) contiguous;
    PART_OUT (B, Hq, T, num_splits, D), PART_LSE (B, Hq, T, num_splits) when SPLIT; K_BASE, V_BASE the
    caches as pointers (read only by the PREFETCH of the split's first bytes into L2)."""
    ROWS: tl.constexpr = GROUP * T
    ROW_BLOCKS: tl.constexpr = (ROWS + BLOCK_M - 1) // BLOCK_M
    split = tl.program_id(0)
    pid = tl.program_id(1)
    bh = pid // ROW_BLOCKS
    b = (bh // HKV).to(tl.int64)  # int64: offsets into large caches overflow 32 bits
    h = (bh % HKV).to(tl.int64)
    if USE_PDL:  # launched as a programmatic dependent: its start overlaps the kernel before
        if PREFETCH > 0:
            if pid % ROW_BLOCKS == 0:    # one program of those sharing the KV head asks
                _prefetch_split(K_BASE, V_BASE, SEQLENS, S, D, b, h, split, num_splits, stride_kb, stride_kh,
                                stride_kn, stride_vb, stride_vh, stride_vn, stride_vd, HAS_SEQLENS, BLOCK_N, PREFETCH,
                                ELEMENT_BYTES, SEQLEN_SHIFT, KEY_START)
        gdc_wait()               # whose writes (q, the new key and value) are visible from here on
        gdc_launch_dependents()  # let the combine's (or the next kernel's) programs get resident

    seqlen, start, end = _sequence_split(SEQLENS, S, b, split, num_splits, HAS_SEQLENS, BLOCK_N, SEQLEN_SHIFT,
                                         KEY_START)
    if SPLIT:
        if start >= end:
            return  # past the end of this sequence; the combine does not read this split

    rows = (pid % ROW_BLOCKS) * BLOCK_M + tl.arange(0, BLOCK_M)              # (BLOCK_M,) rows of this KV head
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = rows < ROWS
    mask_d = _head_dim_mask(offs_d, D, EVEN_D, BLOCK_D)
    heads = h * GROUP + rows // T                                             # (BLOCK_M,) query heads
    tokens = rows % T                                                         # (BLOCK_M,) query tokens
    last_key = seqlen - T + tokens                                            # (BLOCK_M,) causal limit

    q_ptrs = Q + b * stride_qb + heads[:, None] * stride_qh + tokens[:, None] * stride_qt + offs_d[None, :]
    q = tl.load(q_ptrs, mask=mask_m[:, None] & mask_d[None, :], other=0.0)   # (BLOCK_M, BLOCK_D)
    if UPCAST:
        q = q.to(tl.float32)
    q_row_scale = tl.zeros([BLOCK_M], dtype=tl.float32)
    q_low = q  # INT8_DOT: q's second int8 digit (unused otherwise)
    if FP8_DOT:  # e4m3 q with a scale per row, like the cache's keys
        q_amax = tl.max(tl.abs(q.to(tl.float32)), axis=1)
        q_row_scale = tl.where(q_amax > 0, q_amax / FP8_MAX, 1.0)
        q = tl.clamp(q.to(tl.float32) / q_row_scale[:, None], -FP8_MAX, FP8_MAX).to(tl.float8e4nv)
    elif INT8_DOT:  # q as two int8 digits with a scale per row: q / scale = high + low / 254 within 1/508
        q_amax = tl.max(tl.abs(q.to(tl.float32)), axis=1)
        q_row_scale = tl.where(q_amax > 0, q_amax / INT8_MAX, 1.0)
        q_scaled = q.to(tl.float32) * (1.0 / q_row_scale)[:, None]          # (BLOCK_M, BLOCK_D) in [-127, 127]
        q_high = tl.clamp(tl.floor(q_scaled + 0.5), -INT8_MAX, INT8_MAX)
        q_low = tl.clamp(tl.floor((q_scaled - q_high) * LOW_DIGIT + 0.5), -INT8_MAX, INT8_MAX)
        q = q_high.to(tl.float32 if UPCAST else tl.int8)
        q_low = q_low.to(tl.float32 if UPCAST else tl.int8)
    elif SCALED:
        q = q.to(tl.float32 if UPCAST else tl.float16)
    DOT_DTYPE: tl.constexpr = tl.float32 if UPCAST else tl.float16
    k_ptrs, v_ptrs, ks_ptrs, vs_ptrs = _kv_pointers(Q, K, V, K_SCALE, V_SCALE, b, h, offs_d, stride_kb, stride_kh,
                                                    stride_vb, stride_vh, stride_vd, stride_ksb, stride_ksh,
                                                    stride_vsb, stride_vsh, TMA)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # Whole tiles need no key mask (their loads are unpredicated, TMA tiles are used as loaded):
    # 20-25% fewer instructions a tile. Only a split's last, partial tile is masked, in a second
    # loop: as straight-line code it held both tiles in registers (146 instead of 80, bf16 34B).
    full_end = start + (end - start) // BLOCK_N * BLOCK_N
    for block_start in tl.range(start, full_end, BLOCK_N, num_stages=LOOP_STAGES):  # None: kernel num_stages
        m_i, l_i, acc = _attend_tile(
            q, q_low, q_row_scale, m_i, l_i, acc, block_start, end, last_key, k_ptrs, v_ptrs, K, V, ks_ptrs,
            vs_ptrs,
            b, h, stride_kn, stride_vn, stride_ksn, stride_vsn, offs_n, mask_d, qk_scale,
            T, False, SCALED, FP8_DOT, INT8_DOT, FP8_EARLY, INT8_PRMT, DOT_DTYPE, UPCAST, IEEE_DOT, TMA,
            BLOCK_N, BLOCK_D, CACHE_MODIFIER, EVICTION)
    for tail_start in tl.range(full_end, end, BLOCK_N, num_stages=2):  # one tile at most; a loop
        m_i, l_i, acc = _attend_tile(                                        # keeps its loads in shared memory
            q, q_low, q_row_scale, m_i, l_i, acc, tail_start, end, last_key, k_ptrs, v_ptrs, K, V, ks_ptrs,
            vs_ptrs,
            b, h, stride_kn, stride_vn, stride_ksn, stride_vsn, offs_n, mask_d, qk_scale,
            T, True, SCALED, FP8_DOT, INT8_DOT, FP8_EARLY, INT8_PRMT, DOT_DTYPE, UPCAST, IEEE_DOT, TMA,
            BLOCK_N, BLOCK_D, CACHE_MODIFIER, EVICTION)

    # A row without keys (an empty sequence with one split; an early token's split past its last
    # key) leaves l_i = 0: output zeros, lse -inf.
    has_keys = l_i > 0.0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    lse2 = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
    row_mask = mask_m[:, None] & mask_d[None, :]
    # Output rows are (b, query head, token), contiguous: (b * Hkv + h) * GROUP * T + row.
    out_rows = bh * ROWS + rows                                               # (BLOCK_M,)
    if SPLIT:
        part_rows = out_rows.to(tl.int64) * num_splits + split               # (B, Hq, T, splits) layout
        tl.store(PART_OUT + part_rows[:, None] * D + offs_d[None, :], out.to(PART_OUT.dtype.element_ty),
                 mask=row_mask)
        tl.store(PART_LSE + part_rows, lse2, mask=mask_m)
    else:
        tl.store(OUT + out_rows[:, None].to(tl.int64) * D + offs_d[None, :], out.to(OUT.dtype.element_ty),
                 mask=row_mask)
        tl.store(LSE + out_rows, lse2 * LN2, mask=mask_m)


@triton.jit
def _combine_kernel(
    SEQLENS, PART_OUT, PART_LSE, OUT, LSE,
    S, ROWS_PER_SEQ, D, num_splits,
    HAS_SEQLENS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    USE_PDL: tl.constexpr, TRIGGER: tl.constexpr = True, SEQLEN_SHIFT: tl.constexpr = 0,
    KEY_START: tl.constexpr = 0,
):
    row = tl.program_id(0).to(tl.int64)  # (b * Hq + query head) * T + token
    if HAS_SEQLENS:
        seqlen = _cache_length(SEQLENS + row // ROWS_PER_SEQ, S, SEQLEN_SHIFT, KEY_START)
    else:
        seqlen = S
    if USE_PDL:
        gdc_wait()  # stage 1's partials are complete and visible from here on
        if TRIGGER:  # the next kernel (a decode step's wo GEMV) may get resident while we run
            gdc_launch_dependents()
    n_valid = _valid_splits(seqlen, num_splits, BLOCK_N)
    _combine_row(PART_OUT, PART_LSE, OUT, LSE, row, n_valid, num_splits, D, BLOCK_S, BLOCK_D)

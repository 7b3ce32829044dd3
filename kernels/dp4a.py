"""int8 weights times a bf16 x by integer dot products: DP4A on words of four columns.

A batch-1 GEMV over int8 weights on the CUDA cores is bound by the instructions it issues, not only by the bytes
it streams: widening each weight to fp32 (PRMT, an exact FADD, a shared XOR) and an FMA cost about 3.3
instructions a weight, 4.6-5.0 with loads and addressing in the key loop's sm_90 SASS, against about 2 a byte for
bf16 weights (bench/results/NOTES.md, Run 37). `dp4a` multiplies four int8 lanes by four and sums them into an
int32 in one instruction, so x must be int8 too. llama.cpp quantizes x per block of 32 to 8 bits; here x keeps
its precision: each word of four values is cut into a high word, round(x / s) with s = the four's amax / 127, and
a low word, the remainder times 254, rounded (254, not 256: a remainder of exactly 1/2 must still fit a byte).
x ~ s / 254 * (254 * high + low), to s / 508, about 2^-16 of the word's largest value (bf16 itself keeps 2^-9 of
each); a word of weights then costs two DP4As, a multiply-add, one I2F and one FMA: about 1.25 instructions a
weight, plus the quantization of x (about 44 instructions a word, over all the rows a thread holds).

The pieces are jitted helpers for the GEMV kernels (kernels/fused_gemv.py's `_dot_rows_dp4a`); on the GPU they
are inline PTX (`ASM`), in the interpreter the same arithmetic in Triton operations (exact division where the GPU
takes an approximate reciprocal: the words may differ by a rounding, the bound below holds for both).
`quantize_words_reference` is the interpreter's arithmetic in PyTorch.

Error: |y - x @ W^T| <= sum_k |W[n, k]| * amax(word of k) / (127 * 500) + fp32 summation, per row n (s / 508, and
fp32's rounding of the remainder before it is scaled by 254: up to 254 ulp of a q below 128, 0.4% of it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.append import ROUNDER   # (x + it) - it rounds |x| < 2^22 to the nearest integer, ties to even



@triton.jit
def bf16_words(words):
    """int64 words of four bf16 values each -> the four values in fp32 (a bf16 is the top half of its fp32)."""
    first = words.to(tl.int32)                     # the low 32 bits: values 0 and 1
    second = (words >> 32).to(tl.int32)            # values 2 and 3
    return ((first << 16).to(tl.float32, bitcast=True), (first & -65536).to(tl.float32, bitcast=True),
            (second << 16).to(tl.float32, bitcast=True), (second & -65536).to(tl.float32, bitcast=True))


@triton.jit
def quantize_words(a0, a1, a2, a3, ASM: tl.constexpr):
    """Four fp32 values a word -> (high, low, scale): int32 words of four int8 lanes (value i in byte i) and fp32,
    with a_i ~ scale * (254 * high_i + low_i). A word of zeros gets scale 0."""
    if ASM:
        return tl.inline_asm_elementwise(
            "{ .reg .f32 m, t, inv, q0, q1, q2, q3, h0, h1, h2, h3, r0, r1, r2, r3; "
            ".reg .b32 c0, c1, b0, b1, b2, b3; .reg .pred z; "
            "abs.f32 m, $3; abs.f32 t, $4; max.f32 m, m, t; abs.f32 t, $5; max.f32 m, m, t; "
            "abs.f32 t, $6; max.f32 m, m, t; setp.gt.f32 z, m, 0f00000000; "
            # inv = 127 / amax (0 for a word of zeros): q = a * inv in [-127, 127]
            "rcp.approx.ftz.f32 inv, m; mul.f32 inv, inv, 0f42FE0000; selp.f32 inv, inv, 0f00000000, z; "
            "mul.f32 q0, $3, inv; mul.f32 q1, $4, inv; mul.f32 q2, $5, inv; mul.f32 q3, $6, inv; "
            # h = q + 1.5 * 2^23: round(q) in the low bits; r = (q - round(q)) * 254, rounded the same way
            "add.f32 h0, q0, 0f4B400000; add.f32 h1, q1, 0f4B400000; "
            "add.f32 h2, q2, 0f4B400000; add.f32 h3, q3, 0f4B400000; "
            "sub.f32 r0, h0, 0f4B400000; sub.f32 r1, h1, 0f4B400000; "
            "sub.f32 r2, h2, 0f4B400000; sub.f32 r3, h3, 0f4B400000; "
            "sub.f32 r0, q0, r0; sub.f32 r1, q1, r1; sub.f32 r2, q2, r2; sub.f32 r3, q3, r3; "
            "fma.rn.f32 r0, r0, 0f437E0000, 0f4B400000; fma.rn.f32 r1, r1, 0f437E0000, 0f4B400000; "
            "fma.rn.f32 r2, r2, 0f437E0000, 0f4B400000; fma.rn.f32 r3, r3, 0f437E0000, 0f4B400000; "
            # the low byte of each into one word: bytes (0, 4) of two registers, then the low halves of two
            "mov.b32 b0, h0; mov.b32 b1, h1; prmt.b32 c0, b0, b1, 0x0040; "
            "mov.b32 b2, h2; mov.b32 b3, h3; prmt.b32 c1, b2, b3, 0x0040; prmt.b32 $0, c0, c1, 0x5410; "
            "mov.b32 b0, r0; mov.b32 b1, r1; prmt.b32 c0, b0, b1, 0x0040; "
            "mov.b32 b2, r2; mov.b32 b3, r3; prmt.b32 c1, b2, b3, 0x0040; prmt.b32 $1, c0, c1, 0x5410; "
            # scale = 1 / (inv * 254)
            "rcp.approx.ftz.f32 t, inv; mul.f32 t, t, 0f3B810204; selp.f32 $2, t, 0f00000000, z; }",
            "=r,=r,=f,f,f,f,f", [a0, a1, a2, a3], dtype=(tl.int32, tl.int32, tl.float32), is_pure=True, pack=1)
    m = tl.maximum(tl.maximum(tl.abs(a0), tl.abs(a1)), tl.maximum(tl.abs(a2), tl.abs(a3)))
    nonzero = m > 0
    inv = tl.where(nonzero, 127.0 / tl.where(nonzero, m, 1.0), 0.0)
    high = tl.zeros(a0.shape, tl.int32)
    low = tl.zeros(a0.shape, tl.int32)
    for lane in tl.static_range(4):
        a = a0 if lane == 0 else (a1 if lane == 1 else (a2 if lane == 2 else a3))
        q = a * inv
        h = (q + ROUNDER) - ROUNDER
        r = ((q - h) * 254.0 + ROUNDER) - ROUNDER
        high |= (h.to(tl.int32) & 0xFF) << (8 * lane)
        low |= (r.to(tl.int32) & 0xFF) << (8 * lane)
    return high, low, tl.where(nonzero, m / 127.0 / 254.0, 0.0)


@triton.jit
def dot_words(w, high, low, ASM: tl.constexpr):
    """Per int32 word: 254 * (w . high) + (w . low) over the four int8 lanes (w, high, low of one shape)."""
    if ASM:
        return tl.inline_asm_elementwise(
            "{ .reg .s32 h, l; dp4a.s32.s32 h, $1, $2, 0; dp4a.s32.s32 l, $1, $3, 0; mad.lo.s32 $0, h, 254, l; }",
            "=r,r,r,r", [w, high, low], dtype=tl.int32, is_pure=True, pack=1)
    h = tl.zeros_like(w)
    lo = tl.zeros_like(w)
    for lane in tl.static_range(4):
        w_lane = (w << (24 - 8 * lane)) >> 24                   # arithmetic shift: the lane sign-extended
        h += w_lane * ((high << (24 - 8 * lane)) >> 24)
        lo += w_lane * ((low << (24 - 8 * lane)) >> 24)
    return h * 254 + lo


def quantize_words_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (..., K) float, K % 4 == 0 -> (high, low) int8 (..., K) and scale float32 (..., K / 4): the interpreter's
    arithmetic (`quantize_words` without ASM); x ~ scale * (254 * high + low) word by word."""
    words = x.float().unflatten(-1, (-1, 4))                                          # (..., K/4, 4)
    m = words.abs().amax(-1, keepdim=True)
    inv = torch.where(m > 0, 127.0 / torch.where(m > 0, m, 1.0), 0.0)
    q = words * inv
    high = (q + ROUNDER.value) - ROUNDER.value
    low = ((q - high) * 254.0 + ROUNDER.value) - ROUNDER.value
    scale = torch.where(m > 0, m / 127.0 / 254.0, 0.0)[..., 0]
    return high.to(torch.int8).flatten(-2), low.to(torch.int8).flatten(-2), scale


def error_bound(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    """The bound (N,) float64 on |y - x @ (weight * weight_scale)^T| from x's words (fp32 sums excluded): x (K,),
    weight (N, K) int8, weight_scale (N,)."""
    step = x.double().unflatten(-1, (-1, 4)).abs().amax(-1).repeat_interleave(4) / (127 * 500)
    return (weight.double().abs() * weight_scale.double()[:, None]) @ step


def supported(x: torch.Tensor, weight: torch.Tensor, *more: torch.Tensor | None) -> str | None:
    """Why DP4A cannot take this x (K,) and int8 weight (N, K) (None: it can): x bf16 read as int64 words of four,
    the weight as int32 words of four, so K % 4 == 0 and each tensor aligned to its word (`more`: other bf16
    vectors read the same way, e.g. the RMSNorm's weight)."""
    if x.dtype != torch.bfloat16:
        return f"x is {x.dtype}, not bfloat16 (its words are unpacked as four bf16 values)"
    if weight.dtype != torch.int8 or weight.shape[1] % 4:
        return "the weight is not int8 with a multiple of 4 columns"
    if weight.data_ptr() % 4 or weight.stride(0) % 4:
        return "the weight's rows are not aligned to 4 bytes"
    if any(t is not None and (t.dtype != torch.bfloat16 or t.data_ptr() % 8) for t in (x, *more)):
        return "x (or the norm's weight) is not aligned to 8 bytes"
    return None


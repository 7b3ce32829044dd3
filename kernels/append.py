"""`append_kv`: write a step's new keys and values into the KV cache, quantizing an 8-bit cache in the
same pass (one kernel for K and V, instead of two index_put's plus a quantization per layer).

One program per (batch row, new token, block of KV heads): it reads the new K and V rows, and for an
fp8 cache computes each (token, KV head) row's scale amax / 448 (1 where amax is 0), divides with
IEEE rounding (`div_rn`; Triton's `/` would be the 2-ulp `div.full.f32`), clamps to +-448 and
converts to e4m3 rounding to nearest even (`cvt.rn.satfinite`): on the GPU its bytes and scales
equal `kernels.reference.quantize_fp8`'s exactly (the sm_90 PTX is checked for these instructions and
no fp32 fma; `kernels.reference.quant_scale` says why the reference computes the scale in float64). An
int8 cache is the same with 127 for 448 and a round to nearest even (two fp32 additions, no conversion
mode to trust) before the exact conversion: `kernels.reference.quantize_int8`'s bytes, on the CPU too.
Positions come from a device tensor, so a
captured CUDA graph replays it as the positions advance; a position outside the cache is dropped
rather than written out of bounds (the host check catches it outside graph capture). The number of new
tokens is a runtime argument, not a constant of the binary: as a constant, each new prefill length paid a
compile (117-134 ms on an H200, bench/results/h200-cold/).

What is supported: new values in fp16/bf16/fp32, caches in the same dtype, float8_e4m3fn or int8, any
strides but the last (which must be 1; V's may instead be sequence-major, `kernels.validation.sequence_major`).
The Triton interpreter converts to e4m3 rounding halves away
from zero and truncating subnormals, so on the CPU its bytes may differ from PyTorch's by one step;
`kernels.append_kv` therefore runs the PyTorch reference on the CPU and this kernel on CUDA.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from kernels.devices import on_first_tensors_device
from kernels.validation import check_append_inputs

FP8_MAX = tl.constexpr(448.0)
INT8_MAX = tl.constexpr(127.0)
ROUNDER = tl.constexpr(12582912.0)  # 1.5 x 2^23: (x + it) - it rounds |x| < 2^22 to the nearest integer, ties to even


@triton.jit
def quantize_rows(xf, INT8: tl.constexpr):
    """Rows of xf (R, C) fp32 (zeros past the row's end) -> (values (R, C) fp32 in the 8-bit range, ready for the
    exact conversion to int8 or the rounding one to e4m3; scale (R,) = amax / QMAX, 1 where that is 0: amax 0 or
    a denormal small enough to underflow, whose zeros would otherwise divide 0 / 0).
    `kernels.reference.quantize`'s arithmetic; `kernels.fused_gemv`'s qkv_rope quantizes with it too."""
    QMAX: tl.constexpr = INT8_MAX if INT8 else FP8_MAX
    amax = tl.max(tl.abs(xf), axis=1)                                         # (R,)
    scale = tl.math.div_rn(amax, tl.full(amax.shape, QMAX, tl.float32))
    scale = tl.where(scale > 0, scale, 1.0)
    values = tl.clamp(tl.math.div_rn(xf, scale[:, None]), -QMAX, QMAX)
    if INT8:  # torch.round's ties to even, in two fp32 additions (|values| <= 127)
        values = (values + ROUNDER) - ROUNDER
    return values, scale


@triton.jit
def _append_rows(NEW, CACHE, SCALE, b, t, pos, heads, offs_d, mask_h, D,
                 stride_nb, stride_nh, stride_nt, stride_cb, stride_ch, stride_cs, stride_cd,
                 stride_sb, stride_sh, stride_ss, SCALED: tl.constexpr):
    """Rows (b, heads, t) of NEW into (b, heads, pos) of CACHE (and SCALE for an 8-bit cache); mask_h: (BLOCK_H,)."""
    mask = mask_h[:, None] & (offs_d[None, :] < D)
    x = tl.load(NEW + b * stride_nb + heads[:, None] * stride_nh + t * stride_nt + offs_d[None, :],
                mask=mask, other=0.0)                                         # (BLOCK_H, BLOCK_D)
    dst = CACHE + b * stride_cb + heads[:, None] * stride_ch + pos * stride_cs + offs_d[None, :] * stride_cd
    if SCALED:
        values, scale = quantize_rows(x.to(tl.float32), CACHE.dtype.element_ty == tl.int8)
        tl.store(dst, values.to(CACHE.dtype.element_ty), mask=mask)
        tl.store(SCALE + b * stride_sb + heads * stride_sh + pos * stride_ss, scale, mask=mask_h)
    else:
        tl.store(dst, x.to(CACHE.dtype.element_ty), mask=mask)


@triton.jit
def _append_kv_kernel(
    K_NEW, V_NEW, K, V, K_SCALE, V_SCALE, POS,
    stride_knb, stride_knh, stride_knt, stride_vnb, stride_vnh, stride_vnt,
    stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs, stride_vd,
    stride_ksb, stride_ksh, stride_kss, stride_vsb, stride_vsh, stride_vss,
    HKV, S, D, T,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, SCALED: tl.constexpr, USE_PDL: tl.constexpr,
):
    """K_NEW, V_NEW (B, Hkv, T, D); K, V (B, Hkv, S, D), V's columns stride_vd apart (1, or S when
    sequence-major: each value of a new row then lands in a row of its own); K_SCALE, V_SCALE (B, Hkv, S) with SCALED; POS int64 (B,)."""
    if USE_PDL:  # launched as a programmatic dependent: the new rows come from the kernel before
        gdc_wait()
        gdc_launch_dependents()
    bt = tl.program_id(0)
    b = (bt // T).to(tl.int64)
    t = bt % T
    pos = tl.load(POS + b) + t
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)                 # (BLOCK_H,)
    offs_d = tl.arange(0, BLOCK_D)
    # A position outside the cache masks every head (comparing against a scalar bound: the
    # interpreter mishandles `block & scalar_bool`).
    mask_h = heads < tl.where((pos >= 0) & (pos < S), HKV, 0)
    _append_rows(K_NEW, K, K_SCALE, b, t, pos, heads, offs_d, mask_h, D, stride_knb, stride_knh, stride_knt,
                 stride_kb, stride_kh, stride_ks, 1, stride_ksb, stride_ksh, stride_kss, SCALED)
    _append_rows(V_NEW, V, V_SCALE, b, t, pos, heads, offs_d, mask_h, D, stride_vnb, stride_vnh, stride_vnt,
                 stride_vb, stride_vh, stride_vs, stride_vd, stride_vsb, stride_vsh, stride_vss, SCALED)


def append_blocks(Hkv: int, D: int) -> tuple[int, int]:
    """(heads, head-dim lanes) of one program: a token's heads up to 512 values per tensor. A decode step
    appends one token, and an fp8 cache divides every value with IEEE rounding (a few dozen instructions
    each): all 32 heads of CodeLlama-7B in one program serialized 8,192 of them on one SM, every layer."""
    block_d = max(16, triton.next_power_of_2(D))
    return min(triton.next_power_of_2(Hkv), max(1, 512 // block_d)), block_d


@on_first_tensors_device
def append_kv_triton(k_new, v_new, k_cache, v_cache, input_pos, k_scale=None, v_scale=None, use_pdl=False) -> None:
    """The Triton path of `kernels.append_kv` (any device Triton runs on, the interpreter included);
    `use_pdl`: launched as a programmatic dependent launch (Hopper and later)."""
    B, Hkv, T, S, D, scaled = check_append_inputs(k_new, v_new, k_cache, v_cache, input_pos, k_scale, v_scale)
    block_h, block_d = append_blocks(Hkv, D)
    scales = (k_scale, v_scale) if scaled else (input_pos, input_pos)  # any pointer; never read without SCALED
    scale_strides = [s for t in (k_scale, v_scale) for s in t.stride()] if scaled else [0] * 6
    _append_kv_kernel[(B * T, triton.cdiv(Hkv, block_h))](
        k_new, v_new, k_cache, v_cache, *scales, input_pos,
        *k_new.stride()[:3], *v_new.stride()[:3], *k_cache.stride()[:3], *v_cache.stride(), *scale_strides,
        Hkv, S, D, T, BLOCK_H=block_h, BLOCK_D=block_d, SCALED=scaled, USE_PDL=use_pdl, num_warps=4,
        **({"launch_pdl": True} if use_pdl else {}),
    )

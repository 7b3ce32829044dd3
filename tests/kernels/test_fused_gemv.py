"""The fused dense kernels of a batch-1 decode step against float64 references, on fresh random inputs
with NaN-poisoned outputs (and NaN-poisoned cache slots that must stay untouched)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from kernel_inputs import assert_interpreter_e4m3

from kernels import fused_gemv, fused_gemv_bench, reference
from kernels.fused_gemv import CONFIGS, Config, config_for, gemv, norm_swiglu, qkv_rope, read_configs, use_per_shape
from kernels.interface import as_sequence_major

TOLERANCES = [(torch.float32, 1e-5), (torch.bfloat16, 1.2e-2), (torch.float16, 2e-3)]


@pytest.fixture(params=["first tile early", "no early tile"])
def early_tile(request, monkeypatch):
    """Every kernel kind with its first tile of W loaded before its loop (EARLY_TILE: on a GPU, before the PDL
    wait), or none: the same sums either way."""
    every = frozenset({fused_gemv.PLAIN, fused_gemv.RESIDUAL, fused_gemv.SWIGLU, fused_gemv.ROPE})
    monkeypatch.setattr(fused_gemv, "EARLY_TILE", every if request.param == "first tile early" else frozenset())


def _scale(weight, x, norm_weight=None, eps=1e-5):
    """Per output, the sum of |terms|: rounding errors scale with it, not with the (cancelling) result."""
    xs = reference._normed(x, norm_weight, eps).abs()
    return weight.double().abs() @ xs


def _close(got, want, scale, tol):
    assert not got.isnan().any()
    assert ((got.double() - want).abs() / scale).max().item() < tol
    assert want.abs().max() > 0.1           # a comparison of real numbers, not of zeros


@pytest.mark.parametrize("N, K", [(37, 1000), (128, 2048), (300, 77), (5, 16), (9, 1500)])
@pytest.mark.parametrize("dtype, tol", TOLERANCES)
@pytest.mark.parametrize("fuse", ["plain", "residual", "norm", "norm fp32 out"])
def test_gemv_with_its_prologue_and_epilogue(N, K, dtype, tol, fuse, poisoned_empty, early_tile):
    x, weight = torch.randn(K).to(dtype), torch.randn(N, K).to(dtype)
    kwargs = {"residual": torch.randn(N).to(dtype)} if fuse == "residual" else {}
    if fuse.startswith("norm"):
        kwargs = {"norm_weight": (torch.rand(K) + 0.5).to(dtype), "eps": 1e-5}
    out_dtype = torch.float32 if fuse == "norm fp32 out" else None
    y = gemv(x, weight, out_dtype=out_dtype, **kwargs)
    assert y.shape == (N,) and y.dtype == (out_dtype or dtype)
    scale = _scale(weight, x, kwargs.get("norm_weight"))
    if fuse == "residual":
        scale = scale + kwargs["residual"].double().abs()
    _close(y, reference.fused_gemv(x, weight, **kwargs), scale, tol)


@pytest.mark.parametrize("F, K", [(64, 96), (43, 1000), (11, 5)])
@pytest.mark.parametrize("dtype, tol", TOLERANCES)
@pytest.mark.parametrize("interleave", [False, True])
def test_norm_swiglu_pairs_gate_and_up_rows(F, K, dtype, tol, interleave, poisoned_empty, early_tile):
    x, w13 = torch.randn(K).to(dtype), torch.randn(2 * F, K).to(dtype)
    norm_weight = (torch.rand(K) + 0.5).to(dtype)
    y = norm_swiglu(x, norm_weight, 1e-6, w13, interleave=interleave)
    assert y.shape == (F,) and y.dtype == dtype
    want = reference.norm_swiglu(x, norm_weight, 1e-6, w13)
    gate, up = (_scale(w13, x, norm_weight, 1e-6)).chunk(2)
    gate_ref, up_ref = (w13.double() @ reference._normed(x, norm_weight, 1e-6)).chunk(2)
    # d(silu(g) u) = silu'(g) u dg + silu(g) du, |silu'| <= 1.1: the error budget of each factor.
    bound = 1.1 * up_ref.abs() * gate + torch.nn.functional.silu(gate_ref).abs() * up
    _close(y, want, bound + 1e-30, tol)


@pytest.mark.parametrize("heads, kv_heads, D", [(4, 2, 16), (3, 3, 8), (8, 1, 32)])
@pytest.mark.parametrize("dtype, tol", TOLERANCES)
@pytest.mark.parametrize("interleave", [False, True])
def test_qkv_rope_rotates_q_and_k_and_writes_the_cache_slot(heads, kv_heads, D, dtype, tol, interleave,
                                                            poisoned_empty, early_tile):
    K, S, pos = 80, 12, 7
    x, wqkv = torch.randn(K).to(dtype), torch.randn((heads + 2 * kv_heads) * D, K).to(dtype)
    norm_weight = (torch.rand(K) + 0.5).to(dtype)
    angles = torch.rand(S, D // 2) * 6.3
    cos, sin = torch.cat((angles.cos(), angles.cos()), -1), torch.cat((angles.sin(), angles.sin()), -1)
    k_cache = torch.full((1, kv_heads, S, D), float("nan"), dtype=dtype)
    v_cache = torch.full((1, kv_heads, S, D), float("nan"), dtype=dtype)
    position = torch.tensor([pos])
    y = qkv_rope(x, norm_weight, 1e-5, wqkv, cos, sin, position, heads, kv_heads, cache=(k_cache, v_cache),
                 interleave=interleave)
    want = reference.qkv_rope(x, norm_weight, 1e-5, wqkv, cos, sin, position, heads, kv_heads)
    # A rotated value mixes two sums: bound by both of their |terms|.
    scale = _scale(wqkv, x, norm_weight).view(-1, D)
    scale = (scale + scale.roll(D // 2, dims=-1)).reshape(-1)
    _close(y, want, scale, tol)
    kv = y.view(-1, D)[heads:]                                                        # (2 Hkv, D)
    assert torch.equal(k_cache[0, :, pos], kv[:kv_heads]) and torch.equal(v_cache[0, :, pos], kv[kv_heads:])
    others = [s for s in range(S) if s != pos]
    assert k_cache[0, :, others].isnan().all() and v_cache[0, :, others].isnan().all()
    # A position past the cache writes nothing.
    qkv_rope(x, norm_weight, 1e-5, wqkv, cos, sin, torch.tensor([S + 3]), heads, kv_heads, cache=(k_cache, v_cache))
    assert k_cache[0, :, others].isnan().all() and v_cache[0, :, others].isnan().all()


@pytest.mark.parametrize("cache_dtype", [torch.int8, torch.float8_e4m3fn])
@pytest.mark.parametrize("heads, kv_heads, D, block_n", [(4, 2, 16, 4), (3, 3, 8, 2), (8, 1, 32, 8), (2, 1, 24, 8)])
@pytest.mark.parametrize("interleave, sequence_major_v", [(False, False), (True, False), (False, True)])
def test_qkv_rope_quantizes_k_and_v_into_an_8bit_cache_as_append_kv_does(cache_dtype, heads, kv_heads, D, block_n,
                                                                         interleave, sequence_major_v, poisoned_empty):
    """Several programs per head (block_n rows of D): the head's last one quantizes it. The bytes and scales are
    `kernels.reference.append_kv`'s of the k and v that qkv_rope returns (e4m3 as close as the interpreter's
    conversion allows; on the GPU, models.bench's check compares the fused step's bytes with the append's),
    V stored head-dim-contiguous or sequence-major (as models store 8-bit GQA caches)."""
    from kernels.gemv import tickets
    K, S, dtype = 80, 12, torch.bfloat16
    x, wqkv = torch.randn(K).to(dtype), torch.randn((heads + 2 * kv_heads) * D, K).to(dtype)
    norm_weight = (torch.rand(K) + 0.5).to(dtype)
    angles = torch.rand(S, D // 2) * 6.3
    cos, sin = torch.cat((angles.cos(), angles.cos()), -1), torch.cat((angles.sin(), angles.sin()), -1)
    caches = [torch.randint(-100, 100, (1, kv_heads, S, D), dtype=torch.int8).view(cache_dtype) for _ in range(2)]
    if sequence_major_v:
        caches[1] = as_sequence_major(caches[1])
        assert caches[1].stride(2) == 1
    scales = [torch.full((1, kv_heads, S), float("nan")) for _ in range(2)]
    want_caches, want_scales = [c.clone() for c in caches], [s.clone() for s in scales]
    for pos in (7, 2, S + 3):       # the tickets are ready again for the next call; past the end: nothing written
        position = torch.tensor([pos])
        y = qkv_rope(x, norm_weight, 1e-5, wqkv, cos, sin, position, heads, kv_heads, cache=tuple(caches),
                     scales=tuple(scales), block_n=block_n, interleave=interleave)
        assert not y.isnan().any()
        k, v = (t.view(1, kv_heads, 1, D) for t in y[heads * D:].chunk(2))
        if pos < S:
            reference.append_kv(k, v, *want_caches, position, *want_scales)
        for got, want in zip(scales, want_scales):
            assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(), want.nan_to_num())
        for got, want in zip(caches, want_caches):
            if cache_dtype == torch.int8:
                assert torch.equal(got, want)
            else:
                assert_interpreter_e4m3(got, want)
    assert not tickets(x.device).any()
    assert want_scales[0][0, :, 7].min() > 0 and want_caches[0].view(torch.uint8)[0, :, 7].float().std() > 0


@pytest.mark.parametrize("heads, kv_heads, D, block_n", [(4, 2, 16, 4), (8, 1, 32, 8), (2, 1, 24, 8)])
@pytest.mark.parametrize("interleave", [False, True])
def test_qkv_rope_writes_exact_copies_at_their_ring_slots(heads, kv_heads, D, block_n, interleave):
    """`exact`: k and v as returned, bit for bit, at slot pos below the sink and sink + (pos - sink) % ring past it
    (the ring wrapped twice), pos recorded there; every other slot untouched (NaN-poisoned, positions -7), and
    nothing for a position past the cache. The fp8 cache is written as without them."""
    K, S, sink, ring, dtype = 64, 40, 3, 5, torch.bfloat16
    x, wqkv = torch.randn(K).to(dtype), torch.randn((heads + 2 * kv_heads) * D, K).to(dtype)
    norm_weight = (torch.rand(K) + 0.5).to(dtype)
    angles = torch.rand(S, D // 2) * 6.3
    cos, sin = torch.cat((angles.cos(), angles.cos()), -1), torch.cat((angles.sin(), angles.sin()), -1)
    caches = [torch.randint(-100, 100, (1, kv_heads, S, D), dtype=torch.int8).view(torch.float8_e4m3fn)
              for _ in range(2)]
    scales = [torch.full((1, kv_heads, S), float("nan")) for _ in range(2)]
    n = sink + ring + 2                                           # two slots past the ring: never written
    k_exact, v_exact = (torch.full((1, kv_heads, n, D), float("nan"), dtype=dtype) for _ in range(2))
    exact_pos = torch.full((n,), -7, dtype=torch.int64)
    want_k, want_v, want_pos = k_exact.clone(), v_exact.clone(), exact_pos.clone()
    for pos in (1, 5, 9, 13, 14, 22, S + 2):
        plain_caches = [c.clone() for c in caches]
        plain_scales = [s.clone() for s in scales]
        position = torch.tensor([pos])
        y = qkv_rope(x, norm_weight, 1e-5, wqkv, cos, sin, position, heads, kv_heads, cache=tuple(caches),
                     scales=tuple(scales), block_n=block_n, interleave=interleave,
                     exact=(k_exact, v_exact, exact_pos, sink, ring))
        qkv_rope(x, norm_weight, 1e-5, wqkv, cos, sin, position, heads, kv_heads, cache=tuple(plain_caches),
                 scales=tuple(plain_scales), block_n=block_n, interleave=interleave)
        for got, want in zip(caches + scales, plain_caches + plain_scales):
            assert torch.equal(got.view(torch.uint8) if got.dtype == torch.float8_e4m3fn else got.nan_to_num(),
                               want.view(torch.uint8) if want.dtype == torch.float8_e4m3fn else want.nan_to_num())
        if pos < S:
            slot = pos if pos < sink else sink + (pos - sink) % ring
            k, v = (t.view(kv_heads, D) for t in y[heads * D:].chunk(2))
            want_k[0, :, slot], want_v[0, :, slot], want_pos[slot] = k, v, pos
        for got, want in ((k_exact, want_k), (v_exact, want_v)):
            assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(), want.nan_to_num())
        assert torch.equal(exact_pos, want_pos)
    assert want_pos.tolist()[:sink + ring] == [-7, 1, -7, 13, 14, 5, -7, 22] and k_exact[0, :, 1].abs().max() > 0


# ---- int8 weights: one float32 scale per output row, the sums of the integers scaled before norm and epilogue ----

def _int8(rows, K):
    """Random int8 weights with their float32 scale per row (as models quantize theirs: amax / 127), and the
    dequantized float64 matrix the references multiply by."""
    weight, scale = reference.quantize_int8(torch.randn(rows, K) * (torch.rand(rows, 1) + 0.1))  # rows of all sizes
    return weight, scale, weight.double() * scale.double()[:, None]                         # (rows, K) float64


@pytest.mark.parametrize("N, K", [(37, 1000), (300, 77), (5, 16), (9, 1500)])
@pytest.mark.parametrize("dtype, tol", TOLERANCES)
@pytest.mark.parametrize("fuse", ["plain", "residual", "norm", "norm fp32 out"])
def test_gemv_with_int8_weights_scales_each_rows_sum(N, K, dtype, tol, fuse, poisoned_empty, early_tile):
    x = torch.randn(K).to(dtype)
    weight, scale, dequantized = _int8(N, K)
    kwargs = {"residual": torch.randn(N).to(dtype)} if fuse == "residual" else {}
    if fuse.startswith("norm"):
        kwargs = {"norm_weight": (torch.rand(K) + 0.5).to(dtype), "eps": 1e-5}
    out_dtype = torch.float32 if fuse == "norm fp32 out" else None
    y = gemv(x, weight, weight_scale=scale, out_dtype=out_dtype, **kwargs)
    assert y.shape == (N,) and y.dtype == (out_dtype or dtype)
    bound = _scale(dequantized, x, kwargs.get("norm_weight"))
    if fuse == "residual":
        bound = bound + kwargs["residual"].double().abs()
    _close(y, reference.fused_gemv(x, dequantized, **kwargs), bound, tol)


@pytest.mark.parametrize("F, K", [(64, 96), (43, 1000), (11, 5)])
@pytest.mark.parametrize("dtype, tol", TOLERANCES)
@pytest.mark.parametrize("interleave", [False, True])
def test_norm_swiglu_with_int8_weights(F, K, dtype, tol, interleave, poisoned_empty, early_tile):
    """Gate row i and up row F + i have scales of their own: each sum is scaled before SwiGLU pairs them."""
    x, norm_weight = torch.randn(K).to(dtype), (torch.rand(K) + 0.5).to(dtype)
    w13, scale, dequantized = _int8(2 * F, K)
    y = norm_swiglu(x, norm_weight, 1e-6, w13, weight_scale=scale, interleave=interleave)
    assert y.shape == (F,) and y.dtype == dtype
    gate, up = _scale(dequantized, x, norm_weight, 1e-6).chunk(2)
    gate_ref, up_ref = (dequantized @ reference._normed(x, norm_weight, 1e-6)).chunk(2)
    bound = 1.1 * up_ref.abs() * gate + torch.nn.functional.silu(gate_ref).abs() * up
    _close(y, reference.norm_swiglu(x, norm_weight, 1e-6, dequantized), bound + 1e-30, tol)


def _check_qkv_rope_with_quantized_weights(heads, kv_heads, D, K, dtype, tol, cache_dtype, weight, quantized: dict,
                                           dequantized, magnitude, with_exact: bool = False, **config):
    """qkv_rope on a quantized wqkv (`quantized`: its scales, and offsets for int4) against float64 on `dequantized`,
    its error bounded by `magnitude`'s terms; k and v in the cache (x's dtype, or 8-bit quantized by the head's last
    program as append_kv would), and with_exact: exact copies at their ring slot (sink 2, ring 4)."""
    S, pos = 12, 7
    x, norm_weight = torch.randn(K).to(dtype), (torch.rand(K) + 0.5).to(dtype)
    angles = torch.rand(S, D // 2) * 6.3
    cos, sin = torch.cat((angles.cos(), angles.cos()), -1), torch.cat((angles.sin(), angles.sin()), -1)
    position = torch.tensor([pos])
    if cache_dtype is None:
        caches = [torch.full((1, kv_heads, S, D), float("nan"), dtype=dtype) for _ in range(2)]
        scales = None
    else:
        caches = [torch.zeros(1, kv_heads, S, D, dtype=cache_dtype) for _ in range(2)]
        scales = tuple(torch.full((1, kv_heads, S), float("nan")) for _ in range(2))
    exact = None
    if with_exact:
        exact = (torch.full((1, kv_heads, 6, D), float("nan"), dtype=dtype),
                 torch.full((1, kv_heads, 6, D), float("nan"), dtype=dtype), torch.full((6,), -1), 2, 4)
    y = qkv_rope(x, norm_weight, 1e-5, weight, cos, sin, position, heads, kv_heads, cache=tuple(caches), scales=scales,
                 exact=exact, **quantized, **config)
    want = reference.qkv_rope(x, norm_weight, 1e-5, dequantized, cos, sin, position, heads, kv_heads)
    bound = _scale(magnitude, x, norm_weight).view(-1, D)
    bound = (bound + bound.roll(D // 2, dims=-1)).reshape(-1)
    _close(y, want, bound, tol)
    k, v = (t.view(1, kv_heads, 1, D) for t in y[heads * D:].chunk(2))
    if cache_dtype is None:
        assert torch.equal(caches[0][:, :, pos:pos + 1], k) and torch.equal(caches[1][:, :, pos:pos + 1], v)
    else:
        want_caches = [torch.zeros_like(c) for c in caches]
        want_scales = [torch.full((1, kv_heads, S), float("nan")) for _ in range(2)]
        reference.append_kv(k, v, *want_caches, position, *want_scales)
        assert all(torch.equal(a, b) for a, b in zip(caches, want_caches))
        assert all(torch.equal(a.nan_to_num(), b.nan_to_num()) for a, b in zip(scales, want_scales))
    if with_exact:
        slot = 2 + (pos - 2) % 4                                  # past the sink of 2, in the ring of 4
        assert torch.equal(exact[0][:, :, slot:slot + 1], k) and torch.equal(exact[1][:, :, slot:slot + 1], v)
        assert exact[2][slot].item() == pos and exact[0][:, :, :slot].isnan().all()


@pytest.mark.parametrize("heads, kv_heads, D", [(4, 2, 16), (3, 3, 8)])
@pytest.mark.parametrize("dtype, tol", TOLERANCES)
@pytest.mark.parametrize("interleave", [False, True])
@pytest.mark.parametrize("cache_dtype", [None, torch.int8])
def test_qkv_rope_with_int8_weights(heads, kv_heads, D, dtype, tol, interleave, cache_dtype, poisoned_empty):
    """Rows j and j + D/2 of a head (RoPE's pair) have scales of their own; k and v reach the cache (x's dtype, or
    an 8-bit one quantized by the head's last program) as qkv_rope returns them."""
    K = 80
    wqkv, scale, dequantized = _int8((heads + 2 * kv_heads) * D, K)
    _check_qkv_rope_with_quantized_weights(heads, kv_heads, D, K, dtype, tol, cache_dtype, wqkv, {"weight_scale": scale},
                                           dequantized, dequantized, interleave=interleave,
                                           **({"block_n": 4} if cache_dtype else {}))


def test_int8_weights_without_their_scale_or_with_a_wrong_one_get_one_clear_error():
    x, weight = torch.randn(16), torch.randint(-127, 128, (8, 16), dtype=torch.int8)
    with pytest.raises(ValueError, match="int8 weight needs its weight_scale"):
        gemv(x, weight)
    for scale in (torch.ones(7), torch.ones(8, dtype=torch.float64), torch.ones(16)[::2]):
        with pytest.raises(ValueError, match="one contiguous float32 scale per row"):
            gemv(x, weight, weight_scale=scale)
    with pytest.raises(ValueError, match="goes with an int8 weight"):
        norm_swiglu(x, torch.ones(16), 1e-5, torch.randn(8, 16), weight_scale=torch.ones(8))


# ---- int4 weights: 4-bit nibbles with a float16 scale and offset per group, summed as the one-row int4 GEMV does ----

def _int4(rows, K, G=32):
    """Random weights quantized to kernels/int4_layout.py's 4 bits (rows of all sizes), the float64 matrix the
    references multiply by (q * scale + offset, exact), and each weight's |q * scale| + |offset|: the kernel sums
    q * x and x apart (scale * sum(q x) + offset * sum(x)), so its rounding scales with those terms, not with |w|."""
    from kernels.int4_layout import Int4Weight, dequantize_int4, quantize_int4
    weight = quantize_int4(torch.randn(rows, K) * (torch.rand(rows, 1) + 0.1), G)
    magnitude = Int4Weight(weight.packed, weight.scale.abs(), weight.offset.abs())   # q >= 0: q |scale| + |offset|
    return weight, dequantize_int4(weight, torch.float64), dequantize_int4(magnitude, torch.float64)   # (rows, K)


@pytest.mark.parametrize("N, K, G", [(37, 1056, 32), (300, 96, 32), (5, 4224, 32), (9, 1536, 128), (24, 640, 64)])
@pytest.mark.parametrize("dtype, tol", TOLERANCES)
@pytest.mark.parametrize("fuse", ["plain", "residual", "norm", "norm fp32 out"])
def test_gemv_with_int4_weights_sums_each_groups_scale_and_offset(N, K, G, dtype, tol, fuse, poisoned_empty,
                                                                   early_tile):
    """K past one step of columns (4224 over 4096) and short of one (96), groups of 32, 64 and 128."""
    x = torch.randn(K).to(dtype)
    weight, dequantized, magnitude = _int4(N, K, G)
    kwargs = {"residual": torch.randn(N).to(dtype)} if fuse == "residual" else {}
    if fuse.startswith("norm"):
        kwargs = {"norm_weight": (torch.rand(K) + 0.5).to(dtype), "eps": 1e-5}
    out_dtype = torch.float32 if fuse == "norm fp32 out" else None
    y = gemv(x, weight.packed, weight_scale=weight.scale, weight_offset=weight.offset, out_dtype=out_dtype, **kwargs)
    assert y.shape == (N,) and y.dtype == (out_dtype or dtype)
    bound = _scale(magnitude, x, kwargs.get("norm_weight"))
    if fuse == "residual":
        bound = bound + kwargs["residual"].double().abs()
    _close(y, reference.fused_gemv(x, dequantized, **kwargs), bound, tol)


@pytest.mark.parametrize("F, K", [(64, 96), (43, 1056), (11, 32)])
@pytest.mark.parametrize("dtype, tol", TOLERANCES)
def test_norm_swiglu_with_int4_weights(F, K, dtype, tol, poisoned_empty, early_tile):
    """Gate row i and up row F + i (one interleaved tile) each with their groups' scales and offsets."""
    x, norm_weight = torch.randn(K).to(dtype), (torch.rand(K) + 0.5).to(dtype)
    w13, dequantized, magnitude = _int4(2 * F, K)
    y = norm_swiglu(x, norm_weight, 1e-6, w13.packed, weight_scale=w13.scale, weight_offset=w13.offset,
                    interleave=False)        # (asked for two tiles: int4 takes one)
    assert y.shape == (F,) and y.dtype == dtype
    gate, up = _scale(magnitude, x, norm_weight, 1e-6).chunk(2)
    gate_ref, up_ref = (dequantized @ reference._normed(x, norm_weight, 1e-6)).chunk(2)
    bound = 1.1 * up_ref.abs() * gate + torch.nn.functional.silu(gate_ref).abs() * up
    _close(y, reference.norm_swiglu(x, norm_weight, 1e-6, dequantized), bound + 1e-30, tol)


@pytest.mark.parametrize("heads, kv_heads, D", [(4, 2, 16), (3, 3, 8), (8, 1, 32)])
@pytest.mark.parametrize("dtype, tol", TOLERANCES)
@pytest.mark.parametrize("cache_dtype", [None, torch.int8])
def test_qkv_rope_with_int4_weights(heads, kv_heads, D, dtype, tol, cache_dtype, poisoned_empty):
    """RoPE's pairs of rows from 4-bit weights; k and v reach the cache (x's dtype, or 8-bit quantized by the head's
    last program, with exact copies beside it: int8's bytes compare exactly under the interpreter) as qkv_rope
    returns them."""
    K = 160
    wqkv, dequantized, magnitude = _int4((heads + 2 * kv_heads) * D, K)
    _check_qkv_rope_with_quantized_weights(heads, kv_heads, D, K, dtype, tol, cache_dtype, wqkv.packed,
                                           {"weight_scale": wqkv.scale, "weight_offset": wqkv.offset}, dequantized,
                                           magnitude, with_exact=cache_dtype is not None,
                                           **({"block_n": 4} if cache_dtype else {}))


def test_int4_weights_without_their_scale_and_offset_or_with_wrong_ones_get_one_clear_error():
    from kernels.int4_layout import quantize_int4
    x, weight = torch.randn(64), quantize_int4(torch.randn(8, 64))
    with pytest.raises(ValueError, match="gemv: a 4-bit weight is packed uint8"):
        gemv(x, weight.packed, weight_scale=weight.scale)
    with pytest.raises(ValueError, match="norm_swiglu: a 4-bit weight is packed uint8"):
        norm_swiglu(x, torch.ones(64), 1e-5, torch.randn(8, 64), weight_scale=weight.scale, weight_offset=weight.offset)
    with pytest.raises(ValueError, match="gemv: gemv_int4: offset must be a contiguous float16"):
        gemv(x, weight.packed, weight_scale=weight.scale, weight_offset=weight.offset.float())
    with pytest.raises(ValueError, match="gemv: x must hold one contiguous row of 64"):
        gemv(torch.randn(32), weight.packed, weight_scale=weight.scale, weight_offset=weight.offset)
    with pytest.raises(ValueError, match="groups of 16 columns"):
        gemv(x, weight.packed, weight_scale=torch.ones(8, 4, dtype=torch.float16),
             weight_offset=torch.ones(8, 4, dtype=torch.float16))


def test_bad_inputs_get_one_clear_error():
    x, w = torch.randn(16), torch.randn(8, 16)
    with pytest.raises(ValueError, match="one contiguous row of 16"):
        gemv(torch.randn(2, 16), w)
    with pytest.raises(ValueError, match="share a dtype"):
        gemv(x.double(), w)
    with pytest.raises(ValueError, match="residual"):
        gemv(x, w, residual=torch.randn(7))
    with pytest.raises(ValueError, match="stack gate and up"):
        norm_swiglu(x, torch.ones(16), 1e-5, torch.randn(7, 16))
    with pytest.raises(ValueError, match="scales come with 8-bit caches"):
        qkv_rope(x, torch.ones(16), 1e-5, torch.randn(32, 16), torch.ones(4, 8), torch.ones(4, 8),
                 torch.tensor([0]), 2, 1, scales=(torch.ones(1, 1, 4), torch.ones(1, 1, 4)))
    with pytest.raises(ValueError, match="or 8-bit with scales"):     # scales with a cache of x's dtype
        cache = torch.zeros(1, 1, 4, 8)
        qkv_rope(x, torch.ones(16), 1e-5, torch.randn(32, 16), torch.ones(4, 8), torch.ones(4, 8),
                 torch.tensor([0]), 2, 1, cache=(cache, cache), scales=(torch.ones(1, 1, 4), torch.ones(1, 1, 4)))
    with pytest.raises(ValueError, match="need scales"):
        cache = torch.zeros(1, 1, 4, 8, dtype=torch.int8)
        qkv_rope(x, torch.ones(16), 1e-5, torch.randn(32, 16), torch.ones(4, 8), torch.ones(4, 8),
                 torch.tensor([0]), 2, 1, cache=(cache, cache), scales=(torch.ones(1, 1, 3), torch.ones(1, 1, 4)))
    with pytest.raises(ValueError, match="does not hold"):
        qkv_rope(x, torch.ones(16), 1e-5, torch.randn(40, 16), torch.ones(4, 8), torch.ones(4, 8),
                 torch.tensor([0]), 2, 1)


# ---- launch configurations: per shape, the kind's default otherwise, the file override ------------------

def test_a_shape_entry_wins_over_the_kinds_default_and_other_shapes_fall_back(monkeypatch):
    tuned = Config(4, 512, 2, 4, True)
    monkeypatch.setitem(CONFIGS, ("qkv_rope", 5120, 8192), tuned)
    assert config_for("qkv_rope", 5120, 8192) == tuned
    assert config_for("qkv_rope", 12288, 4096) == CONFIGS["qkv_rope"]          # no entry: the default
    assert config_for("norm_swiglu", 5120, 8192) == CONFIGS["norm_swiglu"]     # entries are per kind too
    previous = use_per_shape(False)                                            # the A/B arm: defaults only
    try:
        assert config_for("qkv_rope", 5120, 8192) == CONFIGS["qkv_rope"]
    finally:
        use_per_shape(previous)
    assert config_for("qkv_rope", 5120, 8192) == tuned


def test_each_kernel_looks_its_configuration_up_by_its_weights_shape(monkeypatch):
    """The launch gets the entry of (kind, weight rows, weight columns): w13's 2F rows, wqkv's all heads."""
    launched = []
    monkeypatch.setattr(fused_gemv, "_launch", lambda config, *a, **k: launched.append(config))
    entries = {("gemv", 12, 8): Config(2, 64, 1, 2), ("gemv_deep", 8, 12): Config(4, 32, 2, 3),
               ("gemv_norm", 10, 8): Config(8, 16, 4, 2), ("norm_swiglu", 12, 8): Config(4, 128, 2, 2, True),
               ("qkv_rope", 32, 8): Config(4, 256, 1, 5, True)}
    for key, config in entries.items():
        monkeypatch.setitem(CONFIGS, key, config)
    x8, x12 = torch.randn(8), torch.randn(12)
    gemv(x8, torch.randn(12, 8), residual=torch.randn(12))
    gemv(x12, torch.randn(8, 12))
    gemv(x8, torch.randn(10, 8), norm_weight=torch.ones(8), out_dtype=torch.float32)
    norm_swiglu(x8, torch.ones(8), 1e-5, torch.randn(12, 8))
    qkv_rope(x8, torch.ones(8), 1e-5, torch.randn(32, 8), torch.ones(4, 8), torch.ones(4, 8), torch.tensor([1]), 2, 1)
    gemv(x8, torch.randn(16, 8))                                               # no entry: the kind's default
    # On the CPU the interpreter takes 16 rows per program (block_n), everything else as configured.
    want = [c._replace(block_n=16) for c in entries.values()] + [CONFIGS["gemv"]._replace(block_n=16)]
    want[-2] = want[-2]._replace(block_n=8)          # 4 pairs per head (D = 8): block_n / 2 must divide them
    assert launched == want


def test_the_configs_file_adds_shape_entries_and_replaces_defaults(tmp_path):
    path = tmp_path / "configs.json"
    path.write_text(json.dumps({"gemv": [4, 512, 4, 3], "qkv_rope 5120x8192": [8, 512, 2, 4, True]}))
    assert read_configs(str(path)) == {"gemv": Config(4, 512, 4, 3), ("qkv_rope", 5120, 8192): Config(8, 512, 2, 4, True)}
    for bad, match in (({"gemm": [2, 1024, 4, 4]}, "unknown kernel kind"), ({"gemv 12x": [2, 1024, 4, 4]}, "kind NxK")):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=match):
            read_configs(str(path))
    # What a process started with CODECOMPLETE_FUSED_CONFIGS sees.
    path.write_text(json.dumps({"gemv": [4, 512, 4, 3], "qkv_rope 5120x8192": [8, 512, 2, 4, True]}))
    program = ("from kernels.fused_gemv import config_for; "
               "print([tuple(config_for(*k)) for k in (('gemv', 1, 1), ('qkv_rope', 5120, 8192), ('qkv_rope', 1, 1))])")
    run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, CODECOMPLETE_FUSED_CONFIGS=str(path)))
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split("\n")[-2] == str([(4, 512, 4, 3, False, False), (8, 512, 2, 4, True, False),
                                               tuple(CONFIGS["qkv_rope"])])


def test_choose_keeps_the_default_unless_the_winner_clears_the_margin():
    default, other = Config(2, 1024, 4, 4), Config(4, 512, 2, 4)
    assert fused_gemv_bench.choose(default, {default: 100.0, other: 99.5}) == (default, 0.0)
    chosen, gain = fused_gemv_bench.choose(default, {default: 100.0, other: 95.0})
    assert chosen == other and gain == pytest.approx(0.05)
    assert fused_gemv_bench.choose(default, {default: 100.0, other: 101.0}) == (default, 0.0)


def test_int8_weights_take_their_own_entries_first(monkeypatch):
    """INT8_CONFIGS (an int8 sweep's entries) before CONFIGS for int8 weights: the shape's, then the kind's; bf16
    weights never see them; launches pick by the weight's dtype."""
    shape, kind_wide = Config(4, 2048, 4, 3), Config(2, 2048, 2, 4)
    monkeypatch.setitem(fused_gemv.INT8_CONFIGS, ("gemv", 12, 8), shape)
    monkeypatch.setitem(fused_gemv.INT8_CONFIGS, "gemv", kind_wide)
    assert config_for("gemv", 12, 8, int8=True) == shape and config_for("gemv", 16, 8, int8=True) == kind_wide
    assert config_for("gemv", 12, 8) == CONFIGS["gemv"]
    assert config_for("gemv_deep", 8, 12, int8=True) == CONFIGS["gemv_deep"]
    launched = []
    monkeypatch.setattr(fused_gemv, "_launch", lambda config, *a, **k: launched.append(config))
    x = torch.randn(8)
    gemv(x, torch.randint(-127, 128, (12, 8), dtype=torch.int8), weight_scale=torch.ones(12))
    gemv(x, torch.randn(12, 8))
    assert launched == [shape._replace(block_n=16), CONFIGS["gemv"]._replace(block_n=16)]


@pytest.mark.parametrize("weights", ["bf16", "int8"])
def test_the_sweep_runs_a_models_rank_shapes_end_to_end(monkeypatch, tmp_path, weights):
    """`python -m kernels.fused_gemv_bench --model M/2` on a tiny preset under the interpreter (timings faked): every
    shape of a rank's step, every configuration checked against float64, the entries file readable."""
    import itertools

    import kernels.bench
    monkeypatch.setitem(fused_gemv_bench.MODELS, "Tiny", (2, 64, 4, 2, 16, 160, 101))
    monkeypatch.setattr(fused_gemv_bench, "SWEEP", {k: v[:2] for k, v in fused_gemv_bench.SWEEP.items()})
    times = itertools.cycle([7.0, 5.0, 6.0, 9.0, 4.0])
    monkeypatch.setattr(kernels.bench, "copy_bandwidth", lambda: 4e12)
    monkeypatch.setattr(kernels.bench, "graph_replay_us", lambda run, replays=30: (run(), next(times))[1])
    out, entries = tmp_path / "sweep.json", tmp_path / "entries.json"
    assert fused_gemv_bench.main(["--model", "Tiny/2", "--device", "cpu", "--json", str(out),
                                  "--write-configs", str(entries), "--weights", weights]) == 0
    result = json.loads(out.read_text())
    assert {r["weights"] for r in result["rows"]} == {weights}
    shapes = {(r["kind"], r["N"], r["K"]) for r in result["rows"]}
    assert shapes == {("qkv_rope", 64, 64), ("gemv", 64, 32), ("norm_swiglu", 160, 64), ("gemv_deep", 64, 80),
                      ("gemv_norm", 51, 64)}
    for row in result["rows"]:
        assert all(c["ok"] and c["max_rel_err"] < 1e-2 for c in row["configs"]), row
        assert row["chosen"]["us"] <= row["default_us"]
    written = read_configs(str(entries))
    assert all(isinstance(k, tuple) and k[0] in fused_gemv.KINDS for k in written)
    assert result["predictions"]["Tiny/2"]["shapes"] == 5


def test_an_int4_sweep_checks_every_configuration_against_float64(monkeypatch, tmp_path):
    """`--weights int4` on a tiny preset (every K a multiple of the group of 32) under the interpreter, timings
    faked: SWEEP_INT4's configurations, each checked against the dequantized weight in float64; the floor counts
    int4's bytes (nibbles, scales and offsets), not bf16's."""
    import itertools

    import kernels.bench
    from kernels.int4_layout import int4_bytes
    monkeypatch.setitem(fused_gemv_bench.MODELS, "Tiny4", (2, 64, 4, 2, 16, 96, 101))
    monkeypatch.setattr(fused_gemv_bench, "SWEEP_INT4", {k: v[:2] for k, v in fused_gemv_bench.SWEEP_INT4.items()})
    times = itertools.cycle([7.0, 5.0, 6.0, 9.0, 4.0])
    monkeypatch.setattr(kernels.bench, "copy_bandwidth", lambda: 4e12)
    monkeypatch.setattr(kernels.bench, "graph_replay_us", lambda run, replays=30: (run(), next(times))[1])
    out = tmp_path / "sweep.json"
    assert fused_gemv_bench.main(["--model", "Tiny4", "--device", "cpu", "--json", str(out), "--weights", "int4"]) == 0
    result = json.loads(out.read_text())
    assert {(r["kind"], r["N"], r["K"]) for r in result["rows"]} == {
        ("qkv_rope", 128, 64), ("gemv", 64, 64), ("norm_swiglu", 192, 64), ("gemv_deep", 64, 96), ("gemv_norm", 101, 64)}
    for row in result["rows"]:
        swept = dict.fromkeys([fused_gemv.INT4_CONFIGS[row["kind"]], *fused_gemv_bench.SWEEP_INT4[row["kind"]]])
        assert row["weights"] == "int4" and len(row["configs"]) == len(swept)      # the default and the sweep's
        assert all(c["ok"] and c["max_rel_err"] < 1e-2 for c in row["configs"]), row
        assert row["floor_us"] == pytest.approx(int4_bytes(row["N"], row["K"]) / 4e12 * 1e6)


def test_an_int8_sweep_that_keeps_the_default_over_a_bf16_entry_writes_it(monkeypatch, tmp_path):
    """Without an int8 entry, int8 weights launch the shape's bf16 entry (`config_for`), not the kind's default the
    sweep measures gains against: a sweep that keeps the default must write it, or the bf16 entry keeps launching
    (CodeLlama-34B's rank-of-2 w2 in Run 38: the bf16 entry 27.4 µs with int8 weights, the default 26.9)."""
    import kernels.bench
    monkeypatch.setitem(fused_gemv_bench.MODELS, "Tiny", (2, 64, 4, 2, 16, 160, 101))
    monkeypatch.setattr(fused_gemv_bench, "SWEEP", {k: v[:1] for k, v in fused_gemv_bench.SWEEP.items()})
    monkeypatch.setattr(fused_gemv_bench, "SWEEP_DP4A", {k: [] for k in fused_gemv_bench.SWEEP_DP4A})
    bf16_entry = Config(8, 256, 2, 2)
    monkeypatch.setitem(fused_gemv.CONFIGS, ("gemv", 64, 32), bf16_entry)
    monkeypatch.setattr(fused_gemv_bench, "choose", lambda default, timed: (default, 0.0))
    monkeypatch.setattr(kernels.bench, "copy_bandwidth", lambda: 4e12)
    monkeypatch.setattr(kernels.bench, "graph_replay_us", lambda run, replays=30: (run(), 5.0)[1])
    entries = tmp_path / "entries.json"
    assert fused_gemv_bench.main(["--model", "Tiny/2", "--device", "cpu", "--write-configs", str(entries),
                                  "--weights", "int8"]) == 0
    assert read_configs(str(entries)) == {("gemv", 64, 32): CONFIGS["gemv"]}


def test_the_per_shape_entries_are_the_h200_sweeps():
    """CONFIGS' per-shape entries are what bench/results/h200-tp-shapes' sweep wrote, no more, no fewer."""
    from pathlib import Path
    swept = read_configs(str(Path(__file__).resolve().parents[2] / "bench/results/h200-tp-shapes/fused-configs.json"))
    assert {k: c for k, c in CONFIGS.items() if isinstance(k, tuple)} == swept


def test_help_says_what_the_sweep_does_in_whole_sentences(capsys):
    """`python -m kernels.fused_gemv_bench --help` (a command the README lists) described it with the first line of
    main's docstring, which stops mid-sentence: "... (CodeLlama-7B's by default; --model"."""
    with pytest.raises(SystemExit) as exit:
        fused_gemv_bench.main(["--help"])
    assert exit.value.code == 0
    description = capsys.readouterr().out.split("\n\n")[1]
    assert description.startswith("Sweep the fused dense kernels") and description.endswith("CONFIGS`)."), description


def test_the_sweep_without_a_gpu_says_so_in_one_line(monkeypatch, capsys):
    """`python -m kernels.fused_gemv_bench` (a README command) on a machine without CUDA ended in torch's
    AssertionError."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit:
        fused_gemv_bench.main([])
    assert exit.value.code == 2 and "needs a CUDA GPU" in capsys.readouterr().err

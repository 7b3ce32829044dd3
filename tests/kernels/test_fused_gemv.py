"""The fused dense kernels of a batch-1 decode step against float64 references, on fresh random inputs
with NaN-poisoned outputs (and NaN-poisoned cache slots that must stay untouched)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from kernels import reference
from kernels.fused_gemv import gemv, norm_swiglu, qkv_rope

TOLERANCES = [(torch.float32, 1e-5), (torch.bfloat16, 1.2e-2), (torch.float16, 2e-3)]


def _scale(weight, x, norm_weight=None, eps=1e-5):
    """Per output, the sum of |terms|: rounding errors scale with it, not with the (cancelling) result."""
    xs = reference._normed(x, norm_weight, eps).abs()
    return weight.double().abs() @ xs


def _close(got, want, scale, tol):
    assert not got.isnan().any()
    assert ((got.double() - want).abs() / scale).max().item() < tol
    assert want.abs().max() > 0.1           # a comparison of real numbers, not of zeros


@pytest.mark.parametrize("N, K", [(37, 1000), (128, 2048), (300, 77), (5, 16)])
@pytest.mark.parametrize("dtype, tol", TOLERANCES)
@pytest.mark.parametrize("fuse", ["plain", "residual", "norm", "norm fp32 out"])
def test_gemv_with_its_prologue_and_epilogue(N, K, dtype, tol, fuse, poisoned_empty):
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
def test_norm_swiglu_pairs_gate_and_up_rows(F, K, dtype, tol, interleave, poisoned_empty):
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
                                                            poisoned_empty):
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
    with pytest.raises(ValueError, match="does not hold"):
        qkv_rope(x, torch.ones(16), 1e-5, torch.randn(40, 16), torch.ones(4, 8), torch.ones(4, 8),
                 torch.tensor([0]), 2, 1)


def test_every_epilogue_compiles_for_sm90():
    """Each fused kernel builds for the H100/H200 in the configuration the step launches it with (a
    subprocess: this session interprets Triton), with 16-byte weight loads and the programmatic-dependent-launch
    wait before it reads x."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", "import json; from kernels.fused_gemv import compile_facts; "
                          "print(json.dumps(compile_facts()))"], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    facts = json.loads(run.stdout.splitlines()[-1])
    assert len(facts) == 5
    for name, f in facts.items():
        assert f["cubin_bytes"] > 0 and f["vector_loads"] >= 2 and f["pdl_wait"], (name, f)

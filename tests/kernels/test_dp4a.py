"""int8 weights by DP4A (kernels/dp4a.py) in the fused GEMVs, under the interpreter: x's words against their
reference, each kernel against float64 within the bound x's words allow, on fresh random inputs with NaN-poisoned
outputs; where DP4A cannot take the inputs, the widened path's exact results."""

import pytest
import torch

from kernels import dp4a, fused_gemv, reference
from kernels.fused_gemv import gemv, norm_swiglu, qkv_rope


@pytest.fixture
def launches(monkeypatch):
    """Each fused launch's answer to whether it multiplies by DP4A, in order."""
    answers = []
    decide = fused_gemv._by_dp4a

    def spy(*args):
        answers.append(decide(*args))
        return answers[-1]
    monkeypatch.setattr(fused_gemv, "_by_dp4a", spy)
    return answers


def _int8(rows, K):
    weight, scale = reference.quantize_int8(torch.randn(rows, K) * (torch.rand(rows, 1) + 0.1))
    return weight, scale, weight.double() * scale.double()[:, None]


def _x(K):
    """bf16 values over six orders of magnitude, a word of zeros among them."""
    x = (torch.randn(K) * torch.exp(2 * torch.randn(K))).to(torch.bfloat16)
    x[4:8] = 0
    return x


def test_words_hold_x_to_the_bound_and_ties_fit_a_byte():
    x = torch.cat([_x(4000).float(), torch.tensor([127.0, 0.5, -1.5, 2.5 / 127 * 127])])   # q = k + 1/2: ties
    high, low, scale = dp4a.quantize_words_reference(x)
    assert high.dtype == low.dtype == torch.int8 and scale.shape == (x.numel() // 4,)
    assert high.abs().max() == 127 and low.abs().max() <= 127 and (low.abs() > 100).any()
    back = scale.double().repeat_interleave(4) * (254 * high.double() + low.double())
    amax = x.double().unflatten(-1, (-1, 4)).abs().amax(-1).repeat_interleave(4)
    assert ((back - x.double()).abs() <= amax / (127 * 500)).all()
    assert (scale[1] == 0).item() and (back[4:8] == 0).all()            # the word of zeros: scale 0, no NaN


@pytest.mark.parametrize("N, K", [(37, 1000), (9, 260), (64, 96)])
@pytest.mark.parametrize("fuse", ["plain", "residual", "norm"])
def test_gemv_by_dp4a_is_within_the_bound_of_xs_words(N, K, fuse, poisoned_empty, launches):
    x = _x(K)
    weight, scale, dequantized = _int8(N, K)
    kwargs = {"residual": torch.randn(N).to(torch.bfloat16)} if fuse == "residual" else {}
    normed = x.double()
    if fuse == "norm":
        norm_weight = (torch.rand(K) + 0.5).to(torch.bfloat16)
        kwargs = {"norm_weight": norm_weight, "eps": 1e-5}
        normed = x.double() * norm_weight.double()       # the words quantized; the rstd scales the sums after
    y = gemv(x, weight, weight_scale=scale, out_dtype=torch.float32, dp4a=True, **kwargs)
    widened = gemv(x, weight, weight_scale=scale, out_dtype=torch.float32, **kwargs)
    want = reference.fused_gemv(x, dequantized, **kwargs)
    rstd = 1 / torch.sqrt(x.double().pow(2).mean() + 1e-5) if fuse == "norm" else 1.0
    residual = kwargs.get("residual")
    terms = dequantized.abs() @ normed.abs() * rstd + (residual.double().abs() if residual is not None else 0)
    bound = dp4a.error_bound(normed, weight, scale) * rstd + terms * K * 2.0 ** -22     # x's words, fp32 sums
    assert not y.isnan().any() and ((y.double() - want).abs() <= bound).all()
    assert launches == [True, False] and not torch.equal(y, widened)     # DP4A ran: x's words are not x
    assert want.abs().max() > 0.1


def _near(got, widened):
    return torch.allclose(got.float(), widened.float(), rtol=2e-2, atol=1e-2 * widened.abs().max().item())


@pytest.mark.parametrize("interleave", [False, True])
def test_norm_swiglu_and_qkv_rope_by_dp4a_pair_their_rows_as_widened(interleave, poisoned_empty, launches):
    """The paired epilogues see the same sums by DP4A: within bf16's rounding of the widened path's outputs."""
    K, F = 96, 24
    x, norm_weight = _x(K), (torch.rand(K) + 0.5).to(torch.bfloat16)
    w13, scale, _ = _int8(2 * F, K)
    got = norm_swiglu(x, norm_weight, 1e-6, w13, weight_scale=scale, interleave=interleave, dp4a=True)
    widened = norm_swiglu(x, norm_weight, 1e-6, w13, weight_scale=scale, interleave=interleave)
    assert not got.isnan().any() and _near(got, widened)
    heads, kv_heads, D, S, pos = 4, 2, 16, 12, 7
    wqkv, scale, _ = _int8((heads + 2 * kv_heads) * D, K)
    angles = torch.rand(S, D // 2) * 6.3
    cos, sin = torch.cat((angles.cos(), angles.cos()), -1), torch.cat((angles.sin(), angles.sin()), -1)
    args = (x, norm_weight, 1e-5, wqkv, cos, sin, torch.tensor([pos]), heads, kv_heads)
    got = qkv_rope(*args, weight_scale=scale, interleave=interleave, dp4a=True)
    widened = qkv_rope(*args, weight_scale=scale, interleave=interleave)
    assert not got.isnan().any() and _near(got, widened)
    assert launches == [True, False, True, False]


@pytest.mark.parametrize("dtype, K", [(torch.float32, 96), (torch.float16, 96), (torch.bfloat16, 98)])
def test_where_dp4a_cannot_take_the_inputs_the_weights_are_widened(dtype, K, poisoned_empty, launches):
    """x not bf16, or K not a multiple of 4: `supported` says why, and a DP4A configuration launches widened."""
    x = torch.randn(K).to(dtype)
    weight, scale, _ = _int8(12, K)
    assert dp4a.supported(x, weight) is not None
    assert torch.equal(gemv(x, weight, weight_scale=scale, dp4a=True), gemv(x, weight, weight_scale=scale))
    assert launches == [False, False]

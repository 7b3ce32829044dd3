"""The decode GEMV against a float64 reference, on fresh random inputs with NaN-poisoned outputs. Its sm_90
build: tests/kernels/test_compile_sm90.py (compile_check builds it)."""

import pytest
import torch

from kernels import gemv as gemv_module
from kernels.gemv import K_PER_PROGRAM, SHAPES, gemv, gemv_config


def _check(y, x, weight, dtype, tol):
    assert y.shape == (1, weight.shape[0]) and y.dtype == dtype and not y.isnan().any()
    ref = x.double() @ weight.double().T
    # Errors scale with the sum of |terms|, not with the (possibly cancelling) result.
    scale = x.double().abs() @ weight.double().abs().T
    assert ((y.double() - ref).abs() / scale).max().item() < tol


@pytest.mark.parametrize("N, K", [(1, 16), (37, 1000), (128, 2048), (300, 77)])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_gemv_matches_float64(N, K, dtype, tol, poisoned_empty):
    x = torch.randn(1, K).to(dtype)
    weight = torch.randn(N, K).to(dtype)
    _check(gemv(x, weight), x, weight, dtype, tol)


@pytest.mark.parametrize("N, K, block_k, split_k", [
    (37, 1000, 128, 3),      # uneven ranges (3, 3, 2 chunks), the last chunk partly masked, a partial row block
    (5, 640, 64, 10),        # one chunk per range
    (64, 300, 128, 5),       # more ranges asked than chunks: 3 ranges, no empty one
])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_split_k_matches_float64_and_leaves_its_tickets_at_zero(N, K, block_k, split_k, dtype, tol, poisoned_empty):
    """The partial sums of every K range meet in the last program of each row block (NaN-poisoned
    workspace: a partial read before it is written shows), which resets the counters for the next call."""
    x = torch.randn(1, K).to(dtype)
    weight = torch.randn(N, K).to(dtype)
    first = gemv(x, weight, block_k=block_k, split_k=split_k)
    _check(first, x, weight, dtype, tol)
    assert not gemv_module._counters[x.device].any()
    x2, weight2 = torch.randn(1, K).to(dtype), torch.randn(N, K).to(dtype)   # a second launch on new data
    _check(gemv(x2, weight2, block_k=block_k, split_k=split_k), x2, weight2, dtype, tol)
    assert torch.equal(gemv(x, weight, block_k=block_k, split_k=split_k), first)   # the same bits again


def test_a_deep_projection_is_split_by_default(poisoned_empty):
    """N < K and K beyond one program's columns: gemv_config splits it (here into 3 ranges)."""
    N, K = 6, 3 * K_PER_PROGRAM - 100
    assert gemv_config(N, K)[0] == 3
    x, weight = torch.randn(1, K), torch.randn(N, K)
    _check(gemv(x, weight), x, weight, torch.float32, 1e-5)


def test_split_choices_for_the_real_projections():
    """Wide projections keep the unsplit kernel; deep ones get the fewest ranges of whole 1024-column
    chunks with at most K_PER_PROGRAM columns each, covering K with none empty."""
    for name, (N, K) in SHAPES.items():
        split, per = gemv_config(N, K)
        if N >= K or K <= K_PER_PROGRAM:
            assert (split, per) == (1, K), name
            continue
        assert per % 1024 == 0 and per <= K_PER_PROGRAM, name
        assert (split - 1) * per < K <= split * per, name
    assert gemv_config(*SHAPES["34B/2 wqkv"])[0] == 2 and gemv_config(*SHAPES["34B/2 w2"])[0] == 3
    assert gemv_config(*SHAPES["34B w2"])[0] == 6 and gemv_config(*SHAPES["70B/2 w2"])[0] == 4


def test_gemv_custom_op_and_strided_weight(poisoned_empty):
    """The op torch.compile'd code calls; a weight that is a row slice of a fused matrix (as wqkv's q)."""
    fused = torch.randn(96, 64)
    x = torch.randn(1, 64)
    y = torch.ops.codecomplete.gemv(x, fused[32:80])
    torch.testing.assert_close(y, x @ fused[32:80].T, rtol=1e-5, atol=1e-5)


def _int8_weight(N, K):
    """Random int8 rows with float32 scales (amax / 127 per row), and the float64 matrix they stand for."""
    from kernels.reference import quantize_int8
    weight, scale = quantize_int8(torch.randn(N, K) * (torch.rand(N, 1) + 0.1))
    return weight, scale, weight.double() * scale.double()[:, None]


@pytest.mark.parametrize("N, K, block_k, split_k", [(1, 16, 1024, None), (37, 1000, 1024, None), (300, 77, 1024, None),
                                                    (37, 1000, 128, 3), (64, 300, 128, 5)])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_int8_weights_scale_each_rows_sum(N, K, block_k, split_k, dtype, tol, poisoned_empty):
    """An int8 weight with a float32 scale per row, unsplit and split-K (the scale applied once the partials meet),
    against float64 of the dequantized weights; the custom op the model's projections call."""
    x = torch.randn(1, K).to(dtype)
    weight, scale, dequantized = _int8_weight(N, K)
    y = gemv(x, weight, weight_scale=scale, block_k=block_k, split_k=split_k)
    _check(y, x, dequantized, dtype, tol)
    if split_k:
        assert not gemv_module._counters[x.device].any()
    else:
        _check(torch.ops.codecomplete.gemv_int8(x, weight, scale), x, dequantized, dtype, tol)


def test_int8_weights_take_their_scale_and_only_theirs():
    x, weight = torch.randn(1, 16), torch.randint(-127, 128, (8, 16), dtype=torch.int8)
    for kwargs in ({}, {"weight_scale": torch.ones(7)}, {"weight_scale": torch.ones(8).double()}):
        with pytest.raises(ValueError, match="an int8 weight takes a weight_scale"):
            gemv(x, weight, **kwargs)
    with pytest.raises(ValueError, match="other weights none"):
        gemv(x, torch.randn(8, 16), weight_scale=torch.ones(8))


def test_gemv_rejects_batches():
    with pytest.raises(ValueError, match="gemv takes x"):
        gemv(torch.randn(2, 8), torch.randn(4, 8))


def test_the_benchmark_without_a_gpu_says_so_in_one_line(monkeypatch, capsys):
    """`python -m kernels.gemv` (a README command) on a machine without CUDA ended in torch's AssertionError."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit:
        gemv_module.main([])
    assert exit.value.code == 2
    assert capsys.readouterr().err == "kernels.gemv needs a CUDA GPU: it times the GEMV there.\n"

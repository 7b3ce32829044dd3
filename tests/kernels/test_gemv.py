"""The decode GEMV against a float64 reference, on fresh random inputs with NaN-poisoned outputs."""

import pytest
import torch

from kernels.gemv import gemv


@pytest.mark.parametrize("N, K", [(1, 16), (37, 1000), (128, 2048), (300, 77)])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_gemv_matches_float64(N, K, dtype, tol, poisoned_empty):
    x = torch.randn(1, K).to(dtype)
    weight = torch.randn(N, K).to(dtype)
    y = gemv(x, weight)
    assert y.shape == (1, N) and y.dtype == dtype and not y.isnan().any()
    ref = x.double() @ weight.double().T
    # Errors scale with the sum of |terms|, not with the (possibly cancelling) result.
    scale = x.double().abs() @ weight.double().abs().T
    assert ((y.double() - ref).abs() / scale).max().item() < tol


def test_gemv_custom_op_and_strided_weight(poisoned_empty):
    """The op torch.compile'd code calls; a weight that is a row slice of a fused matrix (as wqkv's q)."""
    fused = torch.randn(96, 64)
    x = torch.randn(1, 64)
    y = torch.ops.codecomplete.gemv(x, fused[32:80])
    torch.testing.assert_close(y, x @ fused[32:80].T, rtol=1e-5, atol=1e-5)


def test_gemv_rejects_batches():
    with pytest.raises(ValueError, match="gemv takes x"):
        gemv(torch.randn(2, 8), torch.randn(4, 8))

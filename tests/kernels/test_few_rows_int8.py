"""The few-row int8-weight projection (kernels/few_rows_int8.py) against float64 of the dequantized weight, on fresh
random inputs with NaN-poisoned outputs, in the interpreter. Its sm_90 build: tests/kernels/test_compile_sm90.py (compile_check builds it)."""

import pytest
import torch

from kernels.few_rows_int8 import MAX_ROWS, few_rows_int8


def _int8_weight(N, K):
    """Random int8 rows with float32 scales (amax / 127 per row), and the float64 matrix they stand for."""
    from kernels.reference import quantize_int8
    weight, scale = quantize_int8(torch.randn(N, K) * (torch.rand(N, 1) + 0.1))
    return weight, scale, weight.double() * scale.double()[:, None]


def _relative_error(y, x, dequantized):
    """Largest |y - y64| over the sum of |terms| of its output (rounding scales with the terms, not the sum)."""
    want = x.double() @ dequantized.T
    terms = x.double().abs() @ dequantized.abs().T
    return ((y.double() - want).abs() / terms).max().item()


@pytest.mark.parametrize("M", [2, 3, 9, 16])
@pytest.mark.parametrize("N, K, block_n, block_k", [
    (37, 1000, 16, 128),     # a partial row block, 8 chunks the last of them partly masked
    (300, 77, 32, 64),       # K shorter than two chunks, 10 row blocks the last partial
    (16, 256, 16, 256),      # whole tiles, one chunk
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matches_float64_of_the_dequantized_weight(M, N, K, block_n, block_k, dtype, poisoned_empty):
    """Within a small multiple of PyTorch's own error in `dtype` (x @ the weight dequantized to `dtype`), plus one
    rounding of the output (the interpreter truncates its fp32 -> 16-bit stores)."""
    x = torch.randn(M, K).to(dtype)
    weight, scale, dequantized = _int8_weight(N, K)
    y = few_rows_int8(x, weight, scale, block_n=block_n, block_k=block_k)
    assert y.shape == (M, N) and y.dtype == dtype and not y.isnan().any()
    torch_error = _relative_error(x @ (weight.to(dtype) * scale.to(dtype)[:, None]).T, x, dequantized)
    assert _relative_error(y, x, dequantized) <= 4 * torch_error + torch.finfo(dtype).eps


def test_the_default_configuration_and_strided_inputs(poisoned_empty):
    """config's launch, a row slice of a wider x (row stride > K) and a weight that is a row slice of a fused matrix
    (as wqkv's q), through the custom op the model calls."""
    import kernels.few_rows_int8  # noqa: F401  (registers the op)
    wide = torch.randn(5, 3, 96)[:, 1]                                   # (5, 96), row stride 288
    weight, scale, dequantized = _int8_weight(120, 96)
    y = torch.ops.codecomplete.few_rows_int8(wide, weight[40:100], scale[40:100])
    assert y.shape == (5, 60) and _relative_error(y, wide, dequantized[40:100]) < 1e-6


def test_the_op_is_well_formed():
    """Its schema and fake (what torch.compile traces) agree with the kernel."""
    import kernels.few_rows_int8  # noqa: F401
    weight, scale, _ = _int8_weight(24, 40)
    torch.library.opcheck(torch.ops.codecomplete.few_rows_int8, (torch.randn(4, 40), weight, scale),
                          test_utils=("test_schema", "test_faketensor"))


def test_invalid_inputs_are_refused_with_a_clear_message():
    weight, scale, _ = _int8_weight(8, 16)
    x = torch.randn(3, 16)
    for args, says in (((torch.randn(16), weight, scale), r"takes x \(M, K\) and weight \(N, K\)"),
                       ((torch.randn(3, 12), weight, scale), r"takes x \(M, K\) and weight \(N, K\)"),
                       ((torch.randn(MAX_ROWS + 1, 16), weight, scale), "takes 1 to 16 rows of x, got 17"),
                       ((x.double(), weight, scale), "x must be float32, bfloat16 or float16"),
                       ((x, weight.float(), scale), "weight must be int8"),
                       ((x, weight.t().contiguous().t(), scale), "weight must be int8 with a contiguous last dim"),
                       ((x, weight, scale[:7]), r"one contiguous float32 per row of weight \(8,\)"),
                       ((x, weight, scale.double()), "weight_scale must be one contiguous float32"),
                       ((x, weight, scale.repeat(2)[::2]), "weight_scale must be one contiguous float32")):
        with pytest.raises(ValueError, match=says):
            few_rows_int8(*args)

"""The 4-bit-weight GEMV (kernels/gemv_int4.py) against float64 of the dequantized weight (kernels/int4_layout.py),
on fresh random inputs with NaN-poisoned outputs, in the interpreter: one row (the CUDA-core kernel, its denormal
nibbles and Triton's conversion), several rows (the dot kernel over wide dequantized tiles), split-K on and off,
ragged row blocks."""

import pytest
import torch

from kernels.gemv_int4 import MAX_ROWS, gemv_int4
from kernels.int4_layout import dequantize_int4, quantize_int4


def _int4_weight(N, K):
    """A random weight (rows of different spreads and means, nothing zero) quantized to int4, and the float64
    matrix it stands for."""
    w = torch.randn(N, K) * (torch.rand(N, 1) + 0.1) + 0.2 * torch.randn(N, 1)
    weight = quantize_int4(w)
    return weight, dequantize_int4(weight, torch.float64)


def _x(M, K, dtype):
    """Random x with no zero entry (a kernel that drops a column cannot hide behind one)."""
    x = torch.randn(M, K)
    return torch.where(x.abs() < 1e-3, torch.full_like(x, 1e-3), x).to(dtype)


def _relative_error(y, x, dequantized):
    """Largest |y - y64| over the sum of |terms| of its output (rounding scales with the terms, not the sum)."""
    want = x.double() @ dequantized.T
    terms = x.double().abs() @ dequantized.abs().T
    return ((y.double() - want).abs() / terms).max().item()


def _check(y, x, dequantized, N):
    """Within a small multiple of PyTorch's own error in x's dtype (x @ the weight dequantized to that dtype), plus
    one rounding of the output (the interpreter truncates its fp32 -> 16-bit stores)."""
    M, dtype = x.shape[0], x.dtype
    assert y.shape == (M, N) and y.dtype == dtype and not y.isnan().any()
    torch_error = _relative_error(x @ dequantized.to(dtype).T, x, dequantized)
    assert _relative_error(y, x, dequantized) <= 4 * torch_error + torch.finfo(dtype).eps


def _quantize_with_group(N, K, G):
    """A random (N, K) weight (rows of different spreads) quantized in groups of G columns."""
    w = torch.randn(N, K) * (torch.rand(N, 1) + 0.1)
    return quantize_int4(w, G)


@pytest.mark.parametrize("G, dtype, split_k, denormal", [
    (128, torch.bfloat16, 1, True),
    (128, torch.float32, 4, True),       # 4 chunks of 128 columns in 4 ranges
    (64, torch.float16, 2, True),
    (64, torch.float32, 1, True),
    (32, torch.bfloat16, 3, True),       # 4 chunks in ranges of 2 (no empty range)
    (32, torch.float16, 1, True),
    (128, torch.float32, 2, False),      # Triton's own nibble conversion (the A/B arm)
])
def test_one_row_matches_float64(G, dtype, split_k, denormal, poisoned_empty):
    """The row kernel: 19 rows in blocks of 8 (the last partial), K = 512 in steps of 128 columns (the groups of
    one step are 1, 2 or 4), split-K forced on or off."""
    N, K = 19, 512
    weight = _quantize_with_group(N, K, G)
    dequantized = dequantize_int4(weight, torch.float64)
    x = _x(1, K, dtype)
    y = gemv_int4(x, *weight, kernel="row", block_n=8, block_k=128, split_k=split_k, denormal=denormal)
    _check(y, x, dequantized, N)


@pytest.mark.parametrize("M, G, dtype, split_k, block_k", [
    (2, 128, torch.bfloat16, 1, 128),
    (5, 64, torch.float16, 3, 128),      # 4 steps of 2 groups in ranges of 2 steps
    (16, 32, torch.float32, 1, 256),     # 8 groups a step
    (5, 128, torch.float32, 2, 256),
    (16, 64, torch.bfloat16, 4, 64),     # one group a step
    (1, 32, torch.float16, 2, 128),      # one row through the dot kernel too
    (3, 128, torch.bfloat16, 1, 1024),   # a step of 8 groups over K's 4: half of it past the end
    (4, 32, torch.float16, 3, 128),      # 16 groups in 4 steps, 3 ranges asked: 2 of 2 steps
    (8, 32, torch.bfloat16, 1, 32),      # the narrowest step: one word of each of 4 threads
])
def test_several_rows_match_float64(M, G, dtype, split_k, block_k, poisoned_empty):
    """The dot kernel: 37 rows in blocks of 16 (the last partial), W's tile of block_k columns dequantized a step
    (several groups, each its own scale and offset), split-K forced on or off."""
    N, K = 37, 512
    weight = _quantize_with_group(N, K, G)
    dequantized = dequantize_int4(weight, torch.float64)
    x = _x(M, K, dtype)
    y = gemv_int4(x, *weight, kernel="rows", block_n=16, block_k=block_k, split_k=split_k)
    _check(y, x, dequantized, N)


@pytest.mark.parametrize("G, dtype, split_k", [(32, torch.bfloat16, 1), (64, torch.float16, 2),
                                               (32, torch.float32, 3)])
def test_several_rows_over_groups_of_very_different_scales(G, dtype, split_k, poisoned_empty):
    """A step's tile spans 8 (or 4) groups whose scales and offsets differ by powers of ten, and K = 15 groups is not
    a whole number of steps (the last step's groups past K load zeros): a group that took a neighbour's scale or
    offset, or a column that met the wrong column of x, is off by orders of magnitude, not by rounding."""
    N, K = 20, 15 * G
    spread = 10.0 ** (torch.arange(K // G) % 4 - 2).repeat_interleave(G)          # (K,) 0.01 .. 10 by group
    w = torch.randn(N, K) * spread + 3 * spread * torch.randn(N, 1)
    weight = quantize_int4(w, G)
    dequantized = dequantize_int4(weight, torch.float64)
    x = _x(5, K, dtype)
    y = gemv_int4(x, *weight, kernel="rows", block_n=16, block_k=256, split_k=split_k)
    _check(y, x, dequantized, N)


def test_the_plan_dequantizes_wide_tiles_for_several_rows():
    """Several rows step ROWS_BLOCK_K columns at a time whatever the group (a group at least), one dot a step; a
    split counts whole steps."""
    from kernels.gemv_int4 import ROWS_BLOCK_K, ROWS_BLOCK_N, plan

    for G in (32, 64, 128):
        chosen = plan(9, 44032, 8192, G)
        assert chosen.kernel == "rows" and (chosen.block_n, chosen.block_k) == (ROWS_BLOCK_N, max(ROWS_BLOCK_K, G))
    assert ROWS_BLOCK_K >= 128          # a wide tile: 4 groups of 32 at least
    deep = plan(9, 8192, 22016, 32)
    assert deep.split_k > 1 and deep.k_per_split % deep.block_k == 0


@pytest.mark.parametrize("M", [1, 5])
def test_the_op_with_its_own_plan_and_strided_inputs(M, poisoned_empty):
    """torch.ops.codecomplete.gemv_int4 as models call it (the plan's launch), x a row slice of a wider tensor
    (row stride > K) and the weight a row slice of a fused matrix (as wqkv's q)."""
    K = 256
    wide = _x(M * 3, K, torch.bfloat16).reshape(M, 3, K)[:, 1]                  # (M, K), row stride 3K
    weight, dequantized = _int4_weight(40, K)
    sliced = [t[10:30] for t in weight]
    y = torch.ops.codecomplete.gemv_int4(wide, *sliced)
    _check(y, wide, dequantized[10:30], 20)


def test_x_far_from_one_stays_exact():
    """The denormal nibbles scale x by up to 2^75 and the products by 2^-74: x entries near the documented edges
    (2^-52 and 2^53 in magnitude) give float32's error, not an overflow or lost bits."""
    N, K = 9, 256
    weight, dequantized = _int4_weight(N, K)
    for magnitude in (2.0 ** 50, 2.0 ** -50):           # (|randn| < 4: x within 2^52 and 2^-52)
        x = _x(1, K, torch.float32) * magnitude
        y = gemv_int4(x, *weight, block_k=256)
        _check(y, x, dequantized, N)


def test_the_op_is_well_formed():
    """Its schema and fake (what torch.compile traces) agree with the kernel."""
    weight, _ = _int4_weight(24, 128)
    torch.library.opcheck(torch.ops.codecomplete.gemv_int4, (torch.randn(3, 128), *weight),
                          test_utils=("test_schema", "test_faketensor"))


def test_invalid_inputs_are_refused_with_a_clear_message():
    weight = _quantize_with_group(8, 256, 128)
    packed, scale, offset = weight                                   # (8, 128), (8, 2), (8, 2): G = 128
    x = torch.randn(3, 256)
    for args, kwargs, says in (
            ((torch.randn(256), packed, scale, offset), {}, r"takes x \(M, K\) and packed \(N, K // 2\)"),
            ((torch.randn(3, 260), packed, scale, offset), {}, r"takes x \(M, K\) and packed \(N, K // 2\)"),
            ((torch.randn(MAX_ROWS + 1, 256), packed, scale, offset), {}, "takes 1 to 16 rows of x, got 17"),
            ((torch.randn(0, 256), packed, scale, offset), {}, "takes 1 to 16 rows of x, got 0"),
            ((x.double(), packed, scale, offset), {}, "x must be float32, bfloat16 or float16"),
            ((x, packed.to(torch.int8), scale, offset), {}, "packed must be a contiguous uint8"),
            ((x, torch.cat([packed, packed], 1)[:, ::2], scale, offset), {}, "packed must be a contiguous uint8"),
            ((x, packed, scale[:7], offset), {}, r"scale must be \(N, K // G\) = \(8, K // G\)"),
            ((x, packed, torch.cat([scale, scale[:, :1]], 1), offset), {}, "with G dividing K = 256"),
            ((torch.randn(3, 512), torch.cat([packed, packed], 1), scale, offset), {},
             "groups of 256 columns .* the layout's are 128, 64, 32"),
            ((x, packed, scale.float(), offset), {}, "scale must be a contiguous float16"),
            ((x, packed, scale, offset[:, :1]), {}, "offset must be a contiguous float16"),
            ((x, packed, scale, offset.t().contiguous().t()), {}, "offset must be a contiguous float16"),
            ((x, packed, scale, offset), {"kernel": "row"}, r"kernel 'row': 'row' \(one row of x\) or 'rows'"),
            ((x[:1], packed, scale, offset), {"block_k": 384}, "must be powers of two")):
        with pytest.raises(ValueError, match=says):
            gemv_int4(*args, **kwargs)


def test_cpu_tensors_outside_the_interpreter_are_refused(monkeypatch):
    """Off the GPU without TRITON_INTERPRET, Triton would fail with a traceback: one clear line instead."""
    weight, _ = _int4_weight(8, 128)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match=r"runs on CUDA tensors \(or in Triton's interpreter\), not on cpu"):
        gemv_int4(torch.randn(1, 128), *weight)


def test_the_benchmark_checks_and_times_every_format(capsys):
    """`python -m kernels.gemv_int4`'s work for one shape (kernels.gemv_int4.measure), in the interpreter with a
    stand-in timer that runs each timed callable once: int4's check passes for every launch of the sweep, every
    format's call runs, and the lines and the table print (a bug here would cost a GPU run)."""
    from kernels.gemv_int4 import ROW_SWEEP, ROWS_SWEEP, measure, report, summary
    timed = []

    def timer(run, replays):
        run()
        timed.append(replays)
        return 2.0
    row = measure("7B wo", 4, 256, timer=timer, device="cpu", replays=3, sweep=True)
    launches = 1 + len(ROW_SWEEP) + 1 + 1 + len(ROWS_SWEEP)       # plan, sweep, I2F arm; at 8 rows plan, sweep
    assert row["wrong"] == [] and len(row["errors"]) == launches and "8 rows plan" in row["errors"]
    assert timed == [3] * (launches + 2 + 3)      # and int8 (GEMV, few rows), bf16 (cuBLAS at 1 and 8 rows, GEMV)
    report(row, sweep=True)
    summary([row])
    out = capsys.readouterr().out
    assert f"int4 check against float32: all {launches} launches within 1e-2" in out and "int8/int4" in out


def test_the_benchmark_says_when_a_result_is_wrong(monkeypatch, capsys):
    """The check can fail: a GEMV that returned zeros is reported WRONG (and main would exit 1)."""
    import kernels.gemv_int4 as module
    monkeypatch.setattr(module, "gemv_int4", lambda x, *weight, **kw: torch.zeros(x.shape[0], weight[0].shape[0],
                                                                                   dtype=x.dtype))
    row = module.measure("7B wo", 4, 256, timer=lambda run, replays: (run(), 2.0)[1], device="cpu", sweep=False)
    assert row["wrong"] == ["plan", "8 rows plan"]
    module.report(row, sweep=False)
    assert "WRONG plan" in capsys.readouterr().out


def test_the_benchmark_needs_a_gpu(capsys):
    from kernels.gemv_int4 import main
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: main would run")
    with pytest.raises(SystemExit) as exit:
        main(["--only", "7B wo"])
    assert exit.value.code == 2 and "needs a CUDA GPU" in capsys.readouterr().err

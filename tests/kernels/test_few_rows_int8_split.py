"""Split-K in the few-row int8 kernel (kernels/few_rows_int8.py): forced and planned splits against float64 of the
dequantized weight on fresh random inputs with NaN-poisoned outputs (and partials), in the interpreter; the ticket
counters back at zero after every call; the plan's rule."""

import json

import pytest
import torch
import triton

import kernels.few_rows_int8 as few_rows
from kernels.few_rows_int8 import DEFAULT_SMS, PROGRAMS_PER_SM, few_rows_int8, plan, read_plans, split_for
import kernels.gemv
from kernels.gemv import tickets
from test_few_rows_int8 import _int8_weight, _relative_error


@pytest.fixture
def launches(monkeypatch):
    """The grids the kernel is launched with, call by call: (row blocks, splits)."""
    grids = []
    kernel = few_rows._few_rows_int8_kernel

    class Spy:
        def __getitem__(self, grid):
            grids.append(tuple(grid))
            return kernel[grid]
    monkeypatch.setattr(few_rows, "_few_rows_int8_kernel", Spy())
    return grids


def _counters_are_zero():
    return not tickets(torch.device("cpu")).any()


@pytest.mark.parametrize("M", [2, 7, 16])
@pytest.mark.parametrize("N, K, block_n, block_k, split, ranges", [
    (37, 1000, 16, 64, 3, 3),      # 16 chunks, 6 a range: the last range 232 columns, its last chunk 40
    (37, 1000, 16, 64, 5, 4),      # 5 asked, 4 ranges of 4 chunks (no empty range)
    (37, 1000, 16, 64, 16, 16),    # one chunk a range, the last one partly masked
    (130, 333, 32, 32, 2, 2),      # a partial row block (2 rows), 11 chunks: ranges of 6 and 5
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_forced_splits_match_float64(M, N, K, block_n, block_k, split, ranges, dtype, poisoned_empty, launches):
    """Within a small multiple of PyTorch's own error in `dtype`, plus one rounding of the output (the interpreter
    truncates its fp32 -> 16-bit stores); the partials NaN-poisoned like y; counters at zero afterwards."""
    x = torch.randn(M, K).to(dtype)
    weight, scale, dequantized = _int8_weight(N, K)
    y = few_rows_int8(x, weight, scale, block_n=block_n, block_k=block_k, split_k=split)
    assert launches == [(triton.cdiv(N, block_n), ranges)]
    assert y.shape == (M, N) and y.dtype == dtype and not y.isnan().any()
    torch_error = _relative_error(x @ (weight.to(dtype) * scale.to(dtype)[:, None]).T, x, dequantized)
    assert _relative_error(y, x, dequantized) <= 4 * torch_error + torch.finfo(dtype).eps
    assert _counters_are_zero()


def test_the_planned_split_through_the_op_on_a_strided_slice(poisoned_empty, launches):
    """A deep weight (64 rows, 2000 columns) takes the plan's split by default, through the custom op the model
    calls, with x a row slice of a wider tensor and the weight rows of a fused matrix; twice in a row (the
    counters reset by the first call serve the second)."""
    import kernels.few_rows_int8  # noqa: F401  (registers the op)
    wide = torch.randn(9, 3, 2000)[:, 2]                                 # (9, 2000), row stride 6000
    weight, scale, dequantized = _int8_weight(100, 2000)
    chosen = plan(64, 2000)
    assert chosen.split_k > 1
    for _ in range(2):
        y = torch.ops.codecomplete.few_rows_int8(wide, weight[20:84], scale[20:84])
        assert y.shape == (9, 64) and _relative_error(y, wide, dequantized[20:84]) < 1e-6
        assert _counters_are_zero()
    assert launches == [(triton.cdiv(64, chosen.block_n), chosen.split_k)] * 2


def test_before_the_tickets_exist_under_a_capture_it_runs_unsplit(monkeypatch, poisoned_empty, launches):
    """`tickets` answers None while a CUDA graph is captured before they exist: one range, the same result."""
    monkeypatch.setattr(kernels.gemv, "tickets", lambda device: None)     # (what split_launch asks)
    x = torch.randn(4, 1000)
    weight, scale, dequantized = _int8_weight(37, 1000)
    y = few_rows_int8(x, weight, scale, block_n=16, block_k=64, split_k=4)
    assert launches == [(3, 1)] and _relative_error(y, x, dequantized) < 1e-6


@pytest.mark.parametrize("N, K", [(4096, 4096), (4096, 11008), (8192, 8192), (8192, 22016), (12288, 4096),
                                  (22016, 4096), (10240, 8192), (44032, 8192), (32016, 4096), (576, 1536),
                                  (1000, 77), (5, 3000)])
@pytest.mark.parametrize("sms", [132, 78, 16])
def test_the_plan_fills_the_gpu_with_whole_chunks(N, K, sms, monkeypatch):
    """The rule, for shapes without a measured entry: split only where the row blocks are fewer than PROGRAMS_PER_SM
    an SM, into no more ranges than reach that (and ranges of at least MIN_CHUNKS_PER_SPLIT chunks); every range whole
    BLOCK_K chunks, none empty, K covered."""
    monkeypatch.setattr(few_rows, "PLANS", {})
    chosen = plan(N, K, sms)
    assert chosen == plan(N, K, sms)                       # shapes and SMs only
    row_blocks = triton.cdiv(N, chosen.block_n)
    target = PROGRAMS_PER_SM * sms
    if row_blocks >= target:
        assert chosen.split_k == 1
    if chosen.split_k == 1:
        assert chosen.k_per_split == K
        assert row_blocks >= target or triton.cdiv(K, chosen.block_k) < 2 * few_rows.MIN_CHUNKS_PER_SPLIT
    else:
        assert chosen.k_per_split % chosen.block_k == 0
        assert chosen.k_per_split >= few_rows.MIN_CHUNKS_PER_SPLIT * chosen.block_k
        assert (chosen.split_k - 1) * chosen.k_per_split < K <= chosen.split_k * chosen.k_per_split
        assert row_blocks * (chosen.split_k - 1) < target   # one range fewer would not have been enough


def test_deep_projections_split_and_wide_ones_do_not(monkeypatch):
    """By the rule at the H200's 132 SMs: CodeLlama-7B's and 34B's wo and w2 split, their wqkv and w13 keep one
    range. (The measured PLANS split some wide ones too: the test after this one.)"""
    monkeypatch.setattr(few_rows, "PLANS", {})
    for N, K in ((4096, 4096), (4096, 11008), (8192, 8192), (8192, 22016)):
        assert plan(N, K, DEFAULT_SMS).split_k > 1, (N, K)
    for N, K in ((12288, 4096), (22016, 4096), (10240, 8192), (44032, 8192)):
        assert plan(N, K, DEFAULT_SMS).split_k == 1, (N, K)
    assert few_rows.sm_count(torch.device("cpu")) == DEFAULT_SMS


def test_the_measured_entries_are_launches_the_contract_takes():
    """Each committed PLANS entry: a tile the kernel builds (powers of two, 16-row MMA side), a split that
    split_for leaves whole, and the plan of its shape."""
    assert few_rows.PLANS
    for (N, K), (block_n, block_k, num_warps, num_stages, split_k) in few_rows.PLANS.items():
        assert block_n >= 16 and block_n & (block_n - 1) == 0 and block_k & (block_k - 1) == 0, (N, K)
        chosen = plan(N, K, DEFAULT_SMS)
        assert (chosen.block_n, chosen.block_k, chosen.split_k) == (block_n, block_k, split_k), (N, K, chosen)
        assert (chosen.split_k - 1) * chosen.k_per_split < K <= chosen.split_k * chosen.k_per_split


def test_split_for_normalises_what_is_asked():
    """No empty ranges: 5 ranges asked of 16 chunks make 4; one chunk or split 1 make one range of all of K, and so
    do more row blocks than there are ticket counters."""
    assert split_for(37, 1000, 16, 64, split_k=5) == (4, 256)
    assert split_for(37, 1000, 16, 64, split_k=100) == (16, 64)
    assert split_for(37, 50, 16, 64, split_k=4) == (1, 50)
    assert split_for(37, 1000, 16, 64, split_k=1) == (1, 1000)
    assert split_for(16 * few_rows.MAX_ROW_BLOCKS + 1, 1000, 16, 64, split_k=4) == (1, 1000)   # a counter a row block


def test_measured_plans_take_precedence(monkeypatch, tmp_path):
    """A PLANS entry (as CODECOMPLETE_FEW_ROWS_PLANS' file gives it) decides the shape's tile and split."""
    path = tmp_path / "plans.json"
    path.write_text(json.dumps({"4096x4096": [32, 128, 8, 4, 3]}))
    monkeypatch.setattr(few_rows, "PLANS", read_plans(str(path)))
    assert plan(4096, 4096) == few_rows.Plan(32, 128, 8, 4, 3, 1408)
    assert plan(4096, 11008).block_n == few_rows.SPLIT_BLOCK_N
    path.write_text(json.dumps({"4096by4096": [32, 128, 8, 4, 3]}))
    with pytest.raises(ValueError, match="is not"):
        read_plans(str(path))

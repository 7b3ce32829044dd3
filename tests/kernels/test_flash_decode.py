"""flash_decode against a float64 reference, on fresh random inputs with NaN-poisoned outputs.

Runs under TRITON_INTERPRET=1 (tests/conftest.py), so shapes are kept modest.
"""

import dataclasses
import itertools

import pytest
import torch
import torch.nn.functional as F
from kernel_inputs import CACHE_DTYPES, make_inputs, quantized_copy

from kernels import flash_decode, plan_launch, reference
from kernels.interface import launch

HEADS = [(8, 8), (8, 2), (12, 4), (9, 3), (8, 1)]
HEAD_DIMS = [64, 80, 128]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SEQ_LENS = [1, 63, 64, 257, 1000, 2500]
SPLITS = [None, 1, 2, 7]
# Relative L2 error allowed on top of twice the error of PyTorch's own attention in the same dtype.
ABS_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def float64_reference(q, k, v, lengths, k_scale=None, v_scale=None):
    """float64 attention; an fp8 cache is dequantized in float64 (its scales are exact there)."""
    if k_scale is not None:
        return reference.flash_decode(q.double(), k, v, lengths, return_lse=True, k_scale=k_scale, v_scale=v_scale)
    return reference.flash_decode(q.double(), k.double(), v.double(), lengths, return_lse=True)


def same_dtype_torch_error(q, k, v, lengths, ref):
    """Relative error of SDPA computed in the inputs' own dtype: the noise floor of that dtype."""
    S = k.shape[2]
    T = q.shape[2] if q.dim() == 4 else 1
    mask = reference.visible_keys(lengths.long(), T, S)                          # (B, T, S)
    q4 = q if q.dim() == 4 else q[:, :, None]
    out = F.scaled_dot_product_attention(q4, k, v, attn_mask=mask[:, None], enable_gqa=True).reshape(q.shape)
    keep = lengths.long() > 0  # SDPA gives NaN on fully masked rows; those are checked separately
    return rel_err(out[keep], ref[keep])


def dense(k, v, scales, dtype):
    """The caches in `dtype`: an 8-bit pair (scales given) dequantized, others as they are."""
    if not scales:
        return k, v
    return reference.dequantize(k, scales["k_scale"], dtype), reference.dequantize(v, scales["v_scale"], dtype)


def rel_err(x, ref):
    ref = ref.double()
    return ((x.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def ragged_lengths(B, S, gen):
    """Lengths covering the edges: the full cache, and (when there is room) an empty row."""
    lengths = torch.randint(0, S + 1, (B,), generator=gen, dtype=torch.int32)
    lengths[0] = S
    if B > 1:
        lengths[1] = 0
    return lengths


CASES = list(itertools.product(HEADS, HEAD_DIMS, DTYPES))


def tolerance(dtype, scaled: bool) -> float:
    # With an 8-bit cache the dots run in fp16 on the GPU, whatever q's dtype.
    return max(ABS_TOL[dtype], ABS_TOL[torch.float16]) if scaled else ABS_TOL[dtype]


@pytest.mark.parametrize("kv", ["same", "fp8", "int8"])
@pytest.mark.parametrize("case_index", range(len(CASES)))
def test_matches_float64_reference(case_index, kv, poisoned_empty):
    """The whole sweep, for caches in q's dtype and for 8-bit caches (then against float64 attention
    over the dequantized cache, and against the float32 reference of the same quantized cache)."""
    (Hq, Hkv), D, dtype = CASES[case_index]
    # Cycle the remaining axes through the cases so every value meets every head layout.
    S = SEQ_LENS[case_index % len(SEQ_LENS)]
    num_splits = SPLITS[case_index % len(SPLITS)]
    layout = ("bhsd", "bshd", "vseq")[case_index % 3]
    B = (1, 3)[(case_index // 2) % 2]
    scaled = kv in CACHE_DTYPES
    seed = torch.seed() % 2**31          # fresh inputs every run; a failure says which, to replay it
    gen = torch.Generator().manual_seed(seed)
    q, k, v = make_inputs(B, Hq, Hkv, S, D, dtype, layout=layout, seed=seed + 1)
    lengths = ragged_lengths(B, S, gen)
    scales = {}
    if scaled:
        k, scales["k_scale"], v, scales["v_scale"] = quantized_copy(k, v, layout=layout, dtype=CACHE_DTYPES[kv])

    out, lse = flash_decode(q, k, v, lengths, num_splits=num_splits, return_lse=True, **scales)

    assert out.shape == (B, Hq, D) and out.dtype == dtype
    assert lse.shape == (B, Hq) and lse.dtype == torch.float32
    assert not out.isnan().any(), f"an output element was never written (seed {seed})"
    ref_out, ref_lse = float64_reference(q, k, v, lengths, **scales)
    bound = 2 * same_dtype_torch_error(q, *dense(k, v, scales, dtype), lengths, ref_out) + tolerance(dtype, scaled)
    assert rel_err(out, ref_out) <= bound, f"seed {seed}, lengths {lengths.tolist()}"
    if scaled:
        assert rel_err(out, reference.flash_decode(q, k, v, lengths, **scales)) <= bound, f"seed {seed}"
    empty = lengths == 0
    assert (out[empty] == 0).all() and (lse[empty] == float("-inf")).all(), f"seed {seed}"
    torch.testing.assert_close(lse[~empty], ref_lse[~empty].float(), rtol=1e-5, atol=1e-5, msg=f"seed {seed}")


ROW_CASES = [(dtype, D, kv, splits, layout) for dtype, D in ((torch.float32, 80), (torch.float16, 64),
                                                           (torch.bfloat16, 128))
             for kv in ("same", "fp8", "int8") for splits, layout in ((1, "bhsd"), (3, "bshd"), (7, "bhsd"), (2, "vseq"))]


@pytest.mark.parametrize("dtype, D, kv, splits, layout", ROW_CASES,
                         ids=[f"{str(c[0])[6:]}-d{c[1]}-{c[2]}-s{c[3]}-{c[4]}" for c in ROW_CASES])
def test_row_kernel_matches_float64_reference(dtype, D, kv, splits, layout, poisoned_empty):
    """The CUDA-core kernel for one query row per KV head (MHA): ragged lengths with 0 and S, a
    partial last tile, splits past the end of short rows, strided caches, 8-bit caches with scales."""
    B, H, S = 4, 3, 333
    q, k, v = make_inputs(B, H, H, S, D, dtype, layout=layout)
    lengths = torch.tensor([S, 0, 31, 200], dtype=torch.int32)
    scales = {}
    scaled = kv in CACHE_DTYPES
    if scaled:
        k, scales["k_scale"], v, scales["v_scale"] = quantized_copy(k, v, layout=layout, dtype=CACHE_DTYPES[kv])
    plan = dataclasses.replace(plan_launch(B, H, H, S, D, scaled=scaled, num_splits=splits), row_kernel=True, block_n=32)
    out, lse = launch(q, k, v, lengths, plan, **scales)
    ref_out, ref_lse = float64_reference(q, k, v, lengths, **scales)
    assert not out.isnan().any()
    keep = lengths > 0
    bound = 2 * same_dtype_torch_error(q, *dense(k, v, scales, dtype), lengths, ref_out) + ABS_TOL[dtype]
    assert rel_err(out[keep], ref_out[keep]) <= bound
    assert (out[~keep] == 0).all() and (lse[~keep] == float("-inf")).all()
    torch.testing.assert_close(lse[keep], ref_lse[keep].float(), rtol=1e-5, atol=1e-5)


def test_row_kernel_is_only_for_one_row(poisoned_empty):
    """A plan asking for the row kernel on a shape with several rows per KV head runs the dot kernel."""
    q, k, v = make_inputs(2, 8, 2, 200, 64, torch.float32)
    lengths = torch.tensor([200, 57], dtype=torch.int32)
    plan = dataclasses.replace(plan_launch(2, 8, 2, 200, 64, num_splits=2), row_kernel=True)
    out, _ = launch(q, k, v, lengths, plan)
    assert rel_err(out, float64_reference(q, k, v, lengths)[0]) < 1e-5


@pytest.mark.parametrize("num_splits", SPLITS)
@pytest.mark.parametrize("layout", ["bhsd", "bshd", "vseq"])
def test_every_split_count_and_layout(num_splits, layout, poisoned_empty):
    q, k, v = make_inputs(3, 8, 2, 700, 64, torch.float32, layout=layout)
    lengths = torch.tensor([700, 0, 333], dtype=torch.int32)
    out, lse = flash_decode(q, k, v, lengths, num_splits=num_splits, return_lse=True)
    ref_out, ref_lse = float64_reference(q, k, v, lengths)
    assert rel_err(out, ref_out) < 1e-5
    torch.testing.assert_close(lse, ref_lse.float(), rtol=1e-5, atol=1e-5)


def test_default_lengths_and_scale(poisoned_empty):
    """No cache_seqlens means every key counts; softmax_scale is honoured."""
    q, k, v = make_inputs(2, 8, 2, 300, 96, torch.float16)
    out = flash_decode(q, k, v, softmax_scale=0.3)
    ref = reference.flash_decode(q.double(), k.double(), v.double(), softmax_scale=0.3)
    assert rel_err(out, ref) < 2e-3


def test_long_context_heuristic_splits(poisoned_empty):
    """Several thousand keys with the heuristic's split count (many splits, partly ragged)."""
    q, k, v = make_inputs(1, 8, 1, 4500, 128, torch.bfloat16)
    lengths = torch.tensor([4433], dtype=torch.int32)
    assert plan_launch(1, 8, 1, 4500, 128).num_splits > 1
    out = flash_decode(q, k, v, lengths)
    ref, _ = float64_reference(q, k, v, lengths)
    assert rel_err(out, ref) < 1e-2


def test_lengths_mutated_in_place_like_a_graph_replay(poisoned_empty):
    """The decode loop captures one launch and replays it while lengths grow in place: the plan may
    depend only on shapes, and every length must come out right through the same buffers."""
    B, S = 2, 512
    q, k, v = make_inputs(B, 8, 2, S, 64, torch.float32)
    lengths = torch.tensor([1, 0], dtype=torch.int32)
    plans = set()
    for step in range(4):
        lengths.copy_(torch.tensor([1 + 170 * step, 3 * step * step], dtype=torch.int32))
        plans.add(plan_launch(B, 8, 2, S, 64))
        out = flash_decode(q, k, v, lengths)
        ref, _ = float64_reference(q, k, v, lengths)
        assert rel_err(out, ref) < 1e-5, f"step {step} lengths {lengths.tolist()}"
    assert len(plans) == 1


def test_split_kv_reference_is_the_same_function():
    """The PyTorch twin of the kernels' algorithm agrees with plain attention for any split count."""
    q, k, v = make_inputs(3, 12, 4, 333, 64, torch.float64)
    lengths = torch.tensor([333, 0, 65], dtype=torch.int32)
    ref_out, ref_lse = reference.flash_decode(q, k, v, lengths, return_lse=True)
    for splits in (1, 2, 7):
        out, lse = reference.split_kv_decode(q, k, v, lengths, num_splits=splits, return_lse=True)
        assert rel_err(out, ref_out) < 1e-6
        torch.testing.assert_close(lse, ref_lse.float())


def test_plan_fills_the_gpu():
    """Batch 1 at long context is split across the SMs; large batches need no split."""
    long_single = plan_launch(1, 64, 8, 65536, 128, num_sms=132)
    assert long_single.num_splits * 8 >= 132
    assert plan_launch(64, 64, 8, 2048, 128, num_sms=132).num_splits < long_single.num_splits
    assert plan_launch(1, 9, 3, 100, 64).num_splits >= 1
    assert plan_launch(1, 32, 32, 4096, 256).block_n <= plan_launch(1, 32, 32, 4096, 128).block_n


@pytest.mark.parametrize("kv", ["fp8", "int8"])
def test_heuristic_takes_the_transposed_kernel_for_8bit_gqa_on_hopper(kv, poisoned_empty):
    """Without a tuned plan, an sm_90 device (`wgmma8`) decodes one token of a GQA model over an 8-bit cache with the
    transposed kernel's tiles, at the dot kernel's split count; every other call keeps the dot (or row) kernel's plan.
    The plan is right for either V layout: sequence-major runs the transposed kernel, head-dim-contiguous the dot
    kernel in the same tiles, both against float64, through tensor descriptors (S = 2064) or, where the strides
    cannot take one, pointers (S = 2050)."""
    hopper, other = (plan_launch(1, 64, 8, 131072, 128, scaled=True, wgmma8=w) for w in (True, False))
    assert hopper.transposed and hopper.tma and (hopper.block_n, hopper.num_warps, hopper.num_stages) == (128, 4, 3)
    assert hopper.num_splits == other.num_splits and not other.transposed
    assert plan_launch(1, 32, 32, 65536, 128, scaled=True, wgmma8=True).row_kernel            # MHA: the row kernel
    assert not plan_launch(1, 64, 8, 65536, 128, T=8, scaled=True, wgmma8=True).transposed     # several tokens
    assert not plan_launch(1, 64, 8, 65536, 128, wgmma8=True).transposed                    # a 16-bit cache
    assert not plan_launch(1, 16, 8, 4096, 256, scaled=True, wgmma8=True).transposed           # D=256: 32-key tiles
    B, Hq, Hkv, D = 2, 8, 2, 64
    for S, layout in itertools.product((2050, 2064), ("vseq", "bhsd")):
        plan = plan_launch(B, Hq, Hkv, S, D, scaled=True, wgmma8=True)
        lengths = torch.tensor([S, 77], dtype=torch.int32)
        q, k, v = make_inputs(B, Hq, Hkv, S, D, torch.bfloat16, layout=layout)
        scales = {}
        k, scales["k_scale"], v, scales["v_scale"] = quantized_copy(k, v, layout=layout, dtype=CACHE_DTYPES[kv])
        out, _ = launch(q, k, v, lengths, plan, **scales)
        ref_out = float64_reference(q, k, v, lengths, **scales)[0]
        bound = 2 * same_dtype_torch_error(q, *dense(k, v, scales, torch.bfloat16), lengths, ref_out) + 1e-2
        assert rel_err(out, ref_out) <= bound, (S, layout)

"""The kernels that round q to 8-bit digits (`int8_dot`, `transposed`, its tensor-descriptor loads) against a float64
reference, on fresh random inputs with NaN-poisoned outputs; a file of its own beside tests/kernels/test_flash_decode.py
(whose helpers it uses) so that `--dist loadfile` can give the two to different workers.

Runs under TRITON_INTERPRET=1 (tests/conftest.py), so shapes are kept modest.
"""

import dataclasses

import pytest
import torch
from kernel_inputs import CACHE_DTYPES, make_inputs, quantized_copy
from test_flash_decode import dense, float64_reference, rel_err, same_dtype_torch_error, tolerance

from kernels import plan_launch, reference
from kernels.interface import launch

INT8_DOT_CASES = [((8, 2), 64, 1, torch.bfloat16, 1, "bhsd"), ((12, 4), 80, 1, torch.float16, 3, "bshd"),
                  ((64, 8), 128, 1, torch.bfloat16, 5, "bhsd"), ((8, 1), 128, 4, torch.bfloat16, 2, "bshd"),
                  ((9, 3), 64, 3, torch.float32, 1, "bhsd"), ((4, 4), 64, 2, torch.float16, 4, "bhsd"),
                  ((8, 2), 128, 1, torch.bfloat16, 3, "vseq"), ((12, 4), 80, 3, torch.float16, 2, "vseq")]


@pytest.mark.parametrize("heads, D, T, dtype, splits, layout", INT8_DOT_CASES,
                         ids=[f"h{c[0][0]}-{c[0][1]}-d{c[1]}-t{c[2]}-{str(c[3])[6:]}-s{c[4]}-{c[5]}"
                              for c in INT8_DOT_CASES])
def test_int8_dots_match_float64_reference(heads, D, T, dtype, splits, layout, poisoned_empty):
    """`int8_dot`: scores from int8 tensor-core dots of q's two int8 digits and the int8 keys (the dot kernel,
    GQA and several tokens): as accurate as converting the keys, against float64 attention over the
    dequantized cache; ragged lengths with 0, forced splits past the end of short rows, strided caches."""
    q, k, v, lengths, lse, ref_lse, scales = _check_q_digit_kernel(heads, D, T, dtype, splits, layout, torch.int8,
                                                                   1 / (127 * 508), int8_dot=True)
    keep = lengths > 0
    # and it is q that is rounded: one int8 digit alone (the high one) would err ~100x more
    high_only = reference.flash_decode(_rounded_rows(q), k, v, lengths, return_lse=True, **scales)[1]
    assert (high_only[keep].double() - ref_lse[keep]).abs().max() > 10 * (lse[keep].double() - ref_lse[keep]).abs().max()


def _check_q_digit_kernel(heads, D, T, dtype, splits, layout, cache_dtype, digit_step, S=300, poison_tail=False,
                          **plan_fields):
    """A kernel that rounds q to 8-bit digits (the plan's `plan_fields`), on B=3 x S random inputs in an 8-bit
    cache with ragged lengths (the full cache, 0 or T, 40 + T) and `splits` forced: against float64 attention over the
    dequantized cache, within the other 8-bit kernels' bound; empty rows zero with lse -inf; the log-sum-exp within
    what rounding q by `digit_step` of its rows' largest elements can move it. `poison_tail`: every cached byte past a
    row's length is 0x7F (an e4m3 NaN, int8's largest value) and its scales NaN. Returns (q, k, v, lengths, lse,
    ref_lse, scales) for the caller's further checks."""
    (Hq, Hkv), B = heads, 3
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    q, k, v = make_inputs(B, Hq, Hkv, S, D, dtype, layout=layout)
    if T > 1:
        q = torch.randn(B, Hq, T, D, generator=gen).to(dtype)
    lengths = torch.tensor([S, 0 if T == 1 else T, 40 + T], dtype=torch.int32)  # (T tokens need T keys)
    scales = {}
    k, scales["k_scale"], v, scales["v_scale"] = quantized_copy(k, v, layout=layout, dtype=cache_dtype)
    plan = dataclasses.replace(plan_launch(B, Hq, Hkv, S, D, T=T, scaled=True, num_splits=splits), **plan_fields)
    if poison_tail:  # what a kernel must never let into a row: garbage past its length (the reference reads up to it)
        clean = [t.clone() for t in (k, v, scales["k_scale"], scales["v_scale"])]
        for b, n in enumerate(lengths.tolist()):
            for t in (k, v):
                t.view(torch.uint8)[b, :, n:] = 0x7F
            scales["k_scale"][b, :, n:] = scales["v_scale"][b, :, n:] = float("nan")
    out, lse = launch(q, k, v, lengths, plan, **scales)
    if poison_tail:
        k, v, scales["k_scale"], scales["v_scale"] = clean

    assert not out.isnan().any(), "an output element was never written"
    ref_out, ref_lse = float64_reference(q, k, v, lengths, **scales)
    keep = lengths > 0
    bound = 2 * same_dtype_torch_error(q, *dense(k, v, scales, dtype), lengths, ref_out) + tolerance(dtype, True)
    assert rel_err(out[keep], ref_out[keep]) <= bound
    assert (out[~keep] == 0).all() and (lse[~keep] == float("-inf")).all()
    assert ((lse.double() - ref_lse).abs() <= digit_lse_bound(q, k, scales, digit_step) + 1e-5)[keep].all()
    return q, k, v, lengths, lse, ref_lse, scales


def digit_lse_bound(q, k, scales, step):
    """(B, Hq[, T]) the most a row's log-sum-exp can move when each element of q is rounded by at most `step` times
    the row's largest |element| (8-bit digits of q): that, times the largest L1 norm of the KV head's dequantized
    keys, times the softmax scale."""
    B, Hq, D = q.shape[0], q.shape[1], q.shape[-1]
    keys = reference.dequantize(k, scales["k_scale"], torch.float64)                # (B, Hkv, S, D)
    l1 = keys.abs().sum(-1).amax(-1).repeat_interleave(Hq // k.shape[1], dim=1)     # (B, Hq)
    amax = q.double().abs().amax(-1)                                                # (B, Hq[, T])
    return amax * step * (l1 if q.dim() == 3 else l1[:, :, None]) * D ** -0.5


def _rounded_rows(q):
    """q rounded to one int8 digit per row (amax / 127 a step): what a single int8 dot would see."""
    scale = q.float().abs().amax(-1, keepdim=True).clamp_min(1e-30) / 127
    return (torch.round(q.float() / scale) * scale).double()


TRANSPOSED_CASES = [((64, 8), 128, 1, torch.bfloat16, 3, 64, "fp8"), ((64, 8), 128, 1, torch.bfloat16, 1, 128, "int8"),
                    ((12, 4), 80, 3, torch.float16, 2, 64, "fp8"), ((12, 4), 80, 3, torch.float16, 2, 64, "int8"),
                    ((8, 8), 64, 1, torch.float32, 5, 64, "fp8"), ((8, 2), 64, 2, torch.float32, 1, 32, "int8"),
                    ((9, 3), 64, 16, torch.bfloat16, 4, 128, "fp8")]


@pytest.mark.parametrize("heads, D, T, dtype, splits, block_n, kv", TRANSPOSED_CASES,
                         ids=[f"h{c[0][0]}-{c[0][1]}-d{c[1]}-t{c[2]}-{str(c[3])[6:]}-s{c[4]}-n{c[5]}-{c[6]}"
                              for c in TRANSPOSED_CASES])
def test_transposed_kernel_matches_float64_reference(heads, D, T, dtype, splits, block_n, kv, poisoned_empty):
    """`transposed` (kernels.split_kv_transposed: the 8-bit cache as the first operand of 8-bit tensor-core dots, q and
    the probabilities as 8-bit digits): against float64 attention over the dequantized cache, as accurate as the
    kernels that convert the cache (the bound of the other 8-bit tests); ragged lengths with 0, forced splits past the
    end of short rows, several tokens, MHA, odd head dims, 32-128 keys a tile."""
    # q's digits: e4m3, three, within 2^-12 of a row's largest element; int8, two, within 1/(127 x 508)
    _check_q_digit_kernel(heads, D, T, dtype, splits, "vseq", CACHE_DTYPES[kv],
                          2.0 ** -12 if kv == "fp8" else 1 / (127 * 508), transposed=True, block_n=block_n)


@pytest.mark.parametrize("kv, T, block_n, splits", [("fp8", 1, 128, 2), ("int8", 1, 64, 3), ("fp8", 3, 64, 1)])
def test_transposed_kernel_loads_through_tensor_descriptors(kv, T, block_n, splits, poisoned_empty, monkeypatch):
    """`tma` with the transposed kernel: K's tiles through a descriptor over the cache, V^T's through one over V's
    (B, Hkv, D, S) storage, tiles (1, 1, head dim, keys). S a multiple of 16 (a descriptor's strides are 16-byte
    aligned) but not of the tile, so the last tile runs past S (zero-filled); the bytes past each row's length
    poisoned (e4m3 NaN), which the masked tile must zero after its load."""
    from kernels import interface
    blocks = []
    real = interface._descriptor
    monkeypatch.setattr(interface, "_descriptor", lambda cache, block: blocks.append(block) or real(cache, block))
    _check_q_digit_kernel((16, 2), 128, T, torch.bfloat16, splits, "vseq", CACHE_DTYPES[kv],
                          2.0 ** -12 if kv == "fp8" else 1 / (127 * 508), S=336, poison_tail=True,
                          transposed=True, tma=True, block_n=block_n)
    assert blocks == [[1, 1, block_n, 128], [1, 1, 128, block_n]]


@pytest.mark.parametrize("kv", ["fp8", "int8"])
def test_transposed_kernel_keeps_tiles_far_below_the_running_max(kv, poisoned_empty):
    """The transposed kernel digitises each tile's probabilities against the tile's own maximum: after one key whose
    score is 12 nats above all others, the 4,095 others (each weighing e^-12 ~ 6e-6, below an int8 digit's step
    relative to the running maximum, and 2.5% of the softmax together) still count, and they all carry the same
    value vector, so losing them would move the output by ~2.5%."""
    B, Hq, Hkv, S, D = 1, 8, 2, 4096, 64
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    direction = torch.nn.functional.normalize(torch.randn(D, generator=gen), dim=0)
    q = (direction * 8.0).expand(B, Hq, D).clone()                           # the same query in every head
    k = torch.randn(B, Hkv, S, D, generator=gen) * 0.01 + direction * 2.0  # scores 8 x 2 / sqrt(64) ~ 2 nats
    k[:, :, 0] = direction * 14.0                                            # 14 nats: 12 above the rest
    v = torch.randn(B, Hkv, S, D, generator=gen) * 0.01 + torch.randn(D, generator=gen)  # one shared value
    v[:, :, 0] = torch.randn(D, generator=gen)
    scales = {}
    k8, scales["k_scale"], v8, scales["v_scale"] = quantized_copy(k, v, layout="vseq", dtype=CACHE_DTYPES[kv])
    plan = dataclasses.replace(plan_launch(B, Hq, Hkv, S, D, scaled=True, num_splits=2), transposed=True)
    out, _ = launch(q, k8, v8, None, plan, **scales)
    ref = float64_reference(q, k8, v8, torch.full((B,), S, dtype=torch.int32), **scales)[0]
    first_only = reference.dequantize(v8, scales["v_scale"], torch.float64)[:, :, :1].repeat_interleave(Hq // Hkv, 1)
    assert rel_err(first_only[:, :, 0], ref) > 0.01      # the far keys matter
    # P in two e4m3 digits is within 2^-8 of itself (bf16's precision): up to 1.5e-3 over 40 seeds here, so e4m3
    # has the GPU check's bound for 8-bit caches, 2e-3 (1e-3 failed 3 runs in 40); int8's digits: 4.6e-4 at most.
    assert rel_err(out, ref) <= (2e-3 if kv == "fp8" else 1e-3)

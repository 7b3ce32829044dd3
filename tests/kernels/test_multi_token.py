"""flash_decode with T query tokens (q (B, Hq, T, D): the last T tokens of each sequence, causal,
aligned bottom-right), and every launch option a tuned plan may pick, against float64 references on
fresh random inputs with NaN-poisoned outputs (and caches poisoned past the lengths)."""

import dataclasses

import pytest
import torch
from kernel_inputs import make_inputs, quantized_copy
from test_flash_decode import float64_reference, rel_err, same_dtype_torch_error, tolerance

from kernels import flash_decode, plan_launch
from kernels.interface import launch

# (T, layout, (Hq, Hkv), dtype, forced splits, D): every T meets both layouts, and between them
# MHA, GQA, odd groups and a group x T too large for one program (8 x 16 rows: two row blocks).
CASES = [
    (1, "bhsd", (8, 2), torch.bfloat16, 3, 64),
    (1, "bshd", (9, 3), torch.float32, None, 48),
    (2, "bhsd", (4, 4), torch.float16, 1, 64),
    (2, "bshd", (8, 2), torch.bfloat16, 7, 64),
    (5, "bhsd", (9, 3), torch.float32, 3, 48),
    (5, "bshd", (8, 1), torch.bfloat16, None, 64),
    (16, "bhsd", (16, 2), torch.float16, 3, 32),
    (16, "bshd", (8, 2), torch.float32, 7, 64),
    # a prompt's tail through a wide step (models/engine.py, WIDE_TAIL): 128 tokens, two and 16 row blocks
    (128, "bhsd", (4, 4), torch.bfloat16, 3, 64),
    (100, "bshd", (8, 2), torch.float16, None, 32),
]


def poison_past(cache, lengths):
    """NaN in every position at or past each row's length: a kernel that reads them shows it."""
    for b, length in enumerate(lengths.tolist()):
        cache[b, :, length:] = float("nan")


@pytest.mark.parametrize("T, layout, heads, dtype, num_splits, D", CASES,
                         ids=[f"T{c[0]}-{c[1]}-{c[2][0]}x{c[2][1]}-{str(c[3])[6:]}-s{c[4]}" for c in CASES])
def test_multi_token_matches_float64(T, layout, heads, dtype, num_splits, D, poisoned_empty):
    (Hq, Hkv), B, S = heads, 3, 150
    _, k, v = make_inputs(B, Hq, Hkv, S, D, dtype, layout=layout)
    q = torch.randn(B, Hq, T, D).to(dtype)
    lengths = torch.tensor([S, T, int(torch.randint(T, S + 1, ()))], dtype=torch.int32)
    poison_past(k, lengths)
    poison_past(v, lengths)

    out, lse = flash_decode(q, k, v, lengths, num_splits=num_splits, return_lse=True)

    assert out.shape == (B, Hq, T, D) and out.dtype == dtype and lse.shape == (B, Hq, T)
    assert not out.isnan().any() and not lse.isnan().any()
    kc, vc = k.nan_to_num(), v.nan_to_num()  # the same attention: keys past the lengths are never seen
    ref_out, ref_lse = float64_reference(q, kc, vc, lengths)
    bound = 2 * same_dtype_torch_error(q, kc, vc, lengths, ref_out) + tolerance(dtype, False)
    assert rel_err(out, ref_out) <= bound
    torch.testing.assert_close(lse, ref_lse.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("T", [1, 4])
def test_fp8_cache_with_query_tokens(T, poisoned_empty):
    """Verification on an fp8 cache: T tokens, scales per token, splits that cut the causal tail."""
    B, Hq, Hkv, S, D = 2, 8, 2, 200, 64
    q, k, v = make_inputs(B, Hq, Hkv, S, D, torch.bfloat16)
    q = torch.randn(B, Hq, T, D).to(torch.bfloat16)
    k8, ks, v8, vs = quantized_copy(k, v)
    lengths = torch.tensor([S, 70], dtype=torch.int32)
    out, lse = flash_decode(q, k8, v8, lengths, num_splits=5, return_lse=True, k_scale=ks, v_scale=vs)
    ref_out, ref_lse = float64_reference(q, k8, v8, lengths, k_scale=ks, v_scale=vs)
    assert out.shape == q.shape and not out.isnan().any()
    assert rel_err(out, ref_out) < 1e-2  # bf16 output rounding (the interpreter truncates: ~2^-8)
    torch.testing.assert_close(lse, ref_lse.float(), rtol=1e-5, atol=1e-5)


def test_growing_lengths_like_a_graph_replay(poisoned_empty):
    """A captured verification step replays while lengths move in place: plan and grid fixed."""
    B, T, S = 2, 4, 300
    q, k, v = make_inputs(B, 8, 2, S, 32, torch.float32)
    q = torch.randn(B, 8, T, 32)
    lengths = torch.tensor([T, T], dtype=torch.int32)
    plans = set()
    for step in range(3):
        lengths.copy_(torch.tensor([T + 90 * step, S - 50 * step], dtype=torch.int32))
        plans.add(plan_launch(B, 8, 2, S, 32, T=T))
        out = flash_decode(q, k, v, lengths)
        assert rel_err(out, float64_reference(q, k, v, lengths)[0]) < 1e-5, f"step {step}"
    assert len(plans) == 1


# Every option a tuned plan may switch on computes the same function (on the GPU they change speed
# only; here the interpreter runs their code paths: TMA descriptors, masking of descriptor rows past
# the length, bf16 partials, fp8 dots).
OPTIONS = [{"tma": True}, {"loop_stages": 3}, {"eviction": "evict_first", "cache_modifier": ".cg"},
           {"block_n": 128, "num_warps": 8}, {"partials": "bfloat16"}, {"pdl": False}]


OPTION_CASES = [(o, fp8) for o in OPTIONS for fp8 in (False, True)] + [({"fp8_dot": True}, True)]


@pytest.mark.parametrize("options, fp8", OPTION_CASES,
                         ids=["-".join(f"{k}={v}" for k, v in o.items()) + ("-fp8" if f else "") for o, f in OPTION_CASES])
def test_plan_options_compute_the_same_function(options, fp8, poisoned_empty):
    B, Hq, Hkv, S, D, T = 2, 8, 2, 256, 64, 3
    q, k, v = make_inputs(B, Hq, Hkv, S, D, torch.bfloat16)
    q = torch.randn(B, Hq, T, D).to(torch.bfloat16)
    lengths = torch.tensor([S, 77], dtype=torch.int32)
    poison_past(k, lengths)
    poison_past(v, lengths)
    scales = {}
    if fp8:
        k, scales["k_scale"], v, scales["v_scale"] = quantized_copy(k.nan_to_num(), v.nan_to_num())
        poison_past(k, lengths)  # e4m3 NaN
        poison_past(v, lengths)
    plan = dataclasses.replace(plan_launch(B, Hq, Hkv, S, D, T=T, scaled=fp8, num_splits=3), **options)
    out, lse = launch(q, k, v, lengths, plan, **scales)
    clean = [t.float().nan_to_num().to(t.dtype) for t in (k, v)]  # keys past the lengths are never seen
    ref_out, ref_lse = float64_reference(q, *clean, lengths, **scales)
    assert not out.isnan().any()
    # bf16 output (and partials) rounding; q in e4m3 (fp8_dot) adds its own quantization error.
    assert rel_err(out, ref_out) < (8e-2 if options.get("fp8_dot") else 1.5e-2)
    torch.testing.assert_close(lse, ref_lse.float(), rtol=1e-5, atol=1e-5 if not options.get("fp8_dot") else 0.2)

"""flash_decode_exact_window (an 8-bit cache whose sink and window tokens are read exact) against a float64
oracle that picks, per (query, key), the exact or the dequantized key and value, as bench/kv_exact_window.py
simulates it; and against its PyTorch twin. Fresh random inputs, NaN-poisoned outputs, exact slots in random
order with stale and empty ones (NaN values) among them. Under TRITON_INTERPRET=1: modest shapes."""

import itertools

import pytest
import torch
from kernel_inputs import CACHE_DTYPES, make_inputs, quantized_copy

from kernels import flash_decode_exact_window, reference
from kernels.validation import ExactTokens

SINK, WINDOW, RING = 4, 32, 48     # (models/kv_cache.py keeps 16 + a ring of 48; both sinks are tested)
HEADS = [(8, 8), (8, 2), (12, 4), (9, 3), (8, 1)]
HEAD_DIMS = [64, 80, 128]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
CASES = list(itertools.product(HEADS, HEAD_DIMS, DTYPES))
TOL = {torch.float32: 2e-3, torch.float16: 4e-3, torch.bfloat16: 1.2e-2}   # 8-bit dots run in fp16 on a GPU


def exact_tokens(k, v, lengths, T, gen, sink=SINK) -> ExactTokens:
    """Exact copies of k, v (B, Hkv, S, D) as a cache holds them after a step of T tokens: every sink position and
    the last WINDOW + T - 1 positions of each row (what its queries read) in random slots, plus a stale draft past
    the length (finite garbage) and empty slots (NaN values, position -1)."""
    B, Hkv, S, D = k.shape
    SLOTS = sink + RING
    ek = torch.full((B, Hkv, SLOTS, D), float("nan"), dtype=k.dtype)
    ev = torch.full((B, Hkv, SLOTS, D), float("nan"), dtype=k.dtype)
    pos = torch.full((B, SLOTS), -1, dtype=torch.int64)
    for b, length in enumerate(lengths.tolist()):
        keep = sorted(set(range(min(sink, length))) | set(range(max(0, length - WINDOW - T + 1), length)))
        slots = torch.randperm(SLOTS, generator=gen)
        for p, slot in zip(keep, slots.tolist()):
            ek[b, :, slot], ev[b, :, slot], pos[b, slot] = k[b, :, p], v[b, :, p], p
        stale = slots[len(keep)].item()
        ek[b, :, stale], ev[b, :, stale], pos[b, stale] = 7.0, -7.0, length + 1     # a rolled-back draft
    return ExactTokens(ek, ev, pos, sink, WINDOW)


def float64_oracle(q, k, v, k8, v8, scales, lengths, sink=SINK):
    """Attention in float64: the query at i reads keys j < SINK and i - WINDOW < j <= i exact, the rest
    dequantized."""
    B, Hq, T, D = q.shape
    group = Hq // k.shape[1]
    exact_k, exact_v = (t.double().repeat_interleave(group, 1) for t in (k, v))             # (B, Hq, S, D)
    rough_k = reference.dequantize(k8, scales["k_scale"], torch.float64).repeat_interleave(group, 1)
    rough_v = reference.dequantize(v8, scales["v_scale"], torch.float64).repeat_interleave(group, 1)
    S = k.shape[2]
    i = lengths.long()[:, None, None] - T + torch.arange(T)[None, :, None]                  # (B, T, 1)
    j = torch.arange(S)[None, None]                                                        # (1, 1, S)
    exact = ((j < sink) | (j > i - WINDOW))[:, None]                                       # (B, 1, T, S)
    qd = q.double() * D ** -0.5
    scores = torch.where(exact, qd @ exact_k.transpose(-1, -2), qd @ rough_k.transpose(-1, -2))
    scores = scores.masked_fill((j > i)[:, None], float("-inf"))                           # (B, Hq, T, S)
    lse = torch.logsumexp(scores, -1)
    p = torch.exp(scores - lse.masked_fill(lse == float("-inf"), 0)[..., None])
    out = (p * exact) @ exact_v.nan_to_num() + (p * ~exact) @ rough_v
    return out, lse


def rel_err(x, ref):
    return ((x.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def run_case(B, Hq, Hkv, S, D, dtype, kv, lengths, T, num_splits, layout="bhsd", seed=None, sink=SINK):
    seed = torch.seed() % 2**31 if seed is None else seed
    gen = torch.Generator().manual_seed(seed)
    q, k, v = make_inputs(B, Hq * T, Hkv, S, D, dtype, layout=layout, seed=seed + 1)
    q = q.reshape(B, Hq, T, D)
    k8, k_scale, v8, v_scale = quantized_copy(k, v, layout=layout, dtype=CACHE_DTYPES[kv])
    scales = {"k_scale": k_scale, "v_scale": v_scale}
    exact = exact_tokens(k, v, lengths, T, gen, sink)
    out, lse = flash_decode_exact_window(q, k8, v8, lengths, exact=exact, num_splits=num_splits, return_lse=True,
                                         **scales)
    assert out.shape == q.shape and out.dtype == dtype and lse.shape == (B, Hq, T)
    assert not out.isnan().any(), f"seed {seed}: an output element was never written"
    ref_out, ref_lse = float64_oracle(q, k, v, k8, v8, scales, lengths, sink)
    empty = lengths == 0
    assert (out[empty] == 0).all() and (lse[empty] == float("-inf")).all(), f"seed {seed}"
    full = ~empty
    assert rel_err(out[full], ref_out[full]) <= TOL[dtype], f"seed {seed}, lengths {lengths.tolist()}"
    torch.testing.assert_close(lse[full], ref_lse[full].float(), rtol=1e-4, atol=1e-4, msg=f"seed {seed}")
    twin = reference.flash_decode_exact_window(q, k8, v8, lengths, exact=exact, **scales)
    assert rel_err(out[full], twin[full].double()) <= TOL[dtype], f"seed {seed}"
    # float64 q through the twin: the oracle's arithmetic exactly
    twin64 = reference.flash_decode_exact_window(q.double(), k8, v8, lengths, exact=exact, **scales)
    assert rel_err(twin64[full], ref_out[full]) <= 1e-12, f"seed {seed}"


@pytest.mark.parametrize("case_index", range(len(CASES)))
def test_matches_float64_oracle_over_the_8bit_sweep(case_index, poisoned_empty):
    """The 8-bit tests' sweep of heads, head dims and dtypes; fp8 and int8, layouts, splits and lengths cycle."""
    (Hq, Hkv), D, dtype = CASES[case_index]
    kv = ("fp8", "int8")[case_index % 2]
    layout = ("bhsd", "bshd", "vseq")[case_index % 3]
    S = (63, 100, 257)[case_index % 3]
    B = (1, 3)[(case_index // 2) % 2]
    lengths = torch.tensor([S, 0, 37][:B], dtype=torch.int32)
    run_case(B, Hq, Hkv, S, D, dtype, kv, lengths, 1, (None, 1, 2, 7)[case_index % 4], layout)


@pytest.mark.parametrize("sink", [4, 16])
@pytest.mark.parametrize("kv", ["fp8", "int8"])
@pytest.mark.parametrize("T, splits", [(1, 1), (1, 3), (4, 1), (4, 3), (16, 2)])
def test_edge_lengths_and_verification(kv, T, splits, sink, poisoned_empty):
    """Rows of length 0, < sink, < sink + WINDOW, = sink + WINDOW, just past it, and S; T query tokens (a
    verification step: each query its own window), forced splits."""
    S = 150
    edge = sink + WINDOW
    lengths = [0, 3, 20, edge, edge + 1, 70, S] if T == 1 else [T, 20, edge, edge + 1 + T, 70, S]
    lengths = torch.tensor([n for n in lengths if n >= T or (T == 1 and n == 0)], dtype=torch.int32)
    run_case(len(lengths), 4, 2, S, 64, torch.float16, kv, lengths, T, splits, layout="vseq", sink=sink)


def test_cache_shorter_than_sink_and_window():
    """S <= SINK + WINDOW: no query ever reads an 8-bit key; the split kernels are not launched."""
    lengths = torch.tensor([30, 5], dtype=torch.int32)
    run_case(2, 4, 4, 30, 32, torch.float32, "fp8", lengths, 1, None)


def test_refuses_a_16bit_cache_and_bad_exact_tokens():
    q, k, v = make_inputs(1, 4, 2, 64, 32, torch.float16)
    gen = torch.Generator().manual_seed(0)
    exact = exact_tokens(k, v, torch.tensor([64]), 1, gen)
    with pytest.raises(ValueError, match="8-bit"):
        flash_decode_exact_window(q, k, v, exact=exact, k_scale=None, v_scale=None)
    k8, ks, v8, vs = quantized_copy(k, v)
    with pytest.raises(ValueError, match="int64"):
        flash_decode_exact_window(q, k8, v8, exact=exact._replace(pos=exact.pos.int()), k_scale=ks, v_scale=vs)
    with pytest.raises(ValueError, match="shape"):
        flash_decode_exact_window(q, k8, v8, exact=exact._replace(k=exact.k[:, :1], v=exact.v[:, :1]),
                                  k_scale=ks, v_scale=vs)


@pytest.mark.parametrize("kv, transposed", [("fp8", True), ("int8", True), ("fp8", False)])
def test_tensor_descriptors_with_16_sink_slots(kv, transposed, poisoned_empty, monkeypatch):
    """Plans with tensor descriptors (`tma`), the transposed kernel's too, forced for the call's shape: the split
    kernels read the whole 8-bit caches and start their first split at key `sink` themselves (`key_start`); with
    16 sink slots (models/kv_cache.py) the transposed kernel's first V tile starts 16-byte aligned, so the
    descriptors are built (with 4 it would start 4 bytes off, and the call falls back to pointers: still right).
    The dot kernel's descriptors, over head-dim-contiguous rows, take any sink."""
    import dataclasses

    from kernels import interface
    from kernels.plan import plan_launch, shape_key
    built = []
    real = interface._descriptor
    monkeypatch.setattr(interface, "_descriptor", lambda cache, block: built.append(block) or real(cache, block))
    B, Hq, Hkv, S, D, T = 2, 16, 2, 336, 128, 2
    plan = dataclasses.replace(plan_launch(B, Hq, Hkv, S, D, T=T, scaled=True, num_splits=2), transposed=transposed,
                               tma=True, block_n=64)
    lengths = torch.tensor([S, 90], dtype=torch.int32)
    for sink in (16, 4):
        built.clear()
        with interface.forced_plans([(shape_key(B, Hq, Hkv, S, D, T, True, kv == "int8"), plan)]):
            # (the dot kernel takes descriptors over a V of head-dim-contiguous rows only: every sink aligns those)
            run_case(B, Hq, Hkv, S, D, torch.bfloat16, kv, lengths, T, None, layout="vseq" if transposed else "bhsd",
                     sink=sink)
        assert (len(built) == 2) == (sink == 16 or not transposed), (sink, built)

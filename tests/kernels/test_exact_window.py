"""flash_decode_exact_window (an 8-bit cache whose sink and window tokens are read exact) against a float64
oracle that picks, per (query, key), the exact or the dequantized key and value, as bench/kv_exact_window.py
simulates it; and against its PyTorch twin. Fresh random inputs, NaN-poisoned outputs, exact slots laid out as the
cache lays them (a sink, then a ring: the kernel finds a position's slot without scanning), rows whose ring wrapped,
rolled-back drafts, stale slots holding another position and empty ones (NaN values) among them. Under
TRITON_INTERPRET=1: modest shapes."""

import itertools

import pytest
import torch
from kernel_inputs import CACHE_DTYPES, make_inputs, quantized_copy

from kernels import flash_decode_exact_window, reference
from kernels.validation import MAX_EXACT_QUERY_TOKENS, ExactTokens

SINK, WINDOW, RING = 4, 32, 48     # (models/kv_cache.py keeps 16 + a ring of 512; both sinks and rings are tested)
HEADS = [(8, 8), (8, 2), (12, 4), (9, 3), (8, 1)]
HEAD_DIMS = [64, 80, 128]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
CASES = list(itertools.product(HEADS, HEAD_DIMS, DTYPES))
TOL = {torch.float32: 2e-3, torch.float16: 4e-3, torch.bfloat16: 1.2e-2}   # 8-bit dots run in fp16 on a GPU
GARBAGE = 7.0                      # a rolled-back draft's or a later lap's copy: finite, and far from the keys'


def exact_tokens(k, v, lengths, T, gen, sink=SINK, ring=RING, lost=0) -> tuple[ExactTokens, torch.Tensor]:
    """Exact copies of k, v (B, Hkv, S, D) as a cache holds them after a step of T tokens: in the cache's slots
    (`kernels.reference.ring_slot`: the sink, then a ring of `ring`), each row's positions written in order (later
    laps of the ring overwrite earlier ones: rows longer than sink + ring have wrapped), then rolled-back drafts
    past its length (garbage), as many as leave its queries' windows whole. Slots never written stay empty (NaN
    values, position -1). `lost`: that many of each row's window positions (drawn at random) lose their slot to
    another position (the previous lap's, with its own true values, or a later one's garbage), and one sink slot is
    emptied: stale slots a reader must not take for the position it wants; those positions are then read nowhere.
    Returns the tokens and `missing` (B, S) bool, those positions (the oracle's)."""
    B, Hkv, S, D = k.shape
    assert ring >= WINDOW + T - 1, "a ring shorter than a step's windows cannot hold them"
    slots = sink + ring
    ek = torch.full((B, Hkv, slots, D), float("nan"), dtype=k.dtype)
    ev = torch.full((B, Hkv, slots, D), float("nan"), dtype=k.dtype)
    pos = torch.full((B, slots), -1, dtype=torch.int64)
    missing = torch.zeros(B, S, dtype=torch.bool)
    for b, length in enumerate(lengths.tolist()):
        drafts = ring - WINDOW - T + 1             # (a draft at p overwrites p - ring, older than every window)
        written = torch.arange(length + drafts)
        pos[b].scatter_reduce_(0, reference.ring_slot(written, sink, ring), written, "amax")   # the last lap wins
        for slot, p in enumerate(pos[b].tolist()):
            if 0 <= p < length:
                ek[b, :, slot], ev[b, :, slot] = k[b, :, p], v[b, :, p]
            elif p >= length:
                ek[b, :, slot], ev[b, :, slot] = GARBAGE, -GARBAGE
        window = torch.arange(min(length, max(sink, length - T - WINDOW + 1)), length)   # what the queries read
        for p in window[torch.randperm(len(window), generator=gen)[:lost]].tolist():
            slot = reference.ring_slot(torch.tensor(p), sink, ring)
            other = p - ring if p - ring >= sink else p + ring
            ek[b, :, slot], ev[b, :, slot] = (k[b, :, other], v[b, :, other]) if other < p else (GARBAGE, -GARBAGE)
            pos[b, slot], missing[b, p] = other, True
        if lost and length:
            p = int(torch.randint(0, min(sink, length), (), generator=gen))
            ek[b, :, p], ev[b, :, p], pos[b, p], missing[b, p] = float("nan"), float("nan"), -1, True
    return ExactTokens(ek, ev, pos, sink, WINDOW), missing


def float64_oracle(q, k, v, k8, v8, scales, lengths, sink=SINK, missing=None):
    """Attention in float64: the query at i reads keys j < SINK and i - WINDOW < j <= i exact, the rest
    dequantized; an exact key whose copy is `missing` (B, S) not at all."""
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
    if missing is not None:
        scores = scores.masked_fill(exact & missing[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(scores, -1)
    p = torch.exp(scores - lse.masked_fill(lse == float("-inf"), 0)[..., None])
    out = (p * exact) @ exact_v.nan_to_num() + (p * ~exact) @ rough_v
    return out, lse


def rel_err(x, ref):
    return ((x.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def run_case(B, Hq, Hkv, S, D, dtype, kv, lengths, T, num_splits, layout="bhsd", seed=None, sink=SINK, ring=RING,
             lost=0):
    seed = torch.seed() % 2**31 if seed is None else seed
    gen = torch.Generator().manual_seed(seed)
    q, k, v = make_inputs(B, Hq * T, Hkv, S, D, dtype, layout=layout, seed=seed + 1)
    q = q.reshape(B, Hq, T, D)
    k8, k_scale, v8, v_scale = quantized_copy(k, v, layout=layout, dtype=CACHE_DTYPES[kv])
    scales = {"k_scale": k_scale, "v_scale": v_scale}
    exact, missing = exact_tokens(k, v, lengths, T, gen, sink, ring, lost)
    out, lse = flash_decode_exact_window(q, k8, v8, lengths, exact=exact, num_splits=num_splits, return_lse=True,
                                         **scales)
    assert out.shape == q.shape and out.dtype == dtype and lse.shape == (B, Hq, T)
    assert not out.isnan().any(), f"seed {seed}: an output element was never written"
    ref_out, ref_lse = float64_oracle(q, k, v, k8, v8, scales, lengths, sink, missing)
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
    run_case(B, Hq, Hkv, S, D, dtype, kv, lengths, 1, (None, 1, 2, 7)[case_index % 4], layout, lost=case_index % 3)


@pytest.mark.parametrize("sink", [4, 16])
@pytest.mark.parametrize("kv", ["fp8", "int8"])
@pytest.mark.parametrize("T, splits", [(1, 1), (1, 3), (4, 1), (4, 3), (16, 2)])
def test_edge_lengths_and_verification(kv, T, splits, sink, poisoned_empty):
    """Rows of length 0, < sink, < sink + WINDOW, = sink + WINDOW, just past it, and S (its ring wrapped twice);
    T query tokens (a verification step: each query its own window), forced splits; stale slots in every other
    case."""
    S = 150
    edge = sink + WINDOW
    lengths = [0, 3, 20, edge, edge + 1, 70, S] if T == 1 else [T, 20, edge, edge + 1 + T, 70, S]
    lengths = torch.tensor([n for n in lengths if n >= T or (T == 1 and n == 0)], dtype=torch.int32)
    run_case(len(lengths), 4, 2, S, 64, torch.float16, kv, lengths, T, splits, layout="vseq", sink=sink,
             lost=3 * (splits == 1))


@pytest.mark.parametrize("T, splits, ring", [(1, None, 512), (4, 2, 512), (16, 1, 512), (4, 1, 37)])
def test_a_long_ring_wrapped_several_times_with_stale_slots(T, splits, ring, poisoned_empty):
    """The cache's ring (models/kv_cache.py: 16 sink slots and a ring of 512, so that edits need no repair) in
    rows that wrapped it 2-3 times, with rolled-back drafts over the ring's older laps and stale slots (another
    lap's position, true values of that position) where a window position should be: the kernel gathers its
    positions' slots and takes none that records another position. And an odd ring, shorter than the step's
    windows but for 2 slots."""
    sink = 16
    S = sink + 2 * ring + 100 if ring > 100 else 200
    lengths = torch.tensor([S, sink + ring + 5, 90], dtype=torch.int32)
    run_case(3, 4, 2, S, 32, torch.bfloat16, "fp8", lengths, T, splits, layout="vseq", sink=sink, ring=ring, lost=4)


@pytest.mark.parametrize("splits", [None, 4])
def test_a_sink_as_wide_as_a_tile(splits, poisoned_empty):
    """A sink of 64 keys, a whole 64-key tile (models/kv_cache.py keeps 16; the kernels take any): the split kernels
    lay their splits from key 0 and start the first at the sink, so a row of 130 (98 keys before its window) split
    four ways had a first split of no key, whose unwritten partial the combine read. Such a call runs unsplit."""
    lengths = torch.tensor([200, 130], dtype=torch.int32)
    run_case(2, 4, 2, 200, 64, torch.float16, "fp8", lengths, 1, splits, sink=64, ring=64)


def test_the_twin_reads_only_the_slots_near_the_queries():
    """`gather_exact` (the twin's and sdpa's reads) hands out the sink and the positions before `end`, each
    checked against its slot's record: the last lap's positions, never an older one left in the ring (there
    is none in a slot that holds a newer one) nor a stale draft; empty where the row has no copy."""
    k = torch.arange(40.0)[None, None, :, None].expand(1, 1, 40, 2).clone()      # slot n's values: n
    pos = torch.full((1, 40), -1, dtype=torch.int64)
    written = torch.arange(110)               # positions 0..109 into a sink of 4 and a ring of 36: 3 laps
    pos[0].scatter_reduce_(0, reference.ring_slot(written, 4, 36), written, "amax")
    pos[0, reference.ring_slot(torch.tensor(100), 4, 36)] = 136            # a later lap's draft, rolled back
    exact = ExactTokens(k, k.clone(), pos, 4, 8)
    near = reference.gather_exact(exact, torch.tensor([104]), 10)                        # (4 + 10 slots)
    held = near.pos[0][near.pos[0] >= 0].tolist()
    assert sorted(held) == [0, 1, 2, 3, *range(94, 100), *range(101, 104)]
    for lane, p in enumerate(near.pos[0].tolist()):
        if p >= 0:      # its values are its slot's
            assert near.k[0, 0, lane, 0] == reference.ring_slot(torch.tensor(p), 4, 36)
    assert (reference.gather_exact(exact, torch.tensor([2]), 10).pos >= 0).sum() == 2   # a row of 2 tokens


def test_cache_shorter_than_sink_and_window():
    """S <= SINK + WINDOW: no query ever reads an 8-bit key; the split kernels are not launched."""
    lengths = torch.tensor([30, 5], dtype=torch.int32)
    run_case(2, 4, 4, 30, 32, torch.float32, "fp8", lengths, 1, None)


def test_refuses_a_16bit_cache_and_bad_exact_tokens():
    q, k, v = make_inputs(1, 4, 2, 64, 32, torch.float16)
    gen = torch.Generator().manual_seed(0)
    exact = exact_tokens(k, v, torch.tensor([64]), 1, gen)[0]
    with pytest.raises(ValueError, match="8-bit"):
        flash_decode_exact_window(q, k, v, exact=exact, k_scale=None, v_scale=None)
    k8, ks, v8, vs = quantized_copy(k, v)
    with pytest.raises(ValueError, match="int64"):
        flash_decode_exact_window(q, k8, v8, exact=exact._replace(pos=exact.pos.int()), k_scale=ks, v_scale=vs)
    with pytest.raises(ValueError, match="shape"):
        flash_decode_exact_window(q, k8, v8, exact=exact._replace(k=exact.k[:, :1], v=exact.v[:, :1]),
                                  k_scale=ks, v_scale=vs)
    short = exact._replace(k=exact.k[:, :, :SINK + WINDOW - 1], v=exact.v[:, :, :SINK + WINDOW - 1],
                           pos=exact.pos[:, :SINK + WINDOW - 1])
    with pytest.raises(ValueError, match="ring of at least"):     # a window would not fit its ring
        flash_decode_exact_window(q, k8, v8, exact=short, k_scale=ks, v_scale=vs)
    wide = torch.randn(1, 4, MAX_EXACT_QUERY_TOKENS + 1, 32, dtype=q.dtype)   # more than the ring is sized for
    for fn in (flash_decode_exact_window, reference.flash_decode_exact_window):
        with pytest.raises(ValueError, match=f"with exact tokens supported: 1..{MAX_EXACT_QUERY_TOKENS}"):
            fn(wide, k8, v8, exact=exact, k_scale=ks, v_scale=vs)
    strided = torch.stack((exact.pos, torch.full_like(exact.pos, -1)), dim=-1)[..., 0]   # (B, N), stride 2
    for bad in (exact._replace(pos=strided), exact._replace(k=exact.k.transpose(2, 3).contiguous().transpose(2, 3))):
        with pytest.raises(ValueError, match="contiguous last dimension"):   # (the kernels read other slots')
            flash_decode_exact_window(q, k8, v8, exact=bad, k_scale=ks, v_scale=vs)


@pytest.mark.parametrize("tma", [False, True])
@pytest.mark.parametrize("kv", ["fp8", "int8"])
@pytest.mark.parametrize("T, splits", [(1, 1), (1, 3), (4, 2)])
def test_the_transposed_kernel_starts_its_first_split_at_the_sink(kv, T, splits, tma, poisoned_empty):
    """The transposed kernel (the 34B shapes' 8-bit plans) with the product's sink of 16 keys and 64-key tiles: the
    first split starts at key 16, off a whole tile. Rows whose keys end inside its first tile, on that tile's end,
    one key past it, and further; with and without tensor descriptors (V's start at 16 bytes: aligned)."""
    import dataclasses

    from kernels import interface
    from kernels.plan import plan_launch, shape_key
    B, Hq, Hkv, S, D, sink = 8, 8, 2, 300, 64, 16
    edge = sink + WINDOW                 # the split kernels read keys sink .. length - WINDOW (+ the query's token)
    lengths = [0, edge + T, edge + 30, edge + 48, edge + 49, edge + 112, 230, S]   # (shifted: ends in, on, past 64)
    lengths = torch.tensor([n for n in lengths if n >= T or (T == 1 and n == 0)], dtype=torch.int32)
    B = len(lengths)
    plan = dataclasses.replace(plan_launch(B, Hq, Hkv, S, D, T=T, scaled=True, num_splits=splits), transposed=True,
                               tma=tma, block_n=64)
    with interface.forced_plans([(shape_key(B, Hq, Hkv, S, D, T, True, kv == "int8"), plan)]):
        run_case(B, Hq, Hkv, S, D, torch.bfloat16, kv, lengths, T, None, layout="vseq", sink=sink, ring=RING)


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

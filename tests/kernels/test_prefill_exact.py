"""kernels.prefill_exact (prefill attention over an fp8 cache with exact sink and window tokens) under the interpreter
against a float64 oracle that picks, per (query, key), the exact or the dequantized copy by position, and
kernels.reference.prefill_attention_exact (the models' CPU path) against the same oracle. Fresh random inputs,
NaN-poisoned outputs; the prior's slots in random order with stale (past the span's start) and empty ones (NaN
values, position -1); spans from 0 and from later starts, shorter than the window, crossing the sink, not a multiple
of the tile; GQA groups 1, 4, 8; head dims 64, 128 (and 80 in fp32); bf16 and fp16. The kernel reads the cache as the
model stores it, e4m3 or int8 bytes with their scales (V sequence-major, as a GPU stores a grouped model's), or a
16-bit copy (the oracle takes the same values dequantized)."""

import pytest
import torch
from kernel_inputs import quantized_copy

from kernels import reference
from kernels.prefill_exact import PrefillTiles, default_tiles, prefill_attention_exact
from kernels.validation import ExactTokens

SINK, WINDOW, RING = 16, 32, 48     # models/kv_cache.py's
SMALL = PrefillTiles(16, 16, 4, 1)  # several query blocks and key tiles at test sizes: every range of the kernel


def make_case(B, Hq, Hkv, start, T, D, dtype, seed, missing=(), sink=SINK, stored="fp8"):
    """Inputs of one call and what the oracle needs: the true keys and values by position, the cache as `stored`
    ("fp8", "int8": bytes and scales; "vseq": e4m3 with V sequence-major; "dequantized": in `dtype`) with its
    dequantized copy, and which positions before `start` the prior holds. The prior (SINK + RING slots, random order) holds the
    sink and the RING positions before `start`, but for `missing` (a repair's lost window), a stale slot past the
    span's start (finite garbage) and empty slots (NaN, -1)."""
    gen = torch.Generator().manual_seed(seed)
    S = start + T
    q = torch.randn(B, Hq, T, D, generator=gen).to(dtype)
    k, v = (torch.randn(B, S, Hkv, D, generator=gen).to(dtype).transpose(1, 2) for _ in range(2))   # (B, Hkv, S, D)
    k8, k_scale, v8, v_scale = quantized_copy(k, v, layout="vseq" if stored == "vseq" else "bhsd",
                                              dtype=torch.int8 if stored == "int8" else torch.float8_e4m3fn)
    k_cache = reference.dequantize(k8, k_scale, dtype)                                  # (B, Hkv, S, D) as prefill
    v_cache = reference.dequantize(v8, v_scale, dtype)                                  # reads the cache
    cache = (k_cache, v_cache, {}) if stored == "dequantized" else (k8, v8, dict(k_scale=k_scale, v_scale=v_scale))
    N = sink + RING
    prior_k = torch.full((B, Hkv, N, D), float("nan"), dtype=dtype)
    prior_v = torch.full((B, Hkv, N, D), float("nan"), dtype=dtype)
    pos = torch.full((B, N), -1, dtype=torch.int64)
    held = torch.zeros(B, S, dtype=torch.bool)
    for b in range(B):
        kept = sorted((set(range(min(sink, start))) | set(range(max(0, start - RING), start))) - set(missing))
        slots = torch.randperm(N, generator=gen).tolist()
        for p, slot in zip(kept, slots):
            prior_k[b, :, slot], prior_v[b, :, slot], pos[b, slot] = k[b, :, p], v[b, :, p], p
            held[b, p] = True
        if len(kept) < N:
            stale = slots[len(kept)]
            prior_k[b, :, stale], prior_v[b, :, stale], pos[b, stale] = 7.0, -7.0, start + T // 2   # a later draft
    prior = ExactTokens(prior_k, prior_v, pos, sink, WINDOW)
    k_new, v_new = k[:, :, start:], v[:, :, start:]                                     # strided views, as a model's
    return q, k_cache, v_cache, prior, k_new, v_new, (k, v, held), cache


def float64_oracle(q, k_cache, v_cache, start, truth, scale=None, sink=SINK):
    """The query at i reads keys j < SINK and i - WINDOW < j <= i exact (the true copy, where j >= start or the prior
    holds it; else not at all), keys SINK <= j <= i - WINDOW dequantized. float64."""
    k, v, held = truth
    B, Hq, T, D = q.shape
    group = Hq // k.shape[1]
    S = start + T
    exact_k, exact_v, rough_k, rough_v = (t.double().repeat_interleave(group, 1) for t in (k, v, k_cache, v_cache))
    i = (start + torch.arange(T))[:, None]                                               # (T, 1)
    j = torch.arange(S)[None]                                                            # (1, S)
    has_copy = (held | (torch.arange(S) >= start))[:, None, None]                       # (B, 1, 1, S)
    exact = has_copy & ((j < sink) | (j > i - WINDOW)) & (j <= i)                        # (B, 1, T, S)
    rough = (j >= sink) & (j <= i - WINDOW)                                              # (T, S)
    qd = q.double() * (D ** -0.5 if scale is None else scale)
    scores = torch.where(exact, qd @ exact_k.transpose(-1, -2), qd @ rough_k.transpose(-1, -2))
    scores = scores.masked_fill(~(exact | rough), float("-inf"))                        # (B, Hq, T, S)
    p = torch.softmax(scores, dim=-1)
    return (p * exact) @ exact_v + (p * ~exact) @ rough_v


def rel_err(x, ref):
    return ((x.double() - ref).norm() / ref.norm()).item()


def run_case(B, Hq, Hkv, start, T, D, dtype, tiles=SMALL, missing=(), scale=None, sink=SINK, stored="fp8",
             read_bytes=True, num_splits=None):
    """`read_bytes`: an 8-bit cache's bytes read by the tiles (True), dequantized to a copy first (False), or as
    `reads_bytes` plans (None). `num_splits`: forced (the plan gives 1 off a GPU)."""
    seed = torch.seed() % 2**31
    q, k_cache, v_cache, prior, k_new, v_new, truth, (k, v, scales) = make_case(B, Hq, Hkv, start, T, D, dtype, seed,
                                                                             missing, sink, stored)
    out = prefill_attention_exact(q, k, v, prior, k_new, v_new, start, tiles=tiles, softmax_scale=scale,
                                  read_bytes=read_bytes, num_splits=num_splits, **scales)
    assert out.shape == q.shape and out.dtype == dtype
    assert not out.isnan().any(), f"seed {seed}: an output element was never written, or a NaN slot was read"
    oracle = float64_oracle(q, k_cache, v_cache, start, truth, scale, sink)
    # the reference (the models' CPU path) in float64 is the oracle's arithmetic; in the call's dtype it is the
    # error PyTorch makes, which bounds the kernel's (interpreted: float32 arithmetic, stores that truncate)
    as64 = [t.double() for t in (q, k_cache, v_cache, k_new, v_new)]
    prior64 = prior._replace(k=prior.k.double(), v=prior.v.double())
    twin64 = reference.prefill_attention_exact(as64[0], as64[1], as64[2], prior64, as64[3], as64[4], start,
                                               softmax_scale=scale)
    assert rel_err(twin64, oracle) <= 1e-12, f"seed {seed}"
    twin = reference.prefill_attention_exact(q, k_cache, v_cache, prior, k_new, v_new, start, softmax_scale=scale)
    torch_err, err = rel_err(twin, oracle), rel_err(out, oracle)
    assert err <= 3 * torch_err, f"seed {seed}: kernel {err:.2e} against PyTorch's {torch_err:.2e} in {dtype}"


@pytest.mark.parametrize("B, Hq, Hkv, start, T, D, dtype, stored", [
    (1, 4, 4, 0, 50, 64, torch.bfloat16, "fp8"),      # from 0: the sink and the band in the span itself
    (1, 8, 2, 0, 20, 128, torch.float16, "vseq"),     # a span shorter than the window
    (1, 8, 1, 5, 40, 64, torch.bfloat16, "vseq"),     # a start inside the sink: its first 5 from the prior, the rest
    (1, 8, 2, 70, 45, 128, torch.bfloat16, "fp8"),    # a prefix in the cache; T not a multiple of the tiles
    (1, 4, 4, 100, 10, 64, torch.float16, "int8"),    # a short span: every window reaches into the prior
    (2, 8, 1, 64, 33, 64, torch.float16, "vseq"),     # two rows, each its own prior; group 8
    (1, 8, 2, 70, 45, 64, torch.bfloat16, "dequantized"),   # a cache handed over in q's dtype
])
def test_matches_float64_oracle(B, Hq, Hkv, start, T, D, dtype, stored, poisoned_empty):
    run_case(B, Hq, Hkv, start, T, D, dtype, stored=stored)


@pytest.mark.parametrize("read_bytes", [False, None])
def test_a_dequantized_copy_and_the_plan(read_bytes, poisoned_empty):
    """The copy route (whole prompts, grouped heads) and the planned one, e4m3 with V sequence-major and int8."""
    run_case(1, 8, 2, 30, 40, 64, torch.bfloat16, stored="vseq", read_bytes=read_bytes)
    run_case(1, 4, 4, 40, 16, 64, torch.float16, stored="int8", read_bytes=read_bytes)


def test_reads_the_bytes_where_one_program_reads_each_tile():
    """The measured plan (module docstring): an MHA span of one query block reads the bytes; more blocks, or a
    group that has several query heads read each KV head's tiles, take the copy."""
    from kernels.prefill_exact import reads_bytes
    tiles = default_tiles(128, torch.bfloat16)
    assert reads_bytes(100, 1, tiles) and reads_bytes(128, 1, tiles)
    assert not reads_bytes(129, 1, tiles) and not reads_bytes(8192, 1, tiles)
    assert not reads_bytes(100, 8, tiles) and not reads_bytes(1, 3, tiles)


@pytest.mark.parametrize("B, Hq, Hkv, start, T, splits", [
    (1, 4, 4, 200, 20, 3),      # an edit's span after a prefix: the middle's tiles over 3 programs, the last the band
    (1, 8, 2, 100, 40, 4),      # 3 query blocks, a group of 4
    (2, 4, 1, 40, 30, 5),       # more splits than some blocks have middle tiles: those splits read nothing
    (1, 4, 2, 0, 50, 2),        # from 0: early blocks without a middle at all
])
def test_split_keys_merge_to_the_oracle(B, Hq, Hkv, start, T, splits, poisoned_empty):
    """A block's keys split over several programs (the sink's tile in the first, the band in the last), merged by
    their running maxima and sums."""
    run_case(B, Hq, Hkv, start, T, 64, torch.bfloat16, stored="vseq" if Hq > Hkv else "fp8", num_splits=splits)


def test_splits_fill_one_wave_of_an_edit():
    """The plan (`prefill_splits`): 1 off a GPU; on one, a span whose programs fill less than a wave splits its keys
    until they do, each split at least MIN_SPLIT_TILES tiles of the prefix."""
    from unittest import mock

    from kernels import prefill_exact
    tiles = default_tiles(128, torch.bfloat16)
    cuda = torch.device("cuda", 0)
    assert prefill_exact.prefill_splits(100, 32, 1, 32668, tiles, torch.device("cpu")) == 1
    with mock.patch("kernels.interface.device_facts", return_value=("H200", 132)):
        assert prefill_exact.prefill_splits(100, 32, 1, 32668, tiles, cuda) == 4      # 7B's edit: 32 -> 128 programs
        assert prefill_exact.prefill_splits(100, 64, 1, 131000, tiles, cuda) == 2     # 34B's: 64 -> 128
        assert prefill_exact.prefill_splits(8192, 32, 1, 0, tiles, cuda) == 1         # a whole prompt: no prefix
        assert prefill_exact.prefill_splits(100, 32, 1, 8192, tiles, cuda) == 2       # 128 tiles: two splits of 64
        assert prefill_exact.prefill_splits(100, 32, 1, 8092, tiles, cuda) == 1       # fewer: the merge did not pay
        assert prefill_exact.prefill_splits(300, 32, 1, 32668, tiles, cuda) == 1      # 96 programs: within a wave


def test_a_position_no_slot_holds_is_read_by_neither_set(poisoned_empty):
    """A repair prefill runs without the window before its start: those keys drop out of the softmax, as in the
    masked softmax of the models' CPU path (the oracle leaves them out)."""
    run_case(1, 8, 2, 90, 37, 64, torch.bfloat16, missing=(60, 75, 88, 89))


@pytest.mark.parametrize("start", [0, 5, 40, 50])
def test_a_sink_narrower_than_its_tile(start, poisoned_empty):
    """A sink of 4 (the decode kernels' tests keep one too): its tile is 16 keys wide, and keys 4..15 belong to the
    8-bit and band ranges, not to it, whether they are the span's own (from 5) or the prior's within a query's window
    (from 40: 9..15); read there too, they counted twice."""
    run_case(1, 4, 2, start, 40, 64, torch.float16, tiles=PrefillTiles(16, 32, 4, 1), sink=4)


def test_default_tiles(poisoned_empty):
    """The GPU's tiling (128 x 64): one query block, sink, middle and band ranges."""
    assert default_tiles(128, torch.bfloat16) == PrefillTiles(128, 64, 8, 3)
    run_case(1, 4, 1, 60, 70, 128, torch.bfloat16, tiles=None)


def test_float32_and_an_odd_head_dim(poisoned_empty):
    """fp32 (IEEE dots on a GPU), head dim 80 (tiles of 128 columns, masked), a softmax scale of the caller's."""
    run_case(1, 4, 1, 40, 30, 80, torch.float32, tiles=PrefillTiles(16, 32, 4, 1), scale=0.3)


def test_refuses_what_it_cannot_compute():
    q, k_cache, v_cache, prior, k_new, v_new, _, (k8, v8, scales) = make_case(1, 4, 2, 20, 8, 64, torch.float16, 0)
    with pytest.raises(ValueError, match="needs k_scale"):
        prefill_attention_exact(q, k8, v8, prior, k_new, v_new, 20)
    with pytest.raises(ValueError, match="needs v_scale"):
        prefill_attention_exact(q, k8, v8, prior, k_new, v_new, 20, k_scale=scales["k_scale"],
                                v_scale=scales["v_scale"][..., :-1])
    with pytest.raises(ValueError, match="go with an 8-bit cache"):
        prefill_attention_exact(q, k_cache, v_cache, prior, k_new, v_new, 20, **scales)
    with pytest.raises(ValueError, match="v has dtype"):
        prefill_attention_exact(q, k8, v8.view(torch.int8), prior, k_new, v_new, 20, **scales)
    with pytest.raises(ValueError, match="head dim 8"):
        small = [t[..., :8] for t in (q, k_cache, v_cache, k_new, v_new)]
        prefill_attention_exact(small[0], small[1], small[2], prior._replace(k=prior.k[..., :8], v=prior.v[..., :8]),
                                small[3], small[4], 20)
    with pytest.raises(ValueError, match="dtype"):
        prefill_attention_exact(q.float(), k_cache, v_cache, prior, k_new, v_new, 20)
    with pytest.raises(ValueError, match="S >= start"):
        prefill_attention_exact(q, k_cache, v_cache, prior, k_new, v_new, 21)
    with pytest.raises(ValueError, match="start must be"):
        prefill_attention_exact(q, k_cache, v_cache, prior, k_new, v_new, -1)
    with pytest.raises(ValueError, match="num_splits"):
        prefill_attention_exact(q, k_cache, v_cache, prior, k_new, v_new, 20, num_splits=0)
    with pytest.raises(ValueError, match="multiple"):
        prefill_attention_exact(q[:, :3], k_cache, v_cache, prior, k_new, v_new, 20)
    with pytest.raises(ValueError, match="positive"):
        prefill_attention_exact(q, k_cache, v_cache, prior, k_new, v_new, 20, softmax_scale=-0.1)
    with pytest.raises(ValueError, match="int64"):
        prefill_attention_exact(q, k_cache, v_cache, prior._replace(pos=prior.pos.int()), k_new, v_new, 20)
    strided = torch.stack((prior.pos, torch.full_like(prior.pos, -1)), dim=-1)[..., 0]   # (B, N), stride 2
    with pytest.raises(ValueError, match="contiguous last dimension"):   # (the kernel read every other slot's)
        prefill_attention_exact(q, k_cache, v_cache, prior._replace(pos=strided), k_new, v_new, 20)


def test_the_gpu_check_script_runs_its_dry_run(capsys):
    """bench/gpu/prefill_exact_check.py --small (the interpreter, two small cases) passes and prints its summary, so
    the script the H200 runs does not rot between GPU runs."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[2] / "bench" / "gpu" / "prefill_exact_check.py"
    spec = importlib.util.spec_from_file_location("prefill_exact_check", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--small"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("2 of 2 passed")

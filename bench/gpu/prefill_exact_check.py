"""kernels/prefill_exact.py compiled on a GPU against a float64 oracle at real shapes (the tests run modest ones under
the interpreter): CodeLlama-7B (32 heads, MHA, D = 128) and -34B (64 query heads over 8 KV heads), bf16, prompts of
2k-16k from position 0 and spans after a prefix (the prior's slots in random order with stale and empty ones, NaN
in the empty ones), one span crossing the sink, one shorter than the window. The oracle picks, per (query, key),
the exact or the dequantized copy by position (tests/kernels/test_prefill_exact.py's, computed on the GPU in
float64 a head and a block of queries at a time); the bar is 3x the error of PyTorch's masked softmax in bf16
(`kernels.reference.prefill_attention_exact`, the path the kernel replaces), as in the tests. The kernel reads the
cache as the model stores it: e4m3 bytes and scales, V sequence-major for the grouped 34B. Outputs NaN-poisoned.
Prints one line per case and a summary line.

`--sweep` then times one layer's attention at 8k and 32k (7B shape, from position 0) for every tiling in
kernels.prefill_exact.TILE_CHOICES, beside the masked softmax and SDPA's plain causal attention over a bf16 cache
(the cost without the exact tokens), CUDA events, median of 5 after a warm-up. `--bytes` times, per layer, the
kernel on the cache's bytes against what ran before it read them (the whole prefix dequantized, then the kernel on
that copy), for 7B and 34B prompts from 0 and for an edit (the last 100 tokens of a long prompt).

    python bench/gpu/prefill_exact_check.py [--sweep] [--bytes]    # from the repository root, on the GPU machine
    TRITON_INTERPRET=1 python bench/gpu/prefill_exact_check.py --small    # a dry run of the script on a CPU
"""
from __future__ import annotations

import statistics
import sys

import torch
import torch.nn.functional as F

from kernels import reference
from kernels.check import nan_poisoned_empty
from kernels.interface import as_sequence_major
from kernels.prefill_exact import TILE_CHOICES, PrefillTiles, default_tiles, prefill_attention_exact
from kernels.validation import ExactTokens

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SINK, WINDOW, RING = 16, 32, 48          # models/kv_cache.py's
SHAPES = {"7B": (32, 32, 128), "34B": (64, 8, 128)}          # (Hq, Hkv, D)
DTYPE = torch.bfloat16


def make_case(Hq, Hkv, D, start, T, seed):
    """q (1, Hq, T, D); the cache (1, Hkv, S, D) dequantized, and as stored (`stored`: e4m3 k, v and their (1, Hkv, S)
    scales, v sequence-major where Hq > Hkv, models/kv_cache.py's layout on a GPU); the prior (slots in random order: the sink and the last
    RING positions before start, one stale slot past start, NaN in empty ones); k_new, v_new; the true k, v."""
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    S = start + T
    q = torch.randn(1, Hq, T, D, generator=gen, device=DEVICE).to(DTYPE)
    k = torch.randn(1, Hkv, S, D, generator=gen, device=DEVICE).to(DTYPE)
    v = torch.randn(1, Hkv, S, D, generator=gen, device=DEVICE).to(DTYPE)
    k8, k_scale = reference.quantize(k, torch.float8_e4m3fn)
    v8, v_scale = reference.quantize(v, torch.float8_e4m3fn)
    k_cache, v_cache = reference.dequantize(k8, k_scale, DTYPE), reference.dequantize(v8, v_scale, DTYPE)
    stored = dict(k=k8, v=as_sequence_major(v8) if Hq > Hkv else v8, k_scale=k_scale, v_scale=v_scale)
    N = SINK + RING
    prior_k = torch.full((1, Hkv, N, D), float("nan"), dtype=DTYPE, device=DEVICE)
    prior_v = prior_k.clone()
    pos = torch.full((1, N), -1, dtype=torch.int64, device=DEVICE)
    kept = sorted(set(range(min(SINK, start))) | set(range(max(0, start - RING), start)))
    slots = torch.randperm(N, generator=torch.Generator().manual_seed(seed)).tolist()
    for p, slot in zip(kept, slots):
        prior_k[0, :, slot], prior_v[0, :, slot], pos[0, slot] = k[0, :, p], v[0, :, p], p
    if len(kept) < N:
        stale = slots[len(kept)]
        prior_k[0, :, stale], prior_v[0, :, stale], pos[0, stale] = 7.0, -7.0, start + T // 2
    prior = ExactTokens(prior_k, prior_v, pos, SINK, WINDOW)
    return q, k_cache, v_cache, prior, k[:, :, start:], v[:, :, start:], k, v, stored


def on_bytes(q, stored, prior, k_new, v_new, start, **options):
    """The kernel on the cache's bytes and scales, its tiles dequantized as they load (`read_bytes`, whatever the
    plan would choose)."""
    return prefill_attention_exact(q, stored["k"], stored["v"], prior, k_new, v_new, start, k_scale=stored["k_scale"],
                                   v_scale=stored["v_scale"], read_bytes=True, **options)


def on_dequantized_copy(q, stored, prior, k_new, v_new, start, **options):
    """What ran before the kernel read the bytes: the prefix dequantized (models/kv_cache.py's `write` returned that
    copy every layer), then the kernel on the copy."""
    k = reference.dequantize(stored["k"], stored["k_scale"], q.dtype)
    v = reference.dequantize(stored["v"], stored["v_scale"], q.dtype)
    return prefill_attention_exact(q, k, v, prior, k_new, v_new, start, **options)


def as_planned(q, stored, prior, k_new, v_new, start):
    """As the model calls it: the bytes, the kernel's plans (`reads_bytes`, `prefill_splits`)."""
    return prefill_attention_exact(q, stored["k"], stored["v"], prior, k_new, v_new, start, k_scale=stored["k_scale"],
                                   v_scale=stored["v_scale"])


def oracle_error(out, q, k, v, k_cache, v_cache, start, block=1024) -> float:
    """Relative (Frobenius) error of out (1, Hq, T, D) against float64 attention in which the query at i reads keys
    j < SINK and i - WINDOW < j <= i from the true k, v (every one is held here) and the others from the cache."""
    _, Hq, T, D = q.shape
    group = Hq // k.shape[1]
    diff = total = 0.0
    for h in range(Hq):
        kv = h // group
        ke, ve, kr, vr = (t[0, kv].double() for t in (k, v, k_cache, v_cache))            # (S, D)
        for t0 in range(0, T, block):
            i = start + torch.arange(t0, min(t0 + block, T), device=q.device)[:, None]      # (b, 1)
            end = int(i[-1]) + 1
            j = torch.arange(end, device=q.device)[None]                                   # (1, end)
            exact = ((j < SINK) | (j > i - WINDOW)) & (j <= i)
            rough = (j >= SINK) & (j <= i - WINDOW)
            qd = q[0, h, t0:t0 + block].double() * D ** -0.5                               # (b, D)
            scores = torch.where(exact, qd @ ke[:end].T, qd @ kr[:end].T).masked_fill(~(exact | rough), float("-inf"))
            p = torch.softmax(scores, dim=-1)
            want = (p * exact) @ ve[:end] + (p * rough) @ vr[:end]                          # (b, D)
            diff += (out[0, h, t0:t0 + block].double() - want).pow(2).sum().item()
            total += want.pow(2).sum().item()
    return (diff / total) ** 0.5


def check(model: str, start: int, T: int, seed: int) -> tuple[float, float, bool]:
    Hq, Hkv, D = SHAPES[model]
    q, k_cache, v_cache, prior, k_new, v_new, k, v, stored = make_case(Hq, Hkv, D, start, T, seed)
    with nan_poisoned_empty():
        out = on_bytes(q, stored, prior, k_new, v_new, start)
        torch.cuda.synchronize() if DEVICE == "cuda" else None
    twin = reference.prefill_attention_exact(q, k_cache, v_cache, prior, k_new, v_new, start)
    err = oracle_error(out, q, k, v, k_cache, v_cache, start)
    torch_err = oracle_error(twin, q, k, v, k_cache, v_cache, start)
    ok = not out.isnan().any().item() and err <= 3 * torch_err
    return err, torch_err, ok


def _ms(fn, reps: int = 5) -> float:
    fn()
    times = []
    for _ in range(reps):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(begin.elapsed_time(end))
    return statistics.median(times)


def sweep(lengths) -> list[str]:
    """One layer's attention (7B shape, from position 0), ms: each tiling, the masked softmax, plain causal SDPA."""
    Hq, Hkv, D = SHAPES["7B"]
    rows = []
    for T in lengths:
        q, k_cache, v_cache, prior, k_new, v_new, k, v, stored = make_case(Hq, Hkv, D, 0, T, 0)
        causal = _ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
        masked = _ms(lambda: reference.prefill_attention_exact(q, k_cache, v_cache, prior, k_new, v_new, 0))
        rows.append(f"| {T} | SDPA causal, bf16 cache | {causal:.2f} | 1.00 |")
        rows.append(f"| {T} | masked softmax (before) | {masked:.2f} | {masked / causal:.2f} |")
        for tiles in TILE_CHOICES:
            try:
                ms = _ms(lambda: on_bytes(q, stored, prior, k_new, v_new, 0, tiles=tiles))
                rows.append(f"| {T} | kernel {tuple(tiles)}{' (default)' if tiles == default_tiles(D, DTYPE) else ''}"
                            f" | {ms:.2f} | {ms / causal:.2f} |")
            except Exception as error:            # a tiling that does not build or launch here: say so, go on
                rows.append(f"| {T} | kernel {tuple(tiles)} | {type(error).__name__}: {str(error)[:80]} | |")
            print(rows[-1], flush=True)
    return rows


def bytes_against_copy(cases) -> list[str]:
    """One layer's attention, ms: the dequantized copy and the kernel on it, unsplit (what ran before the kernel read
    bytes or split keys), the kernel on the bytes unsplit, and as the model now calls it (`as_planned`: its route and
    splits); whether the two unsplit ones give bit for bit the same output (the tile's dequantization rounds as
    `reference.dequantize`), and the planned one's largest difference from the copy's."""
    from kernels.prefill_exact import default_tiles, prefill_splits, reads_bytes
    rows = []
    for model, start, T in cases:
        Hq, Hkv, D = SHAPES[model]
        q, k_cache, v_cache, prior, k_new, v_new, k, v, stored = make_case(Hq, Hkv, D, start, T, 0)
        del k_cache, v_cache, k, v
        copy = on_dequantized_copy(q, stored, prior, k_new, v_new, start, num_splits=1)
        same = torch.equal(copy, on_bytes(q, stored, prior, k_new, v_new, start, num_splits=1))
        planned_diff = (as_planned(q, stored, prior, k_new, v_new, start).float() - copy.float()).abs().max().item()
        before = _ms(lambda: on_dequantized_copy(q, stored, prior, k_new, v_new, start, num_splits=1))
        unsplit = _ms(lambda: on_bytes(q, stored, prior, k_new, v_new, start, num_splits=1))
        planned = _ms(lambda: as_planned(q, stored, prior, k_new, v_new, start))
        tiles = default_tiles(D, DTYPE)
        plan = (f"{'bytes' if reads_bytes(T, Hq // Hkv, tiles) else 'copy'}, "
                f"{prefill_splits(T, Hq, 1, start, tiles, q.device)} split(s)")
        rows.append(f"| {model} | {start} | {T} | {before:.3f} | {unsplit:.3f} | {planned:.3f} ({plan}) | "
                    f"{before / planned:.2f}x | {'identical' if same else 'DIFFERENT'} | {planned_diff:.1e} |")
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str]) -> int:
    small = "--small" in argv
    print(f"{torch.cuda.get_device_name() if DEVICE == 'cuda' else 'CPU, interpreter'}, torch {torch.__version__}, "
          f"default tiles {tuple(default_tiles(128, DTYPE))}", flush=True)
    cases = ([("34B", 0, 70), ("7B", 40, 60)] if small else
             [("7B", 0, 2048), ("7B", 0, 4096), ("7B", 0, 8192), ("7B", 0, 16384), ("34B", 0, 8192),
              ("7B", 10, 2048), ("7B", 4096, 1024), ("7B", 12000, 4000), ("7B", 16000, 20), ("34B", 6000, 2100)])
    if small:       # shapes the interpreter can run: 2 KV heads, small tiles
        SHAPES.update({"7B": (2, 2, 128), "34B": (8, 2, 128)})
    rows, failed = [], 0
    for n, (model, start, T) in enumerate(cases):
        err, torch_err, ok = check(model, start, T, seed=n)
        failed += not ok
        rows.append(f"| {model} | {start} | {T} | {err:.2e} | {torch_err:.2e} | {'ok' if ok else 'FAILED'} |")
        print(rows[-1], flush=True)
    print("\n| model | start | span T | rel. error vs float64 | masked softmax's (bf16) | |\n|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\n{len(rows) - failed} of {len(rows)} passed (bar: 3x the masked softmax's bf16 error)", flush=True)
    if "--sweep" in argv and DEVICE == "cuda":
        table = sweep([8192, 32768])
        print("\n| prompt T | attention of one layer, 7B shape | ms | vs SDPA causal |\n|---|---|---|---|")
        print("\n".join(table))
    if "--bytes" in argv and DEVICE == "cuda":
        table = bytes_against_copy([("7B", 0, 8192), ("7B", 0, 32768), ("7B", 32668, 100), ("7B", 8092, 100),
                                    ("7B", 32760, 8), ("34B", 0, 8192), ("34B", 32668, 100), ("34B", 131000, 100)])
        print("\n| model | start | span T | copy + kernel, unsplit (before), ms | bytes, unsplit, ms | as planned, ms | "
              "before / planned | unsplit outputs | planned - copy, max |\n|---|---|---|---|---|---|---|---|---|")
        print("\n".join(table))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""Kernel benchmark: flash_decode against every attention path a user could pick instead.

    python -m kernels.bench [--out DIR] [--quick] [--no-flex] [--check [quick]] [--only LABELS]
    python -m kernels.bench --tune [--out DIR] [--budget-s S]    # plan exploration (kernels.tune)
    python -m kernels.bench --tune-from FILE [--plans-dir DIR]   # plan file from a saved sweep, no GPU

Needs a CUDA GPU and only torch + triton (matplotlib for the plot, if present). One run measures
the device-to-device copy bandwidth and the read bandwidth (the faster of PyTorch's and a Triton
read-only reduction over 4 GiB, far beyond L2: the ceiling of a decode kernel, which only reads),
then for each shape the median time of: flash_decode (bf16 cache), flash_decode over an fp8 copy of
the cache, an 8-token verification step (q (B, Hq, 8, D)), eager attention (repeat_kv + matmul
+ softmax in bf16, as transformers' eager attention), SDPA under each backend (flash, cuDNN, efficient, math), compiled FlexAttention, and a
Triton kernel that only reads K and V once; each as plain launches (triton's do_bench, L2 flushed
before each call) and as CUDA-graph replays (a graph of calls over rotating input sets larger than
L2, replayed many times). Each row gets its achieved read rate (bytes read / time: K+V, plus the
scales for fp8). Writes kernels.json, kernels.md and kernels.png to --out, each naming the card,
and prints the bars of issues 10, 11 and 13 last. --out defaults to $OUT, else bench/scratch (ignored by git):
a casual run never writes over the committed results in bench/results/, which take an explicit --out.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels import reference
from kernels.interface import as_sequence_major, flash_decode, launch, plan_for, sequence_major, sequence_major_v_pays
from kernels.plan import PLANS_DIR, device_slug, load_table

DEVICE = "cuda"               # the logic runs on the CPU too (interpreter), for tests
L2_FLUSH_BYTES = 256 * 2**20  # rotate input sets until this many bytes separate two uses of one set
VERIFY_TOKENS = 8             # the speculative verification step's query tokens (issue 13's bar)


@dataclass(frozen=True)
class Shape:
    model: str
    B: int
    S: int
    Hq: int
    Hkv: int
    D: int = 128

    @property
    def kv_bytes(self) -> int:
        return 2 * self.B * self.Hkv * self.S * self.D * 2  # K and V in bf16

    @property
    def fp8_bytes(self) -> int:
        return self.B * self.Hkv * self.S * (2 * self.D + 2 * 4)  # e4m3 K and V plus their fp32 scales

    @property
    def label(self) -> str:
        return f"{self.model} B={self.B} S={self.S // 1024}k" if self.S >= 1024 else f"{self.model} B={self.B} S={self.S}"


def shapes(quick: bool = False) -> list[Shape]:
    cl34 = [Shape("34B", 1, s * 1024, 64, 8) for s in (1, 4, 16, 64, 128)]
    cl34 += [Shape("34B", 8, 16384, 64, 8), Shape("34B", 64, 2048, 64, 8)]
    cl7 = [Shape("7B", 1, s * 1024, 32, 32) for s in (4, 16, 64)] + [Shape("7B", 8, 16384, 32, 32)]
    smol = [Shape("SmolLM2", 1, s * 1024, 9, 3, 64) for s in (8, 32)]
    paper = [Shape("paper", 65536 // s, s, 16, 2) for s in (256, 1024, 4096, 16384, 65536)]
    paper += [Shape("paper", 65536 // s, s, 16, 2) for s in (512, 2048, 8192, 32768)]
    paper += [Shape("paper", 1, 131072, 16, 2)]
    if quick:  # issue 10's table
        return [cl34[0], cl34[1], cl34[2], cl34[4], cl34[6], cl7[2], paper[0], paper[2], paper[4]]
    return cl34 + cl7 + smol + sorted(paper, key=lambda s: s.S)


# --- inputs: one set per rotation slot, with the fp8 copy and the verification queries -----------

@dataclass
class Inputs:
    q: torch.Tensor            # (B, Hq, D) bf16
    k: torch.Tensor            # (B, Hkv, S, D) bf16
    v: torch.Tensor
    q_verify: torch.Tensor     # (B, Hq, VERIFY_TOKENS, D)
    k8: torch.Tensor           # (B, Hkv, S, D) e4m3, quantized from k by kernels.reference
    k_scale: torch.Tensor      # (B, Hkv, S) fp32
    v8: torch.Tensor           # sequence-major where the models store it so (interface.sequence_major_v_pays)
    v_scale: torch.Tensor
    k_i8: torch.Tensor | None = None        # (B, Hkv, S, D) int8, quantized from k: made by with_int8()
    k_i8_scale: torch.Tensor | None = None  # (B, Hkv, S) fp32
    v_i8: torch.Tensor | None = None
    v_i8_scale: torch.Tensor | None = None

    def with_int8(self) -> "Inputs":
        """These inputs with the int8 copy of the cache (kernels.reference's quantizer), made once."""
        if self.k_i8 is None:
            (self.k_i8, self.k_i8_scale), (self.v_i8, self.v_i8_scale) = (
                reference.quantize(c, torch.int8) for c in (self.k, self.v))
            if sequence_major(self.v8):
                self.v_i8 = as_sequence_major(self.v_i8)
        return self


def make_inputs(shape: Shape, device=None) -> Inputs:
    device = device or DEVICE
    q = torch.randn(shape.B, shape.Hq, shape.D, device=device, dtype=torch.bfloat16)
    k = torch.randn(shape.B, shape.Hkv, shape.S, shape.D, device=device, dtype=torch.bfloat16)
    v = torch.randn(shape.B, shape.Hkv, shape.S, shape.D, device=device, dtype=torch.bfloat16)
    q_verify = torch.randn(shape.B, shape.Hq, VERIFY_TOKENS, shape.D, device=device, dtype=torch.bfloat16)
    (k8, k_scale), (v8, v_scale) = reference.quantize_fp8(k), reference.quantize_fp8(v)
    if sequence_major_v_pays(shape.Hq // shape.Hkv, v8.dtype):  # as models.kv_cache stores it
        v8 = as_sequence_major(v8)
    return Inputs(q, k, v, q_verify, k8, k_scale, v8, v_scale)


def make_input_sets(shape: Shape, n_sets: int, device=None) -> list[Inputs]:
    return [make_inputs(shape, device) for _ in range(n_sets)]


def n_sets_for(shape: Shape) -> int:
    return max(1, min(32, math.ceil(L2_FLUSH_BYTES / shape.kv_bytes)))


# --- the contestants: each takes one Inputs -------------------------------------------------------

def sdpa(backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    kind = getattr(SDPBackend, backend)

    def run(x: Inputs):
        q, k, v = x.q, x.k, x.v
        with sdpa_kernel(kind):
            if backend == "EFFICIENT_ATTENTION":  # no GQA path: expand K/V first (counted in the time)
                group = q.shape[1] // k.shape[1]
                k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
                return F.scaled_dot_product_attention(q[:, :, None], k, v)[:, :, 0]
            return F.scaled_dot_product_attention(q[:, :, None], k, v, enable_gqa=True)[:, :, 0]
    return run


def flex():
    from torch.nn.attention.flex_attention import flex_attention
    import torch._dynamo
    # One compilation per shape: lift the recompile limit so late shapes are not silently eager.
    for knob in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 256)
    compiled = torch.compile(flex_attention, dynamic=False)

    def run(x: Inputs):
        return compiled(x.q[:, :, None], x.k, x.v, enable_gqa=True)[:, :, 0]
    return run


def ours(x: Inputs):
    return flash_decode(x.q, x.k, x.v)


def ours_fp8(x: Inputs):
    return flash_decode(x.q, x.k8, x.v8, k_scale=x.k_scale, v_scale=x.v_scale)


def ours_verify(x: Inputs):
    return flash_decode(x.q_verify, x.k, x.v)


SDPA_BACKENDS = {"sdpa_flash": "FLASH_ATTENTION", "sdpa_cudnn": "CUDNN_ATTENTION",
                 "sdpa_efficient": "EFFICIENT_ATTENTION", "sdpa_math": "MATH"}


LEAN_PEERS = ("sdpa_flash", "sdpa_cudnn")  # the best SDPA backend at every shape so far (H100, H200)


def contestants(with_flex: bool, lean: bool = False):
    """Every method of the sweep; `lean` keeps ours, the read-only kernel and LEAN_PEERS (eager, the
    efficient and math backends are 3-100x slower everywhere and take most of a sweep's time)."""
    table = {f"read_only_{i}": stream_read(*config) for i, config in enumerate(READ_ONLY_CONFIGS)}
    table |= {"flash_decode": ours, "flash_decode_fp8": ours_fp8, f"flash_decode_t{VERIFY_TOKENS}": ours_verify}
    if not lean:
        table["eager"] = lambda x: reference.eager_decode(x.q, x.k, x.v)
    table |= {name: sdpa(backend) for name, backend in SDPA_BACKENDS.items() if not lean or name in LEAN_PEERS}
    if with_flex and not lean:
        table["flex"] = flex()
    return table


# --- timing -------------------------------------------------------------------------------------

def time_plain(fn, sets) -> float:
    """Median µs of single launches; do_bench flushes L2 before each, sets rotate too."""
    state = {"i": 0}

    def call():
        x = sets[state["i"] % len(sets)]
        state["i"] += 1
        fn(x)
    return triton.testing.do_bench(call, warmup=25, rep=200, return_mode="median") * 1e3


def graph_replay_us(run, replays: int = 30) -> float:
    """Median µs of one replay of a CUDA graph that captured `run()` (any zero-argument callable).

    `run` is called twice on a side stream first (compilation, workspace allocation), then captured.
    A sleep kernel is queued before the timed replays, so all of them and their events are enqueued
    while the GPU is busy: the host's graph-launch latency never shows up as idle GPU time.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run()
        run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    graph.replay()
    torch.cuda.synchronize()
    events = [torch.cuda.Event(enable_timing=True) for _ in range(replays + 1)]
    torch.cuda._sleep(20_000_000)  # ~10 ms of GPU time to hide the enqueueing below
    events[0].record()
    for i in range(replays):
        graph.replay()
        events[i + 1].record()
    torch.cuda.synchronize()
    samples = sorted(events[i].elapsed_time(events[i + 1]) * 1e3 for i in range(replays))
    del graph
    return samples[len(samples) // 2]


def median_replay_us(run, replays: int = 50, rounds: int = 3) -> float:
    """The median over `rounds` fresh captures of `graph_replay_us(run, replays)`: one capture's median can sit a
    few percent off (a bench/gpu script comparing two calls of a few µs difference takes this)."""
    return sorted(graph_replay_us(run, replays) for _ in range(rounds))[rounds // 2]


def time_graph(fn, sets, replays: int = 30) -> float:
    """Median µs per call of a graph holding one call of fn per input set (sets rotate past L2)."""
    def run_all():
        for x in sets:
            fn(x)
    return graph_replay_us(run_all, replays) / len(sets)


def best_of_rounds(runs: dict, calls: int, replays: int = 30, rounds: int = 2) -> dict:
    """µs per call of each of `runs` (name -> a callable making `calls` calls), as graph replays: the best of
    `rounds` rounds that take every contestant in turn, so a drift of the machine meets all of them alike."""
    best = {}
    for _ in range(rounds):
        for name, run in runs.items():
            us = graph_replay_us(run, replays) / calls
            best[name] = min(best.get(name, us), us)
    return best


def save_table(out: Path, stem: str, table: str, payload: dict) -> None:
    """A GPU script's results: OUT/stem.md (the table) and OUT/stem.json (`payload`); the table printed last."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(table, encoding="utf-8")
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
    print(table)


@triton.jit
def _stream_read_kernel(K, V, OUT, n_per_program, BLOCK: tl.constexpr, STAGES: tl.constexpr):
    """Reads its slice of K and V once and writes one number: the fastest any decode kernel could
    read the cache, launch and tail included (the practical floor, next to the copy-bandwidth one).
    The loop is software-pipelined explicitly: Triton pipelines on its own only loads that feed a dot."""
    pid = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in tl.range(0, n_per_program, BLOCK, num_stages=STAGES):
        idx = pid * n_per_program + start + offs
        acc += tl.load(K + idx).to(tl.float32) + tl.load(V + idx).to(tl.float32)
    tl.store(OUT + pid, tl.sum(acc, axis=0))


def stream_read(programs: int, block: int, warps: int, stages: int):
    def run(x: Inputs):
        return read_once(x.k, x.v, programs, block, warps, stages)
    return run


def read_once(k: torch.Tensor, v: torch.Tensor, programs: int, block: int, warps: int, stages: int) -> torch.Tensor:
    n, count = k.numel(), programs  # powers of two divide every benchmark shape's element count
    while n % (count * block):
        count //= 2
    out = torch.empty(count, device=k.device, dtype=torch.float32)
    _stream_read_kernel[(count,)](k, v, out, n // count, BLOCK=block, STAGES=stages, num_warps=warps,
                                  num_stages=stages)
    return out


# (programs, block, warps, loop stages). One wave of 8-warp programs with a 5-stage loop read 4 GiB at 4.64 TB/s on an
# H200 where the others, unpipelined, reached 4.47 at best (bench/gpu/read_ceiling.py, NOTES.md Run 17).
READ_ONLY_CONFIGS = [(512, 2048, 8, 1), (1024, 4096, 8, 3), (2048, 2048, 4, 3), (128, 8192, 8, 5)]


def copy_bandwidth() -> float:
    """Bytes read plus written per second by a 2 GiB device-to-device copy."""
    n = 2**30  # bf16 elements: 2 GiB
    src = torch.randn(n // 2**10, 2**10, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def read_bandwidth(configs=READ_ONLY_CONFIGS) -> tuple[float, dict]:
    """Bytes read per second by the fastest read-only reduction of a 4 GiB buffer (far beyond L2):
    PyTorch's sum and amax, and the Triton read-only kernel in each of `configs` (`triton_read_only_<i>`).
    Returns the best rate and every contestant's, so the ceiling is not one implementation's weakness."""
    half = torch.randn(2**30, device="cuda", dtype=torch.bfloat16)   # 2 GiB
    other = torch.randn(2**30, device="cuda", dtype=torch.bfloat16)
    whole = torch.cat([half, other])
    readers = {"torch.sum": lambda: whole.sum(dtype=torch.float32), "torch.amax": lambda: whole.amax()}
    for i, config in enumerate(configs):
        readers[f"triton_read_only_{i}"] = lambda config=config: read_once(half, other, *config)
    rates = {}
    for name, fn in readers.items():
        ms = triton.testing.do_bench(fn, warmup=10, rep=100, return_mode="median")
        rates[name] = whole.numel() * whole.element_size() / (ms * 1e-3)
    del half, other, whole
    torch.cuda.empty_cache()
    return max(rates.values()), rates


# --- correctness --------------------------------------------------------------------------------

def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def check(x: Inputs) -> dict:
    """Relative error of our three rows against the float32 eager reference of the same inputs."""
    return {
        "flash_decode": rel_err(ours(x), reference.flash_decode(x.q, x.k, x.v)),
        "flash_decode_fp8": rel_err(ours_fp8(x), reference.flash_decode(x.q, x.k8, x.v8, k_scale=x.k_scale,
                                                                        v_scale=x.v_scale)),
        f"flash_decode_t{VERIFY_TOKENS}": rel_err(ours_verify(x), reference.flash_decode(x.q_verify, x.k, x.v)),
    }


def precompile_sweep(shapes_: list[Shape]) -> float:
    """Build every flash_decode binary the sweep will launch (bf16, fp8 and verification rows), in
    parallel, before any timing: on stand-in caches of 16 keys, which give the same binaries (the
    length is a runtime argument, and strides keep their divisibility by 16); the plans are those of
    the real lengths. Returns the seconds spent."""
    calls = []
    for shape in shapes_:
        B, Hq, Hkv, D = shape.B, shape.Hq, shape.Hkv, shape.D
        q = torch.randn(B, Hq, D, device=DEVICE, dtype=torch.bfloat16)
        k = torch.randn(B, Hkv, 16, D, device=DEVICE, dtype=torch.bfloat16)
        k8, k_scale = reference.quantize_fp8(k)
        q_verify = torch.randn(B, Hq, VERIFY_TOKENS, D, device=DEVICE, dtype=torch.bfloat16)
        fp8_scales = {"k_scale": k_scale, "v_scale": k_scale}
        for q_, cache, scales, T, fp8 in ((q, k, {}, 1, False), (q, k8, fp8_scales, 1, True),
                                          (q_verify, k, {}, VERIFY_TOKENS, False)):
            plan = plan_for(q_, B, Hq, Hkv, shape.S, D, T, fp8)
            calls.append(lambda q_=q_, cache=cache, scales=scales, plan=plan:
                         launch(q_, cache, cache, None, plan, compile_only=True, **scales))
    return compile_in_parallel(calls)


def compile_in_parallel(calls, workers: int | None = None) -> float:
    """Run compile-only launches (`launch(..., compile_only=True)`) on a thread pool under Triton's
    AsyncCompileMode, so later launches find their binaries built; returns the seconds spent. A call
    that fails here fails again, with its message, when it is launched for real."""
    from concurrent.futures import ThreadPoolExecutor
    start = time.perf_counter()
    mode = getattr(triton, "AsyncCompileMode", None)
    if mode is None:
        return 0.0
    with ThreadPoolExecutor(workers or os.cpu_count() or 4) as pool, mode(pool, ignore_errors=True):
        for call in calls:
            try:
                call()
            except Exception:
                pass
    return time.perf_counter() - start


def bench_shape(shape: Shape, methods: dict, bandwidth: float, log, read_bw: float | None = None,
                plain: bool = True) -> dict:
    """One row of the sweep: every method's median µs as graph replays (and single launches with `plain`)."""
    sets = make_input_sets(shape, n_sets_for(shape))
    row = {"shape": shape.__dict__ | {"label": shape.label}, "kv_mb": shape.kv_bytes / 1e6,
           "bytes": {"bf16": shape.kv_bytes, "fp8": shape.fp8_bytes},
           "floor_us": shape.kv_bytes / bandwidth * 1e6,
           "read_floor_us": shape.kv_bytes / read_bw * 1e6 if read_bw else None,
           "plans": {name: plan_for(sets[0].q, shape.B, shape.Hq, shape.Hkv, shape.S, shape.D, T, fp8).__dict__
                     for name, T, fp8 in (("flash_decode", 1, False), ("flash_decode_fp8", 1, True),
                                          (f"flash_decode_t{VERIFY_TOKENS}", VERIFY_TOKENS, False))},
           "rel_err": check(sets[0]), "plain_us": {}, "graph_us": {}, "errors": {}}
    row["rel_err_vs_eager_fp32"] = row["rel_err"]["flash_decode"]
    for name, fn in methods.items():
        try:
            if plain:
                row["plain_us"][name] = time_plain(fn, sets)
            row["graph_us"][name] = time_graph(fn, sets)
        except Exception as error:  # a backend that cannot run this shape: record why, go on
            row["errors"][name] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            if DEVICE == "cuda":
                torch.cuda.synchronize()
        log(f"  {name:18s} plain {row['plain_us'].get(name, float('nan')):9.1f} µs   "
            f"graph {row['graph_us'].get(name, float('nan')):9.1f} µs")
    del sets
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    # The read-only kernel's best configuration stands for the practical floor of this shape.
    for timing in (row["plain_us"], row["graph_us"]):
        reads = [timing.pop(name) for name in list(timing) if name.startswith("read_only_")]
        if reads:
            timing["read_floor"] = min(reads)
    row["read_tb_s"] = {name: (shape.fp8_bytes if name.endswith("_fp8") else shape.kv_bytes) / (us * 1e-6) / 1e12
                        for name, us in row["graph_us"].items()}
    return row


# --- the bars of issues 10, 11 and 13 -----------------------------------------------------------

def best_sdpa(graph_us: dict) -> float:
    return min((graph_us[k] for k in SDPA_BACKENDS if k in graph_us), default=float("nan"))


def bars(rows: list[dict], read_bw: float) -> list[dict]:
    """Each bar with what was measured in this run and whether it is met (None: shape not measured)."""
    by = {r["shape"]["label"]: r for r in rows}
    g = {label: r["graph_us"] for label, r in by.items()}
    out = []

    def add(bar, measured, met):
        out.append({"bar": bar, "measured": measured, "met": met})

    # A shape where flash_decode failed (an error, no time) counted as at least as fast; one with no SDPA time has
    # nothing to compare with.
    failed = [label for label, t in g.items() if "flash_decode" not in t]
    timed = {label: t for label, t in g.items() if "flash_decode" in t and not math.isnan(best_sdpa(t))}
    slower = [f"{label} {best_sdpa(t) / t['flash_decode']:.2f}x" for label, t in timed.items()
              if t["flash_decode"] > best_sdpa(t)]
    add("every shape at least as fast as the best SDPA backend",
        f"{len(timed) - len(slower)}/{len(timed) + len(failed)} shapes" + (f"; slower: {', '.join(slower)}" if slower
                                                                          else "")
        + (f"; flash_decode failed: {', '.join(failed)}" if failed else ""),
        not (slower or failed) if timed or failed else None)
    big = [r for r in rows if r["kv_mb"] >= 256 and "flash_decode" in r["read_tb_s"]]
    add("K+V >= 256 MB: read rate >= 4.45 TB/s",
        ", ".join(f"{r['shape']['label']} {r['read_tb_s']['flash_decode']:.2f}" for r in big),
        all(r["read_tb_s"]["flash_decode"] >= 4.45 for r in big) if big else None)
    mid = [r for r in rows if 60 <= r["kv_mb"] <= 70 and (r["shape"]["model"] == "paper"
                                                          or (r["shape"]["model"] == "34B" and r["shape"]["S"] == 16384
                                                              and r["shape"]["B"] == 1))]
    add("67 MB rows (34B 16k, paper): <= 23 µs",
        ", ".join(f"{r['shape']['label']} {r['graph_us'].get('flash_decode', float('nan')):.1f}" for r in mid),
        all(r["graph_us"].get("flash_decode", 1e9) <= 23 for r in mid) if mid else None)
    for label, bar, ratio in (("34B B=1 S=1k", "34B B=1 S=1k: >= 1.25x cuDNN", 1.25),
                              ("34B B=1 S=4k", "34B B=1 S=4k: >= 1.25x cuDNN", 1.25)):
        t = g.get(label, {})
        r = t.get("sdpa_cudnn", float("nan")) / t.get("flash_decode", float("nan"))
        add(bar, f"{r:.2f}x", r >= ratio if not math.isnan(r) else None)
    for label, ratio in (("7B B=1 S=64k", 1.6), ("34B B=1 S=128k", 1.4)):
        t = g.get(label, {})
        r = best_sdpa(t) / t.get("flash_decode_fp8", float("nan")) if t else float("nan")
        add(f"fp8 {label}: >= {ratio}x the best bf16 SDPA", f"{r:.2f}x", r >= ratio if not math.isnan(r) else None)
    fp8_big = [r for r in rows if r["kv_mb"] >= 128 and "flash_decode_fp8" in r["read_tb_s"]]
    add("fp8, K+V >= 128 MB: >= 80% of the read rate on bytes read (cache + scales)",
        ", ".join(f"{r['shape']['label']} {100 * r['read_tb_s']['flash_decode_fp8'] * 1e12 / read_bw:.0f}%" for r in fp8_big),
        all(r["read_tb_s"]["flash_decode_fp8"] * 1e12 >= 0.8 * read_bw for r in fp8_big) if fp8_big else None)
    verify = f"flash_decode_t{VERIFY_TOKENS}"
    for label in ("7B B=1 S=16k", "34B B=1 S=64k"):
        t = g.get(label, {})
        r = t.get(verify, float("nan")) / t.get("flash_decode", float("nan")) if t else float("nan")
        add(f"{VERIFY_TOKENS}-token verification {label}: <= 1.2x one token", f"{r:.2f}x",
            r <= 1.2 if not math.isnan(r) else None)
    return out


def bars_table(results: list[dict]) -> str:
    mark = {True: "met", False: "MISSED", None: "not measured"}
    lines = ["| bar | measured | |", "|---|---|---|"]
    lines += [f"| {b['bar']} | {b['measured']} | {mark[b['met']]} |" for b in results]
    return "\n".join(lines) + "\n"


# --- reports ------------------------------------------------------------------------------------

def environment() -> dict:
    props = torch.cuda.get_device_properties(0)
    return {"card": props.name, "sms": props.multi_processor_count, "l2_bytes": getattr(props, "L2_cache_size", None),
            "memory_bytes": props.total_memory, "date": datetime.date.today().isoformat(),
            "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "dtype": "bfloat16"}


PEERS = ["sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "sdpa_math", "flex", "eager"]
PEER_TITLES = {"sdpa_flash": "SDPA flash", "sdpa_cudnn": "cuDNN", "sdpa_efficient": "efficient", "sdpa_math": "math",
               "flex": "flex", "eager": "eager"}


def markdown(env: dict, bandwidth: float, rows: list[dict], read_bw: float | None = None) -> str:
    read_note = f", read bandwidth {read_bw / 1e12:.2f} TB/s" if read_bw else ""
    verify = f"flash_decode_t{VERIFY_TOKENS}"
    peers = [k for k in PEERS if any(k in row["graph_us"] for row in rows)] or PEERS  # the columns measured
    lines = [f"# Flash-Decoding kernel benchmark: {env['card']}, {env['date']}",
             "", f"torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, bf16 queries. "
             f"Measured in the same run: copy bandwidth (read + write) {bandwidth / 1e12:.2f} TB/s{read_note}. "
             "Times are medians in µs as CUDA-graph replays (plain launches in kernels.json). "
             "'read-only kernel' is a Triton kernel that only reads K and V once. 'TB/s' = bytes read / time "
             "(K+V; for fp8 the e4m3 cache plus its scales); 'vs best SDPA' = best SDPA backend's time / ours; "
             f"'fp8' reads an e4m3 copy of the cache; 't{VERIFY_TOKENS}' attends {VERIFY_TOKENS} query tokens "
             "(speculative verification) over the bf16 cache.",
             "",
             f"| shape | K+V MB | read-only kernel | flash_decode | TB/s | fp8 | fp8 TB/s | t{VERIFY_TOKENS} | "
             + "".join(f"{PEER_TITLES[k]} | " for k in peers) + "vs best SDPA | fp8 vs best SDPA |",
             "|---|---|---|---|---|---|---|---|" + "---|" * (len(peers) + 2)]
    nan = float("nan")
    for row in rows:
        g, rate = row["graph_us"], row.get("read_tb_s", {})
        ours_us, best = g.get("flash_decode", nan), best_sdpa(g)
        cells = [f"{g[k]:.1f}" if k in g else "n/a" for k in peers]
        lines.append(f"| {row['shape']['label']} | {row['kv_mb']:.0f} | {g.get('read_floor', nan):.1f} | {ours_us:.1f} | "
                     f"{rate.get('flash_decode', nan):.2f} | {g.get('flash_decode_fp8', nan):.1f} | "
                     f"{rate.get('flash_decode_fp8', nan):.2f} | {g.get(verify, nan):.1f} | " + " | ".join(cells) +
                     f" | {best / ours_us:.2f}x | {best / g.get('flash_decode_fp8', nan):.2f}x |")
    return "\n".join(lines) + "\n"


def context_plot(path: Path, title: str, ylabel: str, draw, log_y: bool = False) -> None:
    """A figure against context length (log2 axis): `draw(ax)` adds the lines. Needs matplotlib, else no-op."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    draw(ax)
    ax.set_xscale("log", base=2)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot(rows: list[dict], path: Path, card: str = "") -> None:
    series = [r for r in rows if r["shape"]["model"] == "34B" and r["shape"]["B"] == 1]
    if not series:  # a run of other shapes (--only): nothing to draw
        return
    xs = [r["shape"]["S"] for r in series]

    def draw(ax):
        for name in ["flash_decode", "flash_decode_fp8", "sdpa_flash", "sdpa_cudnn", "flex", "eager"]:
            ys = [r["graph_us"].get(name, float("nan")) for r in series]
            ax.plot(xs, ys, marker="o", label=name, linewidth=2.5 if name.startswith("flash_decode") else 1.2)
        ax.plot(xs, [r["floor_us"] for r in series], "k--", label="copy-bandwidth floor")
        if series and series[0].get("read_floor_us"):
            ax.plot(xs, [r["read_floor_us"] for r in series], "k:", label="read-bandwidth floor")
    context_plot(path, f"CodeLlama-34B attention shape, batch 1, {card}", "µs per decode attention (graph replay)",
                 draw, log_y=True)


def log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class OneLineParser(argparse.ArgumentParser):
    """The GPU benchmarks' command lines: a bad option is one line and exit status 2, said at once (on a CPU too),
    not a traceback minutes into a GPU run."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def whole(low: int = 1):
    """An argparse type: a whole number from `low` up."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a number from {low} up, got {value}")
        return value
    return parse


def one_of(*names: str):
    def parse(text: str) -> str:
        if text not in names:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(names)}")
        return text
    return parse


def comma_list(item, *, empty: bool = False, length: int | None = None):
    """An argparse type: each comma-separated part checked by `item`; the text comes back as typed (the callers
    split it). `empty`: '' (nothing) is allowed; `length`: exactly that many parts."""
    def parse(text: str) -> str:
        parts = [item(part.strip()) for part in text.split(",") if part.strip()]
        if not parts and not empty:
            raise argparse.ArgumentTypeError(f"{text!r} lists nothing")
        if parts and length is not None and len(parts) != length:
            raise argparse.ArgumentTypeError(f"expected {length} comma-separated values, got {text!r}")
        return text
    return parse


def folder(text: str) -> Path:
    """An argparse type: a folder to write into, made if missing; a file there is refused at once (its mkdir failed
    after the bandwidth was measured)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a folder")
    return path


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < math.inf:        # NaN too
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text}")
    return value


def begin_run(program: str, out: Path):
    """What every GPU benchmark does first: (environment, copy bandwidth, logger), or None without CUDA.
    The environment carries the read bandwidth too (env["read_bandwidth"], bytes/s)."""
    if not torch.cuda.is_available():
        print(f"{program} needs a CUDA GPU: Flash-Decoding's speed is a GPU property.", file=sys.stderr)
        return None
    torch.manual_seed(0)
    env = environment()
    bandwidth = copy_bandwidth()
    env["read_bandwidth"], env["read_bandwidth_by_reader"] = read_bandwidth()
    env["copy_bandwidth"] = bandwidth
    env["plans"] = {"dir": str(PLANS_DIR), "file": f"{device_slug(env['card'])}.json",
                    "entries": len(load_table(env["card"], env["sms"]))}
    log_to_stderr(f"{env['card']}: copy bandwidth {bandwidth / 1e12:.2f} TB/s, read bandwidth "
                  f"{env['read_bandwidth'] / 1e12:.2f} TB/s; tuned plans: {env['plans']['entries']} entries in "
                  f"{env['plans']['dir']}/{env['plans']['file']}")
    out.mkdir(parents=True, exist_ok=True)
    return env, bandwidth, log_to_stderr


def main(argv=None) -> int:
    parser = OneLineParser(prog="python -m kernels.bench", description="Flash-Decoding kernel benchmark (needs a CUDA GPU)")
    parser.add_argument("--out", type=folder, default=Path(os.environ.get("OUT", "bench/scratch")),
                        help="folder for the results (default: $OUT, else bench/scratch)")
    parser.add_argument("--quick", action="store_true", help="issue 10's nine shapes")
    parser.add_argument("--no-flex", action="store_true", help="skip FlexAttention (slow to compile)")
    parser.add_argument("--check", nargs="?", const="full", choices=["full", "quick"],
                        help="run the GPU correctness sweep first (quick: every feature, fewer shapes)")
    parser.add_argument("--check-only", action="store_true", help="with --check: the correctness sweep alone")
    parser.add_argument("--lean", action="store_true", help="graph replays of ours, the read-only kernel, SDPA "
                        "flash and cuDNN only (no single launches, eager, efficient, math)")
    parser.add_argument("--only", default="", help="comma-separated substrings of shape labels to run (with "
                        "--tune, one ending in $ matches a label's end: 'S=64k fp8$' leaves out 'S=64k fp8 T=8')")
    parser.add_argument("--tune", action="store_true", help="explore launch plans instead (kernels.tune)")
    parser.add_argument("--budget-s", type=positive_seconds, default=330.0,
                        help="--tune: seconds of exploration at most (default: 330)")
    parser.add_argument("--cases", choices=["issue", "all", "8bit"], default="issue",
                        help="--tune: issue 10's shapes and the bars' rows, every row of the final sweep, or the "
                             "rows where an int8 cache runs the dot kernel and the 8-token rows of both 8-bit caches "
                             "(default: issue)")
    parser.add_argument("--regrid", action="store_true",
                        help="--tune --cases all: the tiling grid for shapes the committed table measured too "
                             "(after a new kernel option), not only a local search from their plan")
    parser.add_argument("--tune-from", type=Path, help="write the plan file from a saved --tune sweep (no GPU)")
    parser.add_argument("--plans-dir", type=folder, help="where the plan file goes (default: with --tune <out>/plans; "
                        "with --tune-from kernels/plans, the committed place, whose file it rewrites)")
    args = parser.parse_args(argv)
    # Without the option they modify they were ignored: --check-only alone ran the whole timing sweep, no check.
    if args.check_only and not args.check:
        parser.error("--check-only goes with --check")
    if args.regrid and not (args.tune and args.cases == "all"):
        parser.error("--regrid goes with --tune --cases all")
    if not args.tune and (args.cases != parser.get_default("cases") or args.budget_s != parser.get_default("budget_s")):
        parser.error(f"{'--cases' if args.cases != parser.get_default('cases') else '--budget-s'} goes with --tune")
    if args.plans_dir and not (args.tune or args.tune_from):
        parser.error("--plans-dir goes with --tune or --tune-from")
    wanted = [w for w in args.only.split(",") if w]
    todo = [shape for shape in shapes(args.quick) if not wanted or any(w in shape.label for w in wanted)]
    if not todo and not (args.tune or args.tune_from or args.check_only):   # the sweep ended on an unbound table
        parser.error(f"--only {args.only}: no shape{' of --quick' * args.quick} matches (labels like "
                     f"'{shapes()[0].label}')")
    if args.tune and wanted:    # else it measured the bandwidths, explored nothing and wrote empty results
        from kernels.tune import cases, label_matches
        if not any(label_matches(case.label, w) for case in cases(args.cases) for w in wanted):
            parser.error(f"--only {args.only}: no case of --tune --cases {args.cases} matches (labels like "
                         f"'{cases(args.cases)[0].label}')")
    if args.tune_from:
        from kernels.tune import plans_from_sweep
        opener = gzip.open if args.tune_from.suffix == ".gz" else open  # committed sweeps are gzipped
        try:
            with opener(args.tune_from, "rt") as f:
                sweep = json.load(f)
            sweep["env"]["card"], sweep["env"]["sms"], sweep["env"]["date"], sweep["cases"]
            for case in sweep["cases"]:     # kernels-check.json has env and cases too: it made a plan file of nothing
                case["shape"]["S"], case["T"], case["fp8"], case["best"], case["heuristic_us"], case["peers_us"]
        except (OSError, ValueError, KeyError, TypeError) as exc:   # a missing file, not JSON, not a sweep
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
            parser.error(f"--tune-from {args.tune_from}: not a saved --tune sweep ({reason})")
        directory = args.plans_dir or Path("kernels/plans")  # its entries for shapes the sweep did not measure stay
        try:
            path = plans_from_sweep(sweep, directory, load_table(sweep["env"]["card"], sweep["env"]["sms"], directory))
        except OSError as exc:      # a folder that cannot be made or written: a traceback
            parser.error(f"--plans-dir {directory}: cannot write the plan file ({exc.strerror or exc})")
        print(f"wrote {path}")
        return 0
    if (started := begin_run("kernels.bench", args.out)) is None:
        return 2
    env, bandwidth, log = started
    read_bw = env["read_bandwidth"]
    if args.tune:
        from kernels.tune import explore
        return explore(env, args.out, args.plans_dir or args.out / "plans", args.budget_s, log,
                       only=[w for w in args.only.split(",") if w], which=args.cases, regrid=args.regrid)
    checks_failed = False
    if args.check:
        from kernels.check import check_summary, gpu_correctness_sweep
        checks = gpu_correctness_sweep(log, quick=args.check == "quick")
        (args.out / "kernels-check.json").write_text(json.dumps({"env": env, "cases": checks}, indent=1), encoding="utf-8")
        checks_failed = not all(c["ok"] for c in checks)  # reported, then the timings still run
        if args.check_only:
            print(check_summary(checks))
            return 1 if checks_failed else 0
    methods = contestants(with_flex=not args.no_flex, lean=args.lean)
    rows = []
    log(f"flash_decode binaries of {len(todo)} shapes built in {precompile_sweep(todo):.0f} s")
    for shape in todo:
        log(f"{shape.label}: K+V {shape.kv_bytes / 1e6:.0f} MB")
        rows.append(bench_shape(shape, methods, bandwidth, log, read_bw, plain=not args.lean))
        # Written after every shape (the table too), so a run cut short still leaves its results.
        results = bars(rows, read_bw)
        (args.out / "kernels.json").write_text(json.dumps({"env": env, "bandwidth": bandwidth, "read_bandwidth": read_bw,
                                                           "rows": rows, "bars": results}, indent=1), encoding="utf-8")
        table = markdown(env, bandwidth, rows, read_bw)
        if len(rows) < len(todo):
            table += f"\nCut short: {len(rows)} of {len(todo)} shapes measured.\n"
        (args.out / "kernels.md").write_text(table + "\n## Bars\n\n" + bars_table(results), encoding="utf-8")
        # An earlier run's plot would sit beside these rows if this run is cut, or draws nothing (--only, no
        # matplotlib): gone with the first rows, drawn again at the end.
        (args.out / "kernels.png").unlink(missing_ok=True)
    plot(rows, args.out / "kernels.png", env["card"])
    print(table)
    print(f"Bars ({env['card']}, copy {bandwidth / 1e12:.2f} TB/s, read {read_bw / 1e12:.2f} TB/s, "
          f"tuned plans: {env['plans']['entries']} entries from {env['plans']['dir']}):")
    print(bars_table(results))
    if checks_failed:
        print("GPU CORRECTNESS SWEEP FAILED: see kernels-check.json (cases with ok false)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

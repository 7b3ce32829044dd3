"""Kernel benchmark: flash_decode against every attention path a user could pick instead.

    python -m kernels.bench [--out DIR] [--quick] [--no-flex] [--tune]

Needs a CUDA GPU and only torch + triton (matplotlib for the plot, if present). One run measures
the device-to-device copy bandwidth (the ceiling), then for each shape the median time of:
flash_decode, the eager reference (repeat_kv + matmul + softmax), SDPA under each backend (flash,
cuDNN, efficient, math) and compiled FlexAttention, each as plain launches (triton's do_bench, L2
flushed before each call) and as CUDA-graph replays (a graph of calls over rotating input sets
larger than L2, replayed many times). Writes kernels.json, kernels.md and kernels.png to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels import reference
import kernels.interface as fd
from kernels.interface import flash_decode, launch, plan_launch

L2_FLUSH_BYTES = 256 * 2**20  # rotate input sets until this many bytes separate two uses of one set


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
    if quick:
        return [cl34[0], cl34[1], cl34[2], cl34[4], cl34[6], cl7[2], paper[0], paper[2], paper[4]]
    return cl34 + cl7 + smol + sorted(paper, key=lambda s: s.S)


# --- the contestants: each takes (q, k, v) with q (B, Hq, D), k/v (B, Hkv, S, D) -------------------

def sdpa(backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    kind = getattr(SDPBackend, backend)

    def run(q, k, v):
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

    def run(q, k, v):
        return compiled(q[:, :, None], k, v, enable_gqa=True)[:, :, 0]
    return run


def contestants(with_flex: bool):
    table = {f"read_only_{i}": stream_read(*config) for i, config in enumerate(READ_ONLY_CONFIGS)}
    table |= {
        "flash_decode": flash_decode,
        "eager": reference.flash_decode,
        "sdpa_flash": sdpa("FLASH_ATTENTION"),
        "sdpa_cudnn": sdpa("CUDNN_ATTENTION"),
        "sdpa_efficient": sdpa("EFFICIENT_ATTENTION"),
        "sdpa_math": sdpa("MATH"),
    }
    if with_flex:
        table["flex"] = flex()
    return table


# --- timing -------------------------------------------------------------------------------------

def make_input_sets(shape: Shape, n_sets: int, device="cuda"):
    sets = []
    for _ in range(n_sets):
        q = torch.randn(shape.B, shape.Hq, shape.D, device=device, dtype=torch.bfloat16)
        k = torch.randn(shape.B, shape.Hkv, shape.S, shape.D, device=device, dtype=torch.bfloat16)
        v = torch.randn(shape.B, shape.Hkv, shape.S, shape.D, device=device, dtype=torch.bfloat16)
        sets.append((q, k, v))
    return sets


def time_plain(fn, sets) -> float:
    """Median µs of single launches; do_bench flushes L2 before each, sets rotate too."""
    state = {"i": 0}

    def call():
        q, k, v = sets[state["i"] % len(sets)]
        state["i"] += 1
        fn(q, k, v)
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


def time_graph(fn, sets, replays: int = 30) -> float:
    """Median µs per call of a graph holding one call of fn per input set (sets rotate past L2)."""
    def run_all():
        for q, k, v in sets:
            fn(q, k, v)
    return graph_replay_us(run_all, replays) / len(sets)


@triton.jit
def _stream_read_kernel(K, V, OUT, n_per_program, BLOCK: tl.constexpr):
    """Reads its slice of K and V once and writes one number: the fastest any decode kernel could
    read the cache, launch and tail included (the practical floor, next to the copy-bandwidth one)."""
    pid = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n_per_program, BLOCK):
        idx = pid * n_per_program + start + offs
        acc += tl.load(K + idx).to(tl.float32) + tl.load(V + idx).to(tl.float32)
    tl.store(OUT + pid, tl.sum(acc, axis=0))


def stream_read(programs: int, block: int, warps: int, stages: int):
    def run(q, k, v):
        n, count = k.numel(), programs  # powers of two divide every benchmark shape's element count
        while n % (count * block):
            count //= 2
        out = torch.empty(count, device=k.device, dtype=torch.float32)
        _stream_read_kernel[(count,)](k, v, out, n // count, BLOCK=block, num_warps=warps, num_stages=stages)
        return out
    return run


READ_ONLY_CONFIGS = [(512, 2048, 8, 1), (1024, 4096, 8, 3), (2048, 2048, 4, 3), (264 * 2, 8192, 8, 2)]


def copy_bandwidth() -> float:
    """Bytes read plus written per second by a 2 GiB device-to-device copy."""
    n = 2**30  # bf16 elements: 2 GiB
    src = torch.randn(n // 2**10, 2**10, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def check(shape: Shape, sets) -> float:
    q, k, v = sets[0]
    out = flash_decode(q, k, v)
    ref = reference.flash_decode(q, k, v).float()
    return ((out.float() - ref).norm() / ref.norm()).item()


def gpu_correctness_sweep(log) -> list[dict]:
    """flash_decode on the GPU against a float64 reference: dtypes, head dims, GQA groups, ragged
    lengths (0 and S included), strided caches, forced and planned splits. NaN-poisoned outputs are
    impossible to see from outside, so every output is also checked for NaN."""
    results = []
    gen = torch.Generator(device="cuda").manual_seed(1234)
    cases = [(dt, D, hq, hkv, S, splits, layout)
             for dt in (torch.bfloat16, torch.float16, torch.float32)
             for D in (64, 80, 96, 128, 256)
             for (hq, hkv) in ((8, 8), (8, 2), (12, 4), (9, 3), (8, 1), (64, 8))
             for (S, splits, layout) in ((4099, None, "bhsd"), (777, 7, "bshd"), (65, 1, "bhsd"))]
    for dt, D, hq, hkv, S, splits, layout in cases:
        B = 3
        q = torch.randn(B, hq, D, device="cuda", generator=gen).to(dt)
        shape = (B, hkv, S, D) if layout == "bhsd" else (B, S, hkv, D)
        k = torch.randn(shape, device="cuda", generator=gen).to(dt)
        v = torch.randn(shape, device="cuda", generator=gen).to(dt)
        if layout == "bshd":
            k, v = k.transpose(1, 2), v.transpose(1, 2)
        lengths = torch.tensor([S, 0, S // 3 + 1], device="cuda", dtype=torch.int32)
        out, lse = flash_decode(q, k, v, lengths, num_splits=splits, return_lse=True)
        ref, ref_lse = reference.flash_decode(q.double(), k.double(), v.double(), lengths, return_lse=True)
        err = ((out.double() - ref).norm() / ref.norm()).item()
        lse_err = (lse[lengths > 0].double() - ref_lse[lengths > 0]).abs().max().item()
        ok = (not out.isnan().any().item()) and (out[1] == 0).all().item() and err < (1e-5 if dt == torch.float32 else 1e-2) \
            and lse_err < 1e-3 and bool((lse[1] == float("-inf")).all())
        results.append({"dtype": str(dt), "D": D, "Hq": hq, "Hkv": hkv, "S": S, "splits": splits,
                        "layout": layout, "rel_err": err, "lse_err": lse_err, "ok": ok})
        if not ok:
            log(f"  CHECK FAILED {results[-1]}")
    log(f"GPU correctness sweep: {sum(r['ok'] for r in results)}/{len(results)} cases within tolerance")
    return results


def n_sets_for(shape: Shape) -> int:
    return max(1, min(32, math.ceil(L2_FLUSH_BYTES / shape.kv_bytes)))


def bench_shape(shape: Shape, methods: dict, bandwidth: float, log) -> dict:
    sets = make_input_sets(shape, n_sets_for(shape))
    row = {"shape": shape.__dict__ | {"label": shape.label}, "kv_mb": shape.kv_bytes / 1e6,
           "floor_us": shape.kv_bytes / bandwidth * 1e6,
           "plan": plan_launch(shape.B, shape.Hq, shape.Hkv, shape.S, shape.D,
                               num_sms=torch.cuda.get_device_properties(0).multi_processor_count).__dict__,
           "rel_err_vs_eager_fp32": check(shape, sets), "plain_us": {}, "graph_us": {}, "errors": {}}
    for name, fn in methods.items():
        try:
            row["plain_us"][name] = time_plain(fn, sets)
            row["graph_us"][name] = time_graph(fn, sets)
        except Exception as error:  # a backend that cannot run this shape: record why, go on
            row["errors"][name] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            torch.cuda.synchronize()
        log(f"  {name:15s} plain {row['plain_us'].get(name, float('nan')):9.1f} µs   "
            f"graph {row['graph_us'].get(name, float('nan')):9.1f} µs")
    del sets
    torch.cuda.empty_cache()
    # The read-only kernel's best configuration stands for the practical floor of this shape.
    for timing in (row["plain_us"], row["graph_us"]):
        reads = [timing.pop(name) for name in list(timing) if name.startswith("read_only_")]
        if reads:
            timing["read_floor"] = min(reads)
    return row


# --- tuning: sweep the plan's knobs on a few shapes (graph replays) ------------------------------

def tune(shape_list, bandwidth: float, log) -> list[dict]:
    results = []
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for shape in shape_list:
        sets = make_input_sets(shape, n_sets_for(shape))
        base = plan_launch(shape.B, shape.Hq, shape.Hkv, shape.S, shape.D, num_sms=sms)
        variants = []
        for block_n, warps, stages in ((32, 4, 2), (64, 4, 2), (64, 4, 3), (64, 8, 3), (128, 8, 2), (128, 8, 3)):
            variants.append(dataclasses.replace(base, block_n=block_n, num_warps=warps, num_stages=stages))
        for splits in sorted({max(1, base.num_splits // 4), max(1, base.num_splits // 2), base.num_splits,
                              min(128, base.num_splits * 2)}):
            variants.append(dataclasses.replace(base, num_splits=splits))
        pdl_default = fd.PDL_SUPPORTED
        for plan, pdl in [(p, pdl_default) for p in variants] + [(base, not pdl_default)]:
            fd.PDL_SUPPORTED = pdl
            try:
                us = time_graph(lambda q, k, v, plan=plan: launch(q, k, v, None, plan), sets, replays=10)
            except Exception as error:
                us = float("nan")
                log(f"  {plan} pdl={pdl}: {type(error).__name__}: {str(error)[:200]}")
            results.append({"shape": shape.label, "plan": plan.__dict__ | {"pdl": pdl}, "graph_us": us,
                            "floor_us": shape.kv_bytes / bandwidth * 1e6})
        fd.PDL_SUPPORTED = pdl_default
        best = min((r for r in results if r["shape"] == shape.label), key=lambda r: r["graph_us"])
        base_us = next(r["graph_us"] for r in results if r["shape"] == shape.label
                       and r["plan"] == base.__dict__ | {"pdl": pdl_default})
        log(f"{shape.label:24s} heuristic {base_us:7.1f} µs  best {best['graph_us']:7.1f} µs  {best['plan']}")
        del sets
        torch.cuda.empty_cache()
    return results


def environment() -> dict:
    props = torch.cuda.get_device_properties(0)
    return {"card": props.name, "sms": props.multi_processor_count, "date": datetime.date.today().isoformat(),
            "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "dtype": "bfloat16"}


PEERS = ["sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "sdpa_math", "flex", "eager"]


def markdown(env: dict, bandwidth: float, rows: list[dict]) -> str:
    lines = [f"# Flash-Decoding kernel benchmark: {env['card']}, {env['date']}",
             "", f"torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, bf16, one query token. "
             f"Copy bandwidth (read + write) measured in the same run: {bandwidth / 1e12:.2f} TB/s. "
             "Times are medians in µs as CUDA-graph replays (plain launches in kernels.json). "
             "'read-only kernel' is a Triton kernel that only reads K and V once: the practical floor. "
             "'% bw' = K+V bytes / time over the copy bandwidth; 'vs best SDPA' = best SDPA backend's time / ours.",
             "",
             "| shape | K+V MB | copy floor | read-only kernel | flash_decode | % bw | SDPA flash | cuDNN | efficient | math | flex | eager | vs best SDPA | vs eager |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        g = row["graph_us"]
        ours = g.get("flash_decode", float("nan"))
        best_sdpa = min((g[k] for k in ("sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "sdpa_math") if k in g),
                        default=float("nan"))
        cells = [f"{g[k]:.1f}" if k in g else "n/a" for k in PEERS]
        lines.append(f"| {row['shape']['label']} | {row['kv_mb']:.0f} | {row['floor_us']:.1f} | "
                     f"{g.get('read_floor', float('nan')):.1f} | {ours:.1f} | "
                     f"{100 * row['floor_us'] / ours:.0f}% | " + " | ".join(cells) +
                     f" | {best_sdpa / ours:.2f}x | {g.get('eager', float('nan')) / ours:.1f}x |")
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


def plot(rows: list[dict], path: Path) -> None:
    series = [r for r in rows if r["shape"]["model"] == "34B" and r["shape"]["B"] == 1]
    xs = [r["shape"]["S"] for r in series]

    def draw(ax):
        for name in ["flash_decode", "sdpa_flash", "sdpa_cudnn", "flex", "eager"]:
            ys = [r["graph_us"].get(name, float("nan")) for r in series]
            ax.plot(xs, ys, marker="o", label=name, linewidth=2.5 if name == "flash_decode" else 1.2)
        ax.plot(xs, [r["floor_us"] for r in series], "k--", label="copy-bandwidth floor")
    context_plot(path, "CodeLlama-34B attention shape, batch 1, bf16", "µs per decode attention (graph replay)",
                 draw, log_y=True)


def log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def begin_run(program: str, out: Path):
    """What every GPU benchmark does first: (environment, copy bandwidth, logger), or None without CUDA."""
    if not torch.cuda.is_available():
        print(f"{program} needs a CUDA GPU: Flash-Decoding's speed is a GPU property.", file=sys.stderr)
        return None
    torch.manual_seed(0)
    env = environment()
    bandwidth = copy_bandwidth()
    log_to_stderr(f"{env['card']}: copy bandwidth {bandwidth / 1e12:.2f} TB/s")
    out.mkdir(parents=True, exist_ok=True)
    return env, bandwidth, log_to_stderr


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Flash-Decoding kernel benchmark (needs a CUDA GPU)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench/results")))
    parser.add_argument("--quick", action="store_true", help="a few representative shapes")
    parser.add_argument("--no-flex", action="store_true", help="skip FlexAttention (slow to compile)")
    parser.add_argument("--tune", action="store_true", help="sweep the launch plan's knobs instead")
    parser.add_argument("--check", action="store_true", help="run the GPU correctness sweep first")
    parser.add_argument("--only", default="", help="comma-separated substrings of shape labels to run")
    args = parser.parse_args(argv)
    if (started := begin_run("kernels.bench", args.out)) is None:
        return 2
    env, bandwidth, log = started
    if args.check:
        checks = gpu_correctness_sweep(log)
        (args.out / "kernels-check.json").write_text(json.dumps({"env": env, "cases": checks}, indent=1))
        if not all(c["ok"] for c in checks):
            return 1
    if args.tune:
        results = tune(shapes(quick=True), bandwidth, log)
        (args.out / "kernels-tune.json").write_text(json.dumps({"env": env, "bandwidth": bandwidth,
                                                                "results": results}, indent=1))
        return 0
    methods = contestants(with_flex=not args.no_flex)
    rows = []
    wanted = [w for w in args.only.split(",") if w]
    for shape in shapes(args.quick):
        if wanted and not any(w in shape.label for w in wanted):
            continue
        log(f"{shape.label}: K+V {shape.kv_bytes / 1e6:.0f} MB")
        rows.append(bench_shape(shape, methods, bandwidth, log))
        # Written after every shape, so a run cut short still leaves its results.
        (args.out / "kernels.json").write_text(json.dumps({"env": env, "bandwidth": bandwidth, "rows": rows}, indent=1))
    table = markdown(env, bandwidth, rows)
    (args.out / "kernels.md").write_text(table)
    plot(rows, args.out / "kernels.png")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The device memory a load peaks at, by weights: bf16, int8 quantized as the weights are read (`load_model(...,
weights="int8")`, models/int8_loading.py), and int8 the earlier way, the bf16 model loaded whole and then quantized
(`Transformer.quantize_weights`), and int4 quantized as read (`weights="int4"`). Random weights of the presets'
shapes, each load in a fresh process (so one's allocator cache does not serve the next),
torch.cuda.max_memory_allocated after the load, what stays allocated, and the memory free after it with the
KV-cache tokens (batch 1) that fit there: what the Engine sizes its cache in.

    python bench/gpu/int8_load_peak.py [--models CodeLlama-7B,CodeLlama-13B] [--json FILE]
    python bench/gpu/int8_load_peak.py --dry-run     # no GPU: the same processes on the CPU, SmolLM2-135M's shape,
                                                     # the growth of each process's peak RSS instead
Without a GPU and without --dry-run it says so and measures nothing (exit 0). The dry run checks the script's path;
its numbers are loose upper bounds (RSS keeps pages the allocator freed); the CPU allocator's exact peak is what
tests/models/test_int8_loading.py measures. Exit 1 if a load failed (its row says why).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("bf16", "int8", "int8 after load", "int4")
GiB = 2**30


def measure(model: str, kind: str, device: str) -> dict:
    """In this process: load random:MODEL with `kind` weights on `device`; the peak and held bytes."""
    import torch

    sys.path.insert(0, str(ROOT))
    from models import load_model

    if device == "cuda":
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = rss_bytes()
    start = time.perf_counter()
    engine = load_model(f"random:{model}", device=device, dtype="bfloat16", cuda_graphs=False,
                        weights=kind if kind in ("int8", "int4") else None)
    if kind == "int8 after load":
        engine.model.quantize_weights()
    if device == "cuda":
        torch.cuda.synchronize()
        peak, held = torch.cuda.max_memory_allocated() - before, torch.cuda.memory_allocated() - before
    else:
        import resource
        peak, held = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before, rss_bytes() - before
    assert engine.model.weights_quantized == (kind != "bf16")
    from models.kv_cache import capacity_tokens, free_memory_bytes
    # What the Engine sizes its KV cache in: the memory free now (the load's freed buffers handed back).
    kv_tokens = capacity_tokens(engine.model.config, 1, engine.model.compute_dtype, torch.device(device))
    return {"model": model, "weights": kind, "device": device, "peak_bytes": peak, "held_bytes": held,
            "free_bytes": free_memory_bytes(torch.device(device)), "kv_tokens_that_fit": kv_tokens,
            "load_s": round(time.perf_counter() - start, 2)}


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        import os
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def in_fresh_process(model: str, kind: str, device: str) -> dict:
    command = [sys.executable, __file__, "--one", model, kind, device]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        lines = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
        return {"model": model, "weights": kind, "device": device, "error": lines[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict], what: str) -> str:
    out = [f"| model | weights | peak GiB ({what}) | held after load GiB | peak / bf16 peak | free after GiB "
           "| KV tokens that fit | load s |", "|---|---|---|---|---|---|---|---|"]
    bf16 = {r["model"]: r.get("peak_bytes") for r in rows if r["weights"] == "bf16"}
    for r in rows:
        if "error" in r:
            out.append(f"| {r['model']} | {r['weights']} | failed: {r['error']} | | | | | |")
            continue
        ratio = f"{r['peak_bytes'] / bf16[r['model']]:.2f}" if bf16.get(r["model"]) else ""
        out.append(f"| {r['model']} | {r['weights']} | {r['peak_bytes'] / GiB:.2f} | {r['held_bytes'] / GiB:.2f} "
                   f"| {ratio} | {r['free_bytes'] / GiB:.1f} | {r['kv_tokens_that_fit']:,} | {r['load_s']} |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="presets, comma-separated (default CodeLlama-7B,CodeLlama-13B;"
                                                       " with --dry-run SmolLM2-135M)")
    parser.add_argument("--dry-run", action="store_true", help="on the CPU, peak RSS growth instead")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "KIND", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one)))
        return 0
    import torch
    if not args.dry_run and not torch.cuda.is_available():
        print("int8_load_peak: no CUDA device here, nothing measured (--dry-run runs the same loads on the CPU)",
              file=sys.stderr)
        return 0
    device = "cpu" if args.dry_run else "cuda"
    models = (args.models or ("SmolLM2-135M" if args.dry_run else "CodeLlama-7B,CodeLlama-13B")).split(",")
    rows = [in_fresh_process(model, kind, device) for model in models for kind in KINDS]
    what = "RSS growth" if args.dry_run else "max_memory_allocated"
    label = "CPU (dry run)" if args.dry_run else torch.cuda.get_device_name()
    print(f"Load peaks on {label}, random weights, bf16 model dtype, {time.strftime('%Y-%m-%d')}\n")
    print(table(rows, what))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

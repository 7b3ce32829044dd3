"""How a kernel's read rate grows with the bytes it reads: fixed cost against streaming rate.

    PYTHONPATH=. python bench/gpu/read_ramp.py OUT_DIR

For K+V of 134 MB to 2.1 GB, at the CodeLlama-34B (GQA) and 7B (MHA) attention shapes, batch 1: CUDA-graph
replays (µs, median, input sets rotating past L2) of flash_decode (bf16), the read-only kernel over the same
two tensors (each configuration; the best kept) and cuDNN's SDPA. A least-squares line time = fixed +
bytes / rate per contestant says which part of a row's shortfall from the read rate is fixed (launch, the
first bytes' latency, the tail of the last wave, the combine) and which is streaming. Writes
OUT_DIR/read-ramp.{json,md}; prints the table last.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from kernels import flash_decode
from kernels.bench import (READ_ONLY_CONFIGS, Shape, best_of_rounds, environment, make_input_sets, n_sets_for,
                           read_bandwidth, read_once, save_table, sdpa)

SHAPES = [Shape("34B", 1, s * 1024, 64, 8) for s in (32, 64, 128, 256, 512)]
SHAPES += [Shape("7B", 1, s * 1024, 32, 32) for s in (8, 16, 32, 64, 128)]


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(fixed µs, TB/s) of the least-squares line through (MB, µs)."""
    n = len(points)
    mx, my = sum(p[0] for p in points) / n, sum(p[1] for p in points) / n
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    return my - slope * mx, 1 / slope


def main(out: Path) -> int:
    env = environment()
    ceiling, _ = read_bandwidth()
    rows = []
    for shape in SHAPES:
        sets = make_input_sets(shape, n_sets_for(shape))
        runs = {"flash_decode": lambda: [flash_decode(x.q, x.k, x.v) for x in sets],
                "cuDNN": lambda: [sdpa("CUDNN_ATTENTION")(x) for x in sets]}
        for i, config in enumerate(READ_ONLY_CONFIGS):
            runs[f"read-only {i}"] = lambda config=config: [read_once(x.k, x.v, *config) for x in sets]
        row = {"shape": shape.label, "model": shape.model, "mb": shape.kv_bytes / 1e6} | best_of_rounds(runs, len(sets))
        row["read-only"] = min(v for k, v in row.items() if k.startswith("read-only "))
        rows.append(row)
        print(f"{shape.label}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items() if isinstance(v, float)),
              file=sys.stderr, flush=True)
        del sets
        torch.cuda.empty_cache()
    names = ["flash_decode", "read-only", "cuDNN"]
    fits = {f"{model} {name}": fit([(r["mb"], r[name]) for r in rows if r["model"] == model])
            for model in ("34B", "7B") for name in names}
    lines = [f"# Read rate against bytes read: {env['card']}, {env['date']}, torch {env['torch']}, "
             f"triton {env['triton']}; read ceiling (4 GiB) {ceiling / 1e12:.2f} TB/s", "",
             "CUDA-graph replays, µs (best of two interleaved rounds); TB/s = K+V bytes / time.", "",
             "| shape | K+V MB | flash_decode | read-only (best config) | cuDNN | ours TB/s | read-only TB/s | "
             "cuDNN TB/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['mb']:.0f} | {r['flash_decode']:.1f} | {r['read-only']:.1f} | "
                     f"{r['cuDNN']:.1f} | " + " | ".join(f"{r['mb'] / r[n]:.2f}" for n in names) + " |")
    lines += ["", "Least-squares line per contestant and model: time = fixed + bytes / rate.", "",
              "| contestant | fixed µs | streaming TB/s |", "|---|---|---|"]
    lines += [f"| {name} | {fixed:.1f} | {rate:.2f} |" for name, (fixed, rate) in fits.items()]
    save_table(out, "read-ramp", "\n".join(lines) + "\n",
               {"env": env, "read_ceiling": ceiling, "rows": rows, "fits": fits})
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "bench/scratch/read-ramp")))

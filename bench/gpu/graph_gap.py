"""What a graph replay of one call adds to a long-context row: µs per call with 1 to 8 calls per graph.

    PYTHONPATH=. python bench/gpu/graph_gap.py OUT_DIR

`kernels.bench` puts as many calls in one CUDA graph as it needs input sets to rotate past L2
(`n_sets_for`): up to 32 calls for a small row, one for a row of 256 MB or more. A graph replay then pays
the replay's own start (the GPU front end starting the graph, the first kernel's launch) once per call
for the large rows only. Here the same rows run with k = 1, 2, 4, 8 calls per graph (two input sets
alternating, each far larger than L2), for ours (bf16 and fp8), cuDNN and the read-only kernel: the
difference between k = 1 and k = 8 is what the one-call graph charges each call. Writes
OUT_DIR/graph-gap.{json,md}; prints the table last.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from kernels import flash_decode
from kernels.bench import (READ_ONLY_CONFIGS, Shape, best_of_rounds, environment, make_input_sets, read_once,
                           save_table, sdpa)

SHAPES = [Shape("34B", 1, 65536, 64, 8), Shape("34B", 1, 131072, 64, 8), Shape("34B", 64, 2048, 64, 8),
          Shape("7B", 1, 65536, 32, 32)]
CALLS = (1, 2, 4, 8)


def main(out: Path) -> int:
    env = environment()
    rows = []
    for shape in SHAPES:
        sets = make_input_sets(shape, 2)
        contestants = {
            "ours bf16": lambda x: flash_decode(x.q, x.k, x.v),
            "ours fp8": lambda x: flash_decode(x.q, x.k8, x.v8, k_scale=x.k_scale, v_scale=x.v_scale),
            "cuDNN": sdpa("CUDNN_ATTENTION"),
            "read-only": lambda x: read_once(x.k, x.v, *READ_ONLY_CONFIGS[3]),
        }
        row = {"shape": shape.label, "mb": shape.kv_bytes / 1e6, "fp8_mb": shape.fp8_bytes / 1e6}
        for k in CALLS:  # each call count its own interleaved rounds
            runs = {f"{name} x{k}": lambda fn=fn, k=k: [fn(sets[i % 2]) for i in range(k)]
                    for name, fn in contestants.items()}
            row |= best_of_rounds(runs, k)
        rows.append(row)
        print(f"{shape.label}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items() if isinstance(v, float)),
              file=sys.stderr, flush=True)
        del sets
        torch.cuda.empty_cache()
    lines = [f"# µs per call against calls per CUDA graph: {env['card']}, {env['date']}, torch {env['torch']}, "
             f"triton {env['triton']}", "",
             "Best of two interleaved rounds, median of 30 replays each; TB/s on the bytes read (bf16 K+V; fp8: "
             "8-bit K+V and fp32 scales).", "",
             "| shape | contestant | " + " | ".join(f"{k} call{'s' if k > 1 else ''}" for k in CALLS)
             + " | TB/s at 1 | TB/s at 8 |", "|---|---|" + "---|" * (len(CALLS) + 2)]
    for r in rows:
        for name in ("ours bf16", "ours fp8", "cuDNN", "read-only"):
            mb = r["fp8_mb"] if name == "ours fp8" else r["mb"]
            lines.append(f"| {r['shape']} | {name} | " + " | ".join(f"{r[f'{name} x{k}']:.1f}" for k in CALLS)
                         + f" | {mb / r[f'{name} x1']:.2f} | {mb / r[f'{name} x8']:.2f} |")
    save_table(out, "graph-gap", "\n".join(lines) + "\n", {"env": env, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "bench/scratch/graph-gap")))

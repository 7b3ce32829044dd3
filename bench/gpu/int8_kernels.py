"""int8 against fp8 (e4m3) caches in flash_decode, side by side with bf16 and cuDNN (one GPU run).

    python bench/gpu/int8_kernels.py OUT_DIR

Both 8-bit caches carry one float32 scale per token and KV head and share the plans (kernels/plans);
they differ only in the conversion of the bytes (e4m3: `cvt` two at a time; int8: PRMT + FADD in the row
kernel, the plan option `int8_prmt`, on by default; 'int8 I2F': the same plan with it off, Triton's I2F
conversion, the same as int8 where the plan is the dot kernel's). CUDA-graph replays over input sets
rotating past L2, µs; the read rate is on the bytes read (cache plus scales).
Writes OUT_DIR/int8-kernels.{json,md} and prints the table.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

from kernels import flash_decode, reference
from kernels.bench import Shape, best_of_rounds, environment, make_input_sets, n_sets_for, save_table, sdpa
from kernels.interface import launch, plan_for

SHAPES = [Shape("7B", 1, 4096, 32, 32), Shape("7B", 1, 16384, 32, 32), Shape("7B", 1, 65536, 32, 32),
          Shape("7B", 8, 16384, 32, 32), Shape("34B", 1, 16384, 64, 8), Shape("34B", 1, 131072, 64, 8)]
REPLAYS = 40


def main(out: Path) -> int:
    env = environment()
    rows = []
    for shape in SHAPES:
        sets = make_input_sets(shape, n_sets_for(shape))
        int8 = [(reference.quantize(x.k, torch.int8), reference.quantize(x.v, torch.int8)) for x in sets]
        s = shape
        i2f = dataclasses.replace(plan_for(sets[0].q, s.B, s.Hq, s.Hkv, s.S, s.D, 1, True), int8_prmt=False)
        runs = {
            "bf16": lambda: [flash_decode(x.q, x.k, x.v) for x in sets],
            "fp8": lambda: [flash_decode(x.q, x.k8, x.v8, k_scale=x.k_scale, v_scale=x.v_scale) for x in sets],
            "int8": lambda: [flash_decode(x.q, k8, v8, k_scale=ks, v_scale=vs)
                             for x, ((k8, ks), (v8, vs)) in zip(sets, int8)],
            "int8 I2F": lambda: [launch(x.q, k8, v8, None, i2f, k_scale=ks, v_scale=vs)
                                  for x, ((k8, ks), (v8, vs)) in zip(sets, int8)],
            "cuDNN": lambda: [sdpa("CUDNN_ATTENTION")(x) for x in sets],
        }
        row = {"shape": shape.label, "kv_mb": shape.kv_bytes / 1e6} | best_of_rounds(runs, len(sets), REPLAYS)
        row["int8 TB/s"] = shape.fp8_bytes / row["int8"] / 1e6   # (the same bytes: 8-bit K and V, fp32 scales)
        row["fp8 TB/s"] = shape.fp8_bytes / row["fp8"] / 1e6
        rows.append(row)
        print(f"{shape.label}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items() if isinstance(v, float)),
              file=sys.stderr, flush=True)
    lines = [f"# int8 vs fp8 caches in flash_decode: {env['card']}, {env['date']}, torch {env['torch']}, "
             f"triton {env['triton']}", "", "CUDA-graph replays, µs (best of two interleaved rounds).", "",
             "| shape | K+V MB (bf16) | bf16 | fp8 | int8 | int8 I2F | cuDNN (bf16) | int8 / fp8 | fp8 TB/s | "
             "int8 TB/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['kv_mb']:.0f} | {r['bf16']:.1f} | {r['fp8']:.1f} | {r['int8']:.1f} | "
                     f"{r['int8 I2F']:.1f} | {r['cuDNN']:.1f} | {r['int8'] / r['fp8']:.2f} | {r['fp8 TB/s']:.2f} | "
                     f"{r['int8 TB/s']:.2f} |")
    save_table(out, "int8-kernels", "\n".join(lines) + "\n", {"env": env, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "bench/scratch/int8")))

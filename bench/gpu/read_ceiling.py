"""Is kernels.bench's read ceiling the memory's? Read-only reductions of 4 GiB against flash_decode's stream.

    PYTHONPATH=. python bench/gpu/read_ceiling.py OUT_DIR

`kernels.bench.read_bandwidth` (the best of torch.sum, torch.amax and the Triton read-only kernel in four
configurations, over 4 GiB) is the denominator of every "% of the read rate"; Run 17 found flash_decode
streaming 2.1 GB faster than it on some machines (its read-only kernel's loop was not pipelined then; it is
now, `tl.range(num_stages=)`). Here, in one process: `read_bandwidth` over its own configurations and the
read-only kernel at 64-256 programs of 8 warps, two tile sizes and 3 or 5 loop stages, and flash_decode (bf16)
over 2.1 GB of K+V (CodeLlama-7B at 128k), each as do_bench medians of single calls. Writes OUT_DIR/read-ceiling.{md,json};
prints the table last.
"""

from __future__ import annotations

import sys
from pathlib import Path

import triton

from kernels import flash_decode
from kernels.bench import READ_ONLY_CONFIGS, Shape, environment, make_inputs, read_bandwidth, save_table


def main(out: Path) -> int:
    env = environment()
    grid = READ_ONLY_CONFIGS + [(programs, block, 8, stages) for programs in (64, 128, 256) for block in (4096, 8192)
                                for stages in (3, 5) if (programs, block, 8, stages) not in READ_ONLY_CONFIGS]
    _, contestants = read_bandwidth(grid)         # (powers of two: read_once divides the buffer evenly)
    own = {"torch.sum", "torch.amax"} | {f"triton_read_only_{i}" for i in range(len(READ_ONLY_CONFIGS))}
    ceiling = max(rate for name, rate in contestants.items() if name in own)   # what kernels.bench reports
    labels = {f"triton_read_only_{i}": f"read-only {programs} programs, {block}/{warps}w, {stages} loop stages"
              for i, (programs, block, warps, stages) in enumerate(grid)}
    rates = {labels.get(name, name): rate for name, rate in contestants.items()}
    x = make_inputs(Shape("7B", 1, 131072, 32, 32), "cuda")
    ms = triton.testing.do_bench(lambda: flash_decode(x.q, x.k, x.v), warmup=5, rep=60, return_mode="median")
    rates["flash_decode bf16, 7B 128k (2.1 GB)"] = Shape("7B", 1, 131072, 32, 32).kv_bytes / (ms * 1e-3)
    top = sorted(rates.items(), key=lambda item: -item[1])
    lines = [f"# Read-only rates: {env['card']}, {env['date']}, torch {env['torch']}, triton {env['triton']}", "",
             f"kernels.bench's read ceiling in this run: {ceiling / 1e12:.2f} TB/s. do_bench medians (L2 flushed).", "",
             "| reader | TB/s |", "|---|---|"] + [f"| {name} | {rate / 1e12:.3f} |" for name, rate in top[:20]]
    save_table(out, "read-ceiling", "\n".join(lines) + "\n", {"env": env, "ceiling": ceiling, "rates": rates})
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "bench/scratch/read-ceiling")))

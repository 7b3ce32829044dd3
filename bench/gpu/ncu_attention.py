"""Hardware counters of the long-context attention rows, ours next to the read-only kernel and cuDNN.

    ncu --clock-control none --profile-from-start off --section ... python bench/gpu/ncu_attention.py
    (bench/gpu/ncu_attention.sh runs it and writes the table)

Each case (shape x contestant) runs once untimed (compilation, workspaces), then once between
cudaProfilerStart and cudaProfilerStop, so ncu sees exactly that call's kernels. A line
`CASE <name>` goes to stdout before each profiled call; ncu's own `==PROF==` lines, which name each
kernel it profiles, follow in order, so the report's kernel IDs map back to cases
(`ncu_table.py`). One input set per case: ncu flushes L2 before every replay pass itself.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import torch

from kernels import flash_decode, reference
from kernels.bench import READ_ONLY_CONFIGS, Shape, make_inputs, read_once, sdpa
from kernels.interface import as_sequence_major, launch, plan_for

SHAPES = {"34B 128k": Shape("34B", 1, 131072, 64, 8), "34B B=64 2k": Shape("34B", 64, 2048, 64, 8),
          "7B 64k": Shape("7B", 1, 65536, 32, 32)}
# NCU_SHAPES="34B 128k,...": profile only these (ncu replays every kernel several times: minutes per shape)
SHAPES = {k: v for k, v in SHAPES.items() if k in os.environ.get("NCU_SHAPES", ",".join(SHAPES)).split(",")}
# The transposed 8-bit kernel (kernels.split_kv_transposed) at its best tiling of Run 20, next to the tuned plans
TRANSPOSED = {"transposed": True, "block_n": 128, "num_warps": 4, "num_stages": 3, "loop_stages": 0, "maxnreg": 0,
              "int8_dot": False, "fp8_dot": False, "fp8_early": False, "tma": False, "row_kernel": False}


def cases(x, shape_name: str):
    int8 = (reference.quantize(x.k, torch.int8), reference.quantize(x.v, torch.int8))
    (k8, ks), (v8, vs) = int8
    yield "bf16", lambda: flash_decode(x.q, x.k, x.v)
    yield "fp8", lambda: flash_decode(x.q, x.k8, x.v8, k_scale=x.k_scale, v_scale=x.v_scale)
    if shape_name == "34B 128k":
        yield "int8", lambda: flash_decode(x.q, k8, v8, k_scale=ks, v_scale=vs)
        s = x.k.shape
        plan = dataclasses.replace(plan_for(x.q, s[0], x.q.shape[1], s[1], s[2], s[3], 1, True), **TRANSPOSED)
        yield "fp8 transposed", lambda: launch(x.q, x.k8, x.v8, None, plan, k_scale=x.k_scale, v_scale=x.v_scale)
        v8_seq = as_sequence_major(v8)  # (built here, not in the profiled call: Run 20's table has its copy kernel)
        yield "int8 transposed", lambda: launch(x.q, k8, v8_seq, None, plan, k_scale=ks, v_scale=vs)
    yield "read-only", lambda: read_once(x.k, x.v, *READ_ONLY_CONFIGS[1])
    yield "cuDNN", lambda: sdpa("CUDNN_ATTENTION")(x)


def main() -> int:
    for shape_name, shape in SHAPES.items():
        x = make_inputs(shape, "cuda")
        for name, run in cases(x, shape_name):
            run()
            torch.cuda.synchronize()
            print(f"CASE {shape_name}: {name}", flush=True)
            torch.cuda.profiler.start()
            run()
            torch.cuda.synchronize()
            torch.cuda.profiler.stop()
        del x
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())

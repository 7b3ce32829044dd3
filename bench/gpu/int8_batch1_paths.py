"""Batch 1 on int8 weights: CUDA cores or tensor cores? A question for the next int8 kernels, on one GPU.

The batch-1 int8 GEMVs (kernels/gemv.py, the fused kernels of kernels/fused_gemv.py) widen every weight to fp32
(PRMT + an exact FADD) and FMA it with x: about three instructions a weight, and on an H200 they stream 58-69% of
the copy bandwidth where bf16 weights' reach 71-89% (bench/results/NOTES.md, Run 35). The few-row kernel
(kernels/few_rows_int8.py) instead widens each weight to bf16 (PRMT, LOP3, HADD2.BF16: two weights an instruction)
and lets the tensor cores multiply, x padded from 1 row to 16: wasted MMA work, but on a pipe that is otherwise idle.
This times both at CodeLlama-7B's projections at one row of x (graph replays, weights rotated past the L2), the
few-row kernel in a few launch configurations, beside bf16 weights' GEMV and cuBLAS, and prints each one's share
of the copy bandwidth measured in the same run (the int8 bytes and scales, or the bf16 bytes).

    python bench/gpu/int8_batch1_paths.py OUT_DIR       # writes OUT_DIR/int8-batch1-paths.json; a table last
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path

import torch

from kernels import reference
from kernels.bench import copy_bandwidth, graph_replay_us
from kernels.few_rows_int8 import few_rows_int8
from kernels.fused_gemv import gemv as fused_gemv
from kernels.gemv import gemv

DIM, FFN, VOCAB = 4096, 11008, 32016          # CodeLlama-7B
PROJECTIONS = {"wqkv": (3 * DIM, DIM), "wo": (DIM, DIM), "w13": (2 * FFN, DIM), "w2": (DIM, FFN),
               "output": (VOCAB, DIM)}
# (block_n, block_k, num_warps, num_stages) of the few-row kernel at one row
FEW_ROW_CONFIGS = [(bn, bk, w, s) for bn, bk, w, s in itertools.product((16, 32, 64), (256, 512), (4, 8), (3, 4))
                   if not (bn == 64 and bk == 512 and s == 4)]


def main(argv) -> int:
    if not torch.cuda.is_available():
        print("int8_batch1_paths.py needs a CUDA GPU", file=sys.stderr)
        return 2
    out = Path(argv[0]) if argv else Path("bench/scratch/int8-batch1")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(time.time()))
    dev, dt = "cuda", torch.bfloat16
    bandwidth = copy_bandwidth()
    rotate = max(64 << 20, 2 * (getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) or 0))
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bandwidth / 1e12:.2f} TB/s; "
          f"{len(FEW_ROW_CONFIGS)} few-row configurations", flush=True)
    rows = []
    for name, (N, K) in PROJECTIONS.items():
        x = torch.randn(1, K, device=dev, dtype=dt)
        int8 = [reference.quantize_int8(torch.randn(N, K, device=dev)) for _ in range(max(1, -(-rotate // (N * K))))]
        want = x.double() @ (int8[0][0].double() * int8[0][1].double()[:, None]).T
        row = {"projection": name, "N": N, "K": K}

        def time_int8(call) -> float:
            y = call(*int8[0])
            err = ((y.double() - want).abs().max() / want.abs().max()).item()
            assert err < 2e-2, (name, err)            # a wrong kernel's time is no answer
            return graph_replay_us(lambda: [call(w, s) for w, s in int8], 20) / len(int8)

        # the CUDA-core kernels: the GEMV op's, and the decode step's own (fused_gemv's, with its int8 configurations)
        row["gemv_int8_op_us"] = time_int8(lambda w, s: gemv(x, w, weight_scale=s))
        row["gemv_int8_fused_us"] = time_int8(lambda w, s: fused_gemv(x[0], w, weight_scale=s)[None])
        row["gemv_int8_us"] = min(row["gemv_int8_op_us"], row["gemv_int8_fused_us"])
        few = {}
        for bn, bk, warps, stages in FEW_ROW_CONFIGS:
            try:
                few[f"{bn}x{bk} w{warps} s{stages}"] = time_int8(
                    lambda w, s: few_rows_int8(x, w, s, block_n=bn, block_k=bk, num_warps=warps, num_stages=stages))
            except Exception as exc:      # a configuration out of shared memory or registers: said, not fatal
                print(f"  {name} few-row {bn}x{bk} w{warps} s{stages}: {type(exc).__name__}", flush=True)
        best = min(few, key=few.get)
        row["few_rows_int8"] = few
        row["few_rows_best"], row["few_rows_best_us"] = best, few[best]
        del int8
        bf16 = [torch.randn(N, K, device=dev, dtype=dt) * 0.02 for _ in range(max(1, -(-rotate // (2 * N * K))))]
        row["gemv_bf16_us"] = graph_replay_us(lambda: [gemv(x, w) for w in bf16], 20) / len(bf16)
        row["cublas_bf16_us"] = graph_replay_us(lambda: [torch.nn.functional.linear(x, w) for w in bf16],
                                                20) / len(bf16)
        del bf16
        int8_floor = (N * K + 4 * N) / bandwidth * 1e6
        bf16_floor = 2 * N * K / bandwidth * 1e6
        row["share"] = {"gemv_int8": int8_floor / row["gemv_int8_us"],
                        "few_rows_int8": int8_floor / row["few_rows_best_us"],
                        "gemv_bf16": bf16_floor / row["gemv_bf16_us"], "cublas_bf16": bf16_floor / row["cublas_bf16_us"]}
        rows.append(row)
        print(f"  {name}: gemv int8 {row['gemv_int8_us']:.1f} µs, few-row best {best} {few[best]:.1f} µs", flush=True)
        torch.cuda.empty_cache()
    (out / "int8-batch1-paths.json").write_text(json.dumps(
        {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "copy_bandwidth": bandwidth,
         "rows": rows}, indent=1))
    print("\n| projection | N x K | gemv int8 µs (% bw) | few-row int8 at 1 row, best µs (% bw) | its config | "
          "gemv bf16 µs (% bw) | cuBLAS bf16 µs (% bw) | few-row / gemv int8 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["share"]
        print(f"| {r['projection']} | {r['N']}x{r['K']} | {r['gemv_int8_us']:.1f} ({100 * s['gemv_int8']:.0f}%) | "
              f"{r['few_rows_best_us']:.1f} ({100 * s['few_rows_int8']:.0f}%) | {r['few_rows_best']} | "
              f"{r['gemv_bf16_us']:.1f} ({100 * s['gemv_bf16']:.0f}%) | {r['cublas_bf16_us']:.1f} "
              f"({100 * s['cublas_bf16']:.0f}%) | {r['gemv_int8_us'] / r['few_rows_best_us']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

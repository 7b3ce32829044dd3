"""The transposed 8-bit kernel's 256-key tiles against the 128-key plan that runs now (CodeLlama-34B B=1 S=128k, e4m3
cache, V sequence-major as models store it), CUDA-graph replays on one GPU, each plan at several split counts; the
float32 reference checks every output. bench/results/NOTES.md's "256-key tiles" section reasons from the sm_90
binaries; this times them. Prints a table last."""
import dataclasses
import sys

import torch

from kernels import bench
from kernels.tune import Case, Clock, _Exploration

shape = {s.label: s for s in bench.shapes()}["34B B=1 S=128k"]
case = Case(shape, fp8=True)
ex = _Exploration(case, Clock(float(sys.argv[1]) if len(sys.argv) > 1 else 240.0), print)
base = ex.heuristic
print("card:", torch.cuda.get_device_name(), "| heuristic:", base, flush=True)
sms = torch.cuda.get_device_properties(0).multi_processor_count
rows = []
TILES = [(128, 4, 3), (256, 4, 2), (256, 4, 3), (256, 8, 2), (256, 8, 3)]
SPLITS = sorted({base.num_splits, sms, 2 * sms, max(1, base.num_splits // 2)})
if len(sys.argv) > 2:  # a second call's narrower sweep: "tiles;splits", e.g. "128x4x3,256x4x3;12,16,24"
    tiles, splits = sys.argv[2].split(";")
    TILES = [tuple(int(v) for v in tile.split("x")) for tile in tiles.split(",")]
    SPLITS = [int(v) for v in splits.split(",")]
for bn, w, st in TILES:
    for splits in SPLITS:
        plan = dataclasses.replace(base, transposed=True, block_n=bn, num_warps=w, num_stages=st, loop_stages=0,
                                   num_splits=splits)
        e = ex.timed(f"n{bn} w{w} s{st} x{splits}", "256", plan)
        rows.append((bn, w, st, splits, e.get("us"), e.get("rel_err"), e.get("resident"), e.get("error", "")))
        print(rows[-1], flush=True)
print("\n| keys | warps | stages | splits | µs | rel err | programs/SM | error |\n|---|---|---|---|---|---|---|---|")
for r in rows:
    us = f"{r[4]:.1f}" if r[4] else "-"
    err = f"{r[5]:.1e}" if r[5] is not None else "-"
    print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {us} | {err} | {r[6]} | {r[7][:60]} |")

#!/usr/bin/env bash
# The final kernel measurement for issues 10, 11 and 13 on one H200: at most 5 minutes.
#
# Run from the repository root on the GPU machine, after the tuned plan file (kernels/plans/<device>.json,
# from bench/gpu/kernels_explore.sh) is committed; nothing to carry. To measure an exploration's plans
# before committing them, on the same warm machine: PLANS_DIR=/tmp/codecomplete-plans bench/gpu/kernels_final.sh
# (the run's kernels.json records which plan table it used: env.plans). Runs the GPU correctness sweep
# (quick: every feature, bf16/fp16/fp32, fp8 caches, T in {2, 16}, every plan option forced once (fp8
# conversion early/late, register cap, warps, tiles, TMA, partials, hints, PDL), append_kv byte for
# byte), then the full kernels.bench sweep (23 shapes; flash_decode bf16, fp8 and 8-token verification
# against SDPA's backends and eager, plain launches and graph replays; no FlexAttention, whose compiles
# take minutes; every flash_decode binary is built in parallel first), with the copy and read
# bandwidths measured in the same run. Works with any plan table, or none (the heuristic plans).
#
# Writes under $OUT (default bench/scratch/final), 6 files, no folders: kernels.json (env with the card,
# date and versions, every row, the bars), kernels.md and kernels.png (the card in the title),
# kernels-check.json, kernels.log, gpu.txt. Prints the table and the bars last.
set -euo pipefail
OUT=${OUT:-bench/scratch/final}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${PLANS_DIR:-}" ]; then export CODECOMPLETE_PLANS_DIR="$PLANS_DIR"; fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
timeout 300 python -m kernels.bench --check quick --no-flex --out "$OUT" 2> "$OUT/kernels.log" \
    || { status=$?; tail -n 40 "$OUT/kernels.log"; exit "$status"; }

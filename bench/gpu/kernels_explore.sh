#!/usr/bin/env bash
# Plan exploration for issues 10, 11 and 13 on one H200 (or any CUDA GPU): at most 6 minutes.
#
# Run from the repository root on the GPU machine; it needs only the repository's tracked files
# (nothing to carry). For each case (issue 10's nine shapes; fp8 caches at 7B B=1 64k and 34B B=1
# 128k; one-token and 8-token steps at 7B 16k and 34B 64k) it times, as CUDA-graph replays on
# inputs rotating past L2: cuDNN and flash SDPA, the read-only kernel, the heuristic plan and the
# committed plan table's plan; ~10 tilings (keys per tile, warps, stages, loop pipelining, a
# register cap, fp8 conversion) each at the split counts that fill whole waves of the programs its
# binary fits per SM; then a local search that changes one option at a time (splits, tiles,
# warps, stages, hints, partials, PDL, TMA, register cap, fp8 conversion) from the best plan, again
# from each new best (so options combine), restarted from the runner-up tilings while time is
# left; each variant is checked against the reference first. Then the best three, the heuristic
# and the peers again, interleaved. The 270 s budget is shared by weight (fp8 cases 3, 34B 4k 2,
# others 0.7-1), keeping 4 s a case for its final round, so the table is always complete.
#
# Writes under $OUT (default bench/scratch/explore), 5 files, one folder level:
#   kernels-tune.json     every variant of every case: plan, µs, relative error, ok, programs per SM;
#                         env (card, date, versions, bandwidths); bars
#   kernels-tune.md       the summary table (card and date in its first line) and the bars
#   plans/<device>.json   each case's best correct plan: copy to kernels/plans/ and commit, and
#                         flash_decode uses it on that device (or regenerate it from the JSON with
#                         `python -m kernels.bench --tune-from kernels-tune.json --plans-dir kernels/plans`)
#   explore.log, gpu.txt  the progress log; nvidia-smi's view of the card
# and copies the plan file to /tmp/codecomplete-plans (see the end).
# Prints per case the best plan and the numbers for the bars, last.
set -euo pipefail
OUT=${OUT:-bench/scratch/explore}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
timeout 345 python -m kernels.bench --tune --budget-s 270 --out "$OUT" --plans-dir "$OUT/plans" 2> "$OUT/explore.log" \
    || { status=$?; tail -n 40 "$OUT/explore.log"; exit "$status"; }
# Kept on the machine while it stays warm: `PLANS_DIR=/tmp/codecomplete-plans bench/gpu/kernels_final.sh`
# measures these plans before they are committed.
mkdir -p /tmp/codecomplete-plans && cp "$OUT"/plans/*.json /tmp/codecomplete-plans/

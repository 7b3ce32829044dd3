#!/usr/bin/env bash
# The few-row int8 kernel's launches on one H200 in about two minutes (kernels/few_rows_int8_bench.py): tiles x split-K
# counts at CodeLlama-7B's and 34B's projections (the deep wo and w2 first, then wqkv and w13), 2, 8 and 16 rows of x,
# every launch checked against float64 of the dequantized weight, timed as CUDA-graph replays beside the plan's
# launch, Run 35's and cuBLAS on bf16 weights. Nothing to carry. Run from the repository root on the GPU machine:
#   OUT=/path bash bench/gpu/few_rows_int8_h200.sh            (ONLY="7B wo,7B w2" ROWS=8 for fewer)
# Writes under $OUT (default bench/scratch/few-rows-int8): few-rows-sweep.json/.log, gpu.txt, few-rows-plans.json
# (the shapes' winners that beat the plan: CODECOMPLETE_FEW_ROWS_PLANS=$OUT/few-rows-plans.json for a second run).
# Prints progress as it goes, then the table (µs, % of the copy bandwidth, bf16 cuBLAS's µs / ours last).
set -uo pipefail
OUT=${OUT:-bench/scratch/few-rows-int8}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv \
    > "$OUT/gpu.txt" 2>&1 || true
timeout 170 python -m kernels.few_rows_int8_bench --budget-s 130 --only "${ONLY:-}" --rows "${ROWS:-2,8,16}" \
    --json "$OUT/few-rows-sweep.json" --write-plans "$OUT/few-rows-plans.json" > "$OUT/few-rows-sweep.log" 2>&1 &
sweep=$!
tail -n +1 --pid=$sweep -f "$OUT/few-rows-sweep.log" | grep --line-buffered -E "^\[|^  M=|WRONG|budget|rror" \
    | cut -c1-200
wait $sweep
status=$?
echo "== few-row int8 sweep (exit $status)"
sed -n '/^[0-9]* SMs, copy/,$p' "$OUT/few-rows-sweep.log"
[ "$status" -eq 0 ] || tail -n 20 "$OUT/few-rows-sweep.log"

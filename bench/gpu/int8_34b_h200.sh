#!/usr/bin/env bash
# CodeLlama-34B end to end (random weights, flash attention, batch 1) with int8 weights, which had launch entries
# from kernel times only, and issue 11's 128k cache ratio with bf16 and with int8 weights: (a) 128k, bf16 and int8
# weights, each with a bf16, an fp8 and an int8 cache; (b) int8 weights at 4k and 16k. Run from the repository root
# on the GPU machine: OUT=/path bash bench/gpu/int8_34b_h200.sh
set -uo pipefail
OUT=${OUT:-bench/scratch/int8-34b}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 330 python -m models.bench --models 34B --batches 1 --hf '' --ttft '' --weights bf16,int8 \
    --kv-caches bf16,fp8,int8 --backends flash --contexts 131072 --out "$OUT/long" --tag 34b-long > "$OUT/long.log" 2>&1
echo "long: exit $?"
timeout 200 python -m models.bench --models 34B --batches 1 --hf '' --ttft '' --weights int8 \
    --kv-caches bf16 --backends flash --contexts 4096,16384 --out "$OUT/short" --tag 34b-short > "$OUT/short.log" 2>&1
echo "short: exit $?"
grep -hE "check|^  ours " "$OUT/long.log" "$OUT/short.log" | cut -c1-220

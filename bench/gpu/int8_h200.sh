#!/usr/bin/env bash
# int8 caches in the kernels, on one H200 in about two minutes: the GPU correctness sweep (int8 cases and
# appends included), int8 vs fp8 vs bf16 kernels (bench/gpu/int8_kernels.py), and CodeLlama-7B end to end
# with bf16, fp8 and int8 caches at 16k and 64k (`models.bench`). Run from the repository root:
#   OUT=/path bash bench/gpu/int8_h200.sh
set -uo pipefail
OUT=${OUT:-bench/scratch/int8}
mkdir -p "$OUT/check"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
timeout 90 python -m kernels.bench --check quick --check-only --out "$OUT/check" > "$OUT/check/check.txt" 2> "$OUT/check/check.log"
echo "check: exit $?"; grep -E "sweep:|FAILED" "$OUT/check/check.log" | cut -c1-500
timeout 70 python bench/gpu/int8_kernels.py "$OUT" 2> "$OUT/int8-kernels.log"; echo "int8 kernels: exit $?"
timeout 100 python -m models.bench --models 7B --batches 1 --hf '' --ttft '' --kv-caches bf16,fp8,int8 \
    --backends flash --contexts 16384,65536 --out "$OUT" --tag int8 > "$OUT/e2e.log" 2>&1
echo "e2e: exit $?"; grep -E "ours |logits" "$OUT/e2e.log" | cut -c1-300
rm -f "$OUT"/*.png

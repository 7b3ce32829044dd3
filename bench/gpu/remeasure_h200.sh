#!/usr/bin/env bash
# Issue 11's end-to-end ratios re-measured on whatever H200 the call lands on, with the machine's own read and copy
# rates and clocks beside them (Run 39 saw 8-bit caches decode ~12% slower than Runs 17-38 on the same code).
# One process per part: CodeLlama-7B shape at 16k and 64k (bf16 weights; bf16, fp8 and int8 caches), then
# CodeLlama-34B at 128k with int8 weights (bf16 and fp8 caches). Run from the repository root:
#   OUT=/path bash bench/gpu/remeasure_h200.sh
set -uo pipefail
OUT=${OUT:-bench/scratch/remeasure}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 PYTHONPATH="$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem,clocks.max.sm,power.draw,temperature.gpu \
    --format=csv | tee "$OUT/card.txt"
timeout 60 python -c "
from kernels.bench import copy_bandwidth, read_bandwidth
print(f'copy {copy_bandwidth() / 1e12:.2f} TB/s, read {read_bandwidth()[0] / 1e12:.2f} TB/s')" | tee "$OUT/bandwidth.txt"
part() {   # part NAME MODEL WEIGHTS CACHES CONTEXTS SECONDS
  timeout "$6" python -m models.bench --models "$2" --batches 1 --hf '' --ttft '' --weights "$3" --kv-caches "$4" \
      --backends flash --contexts "$5" --out "$OUT/$1" --tag "$1" > "$OUT/$1.log" 2>&1
  echo "$1: exit $?"; grep -E "^  ours |check" "$OUT/$1.log" | cut -c1-200; rm -f "$OUT/$1"/*.png
}
part 7b 7B bf16 bf16,fp8,int8 16384,65536 240
part 34b 34B int8 bf16,fp8 131072 200
nvidia-smi --query-gpu=clocks.sm,clocks.mem,clocks_throttle_reasons.active,temperature.gpu --format=csv | tee -a "$OUT/card.txt"
echo "== tables"; for f in "$OUT"/*/e2e*.md; do echo "-- $f"; cat "$f"; done

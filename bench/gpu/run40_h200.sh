#!/usr/bin/env bash
# Run 40's last call (one H200): the fp8 exact window after its decode costs were removed, its 512-slot ring and the
# Triton prefill kernel, in order of what matters if the call's time runs out (each part writes its files first):
# the decode kernels against the float64 oracle, 34B 128k end to end (int8 weights; bf16 and fp8 caches: issue 11's
# 1.25x), the prefill kernel against its oracle, 7B 16k/64k end to end (bf16 and fp8: the 1.4x), prefill and an
# edit's first token (8k, 32k), the fused step's exact copies against the scatters.
#   OUT=/abs/path bash bench/gpu/run40_h200.sh        (from the repository root)
set -uo pipefail
OUT=$(realpath -m "${OUT:-bench/scratch/run40}"); mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 PYTHONPATH="$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
step() {   # step NAME SECONDS COMMAND...
  local name=$1 seconds=$2; shift 2
  timeout "$seconds" "$@" > "$OUT/$name.md" 2> "$OUT/$name.log"
  echo "$name: exit $?"; grep -E "FAILED|passed|ok$|^  ours " "$OUT/$name.md" "$OUT/$name.log" | grep -v "^.*: *ok " | cut -c1-220 | tail -n 8
}
step decode-check 120 python bench/gpu/exact_window_check.py
step e2e-34b 140 python -m models.bench --models 34B --batches 1 --hf '' --ttft '' --weights int8 --kv-caches bf16,fp8 \
    --backends flash --contexts 131072 --out "$OUT/e2e-34b" --tag 34b
step prefill-check 100 python bench/gpu/prefill_exact_check.py
step e2e-7b 100 python -m models.bench --models 7B --batches 1 --hf '' --ttft '' --weights bf16 --kv-caches bf16,fp8 \
    --backends flash --contexts 16384,65536 --out "$OUT/e2e-7b" --tag 7b
step prefill-time 120 python bench/gpu/prefill_8bit.py 8192 32768
tail -n 8 "$OUT/prefill-time.md"
step fused-check 70 python bench/gpu/fused_exact_check.py
rm -f "$OUT"/*/*.png

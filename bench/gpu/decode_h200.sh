#!/usr/bin/env bash
# Issues 11 and 13 on one H200 (at most 5 minutes): 8-bit KV caches end to end (CodeLlama-7B at 4k/16k/32k/64k,
# CodeLlama-34B at 16k/64k/128k, bf16 and fp8, flash and sdpa), the 34B capacity per cache type (proven by
# allocating it), the cost of a 9-token verification step against a one-token step (whole step and
# attention, 7B 16k and 34B 64k) and the speed-up it projects from the CPU-measured acceptance
# (bench/results/speculative-cpu.json, committed). Random weights of the real shapes; nothing to carry.
#
# Run from the repository root on the GPU machine:  bench/gpu/decode_h200.sh
# KV_CACHES=bf16,fp8,int8 adds int8 rows (read dequantized until the kernels take int8: not its speed).
# Writes under $OUT (default bench/scratch/decode-h200): decode.json, decode.md, decode.log, gpu.txt.
# Prints the table and the bars last.
set -euo pipefail
OUT=${OUT:-bench/scratch/decode-h200}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
timeout 285 python -m models.decode_bench --kv-caches "${KV_CACHES:-bf16,fp8}" --out "$OUT" 2> "$OUT/decode.log" \
    || { status=$?; tail -n 40 "$OUT/decode.log"; exit "$status"; }

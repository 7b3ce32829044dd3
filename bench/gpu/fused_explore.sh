#!/usr/bin/env bash
# Issue 16's exploration on one H200 (about 5 minutes): each fused dense kernel of the one-token step over its
# configurations (kernels/fused_gemv_bench.py; the fastest per kernel written to fused-configs.json), then
# CodeLlama-7B end to end with those at 4k-64k, bf16 and fp8 caches: the fused step, the compiled general
# one ('flash:unfused'), the fused one without dependent launches ('flash:nopdl') and sdpa; a kernel profile at 4k.
# Run from the repository root on the GPU machine: OUT=... bench/gpu/fused_explore.sh
set -uo pipefail
OUT=${OUT:-bench/scratch/fused-explore}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
timeout 200 python -m kernels.fused_gemv_bench --json "$OUT/fused-gemv.json" --write-configs "$OUT/fused-configs.json" \
    2>&1 | grep -v Warning | tee "$OUT/fused-gemv.txt"
export CODECOMPLETE_FUSED_CONFIGS="$OUT/fused-configs.json"
timeout 300 python -m models.bench --models 7B --batches 1 --hf '' --ttft '' --kv-caches bf16,fp8 \
    --backends flash,flash:unfused,flash:nopdl,sdpa --profile --out "$OUT" --tag explore > "$OUT/bench.log" 2>&1
status=$?
cat "$OUT/fused-configs.json"; echo
grep -E "logits check|ours " "$OUT/bench.log"; tail -n 3 "$OUT/bench.log"
exit $status

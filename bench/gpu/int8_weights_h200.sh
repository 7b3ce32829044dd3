#!/usr/bin/env bash
# int8 weights (`--weights int8`) on one H200, in about five minutes: (a) the int8 fused kernels and the batch-1 GEMV
# against float64 of the dequantized weights at CodeLlama-7B's shapes and ragged ones, the PRMT conversion against
# Triton's I2F bit for bit, and each 7B kernel timed with bf16 and int8 weights (bench/gpu/int8_weights_check.py);
# (b) CodeLlama-7B end to end (random weights, flash attention, batch 1) at 4k, 16k and 64k with bf16 and int8 weights
# (`python -m models.bench --weights bf16,int8`: the fused int8 step against the compiled one, the roofline of the
# bytes each reads). Nothing to carry. Run from the repository root on the GPU machine:
#   OUT=/path bash bench/gpu/int8_weights_h200.sh
# SWEEP=1 also sweeps the fused kernels' launch configurations with int8 weights (kernels.fused_gemv_bench; its
# entries, CODECOMPLETE_FUSED_INT8_CONFIGS=$OUT/int8-configs.json, for a second run), a few minutes more.
# Writes under $OUT (default bench/scratch/int8-weights): int8-weights-check.json/.log, e2e-int8w.json/.md, e2e.log,
# gpu.txt. Prints the checks' verdict, the kernels' times and the end-to-end table last.
set -uo pipefail
OUT=${OUT:-bench/scratch/int8-weights}
BACKENDS=${BACKENDS:-flash}     # e.g. flash,flash:wideint8: int8 weights' 8-byte loads against 16-byte ones, one call
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv \
    > "$OUT/gpu.txt" 2>&1 || true
timeout 120 python bench/gpu/int8_weights_check.py "$OUT" > "$OUT/int8-weights-check.log" 2>&1
check=$?
timeout 300 python -m models.bench --models 7B --batches 1 --hf '' --ttft '' --weights bf16,int8 --backends "$BACKENDS" \
    --contexts 4096,16384,65536 --out "$OUT" --tag int8w > "$OUT/e2e.log" 2>&1
e2e=$?
rm -f "$OUT"/*.png
if [ -n "${SWEEP:-}" ]; then   # SWEEP=1 (a few more minutes): launch configurations for int8 weights at 7B's shapes
    timeout 300 python -m kernels.fused_gemv_bench --weights int8 --budget-s 240 --json "$OUT/int8-sweep.json" \
        --write-configs "$OUT/int8-configs.json" > "$OUT/int8-sweep.log" 2>&1; echo "int8 sweep: exit $?"
fi
echo "== checks (exit $check): BAD lines, then the kernels with bf16 and int8 weights"
grep -E "^BAD|checks ok|WRONG" "$OUT/int8-weights-check.log" | cut -c1-300
grep -E "µs" "$OUT/int8-weights-check.log" | cut -c1-200
[ "$check" -eq 0 ] || tail -n 20 "$OUT/int8-weights-check.log"
echo "== end to end (exit $e2e): logits checks, then tok/s"
grep -E "logits check|int8 weights check" "$OUT/e2e.log" | cut -c1-400
[ "$e2e" -eq 0 ] || tail -n 20 "$OUT/e2e.log"
grep -E "^  ours " "$OUT/e2e.log" | cut -c1-200       # every backend's tok/s (flash:wideint8 too, where asked)

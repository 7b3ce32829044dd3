#!/usr/bin/env bash
# The Triton prefill kernel of an fp8 cache's exact sink and window tokens (kernels/prefill_exact.py) on one H200:
# `check` compiles it against the float64 oracle at CodeLlama-7B/34B shapes and times one layer's attention for each
# tiling beside the masked softmax and plain causal SDPA (bench/gpu/prefill_exact_check.py --sweep, ~5 min); `prefill`
# times `Transformer.prefill` and an edit's first token, bf16 / fp8 (the kernel) / int8 / fp8 through the masked
# softmax, 8k and 32k (bench/gpu/prefill_8bit.py --masked, ~4 min). One device call each:
#   OUT=/path bash bench/gpu/prefill_exact_h200.sh check      then      OUT=/path bash bench/gpu/prefill_exact_h200.sh prefill
# Run from the repository root. PARTS: any of check prefill (default: both, over the 10-minute limit of one call).
set -uo pipefail
OUT=${OUT:-bench/scratch/prefill-exact}; PARTS=${*:-check prefill}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 PYTHONPATH="$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
if [[ " $PARTS " == *" check "* ]]; then
  timeout 560 python bench/gpu/prefill_exact_check.py --sweep > "$OUT/check.md" 2> "$OUT/check.log"
  echo "check: exit $?"; grep -E "passed|FAILED" "$OUT/check.md"; grep -A 20 "^| prompt T" "$OUT/check.md"
  tail -n 3 "$OUT/check.log"
fi
if [[ " $PARTS " == *" prefill "* ]]; then
  timeout 560 python bench/gpu/prefill_8bit.py --masked 8192 32768 > "$OUT/prefill.md" 2> "$OUT/prefill.log"
  echo "prefill: exit $?"; tail -n 8 "$OUT/prefill.md"; tail -n 2 "$OUT/prefill.log"
fi

#!/usr/bin/env bash
# A session's closing correctness check of the code on one H200 (~8 minutes, one call): what final_h200.sh runs (the
# kernels' GPU correctness sweep, quick; `codecomplete --bench` at CodeLlama-7B's shapes), then the GPU checks of
# the parts CPU tests run only at small shapes under the interpreter: the exact prefill kernel against float64
# (prefill_exact_check.py), the fp8/int8 exact window (exact_window_check.py), cache reuse for every cache kind
# (cache_reuse_check.py --rounds 0). Carry .whl (bench/gpu/prepare_serve.sh). Each step's log under $OUT.
# STEPS: which of the checks after final_h200.sh run (default all three); SKIP_FINAL=1 leaves final_h200.sh out;
# BUDGET: seconds the whole script may take (a step that would run past them is skipped and says so).
#   OUT=/abs/path bash bench/gpu/closing_check_h200.sh        (from the repository root)
set -uo pipefail
OUT=$(realpath -m "${OUT:-bench/scratch/closing-check}"); mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
BUDGET=${BUDGET:-100000}
if [ -z "${SKIP_FINAL:-}" ]; then
  OUT="$OUT" bash bench/gpu/final_h200.sh 2>&1 | tail -n 40 > "$OUT/final.txt"; head -n 8 "$OUT/final.txt"
fi
export PYTHONPATH="$PWD:/tmp/codecomplete-site"
step() {   # step NAME SECONDS COMMAND...
  local name=$1 seconds=$2; shift 2
  case " ${STEPS:-prefill-exact exact-window cache-reuse} " in *" $name "*) ;; *) return ;; esac
  if (( SECONDS + seconds > BUDGET )); then echo "$name: skipped, ${seconds} s would pass the budget"; return; fi
  timeout "$seconds" "$@" > "$OUT/$name.md" 2> "$OUT/$name.log"; echo "$name: exit $?"
  tail -n 4 "$OUT/$name.md"; grep -E "Error" "$OUT/$name.log" | tail -n 3
}
step prefill-exact 120 python bench/gpu/prefill_exact_check.py
step exact-window 120 python bench/gpu/exact_window_check.py
step cache-reuse 120 python bench/gpu/cache_reuse_check.py --rounds 0

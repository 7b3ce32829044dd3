#!/usr/bin/env bash
# What the fp8 cache's exact sink and window tokens cost a decode step: AFTER (default: the repository) against
# the code before them (BEFORE, default bench/scratch/before: `git archive db534c8 kernels models | tar -x -C` it,
# carried), one process each, run from inside each tree (`python -m` puts the working folder first on sys.path,
# ahead of PYTHONPATH: run from the repository root, a carried tree's arm imports the repository's code).
# First the AFTER tree's GPU checks (bench/gpu/exact_window_check.py, fused_exact_check.py), then CodeLlama-7B at
# 16k and 64k (bf16 weights; fp8 and int8 caches) with a kernel profile of one 16k step (models.bench --profile),
# and CodeLlama-34B at 128k with int8 weights (bf16 and fp8 caches; PARTS with 34b).
#   OUT=/abs/path [AFTER=dir] [PARTS="check 7b 34b"] bash bench/gpu/exact_cost_h200.sh
set -uo pipefail
ROOT=$PWD; OUT=$(realpath -m "${OUT:-bench/scratch/exact-cost}"); BEFORE=$(realpath "${BEFORE:-bench/scratch/before}")
AFTER=$(realpath "${AFTER:-$ROOT}"); PARTS=${PARTS:-check 7b}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
if [[ " $PARTS " == *" check "* ]]; then
  for check in exact_window_check fused_exact_check; do
    PYTHONPATH="$AFTER" timeout 240 python "$ROOT/bench/gpu/$check.py" > "$OUT/$check.md" 2> "$OUT/$check.log"
    echo "$check: exit $?"; grep FAILED "$OUT/$check.md"; tail -n 1 "$OUT/$check.md"; tail -n 3 "$OUT/$check.log"
  done
fi
arm() {   # arm NAME CODE MODEL WEIGHTS CACHES CONTEXTS [--profile]
  (cd "$2" && PYTHONPATH="$2" timeout 240 python -c "import models, sys; print('code:', models.__file__, file=sys.stderr)
import runpy; runpy.run_module('models.bench', run_name='__main__')" --models "$3" --batches 1 --hf '' --ttft '' \
      --weights "$4" --kv-caches "$5" --backends flash --contexts "$6" ${7:-} --out "$OUT/$1" \
      --tag "$1") > "$OUT/$1.log" 2>&1
  echo "$1: exit $?"; grep -E "^code:|^  ours |check" "$OUT/$1.log" | cut -c1-200; rm -f "$OUT/$1"/*.png
}
if [[ " $PARTS " == *" 7b "* ]]; then
  arm 7b-after "$AFTER" 7B bf16 bf16,fp8,int8 16384,65536 --profile
  [[ " $PARTS " == *" before "* ]] && arm 7b-before "$BEFORE" 7B bf16 fp8 16384,65536
fi
if [[ " $PARTS " == *" profile34 "* ]]; then      # one 34B fp8 128k step's kernels, bf16 weights, after and before
  arm 34b-profile-after "$AFTER" 34B bf16 fp8 131072 --profile
  arm 34b-profile-before "$BEFORE" 34B bf16 fp8 131072 --profile
  for f in "$OUT"/34b-profile-*/profile-*.txt; do echo "== $f"; head -n 14 "$f" | tail -n 11 | cut -c1-92,150-200; done
fi
if [[ " $PARTS " == *" 34b "* ]]; then
  arm 34b-after "$AFTER" 34B int8 bf16,fp8 131072
  [[ " $PARTS " == *" before "* ]] && arm 34b-before "$BEFORE" 34B int8 fp8 131072
fi
f="$OUT/7b-after/profile-CodeLlama-7B-S16384-fp8.txt"; [ -f "$f" ] && head -n 16 "$f" | cut -c1-92,150-200

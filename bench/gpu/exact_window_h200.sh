#!/usr/bin/env bash
# The 8-bit caches' exact sink and window tokens on one H200 (about 7 minutes): their kernels compiled against the
# float64 oracle (bench/gpu/exact_window_check.py), then with and without them, the code before them in BEFORE
# (default bench/scratch/before: `git archive <rev> kernels models | tar -x -C` it, carried), one process each:
# end to end, CodeLlama-7B 64k (bf16 weights; bf16 and fp8 caches: issue 11's 1.4x bar) and CodeLlama-34B 128k
# (int8 weights; bf16 and fp8 caches: its 1.25x bar); a prompt's prefill and an edit's first token
# (bench/gpu/prefill_8bit.py). Run from the repository root: OUT=/path bash bench/gpu/exact_window_h200.sh [PARTS]
# PARTS: any of check e2e prefill (default: all).
set -uo pipefail
OUT=${OUT:-bench/scratch/exact-window}; BEFORE=${BEFORE:-bench/scratch/before}; PARTS=${*:-check e2e prefill}
mkdir -p "$OUT"; OUT_ABS=$(realpath "$OUT")
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
if [[ " $PARTS " == *" check "* ]]; then
  PYTHONPATH="$PWD" timeout 200 python bench/gpu/exact_window_check.py > "$OUT/check.md" 2> "$OUT/check.log"
  echo "check: exit $?"; tail -n 1 "$OUT/check.md"; grep FAILED "$OUT/check.md"; tail -n 3 "$OUT/check.log"
fi
arm() {   # arm NAME CODE MODEL WEIGHTS CONTEXT  (run from inside CODE: `python -m` puts the working folder ahead of
  # PYTHONPATH, so from the repository root both arms imported the repository's code: Run 39's e2e rows, Run 40)
  (cd "$2" && PYTHONPATH="$2" timeout 200 python -m models.bench --models "$3" --batches 1 --hf '' --ttft '' \
      --weights "$4" --kv-caches bf16,fp8 --backends flash --contexts "$5" --out "$OUT_ABS/$1" --tag "$1") \
      > "$OUT/$1.log" 2>&1
  echo "$1: exit $?"; grep -E "^  ours |check" "$OUT/$1.log" | cut -c1-200; rm -f "$OUT/$1"/*.png
}
if [[ " $PARTS " == *" e2e "* ]]; then
  arm 7b-after "$PWD" 7B bf16 65536
  arm 7b-before "$PWD/$BEFORE" 7B bf16 65536
  arm 34b-after "$PWD" 34B int8 131072
  arm 34b-before "$PWD/$BEFORE" 34B int8 131072
fi
if [[ " $PARTS " == *" prefill "* ]]; then
  for code in after before; do
    dir=$PWD; [ $code = before ] && dir=$PWD/$BEFORE
    PYTHONPATH="$dir" timeout 150 python bench/gpu/prefill_8bit.py 8192 32768 > "$OUT/prefill-$code.md" 2> "$OUT/prefill-$code.log"
    echo "prefill $code: exit $?"; tail -n 9 "$OUT/prefill-$code.md"; tail -n 2 "$OUT/prefill-$code.log"
  done
fi

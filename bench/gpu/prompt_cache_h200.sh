#!/usr/bin/env bash
# The prompt cache (llama.cpp's --cache-ram) on one H200, from the repository root: bench/gpu/prompt_cache_check.py
# (CodeLlama-7B and -34B shapes, random weights: a prompt another came between, prefilled again or restored from
# host or device memory), then the warm server's keystroke replay (serve_h200.sh) on a frozen repository text with
# --cache-ram 0 and with the default, in alternation (SKIP_CHECK=1 or SKIP_SERVE=1 leave a part out). Carry .whl,
# .gpu and FROZEN (default bench/scratch/frozen: `git archive HEAD codecomplete kernels models prompts tests | tar -x
# -C bench/scratch/frozen`). Results under $OUT; tables printed last.
set -euo pipefail
OUT=${OUT:-bench/scratch/prompt-cache}
FROZEN=$(cd "${FROZEN:-bench/scratch/frozen}" && pwd)
SITE=${SITE:-/tmp/codecomplete-site}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" .whl/*.whl 2> "$OUT/pip.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
export PYTHONPATH="$PWD:$SITE" CODECOMPLETE_CACHE_DIR=${CODECOMPLETE_CACHE_DIR:-/tmp/codecomplete-cache}
if [ -z "${SKIP_CHECK:-}" ]; then
  python3 bench/gpu/prompt_cache_check.py --tokenizer .gpu/tokenizer --out "$OUT/check.json" \
    ${SHAPES:+--shapes "$SHAPES"} > "$OUT/check.txt" 2>&1 || echo "prompt_cache_check.py exited $?"
fi
if [ -z "${SKIP_SERVE:-}" ]; then
  for round in $(seq "${FIRST_ROUND:-1}" "${LAST_ROUND:-1}"); do
    for ram in 0 8192; do
      SKIP_WHEELS=1 PYTHONPATH="$SITE" REPO="$FROZEN" ONE_SHOT=0 CACHE_RAM=$ram NAME="-ram$ram-$round" \
        OUT="$OUT" bash bench/gpu/serve_h200.sh > "$OUT/serve-ram$ram-$round.txt" 2>&1 \
        || tail -n 20 "$OUT/serve-ram$ram-$round.txt"
    done
  done
  for f in "$OUT"/serve-ram*.txt; do echo "== $f"; tail -n 6 "$f"; done
fi
[ -f "$OUT/check.txt" ] && tail -n 16 "$OUT/check.txt"
exit 0

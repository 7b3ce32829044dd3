#!/usr/bin/env bash
# Cache reuse (llama.cpp's --cache-reuse) on one H200, from the repository root, in about 8 minutes (SKIP_CHECK=1, FIRST_ROUND and LAST_ROUND split it): the checks and
# timings of bench/gpu/cache_reuse_check.py, then the warm server's keystroke replay (serve_h200.sh: CodeLlama-7B
# shape, random weights, 8k prompts) on a frozen repository text, without and with --cache-reuse 256, twice in
# alternation. Carry .whl, .gpu and FROZEN (default bench/scratch/frozen: `git archive HEAD codecomplete kernels
# models prompts tests | tar -x -C bench/scratch/frozen`). Results under $OUT; tables printed last.
set -euo pipefail
OUT=${OUT:-bench/scratch/cache-reuse}
FROZEN=$(cd "${FROZEN:-bench/scratch/frozen}" && pwd)
SITE=${SITE:-/tmp/codecomplete-site}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" .whl/*.whl 2> "$OUT/pip.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
export PYTHONPATH="$PWD:$SITE" CODECOMPLETE_CACHE_DIR=${CODECOMPLETE_CACHE_DIR:-/tmp/codecomplete-cache}
if [ -z "${SKIP_CHECK:-}" ]; then
  python3 bench/gpu/cache_reuse_check.py --tokenizer .gpu/tokenizer --out "$OUT/check.json" > "$OUT/check.txt" 2>&1 \
    || echo "cache_reuse_check.py exited $?"
  cat "$OUT/check.txt"
fi
for round in $(seq "${FIRST_ROUND:-1}" "${LAST_ROUND:-2}"); do
  for reuse in 0 256; do
    SKIP_WHEELS=1 PYTHONPATH="$SITE" REPO="$FROZEN" ONE_SHOT=0 CACHE_REUSE=$reuse NAME="-reuse$reuse-$round" \
      OUT="$OUT" bash bench/gpu/serve_h200.sh > "$OUT/serve-reuse$reuse-$round.txt" 2>&1 \
      || tail -n 20 "$OUT/serve-reuse$reuse-$round.txt"
  done
done
for f in "$OUT"/serve-reuse*.txt; do echo "== $f"; tail -n 6 "$f"; done

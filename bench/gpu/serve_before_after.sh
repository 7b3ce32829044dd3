#!/usr/bin/env bash
# The warm server's keystroke replay (serve_h200.sh, llama.vim's bodies, 7B shape, 8k prompts, no one-shot runs), an
# older tree against this one on one frozen repository text, alternating ROUNDS times (2) in one call, from the
# repository root. BEFORE: `git archive OLD codecomplete kernels models prompts | tar -x -C bench/scratch/before`;
# FROZEN: `git archive REV codecomplete kernels models prompts tests | tar -x -C bench/scratch/frozen` (both ignored
# by git: carry them with .whl and .gpu/tokenizer). Results: $OUT/{before,after}-N/serve-h200.md; the bars last.
set -uo pipefail
OUT=$(realpath -m "${OUT:-bench/scratch/serve-before-after}"); mkdir -p "$OUT"
ROOT=$PWD; BEFORE=$(realpath "${BEFORE:-bench/scratch/before}"); FROZEN=$(realpath "${FROZEN:-bench/scratch/frozen}")
SITE=${SITE:-/tmp/codecomplete-site}
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl 2> "$OUT/pip.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
for round in $(seq 1 "${ROUNDS:-2}"); do
  for side in before after; do
    tree=$ROOT; [ "$side" = before ] && tree=$BEFORE
    mkdir -p "$OUT/$side-$round"
    (cd "$tree" && SKIP_WHEELS=1 PYTHONPATH="$SITE" ONE_SHOT=0 CODECOMPLETE_CACHE_DIR="/tmp/sba-$side-$round" REPO="$FROZEN" \
       MODEL="random:CodeLlama-7B:$ROOT/.gpu/tokenizer" OUT="$OUT/$side-$round" timeout 230 bash "$ROOT/bench/gpu/serve_h200.sh") \
       > "$OUT/$side-$round/serve.txt" 2>&1
    echo "$side-$round: exit $?"
  done
done
for d in "$OUT"/*-[0-9]*/; do
  echo "== $(basename "$d")"; grep -A2 '| server.s first token' "$d/serve-h200.md" | tail -n 1; grep -o '^40 requests.*reused' "$d/serve-h200.md"
  grep -E '^p50|^cold' "$d/serve.txt"
done

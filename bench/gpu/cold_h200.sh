#!/usr/bin/env bash
# Issue 9's cold first token on the H200, from the repository root, in one call (~5 minutes). Stages ($STAGES, in
# this order; default all):
#   compiled  bench/gpu/prefill_compiled.py: the compiled prefill's accuracy against float32 and its speed
#             ($OUT/prefill-compiled.json); if it fails, the serve stages run with CODECOMPLETE_COMPILE_PREFILL=0
#   after     the keystroke replay against `codecomplete serve` as bench/gpu/serve_h200.sh runs it (CodeLlama-7B
#             shape, random weights, the embedded tokenizer, 8k prompts, 32 new tokens), with first requests in
#             three files the server was not asked about ($OUT/serve-h200.{json,md}); ONE_SHOT=1 adds the one-shot CLI
#   before    the same with this work turned off: no prefill buckets, no compiled prefill, no prompt warming, no
#             GC freeze ($OUT/serve-before.{json,md}; the committed h200-cold/ run's "before" still froze)
#   profile   bench/gpu/cold_profile.py: such requests split into prompt building and the engine's first token in
#             one process, with the first-call setup of each prefill's kernels ($OUT/cold-profile.{json,md},
#             cold-profile-tables.txt)
# Everything's stderr: $OUT/cold-h200.log.
#
# Carry: .whl and .gpu/tokenizer (bench/gpu/prepare_serve.sh makes both).
set -uo pipefail
OUT=${OUT:-bench/scratch/h200-cold}
MODEL=${MODEL:-random:CodeLlama-7B:.gpu/tokenizer}
CONTEXT=${CONTEXT:-8192}
MAX_TOKENS=${MAX_TOKENS:-32}
REQUESTS=${REQUESTS:-40}
# The wheels go outside the repository: the server indexes the repository, and 600 vendored files in it made
# every prompt rank a larger index (Runs 8-11 and the first of Run 12 served them; bench/results/NOTES.md).
SITE=${SITE:-/tmp/codecomplete-site}
MORE_COLD=(prompts/packing.py codecomplete/server/llama_cpp.py)
mkdir -p "$OUT"
LOG="$OUT/cold-h200.log"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl || exit 1
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export CODECOMPLETE_CACHE_DIR=${CODECOMPLETE_CACHE_DIR:-/tmp/codecomplete-cache}
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,clocks.sm,clocks.max.sm \
    --format=csv,noheader; nproc; } 2>&1 | tee "$LOG"
serve() {   # NAME SECONDS [extra serve_bench options]: one keystroke replay
  local name=$1 seconds=$2
  shift 2
  echo "== serve $name ($(env | grep ^CODECOMPLETE_ | tr '\n' ' '))" | tee -a "$LOG"
  timeout "$seconds" python3 -m codecomplete.serve_bench --model "$MODEL" --context-tokens "$CONTEXT" \
    --max-tokens "$MAX_TOKENS" --requests "$REQUESTS" --more-cold "${MORE_COLD[@]}" --out "$OUT/$name" "$@" \
    2>> "$LOG" | tail -n 6
}
STAGES=${STAGES:-compiled after before profile}
start=$SECONDS
for stage in $STAGES; do
  case $stage in
    compiled)
      echo "== compiled prefill" | tee -a "$LOG"
      timeout 200 python3 bench/gpu/prefill_compiled.py --out "$OUT" 2>> "$LOG" | tee -a "$LOG" | tail -n 9
      if [ "${PIPESTATUS[0]}" != 0 ]; then
        echo "the compiled prefill did not pass: the serve stages run without it" | tee -a "$LOG"
        export CODECOMPLETE_COMPILE_PREFILL=0
      fi ;;
    after)
      serve serve-h200 260 --one-shot "${ONE_SHOT:-0}" ;;
    before)
      CODECOMPLETE_PREFILL_BUCKET=0 CODECOMPLETE_COMPILE_PREFILL=0 CODECOMPLETE_WARM_PROMPTS=0 \
        CODECOMPLETE_GC_FREEZE=0 serve serve-before 150 --one-shot 0 ;;
    profile)
      echo "== cold_profile" | tee -a "$LOG"
      timeout 170 python3 bench/gpu/cold_profile.py --model "$MODEL" --context-tokens "$CONTEXT" \
        --max-tokens "$MAX_TOKENS" --out "$OUT" 2>> "$LOG" | tee -a "$LOG" | grep -v "^  " | tail -n 60 ;;
  esac
  echo "$stage: done at $((SECONDS - start)) s" | tee -a "$LOG"
done

#!/usr/bin/env bash
# The warm server on the H200, from the repository root, in about 3 minutes: a CodeLlama-7B-shaped model with
# random weights (they time exactly like real ones) that carries the embedded model's tokenizer (so its
# vocabulary is 49,152 tokens, not CodeLlama's 32,016: 0.14 GB more of output projection read per token, ~1%),
# 8k-token prompts built from this repository, 32 new tokens per request. serve_bench types through a function of
# models/engine.py a few characters per request as llama.vim does, sends a cold request in another file, and runs
# one cursor through the one-shot command line. Results: $OUT/serve-h200.{json,md}, the server's and the
# bench's log in $OUT/serve-h200.log; the bars' numbers are printed last.
#
# Carry: .whl and .gpu/tokenizer (make both here with bench/gpu/prepare_serve.sh).
# For a try on a CPU: SKIP_WHEELS=1 MODEL=random:SmolLM2-135M:.gpu/tokenizer CONTEXT=256 MAX_TOKENS=4 REQUESTS=3
set -euo pipefail
OUT=${OUT:-bench/scratch}
MODEL=${MODEL:-random:CodeLlama-7B:.gpu/tokenizer}
CONTEXT=${CONTEXT:-8192}
MAX_TOKENS=${MAX_TOKENS:-32}
REQUESTS=${REQUESTS:-40}
REPO=${REPO:-.}      # the repository served and typed in (another: a frozen text, the same workload for two trees)
# CACHE_REUSE: the server's --cache-reuse (0); CACHE_RAM: its --cache-ram (its default); ONE_SHOT: one-shot runs (1); NAME: a suffix for the output files
# The wheels go outside the repository: the server indexes the repository, and 600 vendored files in it made
# every prompt rank a larger index (Runs 8-11 and the first of Run 12 served them; bench/results/NOTES.md).
SITE=${SITE:-/tmp/codecomplete-site}
mkdir -p "$OUT"
if [ -z "${SKIP_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl
  export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export CODECOMPLETE_CACHE_DIR=${CODECOMPLETE_CACHE_DIR:-/tmp/codecomplete-cache}
export TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader 2>/dev/null || true
# Random weights' near-uniform candidates all fall under the infill sampler's 0.2 threshold, which then ends every
# answer at its first token (as llama.cpp's would): llama.vim's chain without infill (bench/infill_sampler_bench.py
# times infill itself).
python3 -m codecomplete.serve_bench --repo "$REPO" --model "$MODEL" --context-tokens "$CONTEXT" --max-tokens "$MAX_TOKENS" \
  --samplers "${SAMPLERS:-top_k,top_p,temperature}" --requests "$REQUESTS" --one-shot "${ONE_SHOT:-1}" --more-cold prompts/packing.py codecomplete/server/llama_cpp.py \
  --cache-reuse "${CACHE_REUSE:-0}" ${CACHE_RAM:+--cache-ram "$CACHE_RAM"} --out "$OUT/serve-h200${NAME:-}" 2> "$OUT/serve-h200${NAME:-}.log" | tail -n 12

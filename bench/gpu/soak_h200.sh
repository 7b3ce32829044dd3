#!/usr/bin/env bash
# The warm server kept busy on the H200 (bench/gpu/soak.py says what it sends): a CodeLlama-7B-shaped model with random
# weights carrying the embedded model's tokenizer, an 8k prompt budget, three clients for SECONDS (default 240).
# Results: $OUT/soak.{json,md}; the table printed last. Carry: .whl and .gpu/tokenizer (bench/gpu/prepare_serve.sh).
set -euo pipefail
OUT=${OUT:-bench/scratch/soak}
SITE=${SITE:-/tmp/codecomplete-site}    # outside the repository, which the server indexes (serve_h200.sh: why)
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export CODECOMPLETE_CACHE_DIR=${CODECOMPLETE_CACHE_DIR:-/tmp/codecomplete-cache}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 bench/gpu/soak.py --model "${MODEL:-random:CodeLlama-7B:.gpu/tokenizer}" --context-tokens "${CONTEXT:-8192}" \
  --seconds "${SECONDS_SOAK:-240}" --clients "${CLIENTS:-3}" --out "$OUT" 2> "$OUT.log" | tail -n 16

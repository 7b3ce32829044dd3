#!/usr/bin/env bash
# A session's closing check on one H200 (~6 minutes): the kernels' GPU correctness sweep (quick: every feature, fewer
# shapes) and what a user runs, `codecomplete --bench` with CodeLlama-7B's shapes (random weights). Needs the app's
# wheels: carry .whl (bench/gpu/prepare_serve.sh makes it). Results under $OUT/check and $OUT/cli.
set -euo pipefail
OUT=${OUT:-bench/scratch/final-h200}
SITE=${SITE:-/tmp/codecomplete-site}
mkdir -p "$OUT/check" "$OUT/cli"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export CODECOMPLETE_CACHE_DIR=${CODECOMPLETE_CACHE_DIR:-/tmp/codecomplete-cache}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
step() { local name=$1 limit=$2; shift 2; echo "== $name" >&2
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1 || { echo "$name failed ($?)"; tail -n 30 "$OUT/$name.log"; }; }
step check/run 280 python -m kernels.bench --check quick --check-only --out "$OUT/check"
step cli/run 260 python -m codecomplete --bench --model random:CodeLlama-7B --contexts 4096,16384,32768 \
    --json "$OUT/cli/cli-bench.json"
tail -n 6 "$OUT/check/run.log"; tail -n 40 "$OUT/cli/run.log"

#!/usr/bin/env bash
# This tree against an older one on the same workloads, side by side in one call on one H200 (~8 minutes): the
# sampler chains (bench/sampling_bench.py, interleaved twice), llama.vim's chain with infill
# (bench/infill_sampler_bench.py), and the warm server (serve_h200.sh) on one frozen repository text. The older
# tree: BEFORE (default bench/scratch/before), `git archive OLD codecomplete kernels models prompts | tar -x -C
# BEFORE`, with this tree's two bench scripts copied into BEFORE/bench (the same chains for both); the frozen text:
# FROZEN (default bench/scratch/frozen), e.g. `git archive OLD codecomplete kernels models prompts tests`. Both are
# ignored by git: carry them with .whl and .gpu. Results under $OUT/{before,after}; tables printed last.
set -euo pipefail
OUT=${OUT:-bench/scratch/before-after}
BEFORE=$(cd "${BEFORE:-bench/scratch/before}" && pwd)
FROZEN=$(cd "${FROZEN:-bench/scratch/frozen}" && pwd)
SITE=${SITE:-/tmp/codecomplete-site}
ROOT=$PWD
mkdir -p "$OUT/before" "$OUT/after"
OUT=$(cd "$OUT" && pwd)
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" .whl/*.whl 2> "$OUT/pip.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
in_tree() { local tree=$1; shift; (cd "$tree" && PYTHONPATH="$tree:$SITE" "$@"); }
for round in 1 2; do
  for side in before after; do
    tree=$ROOT; [ "$side" = before ] && tree=$BEFORE
    in_tree "$tree" python3 bench/sampling_bench.py --out "$OUT/$side/sampling-$round.md" > /dev/null
  done
done
for side in before after; do
  tree=$ROOT; [ "$side" = before ] && tree=$BEFORE
  in_tree "$tree" python3 bench/infill_sampler_bench.py --rows 300 --iters 200 > "$OUT/$side/infill-sampler.txt"
  # serve_h200.sh's run, from the tree under test, on the frozen text
  (cd "$tree" && SKIP_WHEELS=1 PYTHONPATH="$SITE" REPO="$FROZEN" MODEL="random:CodeLlama-7B:$ROOT/.gpu/tokenizer" \
     OUT="$OUT/$side" bash "$ROOT/bench/gpu/serve_h200.sh") > "$OUT/$side/serve.txt" 2>&1 || tail -n 20 "$OUT/$side/serve.txt"
done
for side in before after; do echo "== $side"; cat "$OUT/$side/sampling-2.md" "$OUT/$side/infill-sampler.txt"; tail -n 8 "$OUT/$side/serve.txt"; done

#!/usr/bin/env bash
# The "standard attention" baseline re-measured on one H200 (~6 minutes): `eager` is now attention in the model's
# dtype as transformers' eager attention computes it (kernels.reference.eager_decode), not the float32 oracle
# that the H100 tables of 2026-11-26 timed under that name. Three measurements, each with its peers in one run:
#   kernels/   python -m kernels.bench --quick: flash_decode vs every SDPA backend, FlexAttention and eager
#   e2e/       python -m models.bench: CodeLlama-7B decode tokens/s, flash / sdpa / eager, 4k-64k
#   cli/       codecomplete --bench --model random:CodeLlama-7B: what a user runs
# Run from the repository root on the GPU machine:  OUT=... bench/gpu/eager_h200.sh   (random weights; nothing to carry)
set -euo pipefail
OUT=${OUT:-bench/scratch/eager-h200}
mkdir -p "$OUT/kernels" "$OUT/e2e" "$OUT/cli"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
step() { local name=$1 limit=$2; shift 2; echo "== $name" >&2
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1 || { echo "$name failed ($?)"; tail -n 30 "$OUT/$name.log"; }; }
step kernels/run 240 python -m kernels.bench --quick --out "$OUT/kernels"
step e2e/run 200 python -m models.bench --models 7B --contexts 4096,16384,32768,65536 --backends flash,sdpa,eager \
    --hf '' --ttft '' --out "$OUT/e2e"
step cli/run 150 python -m codecomplete --bench --model random:CodeLlama-7B --contexts 4096,16384,32768 \
    --json "$OUT/cli/cli-bench.json"
cp "$OUT/cli/run.log" "$OUT/cli/cli-bench.txt" 2>/dev/null || true
tail -n 25 "$OUT/kernels/run.log"; tail -n 12 "$OUT/e2e/run.log"; tail -n 20 "$OUT/cli/run.log"

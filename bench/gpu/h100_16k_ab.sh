#!/usr/bin/env bash
# End to end, Run 55's CodeLlama-34B 16k plan entries on an H100 (chosen by models.step_plans, never run by
# models.bench): h100_plans_ab.sh at 16k, bf16, e4m3 and int8 caches, with the committed table against the same table
# without its 16k entries (those shapes then take what the rest lends, else the heuristic), in alternating processes:
# before, after, before, after (~60 s each). From the repository root:
#   OUT=/abs/path bash bench/gpu/h100_16k_ab.sh       (PAIRS=1 for one pair)
set -uo pipefail
OUT=$(realpath -m "${OUT:-bench/scratch/h100-16k-ab}"); mkdir -p "$OUT/without-16k"
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
slug=$(PYTHONPATH="$PWD" python -c 'import sys; from kernels.plan import device_slug; print(device_slug(sys.argv[1]))' \
       "$card")
cp kernels/plans/*.json "$OUT/without-16k/"
python - "$OUT/without-16k/$slug.json" <<'PY' || exit 1
import json, sys
path = sys.argv[1]
table = json.load(open(path))
kept = [e for e in table["entries"] if e["key"]["S"] != 16384]
print(f"without-16k: {len(table['entries']) - len(kept)} of {len(table['entries'])} entries dropped")
json.dump({**table, "entries": kept}, open(path, "w"), indent=1)
PY
BEFORE="$OUT/without-16k" CONTEXTS=16384 CACHES=bf16,fp8,int8 PROCESS_S="${PROCESS_S:-120}" OUT="$OUT" \
    bash "$(dirname "$0")/h100_plans_ab.sh"

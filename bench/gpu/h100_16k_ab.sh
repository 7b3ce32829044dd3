#!/usr/bin/env bash
# End to end, Run 55's CodeLlama-34B 16k plan entries on an H100 (chosen by models.step_plans, never run by
# models.bench): 34B int4 at 16k, bf16, e4m3 and int8 caches, with the committed table against the same table without
# its 16k entries (those shapes then take what the rest lends, else the heuristic), in alternating processes:
# without, with, without, with (~60 s each). From the repository root:
#   OUT=/abs/path bash bench/gpu/h100_16k_ab.sh       (PAIRS=1 for one pair)
set -uo pipefail
OUT=$(realpath -m "${OUT:-bench/scratch/h100-16k-ab}"); mkdir -p "$OUT/without-16k"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1); echo "card: $card"
case "$card" in *H100*) ;; *) echo "not an H100: nothing run"; exit 0 ;; esac
slug=$(python -c 'import sys; from kernels.plan import device_slug; print(device_slug(sys.argv[1]))' "$card")
cp kernels/plans/*.json "$OUT/without-16k/"
python - "$OUT/without-16k/$slug.json" <<'PY' || exit 1
import json, sys
path = sys.argv[1]
table = json.load(open(path))
kept = [e for e in table["entries"] if e["key"]["S"] != 16384]
print(f"without-16k: {len(table['entries']) - len(kept)} of {len(table['entries'])} entries dropped")
json.dump({**table, "entries": kept}, open(path, "w"), indent=1)
PY
run() {  # run NAME [PLANS_DIR]
  CODECOMPLETE_PLANS_DIR="${2:-$PWD/kernels/plans}" timeout 120 python -m models.bench --models 34B --batches 1 \
      --hf '' --ttft '' --weights int4 --kv-caches bf16,fp8,int8 --backends flash --contexts 16384 \
      --out "$OUT/$1" --tag "34b-16k-$1" > "$OUT/$1.log" 2>&1
  echo "$1: exit $?"; grep -hE "^  ours |tok/s" "$OUT/$1.log" | cut -c1-170 | tail -n 6
}
for i in $(seq "${PAIRS:-2}"); do
  run "without-$i" "$OUT/without-16k"
  run "with-$i"
done

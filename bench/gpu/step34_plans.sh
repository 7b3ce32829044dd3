#!/usr/bin/env bash
# The CodeLlama-34B decode step at one context with one 8-bit cache kind, at its table plan and at variants of
# that plan (each a copy of kernels/plans with the kind's B=1 entry at that length changed), one models.bench run
# each; the other kinds at their table plans beside them:
#   OUT=dir KIND=int8 S=131072 bash bench/gpu/step34_plans.sh 'name={"field": value, ...}' ...
# (Run 17 ran it for fp8 with 'int8-tiles={"num_splits": 66, "block_n": 64, "num_stages": 2, "loop_stages": 3}'
# and 'table-pdl={"pdl": true}'.)
set -euo pipefail
OUT=${OUT:?set OUT}
KIND=${KIND:-fp8}
S=${S:-131072}
export PYTHONPATH=.
mkdir -p "$OUT"
run() {  # name, plans dir, kinds
    CODECOMPLETE_PLANS_DIR="$2" timeout 150 python -m models.bench --models 34B --contexts "$S" --batches 1 \
        --hf '' --ttft '' --kv-caches "$3" --backends flash --out "$OUT/e2e-$1" > "$OUT/e2e-$1.log" 2>&1 || echo "$1 failed"
    grep -h "tok/s" "$OUT/e2e-$1.log" | sed "s/^/$1: /"
}
run table kernels/plans "bf16,fp8,int8"
for arg in "$@"; do
    name=${arg%%=*}; fields=${arg#*=}; dir="$OUT/plans-$name"; mkdir -p "$dir"
    python - "$dir" "$fields" "$KIND" "$S" <<'PY'
import json, sys
table = json.load(open("kernels/plans/nvidia-h200.json"))
for e in table["entries"]:
    k = e["key"]
    if (k["kind"], k["group"], k["B"], k["S"], k["T"]) == (sys.argv[3], 8, 1, int(sys.argv[4]), 1):
        e["plan"].update(json.loads(sys.argv[2]))
json.dump(table, open(f"{sys.argv[1]}/nvidia-h200.json", "w"))
PY
    run "$name" "$dir" "$KIND"
done

#!/usr/bin/env bash
# Issue 11's lead from Run 17: e4m3's 34B 128k decode step is slower than int8's by far more than their attention
# kernels alone differ. The 34B step at 128k, fp8 cache, with e4m3's table plan and two variants of it (each a copy
# of kernels/plans with that one entry changed), int8 beside it:
#   OUT=dir bash bench/gpu/fp8_34b_step.sh
set -euo pipefail
OUT=${OUT:?set OUT}
export PYTHONPATH=.
variant() {  # name, then the plan fields that replace the fp8 34B B=1 128k entry's
    local dir="$OUT/plans-$1"; mkdir -p "$dir"
    python - "$dir" "$2" <<'PY'
import json, sys
table = json.load(open("kernels/plans/nvidia-h200.json"))
for e in table["entries"]:
    k = e["key"]
    if (k["kind"], k["group"], k["B"], k["S"], k["T"]) == ("fp8", 8, 1, 131072, 1):
        e["plan"].update(json.loads(sys.argv[2]))
json.dump(table, open(f"{sys.argv[1]}/nvidia-h200.json", "w"))
PY
    CODECOMPLETE_PLANS_DIR="$dir" timeout 150 python -m models.bench --models 34B --contexts 131072 --batches 1 \
        --hf '' --ttft '' --kv-caches "$3" --backends flash --out "$OUT/e2e-$1" > "$OUT/e2e-$1.log" 2>&1 || echo "$1 failed"
    grep -h "tok/s" "$OUT/e2e-$1.log" | sed "s/^/$1: /"
}
variant table '{}' fp8,int8
variant int8-tiles '{"num_splits": 66, "block_n": 64, "num_stages": 2, "loop_stages": 3}' fp8
variant table-pdl '{"pdl": true}' fp8

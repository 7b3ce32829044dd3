#!/usr/bin/env bash
# Which compile stalls request 9 of the keystroke replay: fresh Triton and inductor caches, TORCH_LOGS=recompiles,
# and the cache entries made after the first request.
set -uo pipefail
OUT=${OUT:-bench/scratch/probe}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
SITE=/tmp/codecomplete-site
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" .whl/*.whl 2> "$OUT/pip.log"
export TRITON_CACHE_DIR=/tmp/tc TORCHINDUCTOR_CACHE_DIR=/tmp/ic TORCH_LOGS="recompiles,graph_breaks"
rm -rf /tmp/tc /tmp/ic /tmp/marker
( while ! grep -q ' 1/' "$OUT/serve-h200-probe.log" 2>/dev/null; do sleep 0.2; done; touch /tmp/marker ) &
FROZEN=$(cd bench/scratch/frozen && pwd)
SKIP_WHEELS=1 PYTHONPATH="$SITE" REPO="$FROZEN" ONE_SHOT=0 NAME="-probe" REQUESTS=12 OUT="$OUT" \
  bash bench/gpu/serve_h200.sh > "$OUT/serve.txt" 2>&1
echo "== triton entries made after request 1:"
find /tmp/tc -newer /tmp/marker -name '*.json' ! -name '__grp__*' | while read f; do
  echo "$(stat -c %y "$f") $(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d.get('name'), {k: v for k, v in d.items() if k in ('num_warps','num_stages')}, str(d.get('constants', ''))[:300])" "$f")"; done | sort | head -40
echo "== inductor entries after request 1:"; find /tmp/ic -newer /tmp/marker -type f | head -20
python3 - "$OUT/serve-h200-probe.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for line in d["server_log"]:
    if "POST" not in line or " 7." in line or " 2." in line: print(line[:400])
for i, r in enumerate(d["requests"]): print(i, round(r["total_ms"]), round(r["ttft_ms"]))
PY

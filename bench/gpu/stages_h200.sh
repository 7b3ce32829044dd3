#!/usr/bin/env bash
# Issue 9's keystroke replay on the H200, three times in one call, with the server's per-request split of the first
# token (codecomplete/server/worker.py's summary line, read by serve_bench): this code on the freshly started
# machine, then a previous commit's code (BEFORE, a folder holding its tree, e.g. made with
# `git archive COMMIT | tar -x -C .before`; skipped when absent), then this
# code again. Each replay is bench/gpu/cold_h200.sh's "after" stage. Results: $OUT/{first,before,repeat}/.
# Carry: .whl, .gpu and BEFORE.
set -uo pipefail
OUT=${OUT:-bench/scratch/h200-cold/stages}
BEFORE=${BEFORE:-.before}
here=$PWD
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
[ -d "$BEFORE" ] && rm -rf /tmp/codecomplete-before && mv "$BEFORE" /tmp/codecomplete-before && BEFORE=/tmp/codecomplete-before
STAGES=after OUT="$OUT/first" bash bench/gpu/cold_h200.sh
if [ -d "$BEFORE" ]; then
  # (moved out of the repository above, else the servers of this code index it too; run with this cold_h200.sh)
  ln -sfn "$here/.whl" "$BEFORE/.whl" && ln -sfn "$here/.gpu" "$BEFORE/.gpu"
  (cd "$BEFORE" && STAGES=after OUT="$OUT/before" bash "$here/bench/gpu/cold_h200.sh")
fi
STAGES=after OUT="$OUT/repeat" bash bench/gpu/cold_h200.sh
python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
print(f"{'replay':<8} {'p50 ttft':>9} {'p50 total':>10} {'cold':>7} {'srv first':>10} {'queued':>7} {'prompt':>7} "
      f"{'engine':>7} {'text':>6} {'sent':>6} {'outside':>8}")
for name in ("first", "before", "repeat"):
    path = Path(sys.argv[1]) / name / "serve-h200.json"
    if not path.exists():
        continue
    s = json.loads(path.read_text())["summary"]
    b = s.get("first_token_p50_ms") or {}
    cells = " ".join(f"{b.get(k, float('nan')):>{w}.1f}" for k, w in
                     (("first", 10), ("queued", 7), ("prompt", 7), ("engine", 7), ("text", 6), ("sent", 6), ("outside", 8)))
    print(f"{name:<8} {s['ttft_ms_p50']:>9.1f} {s['total_ms_p50']:>10.1f} {s['cold_ttft_ms']:>7.1f} {cells}")
PY

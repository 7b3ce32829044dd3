#!/usr/bin/env bash
# Run 52 (one H200 only, unless ANY_CARD=1; on any other card it prints the card and stops): issue 11's end-to-end ratio with the fused
# int4 step (STEPS=e2e-34b of int4_weights.sh), int4's verification cost (int4_verify.py), then with FUSED=1 the fused int4
# kernels swept at 34B's and 7B's shapes (STEPS=fused). Everything under one tarball, $OUT/run52.tgz, and the tables on stdout.
set -uo pipefail
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
echo "card: $card"
case "$card" in *H200*) ;; *) [ -n "${ANY_CARD:-}" ] || { echo "not an H200: nothing run"; exit 0; } ;; esac
W=/tmp/run52; mkdir -p "$W"
started=$(date +%s)
OUT=$W/e2e STEPS=e2e-34b bash bench/gpu/int4_weights.sh
echo "== verify ($(( $(date +%s) - started )) s in)"
timeout 200 python bench/gpu/int4_verify.py --out "$W/verify" > "$W/verify.log" 2>&1; echo "verify: exit $?"
tail -n 14 "$W/verify.log"
left=$(( 560 - ($(date +%s) - started) ))
echo "== fused ($left s left)"
if [ -n "${FUSED:-}" ] && [ "$left" -gt 120 ] && [[ "$card" == *H200* ]]; then   # (an H100's entries: Run 51)
  OUT=$W/fused STEPS=fused FUSED_BUDGET_S=$(( left - 60 )) FUSED_TIMEOUT_S=$(( left - 20 )) \
      timeout $(( left - 10 )) bash bench/gpu/int4_weights.sh
fi
tar czf "$OUT/run52.tgz" -C "$W" .

#!/usr/bin/env bash
# Run 55: issue 11's end-to-end ratio on one H200 with the e4m3 plan chosen inside the step. From the repository root:
#   A. CodeLlama-34B at 128k, int4 weights (the fused step), bf16 and fp8 caches, committed plans (~65 s);
#   B. models.step_plans: 34B 128k's e4m3 plans timed inside that int4 step (the table's, the heuristic's, their
#      neighbours, 1/2, 3/4, 5/4 and 2 times the table's splits among them, and the transposed kernel at 16, 24 and
#      33 splits), a winner by > 0.5% written into a copy of the committed tables, $W/plans (~80 s). On an H100
#      (Run 54) the heuristic's 33 splits lost 7% to 24 in the step;
#   C. A again over $W/plans (CODECOMPLETE_PLANS_DIR): the ratio with B's choice (~65 s);
#   D. int4's verification cost (int4_verify.py, ~100 s);
#   E. with what is left of TOTAL_S (default 560 s), if over 120 s, the fused int4 kernels' sweep.
# On another card it prints the card and stops, unless ANY_CARD=1 (then A-C only; RATIO_ONLY=1 stops there too).
# Everything in $OUT/run55.tgz, written after every step (a call cut off at its limit keeps what ran), and the tables
# on stdout.
set -uo pipefail
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
echo "card: $card"
case "$card" in *H200*) ;; *) [ -n "${ANY_CARD:-}" ] || { echo "not an H200: nothing run"; exit 0; } ;; esac
W=/tmp/run55; mkdir -p "$W/plans"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
started=$(date +%s)
since() { echo "$(( $(date +%s) - started )) s in"; }
keep() { tar czf "$OUT/run55.tgz" -C "$W" .; }
e2e() {  # e2e NAME: the 34B int4 rows, both caches, one process
  timeout 150 python -m models.bench --models 34B --batches 1 --hf '' --ttft '' --weights int4 --kv-caches bf16,fp8 \
      --backends flash --contexts 131072 --out "$W/$1" --tag "34b-128k-$1" > "$W/$1.log" 2>&1
  echo "$1: exit $? ($(since))"; grep -hE "check|^  ours |tok/s" "$W/$1.log" | cut -c1-200 | tail -n 12; keep
}
e2e e2e-committed
cp kernels/plans/*.json "$W/plans/"
slug=$(python -c 'import sys; from kernels.plan import device_slug; print(device_slug(sys.argv[1]))' "$card")
table="$W/plans/$slug.json"   # the file tuned_plan reads for this card
write=(--write-table "$table")
[ -f "$table" ] || { echo "no committed table for this card: nothing written"; write=(); }
timeout 200 python -m models.step_plans --model 34B --weights int4 --contexts 131072 --kv-caches fp8 \
    --variant 'transposed16={"transposed": true, "num_splits": 16}' \
    --variant 'transposed24={"transposed": true, "num_splits": 24}' \
    --variant 'transposed33={"transposed": true, "num_splits": 33}' \
    "${write[@]}" --out "$W/step-plans" > "$W/step-plans.log" 2>&1
echo "step-plans: exit $? ($(since))"; tail -n 16 "$W/step-plans.log"; keep
CODECOMPLETE_PLANS_DIR="$W/plans" e2e e2e-step-plans
[[ "$card" == *H200* && -z "${RATIO_ONLY:-}" ]] || exit 0   # RATIO_ONLY=1: items A-C only (~210 s), for a short budget
timeout 150 python bench/gpu/int4_verify.py --out "$W/verify" > "$W/verify.log" 2>&1; echo "verify: exit $? ($(since))"
tail -n 14 "$W/verify.log"; keep
left=$(( ${TOTAL_S:-560} - ($(date +%s) - started) ))
echo "== fused ($left s left)"
if [ "$left" -gt 120 ]; then
  OUT=$W/fused STEPS=fused FUSED_BUDGET_S=$(( left - 60 )) FUSED_TIMEOUT_S=$(( left - 20 )) \
      timeout $(( left - 10 )) bash bench/gpu/int4_weights.sh
  keep
fi

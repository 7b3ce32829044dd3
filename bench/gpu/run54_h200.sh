#!/usr/bin/env bash
# Run 54 (one H200 only, unless ANY_CARD=1; on any other card it prints the card and stops). From the repository root:
#   A. issue 11's end-to-end ratio, CodeLlama-34B at 128k, int4 weights (the fused step), bf16 and fp8 caches, with the
#      committed plans (~50 s);
#   B. the tuner over the 8-bit cases at 34B B=1 64k/128k (it tries the transposed kernel's 256-key tiles since 9eea6ad),
#      its plan file written beside the committed entries into $W/plans (~130 s);
#   C. A again with CODECOMPLETE_PLANS_DIR=$W/plans: the same ratio with B's plans inside the step (~50 s);
#   (its steps D-E, int4's verification and the fused sweep, moved to run55_h200.sh, which replaces step B by the
#   plan choice inside the step: Run 54 found the tuner's alone-picked plans lose there.)
# On another card with STEP_PLANS=1 it times e4m3 plans inside the int4 step (below); with ANY_CARD=1 A-C run (Run 54
# did so on an H100). Everything under one tarball, $OUT/run54.tgz, and the tables on stdout.
set -uo pipefail
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
echo "card: $card"
W=/tmp/run54; mkdir -p "$W"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
if [[ "$card" != *H200* && -n "${STEP_PLANS:-}" ]]; then
  # Another card with STEP_PLANS=1: the e4m3 plans of 34B B=1 128k timed inside the int4 step instead (~150 s), a
  # winner by > 0.5% written into a copy of this card's plan file ($W/plans/).
  mkdir -p "$W/plans"; table=$(ls kernels/plans/*.json | grep -i "$(echo "$card" | tr 'A-Z ' 'a-z-' | cut -c1-12)" | head -n 1)
  [ -n "$table" ] && cp "$table" "$W/plans/" && write=(--write-table "$W/plans/$(basename "$table")") || write=()
  timeout 240 python -m models.step_plans --model 34B --weights int4 --contexts 131072 --kv-caches fp8 \
      --twins early,late --variant 'splits24={"num_splits": 24}' --variant 'splits48={"num_splits": 48}' \
      --variant 'dot32={"transposed": false, "num_splits": 32, "block_n": 128, "num_warps": 4, "num_stages": 3}' \
      "${write[@]}" --out "$W/step-plans" > "$W/step-plans.log" 2>&1
  echo "step-plans: exit $?"; tail -n 16 "$W/step-plans.log"; tar czf "$OUT/run54.tgz" -C "$W" .; exit 0
fi
case "$card" in *H200*) ;; *) [ -n "${ANY_CARD:-}" ] || { echo "not an H200: nothing run"; exit 0; } ;; esac
started=$(date +%s)
since() { echo "$(( $(date +%s) - started )) s in"; }
e2e() {  # e2e NAME: the 34B int4 rows, both caches, one process
  timeout 150 python -m models.bench --models 34B --batches 1 --hf '' --ttft '' --weights int4 --kv-caches bf16,fp8 \
      --backends flash --contexts 131072 --out "$W/$1" --tag "34b-128k-$1" > "$W/$1.log" 2>&1
  echo "$1: exit $? ($(since))"; grep -hE "check|^  ours |tok/s" "$W/$1.log" | cut -c1-200 | tail -n 12; keep
}
keep() { tar czf "$OUT/run54.tgz" -C "$W" .; }   # after every step: a call cut off at its limit keeps what ran
e2e e2e-committed
timeout 170 python -m kernels.bench --tune --cases 8bit --only "34B B=1 S=128k fp8$,34B B=1 S=64k fp8$" --budget-s 100 \
    --out "$W/tune" --plans-dir "$W/plans" > "$W/tune.log" 2>&1
echo "tune: exit $? ($(since))"; tail -n 20 "$W/tune.log"; keep
CODECOMPLETE_PLANS_DIR="$W/plans" e2e e2e-tuned
keep   # Steps D-E (verification, fused sweep) never ran here: run55_h200.sh has them, after a better step B

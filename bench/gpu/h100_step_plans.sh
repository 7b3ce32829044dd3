#!/usr/bin/env bash
# An H100's plan table chosen inside the decode step, what Run 55 left (~200 s), from the repository root:
# `models.step_plans` over CodeLlama-34B (int4 weights: its bf16 weights and a long cache do not fit 80 GB) at 64k and
# 128k with int8 and bf16 caches (Run 55 reached 34B 16k, 64k int8 and 7B 16k/64k; Run 54 the e4m3 cache at 64k and
# 128k). A candidate whose step beats the table plan's by > 0.5% is written into a copy of the committed H100 table,
# $OUT/plans/ (copy the entries worth it to kernels/plans/ and commit them with the numbers; each says "lend": false).
# Run 55 saw 34B 64k bf16 at 16 splits 4.8% faster than the table's plan before the time limit cut it.
# CONTEXTS, CACHES and STEP_S (the search's time limit) choose the shapes. With PAIRS=N, a table it changed is then run
# end to end in the same call (h100_plans_ab.sh: the committed tables against $OUT/plans, N alternating pairs, results
# in $OUT/ab). Going on from Run 57's entries (bf16's 8 splits then meets 4, 6 and 10; e4m3's 24 at 128k 18 and 30):
#   CONTEXTS=65536,131072 CACHES=bf16,fp8 STEP_S=270 PAIRS=1 PROCESS_S=110 OUT=/abs/path \
#       bash bench/gpu/h100_step_plans.sh
set -uo pipefail
OUT=$(realpath -m "${OUT:-bench/scratch/h100-step-plans}"); mkdir -p "$OUT/plans"
CONTEXTS=${CONTEXTS:-65536,131072} CACHES=${CACHES:-bf16,int8}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1); echo "card: $card"
case "$card" in *H100*) ;; *) echo "not an H100: nothing run"; exit 0 ;; esac
slug=$(python -c 'import sys; from kernels.plan import device_slug; print(device_slug(sys.argv[1]))' "$card")
table="$OUT/plans/$slug.json"   # the file tuned_plan reads for this card
cp kernels/plans/*.json "$OUT/plans/"
[ -f "$table" ] || { echo "no committed table named $(basename "$table")"; exit 1; }
timeout "${STEP_S:-250}" python -m models.step_plans --model 34B --weights int4 --contexts "$CONTEXTS" \
    --kv-caches "$CACHES" --write-table "$table" --out "$OUT/34b" > "$OUT/34b.log" 2>&1
echo "34B: exit $?"; grep -E "\*\*best\*\*|plan file" "$OUT/34b.log" | cut -c1-170
[ -n "${PAIRS:-}" ] || exit 0
if cmp -s "kernels/plans/$slug.json" "$table"; then echo "no entry changed: nothing to run end to end"; exit 0; fi
BEFORE=kernels/plans AFTER="$OUT/plans" CONTEXTS="$CONTEXTS" CACHES="$CACHES" OUT="$OUT/ab" \
    bash bench/gpu/h100_plans_ab.sh

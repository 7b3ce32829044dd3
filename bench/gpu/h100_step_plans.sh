#!/usr/bin/env bash
# An H100's plan table chosen inside the decode step, from the repository root (~300 s): `models.step_plans` over
# CodeLlama-34B (int4 weights: its bf16 weights and a long cache do not fit 80 GB) at 16k, 64k and 128k, and
# CodeLlama-7B (bf16 weights) at 16k and 64k, each with bf16, fp8 and int8 caches; a candidate whose step beats the
# table plan's by > 0.5% is written into a copy of the committed H100 table, $OUT/plans/ (copy the entries worth it to
# kernels/plans/ and commit them with the numbers). Run 54 found 6-7% at 34B 64k/128k fp8 this way.
#   OUT=/abs/path bash bench/gpu/h100_step_plans.sh
set -uo pipefail
OUT=$(realpath -m "${OUT:-bench/scratch/h100-step-plans}"); mkdir -p "$OUT/plans"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1); echo "card: $card"
case "$card" in *H100*) ;; *) echo "not an H100: nothing run"; exit 0 ;; esac
slug=$(python -c 'import sys; from kernels.plan import device_slug; print(device_slug(sys.argv[1]))' "$card")
table="$OUT/plans/$slug.json"   # the file tuned_plan reads for this card
cp kernels/plans/*.json "$OUT/plans/"
[ -f "$table" ] || { echo "no committed table named $(basename "$table")"; exit 1; }
timeout 190 python -m models.step_plans --model 34B --weights int4 --contexts 16384,65536,131072 \
    --kv-caches fp8,int8,bf16 --write-table "$table" --out "$OUT/34b" > "$OUT/34b.log" 2>&1
echo "34B: exit $?"; grep -E "\*\*best\*\*|plan file" "$OUT/34b.log" | cut -c1-170
timeout 150 python -m models.step_plans --model 7B --contexts 16384,65536 --kv-caches fp8,int8,bf16 \
    --write-table "$table" --out "$OUT/7b" > "$OUT/7b.log" 2>&1
echo "7B: exit $?"; grep -E "\*\*best\*\*|plan file" "$OUT/7b.log" | cut -c1-170

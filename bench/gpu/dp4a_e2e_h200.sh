#!/usr/bin/env bash
# CodeLlama-7B (MODELS) with int8 weights end to end (random weights, flash attention, batch 1, 4k/16k/64k: CONTEXTS) with the int8
# launch entries of the tree (A) and with those plus the DP4A candidates of $CONFIGS (B), alternately in separate
# processes (an entry is read at import), ROUNDS times. Run from the repository root on the GPU machine:
#   OUT=/path CONFIGS=bench/gpu/dp4a_configs_candidate.json bash bench/gpu/dp4a_e2e_h200.sh
set -uo pipefail
OUT=${OUT:-bench/scratch/dp4a-e2e}; CONFIGS=${CONFIGS:-bench/gpu/dp4a_configs_candidate.json}; ROUNDS=${ROUNDS:-1}
MODELS=${MODELS:-7B}; CONTEXTS=${CONTEXTS:-4096,16384,65536}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
for round in $(seq 1 "$ROUNDS"); do
    for arm in A B; do
        env $([ "$arm" = B ] && echo "CODECOMPLETE_FUSED_INT8_CONFIGS=$CONFIGS") timeout 280 python -m models.bench \
            --models "$MODELS" --batches 1 --hf '' --ttft '' --weights int8 --backends flash --contexts "$CONTEXTS" \
            --out "$OUT/$arm$round" --tag dp4a > "$OUT/$arm$round.log" 2>&1
        echo "$arm$round: exit $?"
        grep -E "logits check|int8 weights check" "$OUT/$arm$round.log" | cut -c1-300
        grep -E "^  ours " "$OUT/$arm$round.log" | cut -c1-200
    done
done

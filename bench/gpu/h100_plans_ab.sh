#!/usr/bin/env bash
# End to end, plan-table entries chosen inside the decode step (models.step_plans), which models.bench has not run:
# CodeLlama-34B, int4 weights, batch 1, at CONTEXTS with CACHES, the committed tables against the tables in BEFORE
# (a directory of plan files: the H100's table as it was, e.g. `git show REV:kernels/plans/NAME.json`; AFTER names
# another directory to try in place of the committed tables, e.g. what h100_step_plans.sh just wrote), in
# alternating processes: before, after, before, after. A cache whose entries did not change is the pair's control.
# Run 57's 34B 64k / 128k entries against the table before them (~120 s a process):
#   BEFORE=bench/results/h100-run57/plans-before OUT=/abs/path bash bench/gpu/h100_plans_ab.sh     (PAIRS=1: one pair)
set -uo pipefail
OUT=$(realpath -m "${OUT:-bench/scratch/h100-plans-ab}"); mkdir -p "$OUT"
BEFORE=$(realpath "${BEFORE:?a directory of plan tables to compare against}") || exit 1
AFTER=$(realpath "${AFTER:-kernels/plans}") || exit 1   # the tables on trial: the committed ones unless named
CONTEXTS=${CONTEXTS:-65536,131072} CACHES=${CACHES:-bf16,fp8,int8}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1); echo "card: $card"
case "$card" in *H100*) ;; *) echo "not an H100: nothing run"; exit 0 ;; esac
diff -rq -x README.md "$BEFORE" "$AFTER" | sed 's/^/tables: /'
run() {  # run NAME PLANS_DIR
  CODECOMPLETE_PLANS_DIR="$2" timeout "${PROCESS_S:-150}" python -m models.bench --models 34B --batches 1 --hf '' \
      --ttft '' --weights int4 --kv-caches "$CACHES" --backends flash --contexts "$CONTEXTS" \
      --out "$OUT/$1" --tag "34b-$1" > "$OUT/$1.log" 2>&1
  echo "$1: exit $?"; grep -hE "^  ours " "$OUT/$1.log" | cut -c1-120
}
for i in $(seq "${PAIRS:-2}"); do
  run "before-$i" "$BEFORE"
  run "after-$i" "$AFTER"
done

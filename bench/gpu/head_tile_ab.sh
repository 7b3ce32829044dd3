#!/usr/bin/env bash
# This tree against an older one, on the fp8 cache's exact tokens (~5 minutes on an H100 or H200). Run 60 ran it
# with the transposed 8-bit kernel's first split read from a whole tile, its sink's keys masked in a branch of its
# own (bench/results/h100-run60/head-tile/head-tile-not-committed.diff, applied to this tree), against HEAD. End to
# end: issue 11's workload, CodeLlama-34B, int4 weights, batch 1, 128k, bf16 (the control: no exact tokens, no
# change) and e4m3 caches, `models.bench` in alternating processes (before, after, before, after), each run from
# inside its own tree (Run 40: `python -m` puts the working folder ahead of PYTHONPATH). Alone:
# bench/gpu/exact_kernel_cost.py in each tree (the fp8 call with and without the exact tokens, graph replays). The
# older tree: BEFORE (default bench/scratch/before), `git archive REV codecomplete kernels models prompts | tar -x -C
# BEFORE`; carry it.
#   BEFORE=bench/scratch/before OUT=/abs/path bash bench/gpu/head_tile_ab.sh     (PAIRS=2, PROCESS_S=120)
set -uo pipefail
OUT=$(realpath -m "${OUT:-bench/scratch/head-tile-ab}"); mkdir -p "$OUT"
BEFORE=$(realpath "${BEFORE:-bench/scratch/before}") || exit 1
ROOT=$PWD CONTEXTS=${CONTEXTS:-131072} CACHES=${CACHES:-bf16,fp8}
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
echo "card: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)"
in_tree() { local tree=$1; shift; (cd "$tree" && PYTHONPATH="$tree" "$@"); }
for i in $(seq "${PAIRS:-2}"); do
  for side in before after; do
    tree=$ROOT; [ "$side" = before ] && tree=$BEFORE
    in_tree "$tree" timeout "${PROCESS_S:-120}" python -m models.bench --models 34B --batches 1 --hf '' --ttft '' \
        --weights int4 --kv-caches "$CACHES" --backends flash --contexts "$CONTEXTS" --out "$OUT/$side-$i" \
        --tag "34b-$side-$i" > "$OUT/$side-$i.log" 2>&1
    echo "$side-$i: exit $?"; grep -hE "^  ours " "$OUT/$side-$i.log" | cut -c1-110
  done
done
for side in before after; do
  tree=$ROOT; [ "$side" = before ] && tree=$BEFORE
  in_tree "$tree" timeout "${ALONE_S:-120}" python "$ROOT/bench/gpu/exact_kernel_cost.py" > "$OUT/alone-$side.md" \
      2> "$OUT/alone-$side.log"
  echo "alone $side: exit $?"; tail -n 6 "$OUT/alone-$side.md"
done

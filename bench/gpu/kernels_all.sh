#!/usr/bin/env bash
# The whole kernel run on one H200 in at most 7 minutes: a third plan exploration, the final sweep
# with its plans, the GPU correctness sweep. Run from the repository root; nothing to carry.
#
#   CUDA_VISIBLE_DEVICES=0 OUT=/path/to/out bash bench/gpu/kernels_all.sh
#   ONLY="7B" REGRID=1 LIMIT_S=540 EXPLORE_S=260 ... : the shapes whose labels hold a substring of ONLY
#   (exploration and final sweep), the tiling grid for shapes the table measured too (a new option)
#
# 1. Exploration (`kernels.bench --tune --cases all`, EXPLORE_S = 195 s of budget, cut at +35 s):
#    every shape of the final sweep, fp8 wherever the read-rate bar applies (K+V >= 128 MB), the
#    8-token rows of the verification bars; most wanted first (kernels.tune.PRIORITY: the bars run 4
#    missed), each case starting from the committed plan (kernels/plans/nvidia-h200.json); shapes
#    that table measured get a local search only, new shapes the tiling and split grid first. The
#    plan file it writes after every case is the committed table with this run's entries in place.
# 2. Final sweep (`kernels.bench --lean`, cut at 150 s or what is left less 65 s) with those plans
#    (CODECOMPLETE_PLANS_DIR): 23 shapes, ours bf16 / fp8 / 8 tokens, the read-only kernel, SDPA
#    flash and cuDNN, as graph replays. The table and bars are rewritten after every shape, so a cut
#    run still leaves a table of what it measured (it says so).
# 3. GPU correctness sweep (`kernels.bench --check quick --check-only`, what is left less 5 s):
#    flash_decode against float64, every plan option forced once, append_kv byte for byte with
#    what differs (bytes, e4m3 steps, dequantized values, scale ulps) when it does.
#
# Writes exactly two files to $OUT (the GPU machine returns few): kernels-all.tgz (explore/:
# kernels-tune.{md,json}, explore.log; plans/nvidia-h200.json; final/: kernels.{md,json,png},
# kernels.log, kernels-check.json, check.log; gpu.txt, stages.txt) and kernels-final.md (the final
# table and bars, the check's summary, the exploration's line). Prints kernels-final.md only, at
# most 6,000 characters; every stage's own output goes to the archive.
set -uo pipefail
OUT=${OUT:-bench/scratch/all}
LIMIT_S=${LIMIT_S:-405}      # the whole script, seconds (+3 s of kill grace per stage): cuts come from what is left
EXPLORE_S=${EXPLORE_S:-195}  # the exploration's own budget (kernels.tune stops itself)
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
WORK=$(mktemp -d /tmp/kernels-all.XXXXXX)
mkdir -p "$WORK/explore" "$WORK/plans" "$WORK/final"
start=$SECONDS
left() { echo $(( LIMIT_S - (SECONDS - start) )); }
stage() {  # stage NAME SECONDS STDOUT STDERR CMD...: CMD cut at SECONDS (at least 1), its exit status kept
    local name=$1 limit=$2 out=$3 err=$4; shift 4
    (( limit < 1 )) && limit=1
    local t0=$SECONDS
    ( timeout -k 3 "$limit" "$@" > "$out" 2> "$err"; exit $? ) 2>> "$WORK/stages.txt"  # the shell's "Killed" too
    local rc=$?
    echo "$name: exit $rc after $(( SECONDS - t0 )) s (cut at $limit s)$( ((rc == 124 || rc == 137)) && echo ': CUT')" \
        >> "$WORK/stages.txt"
}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv \
    > "$WORK/gpu.txt" 2>&1 || true

# 1. exploration: budget and cut shrink if the machine was slow to start; the rest keeps 175 s
budget=$(( $(left) - 175 - 35 )); (( budget > EXPLORE_S )) && budget=$EXPLORE_S; (( budget < 10 )) && budget=10
stage explore $(( budget + 35 )) "$WORK/explore/stdout.txt" "$WORK/explore/explore.log" \
    python -m kernels.bench --tune --cases all --budget-s "$budget" --out "$WORK/explore" --plans-dir "$WORK/plans" \
    ${ONLY:+--only "$ONLY"} ${REGRID:+--regrid}
# No plan file (the exploration died before its first case): the committed table serves.
ls "$WORK"/plans/*.json > /dev/null 2>&1 || cp kernels/plans/*.json "$WORK/plans/"

# 2. the final sweep with those plans
export CODECOMPLETE_PLANS_DIR="$WORK/plans"
cut=$(( $(left) - 65 )); (( cut > 150 )) && cut=150
stage final "$cut" "$WORK/final/stdout.txt" "$WORK/final/kernels.log" \
    python -m kernels.bench --lean --out "$WORK/final" ${ONLY:+--only "$ONLY"}

# 3. the correctness sweep
stage check $(( $(left) - 5 )) "$WORK/final/check.txt" "$WORK/final/check.log" \
    python -m kernels.bench --check quick --check-only --out "$WORK/final"

# The report (short lines first, so that nothing important is cut): the check, the exploration,
# the stages, then the final table and bars without kernels.md's intro paragraph.
{
    if [ -s "$WORK/final/check.txt" ]; then head -n 5 "$WORK/final/check.txt" | cut -c1-400
    else echo "NO CHECK RESULT; its log ends:"; tail -n 5 "$WORK/final/check.log" | cut -c1-300; fi
    explored=$(grep -c ' variants in ' "$WORK/explore/explore.log" 2> /dev/null)
    skipped=$(grep -c 'not explored' "$WORK/explore/explore.log" 2> /dev/null)
    echo "Exploration: ${explored:-0} cases explored, ${skipped:-0} left to the committed plans."
    sed 's/^/Stage /' "$WORK/stages.txt"
    python - "$WORK/final/kernels.json" << 'PY' 2> /dev/null
import json, sys
env = json.load(open(sys.argv[1]))["env"]
print(f"{env['card']}, {env['date']}, torch {env['torch']}, triton {env['triton']}: copy {env['copy_bandwidth'] / 1e12:.2f} TB/s, "
      f"read {env['read_bandwidth'] / 1e12:.2f} TB/s; plans: {env['plans']['entries']} entries ({env['plans']['dir']})")
PY
    echo
    if [ -s "$WORK/final/kernels.md" ]; then
        grep -v '^torch ' "$WORK/final/kernels.md" | cat -s
    else
        echo "NO FINAL TABLE: the sweep failed before its first shape; its log ends:"
        tail -n 12 "$WORK/final/kernels.log" | cut -c1-300
    fi
} > "$WORK/kernels-final.md" 2>&1

tar -czf "$OUT/kernels-all.tgz" -C "$WORK" explore plans final gpu.txt stages.txt kernels-final.md 2> /dev/null
cp "$WORK/kernels-final.md" "$OUT/kernels-final.md"
head -c 6000 "$WORK/kernels-final.md"

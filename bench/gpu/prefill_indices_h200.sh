#!/usr/bin/env bash
# The fp8 prefill's exact-token indices computed once a chunk (one H200): the prefill kernel against float64, the
# cache-reuse check (every cache kind), then `bench/gpu/edit_profile.py 32768` (an edit's first token, bf16 and fp8,
# launches and GPU time under the profiler) in the code before (bench/scratch/before, a `git archive` of the parent
# commit) and in this tree, each from inside its own tree.
#   OUT=/abs/path bash bench/gpu/prefill_indices_h200.sh        (from the repository root)
set -uo pipefail
OUT=$(realpath -m "${OUT:-bench/scratch/prefill-indices}"); mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
ROOT=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
step() {   # step NAME SECONDS DIR COMMAND...
  local name=$1 seconds=$2 dir=$3; shift 3
  (cd "$dir" && PYTHONPATH="$PWD" timeout "$seconds" "$@" > "$OUT/$name.md" 2> "$OUT/$name.log")
  echo "$name: exit $?"; grep -E "passed|FAILED|^## |profiled|ok$" "$OUT/$name.md" | grep -v "| ok |" | tail -n 8
  grep -E "Error" "$OUT/$name.log" | tail -n 3
}
step check 150 "$ROOT" python bench/gpu/prefill_exact_check.py
step reuse 150 "$ROOT" python bench/gpu/cache_reuse_check.py --rounds 0
[ -d bench/scratch/before ] && step edit-before 120 "$ROOT/bench/scratch/before" python bench/gpu/edit_profile.py 32768
step edit-after 120 "$ROOT" python bench/gpu/edit_profile.py 32768
grep -h "cudaLaunchKernel " "$OUT"/edit-*.md | awk '{print $1, $(NF)}'

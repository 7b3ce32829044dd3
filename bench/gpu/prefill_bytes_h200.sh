#!/usr/bin/env bash
# The fp8 prefill kernel on the cache's bytes (one H200): its check against the float64 oracle at real shapes, one
# layer's attention on the bytes against the dequantized copy it read before (and whether their outputs are bit for
# bit the same), then `bench/gpu/prefill_8bit.py` (prefill and an edit's first token, 8k and 32k, bf16 / fp8 / int8
# caches) in the code before (bench/scratch/before, a `git archive` of the parent commit) and in this tree, each
# from inside its own tree.
#   OUT=/abs/path bash bench/gpu/prefill_bytes_h200.sh        (from the repository root)
set -uo pipefail
OUT=$(realpath -m "${OUT:-bench/scratch/prefill-bytes}"); mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
ROOT=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/card.txt"
step() {   # step NAME SECONDS DIR COMMAND...
  local name=$1 seconds=$2 dir=$3; shift 3
  (cd "$dir" && PYTHONPATH="$PWD" timeout "$seconds" "$@" > "$OUT/$name.md" 2> "$OUT/$name.log")
  echo "$name: exit $?"; tail -n 12 "$OUT/$name.md"; grep -E "Error|error" "$OUT/$name.log" | tail -n 3
}
step check 240 "$ROOT" python bench/gpu/prefill_exact_check.py --bytes
[ -d bench/scratch/before ] && step prefill-before 160 "$ROOT/bench/scratch/before" python bench/gpu/prefill_8bit.py 8192 32768
step prefill-after 160 "$ROOT" python bench/gpu/prefill_8bit.py 8192 32768

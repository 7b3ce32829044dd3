#!/usr/bin/env bash
# Issue 12 on one H200 (at most ~5 minutes): the fused one-token kernels' launch configurations swept at the
# shapes of a CodeLlama-34B rank of two, 34B on one GPU and a 70B rank of two (python -m kernels.fused_gemv_bench
# --model 34B/2,34B,70B/2: every configuration checked against float64, the finalists timed again, per shape
# the winner if it beats the kind's default by >= 1%), then each of those steps on this one GPU without
# communication (bench/gpu/tp_shapes_step.py) with the new entries and without them, alternating.
# Run from the repository root on the GPU machine: OUT=... bench/gpu/tp_shapes_h200.sh
# Writes $OUT/gpu.txt, fused-gemv.{txt,json}, fused-configs.json (the entries, as CODECOMPLETE_FUSED_CONFIGS
# reads them), step.{txt,json}.
set -uo pipefail
OUT=${OUT:-bench/scratch/h200-tp-shapes}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv
  python -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"
  git log -1 --format='commit %h %s' 2>/dev/null; } > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
timeout --signal=TERM --kill-after=5 ${SWEEP_S:-260} python -m kernels.fused_gemv_bench --model ${MODELS:-34B/2,34B,70B/2} \
    --budget-s ${BUDGET_S:-200} --json "$OUT/fused-gemv.json" --write-configs "$OUT/fused-configs.json" 2>&1 \
    | grep -v Warning | tee "$OUT/fused-gemv.txt"
sweep=${PIPESTATUS[0]}
[ -s "$OUT/fused-configs.json" ] || echo '{}' > "$OUT/fused-configs.json"
CODECOMPLETE_FUSED_CONFIGS="$OUT/fused-configs.json" timeout --signal=TERM --kill-after=5 ${STEP_S:-90} \
    python bench/gpu/tp_shapes_step.py --models ${STEP_MODELS:-34B/2,34B,70B/2} --context 16384 \
    --json "$OUT/step.json" 2>&1 | grep -v Warning | tee "$OUT/step.txt"
cat "$OUT/fused-configs.json"; echo
exit $sweep

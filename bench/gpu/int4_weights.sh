#!/usr/bin/env bash
# int4 weights (--weights int4) on one GPU, from the repository root: (1) the 4-bit GEMV alone (`python -m
# kernels.gemv_int4`: checked against float32, then CUDA-graph replays of one row and of 8 rows over CodeLlama-7B's
# and 34B's projections, against int8 weights' GEMV and bf16's cuBLAS); (2) issue 11's end-to-end ratio, the
# CodeLlama-34B shape at 128k with a bf16 and an fp8 cache, int8 and int4 weights (random weights, flash, batch 1);
# (3) the CodeLlama-7B shape at 4k and 16k with bf16, int8 and int4 weights; (4) "fused": the fused one-token
# kernels with int4 weights swept alone at CodeLlama-34B's and 7B's shapes (`python -m kernels.fused_gemv_bench
# --weights int4`: every configuration checked against float64, the winners per shape); (5) "e2e-34b-unfused": the
# 34B int4 rows on the compiled general step (`flash:unfused`), the fused step's A/B. Each step's log and JSON under $OUT.
#   OUT=/abs/path bash bench/gpu/int4_weights.sh
#   (STEPS: any of "gemv fused e2e-34b e2e-34b-unfused e2e-7b"; default "gemv e2e-34b e2e-7b";
#    FUSED_BUDGET_S, FUSED_TIMEOUT_S: the fused sweep's budget and its process's limit, default 170 and 230 s)
set -uo pipefail
OUT=$(realpath -m "${OUT:-bench/scratch/int4-weights}"); mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
want() { case " ${STEPS:-gemv e2e-34b e2e-7b} " in *" $1 "*) return 0 ;; esac; return 1; }
if want gemv; then
  timeout 200 python -m kernels.gemv_int4 --json "$OUT/gemv.json" --budget-s 150 > "$OUT/gemv.log" 2>&1
  echo "gemv: exit $?"; tail -n 30 "$OUT/gemv.log"
fi
if want fused; then
  timeout "${FUSED_TIMEOUT_S:-230}" python -m kernels.fused_gemv_bench --weights int4 --model 34B,7B \
      --json "$OUT/fused.json" --budget-s "${FUSED_BUDGET_S:-170}" > "$OUT/fused.log" 2>&1
  echo "fused: exit $?"; tail -n 25 "$OUT/fused.log"
fi
if want e2e-34b; then
  timeout 330 python -m models.bench --models 34B --batches 1 --hf '' --ttft '' --weights int8,int4 \
      --kv-caches bf16,fp8 --backends flash --contexts 131072 --out "$OUT/e2e-34b" --tag 34b-128k > "$OUT/e2e-34b.log" 2>&1
  echo "e2e-34b: exit $?"; grep -hE "check|^  ours |tok/s" "$OUT/e2e-34b.log" | cut -c1-200 | tail -n 20
fi
if want e2e-34b-unfused; then
  timeout 300 python -m models.bench --models 34B --batches 1 --hf '' --ttft '' --weights int4 \
      --kv-caches bf16,fp8 --backends flash:unfused --contexts 131072 --out "$OUT/e2e-34b-unfused" --tag 34b-128k-unfused \
      > "$OUT/e2e-34b-unfused.log" 2>&1
  echo "e2e-34b-unfused: exit $?"; grep -hE "check|^  ours |tok/s" "$OUT/e2e-34b-unfused.log" | cut -c1-200 | tail -n 20
fi
if want e2e-7b; then
  timeout 240 python -m models.bench --models 7B --batches 1 --hf '' --ttft '' --weights bf16,int8,int4 \
      --kv-caches bf16 --backends flash --contexts 4096,16384 --out "$OUT/e2e-7b" --tag 7b-short > "$OUT/e2e-7b.log" 2>&1
  echo "e2e-7b: exit $?"; grep -hE "check|^  ours |tok/s" "$OUT/e2e-7b.log" | cut -c1-200 | tail -n 20
fi

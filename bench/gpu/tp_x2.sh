#!/usr/bin/env bash
# Tensor parallelism on nvidia-h200-x2 (two H200s of one host), the shortest run that measures the bars
# (at most 4 minutes, every step capped; whatever a capped step measured is kept):
#   1. how the GPUs are linked (nvidia-smi topo -m), the versions;
#   2. in the background on GPU 1 (capped at 45 s): the GEMV on each deep projection shape and two wide
#      ones: cuBLAS, the unsplit kernel and the split-K configurations, with a 100-replay float64 check;
#   3. models.bench --gpus 2 (capped at 165 s): CodeLlama-34B on 1 GPU (GPU 0, while 2 runs on GPU 1) at
#      16k and 64k; then on 2 GPUs: the 2-vs-1 check, 34B and 70B at 16k and 64k with the one-shot
#      all-reduce and with none (the collectives' cost per step), the collectives of one step alone; and
#      the A/B: every 34B and 70B row timed again with the dispatch before split-K
#      (CODECOMPLETE_GEMV=wide: deep projections on cuBLAS), same run, same weights, no recompilation
#      (GEMV_AB= leaves it out); and, for the models in FUSED_AB (default 34B,70B; FUSED_AB= leaves it out),
#      every row on 1 and 2 GPUs timed again with the fused one-token kernels' per-kind launch
#      configurations only (kernels.fused_gemv.use_per_shape(False)) instead of their per-shape entries;
#   4. the app's own path on 2 GPUs (capped at 55 s): load_model("random:CodeLlama-34B", gpus=2), two
#      requests (the second reusing the first's prefix), close(), the process's exit status (0 when it works).
#
# Run from the repository root on the GPU machine; nothing needs carrying (random weights of the real
# shapes). Writes $OUT/topo.txt, $OUT/gemv.txt, $OUT/gemv.json, $OUT/bench.log (time-stamped),
# $OUT/tp-x2.json, $OUT/tp-x2.md, $OUT/app.txt; prints the table last.
# One GPU, the same code path with 1 rank:
#   python -m models.bench --gpus 1 --models 34B --contexts 16384 --out "$OUT" --tag x1
set -uo pipefail

# NVLink multicast off in every process (it can take the host's shared GPUs out of service);
# models/distributed.py sets the same in each rank it starts.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-bench/scratch/tp-x2}
mkdir -p "$OUT"
stamp() { while IFS= read -r line; do printf '%s %s\n' "$(date +%T)" "$line"; done; }

{ nvidia-smi topo -m; echo; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv; } \
    2>&1 | tee "$OUT/topo.txt"
python -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'triton', triton.__version__, 'nccl', '.'.join(map(str, torch.cuda.nccl.version())), 'gpus', torch.cuda.device_count())" \
    2>&1 | tee -a "$OUT/topo.txt"

# 2. The GEMV per shape, on GPU 1 while the 1-GPU rows run on GPU 0 (it stops starting shapes after 30 s);
# GEMV_MICRO=0 skips it (one-token steps run the fused kernels now, not this dispatch).
[ "${GEMV_MICRO:-1}" = 0 ] || CUDA_VISIBLE_DEVICES=1 timeout --signal=TERM --kill-after=5 45 \
    python -m kernels.gemv --only "34B/2 wqkv,34B/2 w2,70B/2 w2,34B w2,34B/2 wo,34B/2 w13,7B w2" \
    --budget-s 30 --json "$OUT/gemv.json" 2>&1 | stamp > "$OUT/gemv.txt" &
gemv_pid=$!

# 3. The benchmark.
echo "$(date +%T) models.bench starts" > "$OUT/bench.log"
CODECOMPLETE_TP_FUSED_AB=${FUSED_AB-34B,70B} timeout --signal=TERM --kill-after=10 165 \
    python -m models.bench --gpus 2 --models 34B,70B --contexts 16384,65536 --replays 20 \
    --methods one_shot,none ${GEMV_AB-"--gemv-ab 34B,70B"} --out "$OUT" --tag x2 \
    2>&1 >/dev/null | stamp >> "$OUT/bench.log"
status=${PIPESTATUS[0]}
[ "${GEMV_MICRO:-1}" = 0 ] || wait "$gemv_pid"

# 4. The app's own path (models/lockstep.py: rank 0 leads, rank 1 follows, the Engine's own graph-replayed
# decode with its collectives), then close() and the exit: the status line says whether it exited cleanly.
APP_CHECK=$(cat <<'PY'
import time
import torch
from models import GenerationConfig, load_model

if __name__ == "__main__":
    started = time.perf_counter()
    engine = load_model("random:CodeLlama-34B", gpus=2, max_context=8192)
    print(f"loaded on 2 GPUs in {time.perf_counter() - started:.1f} s", flush=True)
    ids = torch.randint(3, 32000, (4096,), generator=torch.Generator().manual_seed(0)).tolist()
    for prompt in (ids, ids[:3500] + ids[100:600]):
        r = engine.generate(prompt, GenerationConfig(max_new_tokens=64), should_stop=lambda: False)
        print(f"app path, 2 GPUs, CodeLlama-34B shape, {len(prompt)}-token prompt ({r.reused_prefix_tokens} reused): "
              f"TTFT {r.timings.ttft_ms:.0f} ms, decode {r.timings.decode_tokens_per_s:.1f} tok/s, "
              f"{len(r.token_ids)} tokens, {r.finish_reason}", flush=True)
    closing = time.perf_counter()
    engine.close()
    print(f"closed in {time.perf_counter() - closing:.1f} s; {time.perf_counter() - started:.1f} s in all", flush=True)
PY
)
# python -c, not a script on stdin: "spawn" re-imports a main script by its path, and stdin has none.
app_started=$SECONDS
timeout --signal=TERM --kill-after=5 55 python -c "$APP_CHECK" > "$OUT/app.txt" 2>&1
app_status=$?
echo "app path exit status $app_status after $((SECONDS - app_started)) s (124: cut at 55 s)" >> "$OUT/app.txt"

[ "${GEMV_MICRO:-1}" = 0 ] || tail -n 12 "$OUT/gemv.txt"
echo
tail -n 30 "$OUT/bench.log"
echo
cat "$OUT/app.txt"
if [ "$status" -ne 0 ]; then
    echo "models.bench exited with status $status (124: cut at 165 s); the table holds what was measured"
fi
cat "$OUT/tp-x2.md" 2>/dev/null || echo "no table written: see $OUT/bench.log"
exit "$status"

#!/usr/bin/env bash
# Tensor parallelism on nvidia-h200-x2 (two H200s of one host): how the GPUs are linked, NCCL against
# PyTorch's symmetric-memory one-shot all-reduce at the decode step's message sizes (plain launches and
# inside a CUDA graph), then decode tokens/s: CodeLlama-34B shape on 1 and 2 GPUs at 16k and 64k, and
# CodeLlama-70B shape on 2 GPUs at 16k and 64k, with the 2-GPU roofline and the all-reduce time per step.
#
# Run from the repository root on the GPU machine; nothing needs carrying (random weights of the real
# shapes). About 4-5 minutes, at most 6: the app-path check is cut at 80 s, the benchmark at 270 s
# (whatever it measured by then is kept). Writes $OUT/topo.txt, $OUT/app.txt, $OUT/bench.log,
# $OUT/tp-x2.json, $OUT/tp-x2.md; prints the table last.
# One GPU, the same code path with 1 rank:
#   python -m models.bench --gpus 1 --models 34B --contexts 16384 --out "$OUT" --tag x1
set -uo pipefail

# NVLink multicast off in every process (it can take the host's shared GPUs out of service);
# models/distributed.py sets the same in each rank it starts.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-bench/results/tp-x2}
mkdir -p "$OUT"

{ nvidia-smi topo -m; echo; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv; } \
    2>&1 | tee "$OUT/topo.txt"
python -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'triton', triton.__version__, 'nccl', '.'.join(map(str, torch.cuda.nccl.version())), 'gpus', torch.cuda.device_count())" \
    2>&1 | tee -a "$OUT/topo.txt"

# The app's path (models/lockstep.py: rank 0 leads, rank 1 follows, the Engine's own graph-replayed
# decode with its collectives): two requests, the second reusing the first's prefix.
APP_CHECK=$(cat <<'PY'
import torch
from models import GenerationConfig, load_model

if __name__ == "__main__":
    engine = load_model("random:CodeLlama-34B", gpus=2, max_context=8192)
    ids = torch.randint(3, 32000, (4096,), generator=torch.Generator().manual_seed(0)).tolist()
    for prompt in (ids, ids[:3500] + ids[100:600]):
        r = engine.generate(prompt, GenerationConfig(max_new_tokens=64), should_stop=lambda: False)
        print(f"app path, 2 GPUs, CodeLlama-34B shape, {len(prompt)}-token prompt ({r.reused_prefix_tokens} reused): "
              f"TTFT {r.timings.ttft_ms:.0f} ms, decode {r.timings.decode_tokens_per_s:.1f} tok/s, "
              f"{len(r.token_ids)} tokens, {r.finish_reason}")
    engine.close()
PY
)
# python -c, not a script on stdin: "spawn" re-imports a main script by its path, and stdin has none.
timeout --signal=TERM --kill-after=10 80 python -c "$APP_CHECK" > "$OUT/app.txt" 2>&1
echo "app path exit status $?" >> "$OUT/app.txt"

timeout --signal=TERM --kill-after=15 270 \
    python -m models.bench --gpus 2 --models 34B,70B --contexts 16384,65536 --replays 20 --out "$OUT" --tag x2 \
    > /dev/null 2> "$OUT/bench.log"
status=$?
tail -n 30 "$OUT/bench.log"
echo
tail -n 4 "$OUT/app.txt"
if [ $status -ne 0 ]; then
    echo "models.bench exited with status $status (124: cut at 270 s); the table holds what was measured"
fi
cat "$OUT/tp-x2.md" 2>/dev/null || echo "no table written: see $OUT/bench.log"
exit $status

#!/usr/bin/env bash
# Issue 16 on one H200, in one device call (about 7-8 minutes): llama.cpp built for sm_90 from the source vendored
# in llama-cpp-python and timed beside ours, CodeLlama-7B shape, batch 1, at 4k/16k/32k/64k.
#   1. the build (4-5 minutes on 16 cores) and a random-weight F16 GGUF of the shape start in the background;
#   2. meanwhile ours: `models.bench`, bf16 and fp8 caches, the fused step ('flash'), the compiled general step
#      ('flash:unfused') and sdpa (graph replays timed by GPU events: the busy host does not enter the timing);
#   3. llama-bench on the quiet machine, flash attention, F16 and q8_0 KV caches (-p 0 -n 64 -d DEPTHS -r 3);
#   4. models.peer_llamacpp writes vs-llamacpp.md/.json with the bars and prints the table last.
# CHECK=1 runs the kernels' GPU correctness sweep (`kernels.bench --check quick`) after ours, during the build;
# KERNELS=1 times issue 10's nine kernel shapes there too (`kernels.bench --quick --no-flex`).
# Needs LLAMACPP_SRC (default .whl, carried) holding llamacpp-src.tar.xz and make_gguf.py from
# ../shared/gpu/llamacpp-src.sh. Run from the repository root on the GPU machine: OUT=... bench/gpu/vs_llamacpp.sh
set -uo pipefail
OUT=${OUT:-bench/scratch/vs-llamacpp-h200}; SRC=${LLAMACPP_SRC:-.whl}; DEPTHS=${DEPTHS:-4096,16384,32768,65536}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
log="$OUT/run.log"; B=/tmp/llamacpp; mkdir -p "$B"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv > "$log" 2>&1
tar xJf "$SRC/llamacpp-src.tar.xz" -C "$B" || exit 1
start=$(date +%s)
( cmake -S "$B/llama.cpp" -B "$B/build" -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DCMAKE_BUILD_TYPE=Release \
  && nice -n 10 cmake --build "$B/build" --target llama-bench -j "$(nproc)" ) > "$B/build.log" 2>&1 &
build=$!
nice -n 10 python3 "$SRC/make_gguf.py" "$B/model.gguf" 7B "$B/llama.cpp/gguf-py" > "$B/gguf.log" 2>&1 &
gguf=$!
timeout 300 python -m models.bench --models 7B --batches 1 --hf '' --ttft '' --kv-caches bf16,fp8 \
    --backends flash,flash:unfused,sdpa --out "$OUT" --tag h200 > "$B/ours.log" 2>&1
echo "ours: exit $? after $(( $(date +%s) - start )) s" >> "$log"; grep -E "logits check|ours " "$B/ours.log" >> "$log"
rm -f "$OUT/e2e-h200.png"
if [ "${CHECK:-0}" = 1 ]; then  # the kernels' GPU correctness sweep while llama.cpp builds (its timing is not measured)
  mkdir -p "$OUT/check"
  timeout 200 python -m kernels.bench --check quick --check-only --out "$OUT/check" > "$OUT/check/check.txt" 2> "$B/check.log"
  echo "check: exit $? at $(( $(date +%s) - start )) s" >> "$log"; grep -E "sweep:|FAILED" "$B/check.log" | cut -c1-400 >> "$log"
fi
if [ "${KERNELS:-0}" = 1 ]; then  # issue 10's nine shapes while llama.cpp builds (graph replays: GPU-timed)
  mkdir -p "$OUT/kernels"
  timeout 200 python -m kernels.bench --quick --no-flex --out "$OUT/kernels" > "$OUT/kernels/bench.txt" 2> "$B/kernels.log"
  echo "kernels: exit $? at $(( $(date +%s) - start )) s" >> "$log"; tail -n 12 "$OUT/kernels/bench.txt" >> "$log"
fi
wait $build; b=$?; wait $gguf; g=$?
echo "llama.cpp build: exit $b after $(( $(date +%s) - start )) s; gguf: exit $g" >> "$log"
[ $b -eq 0 ] && [ $g -eq 0 ] || { tail -n 30 "$B/build.log" "$B/gguf.log" | tee -a "$log"; exit 1; }
for kv in f16 q8_0; do
  timeout 200 "$B/build/bin/llama-bench" -m "$B/model.gguf" -ngl 99 -fa 1 -ctk $kv -ctv $kv -p 0 -n 64 -d "$DEPTHS" \
      -r 3 -o json > "$OUT/llamacpp-$kv.json" 2> "$B/bench-$kv.log"
  echo "llama-bench $kv: exit $? at $(( $(date +%s) - start )) s" >> "$log"; tail -n 3 "$B/bench-$kv.log" >> "$log"
done
grep -m1 -E "ggml_cuda_init|Device 0" "$B/bench-f16.log" >> "$log"
python -m models.peer_llamacpp "$OUT/e2e-h200.json" "$OUT"

#!/usr/bin/env bash
# int8 weights against llama.cpp's 8- and 4-bit weights on one H200, in one device call (about 8-9 minutes):
# CodeLlama-7B shape, batch 1, flash attention, a 16-bit KV cache on both sides (KV=q8_0: llama.cpp's 8-bit cache,
# -ctk q8_0 -ctv q8_0, an fp16 scale per 32 values, against ours int8, a float32 scale per token and KV head; ours
# also with its bf16 cache, for scale).
#   1. llama-bench and llama-quantize built for sm_90 (from the source vendored in llama-cpp-python) and a random-weight
#      F16 GGUF of the shape, in the background;
#   2. meanwhile ours: `models.bench --weights bf16,int8` (graph replays timed by GPU events: the busy host does not
#      enter the timing);
#   3. the GGUF quantized to Q8_0 (8.5 bits a weight: an fp16 scale per 32) and Q4_K_M (about 4.9), then llama-bench
#      on the quiet machine with each (`-fa 1 -p 0 -n 64 -d DEPTHS -r 3 -ctk KV -ctv KV`);
#   4. bench/gpu/weights_table.py prints ours against llama.cpp per context.
# Needs LLAMACPP_SRC (default .whl, carried) holding llamacpp-src.tar.xz and make_gguf.py (../shared/gpu/llamacpp-src.sh).
# Run from the repository root on the GPU machine: OUT=... bash bench/gpu/weights_vs_llamacpp.sh
set -uo pipefail
OUT=${OUT:-bench/scratch/weights-vs-llamacpp}; SRC=${LLAMACPP_SRC:-.whl}; DEPTHS=${DEPTHS:-4096,16384,65536}
KV=${KV:-f16}
case "$KV" in f16) OURS_KV=bf16 ;; q8_0) OURS_KV=bf16,int8 ;; *) echo "KV=$KV: f16 or q8_0" >&2; exit 2 ;; esac
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
log="$OUT/run.log"; B=/tmp/llamacpp-w; mkdir -p "$B"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv > "$log" 2>&1
tar xJf "$SRC/llamacpp-src.tar.xz" -C "$B" || exit 1
start=$(date +%s)
( cmake -S "$B/llama.cpp" -B "$B/build" -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DCMAKE_BUILD_TYPE=Release \
  && nice -n 10 cmake --build "$B/build" --target llama-bench llama-quantize -j "$(nproc)" ) > "$B/build.log" 2>&1 &
build=$!
nice -n 10 python3 "$SRC/make_gguf.py" "$B/model-f16.gguf" 7B "$B/llama.cpp/gguf-py" > "$B/gguf.log" 2>&1 &
gguf=$!
timeout 300 python -m models.bench --models 7B --batches 1 --hf '' --ttft '' --weights bf16,int8 --backends flash \
    --kv-caches "$OURS_KV" --contexts "$DEPTHS" --out "$OUT" --tag weights > "$OUT/ours.log" 2>&1
echo "ours: exit $? after $(( $(date +%s) - start )) s" >> "$log"; grep -E "check|ours " "$OUT/ours.log" | cut -c1-300 >> "$log"
rm -f "$OUT"/*.png
wait $build; b=$?; wait $gguf; g=$?
echo "llama.cpp build: exit $b after $(( $(date +%s) - start )) s; gguf: exit $g" >> "$log"
[ $b -eq 0 ] && [ $g -eq 0 ] || { tail -n 30 "$B/build.log" "$B/gguf.log" | tee -a "$log"; exit 1; }
for q in ${PEERS:-Q8_0 Q4_K_M}; do     # (the weight types llama-bench runs below; F16 is the GGUF as made)
  [ "$q" = f16 ] && continue
  "$B/build/bin/llama-quantize" "$B/model-f16.gguf" "$B/model-$q.gguf" "$q" 16 > "$B/quantize-$q.log" 2>&1
  echo "quantize $q: exit $? at $(( $(date +%s) - start )) s, $(du -h "$B/model-$q.gguf" | cut -f1)" >> "$log"
done
for w in ${PEERS:-f16 Q8_0 Q4_K_M}; do     # PEERS="Q8_0 Q4_K_M": 75 s less (a call's 600 s are tight)
  timeout 150 "$B/build/bin/llama-bench" -m "$B/model-$w.gguf" -ngl 99 -fa 1 -p 0 -n 64 -d "$DEPTHS" -r 3 \
      -ctk "$KV" -ctv "$KV" -o json \
      > "$OUT/llamacpp-$w.json" 2> "$B/bench-$w.log"
  echo "llama-bench $w: exit $? at $(( $(date +%s) - start )) s" >> "$log"; tail -n 2 "$B/bench-$w.log" >> "$log"
done
grep -h -m1 "Device 0" "$B"/bench-*.log | head -n 1 >> "$log"
python bench/gpu/weights_table.py "$OUT" | tee "$OUT/weights-vs-llamacpp.md"

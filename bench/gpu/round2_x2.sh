#!/usr/bin/env bash
# The second call of a session on nvidia-h200-x2 (at most 7 minutes), one GPU each, side by side:
#   GPU 0: bench/gpu/kernels_all.sh (<= 405 s): a third plan exploration, the final sweep, the GPU checks (issue 10);
#   GPU 1: bench/gpu/decode_h200.sh (8-bit caches, 8- and 9-token verification, issues 10, 11, 13), then
#          bench/gpu/serve_h200.sh (the warm server, issue 9), then the CLI's --bench at 16k and 64k, in what is left.
# Carry .whl and .gpu (bench/gpu/prepare_serve.sh). Writes $OUT/kernels-all.tgz, $OUT/kernels-final.md and
# $OUT/decode-serve.tgz; prints the decode and serve tables, then the kernel report.
set -uo pipefail
OUT=${OUT:-bench/scratch/round2-x2}
work=$(mktemp -d)
mkdir -p "$OUT" "$work"/{decode,serve}

(CUDA_VISIBLE_DEVICES=0 OUT="$OUT" bash bench/gpu/kernels_all.sh > "$work/kernels-stdout.txt" 2>&1
 echo "kernels_all exit $? at ${SECONDS} s" >> "$work/stages.txt") &
kernels_pid=$!
(export CUDA_VISIBLE_DEVICES=1
 OUT="$work/decode" bash bench/gpu/decode_h200.sh > "$work/decode/stdout.txt" 2>&1
 echo "decode_h200 exit $? at ${SECONDS} s" >> "$work/stages.txt"
 left=$((395 - SECONDS))
 if [ "$left" -gt 60 ]; then
   timeout --kill-after=5 "$left" env OUT="$work/serve" bash bench/gpu/serve_h200.sh > "$work/serve/stdout.txt" 2>&1
   echo "serve_h200 exit $? at ${SECONDS} s (cap ${left} s)" >> "$work/stages.txt"
 fi
 left=$((400 - SECONDS))     # the CLI's own --bench at long contexts (the first call measured 4k only)
 if [ "$left" -gt 40 ]; then
   mkdir -p "$work/cli-bench"
   PYTHONPATH="$PWD:$PWD/.site" timeout --kill-after=5 "$left" python3 -m codecomplete --bench \
     --model random:CodeLlama-7B --context-tokens 65536 --contexts 16384,65536 \
     --json "$work/cli-bench/cli-bench.json" > "$work/cli-bench/cli-bench.txt" 2> "$work/cli-bench/stderr.txt"
   echo "cli --bench exit $? at ${SECONDS} s (cap ${left} s)" >> "$work/stages.txt"
 fi) &
wait "$kernels_pid"
wait
tar -C "$work" -czf "$OUT/decode-serve.tgz" .
cat "$work/stages.txt"
echo "== decode"; tail -n 42 "$work/decode/stdout.txt" | cut -c1-200
echo "== serve"; tail -n 8 "$work/serve/stdout.txt" | cut -c1-200
echo "== cli"; tail -n 12 "$work/cli-bench/cli-bench.txt" 2>/dev/null | cut -c1-160; tail -n 3 "$work/cli-bench/stderr.txt" 2>/dev/null
echo "== kernels"; head -c 5000 "$OUT/kernels-final.md"

#!/usr/bin/env bash
# One call on nvidia-h200-x2 (at most 9.5 minutes) for what one session's device time allows:
#   1. bench/gpu/tp_x2.sh (both GPUs, <= 4 min): tensor parallelism, issue 12;
#   2. then side by side, one GPU each (<= 5 min):
#      GPU 0: bench/gpu/decode_h200.sh: 8-bit KV caches end to end, verification cost (issues 10, 11, 13);
#      GPU 1: bench/gpu/serve_h200.sh: the warm server (issue 9), then the CLI's own `--bench` on the
#             CodeLlama-7B shape (issue 10 asks for it re-measured on the H200).
# Carry .whl and .gpu (bench/gpu/prepare_serve.sh makes them). Everything lands in $OUT/round-x2.tgz
# (tp/, decode/, serve/, cli-bench/ with each step's log), the tables are printed last.
set -uo pipefail
OUT=${OUT:-bench/scratch/round-x2}
work=$(mktemp -d)
mkdir -p "$OUT" "$work"/{tp,decode,serve,cli-bench}

OUT="$work/tp" bash bench/gpu/tp_x2.sh > "$work/tp/stdout.txt" 2>&1
echo "tp_x2 exit $? at ${SECONDS} s" >> "$work/stages.txt"

(CUDA_VISIBLE_DEVICES=0 OUT="$work/decode" bash bench/gpu/decode_h200.sh > "$work/decode/stdout.txt" 2>&1
 echo "decode_h200 exit $? at ${SECONDS} s" >> "$work/stages.txt") &
decode_pid=$!
(export CUDA_VISIBLE_DEVICES=1
 timeout --kill-after=5 200 env OUT="$work/serve" bash bench/gpu/serve_h200.sh > "$work/serve/stdout.txt" 2>&1
 echo "serve_h200 exit $? at ${SECONDS} s" >> "$work/stages.txt"
 left=$((520 - SECONDS)); [ "$left" -gt 240 ] && left=240
 if [ "$left" -gt 30 ]; then
   PYTHONPATH="$PWD:$PWD/.site" timeout --kill-after=5 "$left" python3 -m codecomplete --bench \
     --model random:CodeLlama-7B --contexts 4096,16384,32768,65536 \
     --json "$work/cli-bench/cli-bench.json" --plot "$work/cli-bench/cli-bench.png" \
     > "$work/cli-bench/cli-bench.txt" 2> "$work/cli-bench/stderr.txt"
   echo "cli --bench exit $? at ${SECONDS} s (cap ${left} s)" >> "$work/stages.txt"
 fi) &
wait "$decode_pid"
wait
tar -C "$work" -czf "$OUT/round-x2.tgz" .
cat "$work/stages.txt"
echo "== tp"; tail -n 45 "$work/tp/stdout.txt" | cut -c1-220
echo "== app"; cat "$work/tp/app.txt" 2>/dev/null | tail -n 6
echo "== decode"; tail -n 45 "$work/decode/stdout.txt" | cut -c1-220
echo "== serve"; tail -n 14 "$work/serve/stdout.txt" | cut -c1-220
echo "== cli"; tail -n 25 "$work/cli-bench/cli-bench.txt" 2>/dev/null | cut -c1-160; tail -n 5 "$work/cli-bench/stderr.txt" 2>/dev/null

#!/usr/bin/env bash
# Issues 9-11 and 13 again after the fused one-token step (about 8 minutes on one H200): decode_h200.sh (8-bit
# caches end to end, capacity, verification steps; 7B and 34B) into $OUT/decode, then serve_h200.sh (the warm
# server's first token and totals) into $OUT/serve. Carry .whl and .gpu (bench/gpu/prepare_serve.sh).
set -uo pipefail
OUT=${OUT:-bench/scratch/h200-after-fused}
OUT="$OUT/decode" bash bench/gpu/decode_h200.sh; echo "decode: exit $?"
OUT="$OUT/serve" bash bench/gpu/serve_h200.sh; echo "serve: exit $?"

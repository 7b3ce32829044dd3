#!/usr/bin/env bash
# What a process that lives (the REPL, a chat client) and one that does not (the one-shot `--file`) pay on one H200,
# from the repository root, in one call (~6 minutes): CodeLlama-7B's shape with random weights and the embedded
# tokenizer. Stages ($STAGES, in this order; default all):
#   followups  bench/chat_followups.py at a 16k budget: each turn's prompt, cached and prefilled tokens and first
#              token ($OUT/chat-followups.md); a held follow-up should wait tens of ms, none seconds
#   repl       bench/repl_pty.py: the REPL in a pseudo-terminal, start to first prompt (with its warm-up), then a
#              question and two follow-ups ($OUT/repl-pty.md)
#   oneshot    the one-shot `--file` in fresh processes, the default (speculation only once its step is captured,
#              never in a one-shot process) against `--speculate 8` (captured inside the answer), twice each,
#              alternating ($OUT/oneshot.md)
# Everything's stderr: $OUT/warm-paths.log. Carry: .whl and .gpu/tokenizer (bench/gpu/prepare_serve.sh makes both).
set -uo pipefail
OUT=$(realpath -m "${OUT:-bench/scratch/warm-paths}"); mkdir -p "$OUT"
MODEL=${MODEL:-random:CodeLlama-7B:.gpu/tokenizer}
SITE=${SITE:-/tmp/codecomplete-site}
LOG="$OUT/warm-paths.log"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl || exit 1
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export CODECOMPLETE_CACHE_DIR=${CODECOMPLETE_CACHE_DIR:-/tmp/codecomplete-cache}
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } 2>&1 | tee "$LOG"
start=$SECONDS
for stage in ${STAGES:-followups repl oneshot}; do
  echo "== $stage" | tee -a "$LOG"
  case $stage in
    followups)
      timeout 200 python3 bench/chat_followups.py --device cuda --model "$MODEL" --budget 16000 --max-tokens 96 \
        > "$OUT/chat-followups.md" 2>> "$LOG"; echo "exit $?"; tail -n 3 "$OUT/chat-followups.md" ;;
    repl)
      timeout 200 python3 bench/repl_pty.py --out "$OUT/repl-pty.md" --timeout 150 -- --model "$MODEL" \
        --context-tokens 16000 --max-tokens 32 >> "$LOG" 2>&1; echo "exit $?"; cat "$OUT/repl-pty.md" ;;
    oneshot)
      # The cursor: the end of a function's first line in a file of this repository, 32 new tokens.
      echo "| run | --speculate | wall (s) | load (s) | first token (ms) | decode tok/s | drafted / accepted |" > "$OUT/oneshot.md"
      echo "|---|---|---|---|---|---|---|" >> "$OUT/oneshot.md"
      for run in 1 2; do
        for depth in default 8; do
          option=(); [ "$depth" = default ] || option=(--speculate "$depth")
          began=$(date +%s.%N)
          timeout 90 python3 -m codecomplete . --file prompts/packing.py --line 60 --model "$MODEL" \
            --context-tokens 8192 --max-tokens 32 "${option[@]}" --json "$OUT/oneshot-$run-$depth.json" \
            > /dev/null 2>> "$LOG"
          code=$?
          wall=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$began" "$(date +%s.%N)")
          python3 - "$OUT/oneshot-$run-$depth.json" "$run" "$depth" "$wall" "$code" >> "$OUT/oneshot.md" <<'PY'
import json, sys
path, run, depth, wall, code = sys.argv[1:]
try:
    timings = json.load(open(path)).get("timings", {})
except (OSError, ValueError):
    timings = {}
nan = float("nan")
print(f"| {run} | {depth} | {wall}{'' if code == '0' else f' (exit {code})'} | {timings.get('load_s', nan):.1f} | "
      f"{timings.get('ttft_ms', nan):.0f} | {timings.get('decode_tokens_per_s', nan):.1f} | "
      f"{timings.get('drafted_tokens', '')} / {timings.get('accepted_tokens', '')} |")
PY
          rm -f "$OUT/oneshot-$run-$depth.json"
        done
      done
      cat "$OUT/oneshot.md" ;;
  esac
  echo "$stage: done at $((SECONDS - start)) s" | tee -a "$LOG"
done

#!/usr/bin/env bash
# The REPL as a user meets it (bench/repl_pty.py), an older tree against this one on one GPU, from the repository
# root. Each run gets its own fresh Triton, Inductor and codecomplete caches (a first start on a fresh machine), then
# each tree runs once more on its filled caches (a second start). BEFORE: `git archive OLD codecomplete kernels models
# prompts | tar -x -C bench/scratch/before` (ignored by git: carry it with .whl and .gpu/tokenizer). TYPING: seconds
# between the prompt and the first question (0); READING: seconds from an answer's end to the next question (0).
# ROUNDS: the fresh rounds ("1 2"); NO_CACHED=1 leaves the second
# starts out. Results: $OUT/{before,after}-{fresh,cached}-N.md; a summary last.
# `python -m codecomplete` puts the working directory first on sys.path, so each tree runs from its own directory.
set -uo pipefail
OUT=$(realpath -m "${OUT:-bench/scratch/repl-before-after}"); mkdir -p "$OUT"
ROOT=$PWD; BEFORE=$(realpath "${BEFORE:-bench/scratch/before}"); SITE=${SITE:-/tmp/codecomplete-site}
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl 2> "$OUT/pip.log"
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } > "$OUT/gpu.txt" 2>&1
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
MODEL=${MODEL:-random:CodeLlama-7B:$ROOT/.gpu/tokenizer}
one() {  # one NAME TREE CACHES
  (cd "$2" && PYTHONPATH="$2:$SITE" TRITON_CACHE_DIR=/tmp/rba-$3/triton TORCHINDUCTOR_CACHE_DIR=/tmp/rba-$3/inductor \
     CODECOMPLETE_CACHE_DIR=/tmp/rba-$3/codecomplete timeout 140 python3 "$ROOT/bench/repl_pty.py" --typing "${TYPING:-0}" \
     --reading "${READING:-0}" \
     --timeout 120 --out "$OUT/$1.md" -- --model "$MODEL" --context-tokens 16000 --max-tokens 32 > "$OUT/$1.log" 2>&1)
  echo "$1: exit $?"
}
for round in ${ROUNDS:-1 2}; do
  one before-fresh-$round "$BEFORE" b$round; one after-fresh-$round "$ROOT" a$round
done
[ -n "${NO_CACHED:-}" ] || { one before-cached-1 "$BEFORE" b1; one after-cached-1 "$ROOT" a1; }
for f in "$OUT"/*.md; do
  printf '%-22s %s\n' "$(basename "$f" .md)" "$(grep -o 'start to the first prompt: [0-9.]* s\|in [0-9.]* s;' "$f" | tr '\n' ' ')$(grep '^| How' "$f" | awk -F'|' '{print "first token", $5, "ms; Enter to answer", $8, "s"}')"
done

#!/usr/bin/env bash
# The app at long contexts on the H200, from the repository root (~3 minutes): one inline suggestion from the
# command line (a fresh process each, as an editor without the server runs it) with a prompt of 16k, 32k and 64k
# tokens built from the Python standard library, --attention flash and sdpa, on a CodeLlama-7B-shaped model with
# random weights and the embedded tokenizer. CodeLlama is trained on 16k positions; the 32k and 64k runs go past
# them as an explicit --context-tokens allows. A one-shot's decode rate includes capturing the CUDA graph.
# Results: $OUT/long-context.{md,json}, each run's JSON in $OUT/runs/, stderr in $OUT/long-context.log; the table
# is printed last.
#
# Carry: .whl and .gpu/tokenizer (bench/gpu/prepare_serve.sh makes both).
# For a try on a CPU: SKIP_WHEELS=1 MODEL=random:SmolLM2-135M:.gpu/tokenizer CONTEXTS=600 BACKENDS=sdpa MAX_TOKENS=4
set -uo pipefail
OUT=${OUT:-bench/scratch/long-context}
MODEL=${MODEL:-random:CodeLlama-7B:.gpu/tokenizer}
CONTEXTS=${CONTEXTS:-16384 32768 65536}
BACKENDS=${BACKENDS:-flash sdpa}
MAX_TOKENS=${MAX_TOKENS:-128}
SITE=${SITE:-/tmp/codecomplete-site}
mkdir -p "$OUT/runs"
LOG="$OUT/long-context.log"
if [ -z "${SKIP_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl || exit 1
  export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export CODECOMPLETE_CACHE_DIR=${CODECOMPLETE_CACHE_DIR:-/tmp/codecomplete-cache}
export TOKENIZERS_PARALLELISM=false
STDLIB=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } 2>&1 | tee "$LOG"
# A first run per backend, not kept, fills the on-disk Triton and compile caches as a user's first run ever does
# (the first of an earlier try paid it: 3.5 s of prefill and 15 tok/s at 16k, where the next runs took 1.6 s).
for backend in $BACKENDS; do
  echo "== warm-up $backend" >> "$LOG"
  python3 -m codecomplete "$STDLIB" --file asyncio/base_events.py --line 1050 --model "$MODEL" \
    --attention "$backend" --context-tokens 4096 --max-tokens 8 > /dev/null 2>> "$LOG"
done
for context in $CONTEXTS; do
  for backend in $BACKENDS; do
    echo "== $context $backend" >> "$LOG"
    python3 -m codecomplete "$STDLIB" --file asyncio/base_events.py --line 1050 --model "$MODEL" \
      --attention "$backend" --context-tokens "$context" --max-tokens "$MAX_TOKENS" \
      --json "$OUT/runs/$context-$backend.json" > /dev/null 2>> "$LOG" || echo "exit $? ($context $backend)" | tee -a "$LOG"
  done
done
python3 - "$OUT" <<'PY'
import json, subprocess, sys
from pathlib import Path

out = Path(sys.argv[1])
try:
    card = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                          text=True).stdout.strip()
except FileNotFoundError:
    card = "no GPU"
rows = []
for path in sorted(out.glob("runs/*.json"), key=lambda p: (int(p.stem.split("-")[0]), p.stem)):
    r = json.loads(path.read_text())
    t = r["timings"]
    rows.append({"budget": int(path.stem.split("-")[0]), "attention": r["attention"], "prompt_tokens": r["prompt_tokens"],
                 "completion_tokens": r["completion_tokens"], "load_s": t["load_s"], "prefill_s": t["prefill_s"],
                 "ttft_ms": t["ttft_ms"], "decode_tokens_per_s": t["decode_tokens_per_s"]})
(out / "long-context.json").write_text(json.dumps({"card": card, "rows": rows}, indent=1))
lines = [f"# One suggestion from the command line at long contexts ({card})", "",
         "| budget | attention | prompt tokens | new tokens | load s | prefill s | first token ms | decode tok/s |",
         "|---|---|---|---|---|---|---|---|"]
lines += [f"| {r['budget']:,} | {r['attention']} | {r['prompt_tokens']:,} | {r['completion_tokens']} | {r['load_s']:.1f} | "
          f"{r['prefill_s']:.2f} | {r['ttft_ms']:.0f} | {r['decode_tokens_per_s']:.1f} |" for r in rows]
(out / "long-context.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY

"""What the quiet server's memory release (codecomplete/server/memory.py, glibc's malloc_trim) costs on a GPU host:
llama.vim's keystrokes through `Session.infill` and its generation (random CodeLlama-7B weights on the GPU, 8k
prompts, 32 new tokens), then `release_freed` timed after each run of keystrokes, with the resident memory around it.

    python bench/gpu/trim_time.py REPO [--tokenizer .gpu/tokenizer] [--runs 4] [--requests 10] [--model SPEC]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    from codecomplete import workspace
    from codecomplete.serve_bench import typing_through
    from codecomplete.server.memory import release_freed
    from codecomplete.session import Sampling, Session
    from models import load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repo", type=Path)
    parser.add_argument("--tokenizer", default=str(ROOT / ".gpu" / "tokenizer"))
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--model", default="random:CodeLlama-7B:{tokenizer}")
    args = parser.parse_args()
    budget = 8192 - 32
    engine = load_model(args.model.format(tokenizer=args.tokenizer), max_context=8192)
    session = Session(engine, workspace.index(args.repo), 8192)
    text = (args.repo / "models/engine.py").read_text(encoding="utf-8")
    cursors = typing_through(text, "_generate", 3, args.runs * args.requests)
    sampling = Sampling(max_tokens=32)
    print("| run | keystrokes' time (s) | resident before trim (MB) | malloc_trim (ms) | after (MB) |")
    print("|---|---|---|---|---|")
    for run in range(args.runs):
        started = time.perf_counter()
        for cursor in cursors[run * args.requests:(run + 1) * args.requests]:
            body = cursor.llama_vim_body(32)
            session.infill(body["input_prefix"] + body["prompt"], body["input_suffix"], sampling=sampling,
                           budget=budget).run()
        typed = time.perf_counter() - started
        before = resident_mb()
        started = time.perf_counter()
        release_freed()
        trim_ms = (time.perf_counter() - started) * 1e3
        print(f"| {run + 1} | {typed:.2f} | {before:.0f} | {trim_ms:.2f} | {resident_mb():.0f} |", flush=True)
        started = time.perf_counter()
        release_freed()
        print(f"| {run + 1}, again at once | | | {(time.perf_counter() - started) * 1e3:.2f} | {resident_mb():.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

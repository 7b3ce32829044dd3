"""Why a keystroke re-prefills: llama.vim typing through a function (codecomplete.serve_bench's cursors and /infill
bodies: 256 lines before the cursor, 64 after, no file name), each body through `Session.infill` as the server's
route calls it, and each prompt against the one before: the tokens past the prefix they share (what the engine's
cache prefills again, before its bucketing) and, where that is more than a few, the context items that went and
came. No model runs (a random SmolLM2-135M's engine holds the tokenizer): counts, the same on every machine; and
what building each prompt took here (the server's "prompt" part of a keystroke's first token). CPU, ~1 minute.

    python bench/keystroke_prompts.py REPO [--tokenizer DIR] [--file models/engine.py] [--function _generate]
        [--budget 8160] [--requests 40] [--profile N]

REPO: a frozen text of this repository, as bench/gpu/serve_h200.sh types in (`git archive HEAD codecomplete kernels
models prompts tests | tar -x -C DIR`); --tokenizer: the embedded tokenizer's folder (bench/gpu/prepare_serve.sh
makes .gpu/tokenizer), which the GPU replay's model carries.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SMALL = 8         # a keystroke's own tokens: more than this re-prefills something the keystroke did not type


def main() -> int:
    from codecomplete import workspace
    from codecomplete.serve_bench import typing_through
    from codecomplete.session import Sampling, Session
    from models import load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repo", type=Path)
    parser.add_argument("--tokenizer", default=str(ROOT / ".gpu" / "tokenizer"))
    parser.add_argument("--file", default="models/engine.py")
    parser.add_argument("--function", default="_generate")
    parser.add_argument("--budget", type=int, default=8192 - 32, help="prompt tokens (serve --context-tokens 8192 "
                        "less 32 new tokens, the GPU replay's)")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="then type through again under cProfile and print its N costliest functions")
    args = parser.parse_args()
    engine = load_model(f"random:SmolLM2-135M:{args.tokenizer}", max_context=args.budget + 32)
    session = Session(engine, workspace.index(args.repo), args.budget + 32)
    cursors = typing_through((args.repo / args.file).read_text(encoding="utf-8"), args.function, 3, args.requests)
    sampling = Sampling(max_tokens=32)
    last, total, big, took = None, 0, 0, []
    print(f"| # | line:col | prompt | re-prefilled | context items gone | came |\n|---|---|---|---|---|---|")
    for number, cursor in enumerate(cursors, 1):
        body = cursor.llama_vim_body(32)
        started = time.perf_counter()
        prompt = session.infill(body["input_prefix"] + body["prompt"], body["input_suffix"], sampling=sampling,
                                budget=args.budget).prompt
        took.append((time.perf_counter() - started) * 1e3)
        items = [(item.path, item.start_line, item.end_line, item.form) for item in prompt.context]
        if last is None:
            new, gone, came = len(prompt.ids), [], items
        else:
            shared = next((k for k, (a, b) in enumerate(zip(last.ids, prompt.ids)) if a != b),
                          min(len(last.ids), len(prompt.ids)))
            new = len(prompt.ids) - shared
            before = [(item.path, item.start_line, item.end_line, item.form) for item in last.context]
            gone, came = [x for x in before if x not in items], [x for x in items if x not in before]
            total, big = total + new, big + (new > SMALL)
        shown = lambda xs: ", ".join(f"{p}:{a}-{b} {f}" for p, a, b, f in xs) if new > SMALL else ""  # noqa: E731
        print(f"| {number} | {cursor.line}:{cursor.col} | {len(prompt.ids)} | {new} | {shown(gone)} | "
              f"{shown(came) if last is not None else ''} |")
        last = prompt
    print(f"\n{len(cursors) - 1} keystrokes after the first: {total / max(1, len(cursors) - 1):.1f} tokens re-prefilled "
          f"a keystroke, {big} of them more than {SMALL}")
    after_first = sorted(took[1:]) or [0.0]
    print(f"building a keystroke's prompt (Session.infill, this machine): p50 {statistics.median(after_first):.1f} ms, "
          f"p90 {after_first[int(0.9 * (len(after_first) - 1))]:.1f} ms; the first request's {took[0]:.1f} ms")
    if args.profile:
        import cProfile
        import pstats

        profile = cProfile.Profile()
        profile.enable()
        for cursor in cursors[1:]:
            body = cursor.llama_vim_body(32)
            session.infill(body["input_prefix"] + body["prompt"], body["input_suffix"], sampling=sampling,
                           budget=args.budget)
        profile.disable()
        print(f"\n{len(cursors) - 1} keystrokes again, under cProfile (cumulative):\n")
        pstats.Stats(profile, stream=sys.stdout).sort_stats("cumulative").print_stats(args.profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How a keystroke's new tokens should reach the cache (one H200): the bucketed prefill, one-token graph replays, or
replays of the verification step's width (1 + drafts: 9 tokens for CodeLlama-7B, 8 for -34B), as
`Engine.tail_plan` chooses between them (`tail_override` sets each arm). Random weights, bf16, flash, the decode
step and the prefill compiled as the server runs them. For each count n of new tokens: the cache primed with a
prompt of L tokens (L random within a bucket of 128, so the prefill's snapped start varies as an editor's does),
then the prompt plus n fresh tokens, one new token; time to the first token (the engine's own ttft), arms
interleaved, median of REPS. Prints one table per model and context, the arms' medians in ms.

    python bench/gpu/tail_width.py [--models 7B,34B] [--contexts 8192,32768] [--reps 5] [--out FILE.json]
        [--widths 32,64,128 --counts 37,64,128]     # wider steps too (their graphs captured at first use)
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch

COUNTS = (1, 2, 4, 8, 9, 16, 18, 27, 36, 45, 54, 72, 96)
ONE_TOKEN_UP_TO = 16          # one-token steps past this are plainly slower than either other arm


@torch.no_grad()
def measure(model_name: str, contexts: list[int], reps: int, deadline: float, widths=(), counts=COUNTS) -> list[dict]:
    from models.engine import Engine
    from models.generation import GenerationConfig
    from models.llama import build_random_model
    capacity = max(contexts) + 256
    model = build_random_model(model_name, device="cuda", dtype=torch.bfloat16, max_len=capacity)
    engine = Engine(model, None, name=model_name, attention="flash", context_length=capacity)
    engine.compile_prefill = engine.prefill_compilable           # as `codecomplete serve` sets it
    engine.warm_speculation()
    width = 1 + engine.speculate
    one = GenerationConfig(max_new_tokens=1, speculate=0)
    vocab = model.config.vocab_size
    rng = random.Random(0)
    rows = []
    for ctx in contexts:
        base = [rng.randrange(3, vocab) for _ in range(ctx)]
        arms = {"prefill": lambda n: (0, 1), "one-token": lambda n: (n, 1), f"width {width}": lambda n: (-(-n // width), width)}
        arms.update({f"width {w}": (lambda n, w=w: (-(-n // w), w)) for w in widths})
        for n in counts:
            if time.monotonic() > deadline:
                return rows
            times: dict[str, list[float]] = {name: [] for name in arms}
            reused: dict[str, set[int]] = {name: set() for name in arms}
            for rep in range(reps + 1):                          # the first round warms the shapes up, untimed
                for name, plan in arms.items():
                    if (name == "one-token" and n > ONE_TOKEN_UP_TO) or (name == f"width {width}" and widths
                                                                          and n > 6 * width):
                        continue
                    length = ctx - 128 - n + rng.randrange(128)
                    engine.tail_override = None
                    engine.generate(base[:length], one)          # the cache: base[:length] and one token
                    prompt = base[:length] + [rng.randrange(3, vocab) for _ in range(n)]
                    engine.tail_override = plan(n)
                    torch.cuda.synchronize()
                    result = engine.generate(prompt, one)
                    if rep:
                        times[name].append(result.timings.ttft_ms)
                        reused[name].add(len(prompt) - result.reused_prefix_tokens)
            row = {"model": model_name, "context": ctx, "new_tokens": n, "width": width}
            for name in arms:
                if times[name]:
                    row[name] = round(statistics.median(times[name]), 2)
                    row[f"{name} fed"] = sorted(reused[name])
            rows.append(row)
            print(json.dumps(row), flush=True)
    del engine, model
    torch.cuda.empty_cache()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="7B,34B")
    parser.add_argument("--contexts", default="8192,32768")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--widths", default="", help="more step widths to time (at most 128: the kernels' limit)")
    parser.add_argument("--counts", default=",".join(map(str, COUNTS)))
    parser.add_argument("--out")
    args = parser.parse_args()
    widths = [int(w) for w in args.widths.split(",") if w]
    deadline = time.monotonic() + args.budget_s
    contexts = [int(c) for c in args.contexts.split(",")]
    rows = []
    for name in args.models.split(","):
        rows += measure(f"CodeLlama-{name}", contexts, args.reps, deadline, widths,
                        [int(n) for n in args.counts.split(",")])
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"card": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)
    for model in dict.fromkeys(r["model"] for r in rows):
        for ctx in dict.fromkeys(r["context"] for r in rows if r["model"] == model):
            part = [r for r in rows if r["model"] == model and r["context"] == ctx]
            names = [k for k in part[0] if k in ("prefill", "one-token") or (k.startswith("width ") and not k.endswith(" fed"))]
            print(f"\n{model}, {ctx:,} cached tokens, {torch.cuda.get_device_name()}: ms to the first token (median)")
            print("| new tokens | " + " | ".join(names) + " |")
            print("|---" * (len(names) + 1) + "|")
            for r in part:
                print(f"| {r['new_tokens']} | " + " | ".join(f"{r[k]:.1f}" if k in r else "" for k in names) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

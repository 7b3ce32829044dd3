"""Does the first cold prefill after a run of keystrokes cost more than the next ones (issue 9, Run 12)? In one
process, the session opened and warmed as `codecomplete serve` does it: streaks of keystrokes (typing in
models/engine.py, 32 greedy tokens each), each followed by cold requests in three other files; every request's
prompt building, the engine's first token, and for the cold ones the GPU time of that first token's kernels
(torch.profiler, CUDA activity) against its wall time.

    python bench/gpu/cold_after_typing.py [--model random:CodeLlama-7B:.gpu/tokenizer] [--out DIR]

Writes DIR/cold-after-typing.json and prints a table last.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="random:CodeLlama-7B:.gpu/tokenizer")
    parser.add_argument("--context-tokens", type=int, default=8192)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--streaks", type=int, default=3)
    parser.add_argument("--typing", type=int, default=12, help="keystrokes per streak")
    parser.add_argument("--device")
    parser.add_argument("--out", type=Path, default=Path("bench/scratch/h200-cold"))
    args = parser.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile

    from codecomplete import workspace
    from codecomplete.cli import build_serve_parser
    from codecomplete.serve_bench import Cursor, typing_through
    from codecomplete.server.serve import _warm_up
    from codecomplete.server.warming import PromptWarmer
    from codecomplete.session import Sampling, open_session

    repo = Path(__file__).resolve().parents[2]
    serve_args = build_serve_parser().parse_args([str(repo), "--model", args.model, "--context-tokens",
                                                  str(args.context_tokens), "--max-tokens", str(args.max_tokens)]
                                                 + (["--device", args.device] if args.device else []))
    session = open_session(serve_args, workspace.repository(str(repo)), args.max_tokens)
    budget = session.prompt_budget(args.max_tokens)
    print(_warm_up(session, budget, PromptWarmer(session, budget)), flush=True)
    gc.collect()
    gc.freeze()
    cuda = torch.cuda.is_available()
    sampling = Sampling(max_tokens=args.max_tokens, temperature=0.0, format_stops=False)
    cursors = typing_through((repo / "models/engine.py").read_text(), "_generate", 3,
                             args.streaks * args.typing + 1)
    colds = ["prompts/completion.py", "prompts/packing.py", "codecomplete/server/llama_cpp.py"]
    rows = []

    def request(cursor: Cursor, label: str, profiled: bool) -> None:
        body = cursor.llama_vim_body(args.max_tokens)
        started = time.perf_counter()
        generation = session.infill(body["input_prefix"] + body["prompt"], body["input_suffix"], sampling=sampling,
                                    budget=budget)
        built = time.perf_counter()
        kernel_ms = None
        if profiled and cuda:
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                result = generation.run()
                torch.cuda.synchronize()
            # (the whole run: the first token's prefill and the 32 tokens' steps; the steps are the same each time)
            kernel_ms = sum(e.self_device_time_total for e in prof.key_averages()) / 1000
        else:
            result = generation.run()
        rows.append({"request": label, "prompt_tokens": result.prompt_tokens,
                     "prefilled": result.prompt_tokens - result.reused_prefix_tokens,
                     "build_ms": round(1000 * (built - started), 1), "engine_ttft_ms": round(result.timings.ttft_ms, 1),
                     "total_ms": round(1000 * (time.perf_counter() - built), 1),
                     "gpu_kernels_ms": None if kernel_ms is None else round(kernel_ms, 1)})
        print(f"  {rows[-1]}", flush=True)

    request(cursors[0], "first", False)
    for streak in range(args.streaks):
        for i in range(args.typing):
            request(cursors[1 + streak * args.typing + i], f"streak {streak + 1}: typing {i + 1}", False)
        for number, path in enumerate(colds):
            text = (repo / path).read_text()
            offset = len(text) * (streak + 2) // (args.streaks + 3)       # another place each streak
            request(Cursor(text, offset), f"streak {streak + 1}: cold {number + 1} {path}", True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cold-after-typing.json").write_text(json.dumps(
        {"gpu": torch.cuda.get_device_name(0) if cuda else None, "torch": torch.__version__, "rows": rows}, indent=1))
    print(f"\n{'request':<58} {'prefilled':>9} {'build':>7} {'engine':>7} {'total':>7} {'gpu':>7}")
    for r in rows:
        if "cold" in r["request"] or r["request"].endswith("typing 1"):
            print(f"{r['request']:<58} {r['prefilled']:>9} {r['build_ms']:>7} {r['engine_ttft_ms']:>7} "
                  f"{r['total_ms']:>7} {r['gpu_kernels_ms'] or '':>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

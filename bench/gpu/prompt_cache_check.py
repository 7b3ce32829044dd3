"""The prompt cache (llama.cpp's --cache-ram, models/prompt_store.py) on a GPU: what a prompt that another came
between costs, prefilled again or taken back from a saved copy in host memory or in the GPU's own memory.

For each shape (random weights, bf16, flash) and prompt length: request A (an inline completion's prompt), then B
(a chat's, sharing nothing with A), then A plus one token. Three ways, interleaved per round: no prompt cache (A is
prefilled again), saved prompts in host memory (llama.cpp's place), saved prompts in device memory (the engine's
place on a GPU). Medians of the rounds' times to first token for B (which pays for saving A) and
for A again (which restores it), after a warm-up round.

    PYTHONPATH=. python bench/gpu/prompt_cache_check.py [--tokenizer .gpu/tokenizer] [--out FILE.json]
    (on a CPU: --device cpu --shapes SmolLM2-135M --lengths 1024 --tokenizer the embedded model's folder)
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from models import GenerationConfig  # noqa: E402
from models.engine import Engine  # noqa: E402
from models.llama import build_random_model  # noqa: E402

WAYS = ("prefill", "host", "device")


def measure(shape: str, lengths: list[int], rounds: int, tokenizer, device: str = "cuda") -> list[dict]:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = build_random_model(shape, device=device, dtype=dtype, max_len=16384)
    engine = Engine(model, tokenizer, name=f"{shape} (random)", context_length=16384, cuda_graphs=False)
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    engine.compile_prefill = engine.prefill_compilable
    place = engine._saved_prompt_place
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(3)
    one = GenerationConfig(max_new_tokens=1)
    rows = []
    for length in lengths:
        a = torch.randint(3, vocab, (length,), generator=g).tolist()
        b = torch.randint(3, vocab, (length,), generator=g).tolist()
        times = {way: {"b": [], "a_again": []} for way in WAYS}
        counts = {}
        for round_ in range(rounds + 1):          # the first round warms the compiled spans
            for way in WAYS:
                engine.keep_prompts(0 if way == "prefill" else -1)
                engine._saved_prompt_place = (lambda: torch.device("cpu")) if way == "host" else place
                engine.clear_prefix_cache()
                engine.generate(a, one)
                synchronize()
                second = engine.generate(b, one)
                synchronize()
                third = engine.generate(a + [5], one)
                synchronize()
                if round_:
                    times[way]["b"].append(second.timings.ttft_ms)
                    times[way]["a_again"].append(third.timings.ttft_ms)
                    counts[way] = {"reused": third.reused_prefix_tokens, "restored": third.timings.restored_tokens,
                                   "saved_on": (str(engine.prompt_store.saved[0].layers[0][0].device)
                                                if engine.prompt_store is not None and engine.prompt_store.saved
                                                else "-")}
        for way in WAYS:
            rows.append({"shape": shape, "prompt": length, "way": way,
                         "b_ttft_ms": statistics.median(times[way]["b"]),
                         "a_again_ttft_ms": statistics.median(times[way]["a_again"]),
                         "a_again_all": [round(t, 2) for t in times[way]["a_again"]], **counts[way]})
    engine.keep_prompts(0)
    del engine, model
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", type=Path, default=Path(".gpu/tokenizer"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shapes", default="CodeLlama-7B,CodeLlama-34B")
    parser.add_argument("--lengths", default="2048,8192")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu (the host and device ways are one there)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from models.loading.hf import load_tokenizer
    tokenizer = load_tokenizer(args.tokenizer)
    lengths = [int(n) for n in args.lengths.split(",")]
    if args.device == "cpu":
        torch.set_num_threads(1)
    rows = [row for shape in args.shapes.split(",")
            for row in measure(shape, lengths, args.rounds, tokenizer, args.device)]
    report = {"gpu": torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({args.device}, 1 thread)",
              "torch": torch.__version__, "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{report['gpu']}, torch {report['torch']}; medians of {args.rounds} rounds, ms to the first token")
    print(f"{'shape':14} {'prompt':>6} {'way':8} {'B (saves A)':>12} {'A again':>9} {'reused':>7} {'restored':>9} "
          f"{'saved on':>9}")
    for r in rows:
        print(f"{r['shape']:14} {r['prompt']:6} {r['way']:8} {r['b_ttft_ms']:12.1f} {r['a_again_ttft_ms']:9.1f} "
              f"{r['reused']:7} {r['restored']:9} {r['saved_on']:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

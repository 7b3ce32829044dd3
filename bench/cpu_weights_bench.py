"""The embedded model on this CPU with float32 weights against bfloat16 projection weights (the command line's default
where the CPU multiplies bfloat16 natively: codecomplete.engines.cpu_matmul_dtype): speed side by side, rounds
interleaved, and what each gets right of real code, teacher-forced.

    python bench/cpu_weights_bench.py [--threads 1] [--rounds 3] [--out bench/scratch/cpu-weights.md]

Speed: prefill tokens/s of a 128- and a 1,024-token prompt and decode tokens/s of 64 greedy tokens, each the median
of `--rounds` interleaved runs (a shared machine: ratios, not absolutes). Accuracy: the 2,040 positions of
installed packages' source that tests/models/test_kv_cache_accuracy.py reads, top-1 against the text, mean
log-loss, and top-1 agreement and mean KL against float32.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "models")]

from models import GenerationConfig, load_model  # noqa: E402
from models.options import cpu_has_bf16_dots  # noqa: E402
from test_kv_cache_accuracy import code_ids, teacher_forced  # noqa: E402

KINDS = {"float32": None, "bfloat16 weights": "bfloat16"}


def speed(engine, prompt: list[int], new_tokens: int) -> tuple[float, float]:
    engine.clear_prefix_cache()
    no_end = tuple((token, float("-inf")) for token in engine.eos_token_ids)        # every run decodes new_tokens
    result = engine.generate(prompt, GenerationConfig(max_new_tokens=new_tokens, logit_bias=no_end))
    return result.timings.prefill_tokens_per_s, result.timings.decode_tokens_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the tables to this Markdown file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engines = {kind: load_model(matmul_dtype=matmul, max_context=2048) for kind, matmul in KINDS.items()}
    tokenizer = engines["float32"].tokenizer
    text = "".join(p.read_text() for p in sorted((ROOT / "models").glob("*.py")))
    ids = tokenizer(text)["input_ids"]
    runs = {(kind, n): [] for kind in KINDS for n in (128, 1024)}
    for _ in range(args.rounds):
        for n in (128, 1024):
            for kind, engine in engines.items():
                runs[kind, n].append(speed(engine, ids[:n], 64))

    right = dict.fromkeys(KINDS, 0)
    loss = dict.fromkeys(KINDS, 0.0)
    agree, kl, positions = 0, 0.0, 0
    for file_ids in code_ids(tokenizer):
        truth = torch.tensor(file_ids[1:])
        out = {kind: teacher_forced(engine.model, file_ids) for kind, engine in engines.items()}       # (N, V)
        for kind, logprobs in out.items():
            right[kind] += (logprobs.argmax(-1) == truth).sum().item()
            loss[kind] -= logprobs.gather(-1, truth[:, None]).sum().item()
        exact, narrow = out["float32"], out["bfloat16 weights"]
        agree += (exact.argmax(-1) == narrow.argmax(-1)).sum().item()
        kl += (exact.exp() * (exact - narrow)).sum().item()
        positions += len(truth)

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "CPU") if Path("/proc/cpuinfo").exists() else "CPU"
    lines = [f"SmolLM2-135M-Instruct (the embedded model) on {cpu}, {args.threads} thread(s), torch {torch.__version__}, "
             f"{time.strftime('%Y-%m-%d %H:%M')}; bfloat16 dot products: {cpu_has_bf16_dots()}; load average "
             f"{os.getloadavg()[0]:.2f}", "",
             "| weights | prefill 128 tok/s | prefill 1,024 tok/s | decode tok/s (after 1,024) |", "|---|---|---|---|"]
    for kind in KINDS:
        p128 = statistics.median(r[0] for r in runs[kind, 128])
        p1k, dec = (statistics.median(r[i] for r in runs[kind, 1024]) for i in (0, 1))
        lines.append(f"| {kind} | {p128:.0f} | {p1k:.0f} | {dec:.1f} |")
    ratio = [statistics.median(r[i] for r in runs["bfloat16 weights", n]) / statistics.median(
        r[i] for r in runs["float32", n]) for n, i in ((128, 0), (1024, 0), (1024, 1))]
    lines.append(f"| ratio | {ratio[0]:.2f}x | {ratio[1]:.2f}x | {ratio[2]:.2f}x |")
    lines += ["", f"Teacher-forced over {positions:,} positions of installed packages' code:", "",
              "| weights | top-1 against the text | mean log-loss (nats) |", "|---|---|---|"]
    lines += [f"| {kind} | {right[kind] / positions:.2%} | {loss[kind] / positions:.4f} |" for kind in KINDS]
    lines += ["", f"bfloat16 weights against float32: top-1 agreement {agree / positions:.2%}, mean KL "
                  f"{kl / positions:.1e} nats."]
    text = "\n".join(lines)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

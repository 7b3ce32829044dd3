"""What choosing a token costs the decode loop on this device, per sampler chain: `models.sampling.sample` on one
row of logits, the editors' chains against greedy.

    python bench/sampling_bench.py [--vocab 32016,49152] [--calls 200] [--out FILE.md]

The decode loop queues a token's sampling behind its step and reads the token one step later, so what the chain
costs a token is its device time (kernels back to back), unless the host cannot launch it within a step. Both are
timed: "device" is the median over rounds of CUDA-event time for `--calls` calls queued back to back, divided by
the calls; "host" is the median wall time of one call's launches (no sync). On a CPU both are the wall time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.generation import GenerationConfig  # noqa: E402
from models.sampling import make_generator, sample  # noqa: E402

LLAMA_CPP_DEFAULT = ("penalties", "top_k", "top_p", "min_p", "temperature")      # (its dry, typ_p, xtc: neutral)
CHAINS = {
    "greedy": GenerationConfig(temperature=0.0),
    # llama.vim's ["top_k", "top_p", "infill"] without infill (random logits end it at once); the samplers it
    # leaves out run at their neutral values (codecomplete.server.samplers.applied)
    "llama.vim (top_k 40, top_p 0.99)": GenerationConfig(
        temperature=1.0, top_k=40, top_p=0.99, top_k_ties=False,       # (llama.cpp's routes: exactly k)
        sampler_order=("top_k", "top_p", "penalties", "temperature", "min_p")),
    "llama.cpp default (top_k 40, top_p 0.95, min_p 0.05, temp 0.8)": GenerationConfig(
        temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, top_k_ties=False, sampler_order=LLAMA_CPP_DEFAULT),
    "OpenAI (temperature 0.2)": GenerationConfig(temperature=0.2),
    "OpenAI (temperature 0.7, top_p 0.9)": GenerationConfig(temperature=0.7, top_p=0.9),
}


def time_chain(logits: torch.Tensor, config: GenerationConfig, calls: int, rounds: int) -> tuple[float, float]:
    """(device µs per call, host µs per call)."""
    generator = make_generator(logits.device, 0) if config.temperature > 0 else None
    cuda = logits.is_cuda
    for _ in range(5):
        sample(logits, config, generator)
    host, device = [], []
    for _ in range(rounds):
        if cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        for _ in range(calls):
            sample(logits, config, generator)
        host.append((time.perf_counter() - t0) / calls * 1e6)
        if cuda:
            end.record()
            end.synchronize()
            device.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(device or host), statistics.median(host)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", default="32016,49152", help="vocabulary sizes (CodeLlama's, SmolLM2's)")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args()

    device = torch.device(args.device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [f"`models.sampling.sample`, one row, {card}, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}",
             "", "| chain | V | device µs/token | host µs/call | device / greedy |", "|---|---|---|---|---|"]
    for vocab in map(int, args.vocab.split(",")):
        generator = torch.Generator(device="cpu").manual_seed(vocab)
        logits = (torch.randn(1, vocab, generator=generator) * 3).to(device)     # (1, V): a peaked distribution
        greedy = None
        for name, config in CHAINS.items():
            dev, host = time_chain(logits, config, args.calls, args.rounds)
            greedy = greedy or dev
            lines.append(f"| {name} | {vocab:,} | {dev:.1f} | {host:.1f} | {dev / greedy:.2f}x |")
    text = "\n".join(lines)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

"""llama.vim's sampler chain (top_k 40, top_p, infill) on CUDA: the infill sampler on the device
(kernels/infill_keep.py) against the host path and against the chain without infill; first a check that both paths
keep the same set on random rows. Run on a GPU machine:

    PYTHONPATH=. python bench/infill_sampler_bench.py [--rows 300] [--iters 200]

Times are CUDA events around `sample()` (ms per call, median), each call's result not read by the host (as the
decode loop queues it); the table comes last.
"""

from __future__ import annotations

import argparse
import random
import statistics
from types import SimpleNamespace

import torch

from models.generation import SAMPLERS, GenerationConfig
from models.infill import InfillSampler, device_candidates
from models.sampling import sample

# (llama.cpp's routes: top_k keeps exactly k)
VIM = GenerationConfig(temperature=1.0, top_k=40, top_p=0.99, top_k_ties=False,
                       sampler_order=("top_k", "top_p", "infill") + SAMPLERS[:3])
PLAIN = GenerationConfig(temperature=1.0, top_k=40, top_p=0.99, top_k_ties=False, sampler_order=SAMPLERS)


class HostOnly:
    """The same sampler, always on the host path."""
    def __init__(self, sampler):
        self.sampler = sampler

    def apply(self, logits, config=None, size=None):
        return self.sampler.apply_on_host(logits, size)


class DeviceOnly:
    """The same sampler, always on the device path (whatever CODECOMPLETE_INFILL_DEVICE says)."""
    def __init__(self, sampler):
        self.sampler = sampler

    def apply(self, logits, config=None, size=None):
        return self.sampler.apply_on_device(logits, device_candidates(config, logits.shape[-1]), size)


def vocabulary(vocab: int, seed: int):
    """Pieces over a small alphabet, so that prefixes are common; ids 0-2 special (no text)."""
    rng = random.Random(seed)
    pieces = [None] * 3 + [bytes(rng.choice(b"abcde _") for _ in range(rng.randint(1, 6))) for _ in range(vocab - 3)]
    by_bytes: dict[bytes, list[int]] = {}
    for number, piece in enumerate(pieces):
        if piece:
            by_bytes.setdefault(piece, []).append(number)
    return SimpleNamespace(pieces=pieces, by_bytes=by_bytes)


def check(sampler: InfillSampler, vocab: int, rows: int, seed: int) -> int:
    """Rows where the device and host paths keep different sets (after top_k 40 and top_p)."""
    generator = torch.Generator(device="cuda").manual_seed(seed)
    logits = torch.randn(rows, vocab, device="cuda", generator=generator) * 3
    logits[:, 2] += torch.linspace(-10, 8, rows, device="cuda")          # the end now unlikely, now likely
    logits[::7, 100:110] = logits[::7, 100:101]                            # ties (within the slack) in some rows
    kth = torch.topk(logits, 40, dim=-1).values[:, -1:]                    # top_k 40, as the chain's
    masked = logits.masked_fill(logits < kth, float("-inf"))
    device = DeviceOnly(sampler).apply(masked, VIM)
    host = sampler.apply_on_host(masked)
    return int(((device > float("-inf")) != (host > float("-inf"))).any(dim=-1).sum())


def time_ms(fn, iters: int) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300, help="random rows checked per vocabulary (default 300)")
    parser.add_argument("--iters", type=int, default=200, help="timed calls per case (default 200)")
    args = parser.parse_args()
    results = []
    for vocab in (49152, 32016):
        sampler = InfillSampler(vocabulary(vocab, vocab), [2], 2)
        mismatched = check(sampler, vocab, args.rows, vocab)
        logits = torch.randn(1, vocab, device="cuda") * 3
        generator = torch.Generator(device="cuda").manual_seed(0)
        cases = {"device infill": lambda: sample(logits, VIM, generator, infill=DeviceOnly(sampler)),
                 "host infill": lambda: sample(logits, VIM, generator, infill=HostOnly(sampler)),
                 "no infill": lambda: sample(logits, PLAIN, generator)}
        for name, fn in cases.items():
            results.append((vocab, name, time_ms(fn, args.iters), mismatched))
    print(f"| vocab | chain | ms per sample() (median, CUDA events) | rows device != host (of {args.rows}) |")
    print("|---|---|---|---|")
    for vocab, name, ms, mismatched in results:
        print(f"| {vocab} | {name} | {ms:.3f} | {mismatched} |")


if __name__ == "__main__":
    main()

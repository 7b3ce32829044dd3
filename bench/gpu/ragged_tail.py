"""What a split that ends off a whole tile costs a flash_decode call: one call's CUDA-graph replay at rows of S, S - 1,
S - 37, S - 127 and S - 128 tokens, bf16 and fp8 caches, CodeLlama-7B (MHA) at 64k and -34B (GQA, an 8-bit V
sequence-major) at 128k, batch 1, one token, the planned splits (the plan is keyed by the cache's S, so every row
length gets the same plan). S and S - 128: every split ends on a whole tile; the others leave the last split a
masked tail tile, read after its pipelined loop (kernels/split_kv.py). A decode step finds rows of every length.

    python bench/gpu/ragged_tail.py           # from the repository root, on the GPU machine; a table last
    TRITON_INTERPRET=1 python bench/gpu/ragged_tail.py --small   # a dry run on a CPU (no timings)
"""
from __future__ import annotations

import sys

import torch

from kernels import flash_decode
from kernels.bench import median_replay_us
from kernels.interface import as_sequence_major
from kernels.reference import quantize

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [("7B", 32, 32, 128, 65536), ("34B", 64, 8, 128, 131072)]      # (name, Hq, Hkv, D, S)
SHORT = (0, 1, 37, 127, 128)


def main(argv: list[str]) -> int:
    small = "--small" in argv
    shapes = [("34B", 8, 2, 64, 1100)] if small else SHAPES
    print(f"{torch.cuda.get_device_name() if DEVICE == 'cuda' else 'CPU, interpreter'}, torch {torch.__version__}")
    rows = []
    for name, Hq, Hkv, D, S in shapes:
        gen = torch.Generator(device=DEVICE).manual_seed(S)
        q = torch.randn(1, Hq, 1, D, generator=gen, device=DEVICE).to(torch.bfloat16)
        k = torch.randn(1, Hkv, S, D, generator=gen, device=DEVICE).to(torch.bfloat16)
        v = torch.randn(1, Hkv, S, D, generator=gen, device=DEVICE).to(torch.bfloat16)
        k8, k_scale = quantize(k, torch.float8_e4m3fn)
        v8, v_scale = quantize(v, torch.float8_e4m3fn)
        if Hq > Hkv:     # (models store a GQA model's 8-bit V sequence-major)
            v8 = as_sequence_major(v8)
        for cache in ("bf16", "fp8"):
            times = []
            for short in SHORT:
                lengths = torch.tensor([S - short], dtype=torch.int32, device=DEVICE)
                if cache == "bf16":
                    run = lambda: flash_decode(q, k, v, lengths)                                     # noqa: E731
                else:
                    run = lambda: flash_decode(q, k8, v8, lengths, k_scale=k_scale, v_scale=v_scale)  # noqa: E731
                if small:
                    assert run().isfinite().all()
                    times.append(float("nan"))
                else:
                    times.append(median_replay_us(run))
            rows.append(f"| {name} | {S} | {cache} | " + " | ".join(f"{t:.1f}" for t in times) + " |")
            print(rows[-1], flush=True)
    print("\n| model | S | cache | " + " | ".join(f"len S - {s} (µs)" for s in SHORT) + " |\n|---|---|---|"
          + "---|" * len(SHORT))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

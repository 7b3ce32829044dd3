"""What the fp8 cache's exact sink and window tokens cost the attention call alone: `flash_decode` over the fp8 cache
against `flash_decode_exact_window` over the same cache with the product's exact slots (a sink of 16, a ring of
512 holding the row's last positions), CUDA-graph replays, each call its own graph (no step around it: the step's
PDL overlap is models.bench's). CodeLlama-7B (MHA, V token-major) at 16k and 64k, -34B (GQA, V sequence-major) at
16k and 128k, batch 1, one token; the planned splits. Run 40 measured the step end to end (7B 64k 127.7 against
134.5 tok/s without the copies, 34B 128k int8 weights 77.9 against 80.6); this says how much of that is the call.

    python bench/gpu/exact_kernel_cost.py           # from the repository root, on the GPU machine; a table last
    python bench/gpu/exact_kernel_cost.py --ragged  # rows of S - 37 tokens: splits end off a whole tile
    TRITON_INTERPRET=1 python bench/gpu/exact_kernel_cost.py --small   # a dry run on a CPU (no timings)
"""
from __future__ import annotations

import sys

import torch

from kernels import flash_decode, flash_decode_exact_window
from kernels.bench import median_replay_us
from kernels.exact_window import combine_exact_launch
from kernels.interface import as_sequence_major, launch, plan_for
from kernels.reference import quantize
from kernels.validation import ExactTokens
from models.kv_cache import EXACT_RING, EXACT_SINK, EXACT_WINDOW, exact_slot

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [("7B", 32, 32, 128, False, 16384), ("7B", 32, 32, 128, False, 65536),
          ("34B", 64, 8, 128, True, 16384), ("34B", 64, 8, 128, True, 131072)]   # (name, Hq, Hkv, D, V seq-major, S)


def inputs(Hq: int, Hkv: int, D: int, seq_major: bool, S: int, short: int = 0):
    """q (1, Hq, 1, D) bf16; an fp8 cache of S random tokens (V sequence-major where asked) with its scales; the
    exact slots as the cache keeps them for a row of S tokens; lengths (1,) = S."""
    gen = torch.Generator(device=DEVICE).manual_seed(S + Hq)
    q = torch.randn(1, Hq, 1, D, generator=gen, device=DEVICE).to(torch.bfloat16)
    k8, k_scale = quantize(torch.randn(1, Hkv, S, D, generator=gen, device=DEVICE).to(torch.bfloat16),
                           torch.float8_e4m3fn)
    v8, v_scale = quantize(torch.randn(1, Hkv, S, D, generator=gen, device=DEVICE).to(torch.bfloat16),
                           torch.float8_e4m3fn)
    if seq_major:
        v8 = as_sequence_major(v8)
    n = EXACT_SINK + EXACT_RING
    positions = torch.cat((torch.arange(EXACT_SINK), torch.arange(max(EXACT_SINK, S - EXACT_RING), S))).to(DEVICE)
    pos = torch.full((1, n), -1, dtype=torch.int64, device=DEVICE)
    pos[0, exact_slot(positions)] = positions
    k_exact, v_exact = (torch.randn(1, Hkv, n, D, generator=gen, device=DEVICE).to(torch.bfloat16) for _ in range(2))
    exact = ExactTokens(k_exact, v_exact, pos, EXACT_SINK, EXACT_WINDOW)
    lengths = torch.tensor([S - short], dtype=torch.int32, device=DEVICE)   # (the slots hold S's: timing only)
    return q, k8, v8, k_scale, v_scale, exact, lengths


def main(argv: list[str]) -> int:
    small = "--small" in argv
    # --ragged: each row S - 37 tokens long, as a decode step mostly finds it (no split ends on a whole tile)
    short = 37 if "--ragged" in argv else 0
    shapes = [("34B", 8, 2, 64, True, 1100)] if small else SHAPES
    print(f"{torch.cuda.get_device_name() if DEVICE == 'cuda' else 'CPU, interpreter'}, torch {torch.__version__}")
    rows = []
    for name, Hq, Hkv, D, seq_major, S in shapes:
        q, k8, v8, k_scale, v_scale, exact, lengths = inputs(Hq, Hkv, D, seq_major, S, short)
        plain = lambda: flash_decode(q, k8, v8, lengths, k_scale=k_scale, v_scale=v_scale)           # noqa: E731
        windowed = lambda: flash_decode_exact_window(q, k8, v8, lengths, k_scale=k_scale,           # noqa: E731
                                                     v_scale=v_scale, exact=exact)
        # Attribution, one part each (the whole call's plan, as flash_decode_exact_window launches it): the split
        # kernels' shifted span (key_start, seqlen_shift) with the plain combine; the plain span with the exact
        # combine (wrong numbers, the same work).
        plan = plan_for(q, 1, Hq, Hkv, S, D, 1, True, None, int8=False)
        scale = D ** -0.5
        shifted = lambda: launch(q, k8, v8, lengths, plan, softmax_scale=scale, k_scale=k_scale,    # noqa: E731
                                 v_scale=v_scale, seqlen_shift=exact.window, key_start=exact.sink)
        shift_only = lambda: launch(q, k8, v8, lengths, plan, softmax_scale=scale, k_scale=k_scale, # noqa: E731
                                    v_scale=v_scale, seqlen_shift=exact.window)
        combined = combine_exact_launch(q, exact, lengths, scale, S)
        exact_combine = lambda: launch(q, k8, v8, lengths, plan, softmax_scale=scale,              # noqa: E731
                                       k_scale=k_scale, v_scale=v_scale, exact=combined)
        if small:     # the dry run: every call goes through, finite
            assert plain().isfinite().all() and windowed().isfinite().all()
            assert shifted()[0].isfinite().all() and exact_combine()[0].isfinite().all()
            assert shift_only()[0].isfinite().all()
            rows.append(f"| {name} | {S} | - | - | - | - | - | - |")
            continue
        a, b, c, e = (median_replay_us(f) for f in (plain, windowed, shifted, shift_only))
        d = median_replay_us(exact_combine) if plan.num_splits > 1 else float("nan")   # (unsplit: a merge after)
        rows.append(f"| {name} | {S} | {a:.1f} | {b:.1f} | {b / a:.3f} | {c:.1f} | {e:.1f} | {d:.1f} |")
        print(rows[-1], flush=True)
    print("\n| model | S | fp8 flash_decode (µs) | with the exact tokens (µs) | ratio | shifted span only (µs) "
          "| seqlen_shift only (µs) | exact combine only (µs) |\n|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""flash_decode_exact_window compiled on a GPU against the float64 oracle of tests/kernels/test_exact_window.py, at
the real models' shapes and long contexts (the tests run modest shapes under the interpreter): CodeLlama-7B (MHA,
the row kernel) and -34B (GQA, V sequence-major: the dot and transposed kernels), fp8 and int8, one token and an
8-token verification, the planned splits and forced ones, rows of edge lengths beside full ones. The exact slots as
the cache keeps them (a sink of 16 and a ring of 512, models/kv_cache.py: rows that wrapped it up to 30 times, one
just past its first lap), with rolled-back drafts and stale slots (another lap's position where a window position
should be, which the kernel must not read). Inputs and the oracle are built on the CPU with the tests' own
builders; outputs poisoned with NaN on the GPU. Prints a table.

    python bench/gpu/exact_window_check.py          # from the repository root, on the GPU machine
    TRITON_INTERPRET=1 python bench/gpu/exact_window_check.py --small    # a dry run on a CPU (34B, S 1,100: ~25 s)
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "kernels"))
from kernel_inputs import CACHE_DTYPES, make_inputs, quantized_copy   # noqa: E402
from test_exact_window import TOL, exact_tokens, float64_oracle, rel_err   # noqa: E402

from kernels import flash_decode_exact_window                         # noqa: E402
from kernels.check import nan_poisoned_empty                           # noqa: E402
from kernels.validation import ExactTokens                             # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"     # the CPU (TRITON_INTERPRET=1, --small): a dry run
SINK, RING = 16, 512                        # models/kv_cache.py's EXACT_SINK and EXACT_RING (the tests' builders' too)
LOST = 4                                    # stale slots a row (tests/kernels/test_exact_window.py's exact_tokens)
SHAPES = {"7B": (32, 32, 128, "bhsd"), "34B": (64, 8, 128, "vseq")}   # (Hq, Hkv, D, V layout as the models keep it)


def check(model: str, S: int, kv: str, T: int, splits) -> tuple[float, float, bool]:
    Hq, Hkv, D, layout = SHAPES[model]
    seed = torch.seed() % 2**31
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([S, SINK + 32 + T, min(S, 5000 + T), min(S, SINK + RING + 7)], dtype=torch.int32)
    B = len(lengths)
    q, k, v = make_inputs(B, Hq * T, Hkv, S, D, torch.bfloat16, layout=layout, seed=seed + 1)
    q = q.reshape(B, Hq, T, D)
    k8, k_scale, v8, v_scale = quantized_copy(k, v, layout=layout, dtype=CACHE_DTYPES[kv])
    exact, missing = exact_tokens(k, v, lengths, T, gen, SINK, RING, LOST)
    assert v8.to(DEVICE).stride() == v8.stride()       # .to(DEVICE) keeps a sequence-major V as it is
    gpu_exact = ExactTokens(*(t.to(DEVICE) for t in exact[:3]), exact.sink, exact.window)
    with nan_poisoned_empty():
        out, lse = flash_decode_exact_window(q.to(DEVICE), k8.to(DEVICE), v8.to(DEVICE), lengths.to(DEVICE), exact=gpu_exact,
                                             k_scale=k_scale.to(DEVICE), v_scale=v_scale.to(DEVICE), num_splits=splits,
                                             return_lse=True)
        torch.cuda.synchronize() if DEVICE == "cuda" else None
    out, lse = out.cpu(), lse.cpu()
    ref_out, ref_lse = float64_oracle(q, k, v, k8, v8, {"k_scale": k_scale, "v_scale": v_scale}, lengths, SINK,
                                      missing)
    err = rel_err(out, ref_out)
    lse_err = (lse.double() - ref_lse).abs().max().item()
    ok = not out.isnan().any() and err <= TOL[torch.bfloat16] and lse_err <= 1e-3
    return err, lse_err, ok


def main(argv: list[str]) -> int:
    small = "--small" in argv
    print(f"{torch.cuda.get_device_name() if DEVICE == 'cuda' else 'CPU, interpreter'}, torch {torch.__version__}")
    rows, failed = [], 0
    sizes = (("34B", 1100),) if small else (("7B", 16384), ("34B", 16384), ("34B", 4096))   # (float64 oracle: CPU)
    for model, S in sizes:
        for kv in ("fp8", "int8"):
            for T, splits in ((1, None), (1, 7), (8, None))[:1 if small else 3]:
                if model == "7B" and T > 1 and kv == "int8":
                    continue
                err, lse_err, ok = check(model, S, kv, T, splits)
                failed += not ok
                rows.append(f"| {model} | {S} | {kv} | {T} | {splits or 'planned'} | {err:.2e} | {lse_err:.1e} | "
                            f"{'ok' if ok else 'FAILED'} |")
                print(rows[-1], flush=True)
    print("\n| model | S | cache | T | splits | rel. error vs float64 | max lse error | |\n|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\n{len(rows) - failed} of {len(rows)} passed (bf16 tolerance {TOL[torch.bfloat16]}; exact slots: a sink of "
          f"{SINK}, a ring of {RING}, {LOST} stale slots a row)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""A keystroke's tail fed through CUDA-graph replays (`Engine._feed_tail`: the verification step's width a replay,
the last one padded past the prompt) against a prefill of the same prompt, on a GPU, for every cache kind: one
layer of the CodeLlama-7B (MHA, 9 tokens a replay) and -34B (GQA, 8; the 8-bit caches' V sequence-major) shapes,
random weights, graphs on (CODECOMPLETE_COMPILE=0: no inductor, the same graphs). For n new tokens: the cache holds
the prompt less its last n, then the prompt; the top-8 logprobs of 4 greedy tokens against a cold prefill's. The
noise floor: the same prompt prefilled from another start (a 256-token span). Prints a table; exits 1 on a failure.

    CODECOMPLETE_COMPILE=0 python bench/gpu/tail_check.py        # from the repository root, on the GPU machine
    ... tail_check.py --widths 64,128      # instead: wider steps (bf16 caches), tails of up to two replays
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cache_reuse_check import largest_logprob_gap  # noqa: E402

from models import GenerationConfig  # noqa: E402
from models.engine import Engine  # noqa: E402
from models.llama import build_random_model  # noqa: E402

COUNTS = (2, 8, 9, 10, 30, 36)


def check(shape: str, kind: str, width: int | None = None) -> list[dict]:
    model = build_random_model(shape, n_layers=1, device="cuda", dtype=torch.bfloat16, max_len=4096)
    engine = Engine(model, None, name=f"{shape} 1 layer", attention="flash", context_length=4096,
                    kv_cache=kind if kind != "bf16" else None)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, model.config.vocab_size, (3000,), generator=g).tolist()
    probe = GenerationConfig(max_new_tokens=4, logprobs=8)
    engine.clear_prefix_cache()
    cold = engine.generate(prompt, probe)
    engine.generate(prompt[:-256], GenerationConfig(max_new_tokens=1))
    spanned = engine.generate(prompt, probe)
    floor = largest_logprob_gap(spanned, cold)
    rows = []
    for n in COUNTS if width is None else (width // 2 + 5, width - 1, width, width + 1, 2 * width):
        engine.tail_override = None if width is None else (2, width)
        engine.generate(prompt[:-n], GenerationConfig(max_new_tokens=1))
        warm = engine.generate(prompt, probe)
        gap = largest_logprob_gap(warm, cold)
        limit = max(3 * floor, {"bf16": 0.1, "int8": 0.25, "fp8": 0.5}[kind])
        fed = len(prompt) - warm.reused_prefix_tokens
        width = engine._tail_width(len(prompt) - n, len(prompt))
        tail = width is not None                        # (else the bucketed prefill takes them: more are fed)
        rows.append({"shape": shape, "kind": kind, "new": n, "fed": fed, "width": width if tail else "prefill",
                     "same_tokens": warm.token_ids == cold.token_ids, "gap": gap, "floor": floor,
                     "ok": (fed == n) == tail and gap <= limit})
    del engine, model
    torch.cuda.empty_cache()
    return rows


def main() -> int:
    widths = [int(w) for w in sys.argv[sys.argv.index("--widths") + 1].split(",")] if "--widths" in sys.argv else []
    if widths:
        rows = [r for shape in ("CodeLlama-7B", "CodeLlama-34B") for w in widths for r in check(shape, "bf16", w)]
    else:
        rows = [r for shape in ("CodeLlama-7B", "CodeLlama-34B") for kind in ("bf16", "fp8", "int8")
                for r in check(shape, kind)]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}: tail through graph replays against a prefill")
    print("| shape | cache | new tokens | fed | tail width | same tokens | logprob gap | floor | ok |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['kind']} | {r['new']} | {r['fed']} | {r['width']} | {r['same_tokens']} | "
              f"{r['gap']:.4f} | {r['floor']:.4f} | {'ok' if r['ok'] else 'FAILED'} |")
    print(f"\n{sum(r['ok'] for r in rows)} of {len(rows)} passed")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""What an 8-bit KV cache costs a prompt on a GPU: CodeLlama-7B shape (random weights), one prompt, flash attention.
Per cache (bf16, fp8, int8): `Transformer.prefill` of a fresh prompt (CUDA events, median of 5), and the Engine's
first token for a request that shares all but the prompt's last EDIT tokens with the one before it (the prefix
cache reuses the rest; with the exact sink and window tokens, a cut that deep re-prefills the window's span).
Run it with this tree and with the code before a change, in separate processes, to put them side by side. An fp8
cache's prefill runs kernels/prefill_exact.py (models/attention.py); `--masked` adds an fp8 arm through the masked
softmax it replaced (`models.attention.PREFILL_EXACT_KERNEL` off), in the same process.

    python bench/gpu/prefill_8bit.py [--masked] [TOKENS ...]    # from the repository root, on the GPU machine
"""
from __future__ import annotations

import sys

import torch

EDIT = 100          # tokens changed at the end of the prompt between two requests


@torch.no_grad()
def main(argv: list[str]) -> int:
    from models.engine import Engine
    from models.prefill_bench import _ms          # CUDA events, the median of 5 after one
    from models.generation import GenerationConfig
    from models.llama import build_random_model
    import models.attention
    lengths = [int(a) for a in argv if a != "--masked"] or [8192, 32768]
    arms = [(None, True), ("fp8", True), ("int8", True)] + ([("fp8", False)] if "--masked" in argv else [])
    model = build_random_model("CodeLlama-7B", device="cuda", dtype=torch.bfloat16, max_len=max(lengths) + 256)
    engine = Engine(model, None, name="CodeLlama-7B", attention="flash", context_length=max(lengths) + 256)
    config = GenerationConfig(max_new_tokens=1)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for kind, kernel in arms:
        engine.set_kv_cache(kind)
        models.attention.PREFILL_EXACT_KERNEL = kernel
        name = (kind or "bf16") + ("" if kernel else " (masked softmax)")
        for T in lengths:
            ids = torch.randint(3, model.config.vocab_size, (T,), generator=gen).tolist()
            prefill = _ms(lambda: model.prefill(torch.tensor([ids], device="cuda")))
            engine.clear_prefix_cache()
            engine.generate(ids, config)                                     # the first request, then edits
            edits = []
            for i in range(3):
                edited = ids[:T - EDIT] + [(x + i + 1) % model.config.vocab_size or 3 for x in ids[T - EDIT:]]
                edits.append(engine.generate(edited, config).timings.ttft_ms)
            rows.append(f"| {name} | {T} | {prefill:.1f} | {sorted(edits)[1]:.1f} |")
            print(rows[-1], flush=True)
    print(f"\nCodeLlama-7B shape, {torch.cuda.get_device_name()}, torch {torch.__version__}\n")
    print(f"| KV cache | prompt tokens | prefill (ms) | first token after an edit of the last {EDIT} tokens (ms) |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""The fused one-token step with an fp8 cache on a GPU: qkv_rope writes the exact sink and window copies itself
(`KVCache.fused_exact`), against the same step with them written as before (`KVCache.write_exact`'s scatters of
the k and v qkv_rope returns): the same copies bit for bit, the same positions, the same logits; and, for scale,
the general step's (`KVCache.update`; other matmuls, so bf16 rounding apart). CodeLlama-7B and -34B heads, 2 layers,
random weights, a prompt short of the ring and one past it (whose steps wrap it). One line per case, a summary last.

    python bench/gpu/fused_exact_check.py          # from the repository root, on the GPU machine
"""
from __future__ import annotations

import dataclasses
import sys

import torch

import kernels.fused_gemv as fused_gemv
from models.config import preset
from models.kv_cache import EXACT_RING, EXACT_SINK, KVCache
from models.llama import Decode, build_random_model

ARMS = ("kernel", "scatter", "general")


def decode_run(model, tokens, prompt: int, steps: int, arm: str):
    model.setup_caches(1, prompt + steps + 64, quant="fp8")
    model.prefill(tokens[:, :prompt])
    model.fused_decode = arm != "general"
    original = fused_gemv.qkv_rope
    if arm == "scatter":              # the step before: qkv_rope without `exact`, then write_exact's scatters
        caches = {layer.attention.kv_cache.k_exact.data_ptr(): layer.attention.kv_cache for layer in model.layers}

        def qkv_rope(*args, exact=None, **kwargs):
            y = original(*args, **kwargs)
            if exact is not None:
                n_heads, n_kv_heads, D = args[7], args[8], args[4].shape[-1]
                k, v = (t.view(1, n_kv_heads, 1, D) for t in y[n_heads * D:].chunk(2))
                caches[exact[0].data_ptr()].write_exact(args[6], k, v)
            return y
        fused_gemv.qkv_rope = qkv_rope
    try:
        logits = []
        for p in range(prompt, prompt + steps):
            step = Decode(torch.tensor([p], device="cuda"), torch.tensor([p + 1], dtype=torch.int32, device="cuda"),
                          "flash")
            logits.append(model.decode(tokens[:, p:p + 1], step).float())
    finally:
        fused_gemv.qkv_rope = original
    copies = [(c.k_exact.clone(), c.v_exact.clone(), c.exact_pos.clone())
              for c in (layer.attention.kv_cache for layer in model.layers)]
    model.free_caches()
    return torch.cat(logits), copies


def run(name: str, prompt: int, steps: int) -> bool:
    config = dataclasses.replace(preset(name), n_layers=2)
    model = build_random_model(config, device="cuda", dtype=torch.bfloat16, max_len=prompt + steps + 64)
    tokens = torch.randint(0, config.vocab_size, (1, prompt + steps), device="cuda")
    with torch.no_grad():
        (kernel, kernel_copies), (scatter, scatter_copies), (general, _) = (
            decode_run(model, tokens, prompt, steps, arm) for arm in ARMS)
    identical = all(torch.equal(a, b) for ka, kb in zip(kernel_copies, scatter_copies, strict=True)
                    for a, b in zip(ka, kb, strict=True))
    same_logits = torch.equal(kernel, scatter)
    filled = int((kernel_copies[0][2] >= 0).sum())
    rel = ((kernel - general).norm() / general.norm()).item()
    ok = identical and same_logits and filled == min(prompt + steps, EXACT_SINK + EXACT_RING)
    print(f"{'ok' if ok else 'FAILED'} {name} prompt {prompt} steps {steps}: copies and positions "
          f"{'identical' if identical else 'DIFFER'} to the scatters', logits {'identical' if same_logits else 'DIFFER'}"
          f"; {filled} slots filled; against the general step (bf16 rounding apart) rel L2 {rel:.2e}")
    return ok


def main() -> int:
    assert KVCache.fused_exact is not None
    results = [run(name, prompt, steps) for name in ("CodeLlama-7B", "CodeLlama-34B")
               for prompt, steps in ((100, 60), (4000, 20))]
    print(f"fused exact check: {sum(results)} of {len(results)} ok")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())

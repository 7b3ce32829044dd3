"""Next-token choice on the device: greedy, or temperature / top-k / top-p sampling (in the config's order).

Everything stays on the device (no .item(), no multinomial), so the decode loop never waits
on the host to pick a token: sampling uses the exponential-race form of the Gumbel-max trick.
"""

from __future__ import annotations

import torch

from models.generation import GenerationConfig


def sample(logits: torch.Tensor, config: GenerationConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Token ids (B,) int64 from float32 logits (B, V)."""
    if config.temperature <= 0:
        return logits.argmax(dim=-1)
    return race(probabilities(logits, config), generator)


def probabilities(logits: torch.Tensor, config: GenerationConfig) -> torch.Tensor:
    """The distribution (B, V) that sampling draws from: temperature, top-k and top-p in `config.sampler_order`.
    The order matters for top-p: after temperature it weighs the tempered distribution (vLLM, Ollama), before it
    the model's own (llama.cpp's chain, which ends with temperature)."""
    # From the largest logit down: a tiny temperature then sends the others to -inf, not the largest to +inf (inf -
    # inf is NaN in the softmax; 1e-45 made every token id 0). Neither top-k nor top-p drops the largest, so it
    # stays 0 whatever the order.
    logits = logits - logits.amax(dim=-1, keepdim=True)
    for sampler in config.sampler_order:
        if sampler == "temperature":
            # Below float32's smallest normal number the temperature itself would round to 0 (1e-300: 0 / 0 is NaN):
            # it divides as that number.
            logits = logits / max(config.temperature, torch.finfo(torch.float32).tiny)
        elif sampler == "top_k" and 0 < config.top_k < logits.shape[-1]:
            kth = torch.topk(logits, config.top_k, dim=-1).values[:, -1:]           # (B, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        elif sampler == "top_p" and config.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)        # (B, V)
            probs = sorted_logits.softmax(dim=-1)
            # Drop a token when the tokens ranked above it already hold top_p of the mass (the first always stays).
            drop = probs.cumsum(dim=-1) - probs > config.top_p
            logits = torch.full_like(logits, float("-inf")).scatter(-1, order,
                                                                    sorted_logits.masked_fill(drop, float("-inf")))
    return logits.softmax(dim=-1)


def race(weights: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row of non-negative weights (B, V), drawn with probability proportional to the weight.

    argmax(w / E) with E ~ Exp(1) draws index i with probability w_i / sum(w): no normalisation needed.
    """
    race = torch.empty_like(weights).exponential_(1.0, generator=generator)
    return (weights / race).argmax(dim=-1)


def make_generator(device: torch.device, seed: int | None) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator

"""llama.cpp's dynamic temperature: each step's temperature chosen by how unsure the model is.

Followed: llama.cpp's `llama_sampler_temp_ext` (src/llama-sampling.cpp), its temperature sampler wherever its chain
runs "temperature" (common/sampling.cpp) with `dynatemp_range` > 0. Over the candidates the samplers before it left
(here: the tokens whose logit is not -inf), n of them,

    normalized entropy  h = -sum p ln p / ln n                                  (0: one sure token, 1: uniform)
    temperature         low + (high - low) * h ** dynatemp_exponent,   low = max(0, temperature - range),
                                                                        high = temperature + range

and the logits are divided by it; a temperature of 0 or less keeps the largest logit alone (llama.cpp's temperature
sampler at 0), and a row with one candidate or none is left as it is. It runs whatever the request's temperature, as
llama.cpp's chain runs temp-ext at every temperature: 0 with a range draws at 0..range (GenerationConfig.greedy).
Each row of a batch has its own temperature.
On the device, no sync: a softmax and a sum per row more than the plain temperature.
"""

from __future__ import annotations

import torch


def dynamic_temperature(logits: torch.Tensor, temperature: float, spread: float, exponent: float) -> torch.Tensor:
    """Logits (B, V) divided by each row's entropy-chosen temperature (llama.cpp's temp-ext, `spread` > 0)."""
    possible = logits > float("-inf")                                                    # (B, V)
    n = possible.sum(dim=-1, keepdim=True)                                               # (B, 1)
    probs = logits.softmax(dim=-1)
    entropy = -(probs * probs.log()).where(probs > 0, 0.0).sum(dim=-1, keepdim=True)     # (B, 1) nats
    normalized = entropy / n.clamp(min=2).float().log()
    low, high = max(0.0, temperature - spread), temperature + spread
    chosen = low + (high - low) * normalized ** exponent                                 # (B, 1)
    tiny = torch.finfo(torch.float32).tiny
    scaled = logits / chosen.clamp(min=tiny)
    # A finite logit that the division sends to +-inf (a temperature near 0): divide from the row's largest down, as
    # models.sampling's temperature does, so the largest stays finite and no inf - inf turns the softmax into NaN.
    overflow = (torch.isinf(scaled) & torch.isfinite(logits)).any(dim=-1, keepdim=True)
    largest = logits.amax(dim=-1, keepdim=True)
    scaled = torch.where(overflow, (logits - largest) / chosen.clamp(min=tiny), scaled)
    scaled = scaled.where(possible, float("-inf"))                    # -inf / inf would be NaN: a dropped token stays
    first = torch.zeros_like(possible).scatter_(-1, logits.argmax(dim=-1, keepdim=True), True)
    greedy = logits.where(first, float("-inf"))                       # temperature <= 0: the largest alone
    return torch.where(n <= 1, logits, torch.where(chosen > 0, scaled, greedy))

"""llama.cpp's dynamic temperature: each step's temperature chosen by how unsure the model is.

Followed: llama.cpp's `llama_sampler_temp_ext` (src/llama-sampling.cpp), its temperature sampler wherever its chain
runs "temperature" (common/sampling.cpp) with `dynatemp_range` > 0. Over the candidates the samplers before it left,
n of them (llama.cpp's cur_p->size: below),

    normalized entropy  h = -sum p ln p / ln n                                  (0: one sure token, 1: uniform)
    temperature         low + (high - low) * h ** dynatemp_exponent,   low = max(0, temperature - range),
                                                                        high = temperature + range

and the logits are divided by it; a temperature of 0 or less keeps the largest logit alone (llama.cpp's temperature
sampler at 0), and a row with one candidate or none is left as it is. It runs whatever the request's temperature, as
llama.cpp's chain runs temp-ext at every temperature: 0 with a range draws at 0..range (GenerationConfig.greedy).
Each row of a batch has its own temperature.

n is the size of llama.cpp's candidate array, not the number of tokens whose logit is not -inf: the array starts
with the whole vocabulary; its logit-bias sampler sets a banned token (logit_bias -inf, ignore_eos) to -inf and
leaves it there, as does a grammar (here token healing's restriction) and the penalties; samplers that cut shrink
it: top_k to k (banned tokens in it where fewer than k are not banned), min_p to the tokens at or above its floor,
top_p to its nucleus (each at least min_keep), infill to what it keeps. `array_size`, `cut` and `live` follow it
through models.sampling's chain, on the device as counts (B, 1), whether the chain holds whole rows or a CPU's
compacted candidates (which drop every -inf column); the infill sampler's end test reads the same n
(models/infill.py). Two things are not followed, both at the edges: top_p here
always reaches its mass (llama.cpp's float32 sum that stops short of a top_p within rounding of 1 keeps the whole
array), and after infill llama.cpp's array also keeps the end-of-generation tokens at -inf (here: what infill left).
On the device, no sync: a softmax and a sum per row more than the plain temperature, and a count per cutting sampler.
"""

from __future__ import annotations

import torch


def array_size(logits: torch.Tensor) -> torch.Tensor:
    """Logits (B, V) -> llama.cpp's array size (B, 1) int64 before any sampler: the whole vocabulary."""
    return torch.full((logits.shape[0], 1), logits.shape[-1], dtype=torch.int64, device=logits.device)


def live(values: torch.Tensor) -> torch.Tensor:
    """Logits (B, W) -> how many of each row are not -inf (B, 1) int64."""
    return (values > float("-inf")).sum(dim=-1, keepdim=True)


def cut(size: torch.Tensor, kept: torch.Tensor, at_least: int) -> torch.Tensor:
    """The array's size (B, 1) after a sampler that keeps `kept` (B, 1) of it by its rule but at least `at_least`
    (top_k's k, min_keep), never more than the array held: llama.cpp's top_k, top_p and min_p."""
    return torch.minimum(size, kept.clamp(min=max(at_least, 1)))


def dynamic_temperature(logits: torch.Tensor, temperature: float, spread: float, exponent: float,
                        size: torch.Tensor) -> torch.Tensor:
    """Logits (B, V) divided by each row's entropy-chosen temperature (llama.cpp's temp-ext, `spread` > 0); `size`
    (B, 1): llama.cpp's array size there (`array_size`, `cut`), the n of the entropy's ln n."""
    possible = logits > float("-inf")                                                    # (B, V)
    probs = logits.softmax(dim=-1)
    entropy = -(probs * probs.log()).where(probs > 0, 0.0).sum(dim=-1, keepdim=True)     # (B, 1) nats
    normalized = entropy / size.clamp(min=2).float().log()
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
    return torch.where(size <= 1, logits, torch.where(chosen > 0, scaled, greedy))

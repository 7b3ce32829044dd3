"""Attention: prefill always through PyTorch SDPA; the decode step through one of three backends.

    flash  kernels.flash_decode: Triton split-KV Flash-Decoding (graph-safe; the GPU default)
    sdpa   torch's scaled_dot_product_attention for the decode tokens too (the CPU default)
    eager  kernels.reference.eager_decode: repeat_kv + matmul + softmax in the model's dtype, the
           "standard attention" baseline (transformers' eager attention)

All three read the same (B, Hkv, S, D) cache with per-sequence lengths, so switching is free; an 8-bit
cache (fp8, int8) is read by flash and eager with its scales and dequantized for sdpa.
A decode step carries T >= 1 tokens per sequence (1 + drafts under verification), causal among themselves.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from models.kv_cache import CacheView

BACKENDS = ("flash", "sdpa", "eager")
# Head dims flash and eager take: the Triton kernels' range (kernels.validation), which their PyTorch twin
# shares; sdpa takes any. A constant here, as importing kernels would import Triton (see below).
KERNEL_HEAD_DIMS = range(16, 257)


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of T new queries over a cached prefix plus themselves.

    q (1, Hq, T, D); k, v (1, Hkv, S, D) with S = prefix + T. Returns (1, Hq, T, D).
    The causal triangle is aligned bottom-right (query i sees keys 0..S-T+i), which SDPA's
    flash and efficient kernels support natively, so no (T, S) mask is ever built on the GPU.
    """
    mask = causal_lower_right(q.shape[2], k.shape[2])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


def decode_attention(backend: str, q: torch.Tensor, cache: CacheView, cache_seqlens: torch.Tensor,
                     exact: bool) -> torch.Tensor:
    """The last T tokens of each sequence over its cache, causal among themselves (bottom-right).

    q (B, Hq, T, D); cache (B, Hkv, S, D) (+ 8-bit scales (B, Hkv, S)); cache_seqlens int32 (B,), the valid
    length of each row, the T new tokens included: query t sees keys [0, len - T + t].
    `exact` promises every row holds exactly S tokens, so SDPA can skip the mask for T = 1 (its fastest kernels).
    Returns (B, Hq, T, D).
    """
    if backend in ("flash", "eager"):
        fn = _flash_decode() if backend == "flash" else _reference_decode()
        single = q.shape[2] == 1           # the one-token kernel, exactly as before multi-token decoding
        out = fn(q[:, :, 0] if single else q, cache.k, cache.v, cache_seqlens,
                 k_scale=cache.k_scale, v_scale=cache.v_scale)
        return out[:, :, None] if single else out
    if backend == "sdpa":
        return _sdpa_decode(q, *cache.dequantized(q.dtype), cache_seqlens, exact)
    raise ValueError(f"unknown attention backend {backend!r} (choose from {', '.join(BACKENDS)})")


def _sdpa_decode(q, k_cache, v_cache, cache_seqlens, exact: bool) -> torch.Tensor:
    B, Hq, T, D = q.shape
    Hkv, S = k_cache.shape[1], k_cache.shape[2]
    G = Hq // Hkv
    # GQA as a short query sequence: the query heads sharing a KV head become that head's G x T queries,
    # so K/V are read once per group, never repeated (and the CPU kernels avoid a slow path).
    q_grouped = q.reshape(B, Hkv, G * T, D)                                             # (B, Hkv, G*T, D)
    if exact and T == 1:
        mask = None
    else:
        # Query t of row b sees keys j < len_b - T + 1 + t.
        ends = cache_seqlens[:, None] - T + 1 + torch.arange(T, device=q.device)        # (B, T)
        mask = torch.arange(S, device=q.device) < ends[:, :, None]                      # (B, T, S)
        mask = mask[:, None].expand(B, G, T, S).reshape(B, 1, G * T, S)                 # (B, 1, G*T, S)
    out = F.scaled_dot_product_attention(q_grouped, k_cache, v_cache, attn_mask=mask)   # (B, Hkv, G*T, D)
    return out.view(B, Hq, T, D)


# Lazy: importing kernels JIT-decorates Triton functions, and on CPU that must happen after
# TRITON_INTERPRET=1 is set (the codecomplete command sets it before Triton is imported).
@functools.cache
def _flash_decode():
    from kernels import flash_decode
    return flash_decode


@functools.cache
def _reference_decode():
    from kernels.reference import eager_decode
    return eager_decode

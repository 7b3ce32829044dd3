"""Attention: prefill always through PyTorch SDPA; the decode step through one of three backends.

    flash  kernels.flash_decode: Triton split-KV Flash-Decoding (graph-safe; the GPU default)
    sdpa   torch's scaled_dot_product_attention for the single query token too (the CPU default)
    eager  kernels.reference.flash_decode: repeat_kv + matmul + softmax, the "standard attention" baseline

All three read the same (B, Hkv, S, D) cache with per-sequence lengths, so switching is free.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

BACKENDS = ("flash", "sdpa", "eager")


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of T new queries over a cached prefix plus themselves.

    q (1, Hq, T, D); k, v (1, Hkv, S, D) with S = prefix + T. Returns (1, Hq, T, D).
    The causal triangle is aligned bottom-right (query i sees keys 0..S-T+i), which SDPA's
    flash and efficient kernels support natively, so no (T, S) mask is ever built on the GPU.
    """
    mask = causal_lower_right(q.shape[2], k.shape[2])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


def decode_attention(backend: str, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     cache_seqlens: torch.Tensor, exact: bool) -> torch.Tensor:
    """One query token per sequence over its cache.

    q (B, Hq, D); k_cache, v_cache (B, Hkv, S, D); cache_seqlens int32 (B,), the valid length of each row.
    `exact` promises every row holds exactly S tokens, so SDPA can skip the mask (and use its fastest kernels).
    Returns (B, Hq, D).
    """
    if backend == "flash":
        return _flash_decode()(q, k_cache, v_cache, cache_seqlens)
    if backend == "eager":
        return _reference_decode()(q, k_cache, v_cache, cache_seqlens)
    if backend == "sdpa":
        B, Hq, D = q.shape
        Hkv, S = k_cache.shape[1], k_cache.shape[2]
        # GQA as a short query sequence: the query heads sharing a KV head become that head's queries,
        # so K/V are read once per group, never repeated (and the CPU kernels avoid a slow path).
        q_grouped = q.view(B, Hkv, Hq // Hkv, D)                                       # (B, Hkv, G, D)
        mask = None if exact else (torch.arange(S, device=q.device) < cache_seqlens[:, None])[:, None, None, :]
        out = F.scaled_dot_product_attention(q_grouped, k_cache, v_cache, attn_mask=mask)  # mask (B, 1, 1, S)
        return out.view(B, Hq, D)
    raise ValueError(f"unknown attention backend {backend!r} (choose from {', '.join(BACKENDS)})")


# Lazy: importing kernels JIT-decorates Triton functions, and on CPU that must happen after
# TRITON_INTERPRET=1 is set (the codecomplete command sets it before Triton is imported).
@functools.cache
def _flash_decode():
    from kernels import flash_decode
    return flash_decode


@functools.cache
def _reference_decode():
    from kernels.reference import flash_decode
    return flash_decode

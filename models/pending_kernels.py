"""TEMPORARY: the kernel contract of issues 11 and 13 (ARCHITECTURE.md), until the kernels branch lands.

`append_kv`, and `flash_decode` / `reference_decode` taking q (B, Hq, T, D) and fp8 caches with
k_scale / v_scale (B, Hkv, S), written on top of what `kernels` has today: plain PyTorch for the append,
one single-token launch per query token for T > 1, and the fp8 cache dequantized before attention.
Correct, not fast. Delete this module and import from `kernels` once its versions are on main.
"""

from __future__ import annotations

import torch

FP8_MAX = 448.0   # largest finite float8_e4m3fn


def append_kv(k_new, v_new, k_cache, v_cache, input_pos, k_scale=None, v_scale=None):
    """Write k_new, v_new (B, Hkv, T, D) at positions input_pos[b] .. input_pos[b] + T - 1 of row b.

    An fp8 cache is quantized on the way in: scale = amax / 448 per token and KV head (1 where amax is 0).
    """
    B, _, T, _ = k_new.shape
    pos = input_pos[:, None] + torch.arange(T, device=input_pos.device)        # (B, T)
    rows = torch.arange(B, device=input_pos.device)[:, None]                      # (B, 1)
    for new, cache, scale in ((k_new, k_cache, k_scale), (v_new, v_cache, v_scale)):
        new = new.transpose(1, 2)                                                  # (B, T, Hkv, D)
        if scale is None:
            cache[rows, :, pos] = new.to(cache.dtype)
            continue
        amax = new.float().abs().amax(dim=-1)                                      # (B, T, Hkv)
        s = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
        cache[rows, :, pos] = (new.float() / s[..., None]).to(cache.dtype)
        scale[rows, :, pos] = s


def _multi_token(single, q, k_cache, v_cache, cache_seqlens, k_scale, v_scale):
    if k_scale is not None:
        from models.kv_cache import dequantize
        k_cache, v_cache = dequantize(k_cache, k_scale, q.dtype), dequantize(v_cache, v_scale, q.dtype)
    if q.dim() == 3:
        return single(q, k_cache, v_cache, cache_seqlens)
    B, _, T, _ = q.shape
    if cache_seqlens is None:
        cache_seqlens = torch.full((B,), k_cache.shape[2], dtype=torch.int32, device=q.device)
    # Query t sees keys [0, len - T + t]: a one-token call with that length.
    return torch.stack([single(q[:, :, t], k_cache, v_cache, cache_seqlens - (T - 1 - t))
                        for t in range(T)], dim=2)


def flash_decode(q, k_cache, v_cache, cache_seqlens=None, *, k_scale=None, v_scale=None):
    from kernels import flash_decode as kernel
    return _multi_token(kernel, q, k_cache, v_cache, cache_seqlens, k_scale, v_scale)


def reference_decode(q, k_cache, v_cache, cache_seqlens=None, *, k_scale=None, v_scale=None):
    from kernels.reference import flash_decode as reference
    return _multi_token(reference, q, k_cache, v_cache, cache_seqlens, k_scale, v_scale)


"""TEMPORARY: the kernel contract of issues 11 and 13 (ARCHITECTURE.md), until the kernels branch lands.

`append_kv`, and `flash_decode` / `reference_decode` taking q (B, Hq, T, D) and 8-bit caches (fp8 e4m3
or int8) with k_scale / v_scale (B, Hkv, S), written on top of what `kernels` has today: plain PyTorch for
the append, one single-token launch per query token for T > 1, and the 8-bit cache dequantized first.
Correct, not fast. Delete this module and import from `kernels` once its versions are on main.
"""

from __future__ import annotations

import torch

QMAX = {torch.float8_e4m3fn: 448.0, torch.int8: 127.0}   # the largest value of each 8-bit type


def append_kv(k_new, v_new, k_cache, v_cache, input_pos, k_scale=None, v_scale=None):
    """Write k_new, v_new (B, Hkv, T, D) at positions input_pos[b] .. input_pos[b] + T - 1 of row b.

    An 8-bit cache is quantized on the way in: scale = amax / qmax per token and KV head (1 where amax is 0),
    qmax 448 for e4m3 (cast: round to nearest even), 127 for int8 (rounded to nearest even).
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
        s = torch.where(amax > 0, amax / QMAX[cache.dtype], torch.ones_like(amax))
        scaled = new.float() / s[..., None]
        cache[rows, :, pos] = (scaled.round() if cache.dtype == torch.int8 else scaled).to(cache.dtype)
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


"""Input checks shared by the Triton kernels and the PyTorch reference.

Every malformed call fails here with a ValueError that names the problem, before anything
reaches Triton (whose own errors on bad shapes are crashes or silent garbage).
"""

from __future__ import annotations

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256


def check_decode_inputs(q, k_cache, v_cache, cache_seqlens, num_splits, *,
                        dtypes=SUPPORTED_DTYPES) -> tuple[int, int, int, int, int]:
    """Validate a decode-attention call; returns (B, Hq, D, Hkv, S)."""
    for name, t, ndim in (("q", q, 3), ("k_cache", k_cache, 4), ("v_cache", v_cache, 4)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != ndim:
            raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
        if t.dtype not in dtypes:
            names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
            raise ValueError(f"{name} has dtype {t.dtype}; supported: {names}")
    B, Hq, D = q.shape
    _, Hkv, S, _ = k_cache.shape
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} differ in shape")
    if k_cache.shape[0] != B or k_cache.shape[3] != D:
        raise ValueError(f"q {tuple(q.shape)} does not match the cache (B, Hkv, S, D) = {tuple(k_cache.shape)}")
    if not q.dtype == k_cache.dtype == v_cache.dtype:
        raise ValueError(f"q, k_cache, v_cache must share a dtype, got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    if not q.device == k_cache.device == v_cache.device:
        raise ValueError(f"q, k_cache, v_cache must be on one device, got {q.device}, {k_cache.device}, {v_cache.device}")
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"query heads ({Hq}) must be a multiple of key/value heads ({Hkv})")
    if not MIN_HEAD_DIM <= D <= MAX_HEAD_DIM:
        raise ValueError(f"head dim {D} not supported: must be in {MIN_HEAD_DIM}..{MAX_HEAD_DIM}")
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dimension (stride 1), got strides {t.stride()}")
    if num_splits is not None and (not isinstance(num_splits, int) or num_splits < 1):
        raise ValueError(f"num_splits must be a positive int or None, got {num_splits!r}")
    if cache_seqlens is not None:
        _check_seqlens(cache_seqlens, B, S, q.device)
    return B, Hq, D, Hkv, S


def _check_seqlens(cache_seqlens, B: int, S: int, device) -> None:
    if not isinstance(cache_seqlens, torch.Tensor) or cache_seqlens.dtype != torch.int32:
        got = cache_seqlens.dtype if isinstance(cache_seqlens, torch.Tensor) else type(cache_seqlens).__name__
        raise ValueError(f"cache_seqlens must be an int32 tensor, got {got}")
    if cache_seqlens.shape != (B,):
        raise ValueError(f"cache_seqlens must have shape ({B},), got {tuple(cache_seqlens.shape)}")
    if cache_seqlens.device != device:
        raise ValueError(f"cache_seqlens is on {cache_seqlens.device}, the cache on {device}")
    # Reading the values needs a host sync, which a CUDA graph capture forbids: the decode loop
    # captures calls whose lengths it maintains itself, so the check is skipped only there.
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return
    lo, hi = int(cache_seqlens.min()), int(cache_seqlens.max())
    if lo < 0 or hi > S:
        raise ValueError(f"cache_seqlens must lie in 0..{S} (the cache length), got values in {lo}..{hi}")

"""Attention: prefill through PyTorch SDPA (an fp8 cache's, on a GPU, through kernels/prefill_exact.py); the decode
step through one of three backends.

    flash  kernels.flash_decode: Triton split-KV Flash-Decoding (graph-safe; the GPU default)
    sdpa   torch's scaled_dot_product_attention for the decode tokens too (the CPU default)
    eager  kernels.reference.eager_decode: repeat_kv + matmul + softmax in the model's dtype, the
           "standard attention" baseline (transformers' eager attention)

All three read the same (B, Hkv, S, D) cache with per-sequence lengths, so switching is free; an 8-bit
cache (fp8, int8) is read by flash and eager with its scales and dequantized for sdpa, and each query's exact
sink and window tokens (`kernels.reference.ExactTokens`, models/kv_cache.py) from their exact copies: by
kernels.flash_decode_exact_window, its PyTorch twin (eager), and sdpa and prefill over the dequantized cache and
the exact tokens side by side, each key masked to the one set it belongs to for its query.
A decode step carries T >= 1 tokens per sequence (1 + drafts under verification), causal among themselves.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from models.kv_cache import CacheView

BACKENDS = ("flash", "sdpa", "eager")
# Head dims flash and eager take: the Triton kernels' range (kernels.validation), which their PyTorch twin
# shares; sdpa takes any. A constant here, as importing kernels would import Triton (see below).
KERNEL_HEAD_DIMS = range(16, 257)
# A/B switch (bench/gpu/prefill_8bit.py --masked): False runs an fp8 cache's prefill through the masked softmax on a
# GPU too, as before the Triton kernel.
PREFILL_EXACT_KERNEL = True


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of T new queries over a cached prefix plus themselves.

    q (1, Hq, T, D); k, v (1, Hkv, S, D) with S = prefix + T. Returns (1, Hq, T, D).
    The causal triangle is aligned bottom-right (query i sees keys 0..S-T+i), which SDPA's
    flash and efficient kernels support natively, so no (T, S) mask is ever built on the GPU.
    """
    T, S = q.shape[2], k.shape[2]
    if T == S:          # no prefix: both alignments are the one causal triangle
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])
    # (imported here: torch.nn.attention.bias imports torch._dynamo, 0.8 s of every start on a CPU, where nothing
    # else needs it and a first prompt has no prefix)
    from torch.nn.attention.bias import causal_lower_right

    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(T, S),
                                          enable_gqa=q.shape[1] != k.shape[1])


def import_prefix_mask() -> None:
    """Import now what prefill_attention imports at the first prompt after a cached prefix (torch.nn.attention.bias,
    and with it torch._dynamo: 1.0-1.6 s of that prompt's prefill on a 2-core CPU), for a long-lived process (a
    server, before it serves) to pay it outside its requests."""
    from torch.nn.attention.bias import causal_lower_right  # noqa: F401


def prefill_attention_exact(q: torch.Tensor, cache: CacheView, prior, k_new: torch.Tensor, v_new: torch.Tensor,
                            start: int) -> torch.Tensor:
    """`prefill_attention` over an 8-bit cache with exact sink and window tokens: query i (at start + t) reads
    keys sink .. i - window from `cache` (the row's (1, Hkv, S, D) bytes and (1, Hkv, S) scales as stored,
    S = start + T), and its sink and window keys exact: the prefix's from `prior` (`ExactTokens`, the row's copies
    of positions before `start`), the span's own from k_new, v_new (1, Hkv, T, D), what the model computed.
    Returns (1, Hq, T, D). On a GPU one Triton kernel (kernels/prefill_exact.py: a flash forward that dequantizes
    the 8-bit tiles as it loads them, whose sink and band tiles read the exact copies); elsewhere one masked softmax
    over the dequantized cache and the exact sets side by side (`kernels.reference`), which SDPA cannot run through
    its fast causal kernels."""
    if PREFILL_EXACT_KERNEL and _prefill_kernel_applies(q):
        return _prefill_exact()(q, cache.k, cache.v, prior, k_new, v_new, start, k_scale=cache.k_scale,
                                v_scale=cache.v_scale)
    k, v = cache.dequantized(q.dtype)                                   # (1, Hkv, S, D)
    return _reference().prefill_attention_exact(q, k, v, prior, k_new, v_new, start)


def _prefill_kernel_applies(q: torch.Tensor) -> bool:
    """Whether the Triton prefill kernel takes this call: CUDA, 16-bit (an fp32 model keeps the masked softmax: the
    kernel's fp32 dots would run on the CUDA cores), and a head dim the kernels take."""
    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] in KERNEL_HEAD_DIMS


def decode_attention(backend: str, q: torch.Tensor, cache: CacheView, cache_seqlens: torch.Tensor,
                     exact: bool) -> torch.Tensor:
    """The last T tokens of each sequence over its cache, causal among themselves (bottom-right).

    q (B, Hq, T, D); cache (B, Hkv, S, D) (+ 8-bit scales (B, Hkv, S)); cache_seqlens int32 (B,), the valid
    length of each row, the T new tokens included: query t sees keys [0, len - T + t].
    `exact` promises every row holds exactly S tokens, so SDPA can skip the mask for T = 1 (its fastest kernels).
    Returns (B, Hq, T, D).
    """
    if cache.exact is not None:
        return _decode_exact(backend, q, cache, cache_seqlens)
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


def _decode_exact(backend: str, q: torch.Tensor, cache: CacheView, cache_seqlens: torch.Tensor) -> torch.Tensor:
    """`decode_attention` over an 8-bit cache with exact sink and window tokens (cache.exact)."""
    if backend in ("flash", "eager"):
        # eager: the float32 PyTorch twin of the kernels' arithmetic (no model-dtype baseline of this cache)
        fn = _flash_decode_exact() if backend == "flash" else _reference_decode_exact()
        return fn(q, cache.k, cache.v, cache_seqlens, k_scale=cache.k_scale, v_scale=cache.v_scale, exact=cache.exact)
    if backend != "sdpa":
        raise ValueError(f"unknown attention backend {backend!r} (choose from {', '.join(BACKENDS)})")
    reference = _reference()
    B, Hq, T, D = q.shape
    k, v = cache.dequantized(q.dtype)                                                   # (B, Hkv, S, D)
    Hkv, S = k.shape[1], k.shape[2]
    G = Hq // Hkv
    i = reference.query_positions(cache_seqlens, T)                                     # (B, T)
    # Only the slots of the step's sink and window positions (N = sink + window + T - 1), not the whole ring
    exact = reference.gather_exact(cache.exact, i[:, -1] + 1, cache.exact.window + T - 1)
    keys = torch.cat((k, exact.k.to(q.dtype)), dim=2)                                   # (B, Hkv, S + N, D)
    values = torch.cat((v, exact.v.to(q.dtype)), dim=2)
    mask = torch.cat((reference.quantized_keys_visible(i, S, exact.sink, exact.window),
                      reference.exact_slots_visible(exact.pos, i, exact.sink, exact.window)), dim=-1)  # (B, T, S+N)
    mask = mask[:, None].expand(B, G, T, S + exact.pos.shape[1]).reshape(B, 1, G * T, -1)          # (B, 1, G*T, S+N)
    out = F.scaled_dot_product_attention(q.reshape(B, Hkv, G * T, D), keys, values, attn_mask=mask)
    return out.view(B, Hq, T, D)


def load_kernels() -> None:
    """Import the Triton attention kernels now: a GPU engine calls it before it compiles or captures anything, so that
    their first use (kernels/__init__ loads them lazily) falls in no torch.compile trace or CUDA-graph capture."""
    _flash_decode()


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


@functools.cache
def _reference():
    from kernels import reference
    return reference


@functools.cache
def _prefill_exact():
    from kernels.prefill_exact import prefill_attention_exact
    return prefill_attention_exact


@functools.cache
def _flash_decode_exact():
    from kernels import flash_decode_exact_window
    return flash_decode_exact_window


@functools.cache
def _reference_decode_exact():
    from kernels.reference import flash_decode_exact_window
    return flash_decode_exact_window

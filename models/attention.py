"""Attention: prefill always through PyTorch SDPA; the decode step through one of three backends.

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


def prefill_attention_exact(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prior, k_new: torch.Tensor,
                            v_new: torch.Tensor, start: int) -> torch.Tensor:
    """`prefill_attention` over an 8-bit cache with exact sink and window tokens: query i (at start + t) reads
    keys sink .. i - window from k, v (1, Hkv, S, D), the cache dequantized (S = start + T), and its sink and
    window keys exact: the prefix's from `prior` (`ExactTokens`, the row's copies of positions before `start`),
    the span's own from k_new, v_new (1, Hkv, T, D), what the model computed. Every key in exactly one set, so
    one softmax over the three side by side, masked, is exact. Returns (1, Hq, T, D)."""
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] % 8 == 0:
        out = prefill_attention_two_pass(q, k, v, prior, k_new, v_new, start, _flash_lower_right)
        if out is not None:
            return out
    return _prefill_attention_masked(q, k, v, prior, k_new, v_new, start)


def _prefill_attention_masked(q, k, v, prior, k_new, v_new, start) -> torch.Tensor:
    """prefill_attention_exact as one masked softmax (any device; slow at long prompts: SDPA cannot take its
    fast causal kernels with an arbitrary mask, 3.6x the time of the bf16 cache's prefill at 32k on an H200)."""
    T, S = q.shape[2], k.shape[2]
    reference = _reference()
    sink, window = prior.sink, prior.window
    keys = torch.cat((k, prior.k.to(k.dtype), k_new.to(k.dtype)), dim=2)                 # (1, Hkv, S + N + T, D)
    values = torch.cat((v, prior.v.to(v.dtype), v_new.to(v.dtype)), dim=2)
    span = torch.arange(start, start + T, device=q.device)[None]                          # (1, T) positions
    out = torch.empty_like(q)                                                            # (1, Hq, T, D)
    # Queries a block at a time: the mask is (block, S + N + T) booleans, not T x 2S at a long prompt.
    block = max(1, (1 << 26) // keys.shape[2])
    for first in range(0, T, block):
        i = span[:, first:first + block]                                                 # (1, t) query positions
        mask = torch.cat((reference.quantized_keys_visible(i, S, sink, window),
                          reference.exact_slots_visible(prior.pos, i, sink, window),
                          reference.exact_slots_visible(span, i, sink, window)), dim=-1)  # (1, t, S + N + T)
        out[:, :, first:first + block] = F.scaled_dot_product_attention(
            q[:, :, first:first + block], keys, values, attn_mask=mask[:, None], enable_gqa=q.shape[1] != k.shape[1])
    return out


PREFILL_BAND_CHUNK = 256     # queries a step of the exact band: scores (Hq, 256, 287) floats, a few launches each


def prefill_attention_two_pass(q, k, v, prior, k_new, v_new, start: int, rough_partial):
    """prefill_attention_exact as two partials of one softmax merged by their log-sum-exp: the 8-bit keys
    (positions sink .. i - window for the query at i: a causal mask aligned bottom-right on that span, which
    FlashAttention runs as it is, `rough_partial`) and the exact ones (at most sink + window a query: a band
    beside the diagonal and the first tokens, gathered by position). Returns (1, Hq, T, D), or None where a
    window position has no exact copy (the caller's masked softmax says what it reads then)."""
    _, Hq, T, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    sink, window = prior.sink, prior.window
    scale = D ** -0.5
    end = start + T
    # The exact keys by position: the prefix's copies (stale drafts past `start` left out), then the span's own.
    pos = prior.pos[0]                                                                   # (N,)
    keep = (pos >= 0) & (pos < start)
    slot_of = torch.full((end,), -1, dtype=torch.long, device=q.device)                  # position -> index
    slot_of[pos[keep]] = torch.nonzero(keep).flatten()
    slot_of[start:] = torch.arange(pos.shape[0], pos.shape[0] + T, device=q.device)
    exact_k = torch.cat((prior.k[0], k_new[0].to(prior.k.dtype)), dim=1)                  # (Hkv, N + T, D)
    exact_v = torch.cat((prior.v[0], v_new[0].to(prior.v.dtype)), dim=1)
    lo = max(0, start - (window - 1))                  # the first position a query of the span reads in its band
    first = slot_of[: min(sink, end)]                  # the sink's positions
    band = slot_of[lo:end]
    if bool((first < 0).any()) or bool((band < 0).any()):
        return None
    pad = (window - 1) - (start - lo)                  # band slots before position 0: masked
    band_k = torch.nn.functional.pad(exact_k[:, band], (0, 0, pad, 0))                   # (Hkv, window - 1 + T, D)
    band_v = torch.nn.functional.pad(exact_v[:, band], (0, 0, pad, 0))
    sink_k, sink_v = exact_k[:, first], exact_v[:, first]                                 # (Hkv, s, D)
    qf = q[0].float().reshape(Hkv, G, T, D) * scale                                        # (Hkv, G, T, D)
    sink_k, sink_v = sink_k.float()[:, None], sink_v.float()[:, None]                     # (Hkv, 1, s, D)
    sink_pos = torch.arange(first.shape[0], device=q.device)
    out_b = torch.empty(Hkv, G, T, D, device=q.device)
    lse_b = torch.empty(Hkv, G, T, device=q.device)
    # Queries CHUNK at a time against the keys their bands span (CHUNK + window - 1, dense, masked to the band):
    # a few matmuls a chunk instead of a copy of every query's own window of keys.
    for t0 in range(0, T, PREFILL_BAND_CHUNK):
        t1 = min(T, t0 + PREFILL_BAND_CHUNK)
        keys, values = band_k[:, None, t0:t1 + window - 1].float(), band_v[:, None, t0:t1 + window - 1].float()
        key_pos = start - (window - 1) + torch.arange(t0, t1 + window - 1, device=q.device)   # (C + window - 1,)
        query_pos = start + torch.arange(t0, t1, device=q.device)[:, None]                      # (C, 1)
        in_band = (key_pos <= query_pos) & (key_pos > query_pos - window) & (key_pos >= sink)   # (C, C + window - 1)
        scores = torch.cat((
            (qf[:, :, t0:t1] @ keys.transpose(-1, -2)).masked_fill(~in_band, float("-inf")),
            (qf[:, :, t0:t1] @ sink_k.transpose(-1, -2)).masked_fill(sink_pos > query_pos, float("-inf"))), dim=-1)
        lse = torch.logsumexp(scores, dim=-1)                                            # (Hkv, G, C)
        probs = torch.exp(scores - lse[..., None])                  # every query sees itself: lse is finite
        band = keys.shape[2]
        out_b[:, :, t0:t1] = probs[..., :band] @ values + probs[..., band:] @ sink_v
        lse_b[:, :, t0:t1] = lse
    out_b, lse_b = out_b.view(1, Hq, T, D), lse_b.view(1, Hq, T)
    span = end - window - sink                          # 8-bit keys the last query reads
    if span <= 0:
        return out_b.to(q.dtype)
    out_a, lse_a = rough_partial(q, k[:, :, sink:sink + span], v[:, :, sink:sink + span], scale)
    lse_a = lse_a.masked_fill(torch.arange(T, device=q.device) < T - span, float("-inf"))   # rows with no key
    return _reference().merge_partials(out_a, lse_a, out_b, lse_b)[0].to(q.dtype)


def _flash_lower_right(q, k, v, scale):
    """FlashAttention over k, v (1, Hkv, Sk, D) with the causal mask aligned bottom-right (query t sees keys up to
    Sk - T + t: its op's is_causal, as torch.nn.attention.bias.causal_lower_right dispatches to it), and its
    log-sum-exp: (out (1, Hq, T, D), lse float32 (1, Hq, T)); a row without keys gets no finite lse."""
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)        # (1, Hq, Sk, D)
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention(
        q, k.to(q.dtype), v.to(q.dtype), 0.0, is_causal=True, return_debug_mask=False, scale=scale)[:2]
    return out, lse


def reference_lower_right(q, k, v, scale):
    """_flash_lower_right's arithmetic in PyTorch (float32; any device): for tests and the CPU."""
    T, Sk = q.shape[2], k.shape[2]
    visible = torch.arange(Sk, device=q.device) <= Sk - T + torch.arange(T, device=q.device)[:, None]   # (T, Sk)
    return _reference().masked_partial(q.float(), k.float(), v.float(), visible[None], scale)


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
    exact = cache.exact
    k, v = cache.dequantized(q.dtype)                                                   # (B, Hkv, S, D)
    Hkv, S = k.shape[1], k.shape[2]
    G = Hq // Hkv
    keys = torch.cat((k, exact.k.to(q.dtype)), dim=2)                                   # (B, Hkv, S + N, D)
    values = torch.cat((v, exact.v.to(q.dtype)), dim=2)
    i = reference.query_positions(cache_seqlens, T)                                     # (B, T)
    mask = torch.cat((reference.quantized_keys_visible(i, S, exact.sink, exact.window),
                      reference.exact_slots_visible(exact.pos, i, exact.sink, exact.window)), dim=-1)  # (B, T, S+N)
    mask = mask[:, None].expand(B, G, T, S + exact.pos.shape[1]).reshape(B, 1, G * T, -1)          # (B, 1, G*T, S+N)
    out = F.scaled_dot_product_attention(q.reshape(B, Hkv, G * T, D), keys, values, attn_mask=mask)
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


@functools.cache
def _reference():
    from kernels import reference
    return reference


@functools.cache
def _flash_decode_exact():
    from kernels import flash_decode_exact_window
    return flash_decode_exact_window


@functools.cache
def _reference_decode_exact():
    from kernels.reference import flash_decode_exact_window
    return flash_decode_exact_window

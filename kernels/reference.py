"""Plain-PyTorch decode attention, cache append and fused dense kernels: the "standard attention" path and the
tests' oracle.

Functions with the contracts of their Triton twins (ARCHITECTURE.md, "Contracts added for issues 9-15"):
- `flash_decode`: repeat_kv + matmul + softmax, computed in float32 (float64 stays float64): the tests'
  oracle; one or T query tokens per sequence (causal, aligned bottom-right); 16/32-bit caches, or 8-bit
  caches dequantized first;
- `eager_decode`: the same steps in the model's dtype, as transformers' eager attention takes them: the
  "standard attention" baseline the benchmarks compare with (the float32 oracle is 1.7-3.8x slower);
- `split_kv_decode`: the same split-KV algorithm as the Triton kernels (partial softmax per split,
  then a log-sum-exp combine), so each step of the kernel has a readable twin;
- `append_kv`: writes new keys/values at given positions, quantizing them for an 8-bit cache;
- `flash_decode_exact_window`: an 8-bit cache whose sink and window tokens are read exact (`ExactTokens`),
  the arithmetic of kernels/exact_window.py;
- `prefill_attention_exact`: prefill over such a cache, one masked softmax (the models' CPU path; on a GPU
  kernels/prefill_exact.py);
- `quantize_fp8`, `quantize_int8` / `dequantize`: the 8-bit arithmetic every path shares;
- `fused_gemv`, `norm_swiglu`, `qkv_rope`: the fused one-token step's dense kernels (kernels/fused_gemv.py),
  in float64.
"""

from __future__ import annotations

import torch

from kernels.validation import (FP8_DTYPE, SCALED_DTYPES, check_append_inputs, check_decode_inputs,
                                ExactTokens, check_exact_tokens, softmax_scale_of)

FP8_MAX = 448.0  # largest finite float8_e4m3fn
INT8_MAX = 127.0  # symmetric int8: -127..127


def _lengths(cache_seqlens: torch.Tensor | None, B: int, S: int, device) -> torch.Tensor:
    if cache_seqlens is None:
        return torch.full((B,), S, dtype=torch.int64, device=device)
    return cache_seqlens.to(device=device, dtype=torch.int64)


def _compute_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def quant_scale(amax: torch.Tensor, qmax: float = FP8_MAX) -> torch.Tensor:
    """float32 amax (...) -> float32 scales amax / qmax (448 for e4m3, 127 for int8) rounded once (IEEE),
    1 where that is 0 (amax 0, or a denormal under qmax x 2^-149: the values would be 0 / 0, NaN in e4m3).

    Not `amax / 448`: on CUDA PyTorch divides by a Python number as `amax * (1 / 448)` (an fp32
    reciprocal, then a rounded product), which differs from the correctly rounded quotient for 55%
    of float32 mantissas. The quotient of two floats computed in float64 and rounded to float32 is
    the correctly rounded fp32 quotient (53 >= 2 x 24 + 2 bits), and stays so when float64 divides
    by a reciprocal too: the same scales on every device, equal to the kernel's `div_rn`.
    """
    scale = (amax.double() / qmax).float()
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def quantize_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 values and float32 scales of x (..., D), one scale per row: amax / 448, 1 where amax is 0.

    Returns (values (..., D) float8_e4m3fn, scale (...) float32) with x ~ values.float() * scale.
    The kernels quantize with exactly this arithmetic (fp32 amax, correctly rounded divisions,
    clamp, round to nearest even); tensor-by-tensor division is IEEE on CPU and CUDA alike.
    """
    xf = x.float()
    scale = quant_scale(xf.abs().amax(dim=-1))                            # (...)
    values = (xf / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return values, scale


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 values and float32 scales of x (..., D), one scale per row: amax / 127 (1 where amax is 0),
    values rounded to nearest even. The layout and arithmetic of `quantize_fp8`, 127 uniform steps
    instead of e4m3's 3-bit mantissas (the accurate 8-bit cache: models/kv_cache.py has the figures)."""
    xf = x.float()
    scale = quant_scale(xf.abs().amax(dim=-1), INT8_MAX)                 # (...)
    values = (xf / scale[..., None]).round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return values, scale


def quantize(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., D) in an 8-bit cache dtype (float8_e4m3fn or int8) with its per-row scales."""
    if dtype not in SCALED_DTYPES:  # (any other dtype came back as e4m3, asked-for e5m2 included)
        raise ValueError(f"quantize makes 8-bit caches, float8_e4m3fn or int8, not {dtype}")
    return quantize_int8(x) if dtype == torch.int8 else quantize_fp8(x)


def e4m3_steps_apart(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int32 count of representable e4m3 values between a and b (float8_e4m3fn or their uint8 bytes):
    codes are sign and magnitude, monotonic in the magnitude; +0 and -0 are 0 steps apart."""
    a, b = a.view(torch.uint8).int(), b.view(torch.uint8).int()
    signed_a = torch.where(a >> 7 == 1, -(a & 0x7F), a & 0x7F)
    signed_b = torch.where(b >> 7 == 1, -(b & 0x7F), b & 0x7F)
    return (signed_a - signed_b).abs()


def dequantize(cache: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """cache (B, Hkv, S, D) in `dtype`; an 8-bit cache is multiplied by its (B, Hkv, S) scales."""
    # contiguous whatever the cache's layout (a sequence-major V): SDPA's fast backends need a unit last stride
    if scale is None:
        return cache.to(dtype, memory_format=torch.contiguous_format)
    return cache.to(dtype, memory_format=torch.contiguous_format) * scale.to(dtype)[..., None]


def visible_keys(lengths: torch.Tensor, T: int, S: int) -> torch.Tensor:
    """(B, T, S) bool: key j is visible to query token t of sequence b iff j <= length_b - T + t.

    The T query tokens are the last T of each sequence (causal, aligned bottom-right); T = 1 is the
    plain decode step, which sees keys 0..length-1.
    """
    last = lengths[:, None] - T + torch.arange(T, device=lengths.device)   # (B, T) last visible key
    return torch.arange(S, device=lengths.device)[None, None, :] <= last[:, :, None]


def flash_decode(q, k_cache, v_cache, cache_seqlens=None, *, softmax_scale=None, num_splits=None,
                 return_lse=False, k_scale=None, v_scale=None):
    """Decode attention in plain PyTorch, with the contract of `kernels.flash_decode`.

    q: (B, Hq, D), or (B, Hq, T, D) for the last T tokens of each sequence (causal, bottom-right);
    k_cache, v_cache: (B, Hkv, S, D), in q's dtype or 8-bit (float8_e4m3fn, int8) with k_scale, v_scale float32
    (B, Hkv, S); cache_seqlens: int32 (B,) or None (= S).
    Returns out with q's shape and dtype, and lse (B, Hq) or (B, Hq, T) in float32 if return_lse.
    `num_splits` is accepted for signature parity and ignored: there is nothing to split here.
    """
    B, Hq, Hkv, S, D, T, _ = check_decode_inputs(q, k_cache, v_cache, cache_seqlens, num_splits,
                                                 k_scale=k_scale, v_scale=v_scale)
    scale = softmax_scale_of(softmax_scale, D)
    group = Hq // Hkv
    compute = _compute_dtype(q)
    q4 = q.to(compute).reshape(B, Hq, T, D)                                  # (B, Hq, T, D)
    k = dequantize(k_cache, k_scale, compute).repeat_interleave(group, dim=1)  # (B, Hq, S, D)
    v = dequantize(v_cache, v_scale, compute).repeat_interleave(group, dim=1)  # (B, Hq, S, D)
    scores = torch.einsum("bhtd,bhsd->bhts", q4, k) * scale                  # (B, Hq, T, S)
    lengths = _lengths(cache_seqlens, B, S, q.device)
    visible = visible_keys(lengths, T, S)                                     # (B, T, S)
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    # Slots past a row's length are ignored, as by the kernels: a probability of 0 times NaN garbage is still NaN.
    v = v.masked_fill((torch.arange(S, device=q.device) >= lengths[:, None])[:, None, :, None], 0.0)
    lse = torch.logsumexp(scores, dim=-1)                                     # (B, Hq, T)
    # exp(-inf - -inf) would be NaN for rows without keys; those rows get zeros instead.
    probs = torch.exp(scores - lse.masked_fill(lse == float("-inf"), 0.0)[..., None])
    out = torch.einsum("bhts,bhsd->bhtd", probs, v).to(q.dtype).reshape(q.shape)
    lse = lse.float().reshape(q.shape[:-1])
    return (out, lse) if return_lse else out


def eager_decode(q, k_cache, v_cache, cache_seqlens=None, *, softmax_scale=None, k_scale=None, v_scale=None):
    """Standard attention for a decode step, as transformers' eager Llama attention computes it: K and V
    repeated to every query head, scores and P @ V as matmuls in q's dtype, the softmax in float32 and
    rounded back to q's dtype. The benchmarks' "eager" baseline (a fair one: no float32 copy of the cache).

    q: (B, Hq, D) or (B, Hq, T, D); k_cache, v_cache: (B, Hkv, S, D) in q's dtype, or 8-bit with k_scale,
    v_scale float32 (B, Hkv, S) (dequantized to q's dtype first); cache_seqlens: int32 (B,) or None (= S).
    Returns out with q's shape and dtype.
    """
    B, Hq, Hkv, S, D, T, _ = check_decode_inputs(q, k_cache, v_cache, cache_seqlens, None,
                                                 k_scale=k_scale, v_scale=v_scale)
    scale = softmax_scale_of(softmax_scale, D)
    group = Hq // Hkv
    q4 = q.reshape(B, Hq, T, D)                                                    # (B, Hq, T, D)
    k, v = dequantize(k_cache, k_scale, q.dtype), dequantize(v_cache, v_scale, q.dtype)
    if group > 1:                                       # repeat_kv (which returns MHA's cache as it is)
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, Hq, S, D)
    scores = torch.matmul(q4, k.transpose(2, 3)) * scale                           # (B, Hq, T, S)
    visible = visible_keys(_lengths(cache_seqlens, B, S, q.device), T, S)           # (B, T, S)
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    probs = probs.nan_to_num(0.0)                       # a row without keys: zeros, as the kernels give
    return torch.matmul(probs, v).reshape(q.shape)


def split_kv_decode(q, k_cache, v_cache, cache_seqlens=None, *, softmax_scale=None, num_splits=1,
                    block_n=64, return_lse=False, k_scale=None, v_scale=None):
    """The Triton kernels' algorithm, step by step, in float32 PyTorch (float64 stays float64).

    Each sequence's valid keys are cut into `num_splits` ranges of whole `block_n` blocks (the last
    ranges may be empty, as in the kernel); each range yields a partial output normalised by its own
    softmax sum, plus its log-sum-exp; the combine rescales the partials by exp(lse_i - lse). With T
    query tokens a range may hold no key visible to an early token: that partial is 0 with lse -inf.
    """
    B, Hq, Hkv, S, D, T, _ = check_decode_inputs(q, k_cache, v_cache, cache_seqlens, num_splits,
                                                 k_scale=k_scale, v_scale=v_scale)
    scale = softmax_scale_of(softmax_scale, D)
    group = Hq // Hkv
    compute = _compute_dtype(q)
    q4 = q.to(compute).reshape(B, Hq, T, D)                                  # (B, Hq, T, D)
    k_all = dequantize(k_cache, k_scale, compute)                            # (B, Hkv, S, D)
    v_all = dequantize(v_cache, v_scale, compute)
    lengths = _lengths(cache_seqlens, B, S, "cpu").tolist()
    out = torch.zeros(B, Hq, T, D, dtype=compute, device=q.device)
    lse = torch.full((B, Hq, T), float("-inf"), dtype=compute, device=q.device)
    for b, length in enumerate(lengths):
        n_blocks = -(-length // block_n)
        blocks_per_split = max(1, -(-n_blocks // num_splits))
        last_key = length - T + torch.arange(T, device=q.device)                 # (T,)
        partial_out, partial_lse = [], []
        for start_block in range(0, n_blocks, blocks_per_split):
            lo, hi = start_block * block_n, min((start_block + blocks_per_split) * block_n, length)
            k = k_all[b, :, lo:hi].repeat_interleave(group, dim=0)             # (Hq, n, D)
            v = v_all[b, :, lo:hi].repeat_interleave(group, dim=0)             # (Hq, n, D)
            s = torch.einsum("htd,hnd->htn", q4[b], k) * scale                 # (Hq, T, n)
            visible = torch.arange(lo, hi, device=q.device)[None, :] <= last_key[:, None]  # (T, n)
            s = s.masked_fill(~visible, float("-inf"))
            m = s.amax(dim=-1, keepdim=True)
            m = m.masked_fill(m == float("-inf"), 0.0)                        # no visible key: p = 0
            p = torch.exp(s - m)
            l = p.sum(dim=-1, keepdim=True)                                    # (Hq, T, 1)
            partial_out.append(torch.einsum("htn,hnd->htd", p, v) / l.clamp_min(1e-30))
            partial_lse.append(torch.where(l > 0, m + torch.log(l), float("-inf")).squeeze(-1))
        if partial_out:
            lse_splits = torch.stack(partial_lse)                             # (splits, Hq, T)
            lse[b] = torch.logsumexp(lse_splits, dim=0)
            weights = torch.exp(lse_splits - lse[b].masked_fill(lse[b] == float("-inf"), 0.0))
            out[b] = (weights[..., None] * torch.stack(partial_out)).sum(dim=0)
    out = out.to(q.dtype).reshape(q.shape)
    lse = lse.float().reshape(q.shape[:-1])
    return (out, lse) if return_lse else out


def append_kv(k_new, v_new, k_cache, v_cache, input_pos, k_scale=None, v_scale=None):
    """Write k_new, v_new (B, Hkv, T, D) at positions input_pos[b] .. input_pos[b] + T - 1 of each
    cache row b (input_pos int64 (B,)). An 8-bit cache is quantized with `quantize` (one scale per
    token and KV head) and its scales written to k_scale, v_scale (B, Hkv, S). In place, no host sync
    beyond the validation (which is skipped while a CUDA graph is captured)."""
    B, Hkv, T, S, D, scaled = check_append_inputs(k_new, v_new, k_cache, v_cache, input_pos, k_scale, v_scale)
    pos = input_pos[:, None, None] + torch.arange(T, device=input_pos.device)  # (B, 1, T)
    rows = torch.arange(B, device=input_pos.device)[:, None, None]              # (B, 1, 1)
    heads = torch.arange(Hkv, device=input_pos.device)[None, :, None]           # (1, Hkv, 1)
    for new, cache, scale in ((k_new, k_cache, k_scale), (v_new, v_cache, v_scale)):
        if scaled:
            values, row_scale = quantize(new, cache.dtype)          # (B, Hkv, T, D), (B, Hkv, T)
            scale[rows, heads, pos] = row_scale
            # index_put on the bytes: fp8 indexing kernels are missing on some builds
            cache.view(torch.uint8)[rows, heads, pos] = values.view(torch.uint8)
        else:
            cache[rows, heads, pos] = new


# ---- the fused dense kernels of a batch-1 decode step (kernels/fused_gemv.py), in float64 ----------------

def _normed(x: torch.Tensor, norm_weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    x = x.double().reshape(-1)
    if norm_weight is None:
        return x
    return x * torch.rsqrt(x.pow(2).mean() + eps) * norm_weight.double()


def fused_gemv(x, weight, *, residual=None, norm_weight=None, eps=1e-5):
    """float64 [residual +] rms_norm(x)? @ weight^T: x (K,), weight (N, K) -> (N,)."""
    y = weight.double() @ _normed(x, norm_weight, eps)
    return y if residual is None else y + residual.double().reshape(-1)


def norm_swiglu(x, norm_weight, eps, w13):
    """float64 silu(gate) * up of rms_norm(x) @ w13 (2F, K)^T -> (F,)."""
    gate, up = (w13.double() @ _normed(x, norm_weight, eps)).chunk(2)
    return torch.nn.functional.silu(gate) * up


def qkv_rope(x, norm_weight, eps, wqkv, cos, sin, pos, n_heads, n_kv_heads):
    """float64 q, k, v heads ((Hq + 2 Hkv) * D,) of rms_norm(x) @ wqkv^T, q and k rotated (rotate-half) by
    the rows `pos` of the tables cos, sin (S_max, D)."""
    D = cos.shape[-1]
    y = (wqkv.double() @ _normed(x, norm_weight, eps)).view(-1, D)                 # (Hq + 2 Hkv, D)
    c, s = cos[pos].double().reshape(D), sin[pos].double().reshape(D)
    rot = y[:n_heads + n_kv_heads]
    y[:n_heads + n_kv_heads] = rot * c + torch.cat((-rot[:, D // 2:], rot[:, :D // 2]), dim=-1) * s
    return y.reshape(-1)


# ---- an 8-bit cache with exact sink and window tokens (kernels/exact_window.py) ---------------------------

def query_positions(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """int64 (B, T): the positions of each row's last T tokens (the queries of a decode step)."""
    return lengths.long()[:, None] - T + torch.arange(T, device=lengths.device)


def quantized_keys_visible(query_pos: torch.Tensor, S: int, sink: int, window: int) -> torch.Tensor:
    """(B, T, S) bool: cache slot j is read from the 8-bit cache by the query at query_pos (B, T) iff
    sink <= j <= i - window (every other visible key is exact)."""
    j = torch.arange(S, device=query_pos.device)
    return (j >= sink) & (j <= query_pos[:, :, None] - window)


def ring_slot(positions: torch.Tensor, sink: int, ring: int) -> torch.Tensor:
    """The slot of each position (any shape, int64) in exact tokens laid out as a cache keeps them
    (`ExactTokens`): the position itself below `sink`, else sink + (position - sink) % ring."""
    return torch.where(positions < sink, positions, sink + (positions - sink) % ring)


def gather_exact(exact: ExactTokens, end: torch.Tensor, ring: int) -> ExactTokens:
    """The exact tokens a reader needs near `end` (int (B,)), gathered by slot instead of scanning every slot:
    row b's copies of positions 0 .. sink-1 and end[b]-ring .. end[b]-1 (those below end[b]), laid out as a
    cache's with a ring of `ring` slots (`ring_slot`), so sink + ring slots whatever exact's N. A slot whose
    recorded position is not the one wanted (another lap of the ring, a rolled-back draft, none) comes out
    empty (pos -1; its K, V whatever the slot held): a stale copy is never taken for another position.
    Graph-safe (no host sync). Returns ExactTokens k, v (B, Hkv, sink + ring, D), pos (B, sink + ring)."""
    slots, pos = exact_gather_slots(exact.pos, end, exact.sink, ring)
    return take_exact(exact, slots, pos)


def exact_gather_slots(exact_pos: torch.Tensor, end: torch.Tensor, sink: int, ring: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """`gather_exact`'s indices from the slots' positions exact_pos (B, N) alone: which slot each of the sink + ring
    lanes takes (B, sink + ring) and the position it holds there (-1: none). A prefill reuses them in every layer,
    whose slots record the same positions (models/kv_cache.py `KVCache.prefill_indices`)."""
    lane = torch.arange(sink + ring, device=exact_pos.device)                              # (M,) new slots
    end = end.to(device=exact_pos.device, dtype=torch.int64)[:, None]                       # (B, 1)
    first = end - ring
    # ring lane s: the one position p in [end - ring, end) with ring_slot(p) = s, i.e. p = s (mod ring)
    wanted = torch.where(lane < sink, lane, first + (lane - first) % ring)                  # (B, M)
    use = (wanted >= 0) & (wanted < end) & ((lane < sink) | (wanted >= sink))   # (the sink lanes hold p < sink)
    slots = ring_slot(wanted.clamp_min(0), sink, exact_pos.shape[1] - sink)                 # (B, M) in exact
    return slots, torch.where(use & (exact_pos.gather(1, slots) == wanted), wanted, -1)     # (B, M) each


def take_exact(exact: ExactTokens, slots: torch.Tensor, pos: torch.Tensor) -> ExactTokens:
    """The exact tokens in slots (B, M) of `exact` as ExactTokens of M slots holding positions pos (B, M)."""
    B, Hkv, _, D = exact.k.shape
    index = slots[:, None, :, None].expand(B, Hkv, slots.shape[1], D)
    return ExactTokens(exact.k.gather(2, index), exact.v.gather(2, index), pos, exact.sink, exact.window)


def exact_slots_visible(pos: torch.Tensor, query_pos: torch.Tensor, sink: int, window: int) -> torch.Tensor:
    """(B, T, N) bool: exact slot n, holding position pos[b, n] (-1: none), is read by the query at
    query_pos[b, t] iff that position is one of its sink or window positions (and not after it)."""
    p, i = pos[:, None, :], query_pos[:, :, None]
    return (p >= 0) & (p <= i) & ((p < sink) | (p > i - window))


def masked_partial(q4: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor,
                   scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One partial of a split softmax: q4 (B, Hq, T, D) over k, v (B, Hkv, N, D) where visible (B, T, N), all in
    q4's dtype. Returns out (B, Hq, T, D) normalised by its own sum, and its lse (B, Hq, T): zeros and -inf
    where a query sees no key."""
    group = q4.shape[1] // k.shape[1]
    k, v = (t.to(q4.dtype).repeat_interleave(group, dim=1) for t in (k, v))       # (B, Hq, N, D)
    scores = torch.einsum("bhtd,bhnd->bhtn", q4, k) * scale                       # (B, Hq, T, N)
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)                                         # (B, Hq, T)
    probs = torch.exp(scores - lse.masked_fill(lse == float("-inf"), 0.0)[..., None])
    v = v.masked_fill(~visible.any(dim=1)[:, None, :, None], 0.0)                 # unread slots: 0 x NaN is NaN
    return torch.einsum("bhtn,bhnd->bhtd", probs, v), lse


def merge_partials(out_a, lse_a, out_b, lse_b) -> tuple[torch.Tensor, torch.Tensor]:
    """Two partials (out (B, Hq, T, D), lse (B, Hq, T)) of one softmax as its whole, in out_b's dtype (float32 or
    float64): each weighted by exp(its lse - the total's). A partial without keys (lse -inf) weighs 0 whatever
    its out holds; with neither, zeros and -inf."""
    lse = torch.logaddexp(lse_a.to(lse_b.dtype), lse_b)                           # (B, Hq, T)
    safe = lse.masked_fill(lse == float("-inf"), 0.0)
    part_a = torch.where((lse_a > float("-inf"))[..., None], out_a.to(out_b.dtype), 0.0)
    part_b = torch.where((lse_b > float("-inf"))[..., None], out_b, 0.0)
    out = part_a * torch.exp(lse_a.to(lse_b.dtype) - safe)[..., None] + part_b * torch.exp(lse_b - safe)[..., None]
    return out, lse


def flash_decode_exact_window(q, k_cache, v_cache, cache_seqlens=None, *, k_scale, v_scale, exact: ExactTokens,
                              softmax_scale=None, return_lse=False):
    """`flash_decode` over an 8-bit cache whose sink and window tokens are read exact (`ExactTokens`): in float32
    (float64 stays float64), the 8-bit keys dequantized. The arithmetic of `kernels.exact_window`: one partial
    over the 8-bit keys each query reads (sink <= j <= i - window), one over its exact slots, merged by their
    log-sum-exp; the exact slots gathered by position, as the kernel does (`gather_exact`). Arguments as
    `flash_decode`'s (the cache may also be one dequantized already, without scales);
    returns the same."""
    B, Hq, Hkv, S, D, T, _ = check_decode_inputs(q, k_cache, v_cache, cache_seqlens, None,
                                                 k_scale=k_scale, v_scale=v_scale)
    check_exact_tokens(exact, B, Hkv, D, q.device, scaled=True, query_tokens=T)   # (a cache dequantized already is read as it is)
    scale = softmax_scale_of(softmax_scale, D)
    compute = _compute_dtype(q)
    q4 = q.to(compute).reshape(B, Hq, T, D)                                       # (B, Hq, T, D)
    query_pos = query_positions(_lengths(cache_seqlens, B, S, q.device), T)       # (B, T)
    k, v = dequantize(k_cache, k_scale, compute), dequantize(v_cache, v_scale, compute)   # (B, Hkv, S, D)
    rough = masked_partial(q4, k, v, quantized_keys_visible(query_pos, S, exact.sink, exact.window), scale)
    # The step's queries read positions 0..sink-1 and i_0 - window + 1 .. i_{T-1}: those slots only, not all N
    near = gather_exact(exact, query_pos[:, -1] + 1, exact.window + T - 1)                 # sink + window + T - 1
    fine = masked_partial(q4, near.k, near.v, exact_slots_visible(near.pos, query_pos, exact.sink,
                                                                  exact.window), scale)
    out, lse = merge_partials(*rough, *fine)
    out, lse = out.to(q.dtype).reshape(q.shape), lse.float().reshape(q.shape[:-1])
    return (out, lse) if return_lse else out


def prefill_attention_exact(q, k, v, prior: ExactTokens, k_new, v_new, start: int, *, softmax_scale=None):
    """Causal prefill attention over an 8-bit cache with exact sink and window tokens, with the contract of
    `kernels.prefill_exact.prefill_attention_exact` (q (B, Hq, T, D) at positions start .. start + T - 1; k, v
    (B, Hkv, S, D), S >= start + T, the cache dequantized; prior `ExactTokens`, the row's exact copies of positions
    before `start`; k_new, v_new (B, Hkv, T, D) the span's own): query i reads keys sink .. i - window from k, v and
    its sink and window keys exact, the prefix's from the prior slot that records them (a position none records is
    read by neither), the span's from k_new, v_new. Every key in at most one set, so one softmax over the three side
    by side, each key masked to the set it belongs to, is exact: SDPA in q's dtype (the models' CPU path; float64
    stays float64). Returns (B, Hq, T, D)."""
    B, T, S = q.shape[0], q.shape[2], start + q.shape[2]
    k, v = k[:, :, :S], v[:, :, :S]
    sink, window = prior.sink, prior.window
    prior_pos = prior.pos.masked_fill(prior.pos >= start, -1)                          # (B, N) the prefix's only
    empty = (prior_pos < 0)[:, None, :, None]                  # unread slots: a masked NaN would still be NaN
    keys = torch.cat((k, prior.k.to(k.dtype).masked_fill(empty, 0.0), k_new.to(k.dtype)), dim=2)  # (B, Hkv, S+N+T, D)
    values = torch.cat((v, prior.v.to(v.dtype).masked_fill(empty, 0.0), v_new.to(v.dtype)), dim=2)
    span = torch.arange(start, start + T, device=q.device)[None].expand(B, T)           # (B, T) positions
    out = torch.empty_like(q)                                                           # (B, Hq, T, D)
    # Queries a block at a time: the mask is (block, S + N + T) booleans, not T x 2S at a long prompt.
    block = max(1, (1 << 26) // keys.shape[2])
    for first in range(0, T, block):
        i = span[:, first:first + block]                                                # (B, t) query positions
        mask = torch.cat((quantized_keys_visible(i, S, sink, window),
                          exact_slots_visible(prior_pos, i, sink, window),
                          exact_slots_visible(span, i, sink, window)), dim=-1)          # (B, t, S + N + T)
        out[:, :, first:first + block] = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, first:first + block], keys, values, attn_mask=mask[:, None], scale=softmax_scale,
            enable_gqa=q.shape[1] != k.shape[1])
    return out

"""The product's hot step on the fused dense kernels: one sequence, one new token, six kernels per layer.

A keystroke's completion decodes one sequence a token at a time, and on a GPU that step is a chain of
matrix-vector products whose neighbours (norms, RoPE, the cache write, SwiGLU, residuals) cost more in
launches than in bytes. `decode_one_token` runs each layer as

    qkv_rope -> attention (any backend) -> gemv(wo) + x -> norm_swiglu(w13) -> gemv(w2) + h

(kernels/fused_gemv.py), and the logits as one normed GEMV stored in float32. qkv_rope writes the cache
itself, quantizing an 8-bit one (no append kernel: on an H200 the append cost 1.8 µs a layer inside the
7B fp8 step, bench/results/NOTES.md), and writes an fp8 cache's exact sink and window copies beside it
(`KVCache.fused_exact`: as PyTorch scatters, with the slot's arithmetic, they were ten launches a layer and cost
the 7B step 17% at 16k, Run 40); a cache of another dtype goes through `KVCache.update`. Everything
else (a batch, a verification step of 1 + k tokens, the CPU) runs the general, compiled path of
`Transformer.decode`, which this step matches to bf16 rounding. On a tensor-parallel rank
(`model.rank_collectives`) wo's and w2's partial outputs are summed over the ranks by one all-reduce each,
with the residual folded into the lead rank's partial by the GEMV's epilogue (no separate add kernel: the sum
is the residual plus every partial), and the logits gather the vocabulary's rows. int8 weights
(`Transformer.quantize_weights`) go to the same kernels with their scales per row (half the bytes streamed), int4
ones with their scales and offsets per group (a quarter and a bit; the one-row int4 GEMV's inner step).

Each kernel lets the next one launch as its programs start (PDL), except where flash attention's programs,
resident that early, could crowd some SMs and leave others idle (`kernels.interface.crowds_when_early`), or
where attention's plan asks for it (`LaunchPlan.step_launch`, chosen inside this step by `models.step_plans`):
then qkv_rope lets attention launch only as its programs end. On an H200 that took CodeLlama-7B at 64k with the
heuristic's plan from 103.0 to 129.6 tok/s (fp8 cache; bench/results/NOTES.md, Run 19).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from models.attention import decode_attention


LATE_WHEN_CROWDED = True   # A/B: False launches attention early whatever its grid (unless its plan says late)


class RankCollectives(NamedTuple):
    """A tensor-parallel rank's two collectives (models/tp.py): the sum of the row-parallel projections'
    partial outputs over the ranks, and the logits of every rank's vocabulary rows, (1, V_rank) -> (1, V);
    `lead`: this rank adds the residual to its partial before the sum (one rank of the group does)."""
    reduce: Callable[[torch.Tensor], torch.Tensor]
    gather_logits: Callable[[torch.Tensor], torch.Tensor]
    lead: bool = True


def decode_one_token(model, token: torch.Tensor, step) -> torch.Tensor:
    """model: a `models.llama.Transformer` with caches; token (1, 1) at position step.input_pos (1,).

    Returns float32 logits (1, V), no host sync (capturable in a CUDA graph).
    """
    from kernels.fused_gemv import gemv, norm_swiglu, qkv_rope
    c = model.config
    Hq, Hkv, D = c.n_heads, c.n_kv_heads, c.head_dim
    collectives = model.rank_collectives
    x = model.tok_embeddings(token).reshape(c.dim)                                       # (dim,)
    late_qkv = step.backend == "flash" and _attention_late(model, step, x.dtype)
    for layer in model.layers:
        a, f = layer.attention, layer.feed_forward
        cache = a.kv_cache
        quantized = cache.k_scale is not None
        in_place = quantized or cache.k.dtype == x.dtype
        qkv = qkv_rope(x, layer.attention_norm.weight, layer.attention_norm.eps, a.wqkv.weight,
                       model.rope.cos, model.rope.sin, step.input_pos, Hq, Hkv,
                       cache=(cache.k[:1], cache.v[:1]) if in_place else None,
                       scales=(cache.k_scale[:1], cache.v_scale[:1]) if quantized else None,
                       late_dependents=late_qkv, **_quantized(a.wqkv),
                       exact=cache.fused_exact() if in_place else None)                  # ((Hq + 2 Hkv) * D,)
        q, k, v = (t.view(1, -1, 1, D) for t in qkv.split([Hq * D, Hkv * D, Hkv * D]))  # (1, H, 1, D)
        if in_place:       # qkv_rope wrote k and v (and an fp8 cache's exact copies) into the cache
            view = cache.rows(0, 1)
        else:
            view = cache.update(step.input_pos, k, v)
        if step.kv_len is not None:
            view = view.prefix(step.kv_len)
        attn = decode_attention(step.backend, q, view, step.cache_seqlens, step.exact)  # (1, Hq, 1, D)
        h = _row_parallel(gemv, attn.reshape(Hq * D).contiguous(), a.wo, x, collectives)           # (dim,)
        m = norm_swiglu(h, layer.ffn_norm.weight, layer.ffn_norm.eps, f.w13.weight,
                        **_quantized(f.w13))                                             # (ffn_dim,)
        x = _row_parallel(gemv, m, f.w2, h, collectives)                                 # (dim,)
    logits = gemv(x, model.output.weight, norm_weight=model.norm.weight, eps=model.norm.eps,
                  out_dtype=torch.float32, **_quantized(model.output)).view(1, -1)       # (1, V or V_rank)
    return logits if collectives is None else collectives.gather_logits(logits)          # (1, V)


def _attention_late(model, step, dtype: torch.dtype) -> bool:
    """Whether qkv_rope should let the step's flash attention calls launch only as its programs end: where their
    plan says so or they would crowd some SMs if made resident while it still runs
    (`kernels.interface.late_in_step`). Every layer's call has the same shapes and plan, so the first layer's
    answers for all."""
    from kernels.interface import late_in_step
    c = model.config
    view = model.layers[0].attention.kv_cache.rows(0, 1)
    if step.kv_len is not None:
        view = view.prefix(step.kv_len)
    q = torch.empty(1, c.n_heads, c.head_dim, dtype=dtype, device=view.k.device)     # (1, Hq, D): only its shape
    return late_in_step(q, view.k, view.v, k_scale=view.k_scale, v_scale=view.v_scale,
                        crowding_rule=LATE_WHEN_CROWDED)


def _quantized(projection) -> dict:
    """The fused kernels' keyword arguments for a quantized projection's weight (`Transformer.quantize_weights`): an
    int8 one's float32 scales per output row, an int4 one's float16 scales and offsets per group; none for a float
    weight."""
    return {name: tensor for name in ("weight_scale", "weight_offset")
            if (tensor := getattr(projection, name, None)) is not None}


def _row_parallel(gemv, x: torch.Tensor, projection, residual: torch.Tensor,
                  collectives: RankCollectives | None) -> torch.Tensor:
    """residual + x @ weight^T, the projection's weight (N, K) whole or, on a tensor-parallel rank, its columns (an
    int8 one with its rows' scales, whole: a row's scale is the whole row's): the partials summed over the ranks
    with the residual in the lead rank's."""
    weight, quantized = projection.weight, _quantized(projection)
    if collectives is None:
        return gemv(x, weight, residual=residual, **quantized)
    return collectives.reduce(gemv(x, weight, residual=residual if collectives.lead else None, **quantized))

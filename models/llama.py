"""A lean Llama for inference, in the spirit of gpt-fast: RMSNorm, RoPE, GQA, SwiGLU, a static KV cache.

Two entry points share the layers:
    prefill(tokens (1, T), start, row)   one sequence, SDPA over its cached prefix plus the new tokens
    decode(tokens (B, T), Decode(...))   T tokens per sequence (1, or 1 + drafts to verify), static shapes,
                                         no host sync: capturable
q/k/v and gate/up projections are fused (one matmul each), which matters when a decode step is a GEMV.
Weights keep Hugging Face's names at the boundary (`hf_tensor_slots`), so every loader speaks HF. The projections'
weights may be int8 with a scale per row (models/int8_weights.py) or int4 with a scale and offset per group of
columns (models/int4_weights.py; the vocabulary head then int8: `Transformer.stored_as`): quantized as they load
(`materialize(..., weights=...)` and models/int8_loading.py), or after loading (`Transformer.quantize_weights`);
every projection goes through `linear`, which takes each kind.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kernels.int4_layout import Int4Weight, group_size, quantize_int4  # (plain PyTorch: defines no Triton kernel)
from kernels.settings import DEFAULT_GEMV, gemv_mode  # (data only: defines no Triton kernel)
from models.attention import decode_attention, prefill_attention, prefill_attention_exact
from models.config import ModelConfig, preset
from models.fused_decode import decode_one_token
from models.errors import SettingError
from models.int4_weights import linear_int4
from models.int4_weights import register_cuda_ops as register_int4_ops
from models.int8_weights import Int8Weight, linear_int8, quantize_rows
from models.int8_weights import register_cuda_ops as register_int8_ops
from models.kv_cache import KVCache, PrefillIndices, check_kv_cache_fits, exact_window_valid
from models.options import head_weights


class Prefill(NamedTuple):
    """Where a prefill chunk goes: cache row `row`, which already holds positions [0, start); `repair`: and the
    chunk's too, of which only an fp8 cache's exact window is written (`Transformer.prefill`). `end`: where the
    prompt ends within the chunk (padding after it: an fp8 cache's exact ring keeps the tokens before it)."""
    row: int
    start: int
    repair: bool = False
    end: int | None = None
    indices: PrefillIndices | None = None      # every layer's cache indices for the chunk, computed once


@dataclass
class Decode:
    """Run-time inputs of one decode step (tensors live on the device and are updated in place)."""
    input_pos: torch.Tensor        # (B,) int64: where each sequence's first new token goes
    cache_seqlens: torch.Tensor    # (B,) int32: input_pos + T, the lengths attention reads
    backend: str                   # "flash" | "sdpa" | "eager"
    kv_len: int | None = None      # attend over cache[:, :, :kv_len]; None = the whole capacity
    exact: bool = False            # every row holds exactly kv_len tokens (SDPA may skip the mask)
    graphed: bool = False          # captured in a CUDA graph: replayed at every length up to kv_len


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Normalise in float32 (as HF Llama does), scale in the activation dtype.
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rope_inv_freq(config: ModelConfig, seq_len: int | None = None) -> torch.Tensor:
    """Rotary inverse frequencies (D/2,), float32, with the checkpoint's rope scaling applied.

    `seq_len` matters only for dynamic NTK scaling, whose base grows once a call runs past max_positions.
    """
    D, base, s = config.head_dim, config.rope_theta, config.rope_scaling
    if config.dynamic_rope and seq_len and seq_len > config.max_positions:
        base = base * ((s.factor * seq_len / config.max_positions) - (s.factor - 1)) ** (D / (D - 2))
    inv_freq = 1.0 / (base ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
    if s is None or s.kind == "dynamic":
        return inv_freq
    if s.kind == "linear":
        return inv_freq / s.factor
    # llama3: long wavelengths divided by the factor, short ones kept, a smooth blend between.
    low_wavelen = s.original_max_positions / s.low_freq_factor
    high_wavelen = s.original_max_positions / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_positions / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """cos/sin tables (S_max, D) in float32, so a decode step only gathers rows by position."""

    def __init__(self, config: ModelConfig, max_len: int):
        super().__init__()
        self.config, self.max_len = config, max_len
        self.register_buffer("cos", torch.empty(max_len, config.head_dim), persistent=False)
        self.register_buffer("sin", torch.empty(max_len, config.head_dim), persistent=False)
        if self.cos.device.type != "meta":
            self.reset()

    def reset(self) -> None:
        """(Re)compute the tables on the buffers' device."""
        positions = torch.arange(self.max_len, device=self.cos.device)
        if self.config.dynamic_rope and self.max_len > self.config.max_positions:
            # A decode step at position p sees frequencies for length p + 1 (as HF recomputes them).
            inv = torch.stack([rope_inv_freq(self.config, p + 1) for p in range(self.max_len)])  # (S_max, D/2)
            freqs = positions[:, None].float() * inv.to(positions.device)  # (S_max, D/2)
        else:
            freqs = torch.outer(positions.float(), rope_inv_freq(self.config).to(positions.device))  # (S_max, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)                          # (S_max, D)
        self.cos, self.sin = emb.cos(), emb.sin()

    def forward(self, positions: torch.Tensor, seq_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (B, T, D) for positions (B, T); `seq_len` is the call's length (dynamic scaling)."""
        if self.config.dynamic_rope and seq_len and seq_len > self.config.max_positions:
            # Beyond the training length, HF's prefill rotates every position with the call's frequencies.
            freqs = positions[..., None].float() * rope_inv_freq(self.config, seq_len).to(positions.device)
            emb = torch.cat((freqs, freqs), dim=-1)                      # (B, T, D)
            return emb.cos(), emb.sin()
        return self.cos[positions], self.sin[positions]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D) rotated by cos, sin (B, T, D), in HF's rotate-half layout."""
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)        # (B, 1, T, D): every head alike
    x1, x2 = x.chunk(2, dim=-1)                                          # (B, H, T, D/2) each
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


# torch.ops.codecomplete.gemv once `Transformer.compile_dense` has loaded it on a GPU (importing
# kernels at module load would define Triton kernels before a CPU run can ask for the interpreter).
_gemv = None


def linear(x: torch.Tensor, weight: torch.Tensor | Int8Weight | Int4Weight) -> torch.Tensor:
    """x @ weight.T. One row of activations (a batch-1 decode step) goes to the batch-1 projection op when
    loaded: the Triton GEMV, which streams wide projections at 89-97% of the copy bandwidth on an H100 where
    cuBLAS reached 67-88%; deep ones (w2, and under tensor parallelism wqkv: fewer rows than columns) go to
    cuBLAS unless CODECOMPLETE_GEMV=1 asks for split-K (kernels/gemv.py). Batched calls stay on cuBLAS.
    An int8 weight with its scales (`Int8Weight`) goes to `models.int8_weights.linear_int8`, an int4 one with its
    groups' scales and offsets (`Int4Weight`) to `models.int4_weights.linear_int4`."""
    if isinstance(weight, Int8Weight):
        return linear_int8(x, weight)
    if isinstance(weight, Int4Weight):
        return linear_int4(x, weight)
    if _gemv is not None and x.is_cuda and x.numel() == weight.shape[1]:
        return _gemv(x.reshape(1, -1), weight).view(*x.shape[:-1], weight.shape[0])
    if x.dtype != weight.dtype:     # bfloat16 weights under float32 activations (Transformer.materialize)
        return F.linear(x.to(weight.dtype), weight).to(x.dtype)
    return F.linear(x, weight)


def use_gemv(mode: str) -> None:
    """Which batch-1 projections the Triton GEMV serves (CODECOMPLETE_GEMV, read by compile_dense): "wide"
    (the default) those at least as wide as deep, deep ones on cuBLAS; "1" every one, deep ones split-K
    (for A/B runs: decided when the op runs, so a new graph capture switches it, no recompilation); "0"
    none (compiled code is guarded on it: recompiles at the next call)."""
    global _gemv
    try:
        gemv_mode(mode)         # (checked at the app's start-up too, on any machine: models.kernel_settings)
    except ValueError as exc:
        raise SettingError(f"CODECOMPLETE_GEMV={mode!r}: {exc}") from None
    if mode == "0":
        _gemv = None
        return
    import kernels.gemv  # (registers torch.ops.codecomplete.gemv)
    kernels.gemv.DEEP_ON_CUBLAS = mode == "wide"
    _gemv = torch.ops.codecomplete.gemv


def projection_weight(module: nn.Linear) -> torch.Tensor | Int8Weight | Int4Weight:
    """A projection's weight as `linear` takes it: the tensor, or after `Transformer.quantize_weights` the int8 one
    with its scales, or the int4 one with its scales and offsets."""
    scale = getattr(module, "weight_scale", None)
    if scale is None:
        return module.weight
    offset = getattr(module, "weight_offset", None)
    return Int8Weight(module.weight, scale) if offset is None else Int4Weight(module.weight, scale, offset)


def projection_kind(module: nn.Module) -> str | None:
    """How a projection's weight is stored: "int8", "int4", or None (a float dtype)."""
    if getattr(module, "weight_scale", None) is None:
        return None
    return "int8" if getattr(module, "weight_offset", None) is None else "int4"


def quantized_storage(module: nn.Linear, weights: str, device) -> None:
    """Replace a projection's weight by `weights`' storage on `device`, uninitialised: int8 values (N, K) and float32
    row scales (N,), or int4's packed nibbles (N, K // 2) uint8 and float16 scales and offsets (N, K // G)."""
    N, K = module.out_features, module.in_features
    if weights == "int8":
        module.weight = nn.Parameter(torch.empty(N, K, dtype=torch.int8, device=device), requires_grad=False)
        module.register_buffer("weight_scale", torch.empty(N, dtype=torch.float32, device=device))
        return
    groups = K // group_size(K)
    module.weight = nn.Parameter(torch.empty(N, K // 2, dtype=torch.uint8, device=device), requires_grad=False)
    module.register_buffer("weight_scale", torch.empty(N, groups, dtype=torch.float16, device=device))
    module.register_buffer("weight_offset", torch.empty(N, groups, dtype=torch.float16, device=device))


def attention_inputs(x, norm_weight, eps: float, wqkv, cos, sin, n_heads: int, n_kv_heads: int, head_dim: int):
    """RMSNorm, the fused q/k/v projection and RoPE: x (B, T, dim) -> q (B, Hq, T, D), k and v (B, Hkv, T, D)."""
    B, T, _ = x.shape
    Hq, Hkv, D = n_heads, n_kv_heads, head_dim
    q, k, v = linear(rms_norm(x, norm_weight, eps), wqkv).split([Hq * D, Hkv * D, Hkv * D], dim=-1)
    q = apply_rotary(q.view(B, T, Hq, D).transpose(1, 2), cos, sin)       # (B, Hq, T, D)
    k = apply_rotary(k.view(B, T, Hkv, D).transpose(1, 2), cos, sin)      # (B, Hkv, T, D)
    return q, k, v.view(B, T, Hkv, D).transpose(1, 2)                     # v: (B, Hkv, T, D)


def attention_output_and_ffn(x, attn, wo, norm_weight, eps: float, w13, w2, ffn_dim: int, reduce=None):
    """The rest of a block: x (B, T, dim) + wo(attn (B, T, Hq*D)), then the SwiGLU MLP with its residual.

    `reduce` sums the partial outputs of the row-parallel wo and w2 over tensor-parallel ranks (models/tp.py).
    """
    out = linear(attn, wo)                                               # (B, T, dim), a partial under reduce
    h = x + (out if reduce is None else reduce(out))
    gate, up = linear(rms_norm(h, norm_weight, eps), w13).split(ffn_dim, dim=-1)  # (B, T, ffn_dim) each
    out = linear(F.silu(gate) * up, w2)                                  # (B, T, dim)
    return h + (out if reduce is None else reduce(out))


def final_logits(x, norm_weight, eps: float, output_weight):
    """Last norm and the vocabulary projection, in float32: x (B, dim) -> (B, V), or (B, T, dim) -> (B, T, V)."""
    return linear(rms_norm(x, norm_weight, eps), output_weight).float()


class DenseKernels(NamedTuple):
    """The functions a decode step runs around attention; `Transformer.compile_dense` swaps in compiled ones."""
    attention_inputs: object = attention_inputs
    attention_output_and_ffn: object = attention_output_and_ffn
    final_logits: object = final_logits


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.wqkv = nn.Linear(config.dim, (config.n_heads + 2 * config.n_kv_heads) * config.head_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * config.head_dim, config.dim, bias=False)
        self.kv_cache: KVCache | None = None

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, step: Decode | Prefill) -> torch.Tensor:
        """Store k, v (B, Hkv, T, D) in the cache and attend with q (B, Hq, T, D); returns (B, T, Hq*D)."""
        B, Hq, T, D = q.shape
        if isinstance(step, Decode):
            cache = self.kv_cache.update(step.input_pos, k, v)               # (B, Hkv, S_max, D) (+ scales)
            if step.kv_len is not None:
                cache = cache.prefix(step.kv_len)
                if not step.exact and step.backend != "flash" and not step.graphed:
                    # Rows shorter than kv_len: sdpa and eager weigh a slot past a row's length by 0 (SDPA adds its
                    # mask to the score), and 0 x a NaN left there is NaN. Zeroed, as the kernels never read it. Not
                    # in a graph replay, which reads its whole span of slots (zeros from the allocation, or the
                    # finite K/V of an earlier request): zeroing cost 1.2-8.6x the attention itself on an H200
                    # (CodeLlama-7B at 64k, sdpa: 274 -> 2369 us a layer).
                    cache = cache.zeroed_past(step.cache_seqlens, q.dtype)
            out = decode_attention(step.backend, q, cache, step.cache_seqlens, step.exact)  # (B, Hq, T, D)
            return out.transpose(1, 2).reshape(B, T, Hq * D)
        prior = self.kv_cache.exact_before(step.row, step.start, step.indices)     # fp8: the prefix's exact tokens
        cache = self.kv_cache.write(step.row, step.start, k, v, step.repair, step.end,
                                    step.indices)                           # (1, Hkv, start + T, D) as stored
        if prior is not None:
            out = prefill_attention_exact(q, cache, prior, k, v, step.start)
        else:
            out = prefill_attention(q, *cache.dequantized(q.dtype))
        return out.transpose(1, 2).reshape(B, T, Hq * D)


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ffn_dim = config.ffn_dim
        self.w13 = nn.Linear(config.dim, 2 * config.ffn_dim, bias=False)   # gate and up, fused
        self.w2 = nn.Linear(config.ffn_dim, config.dim, bias=False)


class TransformerBlock(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config)

    def forward(self, x, cos, sin, step, dense: DenseKernels = DenseKernels()):
        a, f = self.attention, self.feed_forward
        q, k, v = dense.attention_inputs(x, self.attention_norm.weight, self.attention_norm.eps,
                                         projection_weight(a.wqkv), cos, sin, a.n_heads, a.n_kv_heads, a.head_dim)
        attn = a.attend(q, k, v, step)
        return dense.attention_output_and_ffn(x, attn, projection_weight(a.wo), self.ffn_norm.weight,
                                              self.ffn_norm.eps, projection_weight(f.w13), projection_weight(f.w2),
                                              f.ffn_dim)


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig, max_len: int | None = None):
        super().__init__()
        self.config = config
        # (its storage given: Embedding's own init, normal_, runs through torch._refs on the meta device, which
        # imports torch._dynamo, 0.8 s of a CPU start; the weights are loaded or made after `materialize` anyway)
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim, _weight=torch.empty(config.vocab_size,
                                                                                           config.dim))
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.rope = RotaryEmbedding(config, max_len or config.context_limit)
        self.dense = DenseKernels()            # what runs around attention (models/tp.py swaps in its own)
        self.decode_kernels = self.dense       # what decode steps run: `compile_dense` compiles `dense`
        self.fused_decode = False              # one-token batch-1 steps on the fused kernels (models/fused_decode.py)
        self.rank_collectives = None           # a tensor-parallel rank's all-reduce and gather (models/tp.py)
        self.requires_grad_(False)
        self._tie_weights()

    def _tie_weights(self) -> None:
        if self.config.tie_embeddings and not self.weights_quantized:     # a quantized head is a copy of its own
            self.output.weight = self.tok_embeddings.weight

    def materialize(self, device, dtype, matmul_dtype=None, weights: str | None = None) -> Transformer:
        """Turn a model built under torch.device("meta") into uninitialised storage on `device`, in `dtype`; with
        `matmul_dtype` the projections' weights (and the embeddings tied to the output) in that one instead, the
        norms, residual stream, attention and KV cache staying in `dtype` (`linear` casts each projection's input
        and output: a CPU with bfloat16 dot products reads half the bytes and does twice the math at nearly
        float32's accuracy: codecomplete.engines.cpu_matmul_dtype chooses it there).
        weights="int8": the projections' storage is int8 values and float32 row scales (a tied head's a copy of its
        own), for models/int8_loading.py to fill as the checkpoint is read: no full-precision projection allocated.
        weights="int4": the same with int4's packed nibbles, float16 scales and offsets per group of columns for every
        layer's projections, the vocabulary head int8 (`models.options.head_weights`)."""
        self.to(dtype=dtype)
        if matmul_dtype is not None and matmul_dtype != dtype:
            for module in self.projections():
                module.to(dtype=matmul_dtype)           # (still on meta: nothing is allocated)
        if weights in ("int8", "int4"):
            for module in self.projections():
                if module is not self.tok_embeddings:   # (on meta: the storage comes with to_empty below)
                    quantized_storage(module, self.stored_as(module, weights), "meta")
        elif weights is not None:
            raise ValueError(f"unknown weights {weights!r}")
        # (to_empty's empty_like runs through torch._refs for meta tensors, which imports torch.fx's symbolic shapes:
        # 0.15 s of a CPU start; the parameters here are all contiguous, as torch.empty makes them)
        self._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device=device))
        self._tie_weights()   # each module has a tensor of its own now; tie them again
        self.rope.reset()
        return self

    def stored_as(self, module: nn.Module, weights: str) -> str:
        """The kind a projection takes when the model's weights are `weights` ("int8", "int4"): the layers' ones
        that kind, the vocabulary head int8 under int4 too (`models.options.head_weights`: why)."""
        return head_weights(weights) if module is self.output else weights

    def register_weight_ops(self) -> None:
        """Register the CUDA ops of every kind the projections hold (an int4 model's int8 head needs int8's)."""
        kinds = {projection_kind(module) for module in self.projections()}
        if "int8" in kinds:
            register_int8_ops()
        if "int4" in kinds:
            register_int4_ops()

    def projections(self) -> list[nn.Module]:
        """The modules whose weights are matmul operands: every layer's q/k/v, output, gate/up and down
        projections, the vocabulary projection, and the embeddings where they are its weight."""
        modules = [m for layer in self.layers for m in (layer.attention.wqkv, layer.attention.wo,
                                                        layer.feed_forward.w13, layer.feed_forward.w2)]
        return modules + [self.output] + ([self.tok_embeddings] if self.config.tie_embeddings else [])

    def quantize_weights(self, row_amax_of: Callable[[nn.Module], Callable | None] | None = None,
                         weights: str = "int8") -> None:
        """int8 weights with a float32 scale per output row (models/int8_weights.py), or with weights="int4" int4 ones
        with a float16 scale and offset per group of columns (models/int4_weights.py), for every layer's wqkv, wo,
        w13 and w2, and the output head (int8 under int4 too: `stored_as`), in place, one at a time (each weight's
        16-bit tensor is freed as its quantized one takes its place). A head tied to the embeddings gets a quantized
        copy of its own; the embedding table stays. `row_amax_of(module)` (int8 only): how that projection's rows'
        amax are completed (a tensor-parallel rank holding some columns of wo and w2: the maximum over the ranks), or
        None.
        The model was whole in full precision before this (a benchmark timing both kinds of one model); a load that
        must never hold it quantizes as it reads instead (`load_model(weights=...)`, models/int8_loading.py)."""
        if weights not in ("int8", "int4") or (weights == "int4" and row_amax_of is not None):
            raise ValueError(f"quantize_weights: weights int8, or int4 without row_amax_of, not {weights!r}")
        for module in self.projections():
            if module is self.tok_embeddings or getattr(module, "weight_scale", None) is not None:
                continue                                      # the table stays; or quantized already
            if self.stored_as(module, weights) == "int8":
                values, scale = quantize_rows(module.weight, row_amax_of(module) if row_amax_of else None)
                module.weight = nn.Parameter(values, requires_grad=False)      # (a tied head: unties it)
                module.register_buffer("weight_scale", scale)
            else:
                packed, scale, offset = quantize_int4(module.weight)
                module.weight = nn.Parameter(packed, requires_grad=False)      # (a tied head: unties it)
                module.register_buffer("weight_scale", scale)
                module.register_buffer("weight_offset", offset)
        if self.output.weight.is_cuda:
            self.register_weight_ops()
            torch.cuda.empty_cache()

    @property
    def weights_quantized(self) -> bool:
        """Whether the projections hold int8 or int4 weights (`quantize_weights`)."""
        return getattr(self.output, "weight_scale", None) is not None

    @property
    def weights_kind(self) -> str | None:
        """"int8" or "int4" where the projections hold quantized weights, else None (a float dtype): the layers'
        kind (an int4 model's head is int8: `stored_as`)."""
        return projection_kind(self._layer_projection())

    @property
    def compute_dtype(self) -> torch.dtype:
        """The activations' and the KV cache's dtype (the projections' weights may be narrower: `materialize`)."""
        return self.norm.weight.dtype

    @property
    def matmul_dtype(self) -> torch.dtype:
        """The layers' projections' weights' dtype (torch.int8 after `quantize_weights`; torch.uint8, int4's packed
        nibbles, after `quantize_weights(weights="int4")`: `weights_kind` tells them apart)."""
        return self._layer_projection().weight.dtype

    def _layer_projection(self) -> nn.Module:
        """A projection of the layers (the head only in a model without layers): what its weights kind is read off."""
        return self.layers[0].attention.wqkv if len(self.layers) else self.output

    def compile_dense(self) -> None:
        """torch.compile the dense parts of a decode step (norms, projections, RoPE, SwiGLU, residuals).

        Attention and the cache update stay outside, so one compilation serves every layer (weights are
        arguments), every backend and every context length. Decode only: prefill shapes vary per call (its compiled
        variant, for any number of tokens, is `models.engine.compiled_prefill_kernels`).
        Inductor fuses the elementwise chains into the matmuls' neighbours, leaving a handful of kernels
        per layer, which is what lets a graph-replayed step approach the memory roofline.
        On a GPU, one-token steps of one sequence go further: `fused_decode` (six kernels per layer, no
        compilation; on a tensor-parallel rank, with its collectives) unless CODECOMPLETE_FUSED=0.
        """
        if self.output.weight.is_cuda:
            use_gemv(os.environ.get("CODECOMPLETE_GEMV") or DEFAULT_GEMV)      # (empty: unset)
            plain = self.dense == DenseKernels() or self.rank_collectives is not None
            self.fused_decode = os.environ.get("CODECOMPLETE_FUSED", "1") != "0" and plain
        compile = functools.partial(torch.compile, fullgraph=True, dynamic=False)
        self.decode_kernels = DenseKernels(*(compile(f) for f in self.dense))

    def free_caches(self) -> None:
        """Drop every layer's KV cache and hand its memory back to the device."""
        for layer in self.layers:
            layer.attention.kv_cache = None
        if self.output.weight.is_cuda:
            torch.cuda.empty_cache()

    def setup_caches(self, batch: int, max_len: int, name: str = "model", quant: str | None = None) -> None:
        """Allocate every layer's cache (after freeing the old one), or say how many tokens would fit.

        quant: "fp8" or "int8" for 8-bit K/V with per-token scales; None keeps the model dtype."""
        if max_len > self.rope.max_len:
            raise ValueError(f"cache of {max_len} tokens is longer than the rotary table ({self.rope.max_len})")
        self.free_caches()
        device, dtype = self.output.weight.device, self.compute_dtype
        check_kv_cache_fits(self.config, batch, max_len, dtype, device, name, quant)
        c = self.config
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(batch, c.n_kv_heads, max_len, c.head_dim, dtype, device, quant,
                                               group=c.n_heads // c.n_kv_heads)

    def prefill(self, tokens: torch.Tensor, start: int = 0, row: int = 0, all_logits: bool = False,
                last: int = -1, dense: DenseKernels | None = None,
                should_stop: Callable[[], bool] | None = None, repair: bool = False,
                exact_checked: bool = False) -> torch.Tensor | None:
        """Run tokens (1, T) at positions start..start+T of cache row `row` (which holds [0, start) already).

        Returns float32 logits (1, T, V) with all_logits, else position `last`'s (1, V) (a padded span's last
        prompt token). `dense`: the dense kernels to run instead of `self.dense` (a compiled variant of them).
        `should_stop` is asked before each layer: True ends the prefill there and returns None (the layers run
        wrote this span's K/V, the others did not: the row then holds [0, start) only). Between layers, not
        between chunks of the prompt, so that every number computed stays what one whole prefill computes.

        An fp8 cache's row must hold the exact copies of its sink and of the window before `start` (ValueError
        otherwise: its queries would miss them). Where it lost them (a prefix cut back past its ring), `repair`
        recomputes them: the row already holds the tokens at [start, start + T), and only the exact copies of the
        last EXACT_WINDOW of them are written (returns None). They come out exact when T >= `repair_span`: an
        error in the copies before `start` reaches EXACT_WINDOW - 1 positions further each layer (through the
        queries whose windows hold it), and the 8-bit keys, read as stored, are right.
        `exact_checked`: the caller has just found that the row holds them (`models.kv_cache.exact_tokens_held`: the
        engine, choosing `start`), so it is not checked again (a host sync, between requests).
        """
        T = tokens.shape[1]
        # (one host sync, for fp8 caches only, unless the caller made it; a repair needs the sink alone)
        caches = [layer.attention.kv_cache for layer in self.layers]
        if start > 0 and not exact_checked and not exact_window_valid(caches, row, start, sink_only=repair):
            raise ValueError(f"cache row {row} no longer holds the exact {'sink' if repair else 'window'} before "
                             f"position {start} (8-bit cache): prefill from 0"
                             + ("" if repair else ", or repair it first (`repair`)"))
        positions = torch.arange(start, start + T, device=tokens.device)[None]   # (1, T)
        cos, sin = self.rope(positions, start + T)
        x = self.tok_embeddings(tokens).to(self.compute_dtype)                   # (1, T, dim)
        end = start + last % T + 1
        step = Prefill(row, start, repair, end, caches[0].prefill_indices(row, start, T, repair, end))
        for layer in self.layers:
            if should_stop is not None and should_stop():
                return None
            x = layer(x, cos, sin, step, dense or self.dense)
        if repair:
            return None
        x = x if all_logits else x[:, last]                              # (1, T, dim), or (1, dim)
        return self.dense.final_logits(x, self.norm.weight, self.norm.eps, projection_weight(self.output))

    def decode(self, tokens: torch.Tensor, step: Decode) -> torch.Tensor:
        """T tokens per sequence, tokens (B, T) at positions step.input_pos + 0..T-1.

        Returns float32 logits (B, T, V), or (B, V) for T = 1 (the plain decode step).
        """
        if self.fused_decode and tokens.shape == (1, 1):
            return decode_one_token(self, tokens, step)
        T = tokens.shape[1]
        positions = step.input_pos[:, None] + torch.arange(T, device=tokens.device)  # (B, T)
        cos, sin = self.rope(positions)                                          # (B, T, D)
        x = self.tok_embeddings(tokens).to(self.compute_dtype)                   # (B, T, dim)
        dense = self.decode_kernels
        for layer in self.layers:
            x = layer(x, cos, sin, step, dense)
        return dense.final_logits(x[:, 0] if T == 1 else x, self.norm.weight, self.norm.eps,
                                  projection_weight(self.output))


def hf_tensor_slots(model: Transformer, slot: Callable[[nn.Module, slice | None], object] | None = None) -> dict:
    """Where each tensor of a Hugging Face Llama checkpoint goes: views into our (partly fused) parameters.

    slot(module, rows): what stands for rows `rows` (None: all) of `module.weight` instead of a view (an int8
    projection's rows assembled before they are quantized: `models.int8_loading.Int8Loader.slot`)."""
    c = model.config
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    slot = slot or weight_rows
    slots = {"model.embed_tokens.weight": slot(model.tok_embeddings, None), "model.norm.weight": slot(model.norm, None)}
    if not c.tie_embeddings:
        slots["lm_head.weight"] = slot(model.output, None)
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}."
        wqkv, w13 = layer.attention.wqkv, layer.feed_forward.w13
        slots.update({
            p + "self_attn.q_proj.weight": slot(wqkv, slice(0, q)),
            p + "self_attn.k_proj.weight": slot(wqkv, slice(q, q + kv)),
            p + "self_attn.v_proj.weight": slot(wqkv, slice(q + kv, q + 2 * kv)),
            p + "self_attn.o_proj.weight": slot(layer.attention.wo, None),
            p + "mlp.gate_proj.weight": slot(w13, slice(0, c.ffn_dim)),
            p + "mlp.up_proj.weight": slot(w13, slice(c.ffn_dim, 2 * c.ffn_dim)),
            p + "mlp.down_proj.weight": slot(layer.feed_forward.w2, None),
            p + "input_layernorm.weight": slot(layer.attention_norm, None),
            p + "post_attention_layernorm.weight": slot(layer.ffn_norm, None),
        })
    return slots


def weight_rows(module: nn.Module, rows: slice | None) -> torch.Tensor:
    """rows `rows` of module.weight (None: the whole tensor), a view to copy a checkpoint tensor into."""
    return module.weight if rows is None else module.weight[rows]


def random_checkpoint(config: ModelConfig, device="cpu", dtype=torch.float32,
                      seed: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """Random weights of `config`'s shapes as a checkpoint: (Hugging Face name, full tensor), one at a time.

    Norms are 1, every matrix N(0, 0.02) from one seeded generator, in a fixed order: a model and any
    tensor-parallel rank's slices of it (models/tp.py) hold the same numbers.
    """
    with torch.device("meta"):
        shapes = {name: slot.shape for name, slot in hf_tensor_slots(Transformer(config, max_len=1)).items()}
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, shape in shapes.items():
        tensor = torch.empty(shape, device=device, dtype=dtype)
        if name.endswith("norm.weight"):
            tensor.fill_(1.0)
        else:
            tensor.normal_(0.0, 0.02, generator=generator)
        yield name, tensor


def build_random_model(config: ModelConfig | str, n_layers: int | None = None, device="cpu",
                       dtype=torch.float32, max_len: int | None = None, seed: int = 0,
                       matmul_dtype: torch.dtype | None = None, weights: str | None = None) -> Transformer:
    """A model of a preset's (or config's) exact shapes with random weights: times exactly like the real one.

    n_layers cuts the depth to fit memory; max_len sizes the rotary table (default: the model's limit),
    e.g. 65536 to benchmark CodeLlama shapes beyond their 16k training length.
    weights="int8" or "int4": the projections quantized as they are drawn (models/int8_loading.py), never all in
    `dtype` at once: the bytes `quantize_weights(weights=...)` makes of the `dtype` model.
    """
    from models.int8_loading import Int8Loader

    config = preset(config) if isinstance(config, str) else config
    if n_layers:
        config = config.replace(n_layers=n_layers)
    with torch.device("meta"):
        model = Transformer(config, max_len=max_len)
    model.materialize(device, dtype, matmul_dtype, weights)
    loader = Int8Loader(model)
    slots = hf_tensor_slots(model, loader.slot)
    for name, tensor in random_checkpoint(config, device, dtype, seed):
        slots[name].copy_(tensor)
    loader.finish()
    return model

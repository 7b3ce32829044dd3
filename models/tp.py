"""Tensor parallelism: one model split over the ranks of a process group, in the style of gpt-fast's tp.py.

Each of N ranks holds 1/N of every layer (Megatron's split), so each GPU reads 1/N of the bytes per token:
    wqkv, w13   column-parallel: the rank's query heads with their KV heads, and its FFN columns
    wo, w2      row-parallel: the matching input columns; their partial outputs are summed by one
                all-reduce each per layer, the only communication inside a block
    KV cache    the rank's KV heads only: each rank runs kernels.flash_decode on its own heads
    output      the rank's rows of the vocabulary; the logits are gathered, so every rank holds all of
                them and samples the same token from the same seed: ranks never diverge
    embeddings and norms are replicated.
Rank r holds query heads [r Hq/N, (r+1) Hq/N) and KV heads [r Hkv/N, (r+1) Hkv/N): whole GQA groups.

The all-reduce and the gather are custom ops (`torch.ops.codecomplete.tp_all_reduce`, `tp_all_gather`),
opaque to torch.compile and captured in the decode step's CUDA graph like any kernel. `Collectives` runs
them: NCCL (gloo on CPUs), or for small messages PyTorch's symmetric-memory one-shot all-reduce, one kernel
in which each GPU reads its peers' buffers over NVLink (no multicast).
A checkpoint loads rank by rank: each reads only its slices of the tensors (`checkpoint_part`).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from models.config import ModelConfig
from models.errors import SettingError, UnsupportedModelError
from models.fused_decode import RankCollectives
from models.llama import (DenseKernels, Transformer, attention_inputs, attention_output_and_ffn, final_logits,
                          hf_tensor_slots, random_checkpoint)
from models.options import SPLIT_INT4

# Messages up to this size take the one-shot all-reduce (where it runs): every GPU reads all N copies,
# which beats NCCL's launch-bound rings only while the bytes are few. A decode step's are 16 KiB per
# sequence (hidden 8192, bf16); a long prefill's run to hundreds of MiB and go to NCCL.
ONE_SHOT_MAX_BYTES = 1 << 20
ALL_REDUCE_METHODS = ("auto", "nccl", "one_shot", "none")


@dataclass
class TensorParallel:
    """This process's place in a tensor-parallel group (models/distributed.py makes it)."""
    rank: int
    world: int
    device: torch.device
    group: dist.ProcessGroup                  # device collectives: NCCL on GPUs, gloo on CPUs
    control: dist.ProcessGroup | None = None  # the launcher's gloo channel (requests, stop flags)
    store: dist.Store | None = None           # the rendezvous store (the launcher's status reports)
    collectives: Collectives = field(init=False)

    def __post_init__(self):
        self.collectives = Collectives(self.group, self.world)


# ---- the split ---------------------------------------------------------------------------------

def _rank_counts(config: ModelConfig) -> str:
    """The rank counts that split the model's KV heads and FFN, as a message lists them: "1, 2, 4 or 8"."""
    counts = [str(n) for n in range(1, config.n_kv_heads + 1) if config.n_kv_heads % n == config.ffn_dim % n == 0]
    return f"{', '.join(counts[:-1])} or {counts[-1]}" if len(counts) > 1 else counts[0]


def shard_config(config: ModelConfig, world: int, name: str = "model") -> ModelConfig:
    """The shapes one of `world` ranks holds: 1/world of the heads and FFN columns.

    vocab_size stays whole (token ids are checked against it); `build_shard` splits the output layer.
    """
    # The rank count is the user's choice (--gpus, torchrun's processes): a SettingError, a usage error's exit code.
    if config.n_kv_heads % world:
        group = config.n_heads // config.n_kv_heads
        raise SettingError(
            f"{name}: {config.n_kv_heads} key/value heads do not split over {world} ranks (each rank, a GPU or a "
            f"CPU process, takes whole KV heads with their {group} query head{'s' * (group != 1)}): "
            f"use --gpus {_rank_counts(config)}")
    if config.ffn_dim % world:
        raise SettingError(f"{name}: the FFN width {config.ffn_dim} does not split over {world} ranks: "
                           f"use --gpus {_rank_counts(config)}")
    return config.replace(n_heads=config.n_heads // world, n_kv_heads=config.n_kv_heads // world,
                          ffn_dim=config.ffn_dim // world, tie_embeddings=False)


def vocab_rows(vocab_size: int, world: int) -> int:
    """Rows of the output layer per rank; the last rank's tail past vocab_size is zero padding."""
    return math.ceil(vocab_size / world)


def build_shard(config: ModelConfig, tp: TensorParallel, device, dtype, max_len: int | None = None,
                name: str = "model", weights: str | None = None) -> Transformer:
    """Rank tp.rank's part of a model of `config` (uninitialised, output padding zeroed), wired to its group.
    weights="int8": int8 storage for the projections (`Transformer.materialize`), filled as they load; "int4" is
    refused (`models.options.SPLIT_INT4`: its groups and the rank steps were never built for a split)."""
    if weights == "int4":
        raise SettingError(SPLIT_INT4)
    local = shard_config(config, tp.world, name)
    with torch.device("meta"):
        model = Transformer(local, max_len=max_len)
        model.output = nn.Linear(config.dim, vocab_rows(config.vocab_size, tp.world), bias=False)
    model.requires_grad_(False)
    model.materialize(device, dtype, weights=weights)
    if weights != "int8":                   # (int8: the loader quantizes the padding as zeros)
        model.output.weight[_held_vocab(config, tp):].zero_()
    model.rank_collectives = rank_collectives(tp, config.vocab_size)
    model.dense = model.decode_kernels = parallel_dense(model.rank_collectives)
    return model


def _held_vocab(config: ModelConfig, tp: TensorParallel) -> int:
    """How many real vocabulary rows rank tp.rank holds (fewer than vocab_rows on the last rank, or none)."""
    rows = vocab_rows(config.vocab_size, tp.world)
    return max(0, min(rows, config.vocab_size - tp.rank * rows))


def checkpoint_part(config: ModelConfig, tp: TensorParallel, source: str) -> Callable:
    """`part(name, shape)`: the index of the slice of checkpoint tensor `name` that rank tp.rank holds
    (None: all of it), after checking the full tensor has the shape the config implies."""
    with torch.device("meta"):
        expected = {n: tuple(t.shape) for n, t in hf_tensor_slots(Transformer(config, max_len=1)).items()}
    expected.setdefault("lm_head.weight", (config.vocab_size, config.dim))   # tied models may store it anyway
    rows = vocab_rows(config.vocab_size, tp.world)

    def part(name: str, shape) -> tuple | None:
        if name not in expected:
            return None                      # load_weights names what it does not know
        if tuple(shape) != expected[name]:
            raise UnsupportedModelError(
                f"{source}: tensor {name} has shape {tuple(shape)}, the config implies {expected[name]}")
        if name == "lm_head.weight":
            start = tp.rank * rows
            return (slice(start, start + _held_vocab(config, tp)),)
        if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "gate_proj.weight", "up_proj.weight")):
            n = shape[0] // tp.world         # column-parallel: output features, i.e. weight rows
            return (slice(tp.rank * n, (tp.rank + 1) * n),)
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            n = shape[1] // tp.world         # row-parallel: input features, i.e. weight columns
            return (slice(None), slice(tp.rank * n, (tp.rank + 1) * n))
        return None                          # embeddings and norms: replicated
    return part


def load_shard(config: ModelConfig, tp: TensorParallel, read: Callable[[Callable], Iterator], device, dtype,
               max_len: int | None, source: str, weights: str | None = None) -> Transformer:
    """Build rank tp.rank's part and fill it; read(part) yields a checkpoint's (name, tensor[part(...)]).
    weights="int8": each projection quantized as it loads (models/int8_loading.py), wo's and w2's rows with the
    amax of their whole rows (`quantize_shard`'s bytes and scales)."""
    from models.int8_loading import Int8Loader
    from models.loading.hf import load_weights

    model = build_shard(config, tp, device, dtype, max_len, source, weights)
    loader = Int8Loader(model, row_amax_over_ranks(model, tp))
    slots = hf_tensor_slots(model, loader.slot)
    held = _held_vocab(config, tp)
    del slots["lm_head.weight"]                   # the whole padded output layer: only its real rows load
    loader.pad(model.output, slice(held, None))
    if not config.tie_embeddings:
        slots["lm_head.weight"] = loader.slot(model.output, slice(0, held))
    tensors = ((n, t) for n, t in read(checkpoint_part(config, tp, source))
               if not (config.tie_embeddings and n == "lm_head.weight"))
    load_weights(model, tensors, source, slots)
    if config.tie_embeddings:                # the output rows are a copy of the replicated embedding's
        start = tp.rank * vocab_rows(config.vocab_size, tp.world)
        loader.slot(model.output, slice(0, held)).copy_(model.tok_embeddings.weight[start:start + held])
    loader.finish()
    return model.eval()


def random_shard(config: ModelConfig, tp: TensorParallel, device, dtype, max_len: int | None = None,
                 seed: int = 0, weights: str | None = None) -> Transformer:
    """Rank tp.rank's part of `build_random_model(config, seed=seed, weights=weights)`: the same numbers, sliced."""
    def read(part):
        for name, tensor in random_checkpoint(config, device, dtype, seed):
            index = part(name, tensor.shape)
            yield name, tensor if index is None else tensor[index]
    return load_shard(config, tp, read, device, dtype, max_len, f"random {config.n_layers}-layer model", weights)


def quantize_shard(model: Transformer, tp: TensorParallel) -> None:
    """int8 weights on rank tp.rank once its part is loaded (`Transformer.quantize_weights`), the same bytes and
    scales as the slices of the whole model's: the column-parallel wqkv and w13 and the output layer hold whole rows,
    each quantized as it is (their scales split with the rows); the row-parallel wo and w2 hold some columns of every
    row, so each row's amax is the maximum over the ranks, and every rank keeps the whole row's scale. (A load with
    weights="int8" quantizes as it reads instead, to the same bytes: `load_shard`.)"""
    model.quantize_weights(row_amax_over_ranks(model, tp))


def row_amax_over_ranks(model: Transformer, tp: TensorParallel) -> Callable[[nn.Module], Callable | None]:
    """For each projection, how its rows' amax are completed: over the ranks for the row-parallel wo and w2 (a
    collective: every rank quantizes them in the same order), as they are for the others."""
    def max_over_ranks(amax: torch.Tensor) -> torch.Tensor:            # (N,) float32, this rank's columns
        dist.all_reduce(amax, op=dist.ReduceOp.MAX, group=tp.group)
        return amax

    row_parallel = {id(m) for layer in model.layers for m in (layer.attention.wo, layer.feed_forward.w2)}
    return lambda module: max_over_ranks if id(module) in row_parallel else None


# ---- communication -----------------------------------------------------------------------------

def rank_collectives(tp: TensorParallel, vocab_size: int) -> RankCollectives:
    """The all-reduce of partial outputs and the gather of the vocabulary's rows, as this rank calls them."""
    group, world = tp.group.group_name, tp.world

    def reduce(partial: torch.Tensor) -> torch.Tensor:
        return torch.ops.codecomplete.tp_all_reduce(partial, group)

    def gather_logits(local: torch.Tensor) -> torch.Tensor:                         # (..., V_rank) float32
        return torch.ops.codecomplete.tp_all_gather(local, group, world)[..., :vocab_size]   # (..., V)

    return RankCollectives(reduce, gather_logits, lead=tp.rank == 0)


def parallel_dense(collectives: RankCollectives) -> DenseKernels:
    """The dense parts of a block with the tensor-parallel collectives in place (compiled like the plain ones)."""
    def parallel_output_and_ffn(x, attn, wo, norm_weight, eps, w13, w2, ffn_dim):
        return attention_output_and_ffn(x, attn, wo, norm_weight, eps, w13, w2, ffn_dim, reduce=collectives.reduce)

    def parallel_logits(x, norm_weight, eps, output_weight):
        return collectives.gather_logits(final_logits(x, norm_weight, eps, output_weight))

    return DenseKernels(attention_inputs, parallel_output_and_ffn, parallel_logits)


_COLLECTIVES: dict[str, Collectives] = {}   # by process group name, for the custom ops


class Collectives:
    """The all-reduce and the all-gather of one process group.

    `method` picks the all-reduce: "nccl" (the group's backend: NCCL, or gloo on CPUs), "one_shot"
    (symmetric memory, for messages up to ONE_SHOT_MAX_BYTES; larger ones take the backend), "auto"
    (one_shot where it runs, else the backend; $CODECOMPLETE_ALLREDUCE overrides), or "none": no
    communication at all, wrong results, for benchmarks that time what the collectives cost.
    """

    def __init__(self, group: dist.ProcessGroup, world: int):
        self.group, self.world = group, world
        self.method = os.environ.get("CODECOMPLETE_ALLREDUCE") or "auto"      # (empty: unset)
        if self.method not in ALL_REDUCE_METHODS:
            raise SettingError(f"CODECOMPLETE_ALLREDUCE={self.method!r}: choose from {', '.join(ALL_REDUCE_METHODS)}")
        self.one_shot_error: str | None = None   # why the one-shot path is unavailable, once tried
        self._buffer: torch.Tensor | None = None  # the symmetric-memory staging buffer (bytes)
        _COLLECTIVES[group.group_name] = self

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of x over the ranks (a new tensor)."""
        if self.method == "none":
            return x.clone()
        if self.method != "nccl" and self._one_shot_fits(x):
            n = x.numel()
            staging = self._buffer.view(x.dtype)[:n].view(x.shape)   # every rank's copy, read by its peers
            return torch.ops.symm_mem.one_shot_all_reduce_copy(staging, x.contiguous(), "sum", self.group.group_name)
        out = x.contiguous().clone()
        dist.all_reduce(out, group=self.group)
        return out

    def close(self) -> None:
        """Free the symmetric-memory buffer (while the group still exists) and forget the group."""
        self._buffer = None
        if _COLLECTIVES.get(self.group.group_name) is self:
            del _COLLECTIVES[self.group.group_name]

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., n) from every rank, concatenated along the last dim in rank order: (..., world * n)."""
        if self.method == "none":
            return x.repeat(*([1] * (x.dim() - 1)), self.world)
        flat = x.contiguous().view(-1)
        out = torch.empty(self.world * flat.numel(), dtype=x.dtype, device=x.device)   # (world, ..., n) flat
        _all_gather_flat(out, flat, self.group)
        return out.view(self.world, *x.shape).movedim(0, -2).reshape(*x.shape[:-1], self.world * x.shape[-1])

    def _one_shot_fits(self, x: torch.Tensor) -> bool:
        if not x.is_cuda or x.dtype not in (torch.bfloat16, torch.float32) or x.nbytes > ONE_SHOT_MAX_BYTES:
            return False
        if self._buffer is None and self.one_shot_error is None:
            self._setup_one_shot(x.device)
        if self._buffer is None and self.method == "one_shot":
            raise RuntimeError(f"the one-shot all-reduce is unavailable here: {self.one_shot_error}")
        return self._buffer is not None

    def _setup_one_shot(self, device: torch.device) -> None:
        """Allocate and exchange the staging buffer (collective: every rank gets here at the same call)."""
        buffer = None
        try:
            import torch.distributed._symmetric_memory as symm_mem
            if hasattr(symm_mem, "enable_symm_mem_for_group"):   # older torch needs it; newer deprecates it
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    symm_mem.enable_symm_mem_for_group(self.group.group_name)
            buffer = symm_mem.empty(ONE_SHOT_MAX_BYTES, dtype=torch.uint8, device=device)
            symm_mem.rendezvous(buffer, self.group.group_name)
            # A first sum that must come out exact: rank r contributes r + 1 everywhere.
            probe = torch.full((256,), float(self.group.rank() + 1), dtype=torch.float32, device=device)
            total = torch.ops.symm_mem.one_shot_all_reduce_copy(buffer.view(torch.float32)[:256], probe, "sum",
                                                                self.group.group_name)
            if not bool((total == self.world * (self.world + 1) / 2).all()):
                raise RuntimeError(f"a test sum came out as {total[0].item()}")
        except Exception as e:  # no peer access, no driver support, multicast demanded: NCCL it is
            buffer, self.one_shot_error = None, f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
        # Every rank must take the same path, or their collectives would not meet.
        agreed = torch.tensor([buffer is not None], dtype=torch.int32, device=device)
        dist.all_reduce(agreed, op=dist.ReduceOp.MIN, group=self.group)
        if agreed.item():
            self._buffer = buffer
        elif self.one_shot_error is None:
            self.one_shot_error = "unavailable on another rank"


def _all_gather_flat(out: torch.Tensor, flat: torch.Tensor, group) -> None:
    # torch 2.13 renamed all_gather_into_tensor (the GPU image's 2.11 has only the old name).
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, flat, group=group)


@torch.library.custom_op("codecomplete::tp_all_reduce", mutates_args=())
def _all_reduce_op(x: torch.Tensor, group: str) -> torch.Tensor:
    return _COLLECTIVES[group].all_reduce(x)


@_all_reduce_op.register_fake
def _(x, group):
    return torch.empty_like(x)


@torch.library.custom_op("codecomplete::tp_all_gather", mutates_args=())
def _all_gather_op(x: torch.Tensor, group: str, world: int) -> torch.Tensor:
    return _COLLECTIVES[group].all_gather(x)


@_all_gather_op.register_fake
def _(x, group, world):
    return x.new_empty((*x.shape[:-1], world * x.shape[-1]))

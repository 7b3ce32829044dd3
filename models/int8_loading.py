"""int8 (and int4) weights quantized while the checkpoint is read (`load_model(weights="int8")`, "int4"), so that a
model which fits only quantized loads: no projection's full-precision weight outlives the reading of its own tensors.

Loading in the model's dtype and then quantizing (`Transformer.quantize_weights`) peaks at the whole full-precision
model: CodeLlama-13B's 26 GB of bf16 on the way to 13 GB of int8, which a 24 GB card cannot hold. Here the int8
values and float32 row scales are allocated first (`Transformer.materialize(..., weights="int8")`), and each
projection is assembled in the model's dtype in a buffer of its own from its checkpoint tensors (q, k, v into wqkv;
gate, up into w13), quantized into its int8 storage by `quantize_rows` once its last rows arrive, then freed (a
tensor that is a whole projection in the model's dtype and device, wo or w2 of a random model, is quantized as it
is). The peak is the int8 model, the embedding table and norms in the model's dtype, the projections read in part at
that moment (one, or two where a layer's tensors come in name order: safetensors files list them sorted, k_proj,
o_proj, q_proj, v_proj, so wqkv stays open while wo loads) and the quantization's float32 temporaries of up to 4096
rows: the CPU allocator's peak measured 2.0-2.5 projections above the int8 model (tests/models/test_int8_loading.py).
A checkpoint that scatters a projection's parts across its files keeps more open, never more than it would have held
whole. (vLLM's online quantization counts a layer's loaded elements the same way and processes the layer once all
are in; sglang's layered loader quantizes a layer before it reads the next.)

The values quantized are the ones load-then-quantize quantizes (each tensor cast to the model's dtype, the same rows,
the same chunked arithmetic), so the bytes and scales are the same, bit for bit. A tensor-parallel rank's wo and w2
complete their rows' amax over the ranks (`row_amax_of`, as `models.tp.quantize_shard` does): every rank reads the
checkpoint in the same order, so each such projection completes at the same tensor on every rank and the ranks meet
in the same all-reduce.

int4 weights (models/int4_weights.py, `materialize(..., weights="int4")`) take the same path: a projection whose
storage has a `weight_offset` is quantized by `kernels.int4_layout.quantize_int4` into its packed nibbles, scales and
offsets (`quantize_into`), the bytes `quantize_weights(weights="int4")` makes, bit for bit; the vocabulary head's
storage is int8 there (`Transformer.stored_as`), quantized by `quantize_rows` as under int8 weights. (A split model
refuses int4 weights: models/tp.py.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kernels.int4_layout import Int4Weight
from models.int4_weights import quantize_into
from models.int8_weights import quantize_rows
from models.llama import projection_weight


class Int8Slot:
    """Rows of an int8 (or int4) projection as a checkpoint tensor fills them: the `shape` and `copy_` that
    `models.loading.hf.load_weights` asks of a slot."""

    def __init__(self, loader: Int8Loader, module: nn.Module, rows: slice):
        self.loader, self.module, self.rows = loader, module, rows
        self.shape = torch.Size((part_rows(rows, module), module.in_features))     # (int4 packs two columns a byte)

    def copy_(self, tensor: torch.Tensor) -> None:
        self.loader.fill(self.module, self.rows, tensor)


class Int8Loader:
    """Hands out the slots a model's checkpoint tensors are copied into (`hf_tensor_slots(model, loader.slot)`):
    views of the weights kept in the model's dtype, `Int8Slot`s for the int8 projections; `finish` once all are
    copied. A model without int8 storage gets views only: the loaders take one path for both kinds."""

    def __init__(self, model: nn.Module, row_amax_of: Callable[[nn.Module], Callable | None] | None = None):
        self.model, self.row_amax_of = model, row_amax_of
        self.dtype, self.device = model.compute_dtype, model.norm.weight.device
        self.padding: dict[nn.Module, int] = {}          # rows no tensor fills (zeros), per int8 projection
        self.filled: dict[nn.Module, int] = {}           # rows filled so far
        self.buffers: dict[nn.Module, torch.Tensor] = {}  # projections read in part: (N, K) in the model's dtype
        self.done: set[nn.Module] = set()

    def slot(self, module: nn.Module, rows: slice | None = None):
        """Where a checkpoint tensor holding rows `rows` (None: all) of module.weight goes."""
        if getattr(module, "weight_scale", None) is None:
            return module.weight if rows is None else module.weight[rows]
        return Int8Slot(self, module, slice(0, module.weight.shape[0]) if rows is None else rows)

    def pad(self, module: nn.Module, rows: slice) -> None:
        """Rows `rows` of an int8 projection are no tensor's: zeros (the padding past a rank's vocabulary rows, as
        `models.tp.build_shard` zeroes them)."""
        self.padding[module] = self.padding.get(module, 0) + part_rows(rows, module)

    def fill(self, module: nn.Module, rows: slice, tensor: torch.Tensor) -> None:
        """Copy `tensor` into rows `rows` of the projection's buffer; quantize the projection once it is whole."""
        N = module.weight.shape[0]
        buffer = self.buffers.get(module)
        if buffer is None and part_rows(rows, module) == N and self._as_loaded(tensor):
            self._quantize(module, tensor)      # one tensor holds the whole projection: quantized as it is
            return
        if buffer is None:
            make = torch.zeros if module in self.padding else torch.empty
            buffer = self.buffers[module] = make(full_shape(module), dtype=self.dtype, device=self.device)
        part = buffer[rows]
        part.copy_(tensor)
        self.filled[module] = self.filled.get(module, 0) + part.shape[0]
        if self.filled[module] + self.padding.get(module, 0) == N:
            self._quantize(module, self.buffers.pop(module))

    def finish(self) -> None:
        """After the last checkpoint tensor: a head tied to the embeddings quantized from the table (a copy of its
        own, as `quantize_weights` makes it), a projection that is all padding from zeros (a rank holding no
        vocabulary rows), and the freed buffers handed back to the device before the Engine sizes its KV cache in what
        is free."""
        model = self.model
        projections = [m for m in model.projections() if getattr(m, "weight_scale", None) is not None]
        if model.config.tie_embeddings and model.output in projections and model.output not in self.done:
            self._quantize(model.output, model.tok_embeddings.weight)
        for module in projections:
            if module in self.buffers:
                raise RuntimeError(f"{module.weight.shape[0] - self.filled[module] - self.padding.get(module, 0)} "
                                   "rows of an int8 projection were never loaded")
            if module not in self.done:
                self._quantize(module, torch.zeros(full_shape(module), dtype=self.dtype, device=self.device))
        if projections and self.device.type == "cuda":
            model.register_weight_ops()
            torch.cuda.empty_cache()

    def _as_loaded(self, tensor: torch.Tensor) -> bool:
        """Whether `tensor` holds the values a copy into the model would (its dtype, on its device)."""
        return tensor.dtype == self.dtype and tensor.device == self.device

    def _quantize(self, module: nn.Module, weight: torch.Tensor) -> None:
        storage = projection_weight(module)                     # the module's Int8Weight or Int4Weight
        if isinstance(storage, Int4Weight):
            quantize_into(weight, storage)
        else:
            quantize_rows(weight, self.row_amax_of(module) if self.row_amax_of else None, out=storage)
        self.done.add(module)


def full_shape(module: nn.Module) -> torch.Size:
    """(N, K): the shape of a quantized projection's weight in full precision (int4 stores (N, K // 2) bytes)."""
    return torch.Size((module.out_features, module.in_features))


def part_rows(rows: slice, module: nn.Module) -> int:
    """How many of module.weight's rows `rows` names."""
    return len(range(*rows.indices(module.weight.shape[0])))

"""What a model's weights take in memory as loaded (int8 and int4 weights counted as such: they never exist in the
model's dtype, models/int8_loading.py), and the out-of-memory error of a load that says how much was asked of how
much was free."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from kernels.int4_layout import int4_bytes  # (plain PyTorch: defines no Triton kernel)
from models.config import ModelConfig
from models.errors import OutOfMemoryError
from models.options import head_weights


def size_text(n: int) -> str:
    """Bytes as a message says them: "13.02 GiB", "3.7 MiB", "96 KiB"."""
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def weight_bytes(config: ModelConfig, dtype: torch.dtype, weights: str | None = None,
                 matmul_dtype: torch.dtype | None = None, world: int = 1) -> int:
    """Bytes of the weights that one of `world` ranks holds: every layer's projections and the vocabulary head in
    matmul_dtype (default dtype), or with weights="int8" a byte a weight and a float32 scale per row, or with
    weights="int4" the layers' half a byte a weight and a float16 scale and offset per group of 32 columns
    (`kernels.int4_layout.int4_bytes`) and the head int8's (`models.options.head_weights`): CodeLlama-34B 21.55 GB,
    7B 4.44 GB (a quantized tied head then a copy of its own); the embedding table (in matmul_dtype when it is the
    head's weight) and the norms in dtype.
    A rank holds 1/world of each layer's heads and FFN, a padded 1/world of the head's rows, the whole table."""
    c = config
    q, kv, ffn = c.n_heads * c.head_dim // world, c.n_kv_heads * c.head_dim // world, c.ffn_dim // world
    layers = [(q + 2 * kv, c.dim), (c.dim, q), (2 * ffn, c.dim), (c.dim, ffn)] * c.n_layers
    shared_head = c.tie_embeddings and world == 1 and weights is None
    head = [] if shared_head else [(-(-c.vocab_size // world), c.dim)]
    matmul = (matmul_dtype or dtype).itemsize
    projections = stored_bytes(layers, weights, matmul) + stored_bytes(head, head_weights(weights), matmul)
    table = c.vocab_size * c.dim * (matmul if shared_head else dtype.itemsize)
    norms = (2 * c.n_layers + 1) * c.dim * dtype.itemsize
    return projections + table + norms


def stored_bytes(shapes: list[tuple[int, int]], weights: str | None, itemsize: int) -> int:
    """Bytes of (N, K) weights stored as `weights`: int8 a byte a weight and a float32 scale per row, int4 as
    `kernels.int4_layout.int4_bytes` counts them, None `itemsize` bytes a weight."""
    if weights == "int8":
        return sum(n * k + 4 * n for n, k in shapes)
    if weights == "int4":
        return sum(int4_bytes(n, k) for n, k in shapes)
    return sum(n * k for n, k in shapes) * itemsize


def weights_name(dtype: torch.dtype, weights: str | None = None, matmul_dtype: torch.dtype | None = None) -> str:
    """How a message names the weights' storage: "int8", "bfloat16", ..."""
    return weights or str(matmul_dtype or dtype).removeprefix("torch.")


@contextmanager
def weights_fit(name: str, config: ModelConfig, device: torch.device, dtype: torch.dtype, weights: str | None = None,
                matmul_dtype: torch.dtype | None = None, tp=None) -> Iterator[None]:
    """Runs a load; out of memory in it (torch's CUDA error, or the CPU allocator's RuntimeError) becomes one
    OutOfMemoryError naming the weights' kind, their bytes and the memory free when the load began, and where
    narrower weights would fit instead (int8, else int4), that option. On a CPU that error comes before the load
    where the weights exceed the memory available: Linux lends memory it does not have (overcommit), so the
    allocator rarely fails, and the kernel's OOM killer ended the process midway with no message (random
    CodeLlama-7B weights on a CPU grew to 18 GB)."""
    from models.kv_cache import free_memory_bytes

    free = free_memory_bytes(device)
    world = 1 if tp is None else tp.world
    need = weight_bytes(config, dtype, weights, matmul_dtype, world)

    def out_of_memory() -> OutOfMemoryError:
        whose = f"{name}: its" if tp is None else f"{name}: rank {tp.rank}'s part of its"
        message = (f"{whose} {weights_name(dtype, weights, matmul_dtype)} weights ({size_text(need)}) do not fit in "
                   f"the {size_text(free)} of {device.type} memory free")
        return OutOfMemoryError(message + narrower_weights(config, dtype, weights, free, world))

    # (not on a GPU: its allocator fails at once and says so, and the memory free there is exact)
    if device.type == "cpu" and need > free:
        raise out_of_memory()
    try:
        yield
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if not isinstance(e, torch.OutOfMemoryError) and "allocate" not in str(e):
            raise
        raise out_of_memory() from None


def narrower_weights(config: ModelConfig, dtype: torch.dtype, weights: str | None, free: int, world: int = 1) -> str:
    """"; int8 weights would take 6.71 GiB: --weights int8": the first kind narrower than `weights` (int8, then int4:
    not on a split model, `models.options.SPLIT_INT4`) whose bytes fit in `free`, or "" where none does."""
    narrower = {None: ("int8", "int4"), "int8": ("int4",)}.get(weights, ())
    for kind in narrower:
        if kind == "int4" and world > 1:
            continue
        need = weight_bytes(config, dtype, kind, None, world)
        if need < free:
            return f"; {kind} weights would take {size_text(need)}: --weights {kind}"
    return ""

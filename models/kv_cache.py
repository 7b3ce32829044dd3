"""The KV cache: one preallocated (B, Hkv, S_max, D) buffer pair per layer, written in place.

Static shapes are what let the decode step be captured once in a CUDA graph: the cache never moves
or grows, and each step writes one slot per sequence at its own position.
"""

from __future__ import annotations

import torch
from torch import nn

from models.config import ModelConfig
from models.errors import OutOfMemoryError

HEADROOM_BYTES = 1 << 30  # left free for activations, logits and the CUDA-graph pool


class KVCache(nn.Module):
    """One layer's keys and values for up to `batch` sequences of up to `max_len` tokens."""

    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch, n_kv_heads, max_len, head_dim)
        # Zeros, not empty: slots past a sequence's length are masked, and 0 * NaN garbage would still be NaN.
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("rows", torch.arange(batch, device=device), persistent=False)

    def write(self, row: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefill: store k, v (1, Hkv, T, D) at positions start..start+T of one sequence.

        Returns that sequence's keys and values so far, (1, Hkv, start + T, D) views of the cache.
        """
        end = start + k.shape[2]
        self.k[row, :, start:end] = k[0]
        self.v[row, :, start:end] = v[0]
        return self.k[row:row + 1, :, :end], self.v[row:row + 1, :, :end]

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode: store each sequence's new k, v (B, Hkv, 1, D) at its own position input_pos (B,).

        One index_put_ per tensor, no host sync: safe inside a captured CUDA graph.
        Returns the caches of the first B sequences, (B, Hkv, S_max, D).
        """
        B = k.shape[0]
        rows = self.rows[:B]
        self.k[rows, :, input_pos] = k[:, :, 0]    # (B, Hkv, D) into slots (b, :, input_pos[b])
        self.v[rows, :, input_pos] = v[:, :, 0]
        return self.k[:B], self.v[:B]


def check_kv_cache_fits(config: ModelConfig, batch: int, max_len: int, dtype: torch.dtype,
                        device: torch.device, name: str) -> None:
    """Raise OutOfMemoryError, saying how many tokens would fit, when the cache cannot be allocated."""
    per_token = batch * config.kv_bytes_per_token(torch.tensor([], dtype=dtype).element_size())
    free = free_memory_bytes(device) - HEADROOM_BYTES
    if per_token * max_len > free:
        fit = max(0, free // per_token)
        raise OutOfMemoryError(
            f"{name}: a KV cache of {max_len} tokens x batch {batch} needs {per_token * max_len / 2**30:.2f} GiB "
            f"but only {max(free, 0) / 2**30:.2f} GiB of {device.type} memory is free (after 1 GiB headroom); "
            f"about {fit} tokens would fit: ask for a smaller context")


def free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62  # unknown: let the allocator decide

"""The 4-bit weight layout (`--weights int4`): how a projection's weight (N, K) is stored, quantized and read back.

    weight[n, k] ~ q[n, k] * scale[n, g] + offset[n, g],   g = k // G,   q in 0..15 (asymmetric, no zero point)

    packed (N, K // 2) uint8     byte j of row n holds column 2j in its low nibble and column 2j + 1 in its high one
    scale  (N, K // G) float16   (max - min) / 15 of the group's G columns (1 where a group is constant)
    offset (N, K // G) float16   the group's min: where q = 0 lands

Why this one: a batch-1 decode step streams every weight once, so 4 bits a weight (plus 4 bytes of fp16 scale and
offset a group: 6% at G = 128) is ~3.8x fewer bytes than bf16 and ~1.9x fewer than int8 (CodeLlama-34B: ~18 GB
against 68 and 34), which is what lets a 34B model fit a 24 GB card and what leaves a long-context step to its KV
cache. Groups along K with a min and a scale are GPTQ's and AWQ's storage and llama.cpp's Q4_1 (round to nearest,
no calibration here); a GEMV folds the offset in with one sum of x per group:
    sum_k w[n, k] x[k] = sum_g ( scale[n, g] * sum_{k in g} q[n, k] x[k] + offset[n, g] * sum_{k in g} x[k] ).
G is the largest of GROUP_SIZES dividing K (128 for CodeLlama, 64 for SmolLM2's 576 and 1536 columns); the
kernels read it from the shapes, G = K // scale.shape[1].

Pure PyTorch (no Triton import): models quantize with it on any machine, and the kernels' tests take their float64
reference from `dequantize_int4`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

GROUP_SIZES = (128, 64, 32)   # tried in order; the first dividing K is the group
LEVELS = 15                   # q in 0..LEVELS
ROWS_PER_CHUNK = 4096         # rows quantized at a time: bounds the float32 copy (34B's w13: 144 MiB, not 1.4 GiB)


class Int4Weight(NamedTuple):
    """A projection's 4-bit weight as `models.llama.linear` takes it (torch.compile sees three tensor arguments)."""
    packed: torch.Tensor       # (N, K // 2) uint8, two columns a byte, low nibble first
    scale: torch.Tensor        # (N, K // G) float16
    offset: torch.Tensor       # (N, K // G) float16


def group_size(K: int) -> int:
    """The group along K for a weight of K columns: the largest of GROUP_SIZES dividing it."""
    for G in GROUP_SIZES:
        if K % G == 0:
            return G
    raise ValueError(f"int4 weights need columns in groups of {GROUP_SIZES[-1]}; this weight has {K} columns")


def quantize_int4(weight: torch.Tensor) -> Int4Weight:
    """weight (N, K) (any float dtype) -> its Int4Weight, on weight's device: per group of G columns, offset = the
    min and scale = (max - min) / 15, both rounded to float16 first, then q = round((w - offset) / scale) to nearest
    even, clamped to 0..15, so that q * scale + offset with the stored scale and offset is what q stands for."""
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"quantize_int4 takes a 2-D float weight, not {tuple(weight.shape)} {weight.dtype}")
    N, K = weight.shape
    G = group_size(K)
    packed = torch.empty(N, K // 2, dtype=torch.uint8, device=weight.device)
    scale = torch.empty(N, K // G, dtype=torch.float16, device=weight.device)
    offset = torch.empty_like(scale)
    for start in range(0, N, ROWS_PER_CHUNK):
        rows = slice(start, start + ROWS_PER_CHUNK)
        w = weight[rows].float().reshape(-1, K // G, G)                          # (n, K/G, G)
        low, high = w.amin(dim=2), w.amax(dim=2)                                  # (n, K/G)
        s = ((high - low) / LEVELS).half()
        s = torch.where(s > 0, s, torch.ones_like(s))     # a constant group (or a step under fp16's range): q = 0
        o = low.half()
        q = ((w - o.float()[..., None]) / s.float()[..., None]).round().clamp(0, LEVELS).to(torch.uint8)
        q = q.reshape(-1, K)                                                      # (n, K)
        packed[rows] = q[:, 0::2] | (q[:, 1::2] << 4)
        scale[rows], offset[rows] = s, o
    return Int4Weight(packed, scale, offset)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """packed (N, K // 2) uint8 -> q (N, K) uint8 in 0..15, columns in order."""
    q = torch.stack((packed & 0xF, packed >> 4), dim=-1)                         # (N, K/2, 2)
    return q.reshape(packed.shape[0], -1)


def dequantize_int4(weight: Int4Weight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The (N, K) weight an Int4Weight stands for, in `dtype` (computed in float64 for float64, else float32)."""
    packed, scale, offset = weight
    q = unpack_int4(packed)
    N, K = q.shape
    G = K // scale.shape[1]
    work = torch.float64 if dtype == torch.float64 else torch.float32
    w = q.to(work).reshape(N, K // G, G) * scale.to(work)[..., None] + offset.to(work)[..., None]
    return w.reshape(N, K).to(dtype)


def int4_bytes(N: int, K: int) -> int:
    """Bytes of an (N, K) weight in this layout: the nibbles and a float16 scale and offset a group."""
    return N * K // 2 + 2 * 2 * N * (K // group_size(K))

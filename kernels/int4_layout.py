"""The 4-bit weight layout (`--weights int4`): how a projection's weight (N, K) is stored, quantized and read back.

    weight[n, k] ~ q[n, k] * scale[n, g] + offset[n, g],   g = k // G,   q in 0..15 (asymmetric, no zero point)

    packed (N, K // 2) uint8     byte j of row n holds column 2j in its low nibble and column 2j + 1 in its high one
    scale  (N, K // G) float16   (max - min) / 15 of the group's G columns (1 where a group is constant)
    offset (N, K // G) float16   the group's min: where q = 0 lands

Why this one: a batch-1 decode step streams every weight once, so 4 bits a weight (plus 4 bytes of fp16 scale and
offset a group: 25% more at G = 32) is ~3.2x fewer bytes than bf16 and ~1.6x fewer than int8 (CodeLlama-34B: ~21
GB against 68 and 34), which is what lets a 34B model fit a 24 GB card and what leaves a long-context step to its
KV cache. Groups along K with a min and a scale are llama.cpp's Q4_1 (5 bits a weight, blocks of 32) and GPTQ's and
AWQ's storage (round to nearest here, no calibration); a GEMV folds the offset in with one sum of x per group:
    sum_k w[n, k] x[k] = sum_g ( scale[n, g] * sum_{k in g} q[n, k] x[k] + offset[n, g] * sum_{k in g} x[k] ).
The product's group is GROUP = 32, chosen by accuracy: on the embedded SmolLM2 teacher-forced over 2,040 positions
of real code, top-1 agreement with its float32 weights was 88.2% at G = 32 against 66.1% with groups of 64 and 128
(mean KL 0.044 against 0.460 nats, every projection int4), and with the vocabulary head int8 as the product keeps it
97.1% at G = 32 against 72.5% at G = 64 (tests/models/test_int4_weights_accuracy.py), at 0.5 bit a weight more than
G = 128 would cost. The kernels take any of GROUP_SIZES and read G from the shapes, G = K // scale.shape[1].

Pure PyTorch (no Triton import): models quantize with it on any machine, and the kernels' tests take their float64
reference from `dequantize_int4`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

GROUP = 32                    # the product's group (Q4_1's block): see the docstring for the measurement
GROUP_SIZES = (128, 64, 32)   # the groups the kernels read
LEVELS = 15                   # q in 0..LEVELS
ROWS_PER_CHUNK = 4096         # rows quantized at a time: bounds the float32 copy (34B's w13: 144 MiB, not 1.4 GiB)


class Int4Weight(NamedTuple):
    """A projection's 4-bit weight as `models.llama.linear` takes it (torch.compile sees three tensor arguments)."""
    packed: torch.Tensor       # (N, K // 2) uint8, two columns a byte, low nibble first
    scale: torch.Tensor        # (N, K // G) float16
    offset: torch.Tensor       # (N, K // G) float16


def group_size(K: int, group: int = GROUP) -> int:
    """The group along K for a weight of K columns (`group`, the product's by default), checked: one of
    GROUP_SIZES, dividing K."""
    if group not in GROUP_SIZES:
        raise ValueError(f"int4 weights come in groups of {', '.join(map(str, GROUP_SIZES))} columns, not {group}")
    if K % group:
        raise ValueError(f"int4 weights need columns in groups of {group}; this weight has {K} columns")
    return group


def quantize_int4(weight: torch.Tensor, group: int = GROUP) -> Int4Weight:
    """weight (N, K) (any float dtype) -> its Int4Weight, on weight's device: per group of G = `group` columns, offset
    = the min and scale = (max - min) / 15, both rounded to float16 first, then q = round((w - offset) / scale) to
    nearest even, clamped to 0..15, so that q * scale + offset with the stored scale and offset is what q stands
    for."""
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"quantize_int4 takes a 2-D float weight, not {tuple(weight.shape)} {weight.dtype}")
    N, K = weight.shape
    G = group_size(K, group)
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


def int4_bytes(N: int, K: int, group: int = GROUP) -> int:
    """Bytes of an (N, K) weight in this layout: the nibbles and a float16 scale and offset a group."""
    return N * K // 2 + 2 * 2 * N * (K // group_size(K, group))

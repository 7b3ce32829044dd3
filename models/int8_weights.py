"""int8 weight-only quantization (`--weights int8`): the projections' weights as int8 with a float32 scale per
output row, gpt-fast's int8 scheme, and the one place a projection with such a weight is computed.

    weight (N, K) ~ values (N, K) int8 * scale (N,) float32,   scale = amax(|row|) / 127 (symmetric, no zero point)

A batch-1 decode step streams every weight once, so at short contexts its time is the weights' bytes: int8 halves
them against bf16 (CodeLlama-7B: 13.5 -> 6.7 GB a step). The dequantization rides inside the GEMV: y = (x @
values^T) * scale, the integers' sums in fp32, each row's scaled once (kernels/fused_gemv.py, kernels/gemv.py).
The embedding table stays in the model's dtype (a step reads one row of it); an output head tied to it gets an
int8 copy of its own.

`linear_int8` computes x @ weight^T for every caller of `models.llama.linear`:
    CUDA, one row      the batch-1 GEMV op on the int8 bytes (`torch.ops.codecomplete.gemv_int8`)
    CUDA, 2..16 rows   (a speculative verification of 1 + k <= 16 tokens, a batch > 1 decode step) the few-row op
                       on the int8 bytes (`torch.ops.codecomplete.few_rows_int8`: tensor-core dots of the int8
                       tiles, converted in registers, with x's rows padded to 16), read once
    CUDA, more rows    (prefill) the weight dequantized to the activations' dtype, then cuBLAS: a weight-sized
                       write (and read) per call on top of the int8 read, which a compute-bound prefill barely notices
    CPU, one row       `torch._weight_int8pack_mm` where this torch has it and it agrees with a float64 reference
                       (checked once per dtype), else as for several rows
    CPU, several rows  the dequantized weight, as on CUDA
On a CPU int8 weights save memory, not time: torch 2.13's CPU `_weight_int8pack_mm` took 0.8-2 ms for SmolLM2's
layer projections at one row where float32 F.linear took 0.08-0.14 ms, and 8-25 ms at 9 rows (a speculative
verification) where the dequantized weight took 0.5-3 ms (2-core EPYC, single thread, the best of 10-30 runs); only
on the 49152 x 576 output head at one row did it beat dequantizing (27-58 ms against 165-280 ms).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

INT8_MAX = 127.0
ROWS_PER_CHUNK = 4096       # rows quantized at a time: bounds the float32 copy (34B's w13: 144 MiB, not 1.4 GiB)
FEW_ROWS = 16               # the most rows the few-row op takes (kernels.few_rows_int8.MAX_ROWS)


class Int8Weight(NamedTuple):
    """A projection's int8 weight as `models.llama.linear` takes it (torch.compile sees two tensor arguments)."""
    values: torch.Tensor           # (N, K) int8
    scale: torch.Tensor            # (N,) float32: row n stands for values[n] * scale[n]


def quantize_rows(weight: torch.Tensor, row_amax: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  out: Int8Weight | None = None) -> Int8Weight:
    """weight (N, K) -> int8 values (N, K) and float32 scales (N,) per row: amax / 127 rounded once (1 for an all-zero
    row), values round(w / scale) to nearest even, within +-127: `kernels.reference.quantize_int8`'s arithmetic.

    `row_amax`: maps the rows' amax (N,) float32 to the amax to use; a tensor-parallel rank holding some of each row's
    columns takes the maximum over the ranks, so every rank's bytes are the slices of one quantization.
    `out`: the int8 storage to write (a model's, allocated before its weights load: models/int8_loading.py)."""
    N = weight.shape[0]
    amax = torch.empty(N, dtype=torch.float32, device=weight.device)
    for start in range(0, N, ROWS_PER_CHUNK):
        amax[start:start + ROWS_PER_CHUNK] = weight[start:start + ROWS_PER_CHUNK].float().abs().amax(dim=1)
    if row_amax is not None:
        amax = row_amax(amax)
    scale = (amax.double() / INT8_MAX).float()                  # the correctly rounded quotient (see quant_scale)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    values = torch.empty(weight.shape, dtype=torch.int8, device=weight.device) if out is None else out.values
    for start in range(0, N, ROWS_PER_CHUNK):
        rows = slice(start, start + ROWS_PER_CHUNK)
        values[rows] = (weight[rows].float() / scale[rows, None]).round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    if out is None:
        return Int8Weight(values, scale)
    out.scale.copy_(scale)
    return out


def register_cuda_ops() -> None:
    """Register the ops an int8 projection runs on CUDA (`linear_int8`); done once a model's int8 weights live on a
    GPU: importing kernels defines Triton kernels, which a CPU run must not do before it can ask for the interpreter."""
    import kernels.few_rows_int8  # noqa: F401  (torch.ops.codecomplete.few_rows_int8: 2..16 rows)
    import kernels.gemv  # noqa: F401  (torch.ops.codecomplete.gemv_int8, the batch-1 op)


def dequantize(weight: Int8Weight, dtype: torch.dtype) -> torch.Tensor:
    """The weight (N, K) in `dtype`, each value rounded once (from its float32 product)."""
    return (weight.values.float() * weight.scale[:, None]).to(dtype)


def linear_int8(x: torch.Tensor, weight: Int8Weight) -> torch.Tensor:
    """x (..., K) @ weight^T -> (..., N) in x.dtype, where it runs best (the module's docstring, `cuda_route`)."""
    values, scale = weight
    N, K = values.shape
    if x.is_cuda:
        route = cuda_route(x.numel() // K)
        if route == "gemv":              # a batch-1 decode step: the GEMV reads the int8 bytes once
            return torch.ops.codecomplete.gemv_int8(x.reshape(1, K), values, scale).view(*x.shape[:-1], N)
        if route == "few rows":          # a verification or batched step: read once too, not dequantized
            return torch.ops.codecomplete.few_rows_int8(x.reshape(-1, K), values, scale).view(*x.shape[:-1], N)
    elif x.numel() == K and int8pack_mm_agrees(x.dtype):
        return torch._weight_int8pack_mm(x.reshape(1, K), values, scale.to(x.dtype)).view(*x.shape[:-1], N)
    # Prefill (or a CPU): dequantize, then cuBLAS (or the CPU's BLAS). That writes (and cuBLAS reads) the weight in
    # the activations' dtype on every call, 5 bytes a weight moved against bf16 weights' 2; compiled, the
    # dequantization is one kernel, never fused into the matmul. Prefill, compute-bound, barely notices.
    return F.linear(x, dequantize(weight, x.dtype))


def cuda_route(rows: int) -> str:
    """How `linear_int8` computes `rows` rows of x on CUDA: "gemv" (one row), "few rows" (2 to FEW_ROWS: the int8
    bytes read once, where dequantizing for cuBLAS made a verification step cost ~2.5x its bf16 time, not ~0.5x),
    "dequantize" (more: prefill; and no rows)."""
    return "gemv" if rows == 1 else "few rows" if 2 <= rows <= FEW_ROWS else "dequantize"


@functools.cache
def int8pack_mm_agrees(dtype: torch.dtype) -> bool:
    """Whether this torch's CPU `_weight_int8pack_mm` exists and computes x (M, K) @ (values * scale)^T in `dtype`
    within that dtype's rounding of a float64 reference (asked once per dtype, on small random inputs)."""
    mm = getattr(torch, "_weight_int8pack_mm", None)
    if mm is None or dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 96, generator=generator).to(dtype)
    values = torch.randint(-127, 128, (40, 96), generator=generator, dtype=torch.int8)
    scale = (torch.rand(40, generator=generator) + 0.5) / 100
    try:
        got = mm(x, values, scale.to(dtype)).double()
    except (RuntimeError, NotImplementedError):      # not built for this dtype or CPU
        return False
    want = x.double() @ (values.double() * scale.to(dtype).double()[:, None]).T
    bound = x.double().abs() @ (values.double().abs() * scale.double()[:, None]).T     # sum of |terms|
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    return got.shape == want.shape and bool(((got - want).abs() <= tolerance * bound).all())

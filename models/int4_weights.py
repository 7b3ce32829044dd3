"""4-bit weight-only quantization (`--weights int4`): the projections' weights in kernels/int4_layout.py's layout,
and the one place a projection with such a weight is computed.

    weight[n, k] ~ q[n, k] * scale[n, k // G] + offset[n, k // G],   q in 0..15, G = 128 (64, 32 where K needs it)

Half the bytes of int8 weights and ~0.27 of bf16 ones (CodeLlama-34B: ~18 GB against 34 and 68): a batch-1 decode
step streams every weight once, so at long contexts the step is left to the KV cache, and a 34B model fits a 24 GB
card. A module holds the packed nibbles as its `weight` (N, K // 2) uint8 and `weight_scale`, `weight_offset`
(N, K // G) float16 buffers (`Transformer.materialize`, `Transformer.quantize_weights`); the embedding table stays in
the model's dtype and a head tied to it gets an int4 copy of its own, as with int8 weights.

Accuracy (round to nearest per group, no calibration): the embedded SmolLM2-135M teacher-forced over 2,040 positions
of installed packages' code, int4 against its float32 weights: the top-1 next token agrees at 66.1%, mean KL 0.460
nats, log-loss +18.6% (int8 weights: 95.2%, 4.7e-3 nats, +0.3%; tests/models/test_int4_weights_accuracy.py,
bench/results/NOTES.md). A 135M model is the hard case for 4 bits, and this one's float32 weights are Q4_1 blocks of
32 columns dequantized, which its groups of 64 and 128 straddle: with groups of 32 the same test gives 88.2%, 0.044
nats, +1.4%. Not measured on a 7B or 34B checkpoint (none is on these machines): prefer int8 where it fits.

`linear_int4` computes x @ weight^T for every caller of `models.llama.linear`:
    CUDA, 1..16 rows   `torch.ops.codecomplete.gemv_int4` (kernels/gemv_int4.py) on the packed bytes, read once: a
                       decode step, a speculative verification of 1 + k <= 16 tokens, a batch of up to 16
    CUDA, more rows    (prefill) the weight dequantized to the activations' dtype, then cuBLAS: a transient buffer
                       of the whole weight in that dtype (bf16: 4x the int4 bytes) written and read per call, which a
                       compute-bound prefill barely notices; the peak memory of a prefill grows by its largest
                       projection's (34B's w13: 0.72 GB in bf16)
    CPU                the same dequantized weight and F.linear: int4 weights save memory on a CPU, not time (each
                       call unpacks the nibbles and writes the float weight before the matmul reads it): the
                       embedded model decoded 0.69 tok/s against 9.6 in float32 and 3.9 with int8 weights (one thread
                       of a loaded 2-core CPU, best of 3 x 32 tokens), its weights 202 MiB against 536 and 260
Compiled (the decode step is torch.compile'd and graph-replayed on CUDA) the op is opaque to Inductor and the
NamedTuple's three tensors are three graph inputs, as `Int8Weight`'s two are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.int4_layout import Int4Weight, dequantize_int4, quantize_int4

FEW_ROWS = 16          # the most rows torch.ops.codecomplete.gemv_int4 takes
CUDA_OP = True         # A/B and checks: False runs every CUDA call on the dequantized weight (models.bench)


def register_cuda_ops() -> None:
    """Register the op an int4 projection runs on CUDA; done once a model's int4 weights live on a GPU (importing
    kernels defines Triton kernels, which a CPU run must not do before it can ask for the interpreter)."""
    import kernels.gemv_int4  # noqa: F401  (torch.ops.codecomplete.gemv_int4: 1..16 rows)


def linear_int4(x: torch.Tensor, weight: Int4Weight) -> torch.Tensor:
    """x (..., K) @ weight^T -> (..., N) in x.dtype, where it runs best (the module's docstring, `cuda_route`)."""
    packed, scale, offset = weight
    N, K = packed.shape[0], 2 * packed.shape[1]
    rows = x.numel() // K
    if x.is_cuda and cuda_route(rows) == "op":
        return torch.ops.codecomplete.gemv_int4(x.reshape(rows, K), packed, scale, offset).view(*x.shape[:-1], N)
    # Prefill, or a CPU: the whole weight in x's dtype for this call (each value rounded once from its float32
    # q * scale + offset, exact in float32 but for the sum's rounding), then the BLAS.
    return F.linear(x, dequantize_int4(weight, x.dtype))


def cuda_route(rows: int) -> str:
    """How `linear_int4` computes `rows` rows of x on CUDA: "op" (1..FEW_ROWS: the packed bytes read once) or
    "dequantize" (more rows: prefill; no rows; or CUDA_OP off)."""
    return "op" if CUDA_OP and 1 <= rows <= FEW_ROWS else "dequantize"


def quantize_into(weight: torch.Tensor, out: Int4Weight) -> Int4Weight:
    """weight (N, K) quantized by `kernels.int4_layout.quantize_int4` into a model's int4 storage `out` (allocated
    before its weights load: models/int8_loading.py); the int4 copy made on the way is freed with this call."""
    quantized = quantize_int4(weight)
    for storage, value in zip(out, quantized):
        storage.copy_(value)
    return out

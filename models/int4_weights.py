"""4-bit weight-only quantization (`--weights int4`): the projections' weights in kernels/int4_layout.py's layout,
and the one place a projection with such a weight is computed (but a GPU's fused one-token step, whose kernels read
the packed nibbles themselves: models/fused_decode.py).

    weight[n, k] ~ q[n, k] * scale[n, k // G] + offset[n, k // G],   q in 0..15, G = 32 (kernels.int4_layout.GROUP)

5 bits a weight with the scale and offset: ~0.63 of int8 weights' bytes and ~0.31 of bf16 ones (CodeLlama-34B:
21.55 GB held (20.1 GiB), 21.03 GB read a decode step, against 33.5 and 67.0 read; `weights_memory.weight_bytes`): a
batch-1 decode step streams every weight once, so at long contexts the step is left to the KV cache, and a 34B model
fits a 24 GB card (with ~3 GiB left for its KV cache). A module holds the packed nibbles as its `weight` (N, K // 2)
uint8 and `weight_scale`, `weight_offset` (N, K // G) float16 buffers (`Transformer.materialize`,
`Transformer.quantize_weights`); the embedding table stays in the model's dtype. The vocabulary head is int8 (a
float32 scale per row, models/int8_weights.py; a tied head a copy of its own), as llama.cpp keeps output.weight at
Q6_K in its 4-bit files (`models.options.head_weights`): in 8 bits 1.2% of CodeLlama-34B's bytes (+0.5% a step over
an int4 head), 3% of 7B's (+1.2%).

Accuracy (round to nearest per group of 32, no calibration): the embedded SmolLM2-135M teacher-forced over 2,040
positions of installed packages' code, against its float32 weights: the top-1 next token agrees at 97.1%, mean KL
1.28e-3 nats, log-loss +0.15% (int8 weights everywhere: 95.2%, 4.7e-3 nats, +0.3%;
tests/models/test_int4_weights_accuracy.py, bench/results/NOTES.md). This model's float32 weights are Q4_1 blocks of
32 dequantized, which groups of 32 reproduce exactly: with the head in int4 too it was 88.2%, 0.044 nats, +1.4%, all
of it the head's (the head kept in float32: 100%, KL 0), which is why the head is 8-bit; groups of 64, which straddle
those blocks, give 72.5%, 0.303 nats, +11.3% (with an int4 head 66.1%): why the group is 32. Not measured
on a 7B or 34B checkpoint (none is on these machines): prefer int8 where it fits.

`linear_int4` computes x @ weight^T for every caller of `models.llama.linear`:
    CUDA, 1..16 rows   `torch.ops.codecomplete.gemv_int4` (kernels/gemv_int4.py) on the packed bytes, read once: a
                       decode step, a speculative verification of 1 + k <= 16 tokens, a batch of up to 16
    CUDA, more rows    (prefill) the weight dequantized to the activations' dtype, then cuBLAS: a transient buffer
                       of the whole weight in that dtype (bf16: 3.2x the int4 bytes) written and read per call, which a
                       compute-bound prefill barely notices; the peak memory of a prefill grows by its largest
                       projection's (34B's w13: 0.72 GB in bf16)
    CPU                the weight dequantized CPU_CHUNK_BYTES of rows at a time, each chunk multiplied while it is
                       in the cache (`linear_by_row_chunks`): int4 weights save memory on a CPU, and cost about what
                       int8 ones do: the embedded model decodes 4.0 tok/s against 3.6 with int8 weights and 9.8 in
                       float32 (the whole weight dequantized per call: 1.6; one thread of a loaded 2-core CPU, best
                       of 3 x 32 tokens), its weights 188 MiB against 237 and 513 (108 of them the float32 table),
                       measured with an int4 head; the int8 head (linear_int8) makes them 199 MiB and computes as
                       fast as an int4 one (23.7 against 26.7 ms a token in one run, 42.5 against 40.2 in another:
                       the machine's noise; bench/results/NOTES.md, 2026-12-06)
Compiled (the decode step is torch.compile'd and graph-replayed on CUDA) the op is opaque to Inductor and the
NamedTuple's three tensors are three graph inputs, as `Int8Weight`'s two are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.int4_layout import Int4Weight, dequantize_int4, quantize_int4

FEW_ROWS = 16          # the most rows torch.ops.codecomplete.gemv_int4 takes
CUDA_OP = True         # A/B and checks: False runs every CUDA call on the dequantized weight (models.bench)
CPU_CHUNK_BYTES = 2**19   # a CPU's float weight rows dequantized at a time: fits a core's L2 for the matmul to read


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
    if not x.is_cuda:
        return linear_by_row_chunks(x, weight)
    # Prefill: the whole weight in x's dtype for this call (each value rounded once from its float32
    # q * scale + offset, exact in float32 but for the sum's rounding), then cuBLAS.
    return F.linear(x, dequantize_int4(weight, x.dtype))


def linear_by_row_chunks(x: torch.Tensor, weight: Int4Weight) -> torch.Tensor:
    """x (..., K) @ weight^T -> (..., N) on a CPU: the weight dequantized CPU_CHUNK_BYTES of rows at a time into one
    buffer that the matmul then reads while it is still in the core's cache, rather than the whole float weight
    written to memory and read back (the head of the embedded model: 113 MB a call). The same values as
    `dequantize_int4` (q * scale + offset in float32, rounded once to x's dtype), each chunk's rows summed by the
    BLAS as a whole weight's would be but for the order."""
    packed, scale, offset = weight
    N, K = packed.shape[0], 2 * packed.shape[1]
    groups = scale.shape[1]
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    rows = max(1, CPU_CHUNK_BYTES // (K * work.itemsize))
    xT = x.reshape(-1, K).t()                                                   # (K, M)
    yT = torch.empty(N, xT.shape[1], dtype=x.dtype)                             # (N, M)
    buffer = torch.empty(rows, groups, K // groups, dtype=work)                 # (rows, K/G, G)
    for start in range(0, N, rows):
        end = min(start + rows, N)
        w, nibbles = buffer[:end - start], packed[start:end]                    # (n, K/G, G), (n, K/2)
        pairs = w.view(end - start, K // 2, 2)                                  # column 2j, 2j + 1 of byte j
        pairs[..., 0].copy_(nibbles & 0xF)
        pairs[..., 1].copy_(nibbles >> 4)
        w.mul_(scale[start:end, :, None]).add_(offset[start:end, :, None])     # (a broadcast addcmul: slower)
        w = w.view(end - start, K)
        torch.mm(w if work == x.dtype else w.to(x.dtype), xT, out=yT[start:end])
    return yT.t().contiguous().view(*x.shape[:-1], N)     # (one row: no copy)


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

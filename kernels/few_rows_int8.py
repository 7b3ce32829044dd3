"""A few rows against an int8 weight: y (M, N) = x (M, K) @ (values (N, K) int8 * scale (N,) float32 per row)^T,
for 1 <= M <= MAX_ROWS, reading the int8 bytes once.

A speculative verification step (1 + k tokens, k <= 15) or a batch > 1 decode step multiplies a few rows by every
weight of the model: like batch 1 it is bound by the weights' bytes. The batch-1 GEMV (kernels/gemv.py) serves one
row; cuBLAS would need the weight dequantized first, a weight-sized write and read per call (5 bytes a weight
moved against int8's 1). Here each program takes BLOCK_N rows of W over all of K in BLOCK_K chunks: it converts
each int8 tile to the activations' 16-bit dtype (exact: every int8 is a bf16 and an fp16), multiplies it with
the tile of x (all M rows, padded to M_PAD = 16 by masked loads: a tensor-core dot's smallest side) on the tensor
cores, accumulating fp32, and scales each row's sums once at the end:

    acc (BLOCK_N, M_PAD) += W tile (BLOCK_N, BLOCK_K) @ x tile^T (BLOCK_K, M_PAD)       y^T, a tile at a time

The int8 -> 16-bit conversion must not cost an I2F a weight (quarter rate on sm_90: about as long as streaming the
bytes). fp16: PRMT and HSUB2 (`kernels.split_kv._int8_to_fp16`); float32 activations: PRMT and an exact FADD
(`kernels.split_kv_row._int8_to_fp32`, as the GEMV), then fp32 dots at IEEE precision (not TF32), so a float32
model keeps float32 rounding; bf16: Triton's own conversion, which Triton 3.6 already builds for sm_90 from PRMT,
LOP3 and HADD2.BF16 (388 instructions a loop step at BLOCK_N 16 against 478 by way of `_int8_to_fp32` and a
conversion to bf16; `compile_facts` checks that no I2F is left). In the interpreter (CPU) the tiles are widened to
fp32 at once: its 16-bit arithmetic and dots are wrong (DESIGN.md).

`torch.ops.codecomplete.few_rows_int8` is the op `models.int8_weights.linear_int8` calls for 2..16 rows on CUDA,
opaque to torch.compile. The launch configuration (`config`) is a first guess, not yet measured:
bench/gpu/int8_weights_check.py times it against dequantize + cuBLAS and against bf16 weights' cuBLAS.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.devices import on_first_tensors_device
from kernels.split_kv import _int8_to_fp16
from kernels.split_kv_row import _int8_to_fp32

MAX_ROWS = 16          # x's rows: M_PAD, the dot's padded side
M_PAD = 16
BLOCK_K, NUM_WARPS, NUM_STAGES = 256, 4, 3


@triton.jit
def _few_rows_int8_kernel(X, W, W_SCALE, Y, M, N, K, stride_xm, stride_wn, stride_ym,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, M_PAD: tl.constexpr,
                          INT8_PRMT: tl.constexpr, UPCAST: tl.constexpr, IEEE_DOT: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)                      # (BLOCK_N,) rows of W
    mask_n = rows < N
    offs_m = tl.arange(0, M_PAD)                                                    # (M_PAD,) rows of x
    mask_m = offs_m < M
    offs_k = tl.arange(0, BLOCK_K)
    w_rows = W + rows[:, None].to(tl.int64) * stride_wn                             # (BLOCK_N, 1)
    x_cols = X + offs_m[None, :] * stride_xm                                        # (1, M_PAD)
    DOT_DTYPE: tl.constexpr = tl.float32 if UPCAST else X.dtype.element_ty
    acc = tl.zeros([BLOCK_N, M_PAD], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + offs_k                                                          # (BLOCK_K,)
        mask_k = cols < K
        w = tl.load(w_rows + cols[None, :], mask=mask_n[:, None] & mask_k[None, :], other=0)  # (BLOCK_N, BLOCK_K)
        xt = tl.load(x_cols + cols[:, None], mask=mask_k[:, None] & mask_m[None, :], other=0.0)  # (BLOCK_K, M_PAD)
        if INT8_PRMT and DOT_DTYPE == tl.float16:    # PRMT and HSUB2, not Triton's I2F.F16 a weight
            w = _int8_to_fp16(w)
        elif INT8_PRMT and DOT_DTYPE == tl.float32:  # PRMT and an exact FADD
            w = _int8_to_fp32(w)
        else:              # bf16: Triton 3.6 converts by PRMT, LOP3 and HADD2.BF16 on sm_90 itself, no I2F
            w = w.to(DOT_DTYPE)
        xt = xt.to(DOT_DTYPE)
        if IEEE_DOT:       # float32 activations (and the interpreter): fp32 products, not TF32's
            acc = tl.dot(w, xt, acc, input_precision="ieee")
        else:
            acc = tl.dot(w, xt, acc)                                                # (BLOCK_N, M_PAD) fp32
    acc = acc * tl.load(W_SCALE + rows, mask=mask_n, other=0.0)[:, None]           # each row's sums, scaled once
    y = Y + offs_m[None, :] * stride_ym + rows[:, None]                             # (BLOCK_N, M_PAD): y^T's tile
    tl.store(y, acc.to(Y.dtype.element_ty), mask=mask_n[:, None] & mask_m[None, :])


def config(N: int, K: int) -> tuple[int, int, int, int]:
    """(block_n, block_k, num_warps, num_stages) for N rows of W: programs of 64 rows where there are rows for
    ~2 waves of them on 132 SMs, fewer rows a program on narrower weights (CodeLlama-7B's wo and w2, 4096 rows:
    256 programs of 16). A guess to be replaced by the H200's measurements."""
    block_n = 64 if N >= 64 * 264 else 32 if N >= 32 * 264 else 16
    return block_n, BLOCK_K, NUM_WARPS, NUM_STAGES


@on_first_tensors_device
def few_rows_int8(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, *, block_n: int | None = None,
                  block_k: int | None = None, num_warps: int | None = None, num_stages: int | None = None
                  ) -> torch.Tensor:
    """x (M, K) with 1 <= M <= MAX_ROWS in float32, bfloat16 or float16; weight (N, K) int8 with a contiguous last
    dim; weight_scale (N,) contiguous float32 -> y (M, N) in x.dtype, y = x @ (weight * weight_scale[:, None])^T.
    block_n ... num_stages: None takes `config(N, K)`'s (benchmarks and tests ask for others)."""
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"few_rows_int8 takes x (M, K) and weight (N, K), got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    M, K = x.shape
    N = weight.shape[0]
    if not 1 <= M <= MAX_ROWS:
        raise ValueError(f"few_rows_int8 takes 1 to {MAX_ROWS} rows of x, got {M} (more rows: dequantize and "
                         f"use cuBLAS)")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"few_rows_int8: x must be float32, bfloat16 or float16, got {x.dtype}")
    if weight.dtype != torch.int8 or weight.stride(1) != 1:
        raise ValueError(f"few_rows_int8: weight must be int8 with a contiguous last dim, got {weight.dtype} with "
                         f"strides {weight.stride()}")
    if weight_scale.dtype != torch.float32 or weight_scale.shape != (N,) or not weight_scale.is_contiguous():
        raise ValueError(f"few_rows_int8: weight_scale must be one contiguous float32 per row of weight ({N},), got "
                         f"{tuple(weight_scale.shape)} {weight_scale.dtype}")
    if not x.device == weight.device == weight_scale.device:
        raise ValueError(f"few_rows_int8: x, weight and weight_scale must share a device, got {x.device}, "
                         f"{weight.device} and {weight_scale.device}")
    chosen = config(N, K)
    block_n, block_k, num_warps, num_stages = (given if given is not None else default for given, default in
                                               zip((block_n, block_k, num_warps, num_stages), chosen))
    if x.stride(1) != 1:
        x = x.contiguous()
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    upcast = not x.is_cuda         # the interpreter: widen to fp32 at once
    _few_rows_int8_kernel[(triton.cdiv(N, block_n),)](
        x, weight, weight_scale, y, M, N, K, x.stride(0), weight.stride(0), y.stride(0),
        BLOCK_N=block_n, BLOCK_K=block_k, M_PAD=M_PAD, INT8_PRMT=x.is_cuda, UPCAST=upcast,
        IEEE_DOT=upcast or x.dtype == torch.float32, num_warps=num_warps, num_stages=num_stages)
    return y


@torch.library.custom_op("codecomplete::few_rows_int8", mutates_args=())
def few_rows_int8_op(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    """x (M, K), 1 <= M <= 16, @ (weight (N, K) int8 * weight_scale (N,) float32 per row)^T -> (M, N) in x.dtype:
    the int8 bytes read once (a speculative verification step, a batch > 1 decode step)."""
    return few_rows_int8(x, weight, weight_scale)


@few_rows_int8_op.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.shape[0], weight.shape[0]))


def compile_facts(arch: int = 90) -> list[dict]:
    """Build the kernel for a GPU target without a GPU, as `few_rows_int8` launches it for CodeLlama-7B's widest and
    narrowest projections with bf16, fp16 and float32 activations, and fp16 once with Triton's own int8 conversion
    (INT8_PRMT off: the arm PRMT replaces): facts about each binary, its main loop's SASS among them. Must run without
    TRITON_INTERPRET (see kernels/compile_check.py)."""
    from triton.backends.compiler import GPUTarget

    from kernels.compile_check import _compile, sass_facts
    facts = []
    for dtype, N, prmt in (("bf16", 32016, True), ("bf16", 4096, True), ("fp16", 4096, True), ("fp32", 4096, True),
                           ("fp16", 4096, False)):
        block_n, block_k, num_warps, num_stages = config(N, 4096)
        binary = _compile(_few_rows_int8_kernel, dict(X=f"*{dtype}", W="*i8", W_SCALE="*fp32", Y=f"*{dtype}"),
                          dict(BLOCK_N=block_n, BLOCK_K=block_k, M_PAD=M_PAD, INT8_PRMT=prmt, UPCAST=False,
                               IEEE_DOT=dtype == "fp32"),
                          GPUTarget("cuda", arch, 32), num_warps, num_stages, floats=(), not_divisible=("M",))
        sass = sass_facts(binary.asm["cubin"], with_opcodes=True)
        loop = sass.get("loop_opcodes", {})
        facts.append({"dtype": dtype, "N": N, "block_n": block_n, "prmt_arm": prmt,
                      "cubin_bytes": len(binary.asm["cubin"]), "registers": sass.get("registers"),
                      "local_bytes": sass.get("local_bytes"), "loop_instructions": sass.get("loop_instructions"),
                      "i2f": sum(n for op, n in loop.items() if op.startswith("I2F")),
                      "prmt": loop.get("PRMT", 0),
                      "tensor_core_dots": sum(n for op, n in loop.items() if op.startswith(("HMMA", "HGMMA"))),
                      "fma_dots": sum(n for op, n in loop.items() if op.startswith("FFMA")),
                      "async_copies": sum(n for op, n in loop.items() if op.startswith("LDGSTS"))})
    return facts

"""A few rows against an int8 weight: y (M, N) = x (M, K) @ (values (N, K) int8 * scale (N,) float32 per row)^T,
for 1 <= M <= MAX_ROWS, reading the int8 bytes once.

A speculative verification step (1 + k tokens, k <= 15) or a batch > 1 decode step multiplies a few rows by every
weight of the model: like batch 1 it is bound by the weights' bytes. The batch-1 GEMV (kernels/gemv.py) serves one
row; cuBLAS would need the weight dequantized first, a weight-sized write and read per call (5 bytes a weight
moved against int8's 1). Here each program takes BLOCK_N rows of W over K (all of it, or a range: below) in
BLOCK_K chunks: it converts each int8 tile to the activations' 16-bit dtype (exact: every int8 is a bf16 and an
fp16), multiplies it with the tile of x (all M rows, padded to M_PAD = 16 by masked loads: a tensor-core dot's
smallest side) on the tensor cores, accumulating fp32, and scales each row's sums once at the end:

    acc (BLOCK_N, M_PAD) += W tile (BLOCK_N, BLOCK_K) @ x tile^T (BLOCK_K, M_PAD)       y^T, a tile at a time

The int8 -> 16-bit conversion must not cost an I2F a weight (quarter rate on sm_90: about as long as streaming the
bytes). fp16: PRMT and HSUB2 (`kernels.split_kv._int8_to_fp16`); float32 activations: PRMT and an exact FADD
(`kernels.split_kv_row._int8_to_fp32`, as the GEMV), then fp32 dots at IEEE precision (not TF32), so a float32
model keeps float32 rounding; bf16: Triton's own conversion, which Triton 3.6 already builds for sm_90 from PRMT,
LOP3 and HADD2.BF16 (388 instructions a loop step at BLOCK_N 16 against 478 by way of `_int8_to_fp32` and a
conversion to bf16; `compile_facts` checks that no I2F is left). In the interpreter (CPU) the tiles are widened to
fp32 at once: its 16-bit arithmetic and dots are wrong (DESIGN.md).

Deep projections (CodeLlama-7B's wo and w2: 4096 rows; 34B's: 8192) have too few rows for one program per BLOCK_N
rows over all of K to fill the GPU: on an H200 at 8 rows 256 programs of 16 rows streamed 27-31% of the copy
bandwidth (bench/results/NOTES.md, Run 35). Split-K, as kernels/gemv.py does it for one row: programs of
SPLIT_BLOCK_N rows each take one range of whole BLOCK_K chunks, write their fp32 partial tile (num_splits, M, N) and
take a ticket from their row block's counter (`kernels.gemv.tickets`, shared with the GEMVs: one stream runs them
one after another, each leaves them at zero); the last adds the partials in split order (deterministic, whichever
program finishes last), scales, stores y and resets the counter, all in one launch. `plan(N, K, sms)` picks the tile
and the split from the shapes and the SM count (enough programs for PROGRAMS_PER_SM an SM), or takes a measured
entry of `PLANS`. Captured into a CUDA graph before the tickets exist, a call runs unsplit (no allocation that
needs a sync then).

`torch.ops.codecomplete.few_rows_int8` is the op `models.int8_weights.linear_int8` calls for 2..16 rows on CUDA,
opaque to torch.compile. `python -m kernels.few_rows_int8_bench` sweeps tiles and splits on a GPU at CodeLlama-7B's
and 34B's projections against bf16 weights' cuBLAS (its --write-plans file feeds CODECOMPLETE_FEW_ROWS_PLANS);
bench/gpu/int8_weights_check.py checks the default launch against float64 and dequantize + cuBLAS.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from kernels import settings
from kernels.devices import on_first_tensors_device
from kernels.gemv import MAX_ROW_BLOCKS, split_launch
from kernels.split_kv import _int8_to_fp16
from kernels.split_kv_row import _int8_to_fp32

MAX_ROWS = 16          # x's rows: M_PAD, the dot's padded side
M_PAD = 16
BLOCK_K, NUM_WARPS, NUM_STAGES = 256, 4, 3
SPLIT_BLOCK_N = 32        # rows a program of a split projection. sm_90 SASS, bf16, a loop step: 16 rows 388
                          # instructions for 4 KiB of W, 32 rows 390 for 8 KiB, 64 rows 796 for 16 KiB; 32 rows hold
                          # 72 registers a thread (7 programs an SM), 64 rows 172 (2)
PROGRAMS_PER_SM = 2       # programs the plan aims at an SM (Run 35's rule for the unsplit tiles on 132 SMs)
MIN_CHUNKS_PER_SPLIT = 2  # BLOCK_K chunks a K range holds at least (the pipeline's fill paid for)
DEFAULT_SMS = 132         # the H100's and H200's, for plans made where no GPU is known (the interpreter)
# Measured plans per weight shape, (N, K): (block_n, block_k, num_warps, num_stages, split_k). A shape without an
# entry takes `plan`'s rule. From `bash bench/gpu/few_rows_int8_h200.sh` on one H200 (bench/results/h200-run36/
# few-rows/, 2026-12-03): the shapes whose fastest launch, summed over 2, 8 and 16 rows, beat the rule's by >= 2%;
# µs at 8 rows, the rule's launch -> this one. CODECOMPLETE_FEW_ROWS_PLANS=FILE adds or replaces entries.
PLANS: dict[tuple[int, int], tuple[int, int, int, int, int]] = {
    (22016, 4096): (32, 256, 4, 3, 2),      # w13, 7B: 45.6 -> 36.3
    (10240, 8192): (32, 256, 4, 3, 2),      # wqkv, 34B: 38.7 -> 33.4
    (44032, 8192): (32, 256, 4, 3, 2),      # w13, 34B: 166.0 -> 120.3
    (8192, 22016): (32, 256, 4, 3, 6),      # w2, 34B: 66.6 -> 65.0
}


@triton.jit
def _scaled_store(Y, W_SCALE, acc, rows, offs_m, mask_n, mask_m, stride_ym):
    """y^T's tile (BLOCK_N, M_PAD): each row's sums of integers times the row's scale, once."""
    acc = acc * tl.load(W_SCALE + rows, mask=mask_n, other=0.0)[:, None]
    y = Y + offs_m[None, :] * stride_ym + rows[:, None]                             # (BLOCK_N, M_PAD)
    tl.store(y, acc.to(Y.dtype.element_ty), mask=mask_n[:, None] & mask_m[None, :])


@triton.jit(do_not_specialize=["M", "num_splits"])      # one binary for every M and split count: fewer compiles
def _few_rows_int8_kernel(X, W, W_SCALE, Y, PARTIALS, COUNTERS, M, N, K, stride_xm, stride_wn, stride_ym,
                          k_per_split, num_splits,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, M_PAD: tl.constexpr, SPLIT: tl.constexpr,
                          INT8_PRMT: tl.constexpr, UPCAST: tl.constexpr, IEEE_DOT: tl.constexpr):
    pid_n = tl.program_id(0)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)                                  # (BLOCK_N,) rows of W
    mask_n = rows < N
    offs_m = tl.arange(0, M_PAD)                                                    # (M_PAD,) rows of x
    mask_m = offs_m < M
    offs_k = tl.arange(0, BLOCK_K)
    if SPLIT:              # this program's range of whole BLOCK_K chunks (the last may end at a ragged K)
        k_start = tl.program_id(1) * k_per_split
        k_end = tl.minimum(K, k_start + k_per_split)
    else:
        k_start = 0
        k_end = K
    w_rows = W + rows[:, None].to(tl.int64) * stride_wn                             # (BLOCK_N, 1)
    x_cols = X + offs_m[None, :] * stride_xm                                        # (1, M_PAD)
    DOT_DTYPE: tl.constexpr = tl.float32 if UPCAST else X.dtype.element_ty
    acc = tl.zeros([BLOCK_N, M_PAD], dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        cols = k0 + offs_k                                                          # (BLOCK_K,)
        mask_k = cols < k_end
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
    if SPLIT:
        # fp32 partials (num_splits, M, N), this range's in y^T's tile; the row block's last program adds them
        tile = offs_m[None, :] * N + rows[:, None]                                  # (BLOCK_N, M_PAD)
        mask = mask_n[:, None] & mask_m[None, :]
        tl.store(PARTIALS + tl.program_id(1) * M * N + tile, acc, mask=mask)
        tl.debug_barrier()          # every thread's partials are written before the ticket releases them
        ticket = tl.atomic_add(COUNTERS + pid_n, 1, sem="acq_rel", scope="gpu")
        if ticket == num_splits - 1:    # the last of the row block's programs: every partial is visible
            total = tl.zeros([BLOCK_N, M_PAD], dtype=tl.float32)
            for s in range(0, num_splits):      # in split order, whichever program came last: deterministic
                total += tl.load(PARTIALS + s * M * N + tile, mask=mask, other=0.0, cache_modifier=".cg")
            _scaled_store(Y, W_SCALE, total, rows, offs_m, mask_n, mask_m, stride_ym)
            tl.atomic_xchg(COUNTERS + pid_n, 0, sem="relaxed", scope="gpu")        # ready for the next launch
    else:
        _scaled_store(Y, W_SCALE, acc, rows, offs_m, mask_n, mask_m, stride_ym)


class Plan(NamedTuple):
    """How one call runs: the tile and compile options, and K cut into split_k ranges of k_per_split columns
    (whole BLOCK_K chunks; split_k 1: one range, all of K)."""
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    split_k: int = 1
    k_per_split: int = 0


def split_for(N: int, K: int, block_n: int, block_k: int, sms: int = DEFAULT_SMS, split_k: int | None = None
              ) -> tuple[int, int]:
    """(split_k, k_per_split): with split_k None, enough K ranges for PROGRAMS_PER_SM programs an SM where the row
    blocks alone are fewer, each at least MIN_CHUNKS_PER_SPLIT chunks of BLOCK_K; a number asks for that many
    (benchmarks, tests). Either way the fewest ranges of whole chunks with as many chunks each, none empty."""
    row_blocks = triton.cdiv(N, block_n)
    chunks = triton.cdiv(K, block_k)
    if split_k is None:
        target = PROGRAMS_PER_SM * sms
        split_k = 1 if row_blocks >= target else min(triton.cdiv(target, row_blocks), chunks // MIN_CHUNKS_PER_SPLIT)
    if split_k <= 1 or chunks <= 1 or row_blocks > MAX_ROW_BLOCKS:      # (one ticket counter a row block)
        return 1, K
    per_split = triton.cdiv(chunks, split_k)                             # whole chunks per range
    split_k = triton.cdiv(chunks, per_split)
    return (split_k, per_split * block_k) if split_k > 1 else (1, K)


def plan(N: int, K: int, sms: int = DEFAULT_SMS) -> Plan:
    """The launch of y = x @ W (N, K)^T on a GPU of `sms` SMs: the measured entry for the shape (`PLANS`), else
    programs of 64 rows where there are rows for PROGRAMS_PER_SM of them an SM, of 32 where 32 do (one range of K
    each), else (deep projections: CodeLlama-7B's wo and w2, 4096 rows; 34B's, 8192) programs of SPLIT_BLOCK_N rows
    over ranges of K (`split_for`). Deterministic: shapes and the SM count only."""
    if (N, K) in PLANS:
        block_n, block_k, num_warps, num_stages, split_k = PLANS[N, K]
        return Plan(block_n, block_k, num_warps, num_stages, *split_for(N, K, block_n, block_k, sms, split_k))
    target = PROGRAMS_PER_SM * sms
    block_n = 64 if N >= 64 * target else 32 if N >= 32 * target else SPLIT_BLOCK_N
    return Plan(block_n, BLOCK_K, NUM_WARPS, NUM_STAGES, *split_for(N, K, block_n, BLOCK_K, sms))


def read_plans(path: str) -> dict[tuple[int, int], tuple[int, int, int, int, int]]:
    """PLANS entries from a JSON file of {"NxK": [block_n, block_k, num_warps, num_stages, split_k]}
    (`python -m kernels.few_rows_int8_bench --write-plans FILE` writes one), checked by kernels.settings (the app's
    start-up check reads them the same way)."""
    return settings.read("CODECOMPLETE_FEW_ROWS_PLANS", path)


if os.environ.get("CODECOMPLETE_FEW_ROWS_PLANS"):
    PLANS.update(read_plans(os.environ["CODECOMPLETE_FEW_ROWS_PLANS"]))


def sm_count(device: torch.device) -> int:
    """SMs of a CUDA device (asked once a device, no sync: safe under a capture); DEFAULT_SMS elsewhere (the
    interpreter plans as the H100/H200 would)."""
    if device.type != "cuda":
        return DEFAULT_SMS
    return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@on_first_tensors_device
def few_rows_int8(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, *, block_n: int | None = None,
                  block_k: int | None = None, num_warps: int | None = None, num_stages: int | None = None,
                  split_k: int | None = None) -> torch.Tensor:
    """x (M, K) with 1 <= M <= MAX_ROWS in float32, bfloat16 or float16; weight (N, K) int8 with a contiguous last
    dim; weight_scale (N,) contiguous float32 -> y (M, N) in x.dtype, y = x @ (weight * weight_scale[:, None])^T.
    block_n ... num_stages: None takes `plan(N, K)`'s (benchmarks and tests ask for others); split_k: None splits K
    as the plan does for the tile used, a number asks for that many ranges (1: unsplit)."""
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
    sms = sm_count(x.device)
    chosen = plan(N, K, sms)
    given = (block_n, block_k, num_warps, num_stages)
    block_n, block_k, num_warps, num_stages = (g if g is not None else c for g, c in zip(given, chosen))
    if given[:2] == (None, None) and split_k is None:
        split_k, k_per_split = chosen.split_k, chosen.k_per_split
    else:                  # another tile (or a split asked for): K cut for it
        split_k, k_per_split = split_for(N, K, block_n, block_k, sms, split_k)
    if x.stride(1) != 1:
        x = x.contiguous()
    y, partials, counters, split_k, k_per_split = split_launch(x, N, K, split_k, k_per_split)
    upcast = not x.is_cuda         # the interpreter: widen to fp32 at once
    _few_rows_int8_kernel[(triton.cdiv(N, block_n), split_k)](
        x, weight, weight_scale, y, partials, counters, M, N, K, x.stride(0),
        weight.stride(0), y.stride(0), k_per_split, split_k,
        BLOCK_N=block_n, BLOCK_K=block_k, M_PAD=M_PAD, SPLIT=split_k > 1, INT8_PRMT=x.is_cuda, UPCAST=upcast,
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
    """Build the kernel for a GPU target without a GPU, as `few_rows_int8` launches it for CodeLlama-7B's widest
    projection (unsplit) and its wo (split-K) with bf16, fp16 and float32 activations, and fp16 once with Triton's
    own int8 conversion (INT8_PRMT off: the arm PRMT replaces): facts about each binary, its main loop's SASS among
    them, and for split-K the ticket and the counter's reset. Must run without TRITON_INTERPRET (see
    kernels/compile_check.py)."""
    from triton.backends.compiler import GPUTarget

    from kernels.compile_check import _compile, opcode_count, sass_facts
    facts = []
    for dtype, N, prmt in (("bf16", 32016, True), ("bf16", 4096, True), ("fp16", 4096, True), ("fp32", 4096, True),
                           ("fp16", 4096, False)):
        chosen = plan(N, 4096)
        binary = _compile(_few_rows_int8_kernel, dict(X=f"*{dtype}", W="*i8", W_SCALE="*fp32", Y=f"*{dtype}",
                                                      PARTIALS="*fp32", COUNTERS="*i32"),
                          dict(BLOCK_N=chosen.block_n, BLOCK_K=chosen.block_k, M_PAD=M_PAD, SPLIT=chosen.split_k > 1,
                               INT8_PRMT=prmt, UPCAST=False, IEEE_DOT=dtype == "fp32"),
                          GPUTarget("cuda", arch, 32), chosen.num_warps, chosen.num_stages, floats=(),
                          not_divisible=("M", "num_splits"))
        sass = sass_facts(binary.asm["cubin"], with_opcodes=True)
        loop = sass.get("loop_opcodes", {})
        ptx = binary.asm["ptx"]
        facts.append({"dtype": dtype, "N": N, "block_n": chosen.block_n, "split_k": chosen.split_k, "prmt_arm": prmt,
                      "cubin_bytes": len(binary.asm["cubin"]), "registers": sass.get("registers"),
                      "local_bytes": sass.get("local_bytes"), "loop_instructions": sass.get("loop_instructions"),
                      "i2f": opcode_count(loop, "I2F"),
                      "prmt": loop.get("PRMT", 0),
                      "tensor_core_dots": opcode_count(loop, ("HMMA", "HGMMA")),
                      "fma_dots": opcode_count(loop, "FFMA"),
                      "async_copies": opcode_count(loop, "LDGSTS"),
                      "ticket": "atom.global.gpu.acq_rel.add" in ptx, "reset": "atom.global.gpu.relaxed.exch" in ptx,
                      "partials_from_l2": ptx.count("ld.global.cg")})
    return facts

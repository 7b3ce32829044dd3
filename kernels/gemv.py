"""A Triton GEMV for batch-1 decode projections: y (1, N) = x (1, K) @ W (N, K)^T.

A decode step at batch 1 is a chain of matrix-vector products over every weight of the model, so how
close they stream W to the copy bandwidth decides the step. Each program reduces BLOCK_N rows of W over
a range of K in BLOCK_K chunks (fp32 accumulation). `python -m kernels.gemv` compares it with cuBLAS
(F.linear) on a GPU; on an H100 (2026-11-26) it streamed CodeLlama-7B's wide projections at 89-97% of the
copy bandwidth against cuBLAS's 67-88%, and lost on the one deep one (w2: N=4096 < K=11008).

Deep projections (N < K: w2, and under tensor parallelism wqkv too, e.g. 5120 x 8192 per rank of
CodeLlama-34B) have few rows: one program per BLOCK_N rows over all of K makes few, long programs, and
the last partial wave of them leaves most of the GPU idle. Split-K cuts K into SPLIT_K ranges of at most
K_PER_PROGRAM columns, so a deep projection runs as many programs of the same size as a wide one's. Each
writes its rows' fp32 partial sums to a workspace and takes a ticket from its row block's counter; the
last to arrive adds the partials in split order (deterministic, whichever program finishes last), stores
y and resets the counter for the next launch, all in one kernel (no second launch, nothing to zero per
call). The counters are one zeroed buffer per device (`tickets`), allocated on the first split call outside a CUDA
graph capture: GEMVs on one device must not run concurrently on several streams (a decode step is one
stream). `gemv_config(N, K)` picks the split; wide projections keep the unsplit kernel as measured.

int8 weights (`weight_scale`, a float32 scale per row) stream half the bytes: each row's sum of integers times x
(fp32) is scaled once, after the split-K partials meet. `torch.ops.codecomplete.gemv_int8` is their op: always this
kernel (split-K where deep), as cuBLAS would need the weights dequantized first.

`torch.ops.codecomplete.gemv` is the batch-1 projection as an opaque custom op, so torch.compile'd code
can call it: the GEMV, or cuBLAS for deep projections while DEEP_ON_CUBLAS is set. The product sets it
(`models.llama.use_gemv("wide")`, the default: split-K lost to cuBLAS on every deep projection on the H200);
unset, deep projections are split-K, the other arm of A/B runs. The choice is made when the op runs, not when
it is compiled: switching it takes a new CUDA-graph capture, no recompilation.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from kernels.devices import on_first_tensors_device
from kernels.split_kv_row import _int8_to_fp32

BLOCK_N, BLOCK_K, NUM_WARPS, NUM_STAGES = 4, 1024, 4, 3   # the H100's best for the wide projections
K_PER_PROGRAM = 4096          # split deep projections into ranges of at most this many columns (32 KiB of bf16 W)
MAX_ROW_BLOCKS = 1 << 16      # counters per device (256 KiB): row blocks of a split GEMV, N <= 262,144 rows
DEEP_ON_CUBLAS = False        # the op sends deep projections (rows < columns) to cuBLAS; the product sets it (use_gemv)
# int8 weights: a thread loads as many bytes of W as of x (8 of W against bf16 x's 16 bytes), not 16 of each: W's
# columns are said contiguous only in runs of 16 bytes of x (tl.max_contiguous, in each kernel: the hint does not
# survive a call). Then a thread holds the same columns of W as of x, and x's tile is used where it was loaded; with
# 16-byte loads of W, Triton passed x's tile through shared memory every loop step (2-8 barriers a step in each int8
# kernel's sm_90 SASS, none with bf16 weights, whose elements are x's size). A/B: False loads 16 bytes of W.
NARROW_INT8_LOADS = True
_counters: dict[torch.device, torch.Tensor] = {}


@triton.jit
def _fp32(w, INT8_PRMT: tl.constexpr):
    """A tile of W in fp32: int8 by PRMT and an exact add on the GPU (`_int8_to_fp32`: Triton's own conversion
    spends a quarter-rate I2F a weight, as slow as streaming them), anything else as Triton converts it."""
    if INT8_PRMT:
        return _int8_to_fp32(w)
    return w.to(tl.float32)


@triton.jit
def _gemv_kernel(X, W, W_SCALE, Y, PARTIALS, COUNTERS, N, K, stride_wn, k_per_split,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr, SCALED_W: tl.constexpr = False,
                 INT8_PRMT: tl.constexpr = False, NARROW_INT8: tl.constexpr = False):
    pid_n = tl.program_id(0)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)                                  # (BLOCK_N,)
    mask_n = rows < N
    offs_k = tl.arange(0, BLOCK_K)
    if NARROW_INT8:   # int8 W's columns said contiguous in runs of 16 bytes of x: NARROW_INT8_LOADS
        offs_k = tl.max_contiguous(offs_k, 128 // X.dtype.element_ty.primitive_bitwidth)
    if SPLIT_K == 1:
        k_start = 0
        k_end = K
    else:
        k_start = tl.program_id(1) * k_per_split
        k_end = tl.minimum(K, k_start + k_per_split)
    w_rows = W + rows[:, None].to(tl.int64) * stride_wn                             # (BLOCK_N, 1)
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        cols = k0 + offs_k
        mask_k = cols < k_end
        x = tl.load(X + cols, mask=mask_k, other=0.0).to(tl.float32)               # (BLOCK_K,)
        w = tl.load(w_rows + cols[None, :], mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        acc += _fp32(w, INT8_PRMT) * x[None, :]
    partial = tl.sum(acc, axis=1)                                                   # (BLOCK_N,) fp32
    if SPLIT_K == 1:
        if SCALED_W:       # an int8 W: the row's sum of integers times its scale
            partial = partial * tl.load(W_SCALE + rows, mask=mask_n, other=0.0)
        tl.store(Y + rows, partial.to(Y.dtype.element_ty), mask=mask_n)
    else:
        tl.store(PARTIALS + tl.program_id(1) * N + rows, partial, mask=mask_n)
        tl.debug_barrier()          # every thread's partials are written before the ticket releases them
        ticket = tl.atomic_add(COUNTERS + pid_n, 1, sem="acq_rel", scope="gpu")
        if ticket == SPLIT_K - 1:   # the last of the row block's programs: every partial is visible
            total = tl.zeros([BLOCK_N], dtype=tl.float32)
            for s in tl.static_range(SPLIT_K):
                total += tl.load(PARTIALS + s * N + rows, mask=mask_n, other=0.0, cache_modifier=".cg")
            if SCALED_W:
                total = total * tl.load(W_SCALE + rows, mask=mask_n, other=0.0)
            tl.store(Y + rows, total.to(Y.dtype.element_ty), mask=mask_n)
            tl.atomic_xchg(COUNTERS + pid_n, 0, sem="relaxed", scope="gpu")        # ready for the next launch


def gemv_config(N: int, K: int, block_n: int = BLOCK_N, block_k: int = BLOCK_K) -> tuple[int, int]:
    """(split_k, k_per_split) for y = x @ W (N, K)^T: wide projections (N >= K) unsplit, deep ones cut
    into the fewest ranges of whole BLOCK_K chunks with at most K_PER_PROGRAM columns each."""
    if N >= K or K <= K_PER_PROGRAM or triton.cdiv(N, block_n) > MAX_ROW_BLOCKS:
        return 1, K
    chunks = triton.cdiv(K, block_k)
    per_split = triton.cdiv(chunks, triton.cdiv(K, K_PER_PROGRAM))   # whole chunks per range
    return triton.cdiv(chunks, per_split), per_split * block_k


def route(N: int, K: int, deep_on_cublas: bool | None = None) -> str:
    """Where the op runs y = x @ W (N, K)^T: "gemv", "gemv split-K" or "cublas" (deep_on_cublas: None = as set)."""
    if (DEEP_ON_CUBLAS if deep_on_cublas is None else deep_on_cublas) and N < K:
        return "cublas"
    return "gemv" if gemv_config(N, K)[0] == 1 else "gemv split-K"


def tickets(device: torch.device) -> torch.Tensor | None:
    """This device's zeroed tickets (int32 (MAX_ROW_BLOCKS,)); None while a CUDA graph is being captured before
    they exist. Split-K GEMVs count from the front, `kernels.fused_gemv.qkv_rope` from the back; every kernel
    leaves its counters at zero."""
    counters = _counters.get(device)
    if counters is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None
        counters = _counters[device] = torch.zeros(MAX_ROW_BLOCKS, dtype=torch.int32, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)   # zeroed before any stream uses them
    return counters


class SplitLaunch(NamedTuple):
    """What a several-row split-K launch writes (`split_launch`): y (M, N), the fp32 partials (split_k, M, N) (y
    itself when unsplit), the tickets (y when unsplit: never read), and the K ranges it runs."""
    y: torch.Tensor
    partials: torch.Tensor
    counters: torch.Tensor
    split_k: int
    k_per_split: int


def split_launch(x: torch.Tensor, N: int, K: int, split_k: int, k_per_split: int) -> SplitLaunch:
    """The buffers of x (M, K) @ W (N, K)^T in `split_k` ranges of `k_per_split` columns (kernels/few_rows_int8.py,
    kernels/gemv_int4.py): one range where this device's tickets do not exist yet (a CUDA graph captured first)."""
    counters = tickets(x.device) if split_k > 1 else None
    if counters is None:
        split_k, k_per_split = 1, K
    M = x.shape[0]
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    partials = torch.empty((split_k, M, N), dtype=torch.float32, device=x.device) if split_k > 1 else y
    return SplitLaunch(y, partials, counters if counters is not None else y, split_k, k_per_split)


@on_first_tensors_device
def gemv(x: torch.Tensor, weight: torch.Tensor, *, block_n: int = BLOCK_N, block_k: int = BLOCK_K,
         num_warps: int = NUM_WARPS, num_stages: int = NUM_STAGES, split_k: int | None = None,
         weight_scale: torch.Tensor | None = None) -> torch.Tensor:
    """x (1, K) or (K,), weight (N, K) with a contiguous last dim -> (1, N) in x.dtype.

    split_k: None picks it (`gemv_config`); a number asks for that many K ranges (benchmarks, tests).
    weight_scale: an int8 weight's float32 scale per row (N,): row n is weight[n] * weight_scale[n] (the sum of
    the row's integers times x, in fp32, is scaled once).
    """
    K = x.shape[-1]
    N = weight.shape[0]
    if x.numel() != K or weight.shape[1] != K or weight.stride(1) != 1:
        raise ValueError(f"gemv takes x (1, K) and weight (N, K), got {tuple(x.shape)} and {tuple(weight.shape)}")
    if (weight.dtype == torch.int8) != (weight_scale is not None) or weight_scale is not None and (
            weight_scale.dtype != torch.float32 or weight_scale.shape != (N,) or not weight_scale.is_contiguous()):
        raise ValueError(f"gemv: an int8 weight takes a weight_scale of one contiguous float32 per row ({N},), "
                         f"other weights none; got {weight.dtype} and "
                         f"{None if weight_scale is None else (tuple(weight_scale.shape), weight_scale.dtype)}")
    if split_k is None:
        split_k, k_per_split = gemv_config(N, K, block_n, block_k)
    else:
        k_per_split = triton.cdiv(triton.cdiv(K, block_k), split_k) * block_k
        split_k = triton.cdiv(K, k_per_split)          # no empty ranges
    counters = tickets(x.device) if split_k > 1 else None
    if counters is None:
        split_k, k_per_split = 1, K
    y = torch.empty((1, N), dtype=x.dtype, device=x.device)
    partials = torch.empty((split_k, N), dtype=torch.float32, device=x.device) if split_k > 1 else y
    scaled = weight_scale is not None
    _gemv_kernel[(triton.cdiv(N, block_n), split_k)](
        x.reshape(K).contiguous(), weight, weight_scale if scaled else y, y, partials,
        counters if counters is not None else y, N, K, weight.stride(0), k_per_split,
        BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split_k, SCALED_W=scaled, INT8_PRMT=scaled and x.is_cuda,
        NARROW_INT8=NARROW_INT8_LOADS and scaled and x.is_cuda, num_warps=num_warps, num_stages=num_stages)
    return y


@torch.library.custom_op("codecomplete::gemv", mutates_args=())
def gemv_op(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if route(*weight.shape) == "cublas":
        return torch.nn.functional.linear(x.reshape(1, -1), weight)
    return gemv(x, weight)


@gemv_op.register_fake
def _(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x.new_empty((1, weight.shape[0]))


@torch.library.custom_op("codecomplete::gemv_int8", mutates_args=())
def gemv_int8_op(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    """x (1, K) @ (weight (N, K) int8 * weight_scale (N,) float32 per row)^T -> (1, N) in x.dtype: always the GEMV
    (split-K for deep projections, whatever DEEP_ON_CUBLAS says: cuBLAS would need the weights dequantized first,
    a weight-sized write per call)."""
    return gemv(x, weight, weight_scale=weight_scale)


@gemv_int8_op.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    return x.new_empty((1, weight.shape[0]))


def compile_facts(arch: int = 90) -> list[dict]:
    """Build both variants (unsplit, split-K) for a GPU target without a GPU, bf16 weights then int8 ones, as
    `gemv` launches them: facts about each binary (`loop_barriers`: barriers in the key loop's SASS). Must run without
    TRITON_INTERPRET (see kernels/compile_check.py)."""
    import re

    from triton.backends.compiler import GPUTarget

    from kernels.compile_check import _compile, opcode_count, sass_facts
    facts = []
    for split, int8 in ((1, False), (3, False), (1, True), (3, True)):
        weights = dict(W="*i8", W_SCALE="*fp32") if int8 else dict(W="*bf16", W_SCALE="*bf16")
        binary = _compile(_gemv_kernel, dict(X="*bf16", Y="*bf16", PARTIALS="*fp32", COUNTERS="*i32", **weights),
                          dict(BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, SPLIT_K=split, SCALED_W=int8, INT8_PRMT=int8,
                               NARROW_INT8=int8),
                          GPUTarget("cuda", arch, 32), NUM_WARPS, NUM_STAGES, floats=())
        ptx = binary.asm["ptx"]
        loop = sass_facts(binary.asm["cubin"], with_opcodes=True).get("loop_opcodes", {})
        facts.append({"split_k": split, "int8_weights": int8, "cubin_bytes": len(binary.asm["cubin"]),
                      "i2f": len(re.findall(r"cvt\.rn\.f32\.s(?:8|16|32)", ptx)), "prmt": ptx.count("prmt.b32"),
                      "vector_loads": sum("ld.global.v4" in line for line in ptx.splitlines()),
                      "loads_8_bytes": ptx.count("ld.global.v2.b32"),
                      "ticket": "atom.global.gpu.acq_rel.add" in ptx, "reset": "atom.global.gpu.relaxed.exch" in ptx,
                      "partials_from_l2": ptx.count("ld.global.cg"),
                      "loop_barriers": opcode_count(loop, "BAR")})
    return facts


# ---- GPU benchmark -------------------------------------------------------------------------------

# (N, K) of every batch-1 projection of CodeLlama-7B and -34B on one GPU and of 34B and 70B per rank of two.
SHAPES = {
    "7B wqkv": (12288, 4096), "7B w13": (22016, 4096), "7B w2": (4096, 11008), "7B lm_head": (32016, 4096),
    "34B wqkv": (10240, 8192), "34B wo": (8192, 8192), "34B w13": (44032, 8192), "34B w2": (8192, 22016),
    "34B/2 wqkv": (5120, 8192), "34B/2 wo": (8192, 4096), "34B/2 w13": (22016, 8192), "34B/2 w2": (8192, 11008),
    "70B/2 w13": (28672, 8192), "70B/2 w2": (8192, 14336), "70B/2 lm_head": (16008, 8192),
}
# (block_n, block_k, num_warps, num_stages, split_k); split_k None: gemv_config's choice; 1: the unsplit kernel.
CONFIGS = [(BLOCK_N, BLOCK_K, NUM_WARPS, NUM_STAGES, None), (4, 1024, 4, 3, 1), (4, 1024, 4, 3, 2), (4, 1024, 4, 3, 4),
           (8, 512, 4, 3, None), (4, 2048, 8, 3, None)]


def main(argv=None) -> int:
    """GPU: graph-replay µs of cuBLAS (F.linear) and of the GEMV's configurations on each projection shape
    (weights rotated past the L2), the share of the copy bandwidth each reaches; then the chosen
    configuration's largest error against a float64 reference over 100 graph replays (split-K tickets race)."""
    import argparse
    import json
    import time

    import torch.nn.functional as F

    from kernels.bench import copy_bandwidth, graph_replay_us
    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated shape names (see SHAPES), run in that order")
    parser.add_argument("--json", default="", help="write the rows to this file")
    parser.add_argument("--replays", type=int, default=10, help="graph replays a timing (default: 10)")
    parser.add_argument("--budget-s", type=float, default=0.0, help="stop starting shapes after this long (0: none)")
    args = parser.parse_args(argv)
    wanted = [w.strip() for w in args.only.split(",") if w.strip()] or list(SHAPES)
    if unknown := [w for w in wanted if w not in SHAPES]:
        parser.error(f"--only: unknown shapes {unknown} (known: {', '.join(SHAPES)})")
    if not torch.cuda.is_available():       # was torch's AssertionError traceback
        parser.exit(2, "kernels.gemv needs a CUDA GPU: it times the GEMV there.\n")
    started = time.perf_counter()
    bandwidth = copy_bandwidth()
    rotate = max(64 << 20, 2 * (getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) or 0))
    print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s; split-K: at most {K_PER_PROGRAM} columns per program; "
          f"weights rotated over {rotate >> 20} MiB", flush=True)
    rows = []
    for name in wanted:                  # in the order asked
        N, K = SHAPES[name]
        if args.budget_s and time.perf_counter() - started > args.budget_s:
            print(f"budget of {args.budget_s:.0f} s spent: {name} and later shapes not run", flush=True)
            break
        copies = max(1, -(-rotate // (N * K * 2)))
        ws = [torch.randn(N, K, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
        x = torch.randn(1, K, device="cuda", dtype=torch.bfloat16)
        floor = N * K * 2 / bandwidth * 1e6
        row = {"shape": name, "N": N, "K": K, "floor_us": floor, "chosen_split": gemv_config(N, K)[0],
               "cublas_us": graph_replay_us(lambda: [F.linear(x, w) for w in ws], args.replays) / copies,
               "configs": []}
        for block_n, block_k, warps, stages, split in CONFIGS:
            us = graph_replay_us(lambda: [gemv(x, w, block_n=block_n, block_k=block_k, num_warps=warps,
                                               num_stages=stages, split_k=split) for w in ws], args.replays) / copies
            row["configs"].append({"block_n": block_n, "block_k": block_k, "num_warps": warps, "num_stages": stages,
                                   "split_k": split, "us": us})
        row["max_rel_err"] = _replayed_error(x, ws[-1])
        best = min(row["configs"], key=lambda c: c["us"])
        chosen, unsplit = row["configs"][0], row["configs"][1]
        print(f"{name:13s} N={N:6d} K={K:6d} floor {floor:6.1f} µs  cuBLAS {row['cublas_us']:6.1f} "
              f"({100 * floor / row['cublas_us']:3.0f}%)  unsplit {unsplit['us']:6.1f} ({100 * floor / unsplit['us']:3.0f}%)  "
              f"chosen (split {row['chosen_split']}) {chosen['us']:6.1f} ({100 * floor / chosen['us']:3.0f}%)  "
              f"best {best['us']:6.1f} ({100 * floor / best['us']:3.0f}%) "
              f"{tuple(best[k] for k in ('block_n', 'block_k', 'num_warps', 'num_stages', 'split_k'))}  "
              f"max rel err {row['max_rel_err']:.1e}", flush=True)
        rows.append(row)
        del ws
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"copy_bandwidth": bandwidth, "k_per_program": K_PER_PROGRAM, "rows": rows}, f, indent=1)
    bad = [r["shape"] for r in rows if not r["max_rel_err"] < 1e-2]
    if bad:
        print(f"WRONG RESULTS: {', '.join(bad)}")
    return 1 if bad else 0


def _replayed_error(x: torch.Tensor, weight: torch.Tensor, replays: int = 100) -> float:
    """Largest error of gemv(x, weight) (its chosen configuration) over `replays` replays of one CUDA
    graph, relative to the sum of |terms| per output, against float64; NaN anywhere counts as infinite."""
    ref = (x.double() @ weight.double().T).float()
    scale = (x.double().abs() @ weight.double().abs().T).float()
    worst = torch.zeros((), device=x.device)

    def check():
        err = ((gemv(x, weight).float() - ref).abs() / scale).max()
        worst.copy_(torch.maximum(worst, torch.nan_to_num(err, nan=float("inf"))))
    for _ in range(2):
        check()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        check()
    for _ in range(replays):
        graph.replay()
    torch.cuda.synchronize()
    return worst.item()


if __name__ == "__main__":
    raise SystemExit(main())

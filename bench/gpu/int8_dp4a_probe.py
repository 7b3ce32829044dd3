"""Batch-1 int8 GEMVs by integer dot products (DP4A): a probe of how far the CUDA cores' instruction count holds them.

The product's int8 GEMVs (kernels/gemv.py, kernels/fused_gemv.py) widen each weight to fp32 (PRMT, an exact FADD,
a shared XOR) and FMA it with x in fp32: about 3.3 instructions a weight before loads and addressing, where bf16
weights need about 1.5. On an H200 they stream 59-72% of the copy bandwidth against bf16's 71-89%
(bench/results/NOTES.md, Runs 35-36): at one byte a weight the loop issues close to as many instructions as the
SMs can. llama.cpp's quantized GEMVs instead quantize x too and multiply bytes by bytes (`dp4a`: four products and
their sum, one instruction). Here x is cut, per four columns (one 32-bit word), into two int8 words: a high one
(round(x / s), s = the four's amax / 127) and a low one (the remainder times 256, rounded), so x is kept to
s / 512 (about 2^-16 of the word's largest value; bf16 itself keeps 2^-9 of each value): two DP4As, a shift-add,
one I2F and one FFMA per four weights, about 1.25 instructions a weight. `a8` keeps only the high word (one DP4A,
x to 2^-8 of the word's amax, llama.cpp's Q8_1 on words of four): a bound on what fewer instructions buy.

The kernel here is the probe's, not the product's: x is quantized beforehand (its own kernel, timed apart), no
split-K, no fused neighbours. It answers one question: at CodeLlama-7B's projections, one row, do fewer
instructions a weight stream more of the copy bandwidth? Each launch is checked against float64 first.

    python bench/gpu/int8_dp4a_probe.py OUT_DIR      # writes OUT_DIR/int8-dp4a-probe.json; a table last
    TRITON_INTERPRET=1 python bench/gpu/int8_dp4a_probe.py --check     # the CPU check (DP4A emulated)
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from pathlib import Path

import torch
import triton
import triton.language as tl

from kernels.append import ROUNDER
from kernels.dp4a import bf16_words, dot_words, quantize_words

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DIM, FFN, VOCAB = 4096, 11008, 32016          # CodeLlama-7B
PROJECTIONS = {"wqkv": (3 * DIM, DIM), "wo": (DIM, DIM), "w13": (2 * FFN, DIM), "w2": (DIM, FFN),
               "output": (VOCAB, DIM)}
# (block_n, block_w (32-bit words = 4 columns), num_warps, num_stages)
CONFIGS = [c for c in itertools.product((1, 2, 4, 8), (64, 128, 256), (2, 4), (3, 5)) if c[0] * c[1] <= 1024]
# the self-quantizing kernel: many rows a thread (x's words are quantized once per thread, whatever its rows)
SELFQ_CONFIGS = list(itertools.product((8, 16), (64, 128, 256), (1, 2), (2, 3, 4)))


@triton.jit
def _dp4a(w, x, HILO: tl.constexpr, ASM: tl.constexpr):
    """Per 32-bit word: the sum of w's four int8 lanes times x's (HILO: x a pair of words (high, low), the
    result high * 256 + low). ASM False emulates DP4A with shifts (the interpreter has no inline assembly)."""
    if ASM:
        if HILO:
            return tl.inline_asm_elementwise(
                "{ .reg .s32 h, l; dp4a.s32.s32 h, $1, $2, 0; dp4a.s32.s32 l, $1, $3, 0; mad.lo.s32 $0, h, 256, l; }",
                "=r,r,r,r", [w, x[0], x[1]], dtype=tl.int32, is_pure=True, pack=1)
        return tl.inline_asm_elementwise("dp4a.s32.s32 $0, $1, $2, 0;", "=r,r,r", [w, x[0]], dtype=tl.int32,
                                         is_pure=True, pack=1)
    high = tl.zeros_like(w)
    low = tl.zeros_like(w)
    for lane in tl.static_range(4):
        w_lane = (w << (24 - 8 * lane)) >> 24                  # arithmetic shift: the lane sign-extended
        high += w_lane * ((x[0] << (24 - 8 * lane)) >> 24)
        if HILO:
            low += w_lane * ((x[1] << (24 - 8 * lane)) >> 24)
    if HILO:
        return high * 256 + low
    return high


@triton.jit
def _gemv_dp4a_kernel(XH, XL, XS, W, W_SCALE, Y, N, KW, stride_wn,
                      BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, HILO: tl.constexpr, ASM: tl.constexpr,
                      EVEN: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)                                   # (BLOCK_N,)
    mask_n = rows < N
    offs = tl.arange(0, BLOCK_W)
    w_rows = W + rows[:, None].to(tl.int64) * stride_wn                            # (BLOCK_N, 1) int32 words
    acc = tl.zeros([BLOCK_N, BLOCK_W], dtype=tl.float32)
    for k0 in range(0, KW, BLOCK_W):
        cols = k0 + offs                                                           # (BLOCK_W,) words
        if EVEN:
            xh = tl.load(XH + cols)
            xs = tl.load(XS + cols)
            w = tl.load(w_rows + cols[None, :], mask=mask_n[:, None], other=0)
            xl = tl.load(XL + cols) if HILO else xh
        else:
            mask_k = cols < KW
            xh = tl.load(XH + cols, mask=mask_k, other=0)
            xs = tl.load(XS + cols, mask=mask_k, other=0.0)
            w = tl.load(w_rows + cols[None, :], mask=mask_n[:, None] & mask_k[None, :], other=0)
            xl = tl.load(XL + cols, mask=mask_k, other=0) if HILO else xh
        x = (tl.broadcast_to(xh[None, :], (BLOCK_N, BLOCK_W)), tl.broadcast_to(xl[None, :], (BLOCK_N, BLOCK_W)))
        acc += _dp4a(w, x, HILO, ASM).to(tl.float32) * xs[None, :]
    y = tl.sum(acc, axis=1) * tl.load(W_SCALE + rows, mask=mask_n, other=0.0)
    tl.store(Y + rows, y.to(Y.dtype.element_ty), mask=mask_n)


@triton.jit
def _gemv_dp4a_selfq_kernel(X, W, W_SCALE, Y, N, KW, stride_wn,
                            BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, ASM: tl.constexpr, EVEN: tl.constexpr):
    """As _gemv_dp4a_kernel (hi+lo), x given in bf16 (seen as int64: four values a word) and quantized by each
    program in the layout its tile of W was loaded in (kernels/dp4a.py's pieces, which the product adopted after this
    probe): no kernel before it, at ~44 instructions a word of x (over BLOCK_N rows)."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)                                   # (BLOCK_N,)
    mask_n = rows < N
    offs = tl.arange(0, BLOCK_W)
    w_rows = W + rows[:, None].to(tl.int64) * stride_wn                            # (BLOCK_N, 1) int32 words
    acc = tl.zeros([BLOCK_N, BLOCK_W], dtype=tl.float32)
    for k0 in range(0, KW, BLOCK_W):
        cols = k0 + offs                                                           # (BLOCK_W,) words
        if EVEN:
            x4 = tl.load(X + cols)                                                 # (BLOCK_W,) int64: 4 x bf16
            w = tl.load(w_rows + cols[None, :], mask=mask_n[:, None], other=0)
        else:
            mask_k = cols < KW
            x4 = tl.load(X + cols, mask=mask_k, other=0)
            w = tl.load(w_rows + cols[None, :], mask=mask_n[:, None] & mask_k[None, :], other=0)
        a0, a1, a2, a3 = bf16_words(x4)
        xh, xl, xs = quantize_words(a0, a1, a2, a3, ASM)
        x = (tl.broadcast_to(xh[None, :], (BLOCK_N, BLOCK_W)), tl.broadcast_to(xl[None, :], (BLOCK_N, BLOCK_W)))
        acc += dot_words(w, x[0], x[1], ASM).to(tl.float32) * xs[None, :]
    y = tl.sum(acc, axis=1) * tl.load(W_SCALE + rows, mask=mask_n, other=0.0)
    tl.store(Y + rows, y.to(Y.dtype.element_ty), mask=mask_n)


@triton.jit
def _quantize_x_kernel(X, XH, XL, XS, KW, BLOCK: tl.constexpr, HILO: tl.constexpr):
    words = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)                           # (BLOCK,)
    lanes = tl.arange(0, 4)
    mask = words < KW
    x = tl.load(X + words[:, None] * 4 + lanes[None, :], mask=mask[:, None], other=0.0).to(tl.float32)  # (BLOCK, 4)
    amax = tl.max(tl.abs(x), axis=1)
    s = tl.where(amax > 0, amax / 127.0, 1.0)
    q = x / s[:, None]
    high = tl.minimum(tl.maximum((q + ROUNDER) - ROUNDER, -127.0), 127.0)       # round to nearest even
    shift = (lanes * 8)[None, :]
    tl.store(XH + words, tl.sum((high.to(tl.int32) & 0xFF) << shift, axis=1), mask=mask)
    if HILO:
        low = tl.minimum(tl.maximum(((q - high) * 256.0 + ROUNDER) - ROUNDER, -127.0), 127.0)
        tl.store(XL + words, tl.sum((low.to(tl.int32) & 0xFF) << shift, axis=1), mask=mask)
        tl.store(XS + words, s / 256.0, mask=mask)
    else:
        tl.store(XS + words, s, mask=mask)


def quantize_x(x: torch.Tensor, hilo: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (K,) (K a multiple of 4) -> (high words (K/4,) int32, low words (K/4,) int32, scales (K/4,) fp32):
    x ~ scale * (256 * high + low) with hilo, scale * high without (the low words then unused)."""
    K = x.shape[-1]
    assert K % 4 == 0, "x's length must be a multiple of 4"
    words = K // 4
    xh = torch.empty(words, dtype=torch.int32, device=x.device)
    xl = torch.empty(words, dtype=torch.int32, device=x.device) if hilo else xh
    xs = torch.empty(words, dtype=torch.float32, device=x.device)
    block = 256
    _quantize_x_kernel[(triton.cdiv(words, block),)](x.reshape(-1), xh, xl, xs, words, BLOCK=block, HILO=hilo)
    return xh, xl, xs


def gemv_dp4a(quantized, weight: torch.Tensor, weight_scale: torch.Tensor, config=(4, 128, 4, 3), hilo: bool = True,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """quantized: `quantize_x`'s words; weight (N, K) int8, contiguous; weight_scale (N,) fp32 -> y (N,)."""
    xh, xl, xs = quantized
    N, K = weight.shape
    block_n, block_w, warps, stages = config
    words = weight.view(torch.int32)                                                # (N, K/4)
    y = torch.empty(N, dtype=torch.bfloat16, device=weight.device) if out is None else out
    _gemv_dp4a_kernel[(triton.cdiv(N, block_n),)](
        xh, xl, xs, words, weight_scale, y, N, K // 4, words.stride(0), BLOCK_N=block_n, BLOCK_W=block_w,
        HILO=hilo, ASM=not INTERPRETED, EVEN=(K // 4) % block_w == 0, num_warps=warps, num_stages=stages)
    return y


def gemv_dp4a_selfq(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, config=(4, 128, 4, 3),
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """x (K,) bf16, contiguous; weight (N, K) int8, contiguous; weight_scale (N,) fp32 -> y (N,): x quantized inside."""
    N, K = weight.shape
    assert x.dtype == torch.bfloat16 and x.is_contiguous() and K % 4 == 0, "x: (K,) bf16, contiguous, K % 4 == 0"
    block_n, block_w, warps, stages = config
    words = weight.view(torch.int32)                                                # (N, K/4)
    y = torch.empty(N, dtype=torch.bfloat16, device=weight.device) if out is None else out
    _gemv_dp4a_selfq_kernel[(triton.cdiv(N, block_n),)](
        x.view(torch.int64), words, weight_scale, y, N, K // 4, words.stride(0), BLOCK_N=block_n, BLOCK_W=block_w,
        ASM=not INTERPRETED, EVEN=(K // 4) % block_w == 0, num_warps=warps, num_stages=stages)
    return y


def _quantize_weights(N: int, K: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.randn(N, K, device=device)
    scale = w.abs().amax(1) / 127
    return (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8), scale


def check(device="cpu") -> int:
    """Each variant against float64 on fresh random inputs, ragged shapes included; y poisoned beforehand."""
    torch.manual_seed(int(time.time()))
    worst = {}
    for (N, K), variant, config in itertools.product(((37, 260), (64, 1024), (5, 12)), ("hilo", "a8", "selfq"),
                                                     ((1, 64, 2, 3), (4, 128, 4, 3), (8, 64, 2, 5))):
        w, scale = _quantize_weights(N, K, device)
        x = (torch.randn(K, device=device) * torch.exp(torch.randn(K, device=device))).to(torch.bfloat16)
        x[:4] = 0                                             # a word of zeros: its scale must not be NaN
        want = (w.double() * scale.double()[:, None]) @ x.double()
        poisoned = torch.full((N,), float("nan"), device=device)
        hilo = variant != "a8"
        if variant == "selfq":
            y = gemv_dp4a_selfq(x, w, scale, config, out=poisoned)
        else:
            y = gemv_dp4a(quantize_x(x, hilo), w, scale, config, hilo, out=poisoned)
        terms = (w.double().abs() * scale.double()[:, None]) @ x.double().abs()     # sum of |terms| per row
        step = x.double().view(-1, 4).abs().amax(1).repeat_interleave(4) / 127 / (508 if hilo else 2)
        bound = (w.double().abs() * scale.double()[:, None]) @ step + terms * K * 2.0 ** -23   # x's rounding, fp32 sums
        error = ((y.double() - want).abs() / bound).max().item()
        worst[variant] = max(worst.get(variant, 0.0), error)
        assert error <= 1.0, ((N, K), variant, config, error)
    print("check passed: worst error / its bound (x's rounding, fp32 sums): "
          + ", ".join(f"{variant} {error:.2f}" for variant, error in worst.items()))
    return 0


def main(argv) -> int:
    if "--check" in argv:
        return check("cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu")
    if not torch.cuda.is_available():
        print("int8_dp4a_probe.py needs a CUDA GPU (or --check under TRITON_INTERPRET=1)", file=sys.stderr)
        return 2
    from kernels.bench import copy_bandwidth, graph_replay_us
    from kernels.fused_gemv import gemv as fused_gemv
    from kernels.gemv import gemv

    check("cuda")
    out = Path(argv[0]) if argv else Path("bench/scratch/int8-dp4a")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(time.time()))
    dev, dt = "cuda", torch.bfloat16
    bandwidth = copy_bandwidth()
    rotate = max(64 << 20, 2 * (getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) or 0))
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bandwidth / 1e12:.2f} TB/s; {len(CONFIGS)} configurations",
          flush=True)
    rows = []
    for name, (N, K) in PROJECTIONS.items():
        x = torch.randn(K, device=dev, dtype=dt)
        weights = [_quantize_weights(N, K, dev) for _ in range(max(1, -(-rotate // (N * K))))]
        want = (weights[0][0].double() * weights[0][1].double()[:, None]) @ x.double()
        row = {"projection": name, "N": N, "K": K}

        def timed(call) -> float:
            y = call(*weights[0]).reshape(-1)
            err = ((y.double() - want).abs().max() / want.abs().max()).item()
            assert err < 2e-2, (name, err)            # a wrong kernel's time is no answer
            return graph_replay_us(lambda: [call(w, s) for w, s in weights], 20) / len(weights)

        row["int8_product_us"] = min(timed(lambda w, s: gemv(x[None], w, weight_scale=s)),
                                     timed(lambda w, s: fused_gemv(x, w, weight_scale=s)))
        for hilo in (True, False):
            q = quantize_x(x, hilo)
            times = {}
            for config in CONFIGS:
                try:
                    times[config] = timed(lambda w, s: gemv_dp4a(q, w, s, config, hilo))
                except Exception as exc:      # out of registers or shared memory: said, not fatal
                    print(f"  {name} {config}: {type(exc).__name__}", flush=True)
            best = min(times, key=times.get)
            key = "hilo" if hilo else "a8"
            row[f"{key}_us"], row[f"{key}_config"] = times[best], list(best)
            row[f"{key}_all"] = {"x".join(map(str, c)): t for c, t in times.items()}
            row[f"{key}_with_quantize_us"] = graph_replay_us(
                lambda: [gemv_dp4a(quantize_x(x, hilo), w, s, best, hilo) for w, s in weights], 20) / len(weights)
        times = {}
        for config in SELFQ_CONFIGS:
            try:
                times[config] = timed(lambda w, s: gemv_dp4a_selfq(x, w, s, config))
            except Exception as exc:
                print(f"  {name} selfq {config}: {type(exc).__name__}", flush=True)
        best = min(times, key=times.get)
        row["selfq_us"], row["selfq_config"] = times[best], list(best)
        row["selfq_all"] = {"x".join(map(str, c)): t for c, t in times.items()}
        row["quantize_x_us"] = graph_replay_us(lambda: quantize_x(x, True), 50)
        del weights
        bf16 = [torch.randn(N, K, device=dev, dtype=dt) * 0.02 for _ in range(max(1, -(-rotate // (2 * N * K))))]
        row["cublas_bf16_us"] = graph_replay_us(lambda: [torch.nn.functional.linear(x[None], w) for w in bf16],
                                                20) / len(bf16)
        del bf16
        floor = (N * K + 4 * N) / bandwidth * 1e6
        row["share"] = {k: floor / row[f"{k}_us"] for k in ("int8_product", "hilo", "a8", "selfq")}
        rows.append(row)
        print(f"  {name}: product {row['int8_product_us']:.1f} µs, hilo {row['hilo_us']:.1f}, a8 {row['a8_us']:.1f}, "
              f"selfq {row['selfq_us']:.1f}", flush=True)
        torch.cuda.empty_cache()
    (out / "int8-dp4a-probe.json").write_text(json.dumps(
        {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
         "copy_bandwidth": bandwidth, "rows": rows}, indent=1))
    print(f"\n{torch.cuda.get_device_name()}, copy {bandwidth / 1e12:.2f} TB/s; µs (% of the copy bandwidth)")
    print("| projection | N x K | int8 product | dp4a hi+lo (config) | + quantize x | dp4a a8 (config) | quantize x | "
          "self-quantizing hi+lo (config) | cuBLAS bf16 | hi+lo / product | self-quantizing / product |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["share"]
        print(f"| {r['projection']} | {r['N']}x{r['K']} | "
              f"{r['int8_product_us']:.1f} ({100 * s['int8_product']:.0f}%) | "
              f"{r['hilo_us']:.1f} ({100 * s['hilo']:.0f}%) {'x'.join(map(str, r['hilo_config']))} | "
              f"{r['hilo_with_quantize_us']:.1f} | {r['a8_us']:.1f} ({100 * s['a8']:.0f}%) "
              f"{'x'.join(map(str, r['a8_config']))} | {r['quantize_x_us']:.1f} | {r['selfq_us']:.1f} "
              f"({100 * s['selfq']:.0f}%) {'x'.join(map(str, r['selfq_config']))} | {r['cublas_bf16_us']:.1f} | "
              f"{r['int8_product_us'] / r['hilo_us']:.2f}x | {r['int8_product_us'] / r['selfq_us']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""int8 weights on the GPU: each fused decode kernel (kernels/fused_gemv.py), the batch-1 GEMV (kernels/gemv.py) and
the few-row projection of verification steps (kernels/few_rows_int8.py, M = 2, 8, 16) with int8 weights against
float64 of the dequantized weights, at CodeLlama-7B's shapes and ragged ones, outputs NaN-poisoned, fresh random
inputs; the PRMT conversion against Triton's own (I2F) bit for bit (where an entry says DP4A, that it ran); an int8
cache's bytes from qkv_rope against kernels.append's; then each 7B kernel timed as graph replays with bf16 and int8
weights (weights rotated past the L2) and the share of the copy bandwidth each reaches; then each 7B projection at 8 rows (a verification of 1 + 7 tokens):
the few-row op against the dequantize + cuBLAS path it replaces and against cuBLAS on bf16 weights (its launch:
block_n, block_k, warps, stages, split; `python -m kernels.few_rows_int8_bench` sweeps the launches).

    python bench/gpu/int8_weights_check.py OUT_DIR          # writes OUT_DIR/int8-weights-check.json; exit 1 if wrong

Error: max over outputs of |y - y64| / sum of |terms| (rounding scales with the terms, not the cancelling sum);
bounds as in tests/kernels: bf16 1.2e-2, float32 1e-5.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from kernels import fused_gemv, reference
from kernels import gemv as batch1_gemv
from kernels.append import append_kv_triton
from kernels.bench import copy_bandwidth, graph_replay_us
from kernels.few_rows_int8 import few_rows_int8, plan, sm_count
from kernels.fused_gemv import gemv, norm_swiglu, qkv_rope
from kernels.gemv import gemv as plain_gemv

BOUND = {torch.bfloat16: 1.2e-2, torch.float32: 1e-5}
DIM, HEADS, D, FFN, VOCAB = 4096, 32, 128, 11008, 32016          # CodeLlama-7B
DEVICE = "cuda"
PROJECTIONS = {"wqkv": (3 * DIM, DIM), "wo": (DIM, DIM), "w13": (2 * FFN, DIM), "w2": (DIM, FFN),
               "output": (VOCAB, DIM)}


def int8_weight(rows: int, K: int):
    """Random int8 rows with float32 scales (amax / 127), and the float64 matrix they stand for."""
    values, scale = reference.quantize_int8(torch.randn(rows, K, device=DEVICE) * (torch.rand(rows, 1, device=DEVICE)
                                                                                + 0.1))
    return values, scale, values.double() * scale.double()[:, None]


def normed(x, norm_weight, eps=1e-5):
    return reference._normed(x, norm_weight, eps)


def error(y, want, terms) -> float:
    """NaN anywhere counts as infinite."""
    err = ((y.double() - want).abs() / terms.clamp_min(1e-300)).max()
    return float("inf") if not torch.isfinite(y).all() else err.item()


def cases(dtype):
    """(name, run(weight, scale) -> y, weight rows, K, float64 reference(dequantized) -> (want, terms))."""
    out = []
    for N, K, label in ((DIM, DIM, "wo+res"), (DIM, FFN, "w2+res"), (37, 1000, "ragged+res")):
        x, res = torch.randn(K, device=DEVICE, dtype=dtype), torch.randn(N, device=DEVICE, dtype=dtype)
        out.append((f"gemv {label} {N}x{K}", lambda w, s, x=x, res=res: gemv(x, w, residual=res, weight_scale=s), N, K,
                    lambda w64, x=x, res=res: (w64 @ x.double() + res.double(),
                                               w64.abs() @ x.double().abs() + res.double().abs())))
    for N, K, label in ((VOCAB, DIM, "logits"), (300, 77, "ragged norm")):
        x, nw = torch.randn(K, device=DEVICE, dtype=dtype), torch.rand(K, device=DEVICE, dtype=dtype) + 0.5
        out.append((f"gemv {label} {N}x{K} fp32 out",
                    lambda w, s, x=x, nw=nw: gemv(x, w, norm_weight=nw, out_dtype=torch.float32, weight_scale=s), N, K,
                    lambda w64, x=x, nw=nw: (w64 @ normed(x, nw), w64.abs() @ normed(x, nw).abs())))
    for F, K in ((FFN, DIM), (43, 1000)):
        x, nw = torch.randn(K, device=DEVICE, dtype=dtype), torch.rand(K, device=DEVICE, dtype=dtype) + 0.5

        def want(w64, x=x, nw=nw, F=F):
            gate, up = (w64 @ normed(x, nw)).chunk(2)
            g_terms, u_terms = (w64.abs() @ normed(x, nw).abs()).chunk(2)
            silu = torch.nn.functional.silu
            return silu(gate) * up, 1.1 * up.abs() * g_terms + silu(gate).abs() * u_terms
        out.append((f"norm_swiglu {2 * F}x{K}", lambda w, s, x=x, nw=nw: norm_swiglu(x, nw, 1e-5, w, weight_scale=s),
                    2 * F, K, want))
    for heads, kv_heads, head_dim, K in ((HEADS, HEADS, D, DIM), (8, 2, 64, 1000)):
        S = 64
        x, nw = torch.randn(K, device=DEVICE, dtype=dtype), torch.rand(K, device=DEVICE, dtype=dtype) + 0.5
        angles = torch.rand(S, head_dim // 2, device=DEVICE) * 6.3
        cos, sin = torch.cat((angles.cos(), angles.cos()), -1), torch.cat((angles.sin(), angles.sin()), -1)
        pos = torch.tensor([S - 3], device=DEVICE)
        caches = tuple(torch.zeros(1, kv_heads, S, head_dim, device=DEVICE, dtype=dtype) for _ in range(2))

        def want(w64, x=x, nw=nw, cos=cos, sin=sin, pos=pos, heads=heads, kv_heads=kv_heads, head_dim=head_dim):
            y = reference.qkv_rope(x, nw, 1e-5, w64, cos, sin, pos, heads, kv_heads)
            terms = (w64.abs() @ normed(x, nw).abs()).view(-1, head_dim)
            return y, (terms + terms.roll(head_dim // 2, dims=-1)).reshape(-1)
        out.append((f"qkv_rope {(heads + 2 * kv_heads) * head_dim}x{K}",
                    lambda w, s, x=x, nw=nw, cos=cos, sin=sin, pos=pos, heads=heads, kv_heads=kv_heads, c=caches:
                    qkv_rope(x, nw, 1e-5, w, cos, sin, pos, heads, kv_heads, cache=c, weight_scale=s),
                    (heads + 2 * kv_heads) * head_dim, K, want))
    for N, K, split in ((12288, DIM, None), (DIM, FFN, None), (DIM, FFN, 3), (37, 1000, 2)):
        x = torch.randn(1, K, device=DEVICE, dtype=dtype)
        out.append((f"kernels.gemv {N}x{K} split {split or 'auto'}",
                    lambda w, s, x=x, split=split: plain_gemv(x, w, weight_scale=s, split_k=split).view(-1), N, K,
                    lambda w64, x=x: (w64 @ x.double().view(-1), w64.abs() @ x.double().abs().view(-1))))
    for (N, K), M in [(shape, M) for shape in PROJECTIONS.values() for M in (2, 8, 16)] + [((37, 1000), 9)]:
        x = torch.randn(M, K, device=DEVICE, dtype=dtype)
        out.append((f"kernels.few_rows_int8 {M} rows {N}x{K}", lambda w, s, x=x: few_rows_int8(x, w, s), N, K,
                    lambda w64, x=x: (x.double() @ w64.T, x.double().abs() @ w64.abs().T)))
    return out


def check(log) -> list[dict]:
    real_empty = torch.empty

    def poisoned(*args, **kwargs):      # every output a kernel leaves unwritten shows as NaN
        t = real_empty(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t
    rows = []
    torch.empty = poisoned
    try:
        for dtype in (torch.bfloat16, torch.float32):
            for name, run, N, K, want in cases(dtype):
                w, s, w64 = int8_weight(N, K)
                y = run(w, s)
                same = dp4a = None      # (bf16 only, fused kernels: kernels.gemv has no I2F arm; fewer compiles)
                if dtype == torch.bfloat16 and not name.startswith("kernels."):
                    fused_gemv.DP4A = False        # where an entry says DP4A: the same launch widened, to compare
                    widened = run(w, s).view(-1)
                    fused_gemv.WEIGHTS_BY_PRMT = False
                    same = torch.equal(widened, run(w, s).view(-1))
                    fused_gemv.WEIGHTS_BY_PRMT = fused_gemv.DP4A = True
                    dp4a = not torch.equal(y.view(-1), widened)       # DP4A ran (x's words are not x)
                want64, terms = want(w64)
                err = error(y, want64, terms)
                ok = err < BOUND[dtype] and same is not False
                rows.append({"case": name, "dtype": str(dtype).removeprefix("torch."), "error": err,
                             "prmt_equals_i2f": same, "dp4a": dp4a, "ok": ok})
                log(f"{'ok ' if ok else 'BAD'} {name:36s} {rows[-1]['dtype']:8s} error {err:.2e}"
                    + ("" if same is None else f"  PRMT == I2F: {same}  DP4A: {dp4a}"))
        rows.append(int8_cache_case(log))
    finally:
        torch.empty = real_empty
        fused_gemv.WEIGHTS_BY_PRMT = fused_gemv.DP4A = True
    return rows


def int8_cache_case(log) -> dict:
    """qkv_rope with int8 weights writing an int8 KV cache itself: its bytes and scales equal append_kv's of the k
    and v it returns."""
    heads, kv_heads, S = HEADS, HEADS, 64
    x = torch.randn(DIM, device=DEVICE, dtype=torch.bfloat16)
    nw = torch.rand(DIM, device=DEVICE, dtype=torch.bfloat16) + 0.5
    w, s, _ = int8_weight((heads + 2 * kv_heads) * D, DIM)
    angles = torch.rand(S, D // 2, device=DEVICE) * 6.3
    cos, sin = torch.cat((angles.cos(), angles.cos()), -1), torch.cat((angles.sin(), angles.sin()), -1)
    caches = [torch.zeros(1, kv_heads, S, D, device=DEVICE, dtype=torch.int8) for _ in range(2)]
    scales = [torch.zeros(1, kv_heads, S, device=DEVICE) for _ in range(2)]
    want_c, want_s = [c.clone() for c in caches], [t.clone() for t in scales]
    pos = torch.tensor([S - 5], device=DEVICE)
    y = qkv_rope(x, nw, 1e-5, w, cos, sin, pos, heads, kv_heads, cache=tuple(caches), scales=tuple(scales),
                 weight_scale=s)
    k, v = (t.view(1, kv_heads, 1, D) for t in y[heads * D:].chunk(2))
    append_kv_triton(k, v, *want_c, pos, *want_s)
    ok = all(torch.equal(a, b) for a, b in zip(caches + scales, want_c + want_s))
    log(f"{'ok ' if ok else 'BAD'} qkv_rope int8 weights into an int8 cache: bytes and scales == append_kv's: {ok}")
    return {"case": "qkv_rope int8 weights, int8 cache == append_kv", "ok": ok}


def timings(log, replays: int = 20) -> list[dict]:
    """µs per launch of each 7B kernel with bf16 and with int8 weights, and the share of the copy bandwidth."""
    bandwidth = copy_bandwidth()
    rotate = max(64 << 20, 2 * (getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) or 0))
    dt = torch.bfloat16
    x, nw = torch.randn(DIM, device=DEVICE, dtype=dt), torch.rand(DIM, device=DEVICE, dtype=dt) + 0.5
    xf = torch.randn(FFN, device=DEVICE, dtype=dt)
    res = torch.randn(DIM, device=DEVICE, dtype=dt)
    S = 4096
    angles = torch.rand(S, D // 2, device=DEVICE) * 6.3
    cos, sin = torch.cat((angles.cos(), angles.cos()), -1), torch.cat((angles.sin(), angles.sin()), -1)
    pos = torch.tensor([S - 1], device=DEVICE)
    caches = tuple(torch.zeros(1, HEADS, S, D, device=DEVICE, dtype=dt) for _ in range(2))
    kernels = {
        "wqkv rope cache": ((3 * DIM, DIM), lambda w, s: qkv_rope(x, nw, 1e-5, w, cos, sin, pos, HEADS, HEADS,
                                                                   cache=caches, weight_scale=s)),
        "wo + residual": ((DIM, DIM), lambda w, s: gemv(x, w, residual=res, weight_scale=s)),
        "w13 swiglu": ((2 * FFN, DIM), lambda w, s: norm_swiglu(x, nw, 1e-5, w, weight_scale=s)),
        "w2 + residual": ((DIM, FFN), lambda w, s: gemv(xf, w, residual=res, weight_scale=s)),
        "logits fp32": ((VOCAB, DIM), lambda w, s: gemv(x, w, norm_weight=nw, out_dtype=torch.float32,
                                                        weight_scale=s)),
    }
    rows = []
    for name, ((N, K), call) in kernels.items():
        row = {"kernel": name, "N": N, "K": K}
        # "int8 wide": W loaded 16 bytes a thread (kernels.gemv.NARROW_INT8_LOADS off), the A/B of the 8-byte loads
        for kind, element in (("bf16", 2), ("int8", 1), ("int8 wide", 1)):
            copies = max(1, -(-rotate // (N * K * element)))
            if kind == "bf16":
                ws = [(torch.randn(N, K, device=DEVICE, dtype=dt) * 0.02, None) for _ in range(copies)]
            else:
                ws = [int8_weight(N, K)[:2] for _ in range(copies)]
            batch1_gemv.NARROW_INT8_LOADS = kind != "int8 wide"
            try:
                us = graph_replay_us(lambda: [call(w, s) for w, s in ws], replays) / copies
            finally:
                batch1_gemv.NARROW_INT8_LOADS = True
            floor = (N * K * element + (4 * N if element == 1 else 0)) / bandwidth * 1e6
            row[kind] = {"us": us, "floor_us": floor, "share_of_copy_bandwidth": floor / us}
            del ws
        row["speedup"] = row["bf16"]["us"] / row["int8"]["us"]
        bf16, int8, wide = row["bf16"], row["int8"], row["int8 wide"]
        log(f"{name:16s} {N:6d}x{K:<6d} bf16 {bf16['us']:7.1f} µs ({100 * bf16['share_of_copy_bandwidth']:3.0f}%)"
            f"  int8 {int8['us']:7.1f} µs ({100 * int8['share_of_copy_bandwidth']:3.0f}%)  {row['speedup']:.2f}x"
            f"  int8 16-byte loads {wide['us']:7.1f} µs ({100 * wide['share_of_copy_bandwidth']:3.0f}%)")
        rows.append(row)
        torch.cuda.empty_cache()
    return [{"copy_bandwidth": bandwidth}] + rows


def few_rows_timings(log, M: int = 8, replays: int = 20) -> list[dict]:
    """µs per call of each 7B projection at M rows: the few-row op on int8 weights, the path it replaced (the weight
    dequantized to bf16, then cuBLAS: `models.int8_weights.dequantize` + F.linear) and cuBLAS on bf16 weights; the
    share of the copy bandwidth of the int8 (and bf16) bytes."""
    from models.int8_weights import Int8Weight, dequantize
    bandwidth = copy_bandwidth()
    rotate = max(64 << 20, 2 * (getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) or 0))
    dt = torch.bfloat16
    rows = []
    for name, (N, K) in PROJECTIONS.items():
        x = torch.randn(M, K, device=DEVICE, dtype=dt)
        row = {"projection": name, "M": M, "N": N, "K": K}
        int8 = [int8_weight(N, K)[:2] for _ in range(max(1, -(-rotate // (N * K))))]
        row["few_rows_int8_us"] = graph_replay_us(lambda: [few_rows_int8(x, w, s) for w, s in int8],
                                                  replays) / len(int8)
        row["dequantize_cublas_us"] = graph_replay_us(
            lambda: [torch.nn.functional.linear(x, dequantize(Int8Weight(w, s), dt)) for w, s in int8],
            replays) / len(int8)
        del int8
        bf16 = [torch.randn(N, K, device=DEVICE, dtype=dt) * 0.02 for _ in range(max(1, -(-rotate // (2 * N * K))))]
        row["bf16_cublas_us"] = graph_replay_us(lambda: [torch.nn.functional.linear(x, w) for w in bf16],
                                                replays) / len(bf16)
        del bf16
        row["int8_floor_us"] = (N * K + 4 * N) / bandwidth * 1e6
        row["share_of_copy_bandwidth"] = row["int8_floor_us"] / row["few_rows_int8_us"]
        row["vs_dequantize"] = row["dequantize_cublas_us"] / row["few_rows_int8_us"]
        row["vs_bf16"] = row["bf16_cublas_us"] / row["few_rows_int8_us"]
        row["plan"] = list(plan(N, K, sm_count(x.device)))
        log(f"{M} rows {name:6s} {N:6d}x{K:<6d} few_rows_int8 {row['few_rows_int8_us']:7.1f} µs "
            f"({100 * row['share_of_copy_bandwidth']:3.0f}% of copy bw)  dequantize+cuBLAS "
            f"{row['dequantize_cublas_us']:7.1f} ({row['vs_dequantize']:.2f}x)  bf16 cuBLAS "
            f"{row['bf16_cublas_us']:7.1f} ({row['vs_bf16']:.2f}x)  launch {tuple(row['plan'][:5])}")
        rows.append(row)
        torch.cuda.empty_cache()
    return rows


def main(argv) -> int:
    if not torch.cuda.is_available():
        print("int8_weights_check.py needs a CUDA GPU", file=sys.stderr)
        return 2
    out = Path(argv[0]) if argv else Path("bench/scratch/int8-weights")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(time.time()))        # fresh inputs every run
    log = lambda line: print(line, flush=True)     # noqa: E731
    log(f"{torch.cuda.get_device_name()}: int8 weights against float64 (bounds: bf16 {BOUND[torch.bfloat16]}, "
        f"fp32 {BOUND[torch.float32]})")
    checks = check(log)
    times = timings(log)
    few_rows = few_rows_timings(log)
    (out / "int8-weights-check.json").write_text(json.dumps({"checks": checks, "timings": times,
                                                             "few_rows_timings": few_rows}, indent=1))
    bad = [c["case"] for c in checks if not c["ok"]]
    print(f"int8 weights: {len(checks) - len(bad)} of {len(checks)} checks ok" + (f"; WRONG: {bad}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

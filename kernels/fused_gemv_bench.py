"""Sweep the fused dense kernels of `kernels/fused_gemv.py` on a GPU: every launch configuration of each
kernel of a model's decode step, timed as CUDA-graph replays and checked against float64, and per shape the
fastest that beats the kind's default (the per-shape entries of `kernels.fused_gemv.CONFIGS`).

    python -m kernels.fused_gemv_bench                          # CodeLlama-7B's step
    python -m kernels.fused_gemv_bench --model 34B/2,34B,70B/2  # tensor-parallel ranks' and other models' shapes
    python -m kernels.fused_gemv_bench --weights int8           # int8 weights (entries for `INT8_CONFIGS`)
    python -m kernels.fused_gemv_bench --weights int4 --model 34B   # int4 weights (entries for `INT4_CONFIGS`)
"""

from __future__ import annotations

import json
from typing import NamedTuple

import torch

from kernels.fused_gemv import (CONFIGS, INT4_CONFIGS, INT8_CONFIGS, Config, config_for, config_name, gemv, norm_swiglu,
                                qkv_rope)
from kernels.int4_layout import dequantize_int4, int4_bytes, quantize_int4

# ---- the shapes of a model's decode step -----------------------------------------------------------

# The presets of models/config.py that a sweep can name (kernels import nothing from models; a test checks
# that these agree): layers, hidden, query heads, KV heads, head dim, FFN width, vocabulary.
MODELS = {"CodeLlama-7B": (32, 4096, 32, 32, 128, 11008, 32016), "CodeLlama-13B": (40, 5120, 40, 40, 128, 13824, 32016),
          "CodeLlama-34B": (48, 8192, 64, 8, 128, 22016, 32000), "CodeLlama-70B": (80, 8192, 64, 8, 128, 28672, 32016)}


class Projection(NamedTuple):
    """One fused kernel of a decode step: its name, kind, weight (N, K), launches per step, and for qkv_rope
    the heads it holds."""
    name: str
    kind: str
    N: int
    K: int
    per_step: int
    heads: int = 0
    kv_heads: int = 0
    head_dim: int = 0


def model_projections(model: str, tp: int = 1) -> list[Projection]:
    """The fused kernels of one batch-1 decode step of preset `model` ("CodeLlama-34B" or "34B") on one of `tp`
    ranks, split as models/tp.py splits it: wqkv and w13 by output rows (whole KV heads with their query
    heads; FFN columns), wo and w2 by input columns, the output layer by ceil(vocab / tp) rows."""
    name = model if model in MODELS else f"CodeLlama-{model}"
    if name not in MODELS:
        raise ValueError(f"unknown model {model!r} (known: {', '.join(MODELS)})")
    layers, dim, hq, hkv, D, ffn, vocab = MODELS[name]
    if hkv % tp or ffn % tp:
        raise ValueError(f"{name}: {hkv} KV heads and FFN {ffn} do not split over {tp} ranks")
    hq, hkv, ffn = hq // tp, hkv // tp, ffn // tp
    wide_or_deep = "gemv_deep" if dim < hq * D else "gemv"
    return [Projection("wqkv rope cache", "qkv_rope", (hq + 2 * hkv) * D, dim, layers, hq, hkv, D),
            Projection("wo + residual", wide_or_deep, dim, hq * D, layers),
            Projection("w13 swiglu", "norm_swiglu", 2 * ffn, dim, layers),
            Projection("w2 + residual", "gemv_deep" if dim < ffn else "gemv", dim, ffn, layers),
            Projection("logits fp32", "gemv_norm", -(-vocab // tp), dim, 1)]


def _parse_models(specs: str, tp: int) -> list[tuple[str, int]]:
    """"34B/2,CodeLlama-34B" -> [("CodeLlama-34B", 2), ("CodeLlama-34B", tp)]."""
    out = []
    for spec in filter(None, (s.strip() for s in specs.split(","))):
        name, _, ranks = spec.partition("/")
        name = name if name in MODELS else f"CodeLlama-{name}"
        if name not in MODELS or (ranks and not ranks.isdigit()):
            raise ValueError(f"--model: {spec!r} is not NAME or NAME/TP with NAME one of {', '.join(MODELS)}")
        out.append((name, int(ranks) if ranks else tp))
    return out


# ---- GPU benchmark -------------------------------------------------------------------------------

# Configurations to time per kernel (block_n, block_k, num_warps, num_stages), besides the kind's default.
# Paired kernels interleaved only: at 7B's shapes every pair loaded as two tiles ran 6-30% slower than the same
# configuration interleaved (h200-fused-explore/fused-gemv.json). Fewer rows per program and longer K than
# 7B's are in both lists for the tensor-parallel ranks' shapes (half the rows, or half of K).
_PAIRED = [(16, 256, 4, 3), (16, 256, 4, 4), (16, 256, 4, 5), (16, 256, 8, 4), (16, 512, 4, 3), (16, 512, 8, 3),
           (16, 128, 4, 6), (32, 256, 8, 4), (32, 128, 4, 4), (8, 512, 4, 3), (8, 512, 4, 4), (8, 512, 2, 4),
           (8, 256, 2, 4), (8, 256, 4, 4), (8, 1024, 4, 3), (4, 512, 2, 4), (4, 1024, 4, 3), (4, 1024, 2, 3)]
_PLAIN = [(2, 1024, 4, 4), (2, 1024, 2, 4), (2, 1024, 4, 3), (2, 1024, 2, 5), (2, 2048, 4, 3), (2, 2048, 4, 4),
          (2, 512, 2, 4), (2, 512, 4, 4), (4, 1024, 4, 3), (4, 1024, 4, 4), (4, 1024, 8, 3), (4, 2048, 8, 3),
          (4, 512, 4, 4), (4, 512, 4, 5), (4, 512, 2, 4), (8, 512, 4, 4), (8, 256, 4, 4), (8, 1024, 8, 3),
          (1, 2048, 4, 3), (1, 1024, 2, 4)]
SWEEP = {"qkv_rope": [Config(*c, interleave=True) for c in _PAIRED],
         "norm_swiglu": [Config(*c, interleave=True) for c in _PAIRED],
         "gemv": [Config(*c) for c in _PLAIN], "gemv_deep": [Config(*c) for c in _PLAIN],
         "gemv_norm": [Config(*c) for c in _PLAIN]}
# int8 weights by DP4A (kernels/dp4a.py; block_n, block_k, num_warps, num_stages): x is quantized once per thread
# whatever its rows, so many rows a thread and few warps (the H200 probe's best at 7B's shapes: bench/results/NOTES.md,
# Run 37); timed besides SWEEP's in int8 sweeps.
_DP4A_PAIRED = [(16, 1024, 2, 3), (16, 256, 2, 4), (16, 512, 2, 3), (16, 512, 1, 3), (32, 512, 2, 3), (32, 1024, 4, 3),
                (32, 256, 1, 3), (16, 256, 1, 4), (8, 512, 1, 4), (8, 1024, 2, 3)]
_DP4A_PLAIN = [(8, 1024, 2, 2), (8, 1024, 2, 3), (16, 256, 2, 2), (16, 1024, 2, 3), (16, 512, 1, 3), (8, 512, 1, 4),
               (4, 1024, 2, 3), (4, 512, 1, 4), (16, 256, 1, 3), (2, 1024, 2, 5)]
SWEEP_DP4A = {"qkv_rope": [Config(*c, interleave=True, dp4a=True) for c in _DP4A_PAIRED],
              "norm_swiglu": [Config(*c, interleave=True, dp4a=True) for c in _DP4A_PAIRED],
              **{kind: [Config(*c, dp4a=True) for c in _DP4A_PLAIN] for kind in ("gemv", "gemv_deep", "gemv_norm")}}
# int4 weights (kernels/int4_layout.py; block_n, block_k, num_warps, num_stages): the one-row int4 GEMV's inner step,
# 32 columns a thread's slot, so block_k = 1024 x num_warps gives each thread one slot a row a step; more rows a program
# amortise x's share of the instructions (sm_90 SASS, w13: 8.3 instructions a byte of W at 8 rows, 6.9 at 16 with 252
# registers), fewer give more programs. Paired kernels interleave (int4 takes no other).
_INT4 = [(8, 4096, 4, 3), (4, 4096, 4, 3), (16, 4096, 4, 3), (8, 2048, 2, 3), (16, 2048, 2, 3), (4, 2048, 2, 4),
         (8, 8192, 8, 3), (8, 1024, 1, 4), (16, 1024, 1, 3), (8, 4096, 4, 4), (2, 4096, 4, 3), (32, 1024, 1, 3)]
SWEEP_INT4 = {kind: [Config(*c, interleave=True) for c in _INT4] for kind in SWEEP}
MARGIN = 0.01          # a shape's winner becomes an entry only if it beats the kind's default by this much
FINALISTS = 4          # configurations re-timed (with the default and the current entry) before choosing


def choose(default: Config, timed: dict) -> tuple[Config, float]:
    """The configuration to use for a shape, from {config: µs} of the second timing: its fastest if that
    beats the default by MARGIN, else the default; and the gain over the default (0 when kept)."""
    best = min(timed, key=timed.get)
    gain = 1 - timed[best] / timed[default] if default in timed else 1.0
    return (best, gain) if best == default or gain >= MARGIN else (default, 0.0)


def main(argv=None) -> int:
    """GPU: graph-replay µs of each fused kernel of a model's decode step (CodeLlama-7B's by default; --model
    34B/2,34B,70B/2 for tensor-parallel ranks' and other models' shapes) in each configuration, weights rotated
    past the L2; every configuration's output checked against float64; the share of the copy bandwidth each
    reaches, cuBLAS on the bare projection beside it; the finalists timed again, and per shape the fastest
    (--write-configs: the entries CONFIGS should hold, as CODECOMPLETE_FUSED_CONFIGS reads them)."""
    import argparse
    import time

    import torch.nn.functional as F

    from kernels import reference
    from kernels.bench import copy_bandwidth, graph_replay_us
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="CodeLlama-7B",
                        help="comma-separated NAME or NAME/TP (a rank of TP): 7B, 13B, 34B, 70B, e.g. 34B/2,34B,70B/2 "
                             "(default: 7B)")
    parser.add_argument("--tp", type=int, default=1, help="ranks for the names given without /TP (default: 1)")
    parser.add_argument("--json", default="", help="write the rows to this file")
    parser.add_argument("--replays", type=int, default=20, help="graph replays a timing (default: 20)")
    parser.add_argument("--budget-s", type=float, default=0.0, help="stop starting shapes after this long (0: none)")
    parser.add_argument("--write-configs", default="", metavar="FILE",
                        help="write the per-shape entries (winners by >= 1%% over the default) here, as JSON")
    parser.add_argument("--weights", choices=("bf16", "int8", "int4"), default="bf16",
                        help="the weights' kind: int8 (a float32 scale per row; its entries are INT8_CONFIGS', "
                             "CODECOMPLETE_FUSED_INT8_CONFIGS reads them), int4 (4 bits with a float16 scale and "
                             "offset per group of 32 columns; its entries are INT4_CONFIGS') (default: bf16)")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)   # cpu: the interpreter (tests)
    args = parser.parse_args(argv)
    try:
        models = _parse_models(args.model, args.tp)
        steps = {(m, tp): model_projections(m, tp) for m, tp in models}
    except ValueError as error:
        parser.error(str(error))
    if args.device == "cuda" and not torch.cuda.is_available():     # was torch's AssertionError traceback
        parser.exit(2, "kernels.fused_gemv_bench needs a CUDA GPU: it times the fused kernels there.\n")
    started = time.perf_counter()
    bandwidth = copy_bandwidth()
    dev = args.device
    rotate = max(64 << 20, 2 * (getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) or 0)) if dev == "cuda" else 0
    shapes: dict[tuple[str, int, int], Projection] = {}       # each (kind, N, K) once, in the order asked
    for projections in steps.values():
        for p in projections:
            shapes.setdefault((p.kind, p.N, p.K), p)
    print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s; weights rotated over {rotate >> 20} MiB; "
          f"{len(shapes)} shapes of {', '.join(f'{m}/{tp}' for m, tp in models)}", flush=True)
    dt, S, eps = torch.bfloat16, 4096, 1e-5
    rows, entries, bad = [], {}, []
    for (kind, N, K), p in shapes.items():
        if args.budget_s and time.perf_counter() - started > args.budget_s:
            print(f"budget of {args.budget_s:.0f} s spent: {kind} {N}x{K} and later shapes not run", flush=True)
            break
        x, norm_w = torch.randn(K, device=dev, dtype=dt), torch.rand(K, device=dev, dtype=dt) + 0.5
        res = torch.randn(N, device=dev, dtype=dt)
        if kind == "qkv_rope":
            D = p.head_dim
            cos, sin, pos = torch.rand(S, D, device=dev), torch.rand(S, D, device=dev), torch.tensor([S - 1], device=dev)
            caches = tuple(torch.randn(1, p.kv_heads, S, D, device=dev, dtype=dt) for _ in range(2))
            run = lambda w, **c: qkv_rope(x, norm_w, eps, w, cos, sin, pos, p.heads, p.kv_heads, cache=caches, **c)
            want = lambda w: reference.qkv_rope(x, norm_w, eps, w, cos, sin, pos, p.heads, p.kv_heads)
        elif kind == "norm_swiglu":
            run = lambda w, **c: norm_swiglu(x, norm_w, eps, w, **c)
            want = lambda w: reference.norm_swiglu(x, norm_w, eps, w)
        elif kind == "gemv_norm":
            run = lambda w, **c: gemv(x, w, norm_weight=norm_w, eps=eps, out_dtype=torch.float32, **c)
            want = lambda w: reference.fused_gemv(x, w, norm_weight=norm_w, eps=eps)
        else:
            run = lambda w, **c: gemv(x, w, residual=res, **c)
            want = lambda w: reference.fused_gemv(x, w, residual=res)
        int8, int4 = args.weights == "int8", args.weights == "int4"
        element = 1 if int8 else 2
        weight_bytes = int4_bytes(N, K) if int4 else N * K * element + 4 * N * int8
        copies = max(1, -(-rotate // weight_bytes))
        if int4:        # Int4Weight triples; the reference multiplies by what they stand for, in float64
            ws = [quantize_int4(torch.randn(N, K, device=dev) * 0.02) for _ in range(copies)]
            call = lambda w, **c: run(w.packed, weight_scale=w.scale, weight_offset=w.offset, **c)
            reference_out = want(dequantize_int4(ws[-1], torch.float64))
        elif int8:      # (values, scales) pairs; the reference multiplies by what they stand for
            ws = [reference.quantize_int8(torch.randn(N, K, device=dev) * 0.02) for _ in range(copies)]
            call = lambda w, **c: run(w[0], weight_scale=w[1], **c)
            reference_out = want(ws[-1][0].double() * ws[-1][1].double()[:, None])
        else:
            ws = [torch.randn(N, K, device=dev, dtype=dt) * 0.02 for _ in range(copies)]
            call = run
            reference_out = want(ws[-1])
        floor = weight_bytes / bandwidth * 1e6

        def us_of(config: Config, replays: int) -> float:
            return graph_replay_us(lambda: [call(w, **config._asdict()) for w in ws], replays) / copies

        def error_of(config: Config) -> float:        # NaN (unwritten or wrong) fails as infinite
            got = call(ws[-1], **config._asdict()).double()
            err = ((got - reference_out).abs().max() / reference_out.abs().max()).item()
            return err if err == err else float("inf")

        default = INT4_CONFIGS[kind] if int4 else INT8_CONFIGS.get(kind, CONFIGS[kind]) if int8 else CONFIGS[kind]
        current = config_for(kind, N, K, int8, int4)
        sweep = SWEEP_INT4[kind] if int4 else [*SWEEP[kind], *(SWEEP_DP4A[kind] if int8 else [])]
        candidates = list(dict.fromkeys([default, current, *sweep]))
        # (int8 and int4: cuBLAS on as many bf16 bytes as bf16's)
        cublas_ws = [dequantize_int4(w, dt) for w in ws] if int4 else [w[0].to(dt) for w in ws] if int8 else ws
        row = {"kind": kind, "N": N, "K": K, "op": p.name, "weights": args.weights, "floor_us": floor,
               "cublas_us": graph_replay_us(lambda: [F.linear(x[None], w) for w in cublas_ws], args.replays) / copies,
               "configs": []}
        for config in candidates:
            entry = config._asdict()
            try:
                entry["us"], entry["max_rel_err"] = us_of(config, args.replays), error_of(config)
            except Exception as error:   # a configuration this kernel cannot take: say so, go on
                entry["us"], entry["max_rel_err"], entry["error"] = float("nan"), float("inf"), str(error)[:200]
                print(f"  {kind} {N}x{K} {tuple(config)}: {type(error).__name__}: {str(error)[:120]}")
            entry["ok"] = entry["max_rel_err"] < 1e-2
            row["configs"].append(entry)
        wrong = [c for c in row["configs"] if not c["ok"] and "error" not in c]
        if wrong:
            print(f"  {kind} {N}x{K}: {len(wrong)} configurations WRONG against float64, e.g. "
                  f"{tuple(wrong[0][k] for k in Config._fields)} max rel err {wrong[0]['max_rel_err']:.1e}")
        ok = sorted((c for c in row["configs"] if c["ok"]), key=lambda c: c["us"])
        good = {Config(**{k: c[k] for k in Config._fields}) for c in ok}
        finalists = list(dict.fromkeys([Config(**{k: c[k] for k in Config._fields}) for c in ok[:FINALISTS]]
                                       + [c for c in (default, current) if c in good]))
        again = {c: [] for c in finalists}
        for _ in range(2):                           # twice, alternating, at 3x the replays: the median of each
            for c in finalists:
                again[c].append(us_of(c, 3 * args.replays))
        timed = {c: sum(v) / len(v) for c, v in again.items()}
        if not timed or default not in timed:
            bad.append(f"{kind} {N}x{K}")
            print(f"{p.name:16s} {kind} {N}x{K}: the default configuration is not among the correct ones")
            rows.append(row)
            continue
        chosen, gain = choose(default, timed)
        row["final"] = [c._asdict() | {"us": timed[c], "runs": again[c]} for c in finalists]
        row["chosen"], row["gain"] = chosen._asdict() | {"us": timed[chosen]}, gain
        row["default_us"] = timed[default]
        row["current_us"] = timed.get(current, timed[default])
        if chosen != current:   # (current: what launches without this sweep's entry; for int8 weights a bf16
            entries[(kind, N, K)] = chosen   # entry, which a kept default must override)
        print(f"{p.name:16s} {str((N, K)):14s} floor {floor:6.1f} µs  cuBLAS {row['cublas_us']:6.1f} "
              f"({100 * floor / row['cublas_us']:3.0f}%)  default {timed[default]:6.1f} ({100 * floor / timed[default]:3.0f}%)  "
              f"chosen {timed[chosen]:6.1f} ({100 * floor / timed[chosen]:3.0f}%) {tuple(chosen)} "
              f"{'kept' if chosen == current else 'the default' if chosen == default else f'-{100 * gain:.1f}%'}  err {error_of(chosen):.1e}", flush=True)
        rows.append(row)
        del ws, cublas_ws, reference_out
        torch.cuda.empty_cache()
    done = {(r["kind"], r["N"], r["K"]): r for r in rows if "chosen" in r}
    predictions = {}
    for (model, tp), projections in steps.items():       # what the entries should take off each decode step
        have = [p for p in projections if (p.kind, p.N, p.K) in done]
        before = sum(p.per_step * done[p.kind, p.N, p.K]["current_us"] for p in have)
        after = sum(p.per_step * done[p.kind, p.N, p.K]["chosen"]["us"] for p in have)
        predictions[f"{model}/{tp}"] = {"current_us": before, "chosen_us": after, "shapes": len(have)}
        print(f"{model} on {'one GPU' if tp == 1 else f'one rank of {tp}'}: the step's fused kernels "
              f"{before:.0f} -> {after:.0f} µs ({after - before:+.0f} µs; {len(have)} of {len(projections)} shapes timed)")
    table = {config_name(k): list(c) for k, c in entries.items()}
    print("per-shape entries (CONFIGS):")
    for (kind, N, K), c in entries.items():
        print(f"    ({kind!r}, {N}, {K}): {c!r},")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"copy_bandwidth": bandwidth, "models": [f"{m}/{tp}" for m, tp in models], "margin": MARGIN,
                       "rows": rows, "entries": table, "predictions": predictions,
                       "wall_s": time.perf_counter() - started}, f, indent=1)
    if args.write_configs:
        with open(args.write_configs, "w", encoding="utf-8") as f:
            json.dump(table, f, indent=1)
    if bad:
        print(f"WRONG RESULTS: {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())

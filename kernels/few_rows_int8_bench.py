"""Sweep the few-row int8 kernel (kernels/few_rows_int8.py) on a GPU: a few tiles times a few split-K counts at
CodeLlama-7B's and 34B's projections with 2, 8 and 16 rows of x, timed as CUDA-graph replays (weights rotated past
the L2), each checked against float64 of the dequantized weight (output and partials NaN-poisoned, the ticket
counters back at zero); beside them the plan's launch, Run 35's (one range, 16 rows a program for the deep
projections) and cuBLAS on bf16 weights of the shape. A table last: µs, share of the copy bandwidth, ratio to bf16
cuBLAS (above 1: faster than it); then per shape the launch fastest over the rows asked (--write-plans: the
entries `PLANS` should hold, as CODECOMPLETE_FEW_ROWS_PLANS reads them).

    python -m kernels.few_rows_int8_bench                          # 8 shapes x M 2, 8, 16: about 2 minutes
    python -m kernels.few_rows_int8_bench --only "7B wo,7B w2" --rows 8

Few compiles on purpose (a Triton build costs seconds): M and the split count are run-time arguments of one binary
a tile (`do_not_specialize`), so TILES x {one range, split} builds in all.
"""

from __future__ import annotations

import json
import time

import torch

from kernels.check import nan_poisoned_empty
from kernels.few_rows_int8 import BLOCK_K, NUM_STAGES, NUM_WARPS, few_rows_int8, plan, sm_count, split_for

# (N, K) of the projections of CodeLlama-7B and -34B on one GPU, deep ones first (the split's reason).
SHAPES = {"7B wo": (4096, 4096), "7B w2": (4096, 11008), "34B wo": (8192, 8192), "34B w2": (8192, 22016),
          "7B wqkv": (12288, 4096), "7B w13": (22016, 4096), "34B wqkv": (10240, 8192), "34B w13": (44032, 8192)}
# Tiles (block_n, block_k, num_warps, num_stages), each at every count of SPLITS (normalised by `split_for`, the
# same count once): Run 35's 16, 32 and 64 rows (32 the plan's for split projections), 64 rows in narrower chunks
# (96 registers), 128 rows on 8 warps (x re-read least).
TILES = [(16, 256, 4, 3), (32, 256, 4, 3), (64, 256, 4, 3), (64, 128, 4, 4), (128, 128, 8, 4)]
SPLITS = [1, 2, 3, 4, 6, 8]
FINALISTS = 3          # the fastest launches of a shape and rows timed again (with the plan's, Run 35's, cuBLAS)
MARGIN = 0.02          # a shape's winner becomes a PLANS entry only if it beats the plan's launch by this much
BOUND = 1.2e-2         # bf16: |y - y64| over the sum of |terms| (tests/kernels' bound)


def run35_launch(N: int, K: int) -> tuple[int, int, int, int, int]:
    """The launch Run 35 measured (bench/results/NOTES.md): one range, 64 / 32 / 16 rows a program by N."""
    block_n = 64 if N >= 64 * 264 else 32 if N >= 32 * 264 else 16
    return block_n, BLOCK_K, NUM_WARPS, NUM_STAGES, 1


def launches(N: int, K: int, sms: int) -> list[tuple[int, int, int, int, int]]:
    """The distinct (block_n, block_k, num_warps, num_stages, split_k) to time on an (N, K) weight."""
    out = []
    for block_n, block_k, warps, stages in TILES:
        for split in SPLITS:
            launch = (block_n, block_k, warps, stages, split_for(N, K, block_n, block_k, sms, split)[0])
            if launch not in out:
                out.append(launch)
    chosen = plan(N, K, sms)
    for launch in (chosen[:5], run35_launch(N, K)):
        if launch not in out:
            out.append(launch)
    return out


def sweep(shapes: dict[str, tuple[int, int]], rows: list[int], device: torch.device, timer, bandwidth: float,
          rotate: int, replays: int = 10, budget_s: float = 0.0, log=print) -> dict:
    """Time and check every launch of `launches` at each shape and each M of `rows`. timer(run, replays) -> µs of
    one replay of a graph of run() (`kernels.bench.graph_replay_us` on a GPU); weights rotated over `rotate`
    bytes. Returns {"sms", "copy_bandwidth", "rows": one per shape and M, "winners": per shape, "wrong": [...]}."""
    import torch.nn.functional as F

    from kernels.gemv import tickets
    from kernels.reference import quantize_int8
    started = time.perf_counter()
    sms = sm_count(device)
    results, wrong, winners = [], [], {}
    for name, (N, K) in shapes.items():
        elapsed = time.perf_counter() - started
        if budget_s and elapsed > budget_s:
            log(f"budget of {budget_s:.0f} s spent: {name} and later shapes not run")
            break
        chosen, old = plan(N, K, sms)[:5], run35_launch(N, K)
        candidates = launches(N, K, sms)
        log(f"[{elapsed:5.1f} s] {name} {N}x{K}: {len(candidates)} launches, plan {chosen}")
        copies = max(1, -(-rotate // (N * K)))
        weights = [quantize_int8(torch.randn(N, K, device=device)) for _ in range(copies)]   # (N, K) int8, (N,)
        w64 = weights[-1][0].double() * weights[-1][1].double()[:, None]                     # (N, K) float64
        bf16 = [torch.randn(N, K, device=device, dtype=torch.bfloat16)
                for _ in range(max(1, -(-rotate // (2 * N * K))))]
        floor = (N * K + 4 * N) / bandwidth * 1e6
        per_launch = {launch: 0.0 for launch in candidates}
        for M in rows:
            x = torch.randn(M, K, device=device, dtype=torch.bfloat16)                        # (M, K)
            want, terms = x.double() @ w64.T, x.double().abs() @ w64.abs().T                  # (M, N) float64

            def call(launch, w, s, x=x):
                block_n, block_k, warps, stages, split = launch
                return few_rows_int8(x, w, s, block_n=block_n, block_k=block_k, num_warps=warps,
                                     num_stages=stages, split_k=split)

            def timed(launch, replays):
                return timer(lambda: [call(launch, w, s) for w, s in weights], replays) / copies
            us = {}
            for launch in candidates:
                try:
                    with nan_poisoned_empty():      # (y and the partials: an unwritten output shows)
                        y = call(launch, *weights[-1])                                        # (M, N)
                except Exception as error:      # (a build or launch refused: reported, the sweep goes on)
                    wrong.append(f"{name} M={M} {launch}: {type(error).__name__}: {str(error)[-300:]}")
                    log(f"WRONG {wrong[-1]}")
                    us[launch] = float("inf")
                    continue
                err = ((y.double() - want).abs() / terms).max().item() if torch.isfinite(y).all() else float("inf")
                if not err < BOUND or tickets(device).any():
                    wrong.append(f"{name} M={M} {launch}: error {err:.1e}, counters {int(tickets(device).sum())}")
                    log(f"WRONG {wrong[-1]}")
                    tickets(device).zero_()     # (what one launch left must not spoil the next ones)
                us[launch] = timed(launch, replays)
            finalists = sorted(us, key=us.get)[:FINALISTS]
            for launch in dict.fromkeys(finalists + [chosen, old]):       # timed again, longer
                if us[launch] < float("inf"):
                    us[launch] = timed(launch, 3 * replays)
            for launch in candidates:
                per_launch[launch] += us[launch]
            cublas = timer(lambda: [F.linear(x, w) for w in bf16], 3 * replays) / len(bf16)
            best = min(us, key=us.get)
            results.append({"shape": name, "N": N, "K": K, "M": M, "floor_us": floor, "cublas_bf16_us": cublas,
                            "plan": list(chosen), "plan_us": us[chosen], "run35": list(old), "run35_us": us[old],
                            "best": list(best), "best_us": us[best],
                            "launches": [{"launch": list(launch), "us": t} for launch, t in us.items()]})
            log(f"  M={M:2d} plan {us[chosen]:6.1f} µs ({100 * floor / us[chosen]:3.0f}%, "
                f"{cublas / us[chosen]:.2f}x)  best {us[best]:6.1f} {best}  Run 35's {us[old]:6.1f}  "
                f"cuBLAS bf16 {cublas:6.1f}")
        winner = min(per_launch, key=per_launch.get)
        winners[name] = {"N": N, "K": K, "launch": list(winner), "gain_over_plan": 1 - per_launch[winner] /
                         per_launch[chosen]}
        del weights, w64, bf16
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"sms": sms, "copy_bandwidth": bandwidth, "rows": results, "winners": winners, "wrong": wrong}


def report(result: dict, log=print) -> dict[str, list[int]]:
    """Print the table (µs, % of the copy bandwidth, bf16 cuBLAS's µs over ours last) and each shape's winner;
    return the PLANS entries: winners that beat the plan's launch by MARGIN, {"NxK": launch}."""
    log(f"\n{result['sms']} SMs, copy bandwidth {result['copy_bandwidth'] / 1e12:.2f} TB/s; µs (% of the copy "
        f"bandwidth); x: bf16 cuBLAS's µs / ours; launch: (block_n, block_k, warps, stages, split)")
    log("| shape | M | floor µs | Run 35 | plan | plan launch | best | best launch | cuBLAS bf16 µs "
        "| Run 35 x | plan x | best x |")
    log("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        floor, cublas = r["floor_us"], r["cublas_bf16_us"]
        log(f"| {r['shape']} | {r['M']} | {floor:.1f} | {r['run35_us']:.1f} ({100 * floor / r['run35_us']:.0f}%) "
            f"| {r['plan_us']:.1f} ({100 * floor / r['plan_us']:.0f}%) | {tuple(r['plan'])} "
            f"| {r['best_us']:.1f} ({100 * floor / r['best_us']:.0f}%) | {tuple(r['best'])} | {cublas:.1f} "
            f"| {cublas / r['run35_us']:.2f} | {cublas / r['plan_us']:.2f} | {cublas / r['best_us']:.2f} |")
    for name, w in result["winners"].items():
        log(f"{name}: fastest summed over the rows {tuple(w['launch'])}, {100 * w['gain_over_plan']:.1f}% under "
            f"the plan's")
    entries = {f"{w['N']}x{w['K']}": w["launch"] for w in result["winners"].values()
               if w["gain_over_plan"] >= MARGIN}
    log(f"PLANS entries (beat the plan by >= {100 * MARGIN:.0f}%): {json.dumps(entries)}")
    return entries


def main(argv=None) -> int:
    """GPU: the sweep (the module's docstring); exit 1 if any launch computed a wrong result or left a counter."""
    import argparse

    from kernels.bench import copy_bandwidth, graph_replay_us
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated shape names (see SHAPES), run in that order")
    parser.add_argument("--rows", default="2,8,16", help="comma-separated rows of x (2..16; default 2,8,16)")
    parser.add_argument("--replays", type=int, default=10, help="graph replays a timing (default 10; finalists 3x)")
    parser.add_argument("--budget-s", type=float, default=140.0, help="stop starting shapes after this long (0: none; default: 140)")
    parser.add_argument("--json", default="", help="write every timing to this file")
    parser.add_argument("--write-plans", default="", metavar="FILE",
                        help="write the shapes' winners that beat the plan by MARGIN as CODECOMPLETE_FEW_ROWS_PLANS "
                             "reads them")
    args = parser.parse_args(argv)
    wanted = [w.strip() for w in args.only.split(",") if w.strip()] or list(SHAPES)
    if unknown := [w for w in wanted if w not in SHAPES]:
        parser.error(f"--only: unknown shapes {unknown} (known: {', '.join(SHAPES)})")
    rows = [int(m) for m in args.rows.split(",") if m.strip()]
    if not rows or not all(2 <= m <= 16 for m in rows):
        parser.error(f"--rows {args.rows}: each 2..16")
    if not torch.cuda.is_available():
        parser.exit(2, "kernels.few_rows_int8_bench needs a CUDA GPU: it times the kernel there.\n")
    started = time.perf_counter()
    torch.manual_seed(int(time.time()))        # fresh inputs every run
    device = torch.device("cuda", torch.cuda.current_device())
    bandwidth = copy_bandwidth()
    rotate = max(64 << 20, 2 * (getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 0))
    log = lambda line: print(line, flush=True)     # noqa: E731
    log(f"{torch.cuda.get_device_name()}: {sm_count(device)} SMs, copy bandwidth {bandwidth / 1e12:.2f} TB/s, "
        f"weights rotated over {rotate >> 20} MiB; {len(TILES)} tiles x splits {SPLITS}, rows {rows}")
    result = sweep({name: SHAPES[name] for name in wanted}, rows, device, graph_replay_us, bandwidth, rotate,
                   args.replays, args.budget_s, log)
    entries = report(result, log)
    if args.write_plans:
        with open(args.write_plans, "w", encoding="utf-8") as f:
            json.dump(entries, f, indent=1)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    wrong = result["wrong"]
    log(f"{'WRONG RESULTS: ' + '; '.join(wrong) if wrong else 'every launch matched float64'}; "
        f"{time.perf_counter() - started:.0f} s")
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())

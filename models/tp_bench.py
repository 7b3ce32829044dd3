"""Tensor-parallel decode benchmark, the work behind `python -m models.bench --gpus N`.

One run, random weights of the presets' shapes, bf16, batch 1, prefill excluded, flash attention, the
product's decode step (dense parts compiled, one CUDA-graph replay per token) except that deep projections
are split-K (CODECOMPLETE_GEMV=1; the product sends them to cuBLAS, the --gemv-ab arm):
  1 GPU        tokens/s of each model that fits one GPU at the longest context, and its roofline
  N GPUs       the same model split over N ranks (models/tp.py, spawned by models/distributed.py), with
               the all-reduce the product uses ("one_shot": symmetric memory; NCCL where that cannot run)
               and with "none" (no communication: wrong numbers, the step's compute alone; the difference
               is what the collectives cost); with --methods one_shot,nccl,none all three;
               the collectives of one step alone (2 all-reduces per layer and the logits gather) in a graph;
               the N-GPU roofline: each rank's share of weights and KV over its own copy bandwidth,
               measured on that GPU in this run (the slowest rank bounds the step)
  dispatch     where each rank's batch-1 projections run (Triton GEMV, split-K GEMV, cuBLAS) and their
               share of the weight bytes; --gemv-ab MODELS times those models' rows again with the
               dispatch before split-K (CODECOMPLETE_GEMV=wide: deep projections on cuBLAS), in the same run
  fused A/B    $CODECOMPLETE_TP_FUSED_AB=MODELS times those models' rows (1 GPU and N) again with the fused
               one-token kernels' per-kind launch configurations only (kernels.fused_gemv.use_per_shape(False):
               CodeLlama-7B's sweep) instead of their per-shape entries, same run, a new graph capture each
  collectives  (--sweep) NCCL all-reduce against the one-shot all-reduce at the decode step's message
               sizes, as plain launches and inside a CUDA graph
  check        a 2-layer cut of the first model through the Engine's decode step: N-rank prefill and decode
               logits (eager, then compiled and graph-replayed) against one GPU's (eager); every rank's
               tokens must agree
NVLink multicast stays off (models.distributed.MULTICAST_OFF). Writes tp.json and tp.md; prints the table.
"""

from __future__ import annotations

import gc
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from kernels import fused_gemv
from kernels.bench import copy_bandwidth, graph_replay_us
from models.bench import fill_cache_randomly, fits, kv_bytes_per_step, ours_step_us, weight_bytes_per_step
from models.config import preset
from models.distributed import MULTICAST_OFF, multicast_off, run_on_ranks
from models.engine import Engine
from models.llama import Transformer, build_random_model, use_gemv
from models.tp import ONE_SHOT_MAX_BYTES, TensorParallel, random_shard, shard_config, vocab_rows

GiB = 2**30
METHODS = ("one_shot", "nccl", "none")
# This benchmark's main arm ("now" in its tables) stays split-K; the A/B's other arm is the dispatch before
# split-K, which is also the product's default since the second two-GPU run (models.llama.DEFAULT_GEMV).
SPLIT_K_DISPATCH = "1"
OLD_DISPATCH = "wide"
MESSAGE_BYTES = (16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10, 1 << 20, 16 << 20, 64 << 20)
CHECK_LAYERS, CHECK_PROMPT = 2, 512


def run(args, env: dict, bandwidth: float, log) -> int:
    os.environ.setdefault("CODECOMPLETE_GEMV", SPLIT_K_DISPATCH)   # read by compile_dense, inherited by ranks
    multicast_off()
    _allow_recompiles()
    names, ab = _names(args.models), _names(args.gemv_ab)
    fused_ab = _names(os.environ.get("CODECOMPLETE_TP_FUSED_AB", ""))
    contexts = [int(c) for c in args.contexts.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    if unknown := set(methods) - set(METHODS):
        raise SystemExit(f"--methods: unknown {', '.join(sorted(unknown))} (choose from {', '.join(METHODS)})")
    out = {"env": env, "gpus": args.gpus, "multicast_off": MULTICAST_OFF, "bandwidth_gpu0": bandwidth,
           "single": [], "notes": [], "tp": {}, "gemv_ab": ab, "fused_ab": fused_ab,
           "fused_configs": {fused_gemv.config_name(k): list(c) for k, c in fused_gemv.CONFIGS.items()},
           "dispatch": [dispatch_shares(n, w) for n in names for w in sorted({1, args.gpus})]}
    path = str(args.out / f"tp{'-' + args.tag if args.tag else ''}")
    for name in names:
        out["single"] += single_gpu_rows(name, contexts, bandwidth, args.replays, log, out["notes"], name in ab,
                                         name in fused_ab)
        save(out, path)
    started = time.perf_counter()
    out["tp"] = run_on_ranks(args.gpus, "cuda", rank_bench, names, contexts, args.replays, out, path, methods,
                             ab, args.sweep, fused_ab)
    out["tp"]["wall_s"] = time.perf_counter() - started
    table = save(out, path)
    print(table)
    return 0 if all(c.get("ok", False) for c in out["tp"]["check"]) else 1


def _allow_recompiles() -> None:
    """One process compiles the dense step for several models' shapes, once per Engine or model: close to
    dynamo's default of 8 entries per function, past which it would run the function eagerly."""
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(32, getattr(torch._dynamo.config, name)))


def _names(models: str) -> list[str]:
    return [n if n.startswith(("CodeLlama", "SmolLM")) else f"CodeLlama-{n}" for n in models.split(",") if n]


def save(out: dict, path: str) -> str:
    """Write what is measured so far (a run cut short still leaves its numbers): path.json, path.md."""
    Path(path).with_suffix(".json").write_text(json.dumps(out, indent=1), encoding="utf-8")
    table = markdown(out)
    Path(path).with_suffix(".md").write_text(table, encoding="utf-8")
    return table


# ---- one GPU -----------------------------------------------------------------------------------

def single_gpu_rows(name: str, contexts, bandwidth: float, replays: int, log, notes: list,
                    ab: bool = False, fused_ab: bool = False) -> list[dict]:
    config = preset(name)
    weights = 2 * sum(p.numel() for p in _meta_model(config).parameters())
    if not fits(weights + kv_bytes_per_step(config, 1, max(contexts))):
        notes.append(f"{name} on 1 GPU: {weights / GiB:.0f} GiB of weights + {kv_bytes_per_step(config, 1, max(contexts)) / GiB:.0f} "
                     f"GiB of KV at {max(contexts)} tokens do not fit; N GPUs only")
        log(f"  {notes[-1]}")
        return []
    model = build_random_model(name, device="cuda", dtype=torch.bfloat16, max_len=max(contexts))
    model.compile_dense()
    weights = weight_bytes_per_step(model)
    rows = []
    for context in contexts:
        model.setup_caches(1, context)
        fill_cache_randomly(model, context)
        us = ours_step_us(model, 1, context, "flash", replays)
        roofline = bandwidth / (weights + kv_bytes_per_step(model.config, 1, context))
        rows.append({"model": name, "gpus": 1, "context": context, "step_us": us, "tok_s": 1e6 / us,
                     "roofline_tok_s": roofline, "weight_gb": weights / 1e9})
        log(f"  1 GPU {name} S={context}: {1e6 / us:.1f} tok/s, roofline {roofline:.1f}")
    if ab:                               # the same steps with the old dispatch (recompiled once)
        for row in rows:
            model.setup_caches(1, row["context"])
            fill_cache_randomly(model, row["context"])
            row["step_us_old_dispatch"] = _old_dispatch_us(lambda: ours_step_us(model, 1, row["context"], "flash",
                                                                                replays))
            log(f"  1 GPU {name} S={row['context']}: old dispatch {1e6 / row['step_us_old_dispatch']:.1f} tok/s")
    if fused_ab:                         # the same steps with the fused kernels' per-kind configurations
        for row in rows:
            model.setup_caches(1, row["context"])
            fill_cache_randomly(model, row["context"])
            row["step_us_fused_defaults"] = _fused_defaults_us(lambda: ours_step_us(model, 1, row["context"], "flash",
                                                                                    replays))
            log(f"  1 GPU {name} S={row['context']}: per-kind fused configurations "
                f"{1e6 / row['step_us_fused_defaults']:.1f} tok/s")
    del model
    _free()
    return rows


def _meta_model(config):
    with torch.device("meta"):
        return Transformer(config, max_len=1)


def _old_dispatch_us(measure) -> float:
    """measure() with the GEMV dispatch before split-K (decided in the op: a new capture, no recompile)."""
    use_gemv(OLD_DISPATCH)
    try:
        return measure()
    finally:
        use_gemv(os.environ.get("CODECOMPLETE_GEMV", SPLIT_K_DISPATCH))


def _fused_defaults_us(measure) -> float:
    """measure() with the fused kernels' per-kind launch configurations only (read at launch: a new capture)."""
    previous = fused_gemv.use_per_shape(False)
    try:
        return measure()
    finally:
        fused_gemv.use_per_shape(previous)


def dispatch_shares(name: str, world: int) -> dict:
    """Where one rank's batch-1 projections run, per GEMV dispatch ("1": now, "wide": before split-K),
    and each route's share of the weight bytes a decode step reads through projections."""
    from kernels.gemv import gemv_config, route
    config = preset(name)
    local = shard_config(config, world) if world > 1 else config
    layer = _meta_model(local.replace(n_layers=1)).layers[0]
    shapes = {"wqkv": layer.attention.wqkv.weight.shape, "wo": layer.attention.wo.weight.shape,
              "w13": layer.feed_forward.w13.weight.shape, "w2": layer.feed_forward.w2.weight.shape}
    counts = {k: config.n_layers for k in shapes}
    shapes["output"] = (vocab_rows(config.vocab_size, world), config.dim)
    counts["output"] = 1
    result = {"model": name, "gpus": world, "projections": [], "shares": {}}
    total = sum(2 * n * k * counts[p] for p, (n, k) in shapes.items())
    for mode in ("1", OLD_DISPATCH):
        shares = {"gemv": 0.0, "gemv split-K": 0.0, "cublas": 0.0}
        for p, (n, k) in shapes.items():
            shares[route(n, k, mode == OLD_DISPATCH)] += 2 * n * k * counts[p] / total
        result["shares"][mode] = shares
    result["projections"] = [{"name": p, "N": n, "K": k, "split_k": gemv_config(n, k)[0], "bytes": 2 * n * k * counts[p],
                              "old_route": route(n, k, True)} for p, (n, k) in shapes.items()]
    return result


def _free() -> None:
    gc.collect()
    torch.cuda.empty_cache()


# ---- N GPUs: what every rank runs --------------------------------------------------------------

def rank_bench(tp: TensorParallel, names: list[str], contexts: list[int], replays: int, out: dict,
               path: str, methods=METHODS, ab=(), sweep: bool = True, fused_ab=()) -> dict:
    """Everything N-GPU, on every rank in step; rank 0 saves after each part and returns the whole."""
    log = _rank_log(tp)
    _allow_recompiles()
    bandwidth = copy_bandwidth()
    log(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s; one-shot all-reduce: {_one_shot_state(tp)}")
    result = out["tp"] = {"bandwidths": [bandwidth], "one_shot_error": tp.collectives.one_shot_error,
                          "collectives": [], "check": [], "rows": []}

    def saved():
        if tp.rank == 0:
            save(out, path)
    if sweep:
        result["collectives"] = collective_rows(tp, log)
        saved()
    result["check"] = check_rows(tp, names[0], log)
    saved()
    if tp.collectives.one_shot_error:     # the product falls back to NCCL: time that instead
        methods = ["nccl" if m == "one_shot" else m for m in methods]
    for name in names:
        config = preset(name)
        need = 2 * sum(p.numel() for p in _meta_model(config).parameters()) // tp.world
        room = [None] * tp.world            # every rank must take the same decision
        dist.all_gather_object(room, fits(need + kv_bytes_per_step(config, 1, max(contexts)) // tp.world),
                               group=tp.control)
        if not all(room):
            out["notes"].append(f"{name} on {tp.world} GPUs: {need / GiB:.0f} GiB of weights per GPU + the KV cache "
                                f"at {max(contexts)} tokens do not fit")
            continue
        model = random_shard(config, tp, tp.device, torch.bfloat16, max_len=max(contexts))
        model.compile_dense()
        rows = tp_rows(tp, model, name, contexts, replays, log, methods)
        for row in rows:
            row["roofline_tok_s"] = bandwidth / row["rank_bytes"]     # rank 0's share, until all are in
            result["rows"].append(row)
        saved()
        if name in ab:
            for row, (_, us) in zip(rows, variant_rows(tp, model, name, contexts, replays, log, _old_dispatch_us,
                                                       "old dispatch")):
                row["step_us_old_dispatch"] = us
            saved()
        if name in fused_ab:
            for row, (_, us) in zip(rows, variant_rows(tp, model, name, contexts, replays, log, _fused_defaults_us,
                                                       "per-kind fused configurations")):
                row["step_us_fused_defaults"] = us
            saved()
        del model
        _free()
    tp.collectives.method = "auto"
    everyone = [None] * tp.world
    dist.all_gather_object(everyone, {"bandwidth": bandwidth, "rows": result["rows"]}, group=tp.control)
    result["bandwidths"] = [r["bandwidth"] for r in everyone]
    for i, row in enumerate(result["rows"]):     # the step waits for the slowest rank
        row["roofline_tok_s"] = 1.0 / max(r["rows"][i]["rank_bytes"] / r["bandwidth"] for r in everyone)
        row["step_us_ranks"] = [r["rows"][i]["step_us"] for r in everyone]
    return result


def _rank_log(tp: TensorParallel):
    from kernels.bench import log_to_stderr
    return (lambda message: log_to_stderr(f"  [rank 0/{tp.world}] {message}")) if tp.rank == 0 else (lambda _: None)


def _one_shot_state(tp: TensorParallel) -> str:
    probe = torch.zeros(8, dtype=torch.bfloat16, device=tp.device)
    tp.collectives.method = "auto"
    tp.collectives.all_reduce(probe)       # sets the one-shot path up (collective), or records why not
    return "available" if tp.collectives.one_shot_error is None else f"unavailable ({tp.collectives.one_shot_error})"


def collective_rows(tp: TensorParallel, log) -> list[dict]:
    """µs per all-reduce (and per logits all-gather) by message size: plain launches, and per op when
    50 of them run inside one CUDA graph (what a decode step does)."""
    rows = []
    comm = tp.collectives
    for size in MESSAGE_BYTES:
        x = torch.randn(size // 2, dtype=torch.bfloat16, device=tp.device)
        variants = [("all_reduce", "nccl", lambda: comm.all_reduce(x))]
        if size <= ONE_SHOT_MAX_BYTES:
            variants.append(("all_reduce", "one_shot", lambda: comm.all_reduce(x)))
            g = torch.randn(size // 4 // tp.world, dtype=torch.float32, device=tp.device)
            variants.append(("all_gather", "nccl", lambda: comm.all_gather(g)))
        for op, method, fn in variants:
            comm.method = method
            row = {"op": op, "method": method, "bytes": size}
            try:
                row["plain_us"] = _plain_us(fn)
                row["graph_us"] = graph_replay_us(lambda: [fn() for _ in range(50)], 10) / 50
            except Exception as e:   # a method that cannot run here: a row saying why
                row["error"] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
            rows.append(row)
            log(f"{op} {method} {size >> 10} KiB: " + (f"plain {row['plain_us']:.1f} µs, graph {row['graph_us']:.1f} µs"
                                                      if "error" not in row else row["error"]))
            torch.cuda.synchronize()
    comm.method = "auto"
    return rows


def _plain_us(fn, iters: int = 100) -> float:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / iters


@torch.no_grad()
def check_rows(tp: TensorParallel, name: str, log) -> list[dict]:
    """A 2-layer cut of `name` on N ranks against the same weights on one GPU (rank 0's), bf16."""
    config = preset(name).replace(n_layers=CHECK_LAYERS)
    prompt = torch.randint(3, config.vocab_size, (1, CHECK_PROMPT), generator=torch.Generator().manual_seed(0))
    reference = None
    if tp.rank == 0:
        single = build_random_model(config, device=tp.device, dtype=torch.bfloat16, max_len=2 * CHECK_PROMPT)
        reference = _logits(single, prompt, graphed=False)
        del single
        _free()
    model = random_shard(config, tp, tp.device, torch.bfloat16, max_len=2 * CHECK_PROMPT)
    rows = []
    for graphed in (False, True):
        for method in ("auto",):         # one_shot where it runs (what the product uses), else NCCL
            tp.collectives.method = method
            prefill, decode = _logits(model, prompt, graphed)
            tokens = [None] * tp.world
            dist.all_gather_object(tokens, (prefill.argmax(-1).tolist(), decode.argmax(-1).tolist()), group=tp.control)
            row = {"method": method, "graphed": graphed, "ranks_agree": all(t == tokens[0] for t in tokens)}
            if reference is not None:
                row["prefill_rel_l2"] = _rel(prefill, reference[0])
                row["decode_rel_l2"] = _rel(decode, reference[1])
                row["ok"] = row["ranks_agree"] and max(row["prefill_rel_l2"], row["decode_rel_l2"]) < 5e-2
                log(f"check {method} {'graph' if graphed else 'eager'}: prefill {row['prefill_rel_l2']:.2e}, "
                    f"decode {row['decode_rel_l2']:.2e} (relative L2 vs 1 GPU), ranks agree: {row['ranks_agree']}")
            rows.append(row)
    tp.collectives.method = "auto"
    del model
    _free()
    return rows


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _logits(model, prompt: torch.Tensor, graphed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Through the Engine's own decode step: prefill the prompt (last position's logits), then one decode
    step of token 0 right after it, as a replayed CUDA graph of the compiled step if `graphed`."""
    engine = Engine(model, None, name="check", attention="flash", context_length=2 * CHECK_PROMPT, cuda_graphs=graphed)
    prefill = model.prefill(prompt.to(model.output.weight.device))
    decode = engine.make_decode_step(1, prompt.shape[1] + 1)()
    torch.cuda.synchronize()
    return prefill, decode.clone()


def tp_rows(tp: TensorParallel, model, name: str, contexts, replays: int, log, methods=METHODS) -> list[dict]:
    """Rows of rank tp.rank's part `model` of `name` (compiled), one per context, each all-reduce in `methods`."""
    config = preset(name)
    weights = weight_bytes_per_step(model)
    rows = []
    for context in contexts:
        model.free_caches()
        model.setup_caches(1, context, name)
        fill_cache_randomly(model, context)
        kv = kv_bytes_per_step(model.config, 1, context)
        row = {"model": name, "gpus": tp.world, "context": context, "rank_weight_gb": weights / 1e9,
               "rank_kv_gb": kv / 1e9, "rank_bytes": weights + kv, "step_us_by_method": {},
               "collectives_us_by_method": {}, "errors": {}}
        for method in methods:
            if method == "one_shot" and tp.collectives.one_shot_error:
                row["errors"][method] = tp.collectives.one_shot_error
                continue
            tp.collectives.method = method
            try:
                row["step_us_by_method"][method] = ours_step_us(model, 1, context, "flash", replays)
                row["collectives_us_by_method"][method] = step_collectives_us(tp, config, replays)
            except Exception as e:
                row["errors"][method] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
            torch.cuda.synchronize()
        tp.collectives.method = "auto"
        real = {m: us for m, us in row["step_us_by_method"].items() if m != "none"}
        row["method"] = min(real, key=real.get) if real else None
        row["step_us"] = real[row["method"]] if real else float("nan")
        row["tok_s"] = 1e6 / row["step_us"]
        log(f"{tp.world} GPUs {name} S={context}: " + ", ".join(
            f"{m} {us:.0f} µs/step" for m, us in row["step_us_by_method"].items()) +
            f"; collectives alone " + ", ".join(f"{m} {us:.0f} µs" for m, us in row["collectives_us_by_method"].items()))
        rows.append(row)
    return rows


def variant_rows(tp: TensorParallel, model, name: str, contexts, replays: int, log, variant,
                 label: str) -> list[tuple[int, float]]:
    """(context, µs per step) with the product's all-reduce and the step measured through `variant` (one of
    _old_dispatch_us, _fused_defaults_us)."""
    out = []
    tp.collectives.method = "auto"
    for context in contexts:
        model.free_caches()
        model.setup_caches(1, context, name)
        fill_cache_randomly(model, context)
        us = variant(lambda: ours_step_us(model, 1, context, "flash", replays))
        log(f"{tp.world} GPUs {name} S={context}: {label} {us:.0f} µs/step")
        out.append((context, us))
    return out


def step_collectives_us(tp: TensorParallel, config, replays: int) -> float:
    """µs of exactly one decode step's collectives at batch 1, back to back in a CUDA graph:
    two all-reduces of (1, 1, dim) per layer and the gather of the logits."""
    comm = tp.collectives
    x = torch.randn(1, 1, config.dim, dtype=torch.bfloat16, device=tp.device)
    logits = torch.randn(1, vocab_rows(config.vocab_size, tp.world), device=tp.device)

    def step():
        for _ in range(2 * config.n_layers):
            comm.all_reduce(x)
        comm.all_gather(logits)
    return graph_replay_us(step, replays)


# ---- report ------------------------------------------------------------------------------------

def markdown(out: dict) -> str:
    env, tp = out["env"], out["tp"]
    single = {(r["model"], r["context"]): r for r in out["single"]}
    lines = [f"# Tensor-parallel decode: {out['gpus']} x {env['card']}, {env['date']}", "",
             f"torch {env['torch']}, triton {env['triton']}; bf16, batch 1, random weights of the real shapes, flash, "
             "compiled, one CUDA-graph replay per token; NVLink multicast off. Copy bandwidth per GPU: "
             + ", ".join(f"{b / 1e12:.2f}" for b in tp.get("bandwidths", [out["bandwidth_gpu0"]])) + " TB/s.", ""]
    lines += [f"- {note}" for note in out["notes"]]
    if tp.get("one_shot_error"):
        lines.append(f"- one-shot all-reduce unavailable: {tp['one_shot_error']}")
    if out.get("dispatch"):
        lines += ["", "Batch-1 projections per GPU, share of the weight bytes by where they run (now; 'old': the "
                  "dispatch before split-K, CODECOMPLETE_GEMV=wide); split-K ranges per deep projection:", "",
                  "| model | GPUs | GEMV | GEMV split-K | cuBLAS | old: GEMV / cuBLAS | split-K projections |",
                  "|---|---|---|---|---|---|---|"]
        for d in out["dispatch"]:
            now, old = d["shares"]["1"], d["shares"][OLD_DISPATCH]
            split = ", ".join(f"{p['name']} {p['N']}x{p['K']}: {p['split_k']}" for p in d["projections"] if p["split_k"] > 1)
            lines.append(f"| {d['model']} | {d['gpus']} | {100 * now['gemv']:.0f}% | {100 * now['gemv split-K']:.0f}% | "
                         f"{100 * now['cublas']:.0f}% | {100 * old['gemv']:.0f}% / {100 * old['cublas']:.0f}% | {split} |")
    if tp.get("collectives"):
        lines += ["", "Collectives, µs per op (plain: launched from Python; graph: 50 in one CUDA graph):", "",
                  "| op | method | size | plain | graph |", "|---|---|---|---|---|"]
        for c in tp["collectives"]:
            size = f"{c['bytes'] >> 10} KiB" if c["bytes"] < (1 << 20) else f"{c['bytes'] >> 20} MiB"
            cells = f"{c['plain_us']:.1f} | {c['graph_us']:.1f}" if "error" not in c else f"{c['error']} |"
            lines.append(f"| {c['op']} | {c['method']} | {size} | {cells} |")
    if tp.get("check"):
        lines += ["", "Check, a 2-layer cut on N GPUs against 1 GPU (relative L2 of the logits, bf16): " + "; ".join(
            f"{c['method']} {'graph' if c['graphed'] else 'eager'}: prefill {c.get('prefill_rel_l2', float('nan')):.1e}, "
            f"decode {c.get('decode_rel_l2', float('nan')):.1e}, ranks agree {c['ranks_agree']}" for c in tp["check"])]
    lines += ["", "Decode tokens/s. Roofline: each GPU's weights + KV over its own copy bandwidth (the slowest "
              "bounds). 'none': the same step without communication (wrong numbers); the gap to it is what the "
              "collectives cost inside the step. 'alone': one step's collectives back to back in a graph. "
              "'old dispatch': the same step with deep projections on cuBLAS (before split-K), same run.", "",
              "| model | GPUs | context | tok/s | roofline | % roofline | x 1 GPU | all-reduce | step µs | "
              "comm µs in step | comm alone µs | " + " / ".join(METHODS) + " µs | old dispatch µs | old tok/s | "
              "new / old |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (model, context), r in sorted(single.items()):
        lines.append(f"| {model} | 1 | {context} | {r['tok_s']:.1f} | {r['roofline_tok_s']:.1f} | "
                     f"{100 * r['tok_s'] / r['roofline_tok_s']:.0f}% | 1.00 | - | {r['step_us']:.0f} | | | | "
                     f"{_old_cells(r)} |")
    for r in tp.get("rows", []):
        by = r["step_us_by_method"]
        ratio = _ratio(r, single.get((r["model"], r["context"])))
        lines.append(
            f"| {r['model']} | {r['gpus']} | {r['context']} | {r['tok_s']:.1f} | {r['roofline_tok_s']:.1f} | "
            f"{100 * r['tok_s'] / r['roofline_tok_s']:.0f}% | {'-' if ratio is None else f'{ratio:.2f}'} | "
            f"{r['method']} | {r['step_us']:.0f} | {r['step_us'] - by.get('none', float('nan')):.0f} | "
            f"{r['collectives_us_by_method'].get(r['method'], float('nan')):.0f} | "
            + " / ".join(f"{by[m]:.0f}" if m in by else "-" for m in METHODS) + f" | {_old_cells(r)} |")
    ab_rows = [(r, r["gpus"]) for r in out["single"] + tp.get("rows", []) if r.get("step_us_fused_defaults")]
    if ab_rows:
        shaped = [k for k in out.get("fused_configs", {}) if " " in k]
        lines += ["", f"Fused one-token kernels: the per-shape launch configurations ({len(shaped)} entries in "
                  "kernels.fused_gemv.CONFIGS) against the per-kind ones alone (CodeLlama-7B's sweep), same run, same "
                  "weights:", "", "| model | GPUs | context | step µs, per-shape | step µs, per-kind | per-kind / per-shape |",
                  "|---|---|---|---|---|---|"]
        for r, gpus in ab_rows:
            lines.append(f"| {r['model']} | {gpus} | {r['context']} | {r['step_us']:.0f} | {r['step_us_fused_defaults']:.0f} "
                         f"| {r['step_us_fused_defaults'] / r['step_us']:.3f}x |")
    lines += ["", *bars(out)]
    return "\n".join(lines) + "\n"


def _old_cells(row: dict) -> str:
    old = row.get("step_us_old_dispatch")
    if old is None:
        return " | | "
    return f"{old:.0f} | {1e6 / old:.1f} | {old / row['step_us']:.3f}x"


def _ratio(row: dict, single: dict | None) -> float | None:
    return row["tok_s"] / single["tok_s"] if single else None


def bars(out: dict) -> list[str]:
    """The issue's bars, each met or missed, with the numbers; with the old dispatch where it was timed."""
    single = {(r["model"], r["context"]): r for r in out["single"]}
    lines = ["Bars:"]
    for r in out["tp"].get("rows", []):
        if r["gpus"] < 2:                      # --gpus 1: the code path, no bar to meet
            continue
        comm = r["step_us"] - r["step_us_by_method"].get("none", float("nan"))
        share = f"collectives {comm:.0f} µs of a {r['step_us']:.0f} µs step ({100 * comm / r['step_us']:.0f}%)"
        old = r.get("step_us_old_dispatch")
        one = single.get((r["model"], r["context"]))
        if "34B" in r["model"] and one:
            ratio = r["tok_s"] / one["tok_s"]
            before = ""
            if old and one.get("step_us_old_dispatch"):
                before = f"; old dispatch on both: {one['step_us_old_dispatch'] / old:.2f}x"
            if r.get("step_us_fused_defaults") and one.get("step_us_fused_defaults"):
                before += (f"; per-kind fused configurations on both: "
                           f"{one['step_us_fused_defaults'] / r['step_us_fused_defaults']:.2f}x")
            lines.append(f"- {r['model']} S={r['context']}: {r['gpus']} GPUs {r['tok_s']:.1f} tok/s = {ratio:.2f}x of 1 GPU "
                         f"({one['tok_s']:.1f}); bar 1.7x: {'met' if ratio >= 1.7 else 'MISSED'}; {share}{before}")
        if "70B" in r["model"]:
            frac = r["tok_s"] / r["roofline_tok_s"]
            before = f"; old dispatch: {100 * 1e6 / old / r['roofline_tok_s']:.0f}%" if old else ""
            if r.get("step_us_fused_defaults"):
                before += f"; per-kind fused configurations: {100 * 1e6 / r['step_us_fused_defaults'] / r['roofline_tok_s']:.0f}%"
            lines.append(f"- {r['model']} S={r['context']}: {r['gpus']} GPUs {r['tok_s']:.1f} tok/s = {100 * frac:.0f}% of "
                         f"the {r['gpus']}-GPU roofline ({r['roofline_tok_s']:.1f}); bar 80%: "
                         f"{'met' if frac >= 0.8 else 'MISSED'}; {share}{before}")
    checks = out["tp"].get("check", [])
    lines.append(f"- check: {'all ok' if checks and all(c.get('ok') for c in checks) else 'FAILED or not run'}")
    return lines

"""`codecomplete [REPO] --bench`: standard attention against Flash-Decoding, in one run.

End to end: the loaded model decodes at several context lengths (and at the context REPO
fills) with each attention backend on the same weights and KV cache; decode tokens/s leaves
prefill out. Then the first backend again with each 8-bit KV cache (fp8, int8) and with
speculative decoding (drafts looked up in the prompt: the benchmark's prompt is source code
repeated to length, which the model partly copies). On a GPU each context also gets its roofline (models.bench's byte counts over the
copy bandwidth measured in this run). Flash-Decoding is a GPU kernel: on a machine without CUDA its Triton code only
runs in the interpreter, whose timings mean nothing, so there the CPU backends are compared
at small contexts and the output says so.
"""
from __future__ import annotations

import datetime
import importlib.util
import math
import os
import platform
import statistics
from pathlib import Path

from rich.table import Table
from rich.text import Text

from . import engines, render, workspace
from .errors import AppError, UsageError

GPU_CONTEXTS = (4096, 16384, 32768)
CPU_CONTEXTS = (256, 1024)
CPU_CONTEXT_LIMIT = 4096            # beyond this a CPU prefill takes minutes
GPU_DECODE_TOKENS, CPU_DECODE_TOKENS = 64, 16
REPEATS = 3                         # median of three runs per (context, backend)


def backends_for(args, device: str) -> tuple[list[str], list[str]]:
    """The attention backends to compare here, first the one the others are measured against,
    with the notes that explain the choice."""
    if device.startswith("cuda"):
        return ["flash", "sdpa", "eager"], []
    slow = ("Flash-Decoding needs a CUDA GPU: on this machine its Triton kernels run only in the interpreter, "
            "which times nothing real.")
    if args.attention == "flash":     # one note, not "sdpa and eager instead" and then flash after all
        return ["flash", "sdpa", "eager"], [f"{slow} Timing it as asked (--attention flash): not the kernel's speed."]
    return ["sdpa", "eager"], [f"{slow} Comparing sdpa and eager on the CPU instead."]


def runnable(engine, backends: list[str], notes: list[str]) -> list[str]:
    """The backends this model can run (flash and eager kernels take head dims 16..256, flash needs Triton): each
    other one is left out with a note saying why, not found out by a failure halfway through the run."""
    from models import ModelError

    kept = []
    for backend in backends:
        try:
            engine.set_attention(backend)
        except ModelError as exc:
            notes.append(f"{backend} left out: {exc}")
            continue
        kept.append(backend)
    return kept


def source_ids(tokenizer, root: Path | None, index, cap: int, vocab_size: int) -> list[int]:
    """Real code as prompt tokens, up to cap (random ids make a model stop or loop at once):
    the repository's files, or without REPO this program's own source. A random-weight model
    (`--model random:PRESET`) has no tokenizer and no EOS: random ids serve it as well as any."""
    if tokenizer is None:
        import torch
        return torch.randint(3, vocab_size, (cap,), generator=torch.Generator().manual_seed(0)).tolist()
    if index is not None:
        paths = [root / name for name in index.files]
    else:
        paths = sorted(Path(__file__).resolve().parent.glob("*.py"))
    ids: list[int] = []
    for path in paths:
        if len(ids) >= cap:
            break
        ids += tokenizer.encode(path.read_text(encoding="utf-8", errors="replace"), add_special_tokens=False)
    return ids[:cap]


def repeated(ids: list[int], length: int) -> list[int]:
    """ids repeated to exactly `length` tokens: a small repository still fills a long context."""
    return (ids * (length // max(1, len(ids)) + 1))[:length]


def measure(engine, backends, contexts, ids, decode_tokens, progress, speculate=0) -> list[dict]:
    """Median decode tokens/s per (context, backend); plain decoding unless `speculate` says otherwise."""
    from models import GenerationConfig

    config = GenerationConfig(max_new_tokens=decode_tokens, speculate=speculate)
    warmup = GenerationConfig(max_new_tokens=2, speculate=speculate)
    total, done = len(backends) * len(contexts) * REPEATS, 0
    rows = []
    for context in contexts:
        prompt = ids[:context]
        for backend in backends:
            engine.set_attention(backend)
            progress(done, total, f"{backend} at {context:,} tokens")
            engine.generate(prompt, warmup)        # kernels compiled, caches and graphs built
            runs = []
            for _ in range(REPEATS):
                runs.append(engine.generate(prompt, config))
                done += 1
                progress(done, total)
            t = [r.timings for r in runs]
            # Counts per run, as decode_tokens is: the median run's (its three summed beside one run's tokens read
            # as three times the steps that run took)
            mid = sorted(t, key=lambda x: x.decode_tokens_per_s)[len(t) // 2]
            rows.append({"context": context, "attention": backend,
                         "decode_tokens_per_s": statistics.median(x.decode_tokens_per_s for x in t),
                         "decode_tokens": min(len(r.token_ids) for r in runs),
                         "drafted": mid.drafted_tokens, "accepted": mid.accepted_tokens,
                         "decode_steps": mid.decode_steps})
    return rows


def measure_variants(engine, backend, contexts, ids, decode_tokens, progress, speculate) -> list[dict]:
    """`backend` with each 8-bit KV cache the engine is not already using, then with speculative decoding
    (`speculate` drafts per step; None: the engine's default), each row with its ratio to the plain run."""
    base_cache = engine.kv_cache_dtype
    variants = [(kind, kind, 0) for kind in ("fp8", "int8") if kind != base_cache]
    if speculate != 0:      # --speculate 0 turned it off: a "speculate 0" column would time the plain run again
        drafts = speculate if speculate is not None else engine.speculate
        variants.append((f"speculate {drafts}", base_cache, drafts))   # (the depth named: the default is only
                                                                          # taken once the process captured its step)
    rows = []
    for label, cache, depth in variants:
        engine.set_kv_cache(None if cache not in ("fp8", "int8") else cache)
        for row in measure(engine, [backend], contexts, ids, decode_tokens, progress, depth):
            rows.append({**row, "variant": label, "kv_cache": cache})
    engine.set_kv_cache(None if base_cache not in ("fp8", "int8") else base_cache)
    return rows


def speedups(rows, backends) -> list[dict]:
    """The first backend (Flash-Decoding where it runs) against each of the others."""
    ours, others = backends[0], backends[1:]
    rate = {(r["context"], r["attention"]): r["decode_tokens_per_s"] for r in rows}
    out = []
    for context in sorted({r["context"] for r in rows}):
        for other in others:
            if rate.get((context, other)):
                out.append({"context": context, "attention": ours, "over": other,
                            "ratio": rate[(context, ours)] / rate[(context, other)]})
    return out


def roofline(engine, contexts, bandwidth: float) -> dict[int, float]:
    """Decode tokens/s the memory allows at each context: a step reads every weight and the
    whole KV cache once, at `bandwidth` bytes/s (the copy bandwidth measured in the same run).
    Split over GPUs (--gpus), engine.model is one GPU's part: the bound is each GPU's share."""
    from models.bench import kv_bytes_per_step, weight_bytes_per_step

    model = engine.model
    weights = weight_bytes_per_step(model)
    element_size = model.norm.weight.element_size()      # the KV cache's: the activations' dtype (not int8 weights')
    quant = engine.kv_cache_dtype if engine.kv_cache_dtype in ("fp8", "int8") else None
    return {c: bandwidth / (weights + kv_bytes_per_step(model.config, 1, c, element_size, quant)) for c in contexts}


def table(result) -> Table:
    backends = result["backends"]
    t = Table(header_style="bold")
    t.add_column("context", justify="right")
    for b in backends:
        t.add_column(b, justify="right")
    for other in backends[1:]:
        t.add_column(f"{backends[0]} / {other}", justify="right")
    ceiling = result["roofline"] or {}
    if ceiling:
        t.add_column("roofline", justify="right")
        t.add_column(f"{backends[0]} % of it", justify="right")
    rate = {(r["context"], r["attention"]): r["decode_tokens_per_s"] for r in result["end_to_end"]}
    ratio = {(s["context"], s["over"]): s["ratio"] for s in result["speedups"]}
    for context in sorted({r["context"] for r in result["end_to_end"]}):
        label = f"{context:,}" + (" (repo)" if context == result["repo_context"] else "")
        # No ratio where a backend decoded nothing (the model's EOS as its first token): a dash, not a crash.
        cells = [f"{rate[(context, b)]:.1f}" for b in backends] + [
            f"{ratio[(context, o)]:.2f}x" if (context, o) in ratio else "-" for o in backends[1:]]
        if ceiling:
            cells += [f"{ceiling[context]:.0f}", f"{100 * rate[(context, backends[0])] / ceiling[context]:.0f}%"]
        t.add_row(label, *cells)
    return t


def variant_table(result) -> Table:
    """The first backend's tokens/s with each 8-bit cache and with speculation, against its plain run."""
    backend = result["backends"][0]
    base = {r["context"]: r["decode_tokens_per_s"] for r in result["end_to_end"] if r["attention"] == backend}
    labels = list(dict.fromkeys(r["variant"] for r in result["variants"]))
    t = Table(header_style="bold", title=f"{backend}: 8-bit KV caches and speculative decoding, decode tokens/s")
    t.add_column("context", justify="right")
    t.add_column(f"{backend} ({result['kv_cache']})", justify="right")
    for label in labels:
        t.add_column(label, justify="right")
        t.add_column("x", justify="right")
    cell = {(r["context"], r["variant"]): r for r in result["variants"]}
    for context in sorted(base):
        cells = [f"{context:,}", f"{base[context]:.1f}"]
        for label in labels:
            r = cell[(context, label)]
            rate = r["decode_tokens_per_s"]
            note = f" ({100 * r['accepted'] / r['drafted']:.0f}% accepted)" if r["drafted"] else ""
            cells += [f"{rate:.1f}{note}", f"{rate / base[context]:.2f}x" if base[context] else "-"]
        t.add_row(*cells)
    return t


def kernel_table(bandwidth: float, rows: list[dict]) -> Table:
    """One decode attention per shape, µs per call as CUDA-graph replays, ours against the peers."""
    t = Table(header_style="bold", title=f"Attention kernels, µs per call (copy bandwidth {bandwidth / 1e12:.2f} TB/s)")
    for name in ("shape", "K+V MB", "flash_decode", "% bandwidth", "best SDPA", "eager", "vs SDPA", "vs eager"):
        t.add_column(name, justify="left" if name == "shape" else "right")
    nan = float("nan")

    def cell(value: float, form: str, unit: str = "") -> str:    # a contestant that failed on this shape: a dash
        return "-" if math.isnan(value) else format(value, form) + unit

    for row in rows:
        # A contestant that cannot run a shape (out of memory, say) has an error and no time: a KeyError here lost
        # the whole run's result.
        g = row["graph_us"]
        ours, eager = g.get("flash_decode", nan), g.get("eager", nan)
        sdpa = min((v for k, v in g.items() if k.startswith("sdpa_")), default=nan)
        t.add_row(row["shape"]["label"], f"{row['kv_mb']:.0f}", cell(ours, ".1f"),
                  cell(100 * row["floor_us"] / ours, ".0f", "%"), cell(sdpa, ".1f"), cell(eager, ".1f"),
                  cell(sdpa / ours, ".2f", "x"), cell(eager / ours, ".1f", "x"))
    return t


def plot(result, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")                  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for backend in result["backends"]:
        points = sorted((r["context"], r["decode_tokens_per_s"]) for r in result["end_to_end"]
                        if r["attention"] == backend)
        ax.plot(*zip(*points), marker="o", label=backend, linewidth=2.5 if backend == "flash" else 1.2)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("decode tokens/s")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{result['model']}, {result['card']}, {result['date']}", fontsize=10)
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as exc:      # checked writable before the run; the disk may have filled since
        raise AppError(f"cannot write the plot {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def _card(device: str, ranks: int = 1) -> str:
    """What ran it, for the record: the GPU's name (times the GPUs a --gpus model is split over), or the
    CPU's model and core count."""
    if device.startswith("cuda"):
        import torch
        return f"{ranks} x " * (ranks > 1) + torch.cuda.get_device_name(torch.device(device))
    from models.options import cpu_name
    return f"{cpu_name()} CPU, {os.cpu_count()} cores"


def versions(torch_version: str) -> dict[str, str]:
    """What ran it besides the card: this program, torch, Triton (the Flash-Decoding kernels; "-" where it is not
    installed) and Python. The record named torch and Python only."""
    from importlib.metadata import PackageNotFoundError, version

    from .cli import package_version
    try:
        triton = version("triton")
    except PackageNotFoundError:
        triton = "-"
    return {"codecomplete": package_version(), "torch": torch_version, "triton": triton,
            "python": platform.python_version()}


def run_bench(args) -> None:
    if args.plot and importlib.util.find_spec("matplotlib") is None:      # say so before a long run
        raise UsageError("--plot needs matplotlib: pip install -e '.[plot]'")
    if args.max_tokens == 1:            # the one token comes from the prefill: no decode step to time
        raise UsageError("--bench --max-tokens 1 times no decoding (the first token comes from the prefill): "
                         "give 2 or more")
    root = workspace.repository(args.repo) if args.repo else None
    index = workspace.index(root) if root else None
    device = engines.device_for(args)
    on_gpu = device.startswith("cuda")
    backends, notes = backends_for(args, device)
    decode_tokens = args.max_tokens or (GPU_DECODE_TOKENS if on_gpu else CPU_DECODE_TOKENS)
    wanted = sorted(set(args.contexts or (GPU_CONTEXTS if on_gpu else CPU_CONTEXTS)))
    limit = max(wanted) if on_gpu else min(max(wanted), CPU_CONTEXT_LIMIT)
    if args.context_tokens:
        limit = min(limit, args.context_tokens)
    if min(wanted) > limit:             # said before the model loads
        raise UsageError(f"--contexts {','.join(map(str, wanted))}: none is at most {limit:,} tokens, the "
                         + ("--context-tokens given" if args.context_tokens and limit == args.context_tokens
                            else "longest the benchmark runs on a CPU (a longer prefill takes minutes)"))

    engine = engines.load(args, decode_tokens, default_budget=limit, asked=bool(args.contexts))
    if engine.context_length - decode_tokens < limit:
        limit = engine.context_length - decode_tokens
        notes.append(f"{engine.name} holds {engine.context_length:,} tokens here: "
                     f"{limit:,} of context and {decode_tokens} to decode")
    backends = runnable(engine, backends, notes)
    ids = source_ids(engine.tokenizer, root, index, cap=limit, vocab_size=engine.model.config.vocab_size)
    repo_context = len(ids) if index is not None else None
    contexts = sorted({c for c in wanted if c <= limit} | ({repo_context} if repo_context else set()))
    if not contexts:
        raise UsageError(f"--contexts {','.join(map(str, wanted))}: none fits the {limit:,} tokens of context "
                         f"{engine.name} has room for with --max-tokens {decode_tokens}")
    if left_out := [c for c in wanted if c > limit]:
        if args.contexts:
            notes.append(f"left out contexts above {limit:,} tokens here: {', '.join(map(str, left_out))}")
        else:       # the default contexts: the longest the model holds stands in for those beyond it
            contexts = sorted(set(contexts) | {limit})
            notes.append(f"{', '.join(map(str, left_out))} tokens do not fit here: the longest context, "
                         f"{limit:,}, instead")
    ids = repeated(ids or engine.tokenizer.encode("def main():\n    pass\n"), max(contexts))

    # The text goes to stdout, unless the JSON object takes it.
    console = render.stderr_console() if args.json == "-" else render.stdout_console()
    for note in notes:
        console.print(Text(note, style="yellow"))
    with render.progress_bar("decoding") as progress:
        rows = measure(engine, backends, contexts, ids, decode_tokens, progress)
    with render.progress_bar("8-bit caches, speculation") as progress:
        variants = measure_variants(engine, backends[0], contexts, ids, decode_tokens, progress, args.speculate)
    bandwidth = ceilings = None
    kernels = []
    if on_gpu:                       # the copy bandwidth is timed on the GPU, in this run
        from models.bench import kernel_rows
        with render.progress_bar("attention kernels") as progress:
            progress(0, 1, "flash_decode against SDPA and eager")
            bandwidth, kernels = kernel_rows(quick=True)
            progress(1, 1)
        ceilings = roofline(engine, contexts, bandwidth)

    import torch
    result = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "device": engine.device,
        "card": _card(engine.device, getattr(engine, "gpus", 1)), "model": engine.name, "dtype": engine.dtype,
        "matmul_dtype": engine.matmul_dtype,        # the projections' weights: int8 or bfloat16 ones where asked
        "versions": versions(torch.__version__),
        "decode_tokens": decode_tokens, "repeats": REPEATS, "backends": backends, "repo_context": repo_context,
        "kv_cache": engine.kv_cache_dtype, "end_to_end": rows, "speedups": speedups(rows, backends),
        "variants": variants, "notes": notes,
        "copy_bandwidth_bytes_per_s": bandwidth, "roofline": ceilings, "kernels": kernels,
    }
    console.print(Text(f"End-to-end decode tokens/s, {decode_tokens} tokens per run, median of {REPEATS}: "
                       f"{engine.name} ({engine.precision}) on {result['card']}", style="bold"))
    if kernels:
        console.print(kernel_table(bandwidth, kernels))
    console.print(table(result))
    console.print(variant_table(result))
    if args.plot:
        plot(result, args.plot)
        console.print(Text(f"plot written to {args.plot}", style="dim"))
    if args.json:           # last: a plot that fails makes the JSON the error object, not a result and then an error
        render.emit_json(args.json, result)

"""Issues 11 and 13 on one GPU: 8-bit KV caches end to end, their capacity, and the verification step's cost.

    python -m models.decode_bench [--kv-caches bf16,fp8] [--out DIR]        # bench/gpu/decode_h200.sh runs it

Random weights of the real shapes (a step's time does not depend on the values), bf16, batch 1, decode steps
as CUDA-graph replays with the dense parts compiled, as the Engine runs them:
- end to end, per KV cache type: flash and sdpa tokens/s, CodeLlama-7B at 4k/16k/32k/64k and CodeLlama-34B at
  16k/64k/128k (sdpa reads an 8-bit cache dequantized: like with like);
- capacity: the longest context whose cache fits next to the 34B weights on this GPU, per type (what the
  out-of-memory message computes), each proven by allocating it;
- verification: a step of 1 + k tokens against a one-token step, whole step and attention alone (one layer's
  flash_decode), at 7B 16k and 34B 64k; and the speed-up it projects from the acceptance measured on the CPU
  (bench/results/speculative-cpu.json: tokens, steps and verifying steps of each workload).
Bars: fp8 >= 1.4x bf16 flash at 7B 64k, >= 1.25x at 34B 128k; capacity >= 1.9x; an 8-token step <= 1.2x a one-token
step (9 tokens are timed too: CodeLlama-34B's 8 query heads per KV head x 9 tokens take a second kernel tile).
Writes decode.json and decode.md into --out and prints the table last.
"""

from __future__ import annotations

import gc
import json
import signal
import sys
import time
from pathlib import Path

import torch

from kernels.bench import OneLineParser, begin_run, graph_replay_us
from models.bench import fill_cache_randomly, measure_steps, ours_step_us
from models.kv_cache import KVCache, capacity_tokens
from models.llama import Decode, build_random_model

SHAPES = {"CodeLlama-7B": (4096, 16384, 32768, 65536), "CodeLlama-34B": (16384, 65536, 131072)}
VERIFY_AT = {"CodeLlama-7B": 16384, "CodeLlama-34B": 65536}
CPU_RESULTS = Path("bench/results/speculative-cpu.json")
BARS = {"fp8_7b_64k": 1.4, "fp8_34b_128k": 1.25, "capacity": 1.9, "verify": 1.2}


def quant_of(kind: str) -> str | None:
    return None if kind == "bf16" else kind


@torch.no_grad()
def check_8bit(model, kinds, log) -> dict:
    """On the GPU, before timing: flash over an 8-bit cache against the PyTorch reference over the same cache
    (eager), for one token and for a verification step; and the 8-bit cache's distance from bf16's."""
    result = {}
    tokens = torch.randint(0, model.config.vocab_size, (2, 9), device="cuda")
    input_pos = torch.tensor([1000, 517], device="cuda")

    def logits(backend, width):
        step = Decode(input_pos, (input_pos + width).to(torch.int32), backend)
        return model.decode(tokens[:, :width], step).float()

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    for kind in kinds:
        model.setup_caches(2, 1024, quant=quant_of(kind))
        torch.manual_seed(0)
        fill_cache_randomly(model, 1024)
        for width in (1, 9):
            result[f"{kind}_flash_vs_eager_t{width}"] = rel(logits("flash", width), logits("eager", width))
    log(f"  8-bit checks (relative L2 of the logits): {result}")
    model.free_caches()
    return result


def attention_us(model, context: int, width: int, replays: int) -> float:
    """One layer's flash_decode over its cache at `context` tokens, `width` query tokens, as a graph replay."""
    from kernels import flash_decode
    cache = model.layers[0].attention.kv_cache
    c = model.config
    shape = (1, c.n_heads, width, c.head_dim) if width > 1 else (1, c.n_heads, c.head_dim)
    q = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    lengths = torch.tensor([context], dtype=torch.int32, device="cuda")
    return graph_replay_us(lambda: flash_decode(q, cache.k, cache.v, lengths, k_scale=cache.k_scale,
                                                v_scale=cache.v_scale), replays)


def verify_rows(model, name: str, context: int, kinds, widths, replays: int, log) -> list[dict]:
    rows = []
    for kind in kinds:
        model.setup_caches(1, context, name, quant_of(kind))
        fill_cache_randomly(model, context)
        row = {"model": name, "context": context, "kv_cache": kind, "step_us": {}, "attention_us": {}}
        for width in widths:
            row["step_us"][width] = ours_step_us(model, 1, context, "flash", replays, width)
            row["attention_us"][width] = attention_us(model, context, width, replays)
        row["step_ratio"] = {w: row["step_us"][w] / row["step_us"][1] for w in widths}
        row["attention_ratio"] = {w: row["attention_us"][w] / row["attention_us"][1] for w in widths}
        log(f"  verify {name} S={context} {kind}: step {row['step_us']} µs, attention {row['attention_us']} µs")
        rows.append(row)
    model.free_caches()
    return rows


def capacity(model, name: str, kinds, log) -> dict:
    """Per cache type, the most tokens one sequence's cache can hold next to the weights, proven by allocating
    every layer's cache at that length."""
    model.free_caches()
    c, device = model.config, model.output.weight.device
    out = {}
    for kind in kinds:
        tokens = capacity_tokens(c, 1, torch.bfloat16, device, quant_of(kind))
        out[kind] = {"tokens": tokens}
        try:
            caches = [KVCache(1, c.n_kv_heads, tokens, c.head_dim, torch.bfloat16, device, quant_of(kind),
                              group=c.n_heads // c.n_kv_heads)
                      for _ in range(c.n_layers)]
            torch.cuda.synchronize()
            out[kind].update(allocated=True, free_after_gib=torch.cuda.mem_get_info()[0] / 2**30)
            del caches
        except torch.OutOfMemoryError as error:      # the estimate was wrong: say so, with the number
            out[kind].update(allocated=False, error=str(error).splitlines()[0][:200])
        gc.collect()
        torch.cuda.empty_cache()
        log(f"  capacity {name} {kind}: {out[kind]}")
    return out


@torch.no_grad()
def engine_check(model, name: str, log) -> dict:
    """The Engine's speculative loop on the GPU (graphs of width 1 and 1 + k, padded drafts) against its plain
    loop: greedy tokens from a prompt that repeats itself (so drafts are found), how many agree, and the counts.
    bf16 rounds a 9-token step differently from a 1-token one, so near-ties may differ: reported, not asserted."""
    from models.engine import Engine
    from models.generation import GenerationConfig
    engine = Engine(model, None, name=name, attention="flash", context_length=2048)
    half = torch.randint(3, model.config.vocab_size, (300,), generator=torch.Generator().manual_seed(0)).tolist()
    prompt = half + half[:200]
    runs = {}
    for depth in (0, 8, 0, 8):      # the second pair after warm-up (compiles, graph captures)
        engine.clear_prefix_cache()
        runs[depth] = engine.generate(prompt, GenerationConfig(max_new_tokens=64, speculate=depth))
    plain, spec = runs[0].token_ids, runs[8].token_ids
    same = next((i for i, (a, b) in enumerate(zip(plain, spec)) if a != b), min(len(plain), len(spec)))
    t = runs[8].timings
    out = {"tokens": len(plain), "identical_prefix": same, "identical": plain == spec, "drafted": t.drafted_tokens,
           "accepted": t.accepted_tokens, "decode_steps": t.decode_steps, "verify_steps": t.verify_steps,
           "plain_tok_s": runs[0].timings.decode_tokens_per_s, "speculative_tok_s": t.decode_tokens_per_s}
    log(f"  engine check {name}: {out}")
    model.free_caches()
    return out


def projections(verify: list[dict], widths, cpu_path: Path) -> list[dict]:
    """GPU speed-up of speculation projected from the CPU's counts: tokens / (plain steps + verifying steps x
    the measured cost of a (1 + k)-token step relative to a one-token step). On the GPU every verifying step
    has width 1 + k (short drafts are padded), which the CPU's counts, made at width 1 + drafts, stand in for."""
    if not cpu_path.exists():
        return []
    cpu = json.loads(cpu_path.read_text(encoding="utf-8"))
    out = []
    for row in verify:
        for kind, summary in cpu["summary"].items():
            for depth in cpu["depths"]:
                width = depth + 1
                counts = summary.get(f"speculate_{depth}")
                if counts is None or width not in row["step_ratio"]:
                    continue
                decoded = counts["tokens_per_step"] * counts["decode_steps"]
                plain = counts["decode_steps"] - counts["verify_steps"]
                cost = plain + counts["verify_steps"] * row["step_ratio"][width]
                out.append({"model": row["model"], "context": row["context"], "kv_cache": row["kv_cache"],
                            "workload": kind, "speculate": depth, "step_ratio": row["step_ratio"][width],
                            "cpu_tokens_per_step": counts["tokens_per_step"], "projected_speedup": decoded / cost})
    return out


def bars(e2e, cap, verify) -> list[dict]:
    def rate(model, context, kind):
        return next((r["tok_s"].get("flash") for r in e2e if (r["model"], r["context"], r["kv_cache"]) ==
                     (model, context, kind) and "skipped" not in r), None)

    out = []
    for label, model, context, bar in (("fp8 / bf16 flash, 7B 64k", "CodeLlama-7B", 65536, BARS["fp8_7b_64k"]),
                                       ("fp8 / bf16 flash, 34B 128k", "CodeLlama-34B", 131072, BARS["fp8_34b_128k"])):
        fp8, bf16 = rate(model, context, "fp8"), rate(model, context, "bf16")
        value = fp8 / bf16 if fp8 and bf16 else None
        out.append({"bar": label, "value": value, "need": f">= {bar}x", "met": value is not None and value >= bar})
    if "fp8" in cap and "bf16" in cap:
        value = cap["fp8"]["tokens"] / cap["bf16"]["tokens"]
        allocated = cap["fp8"].get("allocated") and cap["bf16"].get("allocated")
        out.append({"bar": f"capacity 34B fp8 / bf16 ({cap['fp8']['tokens']:,} / {cap['bf16']['tokens']:,} tokens"
                           + (", both allocated)" if allocated else ", NOT both allocated)"),
                    "value": value, "need": f">= {BARS['capacity']}x", "met": bool(allocated) and value >= BARS["capacity"]})
    for row in verify:
        for what in ("step", "attention"):
            value = row[f"{what}_ratio"].get(8)     # the "verification step of 8 tokens"
            if value is not None:
                out.append({"bar": f"8-token {what} / one-token {what}, {row['model'][10:]} {row['context'] // 1024}k "
                                   f"{row['kv_cache']}", "value": value, "need": f"<= {BARS['verify']}x",
                            "met": value <= BARS["verify"]})
    return out


def markdown(result: dict) -> str:
    env = result["env"]
    lines = [f"# 8-bit KV caches and verification steps: {env['card']}, {env['date']}", "",
             f"torch {env['torch']}, triton {env['triton']}; copy bandwidth {result['bandwidth'] / 1e12:.2f} TB/s, "
             f"read {env['read_bandwidth'] / 1e12:.2f} TB/s (this run). Random weights of the real shapes, bf16, "
             "batch 1, graph replays, dense parts compiled. Took "
             f"{result['seconds']:.0f} s" + (f", stopped {result['stopped']}" if result.get("stopped") else "") + ".", "",
             "| model | context | KV cache | roofline tok/s | flash tok/s | % roofline | sdpa tok/s |", "|---|---|---|---|---|---|---|"]
    for r in result["e2e"]:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['context']} | {r['kv_cache']} | | {r['skipped']} | | |")
            continue
        t = r["tok_s"]
        flash, sdpa = t.get("flash", float("nan")), t.get("sdpa", float("nan"))
        lines.append(f"| {r['model']} | {r['context']} | {r['kv_cache']} | {r['roofline_tok_s']:.1f} | {flash:.1f} | "
                     f"{100 * flash / r['roofline_tok_s']:.0f}% | {sdpa:.1f} |")
    lines += ["", "| verification | KV cache | width | step µs | x one-token step | attention µs | x |",
              "|---|---|---|---|---|---|---|"]
    for r in result["verify"]:
        for w in r["step_us"]:
            lines.append(f"| {r['model']} {r['context']} | {r['kv_cache']} | {w} | {r['step_us'][w]:.0f} | "
                         f"{r['step_ratio'][w]:.2f}x | {r['attention_us'][w]:.1f} | {r['attention_ratio'][w]:.2f}x |")
    if result["projections"]:
        lines += ["", "| projected speed-up of speculation | KV cache | workload (CPU acceptance) | k | step cost | "
                  "CPU tokens/step | projected |", "|---|---|---|---|---|---|---|"]
        for p in result["projections"]:
            lines.append(f"| {p['model']} {p['context']} | {p['kv_cache']} | {p['workload']} | {p['speculate']} | "
                         f"{p['step_ratio']:.2f}x | {p['cpu_tokens_per_step']:.2f} | **{p['projected_speedup']:.2f}x** |")
    if result.get("engine_check"):
        e = result["engine_check"]
        lines += ["", f"Engine on the GPU, greedy, a prompt that repeats itself: speculative (k=8) and plain decoding "
                  f"agree on {e['identical_prefix']} of {e['tokens']} tokens; {e['accepted']} of {e['drafted']} drafts "
                  f"accepted in {e['verify_steps']} verifying of {e['decode_steps']} steps; "
                  f"{e['speculative_tok_s']:.1f} vs {e['plain_tok_s']:.1f} tok/s."]
    lines += ["", "| bar | measured | needed | |", "|---|---|---|---|"]
    for b in result["bars"]:
        value = "n/a" if b["value"] is None else f"{b['value']:.2f}x"
        lines.append(f"| {b['bar']} | {value} | {b['need']} | {'met' if b['met'] else 'MISSED'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = OneLineParser(prog="python -m models.decode_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--kv-caches", default="bf16,fp8", help="cache types: bf16, fp8, int8")
    parser.add_argument("--models", default="7B,34B")
    parser.add_argument("--backends", default="flash,sdpa")
    parser.add_argument("--widths", default="1,8,9", help="tokens per verification step to time (1 + drafts)")
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--no-capacity", action="store_true")
    parser.add_argument("--cpu-results", type=Path, default=CPU_RESULTS)
    parser.add_argument("--out", type=Path, default=Path("bench/scratch"))
    args = parser.parse_args(argv)
    if (started := begin_run("models.decode_bench", args.out)) is None:
        return 2
    env, bandwidth, log = started
    t0 = time.perf_counter()
    kinds = args.kv_caches.split(",")
    widths = [int(w) for w in args.widths.split(",")]
    result = {"env": env, "bandwidth": bandwidth, "checks": {}, "e2e": [], "verify": [], "capacity": {},
              "projections": [], "bars": [], "seconds": 0.0}

    def save():
        result["seconds"] = time.perf_counter() - t0
        (args.out / "decode.json").write_text(json.dumps(result, indent=1), encoding="utf-8")

    def stop(signum, frame):
        raise TimeoutError
    signal.signal(signal.SIGTERM, stop)      # `timeout` ends the run: report what was measured
    try:
        for short in args.models.split(","):
            name = f"CodeLlama-{short}"
            contexts = SHAPES[name]
            model = build_random_model(name, device="cuda", dtype=torch.bfloat16, max_len=max(contexts))
            result["checks"][name] = check_8bit(model, kinds, log)
            model.compile_dense()
            # What the bars need first, the other contexts last.
            result["e2e"] += measure_steps(model, name, contexts[-1:], [1], bandwidth, args.replays, log, kinds,
                                           args.backends.split(","))
            save()
            result["verify"] += verify_rows(model, name, VERIFY_AT[name], kinds, widths, args.replays, log)
            save()
            if "7B" in name:
                result["engine_check"] = engine_check(model, name, log)
                save()
            if "34B" in name and not args.no_capacity:
                result["capacity"] = capacity(model, name, kinds, log)
                save()
            result["e2e"] += measure_steps(model, name, contexts[:-1], [1], bandwidth, args.replays, log, kinds,
                                           args.backends.split(","))
            save()
            del model
            gc.collect()
            torch.cuda.empty_cache()
    except TimeoutError:
        result["stopped"] = "at the time limit: the rows above are all that was measured"
        log(f"  stopped {result['stopped']}")
    result["e2e"].sort(key=lambda r: (r["model"], r["context"], r["kv_cache"]))
    result["projections"] = projections(result["verify"], widths, args.cpu_results)
    result["bars"] = bars(result["e2e"], result["capacity"], result["verify"])
    save()
    table = markdown(result)
    (args.out / "decode.md").write_text(table, encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

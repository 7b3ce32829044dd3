"""Where a cold request's first token goes inside the server (issue 9), in one process, no HTTP.

    python bench/gpu/cold_profile.py [--model random:CodeLlama-7B:.gpu/tokenizer] [--out DIR]

The session is opened and warmed as `codecomplete serve` opens it ("before" below also turns the compiled prefill
off, "after" leaves it as the engine chose). Then, with the engine's kernels timed from the
host (the KV-cache append and SDPA calls of each prefill, with their first-call setup: a Triton compile per new
number of tokens, a cuDNN plan per new shape):
1. first prefills at new lengths, without and with prefill buckets (models/engine.py PREFILL_BUCKET);
2. the serve benchmark's requests replayed through the session (typing in models/engine.py, then first requests in
   three other files) "before" (no buckets, no warming) and "after" (buckets, the spans near the prompt budget
   warmed, the prompt caches warmed), each request split into prompt building and the engine's first token;
3. a torch.profiler table of one cold request in each mode.
Writes DIR/cold-profile.json, DIR/cold-profile.md and DIR/cold-profile-tables.txt.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


class HostTimer:
    """Host time spent in a function, per call, while recording: for the first call at a new shape that is its
    setup (compiling, planning), for the others the launch."""

    def __init__(self, owner, name: str):
        self.owner, self.name, self.real = owner, name, getattr(owner, name)
        self.calls: list[float] = []
        timer = self

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return timer.real(*args, **kwargs)
            finally:
                timer.calls.append(1000 * (time.perf_counter() - start))
        setattr(owner, name, timed)

    def take(self) -> dict:
        calls, self.calls = self.calls, []
        return {"calls": len(calls), "sum_ms": round(sum(calls), 2), "max_ms": round(max(calls, default=0.0), 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:CodeLlama-7B:.gpu/tokenizer")
    parser.add_argument("--context-tokens", type=int, default=8192)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--typing", type=int, default=12, help="keystroke requests before the cold ones")
    parser.add_argument("--device", help="as for codecomplete (cpu: a dry run)")
    parser.add_argument("--out", type=Path, default=Path("bench/scratch/h200-cold"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tables: list[str] = []

    def save() -> None:
        (args.out / "cold-profile.json").write_text(json.dumps(report, indent=1) + "\n")
        (args.out / "cold-profile-tables.txt").write_text("\n\n".join(tables) + "\n")
        (args.out / "cold-profile.md").write_text(markdown(report))

    t0 = time.perf_counter()
    import torch

    import kernels.interface
    from codecomplete import workspace
    from codecomplete.cli import build_serve_parser
    from codecomplete.serve_bench import Cursor, typing_through
    from codecomplete.server.serve import WARM_PREFILL_BELOW
    from codecomplete.server.warming import STARTUP_S, PromptWarmer
    from codecomplete.session import Sampling, open_session
    from models.generation import GenerationConfig

    repo = Path(__file__).resolve().parents[2]
    serve_args = build_serve_parser().parse_args([str(repo), "--model", args.model, "--context-tokens",
                                                  str(args.context_tokens), "--max-tokens", str(args.max_tokens)]
                                                 + (["--device", args.device] if args.device else []))
    session = open_session(serve_args, workspace.repository(str(repo)), args.max_tokens)
    engine = session.engine
    budget = session.prompt_budget(args.max_tokens)
    t_load = time.perf_counter()
    session.raw("def main():", sampling=Sampling(max_tokens=4)).run()        # serve's own first warm-up step
    engine.clear_prefix_cache()
    cuda = torch.cuda.is_available()
    report.update(gpu=torch.cuda.get_device_name(0) if cuda else "no GPU (a dry run)", torch=torch.__version__,
                  python=sys.version.split()[0],
                  model=engine.name, budget=budget, load_s=round(t_load - t0, 1),
                  decode_warm_up_s=round(time.perf_counter() - t_load, 1), cpu_count=os.cpu_count())
    try:
        import triton
        report["triton"] = triton.__version__
    except ImportError:
        pass
    save()

    append = HostTimer(kernels.interface, "append_kv_triton")
    import models.llama
    sdpa = HostTimer(models.llama, "prefill_attention")      # (not F's attribute: the causal mask dispatches on it)
    bucket = engine.prefill_bucket or max(16, args.context_tokens // 64)      # on a CPU (a dry run) too
    compiled = engine.compile_prefill = engine.prefill_compilable        # as the server chooses
    if compiled:                        # compile the prefill's dense parts now, not inside a measured call
        engine.warm_prefill([bucket])

    # 1. First prefills at new lengths, through the Engine (max_new_tokens=1: prefill to the first token).
    vocab = engine.model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (args.context_tokens,), generator=generator).tolist()
    rows = []

    def first_token(n: int, label: str) -> None:
        engine.clear_prefix_cache()
        append.take(), sdpa.take()
        result = engine.generate(ids[:n], GenerationConfig(max_new_tokens=1))
        rows.append({"case": label, "tokens": n, "bucket": engine.prefill_bucket,
                     "span": engine.prefill_span(0, n)[1], "prefill_ms": round(1000 * result.timings.prefill_s, 1),
                     "ttft_ms": round(result.timings.ttft_ms, 1), "append": append.take(), "sdpa": sdpa.take()})
        print(f"  {label}: {rows[-1]}", flush=True)

    # Lengths well below the replay's (7.2k-8.2k at an 8k budget), so that no shape is shared with it.
    base = args.context_tokens * 3 // 4 - 2 * bucket        # 5888 at 8k
    engine.prefill_bucket, engine.compile_prefill = 0, False
    for n in (base + 1, base + 23, base + 47):
        first_token(n, "no buckets, a new length")
    first_token(base + 47, "no buckets, the same length again")
    engine.prefill_bucket, engine.compile_prefill = bucket, compiled
    for n in (base + bucket + 5, base + 2 * bucket - 9):    # one span, new: the first pays its setup, the second not
        first_token(n, "buckets, a new span")
    started = time.perf_counter()
    warmed = engine.warm_prefill([base + 3 * bucket - 1])   # the next span
    report["warm_prefill_one_span_ms"] = round(1000 * (time.perf_counter() - started), 1)
    append.take(), sdpa.take()
    for n in (base + 2 * bucket + 3, base + 3 * bucket - 20):
        first_token(n, f"buckets, a span warmed ahead ({warmed})")
    report["first_prefills"] = rows
    save()

    # 2. The serve benchmark's requests through the session, before and after.
    cursors = typing_through((repo / "models/engine.py").read_text(), "_generate", 3, args.typing + 1)
    colds = [("prompts/completion.py", 2), ("prompts/packing.py", 3), ("codecomplete/server/llama_cpp.py", 3)]
    original_tokenizer = engine.tokenizer
    report["replay"] = {}
    from torch.profiler import ProfilerActivity, profile

    for mode in ("before", "after"):
        # Nothing remembered from the other mode: a new tokenizer object has a new Encoder; the outline cache cleared.
        engine.tokenizer = copy.copy(original_tokenizer)
        import prompts.outline
        cached_outline = getattr(prompts.outline, "_outline", None)
        if hasattr(cached_outline, "cache_clear"):
            cached_outline.cache_clear()
        engine.clear_prefix_cache()
        steps = {}
        if mode == "before":
            engine.prefill_bucket, engine.compile_prefill = 0, False
        else:
            engine.prefill_bucket, engine.compile_prefill = bucket, compiled
            started = time.perf_counter()
            spans = engine.warm_prefill(range(max(1, budget - WARM_PREFILL_BELOW), budget + 1))
            engine.clear_prefix_cache()
            steps["warm_prefill"] = {"spans": spans, "s": round(time.perf_counter() - started, 2)}
            started = time.perf_counter()
            count = PromptWarmer(session, budget).run(STARTUP_S)
            steps["warm_prompts"] = {"files": count, "s": round(time.perf_counter() - started, 2)}
        append.take(), sdpa.take()
        requests = []

        def request(cursor: Cursor, label: str) -> None:
            body = cursor.llama_vim_body(args.max_tokens)
            sampling = Sampling(max_tokens=args.max_tokens, temperature=0.0, format_stops=False)
            started = time.perf_counter()
            generation = session.infill(body["input_prefix"] + body["prompt"], body["input_suffix"],
                                        sampling=sampling, budget=budget)
            built = time.perf_counter()
            result = generation.run()
            t = result.timings
            requests.append({
                "request": label, "prompt_tokens": result.prompt_tokens,
                "prefilled": result.prompt_tokens - result.reused_prefix_tokens,
                "build_ms": round(1000 * (built - started), 1), "engine_ttft_ms": round(t.ttft_ms, 1),
                "prefill_ms": round(1000 * t.prefill_s, 1),
                "first_token_ms": round(1000 * (built - started) + t.ttft_ms, 1),
                "append": append.take(), "sdpa": sdpa.take()})
            r = requests[-1]
            print(f"  {mode} {label}: build {r['build_ms']} ms, engine {r['engine_ttft_ms']} ms (prefill "
                  f"{r['prefill_ms']}), {r['prefilled']} of {r['prompt_tokens']} prefilled; append max "
                  f"{r['append']['max_ms']} ms, sdpa max {r['sdpa']['max_ms']} ms", flush=True)

        for i, cursor in enumerate(cursors):
            request(cursor, "first" if i == 0 else f"typing {i}")
        for path, fraction in colds:
            text = (repo / path).read_text()
            request(Cursor(text, len(text) // fraction), f"cold {path}")
        # One more cold request, profiled (a new place in a file: a new prompt length).
        text = (repo / "codecomplete/server/openai_api.py").read_text()
        cursor = Cursor(text, 2 * len(text) // 3)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            request(cursor, "cold codecomplete/server/openai_api.py, profiled")
            if cuda:
                torch.cuda.synchronize()
        tables.append(f"## {mode}: one cold request (prompt building and the engine), by self CPU time\n" +
                      prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=22, max_name_column_width=70))
        tables.append(f"## {mode}: the same request, by device time\n" +
                      prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=70))
        report["replay"][mode] = {"steps": steps, "requests": requests}
        save()
    engine.tokenizer = original_tokenizer
    report["total_s"] = round(time.perf_counter() - t0, 1)
    save()
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    lines = [f"# The cold first token inside the server: {report.get('gpu', '?')}, {report.get('started', '')}", "",
             f"{report.get('model', '')}, prompt budget {report.get('budget', '?')}; torch {report.get('torch')}, "
             f"triton {report.get('triton')}, Python {report.get('python')}, {report.get('cpu_count')} CPUs. Host "
             "times of the KV-cache append and the SDPA calls include their first-call setup (a Triton compile per new "
             "number of new tokens; a cuDNN plan per new shape).", ""]
    if report.get("first_prefills"):
        lines += ["## First prefills at new lengths (the Engine, one token; buckets with the compiled prefill where "
                  "the engine compiles it)", "",
                  "| case | tokens | span | prefill (ms) | append: host max / sum (ms) | SDPA: host max / sum (ms) |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['case']} | {r['tokens']} | {r['span']} | {r['prefill_ms']} | {r['append']['max_ms']} / "
                  f"{r['append']['sum_ms']} | {r['sdpa']['max_ms']} / {r['sdpa']['sum_ms']} |"
                  for r in report["first_prefills"]]
        if "warm_prefill_one_span_ms" in report:
            lines += ["", f"warm_prefill of one span: {report['warm_prefill_one_span_ms']} ms."]
    for mode, run in report.get("replay", {}).items():
        lines += ["", f"## Requests replayed through the session: {mode}", ""]
        if run["steps"]:
            lines += [f"Before the requests: {json.dumps(run['steps'])}", ""]
        lines += ["| request | prompt | prefilled | prompt building (ms) | engine first token (ms) | of which prefill "
                  "window (ms) | first token (ms) | append host max (ms) | SDPA host max (ms) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['request']} | {r['prompt_tokens']} | {r['prefilled']} | {r['build_ms']} | "
                  f"{r['engine_ttft_ms']} | {r['prefill_ms']} | {r['first_token_ms']} | {r['append']['max_ms']} | "
                  f"{r['sdpa']['max_ms']} |" for r in run["requests"]]
        typing = [r["first_token_ms"] for r in run["requests"] if r["request"].startswith("typing")]
        if typing:
            lines += ["", f"typing: median first token {statistics.median(typing):.1f} ms"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

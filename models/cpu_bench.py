"""`python -m models.cpu_bench`: the embedded model on this machine's CPU, measured (never asserted).

Load time cold (empty conversion cache: GGUF read, dequantized, tokenizer built, all cached) and warm
(the cached safetensors and tokenizer), prefill and decode tokens/s at two prompt lengths, and a
completion's latency cold against a second request that shares the prompt's context (prefix reuse).
Writes models-cpu.json and models-cpu.md into --out-dir (default bench/scratch). Imports are timed apart from loading.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

T0 = time.perf_counter()
import torch          # noqa: E402  (timed: the import is part of every start)
import transformers   # noqa: E402
IMPORT_S = time.perf_counter() - T0

from models.options import cpu_name  # noqa: E402


def code_tokens(tokenizer, n: int) -> list[int]:
    """Real Python (this package's source) as n prompt tokens: random ids would make the model babble."""
    text = "".join(p.read_text(encoding="utf-8") for p in sorted(Path(__file__).parent.rglob("*.py")))
    ids = tokenizer.encode(text)
    return (ids * (n // len(ids) + 1))[:n]


def median(values):
    return round(statistics.median(values), 3)


def measure(args) -> dict:
    from models import load_model

    with tempfile.TemporaryDirectory() as cache:
        os.environ["CODECOMPLETE_CACHE_DIR"] = cache
        engine = load_model(max_context=args.context)
        warm = [load_model(max_context=args.context).load_s for _ in range(args.repeats)]
    runs = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        runs.append({"threads": threads, "speed": speed(engine, args), "prefix_reuse": prefix_reuse(engine, args)})
    return {
        "model": engine.name, "device": engine.device, "dtype": engine.dtype, "attention": engine.attention,
        "import_s": round(IMPORT_S, 3),
        "load": {"cold_s": round(engine.load_s, 3), "warm_s": median(warm)}, "runs": runs,
    }


def speed(engine, args) -> list[dict]:
    from models import GenerationConfig

    rows = []
    for n in args.prompt_tokens:
        prompt = code_tokens(engine.tokenizer, n)
        prefill, decode = [], []
        for _ in range(args.repeats):
            engine.clear_prefix_cache()
            prefill.append(engine.generate(prompt, GenerationConfig(max_new_tokens=1)).timings.prefill_tokens_per_s)
            engine.clear_prefix_cache()
            result = engine.generate(prompt, GenerationConfig(max_new_tokens=args.decode_tokens))
            decode.append(result.timings.decode_tokens_per_s)
        rows.append({"prompt_tokens": n, "prefill_tokens_per_s": median(prefill), "decode_tokens_per_s": median(decode)})
    return rows


def prefix_reuse(engine, args) -> dict:
    """A completion request, then the next keystroke's: the same repository context, a different tail."""
    from models import GenerationConfig

    context = code_tokens(engine.tokenizer, args.reuse_context)
    completion = GenerationConfig(max_new_tokens=args.completion_tokens)
    tails = [engine.tokenizer.encode(f"\n\ndef helper_{i}(value):\n    return") for i in range(2 * args.repeats)]
    cold, warm = [], []
    for i in range(args.repeats):
        engine.clear_prefix_cache()
        for runs, tail in ((cold, tails[2 * i]), (warm, tails[2 * i + 1])):
            start = time.perf_counter()
            result = engine.generate(context + tail, completion)
            runs.append((time.perf_counter() - start, result))

    def summary(runs):
        return {"total_s": median(t for t, _ in runs), "ttft_ms": median(r.timings.ttft_ms for _, r in runs),
                "reused_prefix_tokens": runs[0][1].reused_prefix_tokens, "prompt_tokens": runs[0][1].prompt_tokens}

    reuse = {"completion_tokens": args.completion_tokens, "cold": summary(cold), "with_prefix_reuse": summary(warm)}
    reuse["ttft_ratio"] = round(reuse["cold"]["ttft_ms"] / reuse["with_prefix_reuse"]["ttft_ms"], 2)
    return reuse


def machine() -> dict:
    import gguf  # noqa: F401  (present wherever the embedded GGUF is converted)
    from importlib.metadata import version
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_name(), "cores": os.cpu_count(),
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "gguf": version("gguf"), "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        f"# {r['model']} on the CPU ({m['date']})", "",
        f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, torch {m['torch']}, transformers "
        f"{m['transformers']}, gguf {m['gguf']}; {r['dtype']}, attention {r['attention']}. Load average at start "
        f"{m['load_average_at_start']}, at end {r['load_average_at_end']}: other work on the machine slows every "
        f"number here. Medians of {r['repeats']} runs.", "",
        "| load | seconds |", "|---|---|",
        f"| import torch + transformers | {r['import_s']} |",
        f"| cold (GGUF read, dequantized, tokenizer built, cached) | {r['load']['cold_s']} |",
        f"| warm (cached safetensors + tokenizer) | {r['load']['warm_s']} |", "",
        "| torch threads | prompt tokens | prefill tokens/s | decode tokens/s |", "|---|---|---|---|",
        *(f"| {run['threads']} | {s['prompt_tokens']} | {s['prefill_tokens_per_s']} | {s['decode_tokens_per_s']} |"
          for run in r["runs"] for s in run["speed"]), "",
        "A completion, then the next request on the same context with a new tail (prefix reuse):", "",
        "| torch threads | prompt tokens | generated tokens | reused tokens | time to first token (ms) | total (s) | TTFT ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in r["runs"]:
        reuse = run["prefix_reuse"]
        for name in ("cold", "with_prefix_reuse"):
            x = reuse[name]
            ratio = f"{reuse['ttft_ratio']}x" if name == "with_prefix_reuse" else ""
            lines.append(f"| {run['threads']} | {x['prompt_tokens']} | {reuse['completion_tokens']} | "
                         f"{x['reused_prefix_tokens']} | {x['ttft_ms']} | {x['total_s']} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    from kernels.bench import OneLineParser     # here: not among the imports timed above

    parser = OneLineParser(prog="python -m models.cpu_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default="bench/scratch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--context", type=int, default=4096, help="KV-cache capacity")
    parser.add_argument("--prompt-tokens", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--reuse-context", type=int, default=1500)
    parser.add_argument("--completion-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads(), 1],
                        help="torch thread counts to measure at (1 avoids stalls when other work shares the cores)")
    args = parser.parse_args(argv)
    # Said before a minute of cold loading: --repeats 0 was a median of nothing, an --out-dir that is a file or a
    # prompt beyond --context a traceback after the whole run.
    if min(args.repeats, args.decode_tokens - 1, args.completion_tokens, *args.threads, *args.prompt_tokens) < 1:
        parser.error("--repeats, --threads, --prompt-tokens and --completion-tokens take 1 or more, "
                     "--decode-tokens 2 or more")
    longest = max(max(args.prompt_tokens) + args.decode_tokens, args.reuse_context + args.completion_tokens + 32)
    if longest > args.context:
        parser.error(f"--context {args.context}: too small for the longest --prompt-tokens and --decode-tokens, or "
                     "for --reuse-context, a completion and its short tail")
    if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        parser.error(f"--out-dir {args.out_dir}: is not a folder")
    torch.manual_seed(0)
    result = {"machine": machine(), "repeats": args.repeats}
    result.update(measure(args))
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "models-cpu.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "models-cpu.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


if __name__ == "__main__":
    main()

"""Speculative decoding against plain decoding on the CPU, on copy-heavy work and on work with nothing to copy.

    python bench/speculative_bench.py [--speculate 8] [--max-tokens 128] [--threads 1] [--out bench/results/speculative-cpu]

The embedded SmolLM2, greedy, the workloads of bench/speculative_workloads.py. Every item runs plain
(speculate=0) and with each --speculate depth, in alternating order, on one engine (the prompt's prefill is
reused between runs; only decode tokens/s is compared). The outputs must be identical token for token; the
table says so per item. Per kind, throughput is all decoded tokens over all decode time. Bars (issue 13):
copy-heavy at least 2x plain, nothing to copy at least 0.95x. Writes JSON and a markdown table.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from codecomplete.cli import _Parser  # noqa: E402  (the product's one-line usage errors)

BARS = {"copy": 2.0, "fresh": 0.95}
KINDS = {"copy": "copy-heavy", "fresh": "nothing to copy"}


def run_item(engine, item, depths, max_tokens, flip: bool) -> dict:
    from models import GenerationConfig

    runs = {}
    order = [0, *depths]
    for depth in (order[::-1] if flip else order):
        config = GenerationConfig(max_new_tokens=max_tokens, speculate=depth, stop_token_ids=item.stop_token_ids)
        result = engine.generate(item.prompt_ids, config)
        t = result.timings
        runs[depth] = {"tokens": len(result.token_ids), "decoded": len(result.token_ids) - 1, "decode_s": t.decode_s,
                       "tokens_per_s": t.decode_tokens_per_s, "steps": t.decode_steps, "verify_steps": t.verify_steps, "drafted": t.drafted_tokens,
                       "accepted": t.accepted_tokens, "ids": result.token_ids}
    plain = runs[0]
    row = {"kind": item.kind, "name": item.name, "prompt_tokens": len(item.prompt_ids), "plain": _public(plain)}
    for depth in depths:
        r = runs[depth]
        row[f"speculate_{depth}"] = {**_public(r), "same_output": r["ids"] == plain["ids"],
                                     "speedup": r["tokens_per_s"] / plain["tokens_per_s"] if plain["tokens_per_s"] else None}
    return row


def _public(run: dict) -> dict:
    return {k: v for k, v in run.items() if k != "ids"}


def summarize(rows, depths) -> dict:
    out = {}
    for kind in KINDS:
        mine = [r for r in rows if r["kind"] == kind]
        if not mine:
            continue
        plain_rate = sum(r["plain"]["decoded"] for r in mine) / sum(r["plain"]["decode_s"] for r in mine)
        out[kind] = {"items": len(mine), "plain_tokens_per_s": plain_rate, "bar": BARS[kind]}
        for depth in depths:
            runs = [r[f"speculate_{depth}"] for r in mine]
            rate = sum(x["decoded"] for x in runs) / sum(x["decode_s"] for x in runs)
            steps, drafted, accepted = (sum(x[key] for x in runs) for key in ("steps", "drafted", "accepted"))
            out[kind][f"speculate_{depth}"] = {
                "tokens_per_s": rate, "speedup": rate / plain_rate, "all_same_output": all(x["same_output"] for x in runs),
                "decode_steps": steps, "drafted": drafted, "accepted": accepted,
                "acceptance": accepted / drafted if drafted else 0.0,
                "tokens_per_step": sum(x["decoded"] for x in runs) / steps if steps else 0.0,
                "verify_steps": sum(x["verify_steps"] for x in runs)}
    return out


def markdown(result: dict) -> str:
    m, depths = result["machine"], result["depths"]
    lines = [f"# Speculative decoding (prompt lookup) on the CPU, {m['date']}", "",
             f"{result['model']} ({result['dtype']}, attention {result['attention']}, KV cache {result['kv_cache']}), "
             f"greedy, up to {result['max_tokens']} tokens per item, {result['threads']} torch thread(s). {m['cpu']}, "
             f"{m['cores']} cores, Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}. "
             f"Load average at start {m['load_average_start']}, at end {m['load_average_end']} "
             "(other work on the machine slows both columns alike: runs alternate per item).", "",
             "| workload | items | plain tok/s | " + " | ".join(
                 f"speculate {d}: tok/s | speed-up | accepted / drafted | tokens per step | same output" for d in depths)
             + " | bar |",
             "|---|---|---|" + "---|---|---|---|---|" * len(depths) + "---|"]
    for kind, s in result["summary"].items():
        cells = [f"{KINDS[kind]} | {s['items']} | {s['plain_tokens_per_s']:.2f}"]
        for d in depths:
            x = s[f"speculate_{d}"]
            cells.append(f"{x['tokens_per_s']:.2f} | **{x['speedup']:.2f}x** | {x['accepted']} / {x['drafted']} "
                         f"({100 * x['acceptance']:.0f}%) | {x['tokens_per_step']:.2f} | {'yes' if x['all_same_output'] else 'NO'}")
        lines.append("| " + " | ".join(cells) + f" | >= {s['bar']}x |")
    lines += ["", "Per item:", "", "| kind | item | prompt | tokens | plain tok/s | " + " | ".join(
        f"k={d} tok/s | k={d} x | k={d} acc/draft | k={d} steps" for d in depths) + " | same |",
        "|---|---|---|---|---|" + "---|---|---|---|" * len(depths) + "---|"]
    for r in result["rows"]:
        cells = [r["kind"], r["name"], str(r["prompt_tokens"]), str(r["plain"]["tokens"]), f"{r['plain']['tokens_per_s']:.2f}"]
        for d in depths:
            x = r[f"speculate_{d}"]
            cells += [f"{x['tokens_per_s']:.2f}", f"{x['speedup']:.2f}x", f"{x['accepted']}/{x['drafted']}", str(x["steps"])]
        cells.append("yes" if all(r[f"speculate_{d}"]["same_output"] for d in depths) else "NO")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = _Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speculate", default="8", help="draft depths to compare with plain decoding, e.g. 4,8,12 (default: 8)")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens generated per item (default: 128)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, steadier on a shared machine)")
    parser.add_argument("--kinds", default="copy,fresh",
                        help="copy: completions and answers with code to copy; fresh: nothing to copy (default: both)")
    parser.add_argument("--only", default="", help="run only items whose name contains this")
    parser.add_argument("--kv-cache", default=None, help="fp8 to run both sides with an fp8 KV cache")
    parser.add_argument("--out", default="bench/scratch/speculative-cpu", help="results path without extension (default: bench/scratch/speculative-cpu)")
    args = parser.parse_args(argv)
    # Checked before the model loads. Each mistake ran to a traceback, or wrote an empty table over the results
    # (--kinds cpoy, an --only that matches nothing); --speculate 0 timed the plain run again as "speculate 0".
    try:
        depths = [int(d) for d in args.speculate.split(",")]
    except ValueError:
        parser.error(f"--speculate {args.speculate}: draft depths expected, e.g. 4,8,12")
    if not all(1 <= d <= 15 for d in depths):
        parser.error(f"--speculate {args.speculate}: each depth from 1 to 15 (plain decoding is always timed)")
    kinds = args.kinds.split(",")
    if not kinds or not set(kinds) <= set(KINDS):
        parser.error(f"--kinds {args.kinds}: some of {','.join(KINDS)}")
    if args.max_tokens < 2 or args.threads < 1:     # one token is the prefill's: no decoding to time
        parser.error("--max-tokens takes 2 or more, --threads 1 or more")
    if args.kv_cache not in (None, "fp8", "int8"):
        parser.error(f"--kv-cache {args.kv_cache}: fp8 or int8")

    import torch
    import transformers

    from models import load_model
    from models.options import cpu_name
    from speculative_workloads import copy_heavy, nothing_to_copy

    torch.set_num_threads(args.threads)
    load_start = [round(x, 2) for x in os.getloadavg()]
    engine = load_model(device="cpu", max_context=4096, kv_cache=args.kv_cache)
    items = (copy_heavy(engine.tokenizer) if "copy" in kinds else []) + \
            (nothing_to_copy(engine.tokenizer) if "fresh" in kinds else [])
    items = [i for i in items if args.only in i.name]
    if not items:
        parser.error(f"--only {args.only}: no {' or '.join(KINDS[k] for k in kinds)} item's name contains it")
    rows = []
    for n, item in enumerate(items):
        started = time.perf_counter()
        row = run_item(engine, item, depths, args.max_tokens, flip=n % 2 == 1)
        rows.append(row)
        print(f"[{item.kind}] {item.name}: plain {row['plain']['tokens_per_s']:.2f} tok/s, " + ", ".join(
            f"k={d} {row[f'speculate_{d}']['tokens_per_s']:.2f} ({row[f'speculate_{d}']['speedup']:.2f}x, "
            f"{row[f'speculate_{d}']['accepted']}/{row[f'speculate_{d}']['drafted']} accepted, "
            f"same={row[f'speculate_{d}']['same_output']})" for d in depths)
            + f" [{time.perf_counter() - started:.0f} s]", flush=True)
    result = {
        "machine": {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "cpu": cpu_name(),
                    "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "transformers": transformers.__version__, "load_average_start": load_start,
                    "load_average_end": [round(x, 2) for x in os.getloadavg()]},
        "model": engine.name, "dtype": engine.dtype, "attention": engine.attention, "kv_cache": engine.kv_cache_dtype,
        "threads": args.threads, "max_tokens": args.max_tokens, "depths": depths,
        "summary": summarize(rows, depths), "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(result)
    out.with_suffix(".md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""llama.cpp as a peer in the end-to-end benchmark: its decode speed beside ours, from the same device call.

`bench/gpu/vs_llamacpp.sh` builds llama-bench (CUDA, sm_90) from the llama.cpp source vendored in
llama-cpp-python, times a random-weight F16 GGUF of CodeLlama-7B's shape with flash attention and an F16 and
a q8_0 KV cache (`llama-bench -fa 1 -p 0 -n 64 -d DEPTHS -ctk T -ctv T -o json`: 64 tokens decoded after a
prefill of DEPTH tokens, batch 1), then runs `python -m models.peer_llamacpp E2E.json DIR`, which reads those
files and our `models.bench` results of the same call and writes vs-llamacpp.md and .json: per context, our
backends (bf16 and fp8 caches), llama.cpp per cache type, and the roofline from the copy and the read bandwidth
measured in the same run. Issue 16's bars are checked against that table.
"""

from __future__ import annotations

import json
from pathlib import Path

KV_TYPES = ("f16", "q8_0")
# (what, our arm, llama.cpp arm, contexts, at least): issue 16's bars. "best" is llama.cpp's faster cache.
BARS = [("bf16 flash / llama.cpp F16", ("bf16", "flash"), "f16", (4096, 16384), 1.15),
        ("bf16 flash / llama.cpp F16", ("bf16", "flash"), "f16", (32768, 65536), 1.05),
        ("fp8 flash / llama.cpp best", ("fp8", "flash"), "best", (65536,), 1.4),
        ("fp8 flash / llama.cpp q8_0", ("fp8", "flash"), "q8_0", (16384, 65536), 1.6)]


def load(directory: Path) -> dict:
    """llama-bench's JSON files in `directory` (llamacpp-f16.json, llamacpp-q8_0.json): per cache type, per
    depth, the mean and standard deviation of its decode tokens/s; and the build it came from."""
    peer = {"tok_s": {}, "stddev": {}, "build": "", "gpu": ""}
    for kv in KV_TYPES:
        path = directory / f"llamacpp-{kv}.json"
        if not path.exists():
            continue
        for test in json.loads(path.read_text(encoding="utf-8")):
            if test.get("n_gen", 0) <= 0 or test.get("n_prompt", 0):
                continue
            peer["tok_s"].setdefault(kv, {})[int(test["n_depth"])] = float(test["avg_ts"])
            peer["stddev"].setdefault(kv, {})[int(test["n_depth"])] = float(test["stddev_ts"])
            commit = test.get("build_commit", "unknown")
            peer["build"] = "" if commit == "unknown" else f"{commit} (build {test.get('build_number', '?')})"
            peer["gpu"] = test.get("gpu_info", "")
    if not peer["tok_s"]:
        raise FileNotFoundError(f"no llama-bench results (llamacpp-f16.json, llamacpp-q8_0.json) in {directory}")
    return peer


def _ours(rows: list[dict], model: str) -> dict:
    """(kv cache, backend) -> {context: tok/s} of our batch-1 rows for `model`, and the rows by (kv, context)."""
    table, by_context = {}, {}
    for r in rows:
        if r["impl"] != "ours" or r["model"] != model or r["batch"] != 1 or "skipped" in r:
            continue
        kind = r.get("kv_cache", "bf16")
        by_context[(kind, r["context"])] = r
        for backend, tok_s in r["tok_s"].items():
            table.setdefault((kind, backend), {})[r["context"]] = tok_s
    return {"arms": table, "rows": by_context}


def _peer_arm(peer: dict, arm: str, context: int) -> float:
    rates = [peer["tok_s"].get(kv, {}).get(context, float("nan")) for kv in KV_TYPES]
    if arm == "best":
        return max((r for r in rates if r == r), default=float("nan"))
    return peer["tok_s"].get(arm, {}).get(context, float("nan"))


def bars(rows: list[dict], peer: dict, model: str = "CodeLlama-7B") -> list[dict]:
    ours = _ours(rows, model)["arms"]
    result = []
    for what, arm, peer_arm, contexts, target in BARS:
        for context in contexts:
            mine = ours.get(arm, {}).get(context, float("nan"))
            theirs = _peer_arm(peer, peer_arm, context)
            ratio = mine / theirs
            result.append({"bar": what, "context": context, "ours": mine, "llama.cpp": theirs, "ratio": ratio,
                           "target": target, "met": ratio >= target})
    return result


SOURCE = "the source vendored in llama-cpp-python 0.3.36 (../shared/gpu/llamacpp-src.sh)"


def markdown(env: dict, rows: list[dict], peer: dict, model: str = "CodeLlama-7B", source: str = SOURCE) -> str:
    ours = _ours(rows, model)
    arms = ours["arms"]
    backends = [b for b in ("flash", "flash:unfused", "sdpa") if ("bf16", b) in arms]
    contexts = sorted({c for (_, c) in ours["rows"]})
    copy, read = env["copy_bandwidth"], env["read_bandwidth"]
    lines = [f"# {model}, batch 1: ours against llama.cpp — {env['card']}, {env['date']}", "",
             f"One device call: llama.cpp {peer['build'] or f'from {source}'} built for sm_90; ours (`python -m models.bench`, bf16 "
             f"weights, CUDA-graph replays timed by GPU events, torch {env['torch']}, triton {env['triton']}) ran while it "
             f"built, then llama.cpp on the quiet machine (`llama-bench -fa 1 -p 0 -n 64 -d DEPTH -r 3`, F16 weights, a "
             f"random-weight GGUF of the same shape; the mean of its repetitions). Decode "
             f"tokens/s. Roofline = (weights + KV bytes a step reads) / bandwidth of this run: copy "
             f"{copy / 1e12:.2f} TB/s, read {read / 1e12:.2f} TB/s. 'flash:unfused' is the compiled general step "
             "instead of the fused one-token step (models/fused_decode.py).", "",
             "| context | " + " | ".join(f"ours {b}" for b in backends) + " | ours flash, fp8 cache "
             "| llama.cpp F16 KV | llama.cpp q8_0 KV | flash / llama.cpp F16 | fp8 / llama.cpp best "
             "| fp8 / llama.cpp q8_0 | roofline bf16 (copy, read) | roofline fp8 (copy, read) |",
             "|---" * (len(backends) + 9) + "|"]
    nan = float("nan")
    for context in contexts:
        bf16, fp8 = ours["rows"].get(("bf16", context)), ours["rows"].get(("fp8", context))
        mine = [arms.get(("bf16", b), {}).get(context, nan) for b in backends]
        fp8_rate = arms.get(("fp8", "flash"), {}).get(context, nan)
        f16, q8 = _peer_arm(peer, "f16", context), _peer_arm(peer, "q8_0", context)

        def roof(row):
            if row is None:
                return "–"
            total = (row["weight_gb"] + row["kv_gb"]) * 1e9
            return f"{copy / total:.1f}, {read / total:.1f}"
        lines.append(f"| {context} | " + " | ".join(f"{m:.1f}" for m in mine) +
                     f" | {fp8_rate:.1f} | {f16:.1f} | {q8:.1f} | {mine[0] / f16:.2f}x | "
                     f"{fp8_rate / _peer_arm(peer, 'best', context):.2f}x | {fp8_rate / q8:.2f}x | "
                     f"{roof(bf16)} | {roof(fp8)} |")
    lines += ["", "Bars (issue 16):", "", "| bar | context | ours | llama.cpp | ratio | target | |", "|---|---|---|---|---|---|---|"]
    for b in bars(rows, peer, model):
        lines.append(f"| {b['bar']} | {b['context']} | {b['ours']:.1f} | {b['llama.cpp']:.1f} | {b['ratio']:.2f}x "
                     f"| {b['target']:.2f}x | {'met' if b['met'] else 'missed'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """Write vs-llamacpp.md and .json from our models.bench results and llama-bench's; print the table."""
    import argparse
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("e2e", type=Path, help="models.bench's e2e*.json of the same device call")
    parser.add_argument("llamacpp", type=Path, help="the folder of llamacpp-f16.json and llamacpp-q8_0.json")
    parser.add_argument("--out", type=Path, default=None, help="default: the llama.cpp folder")
    parser.add_argument("--source", default=SOURCE, help="where llama.cpp came from, when its build has no commit")
    args = parser.parse_args(argv)
    try:
        ours, peer = json.loads(args.e2e.read_text(encoding="utf-8")), load(args.llamacpp)
    except (OSError, ValueError) as error:
        print(f"models.peer_llamacpp: {error}")
        return 2
    out = args.out or args.llamacpp
    table = markdown(ours["env"], ours["rows"], peer, source=args.source)
    checked = bars(ours["rows"], peer)
    (out / "vs-llamacpp.md").write_text(table, encoding="utf-8")
    (out / "vs-llamacpp.json").write_text(json.dumps(
        {"env": ours["env"], "llamacpp": peer, "ours": ours["rows"], "bars": checked}, indent=1), encoding="utf-8")
    print(table)
    return 0 if all(b["met"] for b in checked) else 1


if __name__ == "__main__":
    raise SystemExit(main())

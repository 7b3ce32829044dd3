"""Ours (bf16 and int8 weights) against llama.cpp (F16, Q8_0, Q4_K_M weights) from one device call's files:
`bench/gpu/weights_vs_llamacpp.sh` writes models.bench's e2e-weights.json and llama-bench's llamacpp-<type>.json.

    python bench/gpu/weights_table.py DIR       # prints a markdown table: decode tokens/s per context, and ratios
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

PEER_TYPES = ("f16", "Q8_0", "Q4_K_M")


def peer_rates(directory: Path) -> dict:
    """llama-bench's decode tokens/s per weight type and depth (the mean of its repetitions)."""
    rates = {}
    for kind in PEER_TYPES:
        path = directory / f"llamacpp-{kind}.json"
        if path.exists() and path.stat().st_size:
            for test in json.loads(path.read_text(encoding="utf-8")):
                if test.get("n_gen", 0) > 0 and not test.get("n_prompt", 0):
                    rates.setdefault(kind, {})[int(test["n_depth"])] = float(test["avg_ts"])
    return rates


def main(directory: Path) -> int:
    e2e = json.loads((directory / "e2e-weights.json").read_text(encoding="utf-8"))
    ours = {(r.get("weights", "bf16"), r["context"]): r for r in e2e["rows"]
            if r["impl"] == "ours" and r["batch"] == 1 and "skipped" not in r}
    peer, nan = peer_rates(directory), float("nan")
    env = e2e["env"]
    print(f"# CodeLlama-7B shape, batch 1, flash attention, bf16/F16 KV: weights against llama.cpp's — {env['card']}, "
          f"{env['date']}\n\nDecode tokens/s in one device call (ours: models.bench, graph replays; llama.cpp: "
          "llama-bench -fa 1 -p 0 -n 64 -d DEPTH -r 3). Roofline: weights + KV a step reads / this run's copy bandwidth.\n")
    print("| context | ours bf16 | ours int8 | int8 / bf16 | llama.cpp F16 | Q8_0 | Q4_K_M | ours int8 / Q8_0 "
          "| ours int8 / Q4_K_M | ours bf16 / F16 | int8 roofline |")
    print("|---" * 11 + "|")
    for context in sorted({c for (_, c) in ours}):
        bf16 = ours.get(("bf16", context), {}).get("tok_s", {}).get("flash", nan)
        row8 = ours.get(("int8", context), {})
        int8 = row8.get("tok_s", {}).get("flash", nan)
        f16, q8, q4 = (peer.get(kind, {}).get(context, nan) for kind in PEER_TYPES)
        print(f"| {context} | {bf16:.1f} | {int8:.1f} | {int8 / bf16:.2f}x | {f16:.1f} | {q8:.1f} | {q4:.1f} | "
              f"{int8 / q8:.2f}x | {int8 / q4:.2f}x | {bf16 / f16:.2f}x | {row8.get('roofline_tok_s', nan):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))

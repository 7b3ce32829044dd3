"""Ours (bf16 and int8 weights) against llama.cpp (F16, Q8_0, Q4_K_M weights) from one device call's files:
`bench/gpu/weights_vs_llamacpp.sh` writes models.bench's e2e-weights.json and llama-bench's llamacpp-<type>.json.
Both sides with the same kind of KV cache: llama.cpp's (its JSON's type_k: f16 or q8_0) and ours to match (bf16,
or int8: 8 bits with a scale, as q8_0).

    python bench/gpu/weights_table.py DIR       # prints a markdown table: decode tokens/s per context, and ratios
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

PEER_TYPES = ("f16", "Q8_0", "Q4_K_M")
OUR_CACHE = {"f16": "bf16", "q8_0": "int8"}     # llama.cpp's KV cache type -> ours of the same kind


def peer_rates(directory: Path) -> tuple[dict, str]:
    """llama-bench's decode tokens/s per weight type and depth (the mean of its repetitions), and its KV cache type."""
    rates, caches = {}, set()
    for kind in PEER_TYPES:
        path = directory / f"llamacpp-{kind}.json"
        if path.exists() and path.stat().st_size:
            for test in json.loads(path.read_text(encoding="utf-8")):
                if test.get("n_gen", 0) > 0 and not test.get("n_prompt", 0):
                    rates.setdefault(kind, {})[int(test["n_depth"])] = float(test["avg_ts"])
                    caches.add(test.get("type_k", "f16"))
    if len(caches) > 1:
        raise SystemExit(f"weights_table.py: llama.cpp's runs in {directory} used different KV caches: {sorted(caches)}")
    return rates, caches.pop() if caches else "f16"


def main(directory: Path) -> int:
    e2e = json.loads((directory / "e2e-weights.json").read_text(encoding="utf-8"))
    peer, peer_cache = peer_rates(directory)
    cache, nan = OUR_CACHE.get(peer_cache, "bf16"), float("nan")
    ours = {(r.get("weights", "bf16"), r["context"]): r for r in e2e["rows"]
            if r["impl"] == "ours" and r["batch"] == 1 and "skipped" not in r and r.get("kv_cache", "bf16") == cache}
    env = e2e["env"]
    print(f"# CodeLlama-7B shape, batch 1, flash attention, {cache} / {peer_cache} KV cache: weights against "
          f"llama.cpp's — {env['card']}, {env['date']}\n\nDecode tokens/s in one device call (ours: models.bench, "
          f"graph replays, a {cache} cache; llama.cpp: llama-bench -fa 1 -p 0 -n 64 -d DEPTH -r 3 -ctk {peer_cache} "
          f"-ctv {peer_cache}). Roofline: weights + KV a step reads / this run's copy bandwidth.\n")
    kinds = [kind for kind in PEER_TYPES if kind in peer]     # the weight types llama-bench ran (PEERS)
    label = {"f16": "F16"}
    head = ["context", "ours bf16", "ours int8", "int8 / bf16"] + [f"llama.cpp {label.get(k, k)}" for k in kinds]
    head += [f"ours {'bf16' if k == 'f16' else 'int8'} / {label.get(k, k)}" for k in kinds] + ["int8 roofline"]
    print("| " + " | ".join(head) + " |")
    print("|---" * len(head) + "|")
    for context in sorted({c for (_, c) in ours}):
        bf16 = ours.get(("bf16", context), {}).get("tok_s", {}).get("flash", nan)
        row8 = ours.get(("int8", context), {})
        int8 = row8.get("tok_s", {}).get("flash", nan)
        rates = [peer[kind].get(context, nan) for kind in kinds]
        ratios = [(bf16 if kind == "f16" else int8) / rate for kind, rate in zip(kinds, rates)]
        cells = [str(context), f"{bf16:.1f}", f"{int8:.1f}", f"{int8 / bf16:.2f}x"] + [f"{r:.1f}" for r in rates]
        cells += [f"{r:.2f}x" for r in ratios] + [f"{row8.get('roofline_tok_s', nan):.1f}"]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))

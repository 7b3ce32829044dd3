"""Is speculative decoding worth it with int4 weights on a GPU now? (models.engine.default_speculation turns it off
for them.) Per model shape and weights kind (int8, then int4; random weights, bf16 cache, batch 1, flash, CUDA-graph
replays as the Engine runs them): a verification step of 8 and 9 tokens against a one-token step
(models.decode_bench.verify_rows), the speed-up that projects from the acceptance measured on the CPU
(bench/results/speculative-cpu.json), and the Engine's own speculative loop against its plain one on a prompt that
repeats itself (`engine_check`: tokens/s both ways, drafts and acceptance). Run from the repository root on a GPU:

    python bench/gpu/int4_verify.py [--models 7B,34B] [--out DIR]

Prints one line per measurement and the table last; writes verify.json into --out.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from models.decode_bench import CPU_RESULTS, engine_check, projections, verify_rows  # noqa: E402
from models.llama import build_random_model  # noqa: E402

CONTEXTS = {"7B": 16384, "34B": 65536}      # decode_bench's VERIFY_AT
WIDTHS = (1, 8, 9)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="7B,34B", help="comma-separated: 7B, 34B (default: both)")
    parser.add_argument("--weights", default="int8,int4", help="comma-separated weights kinds (default: int8,int4)")
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("bench/scratch/int4-verify"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.exit(2, "bench/gpu/int4_verify.py needs a CUDA GPU.\n")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for short in [m.strip() for m in args.models.split(",") if m.strip()]:
        name, context = f"CodeLlama-{short}", CONTEXTS[short]
        for weights in [w.strip() for w in args.weights.split(",") if w.strip()]:
            model = build_random_model(name, device="cuda", dtype=torch.bfloat16, max_len=context, weights=weights)
            model.compile_dense()
            verify = verify_rows(model, name, context, ("bf16",), WIDTHS, args.replays, print)
            row = {"model": name, "weights": weights, "context": context, "step_us": verify[0]["step_us"],
                   "step_ratio": verify[0]["step_ratio"],
                   "projected": projections(verify, WIDTHS, CPU_RESULTS), "engine": engine_check(model, name, print)}
            print(f"{name} {weights}: step {row['step_us']} µs, ratio {row['step_ratio']}", flush=True)
            rows.append(row)
            del model
            gc.collect()
            torch.cuda.empty_cache()
    (args.out / "verify.json").write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows},
                                                     indent=1), encoding="utf-8")
    print(f"\n{torch.cuda.get_device_name()}: random weights, bf16 cache, batch 1, flash")
    print(f"{'model':14s} {'weights':7s} {'context':>7s} {'1-token µs':>10s} {'8 / 1':>6s} {'9 / 1':>6s} "
          f"{'projected (copy, fresh) at 8':>28s} {'engine plain -> spec tok/s':>27s} {'accepted/drafted':>16s}")
    for r in rows:
        proj = {p["workload"]: p["projected_speedup"] for p in r["projected"] if p["speculate"] == 8}
        e = r["engine"]
        print(f"{r['model']:14s} {r['weights']:7s} {r['context']:7d} {r['step_us'][1]:10.1f} {r['step_ratio'][8]:6.2f} "
              f"{r['step_ratio'][9]:6.2f} {', '.join(f'{k} {v:.2f}x' for k, v in proj.items()):>28s} "
              f"{e['plain_tok_s']:12.1f} -> {e['speculative_tok_s']:8.1f} {e['accepted']:7d}/{e['drafted']:<7d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

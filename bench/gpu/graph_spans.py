"""Key spans of graphed SDPA and eager decode steps on the GPU (models/decode_step.py): each replay's logits against
the same step run eagerly over exactly the context's keys, and the step's time per span against a graph over the
whole cache, for a CodeLlama-7B-shaped model (random weights, 4 layers: the attention's share of a step is what
changes).

    python bench/gpu/graph_spans.py [--out bench/scratch/graph-spans]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kernels.bench import graph_replay_us  # noqa: E402
from models.config import preset  # noqa: E402
from models.decode_step import DecodeStep, key_span  # noqa: E402
from models.llama import build_random_model  # noqa: E402

CAPACITY = 65536


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/scratch/graph-spans"), help="results folder (default: bench/scratch/graph-spans)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.exit(2, "graph_spans needs a CUDA GPU\n")
    args.out.mkdir(parents=True, exist_ok=True)
    config = preset("CodeLlama-7B").replace(n_layers=4)
    model = build_random_model(config, device="cuda", dtype=torch.bfloat16, max_len=CAPACITY)
    model.setup_caches(1, CAPACITY)
    generator = torch.Generator(device="cuda").manual_seed(0)
    for layer in model.layers:                      # random keys and values where a context is, zeros past it
        cache = layer.attention.kv_cache
        cache.k[:, :, :40000].normal_(generator=generator)
        cache.v[:, :, :40000].normal_(generator=generator)
    rows = []
    with torch.no_grad():
        for backend in ("sdpa", "eager"):
            graphed = DecodeStep(model, 1, 1, backend, torch.device("cuda"), graphed=True, capacity=CAPACITY)
            eager = DecodeStep(model, 1, 1, backend, torch.device("cuda"), graphed=False, capacity=CAPACITY)
            for context in (4000, 16000, 32000):
                for step in (graphed, eager):
                    step.tokens.fill_(7)
                    step.input_pos.fill_(context - 1)
                expected = eager.run(kv_len=context, exact=True).float().clone()
                got = graphed.run(kv_len=context, exact=True).float().clone()
                error = ((got - expected).abs().max() / expected.abs().max()).item()
                span = key_span(context, CAPACITY)      # what each graph holds, captured again to be timed
                span_us = graph_replay_us(lambda: eager._forward(span, False, graphed=True), 20)
                whole_us = graph_replay_us(lambda: eager._forward(CAPACITY, False, graphed=True), 20)
                rows.append({"backend": backend, "context": context, "spans": sorted(graphed.graphs),
                             "relative_error": error, "span_us": span_us, "whole_cache_us": whole_us})
                print(rows[-1], flush=True)
    card = torch.cuda.get_device_name()
    (args.out / "graph-spans.json").write_text(json.dumps({"card": card, "rows": rows}, indent=1))
    print(f"\n{card}, CodeLlama-7B shape with 4 layers, a 64k cache")
    print("| backend | context | span graphs | max error / max logit | step over its span, us | over the whole cache, us |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['context']:,} | {len(r['spans'])} | {r['relative_error']:.1e} | "
              f"{r['span_us']:.0f} | {r['whole_cache_us']:.0f} |")
    return 0 if all(r["relative_error"] < 2e-2 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

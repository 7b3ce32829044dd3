"""A tensor-parallel rank's decode step on ONE GPU, without communication, with the fused kernels' per-shape
launch configurations and with the per-kind ones only, alternating (issue 12; run by bench/gpu/tp_shapes_h200.sh).

A rank of N runs the step of `models.tp.shard_config(config, N)` (its heads, FFN columns, ceil(V / N)
vocabulary rows) plus two all-reduces per layer and the logits gather: the model built here from those shapes
times exactly the rank's compute (the 'none' arm of models.bench --gpus N), on a card with one GPU. Random
weights, bf16 (or --weights int8), batch 1, flash attention, graph replays of the product's fused one-token step.

    python bench/gpu/tp_shapes_step.py --models 34B/2,34B,70B/2 --context 16384 [--json FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from kernels import fused_gemv  # noqa: E402
from kernels.bench import copy_bandwidth  # noqa: E402
from models.bench import fill_cache_randomly, kv_bytes_per_step, ours_step_us, weight_bytes_per_step  # noqa: E402
from models.config import preset  # noqa: E402
from models.llama import build_random_model  # noqa: E402
from models.tp import shard_config  # noqa: E402


def rank_config(name: str, world: int):
    config = preset(name if name.startswith("CodeLlama") else f"CodeLlama-{name}")
    if world == 1:
        return config
    return shard_config(config, world).replace(vocab_size=math.ceil(config.vocab_size / world))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="34B/2,34B,70B/2")
    parser.add_argument("--context", type=int, default=16384)
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two arms")
    parser.add_argument("--json", default="")
    parser.add_argument("--weights", choices=("bf16", "int8"), default="bf16",
                        help="int8: the projections quantized (their arms: INT8_CONFIGS' entries, or the bf16 kinds')")
    args = parser.parse_args(argv)
    bandwidth = copy_bandwidth()
    entries = fused_gemv.INT8_CONFIGS if args.weights == "int8" else fused_gemv.CONFIGS
    shaped = {fused_gemv.config_name(k): list(c) for k, c in entries.items() if isinstance(k, tuple)}
    print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s; {len(shaped)} per-shape entries", flush=True)
    rows = []
    for spec in filter(None, args.models.split(",")):
        name, _, world = spec.partition("/")
        world = int(world or 1)
        config = rank_config(name, world)
        model = build_random_model(config, device="cuda", dtype=torch.bfloat16, max_len=args.context)
        if args.weights == "int8":
            model.quantize_weights()
        model.compile_dense()
        model.setup_caches(1, args.context)
        fill_cache_randomly(model, args.context)
        roofline_us = (weight_bytes_per_step(model) + kv_bytes_per_step(model.config, 1, args.context)) / bandwidth * 1e6
        arms = {"per-shape": [], "per-kind": []}
        for _ in range(args.rounds):
            for arm in arms:
                previous = fused_gemv.use_per_shape(arm == "per-shape")
                try:
                    arms[arm].append(ours_step_us(model, 1, args.context, "flash", args.replays))
                finally:
                    fused_gemv.use_per_shape(previous)
        best = {arm: min(v) for arm, v in arms.items()}
        row = {"model": spec, "weights": args.weights, "context": args.context, "roofline_us": roofline_us, "runs_us": arms, "best_us": best}
        rows.append(row)
        print(f"{spec:8s} {args.weights} S={args.context}: roofline {roofline_us:7.0f} µs; per-kind {best['per-kind']:7.0f} µs "
              f"({100 * roofline_us / best['per-kind']:.1f}%), per-shape {best['per-shape']:7.0f} µs "
              f"({100 * roofline_us / best['per-shape']:.1f}%): {best['per-shape'] - best['per-kind']:+.0f} µs; "
              f"runs {[round(u) for u in arms['per-kind']]} / {[round(u) for u in arms['per-shape']]}", flush=True)
        del model
        gc.collect()
        torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps({"copy_bandwidth": bandwidth, "per_shape_entries": shaped, "rows": rows},
                                              indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

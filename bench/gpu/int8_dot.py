"""int8 scores by int8 tensor-core dots (`LaunchPlan.int8_dot`) in the dot kernel, against the int8 and e4m3
caches as planned today, bf16 and cuDNN (one GPU run).

    PYTHONPATH=. python bench/gpu/int8_dot.py OUT_DIR

The dot kernel (GQA, multi-token) converts every int8 K and V element to fp16 for its two dots. With
`int8_dot` q is quantized per row to int8 once and the scores are exact int32 dots of bytes (IMMA): K is
never converted. Each int8-dot variant runs at the split count that fills one wave of the programs its own
binary fits per SM. Every variant's output is checked against the float32 reference over the dequantized
cache first. CUDA-graph replays over input sets rotating past L2, µs, best of two interleaved rounds; the
read rate is on the bytes read (8-bit K and V plus fp32 scales). Writes OUT_DIR/int8-dot.{json,md}, prints
the table last.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

from kernels import flash_decode, reference
from kernels.bench import (Shape, best_of_rounds, environment, make_input_sets, n_sets_for, read_bandwidth,
                           save_table, sdpa)
from kernels.interface import as_sequence_major, device_facts, launch, plan_for, resident_per_sm
from kernels.plan import MAX_SPLITS

SHAPES = [(Shape("34B", 1, s * 1024, 64, 8), 1) for s in (1, 4, 16, 64, 128)]
SHAPES += [(Shape("34B", 8, 16384, 64, 8), 1), (Shape("34B", 64, 2048, 64, 8), 1), (Shape("34B", 1, 65536, 64, 8), 8),
           (Shape("SmolLM2", 1, 32768, 9, 3, 64), 1)]
# (name, plan fields changed from the int8 cache's plan); int8_dot variants get the wave-filling split count
VARIANTS = [("dot", {}), ("dot reg168", {"maxnreg": 168}), ("dot reg128", {"maxnreg": 128}),
            ("dot n64 w4", {"block_n": 64, "num_warps": 4, "num_stages": 2, "loop_stages": 0}),
            ("dot n64 w4 reg128", {"block_n": 64, "num_warps": 4, "num_stages": 3, "loop_stages": 0, "maxnreg": 128})]
REPLAYS = 40


def wave_plan(plan, items: int, S: int, q, k8, v8, ks, vs, num_sms: int):
    """The plan at the split count that fills one wave of its binary's resident programs (1 if unsplit fills it)."""
    resident = resident_per_sm(q, k8, v8, plan, k_scale=ks, v_scale=vs)
    if plan.num_splits == 1 and items >= resident * num_sms * 0.8:
        return plan, resident
    splits = max(1, min(resident * num_sms // items, MAX_SPLITS, S // (plan.block_n * 2)))
    return dataclasses.replace(plan, num_splits=splits), resident


def wave_variants(base, variants: list[tuple[str, dict]], items: int, S: int, q, k8, v8, ks, vs, num_sms: int,
                  label: str) -> dict:
    """{name: (plan, resident)}: each (name, plan fields) variant of `base` at `wave_plan`'s split count; a variant
    that does not build (registers, shared memory) is reported on stderr and left out."""
    out = {}
    for name, fields in variants:
        try:
            out[name] = wave_plan(dataclasses.replace(base, **fields), items, S, q, k8, v8, ks, vs, num_sms)
        except Exception as e:
            print(f"{label} {name}: {type(e).__name__}: {e}", file=sys.stderr)
    return out


def peer_runs(sets: list, T: int) -> dict:
    """The bf16 kernel's and (one token) cuDNN's runs over `sets`: the peers of every 8-bit table here."""
    runs = {"bf16": lambda: [flash_decode(x.q, x.k, x.v) for x in sets]}
    if T == 1:
        runs["cuDNN"] = lambda: [sdpa("CUDNN_ATTENTION")(x) for x in sets]
    return runs


def quantized_caches(sets: list, dtype: torch.dtype) -> list[tuple]:
    """Per input set, its caches in `dtype` (float8_e4m3fn or int8): (k8, v8, v8 sequence-major, k_scale, v_scale)."""
    caches = []
    for x in sets:
        (k8, ks), (v8, vs) = reference.quantize(x.k, dtype), reference.quantize(x.v, dtype)
        caches.append((k8, v8, as_sequence_major(v8), ks, vs))
    return caches


def input_sets(shape: Shape, T: int) -> list:
    """kernels.bench's input sets rotating past L2 for `shape`, with T query tokens (the verification queries' first
    T) where T > 1."""
    sets = make_input_sets(shape, n_sets_for(shape))
    if T > 1:
        for x in sets:
            x.q = x.q_verify[:, :, :T].contiguous()
    return sets


def main(out: Path) -> int:
    env = environment()
    read_bw, _ = read_bandwidth()
    _, num_sms = device_facts(0)
    rows = []
    for shape, T in SHAPES:
        sets = input_sets(shape, T)
        int8 = [(reference.quantize(x.k, torch.int8), reference.quantize(x.v, torch.int8)) for x in sets]
        s = shape
        base = plan_for(sets[0].q, s.B, s.Hq, s.Hkv, s.S, s.D, T, True)  # e4m3's plan (int8 shared it until now)
        items = s.B * s.Hkv * base.row_blocks(s.Hq // s.Hkv, T)
        (k8, ks), (v8, vs) = int8[0]
        plans = {"int8": base}
        residents = {}
        for name, fields in VARIANTS:
            plans[name], residents[name] = wave_plan(dataclasses.replace(base, int8_dot=True, **fields), items, s.S,
                                                     sets[0].q, k8, v8, ks, vs, num_sms)
        label = f"{s.label}" + (f" T={T}" if T > 1 else "")
        row = {"shape": label, "fp8_mb": s.fp8_bytes / 1e6, "resident": residents, "rel_err": {},
               "plans": {k: dataclasses.asdict(p) for k, p in plans.items()}}
        x0 = sets[0]
        ref = reference.flash_decode(x0.q, k8, v8, k_scale=ks, v_scale=vs).float()
        for name, plan in plans.items():
            out_, _ = launch(x0.q, k8, v8, None, plan, k_scale=ks, v_scale=vs)
            row["rel_err"][name] = ((out_.float() - ref).norm() / ref.norm()).item()
        runs = peer_runs(sets, T)
        runs["fp8"] = lambda: [flash_decode(x.q, x.k8, x.v8, k_scale=x.k_scale, v_scale=x.v_scale) for x in sets]
        # int8's own table entries
        runs["int8 planned"] = lambda: [flash_decode(x.q, k8_, v8_, k_scale=ks_, v_scale=vs_)
                                        for x, ((k8_, ks_), (v8_, vs_)) in zip(sets, int8)]
        for name, plan in plans.items():
            runs[name] = lambda plan=plan: [launch(x.q, k8_, v8_, None, plan, k_scale=ks_, v_scale=vs_)
                                            for x, ((k8_, ks_), (v8_, vs_)) in zip(sets, int8)]
        row |= best_of_rounds(runs, len(sets), REPLAYS)
        rows.append(row)
        print(f"{label}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items() if isinstance(v, float))
              + f"; errors {row['rel_err']}; resident {residents}", file=sys.stderr, flush=True)
        del sets, int8
        torch.cuda.empty_cache()
    names = ["fp8", "int8", "int8 planned"] + [n for n, _ in VARIANTS]
    lines = [f"# int8 dots in the dot kernel: {env['card']}, {env['date']}, torch {env['torch']}, "
             f"triton {env['triton']}; "
             f"read rate {read_bw / 1e12:.2f} TB/s", "",
             "CUDA-graph replays, µs (best of two interleaved rounds); 8-bit rows' read rate on cache plus scales in % "
             "of the read rate; max relative error of the int8 variants against the float32 reference over the "
             "dequantized cache.", "",
             "| shape | bf16 | cuDNN | " + " | ".join(names) + " | best int8 dot / int8 | best int8 dot % read | "
             "fp8 % read | max rel. err |",
             "|---|---|---|" + "---|" * len(names) + "---|---|---|---|"]
    for r in rows:
        best = min(r[n] for n, _ in VARIANTS)
        pct = lambda us: 100 * r["fp8_mb"] / us / (read_bw / 1e12)  # noqa: E731  (MB / µs = TB/s)
        lines.append(f"| {r['shape']} | {r['bf16']:.1f} | {r.get('cuDNN', float('nan')):.1f} | "
                     + " | ".join(f"{r[n]:.1f}" for n in names)
                     + f" | {best / r['int8']:.2f} | {pct(best):.0f}% | {pct(r['fp8']):.0f}% | "
                     f"{max(r['rel_err'].values()):.1e} |")
    save_table(out, "int8-dot", "\n".join(lines) + "\n", {"env": env, "read_bw": read_bw, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "bench/scratch/int8-dot")))

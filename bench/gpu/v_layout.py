"""8-bit caches with V sequence-major ((B, Hkv, D, S) seen as (B, Hkv, S, D)) against V as today (one GPU run).

    PYTHONPATH=. python bench/gpu/v_layout.py OUT_DIR

The dot kernel's P @ V takes V as the MMA's B operand, whose reduction axis is the sequence. With V stored
head-dim-contiguous, an 8-bit tile reaches that operand one byte at a time (`LDS.U8`, 128 a 64-key tile at 34B
128k's int8 plan, sm_90 SASS); stored sequence-major, the bytes of one operand register are adjacent and the tile
goes through `LDSM` (key loop 1,034 -> 737 instructions). This run times both layouts at the committed plans and
at a few plans re-fitted to the sequence-major binaries (split counts filling one wave of their resident programs),
next to the bf16 kernel and cuDNN. Every variant's output is checked against the float32 reference over the
dequantized cache first. CUDA-graph replays over input sets rotating past L2, µs, best of two interleaved rounds;
8-bit read rate on cache plus scales. Writes OUT_DIR/v-layout.{json,md}, prints the table last.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

from kernels import reference
from kernels.bench import Shape, best_of_rounds, environment, read_bandwidth, save_table
from kernels.interface import device_facts, launch, plan_for

from int8_dot import input_sets, peer_runs, quantized_caches, wave_variants  # a sibling script (bench/gpu is the script's directory)

SHAPES = [(Shape("34B", 1, s * 1024, 64, 8), 1) for s in (16, 64, 128)]
SHAPES += [(Shape("34B", 8, 16384, 64, 8), 1), (Shape("34B", 1, 65536, 64, 8), 8),
           (Shape("7B", 1, 65536, 32, 32), 1)]
# plan fields changed from the kind's committed plan, for the sequence-major V (re-fitted to one wave)
VARIANTS = [("seq", {}), ("seq n128", {"block_n": 128}), ("seq w4", {"num_warps": 4}),
            ("seq n128 w4", {"block_n": 128, "num_warps": 4}), ("seq loop4", {"loop_stages": 4}),
            ("seq reg168", {"maxnreg": 168})]
MHA_VARIANTS = [("seq dots", {"row_kernel": False}), ("seq dots w4", {"row_kernel": False, "num_warps": 4})]
KINDS = ("int8", "fp8")
REPLAYS = 40


def main(out: Path) -> int:
    env = environment()
    read_bw, read_all = read_bandwidth()
    _, num_sms = device_facts(0)
    rows = []
    for shape, T in SHAPES:
        s = shape
        sets = input_sets(shape, T)
        label = s.label + (f" T={T}" if T > 1 else "")
        row = {"shape": label, "mb": s.fp8_bytes / 1e6, "rel_err": {}, "plans": {}, "resident": {}}
        runs = peer_runs(sets, T)
        for kind in KINDS:
            caches = quantized_caches(sets, torch.int8 if kind == "int8" else torch.float8_e4m3fn)
            k8, v8, v8t, ks, vs = caches[0]
            base = plan_for(sets[0].q, s.B, s.Hq, s.Hkv, s.S, s.D, T, True, int8=kind == "int8")
            items = s.B * s.Hkv * base.row_blocks(s.Hq // s.Hkv, T)
            plans = {f"{kind} d": (base, False), f"{kind} seq same plan": (base, True)}
            variants = [(f"{kind} {name}", fields) for name, fields in
                        VARIANTS + (MHA_VARIANTS if s.Hq == s.Hkv else [])]
            for name, (plan, resident) in wave_variants(base, variants, items, s.S, sets[0].q, k8, v8t, ks, vs,
                                                        num_sms, label).items():
                plans[name] = (plan, True)
                row["resident"][name] = resident
            ref = reference.flash_decode(sets[0].q, k8, v8, k_scale=ks, v_scale=vs).float()
            for name, (plan, seq) in plans.items():
                got, _ = launch(sets[0].q, k8, v8t if seq else v8, None, plan, k_scale=ks, v_scale=vs)
                row["rel_err"][name] = ((got.float() - ref).norm() / ref.norm()).item()
                row["plans"][name] = dataclasses.asdict(plan)
                runs[name] = lambda plan=plan, seq=seq, caches=caches: [
                    launch(x.q, k8_, v8t_ if seq else v8_, None, plan, k_scale=ks_, v_scale=vs_)
                    for x, (k8_, v8_, v8t_, ks_, vs_) in zip(sets, caches)]
            row[f"{kind} names"] = list(plans)
        row |= best_of_rounds(runs, len(sets), REPLAYS)
        rows.append(row)
        print(f"{label}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items() if isinstance(v, float) and k != "mb")
              + f"; max err {max(row['rel_err'].values()):.1e}", file=sys.stderr, flush=True)
        del sets, runs
        torch.cuda.empty_cache()
    lines = [f"# V sequence-major in 8-bit caches: {env['card']}, {env['date']}, torch {env['torch']}, "
             f"triton {env['triton']}; read rate {read_bw / 1e12:.3f} TB/s "
             f"({', '.join(f'{k} {v / 1e12:.3f}' for k, v in read_all.items())})", "",
             "CUDA-graph replays, µs (best of two interleaved rounds). Per kind: V head-dim-contiguous at the committed "
             "plan (d), sequence-major at that plan, the best sequence-major variant (re-fitted to one wave) and its "
             "name, the best's % of the read rate on cache plus scales, d / best.", "",
             "| shape | bf16 | cuDNN | " + " | ".join(f"{k} d | {k} seq same | {k} best seq | best | % read | "
                                                       f"d / best" for k in KINDS) + " | max rel. err |",
             "|---|---|---|" + "---|---|---|---|---|---|" * len(KINDS) + "---|"]
    for r in rows:
        cells = []
        for kind in KINDS:
            seqs = [n for n in r[f"{kind} names"] if n != f"{kind} d" and n in r]
            best = min(seqs, key=lambda n: r[n])
            pct = 100 * r["mb"] / r[best] / (read_bw / 1e12)
            cells.append(f"{r[f'{kind} d']:.1f} | {r[f'{kind} seq same plan']:.1f} | {r[best]:.1f} | "
                         f"{best.removeprefix(kind + ' ')} | {pct:.0f}% | {r[f'{kind} d'] / r[best]:.2f}x")
        lines.append(f"| {r['shape']} | {r['bf16']:.1f} | {r.get('cuDNN', float('nan')):.1f} | " + " | ".join(cells)
                     + f" | {max(r['rel_err'].values()):.1e} |")
    save_table(out, "v-layout", "\n".join(lines) + "\n", {"env": env, "read_bw": read_bw, "read_all": read_all,
                                                          "rows": rows})
    return 0


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path("bench/scratch/v-layout"),
                        help="the folder for v-layout.json and v-layout.md (default: bench/scratch/v-layout)")
    out = parser.parse_args().out       # (`--help` was taken for the folder to write)
    if not torch.cuda.is_available():   # was an AssertionError's traceback from torch
        parser.exit(2, "v_layout needs a CUDA GPU: it times the kernels there.\n")
    sys.exit(main(out))

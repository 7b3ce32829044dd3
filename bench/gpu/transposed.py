"""8-bit caches read by the transposed kernel (the cache as the first operand of 8-bit warpgroup dots) against the
committed plans (one GPU run).

    PYTHONPATH=. python bench/gpu/transposed.py OUT_DIR

`kernels.split_kv_transposed` computes K @ q^T and V^T @ P with the keys as the dots' 64-row operand, so sm_90's
e4m3 and int8 wgmma read K and V from shared memory as stored; q and P become two 8-bit digits each. This run times
it at a few tilings (split counts filling one wave of their resident programs) next to each kind's committed plan
over the same sequence-major V (what models store), the bf16 kernel and cuDNN. Every variant's output is checked
against the float32 reference over the dequantized cache first. CUDA-graph replays over input sets rotating past L2,
µs, best of two interleaved rounds; 8-bit read rate on cache plus scales. Writes OUT_DIR/transposed.{json,md}, prints
the table last.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

from kernels import reference
from kernels.bench import Shape, best_of_rounds, environment, read_bandwidth, save_table
from kernels.interface import device_facts, heuristic_plan, launch, plan_for
from kernels.plan import plan_launch

from int8_dot import input_sets, peer_runs, quantized_caches, wave_variants  # a sibling script (bench/gpu is the script's directory)

SHAPES = [(Shape("34B", 1, s * 1024, 64, 8), 1) for s in (64, 128)]
SHAPES += [(Shape("34B", 8, 16384, 64, 8), 1), (Shape("34B", 64, 2048, 64, 8), 1),
           (Shape("SmolLM2", 1, 32768, 9, 3, 64), 1)]
# (name, plan fields changed from the kind's committed plan): the transposed kernel's tilings
# (Run 20: call 1 timed n64 s3, n128 s2, n128 s3 and n128 w8 s3, and n128 s3 won everywhere; call 4, register caps
# letting a third program in, which lost; call 6, these, after the V scales' max joined the scores' reduction)
VARIANTS = [("tr n128 s3", {"block_n": 128, "num_warps": 4, "num_stages": 3}),
            ("tr n64 s3", {"block_n": 64, "num_warps": 4, "num_stages": 3}),
            # K and V^T through tensor descriptors (TMA) instead of cp.async through pointers
            ("tr n128 s3 tma", {"block_n": 128, "num_warps": 4, "num_stages": 3, "tma": True}),
            ("tr n64 s3 tma", {"block_n": 64, "num_warps": 4, "num_stages": 3, "tma": True}),
            ("tr n64 s4 tma", {"block_n": 64, "num_warps": 4, "num_stages": 4, "tma": True})]
COMMON = {"transposed": True, "row_kernel": False, "int8_dot": False, "fp8_dot": False, "fp8_early": False,
          "tma": False, "loop_stages": 0, "maxnreg": 0}
KINDS = ("fp8", "int8")
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
            k8, _, v8t, ks, vs = caches[0]
            base = plan_for(sets[0].q, s.B, s.Hq, s.Hkv, s.S, s.D, T, True, int8=kind == "int8")
            items = s.B * s.Hkv * base.row_blocks(s.Hq // s.Hkv, T)
            # what a device without a tuned plan runs: the heuristic with the transposed kernel (sm_90), and before
            plans = {f"{kind} committed": base,
                     f"{kind} heuristic": heuristic_plan(sets[0].q, s.B, s.Hq, s.Hkv, s.S, s.D, T, True),
                     f"{kind} heuristic before": plan_launch(s.B, s.Hq, s.Hkv, s.S, s.D, T=T, scaled=True,
                                                              num_sms=num_sms)}
            variants = [(f"{kind} {name}", COMMON | fields) for name, fields in VARIANTS]
            for name, (plan, resident) in wave_variants(base, variants, items, s.S, sets[0].q, k8, v8t, ks, vs,
                                                        num_sms, label).items():
                plans[name] = plan
                row["resident"][name] = resident
            ref = reference.flash_decode(sets[0].q, k8, v8t, k_scale=ks, v_scale=vs).float()
            for name, plan in plans.items():
                got, _ = launch(sets[0].q, k8, v8t, None, plan, k_scale=ks, v_scale=vs)
                row["rel_err"][name] = ((got.float() - ref).norm() / ref.norm()).item()
                row["plans"][name] = dataclasses.asdict(plan)
                runs[name] = lambda plan=plan, caches=caches: [
                    launch(x.q, k8_, v8t_, None, plan, k_scale=ks_, v_scale=vs_)
                    for x, (k8_, _, v8t_, ks_, vs_) in zip(sets, caches)]
            row[f"{kind} names"] = list(plans)
        row |= best_of_rounds(runs, len(sets), REPLAYS)
        rows.append(row)
        print(f"{label}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items() if isinstance(v, float) and k != "mb")
              + "; errors " + ", ".join(f"{k} {v:.1e}" for k, v in row["rel_err"].items()), file=sys.stderr,
              flush=True)
        del sets, runs
        torch.cuda.empty_cache()
    lines = [f"# The transposed 8-bit kernel: {env['card']}, {env['date']}, torch {env['torch']}, "
             f"triton {env['triton']}; read rate {read_bw / 1e12:.3f} TB/s "
             f"({', '.join(f'{k} {v / 1e12:.3f}' for k, v in read_all.items())})", "",
             "CUDA-graph replays, µs (best of two interleaved rounds), V sequence-major. Per kind: the committed plan, "
             "the best transposed tiling and its name, its % of the read rate on cache plus scales, committed / best.",
             "", "| shape | bf16 | cuDNN | " + " | ".join(f"{k} committed | {k} best transposed | tiling | % read | "
                                                      f"committed / best" for k in KINDS) + " | max rel. err |",
             "|---|---|---|" + "---|---|---|---|---|" * len(KINDS) + "---|"]
    for r in rows:
        cells = []
        for kind in KINDS:
            trs = [n for n in r[f"{kind} names"] if n.startswith(f"{kind} tr") and n in r]
            if not trs:
                cells.append(f"{r[f'{kind} committed']:.1f} | | | |")
                continue
            best = min(trs, key=lambda n: r[n])
            pct = 100 * r["mb"] / r[best] / (read_bw / 1e12)
            cells.append(f"{r[f'{kind} committed']:.1f} | {r[best]:.1f} | {best.removeprefix(kind + ' ')} | "
                         f"{pct:.0f}% | {r[f'{kind} committed'] / r[best]:.2f}x")
        lines.append(f"| {r['shape']} | {r['bf16']:.1f} | {r.get('cuDNN', float('nan')):.1f} | " + " | ".join(cells)
                     + f" | {max(r['rel_err'].values()):.1e} |")
    lines += ["", "Without a tuned plan (kernels.plan.plan_launch): the heuristic now (the transposed kernel on sm_90 for "
              "one token of a GQA model over an 8-bit cache) and before, µs.", "",
              "| shape | " + " | ".join(f"{k} heuristic | {k} before | {k} before / now" for k in KINDS) + " |",
              "|---|" + "---|---|---|" * len(KINDS)]
    for r in rows:
        lines.append(f"| {r['shape']} | " + " | ".join(
            f"{r[f'{k} heuristic']:.1f} | {r[f'{k} heuristic before']:.1f} | "
            f"{r[f'{k} heuristic before'] / r[f'{k} heuristic']:.2f}x" for k in KINDS) + " |")
    save_table(out, "transposed", "\n".join(lines) + "\n", {"env": env, "read_bw": read_bw, "read_all": read_all,
                                                            "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "bench/scratch/transposed")))

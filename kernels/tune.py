"""Plan exploration on a GPU: time candidate launch plans per shape, keep the fastest correct one.

    python -m kernels.bench --tune [--out DIR] [--plans-dir DIR] [--budget-s 330] [--only LABELS]
    python -m kernels.bench --tune-from DIR/kernels-tune.json --plans-dir kernels/plans   # no GPU

For each case (issue 10's nine shapes, fp8 caches at 7B 64k and 34B 128k, 8-token verification
and one-token steps at 7B 16k and 34B 64k), on input sets rotating past L2, as CUDA-graph replays:
1. the peers cuDNN and flash SDPA (bf16), the heuristic plan, and the read-only kernel;
2. stage "splits": split counts from every policy (2 programs per SM, the heuristic; 1, 3 and 4 per
   SM; FlashAttention-3's wave-efficiency rule for 1, 2 and 3 resident programs per SM; unsplit)
   times a few tilings (64 or 128 keys, 4 or 8 warps, 2-3 stages, loop pipelining);
3. stage "options", from the best so far: every tiling, load hints (evict_first, .cg), tensor
   descriptors (TMA) at 2-4 stages, bf16 partials, no PDL, fp8 dots;
4. stage "refine": split counts around the best, and the best two improvements of stage 3 together;
5. the best three, the heuristic and the peers timed again, interleaved, with more replays.
Every variant's output is checked against the reference before it is timed (an incorrect one is
recorded and never chosen). Kernels of a stage are built in parallel first (Triton's
AsyncCompileMode on a thread pool). Each case gets an equal share of the budget left (`budget_s`
in all); past its share a case stops exploring, so the table is always complete.

Writes DIR/kernels-tune.json (every variant: plan, µs, error, ok) and the plan file
<plans-dir>/<device>.json that `kernels.plan.tuned_plan` reads (commit it to kernels/plans/).
Prints per case the best variant and the numbers for the bars, last.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from kernels import bench, reference
from kernels.bench import (VERIFY_TOKENS, Inputs, Shape, bars_table, best_sdpa, compile_in_parallel, graph_replay_us,
                           make_input_sets, n_sets_for, read_once, READ_ONLY_CONFIGS, rel_err, sdpa, shapes)
from kernels.interface import launch
from kernels.plan import (LaunchPlan, MAX_SPLITS, device_slug, plan_launch, splits_for_programs, table_entry,
                          wave_splits)

SWEEP_REPLAYS, FINAL_REPLAYS = 20, 60
PEER_BACKENDS = {"sdpa_cudnn": "CUDNN_ATTENTION", "sdpa_flash": "FLASH_ATTENTION"}
TOLERANCE = 1e-2   # relative L2 error against the float32 reference; bf16 rounding is ~3e-3


@dataclass(frozen=True)
class Case:
    shape: Shape
    T: int = 1
    fp8: bool = False

    @property
    def label(self) -> str:
        return self.shape.label + (" fp8" if self.fp8 else "") + (f" T={self.T}" if self.T > 1 else "")

    @property
    def bytes_read(self) -> int:
        return self.shape.fp8_bytes if self.fp8 else self.shape.kv_bytes

    def args(self, x: Inputs):
        """(q, k, v, scales) of this case from one input set."""
        q = x.q_verify[:, :, :self.T] if self.T > 1 else x.q
        if self.fp8:
            return q, x.k8, x.v8, {"k_scale": x.k_scale, "v_scale": x.v_scale}
        return q, x.k, x.v, {}


def cases() -> list[Case]:
    issue = shapes(quick=True)
    by = {s.label: s for s in shapes()}
    return ([Case(s) for s in issue] + [Case(by["7B B=1 S=64k"], fp8=True), Case(by["34B B=1 S=128k"], fp8=True)]
            + [Case(by[label], T=t) for label in ("7B B=1 S=16k", "34B B=1 S=64k") for t in (1, VERIFY_TOKENS)])


# --- candidate plans ----------------------------------------------------------------------------

def split_policies(case: Case, plan: LaunchPlan, num_sms: int) -> dict[str, int]:
    """Split counts by policy for this plan's tiles (deduplicated: the first policy naming a count keeps it)."""
    s = case.shape
    items = s.B * s.Hkv * plan.row_blocks(s.Hq // s.Hkv, case.T)
    n_blocks = max(1, math.ceil(s.S / plan.block_n))
    found = {"heuristic": plan_launch(s.B, s.Hq, s.Hkv, s.S, s.D, T=case.T, fp8=case.fp8, num_sms=num_sms).num_splits}
    for pps in (1, 3, 4):
        found[f"{pps}/SM"] = splits_for_programs(items, s.S, plan.block_n, num_sms, pps)
    for resident in (1, 2, 3):
        found[f"wave{resident}"] = wave_splits(items, s.S, plan.block_n, num_sms, resident)
    found["unsplit"] = 1
    unique = {}
    for name, n in found.items():
        n = max(1, min(n, n_blocks, MAX_SPLITS))
        if n not in unique.values():
            unique[name] = n
    return unique


def tilings(case: Case, base: LaunchPlan) -> list[dict]:
    """(block_n, warps, stages, loop stages) to try; at least the heuristic's warps (wide row blocks need 8)."""
    w = base.num_warps
    wide = max(8, w)
    if base.block_d > 128:  # shared memory: 32-key tiles only
        return [dict(block_n=32, num_warps=w, num_stages=s, loop_stages=l) for s, l in ((2, 0), (3, 0), (2, 3))]
    return [dict(block_n=64, num_warps=w, num_stages=2, loop_stages=0), dict(block_n=64, num_warps=w, num_stages=3, loop_stages=0),
            dict(block_n=64, num_warps=w, num_stages=2, loop_stages=3), dict(block_n=128, num_warps=wide, num_stages=2, loop_stages=0),
            dict(block_n=128, num_warps=wide, num_stages=3, loop_stages=0), dict(block_n=64, num_warps=w, num_stages=4, loop_stages=0),
            dict(block_n=128, num_warps=w, num_stages=2, loop_stages=3), dict(block_n=32, num_warps=w, num_stages=3, loop_stages=0)]


def with_splits(plan: LaunchPlan, case: Case, num_sms: int, policy: str) -> LaunchPlan:
    return dataclasses.replace(plan, num_splits=split_policies(case, plan, num_sms).get(policy, plan.num_splits))


def stage_splits(case: Case, base: LaunchPlan, num_sms: int) -> list[tuple[str, LaunchPlan]]:
    out = []
    for tiling in tilings(case, base)[:4]:
        tiled = dataclasses.replace(base, **tiling)
        for policy, n in split_policies(case, tiled, num_sms).items():
            out.append((f"{policy} n{tiling['block_n']} w{tiling['num_warps']} s{tiling['num_stages']}"
                        f"{' loop' + str(tiling['loop_stages']) if tiling['loop_stages'] else ''}",
                        dataclasses.replace(tiled, num_splits=n)))
    return out


def stage_options(case: Case, best: LaunchPlan, num_sms: int) -> list[tuple[str, LaunchPlan]]:
    out = []
    for tiling in tilings(case, best)[4:]:
        tiled = dataclasses.replace(best, **tiling)
        out.append((f"tiles n{tiling['block_n']} w{tiling['num_warps']} s{tiling['num_stages']} loop{tiling['loop_stages']}",
                    dataclasses.replace(tiled, num_splits=max(1, best.num_splits * best.block_n // tiled.block_n))))
    r = dataclasses.replace
    out += [("evict_first", r(best, eviction="evict_first")), (".cg", r(best, cache_modifier=".cg")),
            ("evict_first .cg", r(best, eviction="evict_first", cache_modifier=".cg")),
            ("loop3", r(best, loop_stages=3)), ("loop4", r(best, loop_stages=4)),
            ("stages3", r(best, num_stages=3)), ("stages4", r(best, num_stages=4)),
            ("tma", r(best, tma=True)), ("tma stages3", r(best, tma=True, num_stages=3)),
            ("tma stages4", r(best, tma=True, num_stages=4)),
            ("bf16 partials", r(best, partials="bfloat16")), ("no pdl", r(best, pdl=False)),
            ("warps " + str(12 - best.num_warps), r(best, num_warps=12 - best.num_warps))]
    if case.fp8:
        out.append(("fp8 dot", r(best, fp8_dot=True)))
    return [(name, plan) for name, plan in out if plan != best]


def stage_refine(best: LaunchPlan, improvements: list[tuple[str, LaunchPlan]], n_blocks: int) -> list[tuple[str, LaunchPlan]]:
    out = []
    for factor in (0.5, 0.75, 1.25, 1.5, 2.0):
        n = max(1, min(MAX_SPLITS, n_blocks, round(best.num_splits * factor)))
        if n != best.num_splits:
            out.append((f"splits x{factor}", dataclasses.replace(best, num_splits=n)))
    if len(improvements) >= 2:  # the two best option changes together
        (name_a, a), (name_b, b) = improvements[:2]
        changed = {f.name: getattr(b, f.name) for f in dataclasses.fields(b) if getattr(b, f.name) != getattr(best, f.name)}
        out.append((f"{name_a} + {name_b}", dataclasses.replace(a, **changed)))
    return out


# --- measuring ----------------------------------------------------------------------------------

class Clock:
    def __init__(self, budget_s: float):
        self.start, self.budget_s = time.perf_counter(), budget_s

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)


def measure_case(case: Case, num_sms: int, clock: Clock, log) -> dict:
    s = case.shape
    sets = make_input_sets(s, n_sets_for(s))
    q, k, v, scales = case.args(sets[0])
    ref = reference.flash_decode(q, k, v, **scales)
    heuristic = plan_launch(s.B, s.Hq, s.Hkv, s.S, s.D, T=case.T, fp8=case.fp8, num_sms=num_sms)
    variants: list[dict] = []
    seen: dict[LaunchPlan, dict] = {}

    def ours(plan):
        def run(x):
            q_, k_, v_, scales_ = case.args(x)
            return launch(q_, k_, v_, None, plan, **scales_)
        return run

    def timed(label: str, stage: str, plan: LaunchPlan, replays=SWEEP_REPLAYS) -> dict:
        if plan in seen:
            return seen[plan]
        entry = {"label": label, "stage": stage, "plan": dataclasses.asdict(plan)}
        try:
            out, _ = launch(q, k, v, None, plan, **scales)
            entry["rel_err"] = rel_err(out, ref)
            entry["ok"] = bool(not out.isnan().any().item() and entry["rel_err"] < TOLERANCE)
            if not out.isnan().any().item():  # timed even when less accurate (fp8 dots): never chosen then
                fn = ours(plan)
                entry["us"] = graph_replay_us(lambda: [fn(x) for x in sets], replays) / len(sets)
        except Exception as error:
            entry |= {"ok": False, "error": f"{type(error).__name__}: {str(error)[:300]}"}
            if bench.DEVICE == "cuda":
                torch.cuda.synchronize()
        variants.append(entry)
        seen[plan] = entry
        return entry

    def run_stage(stage: str, candidates: list[tuple[str, LaunchPlan]]) -> None:
        if clock.left() <= 0:
            return
        built = compile_in_parallel([lambda p=p: launch(q, k, v, None, p, compile_only=True, **scales)
                                     for _, p in candidates if p not in seen])
        log(f"  {stage}: {len(candidates)} candidates, built in {built:.1f} s")
        for label, plan in candidates:
            if clock.left() <= 0:
                log("  budget spent: stopping this case's exploration")
                return
            timed(label, stage, plan)

    def best_so_far() -> tuple[LaunchPlan, float]:
        ok = [e for e in variants if e["ok"] and e.get("us")]
        top = min(ok, key=lambda e: e["us"])
        return LaunchPlan(**top["plan"]), top["us"]

    peers = {}
    for name, backend in PEER_BACKENDS.items():
        try:
            fn = sdpa(backend)
            peers[name] = graph_replay_us(lambda fn=fn: [fn(x) for x in sets], SWEEP_REPLAYS) / len(sets)
        except Exception as error:
            log(f"  {name}: {type(error).__name__}: {str(error)[:200]}")
    read_floor = min(graph_replay_us(lambda c=c: [read_once(x.k, x.v, *c) for x in sets], SWEEP_REPLAYS) / len(sets)
                     for c in READ_ONLY_CONFIGS)
    timed("heuristic", "baseline", heuristic)
    run_stage("splits", stage_splits(case, heuristic, num_sms))
    if any(e["ok"] and e.get("us") for e in variants):
        best, best_us = best_so_far()
        run_stage("options", stage_options(case, best, num_sms))
        improvements = sorted(((e["label"], LaunchPlan(**e["plan"])) for e in variants
                               if e["stage"] == "options" and e["ok"] and e.get("us") and e["us"] < best_us),
                              key=lambda item: seen[item[1]]["us"])
        best, _ = best_so_far()
        run_stage("refine", stage_refine(best, improvements, max(1, math.ceil(s.S / best.block_n))))

    # Final round: the best three, the heuristic and the peers again, interleaved, more replays.
    finalists = sorted((e for e in variants if e["ok"] and e.get("us")), key=lambda e: e["us"])[:3]
    names = [f"#{i + 1} {e['label']}" for i, e in enumerate(finalists)]
    contenders = {name: ours(LaunchPlan(**e["plan"])) for name, e in zip(names, finalists)}
    contenders["heuristic"] = ours(heuristic)
    contenders |= {name: sdpa(PEER_BACKENDS[name]) for name in peers}
    final = {}
    for _ in range(2):
        for name, fn in contenders.items():
            try:
                us = graph_replay_us(lambda fn=fn: [fn(x) for x in sets], FINAL_REPLAYS) / len(sets)
            except Exception as error:
                log(f"  {name}: {type(error).__name__}: {str(error)[:200]}")
                us = float("nan")
            final[name] = min(final.get(name, us), us)
    del sets
    if bench.DEVICE == "cuda":
        torch.cuda.empty_cache()
    ranked = sorted(zip(names, finalists), key=lambda item: final[item[0]])
    best_name, best = ranked[0] if ranked else (None, None)
    best_us = final[best_name] if best else float("nan")
    peer_final = {name: final[name] for name in peers}
    result = {"case": case.label, "shape": s.__dict__ | {"label": s.label}, "T": case.T, "fp8": case.fp8,
              "bytes_read": case.bytes_read, "kv_mb": s.kv_bytes / 1e6, "read_floor_us": read_floor,
              "peers_us": peer_final, "heuristic_us": final["heuristic"], "heuristic_plan": dataclasses.asdict(heuristic),
              "best": best and {"label": best["label"], "plan": best["plan"], "us": best_us, "rel_err": best["rel_err"]},
              "final_round_us": final, "variants": variants,
              "n_correct": sum(e["ok"] for e in variants), "n_variants": len(variants)}
    result["read_tb_s"] = case.bytes_read / (best_us * 1e-6) / 1e12
    result["vs_best_sdpa"] = best_sdpa(peer_final) / best_us
    log(f"  best {best_us:.1f} µs ({best and best['label']}), heuristic {final['heuristic']:.1f}, "
        f"cuDNN {peer_final.get('sdpa_cudnn', float('nan')):.1f}, flash {peer_final.get('sdpa_flash', float('nan')):.1f}")
    return result


# --- the plan file ------------------------------------------------------------------------------

def plans_from_sweep(sweep: dict, directory: Path) -> Path:
    """Write <directory>/<device>.json from a sweep: each case's best correct plan, keyed by shape,
    with the device facts it was measured on and what it measured."""
    env = sweep["env"]
    entries = []
    for result in sweep["cases"]:
        if not result.get("best"):
            continue
        shape, plan = result["shape"], LaunchPlan(**result["best"]["plan"])
        entries.append(table_entry(shape["B"], shape["Hq"], shape["Hkv"], shape["S"], shape["D"], result["T"],
                                   result["fp8"], plan, env["sms"],
                                   {"us": result["best"]["us"], "heuristic_us": result["heuristic_us"],
                                    "peers_us": result["peers_us"], "label": result["best"]["label"]}))
    table = {"device": {"name": env["card"], "sms": env["sms"], "l2_bytes": env.get("l2_bytes"),
                        "memory_bytes": env.get("memory_bytes"), "read_bandwidth": env.get("read_bandwidth"),
                        "copy_bandwidth": env.get("copy_bandwidth")},
             "measured": {"date": env["date"], "torch": env["torch"], "triton": env["triton"]},
             "generated_by": "python -m kernels.bench --tune", "entries": entries}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{device_slug(env['card'])}.json"
    path.write_text(json.dumps(table, indent=1) + "\n")
    return path


def summary(env: dict, results: list[dict]) -> str:
    nan = float("nan")
    lines = [f"Plan exploration on {env['card']} ({env['sms']} SMs), {env['date']}: copy {env['copy_bandwidth'] / 1e12:.2f} TB/s, "
             f"read {env['read_bandwidth'] / 1e12:.2f} TB/s. Graph replays, µs (final interleaved round).",
             "",
             "| case | K+V MB | read-only | heuristic | best | best variant | cuDNN | SDPA flash | best SDPA / best | TB/s | variants ok |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        best = r["best"] or {}
        lines.append(f"| {r['case']} | {r['kv_mb']:.0f} | {r['read_floor_us']:.1f} | {r['heuristic_us']:.1f} | "
                     f"{best.get('us', nan):.1f} | {best.get('label', '-')} | {r['peers_us'].get('sdpa_cudnn', nan):.1f} | "
                     f"{r['peers_us'].get('sdpa_flash', nan):.1f} | {r['vs_best_sdpa']:.2f}x | {r['read_tb_s']:.2f} | "
                     f"{r['n_correct']}/{r['n_variants']} |")
    return "\n".join(lines) + "\n"


def tune_bars(results: list[dict], read_bw: float) -> list[dict]:
    """The bars these cases can answer, with each case's best plan standing in for flash_decode."""
    by = {r["case"]: r for r in results}
    out = []

    def add(bar, measured, met):
        out.append({"bar": bar, "measured": measured, "met": met})

    bf16 = [r for r in results if not r["fp8"] and r["T"] == 1]
    slower = [f"{r['case']} {r['vs_best_sdpa']:.2f}x" for r in bf16 if r["vs_best_sdpa"] < 1]
    add("bf16 cases at least as fast as the best SDPA backend", f"{len(bf16) - len(slower)}/{len(bf16)}"
        + (f"; slower: {', '.join(slower)}" if slower else ""), not slower)
    big = [r for r in bf16 if r["kv_mb"] >= 256]
    add("K+V >= 256 MB: read rate >= 4.45 TB/s", ", ".join(f"{r['case']} {r['read_tb_s']:.2f}" for r in big),
        all(r["read_tb_s"] >= 4.45 for r in big))
    mid = [r for r in bf16 if 60 <= r["kv_mb"] <= 70]
    add("67 MB rows: <= 23 µs", ", ".join(f"{r['case']} {r['best']['us']:.1f}" for r in mid if r["best"]),
        all(r["best"] and r["best"]["us"] <= 23 for r in mid))
    for label in ("34B B=1 S=1k", "34B B=1 S=4k"):
        r = by.get(label)
        if r and r["best"]:
            ratio = r["peers_us"].get("sdpa_cudnn", float("nan")) / r["best"]["us"]
            add(f"{label}: >= 1.25x cuDNN", f"{ratio:.2f}x", ratio >= 1.25)
    for label, bar in (("7B B=1 S=64k fp8", 1.6), ("34B B=1 S=128k fp8", 1.4)):
        r = by.get(label)
        if r and r["best"]:
            add(f"{label}: >= {bar}x the best bf16 SDPA", f"{r['vs_best_sdpa']:.2f}x; "
                f"{100 * r['read_tb_s'] * 1e12 / read_bw:.0f}% of the read rate", r["vs_best_sdpa"] >= bar)
    for label in ("7B B=1 S=16k", "34B B=1 S=64k"):
        one, many = by.get(label), by.get(f"{label} T={VERIFY_TOKENS}")
        if one and many and one["best"] and many["best"]:
            ratio = many["best"]["us"] / one["best"]["us"]
            add(f"{label}: {VERIFY_TOKENS}-token verification <= 1.2x one token", f"{ratio:.2f}x", ratio <= 1.2)
    return out


def explore(env: dict, out: Path, plans_dir: Path, budget_s: float, log, only=()) -> int:
    num_sms = env["sms"]
    clock = Clock(budget_s)
    results = []
    todo = [c for c in cases() if not only or any(w in c.label for w in only)]
    path = None
    for i, case in enumerate(todo):
        # Each case gets an equal share of what is left, so a slow early case cannot starve the rest.
        share = Clock(max(5.0, clock.left() / (len(todo) - i)))
        log(f"{case.label}: {case.bytes_read / 1e6:.0f} MB read, {share.left():.0f} s of {clock.left():.0f} s left")
        results.append(measure_case(case, num_sms, share, log))
        sweep = {"env": env, "cases": results, "bars": tune_bars(results, env["read_bandwidth"])}
        (out / "kernels-tune.json").write_text(json.dumps(sweep, indent=1))  # a run cut short keeps its results
        path = plans_from_sweep(sweep, plans_dir)
    table = summary(env, results)
    (out / "kernels-tune.md").write_text(table + "\n## Bars\n\n" + bars_table(sweep["bars"]))
    print(table)
    print(f"Plan file: {path} (copy it to kernels/plans/ and commit). Every variant: {out / 'kernels-tune.json'}.")
    print(f"Bars with each case's best plan ({env['card']}):")
    print(bars_table(sweep["bars"]))
    return 0

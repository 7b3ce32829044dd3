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

A kernel timed alone is not a kernel inside the decode step, where its neighbours share the SMs: plans for
the shapes the step runs are checked there too (`python -m models.step_plans`, which can write the winner
into the same plan file; bench/results/NOTES.md, Runs 18-19).
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
from kernels.interface import heuristic_plan, launch, resident_of
from kernels.plan import (LaunchPlan, MAX_SPLITS, describe, device_slug, load_table, plan_launch, save_table,
                          shape_key, splits_for_programs, table_entry, tuned_plan, wave_splits)

SWEEP_REPLAYS, FINAL_REPLAYS = 20, 60
NOISE = 0.005      # the local search moves on only for a gain above this fraction (replay-to-replay noise)
MAX_LOCAL_ROUNDS = 12
PEER_BACKENDS = {"sdpa_cudnn": "CUDNN_ATTENTION", "sdpa_flash": "FLASH_ATTENTION"}
TOLERANCE = 1e-2   # relative L2 error against the float32 reference; bf16 rounding is ~3e-3


@dataclass(frozen=True)
class Case:
    shape: Shape
    T: int = 1
    fp8: bool = False   # an 8-bit cache: e4m3, or int8 with `int8`
    int8: bool = False

    @property
    def label(self) -> str:
        kind = " int8" if self.int8 else " fp8" if self.fp8 else ""
        return self.shape.label + kind + (f" T={self.T}" if self.T > 1 else "")

    @property
    def bytes_read(self) -> int:
        return self.shape.fp8_bytes if self.fp8 else self.shape.kv_bytes

    def args(self, x: Inputs):
        """(q, k, v, scales) of this case from one input set."""
        q = x.q_verify[:, :, :self.T] if self.T > 1 else x.q
        if self.int8:
            return q, x.k_i8, x.v_i8, {"k_scale": x.k_i8_scale, "v_scale": x.v_i8_scale}
        if self.fp8:
            return q, x.k8, x.v8, {"k_scale": x.k_scale, "v_scale": x.v_scale}
        return q, x.k, x.v, {}


FP8_BAR_MB = 128  # the fp8 read-rate bar covers caches of at least this many MB (bf16 K+V)


def cases(which: str = "issue") -> list[Case]:
    """"issue": issue 10's nine shapes, fp8 at 7B 64k and 34B 128k, one and 8 tokens at 7B 16k and
    34B 64k. "all": every shape of the final sweep, fp8 wherever the read-rate bar applies, and the
    8-token rows of the verification bars (`explore` orders them by `case_weight`). "8bit": both 8-bit
    caches at the shapes where they run the dot kernel (the 34B and SmolLM2 rows, 8 tokens)."""
    by = {s.label: s for s in shapes()}
    bar_pairs = [Case(by[label], T=t) for label in ("7B B=1 S=16k", "34B B=1 S=64k") for t in (1, VERIFY_TOKENS)]
    if which == "8bit":
        gqa = [s for s in shapes() if s.model in ("34B", "SmolLM2")]
        verify = [by["34B B=1 S=64k"], by["7B B=1 S=16k"]]
        return ([Case(s, fp8=True, int8=int8) for s in gqa for int8 in (True, False)]
                + [Case(s, T=VERIFY_TOKENS, fp8=True, int8=int8) for s in verify for int8 in (True, False)])
    if which == "issue":
        return ([Case(s) for s in shapes(quick=True)]
                + [Case(by["7B B=1 S=64k"], fp8=True), Case(by["34B B=1 S=128k"], fp8=True)] + bar_pairs)
    every = [Case(s) for s in shapes()] + [Case(s, fp8=True) for s in shapes() if s.kv_bytes >= FP8_BAR_MB * 1e6]
    return every + [c for c in bar_pairs if c.T > 1]


# --- candidate plans ----------------------------------------------------------------------------

def split_policies(case: Case, plan: LaunchPlan, num_sms: int, resident: int = 0) -> dict[str, int]:
    """Split counts by policy for this plan's tiles (deduplicated: the first policy naming a count keeps
    it). `resident`, the programs of this plan's binary an SM holds at once (0: unknown), adds the
    counts that fill exactly one wave of them, or of one program fewer per SM."""
    s = case.shape
    items = s.B * s.Hkv * plan.row_blocks(s.Hq // s.Hkv, case.T)
    n_blocks = max(1, math.ceil(s.S / plan.block_n))
    found = {"heuristic": plan_launch(s.B, s.Hq, s.Hkv, s.S, s.D, T=case.T, scaled=case.fp8, num_sms=num_sms).num_splits}
    for r in (resident, resident - 1):
        if r > 0:
            found[f"full wave of {r}"] = max(1, r * num_sms // items)
    for pps in (1, 2, 3, 4):
        found[f"{pps}/SM"] = splits_for_programs(items, s.S, plan.block_n, num_sms, pps)
    for r in (1, 2, 3):
        found[f"wave{r}"] = wave_splits(items, s.S, plan.block_n, num_sms, r)
    found["unsplit"] = 1
    unique = {}
    for name, n in found.items():
        n = max(1, min(n, n_blocks, MAX_SPLITS))
        if n not in unique.values():
            unique[name] = n
    return unique


def _tiling(block_n: int, num_warps: int, num_stages: int, loop_stages: int, **options) -> dict:
    return dict(block_n=block_n, num_warps=num_warps, num_stages=num_stages, loop_stages=loop_stages, **options)


def tilings(case: Case) -> list[dict]:
    """(keys, warps, stages, loop stages, register cap, fp8 conversion) to try, roughly most promising
    first: run 1 (bench/results/h200-explore-1) and the sm_90 SASS counts in bench/results/NOTES.md."""
    if case.shape.D > 128:  # shared memory: 32-key tiles only
        return [_tiling(32, 4, s, l) for s, l in ((2, 0), (3, 0), (2, 3))]
    w = 8 if case.shape.Hq // case.shape.Hkv * case.T > 16 else 4  # 64-row blocks want 8 warps
    out = [_tiling(64, w, 2, 3), _tiling(64, w, 2, 0), _tiling(128, w, 2, 3), _tiling(64, w, 4, 0),
           _tiling(128, 8, 2, 3), _tiling(64, 2 * w, 2, 3), _tiling(32, w, 3, 0)]
    if w == 4:
        out.append(_tiling(64, 2, 2, 3))
    if case.int8:  # int8 scores by int8 dots: 6 small programs (as e4m3's best) with a register cap, or 4
        out += [_tiling(32, 2, 3, 0, int8_dot=True, maxnreg=168), _tiling(32, 2, 3, 0, int8_dot=True),
                _tiling(64, 4, 2, 0, int8_dot=True), _tiling(64, 4, 3, 0, int8_dot=True, maxnreg=128),
                _tiling(32, 2, 3, 0)]
    elif case.fp8:  # a 4th program per SM under a register cap; 6 small ones; the inline-PTX conversion
        out += [_tiling(64, 4, 2, 0, maxnreg=128), _tiling(32, 2, 3, 0), _tiling(64, 4, 2, 3, fp8_early=True)]
    if case.fp8 and case.shape.Hq > case.shape.Hkv:  # 8-bit GQA (V sequence-major): the transposed kernel's wgmma
        # (128-key tiles at 3 stages won every row of Run 20; 2 stages, 8 warps and register caps lost. 256-key tiles,
        # one program a SM at half the per-tile reductions a key, were 3% faster at 34B 128k on an H100, Run 53)
        out += [_tiling(128, 4, 3, 0, transposed=True), _tiling(64, 4, 3, 0, transposed=True),
                _tiling(128, 4, 3, 0, transposed=True, tma=True), _tiling(256, 4, 3, 0, transposed=True),
                _tiling(256, 8, 3, 0, transposed=True)]
    if case.shape.Hq == case.shape.Hkv and case.T == 1:  # one row per KV head: the CUDA-core kernel, pipelined
        out += [_tiling(64, 4, 2, 3, row_kernel=True), _tiling(64, 2, 2, 3, row_kernel=True),  # loads or not
                _tiling(32, 2, 2, 4, row_kernel=True), _tiling(128, 4, 2, 3, row_kernel=True),
                _tiling(64, 4, 2, 0, row_kernel=True)]
    return out


def neighbours(case: Case, best: LaunchPlan, resident: int, num_sms: int) -> list[tuple[str, LaunchPlan]]:
    """One change of the best plan along every axis: the local search's next candidates. Applied to
    the best found so far, round after round, they reach combinations of options."""
    r = dataclasses.replace
    s = case.shape
    out = []
    for factor in (0.5, 0.75, 1.25, 1.5, 2.0):
        out.append((f"splits x{factor}", r(best, num_splits=round(best.num_splits * factor))))
    out += [(f"splits {d:+d}", r(best, num_splits=best.num_splits + d)) for d in (-1, 1)]
    out += [(f"splits {name}", r(best, num_splits=n))
            for name, n in split_policies(case, best, num_sms, resident).items()]
    for block_n in (32, 64, 128) + ((256,) if best.transposed else ()):  # (256: only the transposed kernel's fit)
        out.append((f"n{block_n}", r(best, block_n=block_n, num_splits=max(1, best.num_splits))))
    out += [(f"w{w}", r(best, num_warps=w)) for w in (2, 4, 8)]
    out += [(f"stages{n}", r(best, num_stages=n)) for n in (2, 3, 4)]
    out += [(f"loop{n}", r(best, loop_stages=n)) for n in (0, 3, 4)]
    out += [("evict_first", r(best, eviction="" if best.eviction else "evict_first")),
            (".cg", r(best, cache_modifier="" if best.cache_modifier else ".cg")),
            ("partials", r(best, partials="float32" if best.partials == "bfloat16" else "bfloat16")),
            ("tma", r(best, tma=not best.tma))]  # (the dot kernel loads a sequence-major V through pointers all the same)
    # (no "pdl" off: timed alone a dependent launch costs 1-2 µs, which the search would save, but inside the
    # decode step it lets the kernel start under the one before: the 34B 128k fp8 step 7% faster with it, Run 17)
    if resident:  # a register cap that lets one more program in (if shared memory allows)
        cap = 65536 // ((resident + 1) * best.num_warps * 32) // 8 * 8
        if cap >= 64:
            out.append((f"maxnreg {cap}", r(best, maxnreg=min(cap, 255))))
    out.append(("maxnreg off", r(best, maxnreg=0)))
    if case.fp8 and s.Hq > s.Hkv:  # the transposed kernel replaces the dot kernel's conversion options
        out.append(("transposed", r(best, transposed=not best.transposed)))
    if case.int8 and not best.row_kernel and not best.transposed:
        out.append(("int8 dot", r(best, int8_dot=not best.int8_dot)))
    elif case.fp8 and not best.row_kernel and not best.transposed:
        out += [("fp8 early", r(best, fp8_early=not best.fp8_early)), ("fp8 dot", r(best, fp8_dot=not best.fp8_dot))]
    if s.Hq == s.Hkv and case.T == 1:
        out.append(("row kernel", r(best, row_kernel=not best.row_kernel, fp8_early=False, fp8_dot=False)))
    valid = []
    for name, plan in out:
        plan = r(plan, num_splits=max(1, min(plan.num_splits, MAX_SPLITS, max(1, math.ceil(s.S / plan.block_n)))))
        fits = plan.block_d <= 128 or plan.block_n <= 32
        if plan != best and fits and (plan.num_splits > 1 or plan.partials == "float32"):
            valid.append((name, plan))
    return valid


# --- measuring ----------------------------------------------------------------------------------

class Clock:
    def __init__(self, budget_s: float):
        self.start, self.budget_s = time.perf_counter(), budget_s

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)


class _Exploration:
    """One case's search state: its input sets, the float32 reference, every variant timed so far (each
    plan once), and the programs per SM of each tiling's binary."""

    def __init__(self, case: Case, clock: Clock, log):
        self.case, self.clock, self.log = case, clock, log
        s = case.shape
        self.sets = make_input_sets(s, n_sets_for(s))
        if case.int8:
            self.sets = [x.with_int8() for x in self.sets]
        self.q, self.k, self.v, self.scales = case.args(self.sets[0])
        self.ref = reference.flash_decode(self.q, self.k, self.v, **self.scales)
        self.heuristic = heuristic_plan(self.q, s.B, s.Hq, s.Hkv, s.S, s.D, case.T, case.fp8)
        self.variants: list[dict] = []
        self.seen: dict[LaunchPlan, dict] = {}
        self.residency: dict[LaunchPlan, int] = {}  # by plan with num_splits=1 (the split count is a runtime argument)

    def replay_us(self, fn, replays: int) -> float:
        """Graph-replay µs of `fn` over one input set, averaged over the rotated sets."""
        return graph_replay_us(lambda: [fn(x) for x in self.sets], replays) / len(self.sets)

    def ours(self, plan: LaunchPlan):
        def run(x):
            q, k, v, scales = self.case.args(x)
            return launch(q, k, v, None, plan, **scales)
        return run

    def build(self, plan: LaunchPlan):
        return launch(self.q, self.k, self.v, None, plan, compile_only=True, **self.scales)

    def resident(self, plan: LaunchPlan) -> int:
        key = dataclasses.replace(plan, num_splits=1)
        if key not in self.residency:
            try:
                self.residency[key] = resident_of(self.build(plan), plan.num_warps) if bench.DEVICE == "cuda" else 0
            except Exception:
                self.residency[key] = 0
        return self.residency[key]

    def timed(self, label: str, stage: str, plan: LaunchPlan) -> dict:
        if plan in self.seen:
            return self.seen[plan]
        entry = {"label": label, "stage": stage, "plan": dataclasses.asdict(plan)}
        try:
            out, _ = launch(self.q, self.k, self.v, None, plan, **self.scales)
            entry["rel_err"] = rel_err(out, self.ref)
            entry["ok"] = bool(not out.isnan().any().item() and entry["rel_err"] < TOLERANCE)
            if not out.isnan().any().item():  # timed even when less accurate (fp8 dots): never chosen then
                entry["us"] = self.replay_us(self.ours(plan), SWEEP_REPLAYS)
            entry["resident"] = self.resident(plan)
        except Exception as error:
            entry |= {"ok": False, "error": f"{type(error).__name__}: {str(error)[:300]}"}
            if bench.DEVICE == "cuda":
                torch.cuda.synchronize()
        self.variants.append(entry)
        self.seen[plan] = entry
        return entry

    def run_stage(self, stage: str, candidates: list[tuple[str, LaunchPlan]]) -> list[dict]:
        """Time the candidates not seen yet; returns the entries of all that were timed, then or before."""
        new = [(label, plan) for label, plan in candidates if plan not in self.seen]
        if self.clock.left() > 0 and new:
            built = compile_in_parallel([lambda p=p: self.build(p) for _, p in new])
            self.log(f"  {stage}: {len(new)} new candidates, built in {built:.1f} s")
            for label, plan in new:
                if self.clock.left() <= 0:
                    self.log("  budget spent: stopping this case's exploration")
                    break
                self.timed(label, stage, plan)
        return [self.seen[plan] for _, plan in candidates if plan in self.seen]

    def best_measured(self, tiling: LaunchPlan | None, entries=None) -> tuple[LaunchPlan, float] | None:
        """The fastest correct plan among `entries` (default: all so far), of `tiling` if given."""
        ok = [e for e in (self.variants if entries is None else entries) if e["ok"] and e.get("us") and
              (tiling is None or dataclasses.replace(LaunchPlan(**e["plan"]), num_splits=1) == tiling)]
        if not ok:
            return None
        top = min(ok, key=lambda e: e["us"])
        return LaunchPlan(**top["plan"]), top["us"]

    def peers(self) -> dict[str, float]:
        """SDPA backends' µs on the same inputs (a backend that cannot run the case is left out)."""
        peers = {}
        for name, backend in PEER_BACKENDS.items():
            try:
                peers[name] = self.replay_us(sdpa(backend), SWEEP_REPLAYS)
            except Exception as error:
                self.log(f"  {name}: {type(error).__name__}: {str(error)[:200]}")
        return peers

    def grid(self, num_sms: int) -> list[LaunchPlan]:
        """Tilings, each at the heuristic's split count and at one full wave of the programs per SM its
        binary allows; then every split policy for each tiling, best tilings first. Returns the tilings
        (num_splits=1) by their best time."""
        case, heuristic = self.case, self.heuristic
        tiled = [(describe(dataclasses.replace(heuristic, **t)).split(" ", 2)[2], dataclasses.replace(heuristic, **t))
                 for t in tilings(case)]
        compile_in_parallel([lambda p=p: self.build(p) for _, p in tiled])
        first = []
        for label, plan in tiled:
            policies = split_policies(case, plan, num_sms, self.resident(plan))
            first += [(f"{label} {name}", dataclasses.replace(plan, num_splits=n)) for name, n in policies.items()
                      if name == "heuristic" or name.startswith("full wave")][:2]
        self.run_stage("tilings", first)
        by_tiling = {}
        for e in self.variants:
            if e["ok"] and e.get("us") and e["stage"] == "tilings":
                key = dataclasses.replace(LaunchPlan(**e["plan"]), num_splits=1)
                by_tiling[key] = min(by_tiling.get(key, e["us"]), e["us"])
        ranked = sorted(by_tiling, key=by_tiling.get)
        self.run_stage("splits", [(f"{describe(plan).split(' ', 2)[2]} {policy}", dataclasses.replace(plan, num_splits=n))
                                  for plan in ranked
                                  for policy, n in split_policies(case, plan, num_sms, self.resident(plan)).items()])
        return ranked

    def local_search(self, starts: list[LaunchPlan | None], num_sms: int) -> int:
        """All one-change neighbours of the best, again from each new best; once that converges, again from
        the best plan of each tiling in `starts` (None: the best plan so far), while time is left. Returns
        the rounds run."""
        rounds = 0
        for start in starts:
            current = self.best_measured(start)
            while current and self.clock.left() > 0 and rounds < MAX_LOCAL_ROUNDS:
                rounds += 1
                candidates = neighbours(self.case, current[0], self.resident(current[0]), num_sms)
                step = self.best_measured(None, self.run_stage(f"local {rounds}", candidates))
                if not step or step[1] > current[1] * (1 - NOISE):  # nothing better than noise: converged
                    break
                current = step
        return rounds

    def final_round(self, peer_names) -> tuple[list[dict], list[str], dict[str, float]]:
        """The best three, the heuristic and the peers again, interleaved, more replays: the finalists'
        entries, their names, and every contender's best µs by name."""
        finalists = sorted((e for e in self.variants if e["ok"] and e.get("us")), key=lambda e: e["us"])[:3]
        names = [f"#{i + 1} {e['label']}" for i, e in enumerate(finalists)]
        contenders = {name: self.ours(LaunchPlan(**e["plan"])) for name, e in zip(names, finalists)}
        contenders["heuristic"] = self.ours(self.heuristic)
        contenders |= {name: sdpa(PEER_BACKENDS[name]) for name in peer_names}
        final = {}
        for _ in range(2):
            for name, fn in contenders.items():
                try:
                    us = self.replay_us(fn, FINAL_REPLAYS)
                except Exception as error:
                    self.log(f"  {name}: {type(error).__name__}: {str(error)[:200]}")
                    us = float("nan")
                final[name] = min(final.get(name, us), us)
        return finalists, names, final


def measure_case(case: Case, num_sms: int, clock: Clock, log, start_plans=(), grid: bool = True) -> dict:
    """Explore plans for one case within `clock`: the baselines (the heuristic, and `start_plans`,
    e.g. the committed table's plan), a grid of tilings x split counts (fitted to each binary's
    programs per SM; skipped with `grid` False, for a shape whose measured plan is the start), then
    a local search from the best; then a final interleaved round."""
    s, x = case.shape, _Exploration(case, clock, log)
    peers = x.peers()
    read_floor = min(x.replay_us(lambda inputs, c=c: read_once(inputs.k, inputs.v, *c), SWEEP_REPLAYS)
                     for c in READ_ONLY_CONFIGS)
    x.timed("heuristic", "baseline", x.heuristic)
    for label, plan in start_plans:
        x.timed(label, "baseline", plan)
    ranked = x.grid(num_sms) if grid and clock.left() > 0 else []
    rounds = x.local_search([None] + ranked[1:3], num_sms)
    log(f"  {len(x.variants)} variants in {clock.budget_s - clock.left():.0f} s, {rounds} local rounds")
    finalists, names, final = x.final_round(peers)
    del x.sets
    if bench.DEVICE == "cuda":
        torch.cuda.empty_cache()
    ranked_final = sorted(zip(names, finalists), key=lambda item: final[item[0]])
    best_name, best = ranked_final[0] if ranked_final else (None, None)
    best_us = final[best_name] if best else float("nan")
    peer_final = {name: final[name] for name in peers}
    result = {"case": case.label, "shape": s.__dict__ | {"label": s.label}, "T": case.T, "fp8": case.fp8,
              "int8": case.int8,
              "bytes_read": case.bytes_read, "kv_mb": s.kv_bytes / 1e6, "read_floor_us": read_floor,
              "peers_us": peer_final, "heuristic_us": final["heuristic"], "heuristic_plan": dataclasses.asdict(x.heuristic),
              "best": best and {"label": best["label"], "plan": best["plan"], "us": best_us, "rel_err": best["rel_err"],
                                "resident": best.get("resident")},
              "final_round_us": final, "variants": x.variants, "local_rounds": rounds,
              "n_correct": sum(e["ok"] for e in x.variants), "n_variants": len(x.variants)}
    result["read_tb_s"] = case.bytes_read / (best_us * 1e-6) / 1e12
    result["vs_best_sdpa"] = best_sdpa(peer_final) / best_us
    log(f"  best {best_us:.1f} µs ({best and best['label']}), heuristic {final['heuristic']:.1f}, "
        f"cuDNN {peer_final.get('sdpa_cudnn', float('nan')):.1f}, flash {peer_final.get('sdpa_flash', float('nan')):.1f}")
    return result


# --- the plan file ------------------------------------------------------------------------------

def plans_from_sweep(sweep: dict, directory: Path, base: tuple[dict, ...] = ()) -> Path:
    """Write <directory>/<device>.json from a sweep: each case's best correct plan, keyed by shape,
    with the device facts it was measured on and what it measured. `base`, entries of an earlier
    table of this device (`load_table`), are kept for the shapes this sweep did not measure."""
    env = sweep["env"]
    entries = []
    for result in sweep["cases"]:
        if not result.get("best"):
            continue
        shape, plan = result["shape"], LaunchPlan(**result["best"]["plan"])
        entries.append(table_entry(shape["B"], shape["Hq"], shape["Hkv"], shape["S"], shape["D"], result["T"],
                                   result["fp8"], plan, env["sms"],
                                   {"us": result["best"]["us"], "heuristic_us": result["heuristic_us"],
                                    "peers_us": result["peers_us"], "label": result["best"]["label"],
                                    "date": env["date"]}, int8=result.get("int8", False)))
    measured = [e["key"] for e in entries]
    entries = [e for e in base if e["key"] not in measured] + entries
    table = {"device": {"name": env["card"], "sms": env["sms"], "l2_bytes": env.get("l2_bytes"),
                        "memory_bytes": env.get("memory_bytes"), "read_bandwidth": env.get("read_bandwidth"),
                        "copy_bandwidth": env.get("copy_bandwidth")},
             "measured": {"date": env["date"], "torch": env["torch"], "triton": env["triton"]},
             "generated_by": "python -m kernels.bench --tune", "entries": entries}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{device_slug(env['card'])}.json"
    save_table(path, table)
    return path


def summary(env: dict, results: list[dict]) -> str:
    nan = float("nan")
    lines = [f"Plan exploration on {env['card']} ({env['sms']} SMs), {env['date']}: copy {env['copy_bandwidth'] / 1e12:.2f} TB/s, "
             f"read {env['read_bandwidth'] / 1e12:.2f} TB/s. Graph replays, µs (final interleaved round).",
             "",
             "| case | K+V MB | read-only | heuristic | best | best plan | cuDNN | SDPA flash | best SDPA / best | TB/s | variants ok |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        best = r["best"] or {}
        lines.append(f"| {r['case']} | {r['kv_mb']:.0f} | {r['read_floor_us']:.1f} | {r['heuristic_us']:.1f} | "
                     f"{best.get('us', nan):.1f} | {describe(LaunchPlan(**best['plan'])) if best else '-'} | "
                     f"{r['peers_us'].get('sdpa_cudnn', nan):.1f} | "
                     f"{r['peers_us'].get('sdpa_flash', nan):.1f} | {r['vs_best_sdpa']:.2f}x | {r['read_tb_s']:.2f} | "
                     f"{r['n_correct']}/{r['n_variants']} |")
    return "\n".join(lines) + "\n"


def tune_bars(results: list[dict], read_bw: float) -> list[dict]:
    """The bars these cases can answer, with each case's best plan standing in for flash_decode."""
    by = {r["case"]: r for r in results}
    out = []

    def add(bar, measured, met):
        out.append({"bar": bar, "measured": measured, "met": met})

    # (a bar none of the cases measures is left out, not called met)
    bf16 = [r for r in results if not r["fp8"] and r["T"] == 1]
    slower = [f"{r['case']} {r['vs_best_sdpa']:.2f}x" for r in bf16 if r["vs_best_sdpa"] < 1]
    if bf16:
        add("bf16 cases at least as fast as the best SDPA backend", f"{len(bf16) - len(slower)}/{len(bf16)}"
            + (f"; slower: {', '.join(slower)}" if slower else ""), not slower)
    if big := [r for r in bf16 if r["kv_mb"] >= 256]:
        add("K+V >= 256 MB: read rate >= 4.45 TB/s", ", ".join(f"{r['case']} {r['read_tb_s']:.2f}" for r in big),
            all(r["read_tb_s"] >= 4.45 for r in big))
    if mid := [r for r in bf16 if 60 <= r["kv_mb"] <= 70]:
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


# The cases the final sweep of run 4 (bench/results/h200-final-1) left below a bar: fp8 speed at
# 7B 64k and 34B 128k (1.57x of 1.6x, 1.41x just met), the batched shapes slower than the best SDPA
# (none of them explored: they ran nearest-shape plans), 34B 1k and 4k (1.25x cuDNN).
PRIORITY = {"7B B=1 S=64k fp8": 3.0, "34B B=1 S=128k fp8": 3.0, "34B B=8 S=16k": 2.0, "7B B=8 S=16k": 2.0,
            "paper B=128 S=512": 2.0, "paper B=64 S=1k": 2.0, "34B B=1 S=4k": 2.0, "34B B=1 S=1k": 1.5}


def case_weight(case: Case, measured: bool = False) -> float:
    """Share of the exploration budget: the bars still missed get more; the other fp8 rows of the
    read-rate bar (61-69% in run 4) next; shapes at the read rate and the 8-token rows less; a
    shape with a measured plan (`measured`: in the committed table) least."""
    if case.label in PRIORITY:
        return PRIORITY[case.label]
    if measured:
        return 0.3
    if case.fp8:
        return 1.5
    if case.T > 1:
        return 0.5
    return 0.7 if case.shape.kv_bytes >= 256e6 else 1.0


FINAL_ROUND_S = 2.5  # kept back per case for its final interleaved round (run 2: ~1-2 s each)


def label_matches(label: str, word: str) -> bool:
    """`--only`'s test: `word` within `label`, or, ending in "$", the end of `label` ("S=64k fp8$" leaves out
    "S=64k fp8 T=8")."""
    return label.endswith(word[:-1]) if word.endswith("$") else word in label


def explore(env: dict, out: Path, plans_dir: Path, budget_s: float, log, only=(), which: str = "issue",
            regrid: bool = False) -> int:
    """Explore `cases(which)` within `budget_s`. The plan file, written after every case, holds the
    committed table's entries (kernels/plans, or CODECOMPLETE_PLANS_DIR) with this run's in their
    place. With "all", cases run most wanted first; a shape the committed table measured starts from
    its plan without the grid (unless `regrid`), and cases left when the budget is spent keep their
    committed plans."""
    num_sms = env["sms"]
    clock = Clock(budget_s)
    committed_table = load_table(env["card"], num_sms)

    def measured(case: Case) -> bool:
        s = case.shape
        return any(e["key"] == shape_key(s.B, s.Hq, s.Hkv, s.S, s.D, case.T, case.fp8, case.int8)
                   for e in committed_table)

    todo = [c for c in cases(which) if not only or any(label_matches(c.label, w) for w in only)]
    weight = {c: case_weight(c, which == "all" and measured(c)) for c in todo}
    if which == "all":
        todo.sort(key=weight.get, reverse=True)  # stable: the sweep's order within a weight
    results, path = [], None
    sweep = {"env": env, "cases": results, "bars": []}
    for i, case in enumerate(todo):
        if which == "all" and clock.left() < FINAL_ROUND_S + 3:
            log(f"{case.label}: not explored (budget spent); the committed table's entry, if any, stays")
            continue
        # Each case gets its weight's share of what is left (less the final rounds still to come),
        # so a slow early case cannot starve the rest.
        left = clock.left() - FINAL_ROUND_S * (len(todo) - i)
        share = Clock(max(3.0, left * weight[case] / sum(weight[c] for c in todo[i:])))
        log(f"{case.label}: {case.bytes_read / 1e6:.0f} MB read, {share.left():.0f} s of {clock.left():.0f} s left")
        s = case.shape
        committed = tuned_plan(env["card"], num_sms, s.B, s.Hq, s.Hkv, s.S, s.D, case.T, case.fp8, int8=case.int8)
        start = [("table", committed)] if committed else []
        if committed and case.int8 and not committed.int8_dot:  # e4m3's plan, and it with int8 dots
            start.append(("table int8-dot", dataclasses.replace(committed, int8_dot=True)))
        results.append(measure_case(case, num_sms, share, log, start_plans=start,
                                    grid=which == "issue" or regrid or not measured(case)))
        sweep["bars"] = tune_bars(results, env["read_bandwidth"])
        (out / "kernels-tune.json").write_text(json.dumps(sweep, indent=1), encoding="utf-8")  # a run cut short keeps its results
        path = plans_from_sweep(sweep, plans_dir, committed_table)
    table = summary(env, results)
    (out / "kernels-tune.md").write_text(table + "\n## Bars\n\n" + bars_table(sweep["bars"]), encoding="utf-8")
    print(table)
    print(f"Plan file: {path} (copy it to kernels/plans/ and commit). Every variant: {out / 'kernels-tune.json'}.")
    print(f"Bars with each case's best plan ({env['card']}):")
    print(bars_table(sweep["bars"]))
    return 0


if __name__ == "__main__":      # `python -m kernels.tune` ran nothing and exited 0: the command is kernels.bench's
    import sys
    from kernels.bench import main
    sys.exit(main(["--tune", *sys.argv[1:]]))

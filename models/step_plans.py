"""Attention plans chosen inside the decode step: one model, one process, each candidate timed where it runs.

    python -m models.step_plans --model 34B|34B/2 --contexts 16384,131072 --kv-caches fp8,int8 [--batch 1]
        [--weights bf16|int8|int4]
        [--variant 'name={"num_warps": 4}' ...] [--no-auto] [--twins early,late] [--rounds 3] [--replays 20]
        [--out DIR] [--write-table kernels/plans/nvidia-h200.json]

`kernels.tune` times the attention kernel alone. Inside a decode step its neighbours share the GPU with it
(programmatic dependent launches make a kernel's programs resident while the one before still runs), and there
plans rank otherwise: CodeLlama-34B's int8 step at 128k ran 47.2 tok/s on the tuner's 2-warp plan, 2-3 µs faster
alone, against 50.5 on a 4-warp one (H200, bench/results/NOTES.md, Run 18); in CodeLlama-7B's step at 64k, plans
2.5-6 µs slower alone cost 59-65 µs a layer, their programs crowding some SMs (Run 19). This tool builds the model
once (random weights of the preset's shapes: a step's time does not depend on their values; `--weights int8|int4`
quantizes them as drawn, so the step is the fused one those weights run and CodeLlama-34B with a 128k cache fits
an 80 GB card), fills each cache with random 8-bit or bf16 values, and per (context, cache kind) times the whole
step as a CUDA-graph replay under each candidate plan of the attention call (`kernels.interface.forced_plans`),
together with that plan's kernel-alone time over the first layer's cache. Candidates: the committed table's plan,
the heuristic's, and neighbours of the table's (2 <-> 4 warps, 64 <-> 128 keys a tile, 1/2, 3/4, 5/4 and 2 times
the splits, int8 dots on <-> off for an int8 cache), plus any `--variant` (fields replaced in the table's plan).
Rounds interleave the candidates so that drift hits all of them alike; the median per candidate counts.
Each runs as the product runs it: qkv_rope lets attention launch as its programs start, or as they end where
the plan says so (`LaunchPlan.step_launch`) or attention's programs would crowd some SMs
(`kernels.interface.late_in_step`); --twins early,late also times the table's and the heuristic's plans with
`step_launch` early or late (named "table +late-qkv" ...), candidates like any other.

--write-table replaces a shape's entry in a plan file (adds one if it has none) where another candidate's
step beats the table plan's by more than --margin, and records the step's numbers in the entry's
`measured.in_step`. Needs a CUDA GPU. Writes step-plans.json and step-plans.md into --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import sys
from pathlib import Path

import torch

from kernels import flash_decode
from kernels.bench import OneLineParser, begin_run, comma_list, folder, graph_replay_us, one_of, whole
from kernels.interface import forced_plans, heuristic_plan, plan_for, resident_per_sm
from kernels.plan import MAX_SPLITS, LaunchPlan, describe, save_table, shape_key, table_entry
from models.bench import WEIGHTS, fill_cache_randomly, ours_step_us
from models.errors import ModelError

KINDS = ("bf16", "fp8", "int8")


def model_config(spec: str):
    """(name, config) of --model: a preset ("34B" as models.bench spells it, or "CodeLlama-34B"), or "34B/2", the
    shapes one rank of two holds under tensor parallelism (models.tp.shard_config), timed on one GPU without its
    collectives (its attention plans are the ones the ranks' steps look up: the same shape keys)."""
    from models.config import preset
    from models.tp import shard_config
    name, _, ranks = spec.partition("/")
    name = name if name.startswith(("CodeLlama", "SmolLM")) else f"CodeLlama-{name}"
    if ranks and not (ranks.isdigit() and int(ranks) >= 1):
        raise SystemExit(f"error: --model {spec!r}: NAME or NAME/TP expected (TP a GPU count, e.g. 34B/2)")
    config = preset(name)
    return (f"{name}/{ranks}", shard_config(config, int(ranks), name)) if ranks else (name, config)


def neighbours(plan, *, int8: bool, S: int) -> dict:
    """The table plan's one-option neighbours worth timing in the step (name -> plan)."""
    out = {"warps": dataclasses.replace(plan, num_warps=4 if plan.num_warps == 2 else 2, maxnreg=0),
           "tile": dataclasses.replace(plan, block_n=128 if plan.block_n == 64 else 64)}
    most = min(MAX_SPLITS, max(1, S // plan.block_n))
    if plan.num_splits > 1:
        out["splits/2"] = dataclasses.replace(plan, num_splits=max(1, plan.num_splits // 2))
    if plan.num_splits * 2 <= most:
        out["splits*2"] = dataclasses.replace(plan, num_splits=plan.num_splits * 2)
    # Finer steps too: in CodeLlama-34B's int4 step an H100 ran e4m3 attention best at 1.2-1.7 programs a SM, 6-7%
    # faster than the heuristic's 2 (33 splits -> 20-28) and than 1 (bench/results/NOTES.md, Run 54).
    for name, factor in (("splits*3/4", 0.75), ("splits*5/4", 1.25)):
        splits = min(most, max(1, round(plan.num_splits * factor)))
        if splits not in (plan.num_splits, plan.num_splits // 2, plan.num_splits * 2):
            out[name] = dataclasses.replace(plan, num_splits=splits)
    if int8 and not plan.row_kernel:
        out["int8 dot" if not plan.int8_dot else "no int8 dot"] = dataclasses.replace(plan, int8_dot=not plan.int8_dot)
    return out


def parse_variant(text: str) -> tuple[str, dict]:
    """'name={"field": value, ...}' -> (name, fields)."""
    name, sep, fields = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"error: --variant takes name={{json}}, got {text!r}")
    try:
        parsed = json.loads(fields)
    except json.JSONDecodeError as error:
        raise SystemExit(f"error: --variant {name}: not JSON ({error})") from None
    if not isinstance(parsed, dict):
        raise SystemExit(f"error: --variant {name}: a JSON object of plan fields expected")
    if unknown := sorted(set(parsed) - {f.name for f in dataclasses.fields(LaunchPlan)}):
        raise SystemExit(f"error: --variant {name}: not a plan field: {', '.join(unknown)}")
    return name, parsed


def candidates(config, batch: int, S: int, quant: str | None, variants: list[tuple[str, dict]], auto: bool,
               device: torch.device):
    """(shape key, {name: plan}) for the attention call of a step of this model config over a cache of S
    positions: the plan the call runs today ("table": the tuned table's, or the heuristic's without one) first."""
    c = config
    fp8, int8 = quant is not None, quant == "int8"
    q = torch.empty(1, device=device, dtype=torch.bfloat16)
    key = shape_key(batch, c.n_heads, c.n_kv_heads, S, c.head_dim, 1, fp8, int8)
    plans = {"table": plan_for(q, batch, c.n_heads, c.n_kv_heads, S, c.head_dim, 1, fp8, int8=int8)}
    if auto:
        plans["heuristic"] = heuristic_plan(q, batch, c.n_heads, c.n_kv_heads, S, c.head_dim, 1, fp8)
        plans.update(neighbours(plans["table"], int8=int8, S=S))
    for name, fields in variants:
        plans[name] = dataclasses.replace(plans["table"], **fields)
    unique = {}
    for name, plan in plans.items():  # the same plan under two names is timed once
        if plan not in unique.values():
            unique[name] = plan
    return key, unique


def first_layer_call(model, batch: int):
    """A zero-argument call of the first layer's attention over its cache, as the step makes it."""
    c = model.config
    cache = model.layers[0].attention.kv_cache
    q = torch.randn(batch, c.n_heads, 1, c.head_dim, device=cache.k.device, dtype=torch.bfloat16)
    lengths = torch.full((batch,), cache.k.shape[2], device=cache.k.device, dtype=torch.int32)
    return lambda: flash_decode(q, cache.k, cache.v, lengths, k_scale=cache.k_scale, v_scale=cache.v_scale)


def kernel_alone_us(model, batch: int, replays: int) -> float:
    """The first layer's attention call alone, as a graph replay (the step's call, without its neighbours)."""
    return graph_replay_us(first_layer_call(model, batch), replays)


def runnable(model, batch: int, key: dict, plans: dict, log) -> dict:
    """The plans that compile, launch and agree with the first one ("table") on the first layer's call (within
    2% of the output's largest element: the 8-bit inputs are the same, only the order of sums and, with int8
    dots, q's two-digit rounding differ); the others are left out with the reason logged."""
    call, kept, expected = first_layer_call(model, batch), {}, None
    for name, plan in plans.items():
        try:
            with forced_plans([(key, plan)]):
                out = call().float()
        except Exception as error:  # noqa: BLE001 - a plan this card cannot run is a finding, not a crash
            log(f"    {name}: left out, {type(error).__name__}: {str(error).splitlines()[0][:160]}")
            continue
        expected = out if expected is None else expected
        error = (out - expected).abs().max().item() / expected.abs().max().item()
        if not error <= 2e-2:
            log(f"    {name}: left out, output differs from the table plan's by {error:.2e} of its largest element")
            continue
        kept[name] = plan
    return kept


def resident(model, batch: int, plan) -> int:
    """Programs of the plan's split kernel one SM holds at once (0 on a CPU): where a grid needs fewer per SM
    than this, programs made resident early (PDL) can crowd some SMs and leave others empty."""
    cache = model.layers[0].attention.kv_cache
    c = model.config
    q = torch.empty(batch, c.n_heads, 1, c.head_dim, device=cache.k.device, dtype=torch.bfloat16)
    return resident_per_sm(q, cache.k, cache.v, plan, k_scale=cache.k_scale, v_scale=cache.v_scale)


TWINS = ("early", "late")   # --twins: the table's and the heuristic's plans with step_launch so too
TWINNED = ("table", "heuristic")


def twins_of(plans: dict, modes: list[str]) -> dict:
    """name -> plan: "table +late-qkv" ..., the TWINNED plans with `step_launch` set to each mode (qkv_rope lets
    attention launch as its programs start or end, whatever the step's rule says); none that a plan already is."""
    return {f"{n} +{mode}-qkv": dataclasses.replace(plans[n], step_launch=mode)
            for mode in modes for n in TWINNED if n in plans and plans[n].step_launch != mode}


def time_candidates(model, batch: int, context: int, key: dict, plans: dict, rounds: int, replays: int,
                    log) -> dict:
    """name -> {"step_us", "alone_us", "samples"}: medians over `rounds` interleaved rounds."""
    step, alone = {n: [] for n in plans}, {n: [] for n in plans}
    with forced_plans([(key, next(iter(plans.values())))]):
        ours_step_us(model, batch, context, "flash", replays)   # warm-up: a run's first timing ran 2.6% slow (Run 19)
    for r in range(rounds):
        for name, plan in plans.items():
            with forced_plans([(key, plan)]):
                step[name].append(ours_step_us(model, batch, context, "flash", replays))
                alone[name].append(kernel_alone_us(model, batch, 3 * replays))
            log(f"    round {r + 1} {name:12s} step {step[name][-1]:9.1f} µs  alone {alone[name][-1]:7.1f} µs")
    return {n: {"step_us": statistics.median(step[n]), "alone_us": statistics.median(alone[n]),
                "samples": step[n]} for n in plans}


def check_plan_file(path: Path, env: dict) -> None:
    """--write-table's file must exist and be this card's (its name and SM count): plans measured on one card
    written into another's table would be taken there without ever running on it."""
    try:
        device = json.loads(path.read_text(encoding="utf-8"))["device"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(f"error: --write-table {path}: not a plan file ({type(error).__name__}: {error})") from None
    if (device.get("name", env["card"]), device.get("sms")) != (env["card"], env["sms"]):
        raise SystemExit(f"error: --write-table {path}: made for {device.get('name')} with {device.get('sms')} SMs, "
                         f"this is {env['card']} with {env['sms']}")


def update_table(path: Path, key: dict, plan, model, batch: int, measured: dict) -> str:
    """Put `plan` into the plan file at `key` (replacing an entry of the same key, else adding one), for that shape
    alone: a plan that won one model's step at one shape is not lent to the shapes near it (`tuned_plan`), whose
    plans stay as they were (on an H100, 34B's int8 16k and 64k winners would have halved every int8 shape's
    splits, unmeasured)."""
    c = model.config
    table = json.loads(path.read_text(encoding="utf-8"))
    num_sms = table["device"]["sms"]
    entry = table_entry(batch, c.n_heads, c.n_kv_heads, key["S"], c.head_dim, 1, key["kind"] != "bf16", plan,
                        num_sms, measured, int8=key["kind"] == "int8", lend=False)
    same = [i for i, e in enumerate(table["entries"]) if e["key"] == key]
    if same:
        old = table["entries"][same[0]]["measured"]
        entry["measured"] = {**{k: v for k, v in old.items() if k not in ("in_step",)}, **measured}
        table["entries"][same[0]] = entry
    else:
        table["entries"].append(entry)
    save_table(path, table)
    return "replaced" if same else "added"


def _checked(parse):
    """An argparse type from a parser that stops with SystemExit("error: ...") or raises ModelError (an unknown
    preset) or a ValueError (a rank count the model does not split over): one line and status 2 as it is read;
    else what `parse` made of it."""
    def check(text: str):
        try:
            return parse(text)
        except (SystemExit, ModelError, ValueError) as error:
            raise argparse.ArgumentTypeError(str(error).removeprefix("error: ")) from None
    return check


def _fraction(text: str) -> float:
    """--margin: a share of the table plan's step in [0, 1) (a negative one wrote a slower plan into the table)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.005, got {text!r}") from None
    if not 0 <= value < 1:       # NaN too
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 up to below 1, got {text}")
    return value


def main(argv=None) -> int:
    # Every option is checked as it is parsed: a typo is one line and status 2 at once, not a traceback (or a
    # model built on the GPU first).
    parser = OneLineParser(prog="python -m models.step_plans", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=_checked(model_config), default="34B",
                        help="a preset (7B, 13B, 34B, 70B) or NAME/TP: a tensor-parallel "
                        "rank's shapes on one GPU, without its collectives (default: 34B)")
    parser.add_argument("--contexts", type=comma_list(whole(1)), default="131072",
                        help="context lengths in tokens (default: 131072)")
    parser.add_argument("--kv-caches", type=comma_list(one_of(*KINDS)), default="fp8,int8",
                        help="cache kinds: " + ", ".join(KINDS) + " (default: fp8,int8)")
    parser.add_argument("--batch", type=whole(1), default=1, help="sequences per step (default: 1)")
    parser.add_argument("--weights", type=one_of(*WEIGHTS), default="bf16",
                        help="the projections' format: " + ", ".join(WEIGHTS) + " (default: bf16)")
    parser.add_argument("--variant", type=_checked(parse_variant), action="append", default=[],
                        help='name={"plan field": value, ...}')
    parser.add_argument("--no-auto", action="store_true", help="time only the table plan and the --variant ones")
    parser.add_argument("--twins", type=comma_list(one_of(*TWINS), empty=True), default="",
                        help="comma-separated: early, late: also time the table's and the heuristic's plans with "
                        "attention launched early or late in the step whatever its grid (step_launch; named "
                        "'table +early-qkv' ...)")
    parser.add_argument("--rounds", type=whole(1), default=3,
                        help="rounds interleaving the candidates; the median counts (default: 3)")
    parser.add_argument("--replays", type=whole(1), default=20, help="graph replays a timing (default: 20)")
    parser.add_argument("--margin", type=_fraction, default=0.005,
                        help="a step this much faster replaces the table's (default: 0.005)")
    parser.add_argument("--write-table", type=Path, default=None,
                        help="a plan file whose entries a step-faster candidate replaces (see the module doc)")
    parser.add_argument("--out", type=folder, default=Path("bench/scratch/step-plans"),
                        help="folder for step-plans.json and .md (default: bench/scratch/step-plans)")
    args = parser.parse_args(argv)
    contexts = [int(x) for x in args.contexts.split(",") if x.strip()]
    kinds = [k.strip() for k in args.kv_caches.split(",") if k.strip()]
    variants = args.variant         # (name, fields) each: parsed as read
    twins = [t.strip() for t in args.twins.split(",") if t.strip()]
    if not torch.cuda.is_available():
        parser.exit(2, "models.step_plans needs a CUDA GPU: it times decode steps there.\n")   # (as its peers)

    from models.llama import build_random_model
    args.model, config = args.model     # (name, config): parsed as read, the default too
    env, _, log = begin_run("models.step_plans", args.out)
    if args.write_table:
        check_plan_file(args.write_table, env)
    model = build_random_model(config, device="cuda", dtype=torch.bfloat16, max_len=max(contexts),
                               weights=None if args.weights == "bf16" else args.weights)
    model.compile_dense()   # the step as the app runs it: fused at batch 1, compiled dense parts otherwise
    rows = []
    for context in contexts:
        for kind in kinds:
            quant = None if kind == "bf16" else kind
            model.setup_caches(args.batch, context, args.model, quant)
            fill_cache_randomly(model, context)
            key, plans = candidates(model.config, args.batch, context, quant, variants, not args.no_auto,
                                    model.output.weight.device)
            plans = runnable(model, args.batch, key, plans, log)
            if "table" not in plans:   # every other candidate is judged against its output
                raise SystemExit(f"error: {args.model} S={context} {kind}: the plan the step runs today failed "
                                 "to run (see the log above)")
            residency = {n: resident(model, args.batch, p) for n, p in plans.items()}
            twin_plans = twins_of(plans, twins)
            residency |= {n: resident(model, args.batch, p) for n, p in twin_plans.items()}
            plans |= twin_plans
            log(f"  {args.model} B={args.batch} S={context} {kind}: {len(plans)} plans")
            times = time_candidates(model, args.batch, context, key, plans, args.rounds, args.replays, log)
            base = times["table"]["step_us"]
            best = min(times, key=lambda n: times[n]["step_us"])
            c = model.config
            programs = {n: p.num_splits * args.batch * c.n_kv_heads * p.row_blocks(c.n_heads // c.n_kv_heads, 1)
                        for n, p in plans.items()}
            row = {"model": args.model, "weights": args.weights, "batch": args.batch, "context": context,
                   "kv_cache": kind, "key": key,
                   "best": best, "plans": {n: {"plan": dataclasses.asdict(p), "summary": describe(p),
                                               "programs_per_sm": programs[n] / env["sms"],
                                               "resident_per_sm": residency[n], **times[n]}
                                           for n, p in plans.items()}}
            if args.write_table and best != "table" and times[best]["step_us"] < base * (1 - args.margin):
                tok_s = {n: round(args.batch * 1e6 / t["step_us"], 2) for n, t in times.items()}
                measured = {"us": times[best]["alone_us"], "label": f"in-step: {best}",
                            "date": datetime.date.today().isoformat(), "in_step": {
                                "note": f"{args.model} decode step, B={args.batch}, {context} tokens, {kind} cache, "
                                        f"{args.weights} weights, "
                                        f"models.step_plans on {env['card']}: tok/s per candidate",
                                "tok_s": tok_s}}
                row["table"] = update_table(args.write_table, key, plans[best], model, args.batch, measured)
            rows.append(row)
            write_report(args.out, env, rows, show=False)   # a killed run keeps what it measured
    model.free_caches()
    write_report(args.out, env, rows)
    return 0


def context_label(tokens: int) -> str:
    """16384 -> "16k"; a context that is no whole number of k as it is (256 read "0k", 20000 "19k")."""
    return f"{tokens // 1024}k" if tokens % 1024 == 0 else str(tokens)


def write_report(out: Path, env: dict, rows: list[dict], show: bool = True) -> None:
    (out / "step-plans.json").write_text(json.dumps({"env": env, "rows": rows}, indent=1), encoding="utf-8")
    lines = [f"# Attention plans inside the decode step: {env['card']}, {env['date']}", "",
             f"torch {env['torch']}, triton {env['triton']}. Step: graph replay of one decode step (B as listed, "
             "random weights of the preset's shapes); alone: the first layer's attention call as a graph replay. "
             "Medians over interleaved rounds.", "",
             "| shape | cache | plan | options | programs / SM | SM holds | alone µs | step µs | tok/s "
             "| step vs table |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        base = row["plans"]["table"]["step_us"]
        for name, p in sorted(row["plans"].items(), key=lambda kv: kv[1]["step_us"]):
            mark = " **best**" if name == row["best"] else ""
            weights = "" if row.get("weights", "bf16") == "bf16" else f" {row['weights']} weights"
            lines.append(f"| {row['model']}{weights} B={row['batch']} S={context_label(row['context'])} | "
                         f"{row['kv_cache']} | {name}{mark} | {p['summary']} | {p['programs_per_sm']:.2f} | "
                         f"{p['resident_per_sm']} | "
                         f"{p['alone_us']:.1f} | {p['step_us']:.0f} | "
                         f"{row['batch'] * 1e6 / p['step_us']:.2f} | {base / p['step_us']:.3f}x |")
        if "table" in row:
            lines.append(f"| | | (plan file: entry {row['table']}) | | | | | | | |")
    (out / "step-plans.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if show:
        print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())

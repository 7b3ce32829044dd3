"""Where the batch-1 decode step's time goes beyond the roofline: one step timed whole and in variants.

    python bench/gpu/step_parts.py [--out DIR] [--contexts 4096,16384] [--kinds bf16,fp8,int8]   # ~1 min, one H200
        [--dense-sweep] [--configs 'norm_swiglu=8,1024,4,3,1|gemv=2,512,2,4,0;...'] [--plans 'num_splits=4;...']
        [--variants 'early:rope;kvpf:8192;...'] [--bare]

The fused one-token step of CodeLlama-7B (random weights, graph replays) per cache kind and context, timed whole
and in these variants, all in one process (the difference to the whole step is what the part costs inside the
step, launches and waits included; a part left out leaves wrong results, only the time is read):
  no-combine          flash_decode's combine kernel not launched (the split kernel alone);
  no-attention        attention returns q: the dense kernels alone;
  late-dependents     the dense kernels let the next kernel launch at the end of each program, not the start;
  late-qkv            qkv_rope alone does (the kernel before attention);
  combine-no-trigger  the combine lets the next kernel launch only as it ends (as before Run 15);
  append-kernel       (8-bit caches) k and v appended by the append kernel after qkv_rope, instead of qkv_rope
                      quantizing them itself (as before Run 15);
  early:E,...         the dense kernels of those epilogues (plain, residual, swiglu, rope) load their first tile of
                      W before their PDL wait;
  kvpf:N              flash_decode's split programs prefetch N bytes of their K and V into L2 before theirs;
  a+b                 variants together (e.g. early:rope+kvpf:8192);
  plan:...            (8-bit caches) flash_decode's plan with some fields changed;
  cfg:...             the dense kernels' launch configurations changed (--dense-sweep: every configuration of
                      kernels.fused_gemv_bench.SWEEP, one at a time, in the first cache kind's rows);
  whole again         the whole step a second time: the noise of one timing.
Then flash_decode alone at growing lengths (whole call, split kernel alone, and the same grid over one key), so
a call's fixed cost and its per-byte rate can be told apart. Writes step-parts.json, prints the tables last.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

import kernels.fused_gemv
import kernels.fused_gemv_bench
import kernels.interface
import models.fused_decode
from kernels import flash_decode
from kernels.bench import begin_run, graph_replay_us
from models.bench import check_backends_and_compile, fill_cache_randomly, kv_bytes_per_step, weight_bytes_per_step
from models.bench import steady_decode
from models.llama import build_random_model


class Variant:
    """Context manager: the step changed as `part` says (module doc) while a graph is captured, restored after."""

    def __init__(self, part: str):
        self.part, self.saved = part, []

    def __enter__(self):
        if "+" in self.part:
            self.inner = [Variant(p) for p in self.part.split("+")]
            for variant in self.inner:
                variant.__enter__()
            return self
        if self.part == "no-combine":
            run = kernels.interface._run
            self._swap(kernels.interface, "_run", lambda kernel, *a, **k: None
                       if kernel is kernels.interface._combine_kernel else run(kernel, *a, **k))
        elif self.part == "no-attention":
            self._swap(models.fused_decode, "decode_attention", lambda backend, q, *a, **k: q)
        elif self.part == "append-kernel":      # qkv_rope without tickets: its fallback, the append kernel after it
            self._swap(kernels.fused_gemv, "tickets", lambda device: None)
        elif self.part == "combine-no-trigger":  # not a part left out: the combine's PDL trigger at its end
            self._swap(kernels.interface, "COMBINE_TRIGGER", False)
        elif self.part == "late-dependents":    # not a part left out: the dense kernels' PDL trigger moved
            f = kernels.fused_gemv
            self._swap(f, "LATE_DEPENDENTS", frozenset({f.PLAIN, f.RESIDUAL, f.SWIGLU, f.ROPE}))
        elif self.part == "late-qkv":           # not a part left out: qkv_rope's PDL trigger at each program's end
            self._swap(kernels.fused_gemv, "LATE_DEPENDENTS", frozenset({kernels.fused_gemv.ROPE}))
        elif self.part.startswith("cfg:"):      # "cfg:norm_swiglu=8,512,4,3,1|gemv=2,512,2,4,0": dense kernels' configs
            configs = dict(kernels.fused_gemv.CONFIGS)
            for entry in self.part.removeprefix("cfg:").split("|"):
                kind, _, values = entry.partition("=")
                configs[kind] = kernels.fused_gemv.Config(*(int(v) for v in values.split(",")))
            self._swap(kernels.fused_gemv, "CONFIGS", configs)
        elif self.part.startswith("early:"):    # "early:plain,residual,swiglu,rope": those dense kernels load their
            f = kernels.fused_gemv              # first tile of W before their PDL wait
            names = self.part.removeprefix("early:").split(",")
            self._swap(f, "EARLY_TILE", frozenset(getattr(f, name.upper()) for name in names))
        elif self.part.startswith("kvpf:"):     # "kvpf:32768": each attention split program prefetches that many
            self._swap(kernels.interface, "KV_PREFETCH", int(self.part.removeprefix("kvpf:")))   # bytes of K, V
        elif self.part.startswith("plan:"):     # "plan:num_splits=4,block_n=128": the 8-bit calls' plan changed
            changes = {}
            for item in self.part.removeprefix("plan:").split(","):
                name, value = item.split("=")
                changes[name] = value if name in ("partials", "eviction", "cache_modifier") else int(value)
            plan_for = kernels.interface.plan_for

            def replanned(q, B, Hq, Hkv, S, D, T, fp8, num_splits=None, *, int8=False):
                plan = plan_for(q, B, Hq, Hkv, S, D, T, fp8, num_splits, int8=int8)
                return dataclasses.replace(plan, **changes) if fp8 else plan
            self._swap(kernels.interface, "plan_for", replanned)
        return self

    def _swap(self, module, name, value):
        self.saved.append((module, name, getattr(module, name)))
        setattr(module, name, value)

    def __exit__(self, *exc):
        for variant in reversed(getattr(self, "inner", [])):
            variant.__exit__(*exc)
        for module, name, value in reversed(self.saved):
            setattr(module, name, value)


STANDARD = ["no-combine", "no-attention", "late-dependents", "late-qkv", "combine-no-trigger", "append-kernel"]


def step_rows(model, contexts, kinds, read_bw: float, replays: int, log, plans=(),
              configs=((), ()), extra=(), bare: bool = False) -> list[dict]:
    """One row per (cache kind, context): µs of the whole step and of each variant (module doc). `configs`:
    (the dense sweep's, timed in the first kind's rows only; the ones asked for, timed in every row)."""
    rows = []
    weights = weight_bytes_per_step(model)
    for kind in kinds:
        quant = None if kind == "bf16" else kind
        for context in contexts:
            model.free_caches()
            model.setup_caches(1, context, "7B", quant)
            fill_cache_randomly(model, context)
            kv = kv_bytes_per_step(model.config, 1, context, quant=quant)
            row = {"kind": kind, "context": context, "roofline_us": (weights + kv) / read_bw * 1e6, "us": {}}
            parts = ["whole"] + ([] if bare else [p for p in STANDARD if quant or p != "append-kernel"])
            parts += [f"plan:{p}" for p in plans] if quant else []
            parts += [f"cfg:{c}" for c in configs[0]] if kind == kinds[0] else []
            parts += [f"cfg:{c}" for c in configs[1]]
            parts += list(extra)
            parts += ["whole again"]          # the noise of one timing
            for part in parts:
                with Variant(part.removesuffix(" again")):
                    row["us"][part] = graph_replay_us(steady_decode(model, 1, context, "flash"), replays)
                torch.cuda.synchronize()
            log(f"  {kind} {context}: " + "  ".join(f"{p} {us:.1f}" for p, us in row["us"].items()
                                                    if not p.startswith("cfg:")))
            for kind_ in kernels.fused_gemv_bench.SWEEP:
                timed = sorted((us, p) for p, us in row["us"].items() if p.startswith(f"cfg:{kind_}=") and "|" not in p)
                if timed:
                    log(f"    {kind_}: " + "  ".join(f"{p.partition('=')[2]} {us - row['us']['whole']:+.1f}"
                                                   for us, p in timed[:6]))
            for p, us in row["us"].items():
                if p.startswith("cfg:") and "|" in p:
                    log(f"    {us - row['us']['whole']:+.1f} {p}")
            rows.append(row)
    model.free_caches()
    return rows


def kernel_rows(lengths, replays: int, log) -> list[dict]:
    """flash_decode alone: CodeLlama-7B's layer over an fp8 cache (the row kernel) and bf16, CodeLlama-34B's
    over bf16 (GQA dots)."""
    rows = []
    for name, Hq, Hkv, kind in (("7B", 32, 32, "fp8"), ("7B", 32, 32, "bf16"), ("34B", 64, 8, "bf16")):
        for S in lengths:
            q = torch.randn(1, Hq, 128, device="cuda", dtype=torch.bfloat16)
            k = torch.randn(1, Hkv, S, 128, device="cuda", dtype=torch.bfloat16)
            v = torch.randn_like(k)
            scales = {}
            if kind == "fp8":
                k, v = (t.clamp(-4, 4).mul(100).to(torch.float8_e4m3fn) for t in (k, v))
                scales = dict(k_scale=torch.full((1, Hkv, S), 0.01, device="cuda"),
                              v_scale=torch.full((1, Hkv, S), 0.01, device="cuda"))
            full, one = (torch.tensor([n], dtype=torch.int32, device="cuda") for n in (S, 1))
            call = lambda lengths: flash_decode(q, k, v, lengths, **scales)
            row = {"model": name, "kind": kind, "S": S, "mb": (k.numel() + v.numel()) * k.element_size() / 1e6,
                   "whole": graph_replay_us(lambda: call(full), replays)}
            with Variant("no-combine"):
                row["split_only"] = graph_replay_us(lambda: call(full), replays)
            row["one_key"] = graph_replay_us(lambda: call(one), replays)
            log(f"  {name} {kind} S={S}: whole {row['whole']:.1f}  split only {row['split_only']:.1f}  "
                f"one key {row['one_key']:.1f} µs")
            rows.append(row)
            del q, k, v
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/scratch/step-parts"),
                        help="results folder (default: bench/scratch/step-parts)")
    parser.add_argument("--contexts", default="4096,16384", help="the steps' contexts in tokens (default: 4096,16384)")
    parser.add_argument("--kinds", default="bf16,fp8", help="KV cache kinds of the steps (default: bf16,fp8)")
    parser.add_argument("--lengths", default="256,1024,4096,16384,65536",
                        help="cache lengths of the flash_decode-alone rows (default: 256,1024,4096,16384,65536)")
    parser.add_argument("--replays", type=int, default=30, help="graph replays a timing (default: 30)")
    parser.add_argument("--dense-sweep", action="store_true",
                        help="time every configuration of kernels.fused_gemv_bench.SWEEP inside the step (first kind only)")
    parser.add_argument("--configs", default="", help="';'-separated dense configurations to time in every row, "
                        "each 'kind=bn,bk,warps,stages,interleave' or several joined by '|'")
    parser.add_argument("--variants", default="", help="';'-separated further variants to time in every row, "
                        "e.g. 'early:rope;kvpf:8192;early:rope+kvpf:8192'")
    parser.add_argument("--bare", action="store_true", help="leave out the standard variants (the module doc's "
                        "first six): the whole step, what is asked for, the whole step again")
    parser.add_argument("--plans", default="", help="';'-separated 8-bit plan changes to time, e.g. "
                        "'num_splits=4;num_splits=16,partials=bfloat16'")
    args = parser.parse_args(argv)
    started = begin_run("step_parts", args.out)
    if started is None:
        return 2
    env, _, log = started
    read_bw = env["read_bandwidth"]
    contexts = [int(c) for c in args.contexts.split(",")]
    kernels_ = kernel_rows([int(s) for s in args.lengths.split(",")], args.replays, log)
    model = build_random_model("CodeLlama-7B", device="cuda", dtype=torch.bfloat16, max_len=max(contexts))
    checks = check_backends_and_compile(model, log)
    configs = []
    if args.dense_sweep:
        for kind, candidates in kernels.fused_gemv_bench.SWEEP.items():
            configs += [f"{kind}={','.join(str(int(v)) for v in c)}" for c in candidates
                        if c != kernels.fused_gemv.CONFIGS[kind]]
    extra = [v for v in args.variants.split(";") if v]
    steps = step_rows(model, contexts, args.kinds.split(","), read_bw, args.replays, log,
                      [p for p in args.plans.split(";") if p], (configs, [c for c in args.configs.split(";") if c]),
                      extra, args.bare)
    (args.out / "step-parts.json").write_text(json.dumps(
        {"env": env, "checks": checks, "steps": steps, "kernels": kernels_}, indent=1))
    print(f"checks: {checks}")
    variants = ([] if args.bare else STANDARD) + extra + ["whole again"]
    print(f"{env['card']}, read bandwidth {read_bw / 1e12:.2f} TB/s. Decode step, CodeLlama-7B, batch 1: µs of the "
          f"whole step, and each variant's µs minus the whole step's (a part left out: minus its cost):")
    print(f"| cache | context | roofline | whole | % of roofline | {' | '.join(variants)} |")
    print("|---|---|---|---|---|" + "---|" * len(variants))
    for r in steps:
        us = r["us"]
        delta = lambda part: f"{us[part] - us['whole']:+.1f}" if part in us else ""
        print(f"| {r['kind']} | {r['context']} | {r['roofline_us']:.0f} | {us['whole']:.1f} | "
              f"{100 * r['roofline_us'] / us['whole']:.1f} | {' | '.join(delta(v) for v in variants)} |")
    print("\nflash_decode alone, µs (graph replays):")
    print("| shape | S | MB | whole | split only | one key | TB/s (whole) |")
    print("|---|---|---|---|---|---|---|")
    for r in kernels_:
        print(f"| {r['model']} {r['kind']} | {r['S']} | {r['mb']:.0f} | {r['whole']:.1f} | {r['split_only']:.1f} | "
              f"{r['one_key']:.1f} | {r['mb'] / r['whole']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

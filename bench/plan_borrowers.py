"""Which shapes' attention plans a plan-table change moves, on a CPU, before it is committed.

    python bench/plan_borrowers.py OLD_DIR NEW_DIR --card "NVIDIA H100 80GB HBM3" [--sms 132]

A table entry answers its own shape and lends its tiles to the shapes near it (`kernels.plan.tuned_plan`), so a new
or replaced entry can move plans nobody measured. This compares the plan every call would run (the table's, else the
heuristic's: `kernels.plan.device_plan`, as `plan_for` asks it on a card with sm_90's 8-bit dots) over a grid of the
models' shapes (the CodeLlama and paper head layouts, B 1-256, S 256-128k, 1-8 query tokens, each cache kind) with
the plan folders OLD_DIR and NEW_DIR, and prints each shape whose plan differs, the shapes that have an entry of
their own in NEW_DIR marked `own`. Exit 0 either way; the last line counts them.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels.plan import describe, device_plan, device_slug, load_table, shape_key  # noqa: E402

HEADS = ((64, 8), (32, 32), (32, 8), (48, 8), (40, 40), (56, 8), (16, 2))   # (Hq, Hkv): 34B, 7B, 70B/2, ...
BATCHES = (1, 2, 4, 8, 16, 64, 256)
LENGTHS = (256, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 100000, 131072)
TOKENS = (1, 2, 8)
KINDS = ("bf16", "fp8", "int8")
D = 128
GRID = tuple(itertools.product(HEADS, BATCHES, LENGTHS, TOKENS, KINDS))   # ((Hq, Hkv), B, S, T, kind)


def plan_in(directory: Path, card: str, sms: int, B: int, Hq: int, Hkv: int, S: int, T: int, kind: str):
    return device_plan(card, sms, B, Hq, Hkv, S, D, T, kind != "bf16", int8=kind == "int8", wgmma8=True,
                       directory=directory)


def moved(old: Path, new: Path, card: str, sms: int) -> list[tuple[str, str, str]]:
    """(shape, old plan, new plan) for each shape of the grid whose plan differs; `own` marks NEW's own entries."""
    own = [e["key"] for e in load_table(card, sms, new)]
    rows = []
    for (Hq, Hkv), B, S, T, kind in GRID:
        a, b = (plan_in(d, card, sms, B, Hq, Hkv, S, T, kind) for d in (old, new))
        if a != b:
            mark = " own" if shape_key(B, Hq, Hkv, S, D, T, kind != "bf16", kind == "int8") in own else ""
            rows.append((f"{kind} Hq={Hq} Hkv={Hkv} B={B} S={S} T={T}{mark}", describe(a), describe(b)))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path, help="the plan folder before (e.g. a `git show` of kernels/plans)")
    parser.add_argument("new", type=Path, help="the plan folder after")
    parser.add_argument("--card", required=True, help="the card's name as nvidia-smi says it")
    parser.add_argument("--sms", type=int, default=132, help="its SM count (default 132)")
    args = parser.parse_args(argv)
    for folder in (args.old, args.new):
        if not (folder / f"{device_slug(args.card)}.json").is_file():
            parser.error(f"{folder}: no {device_slug(args.card)}.json there")
    rows = moved(args.old, args.new, args.card, args.sms)
    for shape, before, after in rows:
        print(f"{shape}: {before} -> {after}")
    others = sum(not shape.endswith(" own") for shape, _, _ in rows)
    print(f"{len(rows)} shapes of {len(GRID)} change plan, {others} of them without an entry of their own")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Launch plans of the split-KV kernels: how a call is cut up and which Triton options it uses.

A plan depends on shapes and the device only, never on lengths (the grid must stay valid while a
captured CUDA graph is replayed over growing lengths). Two sources:
- `plan_launch`: the heuristic, tuned on an H100 and corrected by the first H200 exploration
  (bench/results/NOTES.md); used on every device that has no tuned plan file, and for float32
  queries everywhere.
- `tuned_plan`: a shape-keyed table that `python -m kernels.bench --tune` measures on one device
  and writes to kernels/plans/<device>.json (committed). A shape in the table gets its measured
  plan; another shape takes the tile options of the nearest measured shape of the same kind and
  as many waves of programs as that shape filled for its split count, unless that entry was chosen
  inside one shape's decode step (`"lend": false`, `models.step_plans`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

# Planning constants, measured on an H100 and an H200 (bench/results/NOTES.md records the sweeps).
PROGRAMS_PER_SM = 2          # two resident programs per SM beat one and four (34B, 7B, paper shapes)
MIN_BLOCKS_PER_SPLIT = 1     # even one tile per split paid off at short contexts (34B, S=1k)
MAX_SPLITS = 128             # bounds the combine's tile; more splits never paid off
MAX_BLOCK_M = 64             # query rows per program: beyond, the accumulator spills registers
PIPELINE_STAGES = 3          # H200: 3 stages 7-8% faster than 2 at the same splits (34B 128k 126.5 vs 136.7 µs,
                             # 16k 22.7 vs 25.2; bench/results/h200-explore-1); the H100 saw <= 3%
STAGED_BYTES = 96 * 1024     # K/V bytes in flight per program at most (fp32 tiles take 2 stages)
# The committed tables; CODECOMPLETE_PLANS_DIR points the planner at another directory (e.g. the
# plans an exploration just wrote, to measure them before they are committed).
PLANS_DIR = Path(os.environ.get("CODECOMPLETE_PLANS_DIR") or Path(__file__).with_name("plans"))


STEP_LAUNCHES = ("", "early", "late")


@dataclass(frozen=True)
class LaunchPlan:
    """How one call is cut up (the split count, rows and keys per tile) and how it is compiled."""
    num_splits: int
    block_m: int      # query rows (group heads x tokens) per program, padded to the tensor cores' 16
    block_n: int      # keys per inner-loop tile
    block_d: int      # head dim padded to a power of two
    num_warps: int
    num_stages: int   # Triton's kernel-level pipelining (loads feeding dots)
    loop_stages: int = 0        # > 0: tl.range(num_stages=) pipelines every load of the key loop
    cache_modifier: str = ""    # K/V loads: "" or ".cg" (cache in L2 only)
    eviction: str = ""          # K/V loads: "" or "evict_first" (read once)
    tma: bool = False           # K/V through tensor descriptors (TMA); needs 16-byte aligned strides
    fp8_dot: bool = False       # fp8 caches: scores by e4m3 tensor-core dots (q quantized per row)
    fp8_early: bool = False     # fp8 caches: bytes -> fp16 right after loading (inline PTX; kernels.split_kv
                                # says why it is off by default)
    int8_prmt: bool = True      # int8 caches: bytes -> fp32 (row kernel) or fp16 (dots) by PRMT and an exact
                                # add, not I2F (a quarter-rate instruction on sm_90); False: I2F (A/B runs)
    int8_dot: bool = False      # int8 caches, the dot kernel: scores by int8 tensor-core dots (q quantized per
                                # row to int8, exact int32 sums), K never converted
    maxnreg: int = 0            # > 0: registers per thread capped (more resident programs, maybe spills)
    partials: str = "float32"   # split partials' dtype: "float32" or "bfloat16" (half the traffic)
    pdl: bool = True            # combine as a programmatic dependent launch where supported
    row_kernel: bool = False    # one query row per KV head (group x tokens = 1): kernels.split_kv_row, on the
                                # CUDA cores instead of dots padded to 16 rows; ignored for other shapes
    transposed: bool = False    # 8-bit caches with V sequence-major: kernels.split_kv_transposed, the cache as
                                # the first operand of 8-bit tensor-core dots (no byte converted); ignored otherwise
    step_launch: str = ""       # in the fused decode step: "" as its rule decides (interface.late_in_step), or
                                # "early" / "late" (qkv_rope lets the call launch as its programs start / end),
                                # a choice made inside the step by models.step_plans; calls alone ignore it

    def __post_init__(self):
        if self.step_launch not in STEP_LAUNCHES:
            raise ValueError(f"step_launch {self.step_launch!r}: not one of {', '.join(map(repr, STEP_LAUNCHES))}")

    def row_blocks(self, group: int, T: int) -> int:
        return -(-group * T // self.block_m)


def describe(plan: LaunchPlan) -> str:
    """A plan in one short line: "8 splits n64 w4 s2 loop3 evict_first bf16-partials"."""
    words = [f"{plan.num_splits} splits n{plan.block_n} w{plan.num_warps} s{plan.num_stages}"]
    words += [f"loop{plan.loop_stages}"] if plan.loop_stages else []
    words += [w for w in (plan.eviction, plan.cache_modifier) if w]
    words += ["bf16-partials"] if plan.partials == "bfloat16" else []
    words += [name for name, on in (("no-pdl", not plan.pdl), ("tma", plan.tma), ("fp8-early", plan.fp8_early),
                                    ("fp8-dot", plan.fp8_dot), ("int8-dot", plan.int8_dot), ("row", plan.row_kernel),
                                    ("int8-i2f", not plan.int8_prmt), ("transposed", plan.transposed)) if on]
    words += [f"maxnreg{plan.maxnreg}"] if plan.maxnreg else []
    words += [f"{plan.step_launch}-in-step"] if plan.step_launch else []
    return " ".join(words)


def _next_power_of_2(n: int) -> int:
    """triton.next_power_of_2, here so that planning (and kernels.reference, which checks shapes with it) imports
    where Triton cannot be installed (macOS, Windows)."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def tiles(group: int, T: int, D: int) -> tuple[int, int, int]:
    """(block_m, block_n, block_d) by the heuristic: 64 keys a tile (K and V tiles plus pipelining fit
    shared memory). 8-bit caches too: 128 keys (the same bytes as bf16's 64) need 137 KB of shared
    memory at 4 or 8 warps (sm_90 build), one program per SM; 64 keys hold three."""
    block_m = min(MAX_BLOCK_M, max(16, _next_power_of_2(group * T)))
    block_d = max(16, _next_power_of_2(D))
    block_n = 64 if block_d <= 128 else 32
    return block_m, block_n, block_d


def heuristic_splits(items: int, S: int, block_n: int, num_sms: int) -> int:
    """Split count for `items` = batch x KV heads x row blocks programs per split: batch and heads alone
    fill the GPU only at large batch; otherwise the sequence is split until there are about
    PROGRAMS_PER_SM programs per SM, but never into splits shorter than MIN_BLOCKS_PER_SPLIT tiles."""
    if items >= 1.5 * num_sms:
        # Batch x heads alone give most SMs two programs: a split only adds a combine. (Measured on
        # the paper's shape: 256 programs unsplit 27.5 µs vs 30.1 split in 2; 128 unsplit 33.3 vs 29.3 in 3.)
        return 1
    return splits_for_programs(items, S, block_n, num_sms, PROGRAMS_PER_SM)


def splits_for_programs(items: int, S: int, block_n: int, num_sms: int, programs_per_sm: float) -> int:
    """The split count that gives at most `programs_per_sm` programs per SM, as close as it can (whole
    tiles, at most MAX_SPLITS). Rounded down: a few programs past a full wave wait for a second one
    (H200, 7B 64k, 32 KV heads: 9 splits 260 µs, 8 splits 240 µs, bench/results/h200-explore-1)."""
    n_blocks = max(1, math.ceil(S / block_n))
    wanted = math.floor(programs_per_sm * num_sms / items + 1e-9)  # a stored ratio may be a hair short
    return max(1, min(wanted, n_blocks // MIN_BLOCKS_PER_SPLIT, MAX_SPLITS))


def wave_splits(items: int, S: int, block_n: int, num_sms: int, resident_per_sm: int) -> int:
    """FlashAttention-3's split rule: the fewest splits whose programs fill whole waves of resident
    programs (`resident_per_sm` per SM) with at least 85% of the best wave efficiency reachable."""
    n_blocks = max(1, math.ceil(S / block_n))
    slots = num_sms * resident_per_sm
    if items >= 0.8 * slots or n_blocks <= 4:
        return 1
    limit = min(MAX_SPLITS, num_sms, n_blocks)
    efficiency = [(items * s / slots) / math.ceil(items * s / slots) for s in range(1, limit + 1)]
    best = max(efficiency)
    return next(s for s, e in enumerate(efficiency, start=1) if e >= 0.85 * best)


@functools.lru_cache(maxsize=256)  # a pure function of shapes, asked on every launch
def plan_launch(B: int, Hq: int, Hkv: int, S: int, D: int, *, T: int = 1, scaled: bool = False,
                num_sms: int = 132, num_splits: int | None = None, elem_bytes: int = 2,
                wgmma8: bool = False) -> LaunchPlan:
    """The heuristic plan. The grid is num_splits x (B x Hkv x row blocks) programs. `elem_bytes` is
    the caches' element size (8-bit caches: 1 whatever it says): fp32 tiles get two stages, not three,
    to stay within shared memory. `wgmma8`: the device has sm_90's 8-bit warpgroup MMAs; then one token of
    a GQA model over an 8-bit cache runs the transposed kernel (kernels/split_kv_transposed.py, where V is
    sequence-major as models store it; the dot kernel with the same tiles otherwise) in 128-key tiles, 4 warps,
    3 stages, its tiles through tensor descriptors (TMA) where the strides allow: on an H200 15-30% faster than
    this heuristic's dot-kernel plan at CodeLlama-34B's rows (B=1 16k-128k, B=8 16k, B=64 2k, both 8-bit kinds;
    bench/results/NOTES.md, Run 20), and within 0-5% of the plans tuned for that card; TMA 0-2.7% faster than
    pointers there (Run 21)."""
    _check_plan_shape(B, Hq, Hkv, S, D, T, num_sms, num_splits, elem_bytes)
    group = Hq // Hkv
    block_m, block_n, block_d = tiles(group, T, D)
    transposed = wgmma8 and scaled and T == 1 and group > 1 and block_d <= 128
    if transposed:
        block_n = 128
    items = B * Hkv * -(-group * T // block_m)
    if num_splits is None:
        num_splits = heuristic_splits(items, S, block_n, num_sms)
    if transposed:
        return LaunchPlan(num_splits=num_splits, block_m=block_m, block_n=block_n, block_d=block_d, num_warps=4,
                          num_stages=3, transposed=True, tma=True)
    tile_pair_bytes = 2 * block_n * block_d * (1 if scaled else elem_bytes)  # a K and a V tile
    stages = PIPELINE_STAGES if PIPELINE_STAGES * tile_pair_bytes <= STAGED_BYTES else 2
    # One fp8 row per KV head: the CUDA-core kernel, its loads pipelined (H200, 7B 64k: 133.5 vs the
    # dots' 155.8 µs; 16k 40.3 vs 46.9). bf16 rows tie (243.7 vs 243.1): they keep the dots.
    row = scaled and group * T == 1
    return LaunchPlan(num_splits=num_splits, block_m=block_m, block_n=block_n, block_d=block_d,
                      num_warps=8 if block_m >= 64 else 4, num_stages=stages, loop_stages=3 if row else 0,
                      row_kernel=row)


def _check_plan_shape(B, Hq, Hkv, S, D, T, num_sms, num_splits, elem_bytes) -> None:
    """plan_launch's arguments as a call could have them (it is public: a bad shape is a ValueError, not a
    ZeroDivisionError or a plan of 0 or a million splits); a call's own values are checked again at launch."""
    sizes = dict(B=B, Hq=Hq, Hkv=Hkv, S=S, D=D, T=T, num_sms=num_sms)
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"plan_launch: {name} must be a positive int, got {value!r}")
    if Hq % Hkv:
        raise ValueError(f"plan_launch: query heads ({Hq}) must be a multiple of key/value heads ({Hkv})")
    if num_splits is not None and (isinstance(num_splits, bool) or not isinstance(num_splits, int)
                                   or not 1 <= num_splits <= MAX_SPLITS):
        raise ValueError(f"plan_launch: num_splits must be an int in 1..{MAX_SPLITS} or None, got {num_splits!r}")
    if elem_bytes not in (1, 2, 4, 8):
        raise ValueError(f"plan_launch: elem_bytes must be a cache element's size (1, 2, 4 or 8), got {elem_bytes!r}")


def resident_programs(registers: int, shared_bytes: int, num_warps: int) -> int:
    """Programs of one kernel an sm_90 SM holds at once: registers are allocated per warp in units of
    256 from 64K, shared memory from 228 KiB with 1 KiB reserved per program, at most 64 warps and
    32 programs. Splits that fill whole waves of these are the ones worth timing (kernels.tune)."""
    per_warp = -(-registers * 32 // 256) * 256
    by_registers = 65536 // (per_warp * num_warps) if registers else 32
    by_shared = (228 * 1024) // (shared_bytes + 1024)
    return max(0, min(by_registers, by_shared, 64 // num_warps, 32))


# --- tuned plans: one JSON file per device, written by `python -m kernels.bench --tune` -----------

def device_slug(name: str) -> str:
    """File name of a device's plan table: "NVIDIA H200" -> "nvidia-h200"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def shape_key(B: int, Hq: int, Hkv: int, S: int, D: int, T: int, scaled: bool, int8: bool = False) -> dict:
    """`scaled`: an 8-bit cache; `int8`: that cache holds int8 (its own entries; else e4m3's plans stand in)."""
    return {"kind": "int8" if int8 else "fp8" if scaled else "bf16", "group": Hq // Hkv, "D": D, "T": T, "B": B,
            "Hkv": Hkv, "S": S}


TABLE_KINDS = ("bf16", "fp8", "int8")              # shape_key's kinds
KEY_FIELDS = ("group", "D", "T", "B", "Hkv", "S")   # and its numbers
_PLAN_TYPES = {"int": int, "str": str, "bool": bool}
_TYPE_WORDS = {int: "an integer", str: "a string", bool: "true or false"}
# The values a plan's fields may take, where the kernels refuse others only at a GPU's first call (after the load):
# tl.arange sizes and warp counts are powers of two, a split count at least 1 (0 launched an empty grid), the
# partials' dtypes kernels.interface has, the load hints Triton's code generator takes.
POWERS_OF_TWO = ("block_m", "block_n", "block_d", "num_warps")
AT_LEAST_ONE = ("num_splits",)
PARTIALS = ("float32", "bfloat16")
CACHE_MODIFIERS = ("", ".ca", ".cg", ".cs", ".cv")
EVICTIONS = ("", "evict_first", "evict_last")
_CHOICES = {"partials": PARTIALS, "cache_modifier": CACHE_MODIFIERS, "eviction": EVICTIONS}


def _value_refused(name: str, value) -> str | None:
    """Why a plan field's value (of the field's type) cannot launch, or None."""
    if name in POWERS_OF_TWO and (value < 1 or value & (value - 1)):
        return "a power of two"
    if name in AT_LEAST_ONE and value < 1:
        return "a positive integer"
    if type(value) is int and value < 0:
        return "0 or more"
    if name in _CHOICES and value not in _CHOICES[name]:
        return "one of " + ", ".join(json.dumps(choice) for choice in _CHOICES[name])
    return None


def check_table(table) -> None:
    """A plan file's JSON as `tuned_plan` reads it, checked: a ValueError naming the first entry it could not use (a
    cache kind it does not know, a shape number missing, a plan field LaunchPlan has not or of another type). The app's
    start-up check reads CODECOMPLETE_PLANS_DIR's tables with it (this module imports neither torch nor Triton)."""
    if not isinstance(table, dict) or not isinstance(table.get("entries"), list):
        raise ValueError('not a plan table: a JSON object with a list of "entries", as python -m kernels.bench --tune '
                         'writes it')
    device = table.get("device")
    if not isinstance(device, dict) or type(device.get("sms")) is not int:     # (load_table matches the card by it)
        raise ValueError(f'device is {json.dumps(device)}, not {{"sms": the SM count, ...}}')
    fields = {f.name: _PLAN_TYPES[f.type] for f in dataclasses.fields(LaunchPlan)}
    for i, entry in enumerate(table["entries"]):
        key, plan = (entry.get("key"), entry.get("plan")) if isinstance(entry, dict) else (None, None)
        if not isinstance(key, dict) or not isinstance(plan, dict):
            raise ValueError(f'entries[{i}]: not {{"key": {{...}}, "plan": {{...}}, ...}}')
        if key.get("kind") not in TABLE_KINDS:
            raise ValueError(f"entries[{i}]: key.kind is {json.dumps(key.get('kind'))}, not one of "
                             f"{', '.join(TABLE_KINDS)}")
        for name in KEY_FIELDS:
            if name not in key or type(key[name]) is not int or key[name] < 1:
                raise ValueError(f"entries[{i}]: key.{name} is " + (f"{json.dumps(key[name])}, not a positive integer"
                                                                   if name in key else "missing"))
        for name, value in plan.items():
            if name not in fields:
                raise ValueError(f"entries[{i}]: plan: {name} is no field of a launch plan")
            if type(value) is not fields[name]:
                raise ValueError(f"entries[{i}]: plan: {name} is {json.dumps(value)}, not {_TYPE_WORDS[fields[name]]}")
            need = _value_refused(name, value)
            if need is not None:
                raise ValueError(f"entries[{i}]: plan: {name} is {json.dumps(value)}, not {need}")
        try:
            LaunchPlan(**plan)
        except (TypeError, ValueError) as exc:      # (a field missing; a step_launch it does not know)
            raise ValueError(f"entries[{i}]: plan: {exc}") from None
        for name in ("items", "programs_per_sm"):   # (the nearest entry's, lent to another shape)
            if not isinstance(entry.get(name), (int, float)) or isinstance(entry.get(name), bool):
                raise ValueError(f"entries[{i}]: {name} is {json.dumps(entry.get(name))}, not a number")
        if type(entry.get("lend", True)) is not bool:    # (a string "false" would lend)
            raise ValueError(f"entries[{i}]: lend is {json.dumps(entry['lend'])}, not true or false")


def check_tables(directory: Path) -> None:
    """Every `*.json` of a plans folder, as `load_table` would read it: a ValueError naming the file and its problem."""
    for path in sorted(Path(directory).glob("*.json")):
        if not path.is_file():      # (a FIFO's read would wait for a writer)
            raise ValueError(f"{path.name}: not a file")
        try:
            check_table(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:        # (not JSON, not UTF-8, unreadable: also ValueErrors or OSErrors)
            raise ValueError(f"{path.name}: {exc}") from None
        except RecursionError:                      # (arrays in arrays, thousands deep: Python's reader gives up)
            raise ValueError(f"{path.name}: it nests too deeply to be a plan table") from None


@functools.lru_cache(maxsize=8)
def load_table(name: str, num_sms: int, directory: Path = PLANS_DIR) -> tuple[dict, ...]:
    """The tuned entries for this device, or () when there is no file or it was made for another
    SM count (a partitioned or different card); a table `check_table` refuses is a ValueError naming it."""
    path = directory / f"{device_slug(name)}.json"
    if not path.exists():
        return ()
    table = json.loads(path.read_text(encoding="utf-8"))
    try:
        check_table(table)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if table["device"]["sms"] != num_sms:
        return ()
    return tuple(table["entries"])


def save_table(path: Path, table: dict) -> None:
    """Write a plan file beside `path`, then rename it over: a run cut while writing leaves the last whole file
    (a torn committed table would fail every load)."""
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    partial.replace(path)


def _distance(a: dict, b: dict) -> float:
    return sum(abs(math.log2(x) - math.log2(y)) for x, y in
               ((a["B"] * a["Hkv"], b["B"] * b["Hkv"]), (a["S"], b["S"]), (a["T"], b["T"])))


@functools.lru_cache(maxsize=256)
def tuned_plan(name: str, num_sms: int, B: int, Hq: int, Hkv: int, S: int, D: int, T: int, scaled: bool,
               *, int8: bool = False, directory: Path = PLANS_DIR) -> LaunchPlan | None:
    """The measured plan for this shape on this device, or None (then the heuristic decides).

    Entries of the same kind (cache dtype, group, head dim, one or several query tokens) stand in for
    each other: the nearest (batch x KV heads, length, tokens on log scales) lends its options. An int8 cache
    without entries of its own takes e4m3's (the same bytes per key). An entry marked `"lend": false` (chosen by
    the whole decode step's time at its shape: `models.step_plans`) answers its own shape only."""
    key = shape_key(B, Hq, Hkv, S, D, T, scaled, int8)
    table = load_table(name, num_sms, directory)

    def lenders(kind: str) -> list[dict]:      # (an entry chosen inside one shape's decode step lends nothing)
        return [e for e in table if e["key"]["kind"] == kind and all(e["key"][k] == key[k] for k in ("group", "D"))
                and (e["key"]["T"] > 1) == (T > 1) and e.get("lend", True)]
    # Its own entry, else the nearest: another shape can be at distance 0 too (the paper's B=4 x 2 KV heads at 16k
    # and 34B's B=1 x 8 at 16k), and the table's order must not decide which one answers.
    own = next((e for e in table if e["key"] == key), None)
    same_kind = lenders(key["kind"]) or (lenders("fp8") if int8 else [])
    if own is None and not same_kind:
        return None
    nearest = own or min(same_kind, key=lambda e: _distance(e["key"], key))
    plan = LaunchPlan(**nearest["plan"])
    if not scaled:  # fp8 options mean nothing here (older tables recorded the then default fp8_early=True)
        plan = dataclasses.replace(plan, fp8_early=False, fp8_dot=False)
    if not int8:
        plan = dataclasses.replace(plan, int8_dot=False)
    if nearest["key"] == key:
        return plan
    # Another shape of the same kind: its tile options, rows for this T, and as many waves of
    # programs as it filled (partly) for the split count. Its exact programs per SM would strand
    # SMs: 34B 16k's 120 programs (15 splits x 8 heads) lent to B=8 gave 64 heads 1 split, half the
    # GPU idle (151.8 µs vs cuDNN's 131.1, bench/results/h200-final-1); one wave allows 2 splits.
    # Nor is its step_launch lent: launching late paid at some grids and lost at others (Run 19)
    plan = dataclasses.replace(plan, block_m=tiles(Hq // Hkv, T, D)[0], step_launch="")
    items = B * Hkv * plan.row_blocks(Hq // Hkv, T)
    if nearest["plan"]["num_splits"] == 1 and items >= nearest["items"]:
        splits = 1
    else:
        waves = math.ceil(nearest["programs_per_sm"] - 1e-6)
        splits = splits_for_programs(items, S, plan.block_n, num_sms, waves)
    return dataclasses.replace(plan, num_splits=splits)


def device_plan(name: str, num_sms: int, B: int, Hq: int, Hkv: int, S: int, D: int, T: int, scaled: bool, *,
                int8: bool = False, num_splits: int | None = None, elem_bytes: int = 2, wgmma8: bool = False,
                tuned: bool = True, directory: Path = PLANS_DIR) -> LaunchPlan:
    """The plan a shape runs on a named device: its tuned plan if `tuned` and the device's table has one
    (`tuned_plan`), else the heuristic (`plan_launch`, with the device's SM count, `elem_bytes` and `wgmma8`).
    A forced `num_splits` replaces either's split count. A pure function of its arguments: `kernels.interface.plan_for`
    asks it for a call's device, `bench/plan_borrowers.py` for two versions of the tables."""
    plan = tuned_plan(name, num_sms, B, Hq, Hkv, S, D, T, scaled, int8=int8, directory=directory) if tuned else None
    if plan is None:
        return plan_launch(B, Hq, Hkv, S, D, T=T, scaled=scaled, num_sms=num_sms, num_splits=num_splits,
                           elem_bytes=elem_bytes, wgmma8=wgmma8)
    return plan if num_splits in (None, plan.num_splits) else dataclasses.replace(plan, num_splits=num_splits)


def table_entry(B: int, Hq: int, Hkv: int, S: int, D: int, T: int, scaled: bool, plan: LaunchPlan,
                num_sms: int, measured: dict, int8: bool = False, lend: bool = True) -> dict:
    """One entry of a plan file: the shape, the plan, and what was measured to choose it. `lend=False`: the plan is
    for this shape alone, never lent to the shapes near it (`tuned_plan`)."""
    items = B * Hkv * plan.row_blocks(Hq // Hkv, T)
    entry = {"key": shape_key(B, Hq, Hkv, S, D, T, scaled, int8), "plan": dataclasses.asdict(plan), "items": items,
             "programs_per_sm": items * plan.num_splits / num_sms, "measured": measured}
    return entry if lend else {**entry, "lend": False}

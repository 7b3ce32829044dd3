"""What the environment may set for the kernels, as data and checks that import nothing (no torch, no Triton).

The kernels read these when they are imported, which on a GPU is after the model has loaded (30 s and more); a bad
entry there ended the run as an import failure (exit 1). The app's start-up check (codecomplete/switches.py, through
models.kernel_settings) reads the same tables on any machine before anything loads, so the kinds and the numbers an
entry takes are written down once, here, for both:
- CODECOMPLETE_FUSED_CONFIGS / _FUSED_INT8_CONFIGS: kernels/fused_gemv.py's launch configurations,
  {"kind" or "kind NxK": [block_n, block_k, num_warps, num_stages(, interleave(, dp4a))]};
- CODECOMPLETE_FEW_ROWS_PLANS: kernels/few_rows_int8.py's plans, {"NxK": [block_n, block_k, num_warps, num_stages,
  split_k]};
- CODECOMPLETE_GEMV: which batch-1 projections kernels/gemv.py serves (models.llama.use_gemv reads it).
Each check raises ValueError with the entry and what it should be.
"""

from __future__ import annotations

import json

# kernels/fused_gemv.py: its kernels' kinds, and a launch configuration's fields (fused_gemv.Config's, in order):
# four numbers, then two booleans that may be left off.
FUSED_KINDS = ("qkv_rope", "norm_swiglu", "gemv", "gemv_deep", "gemv_norm")
FUSED_NUMBERS = ("block_n", "block_k", "num_warps", "num_stages")
FUSED_FLAGS = ("interleave", "dp4a")
# kernels/few_rows_int8.py: a measured plan's fields (the values of few_rows_int8.PLANS, in order)
FEW_ROWS_NUMBERS = ("block_n", "block_k", "num_warps", "num_stages", "split_k")
# Triton's tl.arange sizes and warp counts are powers of two
POWERS_OF_TWO = ("block_n", "block_k", "num_warps")

GEMV_MODES = {"wide": "deep ones on cuBLAS (the default)", "1": "every batch-1 projection, deep ones split-K",
              "0": "none: cuBLAS"}
# Measured on 2 x H200 (bench/results/tp-x2-run2/): split-K lost to cuBLAS on every deep projection
# (34B w2 115 vs 89 µs) and made whole steps 6-8% slower, so deep projections stay on cuBLAS by default.
DEFAULT_GEMV = "wide"


def fused_key(text: str) -> str | tuple[str, int, int]:
    """A fused configuration's key from its JSON spelling: "gemv" or "gemv 8192x4096" -> ("gemv", 8192, 4096)."""
    kind, _, shape = text.strip().partition(" ")
    if kind not in FUSED_KINDS:
        raise ValueError(f"unknown kernel kind {kind!r} in {text!r} (known: {', '.join(FUSED_KINDS)})")
    if not shape:
        return kind
    n, _, k = shape.strip().partition("x")
    if not (n.isdigit() and k.isdigit()):
        raise ValueError(f"{text!r} is not 'kind NxK'")
    return kind, int(n), int(k)


def _numbers(key: str, values, names: tuple[str, ...], flags: tuple[str, ...] = ()) -> tuple:
    """`values` checked against the fields `names` (positive integers) and then, optionally, `flags` (booleans)."""
    shape = ", ".join(names) + "".join(f"(, {flag}" for flag in flags) + ")" * len(flags)
    if not isinstance(values, list) or not len(names) <= len(values) <= len(names) + len(flags):
        count = f"{len(values)} values" if isinstance(values, list) else "not a list"
        raise ValueError(f"{key!r}: {json.dumps(values)} is {count}; an entry is [{shape}]")
    for name, value in zip(names + flags, values):
        if name in flags:
            if not isinstance(value, bool):
                raise ValueError(f"{key!r}: {name} is {json.dumps(value)}, not true or false; an entry is [{shape}]")
        elif type(value) is not int or value < 1 or (name in POWERS_OF_TWO and value & (value - 1)):
            need = "a power of two" if name in POWERS_OF_TWO else "a positive integer"
            raise ValueError(f"{key!r}: {name} is {json.dumps(value)}, not {need}; an entry is [{shape}]")
    return tuple(values)


def fused_entries(entries: dict) -> dict:
    """{key: the configuration's values} from a fused configurations file's JSON object (fused_key's keys)."""
    return {fused_key(name): _numbers(name, values, FUSED_NUMBERS, FUSED_FLAGS) for name, values in entries.items()}


def few_rows_entries(entries: dict) -> dict:
    """{(N, K): the plan's values} from a few-rows plans file's JSON object."""
    out = {}
    for key, values in entries.items():
        n, _, k = key.partition("x")
        if not (n.isdigit() and k.isdigit()):
            raise ValueError(f"{key!r} is not \"NxK\" (the weight's shape)")
        out[int(n), int(k)] = _numbers(key, values, FEW_ROWS_NUMBERS)
    return out


# The variables naming a file, and how its JSON object reads
FILES = {"CODECOMPLETE_FUSED_CONFIGS": fused_entries, "CODECOMPLETE_FUSED_INT8_CONFIGS": fused_entries,
         "CODECOMPLETE_FEW_ROWS_PLANS": few_rows_entries}


def read(name: str, path: str) -> dict:
    """The entries of the file `path` that variable `name` names (FILES), checked."""
    with open(path, encoding="utf-8") as f:
        entries = json.load(f)
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: not a JSON object")
    try:
        return FILES[name](entries)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def gemv_mode(mode: str) -> str:
    """`mode` if CODECOMPLETE_GEMV may take it, else a ValueError naming the choices."""
    if mode not in GEMV_MODES:
        raise ValueError("choose from " +
                         ", ".join(f"{m} ({what})" for m, what in GEMV_MODES.items()))
    return mode

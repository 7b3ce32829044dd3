"""The boolean environment switches (README: "Switches for measuring and debugging"), read one way.

Each is on unless set off: `0`, `false`, `no` or `off` turn it off, `1`, `true`, `yes` or `on` (or empty, as unset)
leave it on, in any case; any other value is a usage error (exit 2) at start-up, before any slow work. They took only
`0` as off, so `=false` silently meant on.

The app reads three itself (`on`); the others are read by models and kernels, which may not import the app (the
layering in ARCHITECTURE.md) and, read directly (`python -m models.bench`), still take `0` alone as off. So that the
command line and `serve` read those as they read the app's, `check_environment` (cli.main, before anything imports
models or kernels) checks every switch and writes each one set back as `0` or `1`, which those layers read as meant;
processes started from here (tensor parallelism's workers) inherit the normalized values.
"""
from __future__ import annotations

import json
import os

from .errors import UsageError

# read by the app
CPU_BF16 = "CODECOMPLETE_CPU_BF16"          # codecomplete/engines.py
GC_FREEZE = "CODECOMPLETE_GC_FREEZE"        # codecomplete/server/serve.py
WARM_PROMPTS = "CODECOMPLETE_WARM_PROMPTS"  # codecomplete/server/warming.py
# read by models and kernels as `!= "0"`
LOWER = ("CODECOMPLETE_COMPILE", "CODECOMPLETE_COMPILE_PREFILL", "CODECOMPLETE_FUSED",   # models/engine.py, llama.py
         "CODECOMPLETE_INFILL_DEVICE",                                                   # models/infill.py
         "CODECOMPLETE_PDL", "CODECOMPLETE_TUNED_PLANS")                                 # kernels/interface.py
SWITCHES = (CPU_BF16, GC_FREEZE, WARM_PROMPTS, *LOWER)

# files and a folder that kernels read (at import, on a GPU, after the model loaded): a missing file was an "internal
# error" (exit 1) from that import, a missing folder silently the heuristic's plans, an unknown kernel kind or a wrong
# count of numbers in an entry an import failure. Checked here, entries too, by the kernels' own tables
# (kernels/settings.py, through models.kernel_settings: no torch or Triton is imported); so is CODECOMPLETE_GEMV.
FILES = ("CODECOMPLETE_FUSED_CONFIGS", "CODECOMPLETE_FUSED_INT8_CONFIGS",    # kernels/fused_gemv.py
         "CODECOMPLETE_FEW_ROWS_PLANS")                                      # kernels/few_rows_int8.py
FOLDERS = ("CODECOMPLETE_PLANS_DIR",)           # kernels/plan.py: a folder of plan tables (check_tables)

OFF = ("0", "false", "no", "off")
ON = ("1", "true", "yes", "on")


def on(name: str) -> bool:
    """Whether switch `name` is on (the default); a value that is neither word is a UsageError."""
    value = os.environ.get(name, "").strip().lower()
    if value in OFF:
        return False
    if value in ON or value == "":
        return True
    raise UsageError(f"${name} is {os.environ[name]!r}: it takes {', '.join(OFF)} (off) or {', '.join(ON)} (on)")


def check_environment() -> None:
    """Every switch set: checked (`on`), and written back as "0" or "1" for the layers below, which read "0" alone;
    the files and folders named: there, and the files JSON objects of lists the kernels take (`check_file`);
    CODECOMPLETE_GEMV one of its modes."""
    for name in SWITCHES:
        if os.environ.get(name, "").strip():
            os.environ[name] = "1" if on(name) else "0"
    for name in FILES:
        if os.environ.get(name):        # (empty: unset, as the kernels read it)
            check_file(name, os.environ[name])
    from models.kernel_settings import GEMV, check_tables, gemv_mode
    for name in FOLDERS:
        if os.environ.get(name) and not os.path.isdir(os.environ[name]):
            raise UsageError(f"${name} is {os.environ[name]!r}: no such folder")
        if os.environ.get(name):
            try:
                check_tables(os.environ[name])      # (each *.json: a table the planner reads at a GPU's first call)
            except ValueError as exc:
                raise UsageError(f"${name} is {os.environ[name]!r}: {exc}") from None
    if os.environ.get(GEMV):
        try:
            gemv_mode(os.environ[GEMV])
        except ValueError as exc:
            raise UsageError(f"${GEMV} is {os.environ[GEMV]!r}: {exc}") from None


def check_file(name: str, path: str) -> None:
    """A file of launch configurations or plans, as the kernels read it: a JSON object whose values are lists, each
    entry one the kernels take (kernels/settings.py)."""
    if os.path.exists(path) and not os.path.isfile(path):    # (a FIFO's read would wait for a writer)
        raise UsageError(f"${name} is {path!r}: not a file")
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except OSError as exc:
        raise UsageError(f"${name} is {path!r}: {exc.strerror or exc}") from None
    except ValueError as exc:      # (not JSON, or not UTF-8)
        raise UsageError(f"${name} is {path!r}: not a JSON file ({exc})") from None
    except RecursionError:         # (arrays in arrays, thousands deep: Python's reader gives up)
        raise UsageError(f"${name} is {path!r}: not a JSON file (it nests too deeply)") from None
    if not isinstance(entries, dict) or not all(isinstance(value, list) for value in entries.values()):
        raise UsageError(f"${name} is {path!r}: not a JSON object of lists, as the kernels' benchmarks write "
                         f"(README: Switches for measuring and debugging)")
    from models.kernel_settings import check_file_entries
    try:
        check_file_entries(name, entries)
    except ValueError as exc:       # (an entry the kernels would refuse: its kind, its count of numbers)
        raise UsageError(f"${name} is {path!r}: {exc}") from None

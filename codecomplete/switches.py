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
    """Every switch set: checked (`on`), and written back as "0" or "1" for the layers below, which read "0" alone."""
    for name in SWITCHES:
        if os.environ.get(name, "").strip():
            os.environ[name] = "1" if on(name) else "0"

"""What every CPU benchmark records next to its numbers: the machine, its load, and the versions that ran."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from datetime import datetime, timezone
from pathlib import Path


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "system": platform.platform(), "python": platform.python_version()}


def versions(names: list[str]) -> dict:
    """Installed versions of the distributions ``names`` ("-" for one that is not installed)."""
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "-"
    return found


def header(load_average_before: tuple[float, float, float], version_names: list[str]) -> dict:
    """The first keys of a results file: when, where, how busy, with what."""
    return {
        "date": now(),
        "machine": machine(),
        "load_average_before": load_average_before,
        "load_average_after": os.getloadavg(),
        "versions": versions(version_names),
    }


def describe(info: dict) -> str:
    """A header's machine and versions as one line of prose: "CPU (N cores), Python X, torch Y, ..."."""
    found = info["machine"]
    return (f"{found['cpu']} ({found['cores']} cores), Python {found['python']}, "
            + ", ".join(f"{name} {version}" for name, version in info["versions"].items()))

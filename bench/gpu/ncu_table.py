"""The table of bench/gpu/ncu_attention.sh: one row per profiled kernel, named by its case.

    python bench/gpu/ncu_table.py ncu-attention.log ncu-attention.csv

The log holds the script's `CASE <name>` lines and ncu's `==PROF== Profiling "<kernel>"` lines in launch
order; the CSV (`ncu -i report --csv --page raw`) holds one row per kernel in the same order (a header row,
a units row). Metrics a section did not collect print as "-".
"""

from __future__ import annotations

import csv
import re
import sys

SCALE = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "second": 1e6,
         "byte": 1e-6, "Kbyte": 1e-3, "Mbyte": 1.0, "Gbyte": 1e3, "Tbyte": 1e6}
STALL = re.compile(r"smsp__average_warps?_(?:latency_)?issue_stalled_(\w+?)_per_issue_active\.ratio$")


def cases_in_order(log: str) -> list[str]:
    names, current = [], "?"
    for line in open(log, errors="replace"):
        if line.startswith("CASE "):
            current = line[5:].strip()
        elif line.startswith("==PROF== Profiling"):
            names.append(current)
    return names


def read_rows(path: str) -> tuple[list[dict], dict]:
    lines = [line for line in open(path, errors="replace") if line.startswith('"')]
    reader = list(csv.reader(lines))
    header, units = reader[0], reader[1]
    return [dict(zip(header, row)) for row in reader[2:]], dict(zip(header, units))


def number(row: dict, units: dict, key: str) -> float | None:
    text = row.get(key, "").replace(",", "")
    try:
        value = float(text)
    except ValueError:
        return None
    return value * SCALE.get(units.get(key, ""), 1.0)


def main(log: str, table: str) -> int:
    names = cases_in_order(log)
    rows, units = read_rows(table)
    print("| case | kernel | µs | DRAM read MB | read TB/s | DRAM % peak | grid | regs | waves | occupancy achieved / "
          "theoretical % | issue active % | top stalls (warps per issue) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for i, row in enumerate(rows):
        f = lambda key: number(row, units, key)  # noqa: E731
        us, mb = f("gpu__time_duration.sum"), f("dram__bytes_read.sum")
        rate = f"{mb / us:.2f}" if us and mb else "-"
        stalls = sorted(((v, m.group(1)) for k in row if (m := STALL.match(k)) and (v := f(k)) is not None
                         and m.group(1) not in ("selected",)), reverse=True)[:4]
        fmt = lambda v, p=1: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
        kernel = row.get("Kernel Name", "?")[:40]
        print(f"| {names[i] if i < len(names) else '?'} | {kernel} | {fmt(us)} | {fmt(mb, 0)} | {rate} | "
              f"{fmt(f('dram__throughput.avg.pct_of_peak_sustained_elapsed'))} | {fmt(f('launch__grid_size'), 0)} | "
              f"{fmt(f('launch__registers_per_thread'), 0)} | {fmt(f('launch__waves_per_multiprocessor'), 2)} | "
              f"{fmt(f('sm__warps_active.avg.pct_of_peak_sustained_active'))} / "
              f"{fmt(f('sm__maximum_warps_per_active_cycle_pct'))} | "
              f"{fmt(f('smsp__issue_active.avg.pct_of_peak_sustained_active'))} | "
              + ", ".join(f"{name} {v:.2f}" for v, name in stalls) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))

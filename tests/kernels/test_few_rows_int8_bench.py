"""The few-row int8 sweep (kernels/few_rows_int8_bench.py) off the GPU: what it would compile at the real shapes,
and one small sweep run end to end in the interpreter with a stand-in timer (its checks, table and plan entries)."""

import itertools
import json

import pytest
import torch

import kernels.few_rows_int8_bench as bench
from kernels.few_rows_int8 import plan


def test_the_sweep_builds_two_binaries_a_tile_at_most():
    """At every shape the launches are distinct, take the plan's and Run 35's, and need one build a tile for one
    range and one for split-K (M and the split count are run-time arguments): the H200 call stays short."""
    builds = set()
    for N, K in bench.SHAPES.values():
        launches = bench.launches(N, K, 132)
        assert len(launches) == len(set(launches)) and plan(N, K, 132)[:5] in launches
        assert bench.run35_launch(N, K) in launches
        builds.update((*launch[:4], launch[4] > 1) for launch in launches)
    assert len(builds) <= 2 * len(bench.TILES)
    assert bench.run35_launch(4096, 11008)[0] == 16 and bench.run35_launch(22016, 4096)[0] == 64


@pytest.fixture
def small_sweep(monkeypatch):
    """Two tiles and two split counts, a stand-in timer that runs the launches once and hands out times."""
    monkeypatch.setattr(bench, "TILES", [(16, 64, 4, 3), (64, 128, 4, 4)])
    monkeypatch.setattr(bench, "SPLITS", [1, 4])
    times = itertools.count(5.0, 0.25)

    def timer(run, replays):
        run()
        return next(times)
    return lambda rows: bench.sweep({"deep": (64, 1024), "ragged": (37, 400)}, rows, torch.device("cpu"), timer,
                                    1e12, rotate=1, log=lambda line: None)


def test_a_small_sweep_runs_checks_and_reports(small_sweep):
    result = small_sweep([2, 9])
    assert result["wrong"] == []
    assert [(r["shape"], r["M"]) for r in result["rows"]] == [("deep", 2), ("deep", 9), ("ragged", 2), ("ragged", 9)]
    for r in result["rows"]:
        assert r["plan"] == list(plan(r["N"], r["K"])[:5]) and r["best_us"] == min(t["us"] for t in r["launches"])
    lines = []
    entries = bench.report(result, lines.append)
    table = [line for line in lines if line.startswith("| ") and not line.startswith("| shape")]
    assert len(table) == 4 and all(line.count("|") == 13 for line in table)
    assert json.loads(lines[-1].split(": ", 1)[1]) == entries
    assert set(entries) <= {"64x1024", "37x400"}


def test_the_sweep_flags_a_wrong_launch(small_sweep, monkeypatch):
    """Split launches that lose a partial's sign, or leave an output unwritten (NaN), are reported."""
    real = bench.few_rows_int8

    def off(x, w, s, **launch):
        y = real(x, w, s, **launch)
        if launch["split_k"] > 1:
            y = -y if launch["block_n"] == 16 else y.index_fill(1, torch.tensor([3]), float("nan"))
        return y
    monkeypatch.setattr(bench, "few_rows_int8", off)
    wrong = small_sweep([3])["wrong"]
    assert len(wrong) == sum(1 for N, K in ((64, 1024), (37, 400)) for launch in bench.launches(N, K, 132)
                             if launch[4] > 1)
    assert any("error inf" in w for w in wrong) and not all("error inf" in w for w in wrong)

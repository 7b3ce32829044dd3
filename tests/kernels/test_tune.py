"""The GPU-only tools' logic on the CPU: the plan exploration (interpreter kernels, a wall-clock timer
in place of CUDA-graph replays), the plan file it writes and how flash_decode's planner reads it
back, and the bars the benchmark prints. The GPU run happens once; a bug found there costs it."""

import dataclasses
import json
import time

import pytest

import kernels.tune as tune
from kernels import bench
from kernels.plan import LaunchPlan, load_table, plan_launch, tuned_plan, wave_splits


def wall_clock_us(run, replays=1):
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) * 1e6


@pytest.fixture
def cpu_exploration(monkeypatch):
    monkeypatch.setattr(bench, "DEVICE", "cpu")
    monkeypatch.setattr(tune, "graph_replay_us", wall_clock_us)
    monkeypatch.setattr(tune, "compile_in_parallel", lambda calls: 0.0)
    monkeypatch.setattr(tune, "n_sets_for", lambda shape: 1)
    monkeypatch.setattr(tune, "READ_ONLY_CONFIGS", [(4, 1024, 4, 1)])
    real_tilings = tune.tilings
    monkeypatch.setattr(tune, "tilings", lambda case, base: real_tilings(case, base)[:1] + real_tilings(case, base)[4:5])


@pytest.mark.parametrize("fp8, T", [(False, 1), (True, 2)])
def test_exploration_checks_times_and_picks_a_correct_plan(cpu_exploration, fp8, T, tmp_path):
    case = tune.Case(bench.Shape("tiny", 1, 256, 4, 2, 32), T=T, fp8=fp8)
    logged = []
    result = tune.measure_case(case, num_sms=4, clock=tune.Clock(600), log=logged.append)
    stages = {v["stage"] for v in result["variants"]}
    assert {"baseline", "splits", "options"} <= stages
    assert any(line.startswith("  refine:") for line in logged)  # its candidates may all be known already
    assert all("rel_err" in v for v in result["variants"] if "error" not in v)
    assert result["best"] and result["best"]["rel_err"] < tune.TOLERANCE
    assert LaunchPlan(**result["best"]["plan"]).num_splits >= 1
    assert result["best"]["us"] > 0 and result["heuristic_us"] > 0
    assert any(v["label"] == "tma" and v["ok"] for v in result["variants"])  # descriptors run in the interpreter
    if fp8:  # measured, but its accuracy keeps it from being chosen
        dot = next(v for v in result["variants"] if v["label"] == "fp8 dot")
        assert dot["rel_err"] > result["best"]["rel_err"]
    # The plan file from this sweep, read back by the planner on "this device".
    env = {"card": "Test GPU 7", "sms": 4, "date": "2026-11-30", "torch": "t", "triton": "t", "read_bandwidth": 1.0,
           "copy_bandwidth": 1.0}
    path = tune.plans_from_sweep({"env": env, "cases": [result]}, tmp_path)
    assert path.name == "test-gpu-7.json"
    load_table.cache_clear()
    tuned_plan.cache_clear()
    s = case.shape
    got = tuned_plan("Test GPU 7", 4, s.B, s.Hq, s.Hkv, s.S, s.D, T, fp8, directory=tmp_path)
    assert got == LaunchPlan(**result["best"]["plan"])
    assert tuned_plan("Test GPU 7", 8, s.B, s.Hq, s.Hkv, s.S, s.D, T, fp8, directory=tmp_path) is None  # other SM count
    assert tuned_plan("Other GPU", 4, s.B, s.Hq, s.Hkv, s.S, s.D, T, fp8, directory=tmp_path) is None


def test_nearest_entry_lends_its_tiles_and_programs_per_sm(tmp_path):
    plan = LaunchPlan(num_splits=16, block_m=16, block_n=128, block_d=128, num_warps=8, num_stages=3, loop_stages=3,
                      eviction="evict_first")
    entry = tune.table_entry(1, 64, 8, 131072, 128, 1, False, plan, 132, {"us": 1.0})
    (tmp_path / "gpu-x.json").write_text(json.dumps({"device": {"name": "GPU X", "sms": 132}, "entries": [entry]}))
    load_table.cache_clear()
    tuned_plan.cache_clear()
    same = tuned_plan("GPU X", 132, 1, 64, 8, 131072, 128, 1, False, directory=tmp_path)
    assert same == plan
    other = tuned_plan("GPU X", 132, 2, 64, 8, 32768, 128, 1, False, directory=tmp_path)  # twice the programs a split
    assert other.block_n == 128 and other.eviction == "evict_first" and other.num_splits == 8
    assert tuned_plan("GPU X", 132, 1, 32, 32, 4096, 128, 1, False, directory=tmp_path) is None  # another group
    assert tuned_plan("GPU X", 132, 1, 64, 8, 4096, 128, 1, True, directory=tmp_path) is None    # fp8: not measured
    assert tuned_plan("GPU X", 132, 1, 64, 8, 4096, 128, 4, False, directory=tmp_path) is None   # T > 1: not measured
    verify = tune.table_entry(1, 64, 8, 65536, 128, 8, False, dataclasses.replace(plan, block_m=64), 132, {"us": 1.0})
    (tmp_path / "gpu-x.json").write_text(json.dumps({"device": {"name": "GPU X", "sms": 132}, "entries": [entry, verify]}))
    load_table.cache_clear()
    tuned_plan.cache_clear()
    four = tuned_plan("GPU X", 132, 1, 64, 8, 65536, 128, 4, False, directory=tmp_path)  # T=8's options, rows for T=4
    assert four.block_m == 32 and four.block_n == 128 and four.num_splits == 16


def test_wave_splits_fill_whole_waves():
    """FlashAttention-3's rule: 8 KV heads on 132 SMs with one resident program each: 15 splits make
    120 programs (91% of a wave, the first count within 85% of the best); unsplit when the batch
    fills the GPU or the sequence is short."""
    assert wave_splits(8, 131072, 64, 132, 1) == 15
    assert wave_splits(8, 131072, 64, 132, 2) == 29
    assert wave_splits(256, 4096, 64, 132, 1) == 1
    assert wave_splits(8, 256, 64, 132, 1) == 1
    assert plan_launch(1, 64, 8, 131072, 128).num_splits == 33  # the H100 heuristic is unchanged


def test_bars_read_the_rows():
    def row(label, model, B, S, kv_mb, g):
        shape = bench.Shape(model, B, S, 64, 8)
        r = {"shape": shape.__dict__ | {"label": label}, "kv_mb": kv_mb, "graph_us": g}
        r["read_tb_s"] = {n: (shape.fp8_bytes if n.endswith("_fp8") else shape.kv_bytes) / us / 1e6 for n, us in g.items()}
        return r
    rows = [row("34B B=1 S=1k", "34B", 1, 1024, 4, {"flash_decode": 6.0, "sdpa_cudnn": 7.7, "sdpa_flash": 9.0}),
            row("34B B=1 S=4k", "34B", 1, 4096, 17, {"flash_decode": 11.5, "sdpa_cudnn": 11.4}),
            row("34B B=1 S=128k", "34B", 1, 131072, 537, {"flash_decode": 120.0, "sdpa_cudnn": 126.9,
                                                           "flash_decode_fp8": 80.0})]
    results = {b["bar"]: b for b in bench.bars(rows, read_bw=4.5e12)}
    assert results["34B B=1 S=1k: >= 1.25x cuDNN"]["met"] is True            # 7.7 / 6.0 = 1.28
    assert results["34B B=1 S=4k: >= 1.25x cuDNN"]["met"] is False           # 0.99
    every = results["every shape at least as fast as the best SDPA backend"]
    assert every["met"] is False and "34B B=1 S=4k 0.99x" in every["measured"]
    assert results["K+V >= 256 MB: read rate >= 4.45 TB/s"]["met"] is True
    assert results["fp8 34B B=1 S=128k: >= 1.4x the best bf16 SDPA"]["met"] is True
    assert results["fp8 7B B=1 S=64k: >= 1.6x the best bf16 SDPA"]["met"] is None

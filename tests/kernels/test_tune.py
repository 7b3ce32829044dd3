"""The GPU-only tools' logic on the CPU: the plan exploration (interpreter kernels, a wall-clock timer
in place of CUDA-graph replays), the plan file it writes and how flash_decode's planner reads it
back, and the bars the benchmark prints. The GPU run happens once; a bug found there costs it."""

import dataclasses
import json
import time
from pathlib import Path

import pytest
import torch

import kernels.tune as tune
from kernels import bench, check, reference
from kernels.plan import PLANS_DIR, LaunchPlan, load_table, plan_launch, resident_programs, tuned_plan, wave_splits


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
    real_tilings, real_neighbours = tune.tilings, tune.neighbours
    monkeypatch.setattr(tune, "tilings", lambda case: real_tilings(case)[:2])
    kept = ("splits x0.5", "tma", "partials", "evict_first", "fp8 dot", "fp8 early")
    monkeypatch.setattr(tune, "neighbours", lambda *args: [n for n in real_neighbours(*args) if n[0] in kept])
    monkeypatch.setattr(tune, "MAX_LOCAL_ROUNDS", 1)


@pytest.mark.parametrize("fp8, T", [(False, 1), (True, 2)])
def test_exploration_checks_times_and_picks_a_correct_plan(cpu_exploration, fp8, T, tmp_path):
    case = tune.Case(bench.Shape("tiny", 1, 256, 4, 2, 32), T=T, fp8=fp8)
    logged = []
    start = tune.plan_launch(1, 4, 2, 256, 32, T=T, scaled=fp8, num_sms=4)
    start = dataclasses.replace(start, num_splits=3, eviction="evict_first")
    result = tune.measure_case(case, num_sms=4, clock=tune.Clock(600), log=logged.append, start_plans=[("table", start)])
    stages = {v["stage"] for v in result["variants"]}
    assert {"baseline", "tilings", "splits", "local 1"} <= stages
    assert any(v["label"] == "table" and v["plan"] == dataclasses.asdict(start) for v in result["variants"])
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
                      eviction="evict_first", step_launch="late")
    entry = tune.table_entry(1, 64, 8, 131072, 128, 1, False, plan, 132, {"us": 1.0})
    (tmp_path / "gpu-x.json").write_text(json.dumps({"device": {"name": "GPU X", "sms": 132}, "entries": [entry]}))
    load_table.cache_clear()
    tuned_plan.cache_clear()
    same = tuned_plan("GPU X", 132, 1, 64, 8, 131072, 128, 1, False, directory=tmp_path)
    assert same == plan
    other = tuned_plan("GPU X", 132, 2, 64, 8, 32768, 128, 1, False, directory=tmp_path)  # twice the programs a split
    assert other.block_n == 128 and other.eviction == "evict_first" and other.num_splits == 8
    assert other.step_launch == ""                     # a choice measured inside one shape's step is not lent
    batched = tuned_plan("GPU X", 132, 8, 64, 8, 16384, 128, 1, False, directory=tmp_path)  # 64 heads: one wave
    assert batched.num_splits == 2                                                         # (not 120 / 64 -> 1)
    assert tuned_plan("GPU X", 132, 1, 32, 32, 4096, 128, 1, False, directory=tmp_path) is None  # another group
    assert tuned_plan("GPU X", 132, 1, 64, 8, 4096, 128, 1, True, directory=tmp_path) is None    # fp8: not measured
    assert tuned_plan("GPU X", 132, 1, 64, 8, 4096, 128, 4, False, directory=tmp_path) is None   # T > 1: not measured
    verify = tune.table_entry(1, 64, 8, 65536, 128, 8, False, dataclasses.replace(plan, block_m=64), 132, {"us": 1.0})
    (tmp_path / "gpu-x.json").write_text(json.dumps({"device": {"name": "GPU X", "sms": 132}, "entries": [entry, verify]}))
    load_table.cache_clear()
    tuned_plan.cache_clear()
    four = tuned_plan("GPU X", 132, 1, 64, 8, 65536, 128, 4, False, directory=tmp_path)  # T=8's options, rows for T=4
    assert four.block_m == 32 and four.block_n == 128 and four.num_splits == 16



def test_a_shape_s_own_entry_wins_over_another_at_the_same_distance(tmp_path):
    """The paper's B=4 x 2 KV heads and 34B's B=1 x 8 KV heads at 16k are both 8 heads of 16k keys apart: the
    committed table listed the paper's first, and 34B's decode step ran its plan (16 splits) instead of its own."""
    plan = LaunchPlan(num_splits=16, block_m=16, block_n=128, block_d=128, num_warps=4, num_stages=2)
    paper = tune.table_entry(4, 16, 2, 16384, 128, 1, False, plan, 132, {"us": 1.0})
    own = tune.table_entry(1, 64, 8, 16384, 128, 1, False, dataclasses.replace(plan, num_splits=15), 132, {"us": 1.0})
    for entries in ([paper, own], [own, paper]):
        (tmp_path / "gpu-x.json").write_text(json.dumps({"device": {"name": "GPU X", "sms": 132}, "entries": entries}))
        load_table.cache_clear()
        tuned_plan.cache_clear()
        assert tuned_plan("GPU X", 132, 1, 64, 8, 16384, 128, 1, False, directory=tmp_path).num_splits == 15
        assert tuned_plan("GPU X", 132, 4, 16, 2, 16384, 128, 1, False, directory=tmp_path).num_splits == 16
    load_table.cache_clear()
    tuned_plan.cache_clear()


def test_an_int8_cache_has_its_own_entries_else_takes_e4m3s(tmp_path):
    """int8 and e4m3 caches read the same bytes per key but not with the same code (`int8_dot`): int8 entries
    serve int8 calls; where the table has none for the kind of shape, e4m3's plan stands in as it is (an e4m3
    call never runs int8 dots, whatever an entry says)."""
    e4m3 = LaunchPlan(num_splits=99, block_m=16, block_n=32, block_d=128, num_warps=2, num_stages=3)
    int8 = dataclasses.replace(e4m3, num_splits=66, block_n=64, int8_dot=True)
    entries = [tune.table_entry(1, 64, 8, 131072, 128, 1, True, e4m3, 132, {"us": 1.0}),
               tune.table_entry(1, 64, 8, 131072, 128, 1, True, int8, 132, {"us": 1.0}, int8=True),
               tune.table_entry(1, 32, 32, 65536, 128, 1, True, dataclasses.replace(e4m3, int8_dot=True), 132, {})]
    assert [e["key"]["kind"] for e in entries] == ["fp8", "int8", "fp8"]
    (tmp_path / "gpu-x.json").write_text(json.dumps({"device": {"name": "GPU X", "sms": 132}, "entries": entries}))
    load_table.cache_clear()
    tuned_plan.cache_clear()
    assert tuned_plan("GPU X", 132, 1, 64, 8, 131072, 128, 1, True, int8=True, directory=tmp_path) == int8
    assert tuned_plan("GPU X", 132, 1, 64, 8, 131072, 128, 1, True, directory=tmp_path) == e4m3
    mha = tuned_plan("GPU X", 132, 1, 32, 32, 65536, 128, 1, True, int8=True, directory=tmp_path)  # e4m3's, for int8
    assert mha.block_n == 32 and mha.num_splits == 99 and mha.int8_dot
    assert not tuned_plan("GPU X", 132, 1, 32, 32, 65536, 128, 1, True, directory=tmp_path).int8_dot  # not for e4m3
    assert tuned_plan("GPU X", 132, 1, 64, 8, 131072, 128, 1, False, int8=False, directory=tmp_path) is None  # bf16


def test_an_entry_chosen_inside_a_step_is_its_shape_s_alone(tmp_path):
    """`models.step_plans` chooses a plan by the whole decode step's time at one shape: on an H100 34B's int8 cache at
    16k ran 10% faster with 16 splits than with the table's 33, alone the two are equal. Lent to every other int8
    shape (as the nearest entry of its kind) it would have halved their split counts, each unmeasured: such an entry
    (`"lend": false`) answers its own shape only; the others keep what they had (here e4m3's entry, else None)."""
    e4m3 = LaunchPlan(num_splits=32, block_m=16, block_n=128, block_d=128, num_warps=4, num_stages=3)
    in_step = dataclasses.replace(e4m3, num_splits=16, transposed=True)
    entries = [tune.table_entry(1, 64, 8, 131072, 128, 1, True, e4m3, 132, {"us": 1.0}),
               tune.table_entry(1, 64, 8, 16384, 128, 1, True, in_step, 132, {"us": 1.0}, int8=True, lend=False),
               tune.table_entry(1, 32, 32, 16384, 128, 1, False, e4m3, 132, {"us": 1.0}, lend=False)]
    assert [e.get("lend") for e in entries] == [None, False, False]      # (lent unless it says otherwise)
    (tmp_path / "gpu-x.json").write_text(json.dumps({"device": {"name": "GPU X", "sms": 132}, "entries": entries}))
    load_table.cache_clear()
    tuned_plan.cache_clear()
    assert tuned_plan("GPU X", 132, 1, 64, 8, 16384, 128, 1, True, int8=True, directory=tmp_path) == in_step
    lent = tuned_plan("GPU X", 132, 1, 64, 8, 65536, 128, 1, True, int8=True, directory=tmp_path)
    assert lent.block_n == 128 and not lent.transposed and lent.num_splits == 33       # e4m3's 128k entry lends
    assert tuned_plan("GPU X", 132, 1, 64, 8, 16384, 128, 1, True, directory=tmp_path).num_splits == 33   # e4m3
    assert tuned_plan("GPU X", 132, 1, 32, 32, 16384, 128, 1, False, directory=tmp_path) == e4m3
    assert tuned_plan("GPU X", 132, 1, 32, 32, 4096, 128, 1, False, directory=tmp_path) is None   # nothing to lend
    load_table.cache_clear()
    tuned_plan.cache_clear()


def test_device_plan_is_the_table_s_else_the_heuristic_s(tmp_path):
    """`kernels.plan.device_plan`, what `plan_for` runs on a GPU and `bench/plan_borrowers.py` compares: the device's
    table entry (its own or a lent one), else the heuristic for that device's SM count; `tuned=False` (fp32 queries,
    USE_TUNED_PLANS off) is the heuristic; a forced split count replaces either's."""
    from kernels.plan import device_plan
    table = LaunchPlan(num_splits=20, block_m=16, block_n=64, block_d=128, num_warps=4, num_stages=2)
    entries = [tune.table_entry(1, 64, 8, 16384, 128, 1, False, table, 132, {"us": 1.0}, lend=False)]
    (tmp_path / "gpu-x.json").write_text(json.dumps({"device": {"name": "GPU X", "sms": 132}, "entries": entries}))
    load_table.cache_clear()
    tuned_plan.cache_clear()
    shape = (1, 64, 8, 16384, 128, 1, False)
    assert device_plan("GPU X", 132, *shape, directory=tmp_path) == table
    forced = device_plan("GPU X", 132, *shape, directory=tmp_path, num_splits=7)
    assert forced == dataclasses.replace(table, num_splits=7)
    heuristic = plan_launch(1, 64, 8, 16384, 128, num_sms=132)
    assert heuristic != table
    assert device_plan("GPU X", 132, *shape, directory=tmp_path, tuned=False) == heuristic
    assert device_plan("GPU Y", 132, *shape, directory=tmp_path) == heuristic                  # no table for that card
    other = (1, 64, 8, 65536, 128, 1, False)                                                  # not lent: heuristic
    assert device_plan("GPU X", 132, *other, directory=tmp_path) == plan_launch(1, 64, 8, 65536, 128, num_sms=132)
    fp8 = (1, 64, 8, 16384, 128, 1, True)        # sm_90's 8-bit dots: the heuristic's transposed kernel for fp8
    assert device_plan("GPU X", 132, *fp8, directory=tmp_path, wgmma8=True).transposed
    assert not device_plan("GPU X", 132, *fp8, directory=tmp_path).transposed
    load_table.cache_clear()
    tuned_plan.cache_clear()


def test_plan_borrowers_names_every_shape_a_table_change_moves(tmp_path):
    """bench/plan_borrowers.py, the check before a plan entry is committed: an entry for one shape alone moves that
    shape only; a lent one moves its neighbours too, and the script names them."""
    import subprocess
    import sys
    plan = LaunchPlan(num_splits=16, block_m=16, block_n=128, block_d=128, num_warps=4, num_stages=3)
    base = tune.table_entry(1, 64, 8, 131072, 128, 1, False, plan, 132, {"us": 1.0})
    alone = tune.table_entry(1, 64, 8, 16384, 128, 1, False, dataclasses.replace(plan, num_splits=8), 132, {},
                             lend=False)
    lent = tune.table_entry(1, 32, 32, 16384, 128, 1, False, dataclasses.replace(plan, block_n=32), 132, {})
    script = Path(__file__).resolve().parents[2] / "bench" / "plan_borrowers.py"
    for name, entries in (("old", [base]), ("alone", [base, alone]), ("lent", [base, lent])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "gpu-x.json").write_text(json.dumps({"device": {"name": "GPU X", "sms": 132},
                                                                "entries": entries}))

    def run(new):
        out = subprocess.run([sys.executable, str(script), str(tmp_path / "old"), str(tmp_path / new), "--card",
                              "GPU X"], capture_output=True, text=True, check=True).stdout.splitlines()
        return out[:-1], out[-1]
    lines, total = run("alone")
    assert lines == ["bf16 Hq=64 Hkv=8 B=1 S=16384 T=1 own: 16 splits n128 w4 s3 -> 8 splits n128 w4 s3"]
    assert total.startswith("1 shapes of ") and total.endswith(" 0 of them without an entry of their own")
    lines, total = run("lent")
    assert "bf16 Hq=32 Hkv=32 B=1 S=16384 T=1 own: " in "\n".join(lines)
    assert any(line.startswith("bf16 Hq=32 Hkv=32 B=8 S=4096 T=1: ") for line in lines)   # a neighbour, unmeasured
    assert not any(line.startswith("fp8") for line in lines)                              # another kind: not moved
    assert f"{len(lines) - 1} of them without an entry of their own" in total


def test_wave_splits_fill_whole_waves():
    """FlashAttention-3's rule: 8 KV heads on 132 SMs with one resident program each: 15 splits make
    120 programs (91% of a wave, the first count within 85% of the best); unsplit when the batch
    fills the GPU or the sequence is short."""
    assert wave_splits(8, 131072, 64, 132, 1) == 15
    assert wave_splits(8, 131072, 64, 132, 2) == 29
    assert wave_splits(256, 4096, 64, 132, 1) == 1
    assert wave_splits(8, 256, 64, 132, 1) == 1
    assert plan_launch(1, 64, 8, 131072, 128).num_splits == 33  # 264 programs: two per SM
    # rounded down: 32 KV heads x 8 splits = 256 programs, not 9 splits = 288 (a second, ragged wave)
    assert plan_launch(1, 32, 32, 65536, 128).num_splits == 8


def test_split_counts_fit_the_binary_s_programs_per_sm():
    """sm_90 residency from a binary's registers and shared memory, and the split counts filling one
    wave of it: the fp8 64-key kernel (156 registers, 54 KB) holds 3 programs per SM, so 7B's 32 KV
    heads take 12 splits (384 programs), or 8 for two per SM."""
    assert resident_programs(156, 54016, 4) == 3
    assert resident_programs(80, 38912, 4) == 5      # shared memory: 228 KB / 39 KB
    assert resident_programs(223, 137216, 4) == 1
    assert resident_programs(32, 1024, 2) == 32      # at most 32 programs
    assert resident_programs(64, 1024, 2) == 16      # 64K registers
    case = tune.Case(bench.Shape("7B", 1, 65536, 32, 32), fp8=True)
    policies = tune.split_policies(case, plan_launch(1, 32, 32, 65536, 128, scaled=True), 132, resident=3)
    assert policies["full wave of 3"] == 12 and 8 in policies.values()



def test_int8_cases_explore_int8_dots_and_their_own_inputs():
    """The "8bit" cases: both 8-bit caches wherever they run the dot kernel; an int8 case times int8 caches
    (quantized from the same bf16 cache), tries int8 dots in its grid and its local search, and never the
    e4m3-only options; its entry is keyed "int8"; a bar its cases do not measure is left out, not met."""
    cases = tune.cases("8bit")
    assert {c.label for c in cases} >= {"34B B=1 S=128k int8", "34B B=1 S=128k fp8", "34B B=1 S=64k int8 T=8",
                                        "7B B=1 S=16k fp8 T=8", "SmolLM2 B=1 S=32k int8"}
    assert all(c.fp8 for c in cases) and not any(c.shape.model == "7B" and c.T == 1 for c in cases)
    case = tune.Case(bench.Shape("tiny", 1, 256, 8, 2, 32), fp8=True, int8=True)
    x = bench.make_inputs(case.shape, "cpu").with_int8()
    q, k, v, scales = case.args(x)
    assert k.dtype == v.dtype == torch.int8 and scales["k_scale"].dtype == torch.float32
    torch.testing.assert_close(reference.dequantize(k, scales["k_scale"], torch.float32), x.k.float(),
                               rtol=0, atol=x.k.float().abs().max().item() / 127)
    assert any(t.get("int8_dot") for t in tune.tilings(case))
    assert not any(t.get("fp8_early") or t.get("fp8_dot") for t in tune.tilings(case))
    base = plan_launch(1, 8, 2, 256, 32, scaled=True, num_splits=2)
    names = [name for name, _ in tune.neighbours(case, base, 2, 132)]
    assert "int8 dot" in names and "fp8 dot" not in names
    assert any(t.get("transposed") for t in tune.tilings(case)) and "transposed" in names  # GQA: the wgmma kernel
    transposed = tune.neighbours(case, dataclasses.replace(base, transposed=True), 2, 132)
    assert "int8 dot" not in [name for name, _ in transposed]  # an option of the dot kernel only
    assert "tma" in [name for name, _ in transposed]            # its V descriptor spans the sequence-major storage
    # 256-key tiles: the transposed kernel's (one program a SM; Run 53), never the dot kernel's (its shared memory)
    assert any(t["block_n"] == 256 and t.get("transposed") for t in tune.tilings(case))
    assert not any(t["block_n"] == 256 and not t.get("transposed") for t in tune.tilings(case))
    assert "n256" in [name for name, _ in transposed] and "n256" not in names
    entry = tune.table_entry(1, 8, 2, 256, 32, 1, case.fp8, base, 132, {}, int8=case.int8)
    assert entry["key"]["kind"] == "int8"
    assert [b["bar"] for b in tune.tune_bars([], 1.0)] == []

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
    # A row whose flash_decode failed is a failure of the first bar, not a shape that met it; a row whose fp8 or
    # 8-token call failed (an error, no time) is not measured for its bar, not MISSED.
    rows += [row("7B B=1 S=64k", "7B", 1, 65536, 1074, {"flash_decode": 250.0, "sdpa_cudnn": 239.0}),
             row("7B B=1 S=16k", "7B", 1, 16384, 268, {"flash_decode": 60.0, "sdpa_cudnn": 61.0}),
             row("34B B=8 S=16k", "34B", 8, 16384, 537, {"sdpa_cudnn": 195.0})]
    results = {b["bar"]: b for b in bench.bars(rows, read_bw=4.5e12)}
    every = results["every shape at least as fast as the best SDPA backend"]
    assert every["measured"].startswith("3/6 shapes") and "flash_decode failed: 34B B=8 S=16k" in every["measured"]
    assert results["fp8 7B B=1 S=64k: >= 1.6x the best bf16 SDPA"]["met"] is None
    assert results["8-token verification 7B B=1 S=16k: <= 1.2x one token"]["met"] is None


@pytest.mark.parametrize("fp8, options", [(True, (("fp8_early", True),)), (True, (("maxnreg", 128), ("num_warps", 2))),
                                          (False, (("tma", True), ("partials", "bfloat16")))])
def test_gpu_check_cases_force_plan_options(monkeypatch, fp8, options):
    """The GPU correctness sweep's cases that force a plan option (run here in the interpreter):
    the option reaches the launch, and the check compares against float64 and the empty row."""
    monkeypatch.setattr(bench, "DEVICE", "cpu")
    case = check.CheckCase(torch.bfloat16, 32, 4, 2, 100, 3, "bshd", fp8=fp8, options=options)
    q = torch.zeros(3, 4, 32, dtype=torch.bfloat16)
    assert all(getattr(case.plan(q), name) == value for name, value in options)
    result = case.run(torch.Generator().manual_seed(0))
    assert result["ok"], result
    assert result["options"] == dict(options)


def test_sweep_binaries_are_built_from_stand_in_caches(monkeypatch):
    """The final sweep builds its binaries first, on 16-key caches, with the plans of the real lengths
    (bf16, fp8 with scales, and the 8-token verification row)."""
    monkeypatch.setattr(bench, "DEVICE", "cpu")
    built = []
    monkeypatch.setattr(bench, "launch", lambda q, k, v, lengths, plan, compile_only, **scales:
                        built.append((q.shape, k.shape, k.dtype, plan, sorted(scales), compile_only)))
    monkeypatch.setattr(bench, "compile_in_parallel", lambda calls: [call() for call in calls] and 0.0)
    shape = bench.Shape("7B", 1, 65536, 32, 32)
    bench.precompile_sweep([shape])
    assert [b[0] for b in built] == [(1, 32, 128), (1, 32, 128), (1, 32, bench.VERIFY_TOKENS, 128)]
    assert all(b[1] == (1, 32, 16, 128) and b[5] for b in built)
    assert built[1][2] == torch.float8_e4m3fn and built[1][4] == ["k_scale", "v_scale"]
    assert built[0][3] == plan_launch(1, 32, 32, 65536, 128)  # the real length's plan


def test_gpu_check_sweep_forces_every_option_the_tuner_may_pick(monkeypatch):
    monkeypatch.setattr(bench, "DEVICE", "cpu")
    ran = []
    monkeypatch.setattr(check.CheckCase, "run", lambda self, gen: ran.append(self) or {"ok": True})
    monkeypatch.setattr(check, "compile_in_parallel", lambda calls: 0.0)
    results = check.gpu_correctness_sweep(lambda message: None, quick=True)
    assert all(r["ok"] for r in results)
    forced = {name for case in ran for name, _ in case.options}
    assert {"fp8_early", "maxnreg", "num_warps", "block_n", "tma", "partials", "eviction", "cache_modifier",
            "pdl", "int8_dot", "transposed"} <= forced
    assert all(case.fp8 for case in ran if "fp8_early" in dict(case.options))


def test_explore_writes_a_complete_table_and_plan_file(cpu_exploration, monkeypatch, tmp_path):
    """The whole exploration on one tiny case: every output the GPU run hands back, naming the card."""
    monkeypatch.setattr(tune, "cases", lambda which: [tune.Case(bench.Shape("tiny", 1, 128, 4, 2, 32))])
    env = {"card": "Test GPU 7", "sms": 4, "date": "2026-12-01", "torch": "t", "triton": "t",
           "read_bandwidth": 1e12, "copy_bandwidth": 1e12}
    assert tune.explore(env, tmp_path, tmp_path / "plans", budget_s=30, log=lambda message: None) == 0
    table = (tmp_path / "kernels-tune.md").read_text()
    assert table.startswith("Plan exploration on Test GPU 7 (4 SMs), 2026-12-01") and "| tiny B=1 S=128 |" in table
    sweep = json.loads((tmp_path / "kernels-tune.json").read_text())
    assert sweep["env"]["card"] == "Test GPU 7" and sweep["cases"][0]["best"]["plan"]
    assert json.loads((tmp_path / "plans" / "test-gpu-7.json").read_text())["device"]["name"] == "Test GPU 7"


def test_exploring_every_row_merges_into_the_committed_table(cpu_exploration, monkeypatch, tmp_path):
    """--cases all: the most wanted case first; a shape the committed table measured gets a local
    search from its plan (no grid), a new shape the grid; cases past the budget are skipped; the
    plan file keeps the committed entries this run did not replace."""
    committed_dir, card = tmp_path / "committed", "Test GPU 7"
    known, new, unwanted = (bench.Shape("tiny", 1, 256, 4, 2, 32), bench.Shape("tiny", 2, 128, 4, 2, 32),
                            bench.Shape("other", 1, 64, 4, 2, 32))
    start = dataclasses.replace(tune.plan_launch(1, 4, 2, 256, 32, num_sms=4), num_splits=2, eviction="evict_first")
    entries = [tune.table_entry(s.B, s.Hq, s.Hkv, s.S, s.D, 1, False, start, 4, {"us": 9.0}) for s in (known, unwanted)]
    committed_dir.mkdir()
    (committed_dir / "test-gpu-7.json").write_text(json.dumps({"device": {"name": card, "sms": 4}, "entries": entries}))
    load_table.cache_clear()
    tuned_plan.cache_clear()
    monkeypatch.setattr(tune, "load_table", lambda name, sms: load_table(name, sms, committed_dir))
    monkeypatch.setattr(tune, "tuned_plan", lambda *args, **kw: tuned_plan(*args, **kw, directory=committed_dir))
    monkeypatch.setattr(tune, "cases", lambda which: [tune.Case(s) for s in (known, new, unwanted)])
    monkeypatch.setattr(tune, "PRIORITY", {"tiny B=2 S=128": 3.0, "tiny B=1 S=256": 2.0})
    budget = {"spent": False}
    real_measure = tune.measure_case

    def measure_then_spend(*args, **kwargs):  # the budget runs out after the two wanted cases
        result = real_measure(*args, **kwargs)
        budget["spent"] = result["case"] == "tiny B=1 S=256"
        return result
    monkeypatch.setattr(tune, "measure_case", measure_then_spend)
    monkeypatch.setattr(tune.Clock, "left", lambda self: -1.0 if budget["spent"] else 600.0)
    env = {"card": card, "sms": 4, "date": "2026-12-01", "torch": "t", "triton": "t", "read_bandwidth": 1e12,
           "copy_bandwidth": 1e12}
    logged = []
    assert tune.explore(env, tmp_path, tmp_path / "plans", budget_s=600, log=logged.append, which="all") == 0
    sweep = json.loads((tmp_path / "kernels-tune.json").read_text())
    assert [r["case"] for r in sweep["cases"]] == ["tiny B=2 S=128", "tiny B=1 S=256"]  # by weight
    stages = [{v["stage"].split()[0] for v in r["variants"]} for r in sweep["cases"]]
    assert "tilings" in stages[0] and "tilings" not in stages[1] and "local" in stages[1]
    assert any(v["label"] == "table" and v["plan"] == dataclasses.asdict(start) for v in sweep["cases"][1]["variants"])
    assert any("other B=1 S=64: not explored" in line for line in logged)
    table = json.loads((tmp_path / "plans" / "test-gpu-7.json").read_text())
    by_shape = {(e["key"]["B"], e["key"]["S"]): e for e in table["entries"]}
    assert set(by_shape) == {(1, 256), (2, 128), (1, 64)}
    assert by_shape[(1, 64)] == entries[1]                                     # kept as committed
    assert by_shape[(1, 256)]["measured"]["date"] == "2026-12-01"             # replaced by this run's
    assert not list((tmp_path / "plans").glob("*.partial"))


def test_lean_sweep_and_check_only_runs_write_what_kernels_all_sh_reads(monkeypatch, tmp_path, capsys):
    """The two kernels.bench runs of bench/gpu/kernels_all.sh, with the GPU parts stood in: --lean
    times only ours, the read-only kernel, SDPA flash and cuDNN, without single launches, and
    rewrites kernels.md (card and date first, no empty peer columns) after every shape;
    --check-only prints the sweep's summary with each failure's report and writes no table."""
    env = {"card": "Test GPU 7", "sms": 4, "date": "2026-12-01", "torch": "t", "triton": "t", "cuda": "c",
           "read_bandwidth": 4e12, "copy_bandwidth": 4e12, "plans": {"dir": "d", "file": "f", "entries": 3}}
    monkeypatch.setattr(bench, "begin_run", lambda program, out: (env, 4e12, lambda message: None))
    monkeypatch.setattr(bench, "precompile_sweep", lambda shapes: 0.0)
    seen = []

    def fake_row(shape, methods, bandwidth, log, read_bw, plain):
        seen.append((sorted(methods), plain))
        if len(seen) == 2:  # the first shape's table is written before the second is measured
            assert "| 34B B=1 S=1k |" in (tmp_path / "kernels.md").read_text()
            assert not (tmp_path / "kernels.png").exists()      # not an earlier run's plot beside these rows
        us = {name: 10.0 for name in methods if not name.startswith("read_only")} | {"read_floor": 5.0}
        return {"shape": shape.__dict__ | {"label": shape.label}, "kv_mb": shape.kv_bytes / 1e6, "graph_us": us,
                "plain_us": {}, "read_tb_s": {name: 1.0 for name in us}, "floor_us": 1.0}
    monkeypatch.setattr(bench, "bench_shape", fake_row)
    monkeypatch.setattr(bench, "plot", lambda rows, path, card: None)
    (tmp_path / "kernels.png").write_bytes(b"an earlier run's plot")
    assert bench.main(["--lean", "--only", "34B B=1 S=1k,34B B=1 S=4k", "--out", str(tmp_path)]) == 0
    assert not (tmp_path / "kernels.png").exists()              # a run that draws nothing leaves no old plot
    methods, plain = seen[0]
    assert not plain and {"sdpa_flash", "sdpa_cudnn", "flash_decode", "flash_decode_fp8"} <= set(methods)
    assert not {"eager", "sdpa_math", "sdpa_efficient", "flex"} & set(methods)
    table = (tmp_path / "kernels.md").read_text()
    assert table.startswith("# Flash-Decoding kernel benchmark: Test GPU 7, 2026-12-01")
    assert "| SDPA flash | cuDNN | vs best SDPA |" in table and "eager" not in table
    assert "| 34B B=1 S=4k |" in table and "Cut short" not in table and "## Bars" in table

    checks = [{"dtype": "bf16", "ok": True},
              {"append": True, "fp8": True, "ok": False, "differing_bytes": 3, "max_e4m3_steps": 1}]
    monkeypatch.setattr(check, "gpu_correctness_sweep", lambda log, quick: checks)
    (tmp_path / "kernels.md").unlink()
    capsys.readouterr()
    assert bench.main(["--check", "quick", "--check-only", "--out", str(tmp_path)]) == 1
    printed = capsys.readouterr().out
    assert "1/2 cases within tolerance (1 append_kv cases" in printed and '"differing_bytes": 3' in printed
    assert json.loads((tmp_path / "kernels-check.json").read_text())["cases"] == checks
    assert not (tmp_path / "kernels.md").exists()


REAL_TILINGS, REAL_NEIGHBOURS = tune.tilings, tune.neighbours  # cpu_exploration cuts both down


@pytest.mark.parametrize("fp8", [False, True])
def test_one_row_shapes_explore_the_row_kernel(cpu_exploration, monkeypatch, fp8):
    """MHA shapes (one row per KV head) try the CUDA-core row kernel's tilings, which compute the same
    function; GQA shapes and several tokens never get it (it would fall back to the dot kernel)."""
    case = tune.Case(bench.Shape("tiny mha", 1, 256, 4, 4, 32), fp8=fp8)
    row_tilings = [t for t in REAL_TILINGS(case) if t.get("row_kernel")]
    assert len(row_tilings) >= 3
    assert not any(t.get("row_kernel") for c in (tune.Case(bench.Shape("gqa", 1, 256, 4, 2, 32)),
                                                 tune.Case(case.shape, T=2)) for t in REAL_TILINGS(c))
    monkeypatch.setattr(tune, "tilings", lambda c: row_tilings[:2])
    result = tune.measure_case(case, num_sms=4, clock=tune.Clock(600), log=lambda message: None)
    rows = [v for v in result["variants"] if v["plan"]["row_kernel"]]
    assert rows and all(v["ok"] and v["rel_err"] < tune.TOLERANCE for v in rows)
    best_row = LaunchPlan(**rows[0]["plan"])
    toggled = dict(REAL_NEIGHBOURS(case, best_row, 0, 4))["row kernel"]
    assert not toggled.row_kernel and not toggled.fp8_early


def test_plan_file_from_a_saved_sweep_keeps_the_other_entries(tmp_path):
    """`--tune-from` replaces the entries of the shapes the sweep measured and keeps the rest of the table."""
    plan = LaunchPlan(num_splits=16, block_m=16, block_n=64, block_d=128, num_warps=4, num_stages=3)
    kept = tune.table_entry(1, 64, 8, 131072, 128, 1, False, plan, 132, {"us": 1.0})
    replaced = tune.table_entry(1, 64, 8, 1024, 128, 1, False, plan, 132, {"us": 9.0})
    (tmp_path / "gpu-x.json").write_text(json.dumps({"device": {"name": "GPU X", "sms": 132},
                                                     "entries": [kept, replaced]}))
    best = dataclasses.replace(plan, num_splits=8, loop_stages=4)
    sweep = {"env": {"card": "GPU X", "sms": 132, "date": "d", "torch": "t", "triton": "t"},
             "cases": [{"shape": {"B": 1, "Hq": 64, "Hkv": 8, "S": 1024, "D": 128}, "T": 1, "fp8": False,
                        "best": {"plan": dataclasses.asdict(best), "us": 6.0, "label": "x"}, "heuristic_us": 7.0,
                        "peers_us": {}}]}
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    load_table.cache_clear()
    assert bench.main(["--tune-from", str(tmp_path / "sweep.json"), "--plans-dir", str(tmp_path)]) == 0
    entries = json.loads((tmp_path / "gpu-x.json").read_text())["entries"]
    assert [e["key"]["S"] for e in entries] == [131072, 1024]
    assert entries[1]["plan"] == dataclasses.asdict(best) and entries[0] == kept
    load_table.cache_clear()


def test_a_plan_file_that_cannot_be_written_is_one_line_and_status_2(tmp_path, capsys):
    """`--tune-from` into a --plans-dir that cannot be made (under a file here) was a traceback."""
    sweep = {"env": {"card": "GPU X", "sms": 132, "date": "d", "torch": "t", "triton": "t"}, "cases": []}
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SystemExit) as exit:
        bench.main(["--tune-from", str(tmp_path / "sweep.json"), "--plans-dir", str(tmp_path / "a-file" / "plans")])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.count("\n") == 1 and "cannot write the plan file (Not a directory)" in err


def test_the_committed_plan_tables_hold_valid_plans():
    """Every committed entry is a LaunchPlan of a known kind whose options belong to that kind, launched as a
    dependent (the decode step relies on it; Run 17), with programs per SM as its split count makes them."""
    tables = sorted(PLANS_DIR.glob("*.json"))
    assert tables
    for path in tables:
        table = json.loads(path.read_text())
        sms = table["device"]["sms"]
        for entry in table["entries"]:
            key, plan = entry["key"], LaunchPlan(**entry["plan"])
            assert key["kind"] in ("bf16", "fp8", "int8"), (path.name, key)
            assert not plan.int8_dot or key["kind"] == "int8", key
            assert not (plan.fp8_dot or plan.fp8_early) or key["kind"] == "fp8", key
            assert plan.pdl, key
            assert entry["items"] == key["B"] * key["Hkv"] * plan.row_blocks(key["group"], key["T"]), key
            assert abs(entry["programs_per_sm"] - entry["items"] * plan.num_splits / sms) < 1e-9, key


def test_best_of_rounds_takes_every_contestant_in_turn_and_keeps_each_ones_best(monkeypatch, tmp_path):
    """The GPU scripts' timing and output helpers (kernels.bench): rounds interleave the contestants (a drift
    of the machine meets all alike), each keeps its fastest round, per call; the table and data land together."""
    order, times = [], iter([40.0, 90.0, 30.0, 100.0])
    monkeypatch.setattr(bench, "graph_replay_us", lambda run, replays=30: (order.append(run()), next(times))[1])
    best = bench.best_of_rounds({"a": lambda: "a", "b": lambda: "b"}, calls=10)
    assert order == ["a", "b", "a", "b"] and best == {"a": 3.0, "b": 9.0}
    bench.save_table(tmp_path / "out", "thing", "| a |\n", {"rows": [1]})
    assert (tmp_path / "out" / "thing.md").read_text() == "| a |\n"
    assert json.loads((tmp_path / "out" / "thing.json").read_text()) == {"rows": [1]}


@pytest.mark.parametrize("argv, says", [
    (["--budget-s", "nan"], "--budget-s: expected a number of seconds above 0, got nan"),
    (["--budget-s", "-5"], "--budget-s: expected a number of seconds above 0"),
    (["--check", "fast"], "argument --check: invalid choice"),
    (["--tune-from", "/nonexistent/sweep.json"], "not a saved --tune sweep (No such file or directory)"),
    (["--tune-from", "{not json"], "not a saved --tune sweep (JSONDecodeError"),
    (["--tune-from", "[1]"], "not a saved --tune sweep (TypeError"),
    (["--tune-from", '{"env": {"card": "GPU X", "sms": 132, "date": "d"}, "cases": [{"dtype": "bf16", "S": 1024, '
                     '"ok": true}]}'], "not a saved --tune sweep (KeyError: 'shape')"),   # a --check file: wrote plans
    (["--quick", "--only", "SmolLM2"], "--only SmolLM2: no shape of --quick matches"),   # a NameError at the end
    (["--check-only"], "--check-only goes with --check"),         # ran the whole timing sweep and no check
    (["--tune", "--regrid"], "--regrid goes with --tune --cases all"),
    (["--cases", "all"], "--cases goes with --tune"),              # ran the timing sweep, no exploration
    (["--budget-s", "60"], "--budget-s goes with --tune"),
    (["--plans-dir", "{dir}"], "--plans-dir goes with --tune or --tune-from"),
    (["--tune", "--only", "S=64k fp8 T=9$"], "--only S=64k fp8 T=9$: no case of --tune --cases issue matches"),
    (["--tune", "--cases", "8bit", "--only", "paper"], "no case of --tune --cases 8bit matches"),  # explored nothing
    (["--out", "{file}"], "is not a folder"),                       # its mkdir failed on the GPU
    (["--tune", "--plans-dir", "{file}"], "is not a folder"),
])
def test_bad_options_are_one_line_and_status_2_before_any_gpu_work(argv, says, monkeypatch, tmp_path, capsys):
    """A typo in kernels.bench's options is one line and exit status 2 at once, on a CPU too: not argparse's
    usage block, not a traceback (--tune-from), not a NaN budget that explores forever."""
    monkeypatch.setattr(bench, "begin_run", lambda program, out: pytest.fail("a bad option reached the GPU run"))
    if argv[0] == "--tune-from" and not argv[1].startswith("/"):
        (tmp_path / "sweep.json").write_text(argv[1])
        argv = ["--tune-from", str(tmp_path / "sweep.json")]
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SystemExit) as exit:
        bench.main([arg.format(file=tmp_path / "a-file", dir=tmp_path) for arg in argv])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.count("\n") == 1 and says in err, err
    assert err.startswith("python -m kernels.bench: error: ")


def test_python_m_kernels_tune_runs_the_exploration_command(tmp_path):
    """`python -m kernels.tune` (the module named in kernels.tune's docstring) ran nothing and exited 0: it is
    `python -m kernels.bench --tune`, options and all."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "kernels.tune", "--budget-s", "nan"], cwd=tmp_path, text=True,
                          capture_output=True, env=os.environ | {"PYTHONPATH": str(root)}, timeout=120)
    assert done.returncode == 2 and "--budget-s: expected a number of seconds above 0, got nan" in done.stderr


def test_a_run_without_out_writes_under_the_scratch_folder_not_the_committed_results(monkeypatch):
    """`python -m kernels.bench` from the repository root wrote kernels.json/.md/.png into bench/results/, over
    committed results; by default it writes into bench/scratch/ (ignored by git), $OUT where the GPU runner sets it."""
    from pathlib import Path
    outs = []
    monkeypatch.setattr(bench, "begin_run", lambda program, out: outs.append(out))
    monkeypatch.delenv("OUT", raising=False)
    assert bench.main(["--quick"]) == 2
    monkeypatch.setenv("OUT", "/tmp/device-out")
    assert bench.main(["--quick"]) == 2
    assert outs == [Path("bench/scratch"), Path("/tmp/device-out")]


def test_architecture_gives_plan_launchs_signature():
    """ARCHITECTURE.md named plan_launch's 8-bit flag `fp8=False` (a caller following it got a TypeError): it is
    `scaled`, and `wgmma8` was left out."""
    import inspect
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parents[2] / "ARCHITECTURE.md").read_text(encoding="utf-8")
    documented = re.search(r"`kernels\.plan_launch\((.*?)\)`", text, re.S)[1]
    names = [part.split("=")[0].strip() for part in documented.split(",") if part.strip() != "*"]
    assert names == list(inspect.signature(plan_launch).parameters)

"""models.step_plans on the CPU: a forced plan is what the attention call runs (and only for its shape, and only
while it lasts), the candidates are the plan of today and its neighbours, each is timed while it is forced, rounds
interleave them, and the plan file takes the winner with the step's numbers."""

import dataclasses
import json

import pytest
import torch

import kernels.interface
import models.step_plans as step_plans
from kernels import reference
from kernels.interface import flash_decode, forced_plans, plan_for
from kernels.plan import LaunchPlan, plan_launch, shape_key
from models.config import ModelConfig

TINY = ModelConfig(dim=128, n_layers=2, n_heads=8, n_kv_heads=2, ffn_dim=256, vocab_size=97)   # 4 query heads a KV head


def test_a_forced_plan_runs_for_its_shape_only_and_while_it_lasts(monkeypatch):
    torch.manual_seed(0)
    B, Hq, Hkv, S, D = 2, 4, 2, 96, 16
    q = torch.randn(B, Hq, D)
    k, v = torch.randn(B, Hkv, S, D), torch.randn(B, Hkv, S, D)
    lengths = torch.tensor([96, 41], dtype=torch.int32)
    default = plan_for(q, B, Hq, Hkv, S, D, 1, False)
    forced = dataclasses.replace(default, num_splits=3, block_n=16)
    assert forced != default
    used = []
    real_launch = kernels.interface.launch
    monkeypatch.setattr(kernels.interface, "launch", lambda *a, **kw: used.append(a[4]) or real_launch(*a, **kw))
    with forced_plans([(shape_key(B, Hq, Hkv, S, D, 1, False), forced)]):
        assert plan_for(q, B, Hq, Hkv, S, D, 1, False) == forced
        assert plan_for(q, B, Hq, Hkv, S + 16, D, 1, False) != forced        # another length: not forced
        assert plan_for(q, B, Hq, Hkv, S, D, 1, True) != forced              # an 8-bit cache: another key
        assert plan_for(q, B, Hq, Hkv, S, D, 1, False, num_splits=2).num_splits == 2
        out = flash_decode(q, k, v, lengths)
    assert used == [forced]
    assert plan_for(q, B, Hq, Hkv, S, D, 1, False) == default
    expected = reference.flash_decode(q.double(), k.double(), v.double(), lengths)
    assert (out.double() - expected).abs().max() < 1e-4


def test_forced_plans_nest_and_restore():
    q = torch.randn(1, 8, 16)
    key = shape_key(1, 8, 2, 64, 16, 1, False)
    outer, inner = (dataclasses.replace(plan_for(q, 1, 8, 2, 64, 16, 1, False), num_splits=n) for n in (2, 4))
    with forced_plans([(key, outer)]):
        with forced_plans([(key, inner)]):
            assert plan_for(q, 1, 8, 2, 64, 16, 1, False).num_splits == 4
        assert plan_for(q, 1, 8, 2, 64, 16, 1, False).num_splits == 2
    assert not kernels.interface._FORCED_PLANS


def test_neighbours_change_one_option_each():
    plan = LaunchPlan(num_splits=32, block_m=16, block_n=64, block_d=128, num_warps=2, num_stages=2, maxnreg=200,
                      int8_dot=True)
    found = step_plans.neighbours(plan, int8=True, S=131072)
    assert found["warps"] == dataclasses.replace(plan, num_warps=4, maxnreg=0)
    assert found["tile"] == dataclasses.replace(plan, block_n=128)
    assert found["splits/2"].num_splits == 16 and found["splits*2"].num_splits == 64
    assert found["splits*3/4"].num_splits == 24 and found["splits*5/4"].num_splits == 40     # Run 54's finer steps
    assert all(p == dataclasses.replace(plan, num_splits=p.num_splits) for n, p in found.items() if "splits" in n)
    assert found["no int8 dot"] == dataclasses.replace(plan, int8_dot=False)
    unsplit = step_plans.neighbours(dataclasses.replace(plan, num_splits=1, int8_dot=False), int8=False, S=128)
    assert "splits/2" not in unsplit and "int8 dot" not in unsplit and unsplit["splits*2"].num_splits == 2
    assert not {"splits*3/4", "splits*5/4"} & set(unsplit)                  # 1 split: no finer step than 1 and 2
    three = step_plans.neighbours(dataclasses.replace(plan, num_splits=3), int8=False, S=131072)
    assert [three[n].num_splits for n in ("splits/2", "splits*3/4", "splits*5/4", "splits*2")] == [1, 2, 4, 6]
    assert "splits*2" not in step_plans.neighbours(dataclasses.replace(plan, num_splits=2), int8=False, S=128)


def test_candidates_start_from_todays_plan_and_add_the_named_variants():
    key, plans = step_plans.candidates(TINY, 1, 4096, "int8", [("w8", {"num_warps": 8})], True,
                                       torch.device("cpu"))
    assert key == shape_key(1, 8, 2, 4096, 16, 1, True, True)
    assert next(iter(plans)) == "table"
    assert plans["table"] == plan_for(torch.empty(1), 1, 8, 2, 4096, 16, 1, True, int8=True)
    assert plans["w8"] == dataclasses.replace(plans["table"], num_warps=8)
    assert {"warps", "tile"} <= set(plans)
    assert len(set(map(dataclasses.astuple, plans.values()))) == len(plans)     # no plan timed twice
    _, only = step_plans.candidates(TINY, 1, 4096, None, [], False, torch.device("cpu"))
    assert list(only) == ["table"] and only["table"] == plan_launch(1, 8, 2, 4096, 16, T=1, scaled=False)


def test_each_candidate_is_timed_while_forced_in_interleaved_rounds(monkeypatch):
    q = torch.empty(1)
    key = shape_key(1, 8, 2, 512, 16, 1, False)
    base = dataclasses.replace(plan_for(q, 1, 8, 2, 512, 16, 1, False), num_splits=1)
    plans = {"table": base, "a": dataclasses.replace(base, num_splits=2), "b": dataclasses.replace(base, num_splits=4)}
    seen = []

    def step_us(model, batch, context, backend, replays):
        seen.append(plan_for(q, 1, 8, 2, 512, 16, 1, False).num_splits)
        return {1: 300.0, 2: 200.0, 4: 250.0}[seen[-1]] + len(seen)   # drift: later calls slower

    monkeypatch.setattr(step_plans, "ours_step_us", step_us)
    monkeypatch.setattr(step_plans, "kernel_alone_us", lambda model, batch, replays: 10.0)
    times = step_plans.time_candidates(None, 1, 512, key, plans, 3, 5, lambda message: None)
    assert seen == [1] + [1, 2, 4] * 3                          # a warm-up, then the rounds
    assert times["a"]["samples"] == [203.0, 206.0, 209.0] and times["a"]["step_us"] == 206.0
    assert min(times, key=lambda n: times[n]["step_us"]) == "a"


def test_the_plan_file_takes_the_winner_and_keeps_the_rest(tmp_path):
    model = type("M", (), {"config": TINY})()
    key = shape_key(1, 8, 2, 4096, 16, 1, True, True)
    other = {"key": shape_key(1, 8, 2, 1024, 16, 1, True, True), "plan": {}, "measured": {"us": 1.0}}
    old = {"key": key, "plan": {}, "measured": {"us": 9.0, "peers_us": {"sdpa_cudnn": 12.0}, "in_step": {"x": 1}}}
    path = tmp_path / "plans.json"
    path.write_text(json.dumps({"device": {"sms": 132}, "entries": [other, old]}))
    plan = LaunchPlan(num_splits=8, block_m=16, block_n=64, block_d=16, num_warps=4, num_stages=2)
    measured = {"us": 7.5, "in_step": {"tok_s": {"table": 50.0, "warps": 51.0}}}
    assert step_plans.update_table(path, key, plan, model, 1, measured) == "replaced"
    table = json.loads(path.read_text())
    assert table["entries"][0] == other
    entry = table["entries"][1]
    assert entry["key"] == key and LaunchPlan(**entry["plan"]) == plan
    assert entry["lend"] is False         # chosen inside one shape's step: never lent to the shapes near it
    assert entry["measured"] == {"us": 7.5, "peers_us": {"sdpa_cudnn": 12.0}, "in_step": measured["in_step"]}
    new_key = shape_key(1, 8, 2, 8192, 16, 1, True, True)
    assert step_plans.update_table(path, new_key, plan, model, 1, measured) == "added"
    assert [e["key"] for e in json.loads(path.read_text())["entries"]] == [other["key"], key, new_key]



def test_a_plan_file_write_cut_short_leaves_the_whole_file(tmp_path, monkeypatch):
    """--write-table rewrote the plan file in place (kernels/plans, committed): Ctrl-C while writing tore it, and
    every later load of the table failed. The new table goes to a side file first, renamed over it when whole."""
    from pathlib import Path
    model = type("M", (), {"config": TINY})()
    path = tmp_path / "plans.json"
    before = json.dumps({"device": {"sms": 132}, "entries": []})
    path.write_text(before)
    write = Path.write_text

    def torn(self, text, *args, **kwargs):      # half the text, then the user's Ctrl-C
        write(self, text[:len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt
    monkeypatch.setattr(Path, "write_text", torn)
    plan = LaunchPlan(num_splits=8, block_m=16, block_n=64, block_d=16, num_warps=4, num_stages=2)
    with pytest.raises(KeyboardInterrupt):
        step_plans.update_table(path, shape_key(1, 8, 2, 4096, 16, 1, True, True), plan, model, 1, {"us": 7.5})
    assert path.read_text() == before


def test_a_model_is_a_preset_or_a_tensor_parallel_rank_of_one():
    from models.config import preset
    assert step_plans.model_config("34B") == ("CodeLlama-34B", preset("CodeLlama-34B"))
    name, rank = step_plans.model_config("70B/2")
    assert name == "CodeLlama-70B/2"
    assert (rank.n_heads, rank.n_kv_heads, rank.ffn_dim, rank.dim) == (32, 4, 14336, 8192)
    for bad in ("34B/x", "34B/0"):
        with pytest.raises(SystemExit, match="NAME or NAME/TP"):
            step_plans.model_config(bad)
    with pytest.raises(Exception, match="do not split over 3 ranks"):
        step_plans.model_config("34B/3")


def test_twins_are_the_table_and_heuristic_plans_launched_early_or_late_in_the_step():
    table = LaunchPlan(num_splits=8, block_m=16, block_n=64, block_d=16, num_warps=4, num_stages=3)
    plans = {"table": table, "heuristic": dataclasses.replace(table, num_splits=3, step_launch="late"),
             "splits*2": dataclasses.replace(table, num_splits=16)}
    twins = step_plans.twins_of(plans, ["early", "late"])
    assert twins == {"table +early-qkv": dataclasses.replace(table, step_launch="early"),
                     "heuristic +early-qkv": dataclasses.replace(plans["heuristic"], step_launch="early"),
                     "table +late-qkv": dataclasses.replace(table, step_launch="late")}   # the heuristic is late


@pytest.mark.parametrize("text, message", [("w4", "name={json}"), ("w4={", "not JSON"), ("w4=[1]", "JSON object"),
                                           ('w4={"warps": 4}', "not a plan field: warps")])
def test_bad_variants_get_one_line_errors(text, message):
    with pytest.raises(SystemExit, match=message):
        step_plans.parse_variant(text)
    assert step_plans.parse_variant('w4={"num_warps": 4}') == ("w4", {"num_warps": 4})


def test_plans_that_fail_or_disagree_with_the_table_plan_are_left_out():
    from models.bench import fill_cache_randomly
    from models.llama import build_random_model
    model = build_random_model(TINY, max_len=256)
    model.setup_caches(1, 256, quant="int8")
    fill_cache_randomly(model, 256)
    key, plans = step_plans.candidates(TINY, 1, 256, "int8", [], False, torch.device("cpu"))
    table = plans["table"]
    plans |= {"splits": dataclasses.replace(table, num_splits=table.num_splits + 1),
              "half head": dataclasses.replace(table, block_d=8),             # reads half of each head: wrong
              "no rows": dataclasses.replace(table, block_m=0)}               # cannot launch
    logged = []
    kept = step_plans.runnable(model, 1, key, plans, logged.append)
    assert list(kept) == ["table", "splits"]
    assert any("half head: left out, output differs" in m for m in logged)
    assert any(m.startswith("    no rows: left out, ") for m in logged)


@pytest.fixture
def pretend_gpu_run(monkeypatch):
    """main() on the CPU: a tiny model in place of the preset, step times made up (the int8 dots variant fastest,
    the twins faster still), every candidate's first-layer call run for real by the interpreter. Returns the
    models built."""
    import models.llama
    env = {"card": "Test Card", "sms": 132, "date": "2026-12-01", "torch": "t", "triton": "tr"}
    build = models.llama.build_random_model
    built = []

    def begin_run(program, out):
        out.mkdir(parents=True, exist_ok=True)
        return env, 1e12, lambda message: None

    def step_us(model, batch, context, backend, replays):
        plan = kernels.interface.plan_for(torch.empty(1), 1, 8, 2, context, 16, 1, True, int8=True)
        return (100.0 if plan.int8_dot else 120.0) - {"": 0, "early": 10, "late": 30}[plan.step_launch]   # late best

    monkeypatch.setattr(step_plans.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(step_plans, "begin_run", begin_run)
    monkeypatch.setattr(models.llama, "build_random_model",   # --weights as asked: the model quantized as drawn
                        lambda preset, **kw: built.append(build(TINY, max_len=kw["max_len"],
                                                                weights=kw.get("weights"))) or built[-1])
    monkeypatch.setattr(step_plans, "ours_step_us", step_us)
    monkeypatch.setattr(step_plans, "kernel_alone_us", lambda model, batch, replays: 10.0)
    return built


def test_a_run_writes_its_report_and_the_winner_into_the_plan_file(pretend_gpu_run, tmp_path):
    plans = tmp_path / "plans.json"
    plans.write_text(json.dumps({"device": {"sms": 132}, "entries": []}))
    out = tmp_path / "out"
    assert step_plans.main(["--model", "7B", "--contexts", "256", "--kv-caches", "int8", "--rounds", "2",
                            "--twins", "early,late", "--write-table", str(plans), "--out", str(out)]) == 0
    row, = json.loads((out / "step-plans.json").read_text())["rows"]
    assert row["best"] == "table +late-qkv" and row["table"] == "added"
    assert {n: p["step_us"] for n, p in row["plans"].items() if "+" in n} == {
        "table +early-qkv": 110.0, "table +late-qkv": 90.0}          # twins of the table's plan only (no heuristic:
    assert row["plans"]["int8 dot"]["step_us"] == 100.0               # on a CPU it is the table's)
    assert row["plans"]["table +late-qkv"]["plan"] == {**row["plans"]["table"]["plan"], "step_launch": "late"}
    entry, = json.loads(plans.read_text())["entries"]
    assert entry["plan"] == row["plans"]["table +late-qkv"]["plan"]  # a twin is a plan: the table takes it whole
    tok_s = entry["measured"]["in_step"]["tok_s"]
    assert (tok_s["table"], tok_s["int8 dot"], tok_s["table +late-qkv"]) == (8333.33, 1e4, 11111.11)
    assert "table +late-qkv **best** | " in (out / "step-plans.md").read_text()
    assert "late-in-step |" in (out / "step-plans.md").read_text()
    assert "| CodeLlama-7B B=1 S=256 | int8 |" in (out / "step-plans.md").read_text()      # it read S=0k
    assert pretend_gpu_run[0].decode_kernels != pretend_gpu_run[0].dense   # timed as the app runs it: compile_dense()


def test_int4_weights_time_the_plans_in_int4_weights_step_and_say_so(pretend_gpu_run, tmp_path):
    """--weights int4: the model is built with int4 projections (the step that issue 11's ratio runs, and 34B's
    weights beside a 128k cache fit an 80 GB card), and the report and the plan file's entry name them."""
    plans = tmp_path / "plans.json"
    plans.write_text(json.dumps({"device": {"sms": 132}, "entries": []}))
    out = tmp_path / "out"
    assert step_plans.main(["--model", "7B", "--contexts", "256", "--kv-caches", "int8", "--rounds", "1",
                            "--weights", "int4", "--write-table", str(plans), "--out", str(out)]) == 0
    model, = pretend_gpu_run
    assert model.weights_kind == "int4"
    row, = json.loads((out / "step-plans.json").read_text())["rows"]
    assert row["weights"] == "int4" and row["table"] == "added"
    assert "| CodeLlama-7B int4 weights B=1 S=256 | int8 |" in (out / "step-plans.md").read_text()
    entry, = json.loads(plans.read_text())["entries"]
    assert "int8 cache, int4 weights, models.step_plans" in entry["measured"]["in_step"]["note"]


def test_a_run_stops_with_a_clear_error_when_todays_plan_cannot_run(pretend_gpu_run, monkeypatch, tmp_path):
    monkeypatch.setattr(step_plans, "runnable", lambda model, batch, key, plans, log: {})
    with pytest.raises(SystemExit, match="the plan the step runs today failed to run"):
        step_plans.main(["--model", "7B", "--contexts", "256", "--kv-caches", "int8", "--out", str(tmp_path)])


@pytest.mark.parametrize("content, message", [
    (None, "not a plan file"), ("[1, 2]", "not a plan file"),
    ('{"device": {"name": "NVIDIA H100", "sms": 132}, "entries": []}', "made for NVIDIA H100 with 132 SMs"),
    ('{"device": {"name": "Test Card", "sms": 114}, "entries": []}', "made for Test Card with 114 SMs")])
def test_a_plan_file_of_another_card_is_refused_before_anything_runs(pretend_gpu_run, tmp_path, content, message):
    plans = tmp_path / "plans.json"
    if content is not None:
        plans.write_text(content)
    with pytest.raises(SystemExit, match=message):
        step_plans.main(["--model", "7B", "--contexts", "256", "--kv-caches", "int8", "--write-table", str(plans),
                         "--out", str(tmp_path / "out")])
    assert pretend_gpu_run == []                                     # refused before the model was built



@pytest.mark.parametrize("argv, says", [
    (["--contexts", "16k"], "--contexts: expected a whole number, got '16k'"),      # a traceback before
    (["--contexts", ""], "--contexts: '' lists nothing"),
    (["--kv-caches", "fp8,q4"], "--kv-caches: 'q4' is not one of bf16, fp8, int8"),
    (["--twins", "early,soon"], "--twins: 'soon' is not one of early, late"),
    (["--rounds", "0"], "--rounds: expected a number from 1 up, got 0"),           # median of nothing after a build
    (["--batch", "-1"], "--batch: expected a number from 1 up, got -1"),
    (["--weights", "int3"], "--weights: 'int3' is not one of bf16, int8, int4"),
    (["--model", "99B"], "--model: unknown preset 'CodeLlama-99B'"),
    (["--model", "34B/3"], "do not split over 3 ranks"),
    (["--variant", "w4={"], "--variant: --variant w4: not JSON"),
    (["--out", "{file}"], "is not a folder"),                                      # its mkdir failed on the GPU
    (["--margin", "-0.01"], "--margin: expected a fraction from 0 up to below 1, got -0.01"),   # a slower plan won
    (["--margin", "nan"], "--margin: expected a fraction from 0 up to below 1, got nan"),
])
def test_a_bad_option_is_one_line_and_status_2(argv, says, monkeypatch, capsys, tmp_path):
    """Said as the options are read, on a CPU too: not a traceback, nor status 1, nor after the model is built."""
    monkeypatch.setattr(step_plans, "begin_run", lambda program, out: pytest.fail("a bad option reached the run"))
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SystemExit) as exit:
        step_plans.main([arg.replace("{file}", str(tmp_path / "a-file")) for arg in argv])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.count("\n") == 1 and says in err, err
    assert err.startswith("python -m models.step_plans: error: ")


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU it runs its benchmark")
def test_without_a_gpu_it_says_so_in_one_line_and_exits_2_as_its_peers(capsys, tmp_path):
    """It exited 1 ("error: ... none is visible"), where every other GPU benchmark exits 2 with "needs a CUDA GPU"."""
    with pytest.raises(SystemExit) as exit:
        step_plans.main(["--out", str(tmp_path)])
    assert exit.value.code == 2
    assert capsys.readouterr().err == "models.step_plans needs a CUDA GPU: it times decode steps there.\n"

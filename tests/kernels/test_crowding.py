"""kernels.interface.crowds_when_early: a grid with room to spare on the SMs crowds when launched early, one that
needs every SM's slots does not; `late_in_step` follows a plan's own `step_launch` over that rule; and the fused
decode step asks it and has qkv_rope launch attention late then. (What it is for, measured on an H200:
bench/results/NOTES.md, Runs 19 and 25.)"""

import dataclasses

import pytest
import torch

import kernels.fused_gemv
import kernels.interface as interface
from kernels.interface import crowds_when_early, forced_plans, late_in_step, plan_for
from kernels.plan import shape_key


@pytest.fixture
def four_sm_gpu(monkeypatch):
    """A pretend PDL device of 4 SMs whose split kernels hold 2 programs an SM; counts the binaries built."""
    built = []
    monkeypatch.setattr(interface, "_launches_early", lambda q: True)
    monkeypatch.setattr(interface, "device_facts", lambda index: ("Pretend", 4))
    monkeypatch.setattr(interface, "launch", lambda *a, **kw: built.append(kw["compile_only"]) or "binary")
    monkeypatch.setattr(interface, "resident_of", lambda binary, num_warps: 2)
    monkeypatch.setattr(interface, "_RESIDENT", {})
    return built


@pytest.mark.parametrize("splits, crowds", [(1, True), (2, True), (4, False), (8, False), (16, False)])
def test_a_grid_crowds_when_an_sm_holds_more_of_it_than_it_has_per_sm(four_sm_gpu, splits, crowds):
    q, k, v = torch.randn(1, 8, 16), torch.randn(1, 2, 512, 16), torch.randn(1, 2, 512, 16)
    plan = dataclasses.replace(plan_for(q, 1, 8, 2, 512, 16, 1, False), num_splits=splits)   # 2 heads x splits
    assert plan.row_blocks(4, 1) == 1
    with forced_plans([(shape_key(1, 8, 2, 512, 16, 1, False), plan)]):
        assert crowds_when_early(q, k, v) is crowds          # 2 x splits programs over 4 SMs holding 2 each
        assert crowds_when_early(q, k, v) is crowds
    assert four_sm_gpu == [True]                             # one binary looked up per shape and plan


def test_calls_that_are_not_launched_early_never_crowd(monkeypatch):
    monkeypatch.setattr(interface, "launch", lambda *a, **kw: pytest.fail("no binary is needed"))
    q, k, v = torch.randn(1, 8, 16), torch.randn(1, 2, 512, 16), torch.randn(1, 2, 512, 16)
    assert crowds_when_early(q, k, v) is False               # a CPU tensor: no programmatic dependent launch


@pytest.mark.parametrize("splits, step_launch, rule, late", [
    (2, "", True, True), (8, "", True, False),               # the rule: 2 splits crowd, 8 do not
    (2, "", False, False),                                   # the rule switched off (an A/B run)
    (8, "late", True, True), (8, "late", False, True),       # the plan says late where the rule would not
    (2, "early", True, False)])                              # and early where it would say late
def test_a_plans_step_launch_overrides_the_crowding_rule(four_sm_gpu, splits, step_launch, rule, late):
    q, k, v = torch.randn(1, 8, 16), torch.randn(1, 2, 512, 16), torch.randn(1, 2, 512, 16)
    plan = dataclasses.replace(plan_for(q, 1, 8, 2, 512, 16, 1, False), num_splits=splits, step_launch=step_launch)
    with forced_plans([(shape_key(1, 8, 2, 512, 16, 1, False), plan)]):
        assert late_in_step(q, k, v, crowding_rule=rule) is late
        assert crowds_when_early(q, k, v) is (splits == 2)   # the rule itself never reads the plan's choice


def test_a_plan_that_says_late_is_not_late_where_nothing_launches_early(monkeypatch):
    q, k, v = torch.randn(1, 8, 16), torch.randn(1, 2, 512, 16), torch.randn(1, 2, 512, 16)
    plan = dataclasses.replace(plan_for(q, 1, 8, 2, 512, 16, 1, False), step_launch="late")
    with forced_plans([(shape_key(1, 8, 2, 512, 16, 1, False), plan)]):
        assert late_in_step(q, k, v) is False                # a CPU tensor: no programmatic dependent launch
        monkeypatch.setattr(interface, "_launches_early", lambda q: True)
        monkeypatch.setattr(interface, "launch", lambda *a, **kw: pytest.fail("a plan's choice needs no binary"))
        assert late_in_step(q, k, v) is True


def test_an_unknown_step_launch_is_refused():
    plan = plan_for(torch.randn(1, 8, 16), 1, 8, 2, 512, 16, 1, False)
    with pytest.raises(ValueError, match="step_launch 'sideways': not one of '', 'early', 'late'"):
        dataclasses.replace(plan, step_launch="sideways")


@pytest.mark.parametrize("backend, answer, late", [("flash", True, True), ("flash", False, False),
                                                   ("sdpa", True, False)])
def test_the_fused_step_has_qkv_rope_launch_attention_late_where_asked(monkeypatch, backend, answer, late):
    from models.config import ModelConfig
    from models.llama import Decode, build_random_model
    config = ModelConfig(dim=64, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=128, vocab_size=97)
    model = build_random_model(config, max_len=64)
    model.fused_decode = True
    model.setup_caches(1, 64, quant="int8")
    asked, flags = [], []
    qkv_rope = kernels.fused_gemv.qkv_rope

    def recording_qkv_rope(*args, late_dependents=False, **kwargs):
        flags.append(late_dependents)
        return qkv_rope(*args, late_dependents=late_dependents, **kwargs)

    def asking(q, k, v, *, crowding_rule, **scales):
        asked.append((q.shape, k.shape, scales["k_scale"].shape, crowding_rule))
        return answer

    monkeypatch.setattr(interface, "late_in_step", asking)
    monkeypatch.setattr(kernels.fused_gemv, "qkv_rope", recording_qkv_rope)
    step = Decode(torch.tensor([20]), torch.tensor([21], dtype=torch.int32), backend, kv_len=48)
    logits = model.decode(torch.tensor([[5]]), step)
    assert torch.isfinite(logits).all()
    assert flags == [late] * 3
    assert asked == ([] if backend != "flash" else [((1, 4, 16), (1, 2, 48, 16), (1, 2, 48), True)])


def test_one_binary_is_looked_up_per_kind_of_call_whatever_the_length_and_splits(four_sm_gpu):
    q = torch.randn(1, 8, 16)
    plan = plan_for(q, 1, 8, 2, 512, 16, 1, False)
    forced = [(shape_key(1, 8, 2, S, 16, 1, False), dataclasses.replace(plan, num_splits=n))
              for S, n in ((512, 1), (256, 4), (1024, 8))]
    with forced_plans(forced):
        answers = [crowds_when_early(q, torch.randn(1, 2, S, 16), torch.randn(1, 2, S, 16)) for S in (512, 256, 1024)]
    assert answers == [True, False, False]
    assert four_sm_gpu == [True]

"""bench/gpu/step_parts.py's variants of the fused decode step (the numbers of bench/results/NOTES.md, Run 15,
rest on them), on the CPU: each changes what it says while it lasts and puts everything back after; the
variant that rebuilds the step as it was before qkv_rope quantized (qkv_rope without tickets, so its fallback:
the append kernel after it) writes the same cache bytes and gives the same logits."""

import importlib.util
from pathlib import Path

import pytest
import torch

import kernels.fused_gemv
import kernels.interface
import models.fused_decode
from models.config import ModelConfig
from models.llama import Decode, build_random_model

PARTS = ["no-combine", "no-attention", "late-dependents", "late-qkv", "combine-no-trigger", "append-kernel",
         "plan:num_splits=2,partials=bfloat16", "cfg:norm_swiglu=16,256,4,3,1|gemv=4,512,4,4,0"]


@pytest.fixture(scope="module")
def step_parts():
    path = Path(__file__).resolve().parents[2] / "bench" / "gpu" / "step_parts.py"
    spec = importlib.util.spec_from_file_location("step_parts", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _state():
    return (kernels.interface._run, kernels.interface.plan_for, kernels.interface.COMBINE_TRIGGER,
            kernels.fused_gemv.tickets, kernels.fused_gemv.LATE_DEPENDENTS, kernels.fused_gemv.CONFIGS,
            models.fused_decode.decode_attention)


@pytest.mark.parametrize("part", PARTS)
def test_a_variant_changes_the_step_while_it_lasts_and_restores_it(step_parts, part):
    before = _state()
    with step_parts.Variant(part):
        during = _state()
        assert during != before
        if part.startswith("cfg:"):
            assert kernels.fused_gemv.CONFIGS["norm_swiglu"] == kernels.fused_gemv.Config(16, 256, 4, 3, True)
            assert kernels.fused_gemv.CONFIGS["gemv"] == kernels.fused_gemv.Config(4, 512, 4, 4, False)
        if part.startswith("plan:"):
            q = torch.randn(1, 4, 16)
            plan = kernels.interface.plan_for(q, 1, 4, 4, 256, 16, 1, True)
            assert (plan.num_splits, plan.partials) == (2, "bfloat16")
    assert _state() == before


def test_the_append_kernel_variant_writes_what_qkv_rope_writes(step_parts):
    config = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, vocab_size=97)
    model = build_random_model(config, max_len=64)
    model.fused_decode = True
    token, step = torch.tensor([[5]]), Decode(torch.tensor([20]), torch.tensor([21], dtype=torch.int32), "flash")
    runs = []
    for part in ("whole", "append-kernel"):
        model.setup_caches(1, 64, quant="int8")
        torch.manual_seed(0)
        for layer in model.layers:                  # the same random history in both runs
            cache = layer.attention.kv_cache
            cache.k[:, :, :20].random_(-127, 128)
            cache.v[:, :, :20].random_(-127, 128)
            cache.k_scale[:, :, :20].uniform_(0.01, 0.02)
            cache.v_scale[:, :, :20].uniform_(0.01, 0.02)
        with step_parts.Variant(part):
            logits = model.decode(token, step)
        written = [layer.attention.kv_cache for layer in model.layers]
        assert all(c.k_scale[0, :, 20].ne(1).all() and c.v[0, :, 20].ne(0).any() for c in written)  # the new token
        caches = [torch.cat([t.flatten().float() for t in (c.k, c.v, c.k_scale, c.v_scale)]) for c in written]
        runs.append((logits, caches))
    (fused_logits, fused_caches), (appended_logits, appended_caches) = runs
    assert all(torch.equal(a, b) for a, b in zip(fused_caches, appended_caches))
    assert torch.equal(fused_logits, appended_logits) and fused_logits.abs().max() > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU these scripts run their benchmarks")
@pytest.mark.parametrize("script", ["prefill_stop.py", "v_layout.py", "step_parts.py"])
def test_a_gpu_script_says_in_one_line_that_it_needs_a_gpu(script, tmp_path):
    """`python bench/gpu/prefill_stop.py` and `python bench/gpu/v_layout.py OUT` (commands the README lists) ended
    in torch's AssertionError traceback on a machine without CUDA, as step_parts.py does not."""
    import os
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[2]
    out = [str(tmp_path)] if script == "v_layout.py" else ["--out", str(tmp_path)]
    run = subprocess.run([sys.executable, str(root / "bench" / "gpu" / script), *out], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(root)})
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "needs a CUDA GPU" in run.stderr, run.stderr

"""kernels.settings, the tables the app's start-up check reads, against what the kernels actually use: if a kernel
kind, a configuration's field or a plan's field changes there, these fail until the table says the same."""
import subprocess
import sys

import pytest
import torch

from kernels import few_rows_int8, fused_gemv, settings
from kernels.fused_gemv import CONFIGS, INT8_CONFIGS, config_name


def test_the_fused_kinds_are_those_the_kernels_launch(monkeypatch):
    launched = []
    monkeypatch.setattr(fused_gemv, "_launch", lambda *a, **k: None)
    lookup = fused_gemv.config_for
    monkeypatch.setattr(fused_gemv, "config_for", lambda kind, *a, **k: launched.append(kind) or lookup(kind, *a, **k))
    x8, x12 = torch.randn(8), torch.randn(12)
    fused_gemv.gemv(x8, torch.randn(12, 8), residual=torch.randn(12))
    fused_gemv.gemv(x12, torch.randn(8, 12))
    fused_gemv.gemv(x8, torch.randn(10, 8), norm_weight=torch.ones(8), out_dtype=torch.float32)
    fused_gemv.norm_swiglu(x8, torch.ones(8), 1e-5, torch.randn(12, 8))
    fused_gemv.qkv_rope(x8, torch.ones(8), 1e-5, torch.randn(32, 8), torch.ones(4, 8), torch.ones(4, 8),
                        torch.tensor([1]), 2, 1)
    assert sorted(launched) == sorted(settings.FUSED_KINDS) == sorted(fused_gemv.KINDS)
    assert {key if isinstance(key, str) else key[0] for key in CONFIGS} == set(settings.FUSED_KINDS)


def test_a_fused_configuration_holds_the_configs_fields_and_every_committed_one_reads_back():
    assert fused_gemv.Config._fields == settings.FUSED_NUMBERS + settings.FUSED_FLAGS
    for table in (CONFIGS, INT8_CONFIGS):
        written = {config_name(key): list(config) for key, config in table.items()}      # as the bench writes them
        assert {key: fused_gemv.Config(*values) for key, values in settings.fused_entries(written).items()} == table


def test_a_few_rows_plan_holds_the_plans_fields_and_every_committed_one_reads_back():
    assert few_rows_int8.Plan._fields[:len(settings.FEW_ROWS_NUMBERS)] == settings.FEW_ROWS_NUMBERS
    written = {f"{n}x{k}": list(values) for (n, k), values in few_rows_int8.PLANS.items()}
    assert settings.few_rows_entries(written) == few_rows_int8.PLANS


@pytest.mark.parametrize("entries, words", [
    ({"gemm": [2, 512, 2, 4]}, "unknown kernel kind 'gemm'"),
    ({"gemv": [2, 512, 2]}, "is 3 values; an entry is [block_n, block_k, num_warps, num_stages(, interleave(, dp4a))]"),
    ({"gemv": [2, 512, 2, 4, True, False, True]}, "is 7 values"),
    ({"gemv": 3}, "is not a list"),
    ({"gemv": [2, "512", 2, 4]}, "block_k is \"512\", not a power of two"),
    ({"gemv": [3, 512, 2, 4]}, "block_n is 3, not a power of two"),
    ({"gemv": [2, 512, 2, 0]}, "num_stages is 0, not a positive integer"),
    ({"gemv": [2, 512, 2, 4, 1]}, "interleave is 1, not true or false"),
    ({"gemv 12x": [2, 512, 2, 4]}, "is not 'kind NxK'"),
])
def test_a_bad_fused_entry_names_itself(entries, words):
    with pytest.raises(ValueError) as refused:
        settings.fused_entries(entries)
    assert words in str(refused.value)


def test_a_bad_few_rows_entry_names_itself():
    for entries, words in [({"gemv": [32, 256, 4, 3, 2]}, "'gemv' is not \"NxK\""),
                           ({"4096x4096": [32, 256, 4, 3]}, "is 4 values; an entry is [block_n, block_k, num_warps, "
                                                            "num_stages, split_k]"),
                           ({"4096x4096": [32, 256, 4, 3, -1]}, "split_k is -1, not a positive integer")]:
        with pytest.raises(ValueError) as refused:
            settings.few_rows_entries(entries)
        assert words in str(refused.value)


def test_the_settings_module_imports_neither_torch_nor_triton():
    """The app's start-up check imports it on any machine, before anything loads (kernels/__init__ is lazy too)."""
    code = ("import sys, kernels.settings, models.kernel_settings\n"
            "assert not {'torch', 'triton'} & set(sys.modules), sorted({'torch', 'triton'} & set(sys.modules))")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_committed_plan_table_passes_the_planners_check_and_a_bad_one_is_named(tmp_path):
    """kernels.plan.check_table, which the app's start-up check runs over CODECOMPLETE_PLANS_DIR, is what load_table
    runs: the committed table passes, an entry the planner cannot use is a ValueError naming the file and entry."""
    import json

    from kernels import plan
    plan.check_tables(plan.PLANS_DIR)
    table = json.loads((plan.PLANS_DIR / "nvidia-h200.json").read_text())
    table["entries"][1]["plan"]["tile"] = 64
    (tmp_path / "nvidia-h200.json").write_text(json.dumps(table))
    with pytest.raises(ValueError, match=r"nvidia-h200.json: entries\[1\]: plan: tile is no field of a launch plan"):
        plan.load_table("NVIDIA H200", table["device"]["sms"], tmp_path)
    (tmp_path / "notes.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="notes.json: not a plan table"):
        plan.check_tables(tmp_path)


@pytest.mark.parametrize("device", [None, "h200", {"name": "NVIDIA H200"}, {"sms": "132"}])
def test_a_plan_table_without_its_cards_sm_count_is_named(tmp_path, device):
    """load_table matches a table to the card by device.sms: without it the table passed the start-up check, then
    failed at a GPU's first attention call (AttributeError on a string, or the table never used)."""
    import json

    from kernels import plan
    table = json.loads((plan.PLANS_DIR / "nvidia-h200.json").read_text())
    table["device"] = device
    (tmp_path / "nvidia-h200.json").write_text(json.dumps(table))
    with pytest.raises(ValueError, match=r"nvidia-h200.json: device is .*, not \{\"sms\""):
        plan.check_tables(tmp_path)


@pytest.mark.parametrize("field, value, words", [
    ("num_splits", 0, "num_splits is 0, not a positive integer"),
    ("block_n", 48, "block_n is 48, not a power of two"),
    ("block_d", -128, "block_d is -128, not a power of two"),
    ("num_warps", 3, "num_warps is 3, not a power of two"),
    ("num_stages", -1, "num_stages is -1, not 0 or more"),
    ("maxnreg", -8, "maxnreg is -8, not 0 or more"),
    ("partials", "float64", "partials is \"float64\", not one of \"float32\", \"bfloat16\""),
    ("cache_modifier", ".cgg", "cache_modifier is \".cgg\", not one of"),
    ("eviction", "evict_never", "eviction is \"evict_never\", not one of"),
])
def test_a_plan_value_the_kernels_cannot_launch_is_named(tmp_path, field, value, words):
    """check_table took any integer and any string of the right type: a hand-edited table's `partials: "float64"`
    (a KeyError in kernels.interface), a block of 48 keys or 3 warps (Triton's compile error) or an unknown load
    hint (Triton's ValueError) failed at a GPU's first attention call, after the model loaded; 0 splits launched an
    empty grid. Each is named at start-up with the values the kernels take."""
    import json

    from kernels import plan
    table = json.loads((plan.PLANS_DIR / "nvidia-h200.json").read_text())
    table["entries"][2]["plan"][field] = value
    (tmp_path / "nvidia-h200.json").write_text(json.dumps(table))
    with pytest.raises(ValueError) as refused:
        plan.check_tables(tmp_path)
    assert f"nvidia-h200.json: entries[2]: plan: {words}" in str(refused.value), refused.value


def test_the_plans_value_sets_are_those_the_kernels_take():
    """kernels.plan's sets (which import neither torch nor Triton) against kernels.interface's partial dtypes and
    the load hints Triton's own code generator takes."""
    from triton.language import semantic

    from kernels import interface, plan
    assert set(plan.PARTIALS) == set(interface.PARTIAL_DTYPES)
    builder = semantic.TritonSemantic.__new__(semantic.TritonSemantic) if hasattr(semantic, "TritonSemantic") \
        else semantic
    for hint in plan.CACHE_MODIFIERS:
        builder._str_to_load_cache_modifier(hint)
    for hint in plan.EVICTIONS:
        builder._str_to_eviction_policy(hint)
    with pytest.raises(ValueError):
        builder._str_to_eviction_policy("evict_never")


def test_every_launch_plan_field_has_a_type_the_tables_check_knows():
    """A LaunchPlan field of a type check_table cannot name would be a KeyError, an internal error at every start-up
    with CODECOMPLETE_PLANS_DIR set."""
    import dataclasses

    from kernels import plan
    assert {f.type for f in dataclasses.fields(plan.LaunchPlan)} <= set(plan._PLAN_TYPES)


def test_the_lazy_names_are_listed_before_they_load():
    """dir(kernels) (tab completion, help(), the "Did you mean" of a mistyped name) listed none of the public names
    until they had loaded; it lists them all and loads nothing, and a mistyped name is said as Python says one."""
    code = ("import sys, kernels\n"
            "assert set(kernels.__all__) <= set(dir(kernels)), sorted(set(kernels.__all__) - set(dir(kernels)))\n"
            "assert 'kernels.interface' not in sys.modules and 'torch' not in sys.modules\n"
            "try:\n"
            "    kernels.flash_decod\n"
            "except AttributeError as exc:\n"
            "    assert exc.name == 'flash_decod' and exc.obj is kernels, (exc.name, exc.obj)\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    mistyped = subprocess.run([sys.executable, "-c", "import kernels; kernels.flash_decod"], capture_output=True,
                              text=True)
    assert "Did you mean: 'flash_decode'?" in mistyped.stderr, mistyped.stderr


def test_a_gpu_engine_can_load_the_lazy_kernels_before_it_compiles_or_captures():
    """models.attention.load_kernels (a CUDA engine's start) imports what the first decode step would."""
    code = ("import os, sys; os.environ['TRITON_INTERPRET'] = '1'\n"
            "import kernels, models.attention\n"
            "assert 'kernels.interface' not in sys.modules\n"
            "models.attention.load_kernels()\n"
            "assert {'kernels.interface', 'kernels.exact_window', 'kernels.prefill_exact'} <= set(sys.modules)\n"
            "assert vars(kernels)['flash_decode'] is models.attention._flash_decode()")
    subprocess.run([sys.executable, "-c", code], check=True)

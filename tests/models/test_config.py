import subprocess
import sys

import pytest

from models.config import PRESETS, ModelConfig, RopeScaling, preset
from models.errors import UnsupportedModelError

LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
         "num_attention_heads": 32, "intermediate_size": 11008, "vocab_size": 32016, "rms_norm_eps": 1e-5,
         "max_position_embeddings": 16384}


@pytest.mark.parametrize("name, kib_per_token", [("CodeLlama-7B", 512), ("CodeLlama-13B", 800),
                                                 ("CodeLlama-34B", 192), ("CodeLlama-70B", 320), ("SmolLM2-135M", 22.5)])
def test_presets_match_the_design_table(name, kib_per_token):
    # DESIGN.md's last column: KV bytes per token in bf16.
    assert PRESETS[name].kv_bytes_per_token(2) == kib_per_token * 1024
    assert preset(name.lower()) is PRESETS[name]


def test_codellama_presets_have_codellama_rope_and_vocab():
    assert [PRESETS[n].vocab_size for n in ("CodeLlama-7B", "CodeLlama-13B", "CodeLlama-34B")] == [32016, 32016, 32000]
    assert {PRESETS[n].rope_theta for n in PRESETS if n.startswith("CodeLlama")} == {1e6}
    assert PRESETS["CodeLlama-34B"].head_dim == 128 and PRESETS["SmolLM2-135M"].head_dim == 64


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(UnsupportedModelError, match="CodeLlama-7B"):
        preset("gpt-5")


def test_old_and_new_rope_formats_read_the_same():
    old = {**LLAMA, "rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 4.0}}
    new = {**LLAMA, "rope_parameters": {"rope_type": "linear", "rope_theta": 5e5, "factor": 4.0}}
    assert ModelConfig.from_hf(old, "a") == ModelConfig.from_hf(new, "b")
    assert ModelConfig.from_hf(new, "b").rope_scaling == RopeScaling("linear", 4.0)


def test_missing_rope_theta_is_codellamas_for_codellama():
    assert ModelConfig.from_hf(LLAMA, "/x/config.json").rope_theta == 1e6                   # vocab 32016
    assert ModelConfig.from_hf({**LLAMA, "vocab_size": 32000}, "/hub/codellama--CodeLlama-34b/config.json").rope_theta == 1e6
    assert ModelConfig.from_hf({**LLAMA, "vocab_size": 32000}, "/x/config.json").rope_theta == 1e4


def test_the_codellama_guess_reads_the_checkpoints_own_folder_not_any_folder_above_it():
    """A config without rope_theta is CodeLlama's (1e6) by its vocabulary or by its checkpoint's name: the folder
    that holds it, or a hub cache's models--ORG--NAME above a snapshot's hash. A Llama 2 checkpoint kept anywhere
    under a folder so named (a user's ~/codellama-work/) is Llama 2's 1e4, as transformers reads it."""
    llama2 = {**LLAMA, "vocab_size": 32000}
    hub = "/c/hub/models--codellama--CodeLlama-34b-hf/snapshots/0123abcd/config.json"
    assert ModelConfig.from_hf(llama2, hub).rope_theta == 1e6
    assert ModelConfig.from_hf(llama2, "/m/CodeLlama-34b-Instruct/config.json").rope_theta == 1e6
    assert ModelConfig.from_hf(llama2, "/home/u/codellama-work/llama-2-7b/config.json").rope_theta == 1e4
    other_hub = "/home/u/codellama-work/hub/models--meta-llama--Llama-2-7b-hf/snapshots/0123abcd/config.json"
    assert ModelConfig.from_hf(llama2, other_hub).rope_theta == 1e4


def test_hf_round_trip_keeps_everything():
    config = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, vocab_size=100, rope_theta=500.0,
                         rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 32), max_positions=128,
                         tie_embeddings=True, bos_token_id=1, eos_token_ids=(2, 7))
    assert ModelConfig.from_hf(config.to_hf(), "x") == config


def test_dynamic_scaling_stretches_the_context_limit():
    config = ModelConfig.from_hf({**LLAMA, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "x")
    assert config.context_limit == 2 * 16384


@pytest.mark.parametrize("change, message", [
    ({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}, "Qwen2ForCausalLM"),
    ({"attention_bias": True}, "attention_bias"),
    ({"hidden_act": "gelu"}, "gelu"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
])
def test_unsupported_configs_name_the_file_and_the_problem(change, message):
    with pytest.raises(UnsupportedModelError, match=message) as error:
        ModelConfig.from_hf({**LLAMA, **change}, "/ckpt/config.json")
    assert "/ckpt/config.json" in str(error.value)


def test_importing_models_loads_neither_torch_nor_gguf():
    code = "import sys, models; models.GenerationConfig; print('torch' in sys.modules, 'gguf' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]

"""Round 12 of the adversarial sweep: checkpoints whose config.json transformers reads one way and we read another.

Each probe is a tiny random checkpoint saved by transformers, then edited as a user's files may be; our prefill
logits must be transformers' LlamaForCausalLM's for the same files (or loading must refuse, in one line).
"""

import json
import shutil

import pytest
import torch

from models import load_model

from tiny_models import save_tiny_llama

PROMPT_LEN = 40
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}


def edited_copy(tmp_path, tokenizer, name, edit, **save):
    directory = tmp_path / name
    save_tiny_llama(directory, tokenizer, n_kv_heads=2, **save)
    config = json.loads((directory / "config.json").read_text())
    edit(config)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def assert_logits_match_transformers(directory):
    from transformers import LlamaForCausalLM
    ids = torch.randint(3, 200, (1, PROMPT_LEN), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()(ids).logits
        engine = load_model(directory, device="cpu", max_context=64, past_training=True)
        got = engine.model.prefill(ids, all_logits=True)
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-4)


def test_a_head_stored_apart_from_tied_embeddings_is_used_as_transformers_uses_it(tmp_path, llama_tokenizer):
    """config.json says tie_word_embeddings, but the weights hold an lm_head.weight of their own that differs from the
    embeddings (a checkpoint saved untied, its config edited or converted by another tool): transformers 5 keeps the
    two apart ("both are present in the checkpoints with different values, so we will NOT tie them"); we tied them,
    dropping the stored head without a word, and every logit differed (by up to 9.7)."""
    directory = edited_copy(tmp_path, llama_tokenizer, "claims-tied", lambda c: c.update(tie_word_embeddings=True))
    assert_logits_match_transformers(directory)


def test_a_head_stored_equal_to_tied_embeddings_stays_tied(tmp_path, llama_tokenizer):
    """A tied checkpoint that also stores its head (the same values) loads as one table, as before."""
    from safetensors.torch import load_file, save_file
    directory = tmp_path / "tied-stored-twice"
    save_tiny_llama(directory, llama_tokenizer, n_kv_heads=2, tie=True)
    (file,) = directory.glob("*.safetensors")
    tensors = load_file(file)
    save_file({**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"].clone()}, file,
              metadata={"format": "pt"})
    engine = load_model(directory, device="cpu", max_context=64)
    assert engine.model.output.weight is engine.model.tok_embeddings.weight
    assert_logits_match_transformers(directory)


@pytest.mark.parametrize("edit", [
    # transformers gives a top-level original_max_position_embeddings (Phi-3's place for it) priority over the
    # rope dict's; we read the rope dict's (16) where transformers reads 8.
    pytest.param(lambda c: c.update(original_max_position_embeddings=8), id="top-level-original-length"),
    # Neither given: transformers takes max_position_embeddings, whose default is 2048; we took 8192.
    pytest.param(lambda c: (c.pop("max_position_embeddings"), c["rope_parameters"].pop(
        "original_max_position_embeddings")), id="no-lengths-at-all"),
])
def test_llama3_rope_reads_its_original_length_where_transformers_does(tmp_path, llama_tokenizer, edit):
    directory = edited_copy(tmp_path, llama_tokenizer, "llama3", edit, rope_scaling=dict(LLAMA3))
    assert_logits_match_transformers(directory)


def test_a_tokenizer_config_without_the_tokenizer_it_describes_is_a_missing_file(tmp_path, tiny_checkpoint):
    """A partial download: tokenizer_config.json came, tokenizer.json did not. The error was transformers' own, over
    four lines ("Couldn't instantiate the backend tokenizer from one of: (1) ...") and exit 1; a folder with no
    tokenizer file at all already said "no tokenizer files" (exit 2). Now both name what is missing."""
    from models import ModelNotFoundError
    from tiny_models import load_error
    directory = tmp_path / "no-tokenizer-json"
    shutil.copytree(tiny_checkpoint[0], directory)
    (directory / "tokenizer.json").unlink()
    assert (directory / "tokenizer_config.json").is_file()
    message = load_error(directory, ModelNotFoundError, "no tokenizer.json or tokenizer.model")
    assert "\n" not in message and str(directory) in message


@pytest.mark.parametrize("beside", ["adapter_model.safetensors", "model.fp16.safetensors"])
def test_model_safetensors_loads_alone_whatever_lies_beside_it(tmp_path, tiny_checkpoint, beside):
    """Without an index transformers reads model.safetensors and nothing else; we read every *.safetensors of the
    folder, so a PEFT adapter left beside a merged model (or a second copy of the weights) refused to load:
    'unexpected tensor base_model.model...' or 'stored twice'."""
    import torch
    from safetensors.torch import load_file, save_file
    directory = tmp_path / "with-a-neighbour"
    shutil.copytree(tiny_checkpoint[0], directory)
    weights = load_file(directory / "model.safetensors")
    other = ({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(8, 64)}
             if beside.startswith("adapter") else {name: t.half() for name, t in weights.items()})
    save_file(other, directory / beside)
    engine = load_model(directory, device="cpu", max_context=32)
    torch.testing.assert_close(engine.model.tok_embeddings.weight, weights["model.embed_tokens.weight"])


def test_a_stale_index_beside_model_safetensors_loads_the_file_as_transformers_does(tmp_path, tiny_checkpoint):
    """save_pretrained unsharded into a folder of an earlier sharded save deletes the shards but keeps their index;
    transformers reads model.safetensors before any index and loads the folder, where we refused it ("listed in
    model.safetensors.index.json but missing", exit 2)."""
    directory = tmp_path / "saved-again-unsharded"
    shutil.copytree(tiny_checkpoint[0], directory)
    tiny_checkpoint[1].save_pretrained(directory, max_shard_size="100KB")
    assert (directory / "model.safetensors.index.json").is_file()
    tiny_checkpoint[1].save_pretrained(directory)
    assert (directory / "model.safetensors.index.json").is_file()      # (its shards are gone)
    assert not list(directory.glob("model-*-of-*.safetensors"))
    assert_logits_match_transformers(directory)


@pytest.mark.parametrize("saved, added", [
    # A pre-5 recipe for a longer context ("add rope_scaling to config.json") applied to a config transformers 5 saved
    # (rope_parameters only): transformers reads the added rope_scaling; we merged the two, rope_parameters winning,
    # and ignored the scaling without a word.
    pytest.param(None, {"rope_type": "linear", "factor": 2.0}, id="scaling-added-to-a-plain-config"),
    pytest.param({"rope_type": "linear", "factor": 2.0}, {"rope_type": "linear", "factor": 4.0},
                 id="scaling-changed-beside-the-saved-one"),
])
def test_a_rope_scaling_beside_rope_parameters_is_read_as_transformers_reads_it(tmp_path, llama_tokenizer, saved,
                                                                                  added):
    directory = edited_copy(tmp_path, llama_tokenizer, "both-rope-keys", lambda c: c.update(rope_scaling=added),
                            rope_scaling=saved)
    assert_logits_match_transformers(directory)


def gguf_with_metadata(tmp_path, name, changes=None, remove=()):
    """The tiny GGUF written again with metadata keys set ((type, value) each) or removed, tensors as they were."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata
    from tiny_models import write_tiny_gguf
    source, target = tmp_path / "source.gguf", tmp_path / f"{name}.gguf"
    write_tiny_gguf(source)
    reader = gguf.GGUFReader(str(source))
    writer = gguf.GGUFWriter(str(target), arch="llama", endianess=reader.endianess)
    copy_with_new_metadata(reader, writer, {k: MetadataDetails(*v) for k, v in (changes or {}).items()}, list(remove))
    return target


def test_a_gguf_rope_attention_factor_is_refused_not_ignored(tmp_path):
    """llama.cpp multiplies every rotary cos/sin by llama.rope.scaling.attn_factor (yarn_attn_factor *=
    rope_attn_factor, for every architecture), so attention scores scale by its square; we ignored the key."""
    from gguf import GGUFValueType as T
    from models import ModelError
    from tiny_models import load_error
    path = gguf_with_metadata(tmp_path, "attn-factor", {"llama.rope.scaling.attn_factor": (T.FLOAT32, 0.5)})
    message = load_error(path, ModelError, "llama.rope.scaling.attn_factor")
    assert "0.5" in message and "\n" not in message
    plain = gguf_with_metadata(tmp_path, "attn-factor-one", {"llama.rope.scaling.attn_factor": (T.FLOAT32, 1.0)})
    load_model(plain, device="cpu", max_context=32)


def test_a_gguf_value_length_unlike_its_key_length_is_refused(tmp_path):
    """llama.cpp sizes V heads by llama.attention.value_length (and would refuse these tensors); we ignored it."""
    from gguf import GGUFValueType as T
    from models import ModelError
    from tiny_models import load_error
    path = gguf_with_metadata(tmp_path, "value-length", {"llama.attention.value_length": (T.UINT32, 8)})
    load_error(path, ModelError, "llama.attention.value_length 8 is not the key length 16")


@pytest.mark.parametrize("key, values", [("llama.attention.head_count_kv", [2, 2]),
                                         ("llama.attention.head_count", [4, 4]),
                                         ("llama.feed_forward_length", [128, 96])])
def test_gguf_per_layer_sizes_are_refused_as_such(tmp_path, key, values):
    """llama.cpp takes head counts and FFN sizes as one number or one per layer; an array was dropped here and the
    size taken as missing: 'lacks llama.attention.head_count', or the KV heads taken as the query heads', which
    then blamed the tensors ('k_proj.weight has shape (32, 64), the config implies (64, 64)'). (Even a uniform
    array would fail later: transformers' GGUF tokenizer reading takes the config's counts as numbers.)"""
    from gguf import GGUFValueType as T
    from models import ModelError
    from tiny_models import load_error
    path = gguf_with_metadata(tmp_path, "per-layer", {key: (T.ARRAY, values)})
    message = load_error(path, ModelError, f"{key} is given per layer")
    assert str(values) in message


def test_swish_is_silu_as_transformers_reads_it(tmp_path, llama_tokenizer):
    """transformers' ACT2FN maps hidden_act "swish" to SiLU; we refused the config ("only silu")."""
    directory = edited_copy(tmp_path, llama_tokenizer, "swish", lambda c: c.update(hidden_act="swish"))
    assert_logits_match_transformers(directory)


@pytest.mark.parametrize("method, tensors", [
    ("gptq", lambda prefix, w: {f"{prefix}.qweight": torch.zeros(w.shape[1] // 8, w.shape[0], dtype=torch.int32),
                                f"{prefix}.scales": torch.ones(1, w.shape[0], dtype=torch.float16),
                                f"{prefix}.g_idx": torch.zeros(w.shape[1], dtype=torch.int32)}),
    ("bitsandbytes", lambda prefix, w: {f"{prefix}.weight": w.to(torch.int8), f"{prefix}.SCB": torch.ones(w.shape[0])}),
])
def test_a_quantized_checkpoint_is_said_to_be_one(tmp_path, tiny_checkpoint, method, tensors):
    """A hub model's GPTQ or bitsandbytes files (a common thing to point --model at) failed as 'unexpected tensor
    model.layers.0.mlp.down_proj.g_idx (not a plain Llama checkpoint)': true, but not why."""
    from safetensors.torch import load_file, save_file
    from models import ModelError
    from tiny_models import load_error
    directory = tmp_path / method
    shutil.copytree(tiny_checkpoint[0], directory)
    stored = {}
    for name, weight in load_file(directory / "model.safetensors").items():
        quantized = name.endswith("_proj.weight")
        stored.update(tensors(name.removesuffix(".weight"), weight) if quantized else {name: weight})
    save_file(stored, directory / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"] = {"quant_method": method, "bits": 4}
    (directory / "config.json").write_text(json.dumps(config))
    message = load_error(directory, ModelError, f"quantized with {method} \\(quantization_config")
    assert "GGUF" in message and "\n" not in message


def test_a_quantization_config_over_float_weights_still_loads(tmp_path, tiny_checkpoint):
    """(A config naming a quantization its float weights never had: they load as they are.)"""
    directory = tmp_path / "floats"
    shutil.copytree(tiny_checkpoint[0], directory)
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (directory / "config.json").write_text(json.dumps(config))
    load_model(directory, device="cpu", max_context=32)


def test_a_gguf_of_experts_is_refused_as_one(tmp_path):
    """Mixtral's GGUFs say architecture "llama" with llama.expert_count; llama.cpp then wants the experts' tensors.
    Over dense tensors the key was ignored and the file loaded as a dense model: a mixture of experts is refused by
    name (a count of 0 is llama.cpp's own "dense")."""
    from gguf import GGUFValueType as T
    from models import ModelError
    from tiny_models import load_error
    path = gguf_with_metadata(tmp_path, "experts", {"llama.expert_count": (T.UINT32, 8),
                                                    "llama.expert_used_count": (T.UINT32, 2)})
    message = load_error(path, ModelError, "mixture of experts")
    assert "8 experts" in message and "\n" not in message
    dense = gguf_with_metadata(tmp_path, "experts-none", {"llama.expert_count": (T.UINT32, 0)})
    load_model(dense, device="cpu", max_context=32)

"""Hugging Face directories, hub ids and bad input: every failure is one line naming the file and the problem."""

import json
import shutil

import pytest
import torch

from tiny_models import load_error
from models import (ContextTooLongError, GenerationConfig, ModelError, ModelNotFoundError, OutOfMemoryError,
                    UnsupportedModelError, load_model)


def greedy(engine, n=6):
    return engine.generate(list(range(10, 30)), GenerationConfig(max_new_tokens=n)).token_ids


def test_sharded_safetensors_and_bin_checkpoints_load_the_same_weights(tmp_path, tiny_checkpoint):
    """The same weights and the format they came in (Ollama's `details.format`)."""
    directory, hf = tiny_checkpoint
    engine = load_model(directory, device="cpu", max_context=32)
    expected = greedy(engine)
    assert engine.checkpoint_format == "safetensors"

    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="100KB")
    shutil.copy(directory / "tokenizer.json", sharded)
    shutil.copy(directory / "tokenizer_config.json", sharded)
    assert len(json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]) > 1
    assert len(list(sharded.glob("*.safetensors"))) > 1
    engine = load_model(sharded, device="cpu", max_context=32)
    assert greedy(engine) == expected and engine.checkpoint_format == "safetensors"

    pickled = tmp_path / "bin"
    pickled.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(directory / name, pickled)
    torch.save(hf.state_dict(), pickled / "pytorch_model.bin")
    engine = load_model(pickled, device="cpu", max_context=32)
    assert greedy(engine) == expected and engine.checkpoint_format == "pytorch"


def test_hub_id_loads_from_the_huggingface_cache_offline(tmp_path, tiny_checkpoint, monkeypatch):
    directory, _ = tiny_checkpoint
    repo = tmp_path / "hub" / "models--tiny-org--tiny-llama"
    revision = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(directory, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    engine = load_model("tiny-org/tiny-llama", device="cpu", max_context=32)
    assert engine.name == "tiny-org/tiny-llama"
    assert greedy(engine) == greedy(load_model(directory, device="cpu", max_context=32))


def test_uncached_hub_id_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    message = load_error("codellama/CodeLlama-7b-hf", ModelNotFoundError, "not in the Hugging Face cache .* offline")
    assert "hf download codellama/CodeLlama-7b-hf" in message


def test_an_uncached_hub_id_with_no_network_says_the_hub_cannot_be_reached(tmp_path, monkeypatch):
    """Not offline by choice: "while offline" sent the user looking for a setting they never made."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    def unreachable(*args, **kwargs):   # what snapshot_download raises when the hub does not answer
        raise LocalEntryNotFoundError("cannot find the requested files in the disk cache and outgoing traffic failed")

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.snapshot_download", unreachable)
    message = load_error("codellama/CodeLlama-7b-hf", ModelNotFoundError, "the hub cannot be reached from here")
    assert "offline" not in message


def test_a_proxy_or_network_failure_during_a_hub_download_is_a_clear_error(monkeypatch):
    import httpx

    def dead_proxy(*args, **kwargs):    # snapshot_download re-raises a proxy error as it is, an httpx error
        raise httpx.ProxyError("502 Bad Gateway from proxy.example:3128")

    monkeypatch.setattr("huggingface_hub.snapshot_download", dead_proxy)
    message = load_error("codellama/CodeLlama-7b-hf", ModelNotFoundError, "download from the Hugging Face hub failed")
    assert "502 Bad Gateway" in message


@pytest.mark.parametrize("spec", ["out/run--3", "org/model..v2", "org/model.", "org/-model"])
def test_a_missing_path_that_is_no_valid_hub_id_is_a_clear_error(monkeypatch, spec):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert spec in load_error(spec, ModelNotFoundError, "no such local path, nor a valid Hugging Face hub id")


def test_missing_path(tmp_path):
    assert "nowhere" in load_error(tmp_path / "nowhere" / "model.gguf", ModelNotFoundError, "no such file or directory")


@pytest.mark.parametrize("value, message", [
    ("  ", 'CODECOMPLETE_MODEL="  " is empty'),
    ("{tmp}/nowhere/model.gguf", "CODECOMPLETE_MODEL={tmp}/nowhere/model.gguf: no such file or directory"),
    ("./missing", "CODECOMPLETE_MODEL=./missing: no such file or directory"),
])
def test_a_missing_or_blank_model_in_the_environment_names_the_variable(tmp_path, monkeypatch, value, message):
    """The user typed no path: `  : no such file or directory` did not say where the value came from."""
    monkeypatch.setenv("CODECOMPLETE_MODEL", value.format(tmp=tmp_path))
    assert load_error(None, ModelNotFoundError, "CODECOMPLETE_MODEL").startswith(message.format(tmp=tmp_path))


def test_a_model_named_by_the_environment_that_is_no_model_names_the_variable(tmp_path, monkeypatch):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"x")
    monkeypatch.setenv("CODECOMPLETE_MODEL", str(path))
    assert load_error(None, UnsupportedModelError, "not a .gguf file").startswith(f"CODECOMPLETE_MODEL={path}: ")


@pytest.mark.parametrize("spec", ["m" * 300, "m" * 300 + ".gguf", "a/" * 3000 + "b"])
def test_a_model_path_too_long_for_the_system_is_a_missing_path_not_a_bug(spec):
    """os.stat's ENAMETOOLONG escaped Path.exists(): an internal error, exit 1, for a value the user typed."""
    load_error(spec, ModelNotFoundError, "File name too long")


def test_directory_without_config_json(tmp_path):
    assert str(tmp_path) in load_error(tmp_path, ModelNotFoundError, "no config.json")


def test_a_file_that_is_neither_gguf_nor_a_directory(tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"x")
    load_error(path, UnsupportedModelError, "not a .gguf file")


def test_a_file_of_a_checkpoint_loads_its_folder(tmp_path, tiny_checkpoint):
    """`--model ckpt/model.safetensors` (llama.cpp's habit of naming a file) means the checkpoint that file is part
    of; a weights file with no config.json beside it is a usage error that says to pass the folder."""
    directory, _ = tiny_checkpoint
    expected = greedy(load_model(directory, device="cpu", max_context=32))
    for name in ("model.safetensors", "config.json"):
        engine = load_model(directory / name, device="cpu", max_context=32)
        assert engine.name == directory.name and greedy(engine) == expected
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(directory / "model.safetensors", lone)
    load_error(lone / "model.safetensors", ModelNotFoundError, "no config.json beside it; pass the checkpoint's folder")


def test_a_tokenizer_model_without_tokenizer_json_that_cannot_be_read_says_what_reads_it(tmp_path, tiny_checkpoint):
    """transformers reads a lone SentencePiece tokenizer.model with sentencepiece and protobuf; failing, it asked for
    tiktoken, which would not help."""
    directory, _ = tiny_checkpoint
    folder = tmp_path / "old"
    shutil.copytree(directory, folder)
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.model").write_bytes(b"\x0a\x03not a sentencepiece model")
    message = load_error(folder, ModelError, "cannot load the tokenizer")
    assert message.endswith("a tokenizer.model without tokenizer.json needs the sentencepiece and protobuf packages")


@pytest.mark.parametrize("tokenizer_class", ["CodeLlamaTokenizer", "LlamaTokenizer"])
def test_a_llama_tokenizer_json_spaced_as_sentencepiece_keeps_that_spacing(tmp_path, tiny_checkpoint, tokenizer_class):
    """CodeLlama's and Llama 2's tokenizer.json put a space in front of the text (a Prepend normalizer), as
    SentencePiece and llama.cpp do: "  def" is "▁▁▁def". transformers 5's class for them rebuilds a Metaspace over
    it that makes that "▁▁def", one space of an indented first line lost."""
    directory, _ = tiny_checkpoint
    folder = tmp_path / "codellama"
    shutil.copytree(directory, folder)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**settings, "tokenizer_class": tokenizer_class}))
    tokenizer = load_model(folder, device="cpu", max_context=32).tokenizer
    assert type(tokenizer).__name__ == tokenizer_class
    for text in ["  def fib", " return", "pop(self):"]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert "".join(tokenizer.convert_ids_to_tokens(ids)) == "▁" + text.replace(" ", "▁")
        assert tokenizer.decode(ids) == text


@pytest.mark.parametrize("spec", ["models/foo", "./foo", "../x/y", "~/no-such-codecomplete-model/x"])
def test_a_missing_local_path_is_not_looked_up_on_the_hub(tmp_path, monkeypatch, spec):
    """A path that starts like one, or whose first folder exists here, is a local path that is missing: said as
    such, never downloaded (no network: a confusing hub error, after a timeout)."""
    def no_hub(*args, **kwargs):
        raise AssertionError(f"{spec} was looked up on the hub")

    monkeypatch.setattr("huggingface_hub.snapshot_download", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    assert spec in load_error(spec, ModelNotFoundError, "no such file or directory")


def copy_checkpoint(source, target, **config_changes):
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, **config_changes}))
    return target


def test_unsupported_architecture_names_the_config(tmp_path, tiny_checkpoint):
    target = copy_checkpoint(tiny_checkpoint[0], tmp_path / "gpt2", architectures=["GPT2LMHeadModel"],
                             model_type="gpt2")
    assert str(target / "config.json") in load_error(target, UnsupportedModelError, "'GPT2LMHeadModel' is not supported")


def test_weights_that_do_not_match_the_config(tmp_path, tiny_checkpoint):
    target = copy_checkpoint(tiny_checkpoint[0], tmp_path / "wide", intermediate_size=256)
    load_error(target, UnsupportedModelError, r"mlp\.\w+_proj\.weight has shape", max_context=32)


def test_missing_shard_and_missing_weights(tmp_path, tiny_checkpoint):
    target = copy_checkpoint(tiny_checkpoint[0], tmp_path / "noweights")
    (target / "model.safetensors").unlink()
    load_error(target, ModelNotFoundError, "no weights")
    (target / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}))
    load_error(target, ModelNotFoundError, "model-00001-of-00002.safetensors: listed in .* but missing")


def test_a_tensor_stored_twice_is_named_as_such(tmp_path, tiny_checkpoint):
    """Two shardings of one checkpoint in one folder, no index: a plain Llama, not an 'unexpected tensor'."""
    target = copy_checkpoint(tiny_checkpoint[0], tmp_path / "twice")
    # (no model.safetensors: beside it, it alone would load, as transformers reads it)
    shutil.copy(target / "model.safetensors", target / "model-00001-of-00001.safetensors")
    (target / "model.safetensors").rename(target / "model-00001-of-00002.safetensors")
    load_error(target, UnsupportedModelError, "tensor [a-z_.0-9]+ is stored twice")


def test_corrupt_safetensors(tmp_path, tiny_checkpoint):
    target = copy_checkpoint(tiny_checkpoint[0], tmp_path / "corrupt")
    (target / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    load_error(target, ModelError, "model.safetensors: unreadable safetensors", max_context=32)


def test_a_context_past_the_training_length_only_when_asked(tiny_checkpoint):
    load_error(tiny_checkpoint[0], ContextTooLongError, "a context of 65 tokens exceeds the 64 positions the model "
               "was trained on", max_context=65)
    engine = load_model(tiny_checkpoint[0], device="cpu", max_context=100, past_training=True)
    assert (engine.context_length, engine.model_max_positions) == (100, 64)
    # The prefill alone runs past position 64 (tests/models/test_parity.py checks the logits there).
    assert engine.generate(list(range(10, 80)), GenerationConfig(max_new_tokens=20)).token_ids
    load_error(tiny_checkpoint[0], ContextTooLongError, "and the 16777216 any model here addresses",
               max_context=(1 << 24) + 1, past_training=True)


def test_prompt_longer_than_the_context(tiny_checkpoint):
    engine = load_model(tiny_checkpoint[0], device="cpu", max_context=16)
    with pytest.raises(ContextTooLongError, match="prompt of 17 tokens does not fit the context of 16"):
        engine.generate(list(range(10, 27)), GenerationConfig(max_new_tokens=1))


def test_a_prompt_filling_the_cache_still_gets_its_one_token(tiny_checkpoint):
    engine = load_model(tiny_checkpoint[0], device="cpu", max_context=16)
    result = engine.generate(list(range(10, 24)), GenerationConfig(max_new_tokens=10))   # 14 of 16 slots
    assert len(result.token_ids) == 3 or result.finish_reason == "stop"
    assert result.finish_reason in ("length", "stop")


def test_kv_cache_that_does_not_fit_says_how_many_tokens_would(tiny_checkpoint, monkeypatch):
    # Tiny model: 2 layers x 2 KV heads x 16 dims x 2 (K, V) x 4 bytes = 512 bytes per token.
    monkeypatch.setattr("models.kv_cache.free_memory_bytes", lambda device: (1 << 30) + 512 * 40)
    load_error(tiny_checkpoint[0], OutOfMemoryError, "cache of 64 tokens .* about 40 tokens would fit", max_context=64)

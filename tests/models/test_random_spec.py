"""`random:PRESET`: random weights of a preset's exact shapes, for benchmarks where no checkpoint is at hand."""

import pytest

from models import GenerationConfig, ModelNotFoundError, UnsupportedModelError, load_model


def test_random_preset_loads_and_decodes():
    engine = load_model("random:SmolLM2-135M", device="cpu", max_context=64)
    assert engine.tokenizer is None and "random weights" in engine.name
    assert engine.model.config.n_layers == 30 and engine.model.config.vocab_size == 49152
    prompt = list(range(3, 40))
    result = engine.generate(prompt, GenerationConfig(max_new_tokens=5))
    assert len(result.token_ids) == 5 and all(0 <= t < 49152 for t in result.token_ids)
    # The same weights and prompt give the same greedy tokens through another backend.
    engine.set_attention("eager")
    engine.clear_prefix_cache()
    assert engine.generate(prompt, GenerationConfig(max_new_tokens=5)).token_ids == result.token_ids


def test_a_random_preset_named_by_the_environment_loads(monkeypatch):
    """CODECOMPLETE_MODEL=random:PRESET passed the command line's check (`--bench` takes it), then was looked for on
    disk: "no such file or directory"."""
    monkeypatch.setenv("CODECOMPLETE_MODEL", "random:SmolLM2-135M")
    engine = load_model(device="cpu", max_context=64)
    assert engine.tokenizer is None and "random weights" in engine.name


def test_unknown_random_preset_is_a_clear_error():
    with pytest.raises(UnsupportedModelError, match="unknown preset 'Nope'"):
        load_model("random:Nope", device="cpu")


def test_a_tokenizer_folder_too_long_for_the_system_is_a_clear_error():
    """`random:PRESET:<300 characters>`: os.stat's ENAMETOOLONG escaped as an internal error."""
    with pytest.raises(ModelNotFoundError, match="File name too long"):
        load_model("random:SmolLM2-135M:" + "t" * 300, device="cpu", max_context=64)


def test_a_tokenizer_folder_that_does_not_exist_is_said_to_be_missing(tmp_path):
    """`random:PRESET:/typo` said the folder had "no tokenizer files", as if it were there."""
    with pytest.raises(ModelNotFoundError, match="typo: no such folder"):
        load_model(f"random:SmolLM2-135M:{tmp_path / 'typo'}", device="cpu", max_context=64)
    with pytest.raises(ModelNotFoundError, match="no tokenizer files"):
        load_model(f"random:SmolLM2-135M:{tmp_path}", device="cpu", max_context=64)


def test_random_preset_can_carry_a_tokenizer(tiny_checkpoint, llama_tokenizer):
    """`random:PRESET:DIR`: the preset's shapes with a real tokenizer, so the whole app runs on it (GPU timing);
    the vocabulary is sized to the tokenizer's, whatever the preset's was."""
    directory, _ = tiny_checkpoint
    engine = load_model(f"random:SmolLM2-135M:{directory}", device="cpu", max_context=64)
    vocab = len(llama_tokenizer)
    assert vocab != 49152 and engine.model.config.vocab_size == vocab
    assert engine.tokenizer is not None and len(engine.tokenizer) == vocab
    assert engine.model.config.n_layers == 30 and engine.model.config.dim == 576
    prompt = engine.tokenizer("def add(a, b):")["input_ids"]
    result = engine.generate(prompt, GenerationConfig(max_new_tokens=4))
    assert 1 <= len(result.token_ids) <= 4 and all(0 <= t < vocab for t in result.token_ids)
    assert isinstance(result.text, str)


def test_a_checkpoints_own_tokenizer_code_is_never_run(tmp_path, llama_tokenizer):
    """An `auto_map` in tokenizer_config.json names Python files of the checkpoint; transformers would ask on
    stdin whether to run them (behind the spinner) and run them on a "y". codecomplete reads tokenizer.json with
    the generic class, or refuses."""
    import json

    from models.loading.hf import load_tokenizer

    llama_tokenizer.save_pretrained(tmp_path)
    marker = tmp_path / "ran"
    (tmp_path / "tokenization_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = load_tokenizer(tmp_path)
    assert tokenizer.encode("def f():") == llama_tokenizer.encode("def f():") and not marker.exists()
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(UnsupportedModelError, match="never runs"):
        load_tokenizer(tmp_path)
    assert not marker.exists()

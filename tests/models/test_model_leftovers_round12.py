"""What round 12 of the adversarial sweep saw and left (bench/results/NOTES.md, "Seen, left"): checkpoints that
transformers loads one way and we loaded another, or refused late. Each probe is a tiny random checkpoint written by
transformers; our prefill logits must be transformers' for the same files, or loading must refuse in one line."""

import json
import shutil

import pytest
import torch

from models import load_model

from tiny_models import load_error, save_tiny_llama

PROMPT_LEN = 40


def transformers_logits(directory, ids, auto=False):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM
    model_class = AutoModelForCausalLM if auto else LlamaForCausalLM
    with torch.no_grad():
        return model_class.from_pretrained(directory, dtype=torch.float32).eval()(ids).logits


def our_logits(directory, ids, **kwargs):
    engine = load_model(directory, device="cpu", **{"max_context": 64, "past_training": True, **kwargs})
    with torch.no_grad():
        return engine.model.prefill(ids, all_logits=True)


def prompt(length=PROMPT_LEN):
    return torch.randint(3, 200, (1, length), generator=torch.Generator().manual_seed(1))


def rewrite_config(directory, **changes):
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


# ---- 1. a tied checkpoint that stores its head, not its embeddings ------------------------------------------------

def test_a_tied_checkpoint_storing_only_its_head_loads_both_tables_from_it(tmp_path, llama_tokenizer):
    """tie_word_embeddings with only lm_head.weight stored (a converter that saves the head and drops the table it is
    tied to): transformers 5.24 fills the embeddings from the head (both are one tensor after loading, logits of the
    original model); we refused it, 'checkpoint lacks 1 tensors, e.g. model.embed_tokens.weight'."""
    from safetensors.torch import load_file, save_file
    directory = tmp_path / "head-only"
    save_tiny_llama(directory, llama_tokenizer, n_kv_heads=2, tie=True)
    file = directory / "model.safetensors"
    tensors = load_file(file)
    embeddings = tensors.pop("model.embed_tokens.weight")
    save_file({**tensors, "lm_head.weight": embeddings}, file, metadata={"format": "pt"})
    ids = prompt()
    torch.testing.assert_close(our_logits(directory, ids), transformers_logits(directory, ids), atol=2e-4, rtol=1e-4)
    engine = load_model(directory, device="cpu", max_context=64, weights="int8")
    torch.testing.assert_close(engine.model.tok_embeddings.weight, embeddings)


def test_an_untied_checkpoint_storing_only_its_head_is_still_refused(tmp_path, llama_tokenizer):
    """(Untied, the embeddings are a table of their own: transformers would make it up at random.)"""
    from safetensors.torch import load_file, save_file
    from models import UnsupportedModelError
    directory = tmp_path / "untied-head-only"
    save_tiny_llama(directory, llama_tokenizer, n_kv_heads=2)
    file = directory / "model.safetensors"
    tensors = load_file(file)
    del tensors["model.embed_tokens.weight"]
    save_file(tensors, file, metadata={"format": "pt"})
    load_error(directory, UnsupportedModelError, "lacks 1 tensors, e.g. model.embed_tokens.weight", max_context=32)


# ---- 2. a complete shard index beside a stale model.safetensors ----------------------------------------------------

def test_a_complete_index_beside_a_stale_model_safetensors_reads_the_file_as_transformers_does(tmp_path,
                                                                                                llama_tokenizer):
    """A folder saved sharded, then given a model.safetensors of other weights (a merge written beside the shards, a
    download of both layouts): transformers reads model.safetensors before any index; we read the index's shards,
    other weights than transformers' (every logit apart)."""
    directory = tmp_path / "shards-and-a-file"
    sharded = save_tiny_llama(directory / "sharded", llama_tokenizer, n_kv_heads=2, seed=0)
    save_tiny_llama(directory, llama_tokenizer, n_kv_heads=2, seed=1)     # model.safetensors
    sharded.save_pretrained(directory, max_shard_size="100KB")
    assert (directory / "model.safetensors").is_file() and (directory / "model.safetensors.index.json").is_file()
    assert all((directory / shard).is_file() for shard in
               set(json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"].values()))
    ids = prompt()
    expected = transformers_logits(directory, ids)
    assert not torch.allclose(expected, transformers_logits(directory / "sharded", ids), atol=1e-2)
    torch.testing.assert_close(our_logits(directory, ids), expected, atol=2e-4, rtol=1e-4)


def test_pytorch_model_bin_beside_stray_safetensors_reads_the_bin_as_transformers_does(tmp_path, tiny_checkpoint):
    """Without model.safetensors or its index transformers reads pytorch_model.bin (it never globs): a folder of the
    .bin and a PEFT adapter's safetensors read the adapter ('unexpected tensor base_model...')."""
    from safetensors.torch import load_file, save_file
    directory = tmp_path / "bin-and-adapter"
    shutil.copytree(tiny_checkpoint[0], directory)
    weights = load_file(directory / "model.safetensors")
    (directory / "model.safetensors").unlink()
    torch.save(weights, directory / "pytorch_model.bin")
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(8, 64)},
              directory / "adapter_model.safetensors")
    ids = prompt()
    torch.testing.assert_close(our_logits(directory, ids), transformers_logits(directory, ids), atol=2e-4, rtol=1e-4)


# ---- 3. an attention backend the model's head dim does not fit ------------------------------------------------------

@pytest.mark.parametrize("backend", ["flash", "eager"])
def test_an_attention_backend_the_head_dim_does_not_fit_is_a_mismatch(tmp_path, llama_tokenizer, backend):
    """The error is still a ModelError (the engine's callers catch that), of the kind the app says as a usage error."""
    from models import ModelError, MismatchError
    directory = tmp_path / "head-dim-8"
    save_tiny_llama(directory, llama_tokenizer, n_kv_heads=2, head_dim=8)
    message = load_error(directory, MismatchError, "takes head dims 16..256", attention=backend, max_context=32)
    assert issubclass(MismatchError, ModelError) and "\n" not in message
    engine = load_model(directory, device="cpu", max_context=32)
    with pytest.raises(MismatchError, match="use sdpa"):
        engine.set_attention(backend)


# ---- 4. a tokenizer whose ids the embedding table lacks ------------------------------------------------------------

def shrunk_table(tmp_path, tokenizer, name, rows):
    """A tiny checkpoint whose embedding table (and head) has `rows` rows, whatever the tokenizer's size."""
    from safetensors.torch import load_file, save_file
    directory = tmp_path / name
    save_tiny_llama(directory, tokenizer, n_kv_heads=2)
    tensors = load_file(directory / "model.safetensors")
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        table = tensors[key]
        grown = torch.randn(max(rows, table.shape[0]), table.shape[1], generator=torch.Generator().manual_seed(2))
        grown[:min(rows, table.shape[0])] = table[:rows]
        tensors[key] = grown[:rows].contiguous()
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    rewrite_config(directory, vocab_size=rows)
    return directory


def test_a_tokenizer_larger_than_the_embedding_table_is_refused_at_load(tmp_path, llama_tokenizer):
    """Was found at the first request ('token id 356 is outside the vocabulary (0..279)', exit 1)."""
    from models import MismatchError
    rows = len(llama_tokenizer) - 20
    directory = shrunk_table(tmp_path, llama_tokenizer, "small-table", rows)
    message = load_error(directory, MismatchError, f"ids up to {len(llama_tokenizer) - 1}", max_context=32)
    assert f"{rows} rows" in message and "\n" not in message


def test_an_embedding_table_larger_than_the_tokenizer_loads(tmp_path, llama_tokenizer):
    """A padded vocabulary (a table rounded up to a multiple of 64, CodeLlama's 32016 over fewer pieces) is common."""
    directory = shrunk_table(tmp_path, llama_tokenizer, "padded-table", len(llama_tokenizer) + 64)
    ids = prompt()
    torch.testing.assert_close(our_logits(directory, ids), transformers_logits(directory, ids), atol=2e-4, rtol=1e-4)


def copied(tokenizer):
    return tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer.__class__.from_str(
        tokenizer.backend_tokenizer.to_str()), bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize("added", ["eos", "chat", "text"])
def test_an_added_token_a_prompt_is_made_of_past_the_table_is_refused(tmp_path, llama_tokenizer, added):
    """The table holds every piece of the vocabulary but not a token added after it that prompts are made of: a new
    EOS, the end of turn a chat template writes, a non-special token that text matches. The base vocabulary's size
    alone would pass them."""
    from models import MismatchError
    tokenizer = copied(llama_tokenizer)
    rows = len(tokenizer)
    if added == "text":
        tokenizer.add_tokens(["fibonacci_of"])
    else:
        tokenizer.add_special_tokens({"eos_token": "<|im_end|>"} if added == "eos" else
                                     {"additional_special_tokens": ["<|im_end|>"]})
    if added == "chat":
        tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}"
    directory = shrunk_table(tmp_path, tokenizer, f"added-{added}", rows)
    load_error(directory, MismatchError, f"ids up to {rows}", max_context=32)


@pytest.mark.parametrize("added", [{"pad_token": "<pad>"}, {"additional_special_tokens": ["<FILL_ME>"]}])
def test_a_special_token_nothing_here_makes_past_the_table_loads(tmp_path, llama_tokenizer, added):
    """A fine-tune's <pad> added to the tokenizer without resizing the table (only padding a batch makes it, which
    nothing here does), or a special token no prompt is made of (transformers' CodeLlamaTokenizer appends the infill
    tokens and <FILL_ME> to a vocabulary that lacks them): transformers loads these too."""
    tokenizer = copied(llama_tokenizer)
    rows = len(tokenizer)
    tokenizer.add_special_tokens(added)
    directory = shrunk_table(tmp_path, tokenizer, "added-unused", rows)
    ids = prompt()
    torch.testing.assert_close(our_logits(directory, ids), transformers_logits(directory, ids), atol=2e-4, rtol=1e-4)


# ---- 5. Mistral's sliding window -----------------------------------------------------------------------------------

WINDOW = 16


def mistral_folder(tmp_path, llama_tokenizer, name, architectures, window=WINDOW):
    directory = tmp_path / name
    save_tiny_llama(directory, llama_tokenizer, n_kv_heads=2)
    rewrite_config(directory, model_type="mistral", architectures=architectures, sliding_window=window)
    if architectures is None:       # (a hand-written config: AutoModelForCausalLM goes by model_type alone)
        config = json.loads((directory / "config.json").read_text())
        del config["architectures"]
        (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize("architectures", [["LlamaForCausalLM"], ["MistralForCausalLM"], None])
def test_a_mistral_sliding_window_caps_the_context(tmp_path, llama_tokenizer, architectures):
    """model_type mistral: AutoModelForCausalLM builds a MistralForCausalLM, whose every query attends to the last
    `sliding_window` keys only; we attended to all of them (a mistral config naming LlamaForCausalLM loaded, its
    window ignored). Within the window the two are one computation, so the context is capped there (the default) and
    a longer one asked for is refused; a plain Mistral (no biases, SiLU) then loads too, logits as transformers'."""
    from models import ContextTooLongError
    directory = mistral_folder(tmp_path, llama_tokenizer, f"mistral-{(architectures or ['unnamed'])[0]}",
                               architectures)
    engine = load_model(directory, device="cpu")
    assert engine.context_length == WINDOW
    message = load_error(directory, ContextTooLongError, f"sliding window of {WINDOW} tokens", max_context=WINDOW + 1,
                         past_training=True)
    assert "\n" not in message
    ids = prompt(WINDOW)
    with torch.no_grad():
        got = engine.model.prefill(ids, all_logits=True)
    torch.testing.assert_close(got, transformers_logits(directory, ids, auto=True), atol=2e-4, rtol=1e-4)
    # (Past the window transformers' Mistral is another computation: what the cap keeps us from.)
    longer = prompt(PROMPT_LEN)
    assert not torch.allclose(transformers_logits(directory, longer, auto=True), transformers_logits(directory, longer),
                              atol=1e-3)


def test_a_mistral_without_a_window_loads_its_whole_context(tmp_path, llama_tokenizer):
    """sliding_window null: full attention, as before (and as transformers' Mistral computes it)."""
    directory = mistral_folder(tmp_path, llama_tokenizer, "mistral-no-window", ["LlamaForCausalLM"], window=None)
    assert load_model(directory, device="cpu").context_length == 64
    ids = prompt()
    torch.testing.assert_close(our_logits(directory, ids), transformers_logits(directory, ids, auto=True),
                               atol=2e-4, rtol=1e-4)


def test_a_window_in_a_llama_config_is_not_read(tmp_path, llama_tokenizer):
    """(model_type llama: transformers' Llama has no window, whatever the config holds.)"""
    directory = tmp_path / "llama-with-window"
    save_tiny_llama(directory, llama_tokenizer, n_kv_heads=2)
    rewrite_config(directory, sliding_window=WINDOW)
    assert load_model(directory, device="cpu").context_length == 64

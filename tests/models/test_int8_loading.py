"""int8 (and int4) weights quantized as they load (models/int8_loading.py): a load never holds the full-precision model
(measured by the CPU allocator's own count, as torch.cuda.max_memory_allocated counts a GPU's), its bytes and scales
are those of load-then-quantize bit for bit (a checkpoint folder, one in shards, random weights of a preset's shapes),
and the memory estimates made before and while loading count int8 and int4 weights as such."""

from pathlib import Path

import pytest
import torch
from tiny_models import save_tiny_llama

from models import OutOfMemoryError, load_model
from models.config import PRESETS, ModelConfig
from models.llama import Transformer, build_random_model
from models.loading.hf import load_hf_model, read_config
from models.weights_memory import size_text, weight_bytes

# Deep and narrow: many projections, each small beside all of them together.
DEEP = dict(n_kv_heads=2, num_hidden_layers=16, hidden_size=128, intermediate_size=384)
TINY_PRESET = ModelConfig(dim=128, n_layers=16, n_heads=4, n_kv_heads=2, ffn_dim=384, vocab_size=301,
                          max_positions=64)


@pytest.fixture(scope="module")
def deep_checkpoint(tmp_path_factory, llama_tokenizer) -> Path:
    directory = tmp_path_factory.mktemp("deep")
    save_tiny_llama(directory, llama_tokenizer, **DEEP)
    return directory


def peak_bytes(run, mapped: tuple[int, ...] = ()) -> tuple[object, int]:
    """run()'s result and the most bytes the CPU allocator held at once during it, above what it held before (the
    CPU's torch.cuda.max_memory_allocated: every allocation and free in order, from the profiler). `mapped`: sizes of
    checkpoint files that safetensors maps whole: those pages are the file's (and on a GPU no device memory), and
    the same for every way of loading, so they are left out."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        result = run()
    events = sorted((e for e in profiler.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        if abs(event.nbytes()) not in mapped:
            live += event.nbytes()
            peak = max(peak, live)
    return result, peak


def held_bytes(model) -> int:
    return sum(t.nbytes for t in model.parameters()) + sum(b.nbytes for b in model.buffers())


def projection_bytes(model, element_size: int) -> list[int]:
    """Each projection's bytes in full precision (the embedding table aside; int4's packed weight holds two columns a
    byte, so the shape is the module's, not its weight's)."""
    return [m.out_features * m.in_features * element_size for m in model.projections() if m is not model.tok_embeddings]


@pytest.mark.parametrize("weights", ["int8", "int4"])
@pytest.mark.parametrize("source", ["checkpoint folder", "random preset"])
def test_an_int8_load_holds_the_int8_model_and_a_projection_or_two_never_the_full_precision_one(
        source, weights, deep_checkpoint, monkeypatch):
    """load_model(weights="int8") on a CPU (and "int4"): the allocator's peak is the int8 model it returns (values,
    scales, the float32 embedding table, norms, rotary tables) plus at most 3 float32 projections (the one being
    assembled, the quantization's temporaries, a tensor just read), where quantizing after the load held all 81 of them
    at once."""
    if source == "checkpoint folder":
        spec = str(deep_checkpoint)
        mapped = tuple(f.stat().st_size for f in deep_checkpoint.glob("*.safetensors"))
    else:
        monkeypatch.setitem(PRESETS, "Deep-Test", TINY_PRESET)
        spec, mapped = "random:Deep-Test", ()
    engine, peak = peak_bytes(lambda: load_model(spec, device="cpu", max_context=48, weights=weights), mapped)
    model = engine.model
    assert model.weights_quantized
    largest, all_of_them = max(projection_bytes(model, 4)), sum(projection_bytes(model, 4))
    assert all_of_them > 10 * 3 * largest                      # (so the bound below tells the two ways apart)
    assert held_bytes(model) <= peak <= held_bytes(model) + 3 * largest, (peak - held_bytes(model)) / largest


def _int8_state(model) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    assert any(t.dtype in (torch.int8, torch.uint8) for t in state.values())      # (int4: packed nibbles)
    return state


def assert_same_bytes(streamed, reference) -> None:
    """The same tensors under the same names, of the same dtypes, equal bit for bit; the embedding table kept in
    full precision, a tied head its own int8 copy."""
    got, want = _int8_state(streamed), _int8_state(reference)
    assert list(got) == list(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name].view(torch.uint8), tensor.view(torch.uint8)), \
            name
    assert streamed.tok_embeddings.weight.dtype == streamed.compute_dtype
    assert streamed.output.weight.data_ptr() != streamed.tok_embeddings.weight.data_ptr()


@pytest.mark.parametrize("weights", ["int8", "int4"])
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shards", ["one file", "shards"])
def test_quantized_as_read_is_load_then_quantize_bit_for_bit(tied, dtype, shards, weights, tmp_path, llama_tokenizer):
    """A checkpoint folder loaded with weights="int8" against the same folder loaded whole and then quantized: the
    same values and scales; float32 checkpoint tensors cast to the model's bfloat16 first, as the copy into the model
    casts them; shards small enough that a layer's q, k, v (or gate, up) lie in different files."""
    save_tiny_llama(tmp_path, llama_tokenizer, n_kv_heads=2, tie=tied, seed=int(tied))
    if shards == "shards":
        from transformers import LlamaForCausalLM
        LlamaForCausalLM.from_pretrained(tmp_path).save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
        llama_tokenizer.save_pretrained(tmp_path / "sharded")
        assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 5
    directory = tmp_path / "sharded" if shards == "shards" else tmp_path
    reference = load_hf_model(directory, torch.device("cpu"), dtype, max_len=64).model
    reference.quantize_weights(weights=weights)
    streamed = load_hf_model(directory, torch.device("cpu"), dtype, max_len=64, weights=weights).model
    assert streamed.weights_kind == weights
    assert_same_bytes(streamed, reference)


@pytest.mark.parametrize("weights", ["int8", "int4"])
@pytest.mark.parametrize("tied", [False, True])
def test_a_random_preset_quantized_as_drawn_is_the_quantized_random_model(tied, weights, monkeypatch):
    """load_model("random:PRESET", weights="int8") against build_random_model(...) then quantize_weights: the same
    bytes (each tensor drawn in turn from one seeded generator, so the numbers are the same ones)."""
    config = TINY_PRESET.replace(tie_embeddings=tied)
    monkeypatch.setitem(PRESETS, "Deep-Test", config)
    streamed = load_model("random:Deep-Test", device="cpu", max_context=48, weights=weights).model
    reference = build_random_model(config, max_len=48)
    reference.quantize_weights(weights=weights)
    assert streamed.weights_kind == weights
    assert_same_bytes(streamed, reference)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("weights, matmul_dtype", [(None, None), ("int8", None), ("int4", None),
                                                   (None, torch.bfloat16)])
def test_the_weights_bytes_estimated_before_a_load_are_the_bytes_it_holds(tied, weights, matmul_dtype):
    config = TINY_PRESET.replace(tie_embeddings=tied)
    model = build_random_model(config, max_len=48, matmul_dtype=matmul_dtype, weights=weights)
    rotary = model.rope.cos.nbytes + model.rope.sin.nbytes
    assert weight_bytes(config, torch.float32, weights, matmul_dtype) == held_bytes(model) - rotary


def test_a_context_past_training_is_checked_beside_the_weights_as_they_will_load(deep_checkpoint, monkeypatch):
    """Past the training length the KV cache is checked against free memory before the model is built: less the
    weights still to load, counted as int8 when they load as int8. With room for the int8 weights and the cache but
    not the float32 weights, the int8 load goes ahead and the float32 one is refused, naming both sizes."""
    config = read_config(deep_checkpoint)
    cache = 100 * config.kv_bytes_per_token(4)
    int8, full = weight_bytes(config, torch.float32, "int8"), weight_bytes(config, torch.float32)
    monkeypatch.setattr("models.kv_cache.free_memory_bytes", lambda device: (1 << 30) + cache + int8 + 4096)
    engine = load_model(str(deep_checkpoint), device="cpu", max_context=100, past_training=True, weights="int8")
    assert engine.context_length == 100 and engine.model.weights_quantized
    with pytest.raises(OutOfMemoryError, match=rf"KV cache of 100 tokens .* \(after 1 GiB headroom and the "
                                               rf"{size_text(full)} of weights to load"):
        load_model(str(deep_checkpoint), device="cpu", max_context=100, past_training=True)


@pytest.fixture(params=["checkpoint folder", "random preset"])
def loaded_as(request, deep_checkpoint, monkeypatch) -> tuple[str, ModelConfig]:
    """(spec, config) of the deep test model, as a checkpoint folder or as a random preset."""
    if request.param == "checkpoint folder":
        return str(deep_checkpoint), read_config(deep_checkpoint)
    monkeypatch.setitem(PRESETS, "Deep-Test", TINY_PRESET)
    return "random:Deep-Test", TINY_PRESET


def test_weights_larger_than_the_cpus_free_memory_are_refused_before_any_is_built(loaded_as, monkeypatch):
    """Linux overcommits: the CPU allocator rarely fails, and a load past the memory available ended in the OOM
    killer's SIGKILL, no message (the README's `--bench --model random:CodeLlama-7B` grew to 18 GB on a CPU). Now
    the load is refused first, in the allocator's error's words, nothing built; weights that fit still load."""
    spec, config = loaded_as
    int8, full = weight_bytes(config, torch.float32, "int8"), weight_bytes(config, torch.float32)
    free = (int8 + full) // 2
    monkeypatch.setattr("models.kv_cache.free_memory_bytes", lambda device: free)
    built = []
    materialize = Transformer.materialize
    monkeypatch.setattr(Transformer, "materialize", lambda self, *a, **k: built.append(1) or materialize(self, *a, **k))
    with pytest.raises(OutOfMemoryError, match=rf"its float32 weights \({size_text(full)}\) do not fit in the "
                                               rf"{size_text(free)} of cpu memory free; int8 weights would take "
                                               rf"{size_text(int8)}: --weights int8$"):
        load_model(spec, device="cpu", max_context=48)
    assert not built
    monkeypatch.setattr("models.kv_cache.free_memory_bytes", lambda device: (1 << 30) + full + (1 << 20))
    assert load_model(spec, device="cpu", max_context=48).context_length == 48 and built


def test_running_out_of_memory_while_loading_names_the_weights_bytes_and_int8s(loaded_as, monkeypatch):
    """Out of memory in the middle of a load (here: the CPU allocator's error, at the last projection) is one
    OutOfMemoryError naming the weights' kind and bytes and the memory free, and where int8 weights would fit, that
    option; under int8 weights, the int8 bytes."""
    spec, config = loaded_as
    int8, full = weight_bytes(config, torch.float32, "int8"), weight_bytes(config, torch.float32)
    free = (int8 + full) // 2
    monkeypatch.setattr("models.kv_cache.free_memory_bytes", lambda device: free)

    def out_of_memory(self, *args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: you tried "
                           "to allocate 393216 bytes. Error code 12 (Cannot allocate memory)")
    monkeypatch.setattr("models.llama.Transformer.materialize", out_of_memory)
    with pytest.raises(OutOfMemoryError) as error:
        load_model(spec, device="cpu", max_context=48)
    assert f"its float32 weights ({size_text(full)}) do not fit in the {size_text(free)} of cpu memory free; int8 " \
           f"weights would take {size_text(int8)}: --weights int8" in str(error.value)
    assert "\n" not in str(error.value)
    # Under int8 weights, the int8 bytes, and int4 weights where they fit; under int4 ones, nothing narrower.
    int4 = weight_bytes(config, torch.float32, "int4")
    with pytest.raises(OutOfMemoryError, match=rf"its int8 weights \({size_text(int8)}\) do not fit in the "
                                               rf"{size_text(free)} of cpu memory free; int4 weights would take "
                                               rf"{size_text(int4)}: --weights int4$"):
        load_model(spec, device="cpu", max_context=48, weights="int8")
    with pytest.raises(OutOfMemoryError, match=rf"its int4 weights \({size_text(int4)}\) do not fit in the "
                                               rf"{size_text(free)} of cpu memory free$"):
        load_model(spec, device="cpu", max_context=48, weights="int4")
    # Where int8 weights do not fit either, int4 ones that do.
    monkeypatch.setattr("models.kv_cache.free_memory_bytes", lambda device: (int4 + int8) // 2)
    with pytest.raises(OutOfMemoryError, match=rf"; int4 weights would take {size_text(int4)}: --weights int4$"):
        load_model(spec, device="cpu", max_context=48)

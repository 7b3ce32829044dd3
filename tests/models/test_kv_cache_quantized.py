"""The 8-bit KV caches (fp8 e4m3, int8) on tiny checkpoints: real quantization, every backend reading the same
values, prefill and decode agreeing, the engine's option, errors and the out-of-memory message. (Accuracy on
real weights: test_kv_cache_accuracy.py.)"""

import os

import pytest
import torch

from models import GenerationConfig, OutOfMemoryError, load_model
from models.kv_cache import KVCache, stores_v_sequence_major
from models.llama import Decode

from tiny_models import load_error

PROMPT = list(range(10, 40))
LONG = list(range(10, 70))   # past the exact sink and window (4 + 32 tokens): its later queries read 8-bit keys


@pytest.fixture(scope="module", params=["fp8", "int8"])
def engines(tiny_checkpoint, request):
    directory, _ = tiny_checkpoint
    return (load_model(directory, device="cpu", max_context=64),
            load_model(directory, device="cpu", max_context=64, kv_cache=request.param))


def cache_of(engine, layer=0):
    return engine.model.layers[layer].attention.kv_cache


def test_prefill_stores_8bit_values_with_per_token_scales(engines):
    plain, fp8 = engines
    with torch.no_grad():
        plain.model.prefill(torch.tensor([PROMPT]))
        fp8.model.prefill(torch.tensor([PROMPT]))
    n = len(PROMPT)
    # Layer 0 only: its keys and values come from the embeddings alone, so both caches store the same K/V.
    exact, quantized = cache_of(plain, 0), cache_of(fp8, 0)
    e4m3 = fp8.kv_cache_dtype == "fp8"
    assert quantized.k.dtype == (torch.float8_e4m3fn if e4m3 else torch.int8)
    assert quantized.k_scale.dtype == torch.float32
    qmax = 448 if e4m3 else 127
    for stored, scale, ref in ((quantized.k, quantized.k_scale, exact.k), (quantized.v, quantized.v_scale, exact.v)):
        ref = ref[0, :, :n]                                                   # (Hkv, n, D)
        scale = scale[0, :, :n, None]                                         # (Hkv, n, 1)
        # One scale per token and KV head: the largest magnitude maps to the type's largest value.
        torch.testing.assert_close(scale[..., 0], ref.abs().amax(-1) / qmax, rtol=1e-6, atol=0)
        values = stored[0, :, :n].float()
        assert values.abs().amax(-1).eq(qmax).all()
        error = (values * scale - ref).abs()
        if e4m3:   # 3 mantissa bits: relative error <= 2^-4 (subnormals below 2^-6: absolute 2^-10)
            assert (error <= ref.abs() * 2**-4 + scale * 2**-10).all()
        else:      # a uniform grid: at most half a step
            assert (error <= scale * (0.5 + 1e-5)).all()
        assert error.max() > 0                                                # it really is quantized


def test_v_is_sequence_major_where_flash_decode_reads_it_faster():
    """8-bit GQA caches on a GPU (kernels.interface.sequence_major_v_pays); not MHA, not 16/32-bit, not on a CPU."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert stores_v_sequence_major(4, torch.int8, cuda) and stores_v_sequence_major(8, torch.float8_e4m3fn, cuda)
    assert not stores_v_sequence_major(1, torch.int8, cuda) and not stores_v_sequence_major(8, torch.bfloat16, cuda)
    assert not stores_v_sequence_major(4, torch.int8, cpu)
    assert KVCache(1, 4, 16, 8, torch.float32, "cpu", quant="int8", group=4).v.stride(-1) == 1


def test_a_sequence_major_8bit_cache_generates_what_the_other_layout_does(tiny_checkpoint, monkeypatch):
    """The model's paths through a V stored as on a GPU (prefill, the decode step, prefix reuse), forced on the CPU:
    the same tokens as the head-dim-contiguous layout, since both hold the same quantized values."""
    import models.kv_cache
    config = GenerationConfig(max_new_tokens=6)
    for attention in ("sdpa", "flash"):     # flash: the Triton kernels under the interpreter
        plain = load_model(tiny_checkpoint[0], device="cpu", max_context=48, kv_cache="int8", attention=attention)
        want = plain.generate(PROMPT, config)
        with monkeypatch.context() as patch:
            patch.setattr(models.kv_cache, "stores_v_sequence_major", lambda group, store, device: True)
            engine = load_model(tiny_checkpoint[0], device="cpu", max_context=48, kv_cache="int8", attention=attention)
        assert cache_of(engine).v.stride(2) == 1 and cache_of(engine).k.stride(-1) == 1
        first, again = engine.generate(PROMPT, config), engine.generate(PROMPT, config)
        assert first.token_ids == want.token_ids and len(want.token_ids) == 6
        assert again.token_ids == want.token_ids and again.reused_prefix_tokens > 0   # through the prefix cache


@pytest.mark.parametrize("T", [1, 3])
def test_every_backend_reads_the_same_8bit_cache(engines, T):
    """Flash (the interpreter), sdpa and eager over one 8-bit cache, two rows of different lengths, T tokens each."""
    _, fp8 = engines
    model = fp8.model
    fp8._ensure_rows(2)
    fp8.clear_prefix_cache()
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, model.config.vocab_size, (2, 64), generator=generator)
    input_pos = torch.tensor([58, 41])
    logits = {}
    with torch.no_grad():
        for row in range(2):
            model.prefill(tokens[row:row + 1, :int(input_pos[row])], row=row)
        new = torch.stack([tokens[b, p:p + T] for b, p in enumerate(input_pos.tolist())])   # (2, T)
        for backend in ("flash", "sdpa", "eager"):
            logits[backend] = model.decode(new, Decode(input_pos, (input_pos + T).int(), backend))
    assert logits["eager"].abs().max() > 1.0
    torch.testing.assert_close(logits["sdpa"], logits["eager"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits["flash"], logits["eager"], atol=1e-4, rtol=1e-4)


def test_prefill_and_decode_read_the_same_quantized_values(engines):
    """Teacher-forced prefill logits equal step-by-step decode logits with an 8-bit cache (both dequantize the
    same stored values), and differ from the unquantized cache's."""
    plain, fp8 = engines
    ids = torch.tensor([LONG])
    with torch.no_grad():
        forced = fp8.model.prefill(ids, all_logits=True)                          # (1, 60, V)
        exact = plain.model.prefill(ids, all_logits=True)
        fp8.model.prefill(ids[:, :40])
        for pos in range(40, 60):
            input_pos = torch.tensor([pos])
            step = fp8.model.decode(ids[:, pos:pos + 1], Decode(input_pos, (input_pos + 1).int(), "sdpa"))
            torch.testing.assert_close(step[0], forced[0, pos], atol=1e-4, rtol=1e-4)
    # Exact sink and window: the first 36 positions read no 8-bit key, the later ones do.
    torch.testing.assert_close(forced[0, :36], exact[0, :36], atol=1e-4, rtol=1e-4)
    assert (forced - exact).abs().max() > 1e-3     # the quantization is visible (the tiny model amplifies it)


def test_the_engine_generates_and_reuses_its_prefix_with_an_8bit_cache(engines):
    plain, fp8 = engines
    assert fp8.kv_cache_dtype in ("fp8", "int8") and plain.kv_cache_dtype == "float32"
    config = GenerationConfig(max_new_tokens=6, speculate=0)
    fp8.clear_prefix_cache()
    cold = fp8.generate(PROMPT, config)
    warm = fp8.generate(PROMPT[:25] + [50, 51], config)
    again = fp8.generate(PROMPT, config)
    assert warm.reused_prefix_tokens == 25 and again.token_ids == cold.token_ids
    # Past the exact window: a row cut back further than the ring keeps (48 - 32 tokens) lost the exact copies
    # of its window, and is prefilled from the start instead (never read stale); a short cut keeps its prefix.
    long_cold = fp8.generate(LONG[:50], config)                 # the row holds 55 tokens; the ring 7..54
    cut = fp8.generate(LONG[:25] + [50, 51], config)            # its window, 0..24, lost 4..6
    near = fp8.generate(LONG[:50], config)                      # the row holds 32 tokens: a cut of 7
    assert cut.reused_prefix_tokens == 0 and near.reused_prefix_tokens == 25
    assert near.token_ids == long_cold.token_ids
    fp8.clear_prefix_cache()
    assert fp8.generate(LONG[:25] + [50, 51], config).token_ids == cut.token_ids
    # The decode loop computes what a teacher-forced prefill over the same tokens with an 8-bit cache does.
    with torch.no_grad():
        forced = fp8.model.prefill(torch.tensor([PROMPT + cold.token_ids]), all_logits=True)[0]
    assert forced[len(PROMPT) - 1:-1].argmax(-1).tolist() == cold.token_ids


def test_switching_the_cache_type_keeps_the_weights(tiny_checkpoint):
    engine = load_model(tiny_checkpoint[0], device="cpu", max_context=32)
    config = GenerationConfig(max_new_tokens=4, speculate=0)
    before = engine.generate(PROMPT[:20], config).token_ids
    engine.set_kv_cache("fp8")
    assert engine.kv_cache_dtype == "fp8" and cache_of(engine).k.dtype == torch.float8_e4m3fn
    engine.generate(PROMPT[:20], config)
    engine.set_kv_cache(None)
    assert cache_of(engine).k.dtype == torch.float32
    assert engine.generate(PROMPT[:20], config).token_ids == before


def test_bad_kv_cache_choices_are_one_line_errors(tiny_checkpoint):
    load_error(tiny_checkpoint[0], ValueError, "unknown KV cache type 'int4'", kv_cache="int4")
    load_error(tiny_checkpoint[0], ValueError, "a bf16 KV cache needs a bf16 model .* float32 here", kv_cache="bf16")


def test_out_of_memory_counts_the_smaller_cache(tiny_checkpoint, monkeypatch):
    # Tiny model, per token: float32 2 layers x 2 KV heads x 16 dims x 2 (K, V) x 4 bytes = 512 bytes;
    # fp8 the same in 1 byte (128) + 2 x 2 x 2 float32 scales (32) = 160 bytes, and per row its exact sink and
    # window tokens: 52 slots x (512 float32 bytes + 2 layers x an int64 position) = 27,456 bytes.
    monkeypatch.setattr("models.kv_cache.free_memory_bytes", lambda device: (1 << 30) + 512 * 40)
    message = load_error(tiny_checkpoint[0], OutOfMemoryError, "float32 KV cache of 64 tokens .* about 40 tokens",
                         max_context=64)
    assert "--kv-cache fp8 or int8" in message
    monkeypatch.setattr("models.kv_cache.free_memory_bytes", lambda device: (1 << 30) + 160 * 50 + 27456)
    load_error(tiny_checkpoint[0], OutOfMemoryError, "fp8 KV cache of 64 tokens .* about 50 tokens would fit",
               max_context=64, kv_cache="fp8")
    monkeypatch.setattr("models.kv_cache.free_memory_bytes", lambda device: (1 << 30) + 160 * 64 + 27456)
    assert load_model(tiny_checkpoint[0], device="cpu", max_context=64, kv_cache="fp8").kv_cache_dtype == "fp8"
    monkeypatch.setattr("models.kv_cache.free_memory_bytes", lambda device: (1 << 30) + 160 * 64 + 27455)
    load_error(tiny_checkpoint[0], OutOfMemoryError, "fp8 KV cache of 64 tokens .* about 63 tokens would fit",
               max_context=64, kv_cache="fp8")


def test_free_memory_is_known_without_proc_meminfo(monkeypatch):
    """Off Linux there is no /proc/meminfo: the memory check let every size pass (2**62 bytes "free"), and a cache
    larger than the machine was allocated. The system's page counts say it there (sysconf; Windows' own call)."""
    import builtins
    import os
    import sys
    import types

    from models import kv_cache

    def no_proc(path, *args, **kwargs):
        if str(path).startswith("/proc"):
            raise FileNotFoundError(2, "No such file or directory", path)
        return builtins.open(path, *args, **kwargs)
    monkeypatch.setattr(kv_cache, "open", no_proc, raising=False)      # (the module's open shadows the builtin)
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < kv_cache.free_memory_bytes(torch.device("cpu")) <= pages
    monkeypatch.setattr(os, "sysconf_names", {k: v for k, v in os.sysconf_names.items() if k != "SC_AVPHYS_PAGES"})
    real_sysconf = os.sysconf

    def sysconf(name):
        if name not in os.sysconf_names:
            raise ValueError("unrecognized configuration name")
        return real_sysconf(name)
    monkeypatch.setattr(os, "sysconf", sysconf)
    assert kv_cache.free_memory_bytes(torch.device("cpu")) == pages                # macOS: the total, a bound

    def status(pointer):        # GlobalMemoryStatusEx, as Windows answers it: 3 GiB available
        pointer._obj.ullAvailPhys = 3 << 30
        return 1
    import ctypes
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(ctypes, "windll", types.SimpleNamespace(kernel32=types.SimpleNamespace(
        GlobalMemoryStatusEx=status)), raising=False)
    assert kv_cache.free_memory_bytes(torch.device("cpu")) == 3 << 30


def _fp8_scales_script(monkeypatch):
    import importlib.util
    from pathlib import Path
    bench = Path(__file__).parents[2] / "bench"
    monkeypatch.syspath_prepend(str(bench))        # as when run: the script's folder first (its run_info)
    spec = importlib.util.spec_from_file_location("fp8_scales", bench / "fp8_scales.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fp8_scales_report_names_the_machine_and_versions_and_checks_its_options(monkeypatch, tmp_path, capsys):
    """bench/fp8_scales.py (on a tiny random Llama standing in for SmolLM2): its report carries the date, the CPU
    and the versions like every CPU bench's; --queries 0 (which measured every token) and an --out folder (a
    traceback after the run) are refused first."""
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM
    script = _fp8_scales_script(monkeypatch)
    for argv, says in ((["--queries", "0"], "--queries 0: from 1 to --tokens"),
                       (["--out", str(tmp_path)], "is a folder")):
        with pytest.raises(SystemExit) as exit:
            script.main(argv)
        err = capsys.readouterr().err
        assert exit.value.code == 2 and says in err and err.count("\n") == 1   # one line, not usage + error
    torch.manual_seed(0)
    tiny = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2)).eval()
    tokenizer = lambda text, return_tensors: type("Encoded", (), {"input_ids": torch.randint(0, 64, (1, 40))})()
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **kw: tiny)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **kw: tokenizer)
    out = tmp_path / "fp8-scales.txt"
    assert script.main(["--tokens", "32", "--queries", "4", "--out", str(out)]) == 0
    first, second = out.read_text().splitlines()[:2]
    assert f"{os.cpu_count()} cores" in first and f"torch {torch.__version__}" in first
    assert f"transformers {transformers.__version__}" in first and first[:4].isdigit()       # the date first
    assert "32 tokens" in second and "last 4 tokens, 2 layers" in second

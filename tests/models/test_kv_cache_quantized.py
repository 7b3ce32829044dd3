"""The 8-bit KV caches (fp8 e4m3, int8) on tiny checkpoints: real quantization, every backend reading the same
values, prefill and decode agreeing, the engine's option, errors and the out-of-memory message. (Accuracy on
real weights: test_kv_cache_accuracy.py.)"""

import os

import pytest
import torch

from models import GenerationConfig, OutOfMemoryError, load_model
from models.kv_cache import EXACT_WINDOW_CACHES, KVCache, exact_bytes_per_row, stores_v_sequence_major
from models.llama import Decode

from tiny_models import load_error

PROMPT = list(range(10, 40))
LONG = list(range(10, 70))   # past the exact sink and window (16 + 32 tokens): its later queries read 8-bit keys


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
            # over the first kv_len slots, rows shorter (sdpa and eager read a zeroed dequantized copy)
            spanned = model.decode(new, Decode(input_pos, (input_pos + T).int(), backend, kv_len=62))
            torch.testing.assert_close(spanned, logits[backend], atol=1e-4, rtol=1e-4)
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
    if fp8.kv_cache_dtype in EXACT_WINDOW_CACHES:
        # Exact sink and window: the first 48 positions read no 8-bit key, the later ones do.
        torch.testing.assert_close(forced[0, :48], exact[0, :48], atol=1e-4, rtol=1e-4)
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
    # ring tokens: 16 + 48 slots (a ring of max_len - 16, at least 48) x (512 float32 bytes + 2 layers x an int64
    # position) = 33,792 bytes.
    monkeypatch.setattr("models.kv_cache.free_memory_bytes", lambda device: (1 << 30) + 512 * 40)
    message = load_error(tiny_checkpoint[0], OutOfMemoryError, "float32 KV cache of 64 tokens .* about 40 tokens",
                         max_context=64)
    assert "--kv-cache fp8 or int8" in message
    monkeypatch.setattr("models.kv_cache.free_memory_bytes", lambda device: (1 << 30) + 160 * 50 + 33792)
    load_error(tiny_checkpoint[0], OutOfMemoryError, "fp8 KV cache of 64 tokens .* about 50 tokens would fit",
               max_context=64, kv_cache="fp8")
    monkeypatch.setattr("models.kv_cache.free_memory_bytes", lambda device: (1 << 30) + 160 * 64 + 33792)
    assert load_model(tiny_checkpoint[0], device="cpu", max_context=64, kv_cache="fp8").kv_cache_dtype == "fp8"
    monkeypatch.setattr("models.kv_cache.free_memory_bytes", lambda device: (1 << 30) + 160 * 64 + 33791)
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


def small_ring(monkeypatch) -> None:
    for name, value in (("EXACT_SINK", 4), ("EXACT_WINDOW", 4), ("EXACT_RING", 8), ("EXACT_SLOTS", 12),
                        ("MAX_STEP_TOKENS", 4)):
        monkeypatch.setattr(f"models.kv_cache.{name}", value)


def test_a_cut_whose_repair_would_reach_the_sink_is_prefilled_from_the_start(tiny_checkpoint, monkeypatch):
    """Never a stale exact copy: a cut to 10 tokens (its window 6..9 overwritten by later laps of the ring) would be
    repaired from 10 - 7 = 3, inside the sink, so the row is prefilled from 0; a cut of at most ring - window
    tokens keeps its window and its prefix."""
    small_ring(monkeypatch)
    engine = load_model(tiny_checkpoint[0], device="cpu", max_context=64, kv_cache="fp8")
    config = GenerationConfig(max_new_tokens=6, speculate=0)
    engine.generate(LONG[:40], config)                      # the row holds 45 tokens, the ring 37..44
    cut = engine.generate(LONG[:10] + [3, 4, 5], config)
    assert cut.reused_prefix_tokens == 0
    near = engine.generate(LONG[:10] + [3, 4, 5, 6], config)    # the row held 13 + 5: a cut of 5, repaired from 6
    assert near.reused_prefix_tokens == 13
    engine.clear_prefix_cache()
    assert engine.generate(LONG[:10] + [3, 4, 5], config).token_ids == cut.token_ids


@pytest.mark.parametrize("quant", EXACT_WINDOW_CACHES)
def test_a_prefix_cut_past_the_ring_is_repaired_to_what_a_cold_prefill_computes(tiny_checkpoint, monkeypatch, quant):
    """A row cut back further than its ring keeps loses the exact copies of its window; the engine prefills the
    `repair_span` tokens before the cut again (writing only those copies) and keeps the prefix. The copies then
    equal a cold prefill's. A sink of 4 and a window of 4 (a ring of 8): the tiny model's 64 positions then hold
    laps of the ring, and the repair starts past the sink on 2 layers."""
    small_ring(monkeypatch)
    engine = load_model(tiny_checkpoint[0], device="cpu", max_context=64, kv_cache=quant)
    config = GenerationConfig(max_new_tokens=6, speculate=0)
    prompt = LONG[:40] + [3, 4, 5]

    def window_copies():                                    # each layer's exact K, V of positions 36..39
        copies = []
        for layer in engine.model.layers:
            cache = layer.attention.kv_cache
            slots = [int((cache.exact_pos[0] == p).nonzero()) for p in range(36, 40)]
            copies += [cache.k_exact[0, :, slots].clone(), cache.v_exact[0, :, slots].clone()]
        return copies

    engine.generate(LONG[:55], config)                      # the row holds 60 tokens, the ring 52..59
    assert not engine.model.layers[0].attention.kv_cache.window_valid(0, 40)
    warm = engine.generate(prompt, config)                  # cut to 40: repaired from 40 - (4 + 3) = 33
    assert warm.reused_prefix_tokens == 40
    engine.generate(LONG[:55], config)
    engine.generate(prompt[:41], GenerationConfig(max_new_tokens=1, speculate=0))   # (repairs, then one token)
    repaired = window_copies()
    engine.clear_prefix_cache()
    cold = engine.generate(prompt, config)
    engine.clear_prefix_cache()
    engine.generate(prompt[:41], GenerationConfig(max_new_tokens=1, speculate=0))
    for got, want in zip(repaired, window_copies(), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert warm.token_ids == cold.token_ids


def wide_ring(monkeypatch) -> None:
    """The small window and sink, with a ring of 24: a surplus of 16 slots past the window and a step's 4."""
    small_ring(monkeypatch)
    monkeypatch.setattr("models.kv_cache.EXACT_RING", 24)
    monkeypatch.setattr("models.kv_cache.EXACT_SLOTS", 28)


def test_out_of_memory_where_not_even_the_exact_tokens_fit(monkeypatch):
    """fp8's exact sink and window tokens are a cost a row, 264 MiB for CodeLlama-7B with the 512-slot ring, and
    at least 32 MiB (a cache of at most 64 tokens keeps 64 slots: `exact_ring_size`): with 20 MiB free past the
    headroom the message gives the memory free as measured and says what takes it (it said 0 tokens' worth plus the
    exact tokens, and to ask for a smaller context, which cannot help); with 100 MiB a 131-token fp8 cache (131
    slots) fits; where tokens fit it is as before."""
    from models.config import preset
    from models.kv_cache import check_kv_cache_fits
    monkeypatch.setattr("models.kv_cache.free_memory_bytes", lambda device: (1 << 30) + (20 << 20))
    config, cpu = preset("codellama-7b"), torch.device("cpu")
    with pytest.raises(OutOfMemoryError, match=r"only about 0\.02 GiB .* about 0 tokens would fit: its exact sink and "
                                               r"window tokens alone take 0\.03 GiB \(--kv-cache int8 keeps none\)"):
        check_kv_cache_fits(config, 1, 4096, torch.bfloat16, cpu, "CodeLlama-7B", "fp8")
    monkeypatch.setattr("models.kv_cache.free_memory_bytes", lambda device: (1 << 30) + (100 << 20))
    with pytest.raises(OutOfMemoryError, match=r"only about 0\.10 GiB .* about 131 tokens would fit: ask for a smaller"):
        check_kv_cache_fits(config, 1, 4096, torch.bfloat16, cpu, "CodeLlama-7B", "fp8")
    with pytest.raises(OutOfMemoryError, match=r"only about 0\.10 GiB .* about 200 tokens would fit: ask for a smaller"):
        check_kv_cache_fits(config, 1, 4096, torch.bfloat16, cpu, "CodeLlama-7B")


@pytest.mark.parametrize("quant", EXACT_WINDOW_CACHES)
def test_a_cut_within_the_rings_surplus_needs_no_repair(tiny_checkpoint, monkeypatch, quant):
    """An edit cutting the row back by more than a window and a step (4 + 4 here, 32 + 16 in the product) but at
    most ring - window (20; 480) keeps its window's exact copies: no repair prefill, the prefix kept, and the tokens
    a cold prefill of the same prompt gives. 21 back, the ring has lost the window: repaired."""
    wide_ring(monkeypatch)
    engine = load_model(tiny_checkpoint[0], device="cpu", max_context=64, kv_cache=quant)
    config = GenerationConfig(max_new_tokens=6, speculate=0)
    repairs = []
    prefill = engine.model.prefill
    monkeypatch.setattr(engine.model, "prefill", lambda *a, **kw: repairs.append(kw.get("repair")) or prefill(*a, **kw))
    for cut in (9, 14, 20, 21):
        held = LONG[:50] + engine.generate(LONG[:50], config).token_ids[:-1]     # positions 0..54 in the row
        written = int(cache_of(engine).exact_pos[0].max()) + 1                   # 55: every position written
        assert written == len(held) == 55
        prompt = held[:written - cut] + [3, 4, 5]
        repairs.clear()
        warm = engine.generate(prompt, config)
        assert warm.reused_prefix_tokens == written - cut
        assert repairs.count(True) == (cut > 20), (cut, repairs)
        engine.clear_prefix_cache()
        assert engine.generate(prompt, config).token_ids == warm.token_ids, cut
        engine.clear_prefix_cache()


def test_a_prefill_after_a_cut_within_the_surplus_computes_a_cold_prefills_logits(tiny_checkpoint, monkeypatch):
    """The model's own check (`exact_window_valid`, by recorded positions) against the ring's reach: a row of 60
    tokens keeps positions 36..59 exact, so a prefill from 60 - 5 .. 60 - 20 reads its window from the ring and
    its logits are a cold prefill's; from 60 - 21 it is refused (the window's first copy, 35, was overwritten)."""
    wide_ring(monkeypatch)
    engine = load_model(tiny_checkpoint[0], device="cpu", max_context=64, kv_cache="fp8")
    model = engine.model
    old = torch.tensor([LONG])                                                          # (1, 60)
    with torch.no_grad():
        for cut in (5, 12, 20):
            start = 60 - cut
            new = torch.cat((old[:, :start], torch.tensor([[5, 6, 7, 8] * 5])[:, :cut]), dim=1)   # an edit at start
            model.setup_caches(1, 64, quant="fp8")
            model.prefill(old)                                          # a prompt whose end is then edited
            warm = model.prefill(new[:, start:], start=start, all_logits=True)          # (1, cut, V)
            model.setup_caches(1, 64, quant="fp8")
            cold = model.prefill(new, all_logits=True)[:, start:]
            torch.testing.assert_close(warm, cold, atol=1e-5, rtol=1e-5)
        model.setup_caches(1, 64, quant="fp8")
        model.prefill(old)
        with pytest.raises(ValueError, match="exact window before position 39"):
            model.prefill(torch.tensor([[5, 6, 7]]), start=39)


def test_the_product_ring_keeps_480_tokens_of_cut_and_hands_a_prefill_64_slots():
    """With the product's sizes (a sink of 16, a ring of 512, a window of 32): after 1,100 tokens the ring holds
    588..1,099, so a cut to 1,100 - 480 keeps its window and 1,100 - 481 does not; a prefill from any start gets
    the sink and the 48 positions before it (`exact_before`: 64 slots, not 528), each slot's values its position's;
    the bytes counted per row are the 528 slots'."""
    from models.config import ModelConfig
    from models.kv_cache import EXACT_SLOTS, exact_slot
    cache = KVCache(1, 2, 1200, 16, torch.float32, "cpu", quant="fp8")
    k, v = torch.randn(1, 2, 1100, 16), torch.randn(1, 2, 1100, 16)
    for first in range(0, 1100, 275):                       # in chunks, as a long prompt is prefilled
        cache.write(0, first, k[:, :, first:first + 275], v[:, :, first:first + 275])
    held = cache.exact_pos[0]
    assert EXACT_SLOTS == 528 and sorted(held.tolist()) == [*range(16), *range(588, 1100)]
    assert torch.equal(exact_slot(held), torch.arange(528))             # every position in its own slot
    assert cache.window_valid(0, 1100 - 480) and cache.window_valid(0, 1100 - 17)
    assert not cache.window_valid(0, 1100 - 481)
    for start in (10, 40, 700, 1100):
        prior = cache.exact_before(0, start)
        assert prior.k.shape == (1, 2, 64, 16) and prior.pos.shape == (1, 64)
        got = sorted(p for p in prior.pos[0].tolist() if p >= 0)     # the sink, and what the ring holds of the 48
        assert got == [*range(min(16, start)), *range(max(16, 588, start - 48), start)], start
        for lane, p in enumerate(prior.pos[0].tolist()):
            if p >= 0:
                assert torch.equal(prior.k[0, :, lane], k[0, :, p]) and torch.equal(prior.v[0, :, lane], v[0, :, p])
    config = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, vocab_size=97)   # D = 16
    per_slot = 2 * 2 * 2 * 16 * 4 + 2 * 8             # K, V of 2 layers x 2 KV heads x D 16 in float32; positions
    assert exact_bytes_per_row(config, torch.float32, "fp8") == 528 * per_slot == 2 * cache.exact_bytes()


def test_a_prefill_refuses_a_row_without_its_exact_window(tiny_checkpoint, monkeypatch):
    small_ring(monkeypatch)
    engine = load_model(tiny_checkpoint[0], device="cpu", max_context=64, kv_cache="fp8")
    with torch.no_grad():
        engine.model.prefill(torch.tensor([LONG[:40]]))     # the ring holds 32..39: the window before 20 is gone
        with pytest.raises(ValueError, match="exact window before position 20"):
            engine.model.prefill(torch.tensor([LONG[20:30]]), start=20)
        engine.model.prefill(torch.tensor([LONG[36:40]]), start=36)     # its window, 32..35, is there


def test_prefill_padding_keeps_the_prompts_last_tokens_in_the_ring(tiny_checkpoint, monkeypatch):
    """A bucketed prefill pads the span past the prompt; the exact ring keeps the prompt's last tokens, not the
    padding's (which would push the first decode step's window out): the same tokens as an unpadded prefill."""
    small_ring(monkeypatch)
    engine = load_model(tiny_checkpoint[0], device="cpu", max_context=64, kv_cache="fp8")
    config = GenerationConfig(max_new_tokens=6, speculate=0)
    plain = engine.generate(LONG[:42], config).token_ids
    engine.clear_prefix_cache()
    engine.prefill_bucket = 32                               # the span 0..64: 22 padding tokens after the prompt
    assert engine.prefill_span(0, 42) == (0, 64)
    assert engine.generate(LONG[:42], config).token_ids == plain


@pytest.mark.parametrize("quant", EXACT_WINDOW_CACHES)
def test_the_fused_step_keeps_and_reads_the_exact_window_as_the_general_step_does(quant):
    """The fused one-token step (qkv_rope writes the 8-bit cache, `write_exact` the exact copies; kernels
    interpreted) against the general step (`KVCache.update`), both with flash attention, past the sink and window."""
    from models.config import ModelConfig
    from models.llama import build_random_model
    config = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, vocab_size=97)
    model = build_random_model(config, max_len=96)
    tokens = torch.randint(0, 97, (1, 66), generator=torch.Generator().manual_seed(0))
    runs = []
    with torch.no_grad():
        for fused in (False, True):
            model.setup_caches(1, 96, quant=quant)
            model.prefill(tokens[:, :62])
            model.fused_decode = fused
            steps = [Decode(torch.tensor([p]), torch.tensor([p + 1], dtype=torch.int32), "flash") for p in range(62, 66)]
            logits = [model.decode(tokens[:, p:p + 1], step) for p, step in zip(range(62, 66), steps)]
            caches = [layer.attention.kv_cache for layer in model.layers]
            exact = [(c.k_exact.clone(), c.v_exact.clone(), c.exact_pos.clone()) for c in caches]
            runs.append((torch.cat(logits), exact))
    (general, general_exact), (fused, fused_exact) = runs
    assert general.abs().max() > 0
    torch.testing.assert_close(fused, general, atol=1e-4, rtol=1e-4)
    for (k, v, pos), (k_fused, v_fused, pos_fused) in zip(general_exact, fused_exact, strict=True):
        assert torch.equal(pos, pos_fused) and (pos >= 0).sum() == 66      # (16 + a ring of 80: all 66)
        torch.testing.assert_close(k_fused, k, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v_fused, v, atol=1e-5, rtol=1e-5)


def test_only_e4m3_keeps_exact_sink_and_window_tokens():
    """fp8 keeps them (its 98% bar needs them); int8 meets the bar alone and keeps its prefill fast: no copies, no
    bytes counted for them."""
    from models.config import ModelConfig
    config = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, vocab_size=97)
    for quant, kept in (("fp8", True), ("int8", False), (None, False)):
        cache = KVCache(1, 2, 64, 16, torch.float32, "cpu", quant=quant)
        assert (cache.k_exact is not None) == kept and (cache.rows(0, 1).exact is not None) == kept
        assert (exact_bytes_per_row(config, torch.float32, quant) > 0) == kept


@pytest.mark.parametrize("n_kv_heads", [2, 4])       # grouped: a dequantized copy; MHA spans: the bytes
def test_prefill_through_the_triton_kernel_equals_the_masked_softmax(monkeypatch, n_kv_heads):
    """On a GPU an fp8 cache's prefill runs kernels/prefill_exact.py (here interpreted); elsewhere the masked
    softmax over the dequantized cache and the exact tokens side by side. Both give one model the same logits and
    exact copies: a cold prefill past the sink and window, a later span reading the first's copies back from the
    cache, and a repair of a window.

    The two paths' first layers agree to ~1e-7, so a later layer's K or V value lying that close to an e4m3 rounding
    boundary is stored as one code by one path and the neighbouring code by the other: 30 draws in 600 here, 3 of
    them moving the logits by more than 1e-4 (CI saw a fourth). From that position on the paths read different caches
    and the comparison is no longer of the kernel, so such a draw is replaced by a fresh one. With the codes alike no
    draw of the 600 differed by more than 1e-5."""
    import models.attention
    from models.config import ModelConfig
    from models.llama import build_random_model
    config = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, ffn_dim=128, vocab_size=97)
    kernel = models.attention._prefill_exact()

    def both_paths(seed):
        torch.manual_seed(seed)
        model = build_random_model(config, max_len=128)
        tokens = torch.randint(0, 97, (1, 100))
        calls, runs = [], []
        with torch.no_grad():
            for through_kernel in (False, True):
                monkeypatch.setattr(models.attention, "_prefill_kernel_applies", lambda q: through_kernel)
                monkeypatch.setattr(models.attention, "_prefill_exact",
                                    lambda: lambda *a, **kw: calls.append(kw) or kernel(*a, **kw))
                model.setup_caches(1, 128, quant="fp8")
                logits = [model.prefill(tokens[:, :70], all_logits=True),
                          model.prefill(tokens[:, 70:100], start=70, all_logits=True)]
                caches = [layer.attention.kv_cache for layer in model.layers]
                stored = torch.cat([torch.stack((c.k, c.v)).float().flatten() for c in caches])  # -0 == +0
                model.prefill(tokens[:, 40:100], start=40, repair=True)
                exact = [(c.k_exact.clone(), c.v_exact.clone()) for c in caches]
                runs.append((torch.cat(logits, dim=1), stored, exact))
        return calls, runs

    for _ in range(5):
        seed = torch.seed() % 2**31     # fresh inputs every run; a failure says which, to replay it
        calls, runs = both_paths(seed)
        (masked, masked_codes, masked_exact), (triton, triton_codes, triton_exact) = runs
        if torch.equal(masked_codes, triton_codes):
            break
    else:
        raise AssertionError("five draws in a row stored different fp8 codes on the two paths: not a rounding tie")
    assert len(calls) == 3 * config.n_layers       # the kernel ran every layer of the second pass's three prefills
    assert all(kw["k_scale"] is not None for kw in calls)     # on the cache's bytes, no dequantized copy
    assert masked.abs().max() > 0
    torch.testing.assert_close(triton, masked, atol=1e-4, rtol=1e-4, msg=lambda m: f"{m}\nseed {seed}")
    for (k, v), (k_triton, v_triton) in zip(masked_exact, triton_exact, strict=True):
        torch.testing.assert_close(k_triton, k, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v_triton, v, atol=1e-5, rtol=1e-5)


def test_edits_of_a_long_prompt_reuse_the_product_rings_window_as_a_cold_prefill_would(tmp_path, llama_tokenizer,
                                                                                       monkeypatch):
    """The engine end to end with the product's ring (a sink of 16, a window of 32, 512 slots), not a patched one: a
    prompt of 1,000 tokens and its answer, then edits that cut it back by 10, 100, 480 tokens (the window's copies
    still in the ring: the prefix kept, no repair) and by 481, 600 (repaired from `repair_span` before the cut), each
    answering what a cold engine answers, to its logprobs; then the edits one after another, speculation on."""
    from tiny_models import save_tiny_llama
    save_tiny_llama(tmp_path, llama_tokenizer, n_kv_heads=2, max_position_embeddings=1200)
    warm, cold = (load_model(str(tmp_path), device="cpu", max_context=1200, kv_cache="fp8") for _ in range(2))
    repairs = []
    prefill = warm.model.prefill
    monkeypatch.setattr(warm.model, "prefill", lambda *a, **kw: repairs.append(kw.get("repair")) or prefill(*a, **kw))
    base = torch.randint(5, 200, (1000,), generator=torch.Generator().manual_seed(0)).tolist()
    config = GenerationConfig(max_new_tokens=5, speculate=0, logprobs=1)

    def answers_as_cold(prompt, result):
        cold.clear_prefix_cache()
        want = cold.generate(prompt, GenerationConfig(max_new_tokens=5, speculate=0, logprobs=1))
        assert result.token_ids == want.token_ids
        for got, expected in zip(result.logprobs, want.logprobs, strict=True):
            assert abs(got.logprob - expected.logprob) < 1e-4

    for cut in (10, 100, 480, 481, 600):
        warm.clear_prefix_cache()
        held = base + warm.generate(base, config).token_ids[:-1]             # every token the row holds
        written = int(cache_of(warm).exact_pos[0].max()) + 1
        assert written == len(held)
        prompt = held[:written - cut] + [3, 4, 5]
        repairs.clear()
        result = warm.generate(prompt, config)
        assert result.reused_prefix_tokens == written - cut
        assert repairs.count(True) == (cut > 480), (cut, repairs)
        answers_as_cold(prompt, result)
    held = base
    for cut in (10, 100, 490, 30, 2):                                        # one edit after another
        prompt = held[:len(held) - cut] + [7, 8, 9]
        result = warm.generate(prompt, GenerationConfig(max_new_tokens=5, speculate=3, logprobs=1))
        answers_as_cold(prompt, result)
        held = prompt + result.token_ids


class HostReads:
    """Counts what models/kv_cache.py (where the exact-window check lives) reads of tensors to the host: `.cpu()`,
    `.tolist()`, `.item()`, bool(), int(), float(), each a host sync on a GPU, and the bytes of the tensors read."""

    METHODS = ("cpu", "tolist", "item", "__bool__", "__int__", "__float__")

    def __init__(self, monkeypatch):
        import sys
        self.reads, self.nbytes = 0, 0
        for name in self.METHODS:
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _original=original, **kwargs):
                if sys._getframe(1).f_code.co_filename.endswith(os.path.join("models", "kv_cache.py")):
                    self.reads += 1
                    self.nbytes += tensor.numel() * tensor.element_size()
                return _original(tensor, *args, **kwargs)
            monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.mark.parametrize("ring", ["wide", "small"])
def test_a_reused_prefix_checks_its_exact_window_once_with_one_small_read(tiny_checkpoint, monkeypatch, ring):
    """A request reusing a cached prefix of an fp8 cache checks once that the row holds the exact sink and window
    before its start, in one host read of a few bytes: the engine (`_with_exact_window`) checked, then the
    prefill's guard checked again, each reading every layer's slot positions to the host (2 x 2 layers x 28 slots
    x 8 bytes here, 2 x 135 KB for CodeLlama-7B), and a repair added two more checks. With a ring of 24 the cut
    (5 tokens, of a row of 35) keeps the window; with a ring of 8 it is repaired. The guard still refuses a
    direct prefill without its window (test_a_prefill_refuses_a_row_without_its_exact_window)."""
    (wide_ring if ring == "wide" else small_ring)(monkeypatch)
    engine = load_model(tiny_checkpoint[0], device="cpu", max_context=64, kv_cache="fp8")
    config = GenerationConfig(max_new_tokens=6, speculate=0)
    repairs = []
    prefill = engine.model.prefill
    monkeypatch.setattr(engine.model, "prefill", lambda *a, **kw: repairs.append(kw.get("repair")) or prefill(*a, **kw))
    engine.generate(LONG[:30], config)                      # the row holds 35 tokens
    repairs.clear()
    with monkeypatch.context() as counting:
        host = HostReads(counting)
        warm = engine.generate(LONG[:45], config)           # 30 of them reused
    assert warm.reused_prefix_tokens == 30
    assert repairs == ([None] if ring == "wide" else [True, None])
    assert (host.reads, host.nbytes) == (1, 2)              # (sink held, window held): two bools
    engine.clear_prefix_cache()
    assert engine.generate(LONG[:45], config).token_ids == warm.token_ids


def test_a_cache_shorter_than_the_sink_and_ring_allocates_only_its_own_slots():
    """The ring keeps 512 tokens' copies for edits cutting a long prompt back; a cache of fewer tokens than the sink
    and ring never laps it, so its ring is max_len - sink (at least a window and a step, 48): 256 slots for 256
    tokens, not 528; 64 for 40. Each position then keeps its own slot: a prompt filling the cache leaves every
    position's copy, so a cut anywhere keeps its window. The bytes counted for a row (`exact_bytes_per_row`, which
    the out-of-memory check adds) are those allocated."""
    from models.config import ModelConfig
    config = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, vocab_size=97)   # D = 16
    per_slot = 2 * 2 * 2 * 16 * 4 + 2 * 8             # K, V of 2 layers x 2 KV heads x D 16 in float32; positions
    for max_len, slots in ((40, 64), (64, 64), (256, 256), (527, 527), (528, 528), (1200, 528)):
        cache = KVCache(1, 2, max_len, 16, torch.float32, "cpu", quant="fp8")
        assert cache.k_exact.shape == cache.v_exact.shape == (1, 2, slots, 16), max_len
        assert cache.exact_pos.shape == (1, slots)
        assert exact_bytes_per_row(config, torch.float32, "fp8", max_len) == slots * per_slot == 2 * cache.exact_bytes()
    cache = KVCache(1, 2, 256, 16, torch.float32, "cpu", quant="fp8")
    k, v = torch.randn(1, 2, 256, 16), torch.randn(1, 2, 256, 16)
    cache.write(0, 0, k[:, :, :200], v[:, :, :200])
    for p in range(200, 256, 8):                        # decode steps of 8 tokens (1 + drafts)
        cache.update(torch.tensor([p]), k[:, :, p:p + 8], v[:, :, p:p + 8])
    assert torch.equal(cache.exact_pos[0], torch.arange(256))
    assert torch.equal(cache.k_exact, k) and torch.equal(cache.v_exact, v)
    assert all(cache.window_valid(0, length) for length in (17, 60, 200, 255, 256))


def test_out_of_memory_counts_the_exact_slots_a_short_cache_allocates(monkeypatch):
    """A 256-token fp8 cache of CodeLlama-7B's shape allocates 256 exact slots (128 MiB in bf16), not 528 (264 MiB):
    where exactly its bytes are free past the headroom it fits, a byte less and 255 tokens would fit."""
    from models.config import preset
    from models.kv_cache import capacity_tokens, check_kv_cache_fits, kv_cache_bytes_per_token
    config, cpu = preset("codellama-7b"), torch.device("cpu")
    per_token = kv_cache_bytes_per_token(config, torch.bfloat16, "fp8")            # 264 KiB
    per_slot = config.kv_bytes_per_token(2) + config.n_layers * 8                    # 512 KiB + the positions
    assert exact_bytes_per_row(config, torch.bfloat16, "fp8", 256) == 256 * per_slot
    needed = 256 * per_token + 256 * per_slot
    monkeypatch.setattr("models.kv_cache.free_memory_bytes", lambda device: (1 << 30) + needed)
    check_kv_cache_fits(config, 1, 256, torch.bfloat16, cpu, "CodeLlama-7B", "fp8")
    assert capacity_tokens(config, 1, torch.bfloat16, cpu, "fp8") == 256
    monkeypatch.setattr("models.kv_cache.free_memory_bytes", lambda device: (1 << 30) + needed - 1)
    with pytest.raises(OutOfMemoryError, match=r"fp8 KV cache of 256 tokens x batch 1 needs 0\.19 GiB .* about 255 "
                                               r"tokens would fit: ask for a smaller context"):
        check_kv_cache_fits(config, 1, 256, torch.bfloat16, cpu, "CodeLlama-7B", "fp8")


@pytest.mark.parametrize("fused", [False, True])
def test_a_ring_sized_to_a_short_cache_computes_what_the_full_ring_does(monkeypatch, fused):
    """A 100-token fp8 cache's ring of 84 slots against the product's 512 on the same model: a cold prefill, a
    prefill after an edit (reading its window from the ring), and decode steps through the flash kernels (the exact
    partial's slots, N - sink; with `fused`, qkv_rope's exact store with the cache's ring; interpreted) give the
    same logits and the same exact copies of every position."""
    import models.kv_cache
    from models.config import ModelConfig
    from models.llama import build_random_model
    config = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, vocab_size=97)
    model = build_random_model(config, max_len=100)
    model.fused_decode = fused
    tokens = torch.randint(0, 97, (1, 100), generator=torch.Generator().manual_seed(1))
    sized = models.kv_cache.exact_ring_size
    runs = []
    with torch.no_grad():
        for ring in (sized, lambda max_len: 512):
            monkeypatch.setattr(models.kv_cache, "exact_ring_size", ring)
            model.setup_caches(1, 100, quant="fp8")
            first = model.prefill(tokens[:, :70], all_logits=True)                       # (1, 70, V)
            edited = model.prefill(tokens[:, 60:96], start=60, all_logits=True)          # (1, 36, V)
            steps = [model.decode(tokens[:, p:p + 1], Decode(torch.tensor([p]), torch.tensor([p + 1], dtype=torch.int32),
                                                              "flash")) for p in range(96, 100)]
            caches = [layer.attention.kv_cache for layer in model.layers]
            runs.append((torch.cat((first[0], edited[0], torch.cat(steps))),
                         [(c.exact_pos[0], c.k_exact[0], c.v_exact[0]) for c in caches]))
    (short, short_exact), (full, full_exact) = runs
    assert [pos.shape[0] for pos, _, _ in short_exact] == [100, 100] and full_exact[0][0].shape[0] == 528
    torch.testing.assert_close(short, full, atol=1e-5, rtol=1e-5)
    for (pos, k, v), (pos_full, k_full, v_full) in zip(short_exact, full_exact, strict=True):
        assert torch.equal(pos, torch.arange(100)) and torch.equal(pos_full[:100], pos)
        assert torch.equal(k, k_full[:, :100]) and torch.equal(v, v_full[:, :100])

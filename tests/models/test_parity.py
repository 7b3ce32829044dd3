"""Parity with transformers' LlamaForCausalLM on tiny random checkpoints loaded through our HF loader.

Each case covers one feature: MHA, GQA, tied embeddings, and each rope scaling kind. Logits must agree
to float32 precision in prefill and at every decode step, for every attention backend (flash runs in
the Triton interpreter), and greedy generation must pick the same tokens as transformers' generate.
"""

import pytest
import torch

from models import GenerationConfig, load_model
from models.llama import Decode

from tiny_models import save_tiny_llama

CASES = {
    # max_position_embeddings 32 < the 40-token prompt, loaded past its training length (as --context-tokens may):
    # plain RoPE extrapolates there exactly as transformers computes it.
    "mha-past-training": dict(n_kv_heads=4, max_position_embeddings=32),
    "gqa-tied-linear": dict(n_kv_heads=2, tie=True, rope_scaling={"rope_type": "linear", "factor": 2.0}),
    # max_position_embeddings 32 < the 40-token prompt: dynamic NTK is active in prefill and decode.
    "gqa-dynamic": dict(n_kv_heads=2, max_position_embeddings=32, rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
    "mqa-llama3": dict(n_kv_heads=1, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
}
BACKENDS = ["sdpa", "eager", "flash"]
PROMPT_LEN, DECODE_STEPS, GREEDY_TOKENS = 40, 6, 8
ATOL = 2e-4   # float32: logits are O(10), differences are summation order


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory, llama_tokenizer):
    directory = tmp_path_factory.mktemp(request.param)
    save_tiny_llama(directory, llama_tokenizer, **CASES[request.param])
    engine = load_model(directory, device="cpu", max_context=64, past_training=True)
    ids = torch.randint(3, len(llama_tokenizer), (1, PROMPT_LEN + DECODE_STEPS), generator=torch.Generator().manual_seed(1))
    return directory, engine, ids


def reference(directory):
    """A fresh transformers model per test: its dynamic rope keeps state from earlier calls."""
    from transformers import LlamaForCausalLM
    return LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


def test_prefill_logits_match_transformers(case):
    directory, engine, ids = case
    hf = reference(directory)
    with torch.no_grad():
        expected = hf(ids).logits
        got = engine.model.prefill(ids, all_logits=True)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-4)
    assert expected.abs().max() > 1.0   # not a degenerate all-zero comparison


@pytest.mark.parametrize("backend, fused", [(b, False) for b in BACKENDS] + [("eager", True), ("flash", True)])
def test_decode_logits_match_transformers_step_by_step(case, backend, fused, monkeypatch):
    """fused: the one-token step on the fused dense kernels (models/fused_decode.py, the GPU's hot path), here
    in the Triton interpreter: its norms, RoPE tables, cache write and SwiGLU must match transformers too."""
    directory, engine, ids = case
    hf = reference(directory)
    model = engine.model
    monkeypatch.setattr(model, "fused_decode", fused)
    with torch.no_grad():
        out = hf(ids[:, :PROMPT_LEN], use_cache=True)
        model.prefill(ids[:, :PROMPT_LEN])
        for pos in range(PROMPT_LEN, PROMPT_LEN + DECODE_STEPS):
            out = hf(ids[:, pos:pos + 1], cache=out.cache, use_cache=True)
            input_pos = torch.tensor([pos])
            # The whole 64-slot capacity, masked by length: what a captured CUDA graph reads.
            logits = model.decode(ids[:, pos:pos + 1], Decode(input_pos, (input_pos + 1).int(), backend))
            torch.testing.assert_close(logits, out.logits[:, -1], atol=ATOL, rtol=1e-4)


def test_the_fused_step_quantizes_an_8bit_cache_as_the_general_step_does(case, monkeypatch):
    """The fused one-token step writes an 8-bit cache from qkv_rope itself (no append kernel): its logits and
    cache bytes must be the general step's over the same int8 cache, within the rounding of k and v (float32
    here: the two paths sum in different orders, so a value on a rounding boundary may land one step apart).
    int8 only: the interpreter's e4m3 conversion is not PyTorch's (tests/kernels/kernel_inputs.py says how);
    the GPU's e4m3 bytes are compared exactly by models.bench's check."""
    kv_cache = "int8"
    _, engine, ids = case
    model = engine.model
    runs = {}
    try:
        engine.set_kv_cache(kv_cache)
        for fused in (True, False):
            monkeypatch.setattr(model, "fused_decode", fused)
            with torch.no_grad():
                model.prefill(ids[:, :PROMPT_LEN])
                logits = []
                for pos in range(PROMPT_LEN, PROMPT_LEN + DECODE_STEPS):
                    input_pos = torch.tensor([pos])
                    logits.append(model.decode(ids[:, pos:pos + 1], Decode(input_pos, (input_pos + 1).int(), "flash")))
            written = slice(PROMPT_LEN, PROMPT_LEN + DECODE_STEPS)
            caches = [layer.attention.kv_cache for layer in model.layers]
            runs[fused] = (torch.stack(logits), [(c.k.view(torch.uint8)[0, :, written].int(),
                                                   c.k_scale[0, :, written].clone()) for c in caches])
    finally:
        engine.set_kv_cache(None)
    (fused_logits, fused_caches), (general_logits, general_caches) = runs[True], runs[False]
    torch.testing.assert_close(fused_logits, general_logits, atol=5 * ATOL, rtol=1e-3)
    for (k_fused, scale_fused), (k_general, scale_general) in zip(fused_caches, general_caches):
        torch.testing.assert_close(scale_fused, scale_general, atol=0, rtol=1e-5)
        assert (k_fused == k_general).float().mean() > 0.97 and scale_fused.min() > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_multi_token_decode_step_matches_transformers(case, backend):
    """Speculative verification: T tokens in one decode step, causal among themselves, give what T plain
    decode steps give (transformers fed one token at a time; with dynamic rope a position's frequencies
    depend on its own length, as in plain decoding)."""
    directory, engine, ids = case
    hf = reference(directory)
    model, T = engine.model, DECODE_STEPS
    with torch.no_grad():
        out = hf(ids[:, :PROMPT_LEN], use_cache=True)
        expected = []
        for pos in range(PROMPT_LEN, PROMPT_LEN + T):
            out = hf(ids[:, pos:pos + 1], cache=out.cache, use_cache=True)
            expected.append(out.logits[:, -1])
        model.prefill(ids[:, :PROMPT_LEN])
        input_pos = torch.tensor([PROMPT_LEN])
        logits = model.decode(ids[:, PROMPT_LEN:], Decode(input_pos, (input_pos + T).int(), backend))
    torch.testing.assert_close(logits, torch.stack(expected, dim=1), atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_tokens_match_transformers_generate(case, backend):
    directory, engine, ids = case
    hf = reference(directory)
    prompt = ids[:, :PROMPT_LEN]
    with torch.no_grad():
        expected = hf.generate(prompt, max_new_tokens=GREEDY_TOKENS, do_sample=False)[0, PROMPT_LEN:].tolist()
    engine.set_attention(backend)
    result = engine.generate(prompt[0].tolist(), GenerationConfig(max_new_tokens=GREEDY_TOKENS))
    assert result.token_ids == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_batch_of_different_lengths_gives_each_prompt_its_own_tokens(tiny_checkpoint, backend):
    directory, _ = tiny_checkpoint
    engine = load_model(directory, device="cpu", attention=backend, max_context=48)
    prompts = [list(range(10, 30)), list(range(40, 47)), list(range(100, 133))]
    config = GenerationConfig(max_new_tokens=6)
    batch = engine.generate_batch(prompts, config)
    singles = [engine.generate(p, config) for p in prompts]
    assert [r.token_ids for r in batch] == [r.token_ids for r in singles]
    assert [r.prompt_tokens for r in batch] == [20, 7, 33]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kv_cache", [None, "int8"])
def test_nan_past_a_rows_length_does_not_reach_its_tokens(tiny_checkpoint, backend, kv_cache):
    """The shorter rows of a batch attend over slots past their lengths, masked; NaN stored there (what another
    request's overflow could leave; in an 8-bit cache, its scales) must stay out of their tokens, as the kernels
    never read those slots."""
    directory, _ = tiny_checkpoint
    engine = load_model(directory, device="cpu", attention=backend, max_context=48, kv_cache=kv_cache)
    prompts = [list(range(10, 30)), list(range(40, 47)), list(range(100, 133))]
    config = GenerationConfig(max_new_tokens=6)
    singles = [engine.generate(p, config).token_ids for p in prompts]
    engine._ensure_rows(len(prompts))
    for layer in engine.model.layers:
        cache = layer.attention.kv_cache
        for poisoned in (cache.k_scale, cache.v_scale) if kv_cache else (cache.k, cache.v):
            poisoned.fill_(float("nan"))
    assert [r.token_ids for r in engine.generate_batch(prompts, config)] == singles


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_nan_past_a_lone_sequences_length_does_not_reach_its_tokens(tiny_checkpoint, backend, monkeypatch):
    """One sequence's steps, plain and verifying drafts, where every slot past its length holds NaN (a shorter prompt
    in a cache a longer one filled, with what an overflow left there): SDPA adds its mask to a NaN score and both
    weigh a NaN value by 0, so each step must read no slot past the row's length."""
    from models.speculative import PromptLookup
    monkeypatch.setattr(PromptLookup, "draft", lambda self, k: [7] * k)    # every step verifies k drafts
    directory, _ = tiny_checkpoint
    engine = load_model(directory, device="cpu", attention=backend, max_context=48)
    prompt = list(range(10, 30))
    for speculate in (0, 4):
        config = GenerationConfig(max_new_tokens=8, speculate=speculate)
        engine.clear_prefix_cache()
        expected = engine.generate(prompt, config)
        for layer in engine.model.layers:
            layer.attention.kv_cache.k.fill_(float("nan"))
            layer.attention.kv_cache.v.fill_(float("nan"))
        engine.clear_prefix_cache()
        poisoned = engine.generate(prompt, config)
        assert poisoned.token_ids == expected.token_ids
        assert poisoned.timings.drafted_tokens == expected.timings.drafted_tokens > 0 or not speculate


def test_the_cuda_loop_with_lookahead_matches_on_the_cpu(tiny_checkpoint):
    """On CUDA the loop queues step t+1 before reading token t; run that schedule here and compare."""
    directory, _ = tiny_checkpoint
    plain = load_model(directory, device="cpu", max_context=48)
    ahead = load_model(directory, device="cpu", max_context=48)
    ahead._lookahead = True
    prompt, config = list(range(10, 30)), GenerationConfig(max_new_tokens=8, speculate=0)   # the plain loop
    stop_id = plain.generate(prompt, config).token_ids[3]
    for cfg in (config, GenerationConfig(max_new_tokens=8, stop_token_ids=(stop_id,), speculate=0)):
        expected, got = plain.generate(prompt, cfg), ahead.generate(prompt, cfg)
        assert got.token_ids == expected.token_ids and got.finish_reason == expected.finish_reason
        follow_up = prompt + got.token_ids + [40, 41]
        # A step queued before the stop was seen also fed the last token: lookahead then caches one more.
        fed_last = got.finish_reason == "stop"
        assert ahead.generate(follow_up, config).reused_prefix_tokens == len(prompt) + len(got.token_ids) - 1 + fed_last
        assert plain.generate(follow_up, config).reused_prefix_tokens == len(prompt) + len(got.token_ids) - 1
        assert ahead.generate(follow_up, config).token_ids == plain.generate(follow_up, config).token_ids

"""The generation loop on the embedded SmolLM2: prefix reuse, cancellation, stops, sampling, timings."""

import dataclasses

import pytest
import torch

from models import GenerationConfig, ModelError, load_model

CONTEXT = '''import math


def area(radius):
    """Area of a circle."""
    return math.pi * radius ** 2


def circumference(radius):
    """Circumference of a circle."""
    return 2 * math.pi * radius


'''
GREEDY = GenerationConfig(max_new_tokens=16)


def encode(engine, text):
    return engine.tokenizer.encode(text)


@pytest.fixture(scope="module")
def full_run(smollm_engine):
    """A cold greedy run and its streamed deltas, the reference for the tests below."""
    prompt = encode(smollm_engine, CONTEXT + "def diameter(radius):\n    \"\"\"")
    smollm_engine.clear_prefix_cache()
    deltas = []
    result = smollm_engine.generate(prompt, GREEDY, on_text=deltas.append)
    assert result.reused_prefix_tokens == 0 and len(result.token_ids) == 16
    return prompt, result, deltas


def test_streamed_deltas_add_up_to_the_text(full_run):
    _, result, deltas = full_run
    assert "".join(deltas) == result.text
    assert result.text == full_run[1].text and "return" in result.text
    assert result.finish_reason == "length"


def test_prefix_reuse_prefills_only_the_new_tokens_and_changes_nothing(smollm_engine, full_run):
    prompt, cold, _ = full_run
    shared = encode(smollm_engine, CONTEXT)
    other = encode(smollm_engine, CONTEXT + "def volume(radius):\n")
    first = smollm_engine.generate(other, GenerationConfig(max_new_tokens=4))
    warm = smollm_engine.generate(prompt, GREEDY)
    assert warm.reused_prefix_tokens >= len(shared) - 1
    # Exactly the tokens both share: one more reuses K/V of a token the prompt does not have (the greedy tokens
    # above stay the same for that one wrong key, so only the count shows it).
    cached = other + first.token_ids[:-1]
    common = next(i for i, (a, b) in enumerate(zip(cached, prompt)) if a != b)
    assert warm.reused_prefix_tokens == smollm_engine.prefill_span(common, len(prompt))[0]
    assert warm.token_ids == cold.token_ids and warm.text == cold.text


@pytest.mark.parametrize("typed", [1, 2, 4, 5])
def test_a_few_typed_tokens_go_through_the_decode_step_and_change_nothing(smollm_engine, full_run, typed):
    """An editor's next keystroke: the cache holds all but the last `typed` tokens, which the one-token decode
    step feeds (on a CPU one of them; more take the prefill) with the cold run's tokens as result."""
    prompt, cold, _ = full_run
    assert smollm_engine.tail_plan() == ((1, 1),)
    smollm_engine.clear_prefix_cache()
    smollm_engine.generate(prompt[:-typed], GenerationConfig(max_new_tokens=1))
    warm = smollm_engine.generate(prompt, GREEDY)
    assert warm.reused_prefix_tokens == len(prompt) - typed
    assert warm.token_ids == cold.token_ids and warm.text == cold.text


@pytest.mark.parametrize("plan, typed", [((3, 9), 1), ((3, 9), 8), ((3, 9), 9), ((3, 9), 10), ((3, 9), 17), ((3, 9), 27),
                                         ((2, 24), 40)])
def test_a_tail_goes_through_graph_wide_steps_as_graphs_feed_it(smollm_engine, full_run, plan, typed, monkeypatch):
    """With graphs the tail goes through steps of a captured width (a verification's, here 9 tokens, up to 3
    replays; or wider, as the GPU's WIDE_TAIL, here 24; forced on the CPU's eager step; one token alone): the last
    step padded past the prompt, its logits the last real token's, the pads' K/V overwritten by the tokens that
    follow. The cold run's tokens, from the right row."""
    prompt, cold, _ = full_run
    assert len(prompt) > typed
    monkeypatch.setattr(smollm_engine, "tail_override", plan)
    width = plan[1]
    fed = []
    real_step = smollm_engine._decode_step
    monkeypatch.setattr(smollm_engine, "_decode_step", lambda batch, width=1: fed.append(width) or real_step(batch, width))
    smollm_engine.clear_prefix_cache()
    smollm_engine.generate(prompt[:-typed], GenerationConfig(max_new_tokens=1))
    fed.clear()
    warm = smollm_engine.generate(prompt, dataclasses.replace(GREEDY, speculate=0))
    assert warm.reused_prefix_tokens == len(prompt) - typed
    # the tail's steps (a lone token alone: a padded step costs more), then the decode loop's one-token step
    assert fed == ([width] * -(-typed // width) if typed > 1 else [1]) + [1]
    assert warm.token_ids == cold.token_ids and warm.text == cold.text


def test_a_tail_past_the_replays_takes_the_prefill(smollm_engine, full_run, monkeypatch):
    prompt, cold, _ = full_run
    monkeypatch.setattr(smollm_engine, "tail_override", (3, 9))
    smollm_engine.clear_prefix_cache()
    smollm_engine.generate(prompt[:-28], GenerationConfig(max_new_tokens=1))
    monkeypatch.setattr(smollm_engine, "_feed_tail", lambda *a: pytest.fail("28 tokens fed as a tail"))
    warm = smollm_engine.generate(prompt, GREEDY)
    assert warm.token_ids == cold.token_ids


def test_a_tail_at_the_cache_end_is_not_padded_past_it(monkeypatch):
    """Where the padded last step would write past the cache, the tail's rest goes one token a step."""
    engine = load_model(max_context=64)
    prompt = encode(engine, CONTEXT * 2)[:62]
    cold = engine.generate(prompt, GenerationConfig(max_new_tokens=2))
    engine.clear_prefix_cache()
    engine.generate(prompt[:50], GenerationConfig(max_new_tokens=1))
    monkeypatch.setattr(engine, "tail_override", (2, 9))
    fed = []
    real_step = engine._decode_step
    monkeypatch.setattr(engine, "_decode_step", lambda batch, width=1: fed.append(width) or real_step(batch, width))
    warm = engine.generate(prompt, GenerationConfig(max_new_tokens=2, speculate=0))
    assert warm.reused_prefix_tokens == 50 and fed == [9, 1, 1, 1, 1]     # 50-58, then 59, 60, 61 (59 + 9 > 64); decoding
    assert warm.token_ids == cold.token_ids


def test_a_wide_tail_that_would_pad_past_the_cache_takes_the_prefill(monkeypatch):
    """Near the cache's end a verification-wide tail goes on one token a step; a wide one would take dozens of
    them, so the prefill feeds it."""
    engine = load_model(max_context=64)
    prompt = encode(engine, CONTEXT * 2)[:60]
    cold = engine.generate(prompt, GenerationConfig(max_new_tokens=2))
    engine.clear_prefix_cache()
    engine.generate(prompt[:20], GenerationConfig(max_new_tokens=1))
    monkeypatch.setattr(engine, "tail_override", (2, 24))      # 20 + 2 x 24 > 64
    monkeypatch.setattr(engine, "_feed_tail", lambda *a: pytest.fail("fed as a tail past the cache's end"))
    warm = engine.generate(prompt, GenerationConfig(max_new_tokens=2, speculate=0))
    assert warm.token_ids == cold.token_ids


def test_the_wide_tail_is_offered_once_its_graph_is_captured(smollm_engine, monkeypatch):
    """`tail_plan` on a GPU (graphs on, flash): the verification-wide replays once their step is captured, and the
    wide step only once `warm_wide_tail` captured it (a first capture mid-request would cost seconds), never over
    an 8-bit cache (its exact ring takes at most 16 tokens a step)."""
    from models.engine import GRAPHED_TAIL, WIDE_TAIL, WIDE_TAIL_REPLAYS
    monkeypatch.setattr(smollm_engine, "_graphs_enabled", True)
    monkeypatch.setattr(smollm_engine, "attention", "flash")
    monkeypatch.setattr(smollm_engine, "_steps", {})
    narrow = (GRAPHED_TAIL, 1 + smollm_engine.speculate)
    captured = type("Step", (), {"graphs": {None: "graph"}})()
    # Not yet captured (a process that warmed nothing: the REPL, a benchmark): one token a step, which the first
    # answer captured, not a first capture inside the request
    assert smollm_engine.tail_plan() == ((GRAPHED_TAIL, 1),)
    smollm_engine._steps[1, narrow[1]] = type("Step", (), {"graphs": {}})()     # built, its graph not captured
    assert smollm_engine.tail_plan() == ((GRAPHED_TAIL, 1),)
    smollm_engine._steps[1, narrow[1]] = captured       # `warm_speculation`, or an answer's speculation
    assert smollm_engine.tail_plan() == (narrow,)
    smollm_engine._steps[1, WIDE_TAIL] = captured
    width = narrow[1]                      # then one narrow replay at most: two cost more than one wide one
    assert smollm_engine.tail_plan() == ((1, width), (WIDE_TAIL_REPLAYS, WIDE_TAIL))
    assert smollm_engine._tail_width(100, 101) == 1 and smollm_engine._tail_width(100, 100 + width) == width
    assert smollm_engine._tail_width(100, 101 + width) == WIDE_TAIL
    assert smollm_engine._tail_width(100, 101 + WIDE_TAIL_REPLAYS * WIDE_TAIL) is None
    monkeypatch.setattr(smollm_engine, "_quant", object())     # an 8-bit cache
    assert smollm_engine.tail_plan() == (narrow,)


def test_the_default_speculation_waits_for_its_step_to_be_captured(smollm_engine, monkeypatch):
    """With graphs (a GPU), the default depth speculates only once the verifying step is captured: its first capture
    inside an answer (2.2-7.1 s on an H200) cost a one-shot run more than speculation saves it. A depth asked for
    (`--speculate`, a benchmark's) is taken at once; a CPU has nothing to capture."""
    config = GenerationConfig()
    k = smollm_engine.speculate
    assert k and smollm_engine._speculation_depth(config, 1) == k            # a CPU
    monkeypatch.setattr(smollm_engine, "_graphs_enabled", True)
    monkeypatch.setattr(smollm_engine, "_steps", {})
    assert smollm_engine._speculation_depth(config, 1) == 0
    assert smollm_engine._speculation_depth(dataclasses.replace(config, speculate=3), 1) == 3
    smollm_engine._steps[1, 1 + k] = type("Step", (), {"graphs": {None: "graph"}})()    # `warm_speculation`
    assert smollm_engine._speculation_depth(config, 1) == k


@pytest.mark.parametrize("speculate, lookahead", [(None, False), (0, False), (0, True)],
                         ids=["speculative", "plain", "plain-lookahead"])
def test_the_cache_also_holds_the_generated_tokens(smollm_engine, full_run, speculate, lookahead, monkeypatch):
    """Each decode loop's account of what the cache holds (the plain one on a CPU, and as a GPU runs it, with the
    next step queued before a token is read; the speculative one): one token too many would be reused next time
    with K/V never written for it."""
    prompt, cold, _ = full_run
    monkeypatch.setattr(smollm_engine, "_lookahead", lookahead)
    smollm_engine.generate(prompt, dataclasses.replace(GREEDY, speculate=speculate))
    follow_up = prompt + cold.token_ids + encode(smollm_engine, "\n\nprint(diameter(2))\n")
    result = smollm_engine.generate(follow_up, GenerationConfig(max_new_tokens=2))
    # Every token fed back into the model is cached: the prompt and all generated tokens but the last.
    assert result.reused_prefix_tokens == len(prompt) + len(cold.token_ids) - 1


def test_cancellation_returns_the_partial_text_and_keeps_the_cache_consistent(smollm_engine, full_run):
    prompt, cold, _ = full_run
    deltas = []
    result = smollm_engine.generate(prompt, GREEDY, on_text=deltas.append, should_stop=lambda: len(deltas) >= 3)
    assert result.finish_reason == "cancelled"
    assert result.token_ids == cold.token_ids[:len(result.token_ids)] and 3 <= len(result.token_ids) < 16
    assert "".join(deltas) == result.text and cold.text.startswith(result.text) and result.text
    again = smollm_engine.generate(prompt, GREEDY)
    assert again.token_ids == cold.token_ids


def test_a_cancel_during_prefill_ends_it_between_layers_and_keeps_the_cached_prefix(smollm_engine, full_run):
    """Ctrl-C while a long prompt prefills (seconds on a CPU) ends the prefill at the next layer, before any token;
    the prefix the cache held before stays reusable, and the next request gives the cold run's tokens."""
    prompt, cold, _ = full_run
    shared = encode(smollm_engine, CONTEXT)
    smollm_engine.clear_prefix_cache()
    smollm_engine.generate(shared, GenerationConfig(max_new_tokens=1))
    polls, deltas = [], []

    def stop_at_the_third_layer():
        polls.append(len(polls))
        return len(polls) == 3

    result = smollm_engine.generate(prompt, GREEDY, on_text=deltas.append, should_stop=stop_at_the_third_layer)
    assert result.finish_reason == "cancelled" and result.token_ids == [] and result.text == "" and not deltas
    assert len(polls) == 3 < smollm_engine.model.config.n_layers     # asked between layers, not after it said stop
    again = smollm_engine.generate(prompt, GREEDY)
    assert again.reused_prefix_tokens == result.reused_prefix_tokens >= len(shared) - 1
    assert again.token_ids == cold.token_ids and again.text == cold.text


def test_a_long_gpu_prefill_keeps_two_layers_queued_so_that_a_stop_takes_effect():
    """On a GPU the host queues a prefill's layers far ahead of the GPU, so a poll between them alone would stop
    nothing: before each layer the poll waits for the layer two back to have run, then asks. Short prefills (the
    keystroke path) are not slowed by it; a CPU is polled as it is."""
    from models.engine import STOPPABLE_GPU_PREFILL, Engine, _QueuedLayers

    log = []

    class Event:                        # stands for torch.cuda.Event: which was recorded and which waited on
        def __init__(self):
            self.number = sum(1 for entry in log if entry[0] == "record")

        def record(self):
            log.append(("record", self.number))

        def synchronize(self):
            log.append(("wait", self.number))

    answers = iter([False, False, False, False, True])
    poll = _QueuedLayers(lambda: next(answers), depth=2, event=Event)
    said = [poll() for _ in range(5)]
    assert said == [False, False, False, False, True]
    assert log == [("record", 0), ("record", 1), ("record", 2), ("wait", 0), ("record", 3), ("wait", 1),
                   ("record", 4), ("wait", 2)]

    def stop():
        return False

    class On:                           # Engine._prefill_poll reads only the device
        def __init__(self, device):
            self._device = torch.device(device)

    assert isinstance(Engine._prefill_poll(On("cuda"), stop, STOPPABLE_GPU_PREFILL), _QueuedLayers)
    assert Engine._prefill_poll(On("cuda"), stop, STOPPABLE_GPU_PREFILL - 1) is None
    assert Engine._prefill_poll(On("cuda"), None, 10 * STOPPABLE_GPU_PREFILL) is None
    assert Engine._prefill_poll(On("cpu"), stop, 1) is stop


def test_stop_string_straddling_a_token_boundary(smollm_engine, full_run):
    prompt, cold, deltas = full_run
    # Two adjacent tokens with at least two characters each: stop on the last two + first two.
    i = next(i for i in range(3, len(deltas) - 1) if len(deltas[i]) >= 2 and len(deltas[i + 1]) >= 2)
    stop = deltas[i][-2:] + deltas[i + 1][:2]
    boundary = len("".join(deltas[:i + 1]))
    assert cold.text.index(stop) == boundary - 2
    streamed = []
    result = smollm_engine.generate(prompt, GenerationConfig(max_new_tokens=16, stop_strings=("never", stop)),
                                    on_text=streamed.append)
    assert result.finish_reason == "stop"
    assert result.text == cold.text[:boundary - 2] == "".join(streamed)
    assert stop not in "".join(streamed)
    assert result.token_ids == cold.token_ids[:i + 2]


def test_stop_token_id_ends_generation_without_its_text(smollm_engine, full_run):
    prompt, cold, deltas = full_run
    stop_id = cold.token_ids[6]
    first = cold.token_ids.index(stop_id)
    result = smollm_engine.generate(prompt, GenerationConfig(max_new_tokens=16, stop_token_ids=(stop_id,)))
    assert result.finish_reason == "stop"
    assert result.token_ids == cold.token_ids[:first + 1]
    assert result.text == "".join(deltas[:first])


def test_sampling_is_seeded_and_degenerates_to_greedy(smollm_engine, full_run):
    prompt, cold, _ = full_run

    def run(**kw):
        return smollm_engine.generate(prompt, GenerationConfig(max_new_tokens=6, **kw)).token_ids

    hot = dict(temperature=1.5)
    first = run(seed=1, **hot)
    assert run(seed=1, **hot) == first and run(seed=2, **hot) != first
    assert run(seed=5, temperature=1.0, top_k=1) == cold.token_ids[:6]
    assert run(seed=5, temperature=1.0, top_p=1e-6) == cold.token_ids[:6]


@pytest.mark.parametrize("temperature", [1e-300, 1e-45, 1e-38, 1e-30, 1e-6])
def test_a_tiny_temperature_samples_the_greedy_token(temperature):
    """The limit of sampling as the temperature goes to 0 is greedy; dividing the logits by 1e-45 gave inf - inf in
    the softmax, NaN, and token 0 every time."""
    from models.sampling import probabilities, race
    logits = torch.randn(3, 1000, generator=torch.Generator().manual_seed(0)) * 20
    probs = probabilities(logits, GenerationConfig(temperature=temperature, top_k=40, top_p=0.95))
    assert not probs.isnan().any()
    assert torch.equal(race(probs, torch.Generator().manual_seed(1)), logits.argmax(-1))


@pytest.mark.parametrize("options, kept", [
    (dict(temperature=1.0), [0, 1, 2, 3, 4]),
    (dict(temperature=0.5), [0, 1, 2, 3, 4]),
    (dict(temperature=1.0, top_k=3), [0, 1, 2]),
    (dict(temperature=1.0, top_p=0.8), [0, 1]),          # 0.636 ranks above token 1, 0.870 above token 2
    (dict(temperature=0.5, top_p=0.8), [0]),             # the nucleus of the tempered distribution: 0.867 above 1
    (dict(temperature=2.0, top_k=4, top_p=0.6), [0, 1]),
])
def test_probabilities_are_temperature_then_top_k_then_top_p(options, kept):
    """The distribution sampling draws from, worked out by hand as llama.cpp and transformers define it: softmax of
    logits / temperature, cut to the top_k largest, then to the fewest tokens whose mass reaches top_p (a token stays
    while the tokens above it hold less than top_p), renormalised. The greedy limits above cannot tell a nucleus one
    token short, a top_k one token long or a temperature applied after the cut from the right one."""
    from models.sampling import probabilities
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])[:, [3, 0, 4, 1, 2]]       # shuffled: ranks are not ids
    rank_to_id = [1, 3, 4, 0, 2]
    tempered = torch.softmax(torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0], dtype=torch.float64) / options["temperature"], 0)
    want = torch.zeros(5, dtype=torch.float64)
    for rank in kept:
        want[rank_to_id[rank]] = tempered[rank] / tempered[kept].sum()
    got = probabilities(logits, GenerationConfig(**options))[0]
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("order, kept", [(("temperature", "top_k", "top_p"), [0]),
                                         (("top_k", "top_p", "temperature"), [0, 1]),
                                         (("top_p", "temperature", "top_k"), [0, 1])])
def test_top_p_weighs_the_distribution_its_place_in_the_order_sees(order, kept):
    """llama.cpp's chain ends with temperature: its top-p keeps the tokens of the model's own distribution (0.636
    ranks above token 1, 0.870 above token 2), where after a temperature of 0.5 token 0 alone holds 0.8 (0.867);
    the temperature then sharpens what is kept."""
    from models.sampling import probabilities
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    tempered = torch.softmax(logits[0].double() / 0.5, 0)
    want = torch.zeros(5, dtype=torch.float64)
    want[kept] = tempered[kept] / tempered[kept].sum()
    got = probabilities(logits, GenerationConfig(temperature=0.5, top_p=0.8,
                                                 sampler_order=order + ("penalties", "min_p")))[0]
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="sampler_order"):
        GenerationConfig(sampler_order=("top_k", "top_p"))


def test_timings_are_filled_in(full_run):
    _, result, _ = full_run
    t = result.timings
    assert t.load_s > 0 and t.prefill_s > 0 and t.ttft_ms >= 1000 * t.prefill_s
    assert t.decode_s > 0 and t.decode_tokens_per_s > 0 and t.prefill_tokens_per_s > 0
    assert result.prompt_tokens == len(full_run[0])


def test_zero_new_tokens_and_bad_prompts(smollm_engine):
    result = smollm_engine.generate(encode(smollm_engine, "x"), GenerationConfig(max_new_tokens=0))
    assert (result.text, result.token_ids, result.finish_reason) == ("", [], "length")
    with pytest.raises(ModelError, match="empty prompt"):
        smollm_engine.generate([], GREEDY)
    with pytest.raises(ModelError, match="token id 49152 is outside the vocabulary"):
        smollm_engine.generate([1, 49152], GREEDY)


def test_flash_on_the_cpu_is_flagged_as_slow(tiny_checkpoint):
    engine = load_model(tiny_checkpoint[0], device="cpu", max_context=32)
    assert engine.attention == "sdpa" and not engine.attention_is_slow
    engine.set_attention("flash")
    assert engine.attention_is_slow
    with pytest.raises(ValueError, match="unknown attention 'fast'"):
        engine.set_attention("fast")


def test_a_head_dim_outside_the_kernels_range_runs_on_sdpa_and_refuses_the_others(tmp_path, llama_tokenizer):
    """Head dim 8 (a tiny checkpoint's: transformers runs it): flash and eager's kernels take 16..256, so asking
    for them is a clear error, not a ValueError from the first decode step; sdpa generates as transformers does."""
    from kernels.validation import MAX_HEAD_DIM, MIN_HEAD_DIM
    from models.attention import KERNEL_HEAD_DIMS
    from tiny_models import save_tiny_llama
    assert (KERNEL_HEAD_DIMS[0], KERNEL_HEAD_DIMS[-1]) == (MIN_HEAD_DIM, MAX_HEAD_DIM)
    hf = save_tiny_llama(tmp_path, llama_tokenizer, n_kv_heads=2, hidden_size=32)       # 4 heads of 8
    for backend in ("flash", "eager"):
        with pytest.raises(ModelError, match=f"{backend} attention takes head dims 16..256, and .*'s is 8: use sdpa"):
            load_model(tmp_path, device="cpu", max_context=32, attention=backend)
    engine = load_model(tmp_path, device="cpu", max_context=32)
    with pytest.raises(ModelError, match="head dims 16..256"):
        engine.set_attention("eager")
    assert engine.attention == "sdpa"
    prompt = list(range(5, 15))
    with torch.no_grad():
        expected = hf.generate(torch.tensor([prompt]), max_new_tokens=4, do_sample=False)[0, 10:].tolist()
    assert engine.generate(prompt, GenerationConfig(max_new_tokens=4, speculate=0)).token_ids == expected


def test_a_decode_step_can_be_timed_per_backend(tiny_checkpoint):
    engine = load_model(tiny_checkpoint[0], device="cpu", max_context=32)
    logits = {}
    for backend in ("sdpa", "eager", "flash"):
        engine.set_attention(backend)
        step = engine.make_decode_step(batch_size=2, context_tokens=20)
        logits[backend] = step()
        assert logits[backend].shape == (2, engine.model.config.vocab_size)
    assert (logits["sdpa"] - logits["eager"]).abs().max() < 1e-4
    assert (logits["sdpa"] - logits["flash"]).abs().max() < 1e-4


def test_key_spans_grow_by_quarter_octaves_within_the_capacity():
    from models.decode_step import key_span
    assert [key_span(n, 100_000) for n in (1, 1024, 1025, 1280, 1281, 2048, 2049, 65536)] == \
        [1024, 1024, 1280, 1280, 1472, 2048, 2496, 65536]
    assert key_span(5000, 3000) == 3000
    for n in range(1, 70_000, 97):                   # every span holds kv_len, with at most 19% (+ 64) to spare
        assert n <= key_span(n, 1 << 20) <= max(1024, 1.19 * n + 64)


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_a_graph_of_sdpa_or_eager_reads_a_span_of_keys_that_holds_the_context(tiny_checkpoint, monkeypatch, backend):
    """A graph's shapes are fixed: SDPA and eager read one span of keys per graph (models/decode_step.py), not the
    whole cache. Each replay at kv_len keys must give the eager step's logits at exactly kv_len; a new span gets its
    own graph. The capture is stood in for by running the captured call again (no CUDA here)."""
    from models.decode_step import DecodeStep
    spans = []

    def capture(step, span):
        spans.append(span)
        logits = step._forward(span, False, graphed=True).clone()

        class Replay:
            def replay(self):
                logits.copy_(step._forward(span, False, graphed=True))
        return Replay(), logits

    monkeypatch.setattr(DecodeStep, "_capture", capture)
    engine = load_model(tiny_checkpoint[0], device="cpu", max_context=1600, attention=backend, past_training=True)
    prompt = torch.randint(3, engine.model.config.vocab_size, (1, 1250), generator=torch.Generator().manual_seed(5))
    engine.model.prefill(prompt)
    graphed = DecodeStep(engine.model, 1, 1, backend, torch.device("cpu"), graphed=True, capacity=1600)
    eager = DecodeStep(engine.model, 1, 1, backend, torch.device("cpu"), graphed=False, capacity=1600)
    with torch.no_grad():
        for pos in (1250, 1279, 1280, 1399):
            for step in (graphed, eager):
                step.tokens.fill_(int(prompt[0, pos % 1250]))
                step.input_pos.fill_(pos)
            expected = eager.run(kv_len=pos + 1, exact=True).clone()
            torch.testing.assert_close(graphed.run(kv_len=pos + 1, exact=True), expected, atol=1e-4, rtol=1e-4)
    assert spans == [1280, 1472]


def test_decoding_runs_where_triton_cannot_be_installed(tmp_path):
    """Triton has Linux wheels only: on macOS (and Windows) importing kernels failed on `import triton` (kernels.plan
    used it for next_power_of_2), so no model could decode at all. There sdpa decodes, nothing is compiled, and flash
    is refused in one line."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = f"""
import sys
sys.modules["triton"] = None                # import triton: ImportError, as on macOS
sys.path.insert(0, {str(Path(__file__).parent)!r})
from pathlib import Path
from tiny_models import write_tiny_gguf
from models import GenerationConfig, ModelError, load_model
path = Path({str(tmp_path / "tiny.gguf")!r})
write_tiny_gguf(path)
engine = load_model(path, device="cpu", max_context=64)
assert engine.attention == "sdpa", engine.attention
assert len(engine.generate([1, 2, 3], GenerationConfig(max_new_tokens=4)).token_ids) == 4
try:
    engine.set_attention("flash")
except ModelError as error:
    assert "Triton is not installed" in str(error)
else:
    raise AssertionError("flash attention without Triton")
"""
    env = {**os.environ, "CODECOMPLETE_CACHE_DIR": str(tmp_path / "cache")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)


def test_loading_and_a_first_answer_on_a_cpu_import_neither_torch_dynamo_nor_triton(tmp_path):
    """torch._dynamo is 0.8 s of imports: nn.Embedding's own init under the meta device (normal_ through torch._refs)
    and torch.nn.attention.bias (for a prefill's bottom-right causal mask) each imported it, on every start of the
    command line, where a CPU never compiles and a first prompt has no prefix to align the triangle to. Module.to_empty
    imported torch.fx's symbolic shapes (0.15 s), the cache's append imported Triton and every kernel (0.15 s) to run
    the plain-PyTorch append that kernels.interface runs off CUDA, and a generic tokenizer.json imported
    AutoTokenizer (0.9 s of transformers' lazy modules) without using it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tiny_models import write_tiny_gguf

    write_tiny_gguf(tmp_path / "tiny.gguf")        # (here: making it takes transformers' model, which imports it)
    code = f"""
import sys
from models import GenerationConfig, load_model
engine = load_model({str(tmp_path / "tiny.gguf")!r}, device="cpu", max_context=64)
assert len(engine.generate(list(range(1, 20)), GenerationConfig(max_new_tokens=4)).token_ids) == 4
for module in ("torch._dynamo", "torch.fx.experimental.symbolic_shapes", "triton", "kernels.interface",
               "transformers.models.auto.tokenization_auto"):
    assert module not in sys.modules or sys.argv[1] == "first", module + " imported"
"""
    env = {**os.environ, "CODECOMPLETE_CACHE_DIR": str(tmp_path / "cache")}
    for start in ("first", "second"):      # (the first converts the GGUF and caches it, once per machine)
        subprocess.run([sys.executable, "-c", code, start], check=True, env=env, timeout=300)


def llama_cpp_penalties(logits: torch.Tensor, window: list[int], repeat: float, presence: float,
                        frequency: float) -> torch.Tensor:
    """llama.cpp's llama_sampler_penalties_apply written out a token at a time: each token seen c > 0 times in the
    window has its logit divided by the repeat penalty (multiplied, if it is not positive), then c * frequency +
    presence taken off."""
    out = logits.clone()
    for token in set(window):
        count, logit = window.count(token), float(logits[token])
        logit = logit * repeat if logit <= 0 else logit / repeat
        out[token] = logit - (count * frequency + presence)
    return out


def test_penalties_are_llama_cpps_over_the_last_n_tokens_of_prompt_and_answer():
    from models.penalties import Penalties
    generator = torch.Generator().manual_seed(11)
    logits = torch.randn(2, 40, generator=generator) * 3                        # (B, V): both signs
    assert (logits > 0).any() and (logits < 0).any()
    prompts = [[5, 7, 5, 9, 30, 5, 2], [1, 2, 3]]
    config = GenerationConfig(repeat_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.25, penalty_last_n=6)
    penalties = Penalties.of(config, prompts, context_length=100)
    penalties.advance([5, 3])
    penalties.advance([9, 3])
    got = penalties.apply(logits)
    # The last 6 tokens: the prompt's 5, 9, 30, 5, 2, then 5 and 9 answered (the prompt's first 5 and 7 have left).
    windows = [[9, 30, 5, 2, 5, 9], [1, 2, 3, 3, 3]]
    for row, window in enumerate(windows):
        torch.testing.assert_close(got[row], llama_cpp_penalties(logits[row], window, 1.3, 0.4, 0.25))
    assert got[0, 7] == logits[0, 7]                # 7 left the window
    # Worked by hand for token 5 (twice in row 0's window): its logit repeat-penalized, then 2 * 0.25 + 0.4 off.
    x = float(logits[0, 5])
    assert float(got[0, 5]) == pytest.approx((x / 1.3 if x > 0 else x * 1.3) - 0.9, rel=1e-6, abs=1e-6)
    # -1: the whole context; OpenAI's definition (penalize_prompt=False): the answer's tokens only.
    whole = Penalties.of(dataclasses.replace(config, penalty_last_n=-1), prompts, context_length=100)
    whole.advance([5, 3])
    torch.testing.assert_close(whole.apply(logits)[0], llama_cpp_penalties(logits[0], prompts[0] + [5], 1.3, 0.4, 0.25))
    answer_only = Penalties.of(dataclasses.replace(config, penalize_prompt=False), prompts, context_length=100)
    answer_only.advance([5, 3])
    torch.testing.assert_close(answer_only.apply(logits)[1], llama_cpp_penalties(logits[1], [3], 1.3, 0.4, 0.25))


def test_vllms_repetition_penalty_sees_the_prompt_where_presence_and_frequency_see_the_answer():
    """vLLM's OpenAI routes: repetition_penalty over every token of prompt and answer (prompt_mask | output_mask),
    presence and frequency over the answer's (OpenAI's definition); drafts count as answered tokens."""
    from models.penalties import Penalties
    logits = torch.randn(2, 40, generator=torch.Generator().manual_seed(13)) * 3           # (B, V)
    prompts = [[5, 7, 5, 9, 30, 5, 2], [1, 2, 3]]
    config = GenerationConfig(repeat_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.25, penalty_last_n=-1,
                              penalize_prompt=False, repeat_window=-1)
    penalties = Penalties.of(config, prompts, context_length=100)
    penalties.advance([5, 4])
    penalties.advance([6, 4])
    got = penalties.apply(logits)
    for row, (prompt, answer) in enumerate([(prompts[0], [5, 6]), (prompts[1], [4, 4])]):
        want = llama_cpp_penalties(logits[row], prompt + answer, 1.3, 0.0, 0.0)       # the repeat penalty alone
        want -= llama_cpp_penalties(torch.zeros(40), answer, 1.0, 0.4, 0.25).neg()     # minus c * f + p, answer only
        torch.testing.assert_close(got[row], want)
    drafted = Penalties.of(config, prompts[:1], context_length=100)
    drafted.advance([5])
    rows = drafted.apply(logits[:1].expand(2, 40), drafts=[6])                         # (pending + 1 draft, V)
    torch.testing.assert_close(rows[1], got[0])
    # Only the repeat penalty asked for, over its own window: nothing is counted past the prompt's last 2 tokens.
    repeat_only = Penalties.of(GenerationConfig(repeat_penalty=1.3, repeat_window=2), prompts[:1], context_length=100)
    torch.testing.assert_close(repeat_only.apply(logits[:1])[0], llama_cpp_penalties(logits[0], [5, 2], 1.3, 0, 0))


def test_penalties_of_each_verified_position_see_the_drafts_before_it():
    """Speculation's verification: position i is penalized as plain decoding would be after drafts[:i]."""
    from models.penalties import Penalties
    logits = torch.randn(4, 64, generator=torch.Generator().manual_seed(12)) * 3          # (1 + 3 drafts, V)
    config = GenerationConfig(repeat_penalty=1.2, presence_penalty=-0.5, frequency_penalty=0.7, penalty_last_n=5)
    penalties = Penalties.of(config, [[4, 8, 15, 16, 23, 42]], context_length=100)
    penalties.advance([8])
    drafts = [8, 8, 4]
    got = penalties.apply(logits, drafts)
    for i in range(4):
        plain = Penalties.of(config, [[4, 8, 15, 16, 23, 42]], context_length=100)
        plain.advance([8])
        plain.extend(drafts[:i])
        torch.testing.assert_close(got[i], plain.apply(logits[i:i + 1])[0])
    assert not torch.equal(got[1], got[2])          # the draft before it counted


@pytest.mark.parametrize("options", [dict(presence_penalty=-1e300), dict(repeat_penalty=1e-300),
                                     dict(frequency_penalty=-1e39, presence_penalty=1e39)])
def test_penalties_that_overflow_leave_a_distribution_to_sample(options):
    """Penalties past float32's range made +inf logits (inf - inf: NaN), whose softmax is NaN: sampling drew token
    0, the end of text, every time. Logits stay finite; the penalized tokens are the likeliest (or the least)."""
    from models.penalties import Penalties
    from models.sampling import probabilities
    logits = torch.randn(1, 64, generator=torch.Generator().manual_seed(13)) * 3 + 1      # (1, V)
    penalties = Penalties.of(GenerationConfig(**options), [[5, 6, 7, 5]], context_length=100)
    got = penalties.apply(logits)
    assert torch.isfinite(got).all() and torch.equal(got[0, 8:], logits[0, 8:])
    probs = probabilities(got, GenerationConfig(temperature=1.0))
    assert not probs.isnan().any() and probs.sum() == pytest.approx(1.0)
    assert probs[0, 0] < 0.5


@pytest.mark.parametrize("options", [{}, dict(penalty_last_n=0, repeat_penalty=1.5, frequency_penalty=1.0),
                                     dict(repeat_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0,
                                          penalty_last_n=-1, penalize_prompt=False)])
def test_neutral_penalties_build_nothing(options):
    """Penalties at 1 / 0 / 0, or over no tokens, leave decoding exactly as it was (llama.cpp's early return)."""
    from models.penalties import Penalties
    assert Penalties.of(GenerationConfig(**options), [[1, 2, 3]], context_length=100) is None


def test_penalties_apply_before_sampling_as_before_greedy(smollm_engine):
    """A prompt the model answers by repeating it: penalties change the greedy answer, and sampling cut to its top
    token (top_k 1) gives that same penalized answer: the penalties come before the sampler's cuts."""
    prompt = encode(smollm_engine, "x = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1")

    def run(**options):
        return smollm_engine.generate(prompt, GenerationConfig(max_new_tokens=12, speculate=0, **options)).text
    plain = run()
    assert plain.count(" 1") >= 3, plain
    penalized = run(repeat_penalty=1.3)
    assert penalized != plain and penalized.count(" 1") < 3, penalized
    assert run(repeat_penalty=1.3, temperature=1.0, top_k=1, seed=3) == penalized
    assert run(frequency_penalty=1.0, penalize_prompt=False, penalty_last_n=-1) != plain


def test_penalties_after_top_k_only_weigh_what_top_k_kept(smollm_engine):
    """llama.cpp applies the penalties where `samplers` lists them: after top_k 1 the one token left is drawn whatever
    its penalty (the plain answer), before it the penalized logits choose that token (the penalized answer)."""
    prompt = encode(smollm_engine, "x = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1")

    def run(order, **options):
        return smollm_engine.generate(prompt, GenerationConfig(max_new_tokens=12, speculate=0, sampler_order=order,
                                                               **options)).text
    rest = ("temperature", "min_p", "top_p")
    plain = run(("penalties", "top_k") + rest)
    penalized = run(("penalties", "top_k") + rest, repeat_penalty=1.3, temperature=1.0, top_k=1, seed=3)
    assert penalized != plain
    assert run(("top_k", "penalties") + rest, repeat_penalty=1.3, temperature=1.0, top_k=1, seed=3) == plain


def test_the_infill_sampler_in_the_chain_decodes_alike_with_and_without_speculation(smollm_engine):
    """Greedy over llama.cpp's infill sampler (models/infill.py): the verification step applies the chain to every
    position as plain decoding does, so drafts change nothing; and the chain runs (a model without a tokenizer
    could not)."""
    prompt = encode(smollm_engine, "def add(a, b):\n    return a + b\n\n\ndef add(a, b):\n    return")
    order = ("top_k", "infill", "penalties", "temperature", "min_p", "top_p")
    runs = [smollm_engine.generate(prompt, GenerationConfig(max_new_tokens=10, top_k=40, sampler_order=order,
                                                            speculate=depth)) for depth in (0, 4)]
    assert runs[0].token_ids == runs[1].token_ids and runs[0].token_ids


def test_architecture_lists_every_field_of_a_generation_result():
    """ARCHITECTURE.md's GenerationResult(...) stopped at `timings`: `stop_string` and `healing_tokens` (what the
    server and the JSON's token counts read) were missing."""
    import re
    from pathlib import Path

    from models import GenerationResult
    text = (Path(__file__).resolve().parents[2] / "ARCHITECTURE.md").read_text(encoding="utf-8")
    documented = re.search(r"`GenerationResult\((.*?)\)`", text, re.S)[1]
    assert [name.strip() for name in documented.split(",")] == [f.name for f in dataclasses.fields(GenerationResult)]


def test_the_engines_work_runs_with_its_gpu_current(smollm_engine, monkeypatch):
    """Triton launches and CUDA graph captures use the thread's current device, and a new thread (the server's
    worker) starts on cuda:0: an engine on cuda:1 must make cuda:1 current for its work, from any thread. (No GPU
    here: the device context each entry point enters is recorded instead.)"""
    import threading
    from types import SimpleNamespace

    from models.engine import Engine

    entered = []

    class Recorded:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            return False

    on_gpu = SimpleNamespace(_device=torch.device("cuda", 1))
    assert torch.cuda.device(torch.device("cuda", 1)).idx == 1      # what the context is given, on cuda:1
    monkeypatch.setattr(torch.cuda, "device", Recorded)
    assert Engine.current_device(on_gpu).device == torch.device("cuda", 1)
    assert Engine.current_device(smollm_engine).device == -1        # off CUDA: a no-op context

    prompt = encode(smollm_engine, CONTEXT)
    calls = {
        "generate": lambda: smollm_engine.generate(prompt, GenerationConfig(max_new_tokens=2)),
        "generate_batch": lambda: smollm_engine.generate_batch([prompt], GenerationConfig(max_new_tokens=2)),
        "warm_prefill": lambda: smollm_engine.warm_prefill([len(prompt)]),
        "make_decode_step": lambda: smollm_engine.make_decode_step(1, 8)(),
    }
    for name, call in calls.items():
        entered.clear()
        worker = threading.Thread(target=call)
        worker.start()
        worker.join()
        assert entered and set(entered) == {-1}, name
    smollm_engine.clear_prefix_cache()


def test_the_engines_step_widths_are_within_the_kernels_limits():
    """The engine's and the cache's copies of the kernels' query-token limits (models cannot import kernels before
    TRITON_INTERPRET is set): the wide tail's step within the decode kernel's, a verification within the exact-window
    kernels', whose limit is the 8-bit cache's ring sizing."""
    from kernels.validation import MAX_EXACT_QUERY_TOKENS, MAX_QUERY_TOKENS
    from models.engine import MAX_SPECULATE, WIDE_TAIL
    from models.kv_cache import MAX_STEP_TOKENS

    assert MAX_EXACT_QUERY_TOKENS == MAX_STEP_TOKENS
    assert 1 + MAX_SPECULATE <= MAX_STEP_TOKENS < WIDE_TAIL <= MAX_QUERY_TOKENS

"""Bucketed prefill spans (models/engine.py PREFILL_BUCKET): a prefill over a span rounded to the bucket (its start
down, its end up with pad tokens) computes the prompt's own logits and keys/values, and generation does not change.

On CUDA the bucket is on by default; here, on a CPU, the tests turn it on for a small random model in float32 and
compare with the same engine's unbucketed path (the one every other engine test checks)."""
from __future__ import annotations

import pytest
import torch

from models.config import ModelConfig, RopeScaling
from models.engine import Engine, prefill_bucket
from models.generation import GenerationConfig
from models.llama import build_random_model

CONFIG = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, vocab_size=101, rope_theta=1e4,
                     max_positions=128)
CONTEXT = 80
BUCKET = 16


def make_engine(bucket: int, seed: int = 0) -> Engine:
    model = build_random_model(CONFIG, dtype=torch.float32, seed=seed)
    with torch.no_grad():          # larger weights: well-separated logits, so greedy choices never hinge on rounding
        for name, p in model.named_parameters():
            if not name.endswith("norm.weight"):
                p.mul_(10)
    engine = Engine(model, None, name="tiny", attention="sdpa", context_length=CONTEXT, cuda_graphs=False)
    engine.prefill_bucket = bucket
    engine.speculate = 0
    return engine


def prompt(n: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, CONFIG.vocab_size, (n,), generator=generator).tolist()


def test_the_span_rounds_the_start_down_and_the_end_up_within_the_cache():
    engine = make_engine(BUCKET)
    assert engine.prefill_span(0, 21) == (0, 32)
    assert engine.prefill_span(3, 21) == (0, 32)
    assert engine.prefill_span(17, 32) == (16, 32)        # an end on the bucket stays: no pads
    assert engine.prefill_span(40, 77) == (32, CONTEXT)   # 80 = the cache's end, not 96
    engine.prefill_bucket = 0
    assert engine.prefill_span(3, 21) == (3, 21)


@pytest.mark.parametrize("start, length", [(0, 21), (0, 1), (0, 77), (20, 45), (33, 34)])
def test_a_padded_prefill_gives_the_prompts_own_logits_and_cache(start, length):
    """The bucketed prefill (pads after the prompt, the start re-prefilled from the bucket) against the plain one,
    from a cache poisoned with NaN beyond what the prefix wrote: the same logits, the same keys and values at every
    prompt position, and nothing read from a slot no token wrote."""
    ids = prompt(length, seed=length)
    results = []
    for bucket in (0, BUCKET):
        engine = make_engine(bucket)
        for layer in engine.model.layers:
            layer.attention.kv_cache.k.fill_(float("nan"))
            layer.attention.kv_cache.v.fill_(float("nan"))
        with torch.no_grad():
            if start:
                engine._prefill(ids[:start], 0, 0)         # the cached prefix (itself bucketed when on)
            first = engine.prefill_span(start, length)[0]
            logits = engine._prefill(ids, first, 0)        # (1, V)
        cache = [(layer.attention.kv_cache.k[:, :, :length].clone(), layer.attention.kv_cache.v[:, :, :length].clone())
                 for layer in engine.model.layers]
        results.append((logits, cache))
    (plain, plain_cache), (padded, padded_cache) = results
    assert padded.shape == plain.shape == (1, CONFIG.vocab_size)
    assert torch.isfinite(padded).all() and torch.isfinite(plain).all()
    assert (padded - plain).norm() / plain.norm() < 1e-5
    for (k0, v0), (k1, v1) in zip(plain_cache, padded_cache):
        assert torch.isfinite(k1).all() and torch.isfinite(v1).all()
        assert torch.allclose(k0, k1, rtol=1e-5, atol=1e-5) and torch.allclose(v0, v1, rtol=1e-5, atol=1e-5)


def test_the_logits_are_the_last_prompt_tokens_not_a_pads():
    """What a bug that took the span's last position would give differs: the check above can fail."""
    engine = make_engine(BUCKET)
    ids = prompt(21, seed=5)
    with torch.no_grad():
        padded = engine._prefill(ids, 0, 0)
        engine.prefill_bucket = 0
        whole_span = engine.model.prefill(torch.tensor([ids + [ids[-1]] * 11]), 0, 0)   # (1, V) at position 31
        plain = engine._prefill(ids, 0, 0)
    assert (padded - plain).norm() / plain.norm() < 1e-5
    assert (whole_span - plain).norm() / plain.norm() > 1e-2


@pytest.mark.parametrize("speculate", [0, 4])
def test_generation_is_unchanged_and_reuse_counts_the_bucketed_start(speculate):
    """Greedy generation with buckets equals it without, for a cold prompt and for a next request that shares a
    prefix (reused up to the bucket below it); the pads never show up in what later steps attend to."""
    config = GenerationConfig(max_new_tokens=12, speculate=speculate)
    first = prompt(37, seed=1)
    second = first[:29] + prompt(9, seed=2)
    runs = []
    for bucket in (0, BUCKET):
        engine = make_engine(bucket)
        runs.append([engine.generate(first, config), engine.generate(second, config)])
    (cold0, warm0), (cold1, warm1) = runs
    assert cold1.token_ids == cold0.token_ids and len(cold0.token_ids) == 12
    assert warm1.token_ids == warm0.token_ids
    assert (cold0.reused_prefix_tokens, cold1.reused_prefix_tokens) == (0, 0)
    assert warm0.reused_prefix_tokens >= 29 and warm1.reused_prefix_tokens == warm0.reused_prefix_tokens // 16 * 16


def test_warm_prefill_runs_each_bucketed_span_once_and_forgets_the_cache():
    engine = make_engine(BUCKET)
    ids = prompt(30, seed=3)
    before = engine.generate(ids, GenerationConfig(max_new_tokens=6))
    seen = []
    real = engine._prefill
    engine._prefill = lambda p, start, row, *rest: seen.append((len(p), start, row)) or real(p, start, row, *rest)
    assert engine.warm_prefill([30, 31, 17, 33, 0, 500]) == [32, 48]
    assert seen == [(32, 0, 0), (48, 0, 0)]
    after = engine.generate(ids, GenerationConfig(max_new_tokens=6))
    assert after.reused_prefix_tokens == 0 and after.token_ids == before.token_ids
    engine.prefill_bucket = 0
    assert engine.warm_prefill([30]) == []             # nothing recurs without buckets: nothing to warm


def test_the_bucket_setting(monkeypatch):
    monkeypatch.delenv("CODECOMPLETE_PREFILL_BUCKET", raising=False)
    assert prefill_bucket("cuda", CONFIG) == 128 and prefill_bucket("cpu", CONFIG) == 0
    monkeypatch.setenv("CODECOMPLETE_PREFILL_BUCKET", "0")
    assert prefill_bucket("cuda", CONFIG) == 0
    monkeypatch.setenv("CODECOMPLETE_PREFILL_BUCKET", "64")
    assert prefill_bucket("cpu", CONFIG) == 64
    dynamic = CONFIG.replace(rope_scaling=RopeScaling(kind="dynamic", factor=2.0))
    assert prefill_bucket("cuda", dynamic) == 0        # rotations depend on the call's length, pads included
    for bad in ("x", "-1"):
        monkeypatch.setenv("CODECOMPLETE_PREFILL_BUCKET", bad)
        with pytest.raises(ValueError, match="CODECOMPLETE_PREFILL_BUCKET"):
            prefill_bucket("cuda", CONFIG)


def test_the_compiled_prefill_gives_the_eager_logits_and_cache_and_compiles_once_for_every_length():
    """On CUDA the prefill's dense parts run compiled (Engine.compile_prefill); here on the CPU with inductor's C++
    backend: the same logits and keys/values as eager float32 for spans of three lengths, from one compilation."""
    import torch._dynamo.utils

    engine = make_engine(BUCKET)
    ids = prompt(70, seed=4)
    cases = [(37, 0), (53, 0), (70, 20)]         # spans 48, 64 and [16, 80)
    runs = []
    for compiled in (False, True):
        engine.compile_prefill = compiled
        outputs = []
        for length, start in cases:
            with torch.no_grad():
                if compiled and length == 53:
                    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
                logits = engine._prefill(ids[:length], engine.prefill_span(start, length)[0], 0)
            cache = engine.model.layers[-1].attention.kv_cache
            outputs.append((logits, cache.k[:, :, :length].clone(), cache.v[:, :, :length].clone()))
        runs.append(outputs)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs    # no recompilation for new lengths
    for (l0, k0, v0), (l1, k1, v1) in zip(*runs):
        assert (l1 - l0).norm() / l0.norm() < 1e-5
        assert (k1 - k0).norm() / k0.norm() < 1e-5 and (v1 - v0).norm() / v0.norm() < 1e-5


def test_the_compiled_prefill_is_the_servers_choice_and_needs_compiled_decoding():
    engine = make_engine(BUCKET)
    assert engine.compile_prefill is False              # one-shot commands: not worth its compilation
    assert engine.prefill_compilable is False           # a CPU engine: no CUDA graphs, no compiled decode step


def steps_built_with_graphs(engine, ids, monkeypatch) -> list[tuple[int, int, int]]:
    """After a generation of `ids` fills the cache: graphs on, and the (batch, context, width) of each decode step
    a warm-up then builds, recorded instead of run (a CPU cannot capture)."""
    engine.generate(ids, GenerationConfig(max_new_tokens=2))
    built = []
    monkeypatch.setattr(engine, "_graphs_enabled", True)
    monkeypatch.setattr(engine, "make_decode_step",
                        lambda batch, context, width: lambda: built.append((batch, context, width)))
    return built


def test_warm_speculation_builds_the_one_verify_step_graphs_use_and_keeps_the_cache(monkeypatch):
    """With graphs every verification has the width 1 + depth (drafts padded): the warm-up builds that step, as
    the first request whose text repeats its prompt would otherwise, inside its decode."""
    engine = make_engine(BUCKET)
    engine.speculate = 0
    monkeypatch.setattr(engine, "_graphs_enabled", True)
    assert not engine.warm_speculation()                            # no speculation: nothing to build
    monkeypatch.undo()
    engine.speculate = 4
    assert not engine.warm_speculation()                            # a CPU: no graphs, no setup to pay ahead
    ids = prompt(30, seed=4)
    built = steps_built_with_graphs(engine, ids, monkeypatch)
    assert engine.warm_speculation()
    assert built == [(1, engine.context_length, 1 + engine.speculate)]     # the context's last slots
    monkeypatch.undo()
    assert engine.generate(ids, GenerationConfig(max_new_tokens=2)).reused_prefix_tokens > 0


def test_warm_wide_tail_builds_the_wide_step_where_it_applies_and_keeps_the_cache(monkeypatch):
    """The step that feeds a longer edit (WIDE_TAIL tokens): captured at the server's warm-up where graphs, flash
    attention and an unquantized cache make it apply; nowhere else (a CPU, sdpa, an 8-bit cache)."""
    from models.engine import WIDE_TAIL
    engine = make_engine(BUCKET)
    assert not engine.warm_wide_tail()                              # a CPU: no graphs
    ids = prompt(30, seed=5)
    built = steps_built_with_graphs(engine, ids, monkeypatch)
    assert not engine.warm_wide_tail() and not built               # sdpa: a graph per key span
    monkeypatch.setattr(engine, "attention", "flash")
    monkeypatch.setattr(engine, "_quant", object())
    assert not engine.warm_wide_tail() and not built               # an 8-bit cache
    monkeypatch.setattr(engine, "_quant", None)
    assert engine.context_length < 2 * WIDE_TAIL and not engine.warm_wide_tail() and not built   # too short a cache
    monkeypatch.setattr(engine, "context_length", 4 * WIDE_TAIL)
    assert engine.warm_wide_tail()
    assert built == [(1, 4 * WIDE_TAIL, WIDE_TAIL)]                # the context's last slots
    monkeypatch.undo()
    assert engine.generate(ids, GenerationConfig(max_new_tokens=2)).reused_prefix_tokens > 0


def test_a_warm_step_writes_past_the_cached_prompt_which_the_next_request_reuses_as_it_was():
    """The REPL builds the verifying and wide steps after a first answer (Session.warm_up's `steps`). They wrote the
    K/V of the cache's first slots and forgot the cached prompt, so every follow-up read its conversation again
    (10.8k tokens: 0.6 s against 0.25 s reused, an H100, Run 49). A step now runs at the context's last slots: a
    prompt ending before them stays cached, and the follow-up's answer is bit for bit the one an engine that built
    nothing gives; a prompt reaching into those slots is forgotten."""
    ids = prompt(40, seed=6)
    follow_up = prompt(7, seed=7)
    answers = []
    for warm in (False, True):
        engine = make_engine(BUCKET)
        first = engine.generate(ids, GenerationConfig(max_new_tokens=3))
        if warm:
            engine._warm_step(5)
        again = engine.generate(ids + first.token_ids + follow_up, GenerationConfig(max_new_tokens=6))
        answers.append((again.reused_prefix_tokens, again.token_ids))
    assert answers[1] == answers[0] and answers[0][0] > 0, answers     # (reused to a bucket: 32 of 43)
    engine = make_engine(BUCKET)
    long = prompt(engine.context_length - 8, seed=8)
    engine.generate(long, GenerationConfig(max_new_tokens=2))     # its cache: 73 slots, 7 short of the context's end
    engine._warm_step(9)
    assert engine.generate(long, GenerationConfig(max_new_tokens=1)).reused_prefix_tokens == 0

"""The warm server's caches against a cold engine, by the differential fuzz of tests/app/cache_fuzz.py: seeded
sequences of editor requests over a loopback socket to the real app, every call into its engine checked, before the
next request runs, against an engine asked cold. Also: the oracle answers a prompt alike whatever came before it,
a slot it read without writing would show, and the fuzz notices a cache that builds on moved keys. A longer run:
`python tests/app/cache_fuzz.py --seeds 0-19 --requests 30 --vary`."""
import dataclasses
import math

import pytest

import cache_fuzz as fuzz
# the prompt that loses a chunk in its middle, as the cache-reuse server tests send it
from test_cache_reuse_server import DROPPED, END, KEPT, RUN
from models import GenerationConfig, ModelError

# Two short sequences that between them restore saved prompts (evicting others: 16 MiB holds one or two of these
# prompts), move runs for requests that ask for cache reuse and then serve plain ones, and cancel streams whose
# client left, in the prefill and while decoding (the test asserts that they did).
SEEDS = (8, 28)
REQUESTS = 8
SETTINGS = fuzz.Settings(context_tokens=200, cache_ram_mib=16, bucket=32)


@pytest.fixture(scope="module")
def engines(cache_dir):
    """The warm server's engine and the oracle, both the embedded model (float32, as the suite's references)."""
    patch = pytest.MonkeyPatch()
    patch.setenv("CODECOMPLETE_CACHE_DIR", str(cache_dir))
    patch.delenv("CODECOMPLETE_MODEL", raising=False)
    try:
        warm, cold = fuzz.load_engines()
        yield warm, fuzz.ColdOracle(cold)
    finally:
        patch.undo()


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache-fuzz") / "repo"
    return root, fuzz.write_repository(root)


def test_the_oracle_answers_a_prompt_alike_whatever_came_before(engines, repository):
    """Bit for bit: the same tokens, text and log-probabilities, asked in another order, after its engine served as a
    warm one (another prompt's K/V in its row, a prefix of the next one cached)."""
    warm, oracle = engines
    texts = list(repository[1].values())
    prompts = [warm.tokenizer.encode(text[:length]) for text, length in zip(texts, (200, 450, 300))]
    config = GenerationConfig(max_new_tokens=6, logprobs=5)
    first = [oracle.answer(prompt, config) for prompt in prompts]
    oracle.engine.generate(prompts[1][:-4], GenerationConfig(max_new_tokens=2))
    again = [oracle.answer(prompt, config) for prompt in reversed(prompts)][::-1]
    for a, b in zip(first, again):
        assert (a.token_ids, a.text, a.reused_prefix_tokens) == (b.token_ids, b.text, 0)
        assert [entry.top for entry in a.logprobs] == [entry.top for entry in b.logprobs]


def test_a_slot_the_oracle_would_read_without_writing_it_turns_its_answer_to_nan(engines, repository):
    """The oracle's engine starts every answer with NaN in every KV slot: one read before it is written (here, a
    cached prefix its engine is made to believe in) leaves no answer."""
    warm, oracle = engines
    prompt = warm.tokenizer.encode(next(iter(repository[1].values()))[:200])
    real = oracle.engine.clear_prefix_cache
    oracle.engine.clear_prefix_cache = lambda: setattr(oracle.engine, "_cached_ids", prompt[:-1])
    try:
        with pytest.raises(ModelError, match="not a number"):
            oracle.answer(prompt, GenerationConfig(max_new_tokens=2))
    finally:
        del oracle.engine.clear_prefix_cache
    assert oracle.engine.clear_prefix_cache == real
    assert oracle.answer(prompt, GenerationConfig(max_new_tokens=2)).token_ids


def dropped_chunk_sequence() -> list:
    """A plain request, then one without a chunk in its middle that asks for cache reuse (its runs move back), then a
    plain one after it that must build only on the exact prefix."""
    body = {"n_predict": 1, "temperature": 0}
    return [fuzz.Spec("/completion", {**body, "prompt": KEPT + DROPPED + RUN + END}),
            fuzz.Spec("/completion", {**body, "prompt": KEPT + RUN + END, "n_cache_reuse": 4}),
            fuzz.Spec("/completion", {**body, "prompt": KEPT + RUN + END + " 4"})]


def forgetting_moved_keys(warm, generate):
    """A bug: the record of where cache reuse's moved K/V begin is lost after each request."""
    def forgetful(prompt, config, **kwargs):
        result = generate(prompt, config, **kwargs)
        warm._approximate_from = None
        return result
    return forgetful


def keeping_a_ban(warm, generate):
    """A bug: sampler state left from earlier requests (each one's first token banned in those after it)."""
    last = []

    def leaky(prompt, config, **kwargs):
        bias = tuple(config.logit_bias) + tuple((token, -math.inf) for token in last)
        result = generate(prompt, dataclasses.replace(config, logit_bias=bias), **kwargs)
        last.append(result.token_ids[0])
        return result
    return leaky


def same_prompt_thrice() -> list:
    return [fuzz.Spec("/completion", {"n_predict": 1, "temperature": 0, "prompt": KEPT + RUN + END})] * 3


@pytest.mark.parametrize("bug, requests, kind", [(forgetting_moved_keys, dropped_chunk_sequence, "KV: "),
                                                 (keeping_a_ban, same_prompt_thrice, "tokens differ")])
def test_the_fuzz_notices_a_cache_or_a_sampler_that_remembers(engines, repository, bug, requests, kind):
    """Each bug breaks the second and third requests of a sequence that passes without it."""
    warm, oracle = engines
    root = repository[0]
    clean = fuzz.run_sequence(warm, oracle, root, requests(), SETTINGS)
    assert not clean.findings and clean.moved == (requests is dropped_chunk_sequence), clean
    broken = fuzz.run_sequence(warm, oracle, root, requests(), SETTINGS, wrap=bug)
    assert [finding.step for finding in broken.findings] == [1, 2], broken.findings
    assert all(any(problem.startswith(kind) for problem in finding.problems) for finding in broken.findings)


def test_greedy_answers_are_a_cold_engines_whatever_came_before(engines, repository):
    warm, oracle = engines
    root, files = repository
    outcomes = [fuzz.run_sequence(warm, oracle, root, fuzz.sequence(seed, REQUESTS, files, warm.tokenizer),
                                  SETTINGS, seed) for seed in SEEDS]
    findings = [f"seed {f.seed} step {f.step} ({f.spec.note}): {f.problems}" for o in outcomes for f in o.findings]
    assert not findings, "\n".join(findings)
    # The sequences went where a cache's bug would show (else this test would pass for nothing).
    assert sum(o.requests for o in outcomes) == len(SEEDS) * REQUESTS
    for counted in ("reused", "restored", "moved", "cancelled"):
        assert sum(getattr(o, counted) for o in outcomes), counted

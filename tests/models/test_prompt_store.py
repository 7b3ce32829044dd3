"""llama.cpp's prompt cache (models/prompt_store.py, Engine.keep_prompts): its rules on token lists, a layer's saved
K/V put back byte for byte, and the engine: a prompt that another came between is restored, not prefilled, and
answers with the numbers it had when the cache held it."""

import dataclasses
import random

import pytest
import torch

from models import GenerationConfig, load_model
from models.kv_cache import KVCache
from models.prompt_store import PromptStore, SavedPrompt
from tiny_models import save_tiny_llama

# ---- the rules ------------------------------------------------------------------------------------------------


def saved(tokens: list[int], nbytes: int = 4, approximate_from: int | None = None) -> SavedPrompt:
    return SavedPrompt(list(tokens), [(torch.zeros(nbytes, dtype=torch.uint8),)], approximate_from)


def keep(store: PromptStore, tokens: list[int], nbytes: int = 4, approximate_from: int | None = None) -> None:
    store.add(list(tokens), nbytes, lambda: saved(tokens, nbytes, approximate_from), approximate_from=approximate_from)


def test_a_request_that_shares_a_tenth_or_less_of_itself_or_under_half_of_the_cached_prompt_switches():
    cached = list(range(100))
    assert PromptStore.wants_switch(cached, [500] * 10)                         # nothing shared
    assert PromptStore.wants_switch(cached, cached[:10] + [500] * 90)           # 10 of 100: a tenth
    assert not PromptStore.wants_switch(cached, cached[:60] + [500] * 40)       # 60 of 100, 60 of the cached 100
    assert PromptStore.wants_switch(cached, cached[:40] + [500] * 10)           # 40 of 50, but 40 of the cached 100
    assert not PromptStore.wants_switch(cached, cached + [7])                   # the cached prompt goes on
    assert not PromptStore.wants_switch([], [1, 2])                             # nothing cached: nothing to save


def test_a_saved_prompt_is_taken_back_where_it_serves_the_request_better_and_keeps_a_quarter_of_itself():
    store = PromptStore(None)
    chat, fim = [1] * 5 + list(range(100, 140)), [2] * 5 + list(range(200, 260))
    keep(store, chat)
    keep(store, fim)
    best = store.take_best([3, 3, 3], fim[:50] + [9, 9])
    assert best is not None and best.tokens == fim and [s.tokens for s in store.saved] == [chat]
    assert store.take_best([3, 3, 3], chat[:8] + [9] * 5) is None           # 8 of chat's 45: under a quarter
    assert store.take_best(chat[:30], chat[:20] + [9]) is None              # the cached prompt serves as well


def test_a_save_that_adds_nothing_is_skipped_and_prompts_a_new_one_holds_are_dropped():
    store = PromptStore(None)
    keep(store, [1, 2, 3])
    keep(store, [5, 6])
    assert store.holds([1, 2]) and store.holds([1, 2, 3]) and not store.holds([1, 2, 3, 4])
    keep(store, [1, 2, 3, 4])
    assert [s.tokens for s in store.saved] == [[5, 6], [1, 2, 3, 4]]


def test_an_approximate_prompt_holds_an_exact_one_only_as_far_as_its_own_exact_tokens_reach():
    """Cache reuse's moved K/V (and those computed after them) serve only requests that ask for cache reuse: a
    prompt whose tokens hold an exact saved one whole, but approximate from inside it, does not cover it, nor does
    an approximate saved prompt cover an exact cached one."""
    store = PromptStore(None)
    exact = list(range(1, 41))
    keep(store, exact)
    keep(store, exact + [50, 51], approximate_from=20)          # moved K/V from token 20: the exact 40 stay
    assert [(s.tokens, s.approximate_from) for s in store.saved] == [(exact, None), (exact + [50, 51], 20)]
    assert store.holds(exact[:20], approximate_from=None) and store.holds(exact, approximate_from=35)
    keep(store, exact + [50, 51, 52], approximate_from=30)      # exact as far as the second only: it alone goes
    assert [s.approximate_from for s in store.saved] == [None, 30]
    keep(store, exact + [60], approximate_from=40)              # exact as far as the first: it goes
    assert [s.approximate_from for s in store.saved] == [30, 40]

    store = PromptStore(None)
    keep(store, exact + [50], approximate_from=10)
    assert store.holds(exact, approximate_from=10) and store.holds(exact, approximate_from=5)
    assert not store.holds(exact, approximate_from=None) and not store.holds(exact, approximate_from=30)


def test_a_request_without_cache_reuse_counts_only_the_exact_tokens_of_the_cached_and_the_saved_prompts():
    """Such a request reuses only the K/V before `approximate_from`: a saved prompt is taken back, and the cached one
    switched from, by what the request can use of them, not by the tokens they share with it."""
    whole = list(range(1, 101))
    request = whole[:90] + [7, 7]
    assert not PromptStore.wants_switch(whole, request, approximate_from=10)            # cache reuse: 90 usable
    assert PromptStore.wants_switch(whole, request, approximate_from=10, exact_only=True)   # 10 of the cached 100
    assert not PromptStore.wants_switch(whole, request, approximate_from=None, exact_only=True)

    store = PromptStore(None)
    keep(store, whole[:60])                                      # exact: 60 usable either way
    keep(store, whole[:95], approximate_from=20)                 # 90 usable with cache reuse, 20 without
    assert store.take_best([3], request, exact_only=True).tokens == whole[:60]
    store = PromptStore(None)
    keep(store, whole[:95], approximate_from=20)
    keep(store, whole[:60])
    assert store.take_best([3], request, exact_only=True).tokens == whole[:60]
    assert store.take_best([3], request).tokens == whole[:95]                          # (then the only one left)
    cached = whole[:50] + [4] * 50
    keep(store, whole[:95], approximate_from=40)                 # 90 usable with cache reuse, 40 without
    assert store.take_best(cached, request, cached_approximate_from=45, exact_only=True) is None   # 40 of 95: less
    assert store.take_best(cached, request, cached_approximate_from=45) is not None                # 90 beat 50
    keep(store, whole[:95], approximate_from=40)
    assert store.take_best(cached, request, cached_approximate_from=10, exact_only=True) is not None   # 40 beat 10


def test_past_the_limit_the_oldest_go_and_the_newest_always_stays():
    store = PromptStore(10)
    for first in (1, 2, 3):
        keep(store, [first], nbytes=4)
    assert [s.tokens for s in store.saved] == [[2], [3]]
    keep(store, [9], nbytes=50)
    assert [s.tokens for s in store.saved] == [[9]]


# ---- a layer's K/V --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quant", [None, "int8", "fp8"])
def test_a_rows_saved_slots_come_back_byte_for_byte(quant):
    torch.manual_seed(0)
    cache = KVCache(2, 2, 32, 8, torch.float32, "cpu", quant=quant)
    for row in range(2):
        cache.write(row, 0, torch.randn(1, 2, 20, 8), torch.randn(1, 2, 20, 8))
    before = [t.clone() for t in cache.rows(1, 2).stored() if t is not None]
    exact_before = cache.rows(1, 2).exact
    exact_before = exact_before and [t.clone() for t in exact_before[:3]]
    kept = cache.saved(1, 20)
    assert all(t.device.type == "cpu" for t in kept) and all(t.shape[2] == 20 for t in kept[:4 if quant else 2])
    cache.write(1, 0, torch.randn(1, 2, 25, 8), torch.randn(1, 2, 25, 8))         # another prompt in the row
    cache.restore(1, kept)
    after = [t for t in cache.rows(1, 2).stored() if t is not None]
    for old, new in zip(before, after):
        assert torch.equal(old[:, :, :20], new[:, :, :20])
    if exact_before:    # fp8's exact sink and window tokens come back too: the row's next queries read them
        k, v, pos = cache.rows(1, 2).exact[:3]
        assert cache.window_valid(1, 20) and torch.equal(pos, exact_before[2]) and (pos >= 0).sum() == 20
        held = pos[0] >= 0          # (the slots past them hold the other prompt's, unread: only 20 were saved)
        assert torch.equal(k[:, :, held], exact_before[0][:, :, held])
        assert torch.equal(v[:, :, held], exact_before[1][:, :, held])
        assert kept[-1].shape == (1, 20) and cache.exact_bytes(20) == 2 * 2 * 20 * 8 * 4 + 20 * 8


def test_a_saved_cache_of_another_layout_is_refused():
    kept = KVCache(1, 2, 32, 8, torch.float32, "cpu").saved(0, 4)
    with pytest.raises(ValueError, match="does not fit"):
        KVCache(1, 2, 32, 8, torch.float32, "cpu", quant="int8").restore(0, kept)
    with pytest.raises(ValueError, match="does not fit"):
        KVCache(1, 2, 2, 8, torch.float32, "cpu").restore(0, kept)


# ---- the engine -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory, llama_tokenizer):
    directory = tmp_path_factory.mktemp("two-layers")
    save_tiny_llama(directory, llama_tokenizer, n_kv_heads=2, max_position_embeddings=256)
    return load_model(str(directory), device="cpu")


def prompts(engine, seed=0):
    rng = random.Random(seed)
    part = lambda n: [rng.randrange(3, engine.model.config.vocab_size) for _ in range(n)]   # noqa: E731
    return part(60), part(50)       # an inline completion's prompt, and a chat's


PROBE = GenerationConfig(max_new_tokens=4, logprobs=8)


def test_a_prompt_another_came_between_is_restored_with_the_numbers_it_had(engine):
    fim, chat = prompts(engine)
    engine.keep_prompts(64)
    try:
        engine.clear_prefix_cache()
        first = engine.generate(fim, PROBE)
        again = engine.generate(fim + first.token_ids[:2], PROBE)       # the row still holds it: the reference
        engine.generate(chat, PROBE)
        restored = engine.generate(fim + first.token_ids[:2], PROBE)
        # the prompt, and the answer but its last token
        assert restored.timings.restored_tokens == len(fim) + 2 + len(again.token_ids) - 1
        assert restored.reused_prefix_tokens == again.reused_prefix_tokens == len(fim) + 1
        assert restored.token_ids == again.token_ids
        for x, y in zip(again.logprobs, restored.logprobs):
            assert x.top == y.top                                     # the same K/V bytes: the same numbers
        back = engine.generate(chat + [5], PROBE)                     # and the chat's, saved as the fim came back
        assert back.timings.restored_tokens > len(chat) and back.reused_prefix_tokens == len(chat)
    finally:
        engine.keep_prompts(0)


def test_without_the_prompt_cache_the_prompt_is_prefilled_again(engine):
    fim, chat = prompts(engine, seed=1)
    engine.keep_prompts(0)
    engine.clear_prefix_cache()
    engine.generate(fim, PROBE)
    engine.generate(chat, PROBE)
    again = engine.generate(fim, PROBE)
    assert again.reused_prefix_tokens == 0 and again.timings.restored_tokens == 0


def test_a_restored_prompt_keeps_its_record_of_moved_keys(engine):
    """A prompt whose cache reuse moved runs is saved with where its approximate K/V begin: restored, a request
    without cache reuse still reuses only what lies before them."""
    fim, chat = prompts(engine, seed=2)
    kept, dropped, run = fim[:20], fim[20:29], fim[29:]
    engine.keep_prompts(64)
    try:
        engine.clear_prefix_cache()
        engine.generate(kept + dropped + run, GenerationConfig(max_new_tokens=1))
        moved = engine.generate(kept + run + [7, 8], GenerationConfig(max_new_tokens=1, cache_reuse=8))
        assert moved.timings.moved_tokens == len(run)
        engine.generate(chat, PROBE)
        exact_only = engine.generate(kept + run + [7, 8], PROBE)
        assert exact_only.timings.restored_tokens > 0 and exact_only.reused_prefix_tokens == len(kept)
    finally:
        engine.keep_prompts(0)


def exact_then_moved_over_it(engine, seed):
    """Saves a prompt `exact` (exact K/V), then one holding it whole whose cache reuse moved runs inside it (its
    K/V approximate from token 40); returns `exact` and the other saved prompt."""
    rng = random.Random(seed)
    part = lambda n: [rng.randrange(3, engine.model.config.vocab_size) for _ in range(n)]   # noqa: E731
    kept, dropped, run, tail, other, unrelated = part(40), part(5), part(20), part(110), part(30), part(30)
    exact = kept + run + tail      # (so long that its 40 tokens shared with `kept + dropped + run` are under a quarter)
    one = GenerationConfig(max_new_tokens=1)
    engine.clear_prefix_cache()
    engine.generate(exact, one)
    engine.generate(other, one)                                   # `exact` saved
    engine.generate(kept + dropped + run, one)                    # `other` saved; `exact` would keep too little
    moved = engine.generate(exact + [7, 8], dataclasses.replace(one, cache_reuse=8))
    assert moved.timings.moved_tokens == len(run) and moved.timings.restored_tokens == 0
    engine.generate(unrelated, one)                               # saves the moved one, holding `exact` whole
    return exact, other


def test_an_exact_saved_prompt_outlives_an_approximate_one_that_holds_it(engine):
    """Saving a prompt whose K/V are approximate from inside an exact saved one it holds keeps the exact one, and a
    request without cache reuse takes that back, reusing all of it instead of the other's exact prefix alone; the
    answer is a cold prefill's."""
    engine.keep_prompts(64)
    try:
        exact, other = exact_then_moved_over_it(engine, seed=8)
        assert [(s.tokens, s.approximate_from) for s in engine.prompt_store.saved] == [
            (exact, None), (other, None), (exact + [7, 8], 40)]
        back = engine.generate(exact + [9], PROBE)
        assert back.timings.restored_tokens == len(exact) and back.reused_prefix_tokens == len(exact)
        engine.clear_prefix_cache()
        assert back.token_ids == engine.generate(exact + [9], PROBE).token_ids
    finally:
        engine.keep_prompts(0)


def test_an_approximate_saved_prompt_does_not_stand_in_for_an_exact_cached_one_it_holds(engine):
    """The cached prompt is saved even where a saved one holds its tokens whole, if that one's K/V are approximate
    where the cached one's are exact: a request without cache reuse takes the exact one back."""
    engine.keep_prompts(64)
    try:
        exact, other = exact_then_moved_over_it(engine, seed=9)
        engine.generate(exact + [9], PROBE)                         # `exact` taken back
        engine.generate(exact, GenerationConfig(max_new_tokens=1))  # the row holds `exact` alone, exact
        engine.generate(other + [5], PROBE)                         # saves it (then takes `other` back)
        saved = [(s.tokens, s.approximate_from) for s in engine.prompt_store.saved]
        assert saved[-1] == (exact, None) and (exact + [7, 8], 40) in saved
        back = engine.generate(exact + [9], PROBE)
        assert back.timings.restored_tokens == len(exact) and back.reused_prefix_tokens == len(exact)
    finally:
        engine.keep_prompts(0)


def test_clearing_the_prefix_cache_forgets_the_saved_prompts(engine):
    fim, chat = prompts(engine, seed=3)
    engine.keep_prompts(64)
    try:
        engine.generate(fim, PROBE)
        engine.generate(chat, PROBE)
        engine.clear_prefix_cache()
        assert engine.generate(fim, PROBE).reused_prefix_tokens == 0
    finally:
        engine.keep_prompts(0)


def cached_bytes(engine, tokens: int) -> int:
    return tokens * sum(layer.attention.kv_cache.bytes_per_token() for layer in engine.model.layers)


def three_prompts(engine, seed):
    rng = random.Random(seed)
    return [[rng.randrange(3, engine.model.config.vocab_size) for _ in range(50)] for _ in range(3)]


def test_the_saved_prompt_a_request_takes_back_is_not_dropped_to_make_room_for_the_cached_one(engine):
    """llama.cpp saves the cached prompt, takes the best saved one back (out of the store), and only then drops the
    oldest past the limit: with room for two prompts, the oldest may be the one the request wants back."""
    a, b, c = three_prompts(engine, seed=6)
    engine.keep_prompts(64)
    try:
        engine.prompt_store.limit_bytes = cached_bytes(engine, 110)    # two saved prompts of 53 tokens, not three
        engine.clear_prefix_cache()
        for prompt in (a, b, c):
            engine.generate(prompt, PROBE)
        assert [s.tokens[:50] for s in engine.prompt_store.saved] == [a, b]
        back = engine.generate(a + [5], PROBE)
        assert back.timings.restored_tokens == 53 and back.reused_prefix_tokens == 50
        assert [s.tokens[:50] for s in engine.prompt_store.saved] == [b, c]
    finally:
        engine.keep_prompts(0)


@pytest.mark.parametrize("limit", [-2, -100])
def test_a_limit_below_minus_one_is_refused(engine, limit):
    with pytest.raises(ValueError, match="-1"):
        engine.keep_prompts(limit)


def test_a_batch_neither_saves_nor_restores(engine):
    fim, chat = prompts(engine, seed=4)
    engine.keep_prompts(64)
    try:
        engine.clear_prefix_cache()
        engine.generate(fim, PROBE)
        results = engine.generate_batch([chat, fim], dataclasses.replace(PROBE, max_new_tokens=2))
        assert all(r.timings.restored_tokens == 0 for r in results) and engine.prompt_store.saved == []
    finally:
        engine.keep_prompts(0)


class FakeGpu:
    type = "cuda"


def test_on_a_gpu_the_limit_is_at_most_the_whole_gib_free_beside_the_headroom(engine, monkeypatch):
    from models.engine import SAVED_PROMPT_HEADROOM
    free = SAVED_PROMPT_HEADROOM + (10 << 30) + (300 << 20)
    monkeypatch.setattr(engine, "_device", FakeGpu())
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free, 2 * free))
    try:
        engine.keep_prompts(-1)
        assert engine.prompt_store.limit_bytes == 10 << 30
        engine.keep_prompts(8192)
        assert engine.prompt_store.limit_bytes == 8 << 30
        free = 100 << 20
        engine.keep_prompts(8192)
        assert engine.prompt_store.limit_bytes == 0
    finally:
        engine.keep_prompts(0)


def test_on_tensor_parallel_gpus_every_rank_takes_the_least_room_of_them(engine, monkeypatch):
    """Each rank decides alone which prompts to keep and restore: ranks with different limits (one GPU with a GiB
    less free) would drop different prompts, restore on one rank only, and prefill different spans in lockstep."""
    from models.engine import SAVED_PROMPT_HEADROOM
    from models.fused_decode import RankCollectives
    gathered = []

    def gather(local):                       # (1, 1) here -> (1, 2): this rank's and another's with 3 GiB less
        gathered.append(local.clone())
        return torch.cat([local, local - 3], dim=-1)

    monkeypatch.setattr(engine, "_device", FakeGpu())
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (SAVED_PROMPT_HEADROOM + (10 << 30), 1 << 40))
    monkeypatch.setattr(engine.model, "rank_collectives", RankCollectives(lambda x: x, gather))
    try:
        engine.keep_prompts(-1)
        assert gathered and engine.prompt_store.limit_bytes == 7 << 30
        engine.keep_prompts(8192)
        assert engine.prompt_store.limit_bytes == 7 << 30
    finally:
        engine.keep_prompts(0)


def test_on_a_gpu_a_prompt_larger_than_the_limit_is_not_saved(engine, monkeypatch):
    """(On a CPU llama.cpp's rule keeps it all the same: the newest always stays.)"""
    fim, chat = prompts(engine, seed=5)
    engine.keep_prompts(1)
    try:
        engine.prompt_store.limit_bytes = 10
        engine.clear_prefix_cache()
        engine.generate(fim, PROBE)
        monkeypatch.setattr(engine, "_device", FakeGpu())
        assert engine._switch_prompt(fim, chat) == (fim, 0) and engine.prompt_store.saved == []
        monkeypatch.undo()
        engine.generate(chat, PROBE)
        assert [s.tokens[:len(fim)] for s in engine.prompt_store.saved] == [fim]
    finally:
        engine.keep_prompts(0)


def test_on_a_gpu_the_copy_is_made_once_there_is_room_for_it_beside_the_prompt_taken_back(engine, monkeypatch):
    """The limit is what the GPU has room for: the cached prompt's copy, the saved ones and the one taken back (alive
    until restored) stay within it together; the oldest go first."""
    a, b, c = three_prompts(engine, seed=7)
    engine.keep_prompts(64)
    try:
        limit = engine.prompt_store.limit_bytes = cached_bytes(engine, 110)
        engine.clear_prefix_cache()
        for prompt in (a, b, c):
            engine.generate(prompt, PROBE)
        stored_at_copy, copy = [], KVCache.saved

        def recorded(cache, row, length, device="cpu"):
            stored_at_copy.append(engine.prompt_store.nbytes)
            return copy(cache, row, length, device)

        monkeypatch.setattr(engine, "_device", FakeGpu())
        monkeypatch.setattr(engine, "_saved_prompt_place", lambda: torch.device("cpu"))
        monkeypatch.setattr(KVCache, "saved", recorded)
        tokens, restored = engine._switch_prompt(engine._cached_ids, a + [5])
        assert tokens[:50] == a and restored == 53
        assert stored_at_copy and max(stored_at_copy) + 2 * cached_bytes(engine, 53) <= limit
        assert [s.tokens[:50] for s in engine.prompt_store.saved] == [c]
    finally:
        engine.keep_prompts(0)
        engine.clear_prefix_cache()

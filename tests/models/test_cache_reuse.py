"""llama.cpp's cache reuse (models/cache_reuse.py): the walk that finds the runs to move, the move of one run in a
cache (keys re-rotated, against a float64 reference), and the engine: exact in a one-layer model, where a key depends
on its token and position alone, and counted right in any."""

import dataclasses
import random

import pytest
import torch

from models import GenerationConfig, load_model
from models.cache_reuse import Move, apply_moves, common_run, reusable_runs, reused_end
from models.kv_cache import KVCache
from models.llama import apply_rotary
from tiny_models import save_tiny_llama

# ---- the walk -------------------------------------------------------------------------------------------------


def test_a_run_after_dropped_tokens_moves_back_to_where_the_prompt_has_it():
    kept, dropped, run = [1, 2, 3], [50, 51], [7, 8, 9, 10]
    cached, prompt = kept + dropped + run + [11], kept + run + [99]
    assert reusable_runs(cached, prompt, 3, min_run=4) == [Move(source=5, target=3, length=4)]
    assert reused_end(3, reusable_runs(cached, prompt, 3, min_run=4)) == 7
    assert reusable_runs(cached, prompt, 3, min_run=5) == []        # shorter than asked: prefilled
    assert reusable_runs(cached, prompt, 3, min_run=0) == []        # off


def test_the_walk_stops_at_a_token_the_cache_lacks_and_never_moves_a_run_right():
    cached = [1, 2, 3, 40, 41, 42, 43, 44]
    inserted = [1, 2, 3, 77, 40, 41, 42, 43, 44, 5]      # a token typed before the run: the run would move right
    assert reusable_runs(cached, inserted, 3, min_run=2) == []


def llama_cpp_n_past(cached: list[int], prompt: list[int], n_cache_reuse: int) -> int:
    """How many prompt tokens llama.cpp's server (tools/server, cache_prompt on) keeps in the slot's cache: the
    common prefix, the runs its walk shifts into place, less one where that is the whole prompt (whose last token
    it evaluates again, for its logits). Its loop, as written there."""
    n_past = next((i for i, (a, b) in enumerate(zip(cached, prompt)) if a != b), min(len(cached), len(prompt)))
    head_c = head_p = n_past
    while head_c < len(cached) and head_p < len(prompt):
        n_match = 0
        while (head_c + n_match < len(cached) and head_p + n_match < len(prompt)
               and cached[head_c + n_match] == prompt[head_p + n_match]):
            n_match += 1
        if n_match >= n_cache_reuse:
            n_past += n_match
            head_c += n_match
            head_p += n_match
        else:
            head_c += 1
    return n_past - 1 if n_past == len(prompt) and n_past > 0 else n_past


def test_a_run_that_reaches_the_prompts_last_token_counts_it_as_llama_cpp_does():
    """A run of N tokens that ends the prompt is a run of N (llama.cpp moves it, then evaluates its last token
    again): its tokens but the last are moved, not the whole run prefilled for being one short."""
    cached, prompt = [1, 2, 9, 5, 6, 7, 8], [1, 2, 5, 6, 7]
    assert reusable_runs(cached, prompt, 2, min_run=3) == [Move(3, 2, 2)]
    assert reused_end(2, reusable_runs(cached, prompt, 2, min_run=3)) == 4 == llama_cpp_n_past(cached, prompt, 3)
    assert reusable_runs([1, 2, 9, 5], [1, 2, 5], 2, min_run=1) == []     # one token, the last: nothing to move


def test_several_runs_land_one_after_another_and_the_prompts_last_token_is_left_to_prefill():
    cached = [1, 2, 60, 10, 11, 12, 61, 62, 20, 21, 22, 23]
    prompt = [1, 2, 10, 11, 12, 20, 21, 22, 23]
    moves = reusable_runs(cached, prompt, 2, min_run=3)
    # the second run stops before the prompt's last token (23): its logits come from a prefill
    assert moves == [Move(3, 2, 3), Move(8, 5, 3)] and reused_end(2, moves) == 8 == len(prompt) - 1


@pytest.mark.parametrize("seed", range(200))
def test_after_the_moves_the_row_holds_the_prompts_first_tokens(seed):
    """Random edits of a cached sequence (runs dropped, tokens typed, a changed end): the moves, done on a list
    standing for the row, leave exactly the prompt's first `reused_end` tokens in its first slots."""
    rng = random.Random(seed)
    cached = [rng.randrange(6) for _ in range(rng.randrange(1, 60))]
    prompt = list(cached)
    for _ in range(rng.randrange(1, 4)):
        at = rng.randrange(len(prompt) + 1)
        if rng.random() < 0.6:
            del prompt[at:at + rng.randrange(1, 8)]
        else:
            prompt[at:at] = [rng.randrange(6) for _ in range(rng.randrange(1, 4))]
    prompt = prompt or [0]
    start = next((i for i, (a, b) in enumerate(zip(cached, prompt)) if a != b), min(len(cached), len(prompt)))
    start = min(start, len(prompt) - 1)
    min_run = rng.randrange(1, 5)
    moves = reusable_runs(cached, prompt, start, min_run)
    row = list(cached)
    end = reused_end(start, moves)
    assert end == llama_cpp_n_past(cached, prompt, min_run)
    for move in moves:
        # (a run that reached the prompt's last token lost it: that one is prefilled)
        assert move.target <= move.source and move.length >= min_run - (move == moves[-1] and end == len(prompt) - 1)
        assert move.target == (moves[moves.index(move) - 1].target + moves[moves.index(move) - 1].length
                               if moves.index(move) else start)
        row[move.target:move.target + move.length] = row[move.source:move.source + move.length]
    assert end <= len(prompt) - 1 or end == start
    assert row[:end] == prompt[:end]


def llama_cpp_moves(cached: list[int], prompt: list[int], start: int, min_run: int) -> list[Move]:
    """llama.cpp's walk as it steps, a token at a time, recording each run it shifts (before the last token's trim)."""
    moves, head_c, head_p = [], start, start
    while head_c < len(cached) and head_p < len(prompt):
        n = 0
        while head_c + n < len(cached) and head_p + n < len(prompt) and cached[head_c + n] == prompt[head_p + n]:
            n += 1
        if n >= min_run:
            moves.append(Move(head_c, head_p, n))
            head_c, head_p = head_c + n, head_p + n
        else:
            head_c += 1
    return moves


# token ids whose int32 bytes repeat across token boundaries (256 is 00 01 00 00): the search must not match there
AWKWARD_IDS = [0, 1, 256, 257, 65536, 65792, 16777216, 49151]


@pytest.mark.parametrize("seed", range(300))
def test_the_runs_found_by_searching_are_those_llama_cpps_step_by_step_walk_finds(seed):
    rng = random.Random(seed)
    ids = rng.choice([AWKWARD_IDS, [7, 8], list(range(3))])
    cached = [rng.choice(ids) for _ in range(rng.randrange(1, 120))]
    prompt = list(cached)
    for _ in range(rng.randrange(1, 5)):
        at = rng.randrange(len(prompt) + 1)
        if rng.random() < 0.6:
            del prompt[at:at + rng.randrange(1, 20)]
        else:
            prompt[at:at] = [rng.choice(ids) for _ in range(rng.randrange(1, 6))]
    prompt = prompt or [ids[0]]
    start = min(common_run(cached, 0, prompt, 0, len(prompt)), len(prompt) - 1)
    min_run = rng.randrange(1, 12)
    expected = llama_cpp_moves(cached, prompt, start, min_run)
    if expected and expected[-1].target + expected[-1].length == len(prompt):
        last = expected.pop()
        expected += [last._replace(length=last.length - 1)] if last.length > 1 else []
    assert reusable_runs(cached, prompt, start, min_run) == expected


def test_a_cache_of_one_repeated_token_is_walked_as_llama_cpp_walks_it():
    """Every cached place matches the prompt's run of 7s for 200 tokens, never for 256: nothing moves. (Stepping
    through it as llama.cpp does compared 6.5 million tokens in Python; the search finds no 256 7s once.)"""
    cached, prompt = [5] + [7] * 20_000, [5] + [7] * 200 + [8]
    assert reusable_runs(cached, prompt, 1, 256) == [] == llama_cpp_moves(cached[:600], prompt, 1, 256)
    cached[1] = 3
    assert reusable_runs(cached, [5] + [7] * 300 + [9], 1, 256) == [Move(2, 1, 300)]


@pytest.mark.parametrize("seed", range(100))
def test_the_common_run_of_two_sequences_is_counted_to_its_first_difference(seed):
    rng = random.Random(seed)
    a = [rng.randrange(3) for _ in range(rng.randrange(0, 700))]
    b = a[:rng.randrange(0, len(a) + 1)] + [rng.randrange(3) for _ in range(rng.randrange(0, 50))]
    i = rng.randrange(0, 5)
    j = i if rng.random() < 0.5 else rng.randrange(0, 5)
    limit = rng.choice([len(b), rng.randrange(0, 800), -1])
    n = 0
    while n < limit and i + n < len(a) and j + n < len(b) and a[i + n] == b[j + n]:
        n += 1
    assert common_run(a, i, b, j, limit) == n


# ---- one run in one cache -------------------------------------------------------------------------------------


def rope_table(S: int, D: int, theta: float = 10000.0):
    """cos, sin (S, D) float32 in the model's rotate-half layout, and the float64 angles (S, D)."""
    inv = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    angles = torch.outer(torch.arange(S, dtype=torch.float64), inv)
    angles = torch.cat((angles, angles), dim=-1)                                      # (S, D)
    return angles.cos().float(), angles.sin().float(), angles


def rotated64(keys: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Pre-RoPE keys (1, H, n, D) float64 rotated by angles (n, D) float64."""
    x1, x2 = keys.chunk(2, dim=-1)
    return keys * angles.cos() + torch.cat((-x2, x1), dim=-1) * angles.sin()


@pytest.mark.parametrize("store", ["float32", "bfloat16", "int8", "fp8"])
@pytest.mark.parametrize("source, target, length", [(40, 10, 20), (25, 17, 20), (63, 0, 1)])
def test_a_moved_run_holds_the_keys_a_prefill_would_write_at_its_new_place(store, source, target, length):
    """Keys written at positions source.. (rotated there), moved to target..: they match the float64 rotation of
    the same pre-RoPE keys at target.. within the storage's rounding; values and scales are the source's, as
    stored; every slot before the target keeps what it held (overlapping ranges included)."""
    torch.manual_seed(source * 7 + length)
    B, H, S, D = 2, 3, 64, 16
    quant = store if store in ("int8", "fp8") else None
    dtype = torch.float32 if quant else getattr(torch, store)
    cache = KVCache(B, H, S, D, dtype, "cpu", quant=quant)
    cos, sin, angles = rope_table(S, D)
    pre = torch.randn(B, H, S, D, dtype=torch.float64) * 2                            # pre-RoPE keys, fresh
    keys = rotated64(pre, angles)                                                      # each at its own slot
    values = torch.randn(B, H, S, D)
    cache.write(1, 0, keys[1:].float().to(dtype), values[1:].to(dtype))
    cache.write(0, 0, keys[:1].float().to(dtype), values[:1].to(dtype))
    before = [t.clone() for t in (cache.k, cache.v, cache.k_scale, cache.v_scale) if t is not None]

    from models.cache_reuse import rotation
    move = Move(source, target, length)
    cache.move(1, source, target, length, rotation(cos, sin, move))

    old, new = slice(source, source + length), slice(target, target + length)
    expected = rotated64(pre[1:, :, old], angles[new])                                 # (1, H, n, D)
    if quant:
        from kernels.reference import dequantize, quantize
        got = dequantize(cache.k[1:, :, new], cache.k_scale[1:, :, new], torch.float64)
        # Two roundings: the stored keys' (an element's error turned with its rotate-half partner: at most the pair's
        # error's length) and the new ones'. int8 rounds to half a scale step, e4m3 to 2^-4 of the value (2^-10 of
        # the scale below its normal range, e4m3's subnormal step 2^-9).
        s_old = before[2][1:, :, old, None].double()
        s_new = cache.k_scale[1:, :, new, None].double()
        if quant == "int8":
            bound = s_old * 0.5 * 2 ** 0.5 + s_new * 0.5
        else:
            pair = (expected[..., :D // 2] ** 2 + expected[..., D // 2:] ** 2).sqrt()
            bound = 2 ** -4 * (torch.cat((pair, pair), -1) + expected.abs()) + (s_old + s_new) * 2 ** -10 * 2
        assert ((got - expected).abs() <= bound * 1.001 + 1e-12).all()
        assert (got - expected).abs().max() > 0        # (rounded: the bound is what is tested)
        assert torch.equal(cache.v_scale[1:, :, new], before[3][1:, :, old])
    else:
        got = cache.k[1:, :, new].double()
        eps = torch.finfo(dtype).eps
        assert (got - expected).abs().max() <= 4 * eps * expected.abs().max()
    assert torch.equal(cache.v[1:, :, new], before[1][1:, :, old])
    assert torch.equal(cache.k[0], before[0][0]) and torch.equal(cache.v[0], before[1][0])   # other row untouched
    assert torch.equal(cache.k[1:, :, :target], before[0][1:, :, :target])


def test_moves_refuse_keys_of_dynamic_rope():
    model = type("M", (), {"config": type("C", (), {"dynamic_rope": True})()})()
    with pytest.raises(ValueError, match="dynamic RoPE"):
        apply_moves(model, 0, [Move(5, 2, 3)])

# ---- the engine -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_layer(tmp_path_factory, llama_tokenizer):
    """An engine over a one-layer checkpoint: each token's K and V depend on the token and its position alone, so a
    moved run is exactly what a prefill would write (up to rounding)."""
    directory = tmp_path_factory.mktemp("one-layer")
    save_tiny_llama(directory, llama_tokenizer, n_kv_heads=2, num_hidden_layers=1, max_position_embeddings=256)
    return load_model(str(directory), device="cpu")


@pytest.fixture(scope="module")
def two_layers(tmp_path_factory, llama_tokenizer):
    directory = tmp_path_factory.mktemp("two-layers")
    save_tiny_llama(directory, llama_tokenizer, n_kv_heads=2, max_position_embeddings=256)
    return load_model(str(directory), device="cpu")


def sequences(engine, seed=0):
    rng = random.Random(seed)
    vocab = engine.model.config.vocab_size
    part = lambda n: [rng.randrange(3, vocab) for _ in range(n)]    # noqa: E731 (ids past BOS/EOS)
    end = part(5)
    new_end = [token + 1 if token + 1 < vocab else 3 for token in end[:2]]     # differs from the cached end at once
    return part(20), part(9), part(30), end, new_end     # kept prefix, dropped tokens, the run, old and new ends


PROBE = GenerationConfig(max_new_tokens=4, logprobs=8)


def test_a_run_moved_in_a_one_layer_model_gives_a_fresh_prefills_probabilities(one_layer):
    kept, dropped, run, end, new_end = sequences(one_layer)
    one_layer.clear_prefix_cache()
    one_layer.generate(kept + dropped + run + end, GenerationConfig(max_new_tokens=1))
    prompt = kept + run + new_end
    warm = one_layer.generate(prompt, dataclasses.replace(PROBE, cache_reuse=16))
    assert warm.reused_prefix_tokens == len(kept) + len(run) and warm.timings.moved_tokens == len(run)
    one_layer.clear_prefix_cache()
    cold = one_layer.generate(prompt, PROBE)
    assert cold.reused_prefix_tokens == 0 and warm.token_ids == cold.token_ids
    for a, b in zip(warm.logprobs, cold.logprobs):
        assert [t for t, _ in a.top] == [t for t, _ in b.top]
        assert max(abs(x - y) for (_, x), (_, y) in zip(a.top, b.top)) < 1e-4


def test_without_cache_reuse_the_same_prompts_reuse_the_prefix_only(one_layer):
    kept, dropped, run, end, new_end = sequences(one_layer, seed=1)
    one_layer.clear_prefix_cache()
    one_layer.generate(kept + dropped + run + end, GenerationConfig(max_new_tokens=1))
    warm = one_layer.generate(kept + run + new_end, PROBE)
    assert warm.reused_prefix_tokens == len(kept) and warm.timings.moved_tokens == 0


def test_a_run_shorter_than_asked_is_prefilled(one_layer):
    kept, dropped, run, end, new_end = sequences(one_layer, seed=2)
    one_layer.clear_prefix_cache()
    one_layer.generate(kept + dropped + run + end, GenerationConfig(max_new_tokens=1))
    warm = one_layer.generate(kept + run + new_end, dataclasses.replace(PROBE, cache_reuse=len(run) + 3))
    assert warm.reused_prefix_tokens == len(kept) and warm.timings.moved_tokens == 0


def test_in_a_deeper_model_the_moved_run_is_reused_and_the_next_request_builds_on_it(two_layers):
    """Beyond the first layer a moved run's K/V saw the dropped tokens: only approximately a prefill's. What is
    exact: the counts, and that the cache then holds the prompt and the answer (the next request that asks for
    cache reuse too reuses both)."""
    kept, dropped, run, end, new_end = sequences(two_layers, seed=3)
    two_layers.clear_prefix_cache()
    two_layers.generate(kept + dropped + run + end, GenerationConfig(max_new_tokens=1))
    prompt = kept + run + new_end
    warm = two_layers.generate(prompt, dataclasses.replace(PROBE, cache_reuse=8))
    assert warm.reused_prefix_tokens == len(kept) + len(run) and warm.timings.moved_tokens == len(run)
    follow = two_layers.generate(prompt + warm.token_ids + end[2:], GenerationConfig(max_new_tokens=1, cache_reuse=8))
    assert follow.reused_prefix_tokens == len(prompt) + len(warm.token_ids) - 1


def test_cache_reuse_must_not_be_negative():
    with pytest.raises(ValueError, match="cache_reuse"):
        GenerationConfig(cache_reuse=-1)


def test_the_rotation_undoes_the_old_position_and_applies_the_new_one():
    """The rotation helper on its own: keys rotated at 30.. and turned to 3.. equal keys rotated at 3.. directly."""
    from models.cache_reuse import rotation
    torch.manual_seed(5)
    cos, sin, _ = rope_table(64, 8)
    pre = torch.randn(1, 2, 10, 8)
    at_30 = apply_rotary(pre, cos[None, 30:40], sin[None, 30:40])
    turned = rotation(cos, sin, Move(30, 3, 10))(at_30)
    assert torch.allclose(turned, apply_rotary(pre, cos[None, 3:13], sin[None, 3:13]), atol=1e-5)
    assert not torch.allclose(at_30, apply_rotary(pre, cos[None, 3:13], sin[None, 3:13]), atol=1e-2)


def test_a_request_without_cache_reuse_does_not_build_on_moved_keys_and_values(two_layers):
    """Moved K/V beyond the first layer are approximate, and so is what a prefill after them computed: a later
    request that did not ask for cache reuse (cache_prompt false, the command line's requests) reuses only the
    exact part of the row, the prefix before the first moved slot, and gets a fresh prefill's numbers."""
    kept, dropped, run, end, new_end = sequences(two_layers, seed=4)
    two_layers.clear_prefix_cache()
    two_layers.generate(kept + dropped + run + end, GenerationConfig(max_new_tokens=1))
    moved = two_layers.generate(kept + run + new_end, dataclasses.replace(PROBE, cache_reuse=8))
    assert moved.timings.moved_tokens == len(run)
    prompt = kept + run + new_end + moved.token_ids + end[:1]     # goes on from the moved request's row
    exact = two_layers.generate(prompt, PROBE)
    two_layers.clear_prefix_cache()
    cold = two_layers.generate(prompt, PROBE)
    assert exact.reused_prefix_tokens == len(kept) and exact.timings.moved_tokens == 0
    for a, b in zip(exact.logprobs, cold.logprobs):
        assert max(abs(x - y) for (_, x), (_, y) in zip(a.top, b.top)) < 1e-5
    # and then the row is exact again: the same prompt reuses all of it but its last token
    again = two_layers.generate(prompt, PROBE)
    assert again.reused_prefix_tokens == len(prompt) - 1


def test_a_request_stopped_in_its_prefill_after_a_move_counts_the_moved_run_and_leaves_it_in_place(one_layer):
    kept, dropped, run, end, new_end = sequences(one_layer, seed=5)
    one_layer.clear_prefix_cache()
    one_layer.generate(kept + dropped + run + end, GenerationConfig(max_new_tokens=1))
    prompt, reuse = kept + run + new_end, dataclasses.replace(PROBE, cache_reuse=16)
    stopped = one_layer.generate(prompt, reuse, should_stop=lambda: True)      # before the prefill's first layer
    assert stopped.finish_reason == "cancelled" and stopped.token_ids == []
    assert stopped.reused_prefix_tokens == len(kept) + len(run) and stopped.timings.moved_tokens == len(run)
    again = one_layer.generate(prompt, reuse)          # the row holds the moved run: nothing to move this time
    assert again.reused_prefix_tokens == len(kept) + len(run) and again.timings.moved_tokens == 0
    one_layer.clear_prefix_cache()
    cold = one_layer.generate(prompt, PROBE)
    assert again.token_ids == cold.token_ids
    for a, b in zip(again.logprobs, cold.logprobs):
        assert max(abs(x - y) for (_, x), (_, y) in zip(a.top, b.top)) < 1e-4


def test_a_long_run_moves_in_pieces_that_never_overwrite_keys_still_to_move():
    """A run longer than a piece, moved back by less than its length (source and target overlap): done piece by
    piece, first to last, on a list standing for the row, it is the run moved whole."""
    from models.cache_reuse import chunks
    for source, target, length, size in [(10, 3, 50, 8), (100, 0, 37, 37), (5, 4, 20, 3), (9, 1, 1, 4)]:
        row = list(range(200))
        pieces = chunks(Move(source, target, length), size)
        assert sum(p.length for p in pieces) == length and all(p.length <= size for p in pieces)
        for p in pieces:
            row[p.target:p.target + p.length] = row[p.source:p.source + p.length]
        assert row[target:target + length] == list(range(source, source + length))


def test_a_moved_run_longer_than_a_piece_is_what_a_prefill_writes(one_layer, monkeypatch):
    """The engine's moves go piece by piece: with pieces of 7 tokens, the one-layer model still gives a fresh
    prefill's probabilities."""
    import models.cache_reuse
    monkeypatch.setattr(models.cache_reuse, "CHUNK", 7)
    kept, dropped, run, end, new_end = sequences(one_layer, seed=4)
    one_layer.clear_prefix_cache()
    one_layer.generate(kept + dropped + run + end, GenerationConfig(max_new_tokens=1))
    prompt = kept + run + new_end
    warm = one_layer.generate(prompt, dataclasses.replace(PROBE, cache_reuse=16))
    assert warm.timings.moved_tokens == len(run)
    one_layer.clear_prefix_cache()
    cold = one_layer.generate(prompt, PROBE)
    for a, b in zip(warm.logprobs, cold.logprobs):
        assert max(abs(x - y) for (_, x), (_, y) in zip(a.top, b.top)) < 1e-4

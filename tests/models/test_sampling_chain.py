"""The sampler chain (models/sampling.py, models/infill.py) against float64 references of each rule, written apart from
the code under test: min-p as vLLM and Ollama state it (p >= min_p * p_max on probabilities), the penalties at their
place in the list, and llama.cpp's infill sampler as its pairwise loop reads."""
import itertools
import random
from types import SimpleNamespace

import pytest
import torch

from models.generation import SAMPLERS, GenerationConfig
from models.infill import InfillSampler
from models.penalties import Penalties
from models.sampling import bias_vector, chain, probabilities, sample
from models.speculative import accept

NEG_INF = float("-inf")


def reference(logits: torch.Tensor, config: GenerationConfig, penalize=None) -> torch.Tensor:
    """Probabilities (B, V) float64: each sampler of config.sampler_order on float64 logits, one row at a time. Ranks
    are by falling logit, the lower id first among ties; top-k keeps the ties at its k-th or exactly k
    (`top_k_ties`); top-p stops once the mass kept reaches top_p (llama.cpp, vLLM) or exceeds it (`top_p_strict`,
    Ollama); top-p and min-p keep the `min_keep` first ranks whatever their rule says (llama.cpp)."""
    out = []
    for row in logits.double():
        for name in config.sampler_order:
            ranked = sorted(range(len(row)), key=lambda i: (-row[i].item(), i))
            first = set(ranked[:config.min_keep])
            if name == "temperature":
                row = row / config.temperature
            elif name == "penalties" and penalize is not None:
                row = penalize(row[None])[0]
            elif name == "min_p" and config.min_p > 0:
                p = torch.softmax(row, 0)
                keep = (p >= config.min_p * p.max()).tolist()
                row = torch.tensor([v if keep[i] or i in first else NEG_INF for i, v in enumerate(row.tolist())],
                                   dtype=torch.float64)
            elif name == "top_k" and config.top_k > 0:
                kth = row[ranked[min(config.top_k, len(row)) - 1]].item()
                keep = ({i for i in range(len(row)) if row[i] >= kth} if config.top_k_ties
                        else set(ranked[:config.top_k]))
                row = torch.tensor([v if i in keep else NEG_INF for i, v in enumerate(row.tolist())],
                                   dtype=torch.float64)
            elif name == "top_p" and config.top_p < 1:
                p = torch.softmax(row, 0).tolist()
                keep, mass = set(), 0.0
                for i in ranked:
                    done = mass > config.top_p if config.top_p_strict else mass >= config.top_p
                    if keep and done and i not in first:
                        break
                    keep.add(i)
                    mass += p[i]
                row = torch.tensor([v if i in keep else NEG_INF for i, v in enumerate(row.tolist())],
                                   dtype=torch.float64)
        out.append(torch.softmax(row, 0))
    return torch.stack(out)


ORDERS = [SAMPLERS, ("penalties", "top_k", "top_p", "min_p", "temperature"),      # vLLM's; llama.cpp's default
          ("penalties", "top_k", "temperature", "top_p", "min_p"),                  # Ollama's
          ("min_p", "top_p", "temperature", "top_k", "penalties")]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("min_p", [0.0, 0.01, 0.2, 0.7, 1.0])
@pytest.mark.parametrize("temperature", [0.4, 1.0, 2.5])
def test_min_p_in_the_chain_matches_a_float64_reference(order, min_p, temperature):
    generator = torch.Generator().manual_seed(hash((order, min_p, temperature)) % 2**31)
    logits = torch.randn(4, 300, generator=generator) * 3                                   # fresh each case
    for config in (GenerationConfig(temperature=temperature, min_p=min_p, sampler_order=order),
                   GenerationConfig(temperature=temperature, min_p=min_p, top_k=50, top_p=0.9, sampler_order=order),
                   GenerationConfig(temperature=temperature, min_p=min_p, top_k=50, top_p=0.3, sampler_order=order,
                                    top_k_ties=False, top_p_strict=True, min_keep=3)):
        got = probabilities(logits, config).double()
        torch.testing.assert_close(got, reference(logits, config), rtol=1e-5, atol=1e-7)


def test_min_p_0_changes_nothing_and_1_keeps_only_the_likeliest():
    logits = torch.randn(3, 200, generator=torch.Generator().manual_seed(3))
    plain = probabilities(logits, GenerationConfig(temperature=0.7))
    assert torch.equal(probabilities(logits, GenerationConfig(temperature=0.7, min_p=0.0)), plain)
    top = probabilities(logits, GenerationConfig(temperature=0.7, min_p=1.0))
    assert torch.equal(top, torch.nn.functional.one_hot(logits.argmax(-1), 200).float())
    tied = torch.tensor([[2.0, 5.0, 5.0, 1.0]])                 # the tokens tied with the largest all stay
    torch.testing.assert_close(probabilities(tied, GenerationConfig(temperature=1.0, min_p=1.0)),
                               torch.tensor([[0.0, 0.5, 0.5, 0.0]]))


@pytest.mark.parametrize("min_p", [0.0, 0.5, 1.0])
def test_all_equal_logits_stay_uniform(min_p):
    """min-p and top-k (ties stay, as vLLM keeps them) keep every token; top-p keeps some, all equally likely: the 32
    first (their 1/64 each reach 0.5: llama.cpp's and vLLM's rule), 33 where the mass must exceed it (Ollama's)."""
    logits = torch.full((2, 64), 3.25)
    got = probabilities(logits, GenerationConfig(temperature=0.8, min_p=min_p, top_k=10))
    torch.testing.assert_close(got, torch.full((2, 64), 1 / 64))
    for strict, n in ((False, 32), (True, 33)):
        nucleus = probabilities(logits, GenerationConfig(temperature=0.8, min_p=min_p, top_p=0.5, top_p_strict=strict))
        assert not nucleus.isnan().any() and (nucleus[:, :n] > 0).all() and (nucleus[:, n:] == 0).all()
        torch.testing.assert_close(nucleus[:, :n], torch.full((2, n), 1 / n))


def test_top_k_keeps_its_ties_or_exactly_k_the_lower_ids_first():
    """vLLM keeps every token tied with the k-th; llama.cpp's partial sort and Ollama's heap keep exactly k, the
    earlier ids among ties (top_k_ties=False). Either way the same tokens every run, on every device."""
    logits = torch.tensor([[1.0, 3.0, 5.0, 3.0, 3.0, NEG_INF], [2.0] * 6, [NEG_INF, 1.0, NEG_INF, 2.0, 0.5, NEG_INF]])

    def kept(**options):
        return [torch.nonzero(row).flatten().tolist()
                for row in probabilities(logits, GenerationConfig(temperature=1.0, **options)) > 0]

    assert kept(top_k=2) == [[1, 2, 3, 4], [0, 1, 2, 3, 4, 5], [1, 3]]
    assert kept(top_k=2, top_k_ties=False) == [[1, 2], [0, 1], [1, 3]]
    assert kept(top_k=4, top_k_ties=False) == [[1, 2, 3, 4], [0, 1, 2, 3], [1, 3, 4]]
    for order in ORDERS:
        config = GenerationConfig(temperature=0.9, top_k=3, top_k_ties=False, sampler_order=order)
        torch.testing.assert_close(probabilities(logits, config).double(), reference(logits, config))


def test_top_p_and_min_p_keep_min_keep_tokens_the_likeliest_first():
    """llama.cpp's min_keep: top-p and min-p keep at least that many (top-k does not take it)."""
    uniform = torch.full((1, 64), 0.5)
    falling = torch.tensor([[9.0, 8.0, 8.0, 8.0, 1.0, 0.0]])

    def kept(logits, **options):
        return torch.nonzero(probabilities(logits, GenerationConfig(temperature=1.0, **options))[0]).flatten().tolist()

    assert kept(uniform, top_p=0.0) == [0] and kept(uniform, top_p=0.0, min_keep=5) == [0, 1, 2, 3, 4]
    assert kept(uniform, top_p=0.5, min_keep=40) == list(range(40))
    assert kept(uniform, top_p=1 / 64) == [0] and kept(uniform, top_p=1 / 64, top_p_strict=True) == [0, 1]
    assert kept(falling, min_p=1.0) == [0] and kept(falling, min_p=1.0, min_keep=3) == [0, 1, 2]
    assert kept(falling, min_p=0.5, min_keep=1) == [0] and kept(falling, top_k=1, min_keep=3) == [0]
    with pytest.raises(ValueError, match="min_keep"):
        GenerationConfig(min_keep=-1)


def test_minus_infinity_logits_are_never_drawn_and_make_no_nan():
    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(5))
    logits[:, ::2] = NEG_INF
    for min_p, temperature in itertools.product([0.0, 0.3, 1.0], [1e-30, 0.5, 3.0]):
        config = GenerationConfig(temperature=temperature, min_p=min_p, top_p=0.95)
        probs = probabilities(logits, config)
        assert not probs.isnan().any() and probs[:, ::2].sum() == 0, (min_p, temperature)
        torch.testing.assert_close(probs.double(), reference(logits, config), rtol=1e-5, atol=1e-7)


def test_temperature_0_stays_greedy_whatever_the_other_samplers():
    logits = torch.randn(4, 500, generator=torch.Generator().manual_seed(6)) * 4
    for order in ORDERS:
        config = GenerationConfig(temperature=0.0, min_p=0.9, top_k=3, top_p=0.1, sampler_order=order)
        assert torch.equal(sample(logits, config, None), logits.argmax(-1)), order


def test_a_row_left_with_nothing_to_draw_takes_the_end_token():
    """Every token dropped (-inf everywhere) or the model's output not a number: the softmax is NaN and argmax took
    token 0, whatever it is. With `end` (the engine's end of text) that row ends instead; the others draw as before."""
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(8)) * 3
    logits[0] = NEG_INF
    logits[1, 7] = float("nan")
    for config in (GenerationConfig(temperature=0.0), GenerationConfig(temperature=0.8, top_k=5, top_p=0.9),
                   GenerationConfig(temperature=1.5, min_p=0.1, sampler_order=ORDERS[1])):
        got = sample(logits, config, torch.Generator().manual_seed(1), end=3).tolist()
        assert got[:2] == [3, 3] and got[2] in torch.topk(logits[2], 5).indices.tolist(), (config, got)
        assert sample(logits[2:], config, torch.Generator().manual_seed(1), end=3).tolist() == \
            sample(logits[2:], config, torch.Generator().manual_seed(1)).tolist()
    alive = logits[2:]
    best = alive.argmax().item()
    assert accept(torch.cat([alive, logits[:1]]), [best], GenerationConfig(), None, end=3) == [best, 3]
    assert accept(logits[:1], [], GenerationConfig(temperature=0.7), torch.Generator().manual_seed(2), end=3) == [3]


def test_a_model_whose_output_turns_nan_mid_generation_ends_its_answer(tiny_checkpoint):
    """The engine checks the first step's logits; a later step's NaN logits drew token 0 over and over to the limit.
    Now that row takes the end of text, and its result says why (`not_a_number`): the answer ended with a plain "stop",
    which no log or client could tell from a finished answer. Speculative steps too; an answer ended by the model's
    own end of text does not say so."""
    from models import load_model

    engine = load_model(tiny_checkpoint[0], device="cpu", max_context=48)
    weight = engine.model.output.weight
    trained = weight.detach().clone()

    def poison(_text):
        weight.data.fill_(float("nan"))

    for temperature, speculate in ((0.0, 0), (0.9, 0), (0.0, 4)):
        weight.data.copy_(trained)
        config = GenerationConfig(max_new_tokens=12, temperature=temperature, seed=1, speculate=speculate)
        result = engine.generate([1, 5, 6, 7, 5, 6, 7, 5, 6], config, on_text=poison)
        assert result.finish_reason == "stop" and result.token_ids[-1] == engine.end_token, result.token_ids
        assert result.not_a_number, (temperature, speculate)
    weight.data.copy_(trained)
    biased = [(engine.end_token, 100.0)]           # the model's own end of text, at the second token
    for speculate in (0, 4):
        config = GenerationConfig(max_new_tokens=12, temperature=0.0, speculate=speculate, logit_bias=biased)
        ended = engine.generate([1, 5, 6, 7, 5, 6, 7, 5, 6], config)
        assert ended.finish_reason == "stop" and ended.token_ids[-1] == engine.end_token and not ended.not_a_number


def test_min_p_before_or_after_top_p_changes_the_distribution():
    """Probabilities 0.4, 0.3, 0.2, 0.1, top-p 0.75, min-p 0.3 (0.12): top-p first keeps three (0.7 lies above the
    third), min-p then keeps them; min-p first drops 0.1, and over the renormalized 0.44, 0.33, 0.22 the first two
    already hold 0.78 > 0.75: two stay. (Ollama: top-p then min-p; vLLM: min-p then top-p.)"""
    logits = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
    rest = ("penalties", "temperature", "top_k")
    after = GenerationConfig(temperature=1.0, top_p=0.75, min_p=0.3, sampler_order=rest + ("top_p", "min_p"))
    before = GenerationConfig(temperature=1.0, top_p=0.75, min_p=0.3, sampler_order=rest + ("min_p", "top_p"))
    got_after, got_before = probabilities(logits, after), probabilities(logits, before)
    torch.testing.assert_close(got_after.double(), reference(logits, after))
    torch.testing.assert_close(got_before.double(), reference(logits, before))
    assert (got_after > 0).sum() == 3 and (got_before > 0).sum() == 2


def _penalties(presence: float = 0.0, repeat: float = 1.0, seen=(0,), vocab: int = 6):
    config = GenerationConfig(presence_penalty=presence, repeat_penalty=repeat)
    return Penalties(config, [list(seen)], context_length=64)


def test_penalties_run_where_the_list_puts_them():
    """A presence penalty of 2 before a temperature of 0.5 costs the token 2 / 0.5 = 4 in tempered logits, after it
    2; a repeat penalty after top-k 1 leaves the token top-k kept alone, before it another token wins the top."""
    logits = torch.tensor([[3.0, 2.5, 0.0, -1.0]])
    penalties = _penalties(presence=2.0)
    first = GenerationConfig(temperature=0.5, sampler_order=("penalties", "temperature", "min_p", "top_k", "top_p"))
    later = GenerationConfig(temperature=0.5, sampler_order=("temperature", "penalties", "min_p", "top_k", "top_p"))
    got_first = probabilities(logits, first, penalties.apply)
    got_later = probabilities(logits, later, penalties.apply)
    torch.testing.assert_close(got_first.double(), reference(logits, first, penalties.apply))
    torch.testing.assert_close(got_later.double(), reference(logits, later, penalties.apply))
    torch.testing.assert_close(got_first[0].log()[0] - got_first[0].log()[1], torch.tensor((1.0 - 2.5) / 0.5))
    torch.testing.assert_close(got_later[0].log()[0] - got_later[0].log()[1], torch.tensor(3.0 / 0.5 - 2.0 - 2.5 / 0.5))

    repeat = _penalties(repeat=4.0)                      # token 0: 3 -> 0.75, below token 1's 2.5
    before = GenerationConfig(temperature=0.0, top_k=1, sampler_order=("penalties", "top_k", "temperature",
                                                                       "min_p", "top_p"))
    after = GenerationConfig(temperature=0.0, top_k=1, sampler_order=("top_k", "penalties", "temperature",
                                                                      "min_p", "top_p"))
    assert sample(logits, before, None, repeat.apply).item() == 1
    assert sample(logits, after, None, repeat.apply).item() == 0


def test_penalties_leave_a_dropped_token_dropped():
    """After top-k a penalized token at -inf stays -inf: a presence penalty of -1e300 made it float32's minimum,
    a token again (drawn where everything else had been dropped too)."""
    logits = torch.tensor([[NEG_INF, 1.0, NEG_INF]])
    penalized = _penalties(presence=-1e300, seen=(0, 2)).apply(logits)
    assert penalized[0, 0] == NEG_INF and penalized[0, 2] == NEG_INF and penalized[0, 1] == 1.0


# llama.cpp's infill sampler -------------------------------------------------------------------------------------


def infill_reference(values: list[float], pieces: list[bytes | None], ends: set[int], end_token: int):
    """llama_sampler_infill_apply as it reads, pair by pair over the candidates sorted by probability, in float64:
    the kept ids (what dist then draws from by their own logits), or [end_token] with the rest gone."""
    cand = [(i, v) for i, v in enumerate(values) if v != NEG_INF]
    top = max(v for _, v in cand)
    weights = [2.718281828459045 ** (v - top) for _, v in cand]
    total = sum(weights)
    data = sorted(([i, v, w / total] for (i, v), w in zip(cand, weights)), key=lambda d: -d[1])
    p_eog = sum(d[2] for d in data if d[0] in ends)
    p_txt = sum(d[2] for d in data if d[0] not in ends)
    if 3 * p_eog * len(data) > p_txt:
        return sorted(d[0] for d in data if d[0] in ends)
    for i0 in range(len(data)):
        for i1 in range(len(data)):
            if data[i0][1] == NEG_INF:
                break
            if i0 == i1 or data[i1][1] == NEG_INF:
                continue
            a, b = pieces[data[i0][0]] or b"", pieces[data[i1][0]] or b""
            if len(a) > 0 and len(a) <= len(b) and b[:len(a)] == a:
                dst, src = (i1, i0) if data[i1][2] > data[i0][2] else (i0, i1)
                data[dst][2] += data[src][2]
                data[src][1], data[src][2] = NEG_INF, 0.0
    kept = [d for d in data if d[2] >= 0.2 or d[0] in ends]
    texts = sum(d[0] not in ends for d in kept)
    if texts == 0:
        return [end_token]
    total = sum(d[2] for d in kept)
    kept = [d for d in kept if d[2] / total >= 1 / (texts + 1) or d[0] in ends]
    return sorted(d[0] for d in kept if d[1] != NEG_INF)


def table_of(pieces: list[bytes | None]):
    by_bytes: dict[bytes, list[int]] = {}
    for number, piece in enumerate(pieces):
        if piece:
            by_bytes.setdefault(piece, []).append(number)
    return SimpleNamespace(pieces=pieces, by_bytes=by_bytes)


def kept_ids(sampler: InfillSampler, logits: torch.Tensor) -> list[int]:
    return torch.nonzero(sampler.apply(logits)[0] > NEG_INF).flatten().tolist()


def test_infill_matches_llama_cpps_loop_on_random_candidates():
    """Short texts over a 3-letter alphabet make prefixes everywhere (merges into the likelier, chains of them,
    equal texts); end tokens now likely, now not, so each branch runs."""
    rng = random.Random(11)
    branches = set()
    for trial in range(400):
        vocab = 40
        pieces = [bytes(rng.choice(b"ab ") for _ in range(rng.randint(1, 3))) for _ in range(vocab)]
        ends = {0, 1}
        pieces[0], pieces[1] = None, None                       # special tokens: no text
        values = [rng.gauss(0, 1.5) for _ in range(vocab)]
        values[0] += rng.choice([-12.0, -6.0, -3.0, 0.0])
        values[1] += rng.choice([-12.0, -6.0])
        for i in rng.sample(range(2, vocab), rng.randint(0, 30)):   # what top-k / top-p before it dropped
            values[i] = NEG_INF
        sampler = InfillSampler(table_of(pieces), [0, 1], 1)
        want = infill_reference(values, pieces, ends, 1)
        got = kept_ids(sampler, torch.tensor([values]))
        assert got == want, (trial, pieces, values)
        branches.add("end" if got == [1] and values[1] == NEG_INF or set(got) <= ends else "text")
    assert branches == {"end", "text"}


def test_infill_merges_a_prefix_into_the_likelier_and_draws_by_the_logits():
    """"re" (0.5) absorbs "ret" (0.3) and "return" (0.1): 0.9 >= 0.2 stays; " x" (0.1) leaves. What is drawn from
    is "re" alone, and the end token (kept always, here 1e-4): softmax of their own logits."""
    pieces = [None, b"re", b"ret", b"return", b" x"]
    probs = torch.tensor([1e-4, 0.5, 0.3, 0.1, 0.0999])
    logits = probs.log()[None]
    sampler = InfillSampler(table_of(pieces), [0], 0)
    out = sampler.apply(logits)
    assert kept_ids(sampler, logits) == [0, 1]
    torch.testing.assert_close(out.softmax(-1)[0, :2], probs[:2] / probs[:2].sum())


def test_infill_ends_when_the_end_is_likely_enough_or_no_text_is_left():
    pieces = [None, b"a", b"b", b"c"]
    sampler = InfillSampler(table_of(pieces), [0], 0)
    # 3 * 0.1 * 4 = 1.2 > 0.9: only the end token stays
    assert kept_ids(sampler, torch.tensor([[0.1, 0.3, 0.3, 0.3]]).log()) == [0]
    # the end unlikely (3 * 0.001 * 4 < 0.999): 0.333 each, the text tokens all stay (>= 0.2, >= 1/4), the end too
    flat = torch.tensor([[0.001] + [0.999 / 3] * 3]).log()
    assert kept_ids(sampler, flat) == [0, 1, 2, 3]
    # no text token reaches 0.2 after merging: the end token alone, at logit 1
    many = InfillSampler(table_of([None] + [bytes([65 + i]) for i in range(10)]), [0], 0)
    spread = torch.tensor([[1e-6] + [0.1] * 10]).log()
    out = many.apply(spread)
    assert torch.nonzero(out[0] > NEG_INF).flatten().tolist() == [0] and out[0, 0] == 1.0


def test_infill_in_the_chain_after_top_k_on_the_device_path():
    """llama.vim's chain: top_k, top_p, infill; the draw only ever picks what infill kept."""
    pieces = [None] + [bytes(random.Random(i).choice(b"ab") for _ in range(1 + i % 3)) for i in range(1, 30)]
    sampler = InfillSampler(table_of(pieces), [0], 0)
    logits = torch.randn(3, 30, generator=torch.Generator().manual_seed(8)) * 2
    logits[:, 0] = -20.0
    config = GenerationConfig(temperature=1.0, top_k=8, top_p=0.9,
                              sampler_order=("top_k", "top_p", "infill") + SAMPLERS[:3])
    generator = torch.Generator().manual_seed(9)
    for _ in range(20):
        tokens = sample(logits, config, generator, infill=sampler)
        for row, token in enumerate(tokens.tolist()):
            masked = probabilities(logits[row:row + 1], GenerationConfig(temperature=1.0, top_k=8, top_p=0.9,
                                                                         sampler_order=SAMPLERS))
            values = torch.where(masked[0] > 0, logits[row], NEG_INF).tolist()
            assert token in infill_reference(values, pieces, {0}, 0)


# The device path (kernels/infill_keep.py, here under the Triton interpreter) -----------------------------------


def device_kept(sampler: InfillSampler, logits: torch.Tensor, candidates: int = 64) -> list[int]:
    out = sampler.apply_on_device(logits, candidates)
    assert torch.equal(out, sampler.apply_on_host(logits))          # the same logits as the host path, row by row
    return torch.nonzero(out[0] > NEG_INF).flatten().tolist()


def test_infill_on_the_device_matches_llama_cpps_loop_on_random_candidates():
    """The 400 candidate sets of the host test above, through the kernel: the same kept set as the float64 port."""
    rng = random.Random(11)
    for trial in range(400):
        vocab = 40
        pieces = [bytes(rng.choice(b"ab ") for _ in range(rng.randint(1, 3))) for _ in range(vocab)]
        pieces[0], pieces[1] = None, None
        values = [rng.gauss(0, 1.5) for _ in range(vocab)]
        values[0] += rng.choice([-12.0, -6.0, -3.0, 0.0])
        values[1] += rng.choice([-12.0, -6.0])
        for i in rng.sample(range(2, vocab), rng.randint(0, 30)):
            values[i] = NEG_INF
        sampler = InfillSampler(table_of(pieces), [0, 1], 1)
        assert device_kept(sampler, torch.tensor([values])) == infill_reference(values, pieces, {0, 1}, 1), trial


@pytest.mark.parametrize("case", ["ties", "all_end", "no_end", "chain", "special", "bound", "empty"])
def test_infill_on_the_device_in_the_edge_cases(case):
    rng = random.Random(case)
    vocab = 200
    pieces = [None] * 4 + [bytes(rng.choice(b"ab") for _ in range(rng.randint(1, 4))) for _ in range(vocab - 4)]
    ends, values = [0, 1], [NEG_INF] * vocab
    if case == "ties":                  # equal logits: rank by id, merges into the earlier of equals
        for i in [0] + list(range(10, 40)):
            values[i] = 0.0
    elif case == "all_end":             # every candidate ends generation
        ends = [0, 1, 50, 51]
        values[0], values[1], values[50], values[51] = 1.0, 0.5, 2.0, -1.0
    elif case == "no_end":              # no end token among the candidates
        for i in range(20, 60):
            values[i] = rng.gauss(0, 2)
    elif case == "chain":               # "a" < "ab" < "abb" < "abba", each likelier than the last: one chain
        pieces[10:14] = [b"a", b"ab", b"abb", b"abba"]
        for i, v in zip(range(10, 14), [0.0, 0.5, 1.0, 1.5]):
            values[i] = v
        values[0] = -9.0
    elif case == "special":             # text-less tokens (ids 2, 3, past the table) among the candidates
        pieces = pieces[:150]
        for i in [2, 3, 160, 199, 20, 21, 22]:
            values[i] = rng.gauss(0, 1)
    elif case == "bound":               # exactly K = 64 candidates
        for i in rng.sample(range(2, vocab), 64):
            values[i] = rng.gauss(0, 0.5)
    sampler = InfillSampler(table_of(pieces), ends, ends[0])
    logits = torch.tensor([values])
    want = infill_reference(values, pieces + [None] * (vocab - len(pieces)), set(ends), ends[0]) \
        if case != "empty" else []
    assert device_kept(sampler, logits) == want


def test_infill_on_the_device_decides_rows_alone_and_in_a_batch():
    """Rows of one batch are independent: the end-alone row gets the end token at logit 1, the others their own."""
    many = InfillSampler(table_of([None] + [bytes([65 + i]) for i in range(10)]), [0], 0)
    spread = torch.tensor([[1e-6] + [0.1] * 10, [1e-6] + [0.9] + [0.01] * 9]).log()
    out = many.apply_on_device(spread, 16)
    assert torch.equal(out, many.apply_on_host(spread))
    assert out[0, 0] == 1.0 and (out[0, 1:] == NEG_INF).all() and out[1, 1] == spread[1, 1]


def test_the_device_path_reads_top_k_plus_slack_where_a_top_k_runs_before_infill():
    from models.infill import device_candidates
    vim = GenerationConfig(top_k=40, sampler_order=("top_k", "top_p", "infill") + SAMPLERS[:3])
    assert device_candidates(vim, 49152) == 64                    # 40 + 8 ties, to a power of two
    order = ("top_k", "infill", "top_p") + SAMPLERS[:3]
    assert device_candidates(GenerationConfig(top_k=40, sampler_order=("infill",) + SAMPLERS), 49152) is None
    assert device_candidates(GenerationConfig(top_k=40, sampler_order=SAMPLERS), 49152) is None
    assert device_candidates(GenerationConfig(top_k=0, sampler_order=order), 49152) is None
    assert device_candidates(GenerationConfig(top_k=200, sampler_order=order), 49152) is None
    assert device_candidates(GenerationConfig(top_k=5, sampler_order=order), 10) == 10


# llama.cpp's n in infill's 3 * p(end) * n > p(text): its candidate array's size, banned tokens counted -----------


def llama_cpp_route(samplers_list: list[str], **fields) -> GenerationConfig:
    """A GenerationConfig as the llama.cpp routes build it from `samplers` and the sampling fields."""
    from codecomplete.server import samplers

    options = dict(temperature=1.0, top_k=40, top_p=0.95, min_p=0.05, min_keep=0)
    options.update({name: fields.pop(name) for name in list(options) if name in fields})
    return GenerationConfig(**samplers.applied(samplers.chain(samplers_list), options["temperature"],
                                               options["top_k"], options["top_p"], options["min_p"],
                                               options["min_keep"]), **fields)


class DeviceOnly(InfillSampler):
    """The sampler on the device path (kernels/infill_keep.py under TRITON_INTERPRET) as on CUDA."""

    def apply(self, logits, config=None, size=None):
        from models.infill import device_candidates

        return self.apply_on_device(logits, device_candidates(config, logits.shape[-1]), size)


BANNED_ROW = torch.tensor([[0.05, 0.5, 0.3, 0.15, 0.5, 0.5, 0.5, 0.5]]).log()    # token 0 ends generation
BANS = tuple((token, NEG_INF) for token in (4, 5, 6, 7))
BANNED_PIECES = [None, b"x", b"y", b"z", b"w", b"v", b"u", b"t"]                  # no text begins another


@pytest.mark.parametrize("samplers_list,fields,n", [
    (["top_k", "top_p", "infill"], dict(top_k=40, top_p=1.0), 8),     # llama.vim's list, top_k past the vocabulary
    (["top_k", "top_p", "infill"], dict(top_k=7, top_p=1.0), 7),      # top_k keeps three banned tokens
    (["top_p", "infill"], dict(top_p=1.0), 8),                        # no top_k
    (["infill"], {}, 8)])
@pytest.mark.parametrize("compact", [True, False])
def test_infill_counts_the_banned_tokens_in_n_as_llama_cpp_does(samplers_list, fields, n, compact):
    """llama.cpp's logit bias leaves a banned token in its candidate array at -inf (p 0), and infill's end test is
    3 * p(end) * cur_p->size > p(text). Eight tokens, four banned, p(end) 0.05 of the four left (text 0.5, 0.3, 0.15):
    llama.cpp with n 8 or 7: 3 * 0.05 * n >= 1.05 > 0.95, the end alone. Counting the four not banned,
    3 * 0.05 * 4 = 0.6 < 0.95: text ("x" 0.5 and "y" 0.3 stay, "z" under 0.2 leaves). On a CPU's candidates (the
    host loop on what top_k left) and on whole rows (the host loop on the row)."""
    assert 3 * 0.05 * n > 0.95 and not 3 * 0.05 * 4 > 0.95
    assert banned_row_kept(InfillSampler, samplers_list, fields, compact) == [0]


def test_infill_on_the_device_counts_the_banned_tokens_in_n_as_llama_cpp_does():
    """The same row through llama.vim's list with top_k 7 (three banned tokens in llama.cpp's array: n 7), as CUDA
    runs it: whole rows, the kernel with the chain's n per row."""
    assert banned_row_kept(DeviceOnly, ["top_k", "top_p", "infill"], dict(top_k=7, top_p=1.0), False) == [0]


def banned_row_kept(sampler_class, samplers_list, fields, compact) -> list[int]:
    config = llama_cpp_route(samplers_list, logit_bias=BANS, **fields)
    assert config.sampler_order.index("infill") < config.sampler_order.index("temperature")
    bias = bias_vector(config, 8, BANNED_ROW.device)
    sampler = sampler_class(table_of(BANNED_PIECES), [0], 0)
    out = chain(BANNED_ROW, config, infill=sampler, bias=bias, compact=compact).row()
    return torch.nonzero(out[0] > NEG_INF).flatten().tolist()


def test_infill_on_the_device_reads_nothing_on_the_host_for_its_n(monkeypatch):
    """CUDA's way (whole rows, the kernel), here on a CPU under TRITON_INTERPRET: llama.vim's list with bans, the
    array size followed through top_k and top_p and handed to the kernel without a tensor's number on the host."""
    import models.candidates as candidates_module
    import models.race_draws as race_draws

    monkeypatch.setattr(candidates_module, "host_reads", lambda tensor: False)
    monkeypatch.setattr(race_draws, "_uniforms_match", False)
    pieces = [None] + [bytes(random.Random(i).choice(b"ab") for _ in range(1 + i % 3)) for i in range(1, 60)]
    sampler = DeviceOnly(table_of(pieces), [0], 0)
    logits = torch.randn(2, 60, generator=torch.Generator().manual_seed(4)) * 2
    config = llama_cpp_route(["top_k", "top_p", "infill"], top_k=20, top_p=0.99,
                             logit_bias=tuple((t, NEG_INF) for t in range(1, 60, 3)))
    bias = bias_vector(config, 60, logits.device)
    sampler.apply_on_device(logits + bias, 32)                      # (the byte table built once, before the guard)

    def refuse(*args, **kwargs):
        raise AssertionError("a host read in the device path")
    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    sample(logits, config, torch.Generator().manual_seed(0), infill=sampler, bias=bias, end=1)

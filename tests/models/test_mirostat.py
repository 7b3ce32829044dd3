"""llama.cpp's mirostat samplers and dynamic temperature (models/mirostat.py, models/dynatemp.py) against values
worked out by hand from llama.cpp's formulas (src/llama-sampling.cpp), on crafted distributions whose surprises,
Zipf exponent and entropy are known exactly."""
import math
import random

import pytest
import torch

from models.generation import GenerationConfig
from models.mirostat import Mirostat
from models.request_sampler import RequestSampler
from models.sampling import bias_vector, chain, chained, make_generator, sample

NEG_INF = float("-inf")


def halving(n: int, vocab: int) -> torch.Tensor:
    """Logits (1, vocab) whose first n tokens have probabilities 1/2, 1/4, ..., the rest sharing what is left: token
    i's surprise is i + 1 bits for i < n."""
    probs = [2.0 ** -(i + 1) for i in range(n)]
    rest = (1.0 - sum(probs)) / (vocab - n)
    return torch.tensor([probs + [rest] * (vocab - n)], dtype=torch.float64).log().float()


def mirostat_sampler(logits: torch.Tensor, seed: int = 0, **options) -> RequestSampler:
    config = GenerationConfig(temperature=options.pop("temperature", 1.0), seed=seed, **options)
    return RequestSampler(config, make_generator(logits.device, seed),
                          bias=bias_vector(config, logits.shape[-1], logits.device),
                          mirostat=Mirostat.of(config, logits.shape[0], logits))


def test_mirostat_2_keeps_the_tokens_whose_surprise_is_within_mu_and_moves_mu_by_the_error():
    """mu starts at 2 tau; the draw is among the tokens of surprise <= mu (here 1, 2 and 3 bits: tau 1.5, mu 3),
    renormalized; then mu -= eta (surprise of the token taken, in the renormalized distribution - tau)."""
    logits = halving(6, 64)
    for seed in range(12):
        sampler = mirostat_sampler(logits, seed, mirostat=2, mirostat_tau=1.5, mirostat_eta=0.25)
        assert sampler.mirostat.mu.tolist() == [[3.0]]
        kept = sampler.mirostat.truncate(logits)
        assert torch.isfinite(kept[0]).nonzero().flatten().tolist() == [0, 1, 2]
        token = sampler.choose(logits)[0].item()
        assert token in (0, 1, 2)
        surprise = -math.log2(2.0 ** -(token + 1) / 0.875)
        assert sampler.mirostat.mu.item() == pytest.approx(3.0 - 0.25 * (surprise - 1.5), abs=1e-5)


def test_mirostat_2_keeps_the_likeliest_when_no_token_is_within_mu_and_each_row_has_its_own_mu():
    """tau 0.2: mu 0.4 bits, under the likeliest token's 1 bit: llama.cpp keeps that one alone, so the draw is greedy
    and its surprise 0 raises mu by eta tau. Two rows follow their own mu."""
    logits = torch.cat([halving(6, 64), halving(6, 64).flip(-1)])                    # (2, 64)
    sampler = mirostat_sampler(logits, mirostat=2, mirostat_tau=0.2, mirostat_eta=0.5)
    assert sampler.choose(logits)[0].tolist() == [0, 63]
    assert sampler.mirostat.mu.flatten().tolist() == pytest.approx([0.4 + 0.5 * 0.2] * 2)
    wide = torch.cat([halving(6, 64), torch.zeros(1, 64)])        # row 1 uniform: 6 bits each, over mu: one kept
    sampler = mirostat_sampler(wide, mirostat=2, mirostat_tau=5.0)
    kept = sampler.mirostat.truncate(wide)
    assert torch.isfinite(kept).sum(dim=-1).tolist() == [6, 64]   # mu 10 bits: 1..6 bits kept; the uniform row all


def test_mirostat_1_keeps_the_k_its_zipf_estimate_gives():
    """Zipf probabilities p_i ~ 1 / i^s: llama.cpp's estimate over the 100 likeliest is s exactly, and
    k = (eps 2^mu / (1 - V^-eps))^(1/s) with eps = s - 1, here about 10.6: the 10 likeliest are kept."""
    vocab, s, tau = 1000, 1.2, 3.0
    ranks = torch.arange(1, vocab + 1, dtype=torch.float64)
    logits = (-s * ranks.log())[None].float()                                          # (1, V)
    eps, mu = s - 1, 2 * tau
    k = int((eps * 2 ** mu / (1 - vocab ** -eps)) ** (1 / s))
    assert k == 10
    sampler = mirostat_sampler(logits, mirostat=1, mirostat_tau=tau)
    kept = sampler.mirostat.truncate(logits)
    assert torch.isfinite(kept[0]).nonzero().flatten().tolist() == list(range(k))
    token = sampler.choose(logits)[0].item()
    assert token < k
    kept_mass = (ranks[:k] ** -s).sum().item()
    surprise = -math.log2(((token + 1) ** -s) / kept_mass)
    assert sampler.mirostat.mu.item() == pytest.approx(mu - 0.1 * (surprise - tau), abs=1e-4)


def test_mirostat_runs_after_the_bias_and_the_temperature_and_replaces_the_rest_of_the_chain():
    """llama.cpp's chain with mirostat on: logit bias, temperature, mirostat; top_k, top_p, min_p and the penalties do
    not run. A banned token (here the likeliest) is never kept; temperature 2 flattens 1, 2, 3 bits to 0.5, 1, 1.5
    (renormalized: every one of the six first tokens within mu 3)."""
    logits = halving(6, 64)
    config = dict(mirostat=2, mirostat_tau=1.5, top_k=1, top_p=0.1, min_p=0.9, repeat_penalty=5.0)
    sampler = mirostat_sampler(logits, temperature=2.0, logit_bias=((0, NEG_INF),), **config)
    drawn = {mirostat_sampler(logits, seed, temperature=2.0, **config).choose(logits)[0].item() for seed in range(40)}
    assert len(drawn) > 1                                         # top_k 1 did not run
    for _ in range(20):
        assert sampler.choose(logits)[0].item() != 0


def test_mirostat_at_temperature_0_is_greedy():
    """llama.cpp's temperature 0 leaves the likeliest token alone (its temp sampler), which mirostat then takes."""
    logits = halving(6, 64).flip(-1)
    for version in (1, 2):
        sampler = mirostat_sampler(logits, temperature=0.0, mirostat=version, mirostat_tau=50.0)
        assert [sampler.choose(logits)[0].item() for _ in range(5)] == [63] * 5


def test_an_unknown_mirostat_version_is_refused():
    with pytest.raises(ValueError, match="mirostat"):
        GenerationConfig(mirostat=3)


def entropy_temperature(probs: list[float], temperature: float, spread: float, exponent: float,
                        size: int | None = None) -> float:
    """llama.cpp's temp-ext: the entropy of the candidates over its largest (ln n, n the candidate array's `size`,
    by default the number of probabilities), mapped onto [max(0, temperature - spread), temperature + spread] by the
    power `exponent`."""
    entropy = -sum(p * math.log(p) for p in probs if p > 0)
    low, high = max(0.0, temperature - spread), temperature + spread
    return low + (high - low) * (entropy / math.log(size or len(probs))) ** exponent


@pytest.mark.parametrize("exponent", [1.0, 2.0, 0.5])
def test_dynamic_temperature_divides_by_the_temperature_of_the_candidates_entropy(exponent):
    """Two candidates at 3/4 and 1/4 (the rest cut by top_k 2 before it, llama.cpp's order): normalized entropy 0.811;
    temperature 1 +- 0.5."""
    logits = torch.full((1, 16), -30.0)
    logits[0, 3], logits[0, 9] = math.log(0.75) + 2.0, math.log(0.25) + 2.0
    config = GenerationConfig(temperature=1.0, dynatemp_range=0.5, dynatemp_exponent=exponent, top_k=2,
                              top_k_ties=False, sampler_order=("penalties", "top_k", "top_p", "min_p", "temperature"))
    temperature = entropy_temperature([0.75, 0.25], 1.0, 0.5, exponent)
    assert 0.5 < temperature < 1.5
    out = chained(logits, config)
    assert out[0, 3].item() == pytest.approx(logits[0, 3].item() / temperature, rel=1e-5)
    assert out[0, 9].item() == pytest.approx(logits[0, 9].item() / temperature, rel=1e-5)
    assert torch.isinf(out).sum().item() == 14


def test_dynamic_temperature_spans_its_range_and_each_row_has_its_own():
    """A uniform row has the largest entropy: temperature + range; a row whose other logits are -inf before any
    sampler has entropy 0 (llama.cpp's array still holds them: ln 8), so the lowest, temperature - range; a row that
    the samplers before it cut to one candidate is left as it is."""
    uniform = torch.zeros(1, 8) + 3.0
    single = torch.full((1, 8), NEG_INF)
    single[0, 2] = 4.0
    peaked = halving(4, 8)
    logits = torch.cat([uniform, single, peaked])                                     # (3, 8)
    config = GenerationConfig(temperature=0.8, dynatemp_range=0.6)
    out = chained(logits, config)
    assert out[0].tolist() == pytest.approx([3.0 / 1.4] * 8)
    assert out[1].tolist() == (single[0] / 0.2).tolist()
    probs = peaked.double().softmax(-1)[0].tolist()
    assert out[2].tolist() == pytest.approx((peaked[0] / entropy_temperature(probs, 0.8, 0.6, 1.0)).tolist(),
                                            rel=1e-5)
    assert torch.equal(chained(logits, GenerationConfig(temperature=0.8)), logits / 0.8)     # range 0: plain
    one = GenerationConfig(temperature=0.8, dynatemp_range=0.6, top_k=1, top_k_ties=False,
                           sampler_order=("penalties", "top_k", "top_p", "min_p", "temperature"))
    for compact in (True, False):
        assert chain(peaked, one, compact=compact).row()[0].tolist() == [peaked[0, 0].item()] + [NEG_INF] * 7


def test_a_dynamic_temperature_draws_at_temperature_0_as_llama_cpps_temp_ext():
    """llama.cpp's temp-ext with dynatemp_range > 0 takes its temperature in [max(0, t - range), t + range] by the
    entropy whatever t (common/sampling.cpp runs it for every temperature): at 0 a uniform row is divided by the
    range, at -0.2 by 0.3, and the token is drawn (both of two tied tokens come up), not the likeliest. Without a
    range, or with mirostat (whose chain runs the plain temperature), 0 stays greedy: the lower id of the tie."""
    uniform = torch.zeros(1, 8) + 3.0
    at_0 = GenerationConfig(temperature=0.0, dynatemp_range=0.5)
    assert not at_0.greedy
    assert chained(uniform, at_0)[0].tolist() == pytest.approx([3.0 / 0.5] * 8)
    assert chained(uniform, GenerationConfig(temperature=-0.2, dynatemp_range=0.5))[0].tolist() == \
        pytest.approx([3.0 / 0.3] * 8)
    tie = torch.full((1, 16), NEG_INF)
    tie[0, 3] = tie[0, 9] = 2.0
    drawn = {sample(tie, at_0, make_generator(tie.device, seed)).item() for seed in range(16)}
    assert drawn == {3, 9}
    for greedy in (GenerationConfig(temperature=0.0), GenerationConfig(temperature=0.0, dynatemp_range=0.0),
                   GenerationConfig(temperature=0.0, dynatemp_range=0.5, mirostat=2)):
        assert greedy.greedy
    assert sample(tie, GenerationConfig(temperature=0.0), None).item() == 3


def llama_cpp_chain(row: list[float], bias: list[float], config: GenerationConfig) -> list[float]:
    """llama.cpp's chain (src/llama-sampling.cpp) on one row, as its candidate array of (id, logit) pairs: the logit
    bias adds (-inf stays in the array), top_k, top_p and min_p shrink the array, temp-ext normalizes the entropy by
    ln of the array's size. The row's logits after it, -inf for the tokens no longer in the array."""
    cur = [(token, logit + b) for token, (logit, b) in enumerate(zip(row, bias))]

    def softmax(pairs):
        top = max(logit for _, logit in pairs)
        weights = [math.exp(logit - top) for _, logit in pairs]
        return [w / sum(weights) for w in weights]

    for name in config.sampler_order:
        by_logit = sorted(cur, key=lambda pair: -pair[1])
        if name == "top_k" and config.top_k > 0:
            cur = by_logit[:min(config.top_k, len(cur))]
        elif name == "top_p" and config.top_p < 1.0:
            total, last = 0.0, len(by_logit)
            for i, p in enumerate(softmax(by_logit)):
                total += p
                if total >= config.top_p and i + 1 >= config.min_keep:
                    last = i + 1
                    break
            cur = by_logit[:last]
        elif name == "min_p" and config.min_p > 0.0:
            floor = max(logit for _, logit in cur) + math.log(config.min_p)
            kept = [pair for pair in cur if pair[1] >= floor]
            if kept and len(kept) >= config.min_keep:
                cur = kept
            else:
                i = 1
                while i < len(by_logit) and not (by_logit[i][1] < floor and i >= config.min_keep):
                    i += 1
                cur = by_logit[:i]
        elif name == "temperature" and len(cur) > 1:
            temperature = entropy_temperature(softmax(cur), config.temperature, config.dynatemp_range,
                                              config.dynatemp_exponent, size=len(cur))
            cur = [(token, logit / temperature) for token, logit in cur]
    out = [NEG_INF] * len(row)
    for token, logit in cur:
        out[token] = logit
    return out


def llama_cpp_route_config(samplers_list, **options) -> GenerationConfig:
    """A GenerationConfig as the llama.cpp routes build it from `samplers` and the sampling fields."""
    from codecomplete.server import samplers

    fields = dict(temperature=1.0, top_k=40, top_p=0.95, min_p=0.05, min_keep=0)
    fields.update({name: options.pop(name) for name in list(fields) if name in options})
    chain = samplers.chain(samplers_list)
    return GenerationConfig(**samplers.applied(chain, fields["temperature"], fields["top_k"], fields["top_p"],
                                               fields["min_p"], fields["min_keep"]), **options)


@pytest.mark.parametrize("samplers_list,cuts", [(["temperature"], {}),
                                                (None, dict(top_k=0, top_p=1.0, min_p=0.0))])
def test_a_dynamic_temperature_counts_the_banned_tokens_as_llama_cpp_does(samplers_list, cuts):
    """llama.cpp's logit bias sets a banned token's logit to -inf and leaves it in the candidate array; temp-ext
    divides the entropy by ln(cur_p->size), that array's size. Eight tokens, token 5 banned (ignore_eos's way), no
    sampler cutting before the temperature: the entropy of the seven others over ln 8, not ln 7. By hand:
    H = 1.56385 nats, H / ln 8 = 0.75206, temperature 0.5 + (1.5 - 0.5) * 0.75206 = 1.25206 (over ln 7: 1.30366)."""
    row = [2.0, 1.0, 0.5, 0.0, -0.5, 3.0, -1.0, 1.5]
    logits = torch.tensor([row])
    config = llama_cpp_route_config(samplers_list, temperature=1.0, dynatemp_range=0.5, logit_bias=((5, NEG_INF),),
                                    **cuts)
    live = [logit for token, logit in enumerate(row) if token != 5]
    z = sum(math.exp(logit) for logit in live)
    entropy = -sum(math.exp(logit) / z * (logit - math.log(z)) for logit in live)
    assert entropy == pytest.approx(1.56385, abs=1e-5)
    temperature = 0.5 + (1.5 - 0.5) * entropy / math.log(8)
    assert temperature == pytest.approx(1.25206, abs=1e-5)
    bias = bias_vector(config, 8, logits.device)
    for compact in (True, False):
        out = chain(logits, config, bias=bias, compact=compact).row()[0].tolist()
        assert out[5] == NEG_INF
        assert [out[t] for t in range(8) if t != 5] == pytest.approx([x / temperature for x in live], rel=1e-6)


def test_a_dynamic_temperature_counts_what_the_samplers_before_it_leave_in_llama_cpps_array():
    """Samplers that cut (top_k, top_p, min_p) shrink llama.cpp's array; banned tokens they keep (top_k 4 with two
    tokens not banned keeps two banned ones; min_keep keeps some too) stay counted, those they cut do not."""
    row = [2.0, 1.0, 0.5, 0.0, -0.5, 3.0, -1.0, 1.5]
    logits = torch.tensor([row])
    bans = ((1, NEG_INF), (2, NEG_INF), (3, NEG_INF), (4, NEG_INF), (6, NEG_INF), (7, NEG_INF))   # 0 and 5 left
    cases = [(dict(top_k=4, top_p=1.0, min_p=0.0), 4),       # the two left and two banned ones: size 4
             (dict(top_k=0, top_p=0.5, min_p=0.0, min_keep=3), 3),
             (dict(top_k=0, top_p=1.0, min_p=0.5, min_keep=3), 3),
             (dict(top_k=0, top_p=1.0, min_p=0.05), 2),          # min_p cuts every -inf
             (dict(top_k=3, top_p=1.0, min_p=0.0, logit_bias=((5, NEG_INF),)), 3)]
    for fields, size in cases:
        config = llama_cpp_route_config(None, dynatemp_range=0.5, **{"logit_bias": bans, **fields})
        bias = bias_vector(config, 8, logits.device)
        want = llama_cpp_chain(row, bias.tolist(), config)
        kept = [logit for logit in want if logit > NEG_INF]
        for compact in (True, False):
            out = chain(logits, config, bias=bias, compact=compact)
            assert out.row()[0].tolist() == pytest.approx(want, rel=1e-6), (fields, compact)
        live = [row[t] + bias[t].item() for t in range(8) if want[t] > NEG_INF]
        z = sum(math.exp(x) for x in live)
        entropy = -sum(math.exp(x) / z * (x - math.log(z)) for x in live)
        assert kept[0] == pytest.approx(live[0] / (0.5 + entropy / math.log(size)), rel=1e-6), fields


def test_a_dynamic_temperature_matches_llama_cpps_array_on_random_rows_bans_and_chains():
    """Random rows, bans (sometimes nearly the whole vocabulary, so top_k keeps banned tokens) and llama.cpp chains
    in random orders, against llama_cpp_chain: the same logits on whole rows and on a CPU's candidates."""
    rng = random.Random(5)
    for case in range(300):
        vocab = rng.choice([8, 40, 200])
        rows = rng.choice([1, 2])
        logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(case)) * rng.choice([0.5, 2.0, 5.0])
        banned_share = rng.choice([0.0, 0.2, 0.9, 0.97])
        bans = tuple((t, NEG_INF) for t in range(vocab) if rng.random() < banned_share)
        if len(bans) == vocab:
            bans = bans[1:]
        order = rng.sample(["top_k", "top_p", "min_p", "temperature"], 4)
        config = llama_cpp_route_config(order, temperature=rng.choice([0.5, 1.0]), top_k=rng.choice([0, 3, 10, 50]),
                                        top_p=rng.choice([1.0, 0.9, 0.5]), min_p=rng.choice([0.0, 0.05, 0.3]),
                                        min_keep=rng.choice([0, 1, 5]), dynatemp_range=0.4,
                                        dynatemp_exponent=rng.choice([1.0, 2.0]), logit_bias=bans)
        bias = bias_vector(config, vocab, logits.device) if bans else torch.zeros(vocab)
        want = [llama_cpp_chain(logits[r].tolist(), bias.tolist(), config) for r in range(rows)]
        for compact in (True, False):
            out = chain(logits, config, bias=bias if bans else None, compact=compact).row()
            for r in range(rows):
                assert out[r].tolist() == pytest.approx(want[r], rel=1e-5), (case, compact, config)


def test_a_dynamic_temperature_reads_nothing_on_the_host_where_rows_stay_whole(monkeypatch):
    """CUDA's way (models/candidates.py), here on a CPU: a dynamic temperature after cuts, with bans, and llama.cpp's
    array size it follows, without a tensor's number coming to the host."""
    import models.candidates as candidates_module
    import models.race_draws as race_draws

    monkeypatch.setattr(candidates_module, "host_reads", lambda tensor: False)
    monkeypatch.setattr(race_draws, "_uniforms_match", False)
    logits = torch.randn(2, 300) * 3
    bans = tuple((t, NEG_INF) for t in range(0, 300, 7))
    orders = (None, ["temperature"], ["top_k", "temperature", "top_p"], ["min_p", "top_p", "temperature"])
    configs = [llama_cpp_route_config(order, temperature=0.8, min_keep=2, dynatemp_range=0.5, logit_bias=bans)
               for order in orders]
    biases = [bias_vector(config, 300, logits.device) for config in configs]

    def refuse(*args, **kwargs):
        raise AssertionError("a host read in the device path")
    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    for config, bias in zip(configs, biases):
        sample(logits, config, make_generator(logits.device, 0), bias=bias, end=1)


def test_the_engine_draws_at_temperature_0_with_a_dynamic_temperature(tiny_checkpoint):
    """Through the engine (plain decoding and speculation's verification): temperature 0 with dynatemp_range 5 draws
    from the seed's generator, so some seed's answer is not the greedy one and a seed gives its answer again;
    temperature 0 alone is the greedy answer whatever the seed."""
    from models import load_model

    engine = load_model(tiny_checkpoint[0], device="cpu", max_context=64)
    prompt = [1, 5, 6, 7, 5, 6, 7, 5, 6]                  # repeats: prompt lookup has drafts to verify
    greedy = engine.generate(prompt, GenerationConfig(max_new_tokens=10, speculate=0)).token_ids
    for speculate in (0, 4):
        assert engine.generate(prompt, GenerationConfig(max_new_tokens=10, seed=1, speculate=speculate)).token_ids \
            == greedy
        dynamic = [GenerationConfig(max_new_tokens=10, seed=seed, speculate=speculate, dynatemp_range=5.0)
                   for seed in range(4)]
        answers = [engine.generate(prompt, config).token_ids for config in dynamic]
        assert any(answer != greedy for answer in answers), speculate
        assert engine.generate(prompt, dynamic[0]).token_ids == answers[0]


def test_the_engine_runs_mirostat_one_token_a_step_with_a_mu_per_sequence(tiny_checkpoint):
    """Through the engine's decode loop (lookahead on the device, no speculation: mu moves with each token): tau near
    0 keeps only the likeliest token at every step, so the answer is the greedy one at any temperature and seed,
    where plain sampling at that temperature is not; a batch's sequences each keep theirs."""
    from models import load_model

    engine = load_model(tiny_checkpoint[0], device="cpu", max_context=64)
    prompt = [1, 5, 6, 7, 5, 6, 7, 5, 6]                  # repeats: prompt lookup would have drafts to verify
    greedy = engine.generate(prompt, GenerationConfig(max_new_tokens=10, speculate=0)).token_ids
    hot = dict(max_new_tokens=10, temperature=5.0, speculate=4)
    assert any(engine.generate(prompt, GenerationConfig(seed=seed, **hot)).token_ids != greedy for seed in range(4))
    for seed in range(4):
        result = engine.generate(prompt, GenerationConfig(seed=seed, mirostat=2, mirostat_tau=1e-4, **hot))
        assert result.token_ids == greedy and result.timings.drafted_tokens == 0
    other = [1, 9, 8, 7]
    batch = engine.generate_batch([prompt, other], GenerationConfig(seed=3, mirostat=1, mirostat_tau=1e-4, **hot))
    alone = engine.generate(other, GenerationConfig(max_new_tokens=10, speculate=0)).token_ids
    assert [r.token_ids for r in batch] == [greedy, alone]


def test_post_sampling_logprobs_are_of_the_distribution_mirostat_drew_from():
    """llama.cpp's post_sampling_probs with mirostat: the tokens it kept, renormalized (here 1/2, 1/4, 1/8 over 7/8),
    of this step's mu, not the next one's."""
    logits = halving(6, 64)
    sampler = mirostat_sampler(logits, mirostat=2, mirostat_tau=1.5, logprobs=3, logprobs_after_samplers=True)
    token, table = sampler.choose(logits)
    row = table[0].tolist()
    assert row[0] == pytest.approx(math.log(2.0 ** -(token.item() + 1) / 0.875), abs=1e-5)
    assert row[1:4] == pytest.approx([math.log(p / 0.875) for p in (0.5, 0.25, 0.125)], abs=1e-5)
    assert row[4:] == [0.0, 1.0, 2.0]

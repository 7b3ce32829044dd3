"""The sampler chain on candidates (models/candidates.py, models/race_draws.py): once a sampler cuts a row, the
samplers after it and the draw run on the few tokens left. These tests hold it to the whole-row chain: the same
logits (`chained`), the same tokens for the same seed as the whole row's exponential race (torch's exponential_ over
the vocabulary, what the draw always used), and the generator left where that race leaves it."""
import random
from types import SimpleNamespace

import pytest
import torch

import models.candidates as candidates_module
import models.race_draws as race_draws
from models.generation import GenerationConfig
from models.infill import InfillSampler
from models.sampling import chain, chained, sample
from sampling_cases import NEG_INF, ORDERS, random_case, same, vocabulary, whole_row_sample


def check_against_whole_rows(seed: int, cases: int) -> dict:
    rng = random.Random(seed)
    compacted = {True: 0, False: 0}
    for case in range(cases):
        logits, config, penalize, infill, bias = random_case(rng)
        assert same(chained(logits, config, penalize, infill, bias),
                    chain(logits, config, penalize, infill, bias, compact=False).row()), (case, config)
        compacted[chain(logits, config, penalize, infill, bias).compact] += 1
        seed = rng.randrange(2**31)
        ours, theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        for step in range(3):
            got = sample(logits, config, ours, penalize, infill, bias, end=1)
            want = whole_row_sample(logits, config, theirs, penalize, infill, bias, end=1)
            assert torch.equal(got, want), (case, step, config)
        assert torch.equal(torch.rand(4, generator=ours), torch.rand(4, generator=theirs)), case
    return compacted


def test_the_chain_on_candidates_draws_the_whole_rows_tokens_on_a_cpu():
    compacted = check_against_whole_rows(seed=1, cases=500)
    assert compacted[True] > 100 and compacted[False] > 100          # both ways were taken


def test_without_host_reads_rows_stay_whole_and_draw_the_same_tokens(monkeypatch):
    """CUDA's way, here on the CPU: nothing read on the host, no compaction (candidates add launches there), the
    whole row's exponential_ (bench/gpu/candidates_cuda.py checks the same on a GPU)."""
    monkeypatch.setattr(candidates_module, "host_reads", lambda tensor: False)
    monkeypatch.setattr(race_draws, "_uniforms_match", False)
    compacted = check_against_whole_rows(seed=2, cases=400)
    assert compacted[True] == 0


def test_the_device_path_reads_nothing_on_the_host(monkeypatch):
    """No sync in the decode loop's queued sampling: with host reads off, a chain with top_k, top_p and min_p runs
    without a tensor's number coming to the host."""
    monkeypatch.setattr(candidates_module, "host_reads", lambda tensor: False)
    monkeypatch.setattr(race_draws, "_uniforms_match", False)
    logits = torch.randn(2, 500) * 3
    logits[:, 10:20] = logits[:, 10:11]                                         # ties
    generator = torch.Generator().manual_seed(0)
    configs = [GenerationConfig(temperature=t, top_k=40, top_p=0.95, min_p=0.05, top_k_ties=ties, sampler_order=o)
               for t in (0.0, 0.8) for ties in (False, True) for o in ORDERS[:4]]

    def refuse(*args, **kwargs):
        raise AssertionError("a host read in the device path")
    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    for config in configs:
        sample(logits, config, generator, end=1)


def test_top_p_on_candidates_takes_rows_with_every_token_banned():
    """A batch whose rows are all -inf (every token banned by a bias or healing's restriction): top-p on candidates
    has nothing to rank (it once indexed an empty cumsum) and leaves them to the whole row's top-p, as the whole-row
    chain does; with one live row beside it, the same."""
    live = torch.randn(1, 300, generator=torch.Generator().manual_seed(3)) * 3
    for logits in (torch.full((2, 300), NEG_INF), torch.cat([torch.full((1, 300), NEG_INF), live])):
        for config in (GenerationConfig(temperature=1.0, top_p=0.9),
                       GenerationConfig(temperature=2.0, top_p=0.99, top_k=300, min_p=0.05)):
            assert same(chain(logits, config).row(), chain(logits, config, compact=False).row())
            assert same(chain(logits, config).row(), chained(logits, config))
            ours, theirs = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
            assert torch.equal(sample(logits, config, ours, end=1), whole_row_sample(logits, config, theirs, end=1))


def test_top_k_on_candidates_keeps_the_lower_ids_among_ties_across_its_boundary():
    """200 tokens tied at the k-th place: torch.topk's k hold any of them, llama.cpp's rule the lowest ids."""
    logits = torch.zeros(2, 1000)
    logits[:, 500:] = -1.0
    logits[:, 900] = 5.0
    config = GenerationConfig(temperature=1.0, top_k=40, top_k_ties=False)
    for compact in (True, False):
        kept = torch.nonzero(chain(logits, config, compact=compact).row()[0] > NEG_INF).flatten().tolist()
        assert kept == list(range(39)) + [900]
    with_ties = GenerationConfig(temperature=1.0, top_k=40, top_k_ties=True)
    assert (chained(logits, with_ties)[0] > NEG_INF).sum() == 501


def test_infill_on_candidates_keeps_what_it_keeps_on_the_whole_row():
    """The host loop on a chain's candidates, against apply() on the row they stand for; rows left with the end
    token alone among them."""
    rng = random.Random(7)
    alone = 0
    for trial in range(200):
        vocab = rng.choice([40, 300])
        flat = trial % 4 == 0           # distinct texts, none another's prefix, all about as likely: nothing
        table = (SimpleNamespace(pieces=[None] * 3 + [b"%03d" % i for i in range(vocab - 3)], by_bytes={})
                 if flat else vocabulary(rng, vocab))               # reaches 0.2, the end token alone stays
        if flat:
            table.by_bytes.update({piece: [i] for i, piece in enumerate(table.pieces) if piece})
        sampler = InfillSampler(table, [0, 1], rng.choice([1, vocab - 1]))
        logits = torch.randn(2, vocab, generator=torch.Generator().manual_seed(trial)) * (0.01 if flat else 2)
        logits[:, 0] += -12.0 if flat else rng.choice([-12.0, -3.0, 0.0])
        config = GenerationConfig(temperature=1.0, top_k=rng.choice([4, 16, 30]), top_k_ties=False)
        candidates = chain(logits, config)                                       # top_k's cut
        assert candidates.compact
        values, ids = sampler.apply_to_candidates(candidates.values, candidates.ids)
        assert (ids.diff(dim=-1) > 0).all()                                      # still rising
        row = torch.full_like(logits, NEG_INF).scatter(-1, ids, values)
        assert torch.equal(row, sampler.apply_on_host(candidates.row())), trial
        alone += int(((row > NEG_INF).sum(dim=-1) == 1).sum())
    assert alone > 0

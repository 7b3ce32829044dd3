"""The exponential race's draws (models/race_draws.py): the same tokens for the same seed as torch's exponential_
over the whole row (what the draw always used), and the generator left where that leaves it."""
import pytest
import torch

import models.race_draws as race_draws
from models.sampling import pick, race


@pytest.mark.parametrize("width", [1, 40, 300, 49152])
def test_race_scores_draw_what_exponential_draws(width):
    """The CPU draw from uniform_ and the C library's log1p: the same winner as exponential_ over the row, at any
    width (narrow: every E exact; wide: bounded, the contenders exact), for flat and peaked rows, in batches, at
    candidate ids; the generator where exponential_ leaves it."""
    vocab = max(width, 500)
    for seed in range(60 if width < 49152 else 12):
        rows = 1 + seed % 3
        logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * [0.01, 1, 3, 30][seed % 4]
        ids = torch.sort(torch.randperm(vocab, generator=torch.Generator().manual_seed(seed))[:width])[0]
        ids = ids.expand(rows, width).contiguous()
        weights = logits.gather(-1, ids).softmax(dim=-1)                       # (B, W)
        ours, theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        got = pick(race_draws.race_scores(weights, ours, ids, vocab))
        exponentials = torch.empty(rows, vocab).exponential_(1.0, generator=theirs)
        want = pick(weights / exponentials.gather(-1, ids))
        assert torch.equal(got, want), seed
        assert torch.equal(torch.rand(3, generator=ours), torch.rand(3, generator=theirs)), seed
    assert race_draws._uniforms_give_exponentials()                      # (this torch: the fast way ran)


def test_race_keeps_drawing_what_exponential_draws_on_whole_rows():
    """models.sampling.race (speculative decoding's residual draw too) on whole rows, a zero weight among them."""
    for seed in range(40):
        weights = (torch.randn(2, 3000, generator=torch.Generator().manual_seed(seed)) * 4).softmax(dim=-1)
        weights[:, seed] = 0.0
        ours, theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        want = pick(weights / torch.empty_like(weights).exponential_(1.0, generator=theirs))
        assert torch.equal(race(weights, ours), want), seed


def test_a_row_of_nan_weights_draws_as_exponential_draws():
    """NaN weights (a whole row: the softmax of a row with nothing left; part of one) among others: race's index is
    exponential_'s (with an end token, the end: models.sampling.pick)."""
    weights = (torch.randn(3, 2000, generator=torch.Generator().manual_seed(5)) * 3).softmax(dim=-1)
    weights[1, 500:] = float("nan")
    weights[2] = float("nan")
    for end in (None, 7):
        ours, theirs = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        want = pick(weights / torch.empty_like(weights).exponential_(1.0, generator=theirs), end)
        assert torch.equal(race(weights, ours, end), want)

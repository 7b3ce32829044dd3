"""kernels.infill_keep (llama.cpp's infill sampler, one program per row) against its Python reference, pair by pair
in float64: candidates in any order, NaN and -inf among them, ties, outputs poisoned before each run."""
import random

import pytest
import torch

from kernels.infill_keep import infill_keep, infill_keep_reference


def vocabulary(rng: random.Random, size: int, texts: int):
    """Byte table (size, 4) and lengths: the first `texts` tokens spell 1-4 letters of "ab", the rest nothing."""
    table = torch.zeros(size, 4, dtype=torch.uint8)
    lengths = torch.zeros(size, dtype=torch.int32)
    for token in range(texts):
        piece = bytes(rng.choice(b"ab") for _ in range(rng.randint(1, 4)))
        table[token, :len(piece)] = torch.tensor(list(piece), dtype=torch.uint8)
        lengths[token] = len(piece)
    return table, lengths


@pytest.mark.parametrize("K", [5, 16, 64])
def test_kernel_matches_the_reference_on_random_rows(K):
    rng = random.Random(K)
    table, lengths = vocabulary(rng, 300, 280)             # ids 280..299: no text
    ends = torch.zeros(300, dtype=torch.int8)
    ends[[3, 290]] = 1
    B = 12
    ids = torch.stack([torch.tensor(rng.sample(range(300), K)) for _ in range(B)])          # (B, K) any order
    values = torch.randn(B, K, generator=torch.Generator().manual_seed(K)) * 2
    values[ids == 3] += 2.0
    values[0, : K // 2] = float("-inf")
    values[1, 0] = float("nan")
    values[2] = 0.5                                                                         # all tied
    values[3] = float("-inf")                                                               # no candidate
    out = (torch.full_like(ids, -7), torch.full_like(values, float("nan")), torch.full((B,), 99, dtype=torch.int8))
    got = infill_keep(values, ids, table, lengths, ends, out=out)
    want = infill_keep_reference(values, ids, table, lengths, ends)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    assert not out[1].isnan().any() and set(out[2].tolist()) <= {0, 1}


def test_bad_inputs_are_refused_with_a_clear_error():
    table, lengths = vocabulary(random.Random(0), 10, 10)
    ends = torch.zeros(10, dtype=torch.int8)
    values, ids = torch.zeros(1, 4), torch.arange(4)[None]
    with pytest.raises(ValueError, match="float32"):
        infill_keep(values.double(), ids, table, lengths, ends)
    with pytest.raises(ValueError, match="int64"):
        infill_keep(values, ids.int(), table, lengths, ends)
    with pytest.raises(ValueError, match="candidates"):
        infill_keep(torch.zeros(1, 200), torch.arange(200)[None], table, lengths, ends)
    with pytest.raises(ValueError, match="lengths"):
        infill_keep(values, ids, table, lengths.long(), ends)


def test_n_is_the_callers_array_size_where_given():
    """llama.cpp's end test is 3 * p(end) * n > p(text) with n its candidate array's size, banned tokens (-inf)
    counted. Four candidates (end 0.05, text 0.5, 0.3, 0.15) and four at -inf: n 8, 3 * 0.05 * 8 = 1.2 > 0.95, the end
    alone; n 4 (nothing given: the candidates not at -inf), 0.6 < 0.95: text, 0.5 and 0.3 stay with the end."""
    table, lengths = torch.zeros(8, 1, dtype=torch.uint8), torch.ones(8, dtype=torch.int32)
    table[:, 0] = torch.tensor(list(b"_xyzwvut"), dtype=torch.uint8)
    ends = torch.zeros(8, dtype=torch.int8)
    ends[0] = 1
    values = torch.tensor([[0.05, 0.5, 0.3, 0.15] + [0.0] * 4]).log().repeat(2, 1)
    values[:, 4:] = float("-inf")
    ids = torch.arange(8).repeat(2, 1)
    sizes = torch.tensor([8, 4])

    def kept(out):                                      # the ids kept in each row (the outputs are by rank)
        return [sorted(i for i, v in zip(row_ids, row) if v > float("-inf"))
                for row_ids, row in zip(out[0].tolist(), out[1].tolist())]
    assert kept(infill_keep(values, ids, table, lengths, ends, sizes=sizes)) == [[0], [0, 1, 2]]
    assert kept(infill_keep_reference(values, ids, table, lengths, ends, sizes=sizes)) == [[0], [0, 1, 2]]
    assert kept(infill_keep(values, ids, table, lengths, ends)) == [[0, 1, 2], [0, 1, 2]]


@pytest.mark.parametrize("K", [16, 64])
def test_kernel_matches_the_reference_with_array_sizes(K):
    """Random rows and sizes from the candidates not at -inf to past K: the same outputs as the reference, and some
    rows decided otherwise than with n the candidates not at -inf."""
    rng = random.Random(100 + K)
    table, lengths = vocabulary(rng, 300, 280)
    ends = torch.zeros(300, dtype=torch.int8)
    ends[3::10] = 1
    B = 16
    ids = torch.stack([torch.tensor(rng.sample(range(300), K)) for _ in range(B)])
    values = torch.randn(B, K, generator=torch.Generator().manual_seed(K)) * 2
    values -= torch.where(ends[ids].bool(), torch.tensor([[rng.uniform(1, 8)] for _ in range(B)]), 0.0)   # p(end)
    values[:, K // 2:] = float("-inf")                                                       # banned or cut
    sizes = torch.tensor([K // 2 + rng.choice([0, 1, 5, 40, 300]) for _ in range(B)])
    got = infill_keep(values, ids, table, lengths, ends, sizes=sizes)
    want = infill_keep_reference(values, ids, table, lengths, ends, sizes=sizes)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    counted_live = infill_keep_reference(values, ids, table, lengths, ends)[1]
    assert ((got[1] > float("-inf")) != (counted_live > float("-inf"))).any(dim=-1).sum() >= 2
    with pytest.raises(ValueError, match="sizes"):
        infill_keep(values, ids, table, lengths, ends, sizes=sizes[:1])

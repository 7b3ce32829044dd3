"""The 8-bit cache's prefill with exact sink and window tokens, two ways: one masked softmax over the dequantized
cache and the exact copies side by side (any device), and two partials merged by their log-sum-exp (the 8-bit keys
under a causal mask aligned bottom-right, which FlashAttention runs on a GPU; here its PyTorch twin, and the exact
keys as a band by position). Same answer, over spans that start at 0, inside the sink, inside the first window and
far past it, longer than a chunk of the band (models.attention.PREFILL_BAND_CHUNK), GQA and MHA, prefixes whose
copies sit in ring slots in any order beside empty ones."""

import pytest
import torch

from kernels.validation import ExactTokens
from models.attention import _prefill_attention_masked, prefill_attention_two_pass, reference_lower_right

SINK, WINDOW, SLOTS = 16, 32, 64


def prior_copies(k_full, v_full, start, gen):
    """ExactTokens as KVCache.exact_before gives them: positions 0 .. min(SINK, start) - 1 and the last WINDOW
    before start in random slots, an older copy past the window, and empty slots (position -1: never written, or
    a draft at or past start, marked so) holding finite garbage (SDPA weighs a masked NaN value 0 x NaN)."""
    _, Hkv, _, D = k_full.shape
    ek = torch.full((1, Hkv, SLOTS, D), 5.0)
    ev = torch.full((1, Hkv, SLOTS, D), -5.0)
    pos = torch.full((1, SLOTS), -1, dtype=torch.int64)
    keep = sorted(set(range(min(SINK, start))) | set(range(max(0, start - WINDOW), start)))
    slots = torch.randperm(SLOTS, generator=gen).tolist()
    for p, slot in zip(keep, slots):
        ek[0, :, slot], ev[0, :, slot], pos[0, slot] = k_full[0, :, p], v_full[0, :, p], p
    if start - WINDOW - 3 >= SINK:
        old = slots[len(keep)]
        ek[0, :, old], ev[0, :, old], pos[0, old] = k_full[0, :, start - WINDOW - 3], v_full[0, :, start - WINDOW - 3], start - WINDOW - 3
    ek[0, :, slots[-1]], ev[0, :, slots[-1]] = 9.0, -9.0
    return ExactTokens(ek, ev, pos, SINK, WINDOW)


@pytest.mark.parametrize("Hq, Hkv", [(4, 4), (8, 2)])
@pytest.mark.parametrize("start, T", [(0, 1), (0, 70), (5, 3), (10, 40), (40, 9), (120, 1), (120, 57), (300, 200), (70, 530)])
def test_two_pass_prefill_is_the_masked_softmax(Hq, Hkv, start, T):
    gen = torch.Generator().manual_seed(1000 * start + T + Hq)
    D = 32
    S = start + T
    exact_k = torch.randn(1, Hkv, S, D, generator=gen)            # what the model computed at each position
    exact_v = torch.randn(1, Hkv, S, D, generator=gen)
    rough_k = exact_k + 0.1 * torch.randn(1, Hkv, S, D, generator=gen)   # stands in for the dequantized cache
    rough_v = exact_v + 0.1 * torch.randn(1, Hkv, S, D, generator=gen)
    q = 2 * torch.randn(1, Hq, T, D, generator=gen)
    prior = prior_copies(exact_k, exact_v, start, gen)
    k_new, v_new = exact_k[:, :, start:], exact_v[:, :, start:]
    want = _prefill_attention_masked(q, rough_k, rough_v, prior, k_new, v_new, start)
    got = prefill_attention_two_pass(q, rough_k, rough_v, prior, k_new, v_new, start, reference_lower_right)
    assert got is not None and not got.isnan().any()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # and the exact copies matter: the same with the rough keys everywhere differs
    if start + T > SINK:
        rough = prefill_attention_two_pass(q, rough_k, rough_v, prior._replace(k=prior.k + 0.5), k_new + 0.5,
                                           v_new, start, reference_lower_right)
        assert (rough - want).abs().max() > 1e-3


def test_a_missing_window_copy_is_said_not_read():
    gen = torch.Generator().manual_seed(7)
    k = torch.randn(1, 2, 100, 16, generator=gen)
    prior = prior_copies(k, k, 90, gen)
    gone = prior._replace(pos=prior.pos.masked_fill(prior.pos == 80, -1))
    q = torch.randn(1, 2, 10, 16, generator=gen)
    assert prefill_attention_two_pass(q, k, k, gone, k[:, :, 90:], k[:, :, 90:], 90, reference_lower_right) is None

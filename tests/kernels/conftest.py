"""Fixtures for the kernel tests: fresh random inputs and NaN-poisoned allocations."""

import pytest
import torch


@pytest.fixture
def poisoned_empty(monkeypatch):
    """Every float tensor torch.empty hands out is filled with NaN, so a kernel that leaves any
    output element unwritten (or reads a partial it should ignore) shows up as NaN."""
    real_empty = torch.empty

    def empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", empty)
    return empty


def make_inputs(B, Hq, Hkv, S, D, dtype, *, layout="bhsd", seed=None, lengths=None):
    """q (B, Hq, D) and caches (B, Hkv, S, D) of random normal values; `layout="bshd"` returns the
    caches as transposed views of (B, S, Hkv, D) buffers, as a model with that cache layout would."""
    gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    q = torch.randn(B, Hq, D, generator=gen).to(dtype)
    if layout == "bhsd":
        k = torch.randn(B, Hkv, S, D, generator=gen).to(dtype)
        v = torch.randn(B, Hkv, S, D, generator=gen).to(dtype)
    else:
        k = torch.randn(B, S, Hkv, D, generator=gen).to(dtype).transpose(1, 2)
        v = torch.randn(B, S, Hkv, D, generator=gen).to(dtype).transpose(1, 2)
    return q, k, v

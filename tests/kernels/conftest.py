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

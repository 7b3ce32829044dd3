"""Fixtures for the kernel tests: fresh random inputs and NaN-poisoned allocations."""

import pytest
import torch

from kernels.check import nan_filled


@pytest.fixture
def poisoned_empty(monkeypatch):
    """Every float tensor torch.empty hands out is filled with NaN, so a kernel that leaves any
    output element unwritten (or reads a partial it should ignore) shows up as NaN."""
    empty = nan_filled(torch.empty)
    monkeypatch.setattr(torch, "empty", empty)
    return empty

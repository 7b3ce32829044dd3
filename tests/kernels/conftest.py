"""Fixtures for the kernel tests: fresh random inputs and NaN-poisoned allocations."""

import pytest
import torch

from kernel_inputs import nan_poisoned_empty


@pytest.fixture
def poisoned_empty(monkeypatch):
    """Every float tensor torch.empty hands out is filled with NaN, so a kernel that leaves any
    output element unwritten (or reads a partial it should ignore) shows up as NaN."""
    empty = nan_poisoned_empty(torch.empty)
    monkeypatch.setattr(torch, "empty", empty)
    return empty

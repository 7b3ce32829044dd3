"""Fixtures for the kernel tests: fresh random inputs and NaN-poisoned allocations."""

import pytest
import torch
import torch._dynamo  # noqa: F401  (before any test patches torch.empty: see poisoned_empty)

from kernels.check import nan_filled


@pytest.fixture
def poisoned_empty(monkeypatch):
    """Every float tensor torch.empty hands out is filled with NaN, so a kernel that leaves any
    output element unwritten (or reads a partial it should ignore) shows up as NaN. torch._dynamo is imported
    before the patch: a custom op's first call under it (torch.ops.codecomplete.gemv_int4) imported Dynamo, which
    then took the patched torch.empty for the real one, and a later torch.compile of code calling torch.empty in
    the same worker (tests/models) failed as "marked as skipped"."""
    empty = nan_filled(torch.empty)
    monkeypatch.setattr(torch, "empty", empty)
    return empty

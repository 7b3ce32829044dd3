"""Random decode-attention inputs for the kernel tests (a module of its own: every test folder's
conftest is importable as `conftest`, so tests import helpers from uniquely named modules)."""

import torch


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

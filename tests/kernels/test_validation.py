"""Bad input to flash_decode (and the reference) is a ValueError naming the problem."""

import pytest
import torch

from kernels import flash_decode, reference


def good():
    return dict(q=torch.randn(2, 8, 64), k_cache=torch.randn(2, 2, 32, 64), v_cache=torch.randn(2, 2, 32, 64))


def call(fn, q, k_cache, v_cache, **kwargs):
    return fn(q, k_cache, v_cache, **kwargs)


BAD = [
    ("q must have 3 dimensions", dict(q=torch.randn(2, 8, 1, 64))),
    ("differ in shape", dict(v_cache=torch.randn(2, 2, 31, 64))),
    ("does not match the cache", dict(q=torch.randn(3, 8, 64))),
    ("multiple of key/value heads", dict(q=torch.randn(2, 9, 64))),
    ("head dim 8 not supported", dict(q=torch.randn(2, 8, 8), k_cache=torch.randn(2, 2, 32, 8),
                                      v_cache=torch.randn(2, 2, 32, 8))),
    ("head dim 320 not supported", dict(q=torch.randn(2, 8, 320), k_cache=torch.randn(2, 2, 4, 320),
                                        v_cache=torch.randn(2, 2, 4, 320))),
    ("must share a dtype", dict(q=torch.randn(2, 8, 64, dtype=torch.float16))),
    ("has dtype torch.int64", dict(q=torch.ones(2, 8, 64, dtype=torch.int64))),
    ("contiguous last dimension", dict(k_cache=torch.randn(2, 2, 64, 32).transpose(2, 3))),
    ("cache_seqlens must be an int32", dict(cache_seqlens=torch.tensor([3, 4]))),
    ("cache_seqlens must have shape (2,)", dict(cache_seqlens=torch.tensor([3], dtype=torch.int32))),
    ("must lie in 0..32", dict(cache_seqlens=torch.tensor([3, 33], dtype=torch.int32))),
    ("must lie in 0..32", dict(cache_seqlens=torch.tensor([-1, 3], dtype=torch.int32))),
    ("num_splits must be a positive int", dict(num_splits=0)),
]


@pytest.mark.parametrize("fn", [flash_decode, reference.flash_decode], ids=["triton", "reference"])
@pytest.mark.parametrize("message, change", BAD, ids=[m for m, _ in BAD])
def test_bad_input_is_a_clear_value_error(fn, message, change):
    args = good() | change
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        call(fn, **args)


def test_float64_is_reference_only():
    args = {name: t.double() for name, t in good().items()}
    with pytest.raises(ValueError, match="supported: float16, bfloat16, float32"):
        flash_decode(**args)
    assert reference.flash_decode(**args).dtype == torch.float64

"""Lengths the host cannot check: while a CUDA graph is captured flash_decode skips its check of cache_seqlens
(reading it would sync), so the kernels must stay inside the cache whatever a length says. A length past S
(a decode loop run past its cache) counts as S; a negative one as 0.

Each cache here is a view of a longer buffer whose positions past S hold NaN (values and scales): a kernel
reading past the cache returns NaN, as it would read another row's memory, or fault, on a GPU."""

import dataclasses

import pytest
import torch
from kernel_inputs import CACHE_DTYPES, quantized_copy

import kernels.validation
from kernels import flash_decode, plan_launch, reference
from kernels.interface import as_sequence_major, launch

EXTRA = 40   # positions of the buffer past the cache


def in_longer_buffer(x: torch.Tensor, poison) -> torch.Tensor:
    """x (B, Hkv, S, ...) as the first S positions of a buffer of S + EXTRA, the rest `poison`."""
    buffer = torch.full((x.shape[0], x.shape[1], x.shape[2] + EXTRA, *x.shape[3:]), poison, dtype=x.dtype)
    buffer[:, :, :x.shape[2]] = x
    return buffer[:, :, :x.shape[2]]


def poisoned_caches(B, Hq, Hkv, S, D, kv):
    """q and caches (with scales for an 8-bit kind) whose memory past S is NaN; V sequence-major for 8-bit."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(B, Hq, D, generator=gen)
    k, v = torch.randn(B, Hkv, S, D, generator=gen), torch.randn(B, Hkv, S, D, generator=gen)
    if kv == "same":
        return q, in_longer_buffer(k, float("nan")), in_longer_buffer(v, float("nan")), {}
    k8, k_scale, v8, v_scale = quantized_copy(k, v, dtype=CACHE_DTYPES[kv])
    v_stored = in_longer_buffer(v8.transpose(2, 3), 0).transpose(2, 3)      # (B, Hkv, D, S + EXTRA) storage
    assert v_stored.stride(-2) == 1 and v_stored.untyped_storage().nbytes() > v8.numel()
    return q, in_longer_buffer(k8, 0), v_stored, dict(k_scale=in_longer_buffer(k_scale, float("nan")),
                                                       v_scale=in_longer_buffer(v_scale, float("nan")))


KERNELS = [("dot", 8, 2, "same", {}), ("row", 4, 4, "int8", dict(row_kernel=True)),
           ("transposed", 8, 2, "fp8", dict(transposed=True))]


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("name, Hq, Hkv, kv, options", KERNELS, ids=[k[0] for k in KERNELS])
def test_a_length_past_the_cache_reads_only_the_cache(name, Hq, Hkv, kv, options, splits):
    B, S, D = 3, 70, 32
    q, k, v, scales = poisoned_caches(B, Hq, Hkv, S, D, kv)
    plan = dataclasses.replace(plan_launch(B, Hq, Hkv, S, D, scaled=bool(scales), num_splits=splits), block_n=16,
                               **options)
    lengths = torch.tensor([S + EXTRA, -7, S + 1], dtype=torch.int32)
    out, lse = launch(q, k, v, lengths, plan, **scales)                       # unchecked, as while capturing
    as_if = lengths.clamp(0, S)
    ref_out, ref_lse = reference.flash_decode(q, k, v, as_if, return_lse=True, **scales)
    assert not out.isnan().any()
    torch.testing.assert_close(out, ref_out, rtol=2e-2 if scales else 1e-5, atol=2e-2 if scales else 1e-5)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-3, atol=1e-3)


def test_flash_decode_skips_the_length_check_only_while_capturing(monkeypatch):
    q, k, v, _ = poisoned_caches(2, 4, 2, 50, 32, "same")
    lengths = torch.tensor([50 + EXTRA, 9], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"cache_seqlens must lie in 0\.\.50"):
        flash_decode(q, k, v, lengths)
    monkeypatch.setattr(kernels.validation, "_capturing", lambda device: True)   # a capture: no host check
    out = flash_decode(q, k, v, lengths, num_splits=2)
    torch.testing.assert_close(out, reference.flash_decode(q, k, v, lengths.clamp(max=50)), rtol=1e-5, atol=1e-5)

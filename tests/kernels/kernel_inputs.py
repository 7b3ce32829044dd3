"""Random decode-attention inputs for the kernel tests (a module of its own: every test folder's
conftest is importable as `conftest`, so tests import helpers from uniquely named modules)."""

import torch


def make_inputs(B, Hq, Hkv, S, D, dtype, *, layout="bhsd", seed=None, lengths=None):
    """q (B, Hq, D) and caches (B, Hkv, S, D) of random normal values; `layout="bshd"` returns the
    caches as transposed views of (B, S, Hkv, D) buffers, as a model with that cache layout would;
    `layout="vseq"`, V as a view of a (B, Hkv, D, S) buffer (sequence-major, as models store 8-bit GQA V)."""
    from kernels.interface import as_sequence_major
    gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    q = torch.randn(B, Hq, D, generator=gen).to(dtype)
    if layout in ("bhsd", "vseq"):
        k = torch.randn(B, Hkv, S, D, generator=gen).to(dtype)
        v = torch.randn(B, Hkv, S, D, generator=gen).to(dtype)
        if layout == "vseq":
            v = as_sequence_major(v)
    else:
        k = torch.randn(B, S, Hkv, D, generator=gen).to(dtype).transpose(1, 2)
        v = torch.randn(B, S, Hkv, D, generator=gen).to(dtype).transpose(1, 2)
    return q, k, v


CACHE_DTYPES = {"fp8": torch.float8_e4m3fn, "int8": torch.int8}  # the 8-bit caches, by the tests' names


def quantized_copy(k, v, layout="bhsd", dtype=torch.float8_e4m3fn):
    """8-bit copies (float8_e4m3fn or int8) of k, v (B, Hkv, S, D) with their per-token scales, via the
    reference quantizer: (k8, k_scale, v8, v_scale). `layout="bshd"` stores the 8-bit values (and scales)
    as transposed views of (B, S, Hkv, ...) buffers; `layout="vseq"` stores V's values sequence-major."""
    from kernels.interface import as_sequence_major
    from kernels.reference import quantize
    result = []
    for x in (k, v):
        if layout == "vseq" and x is v:
            values, scale = quantize(x, dtype)
            result += [as_sequence_major(values), scale]
        elif layout == "bshd":
            values, scale = quantize(x.transpose(1, 2).contiguous(), dtype)   # (B, S, Hkv, D), (B, S, Hkv)
            result += [values.transpose(1, 2), scale.transpose(1, 2)]
        else:
            result += list(quantize(x, dtype))
    return tuple(result)


def assert_interpreter_e4m3(got, expected):
    """e4m3 bytes a Triton kernel wrote under the interpreter against PyTorch's. The interpreter's fp32 -> e4m3
    conversion rounds halves away from zero, truncates subnormals, and drops the carry when rounding up crosses
    a power of two (124 -> 64, not 128); sm_90's cvt rounds to nearest even, and kernels.bench --check compares
    the GPU's bytes with PyTorch's exactly. Here: at most one step apart, or that lost carry, or both at most
    e4m3's smallest normal (2^-6: codes 0-8, where the truncated subnormals land up to 4 codes off; about one
    draw in 50 of the append test's meets one)."""
    from kernels.reference import e4m3_steps_apart
    steps = e4m3_steps_apart(got, expected)
    g, e = got.view(torch.uint8).int(), expected.view(torch.uint8).int()
    lost_carry = ((g & 7) == 0) & ((e & 7) == 0) & (e - g == 8)
    tiny = ((g & 0x7F) <= 8) & ((e & 0x7F) <= 8) & ((g >> 7) == (e >> 7))
    assert ((steps <= 1) | lost_carry | tiny).all() and (steps == 0).float().mean() > 0.9


"""The fused append (and fp8 quantization) kernel against the PyTorch reference, under the interpreter."""

import pytest
import torch
from kernel_inputs import CACHE_DTYPES, assert_interpreter_e4m3, make_inputs, quantized_copy

from kernels import append_kv, check, flash_decode, reference
from kernels.append import append_kv_triton


def caches(B, Hkv, S, D, dtype, layout, cache):
    """Caches in `dtype`, or 8-bit ("fp8", "int8") with scales."""
    _, k, v = make_inputs(B, Hkv, Hkv, S, D, dtype, layout=layout)
    if cache == "same":
        return k, v, {}
    k8, ks, v8, vs = quantized_copy(k, v, layout=layout, dtype=CACHE_DTYPES[cache])
    return k8, v8, {"k_scale": ks, "v_scale": vs}


@pytest.mark.parametrize("cache", ["same", "fp8", "int8"])
@pytest.mark.parametrize("layout, T, dtype, Hkv, D",
                         [("bhsd", 1, torch.bfloat16, 4, 64), ("bshd", 3, torch.float16, 3, 80),
                          ("bhsd", 16, torch.float32, 2, 32), ("vseq", 2, torch.bfloat16, 4, 64)])
def test_append_kernel_matches_reference(layout, T, dtype, Hkv, D, cache):
    B, S = 3, 40
    k, v, scales = caches(B, Hkv, S, D, dtype, layout, cache)
    k_new = torch.randn(B, Hkv, T, D).to(dtype) * torch.logspace(-2, 2, Hkv)[None, :, None, None].to(dtype)
    v_new = torch.randn(B, Hkv, T, D).to(dtype)
    k_new[0, 0, 0] = 0  # an all-zero row: scale 1
    if dtype == torch.float32:  # a row whose amax / qmax underflows to 0: scale 1 too, not 0 (0 / 0 values)
        k_new[1, 0, 0] = 0
        k_new[1, 0, 0, 1] = 1e-44
    pos = torch.tensor([0, S - T, 11], dtype=torch.int64)
    want = [t.clone() for t in (k, v, *scales.values())]
    reference.append_kv(k_new, v_new, *want[:2], pos, *want[2:])

    append_kv_triton(k_new, v_new, k, v, pos, **scales)

    if cache != "fp8":  # int8: the same bytes here as on the GPU (its rounding is two fp32 additions)
        assert torch.equal(k, want[0]) and torch.equal(v, want[1])
        if cache == "int8":
            assert torch.equal(scales["k_scale"], want[2]) and torch.equal(scales["v_scale"], want[3])
            assert scales["k_scale"][0, 0, 0] == 1 and k.abs().max() == 127
            assert dtype != torch.float32 or scales["k_scale"][1, 0, S - T] == 1
        return
    for got, expected in ((k, want[0]), (v, want[1])):
        assert_interpreter_e4m3(got, expected)
    assert torch.equal(scales["k_scale"], want[2]) and torch.equal(scales["v_scale"], want[3])
    assert scales["k_scale"][0, 0, 0] == 1
    assert dtype != torch.float32 or scales["k_scale"][1, 0, S - T] == 1


def test_append_then_decode_reads_what_was_written(poisoned_empty):
    """The decode step's order: append the token's K/V at len-1, then attend over len keys."""
    B, Hkv, Hq, S, D = 2, 2, 8, 64, 32
    k, v, _ = caches(B, Hkv, S, D, torch.float32, "bshd", "same")
    want_k, want_v = k.clone(), v.clone()
    lengths = torch.tensor([10, 64], dtype=torch.int32)
    k_new, v_new = torch.randn(2, B, Hkv, 1, D)
    append_kv_triton(k_new, v_new, k, v, lengths.long() - 1)
    reference.append_kv(k_new, v_new, want_k, want_v, lengths.long() - 1)
    q = torch.randn(B, Hq, D)
    out = flash_decode(q, k, v, lengths)
    ref = reference.flash_decode(q.double(), want_k.double(), want_v.double(), lengths)
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-5


def test_cpu_append_is_the_reference():
    """On the CPU kernels.append_kv is PyTorch (the model's CPU path), byte for byte the reference."""
    k, v, scales = caches(2, 2, 16, 32, torch.bfloat16, "bshd", "fp8")
    want = [t.clone() for t in (k, v, *scales.values())]
    k_new, v_new = torch.randn(2, 2, 2, 2, 32).to(torch.bfloat16)
    pos = torch.tensor([3, 14])
    append_kv(k_new, v_new, k, v, pos, **scales)
    reference.append_kv(k_new, v_new, *want[:2], pos, *want[2:])
    for got, expected in zip((k, v, *scales.values()), want):
        assert torch.equal(got.view(torch.uint8) if got.dtype == torch.float8_e4m3fn else got,
                           expected.view(torch.uint8) if expected.dtype == torch.float8_e4m3fn else expected)


def test_fp8_scales_are_correctly_rounded_whatever_divides():
    """Every float32 amax in [1, 2) (every mantissa; other binades only shift the exponent): the
    reference's scale is the correctly rounded amax / 448 (the Triton kernel's div_rn), and stays so
    when float64 divides by a reciprocal, as PyTorch does on CUDA for a Python-number divisor. The
    float32 reciprocal that the GPU run 2026-11-30 used differs on most of them (its append check failed)."""
    amax = (torch.arange(2**23, dtype=torch.int32) | (127 << 23)).view(torch.float32)
    exact = amax / torch.full_like(amax, 448.0)                               # IEEE float32 division
    assert torch.equal(reference.quant_scale(amax), exact)
    assert torch.equal((amax.double() * (1 / 448.0)).float(), exact)          # CUDA's a * (1 / b) in float64
    fp32_reciprocal = (amax.double() * torch.tensor(1 / 448.0).float().double()).float()
    assert (fp32_reciprocal != exact).float().mean() > 0.5
    assert reference.quant_scale(torch.zeros(3)).eq(1).all()


def test_append_differences_say_what_differs():
    """The GPU check's report: one e4m3 code moved by a step and one scale by an ulp are counted,
    sized in steps, ulps and dequantized value; equal results report nothing."""
    k, v, scales = caches(2, 3, 20, 32, torch.bfloat16, "bhsd", "fp8")
    want = [k, v, scales["k_scale"], scales["v_scale"]]
    assert check.append_differences([t.clone() for t in want], want) == {
        "differing_bytes": 0, "bytes": 2 * k.numel(), "max_e4m3_steps": 0, "max_dequant_abs": 0.0,
        "max_dequant_rel_amax": 0.0, "differing_scales": 0, "max_scale_ulps": 0}
    got = [t.clone() for t in want]
    byte = got[1].view(torch.uint8)
    byte[1, 2, 5, 7] = (byte[1, 2, 5, 7] & 0x80) | ((byte[1, 2, 5, 7] & 0x7F) - 1)  # one step toward zero
    got[2].view(torch.int32)[0, 1, 3] += 1                                         # one ulp larger
    diff = check.append_differences(got, want)
    assert (diff["differing_bytes"], diff["max_e4m3_steps"], diff["differing_scales"], diff["max_scale_ulps"]) == (1, 1, 1, 1)
    one_step = (v[1, 2, 5, 7].double() - got[1][1, 2, 5, 7].double()).abs() * scales["v_scale"][1, 2, 5].double()
    scale_change = (got[2][0, 1, 3].double() - want[2][0, 1, 3].double()) * k[0, 1, 3].double().abs().max()
    assert diff["max_dequant_abs"] == pytest.approx(max(one_step.item(), scale_change.item()), rel=1e-9)
    # One e4m3 step, relative to the row's amax (448 x scale): at most 32 / 448, a step in the top binade
    # (256..448), which a random row reaches whenever the changed value is its amax or near it.
    assert 0 < diff["max_dequant_rel_amax"] <= 32 / 448 * (1 + 1e-12)


def test_the_number_of_new_tokens_is_a_runtime_argument():
    """One binary for every prefill length: as a constant of the kernel, each new number of tokens cost a
    compile (117-134 ms on an H200, bench/results/h200-cold/)."""
    import inspect

    from kernels.append import _append_kv_kernel

    function = _append_kv_kernel
    while hasattr(function, "fn"):  # the Python function under the JIT (and the interpreter's) wrappers
        function = function.fn
    parameters = inspect.signature(function).parameters
    constexprs = {name for name, p in parameters.items() if "constexpr" in str(p.annotation)}
    assert "T" in parameters and "T" not in constexprs
    assert {"BLOCK_H", "BLOCK_D", "SCALED"} <= constexprs

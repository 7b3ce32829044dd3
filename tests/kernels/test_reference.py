"""The PyTorch reference of the multi-token, fp8 and append contracts, checked against independent
constructions (T one-token calls, a dequantized 16-bit cache, element-wise writes)."""

import itertools

import pytest
import torch
from kernel_inputs import make_inputs, quantized_copy

from kernels import reference
from kernels.reference import FP8_MAX, quantize_fp8


@pytest.mark.parametrize("T", [1, 2, 5, 16])
def test_multi_token_is_t_single_token_calls(T):
    """Query t of the last T tokens sees exactly what a one-token step at length len-T+t+1 sees."""
    B, Hq, Hkv, S, D = 3, 8, 2, 40, 32
    q, k, v = make_inputs(B, Hq, Hkv, S, D, torch.float64)
    q = torch.randn(B, Hq, T, D, dtype=torch.float64)
    lengths = torch.tensor([S, T, 17 + T], dtype=torch.int32)
    out, lse = reference.flash_decode(q, k, v, lengths, return_lse=True)
    assert out.shape == (B, Hq, T, D) and lse.shape == (B, Hq, T)
    for t in range(T):
        one, one_lse = reference.flash_decode(q[:, :, t], k, v, lengths - T + t + 1, return_lse=True)
        torch.testing.assert_close(out[:, :, t], one, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(lse[:, :, t], one_lse)


@pytest.mark.parametrize("T", [1, 3])
def test_references_are_textbook_attention(T):
    """Every reference against attention written out one (row, head, token) at a time: query head h reads KV head
    h // (Hq / Hkv) (transformers' repeat_kv), token t of the last T sees keys 0..len - T + t, scores scaled by
    D^-0.5. The kernels are checked against these references, so an off-by-one or a head mapping shared by all of
    them (and copied into a kernel) would otherwise pass every comparison."""
    B, Hq, Hkv, S, D = 3, 6, 2, 20, 16
    q, k, v = make_inputs(B, Hq, Hkv, S, D, torch.float64)
    q = torch.randn(B, Hq, T, D, dtype=torch.float64)
    lengths = torch.tensor([S, T, 9 + T], dtype=torch.int32)
    want = torch.empty(B, Hq, T, D, dtype=torch.float64)
    want_lse = torch.empty(B, Hq, T, dtype=torch.float64)
    for b, h, t in itertools.product(range(B), range(Hq), range(T)):
        n = int(lengths[b]) - T + t + 1                                   # keys 0..n-1 visible
        kv = h // (Hq // Hkv)
        scores = k[b, kv, :n] @ q[b, h, t] / D ** 0.5                      # (n,)
        want[b, h, t] = torch.softmax(scores, dim=0) @ v[b, kv, :n]
        want_lse[b, h, t] = torch.logsumexp(scores, dim=0)
    out, lse = reference.flash_decode(q, k, v, lengths, return_lse=True)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, want_lse.float())
    split, split_lse = reference.split_kv_decode(q, k, v, lengths, num_splits=3, block_n=4, return_lse=True)
    torch.testing.assert_close(split, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(split_lse, want_lse.float())
    # eager rounds its softmax to float32, as transformers' eager attention does
    torch.testing.assert_close(reference.eager_decode(q, k, v, lengths), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("T", [1, 3])
def test_garbage_past_each_rows_length_is_ignored(T):
    """The kernels' contract, which the oracle shares: NaN and inf keys and values (and 8-bit scales) past a row's
    length never reach its output; its keys past it were already masked, its values leaked NaN (0 x NaN)."""
    B, Hq, Hkv, S, D = 3, 8, 2, 40, 32
    q, k, v = make_inputs(B, Hq, Hkv, S, D, torch.float64)
    q = torch.randn(B, Hq, T, D, dtype=torch.float64) if T > 1 else q
    lengths = torch.tensor([S, T, 17], dtype=torch.int32)
    want = reference.flash_decode(q, k, v, lengths)
    k8, ks, v8, vs = quantized_copy(k, v)
    want8 = reference.flash_decode(q, k8, v8, lengths, k_scale=ks, v_scale=vs)
    for b, n in enumerate(lengths.tolist()):
        k[b, :, n:], v[b, :, n:] = float("nan"), float("inf")
        k8.view(torch.uint8)[b, :, n:] = v8.view(torch.uint8)[b, :, n:] = 0x7F            # e4m3 NaN
        ks[b, :, n:] = vs[b, :, n:] = float("nan")
    assert want.abs().max() > 0.1 and torch.equal(reference.flash_decode(q, k, v, lengths), want)
    assert torch.equal(reference.flash_decode(q, k8, v8, lengths, k_scale=ks, v_scale=vs), want8)


def test_fp8_reference_is_attention_over_the_dequantized_cache():
    q, k, v = make_inputs(2, 8, 2, 50, 64, torch.bfloat16)
    k8, ks, v8, vs = quantized_copy(k, v)
    lengths = torch.tensor([50, 0], dtype=torch.int32)
    out = reference.flash_decode(q.double(), k8, v8, lengths, k_scale=ks, v_scale=vs)
    dense = reference.flash_decode(q.double(), k8.double() * ks.double()[..., None],
                                   v8.double() * vs.double()[..., None], lengths)
    torch.testing.assert_close(out, dense, rtol=1e-12, atol=1e-12)
    assert (out[1] == 0).all()


@pytest.mark.parametrize("T, eight_bit", [(1, False), (4, False), (1, True)])
def test_eager_baseline_is_attention_in_the_models_dtype(T, eight_bit):
    """The benchmarks' "eager" (transformers' steps in bf16) against float64: within a few bf16 roundings,
    and as close as bf16 SDPA's math backend gets; a row without keys is zeros, not NaN."""
    B, Hq, Hkv, S, D = 3, 8, 2, 96, 64
    q, k, v = make_inputs(B, Hq, Hkv, S, D, torch.bfloat16)
    q = torch.randn(B, Hq, T, D, dtype=torch.bfloat16) if T > 1 else q
    lengths = torch.tensor([S, 0 if T == 1 else T, 40], dtype=torch.int32)     # T = 1: a row without keys
    scales = {}
    if eight_bit:
        k, ks, v, vs = quantized_copy(k, v)
        scales = {"k_scale": ks, "v_scale": vs}
    out = reference.eager_decode(q, k, v, lengths, **scales)
    exact = reference.flash_decode(q.double(), k if eight_bit else k.double(), v if eight_bit else v.double(),
                                   lengths, **scales)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    assert T > 1 or (out[1] == 0).all()
    error = (out.double() - exact).abs().max().item()
    scale = exact.abs().max().item()
    # In bf16 ulps of the largest output: bf16 caches at most 3.8 over 2,000 seeds; an 8-bit cache is dequantized to
    # bf16 first (one more rounding of every key and value), at most 6.0 over 2,000 seeds (4 failed 1 run in 200).
    # A wrong mask, scale or head pairing errs by hundreds.
    assert 0 < error < (8 if eight_bit else 4) * 2 ** -8 * scale


@pytest.mark.parametrize("T, fp8", [(1, False), (5, True), (16, False)])
def test_split_kv_twin_agrees(T, fp8):
    q, k, v = make_inputs(3, 12, 4, 333, 64, torch.float64)
    q = torch.randn(3, 12, T, 64, dtype=torch.float64)
    scales = {}
    if fp8:
        k, scales["k_scale"], v, scales["v_scale"] = quantized_copy(k, v)
    lengths = torch.tensor([333, T, 65 + T], dtype=torch.int32)
    ref_out, ref_lse = reference.flash_decode(q, k, v, lengths, return_lse=True, **scales)
    for splits in (1, 2, 7):
        out, lse = reference.split_kv_decode(q, k, v, lengths, num_splits=splits, block_n=16,
                                             return_lse=True, **scales)
        torch.testing.assert_close(out, ref_out, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(lse, ref_lse)


def test_quantize_fp8_scale_and_error():
    x = torch.randn(6, 4, 128) * torch.logspace(-3, 3, 6)[:, None, None]
    x[0, 0] = 0  # an all-zero row: scale 1, values 0
    values, scale = quantize_fp8(x)
    assert values.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32 and scale.shape == (6, 4)
    amax = x.abs().amax(-1)
    assert scale[0, 0] == 1 and (values[0, 0].float() == 0).all()
    torch.testing.assert_close(scale[amax > 0], amax[amax > 0] / FP8_MAX)
    assert values.float().abs().amax(-1)[amax > 0].eq(FP8_MAX).all()  # the largest maps to 448
    # e4m3 keeps 3 mantissa bits: round to nearest is within 2^-4 relative, or half the subnormal step
    err = (values.float() * scale[..., None] - x).abs()
    bound = torch.maximum(x.abs() * 2.0 ** -4, scale[..., None] * 2.0 ** -10)
    assert (err <= bound).all()


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.int8])
def test_a_row_too_small_for_a_scale_gets_scale_1_not_nan(dtype):
    """A float32 row whose amax is a denormal under qmax x 2^-149 (here 2^-149 itself, next to exact zeros): amax / qmax
    rounds to 0, and a scale of 0 made e4m3 values of 0 / 0, NaN, which reached the attention output on the CPU."""
    x = torch.zeros(3, 64)
    x[0] = torch.randn(64)
    x[1, 5] = torch.finfo(torch.float32).smallest_normal * 2.0 ** -23      # 2^-149, the smallest denormal
    x[2, :3] = torch.tensor([8e-44, -1e-44, 3e-45])                           # under 127 x 2^-150: underflows too
    values, scale = reference.quantize(x, dtype)
    assert scale[0] > 0 and (scale[1:] == 1).all()
    restored = reference.dequantize(values[None, None], scale[None, None], torch.float32)[0, 0]
    assert not restored.isnan().any() and (restored[1:] - x[1:]).abs().max() <= 8e-44
    assert (restored[0] - x[0]).abs().max() <= x[0].abs().max() * 2.0 ** -4


@pytest.mark.parametrize("dtype", [torch.float8_e5m2, torch.float16, torch.uint8])
def test_quantize_makes_only_the_8_bit_kinds_it_knows(dtype):
    """Any other dtype came back as e4m3 values, float8_e5m2 included: a cache of another kind than asked for."""
    with pytest.raises(ValueError, match=f"quantize makes 8-bit caches, float8_e4m3fn or int8, not {dtype}"):
        reference.quantize(torch.randn(2, 64), dtype)


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("fp8", [False, True])
def test_append_kv_writes_exactly_its_positions(layout, fp8):
    B, Hkv, S, D, T = 3, 2, 24, 32, 4
    _, k_cache, v_cache = make_inputs(B, Hkv, Hkv, S, D, torch.bfloat16, layout=layout)
    scales = {}
    if fp8:
        k_cache, ks, v_cache, vs = quantized_copy(k_cache, v_cache, layout=layout)
        scales = {"k_scale": ks, "v_scale": vs}
    before = [t.clone() for t in (k_cache, v_cache, *scales.values())]
    k_new, v_new = torch.randn(2, B, Hkv, T, D).to(torch.bfloat16)
    pos = torch.tensor([0, S - T, 7], dtype=torch.int64)
    reference.append_kv(k_new, v_new, k_cache, v_cache, pos, **scales)
    written = torch.zeros(B, S, dtype=torch.bool)
    for b in range(B):
        written[b, pos[b]:pos[b] + T] = True
    for new, cache, scale, old in ((k_new, k_cache, scales.get("k_scale"), before[0]),
                                   (v_new, v_cache, scales.get("v_scale"), before[1])):
        for b in range(B):
            got = cache[b, :, pos[b]:pos[b] + T]
            if fp8:
                want, want_scale = quantize_fp8(new[b])
                assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))
                assert torch.equal(scale[b, :, pos[b]:pos[b] + T], want_scale)
            else:
                assert torch.equal(got, new[b])
        untouched = ~written[:, None, :].expand(B, Hkv, S)
        assert torch.equal(cache[untouched].float(), old[untouched].float())
    if fp8:
        assert torch.equal(scales["k_scale"][~written[:, None, :].expand(B, Hkv, S)],
                           before[2][~written[:, None, :].expand(B, Hkv, S)])

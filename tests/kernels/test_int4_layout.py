"""The 4-bit weight layout (kernels/int4_layout.py): nibble order, the group rule, and the rounding bound."""

import pytest
import torch

from kernels.int4_layout import Int4Weight, dequantize_int4, group_size, int4_bytes, quantize_int4, unpack_int4


@pytest.mark.parametrize("N, K, G", [(9, 576, 64), (5, 4096, 128), (3, 96, 32)])
def test_round_trip_within_half_a_step(N, K, G):
    torch.manual_seed(N * K)
    w = torch.randn(N, K, dtype=torch.float64) * torch.rand(N, 1, dtype=torch.float64) + 0.3 * torch.randn(N, 1)
    q = quantize_int4(w, G)
    assert q.packed.shape == (N, K // 2) and q.packed.dtype == torch.uint8
    assert q.scale.shape == q.offset.shape == (N, K // G) and q.scale.dtype == torch.float16
    back = dequantize_int4(q, torch.float64).reshape(N, K // G, G)
    groups = w.reshape(N, K // G, G)
    step = q.scale.double()[..., None]
    # Half a step of rounding, plus the float16 rounding of the offset (a min under it clamps to q = 0).
    slack = 0.5 * step + (q.offset.double() - groups.amin(2)).abs()[..., None] + 1e-12
    assert ((back - groups).abs() <= slack).all()
    assert (back - groups).abs().max() > 0.1 * step.max()      # it did round: the bound is not vacuous


def test_nibble_order_low_first():
    w = torch.arange(16, dtype=torch.float32).repeat(1, 8)          # (1, 128): q = the column's value mod 16
    q = quantize_int4(w, 128)
    assert q.offset.item() == 0 and q.scale.item() == 1
    assert q.packed[0, :8].tolist() == [0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE]
    assert torch.equal(unpack_int4(q.packed)[0].float(), w[0])


def test_constant_group_is_exact():
    w = torch.full((2, 64), -0.75)
    q = quantize_int4(w)
    assert q.scale.eq(1).all() and torch.equal(dequantize_int4(q), w)


def test_group_rule_and_bytes():
    assert [group_size(K) for K in (4096, 11008, 22016, 576, 1536, 96)] == [32] * 6     # the product's group
    assert quantize_int4(torch.randn(2, 576)).scale.shape == (2, 18)
    with pytest.raises(ValueError, match="groups of 32"):
        group_size(100)
    with pytest.raises(ValueError, match="groups of 64"):
        group_size(96, 64)
    with pytest.raises(ValueError, match="not 16"):
        group_size(96, 16)
    with pytest.raises(ValueError, match="2-D float"):
        quantize_int4(torch.zeros(4, 64, dtype=torch.int32))
    q = quantize_int4(torch.randn(6, 192), 64)
    assert int4_bytes(6, 192, 64) == sum(t.numel() * t.element_size() for t in q)
    assert isinstance(q, Int4Weight)

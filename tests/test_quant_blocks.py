"""Building blocks of methods/quant.py and methods/schemes.py against METHODS.md's formulas."""
from __future__ import annotations

import math

import pytest
import torch

from methods.base import NO_MARKS
from methods.quant import (
    FP16_TINY,
    GROUP_SIZE,
    asym_quantize,
    group_tokens,
    hadamard_matrix,
    load_codes,
    num_groups,
    outlier_table,
    pack_codes,
    put_flat,
    store_codes,
    sym_quantize,
    top_outlier_table,
    ungroup_tokens,
    unpack_codes,
)
from methods.schemes import Codec, KIVIScheme, QAQScheme, ResidualScheme, RTNScheme, StateBuilder

EPS = 1e-6


def _data(b=1, n=50, h=3, d=16, seed=0) -> torch.Tensor:
    """Channels of very different magnitudes, so per-channel scales matter."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, h, d, generator=g) * torch.logspace(-3, 1, d)
    return x


def _roundtrip(scheme, x, role="k", storage="int8"):
    codec = Codec(storage, NO_MARKS, x.shape[-1])
    sb = StateBuilder(codec)
    scheme.encode(x, role, sb, role)
    state = sb.build(x.shape[1], x.shape[2], x.shape[3])
    out = scheme.decode(state.tensors, role, role, codec, x.shape[1], x.dtype, "kv_dequant")
    return state, out


def test_group_and_ungroup_pad_with_zeros():
    x = _data(n=37)
    xg = group_tokens(x)
    assert xg.shape == (1, 3, GROUP_SIZE, 3, 16) and num_groups(37) == 3
    assert torch.equal(ungroup_tokens(xg, 37), x)
    assert torch.all(xg.reshape(1, -1, 3, 16)[:, 37:] == 0)
    assert group_tokens(_data(n=32)).shape == (1, 2, GROUP_SIZE, 3, 16)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_symmetric_roundtrip_within_half_a_scale(bits):
    xg = group_tokens(_data(n=40)).float()
    xg[:, 1, :, 0, 0] = 0.0  # an all-zero (group, head, channel): scale floored, codes 0
    codes, scale = sym_quantize(xg, bits, dim=2)
    assert scale.dtype == torch.float16 and scale.shape == (1, 3, 1, 3, 16)
    assert torch.all(scale.float() >= FP16_TINY)
    qmax = 2 ** (bits - 1) - 1
    assert codes.min() >= -qmax - 1 and codes.max() <= qmax
    assert torch.equal(codes, codes.round())
    xhat = codes * scale.float()  # the stored float16 scale is the one the codes used
    bound = scale.float() / 2 * (1 + EPS) + 1e-12
    assert torch.all((xg - xhat).abs() <= bound)


def test_symmetric_bound_survives_float16_rounding_of_the_scale():
    # amax / qmax = 1/3 * 1.0001 is not a float16 number; codes must use the rounded scale.
    x = torch.linspace(-1.0001, 1.0001, GROUP_SIZE).reshape(1, 1, GROUP_SIZE, 1, 1).repeat(1, 1, 1, 1, 8)
    x = x * torch.linspace(0.5, 3.7, 8)
    codes, scale = sym_quantize(x, 3, dim=2)
    assert torch.all((x - codes * scale.float()).abs() <= scale.float() / 2 * (1 + EPS))
    tiny = torch.full((1, 1, GROUP_SIZE, 1, 1), 3e-9)  # scale below float16's range: still finite
    codes, scale = sym_quantize(tiny, 4, dim=2)
    assert torch.isfinite(codes).all() and scale.item() == FP16_TINY


def test_two_bit_symmetric_is_ternary():
    codes, _ = sym_quantize(group_tokens(_data(n=64)).float(), 2, dim=2)
    assert set(codes.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert set(codes.unique().tolist()) == {-1.0, 0.0, 1.0}


@pytest.mark.parametrize("bits", [2, 4])
def test_asymmetric_per_channel_codes_and_bound(bits):
    xg = group_tokens(_data(n=48)).float()
    codes, scale, zero = asym_quantize(xg, bits, dim=2)
    assert codes.min() >= 0 and codes.max() <= 2**bits - 1
    assert zero.dtype == torch.float16 and torch.equal(zero, zero.round())
    # Every (group, head, channel) of this data spans zero, where the bound holds.
    assert torch.all((xg.amin(2) < 0) & (xg.amax(2) > 0))
    xhat = (codes - zero.float()) * scale.float()
    assert torch.all((xg - xhat).abs() <= scale.float() / 2 * (1 + EPS) + 1e-7)


def test_asymmetric_zero_point_is_clamped_as_specified():
    # METHODS.md clamps zero = round(-min/scale) to [0, 2^b-1]: an all-positive group keeps
    # zero = 0 and its largest values clip at (2^b - 1) * scale.
    x = torch.linspace(10, 11, GROUP_SIZE).reshape(1, 1, GROUP_SIZE, 1, 1)
    codes, scale, zero = asym_quantize(x, 4, dim=2)
    assert zero.item() == 0 and codes.max().item() == 15
    assert math.isclose((codes * scale.float()).max().item(), 1.0, rel_tol=1e-3)


def test_asymmetric_per_token_reduces_over_heads_and_channels():
    x = _data(n=20)
    codes, scale, zero = asym_quantize(x, 4, dim=(2, 3))
    assert scale.shape == (1, 20, 1, 1) and zero.shape == (1, 20, 1, 1)
    lo, hi = x.amin(dim=(2, 3)), x.amax(dim=(2, 3))
    expected = ((hi - lo) / 15).clamp_min(1e-8).to(torch.float16)
    assert torch.equal(scale[..., 0, 0], expected)


def test_hadamard_is_orthogonal_and_its_own_inverse():
    for d in (1, 2, 32, 128):
        h = hadamard_matrix(d, "cpu", torch.float32)
        assert torch.allclose(h @ h, torch.eye(d), atol=1e-6)
        assert torch.allclose(h @ h.T, torch.eye(d), atol=1e-6)
        assert torch.allclose(h.abs(), torch.full((d, d), d**-0.5))
        x = torch.randn(4, 7, d)
        assert torch.allclose(x @ h @ h, x, atol=1e-5)
    assert hadamard_matrix(8, "cpu", torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match="power-of-two"):
        hadamard_matrix(48, "cpu", torch.float32)


@pytest.mark.parametrize("bits", [2, 4])
def test_pack_unpack_roundtrip(bits):
    u = torch.randint(0, 2**bits, (3, 5, 13), dtype=torch.uint8)  # 13: last axis padded
    p = pack_codes(u, bits)
    assert p.dtype == torch.uint8 and p.shape == (3, 5, math.ceil(13 * bits / 8))
    assert torch.equal(unpack_codes(p, bits, 13), u)
    if bits == 4:  # code j at bits [4j, 4j + 4)
        assert pack_codes(torch.tensor([[3, 10]], dtype=torch.uint8), 4).item() == 3 | (10 << 4)


@pytest.mark.parametrize("bits,signed", [(2, True), (4, True), (2, False), (4, False)])
def test_code_storages_hold_the_same_codes(bits, signed):
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    q = torch.randint(lo, hi + 1, (2, 4, 16)).float()
    for storage, dtype, per in (("int8", torch.int8, 1), ("int16", torch.int16, 1), ("packed", torch.uint8, 8 // bits)):
        t, per_element = store_codes(q.clone(), bits, signed, storage)
        assert t.dtype == dtype and per_element == per and t.numel() * per == q.numel()
        assert torch.equal(load_codes(t, bits, signed, storage, 16, torch.float32), q)


def test_outlier_tables_and_flat_put():
    x = torch.zeros(2, 5, 2, 4)
    x[0, 1, 0, 2], x[1, 4, 1, 3], x[1, 0, 0, 0] = 50.0, -70.0, 20.0
    idx, val = outlier_table(x, torch.tensor(10.0))
    assert idx.dtype == torch.int32 and val.dtype == torch.float16
    assert sorted(val.tolist()) == [-70.0, 20.0, 50.0]
    idx2, val2 = top_outlier_table(x, torch.tensor(10.0), cap=2)
    assert val2.tolist() == [-70.0, 50.0]  # largest first, at most `cap`
    # put tokens [1, 4) of each batch into a buffer with a spare row: 50 lands, -70 and 20 do not
    buf = torch.zeros(2, 4, 2, 4)
    put_flat(buf, idx, val, num_tokens=5, first=1, count=3)
    assert buf[0, 0, 0, 2] == 50.0 and buf[:, :3].abs().sum() == 50.0


def test_residual_stage_beats_single_stage_at_the_same_base_bits():
    x = _data(n=80)
    for bits in (2, 4):
        _, rtn = _roundtrip(RTNScheme(bits), x)
        for slice_groups in (None, 2):
            _, prq = _roundtrip(ResidualScheme(bits, 4, slice_groups), x)
            assert (prq - x).norm() < 0.2 * (rtn - x).norm()
    a = _roundtrip(ResidualScheme(4, 4, 1), x)[1]
    b = _roundtrip(ResidualScheme(4, 4, None), x)[1]
    assert torch.equal(a, b)  # slicing changes memory, not results


@pytest.mark.parametrize("role", ["k", "v"])
def test_qaq_restores_outliers_exactly(role):
    x = _data(n=40)
    spots = [(0, 3, 1, 5, 300.0), (0, 17, 2, 0, -250.5), (0, 39, 0, 15, 1024.0)]
    for b, t, h, d, value in spots:
        x[b, t, h, d] = value  # float16-exact values far beyond 6 sigma
    state, out = _roundtrip(QAQScheme(4, 6.0), x, role)
    assert state.tensors[f"{role}_outlier_idx"].numel() >= 3
    for b, t, h, d, value in spots:
        assert out[b, t, h, d].item() == value
    plain = _roundtrip(KIVIScheme(4), x, role)[1]
    mask = torch.ones_like(x, dtype=torch.bool)
    for b, t, h, d, _ in spots:
        mask[b, t, h, d] = False
    assert (out - x)[mask].norm() < (plain - x)[mask].norm()  # clamping tightened the scales


@pytest.mark.parametrize("d", [1, 2, 16, 128])
def test_hadamard_matrix_is_sylvesters_normalized_matrix(d):
    h = hadamard_matrix(d, "cpu", torch.float64)
    sylvester = torch.ones(1, 1, dtype=torch.float64)
    while sylvester.shape[0] < d:
        sylvester = torch.cat([torch.cat([sylvester, sylvester], 1), torch.cat([sylvester, -sylvester], 1)], 0)
    assert torch.equal(h, sylvester / math.sqrt(d))

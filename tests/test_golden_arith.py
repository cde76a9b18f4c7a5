"""golden arithmetic (numerics.md section 3.1 and 3.2) against the exact reference."""

import itertools
from fractions import Fraction

import numpy as np
import pytest

from hbfp_hw import golden
from hbfp_hw.formats import BFPFormat

from .golden_checks import (
    F32,
    MAX_F32,
    bits,
    dot_mismatches,
    f32,
    fp32_add_special_mismatches,
    random_finite_bits,
)
from .golden_reference import (
    CANONICAL_NAN,
    NAN_BLOCK,
    ref_accumulate,
    ref_block_dot,
    ref_fp32_add,
    ref_round_to_fp32,
)

NEG_ZERO = 0x80000000


def ref_to_float32(s, e):
    from fractions import Fraction
    return ref_round_to_fp32(Fraction(int(s)) * Fraction(2) ** int(e))


# -- int_dot / product_exponent ---------------------------------------------------------------

def test_int_dot():
    rng = np.random.default_rng(0)
    for w, n in [(2, 1), (8, 16), (16, 4096), (16, 64)]:
        m = 2 ** (w - 1) - 1
        a = rng.integers(-m, m + 1, size=(3, 5, n), dtype=np.int32)
        b = rng.integers(-m, m + 1, size=(3, 5, n), dtype=np.int32)
        s = golden.int_dot(a, b)
        assert s.dtype == np.int64 and s.shape == (3, 5)
        for idx in np.ndindex(3, 5):
            assert int(s[idx]) == sum(int(x) * int(y) for x, y in zip(a[idx], b[idx],
                                                                    strict=True))
    # the extreme: N * M^2 for w = 16, N = 4096 (needs 44 bits)
    full = np.full(4096, 32767, dtype=np.int32)
    assert int(golden.int_dot(full, full)) == 4096 * 32767 ** 2
    assert int(golden.int_dot(full, -full)) == -4096 * 32767 ** 2


def test_product_exponent():
    fmt = BFPFormat(8, 16)
    ea = np.array([0, 127, -127, 128, 5, 128])
    eb = np.array([0, 127, -127, 3, 128, 128])
    ep, nan = golden.product_exponent(ea, eb, fmt)
    assert nan.tolist() == [False, False, False, True, True, True]
    assert ep[~nan].tolist() == [-12, 242, -266]
    ep2, nan2 = golden.product_exponent(ea[:3], eb[:3], "bfp16")
    assert ep2.tolist() == [-28, 226, -282] and not nan2.any()
    e3 = BFPFormat(4, 2, exponent_bits=3)            # NaN code is 4 for e = 3
    ep3, nan3 = golden.product_exponent([4, 3, -3], [0, 4, 3], e3)
    assert nan3.tolist() == [True, True, False]
    assert int(ep3[2]) == -4


# -- to_float32 -------------------------------------------------------------------------------

def _check_to_float32(s, e):
    s = np.asarray(s, dtype=np.int64)
    e = np.asarray(e, dtype=np.int64)
    s, e = np.broadcast_arrays(s, e)
    got = bits(golden.to_float32(s, e))
    bad = 0
    for si, ei, gi in zip(s.reshape(-1), e.reshape(-1), got.reshape(-1), strict=True):
        if ref_to_float32(si, ei) != int(gi):
            bad += 1
    return bad


def test_to_float32_exhaustive_small():
    s = np.arange(-300, 301)[:, None]
    exps = np.concatenate([np.arange(-160, -138), np.arange(-130, -120), np.arange(118, 130),
                           np.arange(-3, 3)])[None, :]
    assert _check_to_float32(s, exps) == 0


def test_to_float32_wide_integers():
    rng = np.random.default_rng(1)
    ks = rng.integers(0, 53, size=3000)
    s = (rng.integers(1, 2**53, size=3000) >> (53 - ks - 1).clip(0)) * rng.choice([-1, 1], 3000)
    e = rng.integers(-240, 160, size=3000)
    assert _check_to_float32(s, e) == 0


def test_to_float32_ties_at_lsb():
    # s = 2^24 + odd at various exponents: exact ties at the FP32 LSB, both neighbours parities
    base = 2**24
    s = np.array([base + 1, base + 3, base + 5, -(base + 1), -(base + 3), 2**25 + 2, 2**25 + 6,
                  2**25 + 1, 2**25 + 3, 2**53 - 1, 2**52 + 2**28, 2**52 + 3 * 2**28])
    e = np.array([-200, -160, -150, -149, -126, -100, 0, 50, 100, 103, 104, 105])[:, None]
    assert _check_to_float32(s[None, :], e) == 0
    # hand-checked values
    t = golden.to_float32(np.array([base + 1, base + 3, 3, 1]), np.array([0, 0, -150, -150]))
    assert bits(t).tolist() == [0x4B800000, 0x4B800002, 0x00000002, 0x00000000]


@pytest.mark.parametrize("s, e, expected", [
    (0, 0, 0x00000000),
    (0, -300, 0x00000000),
    (0, 300, 0x00000000),
    (1, -149, 0x00000001),
    (-1, -149, 0x80000001),
    (1, -150, 0x00000000),                # tie with zero -> even (+0)
    (-1, -150, NEG_ZERO),                 # tiny negative -> -0.0
    (-1, -400, NEG_ZERO),
    (-3, -151, 0x80000001),               # 0.75 ulp -> 1 ulp
    (2**24 - 1, -150, 0x00800000),        # largest subnormal + 1/2 ulp: tie -> even = min normal
    (2**23 - 1, -149, 0x007FFFFF),
    (1, 127, 0x7F000000),
    (1, 128, 0x7F800000),
    (-1, 128, 0xFF800000),
    (2**24 - 1, 104, 0x7F7FFFFF),         # max finite
    (2**25 - 1, 103, 0x7F800000),         # tie above max finite -> Inf
    (2**26 - 3, 102, 0x7F7FFFFF),         # just below that tie
    (2**53 - 1, 500, 0x7F800000),
    (-(2**53 - 1), 500, 0xFF800000),
    (2**53 - 1, -600, 0x00000000),
])
def test_to_float32_cases(s, e, expected):
    got = bits(golden.to_float32(np.array([s]), np.array([e])))
    assert int(got[0]) == expected
    assert ref_to_float32(s, e) == expected


def test_to_float32_nan_mask():
    s = np.array([5, 0, -7, 0])
    e = np.array([0, 0, 200, -500])
    got = bits(golden.to_float32(s, e, nan=np.array([True, True, False, False])))
    assert got.tolist() == [CANONICAL_NAN, CANONICAL_NAN, 0xFF800000, 0]
    assert golden.to_float32(s, e).dtype == np.float32


# -- fp32_add / accumulate --------------------------------------------------------------------

def test_fp32_add_random():
    rng = np.random.default_rng(2)
    x = random_finite_bits(rng, 4000)
    y = np.concatenate([random_finite_bits(rng, 1000), -x[1000:2000],
                        np.nextafter(-x[2000:3000], F32(0)),
                        random_finite_bits(rng, 1000, min_field=0, max_field=3)])
    x[3000:] = random_finite_bits(rng, 1000, min_field=0, max_field=3)   # subnormal sums
    got = bits(golden.fp32_add(x, y))
    for xi, yi, gi in zip(bits(x), bits(y), got, strict=True):
        assert ref_fp32_add(int(xi), int(yi)) == int(gi)


def test_fp32_add_all_special_pairs():
    assert fp32_add_special_mismatches() == 0


@pytest.mark.parametrize("fmt", [BFPFormat(8, 16), BFPFormat(3, 2), BFPFormat(16, 4),
                                 BFPFormat(5, 8, exponent_bits=4)], ids=lambda f: f.name)
def test_dot_all_exponents_vs_reference(fmt):
    assert dot_mismatches(fmt, nblocks=500, rng_seed=fmt.mantissa_bits) == 0


@pytest.mark.parametrize("x, y, expected", [
    (0x3F800000, 0xBF800000, 0x00000000),
    (0x80000000, 0x80000000, NEG_ZERO),
    (0x7F800000, 0xFF800000, CANONICAL_NAN),
    (0xFFC01234, 0x00000000, CANONICAL_NAN),
    (0x7F7FFFFF, 0x7F7FFFFF, 0x7F800000),
    (0x00400000, 0x00400000, 0x00800000),
])
def test_fp32_add_cases(x, y, expected):
    assert int(bits(golden.fp32_add(f32(x), f32(y)))) == expected


def test_accumulate_sequential_order():
    one, tiny = 1.0, 2.0 ** -24
    # sequential: (0 + 1) + 2^-24 -> tie -> 1; + 2^-24 -> 1. Summing the tinies first gives
    # 1 + 2^-23 = 1.0000001: the order is observable.
    p = np.array([one, tiny, tiny], dtype=F32)
    assert float(golden.accumulate(p)) == 1.0
    assert float(golden.accumulate(p[::-1].copy())) == 1.0 + 2.0 ** -23
    # a long vector where numpy's pairwise summation differs from the sequential sum
    q = np.array([2.0 ** 24] + [1.0] * 255, dtype=F32)
    assert float(golden.accumulate(q)) == 2.0 ** 24
    assert float(np.sum(q)) != 2.0 ** 24                # pairwise would give another answer
    # overflow in the middle is sticky even if later terms would bring it back
    r = np.array([MAX_F32, MAX_F32, -MAX_F32], dtype=F32)
    assert np.isposinf(golden.accumulate(r))


def test_accumulate_starts_from_plus_zero():
    assert int(bits(golden.accumulate(np.array([-0.0], dtype=F32)))) == 0
    assert int(bits(golden.accumulate(np.array([-0.0, -0.0, -0.0], dtype=F32)))) == 0
    assert int(bits(golden.accumulate(np.array([-1.0, 1.0], dtype=F32)))) == 0
    assert int(bits(golden.accumulate(np.array([-2.0 ** -149], dtype=F32)))) == 0x80000001


def test_accumulate_nan_and_inf():
    inf = np.inf
    assert int(bits(golden.accumulate(np.array([inf, -inf, 1.0], dtype=F32)))) == CANONICAL_NAN
    assert int(bits(golden.accumulate(np.array([1.0, f32(0xFFC00001)], dtype=F32)))) == \
        CANONICAL_NAN
    assert np.isneginf(golden.accumulate(np.array([-inf, 5.0], dtype=F32)))


@pytest.mark.parametrize("axis", [0, 1, -1, 2])
def test_accumulate_random_vs_reference(axis):
    rng = np.random.default_rng(3 + axis)
    p = random_finite_bits(rng, (4, 7, 9), min_field=100, max_field=160)
    p[1, 2, 3] = np.inf
    p[2, 3, 4] = -np.inf
    p[3, 4, 5] = np.nan
    got = bits(golden.accumulate(p, axis=axis))
    moved = np.moveaxis(bits(p), axis, -1)
    assert got.shape == moved.shape[:-1]
    for idx in np.ndindex(*got.shape):
        assert int(got[idx]) == ref_accumulate(moved[idx])


# -- dot --------------------------------------------------------------------------------------

def _tensor(exps, mants, fmt):
    exps = np.asarray(exps, dtype=np.int16)
    mants = np.asarray(mants, dtype=np.int32)
    shape = (*exps.shape[:-1], exps.shape[-1] * fmt.block_size)
    return golden.BFPTensor(exps, mants, fmt, shape, len(shape) - 1)


def _ref_dots(a, b):
    fmt = a.fmt
    out = np.zeros(a.exponents.shape, dtype=np.uint32)
    for idx in np.ndindex(*a.exponents.shape):
        ea, eb = int(a.exponents[idx]), int(b.exponents[idx])
        ea = NAN_BLOCK if ea == fmt.nan_exponent else ea
        eb = NAN_BLOCK if eb == fmt.nan_exponent else eb
        out[idx] = ref_block_dot(ea, a.mantissas[idx], eb, b.mantissas[idx], fmt)
    return out


def test_dot_exhaustive_w3_b2():
    """Every pair of w=3, N=2 mantissa vectors at exponent pairs around underflow/overflow,
    and every exponent pair of a coarse grid for a few mantissa vectors."""
    fmt = BFPFormat(3, 2)
    m = np.array(list(itertools.product(range(-3, 4), repeat=2)))          # 49 vectors
    ma = np.repeat(m, len(m), axis=0)
    mb = np.tile(m, (len(m), 1))
    pairs = [(0, 0), (-127, -127), (-74, -74), (-75, -74), (-76, -75), (63, 63), (64, 63),
             (127, 127), (128, 0), (-3, 128)]
    for ea, eb in pairs:
        a = _tensor(np.full((len(ma), 1), ea), ma[:, None, :], fmt)
        b = _tensor(np.full((len(mb), 1), eb), mb[:, None, :], fmt)
        got = bits(golden.dot(a, b))
        assert got.shape == (len(ma), 1)
        assert np.array_equal(got, _ref_dots(a, b)), (ea, eb)
    grid = np.arange(-127, 129, 3)
    ea, eb = np.meshgrid(grid, grid, indexing="ij")
    ea, eb = ea.reshape(-1, 1), eb.reshape(-1, 1)
    for va, vb in [([3, 3], [3, 3]), ([-1, 2], [3, 1]), ([1, 0], [-1, 0])]:
        a = _tensor(ea, np.broadcast_to(np.array(va), (len(ea), 1, 2)), fmt)
        b = _tensor(eb, np.broadcast_to(np.array(vb), (len(eb), 1, 2)), fmt)
        assert np.array_equal(bits(golden.dot(a, b)), _ref_dots(a, b)), (va, vb)


@pytest.mark.parametrize("fmt", [BFPFormat(8, 16), BFPFormat(16, 64), BFPFormat(2, 4),
                                 BFPFormat(12, 8)], ids=lambda f: f.name)
def test_dot_random_blocks(fmt):
    rng = np.random.default_rng(fmt.mantissa_bits)
    nb = 400
    ma = rng.integers(-fmt.max_mantissa, fmt.max_mantissa + 1, size=(nb, 2, fmt.block_size))
    mb = rng.integers(-fmt.max_mantissa, fmt.max_mantissa + 1, size=(nb, 2, fmt.block_size))
    mb[::5] = -ma[::5]
    ea = rng.integers(-127, 129, size=(nb, 2))
    eb = rng.integers(-127, 129, size=(nb, 2))
    ma[ea == 128] = 0
    mb[eb == 128] = 0
    a, b = _tensor(ea, ma, fmt), _tensor(eb, mb, fmt)
    got = bits(golden.dot(a, b))
    assert np.array_equal(got, _ref_dots(a, b))


def test_dot_of_quantized_tensors_and_broadcast():
    fmt = BFPFormat(6, 8)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3, 40)).astype(F32)
    y = rng.standard_normal((1, 3, 40)).astype(F32)
    qx, qy = golden.quantize(x, fmt), golden.quantize(y, fmt)
    got = golden.dot(qx, qy)
    assert got.dtype == np.float32 and got.shape == (4, 3, 5)
    qyb = golden.BFPTensor(np.broadcast_to(qy.exponents, qx.exponents.shape),
                           np.broadcast_to(qy.mantissas, qx.mantissas.shape), fmt,
                           qx.shape, qx.axis)
    assert np.array_equal(bits(got), _ref_dots(qx, qyb))


def test_dot_errors():
    q8 = golden.quantize(np.ones(16, dtype=F32), BFPFormat(8, 16))
    q8b32 = golden.quantize(np.ones(32, dtype=F32), BFPFormat(8, 32))
    q8e5 = golden.quantize(np.ones(16, dtype=F32), BFPFormat(8, 16, exponent_bits=5))
    for other in (q8b32, q8e5):
        with pytest.raises(ValueError, match=r"^the operands' formats must share the block "
                                             r"size and the shared exponent's width"):
            golden.dot(q8, other)
    with pytest.raises(TypeError, match=r"^b must be a BFPTensor"):
        golden.dot(q8, np.ones(16))


def test_dot_mixed_element_widths():
    # Operands may differ in their elements (here int8 and int6) when blocks and shared
    # exponents agree: the product's exponent takes each operand's fraction bits.
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((2, 5, 16)).astype(F32)
    qx = golden.quantize(x, BFPFormat(8, 16))
    qy = golden.quantize(y, BFPFormat(6, 16))
    want = [ref_round_to_fp32(
        sum(Fraction(int(a)) * int(b) for a, b in zip(qx.mantissas[i, 0], qy.mantissas[i, 0]))
        * Fraction(2) ** (int(qx.exponents[i, 0]) + int(qy.exponents[i, 0]) - 6 - 4))
        for i in range(5)]
    assert bits(golden.dot(qx, qy)[:, 0]).tolist() == want


def test_helpers():
    x = np.array([1.0, -0.0, np.inf], dtype=F32)
    assert golden.f32_to_bits(x).tolist() == [0x3F800000, 0x80000000, 0x7F800000]
    assert np.array_equal(golden.bits_to_f32(golden.f32_to_bits(x)), x)
    c = golden.canonicalize_nan(f32(np.array([0xFFC00001, 0x7F800001, 0x3F800000], np.uint32)))
    assert bits(c).tolist() == [CANONICAL_NAN, CANONICAL_NAN, 0x3F800000]
    assert int(bits(np.float32(golden.CANONICAL_NAN))) == CANONICAL_NAN

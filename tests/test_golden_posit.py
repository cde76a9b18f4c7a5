"""Posit elements in the golden model (docs/numerics.md section 7): every code's value and
FP32 -> posit rounding, against SoftPosit (posit8 = es 0, posit16 = es 1, posit_2 = es 2) and
against the exact bit-string reference of tests/golden_reference_posit.py for every (n, es)."""

import itertools
from fractions import Fraction

import numpy as np
import pytest

from hbfp_hw.formats import Posit
from hbfp_hw.golden import posit

from .golden_reference_posit import ref_decode, ref_encode

ALL = [Posit(n, es) for n, es in itertools.product(range(6, 17), range(3))]
F32 = np.float32


def softposit_or_skip():
    return pytest.importorskip("softposit", reason="softposit (PyPI) is a dev dependency")


def _softposit_codec(sp, element):
    """SoftPosit's decode and encode for ``element``: ``(code -> float, float -> code)``."""
    n = element.n
    if (n, element.es) == (8, 0):
        def make(v=0.0):
            return sp.posit8(v)
        shift = 0
    elif (n, element.es) == (16, 1):
        def make(v=0.0):
            return sp.posit16(v)
        shift = 0
    elif element.es == 2:
        def make(v=0.0):
            return sp.posit_2(v, n)
        shift = 32 - n                       # pX2 keeps its bits left-aligned in 32
    else:
        return None

    def dec(code):
        p = make()
        p.fromBits(code << shift)
        return float(p)

    def enc(value):
        return make(float(value)).v.v >> shift
    return dec, enc


SOFTPOSIT_TYPES = [Posit(8, 0), Posit(16, 1), Posit(8, 2), Posit(16, 2), Posit(6, 2),
                   Posit(12, 2)]


@pytest.mark.parametrize("element", SOFTPOSIT_TYPES, ids=lambda e: e.name)
def test_every_code_against_softposit(element):
    sp = softposit_or_skip()
    dec, enc = _softposit_codec(sp, element)
    values = posit.code_values(element)
    for code in range(1 << element.n):
        if code == element.nar_code:
            assert np.isnan(values[code])
            continue
        assert values[code] == dec(code), code
        # every code's value round-trips through FP32 (all of them are FP32 values)
        assert int(posit.encode(F32(values[code]), element)) == code
        assert enc(values[code]) == code


@pytest.mark.parametrize("element", SOFTPOSIT_TYPES, ids=lambda e: e.name)
def test_rounding_at_every_cut_against_softposit(element):
    """Every boundary between neighbouring codes, its FP32 neighbours on both sides and
    random FP32 values: the code equals SoftPosit's (which rounds a double, here exact)."""
    sp = softposit_or_skip()
    _, enc = _softposit_codec(sp, element)
    bounds = posit._boundaries(element.n, element.es)
    cuts = bounds.astype(F32)
    assert np.array_equal(cuts.astype(np.float64), bounds)          # the cuts are FP32 values
    rng = np.random.default_rng(element.n * 3 + element.es)
    x = np.concatenate([cuts, np.nextafter(cuts, F32(np.inf)), np.nextafter(cuts, F32(0)),
                        (rng.standard_normal(3000) * np.exp2(
                            rng.uniform(-1.2, 1.2, 3000) * element.max_exponent)).astype(F32)])
    x = np.concatenate([x, -x])
    got = posit.encode(x, element)
    want = np.array([enc(v) for v in x], dtype=np.int64)
    bad = np.flatnonzero(got.astype(np.int64) != want)
    assert bad.size == 0, [(x[i], int(got[i]), int(want[i])) for i in bad[:5]]


@pytest.mark.parametrize("element", ALL, ids=lambda e: e.name)
def test_every_type_against_the_reference(element):
    """All 33 types: every code's value, and the rounding of every cut and its FP32
    neighbours (a sample of them for the 16-bit types), against the exact reference."""
    values = posit.code_values(element)
    codes = range(1 << element.n) if element.n <= 10 else \
        np.random.default_rng(element.n).integers(0, 1 << element.n, 600)
    for code in codes:
        want = ref_decode(int(code), element.n, element.es)
        if want is None:
            assert np.isnan(values[code])
        else:
            assert Fraction(float(values[code])) == want, code
    cuts = posit._boundaries(element.n, element.es).astype(F32)
    if cuts.size > 400:
        cuts = np.random.default_rng(element.es).choice(cuts, 400, replace=False)
    x = np.concatenate([cuts, np.nextafter(cuts, F32(np.inf)), np.nextafter(cuts, F32(0))])
    x = np.concatenate([x, -x])
    got = posit.encode(x, element)
    for v, c in zip(x, got):
        assert int(c) == ref_encode(Fraction(float(v)), element.n, element.es), v


def test_rounding_on_the_encoding_is_not_the_arithmetic_midpoint():
    """posit8, es 2, near maxpos: the codes 0x7E (2**20) and 0x7F (maxpos, 2**24) have no
    exponent bits left, and the cut between them is the 9-bit pattern's value 2**22, not
    their midpoint 9 * 2**20; values at or below it round down (the tie to the even code)."""
    element = Posit(8, 2)
    values = posit.code_values(element)
    assert values[0x7E] == 2.0 ** 20 and values[0x7F] == 2.0 ** 24
    assert int(posit.encode(F32(2.0 ** 22), element)) == 0x7E            # tie: 0x7E even
    assert int(posit.encode(np.nextafter(F32(2.0 ** 22), F32(np.inf)), element)) == 0x7F
    assert int(posit.encode(F32(5 * 2.0 ** 20), element)) == 0x7F        # below the midpoint


def test_specials_and_saturation():
    element = Posit(8, 0)
    x = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-30, -1e-30, 1e30, -1e30, 64.0],
                 dtype=F32)
    assert posit.encode(x, element).tolist() == [0, 0, 0x80, 0x80, 0x80, 0x01, 0xFF, 0x7F,
                                                 0x81, 0x7F]
    assert posit.decode([0x01, 0x7F, 0x81, 0xFF], element).tolist() == [2.0 ** -6, 64.0,
                                                                         -64.0, -(2.0 ** -6)]
    assert np.isnan(posit.decode(0x80, element))
    assert posit.encode(F32(1.0), Posit(16, 1)).dtype == np.uint16


def test_errors():
    with pytest.raises(ValueError, match=r"^n must be between 6 and 16, not 17"):
        Posit(17, 1)
    with pytest.raises(ValueError, match=r"^es must be between 0 and 2, not 3"):
        Posit(8, 3)
    with pytest.raises(TypeError, match=r"^element must be a Posit"):
        posit.encode(F32(1), "posit8")
    with pytest.raises(ValueError, match=r"^codes must be 8-bit posit8_es0 codes"):
        posit.decode([256], Posit(8, 0))
    with pytest.raises(TypeError, match=r"^x must hold float32 or float64 values"):
        posit.encode(np.array([1], dtype=np.int32), Posit(8, 0))


@pytest.mark.parametrize("element", [Posit(8, 0), Posit(8, 2), Posit(16, 1), Posit(6, 1)],
                         ids=lambda e: e.name)
def test_quire_gemm_is_the_exact_sum_rounded_once(element):
    """Every product of the posit values exact, their sum over K exact, one rounding to FP32:
    against Python fractions; the order of K does not matter; NaR gives NaN."""
    from .golden_reference import ref_round_to_fp32

    rng = np.random.default_rng(element.n + element.es)
    scale = np.exp2(rng.uniform(-0.8, 0.8, (1, 200)) * element.max_exponent)
    a = (rng.standard_normal((4, 200)) * scale).astype(F32)
    b = (rng.standard_normal((200, 3)) / scale.T).astype(F32)
    b[:, 2] = -b[:, 1] * (1 + (np.arange(200) % 2))           # cancellations
    a[3, 7] = np.inf                                           # NaR
    got = posit.gemm(a, b, element)
    va = posit.decode(posit.encode(a, element), element)
    vb = posit.decode(posit.encode(b, element), element)
    for i in range(3):
        for j in range(3):
            total = sum(Fraction(float(va[i, k])) * Fraction(float(vb[k, j])) for k in range(200))
            assert got.view(np.uint32)[i, j] == ref_round_to_fp32(total), (i, j)
    assert np.all(got.view(np.uint32)[3] == 0x7FC00000)
    perm = rng.permutation(200)
    assert np.array_equal(posit.gemm(a[:, perm], b[perm], element).view(np.uint32),
                          got.view(np.uint32))


def test_quire_errors():
    with pytest.raises(ValueError, match=r"^a's columns must equal b's rows"):
        posit.gemm(np.ones((2, 3), F32), np.ones((4, 2), F32), Posit(8, 0))
    with pytest.raises(TypeError, match=r"^a must be a 2-D float32 array"):
        posit.gemm(np.ones((2, 3)), np.ones((3, 2), F32), Posit(8, 0))


@pytest.mark.parametrize("element", [Posit(8, 0), Posit(16, 1), Posit(8, 2)],
                         ids=lambda e: e.name)
def test_quire_rounded_to_posit_against_softposit(element):
    """Dot products accumulated in SoftPosit's quire and rounded to a posit (``toPosit``)
    equal ``gemm(..., output="posit")``: random, cancelling, tiny and huge sums."""
    sp = softposit_or_skip()
    if element.es == 2:
        def make(v):
            return sp.posit_2(float(v), element.n)

        def quire():
            return sp.quire_2(element.n)
    else:
        kind = sp.posit8 if element.n == 8 else sp.posit16
        quire = sp.quire8 if element.n == 8 else sp.quire16

        def make(v):
            return kind(float(v))
    rng = np.random.default_rng(element.n * 7 + element.es)
    for trial in range(60):
        k = int(rng.integers(1, 40))
        spread = element.max_exponent * (0.2 if trial % 3 else 0.9)
        a = (rng.standard_normal(k) * np.exp2(rng.uniform(-spread, spread, k))).astype(F32)
        b = (rng.standard_normal(k) * np.exp2(rng.uniform(-spread, spread, k))).astype(F32)
        if trial % 5 == 0 and k > 1:
            b[1], a[1] = -b[0], a[0]                         # an exact cancellation
        q = quire()
        for x, y in zip(a, b):
            q.qma(make(x), make(y))
        want = float(q.toPosit())
        got = posit.gemm(a[None, :], b[:, None], element, output="posit")[0, 0]
        assert float(got) == want, (trial, a, b)


def test_encode_exact_ties_and_saturation():
    """Exact values on a boundary go to the even code; beyond maxpos saturate."""
    element = Posit(8, 2)
    bounds = posit._boundaries(8, 2)
    c = 0x3A                                           # the boundary between 0x3A and 0x3B
    v = Fraction(float(bounds[c - 1]))
    lowest = -200
    ints = [int(v * 2 ** 200), int(v * 2 ** 200) + 1, -int(v * 2 ** 200), 1 << 260, 1]
    got = posit.encode_exact(ints, lowest, element).tolist()
    assert got == [0x3A, 0x3B, (-0x3A) & 0xFF, 0x7F, 0x01]


# -- posit formats: the presets through the golden model's API --------------------------------

POSIT_PRESETS = ["posit8_es0", "posit8_es2", "posit16_es1"]


@pytest.mark.parametrize("name", POSIT_PRESETS)
def test_presets_quantize_and_gemm(name):
    """``quantize(x, preset).dequantize()`` is each value rounded to the posit and back;
    ``gemm`` is the quire GEMM (``golden.posit.gemm``), equal through ``gemm_quantized`` and
    block by block through ``dot`` plus the exact sum; codes round-trip."""
    from hbfp_hw import golden
    from hbfp_hw.formats import PRESETS

    fmt = PRESETS[name]
    assert fmt.is_posit and not fmt.is_minifloat and fmt.accumulator.value == "exact"
    rng = np.random.default_rng(len(name))
    a = (rng.standard_normal((6, 70)) * np.exp2(rng.integers(-8, 8, (6, 70)))).astype(F32)
    b = rng.standard_normal((70, 5)).astype(F32)
    a[0, 3] = np.nan
    q = golden.quantize(a, fmt, axis=1)
    rounded = posit.decode(posit.encode(a, fmt.element), fmt.element).astype(F32)
    deq = q.dequantize()
    assert np.isnan(deq[0, :16]).all()                            # a NaR makes a NaN block
    assert np.array_equal(deq[0, 16:], rounded[0, 16:]) and np.array_equal(deq[1:], rounded[1:])
    c = golden.gemm(a, b, fmt)
    assert np.array_equal(c.view(np.uint32), posit.gemm(a, b, fmt.element).view(np.uint32))
    qb = golden.quantize(b, fmt, axis=0)
    assert np.array_equal(golden.gemm_quantized(q, qb).view(np.uint32), c.view(np.uint32))
    again = golden.BFPTensor.from_codes(q.exponent_codes, q.element_codes(), fmt, q.shape, 1)
    assert np.array_equal(again.mantissas, q.mantissas) and np.array_equal(again.exponents,
                                                                           q.exponents)
    # block dot products: each one the exact sum of its products, rounded once
    from .golden_reference import ref_round_to_fp32
    dots = golden.dot(q, q)
    va = posit.decode(q.mantissas, fmt.element)
    for i in range(1, 3):
        for kb in range(q.nblocks):
            total = sum(Fraction(float(x)) ** 2 for x in va[i, kb])
            assert dots.view(np.uint32)[i, kb] == ref_round_to_fp32(total)
    assert np.all(np.isnan(dots[0, 0]))


def test_posit_format_errors():
    from hbfp_hw import golden
    from hbfp_hw.formats import PRESETS, BFPFormat, posit_format

    with pytest.raises(ValueError, match=r"^accumulator must be 'exact' for posit elements"):
        BFPFormat(8, 16, element=Posit(8, 0))
    with pytest.raises(ValueError, match=r"^rounding must be 'nearest-even' for posit"):
        BFPFormat(8, 16, "stochastic", element=Posit(8, 0), accumulator="exact")
    with pytest.raises(ValueError, match=r"^mantissa_bits must be the element's width 8"):
        BFPFormat(6, 16, element=Posit(8, 0), accumulator="exact")
    with pytest.raises(ValueError, match=r"posit elements meet posit elements only"):
        golden.gemm(np.ones((1, 16), F32), np.ones((16, 1), F32),
                    (PRESETS["posit8_es0"], PRESETS["bfp8"].replace(accumulator="exact")))
    with pytest.raises(ValueError, match=r"accumulator='fp32-kahan' conflicts with the "
                                         r"format's accumulator 'exact'"):
        golden.gemm(np.ones((1, 16), F32), np.ones((16, 1), F32), "posit8_es2",
                    accumulator="fp32-kahan")
    assert posit_format(8, 2, 8).name == "posit8_es2b8"
    from hbfp_hw.rtl_gen.common import check_rtl_format
    with pytest.raises(ValueError, match=r"has posit8_es2 posit elements, which this RTL unit "
                                         r"does not implement yet"):
        check_rtl_format(PRESETS["posit8_es2"], minifloat=True)

"""Minifloat elements (OCP MX, Block Minifloat, general ExMy) in the golden model.

Checked against ml_dtypes (an independent implementation of the OCP element types) and against
the exact Fraction reference tests/golden_reference_mx.py, with every element encoding, ties,
subnormals, saturation, the scale's clamps, FP32 extremes and NaN/Inf.
"""

import itertools
import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

from hbfp_hw import golden
from hbfp_hw.formats import (
    PRESETS,
    BFPFormat,
    Minifloat,
    Rounding,
    ScaleRule,
    Special,
    minifloat_format,
    resolve_format,
)
from hbfp_hw.golden import minifloat, prng
from hbfp_hw.golden import quantizer as quantizer_mod

from .golden_checks import F32, bits
from .golden_reference import NAN_BLOCK, ref_random_bits
from .golden_reference_mx import (
    ref_block_dot_mx,
    ref_code_values,
    ref_quantize_block_mx,
    ref_values,
)

MX = {
    "mxfp8_e4m3": (ml_dtypes.float8_e4m3fn, 448.0),
    "mxfp8_e5m2": (ml_dtypes.float8_e5m2, 57344.0),
    "mxfp6_e3m2": (ml_dtypes.float6_e3m2fn, 28.0),
    "mxfp6_e2m3": (ml_dtypes.float6_e2m3fn, 7.5),
    "mxfp4_e2m1": (ml_dtypes.float4_e2m1fn, 6.0),
}
MINIFLOAT_PRESETS = [name for name, f in PRESETS.items() if f.is_minifloat]
# General ExMy: every (e, m) of the supported range with each legal convention, and some biases.
GENERAL = [Minifloat(e, m, sp) for e in range(1, 6) for m in range(0, 8)
           for sp in Special if not (sp is Special.IEEE and e < 2)
           and not (sp is Special.FN and m < 1)]
GENERAL_SMALL = [Minifloat(1, 0, "none"), Minifloat(1, 2, "none", 1), Minifloat(2, 0, "ieee"),
                 Minifloat(3, 1, "fn"), Minifloat(3, 4, "none", 0), Minifloat(4, 7, "ieee"),
                 Minifloat(5, 7, "none"), Minifloat(5, 0, "none", 16),
                 Minifloat(2, 5, "none", 0), Minifloat(5, 3, "fn", 3)]


def values_of(q):
    """Element values of a quantized tensor relative to the scale, as Fractions, per block."""
    f = q.fmt.fraction_bits
    return [[Fraction(int(n)) / Fraction(2) ** f for n in blk]
            for blk in q.mantissas.reshape(-1, q.fmt.block_size)]


# -- the format object ---------------------------------------------------------------------------

class TestFormat:
    @pytest.mark.parametrize("name", list(MX))
    def test_ocp_maxima(self, name):
        fmt = resolve_format(name)
        assert fmt.element.max_normal == MX[name][1]
        assert float(ml_dtypes.finfo(MX[name][0]).max) == MX[name][1]
        assert fmt.block_size == 32 and fmt.exponent_bits == 8
        assert fmt.scale_rule is ScaleRule.FLOOR and fmt.rounding is Rounding.NEAREST_EVEN
        assert fmt.name == name and fmt.mantissa_bits == fmt.element.width

    def test_element_constants(self):
        e4m3 = Minifloat(4, 3, "fn")
        assert (e4m3.bias, e4m3.emin, e4m3.emax, e4m3.fraction_bits, e4m3.max_int) == \
            (7, -6, 8, 9, 448 * 512)
        assert e4m3.name == "e4m3fn" and e4m3.width == 8
        e5m2 = Minifloat(5, 2)
        assert (e5m2.emax, e5m2.max_normal, e5m2.name) == (15, 57344.0, "e5m2")
        assert Minifloat(2, 1, "none").name == "e2m1nr"
        assert Minifloat(2, 5, "none", 0).name == "e2m5nr_bias0"

    @pytest.mark.parametrize("element", GENERAL, ids=lambda e: e.name)
    def test_constants_match_enumeration(self, element):
        values = ref_values(element)
        top = values[-1][0]
        assert element.max_int / Fraction(2) ** element.fraction_bits == top
        assert element.max_normal == float(top)
        assert Fraction(2) ** element.emax <= top < Fraction(2) ** (element.emax + 1)
        # every value is an integer on the grid 2**-fraction_bits
        assert all((v * Fraction(2) ** element.fraction_bits).denominator == 1 for v, _ in values)

    @pytest.mark.parametrize("kwargs, message", [
        (dict(exponent_bits=0, mantissa_bits=3), r"^exponent_bits must be between 1 and 5, "
                                                 r"not 0$"),
        (dict(exponent_bits=6, mantissa_bits=3), r"^exponent_bits must be between 1 and 5"),
        (dict(exponent_bits=4, mantissa_bits=8), r"^mantissa_bits must be between 0 and 7, "
                                                 r"not 8$"),
        (dict(exponent_bits=1, mantissa_bits=3), r"^exponent_bits must be between 2 and 5 for "
                                                 r"special='ieee'"),
        (dict(exponent_bits=4, mantissa_bits=0, special="fn"),
         r"^mantissa_bits must be between 1 and 7 for special='fn'"),
        (dict(exponent_bits=4, mantissa_bits=3, bias=9), r"^bias must be between 0 and 8, "
                                                         r"not 9$"),
        (dict(exponent_bits=4, mantissa_bits=3, special="ocp"),
         r"^special must be one of 'ieee', 'fn', 'none', not 'ocp'$"),
    ])
    def test_element_validation(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            Minifloat(**kwargs)

    def test_format_validation(self):
        with pytest.raises(ValueError, match=r"^mantissa_bits must be the element's width 8 "
                                             r"for e4m3fn elements, not 6$"):
            BFPFormat(6, 32, element=Minifloat(4, 3, "fn"))
        with pytest.raises(ValueError, match=r"^scale_rule must be 'floor' for integer "
                                             r"elements, not 'ceil'$"):
            BFPFormat(8, 32, scale_rule="ceil")
        with pytest.raises(ValueError, match=r"^scale_rule must be one of 'floor', 'ceil', "
                                             r"'rceil', not 'round'$"):
            minifloat_format(4, 3, scale_rule="round")
        with pytest.raises(TypeError, match=r"^element must be a Minifloat, a Posit or None"):
            BFPFormat(8, 32, element="e4m3")

    def test_unknown_preset_lists_the_names(self):
        with pytest.raises(ValueError) as info:
            resolve_format("mxfp8")
        for name in PRESETS:
            assert name in str(info.value)

    @pytest.mark.parametrize("name", MINIFLOAT_PRESETS)
    def test_dict_round_trip_and_replace(self, name):
        fmt = resolve_format(name)
        assert BFPFormat.from_dict(fmt.to_dict()) == fmt
        ceil = fmt.replace(scale_rule="ceil", rounding="stochastic")
        assert ceil.name == f"{fmt.element.name}b{fmt.block_size}_ceil_sr"
        assert BFPFormat.from_dict(ceil.to_dict()) == ceil
        other = fmt.replace(element=Minifloat(3, 2, "none"))
        assert other.mantissa_bits == 6 and other.block_size == fmt.block_size

    def test_integer_formats_keep_their_description(self):
        assert set(PRESETS["bfp8"].to_dict()) == {"name", "mantissa_bits", "block_size",
                                                  "rounding", "exponent_bits"}


# -- element codes -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(MX))
def test_codes_match_ml_dtypes(name):
    """Every code of the OCP element types decodes to ml_dtypes' value."""
    element = resolve_format(name).element
    dtype = MX[name][0]
    codes = np.arange(1 << element.width, dtype=np.uint8)
    theirs = codes.view(dtype).astype(np.float64)
    n, special = minifloat.decode(codes, element)
    assert np.array_equal(special, ~np.isfinite(theirs))
    ours = np.ldexp(n.astype(np.float64), -element.fraction_bits)
    finite = np.isfinite(theirs)
    assert np.array_equal(ours[finite], theirs[finite])
    # encoding gives the code back (zeros as +0)
    back = minifloat.encode(n[finite], element)
    want = np.where(theirs[finite] == 0, 0, codes[finite])
    assert np.array_equal(back, want)


@pytest.mark.parametrize("element", GENERAL, ids=lambda e: e.name)
def test_codes_match_enumeration(element):
    _check_codes(element)


def _check_codes(element):
    ref = ref_code_values(element)
    codes = np.array(list(ref), dtype=np.int64)
    n, special = minifloat.decode(codes, element)
    for c, v, ni, sp in zip(codes.tolist(), ref.values(), n.tolist(), special.tolist()):
        assert sp == (v is None), c
        if v is not None:
            assert ni / Fraction(2) ** element.fraction_bits == v, c
    ok = ~special
    back = minifloat.encode(n[ok], element)
    zero = n[ok] == 0
    assert np.array_equal(back[~zero], codes[ok][~zero]) and not back[zero].any()


# -- quantization against ml_dtypes --------------------------------------------------------------

@pytest.mark.parametrize("name", list(MX))
def test_quantize_matches_ml_dtypes(name):
    """Elements equal ml_dtypes' saturating nearest-even cast of x / 2**X, with X computed here
    from math.frexp (floor(log2 amax) - emax)."""
    fmt = resolve_format(name)
    dtype, top = MX[name]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3000, 32)) * np.exp(rng.uniform(-60, 60, (3000, 1)))
    x = x.astype(F32)
    x[rng.random(x.shape) < 0.1] = 0
    x[0] = 0
    x[1, 5] = np.finfo(F32).max
    x[2, 7] = -np.finfo(F32).smallest_subnormal
    q = golden.quantize(x, fmt)
    emax = math.frexp(top)[1] - 1
    amax = np.abs(x).max(axis=1).astype(np.float64)
    want_x = [(-127 if a == 0 else max(-127, min(127, math.frexp(a)[1] - 1 - emax)))
              for a in amax]
    assert q.exponents[:, 0].tolist() == want_x
    v = x.astype(np.float64) * np.ldexp(1.0, -np.array(want_x))[:, None]
    theirs = np.clip(v, -top, top).astype(dtype)
    ours = np.ldexp(q.mantissas.reshape(x.shape).astype(np.float64), -fmt.fraction_bits)
    assert np.array_equal(ours, theirs.astype(np.float64))
    nonzero = theirs.astype(np.float64) != 0
    assert np.array_equal(q.element_codes().reshape(x.shape)[nonzero],
                          theirs.view(np.uint8)[nonzero])
    assert np.array_equal(q.dequantize(), (ours * np.ldexp(1.0, np.array(want_x))[:, None])
                          .astype(F32))


# -- quantization against the exact reference ----------------------------------------------------

def _probe_block(element, scale_exp, block_size):
    """Values (relative to 2**scale_exp) that exercise every code: each value, each midpoint,
    the FP32 neighbours of each midpoint, values past the largest, tiny ones."""
    scale_exp = min(scale_exp, 127 - element.emax)     # the block's largest stays finite
    vals = [v for v, _ in ref_values(element)]
    probes = set(vals)
    for lo, hi in zip(vals, vals[1:]):
        mid = (lo + hi) / 2
        probes.add(mid)
        f = float(mid)
        probes.add(Fraction(np.nextafter(F32(f), F32(np.inf)).item()))
        probes.add(Fraction(np.nextafter(F32(f), F32(0)).item()))
    top = vals[-1]
    probes.update([top * Fraction(9, 8), top * Fraction(17, 16), vals[1] / 2, vals[1] / 3])
    out = sorted(p * Fraction(2) ** scale_exp for p in probes)
    with np.errstate(over="ignore"):
        out = [float(p) for p in out if float(F32(float(p))) == float(p)]
    out = [p for p in out if math.isfinite(p)]
    # pad to whole blocks whose largest magnitude puts the top binade at scale_exp
    anchor = float(Fraction(2) ** (element.emax + scale_exp))
    blocks = []
    for i in range(0, len(out), block_size - 1):
        chunk = out[i:i + block_size - 1]
        chunk = [(-c if j % 3 == 1 else c) for j, c in enumerate(chunk)]
        blocks.append(chunk + [anchor] * (block_size - len(chunk)))
    return np.array(blocks, dtype=F32)


def _check_against_reference(x, fmt, seed=None):
    q = golden.quantize(x, fmt, seed=seed)
    got = values_of(q)
    rand = None
    if fmt.rounding is Rounding.STOCHASTIC:
        rand = ref_random_bits(seed, len(x), fmt.block_size)
    for b, row in enumerate(x):
        xr, vr = ref_quantize_block_mx(row.tolist(), fmt, None if rand is None else rand[b])
        if xr == NAN_BLOCK:
            assert q.exponents[b, 0] == fmt.nan_exponent and not q.mantissas[b].any()
            continue
        assert int(q.exponents[b, 0]) == xr, (b, row)
        assert got[b] == vr, (b, row.tolist())


@pytest.mark.parametrize("name", MINIFLOAT_PRESETS)
@pytest.mark.parametrize("rounding", list(Rounding))
def test_every_code_tie_and_saturation_presets(name, rounding):
    fmt = resolve_format(name).replace(rounding=rounding)
    for scale_exp in (0, -130, 120):
        x = _probe_block(fmt.element, scale_exp, fmt.block_size)
        x = x[np.all(np.isfinite(x), axis=1)]
        _check_against_reference(x, fmt, seed=11 if rounding is Rounding.STOCHASTIC else None)


@pytest.mark.parametrize("element", GENERAL_SMALL, ids=lambda e: e.name)
@pytest.mark.parametrize("rounding", list(Rounding))
def test_every_code_tie_and_saturation_general(element, rounding):
    fmt = BFPFormat(element.width, 8, rounding, element=element)
    x = _probe_block(element, 3, fmt.block_size)
    _check_against_reference(x, fmt, seed=5 if rounding is Rounding.STOCHASTIC else None)


@pytest.mark.parametrize("element", GENERAL, ids=lambda e: e.name)
def test_random_general(element):
    fmt = BFPFormat(element.width, 4, element=element)
    rng = np.random.default_rng(element.exponent_bits * 100 + element.mantissa_bits)
    x = (rng.standard_normal((40, 4)) * np.exp2(rng.integers(-8, 8, (40, 1)))).astype(F32)
    _check_against_reference(x, fmt)


@pytest.mark.parametrize("rule", list(ScaleRule))
@pytest.mark.parametrize("name", ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp4_e2m1", "bm8_e2m5"])
def test_scale_rules_extremes(rule, name):
    """Powers of two and their FP32 neighbours, FP32 subnormals and the largest finite value:
    the clamp at the bottom, the rules' rounding of amax."""
    fmt = resolve_format(name).replace(scale_rule=rule, block_size=4)
    tiny = np.finfo(F32).smallest_subnormal
    amaxes = [tiny, tiny * 3, np.finfo(F32).tiny, np.finfo(F32).max, 1.0, 448.0, 6.0, 7.5]
    for k in (-140, -127, -126, -3, 0, 1, 5, 100, 127):
        p = F32(2.0) ** k if k > -127 else F32(np.ldexp(1.0, k))
        amaxes += [p, np.nextafter(p, F32(np.inf)), np.nextafter(p, F32(0))]
    rows = [[a, -a / 2, a / 3, 0.0] for a in amaxes]
    x = np.array(rows, dtype=F32)
    x = x[np.isfinite(x).all(axis=1)]
    _check_against_reference(x, fmt)


@pytest.mark.parametrize("rule", [ScaleRule.CEIL, ScaleRule.RCEIL])
def test_scale_clamp_at_the_top(rule):
    """An element type whose largest binade is 2**0 under ceil/RCEIL needs X = 128 for
    FP32's largest values: X is clamped to 127 and the elements saturate."""
    fmt = BFPFormat(4, 4, element=Minifloat(1, 2, "none", 1), scale_rule=rule)
    big = np.finfo(F32).max
    x = np.array([[big, -big, big / 2, 1.0], [2.0 ** 127, 0, 0, 0]], dtype=F32)
    q = golden.quantize(x, fmt)
    assert q.exponents[0, 0] == 127
    assert q.mantissas[0, 0, :2].tolist() == [fmt.max_mantissa, -fmt.max_mantissa]
    _check_against_reference(x, fmt)


def test_nan_inf_zero_blocks():
    fmt = resolve_format("mxfp8_e4m3")
    x = np.zeros((4, 32), dtype=F32)
    x[0, 3] = np.nan
    x[1, 0] = -np.inf
    x[2, :] = 1.0
    q = golden.quantize(x, fmt)
    assert q.exponents[:, 0].tolist() == [128, 128, -8, -127]
    assert q.exponent_codes[:, 0].tolist() == [255, 255, 119, 0]
    assert not q.mantissas[[0, 1, 3]].any()
    d = q.dequantize()
    assert np.isnan(d[:2]).all() and (d[2] == 1).all() and (d[3] == 0).all()


def test_stochastic_rounding_prng_order():
    """Stochastic rounding of elements uses the contract's PRNG: lane l of block b draws the
    state after b + 1 steps of lane l (the same bits as BFP)."""
    fmt = resolve_format("mxfp6_e2m3").replace(rounding="stochastic", block_size=8)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((20, 8)).astype(F32)
    _check_against_reference(x, fmt, seed=1234)
    a = golden.quantize(x, fmt, seed=1234)
    b = golden.quantize(x, fmt, seed=1234)
    c = golden.quantize(x, fmt, seed=1235)
    assert np.array_equal(a.mantissas, b.mantissas)
    assert not np.array_equal(a.mantissas, c.mantissas)
    assert np.array_equal(prng.random_bits(1234, 20, 8), np.array(ref_random_bits(1234, 20, 8)))


# -- dot products and GEMM -----------------------------------------------------------------------

def _ref_dot_bits(qa, qb):
    """Reference FP32 bits of every block dot product of two [R, 1, N] quantized tensors."""
    out = []
    for (ea, va), (eb, vb) in zip(zip(qa.exponents[:, 0], values_of(qa)),
                                  zip(qb.exponents[:, 0], values_of(qb))):
        xa = NAN_BLOCK if ea == qa.fmt.nan_exponent else int(ea)
        xb = NAN_BLOCK if eb == qb.fmt.nan_exponent else int(eb)
        out.append(ref_block_dot_mx(xa, va, xb, vb))
    return out


@pytest.mark.parametrize("pair", [("mxfp8_e4m3", "mxfp8_e4m3"), ("mxfp8_e5m2", "mxfp8_e5m2"),
                                  ("mxfp8_e4m3", "mxfp8_e5m2"), ("mxfp4_e2m1", "mxfp6_e3m2"),
                                  ("mxint8", "mxfp8_e4m3"), ("bm8_e2m5", "bm8_e4m3"),
                                  ("bm6_e2m3", "bm6_e3m2")])
def test_dot_against_reference(pair):
    fa, fb = map(resolve_format, pair)
    rng = np.random.default_rng(len(pair[0]) + len(pair[1]))
    n = fa.block_size
    x = (rng.standard_normal((60, n)) * np.exp2(rng.integers(-30, 30, (60, 1)))).astype(F32)
    y = (rng.standard_normal((60, n)) * np.exp2(rng.integers(-30, 30, (60, 1)))).astype(F32)
    # wide blocks: the largest and the smallest subnormal element together, signs that cancel
    x[0] = 0
    x[0, :2] = [fa.element.max_normal if fa.element else 127, 2.0 ** -20]
    y[0] = 0
    y[0, :2] = [-1.0, 2.0 ** -30]
    x[1, 0], y[2, 3] = np.nan, np.inf
    x[3] = 0
    y[4] = np.float32(2.0 ** 126)
    qa, qb = golden.quantize(x, fa), golden.quantize(y, fb)
    got = bits(golden.dot(qa, qb)[:, 0]).tolist()
    assert got == _ref_dot_bits(qa, qb)


def test_element_nan_code_from_the_wire():
    """A reserved element code on a block wire (E4M3's S.1111.111, E5M2's Inf) makes every dot
    product it enters the canonical NaN; the other blocks are unaffected."""
    fmt = resolve_format("mxfp8_e4m3")
    x = np.ones((3, 32), dtype=F32)
    q = golden.quantize(x, fmt)
    codes = q.element_codes().copy()
    codes[1, 0, 7] = 0x7F                     # NaN
    codes[2, 0, 7] = 0x7E                     # 448: a number
    back = golden.BFPTensor.from_codes(q.exponent_codes, codes, fmt)
    assert back.nan_mask[:, 0].tolist() == [False, True, False]
    got = golden.dot(back, golden.quantize(x, fmt))[:, 0]
    assert np.isnan(got[1]) and bits(got[1]) == 0x7FC00000
    assert got[0] == 32 and got[2] == 31 + 448 / 256          # X = -8
    e5 = resolve_format("mxfp8_e5m2")
    codes = golden.quantize(x, e5).element_codes().copy()
    codes[0, 0, 0] = 0x7C                     # +Inf
    back = golden.BFPTensor.from_codes(golden.quantize(x, e5).exponent_codes, codes, e5)
    assert back.nan_mask[:, 0].tolist() == [True, False, False]
    with pytest.raises(ValueError, match=r"element_codes must have shape"):
        golden.BFPTensor.from_codes(q.exponent_codes, codes[:, :, :4], fmt)


def test_codes_round_trip():
    for name in MINIFLOAT_PRESETS + ["bfp8", "bfp4"]:
        fmt = resolve_format(name)
        x = np.random.default_rng(1).standard_normal((5, 3 * fmt.block_size)).astype(F32)
        q = golden.quantize(x, fmt)
        back = golden.BFPTensor.from_codes(q.exponent_codes, q.element_codes(), fmt, x.shape)
        assert np.array_equal(back.mantissas, q.mantissas)
        assert np.array_equal(back.exponents, q.exponents)
        assert np.array_equal(back.dequantize(), q.dequantize())


@pytest.mark.parametrize("pair", [("mxfp8_e4m3",) * 2, ("mxfp8_e5m2",) * 2,
                                  ("mxfp8_e4m3", "mxfp8_e5m2"), ("mxfp6_e3m2",) * 2,
                                  ("mxfp6_e2m3",) * 2, ("mxfp4_e2m1",) * 2, ("bm8_e2m5",) * 2,
                                  ("bm6_e3m2", "bm6_e2m3")])
def test_gemm_is_accumulated_dots(pair):
    """golden.gemm (BLAS, exactness checks) equals the exact dots accumulated in k order."""
    fa, fb = map(resolve_format, pair)
    rng = np.random.default_rng(2)
    m, k, n = 9, 3 * fa.block_size + 5, 7
    a = (rng.standard_normal((m, k)) * np.exp2(rng.integers(-40, 40, (m, 1)))).astype(F32)
    b = (rng.standard_normal((k, n)) * np.exp2(rng.integers(-40, 40, (1, n)))).astype(F32)
    a[2, :] = 0
    a[3, 5] = np.inf
    b[fa.block_size + 1, 4] = np.nan
    got = golden.gemm(a, b, pair if pair[0] != pair[1] else fa)
    qa, qb = golden.quantize(a, fa, axis=1), golden.quantize(b, fb, axis=0)
    assert np.array_equal(bits(got), bits(golden.gemm_quantized(qa, qb)))
    dots = golden.dot(golden.BFPTensor(qa.exponents[:, None], qa.mantissas[:, None], fa,
                                       qa.shape, 1),
                      golden.BFPTensor(qb.exponents[None], qb.mantissas[None], fb, qb.shape, 0))
    want = golden.accumulate(dots, axis=-1)
    assert np.array_equal(bits(got), bits(want))


def test_gemm_wide_blocks_need_exact_sums():
    """E5M2 blocks that hold 2**15 and 2**-16 together: a block product can need 63 bits.
    Here the large products sum to an FP32 tie (2**31 + 2**7) that only the smallest product
    (+-2**-32) decides, which float64 rounds away; the golden model rounds once, exactly."""
    fmt = resolve_format("mxfp8_e5m2")
    a = np.zeros((4, 32), dtype=F32)
    b = np.zeros((32, 3), dtype=F32)
    a[:, :4] = [2.0 ** 15, 2.0 ** 15, 2.0 ** 3, 2.0 ** -16]
    a[1, 3] = -(2.0 ** -16)
    a[2, 5:] = np.random.default_rng(4).standard_normal(27).astype(F32)
    a[3, 3] = 0
    b[:4, 0] = [2.0 ** 15, 2.0 ** 15, 2.0 ** 4, 2.0 ** -16]
    b[:4, 1] = [2.0 ** 15, -(2.0 ** 15), 2.0 ** 4, 2.0 ** -16]
    b[:, 2] = np.random.default_rng(5).standard_normal(32).astype(F32)
    got = golden.gemm(a, b, fmt)
    qa, qb = golden.quantize(a, fmt, axis=1), golden.quantize(b, fmt, axis=0)
    want = [[ref_block_dot_mx(int(qa.exponents[i, 0]), values_of(qa)[i],
                              int(qb.exponents[j, 0]), values_of(qb)[j])
             for j in range(3)] for i in range(4)]
    assert bits(got).tolist() == want
    assert got[0, 0] == 2.0 ** 31 + 2.0 ** 8 and got[1, 0] == 2.0 ** 31
    assert got[3, 0] == 2.0 ** 31                            # the tie, to even
    # float64 alone rounds the first one twice
    f64 = (qa.dequantize().astype(np.float64) @ qb.dequantize().astype(np.float64)).astype(F32)
    assert f64[0, 0] == 2.0 ** 31


def test_gemm_quantized_beyond_fp32():
    """Wire codes can describe elements above FP32's range (E5M2's largest under X = 127);
    their products still round once (to Inf here) instead of turning into NaN."""
    fmt = resolve_format("mxfp8_e5m2")
    ecodes = np.array([[127 + 127]], dtype=np.uint8)
    codes = np.zeros((1, 1, 32), dtype=np.uint8)
    codes[0, 0, 0] = 0x7B                    # 57344
    qa = golden.BFPTensor.from_codes(ecodes, codes, fmt)
    codes_b = np.zeros((1, 1, 32), dtype=np.uint8)
    codes_b[0, 0, 0] = 0x3C                  # 1.0
    qb = golden.BFPTensor.from_codes(np.array([[0]], dtype=np.uint8), codes_b, fmt)
    out = golden.gemm_quantized(qa, qb)
    assert bits(out).tolist() == [[ref_block_dot_mx(127, [Fraction(57344)] + [0] * 31, -127,
                                                    [Fraction(1)] + [0] * 31)]]


def test_per_operand_formats_errors():
    a = np.ones((2, 32), dtype=F32)
    with pytest.raises(ValueError, match=r"^the operands' formats must share the block size"):
        golden.gemm(a, a.T, ("mxfp8_e4m3", "bfp8"))
    with pytest.raises(ValueError, match=r"^fmt must be a format or a pair"):
        golden.gemm(a, a.T, ("mxfp8_e4m3",) * 3)


# -- the tests catch broken variants of the golden model ------------------------------------------

def _mismatches(fmt, x):
    try:
        _check_against_reference(x, fmt)
    except AssertionError:
        return True
    return False


def test_mutants_are_caught(monkeypatch):
    fmt = resolve_format("mxfp8_e4m3")
    x = _probe_block(fmt.element, 0, fmt.block_size)
    assert not _mismatches(fmt, x)
    original = quantizer_mod._round_minifloat

    def wrap(blocks, xs, f, rand):                  # saturation replaced by wrap-around
        n = original(blocks, xs, f, rand)
        mag = np.abs(blocks.astype(np.float64) * np.ldexp(1.0, -xs)) * 2.0 ** f.fraction_bits
        return np.where(mag > f.max_mantissa, -n, n)

    def flush(blocks, xs, f, rand):                 # subnormals flushed to zero
        n = original(blocks, xs, f, rand)
        return np.where(np.abs(n) < 2 ** f.element.mantissa_bits, 0.0, n)

    for mutant in (wrap, flush):
        monkeypatch.setattr(quantizer_mod, "_round_minifloat", mutant)
        assert _mismatches(fmt, x), mutant.__name__
    monkeypatch.setattr(quantizer_mod, "_round_minifloat", original)

    real = minifloat.scale_exponents
    monkeypatch.setattr(minifloat, "scale_exponents", lambda a, f: real(a, f) + 1)
    assert _mismatches(fmt, x)
    monkeypatch.setattr(minifloat, "scale_exponents", real)

    # E4M3's NaN code taken for a number (S.1111.111 = 480)
    real_decode = minifloat.decode

    def decode_nan_as_number(codes, element):
        n, special = real_decode(codes, element)
        c = np.asarray(codes).astype(np.int64)
        return np.where(special, np.where(c & 0x80, -480, 480) << 6, n), special & False

    _check_codes(fmt.element)
    monkeypatch.setattr(minifloat, "decode", decode_nan_as_number)
    with pytest.raises(AssertionError):
        _check_codes(fmt.element)


def test_exhaustive_pairs_of_fp4_blocks():
    """Every pair of MXFP4 element values in a 2-element block, under two scales, against the
    exact reference: all products and their sums."""
    fmt = BFPFormat(4, 2, element=Minifloat(2, 1, "none"))
    vals = sorted({float(v) for v, _ in ref_values(fmt.element)} |
                  {-float(v) for v, _ in ref_values(fmt.element)})
    pairs = np.array(list(itertools.product(vals, vals)), dtype=F32)
    x = np.concatenate([pairs, pairs * F32(2.0 ** -140)])
    y = np.roll(x, 3, axis=0)
    qa, qb = golden.quantize(x, fmt), golden.quantize(y, fmt)
    assert bits(golden.dot(qa, qb)[:, 0]).tolist() == _ref_dot_bits(qa, qb)


# -- the hardware layers: integer-only units say so; the system carries element codes ------------

def test_hardware_layers_take_minifloat():
    """FloatToBlock (integer elements) refuses a minifloat format with a clear ValueError; the
    dot unit, the GEMM system's configuration and the device protocol take it, and the block
    wire carries the golden model's element codes."""
    from hbfp_hw.fpga.config import SystemConfig
    from hbfp_hw.fpga.protocol import frames
    from hbfp_hw.rtl_gen.common import check_rtl_format

    fmt = resolve_format("mxfp8_e4m3")
    message = r"^fmt 'mxfp8_e4m3' has e4m3fn minifloat elements, which this RTL unit does not"
    with pytest.raises(ValueError, match=message):
        check_rtl_format(fmt)
    assert check_rtl_format(fmt, minifloat=True) is fmt
    assert SystemConfig(fmt=fmt).info().fmt == fmt
    a = np.linspace(-500, 500, 64, dtype=F32).reshape(2, 32)
    count, data = frames.a_blocks_payload(a, fmt, frames.Wire.BFP)
    q = golden.quantize(a, fmt, axis=1)
    assert count == 2
    raw = np.frombuffer(data, np.uint8).reshape(2, 33)
    assert raw[:, 0].tolist() == q.exponent_codes.reshape(-1).tolist()
    assert raw[:, 1:].tolist() == q.element_codes().reshape(2, 32).tolist()


def test_torch_minifloat_is_the_golden_gemm():
    """The PyTorch integration takes minifloat formats (the emulate backend runs the golden
    GEMM): the op, the public gemm, quantize and a converted Linear layer's forward and
    backward GEMMs are the golden model's, bit for bit."""
    torch = pytest.importorskip("torch")
    from hbfp_hw.torch import HBFPConfig, convert, emulate, gemm
    from hbfp_hw.torch.ops import format_args, role_gemm

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(7, 70, generator=gen) * 3
    b = torch.randn(70, 5, generator=gen)
    for name in ("mxfp8_e4m3", "mxfp8_e5m2", "mxfp4_e2m1", "bm6_e3m2"):
        fmt = resolve_format(name)
        want = golden.gemm(a.numpy(), b.numpy(), fmt)
        assert bits(emulate.gemm(a, b, fmt).numpy()).tolist() == bits(want).tolist()
        assert bits(gemm(a, b, name).numpy()).tolist() == bits(want).tolist()
        seed = torch.tensor(0, dtype=torch.int64)
        via_op = torch.ops.hbfp.gemm(a, b, *format_args(fmt)[:4], seed, "emulate",
                                     *format_args(fmt)[4:])
        assert bits(via_op.numpy()).tolist() == bits(want).tolist()
        assert bits(role_gemm(a, b, format_args(fmt), 0, "emulate").numpy()).tolist() == \
            bits(want).tolist()
        e, mants = emulate.quantize(a, fmt)
        q = golden.quantize(a.numpy(), fmt)
        assert np.array_equal(e.numpy(), q.exponents)
        assert np.array_equal(mants.numpy(), q.mantissas)
    sr = resolve_format("mxfp6_e2m3").replace(rounding="stochastic")
    assert bits(gemm(a, b, sr, seed=99).numpy()).tolist() == \
        bits(golden.gemm(a.numpy(), b.numpy(), sr, seed=99)).tolist()

    # a converted Linear: forward x @ W^T in E4M3, the backward GEMMs in E5M2
    layer = torch.nn.Linear(70, 5, bias=False)
    config = HBFPConfig(forward="mxfp8_e4m3", grad_input="mxfp8_e5m2",
                        grad_weight="mxfp8_e5m2")
    model = convert(torch.nn.Sequential(layer), config)
    x = a.clone().requires_grad_(True)
    y = model(x)
    w = layer.weight.detach().numpy()
    fwd = golden.gemm(a.numpy(), w.T.copy(), "mxfp8_e4m3")
    assert bits(y.detach().numpy()).tolist() == bits(fwd).tolist()
    g = torch.randn(7, 5, generator=gen)
    y.backward(g)
    gi = golden.gemm(g.numpy(), w, "mxfp8_e5m2")
    assert bits(x.grad.numpy()).tolist() == bits(gi).tolist()


def test_device_backend_names_a_device_for_minifloat():
    """A device built for another format: the message names a simulated board of this one."""
    pytest.importorskip("torch")
    from hbfp_hw.fpga.host.driver import FormatMismatch
    from hbfp_hw.torch.backends import DeviceBackend

    backend = DeviceBackend.__new__(DeviceBackend)
    backend.url, backend.fmt = "sim", resolve_format("bfp8")
    with pytest.raises(FormatMismatch, match=r"asks for mxfp8_e4m3 .* use a device built for "
                                             r"mxfp8_e4m3 \(e\.g\. sim://\?format=mxfp8_e4m3\)"):
        backend.check_format(resolve_format("mxfp8_e4m3"), "forward")
    fmt = resolve_format("mxfp6_e2m3").replace(block_size=8, scale_rule="rceil")
    with pytest.raises(FormatMismatch, match=r"sim://\?format=mxfp6_e2m3&block_size=8&"
                                             r"scale_rule=rceil\)"):
        backend.check_format(fmt, "forward")

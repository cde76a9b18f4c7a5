"""The accumulators of docs/numerics.md section 6 in the golden model: bit-exact with the exact
scalar reference (tests/golden_reference_acc.py) and, for BF16 rounding, with ml_dtypes; the
exact accumulator is independent of the k-block order; the API's choices and errors."""

from fractions import Fraction

import numpy as np
import pytest

from hbfp_hw import golden
from hbfp_hw.formats import EXACT_MAX_KBLOCKS, PRESETS, Accumulator, BFPFormat
from hbfp_hw.golden import accumulators

from .golden_reference import bits_to_fraction, ref_round_to_fp32
from .golden_reference_acc import ACC_SEED_XOR, ref_gemm_acc, ref_round_to_bf16

ACCUMULATORS = [a.value for a in Accumulator]


def bits(x):
    return np.asarray(x, dtype=np.float32).view(np.uint32)


def spread_operands(rng, m, k, n, spread=12):
    """Operands whose k-blocks differ in scale by up to ``2**spread`` (so that the sums lose
    bits and the accumulators differ), with zeros, exact ties and negative cancellations."""
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    a *= np.exp2(rng.integers(-spread, spread + 1, (1, k))).astype(np.float32)
    b *= np.exp2(rng.integers(-spread, spread + 1, (k, 1))).astype(np.float32)
    a[:, :3] = 0
    if k > 20:
        b[16:20] = -b[:4]                # later blocks cancel earlier ones
    return a, b


@pytest.mark.parametrize("accumulator", ACCUMULATORS)
@pytest.mark.parametrize("fmt, shape", [("bfp8", (3, 70, 4)), ("bfp4", (2, 100, 3)),
                                        (BFPFormat(6, 4), (4, 37, 2))])
def test_matches_the_reference(accumulator, fmt, shape):
    fmt = PRESETS[fmt] if isinstance(fmt, str) else fmt
    rng = np.random.default_rng(len(accumulator) * 7 + shape[1])
    a, b = spread_operands(rng, *shape)
    got = golden.gemm(a, b, fmt, seed=11, accumulator=accumulator)
    assert np.array_equal(bits(got), ref_gemm_acc(a, b, fmt, accumulator, seed=11))


@pytest.mark.parametrize("accumulator", ACCUMULATORS)
def test_format_field_equals_the_argument(accumulator):
    rng = np.random.default_rng(3)
    a, b = spread_operands(rng, 9, 300, 7)
    fmt = PRESETS["bfp8"].replace(accumulator=accumulator)
    assert fmt.accumulator is Accumulator(accumulator)
    by_field = golden.gemm(a, b, fmt, seed=5)
    by_arg = golden.gemm(a, b, "bfp8", seed=5, accumulator=accumulator)
    assert np.array_equal(bits(by_field), bits(by_arg))
    q = golden.gemm_quantized(golden.quantize(a, fmt, axis=1), golden.quantize(b, fmt, axis=0),
                              seed=5)
    assert np.array_equal(bits(q), bits(by_field))


def test_fp32_is_unchanged_and_the_others_differ():
    rng = np.random.default_rng(4)
    a, b = spread_operands(rng, 16, 512, 16, spread=20)
    base = golden.gemm(a, b, "bfp8")
    assert np.array_equal(bits(golden.gemm(a, b, "bfp8", accumulator="fp32")), bits(base))
    for acc in ("fp32-kahan", "bf16-rne", "bf16-sr", "exact"):
        assert not np.array_equal(bits(golden.gemm(a, b, "bfp8", seed=1, accumulator=acc)),
                                  bits(base)), acc


def test_kahan_and_exact_are_closer_to_the_exact_sum():
    """On sums that lose bits in FP32, Kahan's error is at most FP32's and the exact
    accumulator is the correctly rounded sum of the exact block products."""
    rng = np.random.default_rng(5)
    a, b = spread_operands(rng, 8, 2048, 8, spread=24)
    fmt = PRESETS["bfp8"]
    qa, qb = golden.quantize(a, fmt, axis=1), golden.quantize(b, fmt, axis=0)
    exact = qa.dequantize().astype(np.float64) @ qb.dequantize().astype(np.float64)
    err = {acc: np.abs(golden.gemm(a, b, fmt, accumulator=acc) - exact).sum()
           for acc in ("fp32", "fp32-kahan", "exact")}
    assert err["fp32-kahan"] < err["fp32"] and err["exact"] <= err["fp32-kahan"]


def test_bf16_nearest_stagnates_and_stochastic_does_not():
    """Zamirai et al.'s point: a BF16 running sum rounded to nearest drops every small
    product once the sum is large; stochastic rounding keeps them on average."""
    k = 16 * 400
    a = np.ones((1, k), dtype=np.float32)
    b = np.full((k, 64), 1.0 / 256, dtype=np.float32)
    b[:16] = 4.0                                  # the first k-block makes the sum 64
    want = 64 + (k - 16) / 256                   # 88.94
    rne = golden.gemm(a, b, "bfp8", accumulator="bf16-rne")
    sr = golden.gemm(a, b, "bfp8", seed=2, accumulator="bf16-sr")
    assert np.all(rne == 64.0)             # 1/256 is below half of BF16's last bit, 1/2
    # Each step rounds up by 1/2 with probability 1/128: about 50 +- 7 of the 6,384 steps
    # in each column, so the columns scatter by +-3.5 and their mean by +-0.44.
    assert abs(sr.mean() - want) < 1.5 and np.all(np.abs(sr - want) < 14)


def test_bf16_sr_stream_is_per_c_element_and_k_block():
    """Lane ``i * N + j`` of the stream seeded with ``seed ^ 0x6A09E667``, one step per
    k-block: the same C element gets the same bits whatever the rest of C is."""
    rng = np.random.default_rng(6)
    a, b = spread_operands(rng, 5, 160, 6)
    full = golden.gemm(a, b, "bfp8", seed=9, accumulator="bf16-sr")
    assert accumulators.accumulator_seed(9) == 9 ^ ACC_SEED_XOR
    # Another column count moves the lanes: only column 0 of row 0 keeps its lane (0).
    narrow = golden.gemm(a, b[:, :1], "bfp8", seed=9, accumulator="bf16-sr")
    assert bits(narrow)[0, 0] == bits(full)[0, 0]
    assert not np.array_equal(bits(golden.gemm(a, b, "bfp8", seed=10, accumulator="bf16-sr")),
                              bits(full))


def test_exact_is_independent_of_the_k_block_order():
    rng = np.random.default_rng(7)
    a, b = spread_operands(rng, 12, 64 * 16, 10, spread=40)
    fmt = PRESETS["bfp8"]
    perm = rng.permutation(64)
    cols = (perm[:, None] * 16 + np.arange(16)).ravel()
    got = golden.gemm(a, b, fmt, accumulator="exact")
    assert np.array_equal(bits(golden.gemm(a[:, cols], b[cols], fmt, accumulator="exact")),
                          bits(got))
    assert not np.array_equal(bits(golden.gemm(a[:, cols], b[cols], fmt)),
                              bits(golden.gemm(a, b, fmt)))


def test_exact_cancels_what_fp32_overflows():
    """Two block products beyond FP32 that cancel: FP32 gives Inf - Inf = NaN on the way, the
    exact accumulator the small remainder."""
    a = np.zeros((1, 48), dtype=np.float32)
    b = np.zeros((48, 1), dtype=np.float32)
    a[0, :16], b[:16, 0] = 3e38, 3e38
    a[0, 16:32], b[16:32, 0] = 3e38, -3e38
    a[0, 32], b[32, 0] = 1.5, 2.0
    assert np.isnan(golden.gemm(a, b, "bfp8")[0, 0])
    assert golden.gemm(a, b, "bfp8", accumulator="exact")[0, 0] == np.float32(3.0)


@pytest.mark.parametrize("accumulator", ACCUMULATORS)
def test_nan_blocks_and_wide_minifloat_products(accumulator):
    """NaN blocks give the canonical NaN with every accumulator; E5M2 block products wider
    than float64 go through the exact-pair path into every accumulator."""
    rng = np.random.default_rng(8)
    a = rng.standard_normal((4, 96)).astype(np.float32)
    b = rng.standard_normal((96, 3)).astype(np.float32)
    a[1, 40] = np.nan
    b[5, 2] = np.inf
    # blocks holding both the largest and the smallest E5M2 magnitudes: 69-bit products
    a[2, 64:96:2], a[2, 65:96:2] = 57344.0, 2.0 ** -14
    b[64:96:2, 0], b[65:96:2, 0] = 2.0 ** -14, 57344.0
    got = golden.gemm(a, b, "mxfp8_e5m2", seed=3, accumulator=accumulator)
    nan = np.zeros(got.shape, dtype=bool)
    nan[1, :] = nan[:, 2] = True
    assert np.all(bits(got)[nan] == 0x7FC00000) and not np.isnan(got[~nan]).any()
    if accumulator == "exact":
        # the exact reference: Python integers of every block product, rounded once
        fmt = PRESETS["mxfp8_e5m2"]
        qa, qb = golden.quantize(a, fmt, axis=1), golden.quantize(b, fmt, axis=0)
        for i, j in zip(*np.nonzero(~nan)):
            total = sum(
                sum(int(x) * int(y) for x, y in zip(qa.mantissas[i, kb], qb.mantissas[j, kb]))
                * Fraction(2) ** (int(qa.exponents[i, kb]) + int(qb.exponents[j, kb])
                                  - 2 * fmt.fraction_bits)
                for kb in range(3))
            assert bits(got)[i, j] == ref_round_to_fp32(total)


def test_bf16_add_against_ml_dtypes_and_the_reference():
    """One BF16 accumulation step, nearest-even: ml_dtypes rounds the float64 sum where that
    sum is exact (operands within 29 binades); the exact reference everywhere, ties, carries,
    subnormals and overflow included."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(9)
    n = 20000
    acc = (rng.standard_normal(n) * np.exp2(rng.integers(-130, 126, n))).astype(np.float32)
    acc = acc.astype(ml_dtypes.bfloat16).astype(np.float32)             # BF16 values
    near = acc * np.exp2(rng.integers(-28, 3, n)).astype(np.float32)
    p = (near * rng.standard_normal(n)).astype(np.float32)
    p[:500] = (acc[:500].astype(np.float64) * (1 + 2.0 ** -8)).astype(np.float32)   # ties
    p[500:600] = -acc[500:600]                                         # exact zero
    got = accumulators.bf16_add(acc, p)
    finite = np.isfinite(acc.astype(np.float64) + p.astype(np.float64))
    want = (acc.astype(np.float64) + p.astype(np.float64)).astype(ml_dtypes.bfloat16)
    assert np.array_equal(bits(got)[finite], bits(want.astype(np.float32))[finite])
    # far apart (the smaller one only a sticky bit), and a few thousand against the reference
    far = (acc * np.exp2(rng.integers(-90, -30, n)).astype(np.float32)).astype(np.float32)
    tie = acc.astype(np.float64) * (1 + 2.0 ** -8)
    pairs = [(acc, far), (far, acc), (tie.astype(np.float32), far), (acc, p)]
    for x, y in pairs:
        x = np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)
        got = accumulators.bf16_add(x, y)
        for i in rng.choice(n, 400, replace=False):
            if not (np.isfinite(x[i]) and np.isfinite(y[i])):
                continue
            r = ref_round_to_bf16(Fraction(float(x[i])) + Fraction(float(y[i])))
            assert float(got[i]) == (float(r) if not isinstance(r, float) else r), (x[i], y[i])


def test_bf16_add_stochastic_against_the_reference():
    rng = np.random.default_rng(10)
    n = 3000
    acc = (rng.standard_normal(n) * np.exp2(rng.integers(-140, 126, n))).astype(np.float32)
    acc = np.where(np.isfinite(acc), acc, 1).astype(np.float32)
    acc = (acc.view(np.uint32) & 0xFFFF0000).view(np.float32)            # BF16 values
    p = (acc * np.exp2(rng.integers(-40, 4, n)).astype(np.float32)
         * rng.standard_normal(n).astype(np.float32)).astype(np.float32)
    r = rng.integers(0, 1 << 16, n).astype(np.uint32)
    r[:50] = 0
    r[50:100] = 0xFFFF
    got = accumulators.bf16_add(acc, p, r)
    for i in range(n):
        want = ref_round_to_bf16(Fraction(float(acc[i])) + Fraction(float(p[i])), int(r[i]))
        assert float(got[i]) == float(want), (acc[i], p[i], r[i])


def test_bf16_overflow_and_signed_zero():
    big = np.uint32(0x7F780000).view(np.float32)                  # a BF16 value, 3.29e38
    top = np.uint32(0x7F7F0000).view(np.float32)                  # the largest BF16
    got = accumulators.bf16_add(np.array([big, big, -big, -0.0, -0.0], dtype=np.float32),
                                np.array([big, 1e35, -big, -0.0, 0.0], dtype=np.float32))
    assert np.isposinf(got[0]) and got[1] == big and np.isneginf(got[2])
    assert bits(got)[3] == 0x80000000 and bits(got)[4] == 0          # IEEE's signed zeros
    sr = accumulators.bf16_add(np.array([top, top]), np.array([np.float32(1e36)] * 2),
                               np.array([0xFFFF, 0], dtype=np.uint32))
    assert np.isposinf(sr[0]) and sr[1] == top


def test_exact_rounding_of_wide_limbs():
    """The exact accumulator's final rounding against Python integers: random sums of block
    products spread over the whole exponent range, ties and subnormal results included."""
    fmt = PRESETS["bfp8"]
    rng = np.random.default_rng(11)
    lowest, _ = accumulators.exact_width((fmt, fmt))
    state = accumulators.start("exact", (fmt, fmt), (0, 400), 1, 8)
    totals = [0] * 400
    for kb in range(8):
        n = rng.integers(-(1 << 52), 1 << 52, 400)
        n[::7] = 0
        e = rng.integers(lowest, -lowest - 120, 400)
        e[:100] = rng.integers(-220, -140, 100)                  # near FP32's subnormals
        if kb == 7:
            n[200:220], e[200:220] = 1, e[200:220]                # sticky-only remainders
        state.add_exact(kb, n[:, None], e[:, None])
        for i in range(400):
            totals[i] += int(n[i]) * Fraction(2) ** int(e[i])
    got = state.result()[:, 0]
    for i in range(400):
        assert bits(got)[i] == ref_round_to_fp32(totals[i]), i


def test_errors():
    a = np.ones((2, 32), dtype=np.float32)
    with pytest.raises(ValueError, match=r"accumulator must be one of 'fp32', 'fp32-kahan', "
                                         r"'bf16-rne', 'bf16-sr', 'exact', not 'kahan'"):
        golden.gemm(a, a.T, "bfp8", accumulator="kahan")
    with pytest.raises(ValueError, match=r"accumulator='exact' conflicts with the format's "
                                         r"accumulator 'bf16-rne'"):
        golden.gemm(a, a.T, PRESETS["bfp8"].replace(accumulator="bf16-rne"),
                    accumulator="exact")
    with pytest.raises(ValueError, match=r"accumulator must be one of"):
        BFPFormat(8, 16, accumulator="fp16")
    with pytest.raises(ValueError, match=r"the same accumulator"):
        golden.gemm(a, a.T, ("bfp8", PRESETS["bfp8"].replace(accumulator="exact")))
    huge = np.ones((1, (EXACT_MAX_KBLOCKS + 1) * 1), dtype=np.float32)
    with pytest.raises(ValueError, match=r"the exact accumulator sums at most 1048576 "
                                         r"k-blocks \(K up to 1048576\), not 1048577"):
        golden.gemm(huge, huge.T, BFPFormat(8, 1), accumulator="exact")


def test_reference_rounding_examples():
    """The worked examples of numerics.md 6.3 (BF16's last bit is 1/2 in [64, 128))."""
    assert ref_round_to_bf16(Fraction(64) + Fraction(1, 8)) == 64          # below half an ulp
    assert ref_round_to_bf16(Fraction(64) + Fraction(1, 4)) == 64          # tie, 128 ulps: even
    assert ref_round_to_bf16(Fraction(129, 2) + Fraction(1, 4)) == 65      # tie, 129: odd
    assert ref_round_to_bf16(Fraction(64) + Fraction(1, 8), r=0xC000) == Fraction(129, 2)
    assert ref_round_to_bf16(Fraction(64) + Fraction(1, 8), r=0xBFFF) == 64
    for acc, p, r, want in ((64, 0.125, None, 64), (64, 0.25, None, 64), (64.5, 0.25, None, 65),
                            (64, 0.125, 0xC000, 64.5), (64, 0.125, 0xBFFF, 64)):
        rand = None if r is None else np.array([r], dtype=np.uint32)
        assert accumulators.bf16_add(np.float32([acc]), np.float32([p]), rand)[0] == want
    assert bits_to_fraction(0x3F800000) == 1


def test_kahan_overflow_is_inf_as_in_fp32():
    """A sum past FP32's largest is Inf under Kahan too (the compensation of an infinite sum
    is +0, numerics.md 6.2), not Inf - Inf = NaN at the next k-block."""
    a = np.full((1, 48), 1.0, dtype=np.float32)
    b = np.zeros((48, 1), dtype=np.float32)
    b[:32, 0] = 2.0e37                        # two k-blocks of 3.2e38 each
    b[32:, 0] = 1.0
    for acc in ("fp32", "fp32-kahan"):
        assert np.isposinf(golden.gemm(a, b, "bfp8", accumulator=acc)[0, 0]), acc
    assert golden.gemm(a, b, "bfp8", accumulator="exact")[0, 0] == np.inf


@pytest.mark.parametrize("accumulator", ACCUMULATORS)
def test_wire_codes_beyond_fp32(accumulator):
    """``gemm_quantized`` on wire codes whose elements exceed FP32 (E5M2's largest under
    ``X = 127``) takes the integer path, with every accumulator: 57344 (in FP32, though A's
    element is not) plus 1."""
    fmt = PRESETS["mxfp8_e5m2"]
    codes_a = np.zeros((1, 2, 32), dtype=np.uint8)
    codes_b = np.zeros((1, 2, 32), dtype=np.uint8)
    codes_a[0, 0, 0], codes_b[0, 0, 0] = 0x7B, 0x3C            # 57344 * 2**127, 1.0 * 2**-127
    codes_a[0, 1, 0], codes_b[0, 1, 0] = 0x3C, 0x3C            # 1.0, 1.0
    qa = golden.BFPTensor.from_codes(np.array([[254, 127]], dtype=np.uint8), codes_a, fmt)
    qb = golden.BFPTensor.from_codes(np.array([[0, 127]], dtype=np.uint8), codes_b, fmt)
    got = float(golden.gemm_quantized(qa, qb, accumulator=accumulator, seed=5)[0, 0])
    if accumulator == "bf16-sr":
        r = int(golden.random_bits(5 ^ ACC_SEED_XOR, 2, 1)[1, 0])
        assert got == float(ref_round_to_bf16(Fraction(57345), r))
    else:
        assert got == {"fp32": 57345.0, "fp32-kahan": 57345.0, "bf16-rne": 57344.0,
                       "exact": 57345.0}[accumulator]

"""golden.gemm (numerics.md section 3.3) against the reference and against its own parts.

The golden gemm picks, per k-block, a float32 BLAS path (moderate exponents, N*M^2 <= 2^24) or a
float64 one (wide formats such as w=16, or extreme exponents). Both must be bit-exact; the data
below is chosen so that each path runs, which is visible only through results.
"""

import zlib

import numpy as np
import pytest

from hbfp_hw import golden
from hbfp_hw.formats import BFPFormat, Rounding

from .golden_checks import (
    F32,
    MAX_F32,
    bits,
    f32,
    gemm_mismatches,
    random_clustered,
    random_finite_bits,
    tie_blocks,
)
from .golden_reference import CANONICAL_NAN, ref_gemm

GEMM_FORMATS = [BFPFormat(w, n, r) for (w, n) in [(2, 1), (2, 16), (3, 2), (4, 8), (5, 4),
                                                 (8, 16), (8, 32), (10, 64), (12, 8),
                                                 (16, 16), (16, 4), (7, 1)]
                for r in Rounding]


def _rand_matrix(rng, shape, lo=-20, hi=20, spread=8):
    vals = random_clustered(rng, 1, int(np.prod(shape)), lo=lo, hi=hi, spread=spread)
    return vals.reshape(shape)


@pytest.mark.parametrize("fmt", GEMM_FORMATS, ids=[f.name for f in GEMM_FORMATS])
def test_random_shapes(fmt):
    rng = np.random.default_rng(zlib.crc32(fmt.name.encode()))
    for _ in range(3):
        m, n = rng.integers(1, 13, size=2)
        k = int(rng.integers(1, 41))
        if k % fmt.block_size == 0 and fmt.block_size > 1:
            k += 1                                   # K not a multiple of the block size
        a = _rand_matrix(rng, (m, k))
        b = _rand_matrix(rng, (k, n))
        # per-row / per-column scale differences, so blocks have different exponents
        a *= np.ldexp(F32(1), rng.integers(-30, 30, size=(m, 1))).astype(F32)
        b *= np.ldexp(F32(1), rng.integers(-30, 30, size=(1, n))).astype(F32)
        assert gemm_mismatches(a, b, fmt, seed=int(rng.integers(0, 2**32))) == 0


def test_shapes_one():
    fmt = BFPFormat(8, 16)
    a = np.array([[3.0]], dtype=F32)
    b = np.array([[-0.5]], dtype=F32)
    c = golden.gemm(a, b, fmt)
    assert c.shape == (1, 1) and c.dtype == np.float32
    assert c[0, 0] == -1.5
    assert gemm_mismatches(a, b, fmt) == 0
    assert gemm_mismatches(np.ones((1, 40), F32), np.ones((40, 1), F32), fmt) == 0


@pytest.mark.parametrize("fmt", [BFPFormat(8, 16), BFPFormat(16, 16), BFPFormat(3, 2),
                                 BFPFormat(8, 4, "stochastic")], ids=lambda f: f.name)
def test_wide_dynamic_range(fmt):
    """Random bit patterns: extreme exponents force the float64 path, overflow and underflow."""
    rng = np.random.default_rng(5)
    a = random_finite_bits(rng, (6, 19))
    b = random_finite_bits(rng, (19, 5))
    assert gemm_mismatches(a, b, fmt, seed=77) == 0


@pytest.mark.parametrize("w, n", [(8, 16), (8, 32), (6, 64), (12, 1)])
def test_float32_path_subnormal_products(w, n):
    """N*M^2 <= 2^24 and product grid just above 2^-149: exact subnormal products in float32."""
    fmt = BFPFormat(w, n)
    assert golden.float32_blas_exact(fmt)
    rng = np.random.default_rng(w + n)
    # E_a + E_b - 2(w-2) = -149 or a little above: products down to 2^-149, all subnormal
    e = (-149 + 2 * (w - 2)) // 2
    a = (rng.uniform(-2, 2, size=(7, 2 * n + 3)) * 2.0 ** e).astype(F32)
    b = (rng.uniform(-2, 2, size=(2 * n + 3, 6)) * 2.0 ** (e + 1)).astype(F32)
    c = golden.gemm(a, b, fmt)
    assert np.any((c != 0) & (np.abs(c) < 2.0 ** -126))      # subnormal results occur
    assert gemm_mismatches(a, b, fmt) == 0


def test_float64_path_wide_format():
    """w = 16: N*M^2 > 2^24, block products need more than float32's 24 bits."""
    fmt = BFPFormat(16, 64)
    assert not golden.float32_blas_exact(fmt)
    rng = np.random.default_rng(6)
    a = rng.standard_normal((9, 150)).astype(F32)
    b = rng.standard_normal((150, 8)).astype(F32)
    assert gemm_mismatches(a, b, fmt) == 0
    # exact ties of the FP32 rounding of a single block product: S = 2^24 + 1 at E = 0
    a = np.zeros((1, 64), F32)
    b = np.zeros((64, 1), F32)
    a[0, :2] = [1.0, 2.0 ** -14]              # m = 16384, 1 at E = 0 (w - 2 = 14)
    b[:2, 0] = [1.0, 2.0 ** -14]
    # S = 16384^2 + 1 = 2^28 + 1 -> tie-free but needs 29 bits: RNE to 2^28 * 2^-28 = 1.0
    c = golden.gemm(a, b, fmt)
    assert c[0, 0] == 1.0
    assert gemm_mismatches(a, b, fmt) == 0


@pytest.mark.parametrize("w, n", [(8, 1024), (9, 256), (12, 4), (13, 4)])
def test_float32_exactness_limit(w, n):
    """N*M^2 right at 2^24 (w=8, N=1024; w=9, N=256) still fits float32; w=13, N=4 does not.
    Full-scale mantissas of mixed sign make the largest possible partial sums."""
    fmt = BFPFormat(w, n)
    assert golden.float32_blas_exact(fmt) == (n * fmt.max_mantissa ** 2 <= 2**24)
    rng = np.random.default_rng(w)
    k = 2 * n + 1
    top = (2.0 - 2.0 ** -(w - 2))                 # a = M exactly
    a = np.full((3, k), top, F32)
    b = np.full((k, 2), top, F32)
    a[1] = rng.choice([-1.0, 1.0], size=k) * top
    a[2] = rng.uniform(-2, 2, size=k)
    b[:, 1] = rng.uniform(-2, 2, size=k) * (1 + 2.0 ** -20)
    assert gemm_mismatches(a, b, fmt) == 0
    # one full block: S = N * M^2 needs up to 24 bits (w=8/9) or more (w=13): RNE of it
    s = n * fmt.max_mantissa ** 2
    c = golden.gemm(a[:1, :n], b[:n, :1], fmt)
    assert c[0, 0] == np.float32(s * 2.0 ** -(2 * (w - 2)))


def test_moderate_exponents_float32_path():
    fmt = BFPFormat(8, 16)
    rng = np.random.default_rng(7)
    a = rng.standard_normal((17, 70)).astype(F32)
    b = rng.standard_normal((70, 13)).astype(F32)
    assert gemm_mismatches(a, b, fmt) == 0
    ties = tie_blocks(rng, fmt, 20).reshape(10, 32)
    assert gemm_mismatches(ties, ties.T.copy(), fmt) == 0


@pytest.mark.parametrize("grid", [-151, -150, -149, -148])
def test_float32_path_lower_boundary(grid):
    """Product grids 2^-150 and 2^-151 are not float32-exact (each product would be rounded on
    its own, then summed); 2^-149 and above are. The results must all be the single RNE."""
    fmt = BFPFormat(8, 16)
    rng = np.random.default_rng(-grid)
    ea = -75
    eb = grid + 2 * fmt.fraction_bits - ea
    m = fmt.max_mantissa
    ma = rng.integers(-m, m + 1, size=(12, 16)) | 1          # odd mantissas
    mb = rng.integers(-m, m + 1, size=(16, 10)) | 1
    ma[:, 0] = 64 + rng.integers(0, 63, size=12)             # pins E_a (|m| >= 64)
    mb[0, :] = 64 + rng.integers(0, 63, size=10)
    a = np.ldexp(ma, ea - fmt.fraction_bits).astype(F32)
    b = np.ldexp(mb, eb - fmt.fraction_bits).astype(F32)
    c = golden.gemm(a, b, fmt)
    assert np.any(c != 0)
    assert gemm_mismatches(a, b, fmt) == 0


def test_float32_path_upper_boundary():
    """Partial sums that would overflow float32 while the exact block product is finite."""
    fmt = BFPFormat(8, 4)
    a = np.array([[1.5 * 2.0 ** 127] * 4, [1.5 * 2.0 ** 127, 1.0, 1.0, 1.0]], F32)
    b = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], F32)
    c = golden.gemm(a, b, fmt)
    assert bits(c[0]).tolist() == [0, 0]        # exact cancellation, no Inf - Inf
    assert np.isfinite(c[1]).all()
    assert gemm_mismatches(a, b, fmt) == 0


# -- special values ---------------------------------------------------------------------------

def test_nan_and_inf_rows_and_columns():
    fmt = BFPFormat(8, 4)
    rng = np.random.default_rng(8)
    a = rng.standard_normal((5, 10)).astype(F32)
    b = rng.standard_normal((10, 4)).astype(F32)
    a[1, 7] = np.nan
    a[3, 0] = -np.inf
    b[9, 2] = np.inf
    c = golden.gemm(a, b, fmt)
    cb = bits(c)
    nan_rows, nan_cols = [1, 3], [2]
    for i in range(5):
        for j in range(4):
            if i in nan_rows or j in nan_cols:
                assert cb[i, j] == CANONICAL_NAN
            else:
                assert np.isfinite(c[i, j])
    assert gemm_mismatches(a, b, fmt) == 0


def test_nan_with_zero_partner():
    """A NaN block poisons its row even where the other operand is all zero."""
    fmt = BFPFormat(8, 4)
    a = np.zeros((2, 8), F32)
    a[0, 5] = np.nan
    b = np.zeros((8, 3), F32)
    c = bits(golden.gemm(a, b, fmt))
    assert c[0].tolist() == [CANONICAL_NAN] * 3
    assert c[1].tolist() == [0, 0, 0]
    assert gemm_mismatches(a, b, fmt) == 0


def test_overflow_of_block_product_and_accumulation():
    fmt = BFPFormat(8, 4)
    big = F32(2.0 ** 127)
    a = np.zeros((4, 8), F32)
    b = np.zeros((8, 3), F32)
    a[0, :4] = big                       # block product 4 * 2^254 -> +Inf
    a[1, :4], a[1, 4:] = big, -big       # block products ±2^129: +Inf + -Inf -> NaN
    a[2, 0], a[2, 4] = 1.5 * 2.0 ** 127, 1.5 * 2.0 ** 127   # each finite, the sum overflows
    a[3, 0], a[3, 4] = 1.0, 1.0
    b[:, 0] = 1.0
    b[:4, 1] = big
    b[:, 2] = -1.0
    c = golden.gemm(a, b, fmt)
    assert np.isposinf(c[0, 0]) and np.isposinf(c[0, 1]) and np.isneginf(c[0, 2])
    assert bits(c[1, [0, 2]]).tolist() == [CANONICAL_NAN, CANONICAL_NAN]
    assert np.isposinf(c[1, 1])              # B's second k-block is zero there
    # row 2: each block gives 1.5 * 2^127, their FP32 sum 1.5 * 2^128 overflows to Inf
    assert np.isposinf(c[2, 0]) and np.isneginf(c[2, 2])
    assert c[3, 0] == 2.0
    assert gemm_mismatches(a, b, fmt) == 0


@pytest.mark.parametrize("fmt", [BFPFormat(8, 16), BFPFormat(16, 8), BFPFormat(2, 2)],
                         ids=lambda f: f.name)
def test_extreme_exponents(fmt):
    n = fmt.block_size
    cases = [
        (2.0 ** 127, 2.0 ** 127),        # 2^254: Inf
        (2.0 ** 127, 2.0 ** -127),       # exactly representable
        (2.0 ** -149, 2.0 ** -149),      # 2^-298: rounds to 0
        (2.0 ** -149, 2.0 ** 127),       # E = -127 clamp: 2^-149 is below the grid
        (2.0 ** -70, -(2.0 ** -79)),     # 2^-149 exactly, negative
        (2.0 ** -70, -(2.0 ** -80)),     # 2^-150: tie with 0 -> -0 block product, C = +0
        (-(2.0 ** -70), 1.5 * 2.0 ** -80),   # 1.5 * 2^-150 -> -2^-149
        (MAX_F32, -1.0),
    ]
    a = np.zeros((len(cases), n + 1), F32)
    b = np.zeros((n + 1, len(cases)), F32)
    for i, (x, y) in enumerate(cases):
        a[i, 0] = x
        b[0, i] = y
    assert gemm_mismatches(a, b, fmt) == 0
    c = golden.gemm(a, b, fmt)
    d = np.diag(c)
    assert np.isposinf(d[0])
    assert d[1] == 1.0
    assert bits(d[2]) == 0 and bits(d[5]) == 0       # never -0.0
    assert np.all(bits(c) != 0x80000000)


def test_result_never_negative_zero():
    fmt = BFPFormat(8, 16)
    a = np.full((3, 16), -(2.0 ** -100), F32)
    b = np.full((16, 2), 2.0 ** -100, F32)
    c = golden.gemm(a, b, fmt)
    assert bits(c).tolist() == [[0, 0]] * 3
    a = np.array([[1.0, -1.0]], F32)
    b = np.array([[1.0], [1.0]], F32)
    assert bits(golden.gemm(a, b, BFPFormat(8, 1))).tolist() == [[0]]


# -- seeds ------------------------------------------------------------------------------------

def test_stochastic_seed_semantics():
    fmt = BFPFormat(5, 8, "stochastic")
    rng = np.random.default_rng(9)
    a = _rand_matrix(rng, (6, 29))
    b = _rand_matrix(rng, (29, 7))
    for seed in (0, 12345, 2**32 - 1):
        c = golden.gemm(a, b, fmt, seed=seed)
        qa = golden.quantize(a, fmt, axis=1, seed=seed)
        qb = golden.quantize(b, fmt, axis=0, seed=(seed + 1) % 2**32)
        assert np.array_equal(bits(c), bits(golden.gemm_quantized(qa, qb)))
        assert np.array_equal(bits(c), ref_gemm(a, b, fmt, seed=seed))
        # and the seed matters
        qb_wrong = golden.quantize(b, fmt, axis=0, seed=seed)
        assert not np.array_equal(bits(c), bits(golden.gemm_quantized(qa, qb_wrong)))
    assert np.array_equal(bits(golden.gemm(a, b, fmt, seed=3)),
                          bits(golden.gemm(a, b, fmt, seed=3)))


def test_non_stochastic_ignores_seed():
    fmt = BFPFormat(5, 8)
    rng = np.random.default_rng(10)
    a, b = _rand_matrix(rng, (4, 20)), _rand_matrix(rng, (20, 3))
    assert np.array_equal(bits(golden.gemm(a, b, fmt, seed=1)),
                          bits(golden.gemm(a, b, fmt, seed=2)))
    assert np.array_equal(bits(golden.gemm(a, b, fmt)), bits(golden.gemm(a, b, fmt, seed=2)))


# -- composition: gemm == per-block dot + sequential accumulate -------------------------------

def composed_gemm(a, b, fmt, seed=None):
    """C from golden.quantize + golden.dot + golden.accumulate (the contract's 3.3 recipe)."""
    seed_b = None if seed is None else (seed + 1) % 2**32
    qa = golden.quantize(a, fmt, axis=1, seed=seed)
    qb = golden.quantize(b, fmt, axis=0, seed=seed_b)
    m, n = a.shape[0], b.shape[1]
    ta = golden.BFPTensor(qa.exponents[:, None], qa.mantissas[:, None], fmt,
                          (m, 1, a.shape[1]), 2)
    tb = golden.BFPTensor(qb.exponents[None], qb.mantissas[None], fmt, (1, n, b.shape[0]), 2)
    partials = golden.dot(ta, tb)                     # [M, N, KB]
    assert partials.shape == (m, n, qa.nblocks)
    return golden.accumulate(partials, axis=-1)


@pytest.mark.parametrize("fmt, lo, hi", [
    (BFPFormat(8, 16), -10, 10),                       # float32 path
    (BFPFormat(16, 32), -10, 10),                      # float64 path (wide format)
    (BFPFormat(8, 16), -140, 126),                     # float64 path (extreme exponents)
    (BFPFormat(6, 64, "stochastic"), -30, 30),
])
def test_large_gemm_matches_composition(fmt, lo, hi):
    rng = np.random.default_rng(11)
    a = random_clustered(rng, 64, 300, lo=lo, hi=hi, spread=20)
    b = random_clustered(rng, 70, 300, lo=lo, hi=hi, spread=20).T.copy()
    a[5, 100] = np.nan
    seed = 4242 if fmt.rounding is Rounding.STOCHASTIC else None
    c = golden.gemm(a, b, fmt, seed=seed)
    assert c.shape == (64, 70)
    assert np.array_equal(bits(c), bits(composed_gemm(a, b, fmt, seed=seed)))
    # spot-check a few entries against the slow reference
    want = ref_gemm(a[3:5], b[:, 10:13], fmt, seed=None) if seed is None else None
    if want is not None:
        assert np.array_equal(bits(c[3:5, 10:13]), want)


def test_big_gemm_tiles_and_threads():
    """Big enough for the golden model's tiling/threading: row slices must agree."""
    fmt = BFPFormat(8, 16)
    rng = np.random.default_rng(12)
    a = rng.standard_normal((520, 256)).astype(F32)
    b = rng.standard_normal((256, 512)).astype(F32)
    a[::37] *= F32(2.0 ** 100)
    b[:, ::41] *= F32(2.0 ** -90)
    c = golden.gemm(a, b, fmt)
    for r0, r1 in [(0, 7), (100, 103), (511, 520)]:
        assert np.array_equal(bits(c[r0:r1]), bits(composed_gemm(a[r0:r1], b, fmt)))
    assert np.array_equal(bits(c[517:520, 500:512]), ref_gemm(a[517:520], b[:, 500:512], fmt))


def test_bad_arguments():
    fmt = BFPFormat(8, 16)
    a = np.ones((2, 3), F32)
    with pytest.raises(ValueError, match=r"^a's columns must equal b's rows"):
        golden.gemm(a, np.ones((4, 2), F32), fmt)
    with pytest.raises(ValueError, match=r"^a and b must be 2-D"):
        golden.gemm(np.ones(3, F32), np.ones((3, 2), F32), fmt)
    with pytest.raises(ValueError, match=r"^M, N and K must be at least 1"):
        golden.gemm(np.ones((0, 3), F32), np.ones((3, 2), F32), fmt)


def test_ref_gemm_sanity():
    """The reference itself on a hand-computed case (E and mantissas by hand)."""
    fmt = BFPFormat(4, 2)                       # M = 7, step 2^(E-2)
    a = np.array([[1.0, 0.3, 2.0]], F32)        # blocks [1, .3] (E=0: 4, 1), [2, 0] (E=1: 4, 0)
    b = np.array([[1.0], [1.0], [f32(0x3FC00000)]], F32)   # [1, 1] (E=0: 4, 4), [1.5, 0] (E=0: 6)
    # block 0: (16 + 4) * 2^-4 = 1.25; block 1: 24 * 2^(1+0-4) = 3.0; total 4.25
    assert ref_gemm(a, b, fmt).tolist() == [[int(bits(np.float32(4.25)))]]
    assert golden.gemm(a, b, fmt)[0, 0] == 4.25

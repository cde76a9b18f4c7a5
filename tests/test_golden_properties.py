"""Property-based tests (hypothesis) of golden.quantize: invariants that need no reference.

- quantizing dequantized values again gives the same blocks (idempotence);
- the error of each element is at most half a step (nearest-even, saturation aside), below one
  step (toward-zero, stochastic);
- a tensor that is a single block is a fixed-point quantizer with step 2^(E-(w-2));
- stochastic rounding is unbiased (and nearest-even, on the same data, measurably is not).
"""

import math
from fractions import Fraction

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hbfp_hw import golden
from hbfp_hw.formats import BFPFormat, Rounding

from .golden_checks import F32

SETTINGS = settings(max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

formats = st.builds(
    BFPFormat,
    mantissa_bits=st.integers(2, 16),
    block_size=st.sampled_from([1, 2, 4, 8, 16, 32]),
    rounding=st.sampled_from(list(Rounding)),
    exponent_bits=st.sampled_from([2, 3, 5, 8, 8, 8]),
)

finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
any_f32 = st.floats(width=32, allow_nan=True, allow_infinity=True)


def tensors(elements=finite_f32, max_dims=3):
    shapes = hnp.array_shapes(min_dims=1, max_dims=max_dims, min_side=1, max_side=20)
    return hnp.arrays(np.float32, shapes, elements=elements)


def _blockwise(q):
    """Per-element exponent and mantissa, in the original shape and axis order."""
    fmt = q.fmt
    e = np.broadcast_to(q.exponents[..., None], q.mantissas.shape)
    e = e.reshape(*e.shape[:-2], -1)[..., :q.shape[q.axis]]
    m = q.mantissas.reshape(*q.mantissas.shape[:-2], -1)[..., :q.shape[q.axis]]
    e = np.moveaxis(e, -1, q.axis)
    m = np.moveaxis(m, -1, q.axis)
    assert e.shape == q.shape and fmt is q.fmt
    return e, m


@SETTINGS
@given(x=tensors(any_f32), fmt=formats, data=st.data())
def test_requantize_is_idempotent(x, fmt, data):
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    seed = data.draw(st.integers(0, 2**32 - 1))
    q = golden.quantize(x, fmt, axis=axis, seed=seed)
    d = q.dequantize()
    assert d.shape == x.shape and d.dtype == np.float32
    q2 = golden.quantize(d, fmt, axis=axis, seed=seed ^ 0x5A5A5A5A)
    assert np.array_equal(q.exponents, q2.exponents)
    assert np.array_equal(q.mantissas, q2.mantissas)
    assert np.array_equal(q2.dequantize(), d, equal_nan=True)


@SETTINGS
@given(x=tensors(), fmt=formats, seed=st.integers(0, 2**32 - 1))
def test_error_bounds(x, fmt, seed):
    q = golden.quantize(x, fmt, seed=seed)
    d = q.dequantize()
    e, m = _blockwise(q)
    big_m = fmt.max_mantissa
    assert np.all(np.abs(m) <= big_m)
    for xi, di, ei, mi in zip(x.reshape(-1), d.reshape(-1), e.reshape(-1), m.reshape(-1),
                              strict=True):
        xv, dv = Fraction(float(xi)), Fraction(float(di))
        step = Fraction(2) ** (int(ei) - fmt.fraction_bits)
        assert dv == mi * step
        if xv != 0 and dv != 0:
            assert (xv > 0) == (dv > 0)                   # sign-magnitude rounding
        if abs(xv) >= big_m * step:
            assert abs(mi) == big_m                       # saturation (and no overflow)
            continue
        err = abs(xv - dv)
        if fmt.rounding is Rounding.NEAREST_EVEN:
            assert err <= step / 2
        else:
            assert err < step
        if fmt.rounding is Rounding.TOWARD_ZERO:
            assert abs(dv) <= abs(xv)


@SETTINGS
@given(
    fmt=formats.filter(lambda f: f.block_size >= 2),
    e=st.integers(-120, 120),
    data=st.data(),
)
def test_single_block_is_fixed_point(fmt, e, data):
    """One block with max in [2^E, 2^(E+1)): a fixed-point quantizer with step 2^(E-(w-2))."""
    n = fmt.block_size
    e = max(min(e, fmt.max_exponent), fmt.min_exponent)
    frac = data.draw(hnp.arrays(np.float64, n, elements=st.floats(-1.999, 1.999)))
    x = (frac * 2.0 ** e).astype(F32)
    pos = data.draw(st.integers(0, n - 1))
    x[pos] = F32(data.draw(st.floats(1.0, 1.99)) * 2.0 ** e)
    q = golden.quantize(x, fmt, seed=1)
    assert q.exponents.tolist() == [e]
    step = 2.0 ** (e - fmt.fraction_bits)
    scaled = x.astype(np.float64) / step          # exact
    if fmt.rounding is Rounding.NEAREST_EVEN:
        want = np.rint(scaled)
    elif fmt.rounding is Rounding.TOWARD_ZERO:
        want = np.trunc(scaled)
    else:
        lo = np.trunc(scaled)
        got = q.mantissas[0].astype(np.float64)
        up = lo + np.sign(scaled)
        ok = (got == np.clip(lo, -fmt.max_mantissa, fmt.max_mantissa)) | \
             ((scaled != lo) & (got == np.clip(up, -fmt.max_mantissa, fmt.max_mantissa)))
        assert ok.all()
        return
    want = np.clip(want, -fmt.max_mantissa, fmt.max_mantissa)
    assert np.array_equal(q.mantissas[0], want.astype(np.int32))
    assert np.array_equal(q.dequantize(), (want * step).astype(F32))


# -- stochastic rounding is unbiased ------------------------------------------------------------

def _lane_means(fmt, a, seeds, repeats):
    """Mean quantized magnitude per lane over ``repeats`` blocks x ``seeds``.

    ``a`` (length N) are the exact scaled magnitudes; lane 0 is pinned to ``2^(w-2)`` so that
    every block has E = 0.
    """
    n = fmt.block_size
    w = fmt.mantissa_bits
    x = np.tile((np.asarray(a, dtype=np.float64) * 2.0 ** -(w - 2)).astype(F32), (repeats, 1))
    assert x.shape == (repeats, n)
    total = np.zeros(n)
    for seed in seeds:
        q = golden.quantize(x, fmt, seed=seed)
        assert np.all(q.exponents == 0)
        total += q.mantissas[:, 0, :].sum(axis=0)
    return total / (repeats * len(seeds))


def _z_scores(fmt, a, seeds=(1, 2, 3, 4), repeats=2000):
    means = _lane_means(fmt, a, seeds, repeats)
    frac = np.asarray(a) - np.floor(a)
    sd = np.sqrt(frac * (1 - frac) / (repeats * len(seeds)))
    sd = np.where(sd == 0, 1e-12, sd)
    return (means - np.asarray(a)) / sd, means


def test_stochastic_rounding_unbiased():
    fmt = BFPFormat(4, 16, "stochastic")
    # a_i = k + f with f having at most 16 fraction bits (exactly representable)
    rng = np.random.default_rng(0)
    f = rng.integers(1, 2**16, size=15) / 2**16
    f[:4] = [0.5, 0.25, 1 / 2**16, 1 - 1 / 2**16]
    k = rng.integers(0, 7, size=15)
    a = np.concatenate([[4.0], k + f])
    a = np.minimum(a, 6.99)         # stay below the saturation point M = 7
    a[1:] = np.floor(a[1:] * 2**16) / 2**16
    z, means = _z_scores(fmt, a)
    assert means[0] == 4.0
    assert np.all(np.abs(z[1:]) < 5), z


def test_nearest_even_fails_the_unbiasedness_test():
    """The same statistic on nearest-even data is far off: the test has power."""
    a = np.array([4.0] + [1.3, 2.3, 0.3, 5.7, 3.2] * 3)
    a[1:] = np.floor(a[1:] * 2**16) / 2**16
    fmt = BFPFormat(4, 16, "stochastic")
    z_sr, _ = _z_scores(fmt, a, seeds=(9,), repeats=4000)
    z_ne, _ = _z_scores(fmt.replace(rounding="nearest-even"), a, seeds=(9,), repeats=4000)
    z_tz, _ = _z_scores(fmt.replace(rounding="toward-zero"), a, seeds=(9,), repeats=4000)
    assert np.all(np.abs(z_sr[1:]) < 5)
    assert np.all(np.abs(z_ne[1:]) > 20)
    assert np.all(np.abs(z_tz[1:]) > 20)


def test_stochastic_probability_exact_for_short_fractions():
    """P(round up) = frac exactly over the full 2^16 random range: with a fraction of 3/8 the
    count over all 16-bit values r is exactly 3/8 * 2^16 (checked through the PRNG stream)."""
    fmt = BFPFormat(8, 2, "stochastic")
    frac = 3 / 8
    a = 40 + frac                            # E = 0 needs a_0 in [64, 128): lane 0 = 64
    x = np.tile(np.array([64.0, a], dtype=np.float64) * 2.0 ** -6, (2**14, 1)).astype(F32)
    q = golden.quantize(x, fmt, seed=77)
    ups = q.mantissas[:, 0, 1] - 40
    assert set(np.unique(ups).tolist()) <= {0, 1}
    r = golden.random_bits(77, 2**14, 2)[:, 1].astype(np.int64)
    assert np.array_equal(ups, (r + int(frac * 2**16)) >> 16)
    assert math.isclose(ups.mean(), frac, abs_tol=5 * math.sqrt(frac * (1 - frac) / 2**14))

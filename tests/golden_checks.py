"""Reusable checks of the golden model against the reference, and the data they run on.

Every ``*_mismatches`` function returns a count of disagreements (0 = the golden model agrees
with :mod:`tests.golden_reference`, or with the independent MXINT8 conversion). The real tests
assert that the counts are 0; ``test_golden_mutants.py`` runs the same functions against
deliberately broken golden models and asserts that the counts are positive.
"""

from __future__ import annotations

import numpy as np

from hbfp_hw import golden
from hbfp_hw.formats import BFPFormat, Rounding

from .golden_reference import NAN_BLOCK, ref_gemm, ref_quantize

F32 = np.float32
MAX_F32 = float(np.finfo(np.float32).max)


def f32(bits):
    """float32 array from uint32 bit patterns."""
    return np.asarray(bits, dtype=np.uint32).view(np.float32)


def bits(x):
    """uint32 bit patterns of float32 data."""
    return np.array(x, dtype=np.float32, copy=True).view(np.uint32)


# -- data ---------------------------------------------------------------------------------------

def random_finite_bits(rng, shape, min_field=0, max_field=254):
    """Random finite FP32 values, uniform over sign, exponent field and fraction field."""
    sign = rng.integers(0, 2, size=shape, dtype=np.uint32) << np.uint32(31)
    field = rng.integers(min_field, max_field + 1, size=shape, dtype=np.uint32)
    frac = rng.integers(0, 1 << 23, size=shape, dtype=np.uint32)
    return f32(sign | (field << np.uint32(23)) | frac)


def random_clustered(rng, nblocks, n, lo=-140, hi=126, spread=12):
    """Blocks of normal-ish values around a random per-block exponent (realistic data)."""
    base = rng.integers(lo, hi + 1, size=(nblocks, 1))
    e = base - rng.integers(0, spread + 1, size=(nblocks, n))
    mag = rng.uniform(1.0, 2.0, size=(nblocks, n))
    vals = np.ldexp(mag, e) * rng.choice([-1.0, 1.0], size=(nblocks, n))
    with np.errstate(over="ignore", under="ignore"):
        out = vals.astype(np.float32)
    out[~np.isfinite(out)] = 0
    # a few exact zeros and negative zeros
    out[rng.random((nblocks, n)) < 0.05] = 0.0
    out[rng.random((nblocks, n)) < 0.02] = -0.0
    return out


def pow2_neighbors(kmin=-149, kmax=127):
    """2^k, its predecessor and its successor for every k (nonzero finite values only)."""
    vals = []
    for k in range(kmin, kmax + 1):
        p = np.ldexp(F32(1), k).astype(F32)
        for v in (np.nextafter(p, F32(0)), p, np.nextafter(p, F32(np.inf))):
            if v != 0 and np.isfinite(v):
                vals.append(v)
    return np.array(vals, dtype=F32)


def pow2_blocks(rng, n):
    """One block per power-of-two neighbor: it first, then smaller values of mixed sign."""
    heads = pow2_neighbors()
    heads = np.concatenate([heads, -heads[::7]])
    blocks = np.zeros((len(heads), n), dtype=F32)
    blocks[:, 0] = heads
    if n > 1:
        # random fractions of the head: same binade or lower, down to subnormal
        scale = rng.uniform(0.0, 1.0, size=(len(heads), n - 1)) ** 4
        sign = rng.choice([-1.0, 1.0], size=(len(heads), n - 1))
        with np.errstate(under="ignore"):
            blocks[:, 1:] = (heads[:, None].astype(np.float64) * scale * sign).astype(F32)
        perm = rng.permuted(np.tile(np.arange(n), (len(heads), 1)), axis=1)
        blocks = np.take_along_axis(blocks, perm, axis=1)
    return blocks


def tie_blocks(rng, fmt, nblocks, e_choices=None):
    """Blocks whose elements sit exactly on, just below and just above rounding ties.

    Element values are ``(k + 1/2) * 2^(E-(w-2))`` (an exact tie of the mantissa grid), or the
    float just below/above it; one element pins the block exponent to ``E``. Both parities of
    ``k`` occur, so ties-to-even, ties-away and a lost sticky bit all give different results.
    """
    w, n = fmt.mantissa_bits, fmt.block_size
    big_m = fmt.max_mantissa
    if e_choices is None:
        e_choices = np.arange(max(fmt.min_exponent, -120), min(fmt.max_exponent, 120) + 1)
    out = np.zeros((nblocks, n), dtype=F32)
    es = rng.choice(e_choices, size=nblocks)
    for b, e in enumerate(es):
        e = int(e)
        step = np.ldexp(1.0, e - (w - 2))
        k = rng.integers(0, big_m + 1, size=n)
        vals = (k + 0.5) * step * rng.choice([-1.0, 1.0], size=n)
        v32 = vals.astype(F32)
        nudge = rng.integers(-1, 2, size=n)
        toward = np.where(nudge > 0, np.inf, 0.0).astype(F32)
        nudged = np.nextafter(v32, toward * np.sign(v32))
        v32 = np.where(nudge != 0, nudged, v32)
        if n > 1:
            # pin E: one element in [2^E, 2^(E+1))
            v32[rng.integers(0, n)] = F32(np.ldexp(1.0, e) * rng.uniform(1.0, 2.0))
        out[b] = v32
    return out


def exact_fraction_blocks(rng, fmt, nblocks):
    """Blocks of values on the 2^-16 sub-grid of the mantissa grid (stochastic is unbiased)."""
    w, n = fmt.mantissa_bits, fmt.block_size
    e = rng.integers(-100, 100, size=(nblocks, 1))
    units = rng.integers(0, (fmt.max_mantissa + 1) << 16, size=(nblocks, n))
    vals = np.ldexp(units.astype(np.float64), e - (w - 2) - 16)
    vals *= rng.choice([-1.0, 1.0], size=(nblocks, n))
    return vals.astype(F32)


def special_blocks(n):
    """Blocks of zeros, -0, subnormals, extremes, NaN and Inf in various places."""
    tiny = f32(1)  # 2^-149
    big = F32(MAX_F32)
    rows = [
        [0.0] * n,
        [-0.0] * n,
        [tiny] * n,
        [-tiny] + [0.0] * (n - 1),
        [big] * n,
        [-big] + [tiny] * (n - 1),
        [np.nan] + [1.0] * (n - 1),
        [1.0] * (n - 1) + [np.inf],
        [-np.inf] + [0.0] * (n - 1),
        [f32(0x007FFFFF)] * n,     # largest subnormal
        [f32(0x00800000)] + [f32(0x007FFFFF)] * (n - 1),  # smallest normal
        [3.0] * n,                 # all equal
        [0.0] * (n - 1) + [-5.5],  # single nonzero
        [f32(0x7FC00001)] * n,     # NaN with a payload
        [f32(0xFFC00000)] + [0.0] * (n - 1),  # negative NaN
    ]
    return np.array(rows, dtype=F32)


# -- quantization checks ------------------------------------------------------------------------

def _ref_tensor(x, fmt, axis, seed):
    ref_e, ref_m = ref_quantize(x, fmt, axis=axis, seed=seed)
    ref_e = np.array([[fmt.nan_exponent if e == NAN_BLOCK else e for e in row]
                      for row in ref_e], dtype=np.int64)
    return ref_e, np.array(ref_m, dtype=np.int64)


def quantize_mismatches(x, fmt, axis=-1, seed=None):
    """Count blocks where golden ``quantize`` differs from the reference (exponent or any
    mantissa), or the number of blocks if the golden tensor has the wrong structure."""
    x = np.asarray(x, dtype=F32)
    q = golden.quantize(x, fmt, axis=axis, seed=seed)
    ref_e, ref_m = _ref_tensor(x, fmt, axis, seed)
    nblocks = ref_e.shape[-1]
    batch = np.delete(np.array(x.shape), axis % x.ndim)
    want_e_shape = (*batch, nblocks)
    if (q.exponents.shape != want_e_shape
            or q.mantissas.shape != (*want_e_shape, fmt.block_size)):
        return max(ref_e.size, 1)
    ge = q.exponents.reshape(ref_e.shape).astype(np.int64)
    gm = q.mantissas.reshape(ref_m.shape).astype(np.int64)
    bad = (ge != ref_e) | np.any(gm != ref_m, axis=-1)
    return int(bad.sum())


def adversarial_quantize_mismatches(fmt, seed=1234, rng_seed=0):
    """Total quantize mismatches over the adversarial data sets, for one format."""
    rng = np.random.default_rng(rng_seed)
    n = fmt.block_size
    total = 0
    total += quantize_mismatches(pow2_blocks(rng, n), fmt, seed=seed)
    total += quantize_mismatches(tie_blocks(rng, fmt, 120), fmt, seed=seed + 1)
    e_low = np.arange(fmt.min_exponent, fmt.min_exponent + 3)
    total += quantize_mismatches(tie_blocks(rng, fmt, 30, e_choices=e_low), fmt, seed=seed + 2)
    total += quantize_mismatches(special_blocks(n), fmt, seed=seed + 3)
    return total


# -- MXINT8 -------------------------------------------------------------------------------------

def mxint8_reference(x):
    """Independent OCP MX MXINT8 conversion of ``x[..., 32*k]`` along the last axis.

    Returns ``(scale_exponent float64 [..., nblocks] (NaN for NaN scales), int mantissas
    [..., nblocks, 32])`` with the element value ``mantissa / 64 * 2^scale_exponent``.
    """
    x = np.asarray(x, dtype=F32)
    blocks = x.reshape(*x.shape[:-1], -1, 32).astype(np.float64)
    amax = np.max(np.abs(blocks), axis=-1)
    bad = ~np.all(np.isfinite(blocks), axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        _, e = np.frexp(np.where(amax > 0, amax, 1.0))
    shared = np.where(amax > 0, e - 1, -127)       # floor(log2 amax) - emax_elem(0)
    shared = np.clip(shared, -127, 127).astype(np.float64)
    scaled = blocks / np.ldexp(1.0, shared.astype(np.int64))[..., None]
    with np.errstate(invalid="ignore"):
        q = np.clip(np.rint(scaled * 64.0), -127, 127)
    q = np.where(bad[..., None], 0, q)
    shared = np.where(bad, np.nan, shared)
    return shared, q.astype(np.int64)


def mxint8_mismatches(x):
    """Count 32-blocks where golden MXINT8 quantization differs from the OCP MX conversion."""
    from hbfp_hw.formats import MXINT8

    q = golden.quantize(x, MXINT8)
    scale, mant = mxint8_reference(x)
    ge = q.exponents.astype(np.float64)
    ge = np.where(ge == MXINT8.nan_exponent, np.nan, ge)
    same_e = (ge == scale) | (np.isnan(ge) & np.isnan(scale))
    bad = ~same_e | np.any(q.mantissas != mant, axis=-1)
    return int(bad.sum())


# -- gemm ---------------------------------------------------------------------------------------

def gemm_mismatches(a, b, fmt, seed=None):
    """Count elements where golden ``gemm`` differs bit for bit from the reference."""
    got = bits(golden.gemm(a, b, fmt, seed=seed))
    want = ref_gemm(a, b, fmt, seed=seed)
    if got.shape != want.shape:
        return max(want.size, 1)
    return int(np.sum(got != want))


def all_formats_small():
    """A spread of formats over w, block size and rounding (for gemm / quantize sweeps)."""
    out = []
    for w, n in [(2, 1), (3, 2), (4, 4), (5, 8), (8, 16), (8, 32), (11, 4), (16, 16),
                 (16, 64), (6, 64)]:
        for r in Rounding:
            out.append(BFPFormat(w, n, r))
    return out



# -- arithmetic -----------------------------------------------------------------------------------

SPECIAL_BITS = [0x00000000, 0x80000000, 0x00000001, 0x80000001, 0x007FFFFF, 0x00800000,
                0x3F800000, 0xBF800000, 0x4B800000, 0x33800000, 0x7F7FFFFF, 0xFF7FFFFF,
                0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FFFFFFF,
                0x34000000, 0xF3800000]


def fp32_add_special_mismatches():
    """Count special-value pairs where golden ``fp32_add`` differs from the reference."""
    from .golden_reference import ref_fp32_add

    pairs = np.array([(x, y) for x in SPECIAL_BITS for y in SPECIAL_BITS], dtype=np.uint32)
    got = bits(golden.fp32_add(f32(pairs[:, 0]), f32(pairs[:, 1])))
    return sum(int(g) != ref_fp32_add(int(x), int(y))
               for (x, y), g in zip(pairs, got, strict=True))


def dot_mismatches(fmt, nblocks=300, rng_seed=0):
    """Count random block pairs (all exponents, NaN blocks included) where golden ``dot``
    differs from the reference."""
    from .golden_reference import ref_block_dot

    rng = np.random.default_rng(rng_seed)
    big_m, n = fmt.max_mantissa, fmt.block_size
    ma = rng.integers(-big_m, big_m + 1, size=(nblocks, 1, n))
    mb = rng.integers(-big_m, big_m + 1, size=(nblocks, 1, n))
    ea = rng.integers(fmt.min_exponent, fmt.nan_exponent + 1, size=(nblocks, 1))
    eb = rng.integers(fmt.min_exponent, fmt.nan_exponent + 1, size=(nblocks, 1))
    ma[ea == fmt.nan_exponent] = 0
    mb[eb == fmt.nan_exponent] = 0

    def tensor(e, m):
        return golden.BFPTensor(e.astype(np.int16), m.astype(np.int32), fmt, (nblocks, n), 1)

    got = bits(golden.dot(tensor(ea, ma), tensor(eb, mb)))[:, 0]
    bad = 0
    for i in range(nblocks):
        want = ref_block_dot(NAN_BLOCK if ea[i, 0] == fmt.nan_exponent else int(ea[i, 0]),
                             ma[i, 0], NAN_BLOCK if eb[i, 0] == fmt.nan_exponent
                             else int(eb[i, 0]), mb[i, 0], fmt)
        bad += int(got[i]) != want
    return bad

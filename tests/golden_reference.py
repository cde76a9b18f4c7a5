"""A slow, obviously-correct scalar reference for the numerics contract (docs/numerics.md).

Written from the contract text only, independently of :mod:`hbfp_hw.golden`. Everything is
exact: values are :class:`fractions.Fraction` or Python ints, and every rounding is done by
hand with exact comparisons. No numpy arithmetic, ``frexp``, ``log2`` or ``rint`` is used for
any rounding; :mod:`struct` only moves bit patterns that are already exact.

The functions take plain Python objects (floats that are exact FP32 values, ints, lists) so that
they can be read against the contract line by line. They are slow; use them on small data.
"""

from __future__ import annotations

import math
import struct
from fractions import Fraction

from hbfp_hw.formats import BFPFormat, Rounding

__all__ = [
    "CANONICAL_NAN",
    "NAN_BLOCK",
    "bits_to_float",
    "float_to_bits",
    "bits_to_fraction",
    "ref_floor_log2",
    "ref_quantize_block",
    "ref_quantize",
    "ref_dequantize_block",
    "ref_xorshift32_step",
    "ref_lane_seed",
    "ref_xorshift32_lane_stream",
    "ref_random_bits",
    "ref_round_to_fp32",
    "ref_fp32_add",
    "ref_accumulate",
    "ref_block_dot",
    "ref_gemm",
]

CANONICAL_NAN = 0x7FC00000
POS_INF = 0x7F800000
NEG_INF = 0xFF800000
NEG_ZERO = 0x80000000
#: Marker used instead of an exponent for a NaN block.
NAN_BLOCK = "nan"

_MASK32 = 0xFFFFFFFF
_R = 16  # random bits of stochastic rounding


# -- bit patterns -----------------------------------------------------------------------------

def float_to_bits(x: float) -> int:
    """Return the binary32 bit pattern of ``x``, which must be an exact FP32 value (or NaN)."""
    return struct.unpack("<I", struct.pack("<f", x))[0]


def bits_to_float(u: int) -> float:
    """Return the FP32 value with bit pattern ``u`` as a Python float (exact)."""
    return struct.unpack("<f", struct.pack("<I", u & _MASK32))[0]


def _decode(u: int):
    """Split FP32 bits into ``("nan",)``, ``("inf", sign)`` or ``("num", sign, Fraction)``.

    The value is built by hand from the fields, without any float arithmetic.
    """
    sign = (u >> 31) & 1
    field = (u >> 23) & 0xFF
    frac = u & 0x7FFFFF
    if field == 0xFF:
        return ("nan",) if frac else ("inf", sign)
    if field == 0:
        mag = Fraction(frac, 1 << 149)  # subnormal (or zero): frac * 2^-149
    else:
        mag = _pow2(field - 150) * ((1 << 23) + frac)
    return ("num", sign, mag)


def bits_to_fraction(u: int) -> Fraction:
    """Return the exact value of finite FP32 bits ``u`` (the sign of a zero is lost)."""
    d = _decode(u)
    if d[0] != "num":
        raise ValueError(f"{u:#010x} is not finite")
    return -d[2] if d[1] else d[2]


def _pow2(k: int) -> Fraction:
    return Fraction(1 << k) if k >= 0 else Fraction(1, 1 << -k)


# -- section 2.1: floor(log2|x|) ----------------------------------------------------------------

def _floor_log2_fraction(a: Fraction) -> int:
    """Return the integer ``k`` with ``2^k <= a < 2^(k+1)`` for a positive rational ``a``."""
    if a <= 0:
        raise ValueError("floor(log2) of a non-positive value")
    k = a.numerator.bit_length() - a.denominator.bit_length()  # within one of the answer
    while _pow2(k) > a:
        k -= 1
    while _pow2(k + 1) <= a:
        k += 1
    assert _pow2(k) <= a < _pow2(k + 1)
    return k


def ref_floor_log2(x: float) -> int:
    """Return ``floor(log2 |x|)`` for a nonzero finite ``x`` by exact comparison with 2^k."""
    return _floor_log2_fraction(abs(Fraction(x)))


# -- sections 2.1 - 2.3: one block --------------------------------------------------------------

def _round_magnitude(a: Fraction, rounding: Rounding, r: int | None) -> int:
    """Round the non-negative exact value ``a`` to an integer as section 2.3 says."""
    n = math.floor(a)
    frac = a - n
    if rounding is Rounding.NEAREST_EVEN:
        half = Fraction(1, 2)
        if frac > half or (frac == half and n % 2 == 1):
            n += 1
        return n
    if rounding is Rounding.TOWARD_ZERO:
        return n
    if rounding is Rounding.STOCHASTIC:
        if r is None or not 0 <= r < (1 << _R):
            raise ValueError(f"stochastic rounding needs a 16-bit random value, not {r!r}")
        return (math.floor(a * (1 << _R)) + r) >> _R
    raise ValueError(rounding)


def ref_quantize_block(values, fmt: BFPFormat, rand=None):
    """Quantize one block of FP32 values (Python floats) exactly as section 2 says.

    ``values`` may be shorter than the block size (the rest is zero padding). ``rand`` is a list
    of 16-bit random integers, one per lane, required for stochastic rounding.

    Returns ``(E, [m_i])`` with ``E`` the unbiased shared exponent or :data:`NAN_BLOCK`.
    """
    n = fmt.block_size
    values = [float(v) for v in values]
    if len(values) > n:
        raise ValueError("block too long")
    values = values + [0.0] * (n - len(values))
    if any(math.isnan(v) or math.isinf(v) for v in values):
        return NAN_BLOCK, [0] * n
    if all(v == 0 for v in values):
        return fmt.min_exponent, [0] * n
    e = max(ref_floor_log2(v) for v in values if v != 0)
    e = min(max(e, fmt.min_exponent), fmt.max_exponent)
    w = fmt.mantissa_bits
    big_m = (1 << (w - 1)) - 1
    scale = _pow2((w - 2) - e)
    out = []
    for i, v in enumerate(values):
        a = abs(Fraction(v)) * scale
        r = None if rand is None else rand[i]
        mag = min(_round_magnitude(a, fmt.rounding, r), big_m)
        out.append(-mag if v < 0 else mag)
    return e, out


def ref_dequantize_block(e, mantissas, fmt: BFPFormat):
    """Return the exact element values of a block as Fractions (``None`` for a NaN block)."""
    if e == NAN_BLOCK or e == fmt.nan_exponent:
        return None
    step = _pow2(e - fmt.fraction_bits)
    return [m * step for m in mantissas]


def ref_quantize(x, fmt: BFPFormat, axis=-1, seed=None):
    """Quantize a whole tensor (anything with ``.shape`` / numpy indexing) with the reference.

    Returns ``(exponents, mantissas)`` as nested Python lists of shapes ``(*batch, nblocks)``
    and ``(*batch, nblocks, N)``, flattened over ``batch`` in C order (so the outer list has
    ``prod(batch)`` entries). NaN blocks have exponent :data:`NAN_BLOCK`.
    """
    import numpy as np  # only to move data around, never to compute

    x = np.moveaxis(np.asarray(x, dtype=np.float32), axis, -1)
    size = x.shape[-1]
    n = fmt.block_size
    nblocks = -(-size // n)
    rows = x.reshape(-1, size) if x.size else np.zeros((math.prod(x.shape[:-1]), size))
    stochastic = fmt.rounding is Rounding.STOCHASTIC
    if stochastic:
        rand = ref_random_bits(seed, len(rows) * nblocks, n)
    exps, mants = [], []
    b = 0
    for row in rows:
        row = [float(v) for v in row]
        re, rm = [], []
        for kb in range(nblocks):
            e, m = ref_quantize_block(row[kb * n:(kb + 1) * n], fmt,
                                      rand[b] if stochastic else None)
            re.append(e)
            rm.append(m)
            b += 1
        exps.append(re)
        mants.append(rm)
    return exps, mants


# -- section 2.4: PRNG --------------------------------------------------------------------------

def ref_xorshift32_step(s: int) -> int:
    """One xorshift32 step (13, 17, 5) on a 32-bit state."""
    s ^= (s << 13) & _MASK32
    s ^= s >> 17
    s ^= (s << 5) & _MASK32
    return s


def ref_lane_seed(seed: int, lane: int) -> int:
    """Initial state of lane ``lane``: ``seed XOR C_l``, or ``C_l`` if that is 0."""
    c = (0x9E3779B9 * (lane + 1)) & _MASK32
    s = (seed ^ c) & _MASK32
    return s if s != 0 else c


def ref_xorshift32_lane_stream(seed: int, lane: int, nsteps: int) -> list[int]:
    """Return the states of lane ``lane`` after 1, 2, ..., ``nsteps`` steps."""
    s = ref_lane_seed(seed, lane)
    out = []
    for _ in range(nsteps):
        s = ref_xorshift32_step(s)
        out.append(s)
    return out


def ref_random_bits(seed: int, nblocks: int, lanes: int) -> list[list[int]]:
    """Return ``r[b][l]``: the 16-bit random value of lane ``l`` for block ``b``."""
    streams = [ref_xorshift32_lane_stream(seed, lane, nblocks) for lane in range(lanes)]
    return [[streams[lane][b] >> 16 for lane in range(lanes)] for b in range(nblocks)]


# -- section 3.1 step 3: RNE to FP32 ------------------------------------------------------------

def ref_round_to_fp32(q: Fraction) -> int:
    """Round the exact rational ``q`` to binary32 (RNE) and return the bit pattern.

    Gradual underflow; overflow to ±Inf when the rounded magnitude (unbounded exponent)
    reaches 2^128; ``q == 0`` gives +0; a negative ``q`` that rounds to zero gives -0.
    """
    q = Fraction(q)
    sign = 1 if q < 0 else 0
    a = abs(q)
    if a == 0:
        return 0
    e = max(_floor_log2_fraction(a), -126)  # subnormals share the quantum of 2^-126
    quantum = _pow2(e - 23)
    n = _round_magnitude(a / quantum, Rounding.NEAREST_EVEN, None)
    if n == 1 << 24:  # carry into the next binade
        n >>= 1
        e += 1
    if n < (1 << 23):  # subnormal (or zero); only possible with e == -126
        assert e == -126
        mag_bits = n
    else:
        field = e + 127
        if field >= 0xFF:
            mag_bits = POS_INF
        else:
            mag_bits = (field << 23) | (n - (1 << 23))
    return (sign << 31) | mag_bits


# -- section 3.2: FP32 addition -----------------------------------------------------------------

def ref_fp32_add(xbits: int, ybits: int) -> int:
    """IEEE binary32 addition (RNE), canonical NaN, from bit patterns to a bit pattern."""
    dx, dy = _decode(xbits & _MASK32), _decode(ybits & _MASK32)
    if dx[0] == "nan" or dy[0] == "nan":
        return CANONICAL_NAN
    if dx[0] == "inf" and dy[0] == "inf":
        return CANONICAL_NAN if dx[1] != dy[1] else (xbits & _MASK32)
    if dx[0] == "inf":
        return xbits & _MASK32
    if dy[0] == "inf":
        return ybits & _MASK32
    fx = -dx[2] if dx[1] else dx[2]
    fy = -dy[2] if dy[1] else dy[2]
    s = fx + fy
    if s == 0:
        # exact zero: -0 only when both operands are -0 (roundTiesToEven)
        both_neg_zero = dx[1] == 1 and dy[1] == 1 and dx[2] == 0 and dy[2] == 0
        return NEG_ZERO if both_neg_zero else 0
    return ref_round_to_fp32(s)


def ref_accumulate(bits_list) -> int:
    """Sequential FP32 sum from +0.0 in list order."""
    acc = 0
    for u in bits_list:
        acc = ref_fp32_add(acc, int(u))
    return acc


# -- sections 3.1 and 3.3 -----------------------------------------------------------------------

def ref_block_dot(ea, ma, eb, mb, fmt: BFPFormat) -> int:
    """FP32 bits of the dot product of blocks ``(ea, ma)`` and ``(eb, mb)`` (section 3.1)."""
    if ea in (NAN_BLOCK, fmt.nan_exponent) or eb in (NAN_BLOCK, fmt.nan_exponent):
        return CANONICAL_NAN
    s = sum(int(p) * int(q) for p, q in zip(ma, mb, strict=True))
    if s == 0:
        return 0
    return ref_round_to_fp32(Fraction(s) * _pow2(int(ea) + int(eb) - 2 * fmt.fraction_bits))


def ref_gemm(a, b, fmt: BFPFormat, seed=None):
    """FP32 bits (numpy uint32 [M, N]) of ``gemm(a, b, fmt, seed)`` by section 3.3."""
    import numpy as np  # only to hold the data

    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    m_dim, k_dim = a.shape
    k2, n_dim = b.shape
    assert k_dim == k2
    seed_b = None if seed is None else (seed + 1) & _MASK32
    ea, ma = ref_quantize(a, fmt, axis=1, seed=seed)
    eb, mb = ref_quantize(b, fmt, axis=0, seed=seed_b)
    nblocks = -(-k_dim // fmt.block_size)
    out = np.zeros((m_dim, n_dim), dtype=np.uint32)
    for i in range(m_dim):
        for j in range(n_dim):
            acc = 0
            for kb in range(nblocks):
                p = ref_block_dot(ea[i][kb], ma[i][kb], eb[j][kb], mb[j][kb], fmt)
                acc = ref_fp32_add(acc, p)
            out[i, j] = acc
    return out

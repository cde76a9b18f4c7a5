"""The accumulators of a GEMM: how the block dot products of each element of ``C`` are summed
over the k-blocks, bit-exact with docs/numerics.md section 6.

- ``fp32``: ``acc = fp32(acc + p)``, nearest-even (section 3.3; the default);
- ``fp32-kahan``: Kahan-compensated FP32, the update sequence of section 6.2;
- ``bf16-rne`` / ``bf16-sr``: ``acc = bf16(acc + p)``, the exact sum rounded once to BF16,
  to nearest-even or stochastically with the contract's PRNG (section 6.3);
- ``exact``: the exact block products summed in a fixed-point (Kulisch) accumulator and
  rounded once to FP32 at the end (section 6.4).

Each accumulator here works on a tile of ``C`` (rows ``r0..r1`` of ``M x Ncols``) so that the
GEMM can run tiles in parallel: :func:`start` makes one, ``add`` takes the k-blocks in
increasing order, ``result`` returns FP32 values (NaN blocks are the GEMM's business).
"""

from __future__ import annotations

import numpy as np

from hbfp_hw.formats import EXACT_MAX_KBLOCKS, SR_RANDOM_BITS, Accumulator
from hbfp_hw.golden import prng

__all__ = ["start", "accumulator_seed", "bf16_add", "exact_width", "Exact", "ACC_SEED_XOR"]

#: ``bf16-sr`` draws its random bits from the PRNG seeded with ``seed ^ ACC_SEED_XOR``, where
#: ``seed`` is the GEMM's (A's) seed: a stream apart from both operands' (numerics.md 6.3).
ACC_SEED_XOR = 0x6A09E667

_BF16_KEPT = 8                # significant bits of a BF16 value
_BF16_MIN_LSB = -133          # weight of the last bit of a BF16 subnormal


def accumulator_seed(seed):
    """The PRNG seed of the ``bf16-sr`` accumulator of a GEMM with ``seed``."""
    return (prng.check_seed(seed) ^ ACC_SEED_XOR) & 0xFFFFFFFF


def start(accumulator, fmts, rows, ncols, kblocks, seed=None, out=None):
    """Return an accumulator for rows ``rows = (r0, r1)`` of a ``C`` with ``ncols`` columns.

    Its ``add(kb, p)`` takes k-block ``kb``'s FP32 block products ``p [r1-r0, ncols]`` (for
    ``exact``: ``add_exact(kb, n, e)``, the exact products ``n * 2**e``, int64 ``|n| < 2**53``),
    and ``result()`` returns the sums. ``every_kblock`` says whether a k-block whose products
    are all zero must still be added (Kahan's compensation moves). ``out`` (float32 zeros of
    the tile's shape) is where ``fp32`` sums, and what its ``result()`` returns.
    """
    accumulator = Accumulator(accumulator)
    shape = (rows[1] - rows[0], ncols)
    if accumulator is Accumulator.FP32:
        return _Fp32(shape, out)
    if accumulator is Accumulator.FP32_KAHAN:
        return _Kahan(shape)
    if accumulator is Accumulator.EXACT:
        return Exact(shape, exact_width(fmts))
    rand = None
    if accumulator is Accumulator.BF16_SR:
        # C element (i, j) is lane i * ncols + j; k-block kb takes the state after kb + 1 steps.
        rand = prng.random_bits(accumulator_seed(seed), kblocks, shape[0] * ncols,
                                first=rows[0] * ncols).reshape(kblocks, *shape)
    return _Bf16(shape, rand)


class _Fp32:
    every_kblock = False
    exact = False

    def __init__(self, shape, out=None):
        self.acc = np.zeros(shape, dtype=np.float32) if out is None else out

    def add(self, kb, p):
        np.add(self.acc, p, out=self.acc)

    def result(self):
        return self.acc


class _Kahan:
    """``y = p - c; t = s + y; c = (t - s) - y`` (``+0`` when ``t`` is not finite); ``s = t``."""

    every_kblock = True
    exact = False

    def __init__(self, shape):
        self.s = np.zeros(shape, dtype=np.float32)
        self.c = np.zeros(shape, dtype=np.float32)

    def add(self, kb, p):
        with np.errstate(over="ignore", invalid="ignore"):
            y = p - self.c
            t = self.s + y
            c = (t - self.s) - y
        self.c = np.where(np.isfinite(t), c, np.float32(0))
        self.s = t

    def result(self):
        return self.s


class _Bf16:
    every_kblock = False
    exact = False

    def __init__(self, shape, rand):
        self.acc = np.zeros(shape, dtype=np.float32)
        self.rand = rand

    def add(self, kb, p):
        self.acc = bf16_add(self.acc, p, None if self.rand is None else self.rand[kb])

    def result(self):
        return self.acc


def _bit_length(m):
    """Exact bit lengths of non-negative int64 ``m`` below ``2**62``."""
    hi = m >> 31
    _, top = np.frexp(np.where(hi > 0, hi, m).astype(np.float64))   # exact: below 2**31
    return np.where(hi > 0, top + 31, top).astype(np.int64)


def _split(x):
    """float32 ``x`` (finite) as int64 ``n`` and exponent ``e`` with ``x = n * 2**e``."""
    frac, ex = np.frexp(x.astype(np.float64))
    return (frac * (1 << 24)).astype(np.int64), ex.astype(np.int64) - 24


def _exact_sum(a, b):
    """``a + b`` (float32, finite) as ``(n, e)``: the value is within the open interval
    between ``n * 2**e`` and its neighbour on the side of its sign when ``n`` is odd, exactly
    ``n * 2**e`` when it is even.

    Both operands are exact on a grid of weight ``2**(e+1)`` down to 58 bits below the larger
    one's leading bit; the smaller one's bits below that (only when the exponents are more
    than 34 apart) count as half a unit of its sign. Rounding to at most 24 significant bits
    decides identically on that value and on the exact sum: every boundary it compares with
    is a multiple of ``2**(e+1)`` (see numerics.md 6.3).
    """
    na, ea = _split(a)
    nb, eb = _split(b)
    big = np.maximum(np.where(na != 0, ea, -(1 << 20)), np.where(nb != 0, eb, -(1 << 20)))
    low = np.minimum(np.where(na != 0, ea, 1 << 20), np.where(nb != 0, eb, 1 << 20))
    base = np.maximum(low, big + 24 - 58)
    total = np.zeros(a.shape, dtype=np.int64)
    for n, e in ((na, ea), (nb, eb)):
        shift = e - base
        mag = np.abs(n)
        right = np.clip(-shift, 0, 63)
        kept = np.where(shift >= 0, mag << np.clip(shift, 0, 62), mag >> right)
        lost = (shift < 0) & (mag != 0) & ((right >= 63)
                                          | ((mag & ((np.int64(1) << right) - 1)) != 0))
        total += np.sign(n) * (2 * kept + lost)
    return total, base - 1


def bf16_add(acc, p, rand=None):
    """One step of the BF16 accumulator: ``acc + p`` exactly, rounded once to BF16.

    ``acc`` (BF16 values) and ``p`` are float32 arrays; ``rand`` None rounds to nearest-even,
    else it holds 16-bit random values (stochastic rounding as numerics.md 2.3 does for
    elements, on the magnitude: truncated to 16 bits below the BF16 last bit, plus ``rand``,
    truncated). A magnitude that rounds to ``2**128`` or above is Inf; Inf and NaN operands
    give FP32's sum.

    Where the operands' exponents are at most 28 apart their float64 sum is exact, and its
    bit pattern is rounded (as :func:`hbfp_hw.golden.quantizer._round_significand` rounds
    float32 elements), unless the sum is below ``2**-126`` (BF16's fixed subnormal grid); the
    other elements take the integer path of :func:`_bf16_add_exact`.
    """
    acc = np.asarray(acc, dtype=np.float32)
    p = np.asarray(p, dtype=np.float32)
    finite = np.isfinite(acc) & np.isfinite(p)
    a, b = np.where(finite, acc, 0).astype(np.float32), np.where(finite, p, 0).astype(np.float32)
    _, ea = np.frexp(a)
    _, eb = np.frexp(b)
    x = a.astype(np.float64) + b.astype(np.float64)
    fast = (((np.abs(ea - eb) <= 28) | (a == 0) | (b == 0))
            & ((np.abs(x) >= 2.0 ** -126) | (x == 0)))
    bits = x.view(np.uint64)
    low = 52 - (_BF16_KEPT - 1)                            # float64 bits below BF16's last
    if rand is None:
        bits = bits + (((bits >> np.uint64(low)) & np.uint64(1)) + np.uint64((1 << low - 1) - 1))
    else:
        bits = bits & np.uint64(~((1 << low - SR_RANDOM_BITS) - 1) & (2**64 - 1))
        bits = bits + (rand.astype(np.uint64) << np.uint64(low - SR_RANDOM_BITS))
    bits &= np.uint64(~((1 << low) - 1) & (2**64 - 1))
    with np.errstate(over="ignore"):
        out = bits.view(np.float64).astype(np.float32)
    # -0 only from -0 + -0 (IEEE's rule); x keeps it
    slow = np.flatnonzero(~fast)
    if slow.size:
        flat = out.reshape(-1)                                  # a view: out is fresh
        flat[slow] = _bf16_add_exact(a.reshape(-1)[slow], b.reshape(-1)[slow],
                                     None if rand is None else np.ravel(rand)[slow])
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(finite, out, acc + p).astype(np.float32)


def _bf16_add_exact(a, b, rand):
    """:func:`bf16_add` of finite float32 ``a`` and ``b`` on the exact integer sum of
    :func:`_exact_sum` (any exponents, BF16 subnormals)."""
    n, e = _exact_sum(a, b)
    mag = np.abs(n)
    lead = _bit_length(mag) - 1 + e
    lsb = np.maximum(lead - (_BF16_KEPT - 1), _BF16_MIN_LSB)
    drop = lsb - e
    if rand is None:
        d = np.clip(drop, 1, 62)
        q = mag >> d
        rem = mag & ((np.int64(1) << d) - 1)
        half = np.int64(1) << (d - 1)
        q = q + ((rem > half) | ((rem == half) & ((q & 1) == 1)))
        q = np.where(drop <= 0, mag << np.clip(-drop, 0, 62), q)
    else:
        t = drop - SR_RANDOM_BITS
        fixed = np.where(t >= 0, mag >> np.clip(t, 0, 62), mag << np.clip(-t, 0, 62))
        q = (fixed + rand.astype(np.int64)) >> SR_RANDOM_BITS
    with np.errstate(over="ignore"):
        out = np.ldexp(q.astype(np.float64), lsb).astype(np.float32)
    # the sign of the sum; of an exact zero, -0 only from -0 + -0 (IEEE's rule)
    negative = (n < 0) | ((n == 0) & np.signbit(a) & np.signbit(b))
    return np.where(negative, -out, out)


def exact_width(fmts):
    """``(lowest weight, bits)`` of the exact accumulator for formats ``(fa, fb)``: from the
    smallest product grid ``2*min_exponent - fa - fb`` (less 53 bits of headroom for the
    golden model's float64 values) up to the largest block product's leading bit, plus the
    guard bits of :data:`~hbfp_hw.formats.EXACT_MAX_KBLOCKS` k-blocks and a sign."""
    fa, fb = fmts
    lo = fa.min_exponent + fb.min_exponent - fa.fraction_bits - fb.fraction_bits
    hi = fa.max_exponent + fb.max_exponent - fa.fraction_bits - fb.fraction_bits
    top = hi + (fa.block_size * fa.max_mantissa * fb.max_mantissa).bit_length()
    lowest = lo - 53
    return lowest, top - lowest + EXACT_MAX_KBLOCKS.bit_length() + 1


_LIMB = 32
_LIMB_MASK = (1 << _LIMB) - 1


class Exact:
    """A two's-complement fixed-point accumulator in 32-bit limbs (held in int64 and carried
    at the end), one per element of an array of ``shape``: ``limbs[i, j]`` is limb ``i`` of
    element ``j``. ``width = (lowest weight, bits)`` (:func:`exact_width`)."""

    every_kblock = False
    exact = True

    def __init__(self, shape, width):
        self.shape = shape
        self.lowest, bits = width
        self.nlimbs = -(-bits // _LIMB) + 3        # room for a 53-bit value at the top
        self.size = int(np.prod(shape))
        self.limbs = np.zeros((self.nlimbs, self.size), dtype=np.int64)
        self.columns = np.arange(self.size)

    def add(self, kb, p):
        raise TypeError("the exact accumulator takes the exact products (add_exact)")

    def add_exact(self, kb, n, e):
        """Add ``n * 2**e`` (int64 ``|n| < 2**53``, int ``e`` arrays shaped like the tile)."""
        n = np.asarray(n, dtype=np.int64).ravel()
        e = np.broadcast_to(np.asarray(e, dtype=np.int64), self.shape).ravel()
        keep = np.flatnonzero(n)
        if not keep.size:
            return
        n, e = n[keep], e[keep]
        offset = e - self.lowest
        if offset.min() < 0:
            raise ValueError("a block product below the exact accumulator's lowest weight")
        index = (offset // _LIMB) * self.size + keep          # limb, element
        bit = offset % _LIMB
        negative = n < 0
        mag = np.abs(n)
        low, high = (mag & _LIMB_MASK) << bit, (mag >> _LIMB) << bit       # < 2**63, < 2**52
        parts = (low & _LIMB_MASK, (low >> _LIMB) + (high & _LIMB_MASK), high >> _LIMB)
        flat = self.limbs.reshape(-1)
        for i, part in enumerate(parts):
            np.negative(part, out=part, where=negative)
            flat[index + i * self.size] += part

    def add_values(self, kb, values):
        """Add float64 ``values`` shaped like the tile, each an exact product (its 53-bit
        significand and exponent go in as they are)."""
        frac, ex = np.frexp(values)
        self.add_exact(kb, (frac * float(1 << 53)).astype(np.int64), ex.astype(np.int64) - 53)

    def result(self):
        return _limbs_to_float32(self.limbs, self.lowest).reshape(self.shape)

    def integers(self):
        """The exact sums as Python ints ``v`` (the value is ``v * 2**lowest``), a list in the
        order of the flattened shape."""
        limbs = self.limbs.copy()
        _carry(limbs)
        return [sum(int(limbs[i, j]) << (_LIMB * i) for i in range(self.nlimbs))
                for j in range(self.size)]


def _carry(limbs):
    """Propagate carries: every limb but the top one in ``[0, 2**32)``."""
    for i in range(limbs.shape[0] - 1):
        c = limbs[i] >> _LIMB
        limbs[i] -= c << _LIMB
        limbs[i + 1] += c


def _limbs_to_float32(limbs, lowest):
    """Round the fixed-point values ``sum(limbs[i, :] * 2**(32 i + lowest))`` to FP32,
    nearest-even, with IEEE subnormals and overflow to Inf; zero gives +0."""
    limbs = limbs.copy()
    _carry(limbs)
    negative = limbs[-1] < 0
    limbs[:, negative] = -limbs[:, negative]
    _carry(limbs)
    # a zero limb below the lowest, so that every value has two limbs at its top
    limbs = np.concatenate([np.zeros((1, limbs.shape[1]), dtype=np.int64), limbs])
    nonzero = limbs != 0
    zero = ~nonzero.any(axis=0)
    top = limbs.shape[0] - 1 - np.argmax(nonzero[::-1], axis=0)     # highest nonzero limb
    bottom = np.argmax(nonzero, axis=0)                            # lowest
    top = np.where(zero, 1, np.maximum(top, 1))
    cols = np.arange(limbs.shape[1])
    hi, lo = limbs[top, cols], limbs[top - 1, cols]
    sticky = ~zero & (bottom < top - 1)                            # nonzero limbs below lo
    # value = (hi * 2**32 + lo) * 2**(32 (top - 2) + lowest), plus sticky below
    base = _LIMB * (top - 2) + lowest
    lead = _bit_length(hi) - 1 + _LIMB + base
    lsb = np.maximum(lead - 23, -149)
    drop = lsb - base                             # bits of hi:lo below FP32's last bit
    q = _round_top(hi, lo, drop, sticky)
    with np.errstate(over="ignore"):
        out = np.ldexp(q.astype(np.float64), lsb).astype(np.float32)
    out = np.where(zero, np.float32(0), out)
    return np.where(negative, -out, out).astype(np.float32)


def _round_top(hi, lo, drop, sticky):
    """``(hi * 2**32 + lo) >> drop`` rounded to nearest-even, ``sticky`` marking nonzero bits
    below ``lo``; ``hi`` and ``lo`` in ``[0, 2**32)``, ``drop >= 9`` (beyond 64: zero)."""
    d = np.clip(drop, 1, 64)
    q = np.where(d >= _LIMB, hi >> np.clip(d - _LIMB, 0, 32),
                 (hi << np.clip(_LIMB - d, 0, 31)) | (lo >> np.clip(d, 0, 31)))
    hb = d - 1                                                   # the half bit's position
    half = np.where(hb >= _LIMB, hi >> np.clip(hb - _LIMB, 0, 31), lo >> np.clip(hb, 0, 31)) & 1
    under_hi = hi & ((np.int64(1) << np.clip(hb - _LIMB, 0, 31)) - 1)
    under_lo = lo & ((np.int64(1) << np.clip(hb, 0, 31)) - 1)
    below = np.where(hb >= _LIMB, (lo != 0) | (under_hi != 0), under_lo != 0)
    up = (half == 1) & (sticky | below | ((q & 1) == 1)) & (drop <= 64)
    return np.where(drop > 64, 0, q) + up

"""A slow, exact scalar reference for the accumulators of docs/numerics.md section 6.

Written from the contract text, independently of :mod:`hbfp_hw.golden.accumulators`: values
are :class:`fractions.Fraction`, FP32 arithmetic is :func:`golden_reference.ref_fp32_add`, and
every rounding to BF16 or FP32 is done by hand with exact comparisons. Use it on small data.
"""

from __future__ import annotations

import math
from fractions import Fraction

from hbfp_hw.formats import Accumulator

from .golden_reference import (
    CANONICAL_NAN,
    NAN_BLOCK,
    POS_INF,
    _pow2,
    bits_to_fraction,
    ref_block_dot,
    ref_fp32_add,
    ref_quantize,
    ref_random_bits,
    ref_round_to_fp32,
)

__all__ = ["ref_round_to_bf16", "ref_gemm_acc", "ACC_SEED_XOR"]

#: numerics.md 6.3: the bf16-sr stream's seed is the GEMM's seed XOR this.
ACC_SEED_XOR = 0x6A09E667
_SIGN = 0x80000000


def _floor_log2(a: Fraction) -> int:
    k = a.numerator.bit_length() - a.denominator.bit_length()
    while _pow2(k) > a:
        k -= 1
    while _pow2(k + 1) <= a:
        k += 1
    return k


def ref_round_to_bf16(x: Fraction, r: int | None = None):
    """Round the exact ``x`` to BF16 (8 significant bits, last bit at least ``2**-133``):
    nearest-even when ``r`` is None, else stochastically (the magnitude truncated to 16 bits
    below the last kept bit, plus ``r``, truncated). Returns a Fraction, or ``±math.inf`` when
    the rounded magnitude reaches ``2**128``."""
    if x == 0:
        return Fraction(0)
    mag = abs(x)
    lsb = max(_floor_log2(mag) - 7, -133)
    q = mag / _pow2(lsb)
    n = math.floor(q)
    if r is None:
        rem = q - n
        if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and n % 2 == 1):
            n += 1
    else:
        n = (math.floor(q * (1 << 16)) + r) >> 16
    value = n * _pow2(lsb)
    if value >= _pow2(128):
        return math.inf if x > 0 else -math.inf
    return value if x > 0 else -value


def _kahan(terms_bits):
    s, c = 0, 0
    for p in terms_bits:
        y = ref_fp32_add(p, c ^ _SIGN)
        t = ref_fp32_add(s, y)
        finite = (t & 0x7F800000) != 0x7F800000
        c = ref_fp32_add(ref_fp32_add(t, s ^ _SIGN), y ^ _SIGN) if finite else 0
        s = t
    return s


def _bf16(terms_bits, rand):
    acc = Fraction(0)
    for kb, p in enumerate(terms_bits):
        acc = ref_round_to_bf16(acc + bits_to_fraction(p), None if rand is None else rand[kb])
        assert not isinstance(acc, float), "the reference data stays finite"
    return ref_round_to_fp32(acc)


def ref_gemm_acc(a, b, fmt, accumulator, seed=0):
    """FP32 bits (numpy uint32 ``[M, N]``) of ``golden.gemm(a, b, fmt, seed,
    accumulator=accumulator)`` for an integer-element format whose roundings are not
    stochastic, by section 6 (the data must keep every block product finite)."""
    import numpy as np  # only to hold the data

    accumulator = Accumulator(accumulator)
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    m_dim, k_dim = a.shape
    n_dim = b.shape[1]
    ea, ma = ref_quantize(a, fmt, axis=1)
    eb, mb = ref_quantize(b, fmt, axis=0)
    nblocks = -(-k_dim // fmt.block_size)
    rand = None
    if accumulator is Accumulator.BF16_SR:
        rand = ref_random_bits(seed ^ ACC_SEED_XOR, nblocks, m_dim * n_dim)
    out = np.zeros((m_dim, n_dim), dtype=np.uint32)
    for i in range(m_dim):
        for j in range(n_dim):
            nan = any(ea[i][kb] in (NAN_BLOCK, fmt.nan_exponent) or
                      eb[j][kb] in (NAN_BLOCK, fmt.nan_exponent) for kb in range(nblocks))
            if nan:
                out[i, j] = CANONICAL_NAN
                continue
            terms = [ref_block_dot(ea[i][kb], ma[i][kb], eb[j][kb], mb[j][kb], fmt)
                     for kb in range(nblocks)]
            assert all((t & 0x7FFFFFFF) < POS_INF for t in terms)
            if accumulator is Accumulator.FP32:
                acc = 0
                for t in terms:
                    acc = ref_fp32_add(acc, t)
            elif accumulator is Accumulator.FP32_KAHAN:
                acc = _kahan(terms)
            elif accumulator is Accumulator.EXACT:
                acc = ref_round_to_fp32(sum(
                    Fraction(sum(int(p) * int(q) for p, q in zip(ma[i][kb], mb[j][kb])))
                    * _pow2(int(ea[i][kb]) + int(eb[j][kb]) - 2 * fmt.fraction_bits)
                    for kb in range(nblocks)))
            else:
                lanes = None if rand is None else [rand[kb][i * n_dim + j]
                                                   for kb in range(nblocks)]
                acc = _bf16(terms, lanes)
            out[i, j] = acc
    return out

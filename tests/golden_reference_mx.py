"""A slow, exact reference for minifloat elements (docs/numerics.md section 5).

Written from the contract text, independently of :mod:`hbfp_hw.golden`: an element type is the
list of the values of its codes, built field by field as Fractions; quantization searches that
list; nothing uses numpy arithmetic, ``frexp`` or ``log2``.
"""

from __future__ import annotations

import bisect
import functools
import math
from fractions import Fraction

from hbfp_hw.formats import Rounding, ScaleRule

from .golden_reference import NAN_BLOCK, _floor_log2_fraction, _pow2, ref_round_to_fp32

__all__ = ["ref_code_values", "ref_values", "ref_scale", "ref_quantize_block_mx",
           "ref_block_dot_mx"]

_R = 16  # random bits of stochastic rounding


@functools.cache
def ref_code_values(element):
    """Return ``{code: Fraction or None}`` for every code (None for Inf/NaN codes)."""
    e, m, bias = element.exponent_bits, element.mantissa_bits, element.bias
    special = element.special.value
    out = {}
    for code in range(1 << (1 + e + m)):
        sign = code >> (e + m)
        field = (code >> m) & ((1 << e) - 1)
        frac = code & ((1 << m) - 1)
        if special == "ieee" and field == (1 << e) - 1:
            out[code] = None
            continue
        if special == "fn" and field == (1 << e) - 1 and frac == (1 << m) - 1:
            out[code] = None
            continue
        if field == 0:
            mag = Fraction(frac, 1 << m) * _pow2(1 - bias)
        else:
            mag = (1 + Fraction(frac, 1 << m)) * _pow2(field - bias)
        out[code] = -mag if sign else mag
    return out


@functools.cache
def ref_values(element):
    """Sorted non-negative finite values and the code of each (the +0 code for zero)."""
    best = {}
    for code, v in ref_code_values(element).items():
        if v is not None and v >= 0 and (v not in best or code < best[v]):
            best[v] = code
    return tuple(sorted(best.items()))


@functools.cache
def _keys(element):
    return [v for v, _ in ref_values(element)]


def _ceil_log2(a: Fraction) -> int:
    k = _floor_log2_fraction(a)
    return k if _pow2(k) == a else k + 1


def ref_scale(amax: Fraction, fmt):
    """The shared exponent ``X`` of a finite block with largest magnitude ``amax``."""
    lo, hi = fmt.min_exponent, fmt.max_exponent
    if amax == 0:
        return lo
    emax = _floor_log2_fraction(max(v for v, _ in ref_values(fmt.element)))
    rule = fmt.scale_rule
    if rule is ScaleRule.FLOOR:
        x = _floor_log2_fraction(amax) - emax
    elif rule is ScaleRule.CEIL:
        x = _ceil_log2(amax) - emax
    else:
        # d = FP32(amax * FP32(1 / max_normal)); X = the power of two at or above d, at least
        # 2**-127 (E8M0's smallest).
        from .golden_reference import bits_to_fraction

        recip = bits_to_fraction(ref_round_to_fp32(1 / max(v for v, _ in ref_values(
            fmt.element))))
        d = bits_to_fraction(ref_round_to_fp32(amax * recip))
        x = -127 if d <= _pow2(-127) else _ceil_log2(d)
    return min(max(x, lo), hi)


def _step(a: Fraction, fmt):
    """The grid step of the binade of the non-negative element value ``a``."""
    m = fmt.element.mantissa_bits
    emin = 1 - fmt.element.bias
    return _pow2(max(_floor_log2_fraction(a), emin) - m) if a else _pow2(emin - m)


def _round_element(v: Fraction, fmt, r):
    """Round the exact value ``v`` (relative to the scale) to an element value (a Fraction)."""
    values = ref_values(fmt.element)
    keys = _keys(fmt.element)
    top = values[-1][0]
    a = abs(v)
    if fmt.rounding is Rounding.NEAREST_EVEN:
        i = bisect.bisect_right(keys, a)            # keys[i-1] <= a < keys[i]
        below = values[i - 1]
        if below[0] == a:
            out = a
        elif i == len(values):                      # beyond the largest: saturate
            out = top
        else:
            above = values[i]
            d_lo, d_hi = a - below[0], above[0] - a
            if d_lo < d_hi:
                out = below[0]
            elif d_hi < d_lo:
                out = above[0]
            else:
                # A tie: the even multiple of the step of below's binade (the significand
                # with its implicit bit even: the even code for m >= 1; for m = 0, where both
                # significands are 1, the next power of two).
                step = _step(below[0], fmt)
                out = below[0] if (below[0] / step) % 2 == 0 else above[0]
    elif fmt.rounding is Rounding.TOWARD_ZERO:
        out = keys[bisect.bisect_right(keys, a) - 1]
    else:
        step = _step(a, fmt)
        q = (math.floor(a / step * (1 << _R)) + r) >> _R
        out = min(q * step, top)
    return -out if v < 0 else out


def ref_quantize_block_mx(values, fmt, rand=None):
    """Quantize one block of FP32 values (Python floats) to ``fmt``'s minifloat elements.

    Returns ``(X, [element values as Fractions])`` or ``(NAN_BLOCK, [0]*N)``.
    """
    n = fmt.block_size
    values = [float(v) for v in values] + [0.0] * (n - len(values))
    if any(math.isnan(v) or math.isinf(v) for v in values):
        return NAN_BLOCK, [Fraction(0)] * n
    amax = max(abs(Fraction(v)) for v in values)
    x = ref_scale(amax, fmt)
    out = []
    for i, v in enumerate(values):
        r = None if rand is None else rand[i]
        out.append(_round_element(Fraction(v) / _pow2(x), fmt, r))
    return x, out


def ref_block_dot_mx(xa, va, xb, vb):
    """FP32 bits of the exact block dot product ``sum(va*vb) * 2**(xa+xb)``, rounded once."""
    if xa == NAN_BLOCK or xb == NAN_BLOCK:
        return 0x7FC00000
    s = sum(a * b for a, b in zip(va, vb)) * _pow2(xa + xb)
    bits = ref_round_to_fp32(s)
    return 0 if s == 0 else bits

"""Minifloat elements and their shared scale, bit-exact with docs/numerics.md section 5.

An ``ExMy`` element is held as the signed integer ``n = value * 2**fraction_bits`` on the
element's grid (:class:`~hbfp_hw.formats.Minifloat`). This module converts between those
integers and the element codes (sign, exponent field, fraction) and chooses a block's shared
exponent ``X`` with the format's scale rule. :func:`hbfp_hw.golden.quantize` rounds the elements.
"""

from __future__ import annotations

import numpy as np

from hbfp_hw.formats import ScaleRule, Special

__all__ = ["encode", "decode", "scale_exponents", "reciprocal_max"]


def encode(n, element):
    """Return the codes of the integers ``n`` (on ``element``'s grid, ``|n| <= max_int``).

    Zeros are encoded as +0. The result is uint8 for elements of at most 8 bits, else uint16.
    """
    n = np.asarray(n, dtype=np.int64)
    m = element.mantissa_bits
    mag = np.abs(n)
    if np.any(mag > element.max_int):
        raise ValueError(f"n holds magnitudes above {element.name}'s largest, {element.max_int}")
    # floor(log2 mag) exactly (mag < 2**40, exact in float64); 0 for mag == 0 is not used.
    _, ex = np.frexp(mag.astype(np.float64))
    field = np.where(mag < (1 << m), 0, ex.astype(np.int64) - m)
    shift = np.maximum(field - 1, 0)
    fraction = np.where(field == 0, mag, (mag >> shift) - (1 << m))
    code = (((n < 0).astype(np.int64) << (element.exponent_bits + m)) | (field << m) | fraction)
    return code.astype(np.uint8 if element.width <= 8 else np.uint16)


def decode(codes, element):
    """Return ``(n, special)`` for element ``codes``: the integers on the grid (0 where the
    code is reserved) and a mask of the reserved codes (Inf or NaN)."""
    codes = np.asarray(codes).astype(np.int64)
    e, m = element.exponent_bits, element.mantissa_bits
    if np.any((codes < 0) | (codes >= (1 << element.width))):
        raise ValueError(f"codes must be {element.width}-bit {element.name} codes")
    sign = (codes >> (e + m)) & 1
    field = (codes >> m) & ((1 << e) - 1)
    fraction = codes & ((1 << m) - 1)
    top = (1 << e) - 1
    if element.special is Special.IEEE:
        special = field == top
    elif element.special is Special.FN:
        special = (field == top) & (fraction == (1 << m) - 1)
    else:
        special = np.zeros(codes.shape, dtype=bool)
    mag = np.where(field == 0, fraction, ((1 << m) + fraction) << np.maximum(field - 1, 0))
    n = np.where(special, 0, np.where(sign == 1, -mag, mag))
    return n.astype(np.int64), special


def reciprocal_max(fmt):
    """``1 / max_normal`` rounded to FP32, the constant of the ``rceil`` rule."""
    return np.float32(1.0 / fmt.element.max_normal)


def scale_exponents(amax, fmt):
    """Shared exponents ``X`` of blocks whose largest magnitude is ``amax`` (float32, finite,
    non-negative), by ``fmt.scale_rule``, clamped to the scale's range; ``X`` of an all-zero
    block is the smallest exponent. NaN blocks are the caller's business."""
    amax = np.asarray(amax, dtype=np.float32)
    lo, hi = fmt.min_exponent, fmt.max_exponent
    if fmt.scale_rule is ScaleRule.RCEIL:
        with np.errstate(under="ignore"):
            d = amax * reciprocal_max(fmt)                      # one FP32 multiply, RNE
        bits = d.view(np.uint32).astype(np.int64)
        field, mant = bits >> 23, bits & 0x7FFFFF
        # the power of two at or above d, as a biased E8M0 code (2**-127 is code 0)
        biased = np.where(field == 0, (mant > 0x400000).astype(np.int64),
                          field + (mant != 0))
        x = biased - 127
    else:
        frac, ex = np.frexp(amax.astype(np.float64))        # amax = frac * 2**ex exactly
        x = ex.astype(np.int64) - 1 - fmt.element_emax      # floor(log2 amax) - emax
        if fmt.scale_rule is ScaleRule.CEIL:
            x = x + (frac != 0.5)
    x = np.where(amax == 0, lo, x)
    return np.clip(x, lo, hi).astype(np.int32)

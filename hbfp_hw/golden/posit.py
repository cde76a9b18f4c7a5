"""Posit elements, bit-exact with docs/numerics.md section 7: codes to values and FP32 values to
codes, rounded on the encoding.

A posit's codes are monotonic in their two's-complement order, so both directions are table
look-ups (built once per element type, at most 2**17 entries):

- :func:`decode` reads the value of every code from a table made by decoding each code's
  regime, exponent and fraction fields;
- :func:`encode` rounds a value to the nearest code *on the encoding*: the boundary between
  codes ``c`` and ``c + 1`` is the value of the ``(n+1)``-bit pattern ``c`` followed by a one
  (the posit ``2c + 1`` of ``posit(n+1, es)``), a value exactly on it goes to the even code,
  and nothing rounds to zero or beyond ``maxpos`` (saturation to ``minpos``/``maxpos``).
  Where the cut falls inside the exponent field that boundary is not the arithmetic midpoint
  of the two codes' values: that is the standard's rounding, which SoftPosit implements.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from hbfp_hw.formats import Posit

__all__ = ["decode", "encode", "code_values", "code_dtype"]


def code_dtype(element):
    """uint8 for posits of at most 8 bits, else uint16."""
    return np.uint8 if element.n <= 8 else np.uint16


def _check(element):
    if not isinstance(element, Posit):
        raise TypeError(f"element must be a Posit, not {element!r}")
    return element


def _value(code, n, es):
    """The value of the ``n``-bit posit ``code`` (a Python int, not 0 or NaR) as a float
    (exact: at most 17 significant bits and exponents within +-120)."""
    sign = code >> (n - 1)
    if sign:
        code = (-code) & ((1 << n) - 1)
    body, length = code & ((1 << (n - 1)) - 1), n - 1      # the bits after the sign
    first = (body >> (length - 1)) & 1
    run = 1
    while run < length and ((body >> (length - 1 - run)) & 1) == first:
        run += 1
    k = run - 1 if first else -run
    rest = max(length - run - 1, 0)                  # bits after the regime's terminator
    tail = body & ((1 << rest) - 1)
    if rest >= es:
        e, fbits = tail >> (rest - es), rest - es
        frac = tail & ((1 << fbits) - 1)
    else:
        e, fbits, frac = tail << (es - rest), 0, 0   # missing exponent bits are 0
    value = (1 + frac / (1 << fbits)) * 2.0 ** ((k << es) + e)
    return -value if sign else value


@lru_cache(maxsize=16)
def _table(n, es):
    values = np.empty(1 << n, dtype=np.float64)
    values[0] = 0.0
    values[1 << (n - 1)] = np.nan
    for code in range(1, 1 << n):
        if code != 1 << (n - 1):
            values[code] = _value(code, n, es)
    values.setflags(write=False)
    return values


def code_values(element):
    """The float64 value of every code of ``element`` (index = code; NaR is NaN), read-only."""
    element = _check(element)
    return _table(element.n, element.es)


def decode(codes, element):
    """Return the float64 values of posit ``codes`` (integers ``0 .. 2**n - 1``; NaR gives
    NaN)."""
    element = _check(element)
    codes = np.asarray(codes)
    if codes.size and (codes.min() < 0 or codes.max() >= 1 << element.n):
        raise ValueError(f"codes must be {element.n}-bit {element.name} codes")
    return _table(element.n, element.es)[codes.astype(np.int64)]


@lru_cache(maxsize=16)
def _boundaries(n, es):
    """The values of ``posit(n+1, es)`` codes ``2c + 1`` for ``c = 1 .. 2**(n-1) - 2``: where
    rounding on the encoding moves from code ``c`` to ``c + 1`` (positive side)."""
    wide = _table(n + 1, es)
    return np.ascontiguousarray(wide[2 * np.arange(1, (1 << (n - 1)) - 1) + 1])


def encode(x, element):
    """Round the values ``x`` (float32 or float64, any shape) to ``element``'s codes.

    Nearest on the encoding, ties to the even code; a nonzero value never becomes 0 (its
    magnitude is at least ``minpos``) and never exceeds ``maxpos``; ``±0`` gives 0 and NaN or
    ±Inf give NaR. Returns uint8 codes for posits of at most 8 bits, else uint16.
    """
    element = _check(element)
    n = element.n
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"x must hold float32 or float64 values, not {x.dtype}")
    x = x.astype(np.float64)
    mag = np.abs(x)
    bounds = _boundaries(n, element.es)
    below = np.searchsorted(bounds, mag, side="left")         # boundaries strictly below
    code = 1 + below
    tie = (below < bounds.size) & (bounds[np.minimum(below, bounds.size - 1)] == mag)
    code = np.where(tie & (code % 2 == 1), code + 1, code)
    mask = (1 << n) - 1
    code = np.where(x < 0, (-code) & mask, code)
    code = np.where(mag == 0, 0, code)
    code = np.where(np.isfinite(x), code, element.nar_code)
    return code.astype(code_dtype(element))

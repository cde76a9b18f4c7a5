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

:func:`gemm` multiplies posit matrices with a **quire**: every product is exact and the sums
over K are exact (the fixed-point accumulator of numerics.md 6.4, sized for the posit type),
rounded once to FP32.
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

import numpy as np

from hbfp_hw.formats import CANONICAL_NAN_BITS, EXACT_MAX_KBLOCKS, Posit
from hbfp_hw.golden.accumulators import Exact

_CANONICAL_NAN = np.uint32(CANONICAL_NAN_BITS).view(np.float32)

__all__ = ["decode", "encode", "encode_exact", "code_values", "code_dtype", "quire_width",
           "new_quire", "quire_gemm", "gemm"]


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


def quire_width(element):
    """``(lowest weight, bits)`` of the quire of ``element`` for up to
    :data:`~hbfp_hw.formats.EXACT_MAX_KBLOCKS` products: from ``minpos**2`` to ``maxpos**2``,
    plus 21 carry bits and a sign (118 bits for ``posit(8, 2)``, against the standard's 128
    with 31 carry bits), and 53 bits below for the golden model's float64 products."""
    element = _check(element)
    span = 2 * element.max_exponent
    lowest = -span - 53
    return lowest, 2 * span + 53 + EXACT_MAX_KBLOCKS.bit_length() + 1


def encode_exact(values, lowest, element):
    """Round exact values ``v * 2**lowest`` (Python ints ``v``) to ``element``'s codes, on the
    encoding as :func:`encode` does (zero gives 0; no NaR). Returns a uint8/uint16 array."""
    element = _check(element)
    bounds = _boundaries(element.n, element.es)
    scale = Fraction(2) ** lowest
    out = []
    for v in values:
        x = Fraction(v) * scale
        code = int(encode(np.float64(abs(x)), element))      # within one code of the answer
        if x != 0:
            # the exact comparison with the boundaries around it: B[c-2] < |x| < B[c-1]
            while code > 1 and abs(x) <= Fraction(float(bounds[code - 2])):
                code -= 1
            while code < bounds.size + 1 and abs(x) >= Fraction(float(bounds[code - 1])):
                code += 1
            lo_tie = code > 1 and abs(x) == Fraction(float(bounds[code - 2]))
            if lo_tie and code % 2 == 1:
                code -= 1
            if x < 0:
                code = (-code) & ((1 << element.n) - 1)
        out.append(code)
    return np.array(out, dtype=code_dtype(element))


def new_quire(shape, elements):
    """A quire per element of ``shape`` for products of posit types ``elements = (A's,
    B's)``: wide enough for both (:func:`quire_width`)."""
    widths = [quire_width(e) for e in elements]
    lowest = min(w[0] for w in widths)
    return Exact(shape, (lowest, max(w[0] + w[1] for w in widths) - lowest))


def gemm(a, b, element, output="fp32"):
    """``a @ b`` in posits with a quire: both operands rounded to ``element`` (:func:`encode`),
    every product exact, the sum over K exact, rounded once: to FP32 (``output="fp32"``,
    nearest-even, subnormals, overflow to Inf) or to the posit (``output="posit"``, on the
    encoding; the result is that posit's value as float32). A NaR in row ``m`` of ``a`` or
    column ``n`` of ``b`` makes ``C[m, n]`` the canonical NaN.

    Parameters
    ----------
    a, b : float32 arrays ``[M, K]`` and ``[K, N]``
    element : Posit, or a pair (A's, B's)
    output : {"fp32", "posit"}
    """
    ea, eb = element if isinstance(element, tuple) else (element, element)
    ea, eb = _check(ea), _check(eb)
    if output not in ("fp32", "posit"):
        raise ValueError(f"output must be 'fp32' or 'posit', not {output!r}")
    if output == "posit" and ea != eb:
        raise ValueError("output='posit' needs one posit type for both operands")
    a, b = np.asarray(a), np.asarray(b)
    for name, x in (("a", a), ("b", b)):
        if x.dtype != np.float32 or x.ndim != 2:
            raise TypeError(f"{name} must be a 2-D float32 array")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"a's columns must equal b's rows (K), not {a.shape[1]} and "
                         f"{b.shape[0]}")
    va = decode(encode(a, ea), ea)
    vb = decode(encode(b, eb), eb)
    return quire_gemm(va, vb, (ea, eb), None if output == "fp32" else ea)


def _grid(v):
    """``(lowest set bit, leading bit + 1)`` exponents over the nonzero finite float64
    values ``v`` (``None`` if there are none)."""
    v = np.abs(v[np.isfinite(v) & (v != 0)])
    if not v.size:
        return None
    frac, ex = np.frexp(v)
    n = (frac * float(1 << 53)).astype(np.int64)
    _, low = np.frexp((n & -n).astype(np.float64))          # lowest set bit of n, plus 1
    return int((ex - 53 + low - 1).min()), int(ex.max())


def quire_gemm(va, vb, elements, posit_output=None):
    """The quire GEMM of posit values ``va [M, K]`` and ``vb [K, N]`` (float64, NaN for NaR)
    of types ``elements = (A's, B's)``: FP32 results, or with ``posit_output`` (a Posit)
    the values of the posits the exact sums round to.

    Where the data keep every partial sum on a grid of at most 53 bits (the span from the
    smallest nonzero bit of either operand's products to their largest sum), one float64
    matrix product is exact and is rounded once; otherwise the products go through the
    fixed-point accumulator one K at a time.
    """
    k = va.shape[1]
    if k > EXACT_MAX_KBLOCKS:
        raise ValueError(f"the quire sums at most {EXACT_MAX_KBLOCKS} products, not K = {k}")
    nar = np.isnan(va).any(axis=1)[:, None] | np.isnan(vb).any(axis=0)[None, :]
    va, vb = np.nan_to_num(va), np.nan_to_num(vb)
    ga, gb = _grid(va), _grid(vb)
    shape = (va.shape[0], vb.shape[1])
    if ga is None or gb is None:
        out = np.zeros(shape, dtype=np.float32)
    elif posit_output is None and \
            (ga[1] + gb[1] + (k - 1).bit_length()) - (ga[0] + gb[0]) <= 53:
        out = (va @ vb).astype(np.float32)              # exact, then the one rounding
    else:
        quire = new_quire(shape, elements)
        for i in range(k):
            quire.add_values(i, va[:, i, None] * vb[None, i, :])   # exact: 34 bits at most
        if posit_output is None:
            out = quire.result()
        else:
            codes = encode_exact(quire.integers(), quire.lowest, posit_output)
            out = decode(codes.reshape(shape), posit_output).astype(np.float32)
    return np.where(nar, _CANONICAL_NAN, out).astype(np.float32)

"""An exact reference for posit rounding (docs/numerics.md section 7), written from the
standard's definition, independently of :mod:`hbfp_hw.golden.posit`: the value's infinite
posit bit string (regime, exponent, fraction) is built with Fractions, cut after ``n - 1``
bits and rounded to nearest-even on those bits, then saturated to ``minpos``/``maxpos``."""

from __future__ import annotations

from fractions import Fraction

__all__ = ["ref_encode", "ref_decode"]


def _floor_log2(a: Fraction) -> int:
    k = a.numerator.bit_length() - a.denominator.bit_length()
    while Fraction(2) ** k > a:
        k -= 1
    while Fraction(2) ** (k + 1) <= a:
        k += 1
    return k


def ref_encode(x: Fraction, n: int, es: int) -> int:
    """The ``n``-bit posit code of the exact value ``x`` (no NaR: ``x`` is finite)."""
    if x == 0:
        return 0
    mag = abs(Fraction(x))
    scale = _floor_log2(mag)
    k, e = scale >> es, scale & ((1 << es) - 1)              # scale = k * 2**es + e
    bits = "1" * (k + 1) + "0" if k >= 0 else "0" * (-k) + "1"
    bits += format(e, f"0{es}b") if es else ""
    frac = mag / Fraction(2) ** scale - 1                      # in [0, 1)
    while len(bits) < n + 1:                                    # n - 1 kept, a guard, more
        frac *= 2
        bits += "1" if frac >= 1 else "0"
        frac -= 1 if frac >= 1 else 0
    kept, guard = bits[:n - 1], bits[n - 1]
    sticky = "1" in bits[n:] or frac != 0
    code = int(kept, 2)
    if guard == "1" and (sticky or code & 1):
        code += 1
    code = min(max(code, 1), (1 << (n - 1)) - 1)               # never 0, never past maxpos
    return (-code) & ((1 << n) - 1) if x < 0 else code


def ref_decode(code: int, n: int, es: int) -> Fraction | None:
    """The exact value of an ``n``-bit posit code (None for NaR)."""
    if code == 0:
        return Fraction(0)
    if code == 1 << (n - 1):
        return None
    negative = code >> (n - 1)
    if negative:
        code = (-code) & ((1 << n) - 1)
    bits = format(code, f"0{n}b")[1:]
    run = len(bits) - len(bits.lstrip(bits[0]))
    k = run - 1 if bits[0] == "1" else -run
    rest = bits[run + 1:]
    ebits = (rest[:es] + "0" * es)[:es]
    e = int(ebits, 2) if es else 0
    fbits = rest[es:]
    f = Fraction(int(fbits, 2), 2 ** len(fbits)) if fbits else Fraction(0)
    value = (1 + f) * Fraction(2) ** ((k << es) + e)
    return -value if negative else value

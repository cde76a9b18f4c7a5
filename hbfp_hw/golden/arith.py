"""Block dot products and FP32 arithmetic, bit-exact with docs/numerics.md section 3."""

from __future__ import annotations

import numpy as np

from hbfp_hw.formats import CANONICAL_NAN_BITS, resolve_format
from hbfp_hw.golden.quantizer import BFPTensor

__all__ = [
    "CANONICAL_NAN",
    "f32_to_bits",
    "bits_to_f32",
    "canonicalize_nan",
    "int_dot",
    "product_exponent",
    "to_float32",
    "fp32_add",
    "accumulate",
    "dot",
]

CANONICAL_NAN = np.array(CANONICAL_NAN_BITS, dtype=np.uint32).view(np.float32)[()]

# Exponents beyond these bounds give ±0 or ±Inf for any |s| < 2**53, so they are clamped
# before the float64 scaling, which keeps that scaling exact.
_EXP_CLAMP = (-500, 500)


def f32_to_bits(x):
    """Return the IEEE binary32 bit patterns of ``x`` as uint32."""
    return np.asarray(x, dtype=np.float32).view(np.uint32)


def bits_to_f32(u):
    """Return float32 values from binary32 bit patterns."""
    return np.asarray(u, dtype=np.uint32).view(np.float32)


def canonicalize_nan(x):
    """Return float32 ``x`` with every NaN replaced by the canonical NaN ``0x7FC00000``."""
    x = np.asarray(x, dtype=np.float32)
    return np.where(np.isnan(x), CANONICAL_NAN, x)


def int_dot(ma, mb):
    """Return the exact integer dot products ``sum(ma * mb)`` over the last axis (int64)."""
    return np.sum(np.asarray(ma, dtype=np.int64) * np.asarray(mb, dtype=np.int64), axis=-1)


def product_exponent(ea, eb, fmt):
    """Return ``(Ea + Eb - 2(w-2), nan)`` for unbiased block exponents ``ea`` and ``eb``.

    ``nan`` marks pairs where either block is a NaN block; their exponent is 0.
    """
    fmt = resolve_format(fmt)
    ea = np.asarray(ea, dtype=np.int32)
    eb = np.asarray(eb, dtype=np.int32)
    nan = (ea == fmt.nan_exponent) | (eb == fmt.nan_exponent)
    ep = np.where(nan, 0, ea + eb - 2 * fmt.fraction_bits).astype(np.int32)
    return ep, nan


def to_float32(s, exp, nan=None):
    """Round ``s * 2**exp`` to FP32 with round-to-nearest-even (numerics.md 3.1 step 3).

    Parameters
    ----------
    s : array_like of int
        Exact integers, ``|s| < 2**53``.
    exp : array_like of int
        Power-of-two exponents.
    nan : array_like of bool, optional
        Where true the result is the canonical NaN.

    Returns
    -------
    numpy.ndarray of float32
        IEEE subnormals, overflow to ±Inf, ``s == 0`` gives +0.0.
    """
    s = np.asarray(s, dtype=np.int64)
    if np.any(np.abs(s) >= (1 << 53)):
        raise ValueError("s must hold integers of magnitude below 2**53")
    exp = np.clip(np.asarray(exp, dtype=np.int64), *_EXP_CLAMP).astype(np.int32)
    # s fits float64 exactly and the scaling by 2**exp stays in float64's normal range, so the
    # float64 value is exact; the cast to float32 is then the single IEEE RNE rounding.
    with np.errstate(over="ignore"):
        out = np.ldexp(s.astype(np.float64), exp).astype(np.float32)
    if nan is not None:
        out = np.where(np.asarray(nan, dtype=bool), CANONICAL_NAN, out)
    return out


def fp32_add(x, y):
    """IEEE binary32 addition, round-to-nearest-even, canonical NaN (numerics.md 3.2)."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.add(np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.float32),
                     dtype=np.float32)
    return canonicalize_nan(out)


def accumulate(partials, axis=-1):
    """Sum float32 ``partials`` along ``axis`` sequentially from +0.0 (numerics.md 3.3).

    The order is the contract's: index 0 first. No pairwise summation is used.
    """
    p = np.moveaxis(np.asarray(partials, dtype=np.float32), axis, 0)
    acc = np.zeros(p.shape[1:], dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        for term in p:
            np.add(acc, term, out=acc)
    return canonicalize_nan(acc)


def dot(a, b):
    """Return the FP32 block dot products of two BFPTensors (numerics.md 3.1).

    Parameters
    ----------
    a, b : BFPTensor
        Quantized with the same format; their block grids ``(*batch, nblocks)`` must be equal
        or broadcastable.

    Returns
    -------
    numpy.ndarray of float32, shape ``(*batch, nblocks)``
    """
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, BFPTensor):
            raise TypeError(f"{name} must be a BFPTensor, not {type(t).__name__}")
    if a.fmt != b.fmt:
        raise ValueError(f"a and b must have the same format, not {a.fmt.name} and {b.fmt.name}")
    try:
        np.broadcast_shapes(a.exponents.shape, b.exponents.shape)
    except ValueError:
        raise ValueError(f"a and b must have broadcastable block grids, not "
                         f"{a.exponents.shape} and {b.exponents.shape}") from None
    s = int_dot(a.mantissas, b.mantissas)
    ep, nan = product_exponent(a.exponents, b.exponents, a.fmt)
    return to_float32(s, ep, nan)

"""Block dot products and FP32 arithmetic, bit-exact with docs/numerics.md section 3."""

from __future__ import annotations

import numpy as np

from hbfp_hw.formats import CANONICAL_NAN_BITS, check_operand_formats, resolve_format
from hbfp_hw.golden import posit
from hbfp_hw.golden.quantizer import BFPTensor

__all__ = [
    "CANONICAL_NAN",
    "f32_to_bits",
    "bits_to_f32",
    "canonicalize_nan",
    "int_dot",
    "product_exponent",
    "check_operand_formats",
    "round_int_to_float32",
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
    """Return the exact integer dot products ``sum(ma * mb)`` over the last axis.

    int64 when every sum fits in 63 bits; otherwise (minifloat elements with 5 exponent bits)
    an object array of Python ints.
    """
    ma, mb = np.asarray(ma), np.asarray(mb)
    bound = 0
    if ma.size and mb.size:
        bound = (int(np.abs(ma).max()) * int(np.abs(mb).max())) * max(ma.shape[-1], 1)
    if bound < 1 << 62:
        return np.sum(ma.astype(np.int64) * mb.astype(np.int64), axis=-1)
    return np.sum(ma.astype(object) * mb.astype(object), axis=-1)


def product_exponent(ea, eb, fmt, fmt_b=None):
    """Return ``(Ea + Eb - fa - fb, nan)`` for unbiased block exponents ``ea`` and ``eb``, with
    ``fa``, ``fb`` the operands' ``fraction_bits`` (``2(w-2)`` in all for integer elements).

    ``fmt_b`` is B's format when it differs from A's ``fmt``. ``nan`` marks pairs where either
    block is a NaN block; their exponent is 0.
    """
    fmt = resolve_format(fmt)
    fmt_b = fmt if fmt_b is None else resolve_format(fmt_b)
    ea = np.asarray(ea, dtype=np.int32)
    eb = np.asarray(eb, dtype=np.int32)
    nan = (ea == fmt.nan_exponent) | (eb == fmt_b.nan_exponent)
    ep = np.where(nan, 0, ea + eb - fmt.fraction_bits - fmt_b.fraction_bits).astype(np.int32)
    return ep, nan


def round_int_to_float32(s, exp):
    """Round the Python int ``s * 2**exp`` to FP32, nearest-even, exactly (any size of ``s``).

    IEEE subnormals and overflow to ±Inf; ``s == 0`` gives +0.0.
    """
    s, exp = int(s), int(exp)
    if s == 0:
        return np.float32(0.0)
    mag = abs(s)
    top = mag.bit_length() - 1 + exp            # exponent of the leading bit
    lsb = max(top - 23, -149)                   # weight of FP32's last kept bit
    drop = lsb - exp
    if drop > 0:
        q, rem = mag >> drop, mag & ((1 << drop) - 1)
        half = 1 << (drop - 1)
        if rem > half or (rem == half and q & 1):
            q += 1
    else:
        q = mag << -drop
    with np.errstate(over="ignore"):
        out = np.float32(np.ldexp(float(q), lsb)) if lsb < 200 else np.float32(np.inf)
    return -out if s < 0 else out


def to_float32(s, exp, nan=None):
    """Round ``s * 2**exp`` to FP32 with round-to-nearest-even (numerics.md 3.1 step 3).

    Parameters
    ----------
    s : array_like of int
        Exact integers: int64 below ``2**53`` in magnitude, or Python ints of any size (an
        object array, as :func:`int_dot` returns for wide minifloat elements).
    exp : array_like of int
        Power-of-two exponents.
    nan : array_like of bool, optional
        Where true the result is the canonical NaN.

    Returns
    -------
    numpy.ndarray of float32
        IEEE subnormals, overflow to ±Inf, ``s == 0`` gives +0.0.
    """
    s = np.asarray(s)
    if s.dtype == object:
        s_b, e_b = np.broadcast_arrays(s, np.asarray(exp, dtype=np.int64))
        out = np.array([round_int_to_float32(v, e) for v, e in zip(s_b.ravel(), e_b.ravel())],
                       dtype=np.float32).reshape(s_b.shape)
        if nan is not None:
            out = np.where(np.asarray(nan, dtype=bool), CANONICAL_NAN, out)
        return out
    s = s.astype(np.int64)
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
        Quantized with the same format, or with formats of the same block size and shared
        exponent (:func:`check_operand_formats`: A in E4M3 and B in E5M2, say); their block
        grids ``(*batch, nblocks)`` must be equal or broadcastable.

    Returns
    -------
    numpy.ndarray of float32, shape ``(*batch, nblocks)``
    """
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, BFPTensor):
            raise TypeError(f"{name} must be a BFPTensor, not {type(t).__name__}")
    check_operand_formats(a.fmt, b.fmt)
    try:
        np.broadcast_shapes(a.exponents.shape, b.exponents.shape)
    except ValueError:
        raise ValueError(f"a and b must have broadcastable block grids, not "
                         f"{a.exponents.shape} and {b.exponents.shape}") from None
    if a.fmt.is_posit:
        return _posit_dot(a, b)
    s = int_dot(a.mantissas, b.mantissas)
    ep, nan = product_exponent(a.exponents, b.exponents, a.fmt, b.fmt)
    return to_float32(s, ep, nan)


def _posit_dot(a, b):
    """Block dot products of posit BFPTensors: exact products summed in the quire, rounded
    once to FP32 (numerics.md 7); NaN where either block is a NaN block."""
    va = posit.decode(a.mantissas, a.fmt.element)
    vb = posit.decode(b.mantissas, b.fmt.element)
    va, vb = np.broadcast_arrays(va, vb)
    shape = va.shape[:-1]
    quire = posit.new_quire(shape, (a.fmt.element, b.fmt.element))
    for t in range(va.shape[-1]):
        quire.add_values(t, va[..., t] * vb[..., t])           # exact products
    nan = np.broadcast_to(a.nan_mask, shape) | np.broadcast_to(b.nan_mask, shape)
    return np.where(nan, CANONICAL_NAN, quire.result()).astype(np.float32)

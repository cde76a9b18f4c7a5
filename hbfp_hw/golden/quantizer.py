"""FP32/BF16 -> BFP quantization, bit-exact with docs/numerics.md section 2.

The shared exponent comes from the bits of the largest magnitude (frexp, never log2). The
elements are then scaled by a power of two, which is exact, and rounded with numpy's exact
float rounding primitives (rint is roundTiesToEven, trunc is toward zero); stochastic rounding
is done on integers. The two internal steps that the contract pins
down, :func:`_floor_log2` and :func:`_round`, are module-level functions so that the
test suite can replace them with deliberately broken variants and prove that it notices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hbfp_hw.formats import (
    SR_RANDOM_BITS,
    BFPFormat,
    FloatFormat,
    Rounding,
    as_float_format,
    resolve_format,
)
from hbfp_hw.golden import minifloat, posit, prng

__all__ = ["BFPTensor", "quantize", "to_bf16", "check_float_input"]


@dataclass(frozen=True, eq=False)
class BFPTensor:
    """A tensor quantized to blocks along one axis.

    Members
    -------
    exponents : numpy.ndarray of int16, shape ``(*batch, nblocks)``
        Unbiased shared exponents ``E``; NaN blocks hold ``fmt.nan_exponent``.
    mantissas : numpy.ndarray of int32 (int64 if ``fmt.max_mantissa`` needs it)
        Shape ``(*batch, nblocks, block_size)``: the elements as signed integers,
        ``|m| <= fmt.max_mantissa``, each worth ``m * 2**(E - fmt.fraction_bits)`` (for
        minifloat elements, the integer on the element's grid; for posit elements, whose
        ``E`` is 0, their codes); 0 in NaN blocks.
    fmt : BFPFormat
    shape : tuple
        Shape of the tensor that was quantized.
    axis : int
        Axis (non-negative) along which it was split into blocks; ``batch`` is ``shape``
        without that axis.
    """

    exponents: np.ndarray
    mantissas: np.ndarray
    fmt: BFPFormat
    shape: tuple
    axis: int

    @property
    def nblocks(self):
        """Number of blocks along the quantized axis."""
        return self.exponents.shape[-1]

    @property
    def nan_mask(self):
        """Boolean mask, shape ``(*batch, nblocks)``, of the NaN blocks."""
        return self.exponents == self.fmt.nan_exponent

    @property
    def exponent_codes(self):
        """Biased shared-exponent codes as on the wire (NaN = all ones)."""
        dtype = np.uint8 if self.fmt.exponent_bits <= 8 else np.uint16
        return (self.exponents.astype(np.int32) + self.fmt.exponent_bias).astype(dtype)

    def element_codes(self):
        """Element codes as on a block wire: ``mantissa_bits``-wide two's complement for
        integer elements, (sign, exponent field, fraction) for minifloat ones; uint8, or
        uint16 above 8 bits. NaN blocks hold zeros."""
        fmt = self.fmt
        if fmt.is_posit:
            return self.mantissas.astype(posit.code_dtype(fmt.element))
        if fmt.element is not None:
            return minifloat.encode(self.mantissas, fmt.element)
        mask = (1 << fmt.mantissa_bits) - 1
        codes = self.mantissas.astype(np.int64) & mask
        return codes.astype(np.uint8 if fmt.mantissa_bits <= 8 else np.uint16)

    @classmethod
    def from_codes(cls, exponent_codes, element_codes, fmt, shape=None, axis=-1):
        """Rebuild a tensor from wire codes (the inverse of :attr:`exponent_codes` and
        :meth:`element_codes`).

        A block whose shared exponent is the NaN code, or that holds a reserved element code
        (a minifloat Inf or NaN, which the quantizer never makes), is a NaN block: every dot
        product it enters is NaN (numerics.md 5.4).

        Parameters
        ----------
        exponent_codes : array_like, shape ``(*batch, nblocks)``
        element_codes : array_like, shape ``(*batch, nblocks, block_size)``
        fmt : BFPFormat or str
        shape : tuple or None
            Shape of the quantized tensor; default ``(*batch, nblocks * block_size)`` with
            the blocks along the last axis.
        axis : int
            Axis of ``shape`` that was split into blocks.
        """
        fmt = resolve_format(fmt)
        ecodes = np.asarray(exponent_codes).astype(np.int64)
        codes = np.asarray(element_codes).astype(np.int64)
        if codes.shape != (*ecodes.shape, fmt.block_size):
            raise ValueError(f"element_codes must have shape {(*ecodes.shape, fmt.block_size)} "
                             f"for exponent_codes of shape {ecodes.shape}, not {codes.shape}")
        if np.any((ecodes < 0) | (ecodes > fmt.nan_code)):
            raise ValueError(f"exponent_codes must be between 0 and {fmt.nan_code}")
        if fmt.is_posit:
            if np.any((codes < 0) | (codes >= 1 << fmt.element.n)):
                raise ValueError(f"element_codes must be {fmt.element.n}-bit posit codes")
            mant = codes
            nan = (ecodes == fmt.nan_code) | (codes == fmt.element.nar_code).any(axis=-1)
        elif fmt.element is not None:
            mant, special = minifloat.decode(codes, fmt.element)
            nan = (ecodes == fmt.nan_code) | special.any(axis=-1)
        else:
            w = fmt.mantissa_bits
            if np.any((codes < 0) | (codes >= 1 << w)):
                raise ValueError(f"element_codes must be {w}-bit codes")
            mant = np.where(codes >= 1 << (w - 1), codes - (1 << w), codes)
            if np.any(np.abs(mant) > fmt.max_mantissa):
                raise ValueError(f"element_codes hold {-(1 << (w - 1))}, outside the "
                                 f"symmetric range +-{fmt.max_mantissa}")
            nan = ecodes == fmt.nan_code
        exps = np.where(nan, fmt.nan_exponent, ecodes - fmt.exponent_bias).astype(np.int16)
        mant = np.where(nan[..., None], 0, mant).astype(_mantissa_dtype(fmt))
        if shape is None:
            shape = (*ecodes.shape[:-1], ecodes.shape[-1] * fmt.block_size)
        shape = tuple(int(d) for d in shape)
        axis = int(axis) % len(shape)
        return cls(exps, mant, fmt, shape, axis)

    def scales(self):
        """Return ``2**(E - (w-2))`` per block as float32 (0 for NaN blocks)."""
        e = np.where(self.nan_mask, 0, self.exponents).astype(np.int32)
        scale = np.ldexp(np.float32(1), e - self.fmt.fraction_bits).astype(np.float32)
        return np.where(self.nan_mask, np.float32(0), scale)

    def dequantize(self):
        """Return the exact float32 values ``m * 2**(E - (w-2))`` in the original shape.

        Every element of a NaN block is NaN. Posit elements are their codes' values.
        """
        if self.fmt.is_posit:
            values = posit.decode(self.mantissas, self.fmt.element).astype(np.float32)
        else:
            values = self.mantissas.astype(np.float32) * self.scales()[..., None]
        values = np.where(self.nan_mask[..., None], np.float32(np.nan), values)
        length = self.shape[self.axis]
        values = values.reshape(*values.shape[:-2], -1)[..., :length]
        return np.ascontiguousarray(np.moveaxis(values, -1, self.axis))


def _mantissa_dtype(fmt):
    """int32, or int64 for formats whose elements need more (E5M2's reach 2**32)."""
    return np.int32 if fmt.max_mantissa < 1 << 31 else np.int64


def to_bf16(x):
    """Round float32 values to the nearest BF16 (ties to even); return them as float32.

    NaN stays NaN (quiet); values that round past the BF16 maximum become ±Inf.
    """
    bits = np.ascontiguousarray(np.asarray(x, dtype=np.float32)).view(np.uint32)
    lsb = (bits >> np.uint32(16)) & np.uint32(1)
    rounded = (bits + np.uint32(0x7FFF) + lsb) & np.uint32(0xFFFF0000)
    is_nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    rounded = np.where(is_nan, (bits | np.uint32(0x00400000)) & np.uint32(0xFFFF0000), rounded)
    return rounded.astype(np.uint32).view(np.float32)


def check_float_input(x, name, input_format=FloatFormat.FP32):
    """Return ``x`` as a float32 ndarray, validating its dtype and the input format."""
    input_format = as_float_format(input_format)
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating)
                                     or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must hold real numbers (float32, or a type that converts "
                        f"to float32), not dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if input_format is FloatFormat.BF16:
        low = np.ascontiguousarray(arr).view(np.uint32) & np.uint32(0xFFFF)
        finite = np.isfinite(arr)
        if np.any(low[finite] != 0):
            raise ValueError(f"{name} holds values that are not exactly representable in BF16, "
                             f"but input_format is 'bf16'; round them with "
                             f"hbfp_hw.golden.to_bf16() or use input_format='fp32'")
    return arr


def _floor_log2(x):
    """Return ``floor(log2|x|)`` of float32 ``x``, exactly, via frexp on float64.

    Valid for nonzero finite entries (float64 holds FP32 subnormals as normals, so the result is
    exact from -149 up to 127); other entries get arbitrary values.
    """
    _, exp = np.frexp(x.astype(np.float64))
    return exp.astype(np.int32) - 1


def _scale(x, k):
    """Return ``x * 2**k`` for float32 ``x`` and integer ``k`` (broadcast against ``x``).

    The product is exact whenever it is at least ``2**-126``; a smaller product may be rounded
    by gradual underflow, but it stays below ``2**-126`` and every rounding of it to an integer
    is 0 either way. ``k`` ranges over -141..141, so large scales are applied in two exact
    steps. Overflow (only for saturating elements) gives ±Inf, which the clamp handles.
    """
    if k.size and (k.min() < -126 or k.max() > 127):
        k1 = k // 2
        out = x * np.ldexp(np.float32(1), k1).astype(np.float32)
        out *= np.ldexp(np.float32(1), k - k1).astype(np.float32)
        return out
    return x * np.ldexp(np.float32(1), k).astype(np.float32)


def _round(a, rounding, rand):
    """Round the exactly scaled elements ``a`` to integers (numerics.md 2.3), before clamping.

    Parameters
    ----------
    a : numpy.ndarray of float32
        Signed values ``x * 2**((w-2) - E)``; magnitudes below ``2**(w-1)`` unless saturating.
    rounding : Rounding
    rand : numpy.ndarray of uint32 or None
        16-bit random values, same shape as ``a``, for stochastic rounding.

    Returns
    -------
    numpy.ndarray of float32
        Signed integers (rounding acts on the magnitude; the sign is kept).
    """
    if rounding is Rounding.NEAREST_EVEN:
        return np.rint(a)                 # IEEE roundTiesToEven, exact on float32
    if rounding is Rounding.TOWARD_ZERO:
        return np.trunc(a)
    # Stochastic: truncate |a| to 16 fraction bits, add 16 random bits, truncate.
    mag = np.minimum(np.abs(a), np.float32(1 << 16))
    fixed = np.trunc(mag * np.float32(1 << SR_RANDOM_BITS)).astype(np.uint64)
    n = ((fixed + rand) >> np.uint64(SR_RANDOM_BITS)).astype(np.float32)
    return np.copysign(n, a)


def _round_minifloat(blocks, x, fmt, rand):
    """Round ``blocks / 2**x`` to ``fmt``'s minifloat elements (numerics.md 5.3): each element
    on the grid of its own binade (subnormals below ``emin``), then saturated.

    Everything stays in float32 and is exact: ``v = blocks * 2**-x`` rounds only below
    ``2**-126``, where every rounding on the element grid (step ``>= 2**-22``) gives 0 anyway;
    the rounded values have at most ``m + 1`` significant bits. Nearest-even and toward-zero
    round normal ``v`` on its bit pattern (:func:`_round_significand`); below ``2**emin`` the
    grid is the fixed subnormal one.

    Returns the signed integers on the element grid, as float32.
    """
    element = fmt.element
    m, emin = element.mantissa_bits, element.emin
    with np.errstate(under="ignore"):
        v = blocks * np.ldexp(np.float32(1), -x).astype(np.float32)
    grid = np.float32(2.0 ** element.fraction_bits)                   # 2**(m - emin)
    if fmt.rounding is Rounding.STOCHASTIC:
        _, ex = np.frexp(v)                                      # floor(log2 |v|) = ex - 1
        g = np.maximum(ex - 1, emin) - m                         # the step of v's binade
        r = np.ldexp(_round(np.ldexp(v, -g), fmt.rounding, rand), g + element.fraction_bits)
    else:
        with np.errstate(under="ignore"):
            sub = _round(v * grid, fmt.rounding, None)                  # fixed grid below 2**emin
        normal = _round_significand(v, m, fmt.rounding) * grid
        r = np.where(np.abs(v) < np.float32(2.0 ** emin), sub, normal)
    limit = np.float32(element.max_int)
    return np.clip(r, -limit, limit, out=r)


def _round_significand(v, m, rounding):
    """Round float32 ``v`` (normal, finite) to ``m + 1`` significant bits on its bit pattern,
    nearest-even or toward zero; a carry runs into the exponent field, as it should.

    "Even" is the parity of the significand as an integer on the binade's grid (numerics.md
    5.3): its last kept bit, or with ``m = 0`` the implicit 1, so ties round up.
    """
    cut = 23 - m
    bits = v.view(np.uint32)
    if rounding is Rounding.NEAREST_EVEN:
        odd = (bits >> np.uint32(cut)) & np.uint32(1) if m else np.uint32(1)
        bits = bits + (odd + np.uint32((1 << cut - 1) - 1))
    bits &= np.uint32(~((1 << cut) - 1) & 0xFFFFFFFF)
    return bits.view(np.float32)


def _quantize_core(blocks, fmt, rand, axis=-1):
    """Quantize float32 ``blocks`` whose elements run along ``axis`` (numerics.md 2.1-2.3,
    and section 5 for minifloat elements).

    Per-block results keep ``axis`` with length 1, so they broadcast against ``blocks``.

    Returns
    -------
    exps : int32 ndarray
        Unbiased exponents, ``fmt.nan_exponent`` for NaN blocks.
    n : float32 ndarray, shaped like ``blocks``
        Signed integer mantissas (as floats); 0 in NaN blocks.
    k : int32 ndarray
        ``(w-2) - E`` (0 for NaN blocks): the value of a mantissa is ``n * 2**-k``.
    nonzero : bool ndarray
        Blocks that may hold a nonzero mantissa (finite, not all zero).
    """
    absbits = blocks.view(np.uint32) & np.uint32(0x7FFFFFFF)
    # For non-negative floats the order of the bit patterns is the order of the values, and
    # NaN/Inf patterns lie above every finite one.
    if blocks.shape[axis]:
        amax = absbits.max(axis=axis, keepdims=True)
    else:
        amax = np.zeros(np.delete(blocks.shape, axis % blocks.ndim), np.uint32)
        amax = np.expand_dims(amax, axis)
    nan_block = amax >= np.uint32(0x7F800000)
    zero_block = amax == 0
    any_nan = bool(nan_block.any())
    if any_nan:
        blocks = np.where(nan_block, np.float32(0), blocks)
        amax = np.where(nan_block, np.uint32(0), amax)
    if fmt.element is not None:
        exps = minifloat.scale_exponents(amax.view(np.float32), fmt)
        n = _round_minifloat(blocks, exps, fmt, rand)
        k = (fmt.fraction_bits - exps).astype(np.int32)
    else:
        fl = _floor_log2(amax.view(np.float32))
        exps = np.clip(fl, fmt.min_exponent, fmt.max_exponent).astype(np.int32)
        exps = np.where(zero_block, np.int32(fmt.min_exponent), exps)
        k = (fmt.fraction_bits - exps).astype(np.int32)
        with np.errstate(over="ignore", under="ignore"):
            a = _scale(blocks, k)
            n = _round(a, fmt.rounding, rand)
        np.clip(n, -fmt.max_mantissa, fmt.max_mantissa, out=n)
    if any_nan:
        exps = np.where(nan_block, np.int32(fmt.nan_exponent), exps)
        k = np.where(nan_block, np.int32(0), k)
    return exps, n, k, ~(zero_block | nan_block)


def _to_blocks(arr, axis, n):
    """Move ``axis`` last, zero-pad it to a multiple of ``n`` and split it into blocks."""
    moved = np.moveaxis(arr, axis, -1)
    length = moved.shape[-1]
    nblocks = -(-length // n)
    pad = nblocks * n - length
    if pad:
        moved = np.concatenate(
            [moved, np.zeros((*moved.shape[:-1], pad), dtype=np.float32)], axis=-1)
    return np.ascontiguousarray(moved).reshape(*moved.shape[:-1], nblocks, n)


def _random_for(shape, fmt, seed):
    """Random bits for blocks of ``shape [..., N]`` in the contract's block order.

    Returns None for formats that do not round stochastically.
    """
    if fmt.rounding is not Rounding.STOCHASTIC:
        return None
    total = int(np.prod(shape[:-1], dtype=np.int64))
    return prng.random_bits(seed, total, fmt.block_size).reshape(shape).astype(np.uint64)


def _check_quantize_args(x, fmt, axis, seed, input_format):
    fmt = resolve_format(fmt)
    arr = check_float_input(x, "x", input_format)
    if arr.ndim == 0:
        raise ValueError("x must have at least one dimension, not a scalar")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be an integer, not {axis!r}")
    if not -arr.ndim <= axis < arr.ndim:
        raise ValueError(f"axis must be between {-arr.ndim} and {arr.ndim - 1}, not {axis!r}")
    if fmt.rounding is Rounding.STOCHASTIC:
        seed = prng.fresh_seed() if seed is None else prng.check_seed(seed)
    elif seed is not None:
        prng.check_seed(seed)
    return arr, fmt, int(axis) % arr.ndim, seed


def quantize(x, fmt, axis=-1, seed=None, input_format="fp32"):
    """Quantize a float tensor to BFP blocks along ``axis`` (docs/numerics.md section 2).

    Parameters
    ----------
    x : array_like
        Float32 values (other real dtypes are first converted to float32 with
        round-to-nearest-even). At least one dimension.
    fmt : BFPFormat or str
        The format, or a preset name such as ``"bfp8"``.
    axis : int
        Axis along which consecutive elements form blocks; it is zero-padded to a multiple of
        ``fmt.block_size``.
    seed : int or None
        Seed of the stochastic-rounding PRNG, ``0..2**32-1``; ``None`` draws a fresh one.
        Ignored by the other roundings.
    input_format : {"fp32", "bf16"}
        With ``"bf16"`` the values must be exactly representable in BF16 (checked).

    Returns
    -------
    BFPTensor

    Raises
    ------
    TypeError, ValueError
        On invalid arguments; the message names the parameter.
    """
    arr, fmt, axis, seed = _check_quantize_args(x, fmt, axis, seed, input_format)
    blocks = _to_blocks(arr, axis, fmt.block_size)
    if fmt.is_posit:
        # plain posits: each element rounded on its own, no scale; a NaR makes a NaN block
        codes = posit.encode(blocks, fmt.element).astype(np.int32)
        nar = (codes == fmt.element.nar_code).any(axis=-1)
        codes = np.where(nar[..., None], 0, codes)
        exps = np.where(nar, fmt.nan_exponent, 0).astype(np.int16)
        return BFPTensor(exps, codes, fmt, tuple(arr.shape), axis)
    exps, n, _, _ = _quantize_core(blocks, fmt, _random_for(blocks.shape, fmt, seed))
    return BFPTensor(exps[..., 0].astype(np.int16), n.astype(_mantissa_dtype(fmt)), fmt,
                     tuple(arr.shape), axis)

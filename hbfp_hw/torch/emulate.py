"""The HBFP GEMM in PyTorch, bit-exact with :func:`hbfp_hw.golden.gemm` (docs/numerics.md 2-3).

This is the ``emulate`` backend. It mirrors the golden model step by step, with torch ops that
round exactly where the contract rounds and nowhere else:

- the shared exponent comes from the bits of the largest magnitude of each block (an integer
  ``amax`` on the bit patterns, then ``torch.frexp`` on float64, exact for subnormals too);
- elements are scaled by exact powers of two built from their bit patterns (in two steps where
  the factor leaves float32's range), rounded with ``torch.round`` (roundTiesToEven) or
  ``torch.trunc``, or stochastically on int64 with the contract's xorshift32 bits, and clamped;
- the block products of a chunk of k-blocks come from one ``torch.bmm`` on the dequantized
  values, in float32 when that is provably exact for the chunk (every partial sum is an integer
  multiple of the product grid below ``2**24`` grid units, so any summation order and FMA give
  the exact value) and in float64 otherwise (always exact), followed by one RNE cast;
- the FP32 accumulation over k-blocks is sequential, in increasing ``kb`` order, from +0.0. It
  uses ``Tensor.index_add_`` along a leading k-block axis, which adds the source slices into
  the destination one after the other in index order; :func:`_accumulation_is_sequential`
  checks that property once per process (a plain Python loop of ``add_`` is the fallback);
- NaN blocks are zeroed before the products and their rows/columns set to the canonical NaN
  ``0x7FC00000`` afterwards; every other NaN is canonicalized too.

IEEE subnormals are required: if ``torch.set_flush_denormal(True)`` is active the GEMM turns it
off for its own duration and restores it afterwards. If float32 matmuls may use TF32/BF16
(``torch.set_float32_matmul_precision`` other than ``"highest"``, or a ``fp32_precision`` of
``torch.backends`` / ``torch.backends.mkldnn`` other than ``"none"``/``"ieee"``), every product
is computed in float64, which is exact in any case.
"""

from __future__ import annotations

import functools
from fractions import Fraction

import numpy as np
import torch

from hbfp_hw.formats import CANONICAL_NAN_BITS, SR_RANDOM_BITS, Rounding, resolve_format
from hbfp_hw.golden import prng

__all__ = ["gemm", "quantize", "EmulateBackend"]

_ABS_MASK = 0x7FFFFFFF
_INF_BITS = 0x7F800000
_BIG = 1 << 20
# Block products computed per bmm call: a chunk of k-blocks times a tile of rows of C. Small
# enough to stay in cache for the sequential accumulation that follows.
_SINGLE_CALL_ELEMENTS = 1 << 20
_CHUNK_ELEMENTS = 1 << 18
_ROW_ELEMENTS = 1 << 16
_SUBNORMAL_PROBE = np.float32(2.0 ** -140)


def _f32_matmul_is_ieee():
    """Whether float32 matmuls are plain IEEE float32 (no TF32/BF16 shortcuts), in both the
    legacy (``set_float32_matmul_precision``) and the per-backend ``fp32_precision`` API."""
    for backend in (torch.backends, getattr(torch.backends, "mkldnn", None),
                    getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)):
        if getattr(backend, "fp32_precision", "none") not in ("none", "ieee"):
            return False
    try:
        return torch.get_float32_matmul_precision() == "highest"
    except RuntimeError:            # the two APIs were mixed; trust neither
        return False


def _canonical_nan():
    return torch.tensor(CANONICAL_NAN_BITS, dtype=torch.int32).view(torch.float32)


@functools.lru_cache(maxsize=64)
def _f32_max_grid(fmt):
    """Largest product grid exponent ``g`` with ``N * M**2 * 2**g <= FLT_MAX`` (exactly)."""
    bound = Fraction(fmt.block_size * fmt.max_mantissa ** 2)
    flt_max = Fraction(((1 << 24) - 1) << 104)
    g = 128
    while bound * Fraction(2) ** g > flt_max:
        g -= 1
    return g


def _pow2(k):
    """Return ``2**k`` as a float32 tensor for integer ``k`` (numpy) in [-126, 127], exactly."""
    return torch.from_numpy(((k + 127) << 23).astype(np.int32).view(np.float32))


def _scale(x, k, k_range, inplace=False):
    """Return ``x * 2**k`` (numpy ``k`` broadcasts), computed exactly as the golden ``_scale``.

    ``k_range`` is ``(min(k), max(k))``. When it leaves [-126, 127], every block is scaled, like
    in the golden model, in two steps ``2**(k//2)`` and ``2**(k - k//2)``: exact unless the
    product is below ``2**-126``, which then rounds to 0 in every mode either way, so one or two
    steps give the same mantissas. With ``inplace`` the result overwrites ``x``.
    """
    if k_range[0] < -126 or k_range[1] > 127:
        k1 = k // 2
        x = x.mul_(_pow2(k1)) if inplace else x * _pow2(k1)
        return x.mul_(_pow2(k - k1))
    return x.mul_(_pow2(k)) if inplace else x * _pow2(k)


def _round_(a, rounding, rand):
    """Round the scaled elements ``a`` (float32) to integers, in place where possible."""
    if rounding is Rounding.NEAREST_EVEN:
        return torch.round(a, out=a)           # roundTiesToEven, exact on float32
    if rounding is Rounding.TOWARD_ZERO:
        return torch.trunc(a, out=a)
    # Stochastic: truncate |a| to 16 fraction bits, add 16 random bits, truncate (integers).
    mag = a.abs().clamp_(max=float(1 << 16)).mul_(float(1 << SR_RANDOM_BITS))
    fixed = torch.trunc(mag, out=mag).to(torch.int64)
    n = fixed.add_(rand).bitwise_right_shift_(SR_RANDOM_BITS).to(torch.float32)
    return torch.copysign(n, a, out=n)


def _random_rows(seed, rows, nblocks, n):
    """The 16-bit random values of ``rows * nblocks`` blocks in the contract's block order."""
    bits = prng.random_bits(seed, rows * nblocks, n)
    return torch.from_numpy(bits.astype(np.int64)).view(rows, nblocks, n)


class _Quantized:
    """A matrix ``[R, K]`` quantized along K: the golden model's per-block quantities.

    The mantissas keep the memory layout of the input, blocks along ``axis``: ``[R, KB, N]``
    (``axis`` 2) when K is contiguous, ``[KB, N, R]`` (``axis`` 1) when R is. The per-block
    bookkeeping is small and lives in numpy.

    Members
    -------
    n : float32 tensor
        Signed integer mantissas stored as floats (0 in NaN blocks).
    k : int32 ndarray, one entry per block (``keepdim`` along ``axis``, broadcasts against ``n``)
        ``(w-2) - E``, the value of a mantissa is ``n * 2**-k``; 0 in all-zero and NaN blocks,
        whose mantissas are 0 whatever the scale (this keeps all-zero blocks, which have
        ``E = Emin``, from forcing two-step scaling on everything else).
    k_range : (int, int)
        Smallest and largest ``k``.
    exps : int32 ndarray [R, KB]
        Unbiased exponents ``E`` (``fmt.nan_exponent`` in NaN blocks).
    nonzero, nan : bool ndarrays [R, KB]
        Blocks with a nonzero finite input; NaN blocks.
    any_nan : bool
    """

    __slots__ = ("n", "k", "k_range", "axis", "exps", "nonzero", "nan", "any_nan")

    def values_kb(self):
        """Return the exact dequantized values as a ``[KB, R, N]`` view (0 in NaN blocks).

        Overwrites ``n``.
        """
        vals = _scale(self.n, -self.k, (-self.k_range[1], -self.k_range[0]), inplace=True)
        return vals.transpose(0, 1) if self.axis == 2 else vals.transpose(1, 2)

    def per_block(self, t):
        """Return a per-block array (``keepdim`` along ``axis``) as ``[R, KB]``."""
        return t[:, :, 0] if self.axis == 2 else t[:, 0, :].T


def _quantize_matrix(t, fmt, seed):
    """Quantize float32 ``t [R, K]`` along K (numerics.md 2.1-2.3), without copying it first.

    Row ``r`` is split into blocks ``(r, 0), (r, 1), ...``; the PRNG numbers blocks in that
    row-major order whatever the memory layout.
    """
    nb = fmt.block_size
    rows, length = t.shape
    kblocks = -(-length // nb)
    pad = kblocks * nb - length
    if t.t().is_contiguous() and not t.is_contiguous():
        src = t.t()                                        # [K, R], K-blocks along axis 1
        if pad:
            src = torch.nn.functional.pad(src, (0, 0, 0, pad))
        blocks, axis = src.view(kblocks, nb, rows), 1
    else:
        src = t.contiguous()
        if pad:
            src = torch.nn.functional.pad(src, (0, pad))
        blocks, axis = src.view(rows, kblocks, nb), 2
    # For non-negative floats the order of the bit patterns is the order of the values, and
    # NaN/Inf patterns lie above every finite one.
    amax = (blocks.view(torch.int32) & _ABS_MASK).amax(dim=axis, keepdim=True).numpy()
    nan = amax >= _INF_BITS
    zero = amax == 0
    any_nan = bool(nan.any())
    if any_nan:
        amax = np.where(nan, 0, amax)
    # floor(log2 amax) from the float's bits: frexp on float64 is exact, subnormals included.
    fl = np.frexp(amax.view(np.float32).astype(np.float64))[1] - 1
    exps = np.where(zero, fmt.min_exponent, np.clip(fl, fmt.min_exponent, fmt.max_exponent))
    empty = zero | nan
    k = np.where(empty, 0, fmt.fraction_bits - exps).astype(np.int32)
    k_range = (int(k.min()), int(k.max())) if k.size else (0, 0)
    if any_nan:
        blocks = blocks.masked_fill(torch.from_numpy(nan), 0.0)
    a = _scale(blocks, k, k_range, inplace=any_nan)
    rand = None
    if fmt.rounding is Rounding.STOCHASTIC:
        rand = _random_rows(seed, rows, kblocks, nb)
        if axis == 1:
            rand = rand.permute(1, 2, 0)
    n = _round_(a, fmt.rounding, rand)
    q = _Quantized()
    q.n = n.clamp_(-fmt.max_mantissa, fmt.max_mantissa)
    q.axis = axis
    q.k = k
    q.k_range = k_range
    q.any_nan = any_nan
    q.exps = q.per_block(np.where(nan, fmt.nan_exponent, exps).astype(np.int32))
    q.nonzero = q.per_block(~empty)
    q.nan = q.per_block(nan)
    return q


def _check_seed(seed, fmt):
    if fmt.rounding is Rounding.STOCHASTIC:
        return prng.fresh_seed() if seed is None else prng.check_seed(seed)
    if seed is not None:
        prng.check_seed(seed)
    return None


def _check_matrix(name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, not {type(t).__name__}")
    if t.dtype != torch.float32:
        raise TypeError(f"{name} must be a float32 tensor, not {t.dtype}")


class _IEEESubnormals:
    """Turn off flush-to-zero (``torch.set_flush_denormal``) for a block, then restore it."""

    def __enter__(self):
        # numpy's float32 arithmetic runs under the same CPU flags (MXCSR) as torch's.
        self.was_flushing = bool(_SUBNORMAL_PROBE * np.float32(1.0) == 0.0)
        if self.was_flushing:
            torch.set_flush_denormal(False)
        return self

    def __exit__(self, *exc):
        if self.was_flushing:
            torch.set_flush_denormal(True)


def quantize(x, fmt, axis=-1, seed=None):
    """Quantize ``x`` along ``axis`` like :func:`hbfp_hw.golden.quantize`.

    Parameters
    ----------
    x : torch.Tensor of float32
        At least one dimension.
    fmt : BFPFormat or str
    axis : int
    seed : int or None
        Stochastic rounding only; ``None`` draws a fresh seed.

    Returns
    -------
    (exponents, mantissas) : (torch.Tensor of int16, torch.Tensor of int32)
        Shapes ``(*batch, nblocks)`` and ``(*batch, nblocks, block_size)`` with ``batch`` the
        shape of ``x`` without ``axis``; equal to the golden ``BFPTensor`` fields.
    """
    fmt = resolve_format(fmt)
    _check_matrix("x", x)
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension, not a scalar")
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"axis must be an integer, not {axis!r}")
    if not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis must be between {-x.dim()} and {x.dim() - 1}, not {axis!r}")
    seed = _check_seed(seed, fmt)
    moved = torch.movedim(x.detach(), axis, -1)
    batch = moved.shape[:-1]
    rows = int(np.prod(batch, dtype=np.int64))
    mat = moved.reshape(rows, moved.shape[-1]).contiguous()
    kblocks = -(-mat.shape[1] // fmt.block_size)
    with torch.no_grad(), _IEEESubnormals():
        q = _quantize_matrix(mat, fmt, seed)
    exps = torch.from_numpy(q.exps.astype(np.int16)).reshape(*batch, kblocks)
    mants = q.n.to(torch.int32).reshape(*batch, kblocks, fmt.block_size)
    return exps, mants


def _exponent_range(q):
    """Per k-block (min, max) exponent over the blocks that may be nonzero."""
    return (np.where(q.nonzero, q.exps, _BIG).min(axis=0),
            np.where(q.nonzero, q.exps, -_BIG).max(axis=0))


@functools.lru_cache(maxsize=1)
def _accumulation_is_sequential():
    """Check once that ``index_add_`` sums its source slices in index order, in float32.

    The data tells sequential float32 summation apart from pairwise, blocked or double
    accumulation: 1 followed by many halves of an ulp stays exactly 1 only sequentially.
    """
    ulp_half = 2.0 ** -24
    src = torch.full((64, 3, 33000), ulp_half, dtype=torch.float32)
    src[0] = 1.0
    src[:, 1] = torch.arange(64, dtype=torch.float32).mul_(0.1).reshape(64, 1)
    src[:, 2] = torch.randn(64, 33000, generator=torch.Generator().manual_seed(0))
    acc = torch.zeros(1, 3, 33000)
    acc.index_add_(0, torch.zeros(64, dtype=torch.long), src)
    ref = torch.zeros(3, 33000)
    for term in src:
        ref.add_(term)
    return bool(torch.equal(acc[0].view(torch.int32), ref.view(torch.int32))
                and bool((acc[0, 0] == 1.0).all()))


@functools.lru_cache(maxsize=256)
def _zeros_index(n):
    return torch.zeros(n, dtype=torch.long)


def _accumulate_(acc, products):
    """``acc += products[0]; acc += products[1]; ...`` in float32, in this order."""
    if _accumulation_is_sequential():
        acc.unsqueeze(0).index_add_(0, _zeros_index(products.shape[0]), products)
    else:
        for term in products:
            acc.add_(term)


def _tiles(m, ncols, kblocks):
    """Rows of C and k-blocks per bmm call.

    Small GEMMs take one call. Otherwise a call makes about ``_CHUNK_ELEMENTS`` block products
    for ``_ROW_ELEMENTS / ncols`` rows of C, so that the products and the accumulator tile stay
    in cache during the sequential accumulation.
    """
    if m * ncols * kblocks <= _SINGLE_CALL_ELEMENTS:
        return m, kblocks
    rows = max(1, min(m, _ROW_ELEMENTS // ncols))
    return rows, max(1, min(kblocks, _CHUNK_ELEMENTS // (rows * ncols)))


def _gemm(a, b, fmt, seed_a, seed_b):
    m, kdim = a.shape
    ncols = b.shape[1]
    kblocks = -(-kdim // fmt.block_size)
    qa = _quantize_matrix(a, fmt, seed_a)
    qb = _quantize_matrix(b.t(), fmt, seed_b)
    two_f = 2 * fmt.fraction_bits
    a_lo, a_hi = _exponent_range(qa)
    b_lo, b_hi = _exponent_range(qb)
    grid_lo = a_lo + b_lo - two_f
    grid_hi = a_hi + b_hi - two_f
    bound = fmt.block_size * fmt.max_mantissa ** 2
    # Per k-block: float32 products are exact when N*M^2 <= 2^24 and the exponents keep the
    # product grid >= 2^-149 and every partial sum <= FLT_MAX; otherwise use float64 (exact).
    use_f32 = (grid_lo >= -149) & (grid_hi <= _f32_max_grid(fmt))
    if bound > 1 << 24 or not _f32_matmul_is_ieee():
        use_f32[:] = False
    # With every |partial sum| far below FLT_MAX no Inf, and so no NaN, can appear.
    may_overflow = int(grid_hi.max()) + (bound * kblocks).bit_length() >= 126

    a_kb = qa.values_kb()                            # [KB, M, N]
    b_kb = qb.values_kb().transpose(1, 2)            # [KB, N, Ncols]
    acc = torch.zeros(m, ncols, dtype=torch.float32)
    rows, chunk = _tiles(m, ncols, kblocks)
    for r0 in range(0, m, rows):
        acc_t = acc[r0:r0 + rows]
        for k0 in range(0, kblocks, chunk):
            k1 = min(kblocks, k0 + chunk)
            a_t = a_kb[k0:k1, r0:r0 + rows]
            b_t = b_kb[k0:k1]
            if use_f32[k0:k1].all():
                products = torch.bmm(a_t, b_t)
            else:
                # Exact in float64; the cast is the single RNE rounding to FP32.
                products = torch.bmm(a_t.double(), b_t.double()).float()
            _accumulate_(acc_t, products)

    if qa.any_nan or qb.any_nan:
        acc[torch.from_numpy(qa.nan.any(axis=1))] = float("nan")
        acc[:, torch.from_numpy(qb.nan.any(axis=1))] = float("nan")
    if qa.any_nan or qb.any_nan or may_overflow:
        acc = torch.where(torch.isnan(acc), _canonical_nan(), acc)
    return acc


def gemm(a, b, fmt, seed=None):
    """HBFP matrix product ``a @ b``, bit-exact with :func:`hbfp_hw.golden.gemm`.

    Parameters
    ----------
    a : torch.Tensor, float32, shape ``[M, K]``
        Quantized along K (its rows are split into blocks).
    b : torch.Tensor, float32, shape ``[K, N]``
        Quantized along K (its columns are split into blocks).
    fmt : BFPFormat or str
    seed : int or None
        Stochastic rounding only: ``a`` uses ``seed``, ``b`` uses ``(seed + 1) % 2**32``;
        ``None`` draws a fresh seed. Validated (0..2**32-1) for every rounding.

    Returns
    -------
    torch.Tensor of float32, shape ``[M, N]``, on the CPU.

    Raises
    ------
    TypeError, ValueError
        On invalid arguments; the message names the parameter.
    """
    fmt = resolve_format(fmt)
    _check_matrix("a", a)
    _check_matrix("b", b)
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(f"a and b must be 2-D matrices, not of shapes {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"a's columns must equal b's rows (K), not {a.shape[1]} and "
                         f"{b.shape[0]}")
    if min(*a.shape, *b.shape) < 1:
        raise ValueError(f"M, N and K must be at least 1, not shapes {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if a.device.type != "cpu" or b.device.type != "cpu":
        raise ValueError(f"a and b must be CPU tensors for the emulate backend, not on "
                         f"{a.device} and {b.device}")
    seed = _check_seed(seed, fmt)
    seed_b = None if seed is None else (seed + 1) % (1 << 32)
    with torch.no_grad(), _IEEESubnormals():
        return _gemm(a.detach(), b.detach(), fmt, seed, seed_b)


class EmulateBackend:
    """The ``emulate`` backend: :func:`gemm` on CPU tensors, bit-exact with the golden model."""

    name = "emulate"

    def gemm(self, a, b, fmt, seed):
        """Return the HBFP product ``a @ b`` of 2-D float32 tensors (see :func:`gemm`)."""
        return gemm(a, b, fmt, seed)

    def __repr__(self):
        return "EmulateBackend()"

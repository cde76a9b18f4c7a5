"""The HBFP GEMM in PyTorch, bit-exact with :func:`hbfp_hw.golden.gemm` (docs/numerics.md 2-3).

This is the ``emulate`` backend. Every torch op it runs either is exact or rounds exactly where
the contract rounds. A GEMM takes one of two paths:

**Fast path** (:mod:`.emulate_fast`): nearest-even and toward-zero formats whose nonzero blocks
have ordinary shared exponents (``|(w-2) - E| <= 126`` and no upper clamp of E; every block of
a typical GEMM). Per operand:

- the largest magnitude of each block from whole-tensor reductions (``amax``/``amin`` on the
  floats, or ``amax`` on the integer bit patterns), its exponent field read from the bits;
- the scale ``2**k``, ``k = (w-2) - E``, and its inverse built from that field by integer
  arithmetic on the bit patterns (exact powers of two, both normal floats);
- the dequantized values in three or four whole-tensor passes:
  ``clamp(round(x * 2**k), -M, M) * 2**-k`` (see :mod:`.emulate_fast`).

**General path** (:func:`_gemm_general`): everything else (stochastic rounding, exponents at
the ends of the range, formats with ``exponent_bits < 8`` whose E is clamped above). It mirrors
the golden model step by step: ``frexp`` on float64 for the exponents, scaling in two steps
where ``2**k`` leaves float32's range, ``torch.round``/``torch.trunc`` or stochastic rounding on
int64 with the contract's xorshift32 bits.

The fast path has two implementations with the same bits: the fused C kernel of
:mod:`.native` (``_fused.c``: quantization, block products and accumulation in one pass per
operand, several times faster), and the torch implementation described here, which runs where
the kernel cannot be built or is turned off (``HBFP_HW_NATIVE=0``). The tests run every
fast-path case on both.

Both paths then compute the block products of each k-block with BLAS on the dequantized
values, in float32 when that is provably exact (every partial sum is an integer multiple of
the product grid below ``2**24`` grid units and no product leaves float32's range, so any
summation order and FMA give the exact value) and otherwise in float64 (always exact) followed
by one RNE cast. The FP32 accumulation over k-blocks is sequential, in increasing ``kb`` order,
from +0.0: in-place ``add_`` k-block by k-block, or ``Tensor.index_add_`` along a leading
k-block axis, which adds the source slices one after the other in index order
(:func:`.exact._accumulation_is_sequential` checks that property once per process; a Python loop of
``add_`` is the fallback). NaN blocks are zeroed before the products and their rows/columns set
to the canonical NaN ``0x7FC00000`` afterwards; every other NaN is canonicalized too.

**Devices.** On the CPU a GEMM takes the paths above. On any other torch device (e.g. CUDA)
it takes the general path, in torch on that device: the per-block bookkeeping (one small
array per operand) and the stochastic-rounding bits come from the CPU, every whole-tensor
step runs on the device, and the k-block sums are one in-place ``add_`` per k-block (CUDA's
``index_add_`` adds atomically, in no fixed order). The tests check that path on the CPU
against the golden model, and CUDA against the CPU bit for bit where a GPU is present.

**Minifloat elements** (OCP MX, Block Minifloat: ``fmt.element`` set) take the golden model's
GEMM, in numpy on the CPU (operands on another device are copied there and back): the same bits
by definition, at the golden model's speed (docs/benchmarks.md); the torch paths above are for
integer elements.

IEEE subnormals are required: if ``torch.set_flush_denormal(True)`` is active the GEMM turns it
off for its own duration and restores it afterwards. If float32 matmuls may use TF32/BF16
(``torch.set_float32_matmul_precision`` other than ``"highest"``, or a ``fp32_precision`` of
``torch.backends`` / ``torch.backends.mkldnn`` / ``torch.backends.cuda.matmul`` other than
``"none"``/``"ieee"``, or ``torch.backends.cuda.matmul.allow_tf32``), every product is computed
in float64, which is exact in any case.
"""

from __future__ import annotations

import numpy as np
import torch

from hbfp_hw import golden
from hbfp_hw.formats import SR_RANDOM_BITS, Accumulator, Rounding, resolve_format
from hbfp_hw.golden import prng
from hbfp_hw.torch import emulate_fast, exact, native

__all__ = ["gemm", "gemm_batched", "quantize", "EmulateBackend"]


_BIG = 1 << 20
_SUBNORMAL_PROBE = np.float32(2.0 ** -140)
#: Batched GEMMs (not stochastic) whose two operands hold at least this many elements run
#: one by one on the fast path; smaller ones go through the batched general path at once.
_LARGE_OPERANDS = 1 << 14


def _pow2(k, device=None):
    """Return ``2**k`` as a float32 tensor (on ``device``) for integer ``k`` (numpy) in
    [-126, 127], exactly."""
    t = torch.from_numpy(((k + 127) << 23).astype(np.int32).view(np.float32))
    return t if device is None or device.type == "cpu" else t.to(device)


def _scale(x, k, k_range, inplace=False):
    """Return ``x * 2**k`` (numpy ``k`` broadcasts), computed exactly as the golden ``_scale``.

    ``k_range`` is ``(min(k), max(k))``. When it leaves [-126, 127], every block is scaled, like
    in the golden model, in two steps ``2**(k//2)`` and ``2**(k - k//2)``: exact unless the
    product is below ``2**-126``, which then rounds to 0 in every mode either way, so one or two
    steps give the same mantissas. With ``inplace`` the result overwrites ``x``.
    """
    if k_range[0] < -126 or k_range[1] > 127:
        k1 = k // 2
        x = x.mul_(_pow2(k1, x.device)) if inplace else x * _pow2(k1, x.device)
        return x.mul_(_pow2(k - k1, x.device))
    return x.mul_(_pow2(k, x.device)) if inplace else x * _pow2(k, x.device)


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


def _random_rows(seed, rows, nblocks, n, device):
    """The 16-bit random values of ``rows * nblocks`` blocks in the contract's block order."""
    bits = prng.random_bits(seed, rows * nblocks, n)
    return _to(torch.from_numpy(bits.astype(np.int64)).view(rows, nblocks, n), device)


def _to(t, device):
    """``t`` (a CPU tensor made from numpy) on ``device``."""
    return t if device.type == "cpu" else t.to(device)


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
    row-major order whatever the memory layout. ``seed`` may be a list of ``G`` seeds: then
    ``t`` stacks ``G`` matrices of ``R / G`` rows, each quantized with its own seed (the
    operands of a batched GEMM).
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
    amax = (blocks.view(torch.int32) & exact._ABS_MASK).amax(dim=axis, keepdim=True).cpu().numpy()
    nan = amax >= exact._INF_BITS
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
        blocks = blocks.masked_fill(_to(torch.from_numpy(nan), t.device), 0.0)
    a = _scale(blocks, k, k_range, inplace=any_nan)
    rand = None
    if fmt.rounding is Rounding.STOCHASTIC:
        if isinstance(seed, (list, tuple)):
            per = rows // len(seed)
            rand = torch.cat([_random_rows(s, per, kblocks, nb, t.device) for s in seed])
        else:
            rand = _random_rows(seed, rows, kblocks, nb, t.device)
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
    if fmt.rounding is Rounding.STOCHASTIC or fmt.accumulator.stochastic:
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
    (exponents, mantissas) : (torch.Tensor of int16, torch.Tensor of int32 or int64)
        Shapes ``(*batch, nblocks)`` and ``(*batch, nblocks, block_size)`` with ``batch`` the
        shape of ``x`` without ``axis``; equal to the golden ``BFPTensor`` fields (int64
        mantissas where the golden model has them: E5M2-wide minifloat elements).
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
    if fmt.element is not None:
        q = golden.quantize(x.detach().cpu().numpy(), fmt, axis=axis, seed=seed)
        return (torch.from_numpy(q.exponents).to(x.device),
                torch.from_numpy(q.mantissas).to(x.device))
    moved = torch.movedim(x.detach(), axis, -1)
    batch = moved.shape[:-1]
    rows = int(np.prod(batch, dtype=np.int64))
    mat = moved.reshape(rows, moved.shape[-1]).contiguous()
    kblocks = -(-mat.shape[1] // fmt.block_size)
    with torch.no_grad(), _IEEESubnormals():
        q = _quantize_matrix(mat, fmt, seed)
    exps = _to(torch.from_numpy(q.exps.astype(np.int16)), x.device).reshape(*batch, kblocks)
    mants = q.n.to(torch.int32).reshape(*batch, kblocks, fmt.block_size)
    return exps, mants


def _exponent_range(q):
    """Per k-block (min, max) exponent over the blocks that may be nonzero."""
    return (np.where(q.nonzero, q.exps, _BIG).min(axis=0),
            np.where(q.nonzero, q.exps, -_BIG).max(axis=0))


def _gemm_general(a, b, fmt, seed_a, seed_b):
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
    use_f32 = (grid_lo >= -149) & (grid_hi <= exact._f32_max_grid(fmt))
    if bound > 1 << 24 or not exact._f32_matmul_is_ieee():
        use_f32[:] = False
    # With every |partial sum| far below FLT_MAX no Inf, and so no NaN, can appear.
    may_overflow = int(grid_hi.max()) + (bound * kblocks).bit_length() >= 126

    a_kb = qa.values_kb()                            # [KB, M, N]
    b_kb = qb.values_kb().transpose(1, 2)            # [KB, N, Ncols]
    acc = torch.zeros(m, ncols, dtype=torch.float32, device=a.device)
    rows, chunk = exact._tiles(m, ncols, kblocks)
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
            exact._accumulate_(acc_t, products)

    if qa.any_nan or qb.any_nan:
        acc[_to(torch.from_numpy(qa.nan.any(axis=1)), acc.device)] = float("nan")
        acc[:, _to(torch.from_numpy(qb.nan.any(axis=1)), acc.device)] = float("nan")
    if qa.any_nan or qb.any_nan or may_overflow:
        acc = torch.where(torch.isnan(acc), exact._canonical_nan().to(acc.device), acc)
    return acc


def _gemm_batched(a, b, fmt, seeds_a, seeds_b):
    """``a [G, M, K] @ b [G, K, N]``: G HBFP GEMMs, each bit-exact with :func:`gemm` of its
    pair (with seeds ``seeds_a[g]``/``seeds_b[g]``, or None), in a few whole-batch passes.

    The G matrices of each operand are quantized as one ``[G*M, K]`` (``[G*N, K]``) matrix
    (the blocks are the same; stochastic rounding draws each matrix's bits from its own seed),
    the block products of a chunk of the batch are one ``matmul`` over ``[KB, G, M, N]``
    (float32 where exact for every pair of the batch, else float64 and one RNE cast) and the
    k-blocks are summed sequentially from +0.0 as in :func:`_gemm_general`.
    """
    groups, m, kdim = a.shape
    ncols = b.shape[2]
    qa = _quantize_matrix(a.reshape(groups * m, kdim), fmt, seeds_a)
    qb = _quantize_matrix(b.transpose(1, 2).reshape(groups * ncols, kdim), fmt, seeds_b)
    two_f = 2 * fmt.fraction_bits
    a_lo, a_hi = _exponent_range(qa)
    b_lo, b_hi = _exponent_range(qb)
    bound = fmt.block_size * fmt.max_mantissa ** 2
    f32 = bool(((a_lo + b_lo - two_f >= -149) & (a_hi + b_hi - two_f <= exact._f32_max_grid(fmt)))
               .all()) and bound <= 1 << 24 and exact._f32_matmul_is_ieee()
    kblocks = a_lo.shape[0]
    may_overflow = int((a_hi + b_hi).max()) - two_f + (bound * kblocks).bit_length() >= 126
    a_kb = qa.values_kb().reshape(kblocks, groups, m, -1)             # [KB, G, M, nb]
    b_kb = qb.values_kb().reshape(kblocks, groups, ncols, -1).transpose(2, 3)
    acc = torch.zeros(groups, m, ncols, dtype=torch.float32, device=a.device)
    chunk = max(1, exact._SINGLE_CALL_ELEMENTS // max(1, kblocks * m * ncols))
    for g0 in range(0, groups, chunk):
        g1 = min(groups, g0 + chunk)
        if f32:
            products = torch.matmul(a_kb[:, g0:g1], b_kb[:, g0:g1])
        else:
            products = torch.matmul(a_kb[:, g0:g1].double(), b_kb[:, g0:g1].double()).float()
        exact._accumulate_(acc[g0:g1], products)
    if qa.any_nan or qb.any_nan:
        nan_a = _to(torch.from_numpy(qa.nan.any(axis=1).reshape(groups, m)), acc.device)
        nan_b = _to(torch.from_numpy(qb.nan.any(axis=1).reshape(groups, ncols)), acc.device)
        acc.masked_fill_(nan_a[:, :, None] | nan_b[:, None, :], float("nan"))
    if qa.any_nan or qb.any_nan or may_overflow:
        acc = torch.where(torch.isnan(acc), exact._canonical_nan().to(acc.device), acc)
    return acc


def gemm_batched(a, b, fmt, seeds=None):
    """Batched HBFP product ``a [G, M, K] @ b [G, K, N]``: pair ``g`` equals
    :func:`gemm` ``(a[g], b[g], fmt, seeds[g])`` bit for bit.

    ``seeds`` (stochastic rounding only): G seeds; ``None`` draws fresh ones.
    """
    fmt = resolve_format(fmt)
    _check_matrix("a", a)
    _check_matrix("b", b)
    if a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1]:
        raise ValueError(f"a and b must be [G, M, K] and [G, K, N], not of shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if min(*a.shape, *b.shape) < 1:
        raise ValueError(f"G, M, N and K must be at least 1, not shapes {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if fmt.rounding is Rounding.STOCHASTIC or fmt.accumulator.stochastic:
        seeds = [prng.fresh_seed() for _ in range(a.shape[0])] if seeds is None else \
            [prng.check_seed(s) for s in seeds]
        if len(seeds) != a.shape[0]:
            raise ValueError(f"seeds must hold one seed per batch element ({a.shape[0]}), not "
                             f"{len(seeds)}")
    else:
        seeds = None
    return EmulateBackend().gemm_batched(a, b, fmt, seeds)


def _gemm_golden(a, b, fmt, seed_a):
    """Minifloat elements, per-operand formats (``fmt`` a pair) and accumulators other than
    FP32: the golden model's GEMM, in numpy on the CPU (the same bits by definition; the torch
    paths above are for one integer-element format accumulated in FP32)."""
    out = golden.gemm(a.cpu().numpy(), b.cpu().numpy(), fmt, seed=seed_a)
    return torch.from_numpy(out).to(a.device)


def _by_golden(fmt):
    """Whether the golden model computes ``fmt``'s GEMMs (see :func:`_gemm_golden`)."""
    return fmt.element is not None or fmt.accumulator is not Accumulator.FP32


def _gemm(a, b, fmt, seed_a, seed_b):
    if _by_golden(fmt):
        return _gemm_golden(a, b, fmt, seed_a)
    if a.device.type != "cpu":
        # The pure-torch path: the fused kernel and the fast path's workspace are CPU-only.
        return _gemm_general(a, b, fmt, seed_a, seed_b)
    stochastic = fmt.rounding is Rounding.STOCHASTIC
    out = native.fused_gemm(a, b, fmt, emulate_fast._fast_format(fmt).bound <= 1 << 24,
                            exact._f32_max_grid(fmt), (seed_a, seed_b) if stochastic else None)
    if out is None and not stochastic:      # the fused kernel is off or unavailable
        out = emulate_fast._gemm_fast(a, b, fmt)
    if out is not None and out is not native.NOT_FAST:
        return out
    return _gemm_general(a, b, fmt, seed_a, seed_b)


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
    torch.Tensor of float32, shape ``[M, N]``, on the device of ``a`` and ``b``.

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
    if a.device != b.device:
        raise ValueError(f"a and b must be on the same device, not on {a.device} and "
                         f"{b.device}")
    seed = _check_seed(seed, fmt)
    seed_b = None if seed is None else (seed + 1) % (1 << 32)
    with torch.no_grad(), _IEEESubnormals():
        return _gemm(a.detach(), b.detach(), fmt, seed, seed_b)


class EmulateBackend:
    """The ``emulate`` backend: :func:`gemm`, bit-exact with the golden model, on the device of
    its operands (CPU: fused kernel or fast path; other devices: the general path in torch)."""

    name = "emulate"

    def gemm(self, a, b, fmt, seed):
        """Return the HBFP product ``a @ b`` of 2-D float32 tensors (see :func:`gemm`).

        The arguments come checked from :func:`hbfp_hw.torch.ops.role_gemm` (float32
        matrices on one device, matching K, no empty dimension, a 32-bit seed); only the
        format is not.
        """
        if isinstance(fmt, tuple):
            # per-operand formats: the golden model's GEMM (it takes the pair; seed for A,
            # seed + 1 for B, as for one format)
            with torch.no_grad():
                return _gemm_golden(a.detach(), b.detach(), fmt, seed)
        fmt = resolve_format(fmt)
        if fmt.rounding is not Rounding.STOCHASTIC and not fmt.accumulator.stochastic:
            seed = None
        with torch.no_grad(), _IEEESubnormals():
            return _gemm(a.detach(), b.detach(), fmt, seed,
                         None if seed is None else (seed + 1) & 0xFFFFFFFF)

    def gemm_batched(self, a, b, fmt, seeds):
        """Return ``[a[g] @ b[g] for g]`` stacked, each equal to :meth:`gemm` with
        ``seeds[g]`` (checked float32 ``[G, M, K]`` and ``[G, K, N]`` on one device; ``seeds``
        a list of G ints, used by stochastic rounding only)."""
        groups, m, kdim = a.shape
        if not isinstance(fmt, tuple):
            fmt = resolve_format(fmt)
        if isinstance(fmt, tuple) or groups == 1 or _by_golden(fmt):
            return torch.stack([self.gemm(a[g], b[g], fmt, None if seeds is None else seeds[g])
                                for g in range(groups)])
        if fmt.rounding is Rounding.STOCHASTIC:
            seeds_a = list(seeds)
            seeds_b = [(s + 1) & 0xFFFFFFFF for s in seeds_a]
        else:
            seeds_a = seeds_b = None
        if a.device.type == "cpu":
            with torch.no_grad(), _IEEESubnormals():
                out = native.fused_gemm_batched(
                    a.detach(), b.detach(), fmt, emulate_fast._fast_format(fmt).bound <= 1 << 24,
                    exact._f32_max_grid(fmt),
                    None if seeds_a is None else list(zip(seeds_a, seeds_b)))
                if out is not None:
                    c, todo = out
                    for g in todo:          # exponents at the ends of the range
                        c[g] = _gemm_general(a[g].detach(), b[g].detach(), fmt,
                                             None if seeds_a is None else seeds_a[g],
                                             None if seeds_b is None else seeds_b[g])
                    return c
        # The fused kernel is off or unavailable, or the operands are not on the CPU.
        kpad = -(-kdim // fmt.block_size) * fmt.block_size
        if (a.device.type == "cpu" and fmt.rounding is not Rounding.STOCHASTIC
                and (m + b.shape[2]) * kpad >= _LARGE_OPERANDS):
            # Large GEMMs one at a time: the fast path quantizes each GEMM's operands once,
            # faster than the general path quantizes them all.
            return torch.stack([self.gemm(a[g], b[g], fmt, None) for g in range(groups)])
        with torch.no_grad(), _IEEESubnormals():
            return _gemm_batched(a.detach(), b.detach(), fmt, seeds_a, seeds_b)

    def __repr__(self):
        return "EmulateBackend()"

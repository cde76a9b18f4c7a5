"""The fast path of the emulate backend in torch (:func:`_gemm_fast`): nearest-even and
toward-zero GEMMs whose blocks have ordinary shared exponents, quantized by whole-tensor passes
on the bit patterns (see :mod:`.emulate` for the contract and the proof of exactness). It runs
where the fused C kernel of :mod:`.native`, which computes the same bits, is off or cannot be
built, and it sizes that kernel's float32 bound (:func:`_fast_format`)."""

from __future__ import annotations

import functools
import math
import threading
import types

import numpy as np
import torch

from hbfp_hw.formats import Rounding
from hbfp_hw.torch import exact

# Nearest-even and toward-zero formats whose nonzero blocks all have shared exponents with
# |k| <= 126 for k = (w-2) - E and no upper exponent clamp (every block of a typical GEMM;
# anything else takes _gemm_general). Then 2**k and 2**-k are normal float32 numbers, built
# from the exponent field of the block maximum by integer arithmetic, and quantizing +
# dequantizing is four exact whole-tensor operations:
#
#     v = clamp(round(x * 2**k), -M, M) * 2**-k
#
# - x * 2**k is exact unless it is below 2**-126, where it rounds to 0 in either mode anyway
#   (the argument of numerics.md, "How the golden model stays exact and fast");
# - torch.round is roundTiesToEven and torch.trunc rounds toward zero, exactly, on float32;
# - clamping after rounding to the integer M is the symmetric saturation of the contract;
# - m * 2**(E-(w-2)) is exactly representable (numerics.md 2.5), so the last product is exact.
#
# All-zero blocks get k = min(126, (w-2) - Emin): their mantissas are 0 whatever the scale.
# The per-block bookkeeping (a few small arrays) is done in numpy, which costs less per call
# than torch's dispatcher; the large temporaries live in a per-thread workspace, so that a
# GEMM does not allocate (and first-touch) megabytes of fresh memory on every call.

_KMAX = 126
_ONE_AND_HALF = 0x400000    # fraction bits of 1.5
_MAGIC = float(3 << 22)     # 1.5 * 2**23: a + _MAGIC rounds a to an integer, ties to even
_MAGIC_KMIN = -104          # for k >= this, _MAGIC * 2**-k stays below 2**128
#: Temporaries (elements) that the workspace keeps between calls (a few slots of at most
#: 16 MiB per thread); smaller and larger ones are allocated per call.
_WORKSPACE_MIN, _WORKSPACE_MAX = 1 << 15, 1 << 22


class _Workspace(threading.local):
    """Per-thread scratch buffers, reused from one GEMM to the next (never returned)."""

    def __init__(self):
        self.buffers = {}

    def get(self, slot, shape, dtype=torch.float32):
        """Return an uninitialized tensor of ``shape`` and ``dtype`` from buffer ``slot``."""
        numel = math.prod(shape)
        if numel < _WORKSPACE_MIN or numel > _WORKSPACE_MAX:
            return torch.empty(shape, dtype=dtype)
        key = (slot, dtype.itemsize)
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = self.buffers[key] = torch.empty(numel, dtype=dtype)
        return buf[:numel].view(dtype).view(shape)
_WORKSPACE = _Workspace()


@functools.lru_cache(maxsize=64)
def _fast_format(fmt):
    """Per-format constants of the fast path.

    ``k_base``, ``k_lo`` and ``k_hi`` give ``k * 2**23`` from the bit pattern of a block's
    largest magnitude: ``k_base - (pattern & 0x7F800000)`` is ``((w-2) + 127 - field) *
    2**23`` for the biased exponent field, i.e. ``k = (w-2) - E`` with ``E = field - 127``;
    clamped to ``[-126, min(126, (w-2) - Emin)]``, which also applies the lower clamp of E.
    """
    f = fmt.fraction_bits
    return types.SimpleNamespace(
        nb=fmt.block_size, f=f, m=fmt.max_mantissa, emin=fmt.min_exponent,
        emax=fmt.max_exponent, nearest=fmt.rounding is Rounding.NEAREST_EVEN,
        bound=fmt.block_size * fmt.max_mantissa ** 2,
        k_base=np.int32((f + 127) << 23), k_lo=np.int32(-_KMAX << 23),
        k_hi=np.int32(min(_KMAX, f - fmt.min_exponent) << 23))


def _blocked(t, nb, slot):
    """View float32 ``t [R, K]`` as contiguous blocks of ``nb`` along K.

    Returns ``(x3, axis, scratch)``: ``x3`` is ``[R, KB, nb]`` with ``axis`` 2, or
    ``[KB, nb, R]`` with ``axis`` 1 when ``t`` is a transposed matrix (``R`` contiguous).
    ``x3`` is ``t`` itself when K is a multiple of ``nb`` and ``t`` is contiguous either way,
    otherwise a zero-padded copy in the workspace ``slot`` (``scratch``: free to overwrite).
    """
    rows, length = t.shape
    kblocks = -(-length // nb)
    if t.stride(0) == 1 and rows > 1 and (t.stride(1) != 1 or length == 1):
        src, shape, axis = t.t(), (kblocks, nb, rows), 1          # [K, R]
    else:
        src, shape, axis = t, (rows, kblocks, nb), 2              # [R, K]
    if length % nb == 0 and src.is_contiguous():
        return src.view(shape), axis, False
    buf = _WORKSPACE.get(slot, shape)
    if axis == 1:
        flat = buf.view(-1, rows)
        flat[:length].copy_(src)
        flat[length:].zero_()
    else:
        flat = buf.view(rows, -1)
        flat[:, :length].copy_(src)
        flat[:, length:].zero_()
    return buf, axis, True


class _FastOperand:
    """One GEMM operand on the fast path: its blocks and per-block statistics.

    Members
    -------
    x3, axis, scratch
        From :func:`_blocked`.
    abits : int32 ndarray, one entry per block (``keepdim`` along ``axis``)
        Bit pattern of the largest magnitude of the block. For non-negative floats the order
        of the bit patterns is the order of the values, and NaN/Inf patterns lie above every
        finite one (``amax``, ``amin`` and ``np.maximum`` propagate NaN).
    nan : bool ndarray like ``abits``, or None
        The NaN blocks (a NaN or an infinity), None if there are none.
    e_raw, e_lo, e_hi : int
        ``floor(log2)`` of the largest finite block maximum; the smallest and the largest
        shared exponent of the nonzero finite blocks (``e_lo`` is large without any).
    """

    __slots__ = ("x3", "axis", "scratch", "slot", "abits", "nan", "e_raw", "e_lo", "e_hi")

    def __init__(self, t, c, slot):
        self.slot = slot
        x3, axis, self.scratch = _blocked(t, c.nb, slot)
        self.x3, self.axis = x3, axis
        if axis == 1:
            # blocks along the middle axis, rows contiguous: two fast read-only reductions
            top = x3.amax(dim=1, keepdim=True).numpy()
            bottom = np.negative(x3.amin(dim=1, keepdim=True).numpy())
            abits = np.maximum(top, bottom, out=top).view(np.int32)
            np.bitwise_and(abits, exact._ABS_MASK, out=abits)
        else:
            # blocks along the contiguous axis: reductions are slow there, so run just one
            # (into the buffer that will hold the values, unless x3 itself lives there)
            bits = torch.bitwise_and(x3.view(torch.int32), exact._ABS_MASK, out=_WORKSPACE.get(
                "bits" if self.scratch else slot, x3.shape, torch.int32))
            abits = bits.amax(dim=2, keepdim=True).numpy()
        self.abits = abits
        hi = int(abits.max())
        self.nan = None
        if hi >= exact._INF_BITS:
            self.nan = abits >= exact._INF_BITS
            hi = int(np.where(self.nan, 0, abits).max())
        # the smallest nonzero pattern: pattern - 1 wraps to the largest uint32 for zero
        lo = int((abits - 1).view(np.uint32).min()) + 1
        self.e_raw = (hi >> 23) - 127
        self.e_hi = max(self.e_raw, c.emin)
        self.e_lo = max((lo >> 23) - 127, c.emin)

    def values(self, c):
        """Return the exact dequantized values (0 in NaN blocks), float32 like ``x3``."""
        kbits = c.k_base - (self.abits & np.int32(0x7F800000))                  # k * 2**23
        if self.nan is not None:
            kbits[self.nan] = 0                 # NaN blocks: any finite scale (zeroed below)
        np.maximum(kbits, c.k_lo, out=kbits)
        np.minimum(kbits, c.k_hi, out=kbits)
        unscale_bits = np.int32(127 << 23) - kbits
        scale = torch.from_numpy((kbits + np.int32(127 << 23)).view(np.float32))  # 2**k
        unscale = torch.from_numpy(unscale_bits.view(np.float32))                 # 2**-k
        x3 = self.x3
        out = x3 if self.scratch else _WORKSPACE.get(self.slot, x3.shape)
        if self.axis == 1 and c.nearest and c.f - self.e_hi >= _MAGIC_KMIN:
            # Three passes instead of four (worth it where the per-block factors broadcast
            # along the middle axis; along the last one ATen's ternary kernels are slow):
            # round(a) = (a + 1.5*2**23) - 1.5*2**23 for |a| < 2**22; the scaled integers
            # stay biased by the constant through the clamp, and the last step computes
            # t * 2**-k - 1.5*2**23 * 2**-k = m * 2**-k, exactly (every term is exact).
            vals = torch.addcmul(_magic_tensor(), x3, scale, out=out)
            vals.clamp_(_MAGIC - c.m, _MAGIC + c.m)
            # -1.5 * 2**23 * 2**-k: sign bit, exponent field + 23, fraction of 1.5
            magic = (unscale_bits + np.int32((23 << 23) | _ONE_AND_HALF)) | np.int32(-1 << 31)
            torch.addcmul(torch.from_numpy(magic.view(np.float32)), vals, unscale, out=vals)
        else:
            vals = torch.mul(x3, scale, out=out)
            if c.nearest:
                vals.round_()
            else:
                vals.trunc_()
            vals.clamp_(-c.m, c.m)
            vals.mul_(unscale)
        if self.nan is not None:
            vals.masked_fill_(torch.from_numpy(self.nan), 0.0)
        return vals

    def nan_lines(self):
        """Rows (of A) or columns (of B) that hold a NaN block, as a bool tensor."""
        return torch.from_numpy(self.nan.any(axis=1)[:, 0] if self.axis == 2
                                else self.nan.any(axis=0)[0])


@functools.lru_cache(maxsize=1)
def _magic_tensor():
    return torch.tensor(_MAGIC, dtype=torch.float32)


def _fast_products(va, vb, f32):
    """Return ``C = sum_kb va[kb] @ vb[kb]``: float32, from +0.0, the k-blocks added in
    increasing order with one rounding per addition.

    ``va [KB, M, N]``, ``vb [KB, N, Ncols]``; the products are exact in float32 (``f32``),
    or computed exactly in float64 and rounded once to float32 by the cast. The first
    k-block is written as ``products + 0.0`` (``-0.0 + 0.0 = +0.0``, the sum from +0.0 of
    the contract), which spares filling C with zeros first.

    Wide outputs go k-block by k-block, row tile by row tile: one ``mm`` into an L2-sized
    buffer, one in-place add. Narrow ones (few columns, many k-blocks) go by chunks of
    k-blocks: one ``bmm`` and one sequential ``index_add_``, fewer calls.

    When both operands are column-major per k-block (``va``'s rows and ``vb``'s columns
    contiguous, e.g. ``dy^T @ cols`` of a convolution's grad_weight GEMM) and there are many
    k-blocks, the products are computed transposed, ``vb[kb]^T @ va[kb]^T`` (both row-major),
    which MKL runs up to twice as fast, and C is transposed once at the end. Every product is
    exact, so the result is the same bit for bit.
    """
    transposed = vb.stride(2) != 1 and va.stride(1) == 1 and va.shape[0] >= 16
    if transposed:
        va, vb = vb.transpose(1, 2), va.transpose(1, 2)
    kblocks, m, _ = va.shape
    ncols = vb.shape[2]
    acc = torch.empty(m, ncols, dtype=torch.float32)
    if not f32:
        va, vb = va.double(), vb.double()
    if kblocks > 1 and min(m, exact._ROW_ELEMENTS // ncols) * ncols >= exact._LOOP_MIN_ELEMENTS:
        rows = min(m, exact._ROW_ELEMENTS // ncols)
        buf = _WORKSPACE.get("products", (rows * ncols,), va.dtype)
        out32 = _WORKSPACE.get("products32", (rows * ncols,)) if not f32 else None
        for r0 in range(0, m, rows):
            r1 = min(m, r0 + rows)
            acc_t = acc[r0:r1] if rows < m else acc
            products = buf[:(r1 - r0) * ncols].view(r1 - r0, ncols)
            for kb in range(kblocks):
                p = torch.mm(va[kb, r0:r1], vb[kb], out=products)
                if not f32:
                    p = out32[:p.numel()].view(p.shape).copy_(p)      # the one RNE rounding
                if kb:
                    _add_(acc_t, p)
                else:
                    _start_(acc_t, p)
        return acc.t().contiguous() if transposed else acc
    rows, chunk = exact._tiles(m, ncols, kblocks)
    buf = _WORKSPACE.get("products", (chunk * rows * ncols,), va.dtype)
    out32 = None if f32 else _WORKSPACE.get("products32", (chunk * rows * ncols,))
    for r0 in range(0, m, rows):
        r1 = min(m, r0 + rows)
        acc_t = acc[r0:r1] if rows < m else acc
        for k0 in range(0, kblocks, chunk):
            k1 = min(kblocks, k0 + chunk)
            shape = (k1 - k0, r1 - r0, ncols)
            out = buf[:shape[0] * shape[1] * ncols].view(shape)
            if rows < m or chunk < kblocks:
                products = torch.bmm(va[k0:k1, r0:r1], vb[k0:k1], out=out)
            else:
                products = torch.bmm(va, vb, out=out)
            if not f32:
                # Exact in float64; the cast is the single RNE rounding to FP32.
                products = out32[:products.numel()].view(shape).copy_(products)
            if k0 == 0:
                _start_(acc_t, products[0])
                products = products[1:]
            if products.shape[0]:
                exact._accumulate_(acc_t, products)
    return acc.t().contiguous() if transposed else acc


def _start_(acc, products):
    """``acc = +0.0 + products``: the contract's sum from +0.0 (turns -0.0 into +0.0 and
    changes nothing else). BLAS kernels start their sums from +0.0 too, so a block product is
    not -0.0 in practice, but nothing promises that."""
    torch.add(products, 0.0, out=acc)


def _add_(acc, products):
    """``acc += products`` in float32 (one IEEE addition per element)."""
    acc.add_(products)


def _gemm_fast(a, b, fmt):
    """The fast path of :func:`gemm` (not stochastic); ``None`` where it does not apply."""
    c = _fast_format(fmt)
    qa = _FastOperand(a, c, "a")
    qb = _FastOperand(b.t(), c, "b")
    if (max(qa.e_raw, qb.e_raw) > c.emax or c.f - max(qa.e_hi, qb.e_hi) < -_KMAX
            or c.f - min(qa.e_lo, qb.e_lo) > _KMAX):
        return None
    grid_lo, grid_hi = qa.e_lo + qb.e_lo - 2 * c.f, qa.e_hi + qb.e_hi - 2 * c.f
    # float32 products are exact when N*M^2 <= 2^24 and the exponents keep the product grid
    # >= 2^-149 and every partial sum <= FLT_MAX; otherwise float64 (always exact).
    f32 = (c.bound <= 1 << 24 and grid_lo >= -149 and grid_hi <= exact._f32_max_grid(fmt)
           and exact._f32_matmul_is_ieee())
    va = qa.values(c)
    va = va.transpose(0, 1) if qa.axis == 2 else va.transpose(1, 2)        # [KB, M, N]
    vb = qb.values(c)
    vb = vb.permute(1, 2, 0) if qb.axis == 2 else vb                      # [KB, N, Ncols]
    acc = _fast_products(va, vb, f32)
    if qa.nan is not None:
        acc[qa.nan_lines()] = float("nan")
    if qb.nan is not None:
        acc[:, qb.nan_lines()] = float("nan")
    # With every |partial sum| far below FLT_MAX no Inf, and so no NaN, can appear.
    if (qa.nan is not None or qb.nan is not None
            or grid_hi + (c.bound * va.shape[0]).bit_length() >= 126):
        acc = torch.where(torch.isnan(acc), exact._canonical_nan(), acc)
    return acc

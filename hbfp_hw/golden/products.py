"""HBFP GEMM, bit-exact with docs/numerics.md section 3.3, fast enough to check millions of
vectors and to back the PyTorch emulation.

The block products of one k-block are computed for a whole tile of ``C`` with one BLAS call on
the dequantized operands, in the cheapest arithmetic that is provably exact for that k-block
(see numerics.md, "How the golden model stays exact and fast"). The FP32 accumulation over
k-blocks is an explicit loop in increasing ``kb`` order.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import ThreadpoolController

from hbfp_hw.formats import resolve_format
from hbfp_hw.golden import prng
from hbfp_hw.golden.arith import CANONICAL_NAN, canonicalize_nan
from hbfp_hw.golden.quantizer import (
    BFPTensor,
    _quantize_core,
    _random_for,
    _scale,
    check_float_input,
)

__all__ = ["gemm", "gemm_quantized", "float32_blas_exact"]

_FLT_MAX = float(np.finfo(np.float32).max)
# Elements of C per tile: the tile of C and one k-block product fit in L2 together.
_TILE_ELEMENTS = 1 << 16
# Below this many multiply-adds a thread pool costs more than it saves.
_PARALLEL_MIN_WORK = 1 << 22


_controller = None


def _single_threaded_blas():
    """Context manager limiting BLAS to one thread (the controller is created once: scanning
    the loaded libraries costs milliseconds)."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


def float32_blas_exact(fmt):
    """Return whether every block dot product of ``fmt`` is an integer below ``2**24``.

    Then a float32 BLAS call sums block products exactly, in any order, with or without FMA,
    provided the exponents keep the products in float32's range (checked per k-block).
    """
    fmt = resolve_format(fmt)
    return fmt.block_size * fmt.max_mantissa ** 2 <= 1 << 24


def _exponent_range(exps, nonzero):
    """Per k-block (min, max) exponent over the blocks that may be nonzero."""
    e = exps.astype(np.int32)
    lo = np.where(nonzero, e, 1 << 20).min(axis=0)
    hi = np.where(nonzero, e, -(1 << 20)).max(axis=0)
    return lo, hi, nonzero.any(axis=0)


def gemm_quantized(qa, qb):
    """Return the HBFP product of already-quantized operands.

    Parameters
    ----------
    qa : BFPTensor
        ``A`` quantized along K: exponents ``[M, KB]``, mantissas ``[M, KB, N]``.
    qb : BFPTensor
        ``B`` quantized along K: exponents ``[Ncols, KB]``, mantissas ``[Ncols, KB, N]``
        (i.e. ``quantize(B, fmt, axis=0)``).

    Returns
    -------
    numpy.ndarray of float32, shape ``[M, Ncols]``
    """
    for name, t in (("qa", qa), ("qb", qb)):
        if not isinstance(t, BFPTensor) or t.exponents.ndim != 2:
            raise TypeError(f"{name} must be a BFPTensor with a 2-D block grid")
    if qa.fmt != qb.fmt:
        raise ValueError(f"qa and qb must have the same format, not {qa.fmt.name} and "
                         f"{qb.fmt.name}")
    if qa.nblocks != qb.nblocks:
        raise ValueError(f"qa and qb must have the same number of k-blocks, not {qa.nblocks} "
                         f"and {qb.nblocks}")
    sides = []
    for q in (qa, qb):
        nan = q.nan_mask
        nonzero = np.any(q.mantissas != 0, axis=-1) & ~nan
        vals = q.mantissas.astype(np.float32) * q.scales()[..., None]
        sides.append((vals, q.exponents, nonzero, nan))
    (a_vals, *a_rest), (b_vals, *b_rest) = sides
    # B's values as [KB, N, Ncols]: one contiguous slab per k-block.
    b_vals = np.ascontiguousarray(b_vals.transpose(1, 2, 0))
    return _gemm_core(qa.fmt, (a_vals, *a_rest), (b_vals, *b_rest))


def _gemm_core(fmt, a_side, b_side):
    """Accumulate the block products of dequantized operands.

    ``a_side = (values [M, KB, N], exponents [M, KB], nonzero, nan)`` and
    ``b_side = (values [KB, N, Ncols], exponents [Ncols, KB], nonzero, nan)``; ``values`` are
    the exact float32 dequantized mantissas, 0 in NaN blocks.
    """
    a_vals, a_exp, a_nz, a_nan = a_side
    b_vals, b_exp, b_nz, b_nan = b_side
    m, kblocks, _ = a_vals.shape
    n = b_vals.shape[2]

    # Per k-block choice of arithmetic: float32 when provably exact, else float64.
    a_lo, a_hi, a_any = _exponent_range(a_exp, a_nz)
    b_lo, b_hi, b_any = _exponent_range(b_exp, b_nz)
    grid_lo = a_lo + b_lo - 2 * fmt.fraction_bits
    grid_hi = a_hi + b_hi - 2 * fmt.fraction_bits
    bound = float(fmt.block_size * fmt.max_mantissa ** 2)
    with np.errstate(over="ignore"):
        in_range = (grid_lo >= -149) & (bound * np.ldexp(1.0, grid_hi) <= _FLT_MAX)
    use_f32 = float32_blas_exact(fmt) & in_range
    # Where no block pair of a k-block can be nonzero every product is 0, and adding a zero
    # never changes C (which never holds -0.0).
    active = np.flatnonzero(a_any & b_any)

    acc = np.zeros((m, n), dtype=np.float32)
    rows = max(1, min(m, _TILE_ELEMENTS // max(n, 1)))
    tiles = [(r0, min(m, r0 + rows)) for r0 in range(0, m, rows)]

    def run_tile(tile):
        r0, r1 = tile
        acc_t = acc[r0:r1]
        out32 = np.empty((r1 - r0, n), dtype=np.float32)
        out64 = None
        with np.errstate(over="ignore", invalid="ignore"):
            for kb in active:
                if use_f32[kb]:
                    np.matmul(a_vals[r0:r1, kb], b_vals[kb], out=out32)
                else:
                    if out64 is None:
                        out64 = np.empty((r1 - r0, n), dtype=np.float64)
                    np.matmul(a_vals[r0:r1, kb].astype(np.float64),
                              b_vals[kb].astype(np.float64), out=out64)
                    out32[...] = out64          # the single RNE rounding to FP32
                np.add(acc_t, out32, out=acc_t)

    # Tiles are independent; numpy releases the GIL in BLAS and ufunc loops. BLAS itself is
    # kept single-threaded: its threading costs more than it gains on these thin GEMMs.
    workers = min(len(tiles), os.cpu_count() or 1)
    with _single_threaded_blas():
        if workers > 1 and len(active) * m * n >= _PARALLEL_MIN_WORK:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(run_tile, tiles))
        else:
            for tile in tiles:
                run_tile(tile)

    nan_rows = a_nan.any(axis=1)
    nan_cols = b_nan.any(axis=1)
    if nan_rows.any() or nan_cols.any():
        acc[nan_rows, :] = CANONICAL_NAN
        acc[:, nan_cols] = CANONICAL_NAN
    return canonicalize_nan(acc)


def _padded(x, axis, n):
    """Zero-pad ``axis`` of ``x`` to a multiple of ``n``."""
    pad = -x.shape[axis] % n
    if not pad:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return np.pad(x, widths)


def _operand_a(a, fmt, seed):
    """Quantize ``A [M, K]`` along K into values ``[M, KB, N]`` plus per-block info."""
    m = a.shape[0]
    blocks = _padded(a, 1, fmt.block_size).reshape(m, -1, fmt.block_size)
    exps, nvals, k, nonzero = _quantize_core(blocks, fmt, _random_for(blocks.shape, fmt, seed))
    with np.errstate(under="ignore"):
        vals = _scale(nvals, -k)
    return vals, exps[..., 0], nonzero[..., 0], exps[..., 0] == fmt.nan_exponent


def _operand_b(b, fmt, seed):
    """Quantize ``B [K, Ncols]`` along K into values ``[KB, N, Ncols]`` plus block info."""
    ncols = b.shape[1]
    blocks = _padded(b, 0, fmt.block_size).reshape(-1, fmt.block_size, ncols)
    # The contract numbers B's blocks (column, k-block); lanes run along the block.
    rand = _random_for((ncols, blocks.shape[0], fmt.block_size), fmt, seed)
    if rand is not None:
        rand = rand.transpose(1, 2, 0)
    exps, nvals, k, nonzero = _quantize_core(blocks, fmt, rand, axis=1)
    with np.errstate(under="ignore"):
        vals = _scale(nvals, -k)
    exps, nonzero = exps[:, 0].T, nonzero[:, 0].T                 # [Ncols, KB]
    return vals, exps, nonzero, exps == fmt.nan_exponent


def gemm(a, b, fmt, seed=None, input_format="fp32"):
    """HBFP matrix product ``a @ b`` (docs/numerics.md section 3.3).

    Parameters
    ----------
    a : array_like, shape ``[M, K]``
        Quantized along K (rows split into blocks).
    b : array_like, shape ``[K, N]``
        Quantized along K (columns split into blocks).
    fmt : BFPFormat or str
    seed : int or None
        Stochastic rounding only: ``a`` uses ``seed``, ``b`` uses ``(seed + 1) % 2**32``.
    input_format : {"fp32", "bf16"}

    Returns
    -------
    numpy.ndarray of float32, shape ``[M, N]``
    """
    fmt = resolve_format(fmt)
    a = check_float_input(a, "a", input_format)
    b = check_float_input(b, "b", input_format)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"a and b must be 2-D matrices, not of shapes {a.shape} and {b.shape}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"a's columns must equal b's rows (K), not {a.shape[1]} and "
                         f"{b.shape[0]}")
    if min(a.shape + b.shape) < 1:
        raise ValueError(f"M, N and K must be at least 1, not shapes {a.shape} and {b.shape}")
    if seed is None and fmt.rounding.value == "stochastic":
        seed = prng.fresh_seed()
    seed_b = None if seed is None else (prng.check_seed(seed) + 1) % (1 << 32)
    return _gemm_core(fmt, _operand_a(a, fmt, seed), _operand_b(b, fmt, seed_b))

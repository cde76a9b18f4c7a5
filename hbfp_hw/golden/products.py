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

from hbfp_hw.formats import EXACT_MAX_KBLOCKS, Accumulator, as_accumulator, resolve_format
from hbfp_hw.golden import accumulators, posit, prng
from hbfp_hw.golden.arith import (
    CANONICAL_NAN,
    canonicalize_nan,
    check_operand_formats,
    int_dot,
    product_exponent,
    round_int_to_float32,
    to_float32,
)
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


def float32_blas_exact(fmt, fmt_b=None):
    """Return whether every block dot product of ``fmt`` (A's; ``fmt_b`` B's if it differs) is
    an integer below ``2**24``.

    Then a float32 BLAS call sums block products exactly, in any order, with or without FMA,
    provided the exponents keep the products in float32's range (checked per k-block).
    """
    fmt = resolve_format(fmt)
    fmt_b = fmt if fmt_b is None else resolve_format(fmt_b)
    return fmt.block_size * fmt.max_mantissa * fmt_b.max_mantissa <= 1 << 24


def _float64_exact(fa, fb):
    """Whether float64 sums every block product of ``fa`` x ``fb`` exactly, whatever the data:
    all but minifloat elements with 5 exponent bits (E5M2's integers reach 2**32)."""
    return fa.block_size * fa.max_mantissa * fb.max_mantissa <= 1 << 53


def _spans(n, axis, fmt):
    """Per block, ``bit_length(max |n|) - min trailing zeros`` of its nonzero integers ``n``
    (float32 integers on ``fmt``'s grid, elements along ``axis``); 0 for blocks without one.
    A block product of spans ``sa`` and ``sb`` is exact in float64 when
    ``sa + sb <= _span_budget(fmt)``.

    Both come from one bitwise OR of the block's magnitudes: it has the bit length of the
    largest and the trailing zeros of the one with fewest.
    """
    dtype = np.uint32 if fmt.max_mantissa < 1 << 32 else np.uint64
    bits = np.bitwise_or.reduce(np.abs(n).astype(dtype), axis=axis)
    _, top = np.frexp(bits.astype(np.float64))                     # bit length of the OR
    _, low = np.frexp((bits & (~bits + dtype(1))).astype(np.float64))  # its lowest set bit
    return np.where(bits > 0, top - low + 1, 0).astype(np.int32)


def _span_budget(fmt):
    """``53 - ceil(log2 N)``: the most that two blocks' spans (:func:`_spans`) may add up to
    for their product of ``N`` terms to be exact in float64."""
    return 53 - (fmt.block_size - 1).bit_length()


def _exponent_range(exps, nonzero):
    """Per k-block (min, max) exponent over the blocks that may be nonzero."""
    e = exps.astype(np.int32)
    lo = np.where(nonzero, e, 1 << 20).min(axis=0)
    hi = np.where(nonzero, e, -(1 << 20)).max(axis=0)
    return lo, hi, nonzero.any(axis=0)


def gemm_quantized(qa, qb, *, accumulator=None, seed=None):
    """Return the HBFP product of already-quantized operands.

    Parameters
    ----------
    qa : BFPTensor
        ``A`` quantized along K: exponents ``[M, KB]``, mantissas ``[M, KB, N]``.
    qb : BFPTensor
        ``B`` quantized along K: exponents ``[Ncols, KB]``, mantissas ``[Ncols, KB, N]``
        (i.e. ``quantize(B, fmt, axis=0)``). Its format may differ from A's in the elements
        (:func:`~hbfp_hw.golden.arith.check_operand_formats`).
    accumulator : Accumulator, str or None
        Overrides the formats' accumulator (:func:`gemm`).
    seed : int or None
        The GEMM's seed, for the ``bf16-sr`` accumulator only (None: a fresh one).

    Returns
    -------
    numpy.ndarray of float32, shape ``[M, Ncols]``
    """
    for name, t in (("qa", qa), ("qb", qb)):
        if not isinstance(t, BFPTensor) or t.exponents.ndim != 2:
            raise TypeError(f"{name} must be a BFPTensor with a 2-D block grid")
    check_operand_formats(qa.fmt, qb.fmt)
    if qa.nblocks != qb.nblocks:
        raise ValueError(f"qa and qb must have the same number of k-blocks, not {qa.nblocks} "
                         f"and {qb.nblocks}")
    acc = _accumulation(qa.fmt, accumulator, seed, qa.nblocks)
    if qa.fmt.is_posit:
        return posit.quire_gemm(_posit_values(qa), _posit_values(qb).T,
                                (qa.fmt.element, qb.fmt.element))
    sides = []
    spans = not _float64_exact(qa.fmt, qb.fmt)
    for q in (qa, qb):
        nan = q.nan_mask
        nonzero = np.any(q.mantissas != 0, axis=-1) & ~nan
        with np.errstate(over="ignore"):
            vals = q.mantissas.astype(np.float32) * q.scales()[..., None]
        if not np.all(np.isfinite(vals)):
            # Codes from a wire can exceed FP32 (E5M2's largest under the largest scale).
            return _gemm_by_dots(qa, qb, acc)
        span = _spans(q.mantissas, -1, q.fmt) if spans else None
        sides.append((vals, q.exponents, nonzero, nan, span))
    (a_vals, *a_rest), (b_vals, *b_rest) = sides
    # B's values as [KB, N, Ncols]: one contiguous slab per k-block.
    b_vals = np.ascontiguousarray(b_vals.transpose(1, 2, 0))
    return _gemm_core(qa.fmt, qb.fmt, (a_vals, *a_rest), (b_vals, *b_rest), acc)


def _posit_values(q):
    """The values ``[rows, K]`` of a posit BFPTensor quantized along K (float64; NaN
    throughout NaN blocks)."""
    v = posit.decode(q.mantissas, q.fmt.element)
    v = np.where(q.nan_mask[..., None], np.nan, v)
    return v.reshape(v.shape[0], -1)


def _accumulation(fmt, accumulator, seed, kblocks):
    """``(accumulator, its seed)`` of a GEMM in ``fmt`` with ``kblocks`` k-blocks: the
    format's, or ``accumulator`` where given (a different explicit one in the format is an
    error); the seed only for ``bf16-sr`` (None draws a fresh one)."""
    acc = fmt.accumulator
    if accumulator is not None:
        given = as_accumulator(accumulator)
        if acc is not Accumulator.FP32 and given is not acc:
            raise ValueError(f"accumulator={given.value!r} conflicts with the format's "
                             f"accumulator {acc.value!r} ({fmt.name}); give one of them")
        acc = given
    if acc is Accumulator.EXACT and kblocks > EXACT_MAX_KBLOCKS:
        raise ValueError(f"the exact accumulator sums at most {EXACT_MAX_KBLOCKS} k-blocks "
                         f"(K up to {EXACT_MAX_KBLOCKS * fmt.block_size}), not {kblocks}")
    if not acc.stochastic:
        return acc, None
    return acc, prng.fresh_seed() if seed is None else prng.check_seed(seed)


def _gemm_by_dots(qa, qb, acc):
    """``gemm_quantized`` through exact integer block dot products, one k-block at a time."""
    rows = (0, qa.exponents.shape[0])
    state = accumulators.start(acc[0], (qa.fmt, qb.fmt), rows, qb.exponents.shape[0],
                               qa.nblocks, acc[1])
    nan_any = np.zeros((rows[1], qb.exponents.shape[0]), dtype=bool)
    for kb in range(qa.nblocks):
        s = int_dot(qa.mantissas[:, None, kb, :], qb.mantissas[None, :, kb, :])
        ep, nan = product_exponent(qa.exponents[:, None, kb], qb.exponents[None, :, kb],
                                   qa.fmt, qb.fmt)
        nan_any |= nan
        if state.exact:
            _add_exact_ints(state, kb, np.where(nan, 0, s), ep)
        else:
            state.add(kb, to_float32(s, ep, nan))
    return canonicalize_nan(np.where(nan_any, CANONICAL_NAN, state.result()))


def _add_exact_ints(state, kb, s, e):
    """Add the exact integers ``s * 2**e`` (int64, or Python ints of any size) to the exact
    accumulator ``state``, in pieces of 48 bits."""
    s = np.asarray(s)
    e = np.broadcast_to(np.asarray(e, dtype=np.int64), s.shape)
    if s.dtype != object and not np.any(np.abs(s) >= 1 << 53):
        state.add_exact(kb, s.astype(np.int64), e)
        return
    rest = [int(v) for v in s.ravel()]
    shift = 0
    while any(rest):
        piece = [(1 if v > 0 else -1) * (abs(v) & ((1 << 48) - 1)) for v in rest]
        state.add_exact(kb, np.array(piece, dtype=np.int64).reshape(s.shape), e + shift)
        rest = [(1 if v > 0 else -1) * (abs(v) >> 48) for v in rest]
        shift += 48


def _exact_pairs(fa, fb, a_side, b_side, kb, rows):
    """The block pairs of k-block ``kb`` (rows ``rows`` of C) whose block products float64
    might round: ``(i, j, s, e)`` with the exact product ``s * 2**e`` (a Python int ``s``)."""
    a_vals, a_exp, _, _, a_span = a_side
    b_vals, b_exp, _, _, b_span = b_side
    sa = a_span[rows, kb].astype(np.int64)
    sb = b_span[:, kb].astype(np.int64)
    r0 = rows.start
    for i, j in zip(*np.nonzero(sa[:, None] + sb[None, :] > _span_budget(fa))):
        ea, eb = int(a_exp[r0 + i, kb]), int(b_exp[j, kb])
        # the elements' integers back from their exact values
        na = np.ldexp(a_vals[r0 + i, kb].astype(np.float64), fa.fraction_bits - ea)
        nb = np.ldexp(b_vals[kb, :, j].astype(np.float64), fb.fraction_bits - eb)
        yield (i, j, int_dot(na.astype(np.int64), nb.astype(np.int64)),
               ea + eb - fa.fraction_bits - fb.fraction_bits)


def _gemm_core(fa, fb, a_side, b_side, acc=(Accumulator.FP32, None)):
    """Accumulate the block products of dequantized operands (A's format ``fa``, B's ``fb``).

    ``a_side = (values [M, KB, N], exponents [M, KB], nonzero, nan, spans)`` and
    ``b_side = (values [KB, N, Ncols], exponents [Ncols, KB], nonzero, nan, spans)``;
    ``values`` are the exact float32 dequantized mantissas, 0 in NaN blocks; ``spans``
    (:func:`_spans`, ``[M, KB]`` and ``[Ncols, KB]``) are needed only when float64 is not
    always exact (:func:`_float64_exact`), else ``None``. ``acc`` is ``(accumulator, its
    seed)`` (:func:`_accumulation`).
    """
    a_vals, a_exp, a_nz, a_nan, _ = a_side
    b_vals, b_exp, b_nz, b_nan, _ = b_side
    m, kblocks, _ = a_vals.shape
    n = b_vals.shape[2]
    kind, acc_seed = acc
    exact_sum = kind is Accumulator.EXACT

    # Per k-block choice of arithmetic: float32 when provably exact, else float64, checked
    # per block pair for the widest minifloat elements (and Python integers where it fails).
    # The exact accumulator takes float64 values (exact, and never beyond its range).
    a_lo, a_hi, a_any = _exponent_range(a_exp, a_nz)
    b_lo, b_hi, b_any = _exponent_range(b_exp, b_nz)
    grid_lo = a_lo + b_lo - fa.fraction_bits - fb.fraction_bits
    grid_hi = a_hi + b_hi - fa.fraction_bits - fb.fraction_bits
    bound = float(fa.block_size * fa.max_mantissa * fb.max_mantissa)
    with np.errstate(over="ignore"):
        in_range = (grid_lo >= -149) & (bound * np.ldexp(1.0, grid_hi) <= _FLT_MAX)
    use_f32 = float32_blas_exact(fa, fb) & in_range & (not exact_sum)
    # k-blocks where some block pair might not be exact in float64 (wide minifloat elements)
    checked = np.zeros(kblocks, dtype=bool)
    if not _float64_exact(fa, fb):
        checked = a_side[4].max(axis=0) + b_side[4].max(axis=0) > _span_budget(fa)
    # Where no block pair of a k-block can be nonzero every product is 0: an accumulator that
    # is unchanged by adding +0 (all but Kahan's) skips it (C never holds -0.0).
    active = np.flatnonzero(a_any & b_any)

    out = np.zeros((m, n), dtype=np.float32)
    rows = max(1, min(m, _TILE_ELEMENTS // max(n, 1)))
    tiles = [(r0, min(m, r0 + rows)) for r0 in range(0, m, rows)]
    # B's k-block slabs in float64 once, not once per tile, where some k-block needs them.
    wide = ~use_f32[active]
    b64 = None
    if wide.any() and len(tiles) > 1:
        b64 = {int(kb): b_vals[kb].astype(np.float64) for kb in active[wide]}

    def run_tile(tile):
        r0, r1 = tile
        state = accumulators.start(kind, (fa, fb), tile, n, kblocks, acc_seed, out[r0:r1])
        out32 = np.empty((r1 - r0, n), dtype=np.float32)
        out64 = None
        is_active = np.zeros(kblocks, dtype=bool)
        is_active[active] = True
        with np.errstate(over="ignore", invalid="ignore"):
            for kb in (range(kblocks) if state.every_kblock else active):
                if not is_active[kb]:
                    out32.fill(0)
                elif use_f32[kb]:
                    np.matmul(a_vals[r0:r1, kb], b_vals[kb], out=out32)
                else:
                    if out64 is None:
                        out64 = np.empty((r1 - r0, n), dtype=np.float64)
                    np.matmul(a_vals[r0:r1, kb].astype(np.float64),
                              b_vals[kb].astype(np.float64) if b64 is None else b64[int(kb)],
                              out=out64)
                    if exact_sum:
                        _add_exact_values(state, kb, out64, fa, fb, a_side, b_side,
                                          slice(r0, r1) if checked[kb] else None)
                        continue
                    out32[...] = out64          # the single RNE rounding to FP32
                    if checked[kb]:
                        for i, j, s, e in _exact_pairs(fa, fb, a_side, b_side, kb,
                                                       slice(r0, r1)):
                            out32[i, j] = round_int_to_float32(s, e)
                state.add(kb, out32)
        result = state.result()
        if result.base is not out:
            out[r0:r1] = result

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
        out[nan_rows, :] = CANONICAL_NAN
        out[:, nan_cols] = CANONICAL_NAN
    return canonicalize_nan(out)


def _add_exact_values(state, kb, values, fa, fb, a_side, b_side, rows):
    """Add k-block ``kb``'s exact block products, float64 ``values`` of a tile, to the exact
    accumulator; with ``rows`` (the tile's rows of a checked k-block) the pairs float64 might
    round are taken from Python integers instead."""
    if rows is not None:
        fixes = list(_exact_pairs(fa, fb, a_side, b_side, kb, rows))
        for i, j, _, _ in fixes:
            values[i, j] = 0
    state.add_values(kb, values)
    if rows is not None:
        for i, j, s, e in fixes:
            one = np.zeros(values.shape, dtype=object)
            one[i, j] = s
            _add_exact_ints(state, kb, one, e)


def _padded(x, axis, n):
    """Zero-pad ``axis`` of ``x`` to a multiple of ``n``."""
    pad = -x.shape[axis] % n
    if not pad:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return np.pad(x, widths)


def _operand_a(a, fmt, seed, spans):
    """Quantize ``A [M, K]`` along K into values ``[M, KB, N]`` plus per-block info."""
    m = a.shape[0]
    blocks = _padded(a, 1, fmt.block_size).reshape(m, -1, fmt.block_size)
    exps, nvals, k, nonzero = _quantize_core(blocks, fmt, _random_for(blocks.shape, fmt, seed))
    with np.errstate(under="ignore"):
        vals = _scale(nvals, -k)
    span = _spans(nvals, -1, fmt) if spans else None
    return vals, exps[..., 0], nonzero[..., 0], exps[..., 0] == fmt.nan_exponent, span


def _operand_b(b, fmt, seed, spans):
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
    span = _spans(nvals, 1, fmt).T if spans else None     # [Ncols, KB]
    exps, nonzero = exps[:, 0].T, nonzero[:, 0].T                 # [Ncols, KB]
    return vals, exps, nonzero, exps == fmt.nan_exponent, span


def _operand_formats(fmt):
    """``(A's format, B's format)`` from one format, a preset name, or a pair of them."""
    if isinstance(fmt, (tuple, list)):
        if len(fmt) != 2:
            raise ValueError(f"fmt must be a format or a pair (A's, B's), not {len(fmt)} items")
        fa, fb = resolve_format(fmt[0]), resolve_format(fmt[1])
    else:
        fa = fb = resolve_format(fmt)
    check_operand_formats(fa, fb)
    return fa, fb


def gemm(a, b, fmt, seed=None, input_format="fp32", *, accumulator=None):
    """HBFP matrix product ``a @ b`` (docs/numerics.md section 3.3).

    Parameters
    ----------
    a : array_like, shape ``[M, K]``
        Quantized along K (rows split into blocks).
    b : array_like, shape ``[K, N]``
        Quantized along K (columns split into blocks).
    fmt : BFPFormat or str, or a pair of them
        One format for both operands, or ``(A's, B's)``: they may differ in the elements
        (A in ``mxfp8_e4m3``, B in ``mxfp8_e5m2``) and the rounding, not in the block size or
        the shared exponent's width.
    seed : int or None
        Stochastic rounding only: ``a`` uses ``seed``, ``b`` uses ``(seed + 1) % 2**32`` and
        the ``bf16-sr`` accumulator ``seed ^ 0x6A09E667`` (numerics.md 6.3). None draws a
        fresh one when something rounds stochastically.
    input_format : {"fp32", "bf16"}
    accumulator : Accumulator, str or None
        How the block products are summed over K (docs/numerics.md section 6): ``"fp32"``,
        ``"fp32-kahan"``, ``"bf16-rne"``, ``"bf16-sr"`` or ``"exact"``; None: the format's
        (``fmt.accumulator``, default ``"fp32"``). Giving one that differs from an explicit
        non-default accumulator of the format is an error.

    Returns
    -------
    numpy.ndarray of float32, shape ``[M, N]``
    """
    fa, fb = _operand_formats(fmt)
    a = check_float_input(a, "a", input_format)
    b = check_float_input(b, "b", input_format)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"a and b must be 2-D matrices, not of shapes {a.shape} and {b.shape}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"a's columns must equal b's rows (K), not {a.shape[1]} and "
                         f"{b.shape[0]}")
    if min(a.shape + b.shape) < 1:
        raise ValueError(f"M, N and K must be at least 1, not shapes {a.shape} and {b.shape}")
    if fa.is_posit:
        _accumulation(fa, accumulator, None, 1)             # only "exact" agrees
        return posit.quire_gemm(posit.decode(posit.encode(a, fa.element), fa.element),
                                posit.decode(posit.encode(b, fb.element), fb.element),
                                (fa.element, fb.element))
    if seed is None and "stochastic" in (fa.rounding.value, fb.rounding.value):
        seed = prng.fresh_seed()
    acc = _accumulation(fa, accumulator, seed, -(-a.shape[1] // fa.block_size))
    if seed is None:
        seed = acc[1]                 # a fresh seed drawn for a stochastic accumulator only
    seed_b = None if seed is None else (prng.check_seed(seed) + 1) % (1 << 32)
    spans = not _float64_exact(fa, fb)
    return _gemm_core(fa, fb, _operand_a(a, fa, seed, spans),
                      _operand_b(b, fb, seed_b, spans), acc)

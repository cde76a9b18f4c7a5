"""Exactness primitives shared by the two paths of the emulate backend (:mod:`.emulate`,
:mod:`.emulate_fast`): when float32 products are exact (:func:`_f32_max_grid`,
:func:`_f32_matmul_is_ieee`), the canonical NaN, and the sequential float32 accumulation of the
k-block products (:func:`_accumulate_`, checked once per process by
:func:`_accumulation_is_sequential`) with the tile sizes of the bmm calls (:func:`_tiles`).
The names are private to the package :mod:`hbfp_hw.torch`; both paths look them up through
this module, so that a test can replace one for both."""

from __future__ import annotations

import functools
from fractions import Fraction

import torch

from hbfp_hw.formats import CANONICAL_NAN_BITS

_ABS_MASK = 0x7FFFFFFF
_INF_BITS = 0x7F800000
# Block products computed per bmm call: a chunk of k-blocks times a tile of rows of C. Small
# enough to stay in cache for the sequential accumulation that follows.
_SINGLE_CALL_ELEMENTS = 1 << 20
_CHUNK_ELEMENTS = 1 << 18
_ROW_ELEMENTS = 1 << 17
#: Row tiles of at least this many elements of C go k-block by k-block (see _fast_products).
_LOOP_MIN_ELEMENTS = 1 << 14


def _f32_matmul_is_ieee():
    """Whether float32 matmuls are plain IEEE float32 (no TF32/BF16 shortcuts), in both the
    legacy (``set_float32_matmul_precision``) and the per-backend ``fp32_precision`` API."""
    cuda_matmul = getattr(getattr(torch.backends, "cuda", None), "matmul", None)
    for backend in (torch.backends, getattr(torch.backends, "mkldnn", None),
                    getattr(getattr(torch.backends, "mkldnn", None), "matmul", None),
                    cuda_matmul):
        if getattr(backend, "fp32_precision", "none") not in ("none", "ieee"):
            return False
    if getattr(cuda_matmul, "allow_tf32", False):
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
    """``acc += products[0]; acc += products[1]; ...`` in float32, in this order.

    On the CPU one ``index_add_`` (checked to add in index order); elsewhere (e.g. CUDA,
    whose ``index_add_`` uses atomic adds in no fixed order) one ``add_`` per k-block.
    """
    if acc.device.type == "cpu" and _accumulation_is_sequential():
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

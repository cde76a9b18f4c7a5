"""The fused C kernel of the emulate backend: its build, its threads, and its fallbacks.

Its numerics are tested with the rest of the emulate backend: test_emulate.py runs every
fast-path test on the kernel and on the torch path, and test_emulate_mutants.py shows that
broken variants of the kernel are caught."""

import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch

from hbfp_hw import golden
from hbfp_hw.formats import BFPFormat, Rounding
from hbfp_hw.torch import emulate, exact, native

from .helpers import clustered, same_bits


def _golden(a, b, fmt):
    return golden.gemm(np.ascontiguousarray(a.numpy()), np.ascontiguousarray(b.numpy()), fmt)


def test_kernel_builds_where_a_compiler_exists():
    assert native.available(), f"the fused kernel did not build: {native._error}"


@pytest.mark.parametrize("fmt", [BFPFormat(8, 16), BFPFormat(4, 8, Rounding.TOWARD_ZERO),
                                 BFPFormat(12, 32)], ids=lambda f: f.name)
def test_threads_give_the_same_bits(fmt):
    """Above the threading threshold the tiles are shared among threads: same bits as one
    thread, as the torch path and as the golden model (float32 and float64 products)."""
    rng = np.random.default_rng(zlib.crc32(fmt.name.encode()))
    m, k, n = 150, 16 * 7 + 3, 140
    assert m * n * k >= native._THREAD_MIN_MACS
    a, b = clustered(rng, (m, k), lo=-20, hi=20), clustered(rng, (k, n), lo=-20, hi=20)
    ref = _golden(a, b, fmt)
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(emulate.gemm(a, b, fmt))
    finally:
        torch.set_num_threads(before)
    with native.enabled(False):
        outs.append(emulate.gemm(a, b, fmt))
    for out in outs:
        assert same_bits(out, ref)


def test_expanded_and_offset_operands():
    """Stride-0 (broadcast) operands and views that start inside their storage."""
    rng = np.random.default_rng(3)
    fmt = BFPFormat(8, 16)
    row = clustered(rng, (1, 40))
    a = row.expand(7, 40)                           # every row the same, stride 0
    base = clustered(rng, (50, 30))
    b = base[10:, 5:14]                             # storage offset, strided rows
    assert a.stride(0) == 0 and b.storage_offset() > 0
    assert same_bits(emulate.gemm(a, b, fmt), _golden(a, b, fmt))


def test_not_fast_operands_take_the_general_path(monkeypatch):
    """The kernel declines blocks at the ends of the exponent range; the result is still
    exact (from the general path) and C is computed once."""
    rng = np.random.default_rng(4)
    fmt = BFPFormat(8, 16)
    a = clustered(rng, (9, 48), lo=-140, hi=-130, spread=2)
    b = clustered(rng, (48, 7), lo=-10, hi=0, spread=2)
    assert native.fused_gemm(a, b, fmt, True, exact._f32_max_grid(fmt)) is native.NOT_FAST
    general = []
    real = emulate._gemm_general
    monkeypatch.setattr(emulate, "_gemm_general",
                        lambda *args: general.append(1) or real(*args))
    assert same_bits(emulate.gemm(a, b, fmt), _golden(a, b, fmt))
    assert general == [1]


def test_build_failure_warns_and_falls_back(monkeypatch, tmp_path):
    """Without a working compiler the backend warns once and uses the torch path: same bits."""
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_error", None)
    monkeypatch.setenv("HBFP_HW_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")
    rng = np.random.default_rng(5)
    a, b = clustered(rng, (6, 33)), clustered(rng, (33, 5))
    with pytest.warns(RuntimeWarning, match="fused C kernel .* not available"):
        out = emulate.gemm(a, b, "bfp8")
    assert same_bits(out, _golden(a, b, BFPFormat(8, 16)))
    assert not native.available()
    assert same_bits(emulate.gemm(a, b, "bfp8"), out)     # no second warning (errors here)


def test_build_is_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("HBFP_HW_CACHE", str(tmp_path))
    native._build()
    (lib,) = (tmp_path / "native").glob("fused-*.so")
    stamp = lib.stat().st_mtime_ns
    native._build()
    assert [p.name for p in (tmp_path / "native").iterdir()] == [lib.name]
    assert lib.stat().st_mtime_ns == stamp


def test_environment_switch_turns_it_off():
    code = ("from hbfp_hw.torch import native, emulate; import torch;"
            "assert not native.available();"
            "emulate.gemm(torch.ones(2, 3), torch.ones(3, 2), 'bfp8')")
    env = {**os.environ, "HBFP_HW_NATIVE": "0"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)


def _batch(rng, groups, m, k, n):
    """G GEMMs of clustered data; GEMM 1 has exponents at the bottom of the range, which the
    kernel leaves to the general path. ``a`` is a transposed view, ``b`` is contiguous."""
    a = torch.stack([clustered(rng, (k, m), lo=-20, hi=20) for _ in range(groups)])
    a[1] = clustered(rng, (k, m), lo=-140, hi=-130, spread=2)
    b = torch.stack([clustered(rng, (k, n), lo=-20, hi=20) for _ in range(groups)])
    return a.transpose(1, 2), b


@pytest.mark.parametrize("shape", [(19, 16 * 3 + 5, 11), (1, 16 * 6 + 4, 9), (9, 1, 40)],
                         ids=["tiles", "dot-weight-gradient", "k1"])
@pytest.mark.parametrize("fmt", [BFPFormat(8, 16), BFPFormat(4, 8, Rounding.TOWARD_ZERO),
                                 BFPFormat(8, 16, Rounding.STOCHASTIC)],
                         ids=lambda f: f.name)
def test_batched_kernel_is_each_gemm(fmt, shape, monkeypatch):
    """One call for a batch of GEMMs: every GEMM bit for bit the golden model's with its own
    seed, on one thread and split across threads, with the kernel and without; the GEMM with
    extreme exponents (and only it) goes to the general path. The shapes take the kernel's
    tiles, its dot path (one row against a few columns: a depthwise convolution's weight
    gradient) and a K of one (its input gradient)."""
    rng = np.random.default_rng(zlib.crc32(fmt.name.encode()))
    m, k, n = shape
    a, b = _batch(rng, 6, m, k, n)
    assert not a.is_contiguous() or 1 in (m, k)
    seeds = [int(s) for s in rng.integers(0, 1 << 32, size=6)]
    refs = [golden.gemm(np.ascontiguousarray(a[g].numpy()), b[g].numpy(), fmt, seed=seeds[g])
            for g in range(6)]
    backend = emulate.EmulateBackend()
    general = []
    real = emulate._gemm_general
    monkeypatch.setattr(emulate, "_gemm_general",
                        lambda *args: general.append(1) or real(*args))
    monkeypatch.setattr(native, "_THREAD_MIN_MACS", 1)       # split the batch across threads
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 4):
            torch.set_num_threads(threads)
            outs.append(backend.gemm_batched(a, b, fmt, seeds))
    finally:
        torch.set_num_threads(before)
    assert general == [1, 1, 1]
    with native.enabled(False):
        outs.append(backend.gemm_batched(a, b, fmt, seeds))
    for out in outs:
        assert out.shape == (6, m, n)
        for g in range(6):
            assert same_bits(out[g], refs[g]), f"GEMM {g}"


def test_batched_kernel_strides():
    """Broadcast operands (stride 0 between GEMMs and within one) and offset views."""
    rng = np.random.default_rng(6)
    fmt = BFPFormat(8, 16)
    a = clustered(rng, (1, 5, 40)).expand(4, 5, 40)
    base = clustered(rng, (4, 50, 30))
    b = base[:, 10:, 5:14]
    assert a.stride(0) == 0 and b.storage_offset() > 0
    c, todo = native.fused_gemm_batched(a, b, fmt, True, exact._f32_max_grid(fmt))
    assert todo == []
    for g in range(4):
        assert same_bits(c[g], _golden(a[g], b[g], fmt))

"""The fused C kernel of the emulate backend's fast path (``_fused.c``).

One call quantizes both operands, computes the block products and accumulates them into C in
FP32, k-block after k-block: the work that the torch fast path of :mod:`.emulate` spreads over
some 30 torch and numpy calls and several passes over memory. ``_fused.c`` explains why it is
bit-exact with :func:`hbfp_hw.golden.gemm`; the tests compare it with the golden model and with
the torch path.

The kernel is compiled with the system C compiler (``$CC``, else ``cc`` or ``gcc``) on first
use, with ``-O3 -march=native``, into ``$HBFP_HW_CACHE/native`` (default
``~/.cache/hbfp-hw/native``), named by a hash of the source, the flags, the compiler and the
CPU; later processes load it from there. Without a compiler, or with ``HBFP_HW_NATIVE=0`` in
the environment, the emulate backend uses its torch path, which gives the same bits, more
slowly (one ``RuntimeWarning`` says why when a build fails).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import tempfile
import threading
import warnings
from pathlib import Path

import torch

from hbfp_hw.formats import Rounding
from hbfp_hw.tools import process
from hbfp_hw.tools.cache import cache_root

__all__ = ["available", "fused_gemm", "fused_gemm_batched", "enabled", "NOT_FAST"]

_SOURCE = Path(__file__).with_name("_fused.c")
_FLAGS = ("-std=gnu11", "-O3", "-march=native", "-ffp-contract=fast", "-fno-math-errno",
          "-fPIC", "-shared", "-pthread")
#: GEMMs with fewer multiply-accumulates run on one thread (starting threads costs more).
_THREAD_MIN_MACS = 1 << 21
#: Returned by :func:`fused_gemm` when the fast path does not apply to the operands.
NOT_FAST = "not-fast"

_lock = threading.Lock()
_lib = None
_error = None           # why the kernel is unavailable, once a build was tried
_enabled = os.environ.get("HBFP_HW_NATIVE", "1").strip().lower() not in ("0", "no", "false",
                                                                          "off")


def _cache_dir():
    return cache_root() / "native"


def _compiler():
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc) or cc
    return shutil.which("cc") or shutil.which("gcc")


def _cpu_signature():
    """What ``-march=native`` depends on: the CPU's model and feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or platform.machine()
    lines = [ln for ln in text.splitlines()
             if ln.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(dict.fromkeys(lines))


def _build(source=_SOURCE):
    """Compile ``source`` (cached by content) and return the loaded library."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    try:
        probe = process.run([cc, "--version"], capture=True, timeout=60)
    except OSError as exc:
        raise RuntimeError(f"the C compiler {cc} does not run: {exc}") from exc
    if probe.timed_out:
        raise RuntimeError(f"the C compiler {cc} does not run: {cc} --version did not "
                           f"finish within 60 seconds")
    version = probe.stdout
    text = Path(source).read_bytes()
    key = hashlib.sha256(b"\0".join([text, " ".join(_FLAGS).encode(), cc.encode(),
                                     version.encode(), _cpu_signature().encode(),
                                     platform.machine().encode()])).hexdigest()[:16]
    out = _cache_dir() / f"fused-{key}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        try:
            proc = process.run([cc, *_FLAGS, "-o", tmp, str(source), "-lm"], capture=True,
                               timeout=300)
            if proc.timed_out:
                raise RuntimeError(f"{cc} did not compile {Path(source).name} within 300 "
                                   f"seconds")
            if proc.returncode != 0:
                raise RuntimeError(f"{cc} failed on {Path(source).name}:\n{proc.stderr.strip()}")
            os.replace(tmp, out)        # atomic: concurrent processes (DDP ranks) agree
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(out))
    fn = lib.hbfp_fused_gemm
    i64, i32 = ctypes.c_int64, ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, i64, i64, i64, i64, ctypes.c_void_p, i64, i64, i64,
                   ctypes.c_void_p, i32, i32, ctypes.c_float, i32, i32, i32, i32, i32, i32,
                   ctypes.c_void_p, ctypes.c_void_p]
    fn.restype = i32
    bits = lib.hbfp_sr_bits
    bits.argtypes = [ctypes.c_uint32, i64, i32, ctypes.c_void_p]
    bits.restype = None
    batched = lib.hbfp_fused_gemm_batched
    batched.argtypes = [i64, ctypes.c_void_p, i64, i64, i64, i64, i64, ctypes.c_void_p, i64, i64,
                        i64, i64, ctypes.c_void_p, i32, i32, ctypes.c_float, i32, i32, i32, i32,
                        i32, i32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    batched.restype = None
    bits_batched = lib.hbfp_sr_bits_batched
    bits_batched.argtypes = [ctypes.c_void_p, i64, i64, i32, ctypes.c_void_p]
    bits_batched.restype = None
    return lib


def _library():
    global _lib, _error
    if _lib is not None or _error is not None:
        return _lib
    with _lock:
        if _lib is None and _error is None:
            try:
                _lib = _build()
            except (OSError, RuntimeError) as exc:
                _error = str(exc)
                warnings.warn(f"hbfp_hw.torch: the fused C kernel of the emulate backend is not "
                              f"available ({_error}); emulated GEMMs use the slower torch path, "
                              f"which gives the same results", RuntimeWarning, stacklevel=3)
    return _lib


def available():
    """Whether the fused kernel is enabled and built (building it if needed)."""
    return _enabled and _library() is not None


@contextlib.contextmanager
def enabled(flag):
    """Turn the fused kernel on or off within a ``with`` block (tests, benchmarks)."""
    global _enabled
    before, _enabled = _enabled, bool(flag)
    try:
        yield
    finally:
        _enabled = before


def sr_bits(seed, rows, kblocks, nb):
    """The stochastic-rounding values of ``rows x kblocks`` blocks (``golden.random_bits``
    reshaped to ``[rows, kblocks * nb]``, int32), made by the C kernel; None if unavailable."""
    lib = _library() if _enabled else None
    if lib is None:
        return None
    out = torch.empty(rows, kblocks * nb, dtype=torch.int32)
    lib.hbfp_sr_bits(seed, rows * kblocks, nb, out.data_ptr())
    return out


def _kernel_operand(x, k_dim):
    """``x`` and its strides for the kernel, K being dimension ``k_dim`` (-1 or -2) and its
    rows the other of the last two.

    The kernel reads an operand fast when K or its rows are contiguous (a unit stride along a
    dimension longer than 1); anything else (a broadcast gradient, stride 0 everywhere)
    becomes a contiguous copy, several times faster than the kernel's element-by-element
    loops. A dimension of size 1 is never stepped: it gets the stride that tells the kernel
    the other dimension is the contiguous one (a K of 1 with contiguous rows would otherwise
    read as "K contiguous", one short row at a time).
    """
    r_dim = -3 - k_dim                      # -2 for K last, -1 for K second to last
    kdim, rows = x.shape[k_dim], x.shape[r_dim]
    if not ((kdim > 1 and x.stride(k_dim) == 1) or (rows > 1 and x.stride(r_dim) == 1)):
        x = x.contiguous()
    strides = list(x.stride())
    if kdim == 1:
        strides[k_dim] = rows
    if rows == 1:
        strides[r_dim] = kdim
    return x, strides


def fused_gemm(a, b, fmt, f32_bound_ok, f32_max_grid, seeds=None):
    """Return the HBFP product ``a @ b`` of CPU float32 matrices (any strides) computed by the
    fused kernel; ``seeds`` = ``(seed_a, seed_b)`` for a stochastic ``fmt``.

    Returns ``None`` when the kernel is disabled or unavailable, and :data:`NOT_FAST` when the
    operands need the general path (exponents at the ends of the range; see
    :func:`.emulate_fast._gemm_fast`). The caller ensures IEEE subnormals.
    """
    lib = _library() if _enabled else None
    if lib is None:
        return None
    (a, sa), (b, sb) = _kernel_operand(a, -1), _kernel_operand(b, -2)
    m, kdim = a.shape
    n = b.shape[1]
    threads = torch.get_num_threads() if m * n * kdim >= _THREAD_MIN_MACS else 1
    out = torch.empty(m, n, dtype=torch.float32)
    rnd_a = rnd_b = None
    if fmt.rounding is Rounding.STOCHASTIC:
        kblocks = -(-kdim // fmt.block_size)
        rnd_a = sr_bits(seeds[0], m, kblocks, fmt.block_size)
        rnd_b = sr_bits(seeds[1], n, kblocks, fmt.block_size)
    rc = lib.hbfp_fused_gemm(
        a.data_ptr(), m, kdim, sa[0], sa[1], b.data_ptr(), n, sb[0], sb[1], out.data_ptr(),
        fmt.block_size, fmt.fraction_bits, float(fmt.max_mantissa), fmt.min_exponent,
        fmt.max_exponent, int(fmt.rounding is Rounding.NEAREST_EVEN), int(f32_bound_ok),
        f32_max_grid, threads, None if rnd_a is None else rnd_a.data_ptr(),
        None if rnd_b is None else rnd_b.data_ptr())
    if rc == 1:
        return NOT_FAST
    if rc != 0:
        raise MemoryError(f"the fused HBFP kernel could not allocate its buffers for a "
                          f"{m}x{kdim} @ {kdim}x{n} GEMM")
    return out


def fused_gemm_batched(a, b, fmt, f32_bound_ok, f32_max_grid, seeds=None):
    """Return ``(C, todo)`` for CPU float32 ``a [G, M, K]`` and ``b [G, K, N]`` (any strides):
    ``C[g]`` is :func:`fused_gemm` of ``a[g]``, ``b[g]`` (``seeds``: G pairs ``(seed_a,
    seed_b)`` for a stochastic ``fmt``), except for the indices in ``todo``, the GEMMs that
    need the general path (their ``C[g]`` is garbage). ``None`` when the kernel is disabled or
    unavailable. One call for the whole batch, split across torch's threads when the batch
    is large. The caller ensures IEEE subnormals."""
    lib = _library() if _enabled else None
    if lib is None:
        return None
    (a, sa), (b, sb) = _kernel_operand(a, -1), _kernel_operand(b, -2)
    groups, m, kdim = a.shape
    n = b.shape[2]
    threads = torch.get_num_threads() if groups * m * n * kdim >= _THREAD_MIN_MACS else 1
    out = torch.empty(groups, m, n, dtype=torch.float32)
    status = torch.empty(groups, dtype=torch.int8)
    rnd_a = rnd_b = None
    if fmt.rounding is Rounding.STOCHASTIC:
        kblocks = -(-kdim // fmt.block_size)
        rnd_a = torch.empty(groups, m * kblocks * fmt.block_size, dtype=torch.int32)
        rnd_b = torch.empty(groups, n * kblocks * fmt.block_size, dtype=torch.int32)
        for rnd, rows, which in ((rnd_a, m, 0), (rnd_b, n, 1)):
            seed_list = (ctypes.c_uint32 * groups)(*(s[which] for s in seeds))
            lib.hbfp_sr_bits_batched(seed_list, groups, rows * kblocks, fmt.block_size,
                                     rnd.data_ptr())
    lib.hbfp_fused_gemm_batched(
        groups, a.data_ptr(), sa[0], m, kdim, sa[1], sa[2], b.data_ptr(), sb[0], n, sb[1],
        sb[2], out.data_ptr(),
        fmt.block_size, fmt.fraction_bits, float(fmt.max_mantissa), fmt.min_exponent,
        fmt.max_exponent, int(fmt.rounding is Rounding.NEAREST_EVEN), int(f32_bound_ok),
        f32_max_grid, threads, None if rnd_a is None else rnd_a.data_ptr(),
        None if rnd_b is None else rnd_b.data_ptr(), status.data_ptr())
    if bool((status < 0).any()):
        raise MemoryError(f"the fused HBFP kernel could not allocate its buffers for a "
                          f"{m}x{kdim} @ {kdim}x{n} GEMM")
    return out, status.nonzero().flatten().tolist()

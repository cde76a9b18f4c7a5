"""The HBFP GEMM as a ``torch.library`` custom op, ``torch.ops.hbfp.gemm``.

``hbfp::gemm(Tensor a, Tensor b, int mantissa_bits, int block_size, str rounding,
int exponent_bits, Tensor seed, str backend, str element="", str format_b="",
str accumulator="") -> Tensor``
computes the HBFP product of 2-D float32 ``a [M, K]`` and ``b [K, N]`` (docs/numerics.md 3.3) on
the backend named by ``backend`` (a key of :mod:`hbfp_hw.torch.backends`). ``element`` is empty
for integer elements, else the minifloat element and scale rule as ``"e,m,special,bias,rule"``
or the posit type as ``"posit,n,es"``; ``format_b`` is empty when ``b`` is quantized like ``a``,
else ``b``'s whole format, ``"mantissa_bits,block_size,rounding,exponent_bits[;element]"``
(per-operand formats, numerics.md 5.4; :func:`format_args`); ``accumulator`` is empty for FP32
accumulation, else the accumulator's name (numerics.md 6). ``seed`` is a 0-d int64 tensor, so
that per-step seeds flow through compiled graphs as data. The op has a fake (meta)
implementation, so shapes propagate through ``torch.compile``, ``torch.export`` and FakeTensor
tracing; it has no autograd formula of its own: :mod:`hbfp_hw.torch.autograd` builds the three
GEMMs of a layer from it. In plain eager mode (CPU tensors, no compile, tracing or dispatch
mode) :func:`role_gemm` calls the backend directly, which is what the op's CPU kernel does.
"""

from __future__ import annotations

import functools

import torch

from hbfp_hw.formats import (
    Accumulator,
    BFPFormat,
    Minifloat,
    Posit,
    Rounding,
    check_operand_formats,
    resolve_format,
)
from hbfp_hw.golden import prng
from hbfp_hw.torch.backends import backend_key, get_backend

__all__ = ["gemm", "role_gemm", "role_gemm_batched", "format_args", "swap_operands",
           "is_stochastic", "has_operand_pair"]


# The low-level registration API: its CPU kernel is called straight from the C++ dispatcher,
# which costs far less per call than the Python-side wrapper of torch.library.custom_op.
_LIB = torch.library.Library("hbfp", "DEF")
_LIB.define("gemm(Tensor a, Tensor b, int mantissa_bits, int block_size, str rounding, "
            "int exponent_bits, Tensor seed, str backend, str element=\"\", "
            "str format_b=\"\", str accumulator=\"\") -> Tensor")
_LIB.define("gemm_batched(Tensor a, Tensor b, int mantissa_bits, int block_size, str rounding, "
            "int exponent_bits, Tensor seeds, str backend, str element=\"\", "
            "str format_b=\"\", str accumulator=\"\") -> Tensor")


def format_args(fmt):
    """The op's format arguments: ``(mantissa_bits, block_size, rounding, exponent_bits)``,
    plus the element spec ``"e,m,special,bias,rule"`` for minifloat elements.

    ``fmt`` may be a pair ``(format of a, format of b)`` (per-operand formats, which must
    share the block size, the shared exponent's width and the accumulator); if they differ,
    the arguments are ``a``'s, its element spec (``""`` for integer elements) and ``b``'s
    whole format. A format that does not accumulate in FP32 adds those two (empty where
    unused) and the accumulator's name, seven arguments in all."""
    if isinstance(fmt, tuple):
        fa, fb = fmt
        if fa == fb:
            return format_args(fa)
        check_operand_formats(fa, fb)
        plain = tuple(f.replace(accumulator=Accumulator.FP32) for f in fmt)
        args_a, args_b = (*format_args(plain[0]), ""), (*format_args(plain[1]), "")
        spec_b = ",".join(str(v) for v in args_b[:4]) + (f";{args_b[4]}" if args_b[4] else "")
        return _with_accumulator((*args_a[:5], spec_b), fa.accumulator)
    args = (fmt.mantissa_bits, fmt.block_size, fmt.rounding.value, fmt.exponent_bits)
    if fmt.is_posit:
        args = (*args, f"posit,{fmt.element.n},{fmt.element.es}")
    elif fmt.element is not None:
        el = fmt.element
        args = (*args, f"{el.exponent_bits},{el.mantissa_bits},{el.special.value},{el.bias},"
                       f"{fmt.scale_rule.value}")
    return _with_accumulator(args, fmt.accumulator)


def _with_accumulator(args, accumulator):
    if accumulator is Accumulator.FP32:
        return args
    return (*args, *[""] * (6 - len(args)), accumulator.value)


def has_operand_pair(fmt_args):
    """Whether op arguments (:func:`format_args`) give ``b`` a format of its own."""
    return fmt_args is not None and len(fmt_args) > 5 and fmt_args[5] != ""


def swap_operands(fmt_args):
    """The arguments of the same GEMM with the operands' formats swapped (``b @ a``
    orientation, as ``(a @ b)^T = b^T @ a^T``); unchanged when both share one format."""
    if not has_operand_pair(fmt_args):
        return fmt_args
    fa, fb = _format(*fmt_args)
    return format_args((fb, fa))


def is_stochastic(fmt_args):
    """Whether either operand of op arguments, or the accumulator, rounds stochastically."""
    if fmt_args is None:
        return False
    if len(fmt_args) > 6 and Accumulator(fmt_args[6]).stochastic:
        return True
    if not has_operand_pair(fmt_args):
        return fmt_args[2] == "stochastic"
    return any(f.rounding is Rounding.STOCHASTIC for f in _format(*fmt_args))


@functools.lru_cache(maxsize=64)
def _single_format(mantissa_bits, block_size, rounding, exponent_bits, element="",
                   accumulator=""):
    accumulator = accumulator or "fp32"
    if not element:
        return BFPFormat(mantissa_bits, block_size, rounding, exponent_bits,
                         accumulator=accumulator)
    if element.startswith("posit,"):
        _, n, es = element.split(",")
        return BFPFormat(mantissa_bits, block_size, rounding, exponent_bits,
                         Posit(int(n), int(es)), accumulator=accumulator)
    e, m, special, bias, rule = element.split(",")
    return BFPFormat(mantissa_bits, block_size, rounding, exponent_bits,
                     Minifloat(int(e), int(m), special, int(bias)), rule, accumulator)


@functools.lru_cache(maxsize=64)
def _format(mantissa_bits, block_size, rounding, exponent_bits, element="", format_b="",
            accumulator=""):
    """The format (or the pair ``(format of a, format of b)``) of op arguments."""
    fa = _single_format(mantissa_bits, block_size, rounding, exponent_bits, element,
                        accumulator)
    if not format_b:
        return fa
    head, _, element_b = format_b.partition(";")
    w, n, r, e = head.split(",")
    return fa, _single_format(int(w), int(n), r, int(e), element_b, accumulator)


def _gemm_kernel(a, b, mantissa_bits, block_size, rounding, exponent_bits, seed, backend,
                 element="", format_b="", accumulator=""):
    fmt = _format(mantissa_bits, block_size, rounding, exponent_bits, element, format_b,
                  accumulator)
    out = get_backend(backend).gemm(a, b, fmt, int(seed.item()) & 0xFFFFFFFF)
    return out.to(a.device)


def _plain_eager(a, b):
    """Whether the op may be skipped: plain CPU tensors, nothing tracing or intercepting.

    Then calling the kernel directly is what the dispatcher would do, minus its overhead
    (some ten microseconds per GEMM, for three GEMMs per layer and step).
    """
    return (type(a) is torch.Tensor and type(b) is torch.Tensor
            and a.device.type == "cpu" and b.device.type == "cpu"
            and not torch.compiler.is_compiling()
            and torch._C._len_torch_dispatch_stack() == 0
            and torch._C._len_torch_function_stack() == 0
            and not torch._C._are_functorch_transforms_active())


def _batched_kernel(a, b, mantissa_bits, block_size, rounding, exponent_bits, seeds, backend,
                    element="", format_b="", accumulator=""):
    fmt = _format(mantissa_bits, block_size, rounding, exponent_bits, element, format_b,
                  accumulator)
    return _run_batched(get_backend(backend), a, b, fmt,
                        [int(s) & 0xFFFFFFFF for s in seeds.tolist()]).to(a.device)


def _run_batched(backend, a, b, fmt, seeds):
    """``backend.gemm_batched`` where the backend has it, else one ``gemm`` per pair."""
    batched = getattr(backend, "gemm_batched", None)
    if batched is not None:
        return batched(a, b, fmt, seeds)
    return torch.stack([backend.gemm(a[g], b[g], fmt, seeds[g]) for g in range(a.shape[0])])


# The emulate backend runs on any torch device; the device backend copies to the host.
for _key in ("CPU", "CUDA", "XPU", "MPS"):
    _LIB.impl("gemm", _gemm_kernel, _key)
    _LIB.impl("gemm_batched", _batched_kernel, _key)


@torch.library.register_fake("hbfp::gemm", lib=_LIB)
def _gemm_fake(a, b, mantissa_bits, block_size, rounding, exponent_bits, seed, backend,
               element="", format_b="", accumulator=""):
    torch._check(a.dim() == 2 and b.dim() == 2, lambda: "hbfp::gemm takes 2-D a and b")
    torch._check(a.shape[1] == b.shape[0], lambda: "hbfp::gemm: a's columns must equal b's rows")
    return a.new_empty((a.shape[0], b.shape[1]))


@torch.library.register_fake("hbfp::gemm_batched", lib=_LIB)
def _batched_fake(a, b, mantissa_bits, block_size, rounding, exponent_bits, seeds, backend,
                  element="", format_b="", accumulator=""):
    torch._check(a.dim() == 3 and b.dim() == 3, lambda: "hbfp::gemm_batched takes 3-D a, b")
    torch._check(a.shape[0] == b.shape[0] and a.shape[2] == b.shape[1],
                 lambda: "hbfp::gemm_batched: shapes [G, M, K] and [G, K, N]")
    return a.new_empty((a.shape[0], a.shape[1], b.shape[2]))


def role_gemm_batched(a, b, fmt_args, seeds, key):
    """``G`` HBFP GEMMs ``a[g] @ b[g]`` of one role: ``a [G, M, K]``, ``b [G, K, N]`` float32,
    ``seeds`` an int64 tensor ``[G]``; equal to :func:`role_gemm` of each pair with
    ``seeds[g]``, bit for bit (the backend's ``gemm_batched`` where it has one)."""
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or t.dim() != 3:
            raise TypeError(f"{name} must be a 3-D float32 tensor")
    if a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1]:
        raise ValueError(f"a and b must be [G, M, K] and [G, K, N], not of shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if fmt_args is None:
        return torch.bmm(a, b)
    if 0 in (a.shape[0], a.shape[1], a.shape[2], b.shape[2]):
        return a.new_zeros((a.shape[0], a.shape[1], b.shape[2]))
    if _plain_eager(a, b):
        return _run_batched(get_backend(key), a, b, _format(*fmt_args),
                            [int(s) & 0xFFFFFFFF for s in seeds.tolist()])
    return torch.ops.hbfp.gemm_batched(a, b, *fmt_args[:4], seeds, key, *fmt_args[4:])


def _check_operands(a, b):
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, not {type(t).__name__}")
        if t.dtype != torch.float32:
            raise TypeError(f"{name} must be a float32 tensor, not {t.dtype} (HBFP layers take "
                            f"FP32 activations and weights; call model.float())")
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(f"a and b must be 2-D matrices, not of shapes {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"a's columns must equal b's rows (K), not {a.shape[1]} and "
                         f"{b.shape[0]}")


def role_gemm(a, b, fmt_args, seed, key):
    """One HBFP GEMM ``a @ b`` of one role (used by the autograd functions).

    Parameters
    ----------
    a, b : torch.Tensor
        2-D float32, ``[M, K]`` and ``[K, N]``.
    fmt_args : tuple or None
        :func:`format_args` of the format; ``None`` computes the product in plain FP32.
    seed : torch.Tensor or int
        0-d int64 seed, ``0..2**32-1``.
    key : str
        Backend key.

    In plain eager mode (see :func:`_plain_eager`) the backend is called directly; under
    ``torch.compile``, FakeTensor/meta tracing, a dispatch or function mode or a functorch
    transform the call goes through ``torch.ops.hbfp.gemm``.
    """
    _check_operands(a, b)
    if fmt_args is None:
        return torch.matmul(a, b)
    if a.shape[0] == 0 or b.shape[1] == 0 or a.shape[1] == 0:
        return a.new_zeros((a.shape[0], b.shape[1]))
    if _plain_eager(a, b):
        seed = int(seed) & 0xFFFFFFFF
        return get_backend(key).gemm(a, b, _format(*fmt_args), seed)
    if not isinstance(seed, torch.Tensor):
        seed = torch.tensor(seed, dtype=torch.int64)
    return torch.ops.hbfp.gemm(a, b, *fmt_args[:4], seed, key, *fmt_args[4:])


def gemm(a, b, fmt="bfp8", seed=None, backend="emulate", device=None):
    """HBFP product ``a @ b`` of 2-D float32 tensors through ``torch.ops.hbfp.gemm`` (in plain
    eager mode the backend is called directly, see :func:`role_gemm`).

    Equal bit for bit to ``hbfp_hw.golden.gemm(a, b, fmt, seed)`` (no autograd: use
    :func:`hbfp_hw.torch.hbfp_matmul` for that); ``fmt`` may be a pair ``(format of a,
    format of b)`` as there. ``seed`` (stochastic rounding only) is used
    for ``a`` and ``seed + 1`` for ``b``; ``None`` draws a fresh one.
    """
    if isinstance(fmt, (tuple, list)) and len(fmt) == 2:
        fmt = tuple(resolve_format(f) for f in fmt)
    else:
        fmt = resolve_format(fmt)
    key = backend_key(backend, device)
    args = format_args(fmt)
    if seed is None:
        seed = prng.fresh_seed() if is_stochastic(args) else 0
    seed = prng.check_seed(seed)
    with torch.no_grad():
        return role_gemm(a, b, None if backend == "fp32" else args, seed, key)

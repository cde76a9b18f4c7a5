"""``hbfp_mode``: put the matrix products of any PyTorch code in HBFP.

>>> from hbfp_hw.torch import hbfp_mode
>>> with hbfp_mode("bfp8", seed=0):
...     y = torch.softmax(q @ k.transpose(-2, -1), -1) @ v     # both products are HBFP GEMMs

Inside the context, a :class:`torch.overrides.TorchFunctionMode` routes these functions to
HBFP GEMMs (forward and backward, every role in its format, see :mod:`hbfp_hw.torch.config`):

- ``torch.matmul`` / ``Tensor.matmul`` / ``@``, ``torch.mm``, ``torch.bmm``: as
  :func:`~hbfp_hw.torch.hbfp_matmul` (batched products are one GEMM per batch element);
- ``torch.addmm``, ``torch.baddbmm``: ``beta * input + alpha * (HBFP product)`` in FP32;
- ``torch.nn.functional.linear``: as :func:`~hbfp_hw.torch.hbfp_linear`;
- ``torch.einsum`` with two operands whose equation is a (batched) matrix product: every index
  is a batch index (in both operands and the output), a contracted index (in both operands,
  not in the output; at least one) or a free index of one operand (and in the output);
- ``torch.nn.functional.scaled_dot_product_attention``: as
  :func:`hbfp_hw.torch.attention.attention` (two HBFP products, softmax in FP32);
- ``torch.nn.functional.multi_head_attention_forward`` (``nn.MultiheadAttention``): its
  projections and attention products, as above.

Any other function runs as it is. Matrix products that the mode does not route (``mv``, ``dot``,
``tensordot``, ``einsum`` with another shape, ``F.bilinear``, convolutions) warn once
(:class:`UnroutedGemmWarning`) and stay FP32: use :func:`~hbfp_hw.torch.convert` for layers.

Seeds: the mode counts the GEMM operations it routes; operation ``i`` uses the call seed
``(seed + i * 0x9E3779B9) mod 2**32`` (:func:`op_seed`; role seeds and sub-GEMMs as in
:mod:`hbfp_hw.torch.config`). The
count starts at 0 on entering the context, so a block of code is reproducible from its seed.
HBFP layers that hold several operations (``HBFPMultiheadAttention``) use the same counting,
starting from their own call seed.
"""

from __future__ import annotations

import functools
import string
import types
import warnings

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from hbfp_hw.golden import prng
from hbfp_hw.torch import attention as _attention
from hbfp_hw.torch import ops
from hbfp_hw.torch.autograd import _matmul_impl, _prepare, linear_impl, role_seeds

__all__ = ["hbfp_mode", "HBFPFunctionMode", "UnroutedGemmWarning", "GemmSequence", "op_seed"]


class UnroutedGemmWarning(UserWarning):
    """A matrix product inside :func:`hbfp_mode` that the mode does not route stays FP32."""


def op_seed(call_seed, i):
    """The call seed of operation ``i`` of a sequence: ``(call_seed + i * 0x9E3779B9) mod
    2**32`` (an int, or an int64 tensor under ``torch.compile``)."""
    return (call_seed + i * 0x9E3779B9) & 0xFFFFFFFF


class GemmSequence:
    """The GEMM operations of one call (a layer's forward or an :func:`hbfp_mode` block).

    Operation ``i`` gets the call seed :func:`op_seed` ``(call_seed, i)``; :meth:`next_seeds`
    returns its three role seeds.
    """

    def __init__(self, call_seed, fmts, key):
        self.call_seed, self.fmts, self.key, self.count = call_seed, fmts, key, 0

    def next_seeds(self):
        if not any(ops.is_stochastic(f) for f in self.fmts):
            self.count += 1
            return torch.zeros(3, dtype=torch.int64)      # the seeds are not used
        seeds = role_seeds(op_seed(self.call_seed, self.count))
        self.count += 1
        return seeds

    # -- the routed operations (FP32 glue around HBFP GEMMs) --

    def linear(self, x, weight, bias=None):
        return linear_impl(x, weight, bias, self.next_seeds(), self.fmts, self.key)

    def matmul(self, a, b):
        if a.dim() == 0 or b.dim() == 0:
            raise ValueError("both arguments to matmul need to be at least 1D")
        return _matmul_impl(a, b, self.next_seeds(), self.fmts, self.key)

    def mm(self, a, b):
        if a.dim() != 2 or b.dim() != 2:
            raise ValueError(f"mm takes 2-D matrices, not shapes {tuple(a.shape)} and "
                             f"{tuple(b.shape)}")
        return self.matmul(a, b)

    def bmm(self, a, b):
        if a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0]:
            raise ValueError(f"bmm takes 3-D tensors with equal batch sizes, not shapes "
                             f"{tuple(a.shape)} and {tuple(b.shape)}")
        return self.matmul(a, b)

    def addmm(self, inp, a, b, *, beta=1, alpha=1):
        return _scaled_sum(inp, self.mm(a, b), beta, alpha)

    def baddbmm(self, inp, a, b, *, beta=1, alpha=1):
        return _scaled_sum(inp, self.bmm(a, b), beta, alpha)

    def einsum(self, equation, *operands):
        if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
            operands = tuple(operands[0])
        plan = _einsum_plan(equation, *operands) if len(operands) == 2 else None
        if plan is None:
            return None
        return plan(self.matmul, *operands)

    def attention(self, *args, **kwargs):
        return _attention.attention(self.matmul, *args, **kwargs)


def _scaled_sum(inp, product, beta, alpha):
    out = product if alpha == 1 else product * alpha
    if beta == 0:
        return out
    return out + (inp if beta == 1 else inp * beta)


# -- einsum -------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=256)
def _einsum_indices(equation, ndims):
    """Parse a two-operand equation into (in_a, in_b, out) index strings, or None."""
    eq = equation.replace(" ", "")
    if "..." in eq or eq.count(",") != 1:
        return None
    lhs, arrow, out = eq.partition("->")
    a, b = lhs.split(",")
    if not arrow:                                    # implicit output: sorted single indices
        counts = {c: (a + b).count(c) for c in a + b}
        out = "".join(sorted(c for c, n in counts.items() if n == 1))
    letters = set(string.ascii_letters)
    if not set(a + b + out) <= letters or (len(a), len(b)) != ndims:
        return None
    if len(set(a)) != len(a) or len(set(b)) != len(b) or len(set(out)) != len(out):
        return None                                  # repeated index: a trace or diagonal
    if not set(out) <= set(a + b):
        return None
    return a, b, out


def _einsum_plan(equation, x, y):
    """A function ``plan(matmul, x, y)`` computing the einsum as one batched matrix product,
    or None when the equation is not a (batched) matrix product."""
    if not isinstance(equation, str) or not all(isinstance(t, torch.Tensor) for t in (x, y)):
        return None
    parsed = _einsum_indices(equation, (x.dim(), y.dim()))
    if parsed is None:
        return None
    a, b, out = parsed
    batch = [c for c in out if c in a and c in b]
    contract = [c for c in a if c in b and c not in out]
    free_a = [c for c in a if c not in b]
    free_b = [c for c in b if c not in a]
    if any(c not in out for c in free_a + free_b):  # summed over one operand only
        return None
    if not contract:                                 # elementwise or outer: no reduction
        return None
    sizes = {}
    for idx, t in ((a, x), (b, y)):
        for c, n in zip(idx, t.shape):
            if sizes.setdefault(c, n) != n:
                return None                          # broadcasting of size-1 dims: not a GEMM

    def plan(matmul, x, y):
        xa = x.permute([a.index(c) for c in batch + free_a + contract])
        yb = y.permute([b.index(c) for c in batch + contract + free_b])
        nb = [sizes[c] for c in batch]
        m = [sizes[c] for c in free_a]
        k = [sizes[c] for c in contract]
        n = [sizes[c] for c in free_b]
        prod = matmul(xa.reshape(*nb, _numel(m), _numel(k)), yb.reshape(*nb, _numel(k), _numel(n)))
        res = prod.reshape(*nb, *m, *n)
        order = batch + free_a + free_b
        return res.permute([order.index(c) for c in out])
    return plan


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


# -- the mode -----------------------------------------------------------------------------------

def _without_torch_function_check(fn):
    """A copy of the Python function ``fn`` whose ``has_torch_function`` check is off, so that
    its body runs with the mode on (its inner products are routed, not the whole call)."""
    scope = dict(fn.__globals__)
    scope["has_torch_function"] = lambda *args: False
    clone = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
    clone.__kwdefaults__ = fn.__kwdefaults__
    return clone


_MHA_BODY = _without_torch_function_check(F.multi_head_attention_forward)

_ROUTES = {
    torch.matmul: "matmul", torch.Tensor.matmul: "matmul", torch.Tensor.__matmul__: "matmul",
    torch.mm: "mm", torch.Tensor.mm: "mm", torch.bmm: "bmm", torch.Tensor.bmm: "bmm",
    torch.addmm: "addmm", torch.Tensor.addmm: "addmm",
    torch.baddbmm: "baddbmm", torch.Tensor.baddbmm: "baddbmm",
    F.linear: "linear", torch.einsum: "einsum",
    F.scaled_dot_product_attention: "attention",
}
_RMATMUL = torch.Tensor.__rmatmul__
#: Matrix products that the mode leaves in FP32 (with a warning).
_UNROUTED = {torch.mv, torch.Tensor.mv, torch.dot, torch.Tensor.dot, torch.vdot, torch.inner,
             torch.tensordot, torch.chain_matmul, torch.linalg.multi_dot, torch.addmv,
             torch.addbmm, torch.Tensor.addbmm, F.bilinear, F.conv1d, F.conv2d, F.conv3d,
             F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d}


class HBFPFunctionMode(TorchFunctionMode):
    """The torch function mode behind :func:`hbfp_mode` (see the module docstring)."""

    def __init__(self, sequence):
        super().__init__()
        self.sequence = sequence
        self._warned = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        route = _ROUTES.get(func)
        if route is not None:
            out = getattr(self.sequence, route)(*args, **kwargs)
            if out is not None:
                return out
            self._warn(func)
        elif func is _RMATMUL:
            return self.sequence.matmul(args[1], args[0])
        elif func is F.multi_head_attention_forward:
            with self:
                return _MHA_BODY(*args, **kwargs)
        elif func in _UNROUTED:
            self._warn(func)
        return func(*args, **kwargs)

    def _warn(self, func):
        name = f"torch.{getattr(func, '__name__', repr(func))}"
        if name not in self._warned:
            self._warned.add(name)
            warnings.warn(f"hbfp_mode: {name} (with these arguments) is not routed to HBFP and "
                          f"runs in FP32", UnroutedGemmWarning, stacklevel=3)


def hbfp_mode(fmt="bfp8", *, seed=0, backend="emulate", device=None):
    """A context in which matrix products run as HBFP GEMMs (see the module docstring).

    Parameters
    ----------
    fmt : preset name, BFPFormat, dict of roles or HBFPConfig
        Formats of the forward, grad_input and grad_weight GEMMs.
    seed : int or None
        Base seed of stochastic rounding; ``None`` draws a fresh one.
    backend, device : str
        As for :func:`~hbfp_hw.torch.convert`.

    Returns
    -------
    HBFPFunctionMode
        Use it in a ``with`` statement; ``mode.sequence.count`` is the number of GEMM
        operations routed so far.
    """
    seed = prng.fresh_seed() if seed is None else prng.check_seed(seed)
    _, fmts, key = _prepare(fmt, seed, backend, device)
    return HBFPFunctionMode(GemmSequence(seed, fmts, key))

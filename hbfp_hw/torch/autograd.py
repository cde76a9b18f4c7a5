"""Autograd functions and the functional API of HBFP ``linear`` and ``matmul``
(convolutions: :mod:`hbfp_hw.torch.conv`).

Every product of these functions, forward and backward, is an HBFP GEMM
(:func:`hbfp_hw.torch.ops.gemm`, i.e. ``golden.gemm`` bit for bit) whose two operands are
quantized along that GEMM's own reduction axis; everything else (bias, the im2col/col2im data
movement, sums over broadcast batch dimensions) stays in FP32. See :mod:`hbfp_hw.torch.config`
for the roles and the seeds.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import torch

from hbfp_hw.golden import prng
from hbfp_hw.torch import ops
from hbfp_hw.torch.backends import check_backend
from hbfp_hw.torch.config import as_config, derive_seed

__all__ = ["hbfp_linear", "hbfp_matmul", "role_seeds", "linear_impl"]

_M32 = 0xFFFFFFFF


def role_seeds(call_seed):
    """Return the int64 tensor ``[3]`` of GEMM seeds (forward, grad_input, grad_weight)."""
    if isinstance(call_seed, torch.Tensor):
        return torch.stack([derive_seed(call_seed, r) for r in range(3)])
    return torch.tensor([derive_seed(call_seed, r) for r in range(3)], dtype=torch.int64)


def _offset(seeds, i):
    """Seeds of sub-GEMM ``i`` of one call: ``(seed + 2 i) mod 2**32``."""
    return seeds if i == 0 else (seeds + 2 * i) & _M32


def _backward_gemm(a, b, seed, fmts, key):
    """One GEMM of a backward pass, ``a @ b`` in format ``fmts[0]`` with ``seed``.

    Plain backward: :func:`ops.role_gemm`. Under ``create_graph=True`` (double backward, e.g.
    a gradient penalty) the same GEMM, with the same bits, is an HBFP :class:`_Matmul` node,
    so that its own gradients are HBFP GEMMs too: ``fmts = (format of this GEMM, format of
    the gradient of a, format of the gradient of b)`` and the seeds of those two are
    ``derive_seed(seed, 1)`` and ``derive_seed(seed, 2)`` (docs/numerics.md, "PyTorch").
    """
    if not torch.is_grad_enabled():
        return ops.role_gemm(a, b, fmts[0], seed, key)
    fmts = _second_order(fmts)
    if not isinstance(seed, torch.Tensor):
        seed = torch.tensor(seed, dtype=torch.int64)
    seeds = torch.stack([seed, derive_seed(seed, 1), derive_seed(seed, 2)])
    return _Matmul.apply(a, b, seeds, fmts, key)


#: The formats of a second-order GEMM when the layer has per-operand formats: per-operand
#: formats name tensor kinds (activations, weights, gradients), and the GEMMs of a double
#: backward mix second-order gradients with them, for which no kind is defined.
_NO_KIND = ("no tensor kind",)


def _second_order(fmts):
    """``fmts`` of a backward GEMM's node; with per-operand formats its own gradients are
    refused when they are asked for (:func:`_check_second_order`)."""
    if any(ops.has_operand_pair(f) for f in fmts):
        return (fmts[0], _NO_KIND, _NO_KIND)
    return fmts


def _check_second_order(fmts):
    if _NO_KIND in fmts:
        raise NotImplementedError(
            "double backward through HBFP layers with per-operand formats is not implemented: "
            "the second-order GEMMs have no tensor kinds; give each role one format")


class _Linear(torch.autograd.Function):
    """``y = x @ W^T``; ``dx = dy @ W``; ``dW = dy^T @ x`` (three HBFP GEMMs)."""

    @staticmethod
    def forward(x, weight, seeds, fmts, key):
        return ops.role_gemm(x, weight.t(), fmts[0], seeds[0], key)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, seeds, fmts, key = inputs
        ctx.save_for_backward(x, weight, seeds)
        ctx.fmts, ctx.key = fmts, key

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, seeds = ctx.saved_tensors
        _, f_gi, f_gw = ctx.fmts
        grad_x = grad_w = None
        # Second-order GEMMs: weight gradients in grad_weight's format, all others in
        # grad_input's (used only under create_graph=True).
        if ctx.needs_input_grad[0]:
            grad_x = _backward_gemm(grad_y, weight, seeds[1], (f_gi, f_gi, f_gw), ctx.key)
        if ctx.needs_input_grad[1]:
            grad_w = _backward_gemm(grad_y.t(), x, seeds[2], (f_gw, f_gi, f_gi), ctx.key)
        return grad_x, grad_w, None, None, None


class _Matmul(torch.autograd.Function):
    """``c = a @ b``; ``da = dc @ b^T`` (grad_input); ``db = a^T @ dc`` (grad_weight)."""

    @staticmethod
    def forward(a, b, seeds, fmts, key):
        return ops.role_gemm(a, b, fmts[0], seeds[0], key)

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, b, seeds, fmts, key = inputs
        ctx.save_for_backward(a, b, seeds)
        ctx.fmts, ctx.key = fmts, key

    @staticmethod
    def backward(ctx, grad_c):
        a, b, seeds = ctx.saved_tensors
        _check_second_order(ctx.fmts)
        _, f_gi, f_gw = ctx.fmts
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = _backward_gemm(grad_c, b.t(), seeds[1], (f_gi, f_gi, f_gw), ctx.key)
        if ctx.needs_input_grad[1]:
            # a^T @ dc: the activation first, so the grad_weight pair is swapped
            grad_b = _backward_gemm(a.t(), grad_c, seeds[2],
                                    (ops.swap_operands(f_gw), f_gi, f_gi), ctx.key)
        return grad_a, grad_b, None, None, None


def _prepare(fmt, seed, backend, device):
    config = as_config(fmt, backend=backend, device=device)
    if config.backend == "device":
        check_backend(config)           # opens the device; FormatMismatch names the role
    fmts = config.gemm_args()
    if seed is None:
        stochastic = any(ops.is_stochastic(f) for f in fmts)
        seed = prng.fresh_seed() if stochastic else 0
    if isinstance(seed, torch.Tensor):
        if seed.dim() != 0 or seed.dtype != torch.int64:
            raise ValueError("seed must be an int or a 0-d int64 tensor")
    else:
        prng.check_seed(seed)
    return role_seeds(seed), fmts, config.key


#: Input dtypes whose values FP32 holds exactly (the GEMMs take FP32 values).
_EXACT_IN_FP32 = (torch.float32, torch.bfloat16, torch.float16)
_fp64_warned = False


def _float32(t, name):
    """Return tensor ``t`` as float32: BF16/FP16 exactly, FP64 rounded (warned once)."""
    global _fp64_warned
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, not {type(t).__name__}")
    if t.dtype in _EXACT_IN_FP32:
        return t if t.dtype == torch.float32 else t.float()
    if t.dtype == torch.float64:
        if not _fp64_warned:
            _fp64_warned = True
            warnings.warn(f"HBFP GEMMs take FP32 values: the float64 {name} is rounded to "
                          f"float32 (nearest-even) before quantization (warned once)",
                          stacklevel=4)
        return t.float()
    raise TypeError(f"{name} must be a float32, bfloat16, float16 or float64 tensor, not "
                    f"{t.dtype}")


def _output_dtype(x):
    """The dtype of a layer's result: autocast's under autocast, else the input's."""
    device_type = x.device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def _fp32_region(x):
    """A context in which the layer computes in FP32 (autocast off for its device)."""
    device_type = x.device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _in_fp32(*names):
    """Decorator: run ``fn(t0, t1, ..., *args)`` on FP32 copies of its first ``len(names)``
    tensor arguments (``None`` passes) in an autocast-free region, and return the result in
    :func:`_output_dtype` of the first one (see :func:`hbfp_linear`, "Dtypes")."""
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args):
            x = args[0]
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{names[0]} must be a torch.Tensor, not {type(x).__name__}")
            dtype = _output_dtype(x)
            with _fp32_region(x):
                y = fn(*(_float32(t, n) for t, n in zip(args, names)), *args[len(names):])
            return y if y.dtype == dtype else y.to(dtype)
        return wrapper
    return decorate


def hbfp_linear(x, weight, bias=None, fmt="bfp8", *, seed=0, backend="emulate", device=None):
    """HBFP ``torch.nn.functional.linear``: ``x @ weight^T + bias``.

    Parameters
    ----------
    x : torch.Tensor, float32, ``[..., in_features]``
    weight : torch.Tensor, float32, ``[out_features, in_features]``
    bias : torch.Tensor or None
        Added in FP32.
    fmt : preset name, BFPFormat, "fp32", dict of roles or HBFPConfig
        Formats of the forward, grad_input and grad_weight GEMMs.
    seed : int, 0-d int64 tensor or None
        Call seed of stochastic rounding (see :mod:`hbfp_hw.torch.config`); ``None`` draws a
        fresh one.
    backend, device : str
        Backend name and device URL (ignored when ``fmt`` is an HBFPConfig).
    """
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, not {type(t).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out_features, in_features], not of shape "
                         f"{tuple(weight.shape)}")
    if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x's last dimension must equal in_features = {weight.shape[1]}, not "
                         f"shape {tuple(x.shape)}")
    return linear_impl(x, weight, bias, *_prepare(fmt, seed, backend, device))


@_in_fp32("x", "weight", "bias")
def linear_impl(x, weight, bias, seeds, fmts, key):
    """:func:`hbfp_linear` on checked inputs with role ``seeds``, format args and backend key."""
    lead = x.shape[:-1]
    y = _Linear.apply(x.reshape(-1, x.shape[-1]), weight, seeds, fmts, key)
    if bias is not None:
        y = y + bias
    return y.reshape(*lead, weight.shape[0])


def hbfp_matmul(a, b, fmt="bfp8", *, seed=0, backend="emulate", device=None):
    """HBFP ``torch.matmul``, with its broadcasting rules.

    ``b`` 1-D or 2-D: one GEMM on ``a`` flattened to ``[-1, K]`` (the grad_weight GEMM of ``b``
    then reduces over every row of ``a``). Otherwise one GEMM per element of the broadcast batch
    (sub-GEMM ``i`` in row-major batch order uses seeds ``+ 2 i``); gradients of broadcast
    operands are summed in FP32, sequentially in batch order.
    Roles: ``forward`` is ``a @ b``, ``grad_input`` the gradient of ``a`` (reduces over N),
    ``grad_weight`` the gradient of ``b`` (reduces over M).
    """
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, not {type(t).__name__}")
    if a.dim() == 0 or b.dim() == 0:
        raise ValueError("a and b must have at least one dimension, not be scalars")
    return _matmul_impl(a, b, *_prepare(fmt, seed, backend, device))


@_in_fp32("a", "b")
def _matmul_impl(a, b, seeds, fmts, key):
    a_vec, b_vec = a.dim() == 1, b.dim() == 1
    a2 = a.unsqueeze(0) if a_vec else a
    b2 = b.unsqueeze(1) if b_vec else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(f"a's last dimension must equal b's second-to-last (K), not shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if b2.dim() == 2:
        lead = a2.shape[:-1]
        out = _Matmul.apply(a2.reshape(-1, a2.shape[-1]), b2, seeds, fmts, key)
        out = out.reshape(*lead, b2.shape[-1])
    else:
        batch = torch.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
        a3 = _broadcast_batch(a2, batch)
        b3 = _broadcast_batch(b2, batch)
        out = _BatchedMatmul.apply(a3, b3, seeds, fmts, key)
        out = out.reshape(*batch, a2.shape[-2], b2.shape[-1])
    if a_vec:
        out = out.squeeze(-2)
    if b_vec:
        out = out.squeeze(-1)
    return out


def batch_seeds(seed, groups):
    """Seeds of the ``groups`` sub-GEMMs of one role: ``(seed + 2 g) mod 2**32``, int64."""
    return (seed + 2 * torch.arange(groups, dtype=torch.int64)) & _M32


def _backward_gemm_batched(a, b, seed, fmts, key):
    """The batched :func:`_backward_gemm`: sub-GEMM ``g`` with ``seed + 2 g``."""
    if not torch.is_grad_enabled():
        return ops.role_gemm_batched(a, b, fmts[0], batch_seeds(seed, a.shape[0]), key)
    fmts = _second_order(fmts)
    if not isinstance(seed, torch.Tensor):
        seed = torch.tensor(seed, dtype=torch.int64)
    seeds = torch.stack([seed, derive_seed(seed, 1), derive_seed(seed, 2)])
    return _BatchedMatmul.apply(a, b, seeds, fmts, key)


class _BatchedMatmul(torch.autograd.Function):
    """``c[g] = a[g] @ b[g]`` for ``a [G, M, K]``, ``b [G, K, N]``: :class:`_Matmul` of every
    pair, sub-GEMM ``g`` with seeds ``+ 2 g``, run as batched GEMMs (same bits)."""

    @staticmethod
    def forward(a, b, seeds, fmts, key):
        return ops.role_gemm_batched(a, b, fmts[0], batch_seeds(seeds[0], a.shape[0]), key)

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, b, seeds, fmts, key = inputs
        ctx.save_for_backward(a, b, seeds)
        ctx.fmts, ctx.key = fmts, key

    @staticmethod
    def backward(ctx, grad_c):
        a, b, seeds = ctx.saved_tensors
        _check_second_order(ctx.fmts)
        _, f_gi, f_gw = ctx.fmts
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = _backward_gemm_batched(grad_c, b.transpose(1, 2), seeds[1],
                                            (f_gi, f_gi, f_gw), ctx.key)
        if ctx.needs_input_grad[1]:
            grad_b = _backward_gemm_batched(a.transpose(1, 2), grad_c, seeds[2],
                                            (ops.swap_operands(f_gw), f_gi, f_gi), ctx.key)
        return grad_a, grad_b, None, None, None


class _SequentialBroadcast(torch.autograd.Function):
    """Expand ``x`` to ``shape``; the backward sums over broadcast dims sequentially in FP32."""

    @staticmethod
    def forward(x, shape):
        return x.expand(shape)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.in_shape = inputs[0].shape

    @staticmethod
    def backward(ctx, grad):
        in_shape = ctx.in_shape
        lead = grad.dim() - len(in_shape)
        g = grad
        for d in range(grad.dim()):
            size_in = in_shape[d - lead] if d >= lead else None
            if size_in is None or (size_in == 1 and grad.shape[d] != 1):
                acc = torch.zeros_like(g.select(d, 0))
                for i in range(g.shape[d]):
                    acc = acc + g.select(d, i)
                g = acc.unsqueeze(d)
        return g.reshape(in_shape), None


def _broadcast_batch(x, batch):
    shape = (*batch, *x.shape[-2:])
    if tuple(x.shape) != shape:
        x = _SequentialBroadcast.apply(x, shape)
    return x.reshape(-1, *x.shape[-2:])

"""Autograd functions and the functional API of HBFP ``linear``, ``matmul`` and ``conv2d``.

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
import torch.nn.functional as F

from hbfp_hw.golden import prng
from hbfp_hw.torch import ops
from hbfp_hw.torch.backends import check_backend
from hbfp_hw.torch.config import as_config, derive_seed

__all__ = ["hbfp_linear", "hbfp_matmul", "hbfp_conv2d", "role_seeds", "linear_impl",
           "conv2d_checked", "conv2d_impl"]

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
    if not isinstance(seed, torch.Tensor):
        seed = torch.tensor(seed, dtype=torch.int64)
    seeds = torch.stack([seed, derive_seed(seed, 1), derive_seed(seed, 2)])
    return _Matmul.apply(a, b, seeds, fmts, key)


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
        _, f_gi, f_gw = ctx.fmts
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = _backward_gemm(grad_c, b.t(), seeds[1], (f_gi, f_gi, f_gw), ctx.key)
        if ctx.needs_input_grad[1]:
            grad_b = _backward_gemm(a.t(), grad_c, seeds[2], (f_gw, f_gi, f_gi), ctx.key)
        return grad_a, grad_b, None, None, None


def _prepare(fmt, seed, backend, device):
    config = as_config(fmt, backend=backend, device=device)
    if config.backend == "device":
        check_backend(config)           # opens the device; FormatMismatch names the role
    fmts = config.gemm_args()
    if seed is None:
        stochastic = any(f is not None and f[2] == "stochastic" for f in fmts)
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
        outs = [_Matmul.apply(a3[i], b3[i], _offset(seeds, i), fmts, key)
                for i in range(a3.shape[0])]
        out = torch.stack(outs).reshape(*batch, a2.shape[-2], b2.shape[-1])
    if a_vec:
        out = out.squeeze(-2)
    if b_vec:
        out = out.squeeze(-1)
    return out


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


def _pair(v, name):
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(
            isinstance(i, int) and not isinstance(i, bool) for i in v):
        return tuple(v)
    raise TypeError(f"{name} must be an int or a pair of ints, not {v!r}")


def hbfp_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, fmt="bfp8",
                *, seed=0, backend="emulate", device=None):
    """HBFP ``torch.nn.functional.conv2d`` through im2col and GEMMs.

    The unfolded input ``[B*L, C/groups*kh*kw]`` (``L`` output positions, columns in
    ``F.unfold``'s order) multiplies the flattened weight of each group: the forward GEMM
    reduces over ``C/groups*kh*kw``, the grad_input GEMM over the output channels of the group,
    the grad_weight GEMM over the batch and the spatial positions ``B*L``. col2im (the same
    bits as ``F.fold``) and the bias stay in FP32. Group ``g`` uses seeds ``+ 2 g``.
    ``padding`` may be an int, a pair, ``"valid"`` or ``"same"``. The output has the memory
    format of ``x`` (channels-last or contiguous), as for ``F.conv2d``.
    """
    return conv2d_checked(x, weight, bias, stride, padding, dilation, groups,
                          *_prepare(fmt, seed, backend, device))


@_in_fp32("x", "weight", "bias")
def conv2d_checked(x, weight, bias, stride, padding, dilation, groups, seeds, fmts, key):
    """Validate the arguments of :func:`hbfp_conv2d` and run it with role seeds."""
    if weight.dim() != 4:
        raise ValueError(f"weight must be 4-D [out, in/groups, kh, kw], not of shape "
                         f"{tuple(weight.shape)}")
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"x must be 3-D or 4-D [B, C, H, W], not of shape {tuple(x.shape)}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive integer, not {groups!r}")
    out_ch, in_per_group, kh, kw = weight.shape
    if x.shape[1] != in_per_group * groups or out_ch % groups:
        raise ValueError(f"x has {x.shape[1]} channels and weight {tuple(weight.shape)}; with "
                         f"groups={groups} x must have {in_per_group * groups} channels and "
                         f"out_channels must be a multiple of groups")
    stride = _pair(stride, "stride")
    dilation = _pair(dilation, "dilation")
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            if stride != (1, 1):
                raise ValueError("padding='same' needs stride 1, as in torch")
            total = [dilation[i] * (k - 1) for i, k in enumerate((kh, kw))]
            left = [t // 2 for t in total]
            x = F.pad(x, (left[1], total[1] - left[1], left[0], total[0] - left[0]))
            padding = (0, 0)
        else:
            raise ValueError(f"padding must be an int, a pair, 'valid' or 'same', not "
                             f"{padding!r}")
    padding = _pair(padding, "padding")
    y = conv2d_impl(x, weight, bias, stride, padding, dilation, groups, seeds, fmts, key)
    return y.squeeze(0) if unbatched else y


def _im2col_t(x, kernel, stride, padding, dilation):
    """Return the transposed im2col matrix ``[C*kh*kw, B*L]`` of ``x [B, C, H, W]``, contiguous.

    Row ``(c, i, j)`` (``F.unfold``'s order) holds input ``c`` at kernel offset ``(i, j)`` for
    every output position ``(b, y, x)``: one gather copy of a strided view of ``x``, in the
    layout whose K-blocks the quantizer reduces fastest (positions contiguous).
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph))
    batch, channels, height, width = x.shape
    oh = (height - dh * (kh - 1) - 1) // sh + 1
    ow = (width - dw * (kw - 1) - 1) // sw + 1
    s_b, s_c, s_h, s_w = x.stride()
    view = x.as_strided((channels, kh, kw, batch, oh, ow),
                        (s_c, s_h * dh, s_w * dw, s_b, s_h * sh, s_w * sw))   # x's offset
    return view.reshape(channels * kh * kw, batch * oh * ow)


def _col2im(grad_cols_t, shape, kernel, stride, padding, dilation):
    """``F.fold`` of the transposed columns ``grad_cols_t [C*kh*kw, B*L]`` onto ``shape``,
    bit for bit.

    Like ATen's col2im, every input pixel starts from +0.0 and receives its contributions in
    the order of the kernel offsets ``(i, j)``: one strided in-place add per offset.
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    batch, channels, height, width = shape
    out = grad_cols_t.new_zeros(channels, batch, height + 2 * ph, width + 2 * pw)
    oh = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    g = grad_cols_t.reshape(channels, kh, kw, batch, oh, ow)
    for i in range(kh):
        for j in range(kw):
            out[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                j * dw:j * dw + sw * (ow - 1) + 1:sw].add_(g[:, i, j])
    return out[:, :, ph:ph + height, pw:pw + width].permute(1, 0, 2, 3)


class _Conv2d(torch.autograd.Function):
    """Convolution as im2col GEMMs: ``y = cols @ W^T`` per group, ``[B*L, out]``.

    Backward: ``dW = dy^T @ cols`` (grad_weight) and ``dcols = dy @ W`` (grad_input), folded
    back onto the input by :func:`_col2im`. The im2col matrix is kept transposed,
    ``[C*kh*kw, B*L]``, so that the forward and grad_weight GEMMs see it column-major.
    """

    @staticmethod
    def forward(ctx, x, weight, seeds, fmts, key, geometry):
        stride, padding, dilation, groups = geometry
        cols_t = _im2col_t(x, weight.shape[2:], stride, padding, dilation)
        out_g = weight.shape[0] // groups
        per_group = cols_t.shape[0] // groups
        outs = [ops.role_gemm(cols_t[g * per_group:(g + 1) * per_group].t(),
                              weight[g * out_g:(g + 1) * out_g].reshape(out_g, -1).t(),
                              fmts[0], _offset(seeds, g)[0], key)
                for g in range(groups)]
        # x itself is kept only for double backward, which needs cols_t as a function of x
        ctx.save_for_backward(weight, seeds, cols_t if ctx.needs_input_grad[1] else None, x)
        ctx.fmts, ctx.key, ctx.geometry, ctx.x_shape = fmts, key, geometry, x.shape
        return outs[0] if groups == 1 else torch.cat(outs, dim=1)

    @staticmethod
    def backward(ctx, grad_y):
        weight, seeds, cols_t, x = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        _, f_gi, f_gw = ctx.fmts
        if torch.is_grad_enabled() and ctx.needs_input_grad[1]:
            # double backward: the columns as a differentiable function of x
            cols_t = _im2col_t(x, weight.shape[2:], stride, padding, dilation)
        out_g = weight.shape[0] // groups
        per_group = weight[0].numel()
        grad_x = grad_w = None
        gcols, gws = [], []
        for g in range(groups):
            gy = grad_y[:, g * out_g:(g + 1) * out_g]
            s = _offset(seeds, g)
            if ctx.needs_input_grad[0]:
                gcols.append(_grad_cols_t(gy, weight[g * out_g:(g + 1) * out_g]
                                          .reshape(out_g, -1), f_gi, f_gw, s[1], ctx.key))
            if ctx.needs_input_grad[1]:
                cols = cols_t[g * per_group:(g + 1) * per_group].t()
                gws.append(_backward_gemm(gy.t(), cols, s[2], (f_gw, f_gi, f_gi), ctx.key))
        if ctx.needs_input_grad[0]:
            gc = gcols[0] if groups == 1 else torch.cat(gcols, dim=0)
            grad_x = _col2im(gc, ctx.x_shape, weight.shape[2:], stride, padding, dilation)
        if ctx.needs_input_grad[1]:
            grad_w = (gws[0] if groups == 1 else torch.cat(gws, dim=0)).reshape(weight.shape)
        return grad_x, grad_w, None, None, None, None


def _grad_cols_t(gy, w, fmt_args, f_gw, seed, key):
    """The grad_input GEMM of a convolution, ``dcols = dy @ W``, returned transposed,
    ``[C*kh*kw, B*L]``, the layout in which :func:`_col2im` adds whole rows.

    With a deterministic rounding it is computed as ``W^T @ dy^T``: the same blocks (each
    operand is quantized along the same K, ``out_channels``), the same exact block products
    and the same accumulation order, hence the same bits. Stochastic rounding numbers its
    blocks and draws its seeds per operand, so that role keeps the ``dy @ W`` orientation.
    """
    if fmt_args is not None and fmt_args[2] != "stochastic":
        return _backward_gemm(w.t(), gy.t(), seed, (fmt_args, f_gw, fmt_args), key)
    return _backward_gemm(gy, w, seed, (fmt_args, fmt_args, f_gw), key).t()


def conv2d_impl(x, weight, bias, stride, padding, dilation, groups, seeds, fmts, key):
    """:func:`hbfp_conv2d` on checked 4-D input, pairs of ints, role seeds and format args.

    The output has the memory format of ``x``, as for ``F.conv2d``: channels-last if ``x`` is,
    else contiguous.
    """
    out_ch, _, kh, kw = weight.shape
    batch, _, height, width = x.shape
    oh = (height + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (width + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    y = _Conv2d.apply(x, weight, seeds, fmts, key, (stride, padding, dilation, groups))
    y = y.view(batch, oh, ow, out_ch).permute(0, 3, 1, 2)         # [B, out, oh, ow]
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        y = y.contiguous()
    if bias is not None:
        y = y + bias.reshape(1, -1, 1, 1)
    return y

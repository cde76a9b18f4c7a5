"""HBFP convolutions (1-, 2- and 3-D, transposed too) as im2col GEMMs, and their autograd.

**Convolution** ``y = conv(x, W)``, ``W [out, in/groups, *k]``: the unfolded input
``cols [B*L, in/groups * prod(k)]`` (``L`` output positions, columns in ``F.unfold``'s order:
channel, then kernel offsets) multiplies each group's flattened weight. The forward GEMM
reduces over ``in/groups * prod(k)``; the grad_input GEMM (``dcols = dy @ W``, folded back by
col2im) over the group's output channels; the grad_weight GEMM (``dW = dy^T @ cols``) over the
batch and the output positions ``B*L``.

**Transposed convolution** ``y = conv_transpose(x, W)``, ``W [in, out/groups, *k]``: the
forward GEMM ``cols = x @ W`` reduces over the group's input channels and is folded onto the
output by col2im (with ``padding`` cropped and ``output_padding`` added at the end); the
grad_input GEMM is the convolution of ``dy`` with ``W`` (it reduces over
``out/groups * prod(k)``); the grad_weight GEMM ``dW = x^T @ im2col(dy)`` reduces over
``B*L_in``.

Group ``g`` uses seeds ``+ 2 g`` (:mod:`hbfp_hw.torch.config`). col2im starts every output from
+0.0 and adds the kernel offsets in row-major order, one strided in-place add each (the bits of
``F.fold``); it and the bias are FP32 glue. The output has the memory format of ``x`` as for
``F.conv2d`` (channels-last for 4-D, channels-last-3d for 5-D inputs that have it).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from hbfp_hw.torch import ops
from hbfp_hw.torch.autograd import (
    _backward_gemm,
    _backward_gemm_batched,
    _in_fp32,
    _offset,
    _prepare,
    batch_seeds,
)

__all__ = ["hbfp_conv1d", "hbfp_conv2d", "hbfp_conv3d", "hbfp_conv_transpose1d",
           "hbfp_conv_transpose2d", "hbfp_conv_transpose3d", "conv_checked",
           "conv_transpose_checked", "conv2d_checked"]

_WORDS = {1: "an int or a tuple of 1 int", 2: "an int or a pair of ints",
          3: "an int or a tuple of 3 ints"}


def _ntuple(v, nd, name):
    if isinstance(v, int) and not isinstance(v, bool):
        return (v,) * nd
    if isinstance(v, (tuple, list)) and len(v) == nd and all(
            isinstance(i, int) and not isinstance(i, bool) for i in v):
        return tuple(v)
    raise TypeError(f"{name} must be {_WORDS[nd]}, not {v!r}")


def _positions(size, kernel, stride, padding, dilation):
    return [(size[i] + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1
            for i in range(len(kernel))]


def _im2col_t(x, kernel, stride, padding, dilation, positions=None):
    """Return the transposed im2col matrix ``[C*prod(k), B*L]`` of ``x [B, C, *S]``.

    Row ``(c, *offset)`` (``F.unfold``'s order) holds input ``c`` at that kernel offset for
    every output position ``(b, *pos)``: one gather copy of a strided view of ``x``, positions
    contiguous (the layout whose K-blocks the quantizer reduces fastest). ``positions``
    limits the output grid (default: every position the kernel fits). Differentiable.
    """
    if any(padding):
        x = F.pad(x, [p for p in reversed(padding) for _ in (0, 1)])
    batch, channels, *size = x.shape
    out = positions or _positions(size, kernel, stride, (0,) * len(kernel), dilation)
    s_b, s_c, *s_x = x.stride()
    view = x.as_strided((channels, *kernel, batch, *out),
                        (s_c, *(s * d for s, d in zip(s_x, dilation)), s_b,
                         *(s * t for s, t in zip(s_x, stride))))          # x's offset
    return view.reshape(channels * math.prod(kernel), batch * math.prod(out))


def _col2im(cols_t, shape, kernel, stride, padding, dilation, positions=None):
    """``F.fold`` of ``cols_t [C*prod(k), B*L]`` onto ``shape = (B, C, *S)``, bit for bit.

    ``positions`` is the grid of column positions ``L`` (default: the convolution's output
    positions over ``S``).

    Every output element starts from +0.0 and receives its contributions in the row-major
    order of the kernel offsets: one strided in-place add per offset. Positions that no
    column reaches stay +0.0. Differentiable.
    """
    batch, channels, *size = shape
    nd = len(kernel)
    padded = [size[i] + 2 * padding[i] for i in range(nd)]
    out = positions or _positions(size, kernel, stride, padding, dilation)
    reach = [dilation[i] * (kernel[i] - 1) + stride[i] * (out[i] - 1) + 1 for i in range(nd)]
    buf = cols_t.new_zeros(channels, batch, *(max(p, r) for p, r in zip(padded, reach)))
    g = cols_t.reshape(channels, *kernel, batch, *out)
    for offset in itertools.product(*(range(k) for k in kernel)):
        index = (slice(None), slice(None)) + tuple(
            slice(offset[i] * dilation[i], offset[i] * dilation[i] + stride[i] * (out[i] - 1)
                  + 1, stride[i]) for i in range(nd))
        buf[index].add_(g[(slice(None), *offset)])
    crop = (slice(None), slice(None)) + tuple(slice(padding[i], padding[i] + size[i])
                                              for i in range(nd))
    return buf[crop].movedim(1, 0)


def _grouped(t, groups):
    """``t [G*P, Q]`` as ``[G, P, Q]``."""
    return t.reshape(groups, t.shape[0] // groups, t.shape[1])


class _ConvNd(torch.autograd.Function):
    """Convolution as im2col GEMMs: ``y = cols @ W^T`` per group, ``[B*L, out]``.

    Backward: ``dW = dy^T @ cols`` (grad_weight) and ``dcols = dy @ W`` (grad_input), folded
    back onto the input by :func:`_col2im`. The im2col matrix is kept transposed,
    ``[C*prod(k), B*L]``, so that the forward and grad_weight GEMMs see it column-major. The
    groups' GEMMs of each role run as one batched GEMM (group ``g`` with seeds ``+ 2 g``).
    """

    @staticmethod
    def forward(ctx, x, weight, seeds, fmts, key, geometry):
        stride, padding, dilation, groups = geometry
        cols_t = _im2col_t(x, weight.shape[2:], stride, padding, dilation)
        w3 = _grouped(weight.reshape(weight.shape[0], -1), groups)      # [G, out/g, per]
        if groups == 1:
            y = ops.role_gemm(cols_t.t(), w3[0].t(), fmts[0], seeds[0], key)
        else:
            y3 = ops.role_gemm_batched(_grouped(cols_t, groups).transpose(1, 2),
                                       w3.transpose(1, 2), fmts[0],
                                       batch_seeds(seeds[0], groups), key)   # [G, B*L, out/g]
            y = y3.transpose(0, 1).reshape(y3.shape[1], -1)
        # x itself is kept only for double backward, which needs cols_t as a function of x
        ctx.save_for_backward(weight, seeds, cols_t if ctx.needs_input_grad[1] else None, x)
        ctx.fmts, ctx.key, ctx.geometry, ctx.x_shape = fmts, key, geometry, x.shape
        return y

    @staticmethod
    def backward(ctx, grad_y):
        weight, seeds, cols_t, x = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        fmts, key = ctx.fmts, ctx.key
        if torch.is_grad_enabled() and ctx.needs_input_grad[1]:
            # double backward: the columns as a differentiable function of x
            cols_t = _im2col_t(x, weight.shape[2:], stride, padding, dilation)
        w3 = _grouped(weight.reshape(weight.shape[0], -1), groups)      # [G, out/g, per]
        gy3 = grad_y.reshape(grad_y.shape[0], groups, -1).permute(1, 2, 0)  # [G, out/g, B*L]
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            gc = _grad_cols_t(gy3, w3, fmts[1], fmts[2], seeds[1], key)   # [G, per, B*L]
            grad_x = _col2im(gc.reshape(-1, gc.shape[2]), ctx.x_shape, weight.shape[2:],
                             stride, padding, dilation)
        if ctx.needs_input_grad[1]:
            cols3 = _grouped(cols_t, groups).transpose(1, 2)              # [G, B*L, per]
            grad_w = _gemm3(gy3, cols3, seeds[2], (fmts[2], fmts[1], fmts[1]), key)
            grad_w = grad_w.reshape(weight.shape)
        return grad_x, grad_w, None, None, None, None


def _gemm3(a3, b3, seed, fmts, key):
    """The backward GEMMs of a group stack: one 2-D GEMM for one group, else batched."""
    if a3.shape[0] == 1:
        return _backward_gemm(a3[0], b3[0], seed, fmts, key).unsqueeze(0)
    return _backward_gemm_batched(a3, b3, seed, fmts, key)


def _grad_cols_t(gy3, w3, fmt_args, f_gw, seed, key):
    """The grad_input GEMMs ``dy_g @ W_g`` of the groups, returned transposed,
    ``[G, per, B*L]``, the layout in which :func:`_col2im` adds whole rows.

    With a deterministic rounding each is computed as ``W_g^T @ dy_g^T``: the same blocks
    (each operand is quantized along the same K), the same exact block products and the same
    accumulation order, hence the same bits. Stochastic rounding numbers its blocks and draws
    its seeds per operand, so that role keeps the ``dy @ W`` orientation.
    """
    if fmt_args is not None and not ops.is_stochastic(fmt_args):
        # W^T @ dy^T: the weight first, so a (gradient, weight) pair is swapped
        return _gemm3(w3.transpose(1, 2), gy3, seed,
                      (ops.swap_operands(fmt_args), f_gw, fmt_args), key)
    return _gemm3(gy3.transpose(1, 2), w3, seed, (fmt_args, fmt_args, f_gw), key).transpose(1, 2)


def _like(y, x):
    """``y`` in the memory format of ``x``, as for ``F.conv2d``."""
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
    if fmt is not None and not x.is_contiguous() and x.is_contiguous(memory_format=fmt):
        return y.contiguous(memory_format=fmt)
    return y.contiguous()


def _conv_impl(x, weight, bias, stride, padding, dilation, groups, seeds, fmts, key):
    """Convolution of checked ``x [B, C, *S]`` with tuples of ints, role seeds, format args."""
    nd = weight.dim() - 2
    out = _positions(x.shape[2:], weight.shape[2:], stride, padding, dilation)
    y = _ConvNd.apply(x, weight, seeds, fmts, key, (stride, padding, dilation, groups))
    y = y.view(x.shape[0], *out, weight.shape[0]).movedim(-1, 1)       # [B, out, *pos]
    y = _like(y, x)
    if bias is not None:
        y = y + bias.reshape(1, -1, *(1,) * nd)
    return y


def _check_common(nd, x, weight, groups, what):
    if weight.dim() != nd + 2:
        raise ValueError(f"weight must be {nd + 2}-D {what}, not of shape "
                         f"{tuple(weight.shape)}")
    if x.dim() not in (nd + 1, nd + 2):
        raise ValueError(f"x must be {nd + 1}-D or {nd + 2}-D [B, C, *spatial], not of shape "
                         f"{tuple(x.shape)}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive integer, not {groups!r}")


@_in_fp32("x", "weight", "bias")
def conv_checked(x, weight, bias, stride, padding, dilation, groups, seeds, fmts, key):
    """Validate the arguments of an N-d convolution (N from ``weight``) and run it."""
    nd = weight.dim() - 2 if isinstance(weight, torch.Tensor) and weight.dim() >= 3 else 2
    _check_common(nd, x, weight, groups, "[out, in/groups, *kernel]")
    unbatched = x.dim() == nd + 1
    if unbatched:
        x = x.unsqueeze(0)
    out_ch, in_per_group, *kernel = weight.shape
    if x.shape[1] != in_per_group * groups or out_ch % groups:
        raise ValueError(f"x has {x.shape[1]} channels and weight {tuple(weight.shape)}; with "
                         f"groups={groups} x must have {in_per_group * groups} channels and "
                         f"out_channels must be a multiple of groups")
    stride = _ntuple(stride, nd, "stride")
    dilation = _ntuple(dilation, nd, "dilation")
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0,) * nd
        elif padding == "same":
            if stride != (1,) * nd:
                raise ValueError("padding='same' needs stride 1, as in torch")
            total = [dilation[i] * (k - 1) for i, k in enumerate(kernel)]
            x = F.pad(x, [v for t in reversed(total) for v in (t // 2, t - t // 2)])
            padding = (0,) * nd
        else:
            word = "a pair" if nd == 2 else f"a tuple of {nd}"
            raise ValueError(f"padding must be an int, {word}, 'valid' or 'same', not "
                             f"{padding!r}")
    padding = _ntuple(padding, nd, "padding")
    y = _conv_impl(x, weight, bias, stride, padding, dilation, groups, seeds, fmts, key)
    return y.squeeze(0) if unbatched else y


#: The 2-D convolution of :class:`~hbfp_hw.torch.HBFPConv2d` (the N-d one with a 4-D weight).
conv2d_checked = conv_checked


def _conv_api(nd):
    def conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, fmt="bfp8", *,
             seed=0, backend="emulate", device=None):
        return conv_checked(x, weight, bias, stride, padding, dilation, groups,
                            *_prepare(fmt, seed, backend, device))
    conv.__name__ = conv.__qualname__ = f"hbfp_conv{nd}d"
    conv.__doc__ = (f"HBFP ``torch.nn.functional.conv{nd}d`` through im2col and GEMMs (see "
                    f":mod:`hbfp_hw.torch.conv`); ``fmt``, ``seed``, ``backend`` and "
                    f"``device`` as for :func:`~hbfp_hw.torch.hbfp_linear`. ``padding`` may "
                    f"also be ``'valid'`` or ``'same'``.")
    return conv


hbfp_conv1d, hbfp_conv2d, hbfp_conv3d = (_conv_api(nd) for nd in (1, 2, 3))


# -- transposed convolution ---------------------------------------------------------------------

class _ConvTransposeNd(torch.autograd.Function):
    """``cols = x_flat @ W_g`` per group, folded by col2im (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, seeds, fmts, key, geometry):
        stride, padding, dilation, groups, out_shape = geometry
        in_g = weight.shape[0] // groups
        xf = x.movedim(1, -1).reshape(-1, x.shape[1])               # [B*L_in, in]
        cols = [ops.role_gemm(xf[:, g * in_g:(g + 1) * in_g],
                              weight[g * in_g:(g + 1) * in_g].reshape(in_g, -1),
                              fmts[0], _offset(seeds, g)[0], key).t()
                for g in range(groups)]
        cols_t = cols[0] if groups == 1 else torch.cat(cols, dim=0)
        ctx.save_for_backward(x, weight, seeds)
        ctx.fmts, ctx.key, ctx.geometry = fmts, key, geometry
        return _col2im(cols_t, out_shape, weight.shape[2:], stride, padding, dilation,
                       list(x.shape[2:]))

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, seeds = ctx.saved_tensors
        stride, padding, dilation, groups, _ = ctx.geometry
        _, f_gi, f_gw = ctx.fmts
        kernel = weight.shape[2:]
        in_g = weight.shape[0] // groups
        gcols_t = _im2col_t(grad_y, kernel, stride, padding, dilation,
                            list(x.shape[2:]))                          # [out*k, B*L_in]
        per_group = gcols_t.shape[0] // groups
        grad_x = grad_w = None
        gxs, gws = [], []
        xf = x.movedim(1, -1).reshape(-1, x.shape[1])
        for g in range(groups):
            s = _offset(seeds, g)
            cols = gcols_t[g * per_group:(g + 1) * per_group].t()      # [B*L_in, out/g*k]
            w_g = weight[g * in_g:(g + 1) * in_g].reshape(in_g, -1)    # [in/g, out/g*k]
            if ctx.needs_input_grad[0]:
                gxs.append(_backward_gemm(cols, w_g.t(), s[1], (f_gi, f_gi, f_gw), ctx.key))
            if ctx.needs_input_grad[1]:
                # x^T @ dcols: the activation first, so the grad_weight pair is swapped
                gws.append(_backward_gemm(xf[:, g * in_g:(g + 1) * in_g].t(), cols, s[2],
                                          (ops.swap_operands(f_gw), f_gi, f_gi), ctx.key))
        if ctx.needs_input_grad[0]:
            gx = gxs[0] if groups == 1 else torch.cat(gxs, dim=1)          # [B*L_in, in]
            grad_x = gx.reshape(x.shape[0], *x.shape[2:], x.shape[1]).movedim(-1, 1)
        if ctx.needs_input_grad[1]:
            grad_w = (gws[0] if groups == 1 else torch.cat(gws, dim=0)).reshape(weight.shape)
        return grad_x, grad_w, None, None, None, None


@_in_fp32("x", "weight", "bias")
def conv_transpose_checked(x, weight, bias, stride, padding, output_padding, groups, dilation,
                           seeds, fmts, key):
    """Validate the arguments of an N-d transposed convolution (N from ``weight``), run it."""
    nd = weight.dim() - 2 if isinstance(weight, torch.Tensor) and weight.dim() >= 3 else 2
    _check_common(nd, x, weight, groups, "[in, out/groups, *kernel]")
    unbatched = x.dim() == nd + 1
    if unbatched:
        x = x.unsqueeze(0)
    in_ch, out_per_group, *kernel = weight.shape
    if x.shape[1] != in_ch or in_ch % groups:
        raise ValueError(f"x has {x.shape[1]} channels and weight {tuple(weight.shape)}; x "
                         f"must have {in_ch} channels, a multiple of groups={groups}")
    stride = _ntuple(stride, nd, "stride")
    padding = _ntuple(padding, nd, "padding")
    output_padding = _ntuple(output_padding, nd, "output_padding")
    dilation = _ntuple(dilation, nd, "dilation")
    for i in range(nd):
        if not 0 <= output_padding[i] < max(stride[i], dilation[i]):
            raise ValueError(f"output_padding must be smaller than stride or dilation, not "
                             f"{output_padding} with stride {stride} and dilation {dilation}")
    size = [(x.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (kernel[i] - 1)
            + output_padding[i] + 1 for i in range(nd)]
    if min(size) < 1:
        raise ValueError(f"the output of this transposed convolution would be empty ({size})")
    out_shape = (x.shape[0], out_per_group * groups, *size)
    # col2im reaches the positions [padding, padding + size) of the full output; a part of
    # output_padding beyond its last column stays +0.0.
    y = _ConvTransposeNd.apply(x, weight, seeds, fmts, key,
                               (stride, padding, dilation, groups, out_shape))
    y = _like(y, x)
    if bias is not None:
        y = y + bias.reshape(1, -1, *(1,) * nd)
    return y.squeeze(0) if unbatched else y


def _conv_transpose_api(nd):
    def conv_transpose(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                       dilation=1, fmt="bfp8", *, seed=0, backend="emulate", device=None):
        return conv_transpose_checked(x, weight, bias, stride, padding, output_padding, groups,
                                      dilation, *_prepare(fmt, seed, backend, device))
    conv_transpose.__name__ = conv_transpose.__qualname__ = f"hbfp_conv_transpose{nd}d"
    conv_transpose.__doc__ = (
        f"HBFP ``torch.nn.functional.conv_transpose{nd}d`` as GEMMs and col2im (see "
        f":mod:`hbfp_hw.torch.conv`); ``fmt``, ``seed``, ``backend`` and ``device`` as for "
        f":func:`~hbfp_hw.torch.hbfp_linear`.")
    return conv_transpose


hbfp_conv_transpose1d, hbfp_conv_transpose2d, hbfp_conv_transpose3d = (
    _conv_transpose_api(nd) for nd in (1, 2, 3))

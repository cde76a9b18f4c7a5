"""Forward and all gradients of hbfp_linear / hbfp_matmul / hbfp_conv2d against the golden
model built from the same three quantized GEMMs (plus the same FP32 glue)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hbfp_hw.formats import BFPFormat
from hbfp_hw.torch import HBFPConfig, hbfp_conv2d, hbfp_linear, hbfp_matmul
from hbfp_hw.torch.autograd import role_seeds

from .helpers import clustered, ggemm, same_bits

CONFIGS = {
    "bfp8": HBFPConfig(),
    "sr-mixed": HBFPConfig(BFPFormat(6, 8, "stochastic"), BFPFormat(4, 16, "stochastic"),
                           BFPFormat(8, 4, "toward-zero")),
    "fp32-grad-weight": HBFPConfig("bfp4", "mxint8", "fp32"),
}


def _leaf(rng, shape):
    return clustered(rng, shape, lo=-4, hi=4).requires_grad_(True)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("shape", [(5, 20, 7), (33, 17, 1), (1, 1, 40), (16, 64, 32)])
def test_linear(name, shape):
    cfg = CONFIGS[name]
    rng = np.random.default_rng(sum(shape))
    batch, fan_in, fan_out = shape
    x, w, b = _leaf(rng, (batch, fan_in)), _leaf(rng, (fan_out, fan_in)), _leaf(rng, (fan_out,))
    y = hbfp_linear(x, w, b, cfg, seed=1234)
    gy = clustered(rng, y.shape, lo=-6, hi=0)
    y.backward(gy)
    s = role_seeds(1234).tolist()
    f_fwd, f_gi, f_gw = cfg.formats
    assert same_bits(y, ggemm(x, w.t(), f_fwd, s[0]) + b.detach())
    assert same_bits(x.grad, ggemm(gy, w, f_gi, s[1]))
    assert same_bits(w.grad, ggemm(gy.t(), x, f_gw, s[2]))
    assert same_bits(b.grad, gy.sum(0))


def test_linear_leading_dims_and_no_bias():
    rng = np.random.default_rng(7)
    x, w = _leaf(rng, (3, 4, 21)), _leaf(rng, (6, 21))
    y = hbfp_linear(x, w, None, "bfp8", seed=5)
    assert y.shape == (3, 4, 6)
    gy = clustered(rng, y.shape)
    y.backward(gy)
    s = role_seeds(5).tolist()
    x2, g2 = x.detach().reshape(12, 21), gy.reshape(12, 6)
    assert same_bits(y.reshape(12, 6), ggemm(x2, w.t(), BFPFormat(8, 16), s[0]))
    assert same_bits(x.grad.reshape(12, 21), ggemm(g2, w, BFPFormat(8, 16), s[1]))
    assert same_bits(w.grad, ggemm(g2.t(), x2, BFPFormat(8, 16), s[2]))


def test_stochastic_rounding_is_seeded():
    rng = np.random.default_rng(8)
    x, w = clustered(rng, (8, 40)), clustered(rng, (5, 40))
    fmt = BFPFormat(4, 16, "stochastic")
    y1 = hbfp_linear(x, w, None, fmt, seed=10)
    y2 = hbfp_linear(x, w, None, fmt, seed=10)
    y3 = hbfp_linear(x, w, None, fmt, seed=11)
    assert same_bits(y1, y2)
    assert not same_bits(y1, y3)


@pytest.mark.parametrize("a_shape, b_shape", [
    ((7, 30), (30, 5)),          # plain GEMM
    ((2, 3, 18), (18, 4)),       # b 2-D: one GEMM over the flattened rows of a
    ((30,), (30, 3)),            # vector @ matrix
    ((4, 30), (30,)),            # matrix @ vector
    ((2, 5, 17), (2, 17, 3)),    # batched
    ((3, 1, 5, 17), (2, 17, 6)),  # broadcast batch: b's gradient sums over a broadcast dim
])
def test_matmul(a_shape, b_shape):
    rng = np.random.default_rng(len(a_shape) * 10 + len(b_shape))
    fmt = BFPFormat(8, 16, "stochastic")
    a, b = _leaf(rng, a_shape), _leaf(rng, b_shape)
    c = hbfp_matmul(a, b, fmt, seed=99)
    gc = clustered(rng, c.shape)
    c.backward(gc)
    assert c.shape == torch.matmul(a, b).shape
    s = role_seeds(99).tolist()
    a2 = a.detach().unsqueeze(0) if a.dim() == 1 else a.detach()
    b2 = b.detach().unsqueeze(1) if b.dim() == 1 else b.detach()
    if b2.dim() == 2:
        g2 = gc.reshape(*a2.shape[:-1], b2.shape[-1])
        af, gf = a2.reshape(-1, a2.shape[-1]), g2.reshape(-1, b2.shape[-1])
        ref_c = ggemm(af, b2, fmt, s[0])
        ref_ga = ggemm(gf, b2.t(), fmt, s[1]).reshape(a.shape)
        ref_gb = ggemm(af.t(), gf, fmt, s[2]).reshape(b.shape)
    else:
        batch = torch.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
        ab = a2.expand(*batch, *a2.shape[-2:]).reshape(-1, *a2.shape[-2:])
        bb = b2.expand(*batch, *b2.shape[-2:]).reshape(-1, *b2.shape[-2:])
        gb = gc.reshape(-1, *gc.shape[-2:])
        n = ab.shape[0]
        off = [[(v + 2 * i) % 2**32 for v in s] for i in range(n)]
        ref_c = torch.stack([ggemm(ab[i], bb[i], fmt, off[i][0]) for i in range(n)])
        ga = torch.stack([ggemm(gb[i], bb[i].t(), fmt, off[i][1]) for i in range(n)])
        gbb = torch.stack([ggemm(ab[i].t(), gb[i], fmt, off[i][2]) for i in range(n)])
        ref_ga = _sequential_sum_to(ga.reshape(*batch, *a2.shape[-2:]), a.shape)
        ref_gb = _sequential_sum_to(gbb.reshape(*batch, *b2.shape[-2:]), b.shape)
    assert same_bits(c.reshape(ref_c.shape), ref_c)
    assert same_bits(a.grad, ref_ga)
    assert same_bits(b.grad, ref_gb)


def _sequential_sum_to(g, shape):
    """Sum broadcast dims in increasing index order from +0.0 (what the backward promises)."""
    lead = g.dim() - len(shape)
    for d in range(g.dim()):
        if d < lead or (shape[d - lead] == 1 and g.shape[d] != 1):
            acc = torch.zeros_like(g.select(d, 0))
            for i in range(g.shape[d]):
                acc = acc + g.select(d, i)
            g = acc.unsqueeze(d)
    return g.reshape(shape)


CONV_CASES = [
    # (B, C, H, W, O, k, stride, padding, dilation, groups)
    (2, 3, 8, 8, 5, 3, 1, 1, 1, 1),
    (3, 1, 7, 9, 4, (2, 3), 2, 0, 1, 1),
    (1, 4, 9, 9, 6, 3, 1, 2, 2, 2),
    (2, 2, 6, 6, 3, 1, 1, 0, 1, 1),
]


@pytest.mark.parametrize("name", ["sr-mixed", "bfp8"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:5])))
def test_conv2d(case, name):
    """Stochastic grad_input keeps the ``dy @ W`` orientation; bfp8 computes it as
    ``W^T @ dy^T``, which must give the same bits."""
    bsz, cin, h, wd, cout, k, stride, padding, dilation, groups = case
    kh, kw = (k, k) if isinstance(k, int) else k
    rng = np.random.default_rng(bsz * 100 + cin * 10 + cout)
    cfg = CONFIGS[name]
    x = _leaf(rng, (bsz, cin, h, wd))
    w = _leaf(rng, (cout, cin // groups, kh, kw))
    b = _leaf(rng, (cout,))
    y = hbfp_conv2d(x, w, b, stride, padding, dilation, groups, cfg, seed=31)
    ref_shape = F.conv2d(x, w, b, stride, padding, dilation, groups).shape
    assert y.shape == ref_shape
    gy = clustered(rng, y.shape, lo=-5, hi=0)
    y.backward(gy)

    s = role_seeds(31).tolist()
    f_fwd, f_gi, f_gw = cfg.formats
    oh, ow = y.shape[2:]
    cols = F.unfold(x.detach(), (kh, kw), dilation=dilation, padding=padding, stride=stride)
    cols = cols.transpose(1, 2)                                   # [B, L, C*kh*kw]
    per_g, out_g = cin // groups * kh * kw, cout // groups
    g2 = gy.reshape(bsz, cout, oh * ow).transpose(1, 2).reshape(-1, cout)
    ys, gcols, gws = [], [], []
    for g in range(groups):
        sg = [(v + 2 * g) % 2**32 for v in s]
        a = cols[..., g * per_g:(g + 1) * per_g].reshape(-1, per_g)
        wg = w.detach()[g * out_g:(g + 1) * out_g].reshape(out_g, -1)
        gg = g2[:, g * out_g:(g + 1) * out_g]
        ys.append(ggemm(a, wg.t(), f_fwd, sg[0]))
        gcols.append(ggemm(gg, wg, f_gi, sg[1]))
        gws.append(ggemm(gg.t(), a, f_gw, sg[2]))
    ref_y = torch.cat(ys, 1).reshape(bsz, oh * ow, cout).transpose(1, 2).reshape(y.shape)
    ref_y = ref_y + b.detach().reshape(1, -1, 1, 1)
    gcol = torch.cat(gcols, 1).reshape(bsz, oh * ow, -1).transpose(1, 2)
    ref_gx = F.fold(gcol, (h, wd), (kh, kw), dilation=dilation, padding=padding, stride=stride)
    ref_gw = torch.cat(gws, 0).reshape(w.shape)
    assert same_bits(y, ref_y)
    assert same_bits(x.grad, ref_gx)
    assert same_bits(w.grad, ref_gw)
    assert same_bits(b.grad, gy.sum((0, 2, 3)))


def test_conv2d_input_view_with_offset():
    """An input that is a strided view into a larger tensor (no padding: im2col reads it in
    place) gives the bits of its contiguous copy."""
    rng = np.random.default_rng(16)
    big, w = clustered(rng, (3, 5, 9, 8)), clustered(rng, (4, 3, 2, 3))
    view = big[1:, 1:4, 2:, 1:7]
    assert view.storage_offset() > 0 and not view.is_contiguous()
    assert same_bits(hbfp_conv2d(view, w, fmt="bfp8"),
                     hbfp_conv2d(view.contiguous(), w, fmt="bfp8"))


def test_conv2d_channels_last_and_memory_formats():
    """Channels-last input gives a channels-last output (as F.conv2d does), contiguous input a
    contiguous one; the values and all gradients do not depend on the memory format."""
    rng = np.random.default_rng(14)
    x, w, b = clustered(rng, (3, 4, 7, 6)), clustered(rng, (5, 4, 3, 3)), clustered(rng, (5,))
    results = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        xi = x.detach().contiguous(memory_format=fmt).requires_grad_(True)
        wi, bi = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
        y = hbfp_conv2d(xi, wi, bi, padding=1, fmt="bfp8")
        assert y.is_contiguous(memory_format=fmt)
        y.backward(torch.ones_like(y))
        results.append([y.detach(), xi.grad, wi.grad, bi.grad])
    assert all(same_bits(p.contiguous(), q.contiguous()) for p, q in zip(*results))


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")
def test_conv2d_same_padding_and_unbatched():
    rng = np.random.default_rng(12)
    x, w = clustered(rng, (2, 5, 5)), clustered(rng, (3, 2, 2, 2))
    y = hbfp_conv2d(x, w, None, padding="same", fmt="bfp8")
    assert y.shape == F.conv2d(x, w, padding="same").shape
    # close to FP32 (bfp8: ~2^-6 relative error per element)
    ref = F.conv2d(x, w, padding="same")
    assert torch.allclose(y, ref, rtol=0.05, atol=0.05 * ref.abs().max().item())


def test_fp32_backend_is_plain_fp32():
    rng = np.random.default_rng(13)
    x, w = clustered(rng, (4, 33)), clustered(rng, (2, 33))
    y = hbfp_linear(x, w, None, "bfp2", backend="fp32")
    assert torch.allclose(y, x @ w.t(), rtol=1e-6)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: hbfp_linear(torch.ones(2, 3), torch.ones(4, 5)), ValueError,
     r"^x's last dimension must equal in_features = 5, not shape \(2, 3\)$"),
    (lambda: hbfp_linear(torch.ones(2, 3, dtype=torch.int32), torch.ones(4, 3)), TypeError,
     r"^x must be a float32, bfloat16, float16 or float64 tensor, not torch.int32$"),
    (lambda: hbfp_linear(torch.ones(2, 3), torch.ones(4, 3), fmt="bfp3"), ValueError,
     r"^forward: fmt must be a BFPFormat or one of the presets"),
    (lambda: hbfp_linear(torch.ones(2, 3), torch.ones(4, 3), fmt={"fwd": "bfp8"}), ValueError,
     r"^fmt's keys must be among forward, grad_input, grad_weight \(or the tensor kinds "
     r"activations, weights, gradients\), not fwd$"),
    (lambda: hbfp_linear(torch.ones(2, 3), torch.ones(4, 3), seed=2**32), ValueError,
     r"^seed must be between 0 and 4294967295"),
    (lambda: hbfp_matmul(torch.ones(2, 3), torch.ones(4, 2)), ValueError,
     r"^a's last dimension must equal b's second-to-last \(K\)"),
    (lambda: hbfp_conv2d(torch.ones(1, 3, 4, 4), torch.ones(2, 2, 3, 3)), ValueError,
     r"^x has 3 channels and weight \(2, 2, 3, 3\); with groups=1"),
    (lambda: hbfp_conv2d(torch.ones(1, 2, 4, 4), torch.ones(2, 2, 3, 3), padding="full"),
     ValueError, r"^padding must be an int, a pair, 'valid' or 'same', not 'full'$"),
    (lambda: hbfp_linear(torch.ones(2, 3), torch.ones(4, 3), backend="gpu"), ValueError,
     r"^backend must be one of 'device', 'emulate', 'fp32', not 'gpu'$"),
])
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()

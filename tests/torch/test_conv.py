"""Convolutions of every dimension, transposed ones too: structure and bits."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hbfp_hw.formats import BFPFormat
from hbfp_hw.torch import (
    HBFPConv1d,
    HBFPConv3d,
    HBFPConvTranspose2d,
    convert,
    hbfp_conv1d,
    hbfp_conv_transpose2d,
)
from hbfp_hw.torch.autograd import role_seeds

from .helpers import ggemm, same_bits

SR = BFPFormat(6, 8, "stochastic")

CASES = {
    "conv1d": (lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2), (2, 4, 11)),
    "conv1d-reflect": (lambda: nn.Conv1d(4, 6, 3, padding=1, padding_mode="reflect"),
                       (2, 4, 9)),
    "conv3d": (lambda: nn.Conv3d(4, 6, (2, 3, 2), stride=(1, 2, 1), padding=(1, 0, 1),
                                 groups=2), (2, 4, 5, 6, 4)),
    "depthwise2d": (lambda: nn.Conv2d(8, 8, 3, padding=1, groups=8), (2, 8, 6, 6)),
    "convT1d": (lambda: nn.ConvTranspose1d(4, 3, 3, stride=2, padding=2, output_padding=2,
                                           dilation=3), (2, 4, 7)),
    "convT2d": (lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1,
                                           groups=2), (2, 4, 5, 4)),
    "convT2d-unbatched": (lambda: nn.ConvTranspose2d(3, 4, 3), (3, 4, 4)),
    "convT3d": (lambda: nn.ConvTranspose3d(2, 4, 2, stride=2, bias=False), (1, 2, 3, 3, 2)),
}


@pytest.mark.parametrize("case", CASES)
def test_structure_is_exact_on_small_integers(case):
    """Small integers make every quantization and sum exact (bfp16), so an HBFP layer must
    equal torch's in the forward and in both gradients, bit for bit: any indexing, padding,
    stride, dilation, group or output_padding slip shows."""
    make, shape = CASES[case]
    torch.manual_seed(0)
    ref = make()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randint(-3, 4, p.shape).float())
    hbfp = convert(ref, "bfp16")
    assert type(hbfp).__name__ == "HBFP" + type(ref).__name__
    x = torch.randint(-3, 4, shape).float()
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    ys = [m(xi) for m, xi in zip((ref, hbfp), xs)]
    gy = torch.randint(-2, 3, ys[0].shape).float()
    for y in ys:
        y.backward(gy)
    assert torch.equal(ys[0], ys[1])
    assert torch.equal(xs[0].grad, xs[1].grad)
    assert torch.equal(ref.weight.grad, hbfp.weight.grad)


def test_conv_transpose2d_is_the_documented_gemms():
    """The forward GEMM (x @ W per group, seeds + 2g) folded by col2im, and the two backward
    GEMMs, against golden.gemm with stochastic rounding."""
    torch.manual_seed(1)
    x = torch.randn(2, 4, 3, 5, requires_grad=True)
    w = torch.randn(4, 3, 2, 3, requires_grad=True)           # groups=2: in 2, out 3 per group
    seed = 99
    y = hbfp_conv_transpose2d(x, w, None, stride=2, padding=1, groups=2, fmt=SR, seed=seed)
    seeds = role_seeds(seed)
    xf = x.detach().movedim(1, -1).reshape(-1, 4)
    cols = torch.cat([ggemm(xf[:, 2 * g:2 * g + 2], w.detach()[2 * g:2 * g + 2].reshape(2, -1),
                            SR, int(seeds[0]) + 2 * g) for g in range(2)], dim=1)
    out = F.fold(cols.reshape(2, 15, 36).permute(0, 2, 1), output_size=y.shape[2:],
                 kernel_size=(2, 3), stride=2, padding=1)
    assert same_bits(y, out)
    gy = torch.randn(y.shape)
    y.backward(gy)
    gcols = F.unfold(gy, (2, 3), stride=2, padding=1)          # [B, 6*6, L_in]
    gcols = gcols.permute(0, 2, 1).reshape(-1, 36)
    gx = torch.cat([ggemm(gcols[:, 18 * g:18 * g + 18], w.detach()[2 * g:2 * g + 2]
                          .reshape(2, -1).t(), SR, int(seeds[1]) + 2 * g) for g in range(2)],
                   dim=1)
    assert same_bits(x.grad, gx.reshape(2, 3, 5, 4).movedim(-1, 1))
    gw = torch.cat([ggemm(xf[:, 2 * g:2 * g + 2].t(), gcols[:, 18 * g:18 * g + 18], SR,
                          int(seeds[2]) + 2 * g) for g in range(2)], dim=0)
    assert same_bits(w.grad, gw.reshape(w.shape))


def test_modules_built_directly_and_functional_api():
    conv = HBFPConv1d(3, 5, 3, padding="same", config="bfp8")
    ref = nn.Conv1d(3, 5, 3, padding="same")
    conv.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 10)
    assert same_bits(conv.eval()(x), hbfp_conv1d(x, ref.weight, ref.bias, padding="same"))
    assert HBFPConv3d(2, 2, 1)(torch.randn(1, 2, 2, 2, 2)).shape == (1, 2, 2, 2, 2)
    t = HBFPConvTranspose2d(2, 3, 3, stride=2)
    assert t(torch.randn(1, 2, 4, 4), output_size=(10, 10)).shape == (1, 3, 10, 10)
    with pytest.raises(ValueError, match=r"^output_padding must be smaller than stride"):
        hbfp_conv_transpose2d(torch.randn(1, 2, 4, 4), torch.randn(2, 3, 3, 3), stride=2,
                              output_padding=2)
    with pytest.raises(TypeError, match=r"^stride must be an int or a tuple of 1 int"):
        hbfp_conv1d(x, ref.weight, stride=(1, 1))

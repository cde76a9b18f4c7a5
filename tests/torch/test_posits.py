"""Posit formats in PyTorch (docs/numerics.md 7): every GEMM of a layer, forward and backward,
equals ``golden.gemm`` with the posit preset (products summed in the quire), bit for bit."""

import numpy as np
import pytest
import torch

from hbfp_hw import golden
from hbfp_hw.formats import PRESETS
from hbfp_hw.torch import convert, hbfp_linear, ops


def ref(a, b, fmt):
    return torch.from_numpy(golden.gemm(a.detach().numpy(), b.detach().numpy(), fmt))


@pytest.mark.parametrize("name", ["posit8_es0", "posit8_es2", "posit16_es1"])
def test_linear_every_gemm_matches_golden(name):
    fmt = PRESETS[name]
    g = torch.Generator().manual_seed(len(name))
    x = (torch.randn(6, 40, generator=g) * 3).requires_grad_()
    w = (torch.randn(5, 40, generator=g) / 4).requires_grad_()
    dy = torch.randn(6, 5, generator=g) / 100                  # gradient-sized values
    y = hbfp_linear(x, w, None, fmt, seed=3)
    y.backward(dy)
    assert torch.equal(y, ref(x, w.t(), fmt))
    assert torch.equal(x.grad, ref(dy, w, fmt))
    assert torch.equal(w.grad, ref(dy.t(), x, fmt))
    assert ops._format(*ops.format_args(fmt)) == fmt


def test_convert_and_report():
    model = convert(torch.nn.Sequential(torch.nn.Linear(8, 4)), "posit8_es2")
    assert [e.formats for e in model.hbfp_report.entries if e.hbfp] == ["posit8_es2"]
    out = model(torch.randn(3, 8))
    assert np.isfinite(out.detach().numpy()).all()
    with pytest.raises(ValueError, match=r"accumulator='bf16-sr' conflicts with forward's "
                                         r"format posit8_es2, which accumulates in exact"):
        convert(torch.nn.Linear(4, 4), "posit8_es2", accumulator="bf16-sr")

"""Accumulators in PyTorch (docs/numerics.md 6): ``convert(..., accumulator=NAME)`` and formats
with an accumulator; every GEMM of a layer, forward and backward, equals ``golden.gemm`` with
that accumulator and the role's seed, bit for bit; the device backend refuses them."""

import numpy as np
import pytest
import torch

from hbfp_hw import golden
from hbfp_hw.formats import PRESETS, Accumulator
from hbfp_hw.torch import (
    as_config,
    convert,
    hbfp_conv2d,
    hbfp_linear,
    hbfp_matmul,
    ops,
    set_seed,
)
from hbfp_hw.torch.autograd import batch_seeds, role_seeds
from hbfp_hw.torch.backends import DeviceBackend
from hbfp_hw.torch.conv import _im2col_t

from .conftest import assert_compiled_matches_eager

ACCUMULATORS = ["fp32-kahan", "bf16-rne", "bf16-sr", "exact"]


def fmt_with(acc):
    return PRESETS["bfp8"].replace(accumulator=acc)


def ref(a, b, fmt, seed):
    return torch.from_numpy(golden.gemm(a.detach().numpy(), b.detach().numpy(), fmt,
                                        seed=int(seed)))


def spread(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * torch.exp2(
        torch.randint(-10, 10, (1, shape[-1]), generator=g).float())


@pytest.mark.parametrize("acc", ACCUMULATORS)
def test_linear_every_gemm_matches_golden(acc):
    fmt = fmt_with(acc)
    x = spread(6, 200, seed=1).requires_grad_()
    w = spread(5, 200, seed=2).requires_grad_()
    dy = spread(6, 5, seed=3)
    y = hbfp_linear(x, w, None, fmt, seed=7)
    y.backward(dy)
    s = role_seeds(7)
    assert torch.equal(y, ref(x, w.t(), fmt, s[0]))
    assert torch.equal(x.grad, ref(dy, w, fmt, s[1]))
    assert torch.equal(w.grad, ref(dy.t(), x, fmt, s[2]))


@pytest.mark.parametrize("acc", ["bf16-sr", "exact"])
def test_batched_matmul_and_conv_forward_match_golden(acc):
    fmt = fmt_with(acc)
    a, b = spread(3, 4, 80, seed=4), spread(3, 80, 6, seed=5)
    c = hbfp_matmul(a, b, fmt, seed=9)
    seeds = batch_seeds(role_seeds(9)[0], 3)
    for g in range(3):
        assert torch.equal(c[g], ref(a[g], b[g], fmt, seeds[g]))
    x, w = spread(2, 8, 6, 6, seed=6), spread(4, 8, 3, 3, seed=7)
    y = hbfp_conv2d(x, w, None, padding=1, fmt=fmt, seed=3)
    cols_t = _im2col_t(x, (3, 3), (1, 1), (1, 1), (1, 1))               # [C*k*k, B*L]
    want = ref(cols_t.t(), w.reshape(4, -1).t(), fmt, role_seeds(3)[0])   # [B*L, out]
    assert torch.equal(y.permute(0, 2, 3, 1).reshape(-1, 4), want)


def test_convert_gives_every_layer_the_accumulator():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    hb = convert(model, "bfp8", accumulator="bf16-sr",
                 layers={"2": {"grad_weight": "bfp4"}})
    assert [e.formats for e in hb.hbfp_report.entries if e.hbfp] == \
        ["bfp8_bf16sr", "fwd=bfp8_bf16sr gi=bfp8_bf16sr gw=bfp4_bf16sr"]
    x = torch.randn(16, 64)
    hb(x).sum().backward()
    # per-operand pairs take it too, and an op argument carries it
    cfg = as_config("mxfp8_e4m3/mxfp8_e5m2", accumulator="exact")
    assert all(f.accumulator is Accumulator.EXACT for f in cfg.grad_input)
    args = cfg.gemm_args()[1]
    assert ops.has_operand_pair(args) and args[-1] == "exact"
    assert ops._format(*args) == cfg.grad_input
    assert not ops.is_stochastic(cfg.gemm_args()[0])
    assert ops.is_stochastic(as_config("bfp8", accumulator="bf16-sr").gemm_args()[0])


# Dynamo's own autograd.Function handling warns (as in tests/torch/test_compile.py).
@pytest.mark.filterwarnings(
    "ignore:.*should not be instantiated. Methods on autograd functions:DeprecationWarning")
def test_op_carries_the_accumulator_through_the_dispatcher():
    """``torch.ops.hbfp.gemm`` (the path of torch.compile and tracing) with the accumulator
    argument equals the golden model; a compiled model gives the eager bits."""
    fmt = fmt_with("bf16-sr")
    a, b = spread(5, 96, seed=8), spread(96, 3, seed=9)
    args = ops.format_args(fmt)
    got = torch.ops.hbfp.gemm(a, b, *args[:4], torch.tensor(4), "emulate", *args[4:])
    assert torch.equal(got, ref(a, b, fmt, 4))
    torch.manual_seed(0)
    model = convert(torch.nn.Sequential(torch.nn.Linear(96, 8), torch.nn.ReLU(),
                                        torch.nn.Linear(8, 3)), "bfp8", accumulator="bf16-sr")
    assert_compiled_matches_eager(model, a, reset=lambda: set_seed(model, step=0))


def test_errors():
    with pytest.raises(ValueError, match=r"accumulator must be one of 'fp32', 'fp32-kahan', "
                                         r"'bf16-rne', 'bf16-sr', 'exact', not 'kahan'"):
        as_config("bfp8", accumulator="kahan")
    with pytest.raises(ValueError, match=r"accumulator='exact' conflicts with forward's format "
                                         r"bfp8_bf16rne, which accumulates in bf16-rne"):
        convert(torch.nn.Linear(4, 4), fmt_with("bf16-rne"), accumulator="exact")
    backend = DeviceBackend.__new__(DeviceBackend)
    backend.fmt, backend.url = PRESETS["bfp8"], "sim"
    with pytest.raises(Exception, match=r"backend='device': the forward GEMM asks for the exact "
                                        r"accumulator, which the GEMM system does not "
                                        r"implement yet \(it accumulates in fp32\); use "
                                        r"backend='emulate'"):
        backend.check_format(fmt_with("exact"), "forward")
    assert np.isfinite(ref(spread(2, 16, seed=1), spread(16, 2, seed=2), fmt_with("exact"),
                           0).numpy()).all()

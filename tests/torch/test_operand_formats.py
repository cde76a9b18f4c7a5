"""Per-operand formats in PyTorch (FP8 training: E4M3 activations and weights, E5M2
gradients): every GEMM of linear, matmul, convolution and transposed convolution, forward and
backward, equals ``golden.gemm`` with the pair of its operands' kinds, bit for bit."""

import numpy as np
import pytest
import torch

from hbfp_hw import golden
from hbfp_hw.formats import resolve_format
from hbfp_hw.torch import (
    HBFPConfig,
    as_config,
    convert,
    hbfp_conv2d,
    hbfp_conv_transpose2d,
    hbfp_linear,
    hbfp_matmul,
    ops,
)
from hbfp_hw.torch.conv import _im2col_t

from .conftest import assert_compiled_matches_eager

E4M3, E5M2 = resolve_format("mxfp8_e4m3"), resolve_format("mxfp8_e5m2")
FP8 = {"activations": "mxfp8_e4m3", "weights": "mxfp8_e4m3", "gradients": "mxfp8_e5m2"}


def ref(a, b, fa, fb, seed=0):
    out = golden.gemm(a.detach().numpy(), b.detach().numpy(), (fa, fb), seed=seed)
    return torch.from_numpy(out)


def wide(*shape, seed):
    """Values over many binades, so that E4M3 and E5M2 round differently (and saturate)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g)
            * torch.exp2(torch.randint(-12, 12, shape, generator=g).float()))


def test_config_from_tensor_kinds():
    cfg = as_config(FP8)
    assert cfg.forward == E4M3
    assert cfg.grad_input == (E5M2, E4M3) and cfg.grad_weight == (E5M2, E4M3)
    assert cfg.describe() == "fwd=mxfp8_e4m3 gi=mxfp8_e5m2/mxfp8_e4m3 gw=mxfp8_e5m2/mxfp8_e4m3"
    args = cfg.gemm_args()
    assert not ops.has_operand_pair(args[0]) and ops.has_operand_pair(args[1])
    assert ops._format(*args[1]) == (E5M2, E4M3)
    assert ops._format(*ops.swap_operands(args[1])) == (E4M3, E5M2)
    # a role given as a pair directly, and a pair of equal formats stored as one format
    assert HBFPConfig(grad_input=("bfp8", "bfp4")).grad_input == (resolve_format("bfp8"),
                                                                   resolve_format("bfp4"))
    assert HBFPConfig(forward=("bfp8", "bfp8")).forward == resolve_format("bfp8")
    # "A/G": the FP8 recipe's shorthand (activations and weights A, gradients G)
    assert as_config("mxfp8_e4m3/mxfp8_e5m2") == cfg


@pytest.mark.parametrize(("spec", "message"), [
    ({"activations": "mxfp8_e4m3", "forward": "bfp8"},
     r"^fmt's keys must be roles .* or tensor kinds .*, not both"),
    ({"gradients": "fp32"}, r"^gradients: a format, not 'fp32'"),
    ({"gradients": "bfp8", "activations": "mxfp8_e4m3", "weights": "mxfp8_e4m3"},
     r"^forward|^grad_input: the pair \(gradient, weight\): the operands' formats must share "
     r"the block size"),
    ({"grad_input": ("bfp8", "bfp4", "bfp2")}, r"^grad_input: a pair of formats"),
    ("mxfp8_e4m3/", r"^fmt 'A/G' gives activations and weights A and gradients G"),
])
def test_config_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        as_config(spec)


def test_linear_every_gemm_matches_golden():
    x = wide(7, 70, seed=1).requires_grad_()
    w = wide(9, 70, seed=2).requires_grad_()
    dy = wide(7, 9, seed=3)
    y = hbfp_linear(x, w, None, FP8)
    y.backward(dy)
    assert torch.equal(y, ref(x, w.t(), E4M3, E4M3))
    assert torch.equal(x.grad, ref(dy, w, E5M2, E4M3))
    assert torch.equal(w.grad, ref(dy.t(), x, E5M2, E4M3))
    # the gradients' own format matters: E4M3 gradients give other bits
    assert not torch.equal(x.grad, ref(dy, w, E4M3, E4M3))


def test_matmul_orients_each_pair_by_kind():
    """``c = a @ b``: ``da = dc @ b^T`` is (gradient, weight); ``db = a^T @ dc`` puts the
    activation first, so it gets the grad_weight pair swapped."""
    a = wide(2, 5, 40, seed=4).requires_grad_()
    b = wide(2, 40, 6, seed=5).requires_grad_()
    dc = wide(2, 5, 6, seed=6)
    c = hbfp_matmul(a, b, FP8)
    c.backward(dc)
    for i in range(2):       # batched: sub-GEMM i with seeds + 2i (irrelevant to nearest-even)
        assert torch.equal(c[i], ref(a[i], b[i], E4M3, E4M3))
        assert torch.equal(a.grad[i], ref(dc[i], b[i].t(), E5M2, E4M3))
        assert torch.equal(b.grad[i], ref(a[i].t(), dc[i], E4M3, E5M2))


def _conv_step(conv, x_shape, w_shape, seed):
    """One forward and backward pass of ``conv`` in the FP8 split; returns x, w, y, dy."""
    x = wide(*x_shape, seed=seed).requires_grad_()
    w = wide(*w_shape, seed=seed + 1).requires_grad_()
    y = conv(x, w, None, fmt=FP8)
    dy = wide(*y.shape, seed=seed + 2)
    y.backward(dy)
    return x, w, y, dy


def test_conv2d_every_gemm_matches_golden():
    """grad_input of a convolution runs as ``W^T @ dy^T`` (nearest-even): the pair swaps."""
    x, w, y, dy = _conv_step(hbfp_conv2d, (2, 3, 6, 6), (4, 3, 3, 3), seed=7)
    cols = _im2col_t(x.detach(), (3, 3), (1, 1), (0, 0), (1, 1)).t()       # [B*L, C*9]
    wm = w.detach().reshape(4, -1)
    dym = dy.movedim(1, -1).reshape(-1, 4)
    assert torch.equal(y.movedim(1, -1).reshape(-1, 4), ref(cols, wm.t(), E4M3, E4M3))
    assert torch.equal(w.grad.reshape(4, -1), ref(dym.t(), cols, E5M2, E4M3))
    # grad_input: dcols = dy @ W, folded back by col2im (checked against the GEMM through
    # F.fold, which adds the same columns)
    dcols = ref(dym, wm, E5M2, E4M3)
    folded = torch.nn.functional.fold(
        dcols.reshape(2, 16, 27).transpose(1, 2), (6, 6), (3, 3))
    assert torch.equal(x.grad, folded)


def test_conv_transpose2d_weight_gradient_orientation():
    """grad_weight of a transposed convolution runs as ``x^T @ dcols`` (activation first)."""
    x, w, _, dy = _conv_step(hbfp_conv_transpose2d, (2, 3, 4, 4), (3, 2, 3, 3), seed=10)
    xf = x.detach().movedim(1, -1).reshape(-1, 3)
    gcols = _im2col_t(dy, (3, 3), (1, 1), (0, 0), (1, 1), [4, 4]).t()     # [B*L_in, 2*9]
    assert torch.equal(w.grad.reshape(3, -1), ref(xf.t(), gcols, E4M3, E5M2))
    assert torch.equal(x.grad.movedim(1, -1).reshape(-1, 3),
                       ref(gcols, w.detach().reshape(3, -1).t(), E5M2, E4M3))


# Dynamo's own autograd.Function handling warns (as in tests/torch/test_compile.py).
@pytest.mark.filterwarnings(
    "ignore:.*should not be instantiated. Methods on autograd functions:DeprecationWarning")
def test_convert_and_compile():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(40, 16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 3))
    assert_compiled_matches_eager(convert(model, FP8), wide(8, 40, seed=13))


def test_stochastic_pair_seeds_each_operand():
    """A stochastic gradient format in a pair: A uses the role's seed, B seed + 1."""
    sr = resolve_format("mxfp8_e5m2").replace(rounding="stochastic")
    cfg = as_config({"activations": "mxfp8_e4m3", "weights": "mxfp8_e4m3", "gradients": sr})
    x = wide(3, 64, seed=14).requires_grad_()
    w = wide(5, 64, seed=15).requires_grad_()
    dy = wide(3, 5, seed=16)
    hbfp_linear(x, w, None, cfg, seed=123).backward(dy)
    from hbfp_hw.torch.autograd import role_seeds
    seeds = role_seeds(123)
    assert torch.equal(x.grad, ref(dy, w, sr, E4M3, seed=int(seeds[1])))
    assert torch.equal(w.grad, ref(dy.t(), x, sr, E4M3, seed=int(seeds[2])))


def test_double_backward_with_pairs_is_refused():
    """create_graph=True gives the first-order gradients (the same bits); differentiating
    them again is refused: second-order GEMMs have no tensor kinds."""
    x = wide(3, 32, seed=17).requires_grad_()
    w = wide(4, 32, seed=18).requires_grad_()
    (g,) = torch.autograd.grad(hbfp_linear(x, w, None, FP8).sum(), x)
    (g2,) = torch.autograd.grad(hbfp_linear(x, w, None, FP8).sum(), x, create_graph=True)
    assert torch.equal(g, g2) and g2.requires_grad
    with pytest.raises(NotImplementedError, match="double backward .* per-operand formats"):
        torch.autograd.grad(g2.square().sum(), w)


def test_device_backend_refuses_pairs():
    from hbfp_hw.fpga.host.driver import FormatMismatch

    with pytest.raises(FormatMismatch, match=r"the grad_input GEMM asks for per-operand "
                                             r"formats bfp4 and bfp8"):
        hbfp_linear(torch.ones(2, 16), torch.ones(3, 16), None,
                    {"activations": "bfp8", "weights": "bfp8", "gradients": "bfp4"},
                    backend="device")


def test_ops_gemm_takes_a_pair():
    a, b = wide(4, 64, seed=19), wide(64, 5, seed=20)
    out = ops.gemm(a, b, ("mxfp8_e4m3", "mxfp8_e5m2"))
    assert torch.equal(out, ref(a, b, E4M3, E5M2))
    assert np.isfinite(out.numpy()).all()


def test_function_mode_takes_tensor_kinds():
    """Under hbfp_mode, ``a @ b`` is the HBFP matmul with the same per-operand formats."""
    from hbfp_hw.torch import hbfp_mode

    a = wide(6, 40, seed=21).requires_grad_()
    b = wide(40, 7, seed=22).requires_grad_()
    dc = wide(6, 7, seed=23)
    with hbfp_mode(FP8, seed=0):
        c = a @ b
    c.backward(dc)
    assert torch.equal(c, ref(a, b, E4M3, E4M3))
    assert torch.equal(a.grad, ref(dc, b.t(), E5M2, E4M3))
    assert torch.equal(b.grad, ref(a.t(), dc, E4M3, E5M2))

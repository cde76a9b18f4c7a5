"""No silent wrong results: double backward, re-conversion, layer ids, inference seeds,
checkpoints, per-layer rules, the conversion report and input dtypes."""

import copy
import warnings

import pytest
import torch
from torch import nn

from hbfp_hw.formats import BFPFormat
from hbfp_hw.torch import (
    FP32LayerWarning,
    HBFPLinear,
    convert,
    hbfp_linear,
    hbfp_matmul,
    hbfp_modules,
    layer_id_for,
    strip_hbfp_state,
)
from hbfp_hw.torch import autograd as hbfp_autograd
from hbfp_hw.torch.config import derive_seed

from .helpers import ggemm, same_bits

SR = BFPFormat(4, 16, "stochastic")


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 3))


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# -- double backward ----------------------------------------------------------------------------

def test_issue_example_double_backward_is_not_zero():
    torch.manual_seed(0)
    base = nn.Linear(8, 8)
    grads = {}
    for name, lin in (("fp32", base), ("bfp8", convert(base))):
        x = torch.randn(4, 8, requires_grad=True, generator=torch.Generator().manual_seed(1))
        g, = torch.autograd.grad(torch.tanh(lin(x)).sum(), x, create_graph=True)
        g.pow(2).sum().backward()
        grads[name] = (lin.weight.grad, x.grad)
    for hbfp, fp32 in zip(grads["bfp8"], grads["fp32"]):
        assert hbfp.abs().sum() > 0
        assert _rel(hbfp, fp32) < 0.03                # bfp8 quantization error, not zeros


@pytest.mark.parametrize("kind", ["linear", "conv", "matmul"])
def test_gradient_penalty_matches_fp32(kind):
    """A gradient penalty (WGAN-GP style) through every kind of HBFP op, against FP32."""
    torch.manual_seed(1)
    if kind == "conv":
        model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
                              nn.Linear(4 * 5 * 5, 1))
        x = torch.randn(3, 2, 5, 5)
    elif kind == "linear":
        model = _mlp()
        x = torch.randn(5, 12)
    else:
        w = torch.randn(12, 6)
        x = torch.randn(5, 12)
    results = []
    for hbfp in (False, True):
        xi = x.clone().requires_grad_(True)
        if kind == "matmul":
            wi = w.clone().requires_grad_(True)
            out = hbfp_matmul(xi, wi, "bfp8") if hbfp else xi @ wi
            params = [wi]
            out = torch.tanh(out).sum(dim=1)
        else:
            m = convert(model) if hbfp else copy.deepcopy(model)
            params = list(m.parameters())
            out = m(xi)
        g, = torch.autograd.grad(out.sum(), xi, create_graph=True)
        penalty = (g.flatten(1).norm(dim=1) - 1).pow(2).mean()
        penalty.backward()
        results.append([xi.grad] + [p.grad for p in params])
    checked = 0
    for fp32, hbfp in zip(*results):
        assert (hbfp is None) == (fp32 is None)         # e.g. the last bias: no gradient
        if fp32 is not None:
            assert hbfp.abs().sum() > 0 and _rel(hbfp, fp32) < 0.05
            checked += 1
    assert checked >= 2


def test_first_order_gradients_are_the_same_bits_with_create_graph():
    model = convert(_mlp(), SR, seed=3)
    x = torch.randn(6, 12)
    grads = []
    for create_graph in (False, True):
        m = copy.deepcopy(model)
        loss = m(x).square().sum()
        grads.append(torch.autograd.grad(loss, list(m.parameters()), create_graph=create_graph))
    assert all(same_bits(a, b) for a, b in zip(*grads))


def test_second_order_gemms_use_the_documented_formats_and_seeds():
    """``d/dW sum((v @ W) * u) = v^T @ u``: the grad_weight-format GEMM with seed
    ``derive_seed(grad_input seed, 2)`` (docs/numerics.md, PyTorch section)."""
    fmts = {"forward": "bfp8", "grad_input": SR, "grad_weight": BFPFormat(6, 8, "stochastic")}
    torch.manual_seed(2)
    x = torch.randn(5, 10, requires_grad=True)
    w = torch.randn(7, 10, requires_grad=True)
    v, u = torch.randn(5, 7), torch.randn(5, 10)
    call = 12345
    y = hbfp_linear(x, w, None, fmts, seed=call)
    gx, = torch.autograd.grad(y, x, grad_outputs=v, create_graph=True)
    s_gi = derive_seed(call, 1)
    assert same_bits(gx, ggemm(v, w, SR, s_gi))                  # the first-order GEMM
    (gx * u).sum().backward()
    # y = x @ W^T, so this is d/dW^T transposed back: W.grad = (v^T @ u)
    ref = ggemm(v.t(), u, fmts["grad_weight"], derive_seed(s_gi, 2))
    assert same_bits(w.grad, ref)


# -- convert: re-conversion, ids, skip, rules, report -------------------------------------------

def test_reconversion_applies_the_new_format_and_keeps_steps():
    model = convert(_mlp(), "bfp8")
    model(torch.randn(2, 12)).sum().backward()
    again = convert(model, "bfp4")
    assert all(m.hbfp_config.forward == BFPFormat(4, 16) for m in hbfp_modules(again))
    assert all(int(m.hbfp_step) == 1 for m in hbfp_modules(again))
    assert all(m.hbfp_config.forward == BFPFormat(8, 16) for m in hbfp_modules(model))
    x = torch.randn(3, 12)
    assert same_bits(again.eval()(x), convert(_mlp(), "bfp4").eval()(x))


def test_layer_ids_are_unique_and_stable_under_partial_conversion():
    part = convert(_mlp(), skip=["4"])
    whole = convert(part)
    ids = [m.layer_id for m in hbfp_modules(whole)]
    assert len(set(ids)) == 3
    assert ids == [layer_id_for(n) for n in ("0", "2", "4")]
    assert ids == [m.layer_id for m in hbfp_modules(convert(_mlp()))]


def test_unknown_names_raise():
    with pytest.raises(ValueError, match=r"^skip names 'nonexistent' match no module"):
        convert(_mlp(), skip=["nonexistent"])
    with pytest.raises(ValueError, match=r"^layers patterns 'head\.\*' match no layer"):
        convert(_mlp(), layers={"head.*": "fp32"})
    with pytest.raises(ValueError, match=r"^layers patterns '2' match no layer .* an earlier "):
        convert(_mlp(), layers={"*": "bfp4", "2": "fp32"})       # shadowed by the first
    with pytest.raises(ValueError, match=r"^layers pattern 're:\(' is not a valid regular"):
        convert(_mlp(), layers={"re:(": "fp32"})
    with pytest.raises(ValueError, match=r"^layers\['0'\]: forward: fmt must be"):
        convert(_mlp(), layers={"0": "bfp99"})
    with pytest.raises(ValueError, match=r"^layers\['0'\]: its role keys must be among"):
        convert(_mlp(), layers={"0": {"fwd": "bfp4"}})


def test_layer_rules_first_match_wins():
    model = convert(_mlp(), "bfp8", layers=[
        ("0", "fp32"),                                    # first layer in FP32
        ("re:[24]", {"grad_weight": "bfp4"})])            # regex, per-role
    assert type(model[0]) is nn.Linear
    assert model[2].hbfp_config.describe() == "fwd=bfp8 gi=bfp8 gw=bfp4"
    assert model[4].hbfp_config.describe() == "fwd=bfp8 gi=bfp8 gw=bfp4"
    model = convert(_mlp(), "bfp8", layers={"4": "fp32", "*": "bfp6"})
    assert [m.hbfp_config.describe() for m in hbfp_modules(model)] == ["bfp6", "bfp6"]
    report = model.hbfp_report
    assert [(e.name, e.hbfp) for e in report.entries] == [("0", True), ("2", True),
                                                           ("4", False)]
    assert report.fp32[0].reason == "rule '4' keeps it in FP32" and not report.fp32[0].warned


def test_report_and_warning_for_modules_left_in_fp32():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2)
            self.norm = nn.LayerNorm(8)
            self.proj = nn.Linear(8, 8)
            self.seq = nn.GRU(8, 8)
            self.pair = nn.Bilinear(8, 8, 4)

    with pytest.warns(FP32LayerWarning) as record:
        model = convert(Block())
    message = str(record[0].message)
    assert "seq (GRU)" in message and "pair (Bilinear)" in message
    assert "norm" not in message                    # no GEMM: reported, not warned about
    report = model.hbfp_report
    assert [e.name for e in report.converted] == ["attn", "proj"]    # MHA with its out_proj
    assert {e.name: e.warned for e in report.fp32} == {"norm": False, "seq": True,
                                                       "pair": True}
    assert "LayerNorm has no GEMM" in str(report)
    assert report.to_dict()["converted"][0]["formats"] == "bfp8"
    # keeping them in FP32 on purpose silences the warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert(Block(), skip=["seq", nn.Bilinear])


# -- seeds: inference, validation, checkpoints --------------------------------------------------

def test_inference_is_deterministic_and_leaves_the_step():
    model = convert(_mlp(), SR, seed=4)
    x = torch.randn(5, 12)
    model.eval()
    assert same_bits(model(x), model(x))
    model.train()
    with torch.no_grad():
        assert same_bits(model(x), model(x))
    assert all(int(m.hbfp_step) == 0 for m in hbfp_modules(model))
    assert not same_bits(model(x), model(x))            # training forwards: a new seed each


def _train(model, steps, validate_every=None, opt_state=None, start=0):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    gen = torch.Generator().manual_seed(10)
    data = [(torch.randn(8, 12, generator=gen), torch.randint(0, 3, (8,), generator=gen))
            for _ in range(start + steps)]
    for i, (x, y) in enumerate(data[start:], start):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if validate_every and i % validate_every == 0:
            model.eval()
            with torch.no_grad():
                model(torch.randn(4, 12))
            model.train()
    return opt


def test_validation_does_not_change_training():
    a, b = convert(_mlp(), SR, seed=6), convert(_mlp(), SR, seed=6)
    _train(a, 5)
    _train(b, 5, validate_every=1)
    assert all(same_bits(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_resume_from_checkpoint_is_bit_exact():
    straight = convert(_mlp(), SR, seed=8)
    _train(straight, 5)
    first = convert(_mlp(), SR, seed=8)
    opt = _train(first, 3)
    checkpoint = copy.deepcopy({"model": first.state_dict(), "opt": opt.state_dict()})
    assert [int(checkpoint["model"][f"{i}.hbfp_step"]) for i in (0, 2, 4)] == [3, 3, 3]
    resumed = convert(_mlp(), SR, seed=8)
    resumed.load_state_dict(checkpoint["model"])              # strict
    _train(resumed, 2, opt_state=checkpoint["opt"], start=3)
    assert all(same_bits(p, q) for p, q in zip(straight.parameters(), resumed.parameters()))
    # without the step counters the resumed run differs: the check can fail
    lost = convert(_mlp(), SR, seed=8)
    lost.load_state_dict(strip_hbfp_state(checkpoint["model"]), strict=False)
    _train(lost, 2, opt_state=checkpoint["opt"], start=3)
    assert not all(same_bits(p, q) for p, q in zip(straight.parameters(), lost.parameters()))
    # the FP32 model loads the HBFP checkpoint once the counters are stripped
    _mlp().load_state_dict(strip_hbfp_state(checkpoint["model"]))
    # deterministic formats add nothing to the state_dict
    assert list(convert(_mlp(), "bfp8").state_dict()) == list(_mlp().state_dict())


# -- dtypes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_are_exact_in_fp32(dtype):
    torch.manual_seed(0)
    model = convert(nn.Linear(12, 3), "bfp8")
    x = torch.randn(6, 12).to(dtype)
    xr = x.clone().requires_grad_(True)
    x32 = x.float().requires_grad_(True)
    y = model(xr)
    ref = model(x32)
    assert y.dtype == dtype and torch.equal(y, ref.to(dtype))
    y.float().sum().backward()
    ref.sum().backward()
    assert xr.grad.dtype == dtype and torch.equal(xr.grad, x32.grad.to(dtype))
    half = copy.deepcopy(model).to(dtype)                    # half weights: exact in FP32 too
    ref32 = copy.deepcopy(half).float()
    assert torch.equal(half(x), ref32(x.float()).to(dtype))


def test_fp64_input_is_rounded_with_one_warning(monkeypatch):
    monkeypatch.setattr(hbfp_autograd, "_fp64_warned", False)
    model = convert(_mlp(), "bfp8")
    x = torch.randn(4, 12, dtype=torch.float64)
    with pytest.warns(UserWarning, match=r"float64 x is rounded to float32"):
        y = model(x)
    assert y.dtype == torch.float64 and torch.equal(y, model(x.float()).double())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(x)                                               # once only


def test_autocast_returns_the_autocast_dtype():
    model = convert(_mlp(), "bfp8")
    x = torch.randn(4, 12, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
        lin = HBFPLinear(12, 5)
        z = lin(x)
    assert y.dtype == torch.bfloat16 and z.dtype == torch.bfloat16
    # the GEMM itself ran on the FP32 values (autocast off inside): the same bits, rounded
    assert torch.equal(z, lin(x).to(torch.bfloat16))
    y.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32


def test_integer_input_is_a_type_error():
    with pytest.raises(TypeError, match=r"^x must be a float32, bfloat16, float16 or float64 "
                                        r"tensor, not torch\.int64$"):
        convert(_mlp())(torch.ones(2, 12, dtype=torch.int64))

"""The hbfp::gemm custom op: fake tensors, opcheck, torch.compile."""

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from hbfp_hw.torch import convert

from .helpers import same_bits

# Dynamo itself instantiates autograd.Function classes while tracing them (torch 2.13), which
# torch's own DeprecationWarning then reports; it is not about this code.
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*should not be instantiated. Methods on autograd functions:DeprecationWarning")


def _args(m=5, k=20, n=3):
    return (torch.randn(m, k), torch.randn(k, n), 8, 16, "nearest-even", 8,
            torch.tensor(3, dtype=torch.int64), "emulate")


def test_fake_tensor_shape_propagation():
    with FakeTensorMode():
        out = torch.ops.hbfp.gemm(*_args(7, 33, 4))
    assert out.shape == (7, 4) and out.dtype == torch.float32
    with torch.device("meta"):
        meta = torch.ops.hbfp.gemm(*_args(2, 9, 6))
    assert meta.shape == (2, 6) and meta.is_meta


def test_public_gemm_goes_through_the_op():
    from hbfp_hw import golden
    from hbfp_hw.torch import gemm

    a, b = torch.randn(9, 50), torch.randn(50, 4)
    out = gemm(a, b, "bfp4", seed=3)
    assert same_bits(out, golden.gemm(a.numpy(), b.numpy(), "bfp4", seed=3))
    with FakeTensorMode():
        assert gemm(torch.empty(3, 40), torch.empty(40, 2)).shape == (3, 2)


def test_opcheck():
    torch.library.opcheck(torch.ops.hbfp.gemm.default, _args(),
                          test_utils=("test_schema", "test_faketensor"))


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4))


def _step(model, x):
    out = model(x)
    out.square().sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("fmt", ["bfp8", {"forward": "bfp4", "grad_input": "bfp8",
                                          "grad_weight": "fp32"}])
def test_compile_fullgraph_matches_eager(fmt):
    """No graph break on the custom op and the per-step seeds; results equal eager bits."""
    torch._dynamo.reset()
    x = torch.randn(6, 20)
    eager = convert(_model(), fmt)
    compiled_model = convert(_model(), fmt)
    compiled = torch.compile(compiled_model, backend="aot_eager", fullgraph=True)
    for _ in range(2):                                    # the second call reuses the graph
        out_e, grads_e = _step(eager, x)
        out_c, grads_c = _step(compiled, x)
        assert same_bits(out_e, out_c)
        assert all(same_bits(a, b) for a, b in zip(grads_e, grads_c))
        for p in (*eager.parameters(), *compiled_model.parameters()):
            p.grad = None
    assert int(compiled_model[0].hbfp_step) == 2          # the buffer mutation survived


def test_compile_stochastic_seeds_change_per_step():
    torch._dynamo.reset()
    model = convert(_model(), {"forward": _sr(), "grad_input": _sr(),
                               "grad_weight": _sr()})
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(6, 20)
    first, second = compiled(x).detach(), compiled(x).detach()
    assert not same_bits(first, second)                    # a new seed per training step
    reference = convert(_model(), model[0].hbfp_config)
    assert same_bits(reference(x), first) and same_bits(reference(x), second)
    # inference (eval or no_grad) is deterministic and leaves the step counters alone
    model.eval()
    with torch.no_grad():
        inference = compiled(x)
        assert same_bits(inference, compiled(x))
    assert int(model[0].hbfp_step) == 2
    reference.eval()
    assert same_bits(reference(x), inference)


def _sr():
    from hbfp_hw.formats import BFPFormat
    return BFPFormat(4, 16, "stochastic")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compile_inductor():
    torch._dynamo.reset()
    x = torch.randn(6, 20)
    eager = convert(_model(), "bfp8")
    compiled = torch.compile(convert(_model(), "bfp8"))
    out_e, grads_e = _step(eager, x)
    out_c, grads_c = _step(compiled, x)
    assert same_bits(out_e, out_c)
    # inductor may fuse the FP32 glue (bias add) differently, but the GEMMs are the same op
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-6) for a, b in zip(grads_e, grads_c))


def test_eager_calls_skip_the_dispatcher_only_when_nothing_watches():
    """Plain eager role_gemm calls the backend directly, with the op's bits; under a dispatch
    mode (tracing, FakeTensor, ...) the op goes through the dispatcher, where the mode sees it."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from hbfp_hw.torch import ops

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    a, b = torch.randn(9, 50), torch.randn(50, 4)
    args = ((4, 16, "stochastic", 8), torch.tensor(3, dtype=torch.int64), "emulate")
    direct = ops.role_gemm(a, b, *args)
    assert same_bits(direct, torch.ops.hbfp.gemm(a, b, *args[0], *args[1:]))
    seen = []
    with Record():
        watched = ops.role_gemm(a, b, *args)
    assert torch.ops.hbfp.gemm.default in seen
    assert same_bits(direct, watched)


def test_compile_conv_model_matches_eager():
    """im2col (a strided view), the conv autograd function and col2im trace in one graph."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 36, 5))
    x = torch.randn(3, 2, 6, 6)
    eager, compiled_model = convert(model, "bfp8"), convert(model, "bfp8")
    compiled = torch.compile(compiled_model, backend="aot_eager", fullgraph=True)
    out_e, grads_e = _step(eager, x)
    out_c, grads_c = _step(compiled, x)
    assert same_bits(out_e, out_c)
    assert all(same_bits(a, b) for a, b in zip(grads_e, grads_c))

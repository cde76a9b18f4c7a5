"""hbfp_mode (user-code matrix products) and HBFPMultiheadAttention."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hbfp_hw.formats import BFPFormat
from hbfp_hw.torch import (
    HBFPMultiheadAttention,
    UnroutedGemmWarning,
    convert,
    hbfp_linear,
    hbfp_matmul,
    hbfp_mode,
)
from hbfp_hw.torch.config import derive_seed
from hbfp_hw.torch.mode import op_seed

from .helpers import same_bits

SR = BFPFormat(6, 8, "stochastic")


def _t(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_routed_products_use_the_documented_seeds():
    a, b, w = _t(3, 4, 16), _t(3, 16, 5, seed=1), _t(7, 16, seed=2)
    with hbfp_mode(SR, seed=5) as mode:
        c0 = a @ b
        c1 = torch.bmm(a, b)
        c2 = F.linear(a, w)
        c3 = torch.einsum("bij,bjk->bik", a, b)
        c4 = a.matmul(b)
    assert mode.sequence.count == 5
    assert same_bits(c0, hbfp_matmul(a, b, SR, seed=op_seed(5, 0)))
    assert same_bits(c1, hbfp_matmul(a, b, SR, seed=op_seed(5, 1)))
    assert same_bits(c2, hbfp_linear(a, w, None, SR, seed=op_seed(5, 2)))
    assert same_bits(c3, hbfp_matmul(a, b, SR, seed=op_seed(5, 3)))
    assert same_bits(c4, hbfp_matmul(a, b, SR, seed=op_seed(5, 4)))
    assert not same_bits(c0, c1)                      # a new seed per operation


def test_gradients_through_the_mode_are_hbfp():
    a = _t(6, 16).requires_grad_(True)
    b = _t(16, 8, seed=1).requires_grad_(True)
    with hbfp_mode("bfp8", seed=0):
        (a @ b).square().sum().backward()
    a2, b2 = a.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    hbfp_matmul(a2, b2, "bfp8").square().sum().backward()
    assert same_bits(a.grad, a2.grad) and same_bits(b.grad, b2.grad)
    assert not same_bits(a.grad, (2 * (a @ b) @ b.t()).detach())        # really quantized


@pytest.mark.parametrize("equation, shapes, perm_a, perm_b, out", [
    ("ij,jk->ik", [(4, 16), (16, 5)], None, None, None),
    ("ij,kj->ik", [(4, 16), (5, 16)], None, (1, 0), None),
    ("ij,jk", [(4, 16), (16, 5)], None, None, None),                  # implicit output
    ("bhqd,bhkd->bhqk", [(2, 3, 4, 16), (2, 3, 5, 16)], None, (0, 1, 3, 2), None),
    ("ji,jk->ki", [(16, 4), (16, 5)], (1, 0), None, (1, 0)),
])
def test_gemm_shaped_einsum(equation, shapes, perm_a, perm_b, out):
    a, b = _t(*shapes[0]), _t(*shapes[1], seed=1)
    with hbfp_mode("bfp8"):
        got = torch.einsum(equation, a, b)
    ref = hbfp_matmul(a if perm_a is None else a.permute(perm_a),
                      b if perm_b is None else b.permute(perm_b), "bfp8")
    ref = ref if out is None else ref.permute(out)
    assert same_bits(got, ref.contiguous())
    exact = torch.einsum(equation, a, b)
    assert ((got - exact).norm() / exact.norm()).item() < 0.02


def test_unrouted_products_warn_and_stay_fp32():
    a, b = _t(4, 16), _t(4, 16, seed=1)
    with hbfp_mode("bfp8"), pytest.warns(UnroutedGemmWarning, match=r"torch.einsum .* FP32"):
        got = torch.einsum("ij,ij->ij", a, b)           # elementwise: not a matrix product
    assert torch.equal(got, a * b)
    with hbfp_mode("bfp8"), pytest.warns(UnroutedGemmWarning, match=r"torch.mv"):
        torch.mv(a, b[0])


def test_addmm_and_baddbmm():
    inp, a, b = _t(4, 5), _t(4, 16, seed=1), _t(16, 5, seed=2)
    with hbfp_mode("bfp8"):
        got = torch.addmm(inp, a, b, beta=0.5, alpha=2.0)
        got3 = torch.baddbmm(inp[None], a[None], b[None])
    prod = hbfp_matmul(a, b, "bfp8")
    assert same_bits(got, prod * 2.0 + inp * 0.5)
    assert same_bits(got3, (prod + inp)[None])


@pytest.mark.parametrize("kw", [{}, {"is_causal": True}, {"mask": "bool"}, {"mask": "float"},
                                {"scale": 0.3}, {"gqa": True}])
def test_sdpa_follows_torch_semantics(kw):
    q, k, v = _t(2, 4, 5, 8), _t(2, 4, 6, 8, seed=1), _t(2, 4, 6, 8, seed=2)
    args = {"is_causal": kw.get("is_causal", False), "scale": kw.get("scale")}
    if kw.get("is_causal"):
        k, v = k[:, :, :5], v[:, :, :5]
    if kw.get("mask") == "bool":
        args["attn_mask"] = _t(5, 6, seed=3) > 0
    elif kw.get("mask") == "float":
        args["attn_mask"] = _t(2, 1, 5, 6, seed=3)
    if kw.get("gqa"):
        k, v = k[:, :2], v[:, :2]
        args["enable_gqa"] = True
    ref = F.scaled_dot_product_attention(q, k, v, **args)
    with hbfp_mode({"forward": "fp32", "grad_input": "fp32", "grad_weight": "fp32"}):
        exact = F.scaled_dot_product_attention(q, k, v, **args)  # the decomposition in FP32
    with hbfp_mode("bfp8"):
        hbfp = F.scaled_dot_product_attention(q, k, v, **args)
    assert torch.allclose(exact, ref, atol=1e-5)
    assert torch.allclose(hbfp, ref, atol=0.05) and not torch.equal(hbfp, exact)


# Dynamo instantiates the autograd.Function while tracing it inside a torch function mode.
@pytest.mark.filterwarnings("ignore:<class 'torch.autograd.function.Function'> should not be "
                            "instantiated:DeprecationWarning")
def test_compile_fullgraph_under_the_mode():
    def f(a, b):
        return torch.softmax(a @ b, -1) @ b.transpose(-2, -1)

    torch._dynamo.reset()
    a, b = _t(3, 4, 16), _t(3, 16, 5, seed=1)
    with hbfp_mode("bfp8"):
        eager = f(a, b)
        compiled = torch.compile(f, backend="aot_eager", fullgraph=True)(a, b)
    assert same_bits(eager, compiled)


# -- nn.MultiheadAttention ----------------------------------------------------------------------

def test_mha_self_attention_is_the_documented_gemm_sequence():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4)
    hbfp = convert(mha, SR, seed=3)
    assert isinstance(hbfp, HBFPMultiheadAttention) and type(mha) is nn.MultiheadAttention
    x = _t(5, 2, 16)                                      # (L, N, E)
    hbfp.eval()
    with torch.no_grad():
        out, weights = hbfp(x, x, x)
    call = derive_seed(derive_seed(3, hbfp.layer_id), 0xFFFFFFFF)
    seed = [op_seed(call, i) for i in range(4)]
    proj = hbfp_linear(x, mha.in_proj_weight, mha.in_proj_bias, SR, seed=seed[0])
    q, k, v = proj.chunk(3, dim=-1)
    q, k, v = (t.reshape(5, 8, 4).transpose(0, 1) for t in (q, k, v))      # (N*H, L, D)
    scores = hbfp_matmul(q * 0.5, k.transpose(1, 2), SR, seed=seed[1])     # q * sqrt(1/D)
    w = torch.softmax(scores, dim=-1)
    att = hbfp_matmul(w, v, SR, seed=seed[2]).transpose(0, 1).reshape(10, 16)
    ref = hbfp_linear(att, mha.out_proj.weight, mha.out_proj.bias, SR, seed=seed[3])
    assert same_bits(out, ref.view(5, 2, 16))
    assert same_bits(weights, w.view(2, 4, 5, 5).mean(dim=1))


@pytest.mark.parametrize("kw", [
    {"batch_first": True}, {"kdim": 6, "vdim": 10}, {"add_bias_kv": True, "add_zero_attn": True},
    {"masks": True}, {"need_weights": False}, {"bias": False, "batch_first": True}])
def test_mha_options_match_fp32(kw):
    torch.manual_seed(1)
    opts = {k: v for k, v in kw.items() if k not in ("masks", "need_weights")}
    mha = nn.MultiheadAttention(16, 4, **opts)
    hbfp = convert(mha, "bfp16")                   # near-exact: checks the structure
    bf = kw.get("batch_first", False)
    shape = (lambda n: (2, n, 16)) if bf else (lambda n: (n, 2, 16))
    q = _t(*shape(5))
    k = _t(*shape(7), seed=1)[..., :kw.get("kdim", 16)]
    v = _t(*shape(7), seed=2)[..., :kw.get("vdim", 16)]
    call = {"need_weights": kw.get("need_weights", True)}
    if kw.get("masks"):
        call["key_padding_mask"] = torch.tensor([[False] * 6 + [True], [False] * 7])
        call["attn_mask"] = _t(5, 7, seed=4) > -1.5
    ref, ref_w = mha(q, k, v, **call)
    out, w = hbfp(q, k, v, **call)
    assert torch.allclose(out, ref, atol=1e-3, equal_nan=True)
    assert (w is None) == (ref_w is None)
    assert w is None or torch.allclose(w, ref_w, atol=1e-3, equal_nan=True)
    out.sum().backward()
    assert all(p.grad is not None for p in hbfp.parameters())


def test_mha_subclass_and_transformer_encoder_inference_stay_hbfp():
    class MyMHA(nn.MultiheadAttention):
        pass

    torch.manual_seed(2)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    fp32 = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    model = convert(fp32)
    assert all(isinstance(m.self_attn, HBFPMultiheadAttention) for m in model.layers)
    x = _t(2, 5, 16)
    model.eval()
    fp32.eval()
    with torch.no_grad():
        fast = model(x)               # PyTorch's fused kernel would give FP32 results here
        fp32_fast = fp32(x)
    model.train()
    slow = model(x)
    assert same_bits(fast, slow.detach())
    assert not torch.equal(fast, fp32_fast)
    sub = convert(MyMHA(16, 4))
    assert isinstance(sub, MyMHA) and isinstance(sub, HBFPMultiheadAttention)


@pytest.mark.filterwarnings("ignore:<class 'torch.autograd.function.Function'> should not be "
                            "instantiated:DeprecationWarning")
# Dynamo reads .grad of non-leaf tensors while it traces MHA's forward (its own warning)
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
def test_compiled_mha_equals_eager_with_stochastic_rounding():
    torch._dynamo.reset()
    torch.manual_seed(3)
    mha = nn.MultiheadAttention(16, 4, batch_first=True)
    eager, compiled_model = convert(mha, SR, seed=1), convert(mha, SR, seed=1)
    # nn.MultiheadAttention's forward under the mode has a graph break (super().unflatten)
    compiled = torch.compile(compiled_model, backend="aot_eager")
    x = _t(2, 5, 16)
    for _ in range(2):                              # the second step reuses the graph
        out_e = eager(x, x, x, need_weights=False)[0]
        out_c = compiled(x, x, x, need_weights=False)[0]
        assert same_bits(out_e, out_c)
        out_e.sum().backward()
        out_c.sum().backward()
    assert all(same_bits(p.grad, q.grad) for p, q in zip(eager.parameters(),
                                                          compiled_model.parameters()))
    assert int(compiled_model.hbfp_step) == 2

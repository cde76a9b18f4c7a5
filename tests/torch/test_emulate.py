"""The emulate backend's GEMM and quantizer against the golden model, bit for bit."""

import zlib

import numpy as np
import pytest
import torch

from hbfp_hw import golden
from hbfp_hw.formats import BFPFormat, Rounding
from hbfp_hw.torch import emulate, emulate_fast, exact, native

from ..golden_checks import f32, random_finite_bits, special_blocks, tie_blocks
from .helpers import clustered, same_bits

FORMATS = [BFPFormat(w, n, r) for (w, n) in [(2, 1), (2, 16), (3, 2), (4, 8), (8, 16),
                                             (8, 32), (10, 64), (12, 8), (16, 16), (7, 1)]
           for r in Rounding] + [BFPFormat(8, 16, exponent_bits=4), BFPFormat(6, 4, "stochastic",
                                                                         exponent_bits=3)]


def _check(a, b, fmt, seed):
    ref = golden.gemm(a.numpy(), b.numpy(), fmt, seed=seed)
    out = emulate.gemm(a, b, fmt, seed=seed)
    assert out.dtype == torch.float32 and tuple(out.shape) == ref.shape
    assert same_bits(out, ref), f"{fmt.name}: {int((out.numpy() != ref).sum())} mismatches"


@pytest.mark.parametrize("fmt", FORMATS, ids=[f.name for f in FORMATS])
def test_random_shapes(fmt):
    rng = np.random.default_rng(zlib.crc32(fmt.name.encode()))
    for _ in range(3):
        m, n = (int(v) for v in rng.integers(1, 24, size=2))
        k = int(rng.integers(1, 90))
        if k % fmt.block_size == 0 and fmt.block_size > 1:
            k += 1                                   # K not a multiple of the block size
        a = clustered(rng, (m, k))
        b = clustered(rng, (k, n))
        # per-row / per-column scales: blocks with very different exponents
        a *= torch.from_numpy(np.ldexp(1.0, rng.integers(-60, 60, size=(m, 1))).astype("f4"))
        b *= torch.from_numpy(np.ldexp(1.0, rng.integers(-60, 60, size=(1, n))).astype("f4"))
        _check(a, b, fmt, int(rng.integers(0, 2**32)))


@pytest.mark.parametrize("rounding", ["stochastic", "nearest-even"])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "sliced"])
def test_memory_layouts(layout, rounding):
    """Row-major, column-major and strided operands give the same bits (on the general path
    with stochastic rounding, on the fast one with nearest-even)."""
    rng = np.random.default_rng(1)
    fmt = BFPFormat(8, 16, rounding)
    m, k, n = 13, 70, 9
    if layout == "contiguous":
        a, b = clustered(rng, (m, k)), clustered(rng, (k, n))
    elif layout == "transposed":
        a, b = clustered(rng, (k, m)).t(), clustered(rng, (n, k)).t()
    else:
        a, b = clustered(rng, (m, 2 * k))[:, ::2], clustered(rng, (k + 3, n + 5))[2:-1, 1:-4]
    _check(a, b, fmt, seed=77)


def test_large_tiled():
    """Big enough to be split into row tiles and k-block chunks."""
    rng = np.random.default_rng(2)
    a = clustered(rng, (300, 1030), lo=-5, hi=5)
    b = clustered(rng, (1030, 257), lo=-5, hi=5)
    assert exact._tiles(300, 257, 65) != (300, 65)
    _check(a, b, BFPFormat(8, 16), seed=None)


@pytest.mark.parametrize("fmt", [BFPFormat(8, 16), BFPFormat(4, 8, "stochastic"),
                                 BFPFormat(16, 4, "toward-zero"), BFPFormat(2, 2)],
                         ids=lambda f: f.name)
def test_special_values(fmt):
    """NaN/Inf blocks, subnormals, zeros, ties, FLT_MAX (overflow to Inf and Inf - Inf)."""
    rng = np.random.default_rng(3)
    n = fmt.block_size
    special = special_blocks(max(n, 2))[:, :n]
    rows = np.concatenate([special, tie_blocks(rng, fmt, 6),
                           random_finite_bits(rng, (8, n))]).astype(np.float32)
    a = torch.from_numpy(np.concatenate([rows, rows[::-1]], axis=1))      # K = 2 blocks
    b = torch.from_numpy(np.ascontiguousarray(
        np.concatenate([-rows[::-1], rows[:, ::-1]], axis=1).T))
    _check(a, b, fmt, seed=5)
    out = emulate.gemm(a, b, fmt, seed=5).numpy()
    nan_bits = out.view(np.uint32)[np.isnan(out)]
    assert nan_bits.size and (nan_bits == 0x7FC00000).all()


def test_extreme_exponents_use_exact_paths():
    """Products below 2^-149 and above FLT_MAX force the float64 path; subnormal results."""
    rng = np.random.default_rng(4)
    for lo, hi in [(-149, -100), (90, 127), (-149, 127)]:
        a = torch.from_numpy(random_finite_bits(rng, (7, 40), lo + 127 if lo > -127 else 0,
                                                hi + 127))
        b = torch.from_numpy(random_finite_bits(rng, (40, 5), lo + 127 if lo > -127 else 0,
                                                hi + 127))
        for fmt in (BFPFormat(8, 16), BFPFormat(2, 4), BFPFormat(16, 8, "stochastic")):
            _check(a, b, fmt, seed=9)


def test_float32_matmul_precision_falls_back_to_float64():
    rng = np.random.default_rng(5)
    a, b = clustered(rng, (20, 50)), clustered(rng, (50, 11))
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        _check(a, b, BFPFormat(8, 16), seed=1)
    finally:
        torch.set_float32_matmul_precision(old)


def test_mkldnn_bf16_matmul_setting_falls_back_to_float64():
    rng = np.random.default_rng(15)
    a, b = clustered(rng, (64, 256)), clustered(rng, (256, 48))
    matmul = torch.backends.mkldnn.matmul
    old = matmul.fp32_precision
    try:
        matmul.fp32_precision = "bf16"
        assert not exact._f32_matmul_is_ieee()
        _check(a, b, BFPFormat(8, 16), seed=1)
    finally:
        matmul.fp32_precision = old
    assert exact._f32_matmul_is_ieee()


def test_flush_denormal_is_lifted_and_restored():
    a = torch.from_numpy(f32(np.array([[0x00000003, 0x00400000]], dtype=np.uint32)))
    b = torch.ones(2, 1)
    ref = golden.gemm(a.numpy(), b.numpy(), BFPFormat(8, 2))      # numpy flushes too
    assert ref.item() > 0
    supported = torch.set_flush_denormal(True)
    try:
        out = emulate.gemm(a, b, BFPFormat(8, 2))
        if supported:
            assert (torch.tensor(1e-40) * 1.0).item() == 0.0       # still flushing afterwards
    finally:
        torch.set_flush_denormal(False)
    assert same_bits(out, ref)


def test_accumulation_order_is_sequential():
    """The accumulation over k-blocks is float32, sequential, from +0.0 (not pairwise)."""
    assert exact._accumulation_is_sequential()
    # 1 then many half-ulps: only a sequential float32 sum stays exactly 1.
    k = 16 * 40
    a = torch.zeros(1, k)
    a[0, ::16] = 1.0
    b = torch.zeros(k, 1)
    b[::16, 0] = 2.0 ** -24
    b[0, 0] = 1.0
    out = emulate.gemm(a, b, "bfp8")
    assert out.item() == 1.0
    _check(a, b, BFPFormat(8, 16), seed=None)


@pytest.mark.parametrize("fmt", [BFPFormat(8, 16), BFPFormat(5, 4, "stochastic"),
                                 BFPFormat(3, 32, "toward-zero"), BFPFormat(2, 1)],
                         ids=lambda f: f.name)
def test_quantize_matches_golden(fmt):
    rng = np.random.default_rng(6)
    x = np.concatenate([random_finite_bits(rng, (6, 45)),
                        np.pad(special_blocks(16), ((0, 0), (0, 29)))]).astype(np.float32)
    for axis in (0, 1, -1):
        ref = golden.quantize(x, fmt, axis=axis, seed=11)
        exps, mants = emulate.quantize(torch.from_numpy(x), fmt, axis=axis, seed=11)
        assert np.array_equal(exps.numpy(), ref.exponents)
        assert np.array_equal(mants.numpy(), ref.mantissas)


@pytest.mark.parametrize("args, exc, match", [
    ((torch.ones(2, 3), torch.ones(4, 2), "bfp8"), ValueError,
     r"^a's columns must equal b's rows \(K\), not 3 and 4$"),
    ((torch.ones(2, 3, dtype=torch.float64), torch.ones(3, 2), "bfp8"), TypeError,
     r"^a must be a float32 tensor, not torch.float64$"),
    ((torch.ones(3), torch.ones(3, 2), "bfp8"), ValueError, r"^a and b must be 2-D matrices"),
    ((torch.ones(0, 3), torch.ones(3, 2), "bfp8"), ValueError,
     r"^M, N and K must be at least 1"),
    ((torch.ones(2, 3), torch.ones(3, 2), "bfp9"), ValueError, r"^fmt must be a BFPFormat"),
    ((torch.ones(2, 3), torch.ones(3, 2), "bfp8", -1), ValueError,
     r"^seed must be between 0 and 4294967295, not -1$"),
])
def test_errors(args, exc, match):
    with pytest.raises(exc, match=match):
        emulate.gemm(*args)


# -- the fast path (nearest-even/toward-zero, ordinary exponents) -------------------------------

FAST_FORMATS = [BFPFormat(8, 16), BFPFormat(8, 32), BFPFormat(4, 8, "toward-zero"),
                BFPFormat(12, 16), BFPFormat(16, 4, "toward-zero"), BFPFormat(2, 64),
                BFPFormat(6, 16, exponent_bits=5)]


def _layout(t, how):
    """``t`` row-major (``"r"``) or column-major (``"c"``), same values."""
    return t if how == "r" else t.t().contiguous().t()


@pytest.fixture(params=["native", "torch"])
def paths(request, monkeypatch):
    """Run the test on each implementation of the fast path (the fused C kernel, then the torch
    path with the kernel off) and record which path each GEMM took: True (fast) or False
    (general)."""
    taken = []
    if request.param == "native":
        assert native.available(), "gcc is installed, so the fused kernel must build"
        fused = native.fused_gemm

        def spy_native(*args):
            out = fused(*args)
            taken.append(out is not native.NOT_FAST)
            return out

        monkeypatch.setattr(native, "fused_gemm", spy_native)
        monkeypatch.setattr(emulate_fast, "_gemm_fast", _never)
        yield taken
        return
    fast = emulate_fast._gemm_fast

    def spy(a, b, fmt):
        out = fast(a, b, fmt)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(emulate_fast, "_gemm_fast", spy)
    with native.enabled(False):
        yield taken


def _never(*args):
    raise AssertionError("the torch fast path ran although the fused kernel is on")


@pytest.mark.parametrize("layouts", ["rr", "rc", "cr", "cc"])
@pytest.mark.parametrize("fmt", FAST_FORMATS, ids=[f.name for f in FAST_FORMATS])
def test_fast_path_large_shapes(fmt, layouts, paths):
    """Shapes that use the workspace (same-layout operands too), the k-block by k-block loop,
    padding of K, and (column-major A and B, many k-blocks) the transposed products."""
    rng = np.random.default_rng(zlib.crc32(f"{fmt.name}{layouts}".encode()))
    m, n = 150, 170
    k = fmt.block_size * max(17, 320 // fmt.block_size) + 5          # not a multiple
    top = min(20, fmt.max_exponent - 8)               # (no upper clamp of E: fast path)
    a = clustered(rng, (m, k), lo=-top, hi=top)
    b = clustered(rng, (k, n), lo=-top, hi=top)
    a *= torch.from_numpy(np.ldexp(1.0, rng.integers(-7, 7, size=(m, 1))).astype("f4"))
    b *= torch.from_numpy(np.ldexp(1.0, rng.integers(-7, 7, size=(1, n))).astype("f4"))
    _check(_layout(a, layouts[0]), _layout(b, layouts[1]), fmt, seed=None)
    assert paths == [True]


@pytest.mark.parametrize("layouts", ["rr", "cc"])
def test_fast_path_many_k_blocks(layouts, paths):
    """Narrow outputs and hundreds of k-blocks: chunks of k-blocks through bmm/index_add_."""
    rng = np.random.default_rng(20)
    a = clustered(rng, (40, 16 * 410), lo=-30, hi=30)
    b = clustered(rng, (16 * 410, 70), lo=-30, hi=30)
    assert exact._tiles(40, 70, 410)[1] < 410
    _check(_layout(a, layouts[0]), _layout(b, layouts[1]), BFPFormat(8, 16), seed=None)
    assert paths == [True]


@pytest.mark.parametrize("shape", [(3, 48, 5), (150, 16 * 24, 170)], ids=["bmm", "loop"])
def test_fast_path_special_values_and_negative_zero(shape, paths):
    """NaN/Inf blocks, zero blocks, subnormal elements, ties and saturation on the fast path;
    products that are -0.0 must accumulate to +0.0."""
    rng = np.random.default_rng(21)
    m, k, n = shape
    fmt = BFPFormat(8, 16)
    a = clustered(rng, (m, k), lo=-10, hi=10)
    b = clustered(rng, (k, n), lo=-10, hi=10)
    a[0] = 0.0                                      # row 0 of C: -0.0 or +0.0 products
    b[:, 0] = -torch.rand(k) - 0.5                  # C[0, 0]: only -0.0 products
    a[1, 16:32] = torch.from_numpy(tie_blocks(rng, fmt, 1, e_choices=[3])[0])
    a[2, :16] = 1.999                               # 1.999 * 2**6 rounds to 128: saturates
    a[2, 16:32] = torch.from_numpy(f32(np.full(16, 5, dtype=np.uint32)))
    a[2, 16] = 1.0                                  # subnormal elements in a normal block
    b[5:7, 1] = float("nan")
    b[20, 2] = float("-inf")
    b[k - 1, n - 1] = float("inf")
    for how in ("rr", "cc"):
        _check(_layout(a, how[0]), _layout(b, how[1]), fmt, seed=None)
        out = emulate.gemm(_layout(a, how[0]), _layout(b, how[1]), fmt).view(torch.int32)
        finite = torch.ones(n, dtype=torch.bool)
        finite[[1, 2, n - 1]] = False
        assert bool((out[0, finite] == 0).all())             # +0.0, not -0.0
        assert not bool((out == -(1 << 31)).any())
    assert all(paths)


def test_fast_path_sequential_accumulation_k_block_loop(paths):
    """1 followed by half-ulps over a wide output (the k-block by k-block loop)."""
    m = n = 160
    a = torch.zeros(m, 16 * 40)
    a[:, ::16] = 1.0
    b = torch.zeros(16 * 40, n)
    b[::16] = 2.0 ** -24
    b[0] = 1.0
    out = emulate.gemm(a, b, "bfp8")
    assert bool((out == 1.0).all())
    _check(a, b, BFPFormat(8, 16), seed=None)
    assert all(paths)


def test_fast_path_large_exponents_skip_the_rounding_constant(paths):
    """Blocks with E > (w-2) + 104 (1.5 * 2**23 * 2**-k would overflow) still round exactly,
    with the four-pass quantizer; column-major B puts them on the three-pass path otherwise."""
    rng = np.random.default_rng(22)
    a = clustered(rng, (30, 64), lo=-100, hi=-90)
    b = clustered(rng, (64, 20), lo=100, hi=118)
    for how in ("rr", "rc", "cr", "cc"):
        _check(_layout(a, how[0]), _layout(b, how[1]), BFPFormat(8, 16), seed=None)
    assert all(paths) and len(paths) == 4


@pytest.mark.parametrize("fmt, a_range, b_range", [
    (BFPFormat(8, 16), (-140, -130), (-10, 0)),                     # k > 126: tiny blocks
    (BFPFormat(2, 4), (126, 127), (-130, -120)),                    # k < -126 for w = 2
    (BFPFormat(8, 16, exponent_bits=4), (8, 12), (-2, 2)),          # E clamped above
], ids=["tiny", "huge-w2", "upper-clamp"])
def test_general_path_where_the_fast_one_does_not_apply(fmt, a_range, b_range, paths):
    rng = np.random.default_rng(23)
    a = clustered(rng, (9, 48), lo=a_range[0], hi=a_range[1], spread=2)
    b = clustered(rng, (48, 7), lo=b_range[0], hi=b_range[1], spread=2)
    _check(a, b, fmt, seed=None)
    assert paths == [False]


@pytest.mark.parametrize("fmt", [BFPFormat(8, 16, "stochastic"), BFPFormat(4, 8, "stochastic"),
                                 BFPFormat(12, 32, "stochastic"), BFPFormat(3, 4, "stochastic")],
                         ids=lambda f: f.name)
@pytest.mark.parametrize("layouts", ["rr", "rc", "cr", "cc"])
def test_stochastic_rounding_in_the_fused_kernel(fmt, layouts, paths):
    """The fused kernel rounds stochastically (its own PRNG, the contract's bits); the torch
    path takes the general path for it."""
    rng = np.random.default_rng(zlib.crc32(f"sr{fmt.name}{layouts}".encode()))
    a, b = clustered(rng, (37, 300)), clustered(rng, (300, 21))
    a[3, :5] = torch.tensor([float("nan"), 1.0, 2.0 ** -140, -0.0, 3.0])
    _check(_layout(a, layouts[0]), _layout(b, layouts[1]), fmt, seed=3)
    assert paths == ([True] if native.available() else [])


def test_kernel_prng_is_the_contract_prng():
    bits = native.sr_bits(0xDEADBEEF, 5, 7, 16)
    ref = golden.random_bits(0xDEADBEEF, 35, 16).astype(np.int32).reshape(5, 112)
    assert np.array_equal(bits.numpy(), ref)


# -- the pure-torch path that other devices (CUDA) run ------------------------------------------

def _device_path(a, b, fmt, seed):
    """What :func:`emulate.gemm` runs on a non-CPU device, here on the CPU tensors."""
    seed_b = None if seed is None else (seed + 1) % (1 << 32)
    with torch.no_grad(), emulate._IEEESubnormals():
        return emulate._gemm_general(a, b, fmt, seed, seed_b)


@pytest.mark.parametrize("fmt", FORMATS, ids=[f.name for f in FORMATS])
def test_device_path_matches_golden(fmt, monkeypatch):
    """Every format and rounding, with the per-k-block add_ loop that non-CPU devices use."""
    monkeypatch.setattr(exact, "_accumulation_is_sequential", lambda: False)
    rng = np.random.default_rng(zlib.crc32(b"device" + fmt.name.encode()))
    seed = int(rng.integers(0, 2**32)) if fmt.rounding is Rounding.STOCHASTIC else None
    m, n, k = 7, 5, 3 * fmt.block_size + 1
    a = clustered(rng, (m, k))
    b = clustered(rng, (k, n))
    a[0, :4] = torch.tensor([float("nan"), 1.0, -0.0, 2.0 ** -149])
    b[1:3, 2] = torch.tensor([float("inf"), 3.0])
    a[3] *= 2.0 ** 100
    b[:, 4] *= 2.0 ** -120
    ref = golden.gemm(a.numpy(), b.numpy(), fmt, seed=seed)
    assert same_bits(_device_path(a, b, fmt, seed), ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)")
@pytest.mark.parametrize("fmt", [BFPFormat(8, 16), BFPFormat(4, 8, "stochastic"),
                                 BFPFormat(8, 32, "toward-zero")], ids=lambda f: f.name)
def test_cuda_matches_cpu(fmt):
    """On a GPU, with TF32 off and deterministic algorithms on: CUDA equals CPU bit for bit."""
    from hbfp_hw.torch import convert

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.use_deterministic_algorithms(True)
    try:
        rng = np.random.default_rng(3)
        a, b = clustered(rng, (33, 70)), clustered(rng, (70, 19))
        cpu = emulate.gemm(a, b, fmt, seed=5)
        cuda = emulate.gemm(a.cuda(), b.cuda(), fmt, seed=5)
        assert cuda.device.type == "cuda" and same_bits(cuda.cpu(), cpu)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(70, 16), torch.nn.ReLU(),
                                    torch.nn.Linear(16, 3))
        outs = []
        for device in ("cpu", "cuda"):
            m = convert(model, fmt, seed=9).to(device)
            y = m(a.to(device))
            y.square().sum().backward()
            outs.append([y.detach().cpu()] + [p.grad.cpu() for p in m.parameters()])
        assert all(same_bits(x, y) for x, y in zip(*outs))
    finally:
        torch.use_deterministic_algorithms(False)

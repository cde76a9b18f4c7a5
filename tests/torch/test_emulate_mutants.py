"""The emulate tests can fail: deliberately broken variants of the emulation are caught."""

import types

import numpy as np
import pytest
import torch

from hbfp_hw import golden
from hbfp_hw.formats import BFPFormat, Rounding
from hbfp_hw.torch import emulate, emulate_fast, exact, native

from ..golden_checks import special_blocks, tie_blocks
from .helpers import clustered, same_bits


def _mismatch_found(fmt):
    """Run the kinds of data of test_emulate.py; True if any result differs from golden."""
    rng = np.random.default_rng(0)
    cases = []
    for _ in range(4):
        m, n, k = 9, 7, 70
        cases.append((clustered(rng, (m, k), lo=-140, hi=100, spread=20),
                      clustered(rng, (k, n), lo=-140, hi=100, spread=20)))
    # products in float32's subnormal range: only the float64 path keeps their low bits
    tiny = torch.from_numpy(rng.standard_normal((6, 48)).astype(np.float32)) * 2.0 ** -74
    cases.append((tiny, tiny.t().contiguous() * 1.5))
    # partial sums beyond FLT_MAX that cancel: only the float64 path gets the exact 0
    big = torch.full((3, 32), 1.5 * 2.0 ** 126)
    signs = torch.tensor([1.0] * 8 + [-1.0] * 8 + [1.0, -1.0] * 8).reshape(32, 1).repeat(1, 2)
    cases.append((big, signs))
    # block products that overflow to +Inf and -Inf: their sum is a NaN, made canonical (a
    # small C takes the kernel's dot path, a larger one its tiles)
    for m, n in ((2, 3), (12, 40)):
        cases.append((torch.full((m, 32), 1.5 * 2.0 ** 126),
                      torch.tensor([1.5] * 16 + [-1.5] * 16).reshape(32, 1).repeat(1, n)))
    # 1 followed by half-ulps: only a sequential float32 sum stays 1
    ones = torch.zeros(2, 16 * 40)
    ones[:, ::16] = 1.0
    halves = torch.zeros(16 * 40, 2)
    halves[::16] = 2.0 ** -24
    halves[0] = 1.0
    cases.append((ones, halves))
    ties = torch.from_numpy(tie_blocks(rng, fmt, 8).reshape(8, -1))
    cases.append((ties, ties.t().contiguous()))
    special = torch.from_numpy(special_blocks(fmt.block_size)[:, :fmt.block_size])
    cases.append((special, special.t().contiguous()))
    # NaN and Inf blocks among ordinary ones, small C (the dot path) and larger (the tiles)
    for m, n in ((9, 3), (14, 40)):
        a, b = clustered(rng, (m, 48), lo=-8, hi=8), clustered(rng, (48, n), lo=-8, hi=8)
        a[2, 5], a[4, 40], b[20, 1] = float("nan"), float("inf"), float("-inf")
        cases.append((a, b))
    cases += _fast_path_cases(rng, fmt)
    for a, b in cases:
        ref = golden.gemm(a.numpy(), b.numpy(), fmt, seed=5)
        if not same_bits(emulate.gemm(a, b, fmt, seed=5), ref):
            return True
    # one batched call for GEMMs of one shape, a seed each
    a, b = _batched_case(rng)
    out = emulate.EmulateBackend().gemm_batched(a, b, fmt, list(range(7, 7 + len(a))))
    return any(not same_bits(out[g], golden.gemm(a[g].numpy(), b[g].numpy(), fmt, seed=7 + g))
               for g in range(len(a)))


def _batched_case(rng):
    """Five GEMMs of one shape; the last one has exponents the kernel leaves to the general
    path."""
    a = torch.stack([clustered(rng, (9, 70), lo=-12, hi=12) for _ in range(5)])
    b = torch.stack([clustered(rng, (70, 7), lo=-12, hi=12) for _ in range(5)])
    a[4] = clustered(rng, (9, 70), lo=-140, hi=-130, spread=2)
    return a, b


def _fast_path_cases(rng, fmt):
    """Cases of the fast path's own code: wide outputs (k-block by k-block loop), operands of
    workspace size in the same layout, column-major operands (three-pass quantizer,
    transposed products), saturation, -0.0 products, 1 followed by half-ulps."""
    m, k, n = 130, 16 * 20, 150
    a = clustered(rng, (m, k), lo=-12, hi=12)
    b = clustered(rng, (k, n), lo=-12, hi=12)
    a[0] = 0.0
    b[:, 0] = -1.0                                  # C[0, 0]: -0.0 products only
    b[:16, 1] = 1.999                               # rounds up to 2**(w-1): saturates
    cases = [(a, b), (a.t().contiguous().t(), b.t().contiguous().t())]
    ones = torch.zeros(m, 16 * 40)
    ones[:, ::16] = 1.0
    halves = torch.zeros(16 * 40, n)
    halves[::16] = 2.0 ** -24
    halves[0] = 1.0
    cases.append((ones, halves))
    return cases


def _trunc_instead_of_rne(a, rounding, rand):
    return torch.trunc(a, out=a)


def _pairwise_accumulation(acc, products):
    acc.add_(products.sum(dim=0))


def _double_accumulation(acc, products):
    acc.copy_(acc.double().add_(products.double().sum(dim=0)).float())


def _unpermuted_random_bits(seed, rows, nblocks, n, device):
    bits = golden.random_bits(seed, rows * nblocks, n)
    return torch.from_numpy(bits.astype(np.int64)).view(nblocks, rows, n).transpose(0, 1)


def _no_canonical_nan():
    return torch.tensor(0xFFC00000 - (1 << 32), dtype=torch.int32).view(torch.float32)


_PENDING = {}


def _pairwise_add(acc, products):
    """Add the k-blocks of the loop in pairs, ``acc + (p1 + p2)`` (the last odd one is kept)."""
    key = acc.data_ptr()
    if key in _PENDING:
        acc.add_(_PENDING.pop(key).add_(products))
    else:
        _PENDING[key] = products.clone()


def _exponent_off_by_one(fmt):
    c = _real_fast_format(fmt)                      # E read one too small: k one too large
    return types.SimpleNamespace(**{**vars(c), "k_base": c.k_base + np.int32(1 << 23)})


def _magic_without_clamp(fmt):
    c = _real_fast_format(fmt)
    return types.SimpleNamespace(**{**vars(c), "m": 1 << 20})   # no saturation


class _OneSlotWorkspace(emulate_fast._Workspace):
    def get(self, slot, shape, dtype=torch.float32):
        return super().get("shared", shape, dtype)


_real_fast_format = emulate_fast._fast_format

#: Deliberately broken variants of the torch path: (module, name, replacement, format).
MUTANTS = {
    "ties-truncated": (emulate, "_round_", _trunc_instead_of_rne, BFPFormat(8, 16)),
    "pairwise-accumulation": (exact, "_accumulate_", _pairwise_accumulation, BFPFormat(8, 16)),
    "double-accumulation": (exact, "_accumulate_", _double_accumulation, BFPFormat(8, 16)),
    "random-bits-block-order": (emulate, "_random_rows", _unpermuted_random_bits,
                                BFPFormat(6, 16, Rounding.STOCHASTIC)),
    "nan-not-canonical": (exact, "_canonical_nan", _no_canonical_nan, BFPFormat(8, 16)),
    "f32-overflow-check-off": (exact, "_f32_max_grid", lambda fmt: 10_000, BFPFormat(8, 16)),
    "fast-loop-pairwise-accumulation": (emulate_fast, "_add_", _pairwise_add, BFPFormat(8, 16)),
    "fast-exponent-off-by-one": (emulate_fast, "_fast_format", _exponent_off_by_one,
                                 BFPFormat(8, 16)),
    "fast-no-saturation": (emulate_fast, "_fast_format", _magic_without_clamp, BFPFormat(8, 16)),
    "fast-shared-workspace-slot": (emulate_fast, "_WORKSPACE", _OneSlotWorkspace(),
                                   BFPFormat(8, 16)),
}


@pytest.mark.parametrize("name", MUTANTS)
def test_mutant_is_caught(name, monkeypatch):
    """Mutants of the torch path, which runs with the fused kernel off."""
    module, attr, replacement, fmt = MUTANTS[name]
    monkeypatch.setattr(native, "_enabled", False)
    assert not _mismatch_found(fmt)                      # the real emulation is exact
    monkeypatch.setattr(module, attr, replacement)
    assert _mismatch_found(fmt)


#: Deliberately broken variants of the fused C kernel: (text of _fused.c, its replacement).
NATIVE_MUTANTS = {
    "native-ties-away": ("nearest ? rintf(x * s)", "nearest ? roundf(x * s)"),
    "native-no-saturation": ("v = v < -mm ? -mm : (v > mm ? mm : v);", ""),
    "native-reversed-accumulation": (
        "    vf acc[MR][2];\n    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = (vf){0};\n"
        "    for (int64_t kb = 0; kb < kblocks; kb++) {",
        "    vf acc[MR][2];\n    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = (vf){0};\n"
        "    for (int64_t kb = kblocks - 1; kb >= 0; kb--) {"),
    "native-float32-always": ("const int f64 = !(", "const int f64 = 0 && !("),
    "native-nan-not-canonical": ("dst[q] = src[q] != src[q] ? nan : src[q];", "dst[q] = src[q];"),
    "native-exponent-off-by-one": ("k_base - (int32_t)(u & EXP_MASK)",
                                   "k_base - (int32_t)(u & EXP_MASK) + (1 << 23)"),
    # stochastic rounding in the kernel
    "native-sr-bits-not-added": ("const int64_t q = (int64_t)(mag * 65536.0f) + r;",
                                 "const int64_t q = (int64_t)(mag * 65536.0f);"),
    "native-sr-lane-constant": ("0x9E3779B9u * (uint32_t)(l + 1)", "0x9E3779B9u * (uint32_t)l"),
    "native-sr-no-saturation": ("    v = v > mm ? mm : v;\n    return copysignf",
                                "    return copysignf"),
    # the batched kernel
    # the dot path (shapes whose tiles would be mostly padding) and the tiles' last k-block
    "native-dot-reversed-accumulation": (
        "    for (int64_t kb = 0; kb < kblocks; kb++) {\n        const float *xb",
        "    for (int64_t kb = kblocks - 1; kb >= 0; kb--) {\n        const float *xb"),
    "native-dot-float32-always": ("    if (f64) {\n        for (int64_t i = 0; i < m; i++)",
                                  "    if (0) {\n        for (int64_t i = 0; i < m; i++)"),
    "native-dot-nan-lines-ignored": ("(any_nan && (A->nan_line[i] || B->nan_line[j]))", "0"),
    "native-tile-tail-short": (
        "nb : tail;\n        for (int t = 0; t < tn; t++) {\n            const vf",
        "nb : tail - 1;\n        for (int t = 0; t < tn; t++) {\n            const vf"),
    # the batched kernel (mutants that stay inside the buffers: one that wrote past C
    # would corrupt the heap of the test process instead of failing a check)
    "native-batched-a-offset": ("t->a + g * t->a_sg", "t->a + (g ? g - 1 : 0) * t->a_sg"),
    "native-batched-sr-offset": ("t->rnd_b ? t->rnd_b + g * t->n * kpad",
                                 "t->rnd_b ? t->rnd_b + (g ? g - 1 : 0) * t->n * kpad"),
    # (a dropped status is left out: C[g] is then whatever its memory held, which may be the
    # right result of an earlier call; test_native.py's batched test counts the GEMMs that
    # take the general path instead)
}
#: The format each native mutant is checked with (default bfp8 nearest-even).
NATIVE_MUTANT_FORMATS = {name: BFPFormat(8, 16, Rounding.STOCHASTIC)
                         for name in NATIVE_MUTANTS
                         if name.startswith(("native-sr-", "native-batched-sr-"))}


@pytest.mark.parametrize("name", NATIVE_MUTANTS)
def test_native_mutant_is_caught(name, monkeypatch, tmp_path):
    """Mutants of the fused C kernel, compiled from an edited copy of its source."""
    assert native.available(), "gcc is installed, so the fused kernel must build"
    old, new = NATIVE_MUTANTS[name]
    source = native._SOURCE.read_text()
    assert source.count(old) == 1, f"{name}: the mutated text is not in _fused.c once"
    mutant = tmp_path / "_fused.c"
    mutant.write_text(source.replace(old, new))
    monkeypatch.setenv("HBFP_HW_CACHE", str(tmp_path / "cache"))
    fmt = NATIVE_MUTANT_FORMATS.get(name, BFPFormat(8, 16))
    assert not _mismatch_found(fmt)                      # the real kernel is exact
    monkeypatch.setattr(native, "_lib", native._build(mutant))
    assert _mismatch_found(fmt)

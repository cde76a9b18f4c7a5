# amaranth: UnusedElaboratable=no
"""MacTree with minifloat elements (OCP MX, Block Minifloat) against the golden model, bit for
bit, in the Amaranth simulator: every pair of element codes of the small types, random codes
(reserved ones included) and quantized data, and mutants the tests must catch."""

import itertools

import numpy as np
import pytest

from hbfp_hw import golden
from hbfp_hw.formats import BFPFormat, Minifloat, resolve_format
from hbfp_hw.golden import minifloat
from hbfp_hw.rtl_gen import mac_tree
from hbfp_hw.rtl_gen.mac_tree import MacTree
from hbfp_hw.sim.vectors import minifloat_block_products

from .test_mac_tree import rtl_mac_tree


def check(fmt, ca, codes_a, cb, codes_b, *, stages, rng=None, valid_prob=1.0, ready_prob=1.0):
    got = rtl_mac_tree(fmt, ca, codes_a, cb, codes_b, stages=stages, rng=rng,
                       valid_prob=valid_prob, ready_prob=ready_prob)
    want = minifloat_block_products(fmt, ca, codes_a, cb, codes_b)
    for name, g, x in zip(("value", "exponent", "nan"), got, want, strict=True):
        bad = [i for i in range(len(g)) if g[i] != x[i]]
        assert not bad, (f"{fmt.name}: {name} differs in {len(bad)} of {len(g)} pairs; first "
                         f"at {bad[0]}: rtl {g[bad[0]]}, golden {x[bad[0]]}")


def random_codes(fmt, k, rng):
    """Scale codes (NaN code included) and element codes: raw codes (reserved ones too), the
    largest magnitudes, zeros and quantized data."""
    n = fmt.block_size
    width = fmt.element.width
    codes = rng.integers(0, 1 << width, (k, n))
    top = int(minifloat.encode(fmt.max_mantissa, fmt.element))
    sign = 1 << (width - 1)
    extreme = rng.choice([top, top | sign], (k, n))
    kind = rng.integers(0, 4, k)[:, None]
    codes = np.where(kind == 1, extreme, codes)
    codes = np.where((kind == 2) & (rng.random((k, n)) < 0.6), 0, codes)
    x = (rng.standard_normal((k, n)) * 4).astype(np.float32)
    codes = np.where(kind == 3, golden.quantize(x, fmt).element_codes()[:, 0], codes)
    scales = rng.integers(0, fmt.nan_code + 1, k)
    scales = np.where(rng.random(k) < 0.1, rng.choice([0, fmt.nan_code - 1], k), scales)
    return scales, codes


PRESETS = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4_e2m1", "bm8_e2m5",
           "bm6_e3m2"]


@pytest.mark.parametrize("name", PRESETS)
def test_presets_bit_exact(name):
    fmt = resolve_format(name).replace(block_size=8)
    rng = np.random.default_rng(len(name))
    ca, codes_a = random_codes(fmt, 150, rng)
    cb, codes_b = random_codes(fmt, 150, rng)
    stages = int(rng.integers(0, MacTree.max_stages_for(fmt) + 1))
    check(fmt, ca, codes_a, cb, codes_b, stages=stages, rng=rng, valid_prob=0.8, ready_prob=0.7)


@pytest.mark.parametrize("element", [Minifloat(2, 1, "none"), Minifloat(3, 2, "none"),
                                     Minifloat(2, 3, "none"), Minifloat(3, 1, "fn"),
                                     Minifloat(2, 0, "ieee"), Minifloat(1, 2, "none", 1)],
                         ids=lambda e: e.name)
def test_every_pair_of_codes(element):
    """Blocks of two elements: every pair of codes in lane 0 against a fixed lane 1, so the
    decoding, the product and the signs of every code meet every other code."""
    fmt = BFPFormat(element.width, 2, element=element)
    codes = np.arange(1 << element.width)
    pairs = np.array(list(itertools.product(codes, codes)))
    k = len(pairs)
    lane1 = np.full(k, int(minifloat.encode(fmt.max_mantissa, element)))
    codes_a = np.stack([pairs[:, 0], lane1], axis=1)
    codes_b = np.stack([pairs[:, 1], pairs[:, 0]], axis=1)
    scale = np.full(k, fmt.exponent_bias)
    check(fmt, scale, codes_a, scale + 3, codes_b, stages=MacTree.max_stages_for(fmt))


def test_block_of_32_extremes():
    """MXFP8 E5M2 blocks of 32 of the largest magnitude: the widest exact sum (2**69)."""
    fmt = resolve_format("mxfp8_e5m2")
    top = int(minifloat.encode(fmt.max_mantissa, fmt.element))
    tiny = 1                                             # the smallest subnormal
    codes_a = np.array([[top] * 32, [top | 0x80] * 32, [tiny] * 32, [top] * 16 + [tiny] * 16])
    codes_b = np.array([[top] * 32, [top] * 32, [tiny] * 32, [top] * 31 + [tiny]])
    scales = np.array([254, 254, 0, 127])
    check(fmt, scales, codes_a, scales, codes_b, stages=2)


@pytest.mark.parametrize("mutant", ["subnormal_dropped", "nan_as_number", "sign_ignored"])
def test_mutants_are_caught(monkeypatch, mutant):
    """A decoder that gives subnormals the implicit bit, one that takes E4M3's NaN code for
    a number, and one that drops the elements' signs: the test above must fail on each."""
    real_decode = mac_tree.decode_element
    if mutant == "subnormal_dropped":
        def decode(element, code):
            sign, significand, shift = real_decode(element, code)
            m = element.mantissa_bits
            return sign, (code[:m] | (1 << m)) if m else 1, shift
        monkeypatch.setattr(mac_tree, "decode_element", decode)
    elif mutant == "nan_as_number":
        monkeypatch.setattr(mac_tree, "element_special", lambda element, code: 0)
    else:
        def decode(element, code):
            _, significand, shift = real_decode(element, code)
            return 0, significand, shift
        monkeypatch.setattr(mac_tree, "decode_element", decode)
    fmt = resolve_format("mxfp8_e4m3").replace(block_size=4)
    rng = np.random.default_rng(5)
    ca, codes_a = random_codes(fmt, 80, rng)
    cb, codes_b = random_codes(fmt, 80, rng)
    with pytest.raises(AssertionError, match="differs"):
        check(fmt, ca, codes_a, cb, codes_b, stages=2)


def test_integer_quantizer_refuses_minifloat():
    """FloatToBlock quantizes integer elements; minifloat formats take FloatToMinifloatBlock
    (rtl_gen.float_to_minifloat.block_quantizer picks by format)."""
    from hbfp_hw.rtl_gen.float_to_block import FloatToBlock

    fmt = resolve_format("mxfp8_e4m3")
    with pytest.raises(ValueError, match=r"minifloat elements, which this RTL unit does not "
                                         r"implement yet"):
        FloatToBlock(fmt)


@pytest.mark.parametrize("name", ["mxfp8_e5m2", "mxfp4_e2m1"])
def test_converts_to_verilog(name):
    from amaranth.back import verilog

    fmt = resolve_format(name)
    text = verilog.convert(MacTree(fmt, stages=3), name="mac_tree")
    assert "module mac_tree" in text
    # the output carries the format's full exact sum, exponent and NaN bit
    width = len(MacTree(fmt).o_stream.payload.as_value())
    assert width == fmt.product_bits + len(MacTree(fmt).o_stream.payload.exponent) + 1
    assert fmt.product_bits == 2 * (fmt.max_mantissa.bit_length() + 1) + 5

# amaranth: UnusedElaboratable=no
"""BlockToFloat on the products of minifloat blocks (up to 71 bits for MXFP8 E5M2) against the
golden model's exact rounding, bit for bit."""

import pytest

from hbfp_hw import golden
from hbfp_hw.formats import resolve_format

from .test_block_to_float import fixed_products, make_products, rtl_block_to_float


def golden_bits(products):
    """FP32 bits of ``value * 2**exponent`` (canonical NaN where ``nan``), exactly, for values
    of any width."""
    out = []
    for value, exponent, nan in products:
        x = golden.CANONICAL_NAN if nan else golden.round_int_to_float32(value, exponent)
        out.append(int(golden.f32_to_bits(x)))
    return out


@pytest.mark.parametrize("name,stages", [("mxfp8_e5m2", 3), ("mxfp8_e4m3", 5),
                                         ("mxfp4_e2m1", 0), ("bm8_e2m5", 2)])
def test_random_against_golden(stream_runner, name, stages):
    fmt = resolve_format(name)
    products = fixed_products(fmt) + make_products(fmt, 400, seed=len(name) + stages)
    got, _ = rtl_block_to_float(stream_runner, fmt, products, stages=stages, seed=stages,
                                valid_prob=0.8, ready_prob=0.7)
    want = golden_bits(products)
    bad = [i for i in range(len(got)) if got[i] != want[i]]
    assert not bad, (f"{name}: {len(bad)} of {len(got)} differ; first {products[bad[0]]}: "
                     f"rtl {got[bad[0]]:#010x}, golden {want[bad[0]]:#010x}")

# amaranth: UnusedElaboratable=no
"""BlockToFloat against the golden model ``to_float32`` (numerics.md 3.1 step 3), bit for bit."""

import random

import numpy as np
import pytest
from amaranth.back import verilog

from hbfp_hw import golden
from hbfp_hw.formats import BFPFormat
from hbfp_hw.rtl_gen.block_to_float import BlockToFloat
from hbfp_hw.rtl_gen.layout import pack, product_layout

FORMATS = {
    "bfp8": BFPFormat(8, 16),
    "w2b2": BFPFormat(2, 2),
    "w12b32": BFPFormat(12, 32),
    "w16b64": BFPFormat(16, 64),
    "w4b8e5": BFPFormat(4, 8, exponent_bits=5),
}


def rtl_block_to_float(run, fmt, products, *, stages=3, seed=0, valid_prob=1.0,
                       ready_prob=1.0):
    """Run ``products`` (``(value, exponent, nan)`` triples) through BlockToFloat.

    Returns the FP32 bit patterns and the :class:`StreamRun` record.
    """
    layout = product_layout(fmt)
    inputs = [pack(layout, {"value": v, "exponent": e, "nan": int(n)}) for v, e, n in products]
    dut = BlockToFloat(fmt, stages=stages)
    result = run(dut, inputs, seed=seed, valid_prob=valid_prob, ready_prob=ready_prob)
    return [int(x) for x in result.outputs], result


def golden_block_to_float(products):
    values = np.array([v for v, _, _ in products], dtype=np.int64)
    exps = np.array([e for _, e, _ in products], dtype=np.int64)
    nans = np.array([bool(n) for _, _, n in products])
    return [int(x) for x in golden.f32_to_bits(golden.to_float32(values, exps, nans))]


def _exp_range(fmt):
    shape = product_layout(fmt)["exponent"].shape
    return -(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1


def make_products(fmt, n, seed):
    """Random products over the whole value and exponent range, plus targeted corner cases."""
    rng = random.Random(seed)
    width = fmt.product_bits
    vmin, vmax = -(1 << (width - 1)), (1 << (width - 1)) - 1
    emin, emax = _exp_range(fmt)

    def rand_value():
        v = rng.randint(vmin, vmax) >> rng.randrange(width)   # every magnitude class
        return v if v else 1

    def exp_for(value, log2_target):
        """Exponent that puts |value| * 2**exp near 2**log2_target."""
        return max(emin, min(emax, log2_target - abs(value).bit_length() + 1))

    def tie_value():
        # Bits below the 24 kept ones are exactly one half (needs width >= 26 to be a tie of the
        # normal grid; the exponent moves it onto the subnormal grid otherwise).
        k = rng.randrange(1, max(2, width - 25))
        top = rng.randrange(1 << 23, 1 << 24)
        v = (top << k) | (1 << (k - 1))
        if v.bit_length() >= width:
            v = rng.randrange(1, 1 << (width - 2)) | 1
        return v * rng.choice((1, -1))

    cases = []
    for _ in range(n):
        kind = rng.randrange(10)
        if kind == 0:                                   # anything at all
            cases.append((rand_value(), rng.randint(emin, emax), 0))
        elif kind == 1:                                 # around the smallest normal 2**-126
            v = rand_value()
            cases.append((v, exp_for(v, rng.randint(-128, -124)), 0))
        elif kind == 2:                                 # subnormals and rounding to zero
            v = rand_value()
            cases.append((v, exp_for(v, rng.randint(-152, -126)), 0))
        elif kind == 3:                                 # around overflow 2**128
            v = rand_value()
            cases.append((v, exp_for(v, rng.randint(125, 129)), 0))
        elif kind == 4:                                 # ties, normal and subnormal grids
            v = tie_value()
            target = rng.choice((rng.randint(-140, 120), rng.randint(-152, -125)))
            cases.append((v, exp_for(v, target), 0))
        elif kind == 5:                                 # all-ones: carry into the next binade
            k = rng.randrange(1, max(2, width - 1))
            v = ((1 << k) - 1) << rng.randrange(0, max(1, width - 1 - k))
            v = min(v, vmax) * rng.choice((1, -1))
            cases.append((v, exp_for(v, rng.choice((rng.randint(-150, -124),
                                                     rng.randint(-20, 20), 127))), 0))
        elif kind == 6:                                 # zero with any exponent
            cases.append((0, rng.randint(emin, emax), 0))
        elif kind == 7:                                 # NaN with garbage in the other fields
            cases.append((rng.randint(vmin, vmax), rng.randint(emin, emax), 1))
        elif kind == 8:                                 # the extreme encodings
            cases.append((rng.choice((vmin, vmax, -vmax, 1, -1)),
                          rng.choice((emin, emax, 0, -149, -150)), 0))
        else:                                           # small exponents: exact results
            cases.append((rand_value(), rng.randint(-40, 10), 0))
    return [(v, max(emin, min(emax, e)), nan) for v, e, nan in cases]


def fixed_products(fmt):
    """Hand-picked corner cases that fit the format."""
    width = fmt.product_bits
    vmax = (1 << (width - 1)) - 1
    cases = [
        (0, 0, 0), (0, -300, 0), (0, 300, 0), (1, -149, 0), (-1, -149, 0), (1, -150, 0),
        (-1, -150, 0), (3, -151, 0), (-3, -151, 0), (1, -151, 0), (-1, -151, 0), (1, -126, 0),
        (1, 127, 0), (1, 128, 0), (-1, 128, 0), (vmax, 200, 0), (-vmax, 200, 0), (5, -7, 1),
        (vmax, -300, 0), (-vmax, -300, 0), (-(vmax + 1), 0, 0), (-(vmax + 1), -149, 0),
    ]
    emin, emax = _exp_range(fmt)
    cases = [(v, max(emin, min(emax, e)), n) for v, e, n in cases]
    if width >= 26:
        ones24 = (1 << 24) - 1
        cases += [
            ((ones24 << 1) | 1, -150 - 1, 0),    # (2**24-1)*2**-150 + tie: up to 2**-126
            (ones24, -150, 0),                    # tie between largest subnormal and 2**-126
            (-ones24, -150, 0),
            ((ones24 << 1) | 1, 103, 0),          # rounds up to 2**128: +Inf
            ((ones24 << 1), 103, 0),              # largest finite value, exact
            (((ones24 << 1) | 1), 102, 0),        # rounds up to 2**127, into the next binade
            ((1 << 24) + 1, 0, 0), ((1 << 24) + 3, 0, 0),   # ties to even, down and up
            (-((1 << 24) + 1), 0, 0), (-((1 << 24) + 3), 0, 0),
        ]
    return cases


@pytest.mark.parametrize("name,stages,valid_prob,ready_prob", [
    ("bfp8", 0, 0.8, 0.8),
    ("bfp8", 3, 0.7, 0.6),
    ("w2b2", 1, 0.9, 0.5),
    ("w12b32", 2, 1.0, 0.7),
    ("w16b64", 5, 0.6, 0.9),
    ("w4b8e5", 4, 0.8, 0.8),
])
def test_random_against_golden(stream_runner, name, stages, valid_prob, ready_prob):
    fmt = FORMATS[name]
    products = fixed_products(fmt) + make_products(fmt, 3000, seed=f"{name}-{stages}")
    got, _ = rtl_block_to_float(stream_runner, fmt, products, stages=stages, seed=stages,
                                valid_prob=valid_prob, ready_prob=ready_prob)
    expected = golden_block_to_float(products)
    mismatches = [(p, f"{g:#010x}", f"{e:#010x}")
                  for p, g, e in zip(products, got, expected, strict=True) if g != e]
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[:5]}"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FORMATS))
@pytest.mark.parametrize("stages", range(BlockToFloat.MAX_STAGES + 1))
def test_random_against_golden_deep(stream_runner, name, stages):
    fmt = FORMATS[name]
    products = fixed_products(fmt) + make_products(fmt, 6000, seed=f"deep-{name}-{stages}")
    got, _ = rtl_block_to_float(stream_runner, fmt, products, stages=stages, seed=stages,
                                valid_prob=0.8, ready_prob=0.7)
    assert got == golden_block_to_float(products)


@pytest.mark.slow
def test_exhaustive_small_format(stream_runner):
    """Every (value, exponent) encoding of w=2, N=2, and NaN with a few of them."""
    fmt = FORMATS["w2b2"]
    width = fmt.product_bits
    emin, emax = _exp_range(fmt)
    products = [(v, e, 0) for v in range(-(1 << (width - 1)), 1 << (width - 1))
                for e in range(emin, emax + 1)]
    products += [(v, e, 1) for v, e, _ in products[::97]]
    got, _ = rtl_block_to_float(stream_runner, fmt, products, stages=2, valid_prob=0.9,
                                ready_prob=0.9)
    assert got == golden_block_to_float(products)


def test_corner_cases_explicit(stream_runner):
    fmt = FORMATS["w16b64"]
    products = [
        (0, 0, 0), (-1, -151, 0), ((1 << 25) - 1, -151, 0), ((1 << 25) - 1, 103, 0),
        (1, -149, 0), (3, -151, 0), (7, -3, 1), ((1 << 24) + 1, 0, 0),
    ]
    got, _ = rtl_block_to_float(stream_runner, fmt, products, stages=2)
    assert got == [
        0x00000000,   # value 0: +0.0
        0x80000000,   # tiny negative rounds to -0.0
        0x00800000,   # rounds up from the largest subnormal into the smallest normal
        0x7F800000,   # rounds up to 2**128: +Inf
        0x00000001,   # smallest subnormal
        0x00000001,   # 3 * 2**-151 = 0.75 * 2**-149 rounds up to the smallest subnormal
        0x7FC00000,   # NaN
        0x4B800000,   # 2**24 + 1: tie, to even 2**24
    ]


@pytest.mark.parametrize("stages", [0, 1, 3, 5])
def test_latency_and_throughput(stream_runner, stages):
    fmt = FORMATS["bfp8"]
    products = make_products(fmt, 40, seed="lat")
    got, run = rtl_block_to_float(stream_runner, fmt, products, stages=stages)
    assert got == golden_block_to_float(products)
    dut = run.dut
    assert dut.latency == stages and dut.throughput == 1
    assert run.in_cycles == list(range(len(products)))         # one transfer per cycle
    assert [o - i for i, o in zip(run.in_cycles, run.out_cycles, strict=True)] == \
        [dut.latency] * len(products)
    assert run.out_cycles[-1] + 1 == len(products) + dut.latency


def test_ports():
    fmt = FORMATS["bfp8"]
    dut = BlockToFloat(fmt)
    assert dut.fmt is fmt
    assert dut.i_stream.payload.shape() == product_layout(fmt)
    assert dut.o_stream.payload.shape().width == 32


@pytest.mark.parametrize("args,kwargs,exc,msg", [
    (("bfp8",), {}, TypeError, r"^fmt must be a BFPFormat, not 'bfp8'$"),
    ((BFPFormat(8, 128),), {}, ValueError,
     r"^block_size must be a power of two between 2 and 64 for the RTL, not 128$"),
    ((BFPFormat(8, 1),), {}, ValueError,
     r"^block_size must be a power of two between 2 and 64 for the RTL, not 1$"),
    ((BFPFormat(8, 16),), {"stages": 8}, ValueError, r"^stages must be between 0 and 7, not 8$"),
    ((BFPFormat(8, 16),), {"stages": -1}, ValueError,
     r"^stages must be between 0 and 7, not -1$"),
    ((BFPFormat(8, 16),), {"stages": 2.0}, TypeError, r"^stages must be an integer, not 2\.0$"),
    ((BFPFormat(8, 16),), {"stages": True}, TypeError, r"^stages must be an integer, not True$"),
])
def test_validation(args, kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        BlockToFloat(*args, **kwargs)


@pytest.mark.parametrize("name,stages", [("bfp8", 0), ("bfp8", 3), ("w16b64", 5)])
def test_verilog(name, stages):
    text = verilog.convert(BlockToFloat(FORMATS[name], stages=stages), name="block_to_float")
    assert "module block_to_float" in text

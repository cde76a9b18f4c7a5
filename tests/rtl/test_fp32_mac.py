# amaranth: UnusedElaboratable=no
"""Fp32MacBaseline against numpy float32 products and the golden ``accumulate``, bit for bit."""

import random

import numpy as np
import pytest
from amaranth.back import verilog

from hbfp_hw import golden
from hbfp_hw.rtl_gen.fp32_mac import Fp32MacBaseline
from hbfp_hw.rtl_gen.layout import accumulator_output_layout, mac_input_layout, pack, unpack

NAN = 0x7FC00000
SPECIALS = [
    0x00000000, 0x80000000, 0x00000001, 0x80000001, 0x007FFFFF, 0x00800000, 0x3F800000,
    0xBF800000, 0x3F800001, 0x3FFFFFFF, 0x40000000, 0x5F800000, 0x1F800000, 0x7F7FFFFF,
    0xFF7FFFFF, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 0x34000000,
    0x0C000000, 0x33FFFFFF,
]


def _f(bits):
    return golden.bits_to_f32([int(b) for b in bits])


def golden_mul(a_bits, b_bits):
    """IEEE float32 products (numpy, round-to-nearest-even) with the canonical NaN."""
    with np.errstate(all="ignore"):
        return golden.canonicalize_nan(np.multiply(_f(a_bits), _f(b_bits), dtype=np.float32))


def golden_mac(terms):
    """Completed sums ``fp32_add(... fp32_add(+0.0, a0*b0) ..., an*bn)`` per channel."""
    products = golden_mul([t[0] for t in terms], [t[1] for t in terms])
    open_sums, out = {}, []
    for (_, _, channel, first, last), p in zip(terms, products, strict=True):
        if first:
            open_sums[channel] = []
        open_sums[channel].append(p)
        if last:
            total = golden.accumulate(np.array(open_sums.pop(channel), dtype=np.float32))
            out.append((int(golden.f32_to_bits(total).reshape(-1)[0]), channel))
    return out


def rtl_fp32_mac(run, terms, *, channels, mul_stages=3, adder_stages=3, seed=0, valid_prob=1.0,
                 ready_prob=1.0):
    """Run ``terms`` (``(a, b, channel, first, last)``) through Fp32MacBaseline.

    Returns the completed sums as ``(bits, channel)`` and the StreamRun record.
    """
    in_layout = mac_input_layout(channels)
    inputs = [pack(in_layout, {"a": a, "b": b, "channel": c, "first": int(f), "last": int(la)})
              for a, b, c, f, la in terms]
    n_out = sum(1 for *_, la in terms if la)
    dut = Fp32MacBaseline(channels=channels, mul_stages=mul_stages, adder_stages=adder_stages)
    result = run(dut, inputs, n_out, seed=seed, valid_prob=valid_prob, ready_prob=ready_prob)
    sums = [unpack(accumulator_output_layout(channels), x) for x in result.outputs]
    return [(s["value"], s["channel"]) for s in sums], result


def subnormal(rng, zeros):
    """A random subnormal whose significand has ``zeros`` leading zeros (of 23 fraction bits)
    below the (zero) hidden bit."""
    top = 22 - zeros
    return (rng.getrandbits(1) << 31) | (1 << top) | rng.getrandbits(top)  # getrandbits(0): 0


def make_operands(rng):
    """One random or adversarial multiplier operand pair."""
    def rand_finite():
        return rng.getrandbits(31) % 0x7F800000 | (rng.getrandbits(1) << 31)

    def with_exp(bits, e):
        return (bits & 0x807FFFFF) | (e << 23)

    kind = rng.randrange(8)
    a, b = rand_finite(), rand_finite()
    if kind == 0:                               # any bit patterns
        a, b = rng.getrandbits(32), rng.getrandbits(32)
    elif kind == 1:                             # product near the subnormal range
        ea = rng.randrange(0, 128)
        a, b = with_exp(a, ea), with_exp(b, max(0, min(254, rng.randint(-30, 10) + 127 - ea)))
    elif kind == 2:                             # product near overflow
        ea = rng.randrange(127, 255)
        a, b = with_exp(a, ea), with_exp(b, max(0, min(254, rng.randint(-3, 2) + 254 - ea)))
    elif kind == 3:                             # subnormal operands
        a = with_exp(a, 0)
        b = with_exp(b, rng.choice((0, rng.randrange(1, 255))))
    elif kind == 4:                             # few significand bits: exact and tie products
        a = (a & 0xFF800000) | (rng.getrandbits(12) << 11)
        b = (b & 0xFF800000) | (rng.getrandbits(13) << 10)
    elif kind == 5:                             # specials
        a = rng.choice(SPECIALS)
        b = rng.choice((rng.choice(SPECIALS), b))
    elif kind == 6:                             # a subnormal with any leading-zero count
        a = subnormal(rng, rng.randrange(23))
        b = rng.choice((with_exp(b, rng.randrange(100, 255)), subnormal(rng, rng.randrange(23))))
    if rng.random() < 0.5:
        a, b = b, a
    return a, b


def make_terms(channels, n, seed, *, p_single=0.5):
    """Sums over interleaved channels; about half are one-term sums that expose each product."""
    rng = random.Random(seed)
    terms, is_open = [], [False] * channels
    for _ in range(n):
        channel = rng.randrange(channels)
        first = not is_open[channel]
        last = (first and rng.random() < p_single) or rng.random() < 0.3
        terms.append((*make_operands(rng), channel, first, last))
        is_open[channel] = not last
    for channel in range(channels):
        if is_open[channel]:
            terms.append((*make_operands(rng), channel, False, True))
    return terms


def _check(terms, got):
    expected = golden_mac(terms)
    assert len(got) == len(expected)
    mismatches = [(i, f"{g[0]:#010x}", f"{e[0]:#010x}", g[1], e[1])
                  for i, (g, e) in enumerate(zip(got, expected, strict=True)) if g != e]
    assert not mismatches, f"{len(mismatches)} mismatches (index, rtl, golden, ch, ch): " \
                           f"{mismatches[:5]}"


@pytest.mark.parametrize("channels,mul_stages,adder_stages,valid_prob,ready_prob", [
    (1, 0, 1, 0.9, 0.8), (3, 2, 3, 0.8, 0.7), (4, 6, 4, 1.0, 0.6), (8, 3, 7, 0.7, 0.9),
])
def test_mac_against_golden(stream_runner, channels, mul_stages, adder_stages, valid_prob,
                            ready_prob):
    terms = make_terms(channels, 1200, seed=f"mac-{channels}-{mul_stages}-{adder_stages}")
    got, _ = rtl_fp32_mac(stream_runner, terms, channels=channels, mul_stages=mul_stages,
                          adder_stages=adder_stages, seed=channels, valid_prob=valid_prob,
                          ready_prob=ready_prob)
    _check(terms, got)


def test_products_of_specials(stream_runner):
    """Every pair of special operands, each as a one-term sum (``+0.0 + a*b``)."""
    terms = [(a, b, i % 4, True, True)
             for i, (a, b) in enumerate((a, b) for a in SPECIALS for b in SPECIALS)]
    got, _ = rtl_fp32_mac(stream_runner, terms, channels=4, mul_stages=2, adder_stages=2)
    _check(terms, got)
    by_pair = {(a, b): g for (a, b, *_), (g, _) in zip(terms, got, strict=True)}
    assert by_pair[0x7F800000, 0x00000000] == NAN          # Inf * 0
    assert by_pair[0x7F7FFFFF, 0x40000000] == 0x7F800000   # overflow
    assert by_pair[0x00000001, 0x34000000] == 0x00000000   # 2**-149 * 2**-23: to +0
    assert by_pair[0x007FFFFF, 0x3F800001] == 0x00800000   # rounds up into 2**-126


@pytest.mark.parametrize("mul_stages", [0, Fp32MacBaseline.MAX_MUL_STAGES])
def test_products_of_subnormals(stream_runner, mul_stages):
    """A subnormal operand with every leading-zero count (the multiplier normalizes it before
    the multiply) times normal operands across the exponent range and times subnormals, each
    as a one-term sum: products in the normal range, around the smallest normal and below."""
    rng = random.Random(f"subnormals-{mul_stages}")
    terms = []
    for zeros in range(23):
        for eb in (1, 60, 103, 126, 127, 128, 150, 180, 230, 253, 254):
            for _ in range(2):
                a = subnormal(rng, zeros)
                b = (rng.getrandbits(1) << 31) | (eb << 23) | rng.getrandbits(23)
                terms.append((a, b) if rng.random() < 0.5 else (b, a))
        terms.append((subnormal(rng, zeros), subnormal(rng, rng.randrange(23))))
    # 2**-149 * 2**127 = 2**-22 (22 leading zeros, exact); the largest subnormal times
    # (2 - 2**-23), 2**-125 - 3 * 2**-149 + 2**-172, rounds down to a normal.
    terms += [(0x00000001, 0x7F000000), (0x007FFFFF, 0x3FFFFFFF)]
    terms = [(a, b, i % 4, True, True) for i, (a, b) in enumerate(terms)]
    got, _ = rtl_fp32_mac(stream_runner, terms, channels=4, mul_stages=mul_stages,
                          adder_stages=2)
    _check(terms, got)
    assert [g for g, _ in got[-2:]] == [0x34800000, 0x00FFFFFD]


@pytest.mark.slow
@pytest.mark.parametrize("mul_stages", range(Fp32MacBaseline.MAX_MUL_STAGES + 1))
def test_mac_against_golden_deep(stream_runner, mul_stages):
    terms = make_terms(5, 8000, seed=f"deep-mac-{mul_stages}")
    got, _ = rtl_fp32_mac(stream_runner, terms, channels=5, mul_stages=mul_stages,
                          adder_stages=1 + mul_stages % 7, seed=mul_stages, valid_prob=0.85,
                          ready_prob=0.8)
    _check(terms, got)


@pytest.mark.parametrize("mul_stages,adder_stages", [(0, 1), (3, 3), (6, 7)])
def test_latency_and_throughput(stream_runner, mul_stages, adder_stages):
    channels = adder_stages
    rng = random.Random("tp")
    n = 60 * channels
    terms = [(*make_operands(rng), i % channels, i < channels, i >= n - channels)
             for i in range(n)]
    got, run = rtl_fp32_mac(stream_runner, terms, channels=channels, mul_stages=mul_stages,
                            adder_stages=adder_stages)
    _check(terms, got)
    dut = run.dut
    assert dut.latency == mul_stages + adder_stages and dut.min_channels == adder_stages
    assert run.in_cycles == list(range(n))
    assert [o - i for i, o in zip(run.in_cycles[-channels:], run.out_cycles, strict=True)] == \
        [dut.latency] * channels


def test_single_channel_hazard(stream_runner):
    terms = make_terms(1, 200, seed="one", p_single=0.1)
    got, run = rtl_fp32_mac(stream_runner, terms, channels=1, mul_stages=2, adder_stages=4)
    _check(terms, got)
    assert run.in_cycles[-1] > len(terms)        # slower than one term per cycle


def test_ports():
    mac = Fp32MacBaseline(channels=3, mul_stages=1, adder_stages=2)
    assert (mac.channels, mac.mul_stages, mac.adder_stages, mac.throughput) == (3, 1, 2, 1)
    assert mac.i_stream.payload.shape() == mac_input_layout(3)
    assert mac.o_stream.payload.shape() == accumulator_output_layout(3)


@pytest.mark.parametrize("kwargs,exc,msg", [
    ({"channels": 0}, ValueError, r"^channels must be between 1 and 4096, not 0$"),
    ({"channels": "4"}, TypeError, r"^channels must be an integer, not '4'$"),
    ({"channels": 4, "mul_stages": 10}, ValueError,
     r"^mul_stages must be between 0 and 8, not 10$"),
    ({"channels": 4, "adder_stages": 12}, ValueError,
     r"^adder_stages must be between 1 and 11, not 12$"),
    ({"channels": 4, "mul_stages": 1.0}, TypeError, r"^mul_stages must be an integer, not 1\.0$"),
])
def test_validation(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        Fp32MacBaseline(**kwargs)


@pytest.mark.parametrize("kwargs", [
    {"channels": 1, "mul_stages": 0, "adder_stages": 1},
    {"channels": 8, "mul_stages": 6, "adder_stages": 7},
])
def test_verilog(kwargs):
    text = verilog.convert(Fp32MacBaseline(**kwargs), name="fp32_mac")
    assert "module fp32_mac" in text

# amaranth: UnusedElaboratable=no
"""FP32Adder and FPAccumulator against the golden ``fp32_add`` / ``accumulate``, bit for bit."""

import random

import pytest
from amaranth.back import verilog

from hbfp_hw import golden
from hbfp_hw.rtl_gen.fp_accumulator import FP32Adder, FPAccumulator
from hbfp_hw.rtl_gen.layout import (
    accumulator_input_layout,
    accumulator_output_layout,
    fp32_pair_layout,
    pack,
    unpack,
)

NAN = 0x7FC00000
SPECIALS = [
    0x00000000, 0x80000000,                      # ±0
    0x00000001, 0x80000001, 0x00000003,          # smallest subnormals
    0x007FFFFF, 0x807FFFFF, 0x00400000,          # largest subnormal, half of 2**-126
    0x00800000, 0x80800000, 0x00800001,          # smallest normals
    0x3F800000, 0xBF800000, 0x3F800001, 0x33800000, 0x33800001, 0xB3800000,  # 1, ulp/2 ties
    0x4B7FFFFF, 0x4B800000, 0x3EFFFFFF,
    0x7F7FFFFF, 0xFF7FFFFF, 0x7F7FFFFE, 0x73800000, 0x73000000,   # largest finite, half ulp
    0x7F800000, 0xFF800000,                      # ±Inf
    0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FBFFFFF, 0xFFFFFFFF,   # NaNs, signalling too
]


def _f(bits):
    return golden.bits_to_f32([int(b) for b in bits])


def golden_add(pairs):
    out = golden.fp32_add(_f([a for a, _ in pairs]), _f([b for _, b in pairs]))
    return [int(x) for x in golden.f32_to_bits(out)]


def rtl_fp32_add(run, pairs, *, stages=3, seed=0, valid_prob=1.0, ready_prob=1.0):
    """Add FP32 bit-pattern pairs with FP32Adder; return the sums and the StreamRun record."""
    inputs = [pack(fp32_pair_layout(), {"a": a, "b": b}) for a, b in pairs]
    result = run(FP32Adder(stages=stages), inputs, seed=seed, valid_prob=valid_prob,
                 ready_prob=ready_prob)
    return [int(x) for x in result.outputs], result


def make_pairs(n, seed):
    """Random and adversarial operand pairs."""
    rng = random.Random(seed)

    def rand_finite():
        return rng.getrandbits(31) % 0x7F800000 | (rng.getrandbits(1) << 31)

    def with_exp(bits, e):
        return (bits & 0x807FFFFF) | (e << 23)

    pairs = []
    for _ in range(n):
        kind = rng.randrange(9)
        a = rand_finite()
        if kind == 0:                       # any bit patterns (NaN, Inf included)
            a, b = rng.getrandbits(32), rng.getrandbits(32)
        elif kind == 1:                     # cancellation: opposite signs, nearly equal
            b = a ^ (1 << 31) ^ rng.getrandbits(rng.randrange(0, 24))
        elif kind == 2:                     # close exponents
            e = (a >> 23) & 0xFF
            b = with_exp(rand_finite(), max(0, min(254, e + rng.randint(-3, 3))))
        elif kind == 3:                     # huge exponent differences
            b = with_exp(rand_finite(), rng.randrange(0, 255))
            a = with_exp(a, rng.choice((rng.randrange(0, 30), rng.randrange(200, 255))))
        elif kind == 4:                     # subnormal + subnormal / tiny normals
            a = with_exp(a, rng.choice((0, 0, 1)))
            b = with_exp(rand_finite(), rng.choice((0, 0, 1, 2)))
        elif kind == 5:                     # ties: b is half an ulp of a, maybe plus an ulp
            e = rng.randrange(25, 255)
            a = with_exp(a, e)
            b = (rng.getrandbits(1) << 31) | ((e - 24) << 23) | rng.choice((0, 0, 1))
        elif kind == 6:                     # overflow: large operands, same sign
            a = with_exp(a, rng.randrange(250, 255))
            b = with_exp(rand_finite(), rng.randrange(250, 255)) | (a & (1 << 31))
        elif kind == 7:                     # exact negation x + (-x), or with a zero
            b = a ^ (1 << 31) if rng.random() < 0.5 else rng.choice((0, 1 << 31))
        else:                               # specials against anything
            b = rng.choice(SPECIALS)
        if rng.random() < 0.5:
            a, b = b, a
        pairs.append((a, b))
    return pairs


def special_pairs():
    return [(a, b) for a in SPECIALS for b in SPECIALS]


def _check(pairs, got):
    expected = golden_add(pairs)
    mismatches = [(f"{a:#010x}", f"{b:#010x}", f"{g:#010x}", f"{e:#010x}")
                  for (a, b), g, e in zip(pairs, got, expected, strict=True) if g != e]
    assert not mismatches, f"{len(mismatches)} mismatches (a, b, rtl, golden): {mismatches[:5]}"


@pytest.mark.parametrize("stages,valid_prob,ready_prob", [
    (0, 0.8, 0.8), (1, 1.0, 0.6), (3, 0.7, 0.7), (7, 0.6, 0.9),
])
def test_adder_against_golden(stream_runner, stages, valid_prob, ready_prob):
    pairs = special_pairs() + make_pairs(1300, seed=f"add-{stages}")
    got, _ = rtl_fp32_add(stream_runner, pairs, stages=stages, seed=stages,
                          valid_prob=valid_prob, ready_prob=ready_prob)
    _check(pairs, got)


@pytest.mark.slow
@pytest.mark.parametrize("stages", range(FP32Adder.MAX_STAGES + 1))
def test_adder_against_golden_deep(stream_runner, stages):
    pairs = make_pairs(20000, seed=f"deep-add-{stages}")
    got, _ = rtl_fp32_add(stream_runner, pairs, stages=stages, seed=stages, valid_prob=0.9,
                          ready_prob=0.8)
    _check(pairs, got)


def test_adder_rules(stream_runner):
    pairs = [
        (0x3F800000, 0xBF800000),   # x + (-x) = +0
        (0x80000000, 0x80000000),   # -0 + -0 = -0
        (0x80000000, 0x00000000),   # -0 + +0 = +0
        (0x7F800000, 0xFF800000),   # Inf - Inf = NaN
        (0xFF800000, 0x3F800000),   # -Inf + 1 = -Inf
        (0xFFC00001, 0x3F800000),   # NaN payload and sign are not propagated
        (0x7F7FFFFF, 0x7F7FFFFF),   # overflow to +Inf
        (0x7F7FFFFF, 0x73000000),   # largest + half ulp: tie to even, stays finite? (odd: up)
        (0x3F800000, 0x33800000),   # 1 + 2**-24: tie, to even 1.0
        (0x3F800001, 0x33800000),   # tie, up to even
        (0x00000001, 0x007FFFFF),   # subnormal + subnormal = smallest normal
        (0x00800000, 0x80000001),   # normal - subnormal = largest subnormal
    ]
    got, _ = rtl_fp32_add(stream_runner, pairs, stages=2)
    assert got == [0x00000000, 0x80000000, 0x00000000, NAN, 0xFF800000, NAN, 0x7F800000,
                   0x7F800000, 0x3F800000, 0x3F800002, 0x00800000, 0x007FFFFF]
    assert got == golden_add(pairs)


@pytest.mark.parametrize("stages", [0, 1, 4, 7])
def test_adder_latency_and_throughput(stream_runner, stages):
    pairs = make_pairs(40, seed="lat")
    got, run = rtl_fp32_add(stream_runner, pairs, stages=stages)
    _check(pairs, got)
    assert run.dut.latency == stages and run.dut.throughput == 1
    assert run.in_cycles == list(range(len(pairs)))
    assert [o - i for i, o in zip(run.in_cycles, run.out_cycles, strict=True)] == \
        [stages] * len(pairs)
    assert run.out_cycles[-1] + 1 == len(pairs) + stages


# -- accumulator --------------------------------------------------------------------------------


def rtl_accumulate(run, terms, *, channels, adder_stages=3, seed=0, valid_prob=1.0,
                   ready_prob=1.0):
    """Accumulate ``terms`` (``(bits, channel, first, last)``) with FPAccumulator.

    Returns the completed sums as ``(bits, channel)`` pairs and the StreamRun record.
    """
    in_layout = accumulator_input_layout(channels)
    out_layout = accumulator_output_layout(channels)
    inputs = [pack(in_layout, {"value": v, "channel": c, "first": int(f), "last": int(la)})
              for v, c, f, la in terms]
    n_out = sum(1 for *_, la in terms if la)
    dut = FPAccumulator(channels=channels, adder_stages=adder_stages)
    result = run(dut, inputs, n_out, seed=seed, valid_prob=valid_prob, ready_prob=ready_prob)
    sums = [unpack(out_layout, x) for x in result.outputs]
    return [(s["value"], s["channel"]) for s in sums], result


def golden_accumulate(terms):
    """Completed sums, in the order of their last terms, from ``golden.accumulate``."""
    open_sums = {}
    out = []
    for value, channel, first, last in terms:
        if first:
            open_sums[channel] = []
        open_sums[channel].append(value)
        if last:
            total = golden.accumulate(_f(open_sums.pop(channel)))
            out.append((int(golden.f32_to_bits(total).reshape(-1)[0]), channel))
    return out


def make_terms(channels, n, seed, *, p_last=0.25, order="random"):
    """Interleaved sums over ``channels`` with random lengths; every sum is completed."""
    rng = random.Random(seed)
    pool = [p for p in make_pairs(n, seed) for p in p] + SPECIALS

    def value():
        kind = rng.random()
        if kind < 0.03:
            return rng.choice(SPECIALS)
        if kind < 0.12:                     # large terms: accumulation overflow to ±Inf
            return (rng.getrandbits(1) << 31) | (rng.randrange(252, 255) << 23) \
                | rng.getrandbits(23)
        if kind < 0.5:                      # one binade range: sums with cancellation
            return (rng.getrandbits(1) << 31) | (rng.randrange(120, 130) << 23) \
                | rng.getrandbits(23)
        bits = rng.choice(pool)             # random and adversarial adder operands, finite
        return bits if (bits >> 23) & 0xFF != 0xFF else rng.getrandbits(31) % 0x7F800000

    terms = []
    is_open = [False] * channels
    for i in range(n):
        channel = i % channels if order == "round-robin" else rng.randrange(channels)
        first = not is_open[channel] or rng.random() < 0.05   # also restart an open sum
        last = rng.random() < p_last
        terms.append((value(), channel, first, last))
        is_open[channel] = not last
    for channel in range(channels):
        if is_open[channel]:
            terms.append((value(), channel, False, True))
    return terms


def _check_acc(terms, got):
    expected = golden_accumulate(terms)
    assert len(got) == len(expected)
    mismatches = [(i, f"{g[0]:#010x}", f"{e[0]:#010x}", g[1], e[1])
                  for i, (g, e) in enumerate(zip(got, expected, strict=True)) if g != e]
    assert not mismatches, f"{len(mismatches)} mismatches (index, rtl, golden, ch, ch): " \
                           f"{mismatches[:5]}"


@pytest.mark.parametrize("channels,adder_stages,valid_prob,ready_prob", [
    (1, 1, 0.9, 0.8), (3, 3, 0.8, 0.7), (4, 4, 1.0, 0.5), (5, 7, 0.7, 0.9), (16, 2, 0.9, 0.9),
])
def test_accumulator_against_golden(stream_runner, channels, adder_stages, valid_prob,
                                    ready_prob):
    terms = make_terms(channels, 1100, seed=f"acc-{channels}-{adder_stages}")
    got, _ = rtl_accumulate(stream_runner, terms, channels=channels, adder_stages=adder_stages,
                            seed=channels, valid_prob=valid_prob, ready_prob=ready_prob)
    _check_acc(terms, got)


@pytest.mark.slow
@pytest.mark.parametrize("adder_stages", range(1, FPAccumulator.MAX_ADDER_STAGES + 1))
@pytest.mark.parametrize("channels", [1, 2, 7, 8])
def test_accumulator_against_golden_deep(stream_runner, channels, adder_stages):
    terms = make_terms(channels, 8000, seed=f"deep-acc-{channels}-{adder_stages}")
    got, _ = rtl_accumulate(stream_runner, terms, channels=channels, adder_stages=adder_stages,
                            seed=adder_stages, valid_prob=0.85, ready_prob=0.8)
    _check_acc(terms, got)


def test_accumulator_rules(stream_runner):
    terms = [
        (0x80000000, 0, True, True),         # +0.0 + -0.0 = +0.0
        (0x7F7FFFFF, 0, True, False),        # overflow to +Inf ...
        (0x7F7FFFFF, 0, False, False),
        (0xFF7FFFFF, 0, False, True),        # ... and Inf stays (Inf - finite = Inf)
        (0x7F800000, 1, True, False),        # Inf - Inf = canonical NaN
        (0xFF800000, 1, False, True),
        (0x3F800000, 1, True, False),        # 1 + 2**-24 + 2**-24, in order: 1.0
        (0x33800000, 1, False, False),
        (0x33800000, 1, False, True),
    ]
    got, _ = rtl_accumulate(stream_runner, terms, channels=2, adder_stages=3)
    assert got == [(0, 0), (0x7F800000, 0), (NAN, 1), (0x3F800000, 1)]
    assert got == golden_accumulate(terms)


@pytest.mark.parametrize("adder_stages", [1, 3, 7])
def test_accumulator_hazard_single_channel(stream_runner, adder_stages):
    """Back-to-back terms of one channel are correct, one every ``adder_stages`` cycles."""
    terms = make_terms(1, 300, seed=f"hazard-{adder_stages}")
    got, run = rtl_accumulate(stream_runner, terms, channels=1, adder_stages=adder_stages)
    _check_acc(terms, got)
    gaps = [b - a for a, b in zip(run.in_cycles, run.in_cycles[1:], strict=False)]
    starts = [f for _, _, f, _ in terms[1:]]
    # A term that starts a new sum does not wait; every other one waits for the previous add.
    assert all(g == (1 if f else adder_stages) for g, f in zip(gaps, starts, strict=True))


@pytest.mark.parametrize("adder_stages", [1, 2, 5, 7])
def test_accumulator_full_throughput(stream_runner, adder_stages):
    """With ``min_channels`` channels round-robin, one term per cycle; latency as reported."""
    channels = adder_stages
    probe = FPAccumulator(channels=channels, adder_stages=adder_stages)
    assert probe.min_channels == adder_stages and probe.latency == adder_stages
    terms = make_terms(channels, 400, seed=f"tp-{adder_stages}", order="round-robin",
                       p_last=0.1)
    terms = terms[:400 - 400 % channels]
    # Close every sum in the final round so that all outputs appear.
    terms[-channels:] = [(v, c, f, True) for v, c, f, _ in terms[-channels:]]
    got, run = rtl_accumulate(stream_runner, terms, channels=channels, adder_stages=adder_stages)
    _check_acc(terms, got)
    assert run.in_cycles == list(range(len(terms)))
    last_cycles = [c for c, (*_, la) in zip(run.in_cycles, terms, strict=True) if la]
    assert [o - i for i, o in zip(last_cycles, run.out_cycles, strict=True)] == \
        [adder_stages] * len(last_cycles)
    assert run.out_cycles[-1] + 1 == len(terms) + adder_stages


def test_ports():
    acc = FPAccumulator(channels=5, adder_stages=2)
    assert acc.channels == 5 and acc.adder_stages == 2 and acc.throughput == 1
    assert acc.i_stream.payload.shape() == accumulator_input_layout(5)
    assert acc.o_stream.payload.shape() == accumulator_output_layout(5)
    assert accumulator_input_layout(5)["channel"].shape.width == 3
    assert accumulator_input_layout(1)["channel"].shape.width == 1
    assert FP32Adder(stages=4).i_stream.payload.shape() == fp32_pair_layout()


@pytest.mark.parametrize("cls,kwargs,exc,msg", [
    (FP32Adder, {"stages": 12}, ValueError, r"^stages must be between 0 and 11, not 12$"),
    (FP32Adder, {"stages": "3"}, TypeError, r"^stages must be an integer, not '3'$"),
    (FPAccumulator, {"channels": 0}, ValueError, r"^channels must be between 1 and 4096, not 0$"),
    (FPAccumulator, {"channels": 2.5}, TypeError, r"^channels must be an integer, not 2\.5$"),
    (FPAccumulator, {"channels": 4, "adder_stages": 0}, ValueError,
     r"^adder_stages must be between 1 and 11, not 0$"),
    (FPAccumulator, {"channels": 4, "adder_stages": None}, TypeError,
     r"^adder_stages must be an integer, not None$"),
])
def test_validation(cls, kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        cls(**kwargs)


@pytest.mark.parametrize("component", [
    lambda: FP32Adder(stages=0), lambda: FP32Adder(stages=7),
    lambda: FPAccumulator(channels=1, adder_stages=1),
    lambda: FPAccumulator(channels=6, adder_stages=4),
])
def test_verilog(component):
    text = verilog.convert(component(), name="fp_unit")
    assert "module fp_unit" in text

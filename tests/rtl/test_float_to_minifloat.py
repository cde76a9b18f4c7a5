# amaranth: UnusedElaboratable=no
"""FloatToMinifloatBlock RTL against the golden quantizer (numerics.md 5), bit for bit, in the
Amaranth simulator: every preset under every scale rule, general ExMy types, every element
code, midpoints and their FP32 neighbours, FP32 subnormals, the scale clamps, the ``rceil``
thresholds, stochastic rounding, and mutants the tests must catch."""

import itertools

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.hdl import Fragment

from hbfp_hw import golden
from hbfp_hw.formats import (
    PRESETS,
    FloatFormat,
    Rounding,
    ScaleRule,
    minifloat_format,
    resolve_format,
)
from hbfp_hw.golden import minifloat
from hbfp_hw.rtl_gen.float_to_block import FloatToBlock
from hbfp_hw.rtl_gen.float_to_minifloat import (
    FloatToMinifloatBlock,
    block_quantizer,
    rceil_constants,
)
from hbfp_hw.sim import mutants

from .test_float_to_block import (
    corner_blocks,
    lane_patterns,
    random_blocks,
    rtl_float_to_block,
    with_clock,
)

MX_PRESETS = [name for name, fmt in PRESETS.items() if fmt.is_minifloat]
RULES = ["floor", "ceil", "rceil"]


def golden_codes(fmt, values, *, input_format="fp32", seed=0):
    q = golden.quantize(np.asarray(values, dtype=np.float32), fmt, seed=seed,
                        input_format=input_format)
    return (q.exponent_codes.astype(np.int64).reshape(-1),
            q.element_codes().astype(np.int64).reshape(-1, fmt.block_size))


def check(fmt, values, *, input_format="fp32", seed=None, stages=2, valid_prob=1.0,
          ready_prob=1.0, rng=None, cls=None):
    """Quantize ``values [nblocks, N]`` with the RTL (``cls``, default the real unit) and the
    golden model; raise AssertionError naming the first differing block."""
    values = np.asarray(values, dtype=np.float32).reshape(-1, fmt.block_size)
    if FloatFormat(input_format) is FloatFormat.BF16:
        values = golden.to_bf16(values)
    codes, elements = rtl_float_to_block(
        fmt, lane_patterns(values, input_format), input_format=input_format, stages=stages,
        seed=seed, valid_prob=valid_prob, ready_prob=ready_prob, rng=rng, cls=cls)
    want_codes, want_elements = golden_codes(fmt, values, input_format=input_format,
                                             seed=0 if seed is None else seed)
    bad = np.flatnonzero((codes != want_codes) | np.any(elements != want_elements, axis=-1))
    if bad.size:
        b = bad[0]
        lanes = np.flatnonzero(elements[b] != want_elements[b])[:4]
        raise AssertionError(
            f"{fmt.name} {fmt.scale_rule.value} {fmt.rounding.value}: {bad.size} of "
            f"{len(codes)} blocks differ; first is block {b}, scale code rtl {codes[b]} golden "
            f"{want_codes[b]}; lanes {lanes.tolist()} with inputs "
            f"{[hex(int(v)) for v in golden.f32_to_bits(values[b][lanes])]}: rtl "
            f"{elements[b][lanes].tolist()} golden {want_elements[b][lanes].tolist()}")


# -- test data -------------------------------------------------------------------------------

def element_grid_blocks(fmt, rng, count):
    """Blocks whose lanes are element values, midpoints between neighbours and their FP32
    neighbours (+-1 ulp), values beyond the largest, and the block maximum that fixes the
    scale: every element code appears, at random scales (the clamps included)."""
    element = fmt.element
    n = fmt.block_size
    codes = np.arange(1 << (element.width - 1))
    ints, special = minifloat.decode(codes, element)
    ints = np.unique(ints[~special]).astype(np.float64)
    mids = (ints[:-1] + ints[1:]) / 2
    grid = np.concatenate([ints, mids, [element.max_int * 1.02, element.max_int * 4.0]])
    grid = grid * 2.0 ** -element.fraction_bits          # in units of 2**X
    blocks = []
    for b in range(count):
        x = int(rng.choice([-127, -126, -125, 126, 127, *rng.integers(-140, 140, 3)]))
        lanes = rng.choice(grid, n)
        # the lane that sets the scale: the largest element or the power of two of emax
        top = element.max_normal if b % 2 else 2.0 ** element.emax
        lanes[0] = top
        values = np.ldexp(lanes, x)
        with np.errstate(over="ignore"):
            f = values.astype(np.float32)
        f = np.where(np.isfinite(f), f, np.float32(3.4e38))
        bits = golden.f32_to_bits(f).astype(np.int64)
        bits += rng.integers(-1, 2, n) * (rng.random(n) < 0.3) * (bits != 0)
        bits = np.clip(bits, 0, 0x7F7FFFFF)
        bits |= rng.integers(0, 2, n) << 31
        blocks.append(golden.bits_to_f32(bits.astype(np.uint32)))
    return np.stack(blocks)


def subnormal_blocks(fmt, rng, count):
    """Blocks of FP32 subnormals and zeros: the scale clamps at the bottom, where an FP32
    subnormal may still land in a normal element binade (leading zeros decide its grid)."""
    n = fmt.block_size
    frac = rng.integers(0, 1 << 23, (count, n)) >> rng.integers(0, 23, (count, n))
    frac[:, 0] = rng.choice([0x7FFFFF, 0x400000, 0x400001, 0x3FFFFF, 0x200000, 1], count)
    sign = rng.integers(0, 2, (count, n)) << 31
    return golden.bits_to_f32((frac | sign).astype(np.uint32))


def rceil_blocks(fmt, rng):
    """Blocks whose largest magnitude sits on and next to each ``rceil`` constant: the two
    significand thresholds at several exponents, and the subnormal-result boundary."""
    k = rceil_constants(fmt.element)
    patterns = [k.low - 1, k.low, k.low + 1, k.low + 2]
    for field in (1, 2, 60, 127, 200, 253, 254):
        for s in (k.g1, k.g1 + 1, k.g2, k.g2 + 1, 1 << 23, (1 << 24) - 1):
            if (1 << 23) <= s < (1 << 24):
                patterns.append(field << 23 | (s - (1 << 23)))
    blocks = []
    for p in patterns:
        lanes = rng.integers(0, max(p, 1), fmt.block_size)
        lanes[int(rng.integers(0, fmt.block_size))] = p
        blocks.append(golden.bits_to_f32(lanes.astype(np.uint32)))
    return np.stack(blocks)


def _random_stages(fmt, rng):
    return int(rng.integers(0, FloatToMinifloatBlock.max_stages_for(fmt) + 1))


def stimulus(fmt, rng, nrandom=40):
    parts = [corner_blocks(fmt), random_blocks(fmt, nrandom, rng),
             element_grid_blocks(fmt, rng, 24), subnormal_blocks(fmt, rng, 6)]
    if fmt.scale_rule is ScaleRule.RCEIL:
        parts.append(rceil_blocks(fmt, rng))
    return np.concatenate(parts)


# -- bit-exactness ---------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "rule"), list(itertools.product(MX_PRESETS, RULES)))
def test_presets(name, rule):
    fmt = resolve_format(name).replace(scale_rule=rule)
    rng = np.random.default_rng([MX_PRESETS.index(name), RULES.index(rule)])
    check(fmt, stimulus(fmt, rng), stages=_random_stages(fmt, rng), valid_prob=0.8,
          ready_prob=0.7, rng=rng)


@pytest.mark.parametrize(("name", "rounding", "input_format"), [
    ("mxfp8_e4m3", "stochastic", "fp32"), ("mxfp8_e5m2", "toward-zero", "bf16"),
    ("mxfp6_e2m3", "stochastic", "bf16"), ("mxfp4_e2m1", "toward-zero", "fp32"),
    ("bm6_e3m2", "stochastic", "fp32"), ("mxfp8_e4m3", "nearest-even", "bf16"),
])
def test_roundings_and_bf16(name, rounding, input_format):
    fmt = resolve_format(name).replace(rounding=rounding, block_size=8)
    rng = np.random.default_rng(len(name) + len(rounding))
    seed = int(rng.integers(0, 1 << 32)) if rounding == "stochastic" else None
    check(fmt, stimulus(fmt, rng), input_format=input_format, seed=seed, stages=3,
          valid_prob=0.8, ready_prob=0.8, rng=rng)


def _general_formats():
    """Every ExMy type (e 1..5, m 0..7, every reserved-code convention) with the IEEE bias,
    the smallest and the largest bias."""
    out = []
    for e, m, special in itertools.product(range(1, 6), range(8), ["ieee", "fn", "none"]):
        if (special == "ieee" and e < 2) or (special == "fn" and m < 1):
            continue            # no such type: IEEE needs a finite field, fn a NaN fraction
        for bias in sorted({None, 0, 1 << (e - 1)}, key=str):
            out.append(minifloat_format(e, m, 4, special=special, bias=bias))
    return out


GENERAL = _general_formats()


@pytest.mark.parametrize("index", range(0, len(GENERAL), 9))
def test_general_formats(index):
    """A ninth of the ExMy types, each under a different rule and rounding."""
    _run_general(index, nrandom=20)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(GENERAL)))
def test_general_formats_all(index):
    _run_general(index, nrandom=60)


def _run_general(index, nrandom):
    rng = np.random.default_rng(index)
    fmt = GENERAL[index].replace(scale_rule=RULES[index % 3],
                                 rounding=list(Rounding)[index // 3 % 3])
    seed = 7 if fmt.rounding is Rounding.STOCHASTIC else None
    check(fmt, stimulus(fmt, rng, nrandom), seed=seed, stages=_random_stages(fmt, rng),
          valid_prob=0.9, ready_prob=0.8, rng=rng)


def test_ceil_with_emax_zero():
    """``emax == 0`` (E1M2 with bias 1): a subnormal block maximum above ``2**-127`` gives
    ``X = -126`` under ``ceil``, one at or below it ``-127``."""
    fmt = minifloat_format(1, 2, 4, special="none", bias=1, scale_rule="ceil")
    assert fmt.element.emax == 0
    blocks = golden.bits_to_f32(np.array([
        [0x400001, 3, 0, 0], [0x400000, 3, 0, 0], [0x3FFFFF, 0, 0, 0], [0x7FFFFF, 0x400000, 1, 0],
    ], dtype=np.uint32))
    check(fmt, blocks, stages=1)
    assert golden.quantize(blocks, fmt).exponent_codes.reshape(-1).tolist() == [1, 0, 0, 1]


def test_rceil_constants_against_golden():
    """The rule's constants reproduce :func:`golden.minifloat.scale_exponents` on every
    threshold and its neighbours, for every element type."""
    for fmt in GENERAL:
        fmt = fmt.replace(scale_rule="rceil")
        k = rceil_constants(fmt.element)
        patterns = [k.low + d for d in (-1, 0, 1)]
        for field in (1, 30, 127, 254):
            patterns += [field << 23 | (s - (1 << 23)) for s in (k.g1, k.g1 + 1, k.g2, k.g2 + 1)
                         if (1 << 23) <= s < (1 << 24)]
        amax = golden.bits_to_f32(np.array(patterns, dtype=np.uint32))
        want = minifloat.scale_exponents(amax, fmt)
        for p, x in zip(patterns, want, strict=True):
            f, s = p >> 23, (p & 0x7FFFFF) | ((p >> 23 != 0) << 23)
            got = f - 127 + k.ce + (s > k.g1) + (s > k.g2)
            got = -127 if p <= k.low else max(got, -126)
            assert min(max(got, -127), 127) == x, (fmt.element.name, hex(p))


def test_stochastic_threshold_is_exact():
    """Lanes placed exactly on, and one below, the carry of the rounding adder (the random
    bits are known from the golden PRNG) round up and down as the contract says."""
    fmt = resolve_format("mxfp8_e4m3").replace(rounding="stochastic", block_size=8)
    seed, nblocks = 0xC0FFEE, 32
    rand = golden.random_bits(seed, nblocks, fmt.block_size).astype(np.int64)
    below = np.random.default_rng(2).integers(0, 2, rand.shape)
    frac = (1 << 16) - rand - below
    # elements in [1, 2) of a block whose scale is 2**0: lane 0 sets emax = 8 (256)
    a = ((1 << 3) + np.random.default_rng(3).integers(0, 8, rand.shape)) * (1 << 16) + frac
    values = np.ldexp(a.astype(np.float64), -16 - 3).astype(np.float32)
    values[:, 0] = 256.0
    check(fmt, values, seed=seed, stages=2)


# -- mutants ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("fault", "name"), [
    ("saturation-wrap", "mxfp6_e3m2"), ("subnormal-flush", "mxfp8_e4m3"),
    ("nan-code-as-number", "mxfp8_e4m3"), ("nan-code-as-number", "mxfp8_e5m2"),
    ("leading-zeros-ignored", "mxfp8_e4m3"),
])
def test_mutants_are_caught(fault, name):
    fmt = resolve_format(name).replace(block_size=8)
    rng = np.random.default_rng(4)
    values = stimulus(fmt, rng)
    check(fmt, values, stages=2)                              # the real unit passes
    with pytest.raises(AssertionError, match="blocks differ"):
        check(fmt, values, stages=2, cls=mutants.FAULTS[fault].mutant)


# -- stream behaviour and construction -------------------------------------------------------

@pytest.mark.parametrize("stages", range(9))      # every cut point of a block of 8
def test_latency_and_throughput(stages):
    fmt = resolve_format("mxfp6_e2m3").replace(block_size=8, rounding="stochastic")
    assert FloatToMinifloatBlock.max_stages_for(fmt) == 9
    dut = FloatToMinifloatBlock(fmt, stages=stages)
    assert (dut.latency, dut.throughput) == (stages, 1)
    values = random_blocks(fmt, 30, np.random.default_rng(stages))
    trace = {}
    codes, elements = rtl_float_to_block(fmt, lane_patterns(values, "fp32"), stages=stages,
                                         trace=trace)
    want_codes, want_elements = golden_codes(fmt, values)
    np.testing.assert_array_equal(codes, want_codes)
    np.testing.assert_array_equal(elements, want_elements)
    assert trace["accept"] == list(range(30))
    assert trace["output"] == [c + stages for c in trace["accept"]]


def test_always_ready():
    fmt = resolve_format("mxfp8_e4m3").replace(block_size=4)
    dut = FloatToMinifloatBlock(fmt, stages=3, always_ready=True)
    text = verilog.convert(with_clock(dut), name="top", ports=[
        dut.i_stream.valid, dut.i_stream.ready, dut.i_stream.payload.as_value(),
        dut.o_stream.valid, dut.o_stream.payload.as_value(), dut.seed, dut.reseed])
    assert "fifo" not in text
    values = random_blocks(fmt, 20, np.random.default_rng(1))
    codes, elements = rtl_float_to_block(fmt, lane_patterns(values, "fp32"), stages=3,
                                         always_ready=True, valid_prob=0.7)
    want_codes, want_elements = golden_codes(fmt, values)
    np.testing.assert_array_equal(codes, want_codes)
    np.testing.assert_array_equal(elements, want_elements)


def test_block_quantizer_picks_by_format():
    for name, cls in (("mxfp4_e2m1", FloatToMinifloatBlock), ("bfp8", FloatToBlock)):
        dut = block_quantizer(resolve_format(name).replace(block_size=2), stages=1)
        assert type(dut) is cls and dut.stages == 1
        Fragment.get(dut, None)         # elaborated: built outside this file, it must be used


@pytest.mark.parametrize(("fmt", "kwargs", "exc", "message"), [
    (resolve_format("bfp8"), {}, ValueError,
     r"^fmt must have minifloat elements, not 'bfp8' \(FloatToBlock quantizes integer"),
    (resolve_format("mxfp8_e4m3").replace(block_size=128), {}, ValueError,
     r"^block_size must be a power of two between 2 and 64 for the RTL, not 128$"),
    (resolve_format("mxfp8_e4m3"), {"stages": 12}, ValueError,
     r"^stages must be between 0 and 11, not 12$"),
    (resolve_format("mxfp8_e4m3"), {"always_ready": 1}, TypeError,
     r"^always_ready must be a bool, not 1$"),
    (resolve_format("mxfp8_e4m3"), {"input_format": "fp16"}, ValueError,
     r"^input_format must be one of 'fp32', 'bf16', not 'fp16'$"),
])
def test_constructor_validation(fmt, kwargs, exc, message):
    with pytest.raises(exc, match=message):
        FloatToMinifloatBlock(fmt, **kwargs)


@pytest.mark.parametrize("name", ["mxfp8_e5m2", "bm8_e2m5"])
def test_converts_to_verilog(name):
    fmt = resolve_format(name).replace(scale_rule="rceil", rounding="stochastic")
    stages = FloatToMinifloatBlock.max_stages_for(fmt)
    text = verilog.convert(FloatToMinifloatBlock(fmt, stages=stages), name="align")
    assert "module align" in text

# amaranth: UnusedElaboratable=no
"""FloatToBlock RTL against the golden quantizer, bit for bit, in the Amaranth simulator."""

import itertools

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from hbfp_hw import golden
from hbfp_hw.formats import BFPFormat, FloatFormat, Rounding
from hbfp_hw.rtl_gen.float_to_block import FloatToBlock, lane_start_state
from hbfp_hw.rtl_gen.float_to_minifloat import block_quantizer
from hbfp_hw.rtl_gen.layout import block_layout, unpack

ROUNDINGS = ["nearest-even", "toward-zero", "stochastic"]


# -- the design as a plain function ----------------------------------------------------------

def lane_patterns(values, input_format):
    """Return the raw lane bit patterns of float32 ``values`` (BF16: the top 16 bits)."""
    bits = golden.f32_to_bits(np.asarray(values, dtype=np.float32)).astype(np.uint64)
    if FloatFormat(input_format) is FloatFormat.BF16:
        bits >>= np.uint64(16)
    return bits


def with_clock(dut):
    """Wrap ``dut`` so that a ``sync`` domain exists even when it is combinational."""
    m = Module()
    m.submodules.dut = dut
    toggle = Signal()
    m.d.sync += toggle.eq(~toggle)
    return m


def rtl_float_to_block(fmt, blocks_of_bits, *, input_format="fp32", stages=2, seed=None,
                       valid_prob=1.0, ready_prob=1.0, rng=None, trace=None,
                       always_ready=False, cls=None):
    """Quantize blocks of raw lane patterns with the simulated quantizer of ``fmt``
    (:func:`block_quantizer`: :class:`FloatToBlock`, or the minifloat one).

    Parameters
    ----------
    fmt : BFPFormat
    blocks_of_bits : array_like of int, shape ``(nblocks, block_size)``
        Lane bit patterns (32-bit for FP32, 16-bit for BF16).
    input_format, stages, always_ready
        Passed to the unit (``always_ready`` needs ``ready_prob == 1``).
    cls : type or None
        The unit's class (a mutant, say); default :func:`block_quantizer`'s choice.
    seed : int or None
        If given, the PRNG is reseeded with it before the first block; otherwise the reset
        seed (0) is in effect.
    valid_prob, ready_prob : float
        Probability that a new block is offered in a cycle, and that ``o_stream.ready`` is
        high in a cycle.
    rng : numpy.random.Generator
    trace : dict, optional
        Filled with ``cycles`` (clock cycles after reseed until the last output), the
        ``accept`` and ``output`` cycle numbers of every transfer, and ``ready_low``, the
        number of cycles in which ``i_stream.ready`` was low while a block was offered.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        Exponent codes ``(nblocks,)`` and mantissas ``(nblocks, block_size)`` (element codes
        for minifloat formats).
    """
    rng = np.random.default_rng(0) if rng is None else rng
    assert not always_ready or ready_prob == 1.0
    dut = (cls or block_quantizer)(fmt, input_format=input_format, stages=stages,
                                   always_ready=always_ready)
    width = FloatFormat(input_format).width
    blocks = np.asarray(blocks_of_bits, dtype=np.uint64).reshape(-1, fmt.block_size)
    payloads = [sum(int(v) << (i * width) for i, v in enumerate(block)) for block in blocks]
    outputs = []
    info = {"accept": [], "output": [], "ready_low": 0, "cycles": 0}
    limit = 20 + (len(payloads) + stages) * 8 / max(min(valid_prob, ready_prob), 0.05)

    async def testbench(ctx):
        i_payload = dut.i_stream.payload.as_value()
        o_payload = dut.o_stream.payload.as_value()
        if seed is not None:
            ctx.set(dut.seed, seed)
            ctx.set(dut.reseed, 1)
            ctx.set(dut.i_stream.valid, 1)
            assert not ctx.get(dut.i_stream.ready), "i_stream.ready must be low during reseed"
            await ctx.tick()
            ctx.set(dut.reseed, 0)
            ctx.set(dut.seed, 0)
        sent = 0
        offering = False
        stalled = None
        cycle = 0
        while len(outputs) < len(payloads):
            assert cycle < limit, "the pipeline stopped producing output"
            if not offering and sent < len(payloads) and rng.random() < valid_prob:
                offering = True
            ctx.set(dut.i_stream.valid, offering)
            ctx.set(i_payload, payloads[sent] if offering else 0)
            ready = bool(rng.random() < ready_prob)
            if not always_ready:
                ctx.set(dut.o_stream.ready, ready)
            if offering:
                if ctx.get(dut.i_stream.ready):
                    info["accept"].append(cycle)
                    sent += 1
                    offering = False
                else:
                    info["ready_low"] += 1
            if ctx.get(dut.o_stream.valid):
                value = ctx.get(o_payload)
                assert stalled is None or value == stalled, "payload changed while stalled"
                if ready:
                    outputs.append(value)
                    info["output"].append(cycle)
                    stalled = None
                else:
                    stalled = value
            else:
                assert stalled is None, "valid dropped without a transfer"
            await ctx.tick()
            cycle += 1
        info["cycles"] = cycle

    sim = Simulator(with_clock(dut))
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    if trace is not None:
        trace.update(info)

    layout = block_layout(fmt)
    decoded = [unpack(layout, bits) for bits in outputs]
    codes = np.array([d["exponent"] for d in decoded], dtype=np.int64)
    mantissas = np.array([d["mantissas"] for d in decoded], dtype=np.int64)
    return codes.reshape(-1), mantissas.reshape(-1, fmt.block_size)


def golden_float_to_block(fmt, values, *, input_format="fp32", seed=0):
    """Quantize float32 blocks ``values[nblocks, N]`` with the golden model."""
    q = golden.quantize(np.asarray(values, dtype=np.float32), fmt, axis=-1, seed=seed,
                        input_format=input_format)
    n = fmt.block_size
    return (q.exponent_codes.astype(np.int64).reshape(-1),
            q.mantissas.astype(np.int64).reshape(-1, n))


def check_against_golden(fmt, values, *, input_format="fp32", seed=None, stages=2,
                         valid_prob=1.0, ready_prob=1.0, rng=None):
    values = np.asarray(values, dtype=np.float32).reshape(-1, fmt.block_size)
    if FloatFormat(input_format) is FloatFormat.BF16:
        values = golden.to_bf16(values)
    codes, mant = rtl_float_to_block(
        fmt, lane_patterns(values, input_format), input_format=input_format, stages=stages,
        seed=seed, valid_prob=valid_prob, ready_prob=ready_prob, rng=rng)
    want_codes, want_mant = golden_float_to_block(
        fmt, values, input_format=input_format, seed=0 if seed is None else seed)
    bad = np.flatnonzero((codes != want_codes) | np.any(mant != want_mant, axis=-1))
    if bad.size:
        b = bad[0]
        raise AssertionError(
            f"{fmt.name} {input_format}: {bad.size} of {len(codes)} blocks differ; first is "
            f"block {b}: input bits {[hex(int(v)) for v in golden.f32_to_bits(values[b])]}\n"
            f"  rtl    E={codes[b]} m={mant[b].tolist()}\n"
            f"  golden E={want_codes[b]} m={want_mant[b].tolist()}")


# -- test data -------------------------------------------------------------------------------

SPECIAL_BITS = np.array([
    0x00000000, 0x80000000,              # +0, -0
    0x00000001, 0x80000001,              # smallest subnormal
    0x007FFFFF, 0x00400000,              # largest subnormal, a subnormal power of two
    0x00800000, 0x00800001, 0x80FFFFFF,  # smallest normals
    0x7F7FFFFF, 0xFF7FFFFF, 0x7F000000,  # max finite, 2**127
    0x3F800000, 0x3F7FFFFF, 0x3F800001,  # 1.0 and its neighbours
    0xBF800000, 0x40000000, 0x3FFFFFFF,  # -1.0, 2.0, just below 2.0
], dtype=np.uint32)
NONFINITE_BITS = np.array([0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00001, 0x7F800001],
                          dtype=np.uint32)


def random_blocks(fmt, nblocks, rng, *, nonfinite=0.02):
    """Return float32 blocks ``[nblocks, N]`` over a wide dynamic range with corner cases."""
    n = fmt.block_size
    out = np.empty((nblocks, n), dtype=np.uint32)
    for b in range(nblocks):
        mode = rng.integers(0, 6)
        sign = rng.integers(0, 2, n, dtype=np.uint32) << np.uint32(31)
        frac = rng.integers(0, 1 << 23, n, dtype=np.uint32)
        if mode == 0:                                   # anything finite
            field = rng.integers(0, 255, n, dtype=np.uint32)
        elif mode == 1:                                 # clustered, spread up to ~40 binades
            top = rng.integers(0, 255)
            spread = rng.integers(0, 40)
            field = np.clip(top - rng.integers(0, spread + 1, n), 0, 254).astype(np.uint32)
        elif mode == 2:                                 # subnormals and the smallest normals
            field = rng.integers(0, 3, n, dtype=np.uint32)
        elif mode == 3:                                 # short fractions: ties and exact values
            top = rng.integers(1, 255)
            field = np.clip(top - rng.integers(0, 3, n), 0, 254).astype(np.uint32)
            keep = rng.integers(0, 20)
            frac &= np.uint32((0x7FFFFF << (23 - keep)) & 0x7FFFFF)
        elif mode == 4:                                 # around the element grid of a block
            values = exact_grid_block(fmt, rng)
            out[b] = golden.f32_to_bits(values)
            continue
        else:                                           # near the exponent range limits
            base = 254 if rng.integers(0, 2) else 4
            field = np.clip(base - rng.integers(0, 14, n), 0, 254).astype(np.uint32)
        bits = sign | (field << np.uint32(23)) | frac
        zeros = rng.random(n) < rng.choice([0.0, 0.1, 0.5])
        bits[zeros] = sign[zeros]
        specials = rng.random(n) < 0.05
        bits[specials] = rng.choice(SPECIAL_BITS, specials.sum())
        out[b] = bits
    if nonfinite:
        hit = rng.random(nblocks) < nonfinite
        lanes = rng.integers(0, n, nblocks)
        out[hit, lanes[hit]] = rng.choice(NONFINITE_BITS, hit.sum())
    return golden.bits_to_f32(out)


def exact_grid_block(fmt, rng):
    """Return one block whose elements lie on, halfway between, or 1 ulp off the element grid."""
    n = fmt.block_size
    w = fmt.fraction_bits
    e = int(rng.integers(-140, 127))
    vmax = np.ldexp(1.0, e) * rng.choice([1.0, 1.5, 2.0 - 2.0 ** -23])
    k = rng.integers(0, 1 << (w + 1), n)
    half = rng.integers(0, 2, n)
    mag = np.ldexp((2 * k + half).astype(np.float64), e - w - 1)
    vals = np.minimum(mag, vmax).astype(np.float32)
    ulp = rng.integers(-1, 2, n).astype(np.int64)
    bits = golden.f32_to_bits(vals).astype(np.int64) + ulp * (vals != 0)
    vals = golden.bits_to_f32(np.clip(bits, 0, 0x7F7FFFFF).astype(np.uint32))
    vals = np.where(rng.integers(0, 2, n).astype(bool), -vals, vals)
    vals[rng.integers(0, n)] = np.float32(vmax)
    return vals.astype(np.float32)


def corner_blocks(fmt):
    """Return hand-picked float32 blocks ``[k, N]`` that exercise every special case."""
    n = fmt.block_size
    w = fmt.fraction_bits
    f32 = np.float32
    blocks = []

    def block(*lanes, fill=0.0):
        b = np.full(n, fill, dtype=np.float64)
        for i, v in enumerate(lanes[:n]):
            b[i] = v
        return b.astype(f32)

    def from_bits(*lanes, fill=0):
        b = np.full(n, fill, dtype=np.uint32)
        b[:len(lanes[:n])] = lanes[:n]
        return golden.bits_to_f32(b)

    blocks.append(block())                                        # all +0
    blocks.append(from_bits(fill=0x80000000))                     # all -0
    for v in (1.0, -1.0, 3.0, 2.0 ** -130, 2.0 ** 127 * 1.5, 2.0 ** -149):
        blocks.append(block(fill=v))                              # all equal
    for pos in {0, 1, n // 2, n - 1}:                             # single nonzero lane
        b = np.zeros(n, dtype=f32)
        b[pos] = f32(-5.75)
        blocks.append(b)
        b = np.zeros(n, dtype=f32)
        b[pos] = f32(2.0 ** -140)
        blocks.append(b)
    for special in NONFINITE_BITS:                                # NaN/Inf anywhere
        for pos in {0, n - 1}:
            b = golden.f32_to_bits(block(1.0, -2.5, fill=0.25))
            b[pos] = special
            blocks.append(golden.bits_to_f32(b))
    blocks.append(from_bits(0x7F7FFFFF, 0x00000001, 0x80000001, 0x007FFFFF))  # huge shifts
    blocks.append(from_bits(0xFF7FFFFF, 0x3F800000, 0x00800000))
    blocks.append(from_bits(0x00000001, 0x00000003, 0x807FFFFF))  # subnormal-only block
    # ties: E = 0 from lane 0, elements exactly halfway between grid points, both parities
    step = 2.0 ** -w
    blocks.append(block(1.0, 0.5 * step, 1.5 * step, 2.5 * step, -0.5 * step, -1.5 * step,
                        1.0 + 0.5 * step, 1.0 + 1.5 * step))
    blocks.append(block(-1.0, 3.5 * step, -2.5 * step, 2.0 ** w * step - 0.5 * step,
                        0.5 * step + 2.0 ** -40, 0.5 * step - 2.0 ** -40))
    # rounding up to 2**(w-1) saturates: values just below 2**(E+1)
    blocks.append(from_bits(0x3FFFFFFF, 0xBFFFFFFF, 0x3FFFF000, 0x3F800000))
    # powers of two and their neighbours, +-1 ulp
    blocks.append(from_bits(0x3F800000, 0x3F7FFFFF, 0x3F800001, 0x3F000000, 0x3EFFFFFF,
                            0xBF7FFFFF, 0x3E800001))
    blocks.append(from_bits(0x7F000000, 0x7EFFFFFF, 0x7F7FFFFF))
    blocks.append(from_bits(0x00800000, 0x007FFFFF, 0x00400000, 0x00000001))
    # beyond the upper clamp of narrow exponents
    blocks.append(block(2.0 ** 20, -(2.0 ** 3), 2.0 ** 1, 0.75))
    blocks.append(block(2.0 ** -20, -(2.0 ** -3), 2.0 ** -1))
    return np.stack(blocks).astype(f32)


# -- bit-exactness over a grid of configurations ---------------------------------------------

FAST_CONFIGS = [
    # (w, N, rounding, exponent_bits, input_format)
    (8, 16, "nearest-even", 8, "fp32"),
    (8, 16, "stochastic", 8, "fp32"),
    (8, 16, "toward-zero", 8, "bf16"),
    (2, 4, "nearest-even", 8, "bf16"),
    (2, 2, "stochastic", 3, "fp32"),
    (4, 2, "toward-zero", 8, "fp32"),
    (4, 64, "nearest-even", 5, "fp32"),
    (12, 4, "stochastic", 8, "bf16"),
    (12, 16, "nearest-even", 4, "bf16"),
    (16, 4, "nearest-even", 8, "fp32"),
    (16, 2, "stochastic", 8, "fp32"),
    (16, 16, "toward-zero", 6, "fp32"),
    (8, 64, "stochastic", 8, "bf16"),
    (2, 16, "toward-zero", 2, "fp32"),
]


def _config_id(cfg):
    w, n, rounding, ebits, inp = cfg
    return f"w{w}-N{n}-{rounding}-e{ebits}-{inp}"


def _run_config(cfg, nrandom, seed_index):
    w, n, rounding, ebits, inp = cfg
    fmt = BFPFormat(w, n, rounding, ebits)
    rng = np.random.default_rng([w, n, ebits, seed_index, ROUNDINGS.index(rounding)])
    values = np.concatenate([corner_blocks(fmt), random_blocks(fmt, nrandom, rng)])
    stages = int(rng.integers(0, FloatToBlock.max_stages_for(fmt) + 1))
    seed = int(rng.integers(0, 1 << 32)) if rounding == "stochastic" else None
    check_against_golden(fmt, values, input_format=inp, seed=seed, stages=stages,
                         valid_prob=0.8, ready_prob=0.7, rng=rng)


@pytest.mark.parametrize("cfg", FAST_CONFIGS, ids=_config_id)
def test_bit_exact(cfg):
    _run_config(cfg, nrandom=max(40, 3000 // cfg[1]), seed_index=0)


SLOW_CONFIGS = list(itertools.product([2, 4, 8, 12, 16], [2, 4, 16, 64], ROUNDINGS, [8, 3],
                                      ["fp32", "bf16"]))


@pytest.mark.slow
@pytest.mark.parametrize("cfg", SLOW_CONFIGS, ids=_config_id)
def test_bit_exact_grid(cfg):
    _run_config(cfg, nrandom=max(100, 20000 // cfg[1]), seed_index=1)


# -- stochastic rounding: seeding -------------------------------------------------------------

def test_reset_seed_is_zero():
    fmt = BFPFormat(6, 4, "stochastic")
    rng = np.random.default_rng(5)
    values = random_blocks(fmt, 60, rng, nonfinite=0)
    codes, mant = rtl_float_to_block(fmt, lane_patterns(values, "fp32"), stages=1, rng=rng,
                                     valid_prob=0.6, ready_prob=0.6)
    want_codes, want_mant = golden_float_to_block(fmt, values, seed=0)
    np.testing.assert_array_equal(codes, want_codes)
    np.testing.assert_array_equal(mant, want_mant)


@pytest.mark.parametrize("seed", [0, 1, 0x9E3779B9, (0x9E3779B9 * 3) & 0xFFFFFFFF, 0xFFFFFFFF])
def test_reseed(seed):
    """Reseeding restarts the sequence; seeds equal to a lane constant hit the zero-state rule."""
    fmt = BFPFormat(4, 4, "stochastic")
    values = np.full((24, 4), 0.3, dtype=np.float32)     # a = 0.6: rounds up or down
    values[:, 0] = 1.0
    codes, mant = rtl_float_to_block(fmt, lane_patterns(values, "fp32"), seed=seed, stages=3,
                                     valid_prob=0.5, ready_prob=0.5)
    want_codes, want_mant = golden_float_to_block(fmt, values, seed=seed)
    np.testing.assert_array_equal(codes, want_codes)
    np.testing.assert_array_equal(mant, want_mant)
    assert len(set(map(tuple, mant[:, 1:].tolist()))) > 1     # the bits do vary


def test_lane_start_state_matches_golden():
    for seed in (0, 1, 12345, 0x9E3779B9, (0x9E3779B9 * 7) & 0xFFFFFFFF):
        want = golden.lane_seeds(seed, 64)
        assert [lane_start_state(seed, lane) for lane in range(64)] == want.tolist()


def test_stochastic_rounding_is_unbiased():
    """Mean of many stochastic roundings of a = 0.25 is close to 0.25 grid steps."""
    fmt = BFPFormat(4, 16, "stochastic")
    values = np.full((64, 16), 0.0625, dtype=np.float32)   # a = 0.0625 * 2**2 = 0.25
    values[:, 0] = 1.0
    _, mant = rtl_float_to_block(fmt, lane_patterns(values, "fp32"), seed=99, stages=0)
    assert abs(mant[:, 1:].mean() - 0.25) < 0.05


def test_stochastic_rounding_threshold_is_exact():
    """Fractions ``f`` with ``f + r`` exactly at and one below ``2**16`` round up and down.

    The 16-bit random value ``r`` of every lane and block is known from the golden PRNG, so
    every lane's fraction is placed exactly on the carry boundary of the rounding adder.
    """
    fmt = BFPFormat(8, 8, "stochastic")
    seed, nblocks = 0x1234ABCD, 48
    rand = golden.random_bits(seed, nblocks, fmt.block_size).astype(np.int64)
    rng = np.random.default_rng(8)
    below = rng.integers(0, 2, rand.shape)                 # 1: one below the boundary
    frac = (1 << 16) - rand - below                        # f + r = 2**16 - below
    k = rng.integers(0, 1 << (fmt.mantissa_bits - 2), rand.shape)
    a = ((1 << (fmt.mantissa_bits - 2)) + k) * (1 << 16) + frac   # a * 2**16, a in [32, 64)
    values = np.ldexp(a.astype(np.float64), -16 - fmt.fraction_bits).astype(np.float32)
    values = np.where(rng.integers(0, 2, rand.shape).astype(bool), -values, values)
    codes, mant = rtl_float_to_block(fmt, lane_patterns(values, "fp32"), seed=seed, stages=2)
    want_codes, want_mant = golden_float_to_block(fmt, values, seed=seed)
    np.testing.assert_array_equal(codes, want_codes)
    np.testing.assert_array_equal(mant, want_mant)
    expected = np.minimum((a >> 16) + 1 - below, fmt.max_mantissa)
    np.testing.assert_array_equal(np.abs(mant), expected)


# -- stream behaviour: latency, throughput, backpressure -------------------------------------

@pytest.mark.parametrize("stages", range(11))     # every cut point of a block of 4
def test_latency_and_throughput(stages):
    fmt = BFPFormat(8, 4, "stochastic")
    dut = FloatToBlock(fmt, stages=stages)
    assert dut.latency == stages
    assert dut.throughput == 1
    values = random_blocks(fmt, 30, np.random.default_rng(stages))
    trace = {}
    codes, mant = rtl_float_to_block(fmt, lane_patterns(values, "fp32"), stages=stages,
                                     trace=trace)
    want_codes, want_mant = golden_float_to_block(fmt, values, seed=0)
    np.testing.assert_array_equal(codes, want_codes)
    np.testing.assert_array_equal(mant, want_mant)
    assert trace["accept"] == list(range(30))                   # one block per cycle
    assert trace["output"] == [c + stages for c in trace["accept"]]
    assert trace["ready_low"] == 0


@pytest.mark.parametrize(("fmt", "stages"), [
    (BFPFormat(8, 4, "stochastic"), 3), (BFPFormat(8, 16), 12), (BFPFormat(4, 8), 1),
])
def test_always_ready(fmt, stages):
    """A consumer that never stalls: no ready, no FIFO, no credits; the same blocks, one
    per cycle, ``stages`` cycles after they enter; stochastic rounding after a reseed too."""
    dut = FloatToBlock(fmt, stages=stages, always_ready=True)
    assert dut.o_stream.signature.always_ready
    ports = [dut.i_stream.valid, dut.i_stream.ready, dut.i_stream.payload.as_value(),
             dut.o_stream.valid, dut.o_stream.payload.as_value(), dut.seed, dut.reseed]
    text = verilog.convert(with_clock(dut), ports=ports, name="top")
    assert "fifo" not in text and "out_used" not in text and "out_credit" not in text
    rng = np.random.default_rng(stages)
    values = random_blocks(fmt, 40, rng)
    trace = {}
    seed = 77 if fmt.rounding is Rounding.STOCHASTIC else None
    codes, mant = rtl_float_to_block(fmt, lane_patterns(values, "fp32"), stages=stages,
                                     always_ready=True, seed=seed, valid_prob=0.7, rng=rng,
                                     trace=trace)
    want_codes, want_mant = golden_float_to_block(fmt, values, seed=seed or 0)
    np.testing.assert_array_equal(codes, want_codes)
    np.testing.assert_array_equal(mant, want_mant)
    assert trace["ready_low"] == 0
    assert trace["output"] == [c + stages for c in trace["accept"]]


def test_backpressure_heavy():
    fmt = BFPFormat(6, 8, "nearest-even")
    rng = np.random.default_rng(11)
    values = random_blocks(fmt, 150, rng)
    for stages, (vp, rp) in zip([1, 2, 4], [(1.0, 0.2), (0.3, 1.0), (0.9, 0.5)], strict=True):
        check_against_golden(fmt, values, stages=stages, valid_prob=vp, ready_prob=rp, rng=rng)


# -- construction ----------------------------------------------------------------------------

def test_properties_and_ports():
    fmt = BFPFormat(8, 16)
    dut = FloatToBlock(fmt, input_format="bf16", stages=3)
    assert dut.fmt is fmt
    assert dut.input_format is FloatFormat.BF16
    assert dut.stages == 3
    assert dut.latency == 3
    with pytest.raises(AttributeError):
        dut.stages = 1
    assert dut.i_stream.payload.shape().size == 16 * 16
    assert dut.o_stream.payload.shape() == block_layout(fmt)
    assert len(dut.seed) == 32 and len(dut.reseed) == 1


@pytest.mark.parametrize(("args", "kwargs", "exc", "message"), [
    (("bfp8",), {}, TypeError, r"^fmt must be a BFPFormat, not 'bfp8'$"),
    ((BFPFormat(8, 1),), {}, ValueError,
     r"^block_size must be a power of two between 2 and 64 for the RTL, not 1$"),
    ((BFPFormat(8, 128),), {}, ValueError,
     r"^block_size must be a power of two between 2 and 64 for the RTL, not 128$"),
    ((BFPFormat(8, 16),), {"stages": 13}, ValueError,
     r"^stages must be between 0 and 12, not 13$"),
    ((BFPFormat(8, 2),), {"stages": 10}, ValueError, r"^stages must be between 0 and 9, not 10$"),
    ((BFPFormat(8, 16),), {"stages": -1}, ValueError,
     r"^stages must be between 0 and 12, not -1$"),
    ((BFPFormat(8, 16),), {"stages": 1.0}, TypeError, r"^stages must be an integer, not 1\.0$"),
    ((BFPFormat(8, 16),), {"stages": True}, TypeError, r"^stages must be an integer, not True$"),
    ((BFPFormat(8, 16),), {"always_ready": 1}, TypeError, r"^always_ready must be a bool, not 1$"),
    ((BFPFormat(8, 16),), {"input_format": "fp16"}, ValueError,
     r"^input_format must be one of 'fp32', 'bf16', not 'fp16'$"),
    ((BFPFormat(8, 16),), {"input_format": 32}, TypeError,
     r"^input_format must be a FloatFormat or a string, not 32$"),
])
def test_constructor_validation(args, kwargs, exc, message):
    with pytest.raises(exc, match=message):
        FloatToBlock(*args, **kwargs)


@pytest.mark.parametrize(("fmt", "input_format", "stages"), [
    (BFPFormat(8, 4), "fp32", 2),
    (BFPFormat(4, 2, "stochastic", 5), "bf16", 4),
    (BFPFormat(3, 2, "toward-zero"), "fp32", 0),
    (BFPFormat(8, 64), "fp32", 13),
])
def test_converts_to_verilog(fmt, input_format, stages):
    dut = FloatToBlock(fmt, input_format=input_format, stages=stages)
    text = verilog.convert(dut, name="float_to_block")
    assert "module float_to_block" in text
    assert "o_stream__payload" in text

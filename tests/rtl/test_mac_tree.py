# amaranth: UnusedElaboratable=no
"""MacTree RTL against the golden integer dot product, bit for bit, in the Amaranth simulator."""

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from hbfp_hw import golden
from hbfp_hw.formats import BFPFormat
from hbfp_hw.rtl_gen.layout import block_pair_layout, pack, product_layout, unpack
from hbfp_hw.rtl_gen.mac_tree import MacTree


def with_clock(dut):
    """Wrap ``dut`` so that a ``sync`` domain exists even when it is combinational."""
    m = Module()
    m.submodules.dut = dut
    toggle = Signal()
    m.d.sync += toggle.eq(~toggle)
    return m


def rtl_mac_tree(fmt, codes_a, mant_a, codes_b, mant_b, *, stages=2, valid_prob=1.0,
                 ready_prob=1.0, rng=None, trace=None):
    """Compute block dot products with the simulated :class:`MacTree`.

    Parameters
    ----------
    fmt : BFPFormat
    codes_a, codes_b : array_like of int, shape ``(k,)``
        Biased exponent codes of the operand blocks.
    mant_a, mant_b : array_like of int, shape ``(k, block_size)``
        Their mantissas.
    stages
        Passed to :class:`MacTree`.
    valid_prob, ready_prob : float
        Probability that a new pair is offered in a cycle, and that ``o_stream.ready`` is high.
    rng : numpy.random.Generator
    trace : dict, optional
        Filled with the ``accept`` and ``output`` cycle numbers of every transfer.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray, numpy.ndarray)
        ``value`` (int64), ``exponent`` (int64) and ``nan`` (bool), each of shape ``(k,)``.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    dut = MacTree(fmt, stages=stages)
    in_layout = block_pair_layout(fmt)
    payloads = [
        pack(in_layout, {"a": {"exponent": int(ea), "mantissas": [int(v) for v in ma]},
                         "b": {"exponent": int(eb), "mantissas": [int(v) for v in mb]}})
        for ea, ma, eb, mb in zip(codes_a, mant_a, codes_b, mant_b, strict=True)]
    outputs = []
    info = {"accept": [], "output": []}
    limit = 20 + (len(payloads) + stages) * 8 / max(min(valid_prob, ready_prob), 0.05)

    async def testbench(ctx):
        i_payload = dut.i_stream.payload.as_value()
        o_payload = dut.o_stream.payload.as_value()
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
            ctx.set(dut.o_stream.ready, ready)
            if offering and ctx.get(dut.i_stream.ready):
                info["accept"].append(cycle)
                sent += 1
                offering = False
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
        # The pipeline must now be empty: no further output however long we wait.
        ctx.set(dut.i_stream.valid, 0)
        ctx.set(dut.o_stream.ready, 1)
        for _ in range(stages + 2):
            assert not ctx.get(dut.o_stream.valid), "unexpected extra output"
            await ctx.tick()

    sim = Simulator(with_clock(dut))
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    if trace is not None:
        trace.update(info)

    decoded = [unpack(product_layout(fmt), bits) for bits in outputs]
    value = np.array([d["value"] for d in decoded],
                     dtype=np.int64 if fmt.product_bits <= 63 else object)
    exponent = np.array([d["exponent"] for d in decoded], dtype=np.int64)
    nan = np.array([d["nan"] for d in decoded], dtype=bool)
    return value, exponent, nan


def golden_mac_tree(fmt, codes_a, mant_a, codes_b, mant_b):
    """Return the golden ``(S, Ep, nan)``, with ``S`` zeroed for NaN pairs like the RTL."""
    ea = np.asarray(codes_a, dtype=np.int64) - fmt.exponent_bias
    eb = np.asarray(codes_b, dtype=np.int64) - fmt.exponent_bias
    ep, nan = golden.product_exponent(ea, eb, fmt)
    s = golden.int_dot(mant_a, mant_b)
    return np.where(nan, 0, s), np.asarray(ep, dtype=np.int64), np.asarray(nan, dtype=bool)


def random_operands(fmt, k, rng, *, outside_contract=False):
    """Return ``(codes, mantissas)`` for ``k`` random blocks, rich in extremes and NaN codes.

    With ``outside_contract`` some blocks are all ``-2**(w-1)``, a code the contract excludes.
    """
    n = fmt.block_size
    m = fmt.max_mantissa
    kind = rng.integers(0, 4, k)
    mant = rng.integers(-m, m + 1, (k, n))
    extreme = rng.choice(np.array([-m, m]), (k, n))
    mant = np.where((kind == 1)[:, None], extreme, mant)                  # all +-M
    mant = np.where((kind == 2)[:, None] & (rng.random((k, n)) < 0.5), extreme, mant)
    mant = np.where((kind == 3)[:, None] & (rng.random((k, n)) < 0.7), 0, mant)
    if outside_contract:
        # -2**(w-1) never comes out of the quantizer, but the full-width tree is exact for it.
        mant = np.where((kind == 1)[:, None] & (rng.random((k, 1)) < 0.3), -m - 1, mant)
    codes = rng.integers(0, fmt.nan_code, k)
    codes = np.where(rng.random(k) < 0.1, rng.choice([0, fmt.nan_code - 1], k), codes)
    codes = np.where(rng.random(k) < 0.08, fmt.nan_code, codes)
    return codes, mant


def corner_operands(fmt):
    """Return corner-case operand pairs ``(codes_a, mant_a, codes_b, mant_b)``."""
    n = fmt.block_size
    m = fmt.max_mantissa
    big, lo, hi, nan = np.full(n, m), 0, fmt.nan_code - 1, fmt.nan_code
    cases = [
        (hi, big, hi, big),            # largest positive sum and exponent
        (hi, big, lo, -big),           # most negative sum
        (lo, -big, lo, -big),          # smallest exponent
        (lo, np.zeros(n, int), hi, big),
        (nan, big, hi, big),           # NaN on either side, and both
        (hi, big, nan, -big),
        (nan, np.zeros(n, int), nan, np.zeros(n, int)),
        (fmt.exponent_bias, np.arange(n) % (2 * m + 1) - m, fmt.exponent_bias, big),
        (lo, -big - 1, hi, -big - 1),  # outside the contract: the largest |S| of the width
    ]
    return tuple(np.array([c[i] for c in cases]) for i in range(4))


def check_against_golden(fmt, k, rng, *, stages, valid_prob=1.0, ready_prob=1.0):
    ca, ma = random_operands(fmt, k, rng, outside_contract=True)
    cb, mb = random_operands(fmt, k, rng, outside_contract=True)
    corner = corner_operands(fmt)
    ca, ma, cb, mb = (np.concatenate([c, x]) for c, x in zip(corner, (ca, ma, cb, mb), strict=True))
    got = rtl_mac_tree(fmt, ca, ma, cb, mb, stages=stages, valid_prob=valid_prob,
                       ready_prob=ready_prob, rng=rng)
    want = golden_mac_tree(fmt, ca, ma, cb, mb)
    for name, g, x in zip(("value", "exponent", "nan"), got, want, strict=True):
        bad = np.flatnonzero(g != x)
        assert not bad.size, (f"{fmt.name}: {name} differs in {bad.size} of {len(g)} pairs; "
                              f"first at {bad[0]}: rtl {g[bad[0]]}, golden {x[bad[0]]}")


# -- bit-exactness ---------------------------------------------------------------------------

CONFIGS = [(w, n, e) for w in (2, 4, 8, 12, 16) for n in (2, 4, 16, 64) for e in (8, 4)]


@pytest.mark.parametrize(("w", "n", "ebits"), CONFIGS,
                         ids=[f"w{w}-N{n}-e{e}" for w, n, e in CONFIGS])
def test_bit_exact(w, n, ebits):
    fmt = BFPFormat(w, n, exponent_bits=ebits)
    rng = np.random.default_rng([w, n, ebits])
    stages = int(rng.integers(0, MacTree.max_stages_for(fmt) + 1))
    check_against_golden(fmt, max(60, 1200 // n), rng, stages=stages, valid_prob=0.8,
                         ready_prob=0.7)


@pytest.mark.slow
@pytest.mark.parametrize("w", [2, 3, 4, 6, 8, 12, 16])
@pytest.mark.parametrize("n", [2, 4, 8, 16, 32, 64])
@pytest.mark.parametrize("ebits", [8, 5, 2])
def test_bit_exact_grid(w, n, ebits):
    fmt = BFPFormat(w, n, exponent_bits=ebits)
    rng = np.random.default_rng([w, n, ebits, 1])
    for stages in range(MacTree.max_stages_for(fmt) + 1):
        check_against_golden(fmt, max(100, 4000 // n), rng, stages=stages, valid_prob=0.7,
                             ready_prob=0.6)


def test_exhaustive_small():
    """Every pair of 2-element blocks with w = 3 (7 mantissa values per element)."""
    fmt = BFPFormat(3, 2, exponent_bits=2)
    vals = np.arange(-3, 4)
    grid = np.array(np.meshgrid(vals, vals, vals, vals)).reshape(4, -1).T
    k = len(grid)
    rng = np.random.default_rng(7)
    ca = rng.integers(0, 4, k)
    cb = rng.integers(0, 4, k)
    got = rtl_mac_tree(fmt, ca, grid[:, :2], cb, grid[:, 2:], stages=1, rng=rng)
    want = golden_mac_tree(fmt, ca, grid[:, :2], cb, grid[:, 2:])
    for g, x in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, x)


# -- stream behaviour: latency, throughput, backpressure -------------------------------------

@pytest.mark.parametrize("n", [2, 16, 64])
def test_latency_and_throughput(n):
    fmt = BFPFormat(8, n)
    rng = np.random.default_rng(n)
    for stages in range(MacTree.max_stages_for(fmt) + 1):
        dut = MacTree(fmt, stages=stages)
        assert dut.latency == stages
        assert dut.throughput == 1
        ca, ma = random_operands(fmt, 20, rng)
        cb, mb = random_operands(fmt, 20, rng)
        trace = {}
        got = rtl_mac_tree(fmt, ca, ma, cb, mb, stages=stages, trace=trace)
        want = golden_mac_tree(fmt, ca, ma, cb, mb)
        for g, x in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, x)
        assert trace["accept"] == list(range(20))                # one pair per cycle
        assert trace["output"] == [c + stages for c in trace["accept"]]


def test_backpressure_heavy():
    fmt = BFPFormat(6, 8)
    rng = np.random.default_rng(3)
    for stages, (vp, rp) in zip([1, 2, 4], [(1.0, 0.2), (0.3, 1.0), (0.9, 0.5)], strict=True):
        check_against_golden(fmt, 150, rng, stages=stages, valid_prob=vp, ready_prob=rp)


# -- construction ----------------------------------------------------------------------------

def test_properties_and_ports():
    fmt = BFPFormat(8, 16)
    dut = MacTree(fmt, stages=5)
    assert dut.fmt is fmt
    assert dut.stages == 5
    assert dut.latency == 5
    assert MacTree.max_stages_for(fmt) == 6
    with pytest.raises(AttributeError):
        dut.stages = 1
    assert dut.i_stream.payload.shape() == block_pair_layout(fmt)
    assert dut.o_stream.payload.shape() == product_layout(fmt)
    assert len(dut.o_stream.payload.value) == 2 * 8 + 4


@pytest.mark.parametrize(("args", "kwargs", "exc", "message"), [
    ((None,), {}, TypeError, r"^fmt must be a BFPFormat, not None$"),
    ((BFPFormat(8, 1),), {}, ValueError,
     r"^block_size must be a power of two between 2 and 64 for the RTL, not 1$"),
    ((BFPFormat(8, 256),), {}, ValueError,
     r"^block_size must be a power of two between 2 and 64 for the RTL, not 256$"),
    ((BFPFormat(8, 16),), {"stages": 7}, ValueError, r"^stages must be between 0 and 6, not 7$"),
    ((BFPFormat(8, 2),), {"stages": 4}, ValueError, r"^stages must be between 0 and 3, not 4$"),
    ((BFPFormat(8, 16),), {"stages": "2"}, TypeError, r"^stages must be an integer, not '2'$"),
])
def test_constructor_validation(args, kwargs, exc, message):
    with pytest.raises(exc, match=message):
        MacTree(*args, **kwargs)


@pytest.mark.parametrize(("fmt", "stages"), [
    (BFPFormat(8, 16), 2),
    (BFPFormat(3, 2, exponent_bits=3), 0),
])
def test_converts_to_verilog(fmt, stages):
    text = verilog.convert(MacTree(fmt, stages=stages), name="mac_tree")
    assert "module mac_tree" in text
    assert "o_stream__payload" in text

# amaranth: UnusedElaboratable=no
"""End-to-end GEMMs through GemmSystem's byte protocol, bit-exact against golden.gemm.

Random shapes (M, N or K = 1, K not a multiple of the block size, C larger than one tile so the
host tiles over M and N), both wire formats, special values, several formats and lane counts.
The Amaranth simulator is slow, so the fast tests use tiny buffers and 4-element blocks; the
``slow`` ones run bfp8 and MXINT8.
"""

import numpy as np
import pytest
from amaranth.hdl import Fragment

from hbfp_hw import golden
from hbfp_hw.formats import BFPFormat
from hbfp_hw.fpga import protocol
from hbfp_hw.fpga.config import SystemConfig
from hbfp_hw.fpga.protocol import Cmd, Status, Wire
from hbfp_hw.fpga.system.engine import BlockDotUnit, GemmEngine, GemmSystem

from .link import compute_args, device_gemm, read_args, read_c, run_link, tile_sizes

FMT = BFPFormat(8, 4)


#: The fast tests' device: tiny buffers (SMALL.replace(...) for variants).
SMALL = SystemConfig(fmt=FMT, lanes=2, a_blocks=16, b_blocks=16, c_words=16, max_payload=128,
                     timeout_cycles=1000)


def system(fmt=FMT, **kw):
    return GemmSystem(SMALL.replace(fmt=fmt, **kw))


def engine(**kw):
    """A GemmEngine with SMALL's parameters, ``kw`` over them (not validated by SystemConfig)."""
    names = ("lanes", "channels", "a_blocks", "b_blocks", "c_words", "mac_stages",
             "convert_stages", "adder_stages")
    return GemmEngine(SMALL.fmt, **{**{k: getattr(SMALL, k) for k in names}, **kw})


def random_matrix(rng, shape, kind="normal"):
    if kind == "normal":
        return rng.standard_normal(shape).astype(np.float32)
    if kind == "wide":       # magnitudes spread over many binades, some zeros
        x = rng.standard_normal(shape) * 2.0 ** rng.integers(-30, 30, shape)
        x[rng.random(shape) < 0.1] = 0
        return x.astype(np.float32)
    raise ValueError(kind)


def check(dut, cases, wire, *, input_format="fp32", seed=None, tile=None, chunk=None):
    """Run every ``(a, b)`` of ``cases`` in one simulation; compare with golden.gemm.

    ``chunk``: split K into chunks of this many k-blocks, accumulated on the device.
    """
    fmt = dut.fmt

    async def test(link):
        info = await link.info()
        return [await device_gemm(link, a, b, info, wire, seed=seed, tile=tile, chunk=chunk)
                for a, b in cases]

    results = run_link(dut, test)
    for (a, b), got in zip(cases, results):
        exp = golden.f32_to_bits(golden.gemm(a, b, fmt, seed=seed, input_format=input_format))
        mismatch = np.argwhere(got != exp)
        assert not len(mismatch), (
            f"shape {a.shape}x{b.shape}: {len(mismatch)} mismatches, first at "
            f"{tuple(mismatch[0])}: {got[tuple(mismatch[0])]:#010x} != "
            f"{exp[tuple(mismatch[0])]:#010x}")


SHAPES = [(1, 1, 1), (1, 7, 2), (3, 1, 5), (2, 9, 1), (4, 4, 4), (5, 13, 7)]


@pytest.mark.parametrize("wire", [Wire.FLOAT, Wire.BFP])
def test_random_shapes(wire):
    rng = np.random.default_rng(int(wire))
    cases = [(random_matrix(rng, (m, k)), random_matrix(rng, (k, n))) for m, k, n in SHAPES]
    dut = system()
    assert tile_sizes(dut.info, 13) == (4, 4)           # (5, 13, 7) takes 2 x 2 tiles
    check(dut, cases, wire)


def test_special_values():
    rng = np.random.default_rng(7)
    m, k, n = 4, 10, 3
    a = random_matrix(rng, (m, k), "wide")
    b = random_matrix(rng, (k, n), "wide")
    a[0, 1] = np.nan                     # NaN row of C
    b[5, 2] = np.inf                     # NaN column of C (Inf makes a NaN block)
    a[1, :] = 0                          # zero row: C = +0.0
    a[1, 0] = -0.0
    a[2, :4] = [3e38, 3e38, 3e38, 3e38]  # block products overflow to Inf
    b[:4, 0] = [3e38, 3e38, -3e38, 3e38]
    a[3, :] = np.float32(1e-41)          # subnormal inputs, tiny products (underflow)
    a[3, 8] = -np.float32(1.4e-45)
    b[:, 1] = np.float32(2e-39)
    cases = [(a, b), (b.T.copy(), a.T.copy())]
    for wire in (Wire.FLOAT, Wire.BFP):
        check(system(), cases, wire)


def test_accumulation_overflow_and_cancellation():
    # Partial sums that overflow to Inf, then Inf + -Inf = NaN; exact cancellation to +0.
    a = np.array([[2e38, 2e38, 2e38, 2e38, 1.0, 1.0, 1.0, 1.0, -2e38, -2e38, -2e38, -2e38]],
                 np.float32)
    b = np.ones((12, 2), np.float32) * np.float32(1.5)
    b[:, 1] = [1, 1, 1, 1, -1, -1, -1, -1, 1, 1, 1, 1]
    a2 = np.array([[1.0, 2.0, 3.0, 4.0, -1.0, -2.0, -3.0, -4.0]], np.float32)
    b2 = np.ones((8, 1), np.float32)
    check(system(), [(a, b), (a2, b2)], Wire.BFP)


@pytest.mark.parametrize(("wire", "chunk"), [(Wire.BFP, 1), (Wire.FLOAT, 2)])
def test_k_in_chunks_accumulated_on_the_device(wire, chunk):
    # K split into chunks of `chunk` k-blocks: the first COMPUTE of a tile starts from +0.0,
    # the others ACCUMULATE into its C. Shapes with K = 1, K not a multiple of the block
    # size, several tiles, and K beyond what one COMPUTE could hold (16 blocks here).
    rng = np.random.default_rng(20 + chunk)
    shapes = [(1, 1, 1), (2, 9, 3), (5, 13, 7), (2, 70, 3)]
    cases = [(random_matrix(rng, (m, k), "wide"), random_matrix(rng, (k, n), "wide"))
             for m, k, n in shapes]
    dut = system()
    assert not dut.info.fits(2, 3, 70)
    check(dut, cases, wire, chunk=chunk)


def test_accumulate_special_values_across_chunks():
    """NaN and Inf in later chunks, a running sum that overflows to Inf, Inf + -Inf, exact
    cancellation to +0.0 and rounding ties, each across a chunk boundary."""
    k = 16                                       # 4 blocks of 4: one chunk per block
    a = np.zeros((7, k), np.float32)
    b = np.ones((k, 2), np.float32)
    a[0, 13] = np.nan                            # NaN in the last chunk only
    a[1, 5] = np.inf                             # Inf block in chunk 1: NaN
    a[2, :8] = 2.0 ** 125                        # chunk 0 and 1 each 2^127: the sum overflows
    a[3, :4], a[3, 4:8] = 2.0 ** 126, -2.0 ** 126    # +2^128 -> Inf, then... see b
    b[4:8, 1] = -1.0                             # column 1: row 3 gets Inf + Inf, col 0: Inf-Inf
    a[4, :4], a[4, 4:8] = 3.0, -3.0              # column 0: 18 + (-18) = +0.0 (not -0.0)
    a[5, 0], a[5, 8] = 2.0 ** 24, 1.0            # column 1: 2^24 + 1, a tie, to even (2^24)
    a[5, 12] = 3.0                               # then 2^24 + 3: a tie, to 2^24 + 4
    a[6, :] = -np.float32(1e-40)                 # subnormal partial sums
    b[:, 0] *= np.float32(1.5)
    # The data does what the comments say (golden.gemm is the reference below, too).
    ref = golden.gemm(a, b, FMT)
    assert np.isnan(ref[:2]).all() and np.isnan(ref[3, 0])
    assert ref[2, 0] == np.inf and ref[3, 1] == np.inf
    assert golden.f32_to_bits(ref[4, 0]) == 0 and ref[5, 1] == 2.0 ** 24 + 4
    assert 0 > ref[6, 0] > -np.finfo(np.float32).tiny
    assert golden.gemm(a[:, :4], b[:4], FMT)[2, 0] < np.inf      # finite after chunk 0
    check(system(), [(a, b)], Wire.BFP, chunk=1)
    check(system(), [(a, b)], Wire.FLOAT, chunk=3)   # chunks of 3 blocks, then 1


def test_accumulate_needs_the_last_result():
    """ACCUMULATE continues the last COMPUTE's result only: same M, N and C place."""
    dut = system()
    rng = np.random.default_rng(30)
    a, b = random_matrix(rng, (2, 8)), random_matrix(rng, (8, 3))
    acc = protocol.Flag.ACCUMULATE

    async def test(link):
        info = await link.info()
        reply = await link.request(Cmd.COMPUTE, compute_args(2, 3, 4, acc))
        assert reply.status is Status.NO_RESULT                 # nothing to continue
        c = await device_gemm(link, a, b, info, Wire.BFP, tile=(2, 3), chunk=1)
        for args in [(1, 3, 4), (2, 2, 4), (2, 3, 4, acc, 0, 0, 1)]:
            reply = await link.request(Cmd.COMPUTE, compute_args(*args[:3], acc, *args[4:]))
            assert reply.status is Status.MISMATCH, args
        st = await link.status()
        assert st["last_error"] == Status.MISMATCH and (st["c_rows"], st["c_cols"]) == (2, 3)
        assert (await read_c(link, 2, 3, info) == c).all()     # C is untouched
        return c

    c = run_link(dut, test)
    assert (c == golden.f32_to_bits(golden.gemm(a, b, FMT))).all()


def test_bases_regions_and_readback():
    """Two results at different places of C, from operands at different places of A and B;
    READBACK returns a result with the COMPUTE reply; READ_C reads either region."""
    dut = system(lanes=2, a_blocks=16, b_blocks=32, c_words=32)
    rng = np.random.default_rng(31)
    a1, b1 = random_matrix(rng, (2, 7)), random_matrix(rng, (7, 3))       # KB 2, G 2
    a2, b2 = random_matrix(rng, (3, 4)), random_matrix(rng, (4, 4))       # KB 1, G 2
    bb = protocol.block_bytes(FMT, Wire.BFP)

    async def test(link):
        await link.info()
        for x, y, a_at, b_at in [(a1, b1, 0, 0), (a2, b2, 9, 5)]:
            na, raw_a = protocol.a_blocks_payload(x, FMT, Wire.BFP)
            nb, raw_b = protocol.b_blocks_payload(y, FMT, Wire.BFP, 2)
            for cmd, start, n, raw in [(Cmd.WRITE_A, a_at, na, raw_a),
                                       (Cmd.WRITE_B, 2 * b_at, nb, raw_b)]:
                args = protocol.to_bytes(protocol.WRITE_ARGS_LAYOUT, {
                    "wire": 1, "flags": 0, "count": n, "start": start})
                assert (await link.request(cmd, args + raw)).status is Status.OK
        reply = await link.request(Cmd.COMPUTE, compute_args(2, 3, 7, 0, 0, 0, 10))
        assert reply.status is Status.OK and len(reply.body) == 4
        reply = await link.request(Cmd.COMPUTE, compute_args(
            3, 4, 4, protocol.Flag.READBACK, 9, 5, 3))
        assert reply.status is Status.OK and len(reply.body) == 4 + 4 * 12
        second = protocol.c_from_payload(reply.body[4:])
        first = await link.request(Cmd.READ_C, read_args(0, 0, 6, 2, 3, 10))
        again = await link.request(Cmd.READ_C, read_args(1, 1, 7, 3, 4, 3))
        assert bb == 5
        return (protocol.c_from_payload(first.body), second,
                protocol.c_from_payload(again.body))

    first, second, again = run_link(dut, test)
    exp1 = golden.f32_to_bits(golden.gemm(a1, b1, FMT)).reshape(-1)
    exp2 = golden.f32_to_bits(golden.gemm(a2, b2, FMT)).reshape(-1)
    assert (first == exp1).all() and (second == exp2).all() and (again == exp2[5:]).all()


def test_stochastic_rounding_with_bfp_wire():
    fmt = BFPFormat(6, 4, "stochastic")
    rng = np.random.default_rng(8)
    cases = [(random_matrix(rng, (3, 9)), random_matrix(rng, (9, 5)))]
    check(system(fmt), cases, Wire.BFP, seed=12345)


def test_bf16_input_format():
    rng = np.random.default_rng(9)
    a = golden.to_bf16(random_matrix(rng, (3, 6)))
    b = golden.to_bf16(random_matrix(rng, (6, 4)))
    dut = system(input_format="bf16")
    assert dut.info.max_blocks_per_write(Wire.FLOAT) == (128 - 8) // 8
    check(dut, [(a, b)], Wire.FLOAT, input_format="bf16")


@pytest.mark.parametrize(("fmt", "lanes", "wire"), [
    (BFPFormat(12, 2, "toward-zero"), 1, Wire.BFP),      # 2-byte mantissas on the wire
    (BFPFormat(4, 8, exponent_bits=5), 4, Wire.FLOAT),   # narrow exponent: upper clamp
])
def test_formats_and_lanes(fmt, lanes, wire):
    rng = np.random.default_rng(10)
    cases = [(random_matrix(rng, (3, 11), "wide"), random_matrix(rng, (11, 6), "wide"))]
    check(system(fmt, lanes=lanes, b_blocks=32, c_words=32, max_payload=256), cases, wire)


def test_compute_is_one_block_pair_per_cycle_per_unit():
    # 8 column groups (3 passes of <= 3 channels), KB = 8: the issue takes about
    # m * (groups * KB) cycles whatever the lanes, plus the pipeline latency.
    fmt = FMT
    dut = system(lanes=2, a_blocks=16, b_blocks=128, c_words=32, max_payload=300)
    m, k, n = 2, 32, 16
    rng = np.random.default_rng(11)
    a, b = random_matrix(rng, (m, k)), random_matrix(rng, (k, n))
    latency = dut.latency

    async def test(link):
        info = await link.info()
        c = await device_gemm(link, a, b, info, Wire.BFP, tile=(m, n))
        reply = await link.request(Cmd.COMPUTE, compute_args(m, n, k))
        assert reply.status is Status.OK
        return c, protocol.from_bytes(protocol.COMPUTE_REPLY_LAYOUT, reply.body)["cycles"]

    c, cycles = run_link(dut, test)
    assert (c == golden.f32_to_bits(golden.gemm(a, b, fmt))).all()
    # 8 groups = passes of 3, 3, 2 channels; the last pass stalls on the 3-stage adder.
    issue = m * (3 + 3 + 3) * 8
    assert issue <= cycles <= issue + latency + 10, cycles


def test_reads_in_chunks_with_backpressure_and_gaps():
    dut = system()
    rng = np.random.default_rng(12)
    a, b = random_matrix(rng, (4, 5)), random_matrix(rng, (5, 4))
    expected = golden.f32_to_bits(golden.gemm(a, b, FMT)).reshape(-1)

    async def test(link):
        info = await link.info()
        await device_gemm(link, a, b, info, Wire.FLOAT, tile=(4, 4))
        out = []
        for row, col, count in [(0, 0, 1), (0, 3, 2), (1, 1, 7), (3, 3, 1), (0, 0, 16)]:
            reply = await link.request(Cmd.READ_C, read_args(row, col, count, 4, 4))
            assert reply.status is Status.OK
            out.append((row * 4 + col, protocol.c_from_payload(reply.body)))
        out.append((0, await read_c(link, 4, 4, info, per=3)))
        return out

    # The host accepts reply bytes at random and leaves gaps between request bytes.
    for start, words in run_link(dut, test, ready_prob=0.4, gap_prob=0.3, seed=5):
        words = np.asarray(words).reshape(-1)
        assert (words == expected[start:start + len(words)]).all()


def test_engine_validation():
    with pytest.raises(ValueError, match=r"^c_words must be a multiple of lanes \(4\), not 18$"):
        engine(lanes=4, c_words=18)
    with pytest.raises(ValueError, match=r"^channels must be between 1 and 256, not 0$"):
        engine(channels=0)
    unit = BlockDotUnit(FMT, channels=3)
    assert unit.channels == 3 and unit.min_channels == 3
    # its subunits are built in BlockDotUnit.__init__ (rtl_gen/block_dot.py); elaborating uses
    # them, so none is left behind as an UnusedElaboratable for gc to raise in a later test
    Fragment.get(unit, None)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", [BFPFormat(8, 16), BFPFormat(8, 32)], ids=["bfp8", "mxint8"])
def test_presets_random_shapes_slow(fmt):
    rng = np.random.default_rng(13)
    shapes = [(1, 1, 1), (3, 40, 5), (9, 17, 11), (2, 100, 3)]
    cases = [(random_matrix(rng, (m, k), "wide"), random_matrix(rng, (k, n))) for m, k, n in
             shapes]
    dut = GemmSystem(SystemConfig(fmt=fmt, lanes=4, a_blocks=64, b_blocks=64, c_words=64,
                                  max_payload=1100, timeout_cycles=10_000))
    for wire in (Wire.FLOAT, Wire.BFP):
        check(dut, cases, wire)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_random_shapes_many_slow(seed):
    rng = np.random.default_rng(100 + seed)
    lanes = [1, 2, 4, 8][seed]
    fmt = [FMT, BFPFormat(8, 2), BFPFormat(5, 8, "toward-zero"), BFPFormat(8, 4)][seed]
    cases = []
    for _ in range(6):
        m, k, n = (int(x) for x in rng.integers(1, 14, 3))
        cases.append((random_matrix(rng, (m, k), "wide"), random_matrix(rng, (k, n), "wide")))
    dut = system(fmt, lanes=lanes, a_blocks=32, b_blocks=64, c_words=64, max_payload=256)
    check(dut, cases, Wire(seed % 2))

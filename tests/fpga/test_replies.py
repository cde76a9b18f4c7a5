# amaranth: UnusedElaboratable=no
"""ReplyFormatter and TransmitBuffer on their own, in the simulator.

The fixed part of every reply kind must be the bytes the driver's encoders give
(``protocol.info_to_bytes``, ``to_bytes`` with the STATUS and COMPUTE layouts) and decode
(``Info.from_bytes``, ``from_bytes``), a byte at a time with waits between the bytes, on the
latched path and on the iCE40's multiplexer path. The transmit buffer must pass every byte in
order under random back-pressure and hold exactly ``depth`` bytes.
"""

import random
from types import SimpleNamespace

import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator

from hbfp_hw.formats import BFPFormat
from hbfp_hw.fpga.config import SystemConfig
from hbfp_hw.fpga.protocol import (
    COMPUTE_REPLY_LAYOUT,
    STATUS_LAYOUT,
    Info,
    Status,
    from_bytes,
    info_to_bytes,
    to_bytes,
)
from hbfp_hw.fpga.system.replies import ReplyFormatter, ReplyKind, TransmitBuffer

INFO = SystemConfig(fmt=BFPFormat(8, 4), lanes=2, a_blocks=16, b_blocks=16, c_words=16,
                    max_payload=128, build_hash=0x1234ABCD, tx_buffer=64).info()
ICE40 = SimpleNamespace(family="iCE40")

STATE = dict(next_seq=0xA7, last_error=7, c_valid=1, frames=0x1234, rx_errors=0xBEEF,
             c_rows=37, c_cols=5, cycles=0xDEADBEEF)


def rtl_replies(replies, *, platform=None, seed=0, ready_prob=1.0, change_after_start=False):
    """Send each reply ``(status, kind, state)``; return its fixed part's bytes and ``length``.

    With ``change_after_start`` the inputs change to other values right after ``start``
    (the fixed part is latched then)."""
    dut = ReplyFormatter(INFO, cap_bits=8)
    rng = random.Random(seed)
    out = []

    def apply(ctx, status, kind, state):
        ctx.set(dut.status, status)
        ctx.set(dut.kind, kind)
        for name, value in state.items():
            ctx.set(getattr(dut, name), value)

    async def bench(ctx):
        for status, kind, state in replies:
            apply(ctx, status, kind, state)
            length = ctx.get(dut.length)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            if change_after_start:
                apply(ctx, Status.OK if status else Status.CAPACITY, (kind + 1) % 4,
                      {name: 0 for name in state})
            got = []
            while True:
                while rng.random() >= ready_prob:
                    await ctx.tick()
                got.append(ctx.get(dut.byte))
                last = ctx.get(dut.last)
                ctx.set(dut.next, 1)
                await ctx.tick()
                ctx.set(dut.next, 0)
                if last:
                    break
                assert len(got) <= 64, "no last byte"
            out.append((bytes(got), length))

    sim = Simulator(Fragment.get(dut, platform))
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return out


def expected(status, kind, state):
    """The fixed part of a reply by docs/protocol.md 3, from the driver's encoders."""
    if status == Status.OUT_OF_ORDER:
        return bytes([status, state["next_seq"]])
    if status != Status.OK:
        return bytes([status])
    if kind == ReplyKind.INFO:
        return b"\0" + info_to_bytes(INFO)
    if kind == ReplyKind.STATUS:
        valid = state["c_valid"]
        return b"\0" + to_bytes(STATUS_LAYOUT, dict(
            last_error=state["last_error"], c_valid=valid, frames=state["frames"],
            rx_errors=state["rx_errors"], c_rows=state["c_rows"] if valid else 0,
            c_cols=state["c_cols"] if valid else 0, next_seq=state["next_seq"]))
    if kind == ReplyKind.COMPUTE:
        return b"\0" + to_bytes(COMPUTE_REPLY_LAYOUT, dict(cycles=state["cycles"]))
    return b"\0"


CASES = [
    (Status.OK, ReplyKind.INFO, STATE),
    (Status.OK, ReplyKind.STATUS, STATE),
    (Status.OK, ReplyKind.STATUS, {**STATE, "c_valid": 0}),    # no result: shape reads 0
    (Status.OK, ReplyKind.COMPUTE, STATE),
    (Status.OK, ReplyKind.STATUS_ONLY, STATE),
    (Status.OUT_OF_ORDER, ReplyKind.STATUS_ONLY, STATE),
    (Status.CAPACITY, ReplyKind.COMPUTE, STATE),               # an error: the status only
    (Status.BAD_CRC, ReplyKind.INFO, STATE),
    (Status.MISMATCH, ReplyKind.STATUS, STATE),
]


@pytest.mark.parametrize("platform", [None, ICE40], ids=["latched", "ice40"])
def test_every_reply_kind_with_waits(platform):
    got = rtl_replies(CASES, platform=platform, seed=1, ready_prob=0.5)
    for case, (raw, length) in zip(CASES, got):
        assert raw == expected(*case), case
        assert length == len(raw), case


def test_replies_decode_with_the_driver():
    (info, _), (status, _), (compute, _) = rtl_replies(CASES[:2] + CASES[3:4])
    assert info[0] == 0 and Info.from_bytes(info[1:]) == INFO
    fields = from_bytes(STATUS_LAYOUT, status[1:])
    assert fields == dict(last_error=7, c_valid=1, frames=0x1234, rx_errors=0xBEEF, c_rows=37,
                          c_cols=5, next_seq=0xA7)
    assert from_bytes(COMPUTE_REPLY_LAYOUT, compute[1:]) == dict(cycles=0xDEADBEEF)


def test_fixed_part_is_latched_on_start():
    """The executor may change the status and device state once the header went out."""
    got = rtl_replies(CASES, change_after_start=True, seed=2, ready_prob=0.7)
    assert [raw for raw, _ in got] == [expected(*case) for case in CASES]


# -- TransmitBuffer -----------------------------------------------------------------------------

def rtl_fifo(depth, data, *, seed=0, valid_prob=1.0, ready_prob=1.0):
    dut = TransmitBuffer(depth)
    rng = random.Random(seed)
    out = []

    async def writer(ctx):
        for byte in data:
            while rng.random() >= valid_prob:
                await ctx.tick()
            ctx.set(dut.i_stream.valid, 1)
            ctx.set(dut.i_stream.payload, byte)
            await ctx.tick().until(dut.i_stream.ready)
            ctx.set(dut.i_stream.valid, 0)

    async def reader(ctx):
        rng_r = random.Random(seed + 1)
        cycles = 0
        while len(out) < len(data):
            ready = rng_r.random() < ready_prob
            ctx.set(dut.o_stream.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(dut.o_stream.valid,
                                                           dut.o_stream.payload)
            if ready and valid:
                out.append(payload)
            cycles += 1
            assert cycles < 100 * (len(data) + 10), "stalled"
        ctx.set(dut.o_stream.ready, 1)
        for _ in range(depth + 4):
            _, _, valid = await ctx.tick().sample(dut.o_stream.valid)
            assert not valid, "a byte more than was written"

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(writer)
    sim.add_testbench(reader)
    sim.run()
    return out


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5, 6, 16])
def test_transmit_buffer_passes_every_byte_in_order(depth):
    data = [random.Random(depth).randrange(256) for _ in range(60)]
    for seed, (vp, rp) in enumerate([(1.0, 1.0), (0.5, 0.3), (0.9, 0.6)]):
        assert rtl_fifo(depth, data, seed=seed, valid_prob=vp, ready_prob=rp) == data


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5, 7, 12])
def test_transmit_buffer_holds_exactly_depth_bytes(depth):
    dut = TransmitBuffer(depth)
    taken = []

    async def bench(ctx):
        ctx.set(dut.o_stream.ready, 0)
        ctx.set(dut.i_stream.valid, 1)
        # The output comes from a register: a byte offered now is not out in this cycle.
        ctx.set(dut.i_stream.payload, 0x80)
        assert not ctx.get(dut.o_stream.valid)
        for i in range(depth + 6):
            ctx.set(dut.i_stream.payload, 0x80 + i)
            if ctx.get(dut.i_stream.ready):
                taken.append(0x80 + i)
            await ctx.tick()
        ctx.set(dut.i_stream.valid, 0)
        for _ in range(4):                      # still full: nothing more goes in
            assert not ctx.get(dut.i_stream.ready)
            await ctx.tick()
        ctx.set(dut.o_stream.ready, 1)
        out = []
        for _ in range(depth + 4):
            if ctx.get(dut.o_stream.valid):
                out.append(ctx.get(dut.o_stream.payload))
            await ctx.tick()
        assert out == taken

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert len(taken) == depth
    assert dut.depth == depth


@pytest.mark.parametrize(("depth", "error", "match"), [
    (0, ValueError, r"^Depth must be at least 1, not 0$"),
    (-3, ValueError, r"^Depth must be at least 1, not -3$"),
    (True, TypeError, r"^Depth must be an integer, not True$"),
    (2.0, TypeError, r"^Depth must be an integer, not 2\.0$"),
    ("4", TypeError, r"^Depth must be an integer, not '4'$"),
])
def test_transmit_buffer_validates_depth(depth, error, match):
    with pytest.raises(error, match=match):
        TransmitBuffer(depth)

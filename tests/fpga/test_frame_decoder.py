"""FrameDecoder on its own, in the simulator: the event's fields for good, short, truncated and
bad frames (docs/protocol.md 2), bytes offered back to back or with gaps.

The GemmSystem tests (test_decoder) run the decoder inside the device; here each event is
read whole, so a field left over from an earlier frame (the arguments of a longer one, or
the seq of a frame that timed out before its seq byte) shows.
"""

import random

import pytest
from amaranth.sim import Simulator

from hbfp_hw.fpga.protocol import ARGS_LATCH_BYTES, SYNC, Status, encode_frame
from hbfp_hw.fpga.system.decoder import FrameDecoder

TIMEOUT = 40


def _run(chunks, *, gap_prob, seed):
    """Offer ``chunks`` (bytes, or an int: that many idle cycles) and return the events as
    ``(status, cmd, seq, length, args)``, taking each one a few cycles after it appears."""
    dut = FrameDecoder(max_payload=64, timeout_cycles=TIMEOUT)
    rng = random.Random(seed)
    events = []
    data = []
    for chunk in chunks:
        data.extend(chunk if isinstance(chunk, bytes) else [None] * chunk)

    async def bench(ctx):
        i = 0
        idle = 0
        while i < len(data) or idle < 3 * TIMEOUT:
            byte = data[i] if i < len(data) else None
            offer = byte is not None and rng.random() >= gap_prob
            ctx.set(dut.i_stream.valid, offer)
            ctx.set(dut.i_stream.payload, byte or 0)
            ctx.set(dut.o_event.ready, 0)
            await ctx.delay(1e-9)
            if ctx.get(dut.o_event.valid):
                ev = dut.o_event.payload
                events.append((ctx.get(ev.status), ctx.get(ev.cmd), ctx.get(ev.seq),
                               ctx.get(ev.length), ctx.get(ev.args)))
                ctx.set(dut.o_event.ready, 1)
            taken = offer and ctx.get(dut.i_stream.ready)
            await ctx.tick()
            if i < len(data) and (byte is None or taken):
                i += 1
                idle = 0
            else:
                idle += 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return events


def _args(payload):
    return int.from_bytes(payload[:ARGS_LATCH_BYTES], "little")


@pytest.mark.parametrize(("gap_prob", "seed"), [(0.0, 1), (0.5, 2)])
def test_events_carry_only_their_own_frame(gap_prob, seed):
    long = bytes(range(0xEC, 0xEC + ARGS_LATCH_BYTES))            # every argument byte set
    short = b"\x11\x22\x33"
    frames = [
        encode_frame(0x03, 0x41, long),
        encode_frame(0x04, 0x42, short),         # the long frame's args must not show
        bytes(SYNC[:1]) + encode_frame(0x05, 0x43),   # a lone first sync byte, then a frame
        encode_frame(0x06, 0x44, long),
        bytes(SYNC) + b"\x07",                   # stops after its cmd byte: TIMEOUT, seq 0
        TIMEOUT + 5,
        encode_frame(0x08, 0x45, long),
        bytes(SYNC) + b"\x09\x46",               # stops after its seq: TIMEOUT with seq 0x46
        TIMEOUT + 5,
        encode_frame(0x0A, 0x47, short)[:-1] + b"\x00",   # bad CRC
    ]
    got = _run(frames, gap_prob=gap_prob, seed=seed)
    assert got[:4] == [
        (Status.OK, 0x03, 0x41, len(long), _args(long)),
        (Status.OK, 0x04, 0x42, len(short), _args(short)),
        (Status.OK, 0x05, 0x43, 0, 0),
        (Status.OK, 0x06, 0x44, len(long), _args(long)),
    ]
    assert got[4][:3] == (Status.TIMEOUT, 0x07, 0) and got[4][4] == 0
    assert got[5] == (Status.OK, 0x08, 0x45, len(long), _args(long))
    assert got[6][:3] == (Status.TIMEOUT, 0x09, 0x46) and got[6][4] == 0
    assert got[7][:3] == (Status.BAD_CRC, 0x0A, 0x47) and got[7][4] == _args(short)
    assert len(got) == 8

# amaranth: UnusedElaboratable=no
"""UART PHY in the Amaranth simulator: framing, back-to-back bytes, errors, baud limits."""

import random

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from hbfp_hw.fpga.system.uart import UARTReceiver, UARTTransmitter, baud_divisor

CLOCK_HZ = 12_000_000
BAUD = 3_000_000          # 4 cycles per bit, the iCEBreaker setting


def frame_bits(byte, stop=1):
    """The 10 line levels of an 8N1 frame, LSB first."""
    return [0] + [(byte >> i) & 1 for i in range(8)] + [stop]


def line_levels(frames, bit_cycles, *, idle_before=5, gap_bits=0, idle_after=40):
    """Per-cycle line level for ``frames`` (lists of bits), with ``bit_cycles`` (may be
    fractional, to model a baud-rate mismatch) and ``gap_bits`` idle bits between frames."""
    bits = [1] * idle_before
    for frame in frames:
        bits += frame + [1] * gap_bits
    n_cycles = int(len(bits) * bit_cycles) + idle_after
    return [bits[int(c / bit_cycles)] if int(c / bit_cycles) < len(bits) else 1
            for c in range(n_cycles)]


def run_receiver(levels, *, clock_hz=CLOCK_HZ, baud=BAUD, ready=lambda cycle: True):
    """Drive ``levels`` into a :class:`UARTReceiver`; return bytes and error pulse counts."""
    dut = UARTReceiver(clock_hz=clock_hz, baud=baud)
    received, errors = [], {"framing": 0, "overflow": 0}

    async def testbench(ctx):
        for cycle, level in enumerate(levels):
            ctx.set(dut.rx, level)
            ctx.set(dut.o_stream.ready, ready(cycle))
            _, _, valid, rdy, payload, framing, overflow = await ctx.tick().sample(
                dut.o_stream.valid, dut.o_stream.ready, dut.o_stream.payload,
                dut.framing_error, dut.overflow)
            if valid and rdy:
                received.append(payload)
            errors["framing"] += framing
            errors["overflow"] += overflow

    sim = Simulator(dut)
    sim.add_clock(1 / clock_hz)
    sim.add_testbench(testbench)
    sim.run()
    return received, errors


def run_transmitter(data, *, clock_hz=CLOCK_HZ, baud=BAUD, valid_gaps=0, extra=60):
    """Offer ``data`` to a :class:`UARTTransmitter` (``valid_gaps`` idle cycles between
    offers); return the per-cycle tx levels and the cycles where bytes were accepted."""
    dut = UARTTransmitter(clock_hz=clock_hz, baud=baud)
    levels, accepted = [], []

    async def driver(ctx):
        cycle = 0
        for byte in data:
            ctx.set(dut.i_stream.valid, 1)
            ctx.set(dut.i_stream.payload, byte)
            while True:
                _, _, ready = await ctx.tick().sample(dut.i_stream.ready)
                cycle += 1
                if ready:
                    accepted.append(cycle - 1)
                    break
            ctx.set(dut.i_stream.valid, 0)
            for _ in range(valid_gaps):
                await ctx.tick()
                cycle += 1

    async def monitor(ctx):
        total = (len(data) * (10 * dut.divisor + valid_gaps + 2)) + extra
        for _ in range(total):
            _, _, tx = await ctx.tick().sample(dut.tx)
            levels.append(tx)

    sim = Simulator(dut)
    sim.add_clock(1 / clock_hz)
    sim.add_testbench(driver)
    sim.add_testbench(monitor)
    sim.run()
    return levels, accepted, dut.divisor


def decode_line(levels, divisor):
    """Software UART: decode 8N1 frames from per-cycle levels; return (bytes, start cycles)."""
    out, starts = [], []
    c = 0
    while c < len(levels):
        if levels[c] == 0:
            mid = c + divisor // 2
            bits = [levels[mid + i * divisor] for i in range(10)]
            assert bits[0] == 0, f"start bit at cycle {c} does not last half a bit"
            assert bits[9] == 1, f"missing stop bit in the frame starting at cycle {c}"
            # Every bit holds its level for exactly `divisor` cycles.
            for i, level in enumerate(bits):
                assert levels[c + i * divisor:c + (i + 1) * divisor] == [level] * divisor
            out.append(sum(b << i for i, b in enumerate(bits[1:9])))
            starts.append(c)
            c += 10 * divisor - 1      # the stop bit is idle level; look for the next start
        c += 1
    return out, starts


# -- baud divisor -------------------------------------------------------------------------------

def test_baud_divisor():
    assert baud_divisor(12_000_000, 3_000_000) == 4
    assert baud_divisor(100_000_000, 3_000_000) == 33
    assert baud_divisor(25_000_000, 115_200) == 217


def test_baud_divisor_errors():
    with pytest.raises(ValueError, match=r"^Baud rate 3000000 needs at least 4 clock cycles "
                                         r"per bit, but the clock of 6000000 Hz gives 2\.00$"):
        baud_divisor(6_000_000, 3_000_000)
    with pytest.raises(ValueError, match=r"^Baud rate 3000000 is off by 4\.2% at 25000000 Hz "
                                         r"\(divisor 8\); at most 2% is allowed$"):
        baud_divisor(25_000_000, 3_000_000)
    with pytest.raises(TypeError, match=r"^baud must be a number, not '3M'$"):
        baud_divisor(12_000_000, "3M")
    with pytest.raises(ValueError, match=r"^clock_hz must be positive, not 0$"):
        baud_divisor(0, 3_000_000)
    with pytest.raises(ValueError, match=r"^Baud rate"):
        UARTReceiver(clock_hz=6_000_000, baud=3_000_000)


def test_properties():
    rx = UARTReceiver(clock_hz=100_000_000, baud=3_000_000)
    assert rx.divisor == 33
    assert rx.baud == 3_000_000
    assert abs(rx.actual_baud - 3_030_303) < 1
    assert UARTTransmitter(clock_hz=100_000_000).divisor == 33


# -- transmitter --------------------------------------------------------------------------------

@pytest.mark.parametrize("clock_hz", [12_000_000, 100_000_000])
def test_tx_back_to_back(clock_hz):
    data = [0x00, 0xFF, 0x55, 0xAA, 0xA5, 0x5A, 0x01, 0x80]
    levels, accepted, divisor = run_transmitter(data, clock_hz=clock_hz)
    decoded, starts = decode_line(levels, divisor)
    assert decoded == data
    # No idle time between frames: each start bit follows the previous stop bit directly.
    assert [b - a for a, b in zip(starts, starts[1:])] == [10 * divisor] * (len(data) - 1)
    assert [b - a for a, b in zip(accepted, accepted[1:])] == [10 * divisor] * (len(data) - 1)
    assert levels[-1] == 1


def test_tx_with_gaps_and_idle_level():
    data = list(range(0, 256, 37))
    levels, _, divisor = run_transmitter(data, valid_gaps=13)
    assert decode_line(levels, divisor)[0] == data
    assert levels[0] == 1


# -- receiver -----------------------------------------------------------------------------------

@pytest.mark.parametrize("skew", [1.0, 0.985, 1.015])
def test_rx_back_to_back(skew):
    """Back-to-back frames, also with the sender's baud rate 1.5 % off."""
    data = [0x00, 0xFF, 0x55, 0xAA, 0xA5, 0x5A, 0x12, 0xEF] + list(range(0, 256, 17))
    divisor = baud_divisor(CLOCK_HZ, BAUD)
    levels = line_levels([frame_bits(b) for b in data], divisor * skew)
    received, errors = run_receiver(levels)
    assert received == data
    assert errors == {"framing": 0, "overflow": 0}


def test_rx_33_cycles_per_bit():
    data = [random.Random(1).randrange(256) for _ in range(12)]
    levels = line_levels([frame_bits(b) for b in data], 100e6 / 3e6)
    received, errors = run_receiver(levels, clock_hz=100_000_000)
    assert received == data
    assert errors == {"framing": 0, "overflow": 0}


def test_rx_framing_error():
    """A frame with a 0 stop bit is dropped, and a held-low line (break) gives no bytes."""
    divisor = baud_divisor(CLOCK_HZ, BAUD)
    frames = [frame_bits(0x11), frame_bits(0x22, stop=0), [1, 1], frame_bits(0x33),
              [0] * 25, [1, 1], frame_bits(0x44)]
    received, errors = run_receiver(line_levels(frames, divisor))
    assert received == [0x11, 0x33, 0x44]
    assert errors == {"framing": 2, "overflow": 0}


def test_rx_glitch_is_not_a_start_bit():
    divisor = baud_divisor(CLOCK_HZ, BAUD)
    levels = [1] * 10 + [0] + [1] * 20 + line_levels([frame_bits(0x5C)], divisor)
    received, errors = run_receiver(levels)
    assert received == [0x5C]
    assert errors == {"framing": 0, "overflow": 0}


def test_rx_overflow():
    """The line cannot be held off: a byte arriving while the last one waits is dropped."""
    divisor = baud_divisor(CLOCK_HZ, BAUD)
    levels = line_levels([frame_bits(b) for b in (0x01, 0x02, 0x03)], divisor, idle_after=10)
    stall_until = len(levels) - 5
    received, errors = run_receiver(levels + [1] * 10, ready=lambda c: c >= stall_until)
    assert received == [0x01]
    assert errors == {"framing": 0, "overflow": 2}


def test_loopback():
    """Transmitter into receiver through the line, with a slow consumer behind a gap."""
    data = [random.Random(7).randrange(256) for _ in range(20)]
    tx = UARTTransmitter(clock_hz=CLOCK_HZ, baud=BAUD)
    rx = UARTReceiver(clock_hz=CLOCK_HZ, baud=BAUD)
    m = Module()
    m.submodules.tx = tx
    m.submodules.rx = rx
    m.d.comb += rx.rx.eq(tx.tx)
    received = []

    async def driver(ctx):
        for byte in data:
            ctx.set(tx.i_stream.valid, 1)
            ctx.set(tx.i_stream.payload, byte)
            await ctx.tick().until(tx.i_stream.ready)
        ctx.set(tx.i_stream.valid, 0)

    async def monitor(ctx):
        ctx.set(rx.o_stream.ready, 1)
        for _ in range(len(data) * 10 * tx.divisor + 50):
            _, _, valid, payload = await ctx.tick().sample(rx.o_stream.valid,
                                                           rx.o_stream.payload)
            if valid:
                received.append(payload)

    sim = Simulator(m)
    sim.add_clock(1 / CLOCK_HZ)
    sim.add_testbench(driver)
    sim.add_testbench(monitor)
    sim.run()
    assert received == data

# amaranth: UnusedElaboratable=no
"""CReadout on its own: windows of a result in the C banks to reply bytes, in the simulator.

The testbench holds C (``lanes`` banks of distinct random words) behind a read port with the
engine's two cycles of latency and plays GemmSystem's READ_C / READBACK states, with random
waits on each byte (the encoder's back-pressure). The bytes must decode, with the driver's
``protocol.c_from_payload``, to the elements docs/protocol.md 4.2 and 4.4 place in C.
"""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from hbfp_hw.fpga.protocol import c_from_payload, column_groups
from hbfp_hw.fpga.system.readout import CReadout

C_DEPTH = 12


def expected_words(c, lanes, row, col, count, rows, cols, base):
    """``count`` elements of the ``rows x cols`` result at ``base``, row-major from (row, col):
    element (r, n) is bank ``n % lanes``, word ``base + r * G + n // lanes``."""
    g = column_groups(cols, lanes)
    out = []
    for i in range(row * cols + col, row * cols + col + count):
        r, n = divmod(i, cols)
        assert r < rows
        out.append(c[n % lanes][base + r * g + n // lanes])
    return np.array(out, np.uint32)


def rtl_readout(lanes, c, reads, *, seed=0, ready_prob=1.0):
    """Run ``reads`` (``(row, col, count, rows, cols, base, readback)``) in one simulation;
    return the reply bytes of each."""
    dut = CReadout(lanes=lanes, c_depth=C_DEPTH, cap_bits=8)
    rng = random.Random(seed)
    replies = []

    async def c_port(ctx):
        pipe = [None, None]
        async for _, _, addr, lane in ctx.tick().sample(dut.c_raddr, dut.c_rlane):
            pipe = [(addr, lane), pipe[0]]
            if pipe[1] is not None:
                addr, lane = pipe[1]
                ctx.set(dut.c_rdata, int(c[lane][addr]) if addr < C_DEPTH else 0xDEADBEEF)

    async def bench(ctx):
        for row, col, count, _rows, cols, base, readback in reads:
            g = column_groups(cols, lanes)
            # READ_CHECK: the columns; READ_SUM (later): the first row's bank word. A READBACK
            # (COMPUTE_RUN) sets both at once, from column 0 of row 0.
            ctx.set(dut.set_cols, 1)
            ctx.set(dut.first_col, col)
            ctx.set(dut.cols, cols)
            ctx.set(dut.groups, g)
            if not readback:
                await ctx.tick()
                ctx.set(dut.set_cols, 0)
                await ctx.tick().repeat(2)
            ctx.set(dut.set_row, 1)
            ctx.set(dut.row_base, base + row * g)
            await ctx.tick()
            ctx.set(dut.set_cols, 0)
            ctx.set(dut.set_row, 0)
            await ctx.tick().repeat(3)
            got = []
            for _ in range(count):
                await ctx.tick().repeat(2)                     # SEND_C_ADDR, SEND_C_WAIT
                ctx.set(dut.latch, 1)                          # SEND_C_LATCH
                await ctx.tick()
                ctx.set(dut.latch, 0)
                for i in range(4):                             # SEND_C_BYTES
                    while rng.random() >= ready_prob:          # the encoder is not ready
                        await ctx.tick()
                    assert ctx.get(dut.last_byte) == (i == 3)
                    got.append(ctx.get(dut.byte))
                    ctx.set(dut.next_byte, 1)
                    await ctx.tick()
                    ctx.set(dut.next_byte, 0)
            replies.append(bytes(got))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_process(c_port)
    sim.add_testbench(bench)
    sim.run()
    return replies


def random_c(lanes, seed):
    rng = np.random.default_rng(seed)
    words = rng.choice(1 << 32, size=lanes * C_DEPTH, replace=False).astype(np.uint32)
    # Every byte of a word differs from the others, so a wrong byte order shows.
    words[0] = 0x44332211
    return words.reshape(lanes, C_DEPTH)


READS = {
    # lanes: [(row, col, count, rows, cols, base, readback)]
    1: [(0, 0, 1, 1, 1, 0, False), (0, 0, 6, 2, 3, 0, True), (1, 1, 4, 3, 3, 2, False),
        (0, 5, 7, 2, 6, 0, False)],
    2: [(0, 0, 1, 1, 1, 0, False), (0, 0, 6, 2, 3, 0, True), (0, 2, 4, 2, 3, 0, False),
        (1, 2, 1, 2, 3, 8, False), (0, 1, 9, 3, 4, 6, False), (0, 0, 8, 2, 4, 3, True)],
    4: [(0, 0, 15, 3, 5, 0, True), (2, 4, 1, 3, 5, 6, False), (1, 3, 5, 4, 5, 4, False),
        (0, 0, 4, 1, 4, 11, False)],
}


@pytest.mark.parametrize("lanes", sorted(READS))
def test_windows_of_c_in_row_major_order(lanes):
    c = random_c(lanes, lanes)
    replies = rtl_readout(lanes, c, READS[lanes])
    for (row, col, count, rows, cols, base, _), reply in zip(READS[lanes], replies):
        want = expected_words(c, lanes, row, col, count, rows, cols, base)
        assert c_from_payload(reply).tolist() == want.tolist(), (row, col, count, rows, cols)


def test_little_endian_bytes_with_back_pressure():
    c = random_c(2, 9)
    [reply] = rtl_readout(2, c, [(0, 0, 2, 1, 2, 0, True)], seed=3, ready_prob=0.4)
    assert reply[:4] == bytes([0x11, 0x22, 0x33, 0x44])     # C[0, 0], least significant first
    assert reply[4:] == int(c[1][0]).to_bytes(4, "little")


def test_random_windows_with_back_pressure():
    lanes = 2
    c = random_c(lanes, 5)
    rng = random.Random(1)
    reads = []
    for _ in range(12):
        cols = rng.randint(1, 7)
        g = column_groups(cols, lanes)
        rows = rng.randint(1, C_DEPTH // g)
        base = rng.randint(0, C_DEPTH - rows * g)
        row, col = rng.randrange(rows), rng.randrange(cols)
        count = rng.randint(1, rows * cols - row * cols - col)
        reads.append((row, col, count, rows, cols, base, False))
    replies = rtl_readout(lanes, c, reads, seed=2, ready_prob=0.6)
    for (row, col, count, rows, cols, base, _), reply in zip(reads, replies):
        want = expected_words(c, lanes, row, col, count, rows, cols, base)
        assert c_from_payload(reply).tolist() == want.tolist(), (row, col, count, rows, cols)

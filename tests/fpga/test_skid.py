# amaranth: UnusedElaboratable=no
"""SkidBuffer in the simulator: every transfer once and in order under random valid and
ready, one transfer a cycle when both stay high, and neither ready nor the output depends on
the other side within the cycle."""

import random

import pytest
from amaranth.sim import Simulator

from hbfp_hw.fpga.system.skid import SkidBuffer


def run(valid_prob, ready_prob, n=400, seed=0):
    """Push ``n`` words with random valid, pull with random ready; return what came out,
    the cycles taken, and whether any combinational dependency across the slice was seen."""
    dut = SkidBuffer(16)
    rng = random.Random(seed)
    words = [rng.randrange(1 << 16) for _ in range(n)]
    got, crossed = [], []
    cycles = [0]

    async def bench(ctx):
        sent = 0
        while len(got) < n:
            valid = sent < n and rng.random() < valid_prob
            ready = rng.random() < ready_prob
            ctx.set(dut.i_stream.valid, valid)
            ctx.set(dut.i_stream.payload, words[sent] if sent < n else 0)
            ctx.set(dut.o_stream.ready, ready)
            i_ready, o_valid = ctx.get(dut.i_stream.ready), ctx.get(dut.o_stream.valid)
            # The other side's value flipped within the cycle must not change ours.
            ctx.set(dut.o_stream.ready, not ready)
            ctx.set(dut.i_stream.valid, not valid)
            crossed.append(ctx.get(dut.i_stream.ready) != i_ready
                           or ctx.get(dut.o_stream.valid) != o_valid)
            ctx.set(dut.o_stream.ready, ready)
            ctx.set(dut.i_stream.valid, valid)
            if o_valid and ready:
                got.append(ctx.get(dut.o_stream.payload))
            if valid and i_ready:
                sent += 1
            await ctx.tick()
            cycles[0] += 1
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return words, got, cycles[0], any(crossed)


@pytest.mark.parametrize("valid_prob,ready_prob", [(1.0, 1.0), (0.7, 0.4), (0.3, 0.9),
                                                   (1.0, 0.5)])
def test_order_and_no_combinational_path(valid_prob, ready_prob):
    words, got, cycles, crossed = run(valid_prob, ready_prob, seed=int(ready_prob * 10))
    assert got == words
    assert not crossed
    if valid_prob == ready_prob == 1.0:
        assert cycles == len(words) + 1           # one a cycle, one cycle of latency


def test_bad_width():
    with pytest.raises(ValueError, match="width must be at least 1"):
        SkidBuffer(0)
    with pytest.raises(TypeError, match="width must be an integer"):
        SkidBuffer(True)

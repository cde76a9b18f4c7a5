# amaranth: UnusedElaboratable=no
"""CreditOutput: a free-running pipeline behind a credit-counted output FIFO."""

import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hbfp_hw.rtl_gen.common import CreditOutput, Pipeline

WIDTH = 16


def model(x):
    """What the toy unit computes: ``(3 * x + 1) mod 2**16``, bit-reversed."""
    y = (3 * x + 1) & 0xFFFF
    return int(f"{y:016b}"[::-1], 2)


class ToyUnit(wiring.Component):
    """A ``stages``-deep free-running pipeline of :func:`model`, one step per register."""

    i_stream: In(stream.Signature(WIDTH))
    o_stream: Out(stream.Signature(WIDTH))

    def __init__(self, stages):
        self.stages = stages
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        out = CreditOutput(m, self.o_stream, stages=self.stages, name="out")
        m.d.comb += self.i_stream.ready.eq(out.ready)
        pipe = Pipeline(m, out.admit(self.i_stream.valid))
        x = self.i_stream.payload
        y = Signal(WIDTH)
        m.d.comb += y.eq(3 * x + 1)
        values = {"v": y}
        for k in range(self.stages):
            values = pipe.cut(f"s{k}", values, True)
        z = Signal(WIDTH)
        m.d.comb += z.eq(values["v"][::-1])
        out.drive(pipe.valid, z)
        return m


@pytest.mark.parametrize("stages", [0, 1, 2, 5])
@pytest.mark.parametrize("valid_prob,ready_prob", [(1.0, 1.0), (1.0, 0.3), (0.5, 0.5),
                                                   (0.9, 0.8), (0.2, 1.0)])
def test_random_backpressure(stream_runner, stages, valid_prob, ready_prob):
    inputs = [(i * 40503 + 17) & 0xFFFF for i in range(120)]
    run = stream_runner(ToyUnit(stages), inputs, seed=f"{stages}-{valid_prob}-{ready_prob}",
                        valid_prob=valid_prob, ready_prob=ready_prob)
    # run_stream also fails on an extra (duplicated) output after the last expected one.
    assert run.outputs == [model(x) for x in inputs]
    if valid_prob == ready_prob == 1.0:
        assert run.in_cycles == list(range(len(inputs)))          # one transfer per cycle
        assert run.out_cycles == [c + stages for c in run.in_cycles]


@pytest.mark.parametrize("stages", [1, 3, 6])
def test_credits_bound_the_transfers_in_flight(stages):
    """With ``o_stream.ready`` low, exactly ``stages + 1`` transfers are accepted; none is lost."""
    dut = ToyUnit(stages)
    inputs = list(range(1, 3 * stages + 10))
    seen = {"accepted": 0, "out": []}

    async def testbench(ctx):
        ctx.set(dut.o_stream.ready, 0)
        ctx.set(dut.i_stream.valid, 1)
        index = 0
        for _ in range(4 * stages + 10):
            ctx.set(dut.i_stream.payload, inputs[index])
            _, _, ready, valid = await ctx.tick().sample(dut.i_stream.ready, dut.o_stream.valid)
            if ready:
                index += 1
        seen["accepted"] = index
        assert valid, "accepted transfers must be waiting at the output"
        ctx.set(dut.i_stream.valid, 0)
        ctx.set(dut.o_stream.ready, 1)
        for _ in range(3 * stages + 6):
            _, _, valid, payload = await ctx.tick().sample(dut.o_stream.valid,
                                                           dut.o_stream.payload)
            if valid:
                seen["out"].append(payload)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    assert seen["accepted"] == stages + 1
    assert seen["out"] == [model(x) for x in inputs[:stages + 1]]


def test_depth():
    m = Module()
    o = stream.Signature(WIDTH).create()
    assert CreditOutput(m, o, stages=4).depth == 5
    assert CreditOutput(m, o, stages=0).depth == 0
    free = stream.Signature(WIDTH, always_ready=True).create()
    assert CreditOutput(m, free, stages=4).depth == 0

"""Shared Amaranth-simulator harness of the RTL unit tests: stream driver and monitor."""

import random

import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import data
from amaranth.sim import Simulator


def _raw(value):
    return value.as_value() if isinstance(value, data.View) else value


class StreamRun:
    """Outputs of one :func:`run_stream` call and the cycles of every transfer."""

    def __init__(self, dut, outputs, in_cycles, out_cycles):
        self.dut = dut
        self.outputs = outputs
        self.in_cycles = in_cycles
        self.out_cycles = out_cycles


def run_stream(dut, inputs, n_outputs=None, *, seed=0, valid_prob=1.0, ready_prob=1.0,
               idle_check=8, max_cycles=None):
    """Stream ``inputs`` (payload bit patterns) through ``dut`` and collect its outputs.

    The driver leaves random gaps between input transfers (``valid_prob`` is the chance to
    offer the next item in a cycle) and the monitor drives ``o_stream.ready`` randomly (1 with
    probability ``ready_prob``). After ``n_outputs`` outputs (default: one per input) the
    monitor keeps ``ready`` high for ``idle_check`` more cycles and fails if a further output
    appears, so dropped and duplicated transfers are both caught.
    """
    inputs = [int(x) for x in inputs]
    n_outputs = len(inputs) if n_outputs is None else n_outputs
    if max_cycles is None:
        max_cycles = 200 + 64 * (len(inputs) + n_outputs) / max(0.05, min(valid_prob, ready_prob))
    i_stream, o_stream = dut.i_stream, dut.o_stream
    i_payload, o_payload = _raw(i_stream.payload), _raw(o_stream.payload)
    outputs, in_cycles, out_cycles = [], [], []

    async def driver(ctx):
        rng = random.Random(f"{seed}-driver")
        cycle = 0
        for bits in inputs:
            while rng.random() >= valid_prob:
                await ctx.tick()
                cycle += 1
            ctx.set(i_stream.valid, 1)
            ctx.set(i_payload, bits)
            while True:
                _, _, ready = await ctx.tick().sample(i_stream.ready)
                cycle += 1
                if ready:
                    in_cycles.append(cycle - 1)
                    break
                assert cycle < max_cycles, "input stalled for too long"
            ctx.set(i_stream.valid, 0)

    async def monitor(ctx):
        rng = random.Random(f"{seed}-monitor")
        cycle = 0
        while len(outputs) < n_outputs:
            ready = rng.random() < ready_prob
            ctx.set(o_stream.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(o_stream.valid, o_payload)
            if ready and valid:
                outputs.append(payload)
                out_cycles.append(cycle)
            cycle += 1
            assert cycle < max_cycles, (f"timeout: {len(outputs)} of {n_outputs} outputs "
                                        f"after {cycle} cycles")
        ctx.set(o_stream.ready, 1)
        for _ in range(idle_check):
            _, _, valid = await ctx.tick().sample(o_stream.valid)
            assert not valid, "unexpected extra output transfer"

    # The wrapper guarantees a `sync` domain, also for a combinational `dut` (stages=0).
    top = Module()
    top.submodules.dut = dut
    toggle = Signal()
    top.d.sync += toggle.eq(~toggle)
    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(driver)
    sim.add_testbench(monitor)
    sim.run()
    assert len(in_cycles) == len(inputs)
    return StreamRun(dut, outputs, in_cycles, out_cycles)


@pytest.fixture
def stream_runner():
    """Return :func:`run_stream`."""
    return run_stream

"""Generic cocotb testbench for every hbfp-hw stream unit.

Structure (driver / monitor -> model -> scoreboard):

- :class:`TB` owns the clock and reset.
- :class:`StreamDriver` pushes packed payloads into ``i_stream`` with random valid gaps.
- :class:`StreamMonitor` takes ``o_stream`` transfers under random backpressure.
- The model is the golden model: :mod:`hbfp_hw.sim.vectors` computed the expected payloads with
  :mod:`hbfp_hw.golden` and packed them with the unit's own ``amaranth.lib.data`` layouts.
- :class:`Scoreboard` compares every output with the model, in order (optionally per key, for
  units whose outputs complete out of order, such as the interleaving accumulator).

The run is configured by the JSON file named in ``HBFP_TB_CONFIG`` (written by
:func:`hbfp_hw.sim.runner.run_unit`), and its outcome is written to the JSON ``result`` path
given there.
"""

import json
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge


def _config():
    with open(os.environ["HBFP_TB_CONFIG"]) as f:
        return json.load(f)


class TB:
    """Clock, reset and the static control inputs of a unit."""

    def __init__(self, dut, cfg):
        self.dut = dut
        self.cfg = cfg
        cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())

    async def reset(self):
        dut = self.dut
        dut.rst.value = 1
        dut.i_stream__valid.value = 0
        dut.o_stream__ready.value = 0
        for name, value in self.cfg.get("static", {}).items():
            getattr(dut, name).value = int(value)
        await ClockCycles(dut.clk, 2)
        dut.rst.value = 0
        for name, value in self.cfg.get("pulse", {}).items():
            getattr(dut, name).value = int(value)
        await RisingEdge(dut.clk)
        for name in self.cfg.get("pulse", {}):
            getattr(dut, name).value = 0


class StreamDriver:
    """Drive ``i_stream`` with the given payloads, idling at random (``valid_prob``).

    Handshakes are sampled at the rising edge (the values the DUT's registers see) and new
    values are driven right after it, as in cocotbext-axi.
    """

    def __init__(self, dut, payloads, valid_prob, rng):
        self.dut, self.payloads, self.valid_prob, self.rng = dut, payloads, valid_prob, rng
        self.sent = 0

    async def run(self):
        dut = self.dut
        pending = iter(self.payloads)
        driving = False
        while True:
            await RisingEdge(dut.clk)
            if driving and int(dut.i_stream__ready.value):
                self.sent += 1
                driving = False
            if not driving:
                if self.sent == len(self.payloads):
                    dut.i_stream__valid.value = 0
                    return
                if self.rng.random() < self.valid_prob:
                    dut.i_stream__payload.value = next(pending)
                    dut.i_stream__valid.value = 1
                    driving = True
                else:
                    dut.i_stream__valid.value = 0


class StreamMonitor:
    """Accept ``o_stream`` transfers, asserting ``ready`` at random (``ready_prob``)."""

    def __init__(self, dut, ready_prob, rng, on_item):
        self.dut, self.ready_prob, self.rng, self.on_item = dut, ready_prob, rng, on_item
        self.cycles = 0

    async def run(self):
        dut = self.dut
        ready = 0
        while True:
            await RisingEdge(dut.clk)
            self.cycles += 1
            if ready and int(dut.o_stream__valid.value):
                self.on_item(int(dut.o_stream__payload.value))
            ready = int(self.rng.random() < self.ready_prob)
            dut.o_stream__ready.value = ready


class Scoreboard:
    """Compare outputs with the golden model's expectations.

    With ``key_mask`` set, outputs are matched to the oldest outstanding expectation with the
    same key (``payload & key_mask``); otherwise strictly in order.
    """

    def __init__(self, expected, key_mask=None):
        self.expected = list(expected)
        self.key_mask = key_mask
        self.next = 0
        self.pending = {}
        if key_mask is not None:
            for i, value in enumerate(self.expected):
                self.pending.setdefault(value & key_mask, []).append(i)
        self.received = 0
        self.mismatches = 0
        self.first_mismatch = None

    def check(self, actual):
        if self.key_mask is None:
            index = self.next
            self.next += 1
        else:
            queue = self.pending.get(actual & self.key_mask)
            index = queue.pop(0) if queue else None
        self.received += 1
        expected = self.expected[index] if index is not None and index < len(self.expected) \
            else None
        if expected != actual:
            self.mismatches += 1
            if self.first_mismatch is None:
                self.first_mismatch = {"index": index, "expected": expected, "actual": actual}

    @property
    def done(self):
        return self.received >= len(self.expected)


@cocotb.test()
async def stream_unit(dut):
    """Stream every vector through the unit and score each output bit for bit."""
    cfg = _config()
    with open(cfg["vectors"]) as f:
        vectors = json.load(f)
    rng = random.Random(cfg.get("seed", 0))
    tb = TB(dut, cfg)
    await tb.reset()

    board = Scoreboard(vectors["expected"], vectors.get("key_mask"))
    driver = StreamDriver(dut, vectors["inputs"], cfg.get("valid_prob", 1.0), rng)
    monitor = StreamMonitor(dut, cfg.get("ready_prob", 1.0), random.Random(rng.random()),
                            board.check)
    cocotb.start_soon(monitor.run())
    await driver.run()
    timeout = cfg.get("drain_cycles", 2000) + 4 * len(vectors["expected"])
    for _ in range(timeout):
        if board.done:
            break
        await RisingEdge(dut.clk)
    # A few more cycles: any extra (duplicated) output is a failure too.
    extra_before = board.received
    await ClockCycles(dut.clk, 20)
    result = {
        "vectors": len(vectors["inputs"]),
        "expected": len(vectors["expected"]),
        "received": board.received,
        "extra": board.received - extra_before,
        "mismatches": board.mismatches,
        "first_mismatch": board.first_mismatch,
        "cycles": monitor.cycles,
        "passed": board.mismatches == 0 and board.received == len(vectors["expected"]),
    }
    if result["first_mismatch"] is not None and "inputs_for" in vectors:
        idx = result["first_mismatch"]["index"]
        if idx is not None and idx < len(vectors["inputs_for"]):
            result["first_mismatch"]["inputs"] = vectors["inputs_for"][idx]
    with open(cfg["result"], "w") as f:
        json.dump(result, f)
    assert result["passed"], (f"{result['mismatches']} mismatches, received "
                              f"{result['received']}/{result['expected']}; first: "
                              f"{result['first_mismatch']}")

"""DotProductUnit in the Amaranth simulator: the composed unit against golden.gemm semantics."""

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.sim import Simulator

from hbfp_hw import golden
from hbfp_hw.formats import BFPFormat, resolve_format
from hbfp_hw.rtl_gen import layout
from hbfp_hw.rtl_gen.dot_product import DotProductUnit, dot_input_layout
from hbfp_hw.sim import vectors


def _by_channel(payloads, mask):
    out = {}
    for p in payloads:
        out.setdefault(p & mask, []).append(p)
    return out


@pytest.mark.parametrize("fmt, input_format, seed", [
    (BFPFormat(8, 16), "fp32", 0),
    (BFPFormat(4, 4, "toward-zero"), "bf16", 0),
    (BFPFormat(6, 8, "stochastic"), "fp32", 1234),
    (resolve_format("mxfp8_e4m3").replace(block_size=8), "fp32", 0),
    (resolve_format("mxfp8_e5m2").replace(block_size=4, scale_rule="rceil"), "bf16", 0),
    (resolve_format("mxfp4_e2m1").replace(block_size=8, rounding="stochastic",
                                          scale_rule="ceil"), "fp32", 99),
], ids=["bfp8", "w4b4-tz-bf16", "w6b8-sr", "mxfp8_e4m3-b8", "mxfp8_e5m2-b4-rceil-bf16",
        "mxfp4_e2m1-b8-sr-ceil"])
def test_dot_unit_matches_golden(stream_runner, fmt, input_format, seed):
    rng = np.random.default_rng(seed)
    dut = DotProductUnit(fmt, input_format=input_format)
    vecs = vectors.dot_vectors(fmt, dut.channels, 300, rng, input_format=input_format,
                               seed=seed)
    if seed:
        # Stochastic rounding: seed the PRNGs as the golden model does (reseed pulse).
        dut = _seeded(dut, seed)
    run = stream_runner(dut, vecs["inputs"], len(vecs["expected"]), seed=seed,
                        valid_prob=0.8, ready_prob=0.7)
    mask = vecs["key_mask"]
    assert _by_channel(run.outputs, mask) == _by_channel(vecs["expected"], mask)


def _seeded(dut, seed):
    """Wrap a DotProductUnit: its seed port held at ``seed``, one reseed pulse after reset."""

    class Seeded(wiring.Component):
        def __init__(self):
            super().__init__({"i_stream": dut.signature.members["i_stream"],
                              "o_stream": dut.signature.members["o_stream"]})

        def elaborate(self, platform):
            m = Module()
            m.submodules.dut = dut
            first = Signal(init=1)
            m.d.sync += first.eq(0)
            m.d.comb += [dut.seed.eq(seed), dut.reseed.eq(first)]
            wiring.connect(m, wiring.flipped(self.i_stream), dut.i_stream)
            wiring.connect(m, dut.o_stream, wiring.flipped(self.o_stream))
            return m

    return Seeded()


def test_full_throughput_with_interleaved_channels():
    """One block pair per cycle, and the measured latency equals ``latency``."""
    fmt = BFPFormat(8, 16)
    dut = DotProductUnit(fmt)
    lay = dot_input_layout(fmt, "fp32", dut.channels)
    n = 4 * dut.channels
    one = int(golden.f32_to_bits(np.float32(1.0)))
    inputs = [layout.pack(lay, {"a": [one] * 16, "b": [one] * 16, "channel": i % dut.channels,
                                "first": int(i < dut.channels),
                                "last": int(i >= n - dut.channels)}) for i in range(n)]
    accepted, seen = [], []

    async def tb(ctx):
        ctx.set(dut.o_stream.ready, 1)
        cycle = 0
        pending = list(inputs)
        while len(seen) < dut.channels and cycle < 200:
            if pending:
                ctx.set(dut.i_stream.valid, 1)
                ctx.set(dut.i_stream.payload.as_value(), pending[0])
            else:
                ctx.set(dut.i_stream.valid, 0)
            _, _, ready, valid, payload = await ctx.tick().sample(
                dut.i_stream.ready, dut.o_stream.valid, dut.o_stream.payload.as_value())
            if pending and ready:
                accepted.append(cycle)
                pending.pop(0)
            if valid:
                seen.append((cycle, payload))
            cycle += 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert accepted == list(range(n))                  # no bubble: one transfer per cycle
    out_layout = layout.accumulator_output_layout(dut.channels)
    values = [layout.unpack(out_layout, p)["value"] for _, p in seen]
    assert values == [int(golden.f32_to_bits(np.float32(64.0)))] * dut.channels  # 4 * 16
    # The first sum completes `latency` cycles after its last block pair was accepted.
    assert seen[0][0] - accepted[n - dut.channels] == dut.latency


def test_converts_to_verilog():
    text = verilog.convert(DotProductUnit(BFPFormat(4, 4)), name="dpu", emit_src=False)
    assert "module dpu(" in text

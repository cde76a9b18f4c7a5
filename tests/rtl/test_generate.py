"""Generated IP: Verilog + JSON + FuseSoC core, deterministic, lint-clean (the `hbfp-hw
generate` command is tested in tests/cli/test_generate.py)."""

import json

import pytest

from hbfp_hw.formats import BFPFormat
from hbfp_hw.rtl_gen import layout
from hbfp_hw.rtl_gen.generate import UNITS, emit, unit_name
from hbfp_hw.tools import simulators

FMT = BFPFormat(4, 4)


@pytest.mark.parametrize("unit", list(UNITS))
def test_emit_every_unit(tmp_path, unit):
    desc = emit(unit, FMT, tmp_path, run_lint=simulators.have_verilator())
    name = desc["module"]
    v = (tmp_path / f"{name}.v").read_text()
    assert f"module {name}(" in v
    meta = json.loads((tmp_path / f"{name}.json").read_text())
    assert meta["module"] == name and meta["latency"] >= 1 and meta["throughput"] == 1
    ports = {p["name"]: p for p in meta["ports"]}
    for port in ("clk", "rst", "i_stream__valid", "i_stream__ready", "i_stream__payload",
                 "o_stream__valid", "o_stream__ready", "o_stream__payload"):
        assert port in ports
        # every port in the JSON is a real port of the Verilog module
        assert f" {port};" in v
    assert ports["i_stream__ready"]["direction"] == "output"
    assert ports["o_stream__ready"]["direction"] == "input"
    assert ports["i_stream__payload"]["role"] == "payload"
    assert ports["i_stream__payload"]["stream"] == "i_stream"
    core = (tmp_path / f"{name}.core").read_text()
    assert core.startswith("CAPI=2:\n") and f"toplevel: {name}" in core
    assert f"- {name}.v" in core
    if desc.get("lint") is not None:
        assert desc["lint"]["errors"] == 0
        assert set(desc["lint"]["warnings"]) <= {"UNUSEDSIGNAL", "WIDTHEXPAND", "WIDTHTRUNC",
                                                 "PROCASSINIT", "DECLFILENAME"}


def test_json_layout_matches_the_amaranth_layout(tmp_path):
    desc = emit("align", FMT, tmp_path, run_lint=False)
    ports = {p["name"]: p for p in desc["ports"]}
    out = ports["o_stream__payload"]
    blk = layout.block_layout(FMT)
    assert out["width"] == blk.size
    fields = {f["name"]: f for f in out["layout"]["fields"]}
    assert fields["exponent"]["offset"] == blk["exponent"].offset
    assert fields["mantissas"]["offset"] == blk["mantissas"].offset
    assert fields["mantissas"]["element"] == {"kind": "signed", "width": 4}


def test_generation_is_deterministic(tmp_path):
    a = emit("dot", FMT, tmp_path / "a", run_lint=False)
    b = emit("dot", FMT, tmp_path / "b", run_lint=False)
    assert (tmp_path / "a" / f"{a['module']}.v").read_text() == \
        (tmp_path / "b" / f"{b['module']}.v").read_text()
    assert unit_name("dot", FMT) == "hbfp_dot_w4b4_fp32"
    assert unit_name("dot", BFPFormat(8, 16), input_format="bf16") == "hbfp_dot_bfp8_bf16"
    assert unit_name("accumulator", channels=8, adder_stages=2) == "hbfp_accumulator_c8_fs2"

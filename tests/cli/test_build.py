# amaranth: UnusedElaboratable=no
"""``hbfp-hw build``: arguments, the configuration they make, and the reports of (faked)
builds. Real builds are in tests/fpga/test_build.py."""

import json

import pytest

from hbfp_hw.cli import build_parser, main
from hbfp_hw.cli.build import config_from_args
from hbfp_hw.formats import BFPFormat
from hbfp_hw.fpga.boards import BuildConfig
from hbfp_hw.fpga.boards.build import TimingError
from hbfp_hw.fpga.boards.build_report import default_out_dir


def test_config_from_args():
    args = build_parser().parse_args(["build", "--mantissa-bits", "6", "--lanes", "2",
                                      "--clock-mhz", "75"])
    config = config_from_args(args)
    assert config.board == "ulx3s-85f"
    assert config.fmt == BFPFormat(6, 16)
    assert config.lanes == 2 and config.clock_hz == pytest.approx(75e6)
    out = default_out_dir(config)
    assert "hbfp-hw" in out.parts and out.name.startswith("ulx3s-85f-w6-n16")
    args = build_parser().parse_args(["build", "--format", "MXINT8", "--block-size", "8"])
    assert config_from_args(args).fmt == BFPFormat(8, 8)


@pytest.mark.parametrize("argv, message", [
    (["--seed-attempts", "0"], "--seed-attempts must be between 1 and 100, not 0"),
    (["--seed-attempts", "101"], "--seed-attempts must be between 1 and 100, not 101"),
    (["--seed-attempts", "x"], "--seed-attempts must be an integer, not 'x'"),
    (["--seed", "-3"], "--seed must be between 0 and 2147483547, not -3"),
    (["--board", "de10"], "--board must be one of icebreaker, ulx3s-85f, not 'de10'"),
    (["--block-size", "128"],
     "--block-size must be a power of two between 2 and 64 for the RTL, not 128"),
    (["--lanes", "3"], "--lanes must be a power of two between 1 and 64, not 3"),
    (["--clock-mhz", "500"],
     "--clock-mhz: ECP5 PLL output must be between 10 and 400 MHz, not 500 MHz"),
])
def test_argument_errors(argv, message, capsys):
    assert main(["build", *argv]) == 2
    assert capsys.readouterr().err == f"hbfp-hw build: error: {message}\n"


def test_defaults():
    args = build_parser().parse_args(["build"])
    assert args.seed_attempts == 3 and args.seed is None and args.board == "ulx3s-85f"


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


def test_seed_attempts(monkeypatch, tmp_path, capsys):
    runs = _fake_runs(monkeypatch, tmp_path, {1: 90.64, 2: 93.0, 3: 99.9})
    monkeypatch.setattr("hbfp_hw.fpga.boards.build_report.format_report", lambda report: "")
    assert main(["build", "--out", str(tmp_path), "--quiet"]) == 1
    assert runs == [1, 2, 3]
    err = capsys.readouterr().err
    assert ("reaches 99.90 MHz, 100.00 MHz required after 3 placements: seed 1 90.64 MHz, "
            "seed 2 93.00 MHz, seed 3 99.90 MHz") in err


def test_timing_failure_prints_critical_clock(monkeypatch, tmp_path, capsys):
    from hbfp_hw.fpga.boards import build as build_module

    report = {
        "config": BuildConfig().to_dict(),
        "resources": {"lut": 10, "ff": 20, "dsp": 0, "bram": 1, "carry": 3},
        "clocks": [{"name": "$glbnet$clk", "fmax_mhz": 46.23, "target_mhz": 100.0,
                    "passed": False}],
        "timing_passed": False, "bitstream": str(tmp_path / "top.bit"),
        "total_seconds": 1.0, "stages": [],
    }

    def fake_build(config, out, **kwargs):
        raise TimingError(report["clocks"][0], report)

    monkeypatch.setattr(build_module, "build", fake_build)
    assert main(["build", "--out", str(tmp_path), "--json", str(tmp_path / "r.json")]) == 1
    out = capsys.readouterr()
    assert "clock     $glbnet$clk: Fmax 46.23 MHz (target 100.00 MHz) FAIL" in out.out
    assert ("error: timing failed: critical clock '$glbnet$clk' reaches 46.23 MHz, "
            "100.00 MHz required") in out.err
    assert json.loads((tmp_path / "r.json").read_text())["timing_passed"] is False


def test_build_error_is_one_line(monkeypatch, tmp_path, capsys):
    """A tool that fails is the user's to fix (its log is named): one line, exit code 2."""
    from hbfp_hw.fpga.boards import build as build_module

    def fake_build(config, out, **kwargs):
        raise build_module.BuildError("nextpnr-ecp5 failed (exit code 1); log: x.log\ntail")

    monkeypatch.setattr(build_module, "build", fake_build)
    assert main(["build", "--out", str(tmp_path), "--quiet"]) == 2
    assert capsys.readouterr().err == ("hbfp-hw: error: nextpnr-ecp5 failed (exit code 1); "
                                       "log: x.log; tail\n")


def test_rows_make_a_systolic_array():
    args = build_parser().parse_args(["build", "--rows", "4", "--lanes", "4"])
    system = config_from_args(args).system
    assert (system.rows, system.lanes, system.multipliers, system.dsp_pes) == (4, 4, "lut", 9)
    assert system.macs_per_cycle == 256
    args = build_parser().parse_args(["build", "--rows", "2", "--lanes", "2", "--dsp-pes", "1"])
    assert config_from_args(args).system.dsp_pes == 1
    # The default board is the 4 x 4 array; the board's multipliers are fitted to the shape:
    # --rows 0 makes dot-product units (DSP multipliers, their deepest pipelines), a narrower
    # array has the DSP PEs it can use, a wider block fewer.
    default = config_from_args(build_parser().parse_args(["build"])).system
    assert (default.rows, default.lanes, default.dsp_pes, default.macs_per_cycle) == (4, 4, 9, 256)
    dot = config_from_args(build_parser().parse_args(["build", "--rows", "0"])).system
    assert (dot.rows, dot.lanes, dot.multipliers, dot.dsp_pes) == (0, 4, "dsp", None)
    assert dot.mac_stages == 6 and dot.macs_per_cycle == 64
    narrow = config_from_args(build_parser().parse_args(["build", "--lanes", "1"])).system
    assert (narrow.rows, narrow.lanes, narrow.dsp_pes) == (4, 1, 4)
    wide = config_from_args(build_parser().parse_args(["build", "--block-size", "32"])).system
    assert (wide.rows, wide.lanes, wide.dsp_pes) == (4, 4, 156 // 32)

"""The ``hbfp-hw`` parser and the shared argument helpers of :mod:`hbfp_hw.cli.args`."""

import argparse
import json
import subprocess
import sys

import pytest

from hbfp_hw.cli import COMMANDS, build_parser, main
from hbfp_hw.cli import args as cli_args


def test_parsing_imports_neither_torch_nor_cocotb():
    """`hbfp-hw --help` and every subcommand's parser stay light: torch, cocotb and matplotlib
    are imported by the commands that use them, when they run."""
    code = ("import sys; from hbfp_hw.cli import build_parser, COMMANDS; p = build_parser(); "
            "p.parse_args(['train', '--model', 'cnn']); p.parse_args(['verify']); "
            "p.parse_args(['sweep']); p.parse_args(['gemm']); "
            "print(sorted(m for m in ('torch', 'cocotb', 'matplotlib', 'hbfp_hw.sim.runner', "
            "'hbfp_hw.fpga.host.driver') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_subcommands_and_help(capsys):
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == COMMANDS
    assert main(["--help"]) == 0
    assert "COMMAND" in capsys.readouterr().out
    assert main([]) == 2
    assert capsys.readouterr().err == ("hbfp-hw: error: COMMAND is required\n")


def test_rtl_block_size_range_is_the_generators():
    from hbfp_hw.rtl_gen.common import RTL_BLOCK_SIZE_RANGE
    assert cli_args.RTL_BLOCK_SIZE_RANGE == RTL_BLOCK_SIZE_RANGE


def test_formats_and_demo(tmp_path, capsys):
    assert main(["formats", "--json", str(tmp_path / "f.json")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("preset ") and "bfp8        int8            8    16" in out
    assert "mxfp8_e4m3  e4m3fn          8    32" in out
    assert json.loads((tmp_path / "f.json").read_text())["presets"][0]["name"] == "bfp8"
    assert main(["demo", "--device", "none", "--m", "8", "--n", "8", "--k", "64",
                 "--json", str(tmp_path / "d.json")]) == 0
    assert "bfp8" in capsys.readouterr().out
    assert json.loads((tmp_path / "d.json").read_text())["offload_bit_exact"] is None


@pytest.mark.parametrize("url", ["sim", "sim://?lanes=4&instance=1", "sim://",
                                 "serial:///dev/ttyUSB0?baud=3000000", "serial://COM3",
                                 "tcp://127.0.0.1:7777", "tcp://[::1]:7777"])
def test_good_device_urls(url):
    assert cli_args.device_url()(url) == url


def test_listen_address():
    parse = cli_args.listen_address()
    assert parse("127.0.0.1:7777") == ("127.0.0.1", 7777)
    assert parse("[::1]:0") == ("::1", 0)
    assert parse(":80") == ("127.0.0.1", 80)


def test_output_paths(tmp_path):
    (tmp_path / "f").write_text("")
    assert cli_args.check_output_dir("--out", tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert cli_args.check_output_file("--json", tmp_path / "f") == tmp_path / "f"
    assert cli_args.check_output_file("--json", tmp_path / "new" / "x.json",
                                      create_parents=True)
    with pytest.raises(cli_args.UsageError, match=r"^--json: cannot write .* does not exist$"):
        cli_args.check_output_file("--json", tmp_path / "new" / "x.json")
    with pytest.raises(cli_args.UsageError, match=r"^--out must be a directory, not the file"):
        cli_args.check_output_dir("--out", tmp_path / "f")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_output_that_fails_late_is_one_line(tmp_path, monkeypatch, capsys):
    """An output that becomes unwritable after validation: one line, exit code 2."""
    monkeypatch.setattr(cli_args, "check_output_file", lambda *a, **k: None)
    assert main(["formats", "--json", str(tmp_path / "gone" / "f.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hbfp-hw: error: --json: cannot write ") and err.count("\n") == 1


def test_device_not_found_is_one_line(capsys):
    """gemm on a port where nothing listens: DeviceNotFound, one line, exit code 2."""
    assert main(["gemm", "--device", "tcp://127.0.0.1:1", "--m", "2", "--n", "2",
                 "--k", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hbfp-hw: error: ") and err.count("\n") == 1
    assert "Traceback" not in err


def test_parser_error_rewrites(capsys):
    p = cli_args.Parser(prog="hbfp-hw x")
    p.add_argument("--m", type=cli_args.positive_int("--m"))
    p.add_argument("--k", choices=["a", "b"])
    p.add_argument("--out", required=True)
    for argv, message in [(["--out", "o", "--m", "0"], "--m must be at least 1, not 0"),
                          (["--out", "o", "--m"], "--m needs a value"),
                          (["--out", "o", "--k", "c"], "--k must be one of a, b, not 'c'"),
                          ([], "--out is required")]:
        with pytest.raises(SystemExit) as info:
            p.parse_args(argv)
        assert info.value.code == 2
        assert capsys.readouterr().err == f"hbfp-hw x: error: {message}\n"
    assert cli_args.one_line("a\n\n b \n") == "a; b"

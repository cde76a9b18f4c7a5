"""``hbfp-hw generate`` through the real entry point: files, JSON, and its errors."""

import json
import subprocess
import sys

import pytest


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "hbfp_hw.cli", *args],
                          capture_output=True, text=True)


def test_generate(tmp_path):
    proc = _cli("generate", "--format", "bfp8", "--rounding", "stochastic", "--unit", "align",
                "--out", str(tmp_path / "ip"), "--json", str(tmp_path / "d.json"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("generated hbfp_align_w8b16_sr_fp32 (FloatToBlock)")
    d = json.loads((tmp_path / "d.json").read_text())
    assert d["format"]["rounding"] == "stochastic"
    assert {p["name"] for p in d["ports"]} >= {"seed", "reseed"}
    assert (tmp_path / "ip" / "hbfp_align_w8b16_sr_fp32.v").exists()


@pytest.mark.parametrize("args, message", [
    (["--mantissa-bits", "17", "--block-size", "16"],
     "--mantissa-bits must be between 2 and 16, not 17"),
    (["--mantissa-bits", "8", "--block-size", "128"],
     "--block-size must be a power of two between 2 and 64 for the RTL, not 128"),
    (["--mantissa-bits", "8", "--block-size", "12"],
     "--block-size must be a power of two between 2 and 64 for the RTL, not 12"),
    (["--format", "bfp8", "--unit", "mac", "--channels", "3"],
     "--unit mac takes --stages, not --channels"),
    (["--format", "bfp8", "--unit", "mac", "--stages", "99"],
     "--stages must be between 0 and"),
    (["--format", "bfp9"], "--format must be one of bfp8, mxint8, bfp2, bfp4, bfp6, bfp12, "
                           "bfp16, mxfp8_e4m3, mxfp8_e5m2, mxfp6_e3m2, mxfp6_e2m3, mxfp4_e2m1, "
                           "bm8_e2m5, bm8_e4m3, bm6_e2m3, bm6_e3m2, not 'bfp9'"),
    (["--format", "bfp8", "--scale-rule", "ceil"],
     "--scale-rule must be 'floor' for integer elements, not 'ceil'"),
    (["--format", "mxfp8_e4m3", "--unit", "align", "--stages", "12"],
     "--stages must be between 0 and 11, not 12"),
    (["--block-size", "16"], "--mantissa-bits and --block-size are required (or give --format)"),
])
def test_generate_errors(tmp_path, args, message):
    proc = _cli("generate", *args, "--out", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"hbfp-hw generate: error: {message}")
    assert proc.stderr.count("\n") == 1
    assert not list(tmp_path.iterdir())        # nothing half-written

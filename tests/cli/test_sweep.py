# amaranth: UnusedElaboratable=no
"""``hbfp-hw sweep``: arguments and the points they make. The sweep flow itself, through the
command as well, is tested against fake tools in tests/fpga/test_sweep.py."""

import pytest

from hbfp_hw.cli import build_parser, main
from hbfp_hw.cli.sweep import build_points
from hbfp_hw.formats import BFPFormat
from hbfp_hw.fpga.sweep import resolve_params


@pytest.mark.parametrize("argv, message", [
    (["--mantissa-bits", "4,20"], "--mantissa-bits must be between 2 and 16, not 20"),
    (["--block-size", "3"],
     "--block-size must be a power of two between 2 and 64 for the RTL, not 3"),
    (["--block-size", "8,x"], "--block-size takes comma-separated integers, not 'x'"),
    (["--stages", "deep=1"], "--stages parameter must be one of"),
    (["--fill", "1.5"], "--fill must be in (0, 1], not 1.5"),
    (["--target", "ecp5-25f"], "--target must be one of ecp5-85f, ice40-up5k, not 'ecp5-25f'"),
    (["--stages", "mac_stages=9", "--block-size", "8"],
     "--stages: mac_stages must be between 0 and 5 for block size 8, not 9"),
    (["--io", "ooc", "--target", "ice40-up5k"],
     "--io ooc needs nextpnr --out-of-context, which ice40-up5k does not support; "
     "use --io serial"),
    (["--full-chip", "bfp9"],
     "--full-chip must be 'none', a preset name or wWbN (such as w8b16), not 'bfp9'"),
])
def test_argument_errors(argv, message, capsys):
    assert main(["sweep", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hbfp-hw sweep: error: {message}") and err.count("\n") == 1


def test_stage_defaults_follow_the_target():
    """Without --stages: the deepest pipelines on the ECP5, the defaults on the UP5K (the
    deepest do not fit it); --stages items override the target's choice."""

    def params(*argv):
        args = build_parser().parse_args(["sweep", "--mantissa-bits", "4", "--block-size", "8",
                                          "--full-chip", "none", *argv])
        return [dict(p.params) for p in build_points(args)[0]]

    assert params() == [dict(resolve_params("fp32-baseline")),
                        dict(resolve_params("dot", BFPFormat(4, 8)))]
    deepest = params()[1]
    base, dot = params("--target", "ice40-up5k")
    assert dot == {"align_stages": 2, "mac_stages": 2, "convert_stages": 3, "adder_stages": 3}
    assert base == dict(resolve_params("fp32-baseline", None, {"mul_stages": "default",
                                                               "adder_stages": "default"}))
    assert params("--target", "ice40-up5k", "--stages", "mac_stages=max")[1] == {
        **dot, "mac_stages": deepest["mac_stages"]}
    assert params("--stages", "default")[1] == dot

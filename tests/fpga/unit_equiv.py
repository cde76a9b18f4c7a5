# amaranth: UnusedElaboratable=no
"""Prove the netlists of single units equivalent across two commits with Yosys.

``python tests/fpga/unit_equiv.py write DIR [NAME ...]`` elaborates each configuration of
:func:`configurations` (a :class:`~hbfp_hw.rtl_gen.float_to_block.FloatToBlock` for each input
format over a grid of formats and stage counts, and the
:class:`~hbfp_hw.fpga.system.array.GemmEngine` of each preset plus one-lane engines) and
writes its RTLIL, without ``src`` attributes, to ``DIR/<name>.il``; run it on both commits,
each with its own checkout and venv (``OLD/.venv/bin/python NEW/tests/fpga/unit_equiv.py
write DIR`` elaborates the old tree's units). ``python tests/fpga/unit_equiv.py check OLD NEW
[NAME ...]`` then proves each configuration with :func:`gemm_system_equiv.check`: identical
RTLIL, or else the unit flattened (the engine's block dot-product units, which it does not
change, compared as identical RTLIL and kept as black boxes), the new names renamed to the old
ones and ``equiv_simple``/``equiv_induct`` run to ``equiv_status -assert``.
``python tests/fpga/unit_equiv.py list`` prints the configurations.
"""

import argparse
import hashlib
import sys
from pathlib import Path

from amaranth.back import rtlil

from hbfp_hw.formats import BFP8, BFPFormat, FloatFormat, Rounding
from hbfp_hw.rtl_gen.common import TargetFamily

try:
    from . import gemm_system_equiv as equiv
except ImportError:                     # run as a script: its folder is on sys.path
    import gemm_system_equiv as equiv

TOP = "unit"
#: The engine's submodules that the refactoring keeps (compared as identical RTLIL).
ENGINE_LEAVES = tuple(f"unit{lane}" for lane in range(64))

_RNE, _RTZ, _SR = Rounding.NEAREST_EVEN, Rounding.TOWARD_ZERO, Rounding.STOCHASTIC

#: (format, stage counts; None: the deepest) of the FloatToBlock grid, each for every input
#: format: bfp8 at the presets' depths (2: the default, 11: the ULX3S) and the extremes of
#: mantissa width, block size, exponent width and rounding.
QUANTIZER_GRID = (
    (BFP8, (0, 2, 5, None)),
    (BFPFormat(8, 16, _RTZ), (2, None)),
    (BFPFormat(8, 16, _SR), (2, None)),
    (BFPFormat(4, 4), (0, 2, None)),
    (BFPFormat(2, 2, _RNE, 2), (0, None)),
    (BFPFormat(16, 64, _SR), (2, None)),
    (BFPFormat(16, 64, _RNE, 5), (None,)),
    (BFPFormat(12, 8, _RTZ, 4), (3,)),
    (BFPFormat(3, 32, _SR, 3), (4,)),
)


def _quantizers():
    from hbfp_hw.rtl_gen.float_to_block import FloatToBlock
    out = {}
    for fmt, stage_counts in QUANTIZER_GRID:
        for stages in stage_counts:
            stages = FloatToBlock.max_stages_for(fmt) if stages is None else stages
            for input_format in FloatFormat:
                name = f"float_to_block-{fmt.name}-{input_format.value}-s{stages}"
                out[name] = ((lambda f=fmt, i=input_format, s=stages:
                              FloatToBlock(f, input_format=i, stages=s)), None, ())
    return out


def _engines():
    from hbfp_hw.fpga.boards import deepest_stages
    from hbfp_hw.fpga.config import PRESETS
    from hbfp_hw.fpga.system.array import GemmEngine
    # The dot-product engine of each preset (the ULX3S and the simulated board default to a
    # systolic array; the ULX3S's dot engine has the deepest unit pipelines).
    dot = dict(rows=0, multipliers="dsp", dsp_pes=None)
    ulx3s = PRESETS["ulx3s-85f"].replace(
        **dot, **deepest_stages(PRESETS["ulx3s-85f"].fmt, array=False))
    sim = PRESETS["sim"].replace(**dot)
    configs = {"ulx3s-85f": (ulx3s, "ecp5"), "icebreaker": (PRESETS["icebreaker"], "ice40"),
               "sim": (sim, None)}
    configs["lanes1-ecp5"] = (ulx3s.replace(lanes=1), "ecp5")
    configs["lanes1-sim"] = (sim.replace(lanes=1), None)
    configs["channels8-sim"] = (sim.replace(channels=8), None)
    out = {}
    for name, (cfg, family) in configs.items():
        def make(cfg=cfg):
            return GemmEngine(cfg.fmt, lanes=cfg.lanes, channels=cfg.channels,
                              a_blocks=cfg.a_blocks, b_blocks=cfg.b_blocks, c_words=cfg.c_words,
                              mac_stages=cfg.mac_stages, convert_stages=cfg.convert_stages,
                              adder_stages=cfg.adder_stages)
        platform = TargetFamily(family) if family else None
        out[f"gemm_engine-{name}"] = (make, platform, ENGINE_LEAVES)
    return out


def configurations():
    """Return ``{name: (make, platform, leaves)}``: ``make()`` builds the unit, ``leaves`` names
    its submodules that must be identical (black boxes in the proof)."""
    return {**_quantizers(), **_engines()}


def netlist(unit, platform):
    """Return the RTLIL of ``unit`` elaborated for ``platform``, without ``src`` attributes."""
    return rtlil.convert(unit, name=TOP, platform=platform, emit_src=False)


def write(out, names=None):
    """Write ``out/<name>.il`` for each configuration; print its SHA-256."""
    Path(out).mkdir(parents=True, exist_ok=True)
    configs = configurations()
    for name in names or configs:
        make, platform, _ = configs[name]
        text = netlist(make(), platform)
        (Path(out) / f"{name}.il").write_text(text)
        print(name, hashlib.sha256(text.encode()).hexdigest(), flush=True)


def check(old_dir, new_dir, name, seq=4, work=None, force=False):
    """Prove configuration ``name``'s netlists equivalent; return the report (see
    :func:`gemm_system_equiv.check`)."""
    leaf_names = configurations()[name][2]
    return equiv.check(old_dir, new_dir, name, seq=seq, work=work, force=force, top=TOP,
                       leaf_names=leaf_names)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list")
    w = sub.add_parser("write")
    w.add_argument("dir")
    w.add_argument("names", nargs="*")
    c = sub.add_parser("check")
    c.add_argument("old")
    c.add_argument("new")
    c.add_argument("names", nargs="*")
    c.add_argument("--seq", type=int, default=4)
    c.add_argument("--force", action="store_true",
                   help="run the proof even when the RTLIL texts are identical")
    args = parser.parse_args(argv)
    if args.cmd == "list":
        print("\n".join(configurations()))
        return 0
    if args.cmd == "write":
        write(args.dir, args.names)
        return 0
    return equiv.check_all(args.names or configurations(),
                           lambda name: check(args.old, args.new, name, seq=args.seq,
                                              force=args.force))


if __name__ == "__main__":
    sys.exit(main())

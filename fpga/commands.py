"""``hbfp-hw build``: bitstream for a board, resource/timing report, optional programming."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from hbfp_hw.cliargs import positive_float, positive_int

__all__ = ["register", "cmd_build", "default_out_dir", "config_from_args", "format_report"]


def register(subparsers):
    """Add the ``build`` subcommand (imports of the gateware are deferred to its run)."""
    from .boards import BOARDS, DEFAULT_BAUD, DEFAULT_BOARD
    from .build import DEFAULT_SEED, DEFAULT_SEED_ATTEMPTS

    boards = ", ".join(f"{name} ({spec.device}: {spec.fmt.name}, {spec.lanes} lane(s), "
                       f"{spec.clock_mhz:g} MHz)" for name, spec in BOARDS.items())
    p = subparsers.add_parser(
        "build", help="build an FPGA bitstream (ULX3S 85F or iCEBreaker)",
        description="Build the GEMM system for a board with the YoWASP toolchain (Yosys, "
                    "nextpnr, ecppack/icepack), report LUT/FF/DSP/BRAM use and the Fmax of "
                    "each clock, and optionally program the board. Timing failure is an "
                    f"error. Boards and their defaults: {boards}.")
    p.add_argument("--board", choices=sorted(BOARDS), default=DEFAULT_BOARD,
                   help=f"target board (default {DEFAULT_BOARD})")
    p.add_argument("--format", metavar="PRESET",
                   help="BFP preset to start from (default: the board's)")
    p.add_argument("--mantissa-bits", type=positive_int("--mantissa-bits"), metavar="W",
                   help="element width w, sign included")
    p.add_argument("--block-size", type=positive_int("--block-size"), metavar="N",
                   help="elements per block")
    p.add_argument("--lanes", type=positive_int("--lanes"), metavar="L",
                   help="dot-product lanes (the array size)")
    p.add_argument("--clock-mhz", type=positive_float("--clock-mhz"), metavar="F",
                   help="compute clock in MHz (PLL output)")
    p.add_argument("--baud", type=positive_int("--baud"), default=DEFAULT_BAUD,
                   help=f"UART baud rate (default {DEFAULT_BAUD})")
    p.add_argument("--input-format", choices=["fp32", "bf16"],
                   help="float format of the operands on the link (default: the board's)")
    p.add_argument("--seed", type=build_seed, metavar="S",
                   help=f"nextpnr placement seed of the first attempt (default {DEFAULT_SEED})")
    p.add_argument("--seed-attempts", type=positive_int("--seed-attempts", 100), metavar="N",
                   default=DEFAULT_SEED_ATTEMPTS,
                   help="when timing fails, place and route again with the next seed, up to "
                        f"N runs in all (default {DEFAULT_SEED_ATTEMPTS}; 1: no retry)")
    p.add_argument("--out", metavar="DIR",
                   help="build directory (default: a per-configuration directory under "
                        "$XDG_CACHE_HOME/hbfp-hw/builds)")
    p.add_argument("--json", metavar="PATH", help="write the build report as JSON")
    p.add_argument("--program", action="store_true",
                   help="load the bitstream into the board (openFPGALoader / iceprog)")
    p.add_argument("--allow-timing-fail", action="store_true",
                   help="report a timing failure but exit 0")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=cmd_build)


def build_seed(text):
    """``type=`` for ``--seed``: an integer in ``[0, 2**31 - 101]`` (room for the retries)."""
    import argparse
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seed must be an integer, not {text!r}") from None
    if not 0 <= value <= 2**31 - 101:
        raise argparse.ArgumentTypeError(f"--seed must be in [0, {2**31 - 101}], not {value}")
    return value


def config_from_args(args):
    """Turn parsed ``build`` arguments into a :class:`~hbfp_hw.fpga.boards.BuildConfig`."""
    from hbfp_hw.formats import BFPFormat, resolve_format

    from .boards import BOARDS, BuildConfig

    fmt = BOARDS[args.board].fmt if args.format is None else resolve_format(args.format)
    if args.mantissa_bits is not None or args.block_size is not None:
        fmt = BFPFormat(args.mantissa_bits or fmt.mantissa_bits,
                        args.block_size or fmt.block_size, rounding=fmt.rounding,
                        exponent_bits=fmt.exponent_bits)
    return BuildConfig.for_board(args.board, fmt=fmt, lanes=args.lanes,
                                 clock_mhz=args.clock_mhz, baud=args.baud,
                                 input_format=args.input_format)


def default_out_dir(config):
    """Per-configuration build directory under the user's cache (never the working dir)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    f = config.fmt
    name = (f"{config.board}-w{f.mantissa_bits}-n{f.block_size}-{f.rounding.value}"
            f"-{config.input_format}-l{config.lanes}-{config.clock_mhz:g}mhz-{config.baud}")
    return cache / "hbfp-hw" / "builds" / name


def format_report(report):
    """Return the human-readable summary of a build report."""
    c = report["config"]
    r = report["resources"]
    f = c["format"]
    lines = [
        f"board     {c['board']} ({c['device']})",
        f"config    {f['name']} (w={f['mantissa_bits']}, block {f['block_size']}, "
        f"{f['rounding']}), {c['input_format']} in, {c['lanes']} lane(s), "
        f"clock {c['clock_mhz']:.3f} MHz, UART {c['baud']} baud",
    ]
    lut = f"LUT4 {r['lut']}"
    if "logic_cells" in r:
        lut += (f" ({r['logic_cells']}/{r['logic_cells_total']} logic cells, "
                f"{100 * r['logic_cells'] / r['logic_cells_total']:.1f}%)")
    lines.append(f"resources {lut}, FF {r['ff']}, DSP {r['dsp']}, BRAM {r['bram']}, "
                 f"carry {r['carry']}")
    for clock in report["clocks"]:
        verdict = "PASS" if clock["passed"] else "FAIL"
        lines.append(f"clock     {clock['name']}: Fmax {clock['fmax_mhz']:.2f} MHz "
                     f"(target {clock['target_mhz']:.2f} MHz) {verdict}")
    timing = {True: "met", False: "FAILED", None: "unknown (no clock reported)"}
    lines.append(f"timing    {timing[report['timing_passed']]}")
    if "seed" in report:
        lines.append(f"seed      {report['seed']} ({_attempts_text(report)})")
    lines.append(f"bitstream {report['bitstream']}")
    lines.append(f"time      {report['total_seconds']:.1f} s ("
                 + ", ".join(f"{s['tool']} {s['seconds']:.1f} s" for s in report["stages"])
                 + ")")
    return "\n".join(lines)


def _attempts_text(report):
    """"1 placement" or "3 placements: seed 1 90.64 MHz, seed 2 ..." from a build report."""
    attempts = report.get("seed_attempts") or []
    if len(attempts) <= 1:
        return "1 placement"
    return f"{len(attempts)} placements: " + ", ".join(
        f"seed {a['seed']} " + ("-" if a["fmax_mhz"] is None else f"{a['fmax_mhz']:.2f} MHz")
        for a in attempts)


def _write_json(path, payload):
    if path:
        with open(path, "w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
        print(f"wrote {path}")


def cmd_build(args):
    from .boards import BOARDS
    from .build import BuildError, TimingError, build, program, programmer_missing_reason

    try:
        config = config_from_args(args)
    except (TypeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    spec = BOARDS[config.board]
    if args.program:
        # Say so before a long build, not after it.
        reason = programmer_missing_reason(spec.programmer)
        if reason is not None:
            print(f"error: --program: {reason}", file=sys.stderr)
            return 2
    out = Path(args.out) if args.out else default_out_dir(config)
    print(f"hbfp-hw build: {config.board}, {config.fmt.name}, {config.lanes} lane(s), "
          f"{config.clock_hz / 1e6:.3f} MHz -> {out}", flush=True)
    try:
        result = build(config, out, progress=not args.quiet, seed=args.seed,
                       seed_attempts=args.seed_attempts)
    except TimingError as e:
        print(format_report(e.report))
        _write_json(args.json, e.report)
        clock = e.clock
        print(f"error: timing failed: critical clock {clock['name']!r} reaches "
              f"{clock['fmax_mhz']:.2f} MHz, {clock['target_mhz']:.2f} MHz required "
              f"after {_attempts_text(e.report)} (lower --clock-mhz or --lanes, or try "
              f"more --seed-attempts; logs in {out})", file=sys.stderr)
        return 0 if args.allow_timing_fail else 1
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_report(result.report))
    _write_json(args.json, result.report)
    if args.program:
        try:
            argv = program(config.board, result.bitstream)
        except BuildError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"programmed: {' '.join(argv)}")
    return 0

"""``hbfp-hw build``: bitstream for a board, resource/timing report, optional programming."""

from __future__ import annotations

import sys
from pathlib import Path

from hbfp_hw.formats import MANTISSA_BITS_RANGE

from . import args as cli_args

__all__ = ["add_parser", "validate", "run", "config_from_args", "BUILD_SEED_MAX"]

#: Largest first nextpnr seed (room for the retries below 2**31).
BUILD_SEED_MAX = 2**31 - 101

#: DSP multipliers of each board's part (MULT18X18D, SB_MAC16): a PE of a systolic array takes
#: one per block element.

#: Python names in the errors of BuildConfig and GemmSystem, and their flags.
FLAGS = {"lanes": "--lanes", "rows": "--rows", "dsp_pes": "--dsp-pes",
         "clock_mhz": "--clock-mhz", "baud": "--baud",
         "mantissa_bits": "--mantissa-bits", "block_size": "--block-size",
         "input_format": "--input-format", "board": "--board"}


def add_parser(sub):
    from hbfp_hw.fpga.boards import BOARDS, DEFAULT_BAUD, DEFAULT_BOARD
    from hbfp_hw.fpga.boards.build import DEFAULT_SEED, DEFAULT_SEED_ATTEMPTS

    w_lo, w_hi = MANTISSA_BITS_RANGE
    n_lo, n_hi = cli_args.RTL_BLOCK_SIZE_RANGE
    def shape(system):
        return (f"{system.rows} x {system.lanes} PEs" if system.rows
                else f"{system.lanes} lane(s)")

    boards = ", ".join(f"{name} ({spec.device}: {spec.fmt.name}, {shape(spec.system)}, "
                       f"{spec.clock_mhz:g} MHz)" for name, spec in BOARDS.items())
    p = sub.add_parser(
        "build", help="build an FPGA bitstream (ULX3S 85F or iCEBreaker)",
        description="Build the GEMM system for a board with the YoWASP toolchain (Yosys, "
                    "nextpnr, ecppack/icepack), report LUT/FF/DSP/BRAM use and the Fmax of "
                    "each clock, and optionally program the board. Timing failure is an "
                    f"error. Boards and their defaults: {boards}.")
    p.add_argument("--board", choices=sorted(BOARDS), default=DEFAULT_BOARD,
                   help=f"target board (default {DEFAULT_BOARD})")
    p.add_argument("--format", metavar="PRESET", type=cli_args.format_preset(),
                   help="BFP preset to start from (default: the board's)")
    p.add_argument("--mantissa-bits", type=cli_args.integer("--mantissa-bits", w_lo, w_hi),
                   metavar="W", help=f"element width w, sign included ({w_lo}..{w_hi})")
    p.add_argument("--block-size", metavar="N",
                   type=cli_args.integer("--block-size", n_lo, n_hi, power_of_two=True,
                                         why=" for the RTL"),
                   help=f"elements per block (a power of two, {n_lo}..{n_hi})")
    p.add_argument("--lanes", type=cli_args.positive_int("--lanes"), metavar="L",
                   help="columns of the systolic array (or dot-product lanes with --rows 0)")
    p.add_argument("--rows", type=cli_args.integer("--rows", 0, 64), metavar="R",
                   help="rows of the systolic array (k-blocks per pass), 1..64; 0: "
                        "dot-product units instead of an array")
    p.add_argument("--dsp-pes", type=cli_args.integer("--dsp-pes", 0, 4096), metavar="N",
                   help="with --rows: PEs whose multipliers are DSP blocks, the others in "
                        "logic (default: as many as the part's DSPs hold)")
    p.add_argument("--clock-mhz", type=cli_args.positive_float("--clock-mhz"), metavar="F",
                   help="compute clock in MHz (PLL output)")
    p.add_argument("--baud", type=cli_args.positive_int("--baud"), default=DEFAULT_BAUD,
                   help=f"UART baud rate (default {DEFAULT_BAUD})")
    p.add_argument("--input-format", choices=["fp32", "bf16"],
                   help="float format of the operands on the link (default: the board's)")
    p.add_argument("--seed", type=cli_args.seed("--seed", BUILD_SEED_MAX), metavar="S",
                   help=f"nextpnr placement seed of the first attempt (default {DEFAULT_SEED})")
    p.add_argument("--seed-attempts", type=cli_args.positive_int("--seed-attempts", 100),
                   metavar="N", default=DEFAULT_SEED_ATTEMPTS,
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
    return p


def config_from_args(args):
    """Turn parsed ``build`` arguments into a :class:`~hbfp_hw.fpga.boards.BuildConfig`."""
    from hbfp_hw.formats import BFPFormat, resolve_format
    from hbfp_hw.fpga.boards import BOARDS, BuildConfig

    fmt = BOARDS[args.board].fmt if args.format is None else resolve_format(args.format)
    if args.mantissa_bits is not None or args.block_size is not None:
        fmt = BFPFormat(args.mantissa_bits or fmt.mantissa_bits,
                        args.block_size or fmt.block_size, rounding=fmt.rounding,
                        exponent_bits=fmt.exponent_bits)
    system = BOARDS[args.board].system
    changes = {"rows": system.rows if args.rows is None else args.rows}
    if args.dsp_pes is not None:
        changes["dsp_pes"] = args.dsp_pes
    return BuildConfig.for_board(args.board, fmt=fmt, lanes=args.lanes,
                                 clock_mhz=args.clock_mhz, baud=args.baud,
                                 input_format=args.input_format, **changes)


def _config_error(exc):
    text = cli_args.one_line(exc)
    if "PLL" in text:
        return f"--clock-mhz: {text}"
    if text.startswith("Baud rate"):
        return f"--baud: {text} (change --baud or --clock-mhz)"
    return cli_args.flag_message(exc, {**FLAGS, "": "--board"})


def validate(args):
    from hbfp_hw.fpga.boards.boards import BOARDS, default_system
    from hbfp_hw.fpga.boards.build import programmer_missing_reason

    try:
        config = config_from_args(args)
        cli_args.check_rtl_block_size("--format" if args.block_size is None else "--block-size",
                                      config.fmt)
        # Construct (not elaborate) the system the build will make: it checks --lanes and
        # the format against the gateware, in well under a second.
        with cli_args.constructed_only():
            default_system(config)
    except (TypeError, ValueError) as e:
        raise cli_args.UsageError(_config_error(e)) from None
    if args.program:
        # Say so before a long build, not after it.
        reason = programmer_missing_reason(BOARDS[config.board].programmer)
        if reason is not None:
            raise cli_args.UsageError(f"--program: {reason}")
    cli_args.check_output_dir("--out", args.out)
    cli_args.check_output_file("--json", args.json)
    args.config = config


def run(args):
    from hbfp_hw.fpga.boards import build_report
    from hbfp_hw.fpga.boards.build import BuildError, TimingError, build, program

    config = args.config
    out = Path(args.out) if args.out else build_report.default_out_dir(config)
    shape = (f"{config.system.rows} x {config.lanes} PEs" if config.system.rows
             else f"{config.lanes} lane(s)")
    print(f"hbfp-hw build: {config.board}, {config.fmt.name}, {shape}, "
          f"{config.clock_hz / 1e6:.3f} MHz -> {out}", flush=True)
    try:
        result = build(config, out, progress=not args.quiet, seed=args.seed,
                       seed_attempts=args.seed_attempts)
    except TimingError as e:
        print(build_report.format_report(e.report))
        cli_args.write_json(args.json, e.report)
        clock = e.clock
        print(f"error: timing failed: critical clock {clock['name']!r} reaches "
              f"{clock['fmax_mhz']:.2f} MHz, {clock['target_mhz']:.2f} MHz required "
              f"after {build_report.attempts_text(e.report)} (lower --clock-mhz or --lanes, "
              f"or try more --seed-attempts; logs in {out})", file=sys.stderr)
        return 0 if args.allow_timing_fail else 1
    except ValueError as e:
        raise BuildError(str(e)) from None
    print(build_report.format_report(result.report))
    cli_args.write_json(args.json, result.report)
    if args.program:
        argv = program(config.board, result.bitstream)
        print(f"programmed: {' '.join(argv)}")
    return 0

"""Arguments of one RTL unit, shared by ``hbfp-hw generate`` and ``hbfp-hw verify``: the
unit, its format (:func:`~hbfp_hw.cli.args.add_format_arguments`) and its hardware
parameters, checked by constructing the unit before any file is written."""

from __future__ import annotations

from . import args as cli_args

__all__ = ["HW_ARGS", "add_unit_arguments", "check_unit"]

#: Hardware parameters of the units (``--channels``, ``--stages``...) and their help.
HW_ARGS = {
    "channels": "running sums interleaved by the accumulator",
    "stages": "pipeline registers (align, mac, to-float)",
    "align_stages": "quantizer pipeline registers (dot)",
    "mac_stages": "MacTree pipeline registers (dot)",
    "convert_stages": "BlockToFloat pipeline registers (dot)",
    "adder_stages": "FP32 adder pipeline registers (dot, accumulator, fp32-baseline)",
    "mul_stages": "FP32 multiplier pipeline registers (fp32-baseline)",
}

#: Python names of the unit parameters and the flags that set them.
FLAGS = {name: "--" + name.replace("_", "-") for name in (
    *HW_ARGS, "mantissa_bits", "block_size", "exponent_bits", "rounding", "input_format")}


def _flag(name):
    return "--" + name.replace("_", "-")


def add_unit_arguments(p, units, *, unit_help=None):
    """Add the format arguments, ``--unit`` and the hardware parameters."""
    cli_args.add_format_arguments(p)
    p.add_argument("--unit", default="dot", choices=list(units), help=unit_help)
    for name, text in HW_ARGS.items():
        lo = 1 if name == "channels" else 0
        p.add_argument(_flag(name), type=cli_args.integer(_flag(name), lo), default=None,
                       metavar="N", help=text)


def check_unit(args, fault=None):
    """Check the unit arguments by constructing the unit; set ``args.fmt`` and ``args.hw``.

    Raises
    ------
    UsageError
        Naming the flag of the first bad parameter.
    """
    from hbfp_hw.rtl_gen.generate import FORMAT_FREE_UNITS, UNITS, build_unit

    fmt = None if args.unit in FORMAT_FREE_UNITS else cli_args.format_from_args(args)
    hw = {k: getattr(args, k) for k in HW_ARGS if getattr(args, k) is not None}
    allowed = UNITS[args.unit][1]
    bad = [k for k in hw if k not in allowed]
    if bad:
        raise cli_args.UsageError(
            f"--unit {args.unit} takes {', '.join(_flag(a) for a in allowed)}, "
            f"not {', '.join(_flag(b) for b in bad)}")
    try:
        with cli_args.constructed_only():
            component = build_unit(args.unit, fmt, input_format=args.input_format, **hw)
            if fault is not None:
                from hbfp_hw.sim.mutants import inject
                try:
                    inject(component, fault)
                except ValueError as e:
                    raise cli_args.UsageError(f"--inject-fault {fault}: {e}") from None
    except (TypeError, ValueError) as e:
        raise cli_args.UsageError(cli_args.flag_message(e, {**FLAGS, "": "--unit"})) from None
    args.fmt, args.hw = fmt, hw

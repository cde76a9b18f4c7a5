"""``hbfp-hw generate``: emit a unit as Verilog + JSON port map + FuseSoC core."""

from __future__ import annotations

import json
import sys

from hbfp_hw.formats import PRESETS, BFPFormat, FloatFormat, Rounding, resolve_format

from .generate import FORMAT_FREE_UNITS, UNITS

__all__ = ["register", "add_format_arguments", "format_from_args", "add_hw_arguments",
           "hw_from_args"]


def add_format_arguments(p):
    """Add --mantissa-bits/--block-size/--rounding/--exponent-bits/--format/--input-format."""
    p.add_argument("--format", metavar="PRESET",
                   help=f"format preset ({', '.join(PRESETS)}); overrides the fields below")
    p.add_argument("--mantissa-bits", type=int, metavar="W", help="element width, 2..16")
    p.add_argument("--block-size", type=int, metavar="N", help="block size, power of two 2..64")
    p.add_argument("--rounding", default=None, choices=[r.value for r in Rounding],
                   help="default nearest-even (or the preset's)")
    p.add_argument("--exponent-bits", type=int, default=None, metavar="E",
                   help="shared-exponent width, 2..8 (default 8, or the preset's)")
    p.add_argument("--input-format", default="fp32", choices=[f.value for f in FloatFormat])


def format_from_args(p, args):
    """Build the BFPFormat from parsed arguments; report bad values through ``p.error``."""
    try:
        overrides = {k: v for k, v in (("rounding", args.rounding),
                                       ("exponent_bits", args.exponent_bits)) if v is not None}
        if args.format:
            if args.mantissa_bits is not None or args.block_size is not None:
                p.error("give either --format or --mantissa-bits/--block-size, not both")
            return resolve_format(args.format).replace(**overrides)
        if args.mantissa_bits is None or args.block_size is None:
            p.error("--mantissa-bits and --block-size are required (or give --format)")
        return BFPFormat(args.mantissa_bits, args.block_size, **overrides)
    except (TypeError, ValueError) as exc:
        name = str(exc).split(" ", 1)[0]
        flag = "--" + name.replace("_", "-") if name.isidentifier() else ""
        p.error(f"{flag + ': ' if flag else ''}{exc}")


_HW_ARGS = {
    "channels": "running sums interleaved by the accumulator",
    "stages": "pipeline registers (align, mac, to-float)",
    "align_stages": "FloatToBlock pipeline registers (dot)",
    "mac_stages": "MacTree pipeline registers (dot)",
    "convert_stages": "BlockToFloat pipeline registers (dot)",
    "adder_stages": "FP32 adder pipeline registers (dot, accumulator, fp32-baseline)",
    "mul_stages": "FP32 multiplier pipeline registers (fp32-baseline)",
}


def add_hw_arguments(p):
    for name, text in _HW_ARGS.items():
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None, help=text)


def hw_from_args(p, args, unit):
    """Return the hardware parameters given on the command line, checked against ``unit``."""
    hw = {k: getattr(args, k) for k in _HW_ARGS if getattr(args, k) is not None}
    allowed = UNITS[unit][1]
    bad = [k for k in hw if k not in allowed]
    if bad:
        p.error(f"--unit {unit} takes {', '.join('--' + a.replace('_', '-') for a in allowed)}, "
                f"not {', '.join('--' + b.replace('_', '-') for b in bad)}")
    return hw


def cmd_generate(p, args):
    from hbfp_hw.rtl_gen.generate import emit

    fmt = None if args.unit in FORMAT_FREE_UNITS else format_from_args(p, args)
    hw = hw_from_args(p, args, args.unit)
    try:
        desc = emit(args.unit, fmt, args.out, input_format=args.input_format, **hw)
    except (TypeError, ValueError) as exc:
        p.error(str(exc))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    lint = desc.get("lint")
    lint_text = ("lint: verilator not available" if lint is None else
                 f"lint: {lint['errors']} errors, warnings "
                 f"{', '.join(f'{k}={v}' for k, v in sorted(lint['warnings'].items())) or 'none'}"
                 " (documented in docs/units.md)")
    print(f"generated {desc['module']} ({desc['class']}): latency {desc['latency']} cycles, "
          f"throughput {desc['throughput']}/cycle")
    for kind, path in desc["files"].items():
        print(f"  {kind:8} {path}")
    print(f"  {lint_text}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(desc, f, indent=2)
            f.write("\n")
    return 0


def register(sub):
    p = sub.add_parser(
        "generate", help="emit a unit as Verilog, a JSON port map and a FuseSoC core",
        description="Generate synthesizable Verilog for a BFP unit, a JSON description of its "
                    "ports, latency and throughput, and a FuseSoC .core file.")
    add_format_arguments(p)
    p.add_argument("--unit", default="dot", choices=list(UNITS),
                   help="which unit (default: dot, the whole dot-product unit)")
    add_hw_arguments(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--json", metavar="PATH", help="also write the description here")
    p.set_defaults(func=lambda args: cmd_generate(p, args))

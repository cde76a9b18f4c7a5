"""``hbfp-hw generate``: emit a unit as Verilog + JSON port map + FuseSoC core."""

from __future__ import annotations

import sys

from . import args as cli_args
from .units import add_unit_arguments, check_unit

__all__ = ["add_parser", "validate", "run"]


def add_parser(sub):
    from hbfp_hw.rtl_gen.generate import UNITS

    p = sub.add_parser(
        "generate", help="emit a unit as Verilog, a JSON port map and a FuseSoC core",
        description="Generate synthesizable Verilog for a BFP unit, a JSON description of its "
                    "ports, latency and throughput, and a FuseSoC .core file.")
    add_unit_arguments(p, UNITS, unit_help="which unit (default: dot, the whole dot-product "
                                           "unit)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--json", metavar="PATH", help="also write the description here")
    return p


def validate(args):
    check_unit(args)
    cli_args.check_output_dir("--out", args.out)
    cli_args.check_output_file("--json", args.json)


def run(args):
    from hbfp_hw.rtl_gen.generate import emit

    try:
        desc = emit(args.unit, args.fmt, args.out, input_format=args.input_format, **args.hw)
    except ValueError as e:
        raise cli_args.CommandError(str(e)) from None
    except OSError as e:
        raise cli_args.CommandError(f"--out: cannot write {args.out!r}: {e.strerror or e}") \
            from None
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
    cli_args.write_json(args.json, desc, announce=False)
    return 0

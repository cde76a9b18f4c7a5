"""``hbfp-hw verify``: run a unit's cocotb testbench against the golden model on demand."""

from __future__ import annotations

import json

from . import args as cli_args
from .units import add_unit_arguments, check_unit

__all__ = ["add_parser", "validate", "run", "summary_line", "MAX_VECTORS"]

#: Most input transfers one run simulates (the vectors are generated in memory first).
MAX_VECTORS = 1_000_000


def add_parser(sub):
    from hbfp_hw.rtl_gen.generate import UNITS
    from hbfp_hw.sim.mutants import FAULTS

    p = sub.add_parser(
        "verify", help="check a unit bit for bit against the golden model in a simulator",
        description="Build a unit, stream seeded random and corner-case vectors through it in "
                    "Verilator or Icarus (cocotb) with random gaps and backpressure, and compare "
                    "every output with the golden model.")
    add_unit_arguments(p, UNITS)
    p.add_argument("--sim", default="verilator", choices=["verilator", "icarus"])
    p.add_argument("--vectors", type=cli_args.positive_int("--vectors", MAX_VECTORS),
                   default=10_000, metavar="COUNT",
                   help=f"input transfers to simulate (default 10000, at most {MAX_VECTORS})")
    p.add_argument("--seed", type=cli_args.seed(), default=0)
    p.add_argument("--waves", nargs="?", const="waves.fst", default=None, metavar="PATH",
                   help="record a waveform (FST) to PATH (default ./waves.fst)")
    p.add_argument("--inject-fault", choices=sorted(FAULTS), default=None,
                   help="verify a deliberately broken variant (to show the bench catches it)")
    p.add_argument("--json", metavar="PATH", help="write the result as JSON")
    return p


def validate(args):
    from hbfp_hw.tools import simulators

    check_unit(args, fault=args.inject_fault)
    cli_args.check_output_file("--waves", args.waves)
    cli_args.check_output_file("--json", args.json)
    reason = simulators.missing_reason(args.sim)
    if reason:
        raise cli_args.UsageError(f"--sim {args.sim} cannot run here: {reason}")


def summary_line(result):
    """One line: PASS/FAIL, unit, simulator, counts and time."""
    status = "PASS" if result["passed"] else "FAIL"
    fault = f" fault={result['fault']}" if result.get("fault") else ""
    return (f"{status} {result['module']} on {result['sim']}{fault}: "
            f"{result['vectors']} vectors, {result['received']}/{result['expected']} outputs, "
            f"{result['mismatches']} mismatches, {result['cycles']} cycles, "
            f"{result['seconds']['simulate']:.1f} s")


def _print_mismatch(m):
    print("first mismatch:")
    print(f"  output #{m.get('index')}")
    for key in ("expected", "actual"):
        if m.get(key) is None:
            print(f"  {key:8}: (none)")
            continue
        print(f"  {key:8}: {m[f'{key}_hex']}  {json.dumps(m[f'{key}_fields'])}")
    if "inputs" in m:
        print(f"  input   : {hex(m['inputs'])}")


def run(args):
    from hbfp_hw.sim.verify import verify

    try:
        result = verify(args.unit, args.fmt, input_format=args.input_format, sim=args.sim,
                        count=args.vectors, seed=args.seed, waves=bool(args.waves),
                        waves_path=args.waves, fault=args.inject_fault, **args.hw)
    except ValueError as e:
        raise cli_args.CommandError(str(e)) from None
    print(summary_line(result))
    if result.get("waves"):
        print(f"waves: {result['waves']}")
    if not result["passed"] and result.get("first_mismatch"):
        _print_mismatch(result["first_mismatch"])
    cli_args.write_json(args.json, result, announce=False)
    return 0 if result["passed"] else 1

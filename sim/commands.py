"""``hbfp-hw verify``: run a unit's cocotb testbench against the golden model on demand."""

from __future__ import annotations

import json
import sys

from hbfp_hw.rtl_gen.commands import (
    add_format_arguments,
    add_hw_arguments,
    format_from_args,
    hw_from_args,
)
from hbfp_hw.rtl_gen.generate import FORMAT_FREE_UNITS

__all__ = ["register", "summary_line"]


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


def cmd_verify(p, args):
    from hbfp_hw.sim import toolchain
    from hbfp_hw.sim.verify import verify

    fmt = None if args.unit in FORMAT_FREE_UNITS else format_from_args(p, args)
    hw = hw_from_args(p, args, args.unit)
    if args.vectors < 1:
        p.error(f"--vectors must be at least 1, not {args.vectors}")
    if not 0 <= args.seed < 1 << 32:
        p.error(f"--seed must be between 0 and 4294967295, not {args.seed}")
    reason = toolchain.missing_reason(args.sim)
    if reason:
        print(f"error: cannot run --sim {args.sim}: {reason}", file=sys.stderr)
        return 2
    try:
        result = verify(args.unit, fmt, input_format=args.input_format, sim=args.sim,
                        count=args.vectors, seed=args.seed, waves=bool(args.waves),
                        waves_path=args.waves, fault=args.inject_fault, **hw)
    except (TypeError, ValueError) as exc:
        p.error(str(exc))
    print(summary_line(result))
    if result.get("waves"):
        print(f"waves: {result['waves']}")
    if not result["passed"] and result.get("first_mismatch"):
        _print_mismatch(result["first_mismatch"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return 0 if result["passed"] else 1


def register(sub):
    from hbfp_hw.rtl_gen.faults import FAULTS
    from hbfp_hw.rtl_gen.generate import UNITS

    p = sub.add_parser(
        "verify", help="check a unit bit for bit against the golden model in a simulator",
        description="Build a unit, stream seeded random and corner-case vectors through it in "
                    "Verilator or Icarus (cocotb) with random gaps and backpressure, and compare "
                    "every output with the golden model.")
    add_format_arguments(p)
    p.add_argument("--unit", default="dot", choices=list(UNITS))
    add_hw_arguments(p)
    p.add_argument("--sim", default="verilator", choices=["verilator", "icarus"])
    p.add_argument("--vectors", type=int, default=10_000, metavar="COUNT",
                   help="input transfers to simulate (default 10000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--waves", nargs="?", const="waves.fst", default=None, metavar="PATH",
                   help="record a waveform (FST) to PATH (default ./waves.fst)")
    p.add_argument("--inject-fault", choices=sorted(FAULTS), default=None,
                   help="verify a deliberately broken variant (to show the bench catches it)")
    p.add_argument("--json", metavar="PATH", help="write the result as JSON")
    p.set_defaults(func=lambda args: cmd_verify(p, args))

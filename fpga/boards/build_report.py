"""Where builds go and how their reports read: helpers of ``hbfp-hw build`` that the
benchmarks and tests use too (the build flow itself is :mod:`hbfp_hw.fpga.boards.build`)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_out_dir", "format_report", "attempts_text"]


def default_out_dir(config):
    """Per-configuration build directory under the user's cache (never the working dir)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    f = config.fmt
    name = (f"{config.board}-w{f.mantissa_bits}-n{f.block_size}-{f.rounding.value}"
            f"-{config.input_format}-l{config.lanes}-{config.clock_mhz:g}mhz-{config.baud}")
    return cache / "hbfp-hw" / "builds" / name


def _shape(config):
    rows = config.get("system", {}).get("rows", 0)
    return f"{rows} x {config['lanes']} PEs" if rows else f"{config['lanes']} lane(s)"


def format_report(report):
    """Return the human-readable summary of a build report."""
    c = report["config"]
    r = report["resources"]
    f = c["format"]
    lines = [
        f"board     {c['board']} ({c['device']})",
        f"config    {f['name']} (w={f['mantissa_bits']}, block {f['block_size']}, "
        f"{f['rounding']}), {c['input_format']} in, {_shape(c)}, "
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
    if "macs_per_cycle" in report:
        peak = f"{report['macs_per_cycle']} MACs/cycle"
        if "gmacs" in report:
            peak += f", {report['gmacs']:.2f} GMAC/s at Fmax"
        lines.append(f"compute   {peak}")
    timing = {True: "met", False: "FAILED", None: "unknown (no clock reported)"}
    lines.append(f"timing    {timing[report['timing_passed']]}")
    if "seed" in report:
        lines.append(f"seed      {report['seed']} ({attempts_text(report)})")
    lines.append(f"bitstream {report['bitstream']}")
    lines.append(f"time      {report['total_seconds']:.1f} s ("
                 + ", ".join(f"{s['tool']} {s['seconds']:.1f} s" for s in report["stages"])
                 + ")")
    return "\n".join(lines)


def attempts_text(report):
    """"1 placement" or "3 placements: seed 1 90.64 MHz, seed 2 ..." from a build report."""
    attempts = report.get("seed_attempts") or []
    if len(attempts) <= 1:
        return "1 placement"
    return f"{len(attempts)} placements: " + ", ".join(
        f"seed {a['seed']} " + ("-" if a["fmax_mhz"] is None else f"{a['fmax_mhz']:.2f} MHz")
        for a in attempts)

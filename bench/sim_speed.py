"""Benchmark: verified dot products per second on Verilator and on Icarus, side by side.

Usage::

    .venv/bin/python bench/sim_speed.py [--vectors 20000] [--format bfp8] [--update-docs]

Runs the cocotb testbench of the bfp8 DotProductUnit (every output checked bit for bit against
the golden model) on both simulators in the same run, with full-rate streams (no gaps, no
backpressure). The build of each simulator is done (or taken from the cache) before timing,
so the numbers are simulation + checking only. Reported: block pairs (k-block products)
per second and completed dot products per second; the ratio is Verilator / Icarus.
"""

from __future__ import annotations

import argparse
import sys
import time

from docs_section import update_section

from hbfp_hw.formats import resolve_format
from hbfp_hw.sim.verify import verify
from hbfp_hw.tools import simulators

HEADING = ("## RTL simulation speed (`bench/sim_speed.py`)\n\n"
           "Verified bfp8 dot products per second through the cocotb testbench "
           "(every output compared with the golden model).")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=20_000)
    parser.add_argument("--format", default="bfp8")
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args(argv)
    fmt = resolve_format(args.format)

    rows = []
    for sim in ("verilator", "icarus"):
        reason = simulators.missing_reason(sim)
        if reason:
            print(f"{sim}: skipped ({reason})")
            continue
        verify("dot", fmt, sim=sim, count=50, valid_prob=1.0, ready_prob=1.0)   # build/cache
        t0 = time.perf_counter()
        r = verify("dot", fmt, sim=sim, count=args.vectors, valid_prob=1.0, ready_prob=1.0,
                   seed=11)
        wall = time.perf_counter() - t0
        if not r["passed"]:
            print(f"{sim}: FAILED verification: {r['first_mismatch']}", file=sys.stderr)
            return 1
        sim_s = r["seconds"]["simulate"]
        rows.append({"sim": sim, "block_pairs": r["vectors"], "dot_products": r["expected"],
                     "cycles": r["cycles"], "seconds": sim_s, "wall": wall,
                     "pairs_per_s": r["vectors"] / sim_s,
                     "dots_per_s": r["expected"] / sim_s})
        print(f"{sim:9} {r['vectors']} block pairs, {r['expected']} dot products verified in "
              f"{sim_s:.2f} s: {rows[-1]['pairs_per_s']:.0f} pairs/s, "
              f"{rows[-1]['dots_per_s']:.0f} dots/s", flush=True)
    if len(rows) == 2:
        ratio = rows[0]["pairs_per_s"] / rows[1]["pairs_per_s"]
        print(f"Verilator / Icarus: {ratio:.1f}x")
    if args.update_docs:
        lines = [f"Command: `.venv/bin/python bench/sim_speed.py --vectors {args.vectors} "
                 f"--format {args.format} --update-docs`", "",
                 "| simulator | block pairs | dot products | sim time | block pairs/s | "
                 "dot products/s |", "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['sim']} | {r['block_pairs']} | {r['dot_products']} | "
                         f"{r['seconds']:.2f} s | {r['pairs_per_s']:.0f} | "
                         f"{r['dots_per_s']:.0f} |")
        if len(rows) == 2:
            lines += ["", f"Verilator is {ratio:.1f}x faster than Icarus on this bench."]
        update_section("sim_speed", "\n".join(lines), HEADING)
    return 0


if __name__ == "__main__":
    sys.exit(main())

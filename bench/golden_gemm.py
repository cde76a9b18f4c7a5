"""Benchmark: the bit-exact golden GEMM against numpy's float32 matmul, side by side.

Usage::

    .venv/bin/python bench/golden_gemm.py [--repeats 7] [--sizes 256,512,1024]
                                          [--json PATH] [--update-docs]

For every shape and format the two are timed alternately in the same process (numpy first,
then the golden gemm, ``--repeats`` times), and the ratio of the medians is reported:
``ratio = t(numpy float32 matmul) / t(golden gemm)``, i.e. the golden model's throughput as a
fraction of numpy's. The times are the minimum over the repeats (the least disturbed run of
each on a shared machine); the medians are recorded too. Target (issue 2): ratio >= 0.25 at
1024^3. With bfp8 among ``--formats`` every row also gives its golden time over bfp8's at the
same size (target for the minifloat formats: at most 2 at 1024^3). ``--update-docs`` rewrites
the golden-GEMM section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from docs_section import update_section

from hbfp_hw import golden
from hbfp_hw.formats import resolve_format

HEADING = "## Golden model: bit-exact HBFP GEMM vs numpy float32 matmul (`bench/golden_gemm.py`)"


def measure(size, fmt, repeats, rng):
    a = rng.standard_normal((size, size)).astype(np.float32)
    b = rng.standard_normal((size, size)).astype(np.float32)
    golden.gemm(a, b, fmt)        # warm-up (thread pool, page faults)
    a @ b
    t_np, t_gold = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        t1 = time.perf_counter()
        golden.gemm(a, b, fmt)
        t2 = time.perf_counter()
        t_np.append(t1 - t0)
        t_gold.append(t2 - t1)
    best_np, best_gold = min(t_np), min(t_gold)
    return {"size": size, "format": fmt.name, "numpy_s": best_np, "golden_s": best_gold,
            "ratio": best_np / best_gold,
            "median_ratio": statistics.median(t_np) / statistics.median(t_gold),
            "golden_gmacs": size ** 3 / best_gold / 1e9}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--sizes", default="256,512,1024")
    parser.add_argument("--formats", default="bfp8,mxint8,mxfp8_e4m3,mxfp8_e5m2,mxfp6_e3m2,"
                        "mxfp6_e2m3,mxfp4_e2m1,bm8_e2m5")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        for name in args.formats.split(","):
            row = measure(size, resolve_format(name), args.repeats, rng)
            rows.append(row)
            print(f"{size:>5}^3 {row['format']:10} numpy {row['numpy_s'] * 1e3:8.2f} ms  "
                  f"golden {row['golden_s'] * 1e3:8.2f} ms  ratio {row['ratio']:.3f} "
                  f"(medians {row['median_ratio']:.3f})",
                  flush=True)
    bfp8 = {r["size"]: r["golden_s"] for r in rows if r["format"] == "bfp8"}
    for r in rows:
        r["vs_bfp8"] = r["golden_s"] / bfp8[r["size"]] if r["size"] in bfp8 else None
    machine = {"python": platform.python_version(), "numpy": np.__version__,
               "cpus": os.cpu_count(), "machine": platform.machine()}
    command = "make bench  # = .venv/bin/python bench/golden_gemm.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    if args.update_docs:
        table = [f"Command: `{command.strip()}`  ",
                 f"Machine: {machine['cpus']} cores, {machine['machine']}, Python "
                 f"{machine['python']}, numpy {machine['numpy']}; best of "
                 f"{args.repeats} alternating runs (ratio of medians alongside).", "",
                 "| shape | format | numpy f32 matmul | golden gemm | ratio (throughput) | "
                 "ratio of medians | golden time / bfp8's |",
                 "|---|---|---|---|---|---|---|"]
        for r in rows:
            vs = "" if r["vs_bfp8"] is None else f"{r['vs_bfp8']:.2f}"
            table.append(f"| {r['size']}³ | {r['format']} | {r['numpy_s'] * 1e3:.2f} ms | "
                         f"{r['golden_s'] * 1e3:.2f} ms | {r['ratio']:.3f} | "
                         f"{r['median_ratio']:.3f} | {vs} |")
        update_section("golden_gemm", "\n".join(table), HEADING)
    return 0


if __name__ == "__main__":
    sys.exit(main())

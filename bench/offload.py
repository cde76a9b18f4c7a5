"""Benchmark: GEMM offload through the simulated board, and the link efficiency at 3 Mbaud.

Usage::

    .venv/bin/python bench/offload.py [--update-docs] [--baud 3000000]

Two parts, both through the real driver (``hbfp_hw.Device``) and the simulated board (the
``GemmSystem`` gateware under Verilator, :mod:`hbfp_hw.fpga.simboard`); every result is checked
bit for bit against ``golden.gemm``. The build is done (or taken from the cache) before timing.

1. **Simulation speed** (no line-rate model): wall time of one GEMM for several shapes, with
   ``wire=bfp`` (host-quantized blocks, 17 bytes per 16 bfp8 elements) and ``wire=fp32`` (raw
   floats, 64 bytes per block; the device quantizes). This is what the simulated board
   costs a user, not what a board would do.
2. **Link efficiency** at ``--baud`` (default 3 Mbaud) with the harness's virtual-time line
   model (``sim://?baud=3000000&vclock_hz=100000000``): a virtual clock advances 10 ns per model
   cycle (the ULX3S build's 100 MHz) and by the wall time the harness waits for the host (so
   the host's own time counts), request bytes arrive back to back at ``baud / 10`` bytes per
   second into a receive FIFO, and reply bytes leave at the same rate: a full-duplex UART.
   The model runs slower than 3 Mbaud in wall time, so wall-clock pacing could not measure a
   link-bound number; virtual time does. Efficiency = frame payload bytes (requests and
   replies) per virtual second / (``baud / 10``). Per-direction values are shown too; as the
   link is full duplex the total can in principle exceed 1. The losses are the frame overhead
   (10 bytes per frame, the status byte, the arguments), the COMPUTE round trips (the driver
   waits for the writes of a tile before COMPUTE and for COMPUTE before the reads) and the
   host's time between batches. The driver pipelines transfers within a batch (the reads of
   one C tile overlap the writes of the next A/B tile).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from hbfp_hw import golden
from hbfp_hw.fpga.driver import Device
from hbfp_hw.fpga.simboard import SimConfig, build

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
BEGIN, END = "<!-- offload:begin -->", "<!-- offload:end -->"
SHAPES = [(16, 16, 16), (64, 64, 64), (128, 128, 128), (64, 512, 64), (256, 64, 256)]
LINK_SHAPES = [(64, 64, 64), (128, 128, 128), (256, 64, 256)]


def run(dev, m, k, n, wire, repeat, rng):
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    info = dev.info()
    ref = golden.gemm(a, b, info.fmt, input_format=info.input_format).view(np.uint32)
    best = None
    before = dict(dev.stats)
    for _ in range(repeat):
        t0 = time.perf_counter()
        c = dev.gemm(a, b, wire=wire)
        dt = time.perf_counter() - t0
        if not np.array_equal(c.view(np.uint32), ref):
            raise SystemExit(f"NOT bit-exact: {m}x{k}x{n} wire={wire}")
        best = dt if best is None else min(best, dt)
    moved = {k_: (dev.stats[k_] - before[k_]) / repeat for k_ in dev.stats}
    return best, moved


def link_run(dev, m, k, n, wire, rng, rate):
    """One GEMM through the virtual-time line model; return its link figures."""
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    info = dev.info()
    ref = golden.gemm(a, b, info.fmt, input_format=info.input_format).view(np.uint32)
    dev.status()                               # the harness goes idle after this reply
    t_idle = time.perf_counter()
    time.sleep(0.05)
    s0 = dev.transport.link_stats()
    before = dict(dev.stats)
    t_start = time.perf_counter()
    c = dev.gemm(a, b, wire=wire)
    if not np.array_equal(c.view(np.uint32), ref):
        raise SystemExit(f"NOT bit-exact: {m}x{k}x{n} wire={wire}")
    time.sleep(0.05)
    s1 = dev.transport.link_stats()
    # The harness counts the wall time it waits for the host as idle line time; the wait
    # before the GEMM includes this script's own sleep, which is not the driver's.
    vt = s1["virtual_seconds"] - s0["virtual_seconds"] - (t_start - t_idle)
    d = {key: dev.stats[key] - before[key] for key in dev.stats}
    tx, rx = d["tx_payload"], d["rx_payload"]
    return {"vt": vt, "tx": tx, "rx": rx, "eff": (tx + rx) / vt / rate, "up": tx / vt / rate,
            "down": rx / vt / rate, "use": (d["tx_bytes"] + d["rx_bytes"]) / vt / rate,
            "flops": 2.0 * m * n * k / vt, "retries": d["resent"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baud", type=int, default=3_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    exe = build(SimConfig())
    build_note = f"cached build ({exe.parent.name})"
    seconds_file = exe.parent / "build_seconds"
    if seconds_file.exists():
        build_note += f", first build took {seconds_file.read_text().strip()} s"
    print(f"simulated board ready in {time.perf_counter() - t0:.1f} s: {build_note}")
    rng = np.random.default_rng(0)

    speed = []
    with Device.open("sim") as dev:
        info = dev.info()
        for m, k, n in SHAPES:
            row = {"shape": (m, k, n)}
            for wire in ("bfp", "fp32"):
                dt, moved = run(dev, m, k, n, wire, args.repeat, rng)
                row[wire] = (dt, 2.0 * m * n * k / dt, moved["tx_bytes"] + moved["rx_bytes"])
            speed.append(row)
            print(f"sim {m}x{k}x{n}: bfp {row['bfp'][0] * 1e3:.0f} ms "
                  f"({row['bfp'][1] / 1e6:.2f} MFLOP/s), fp32 {row['fp32'][0] * 1e3:.0f} ms "
                  f"({row['fp32'][1] / 1e6:.2f} MFLOP/s)", flush=True)

    link = []
    rate = args.baud / 10
    with Device.open(f"sim://?baud={args.baud}&vclock_hz=100000000") as dev:
        for m, k, n in LINK_SHAPES:
            row = {"shape": (m, k, n)}
            for wire in ("bfp", "fp32"):
                row[wire] = link_run(dev, m, k, n, wire, rng, rate)
            link.append(row)
            print(f"{args.baud} baud {m}x{k}x{n}: " + ", ".join(
                f"{w} {row[w]['vt'] * 1e3:.0f} ms efficiency {row[w]['eff']:.3f} "
                f"(up {row[w]['up']:.3f}, down {row[w]['down']:.3f})" for w in ("bfp", "fp32")),
                flush=True)

    lines = [
        "",
        "## GEMM offload through the simulated board (`bench/offload.py`)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on this machine (2 shared cores). Device: "
        f"the `GemmSystem` gateware ({info.fmt.name}, {info.lanes} lanes, A/B "
        f"{info.a_blocks}/{info.b_blocks} blocks, C {info.c_words} words, max payload "
        f"{info.max_payload} B) under Verilator, driven by `hbfp_hw.Device` through pipes. "
        f"Every result was checked bit for bit against `golden.gemm`. Times are the best of "
        f"{args.repeat}, after the build ({build_note}).",
        "",
        "Simulation speed (no line-rate model; what the simulated board costs, not a board):",
        "",
        "| M x K x N | wire=bfp | MFLOP/s | wire=fp32 | MFLOP/s | link bytes bfp / fp32 |",
        "|---|---|---|---|---|---|",
    ]
    for r in speed:
        m, k, n = r["shape"]
        lines.append(f"| {m} x {k} x {n} | {r['bfp'][0] * 1e3:.0f} ms | {r['bfp'][1] / 1e6:.2f} "
                     f"| {r['fp32'][0] * 1e3:.0f} ms | {r['fp32'][1] / 1e6:.2f} "
                     f"| {r['bfp'][2]:.0f} / {r['fp32'][2]:.0f} |")
    lines += [
        "",
        f"Link efficiency at {args.baud / 1e6:g} Mbaud: virtual-time UART model of the "
        f"harness (full duplex, {rate / 1e3:.0f} kB/s each way, 100 MHz device clock, host "
        f"time included; see the docstring of `bench/offload.py`). Efficiency = frame payload "
        f"bytes per second, requests + replies, / line rate; up / down split it by direction; "
        f"line use counts whole frames. Target: at least 0.9.",
        "",
        "| M x K x N | wire | link time | payload bytes up / down | efficiency | "
        "up / down | line use | MFLOP/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in link:
        m, k, n = r["shape"]
        for w in ("bfp", "fp32"):
            x = r[w]
            lines.append(f"| {m} x {k} x {n} | {w} | {x['vt'] * 1e3:.0f} ms "
                         f"| {x['tx']:.0f} / {x['rx']:.0f} | **{x['eff']:.3f}** "
                         f"| {x['up']:.3f} / {x['down']:.3f} | {x['use']:.3f} "
                         f"| {x['flops'] / 1e6:.2f} |")
    worst = min(r[w]["eff"] for r in link for w in ("bfp", "fp32"))
    busy = [max(r[w]["up"], r[w]["down"]) for r in link for w in ("bfp", "fp32")]
    lines += ["", f"Lowest efficiency (both directions): {worst:.3f} "
              f"({'meets' if worst >= 0.9 else 'misses'} the 0.9 target under this "
              f"definition). Read it with care: the busier direction alone carries only "
              f"{min(busy):.2f} to {max(busy):.2f} of its line rate, so neither direction is "
              f"saturated; a total near 1 comes from the overlap of requests and replies. The "
              f"remaining loss is mostly the round trips around each COMPUTE (the driver "
              f"waits for a tile's writes before COMPUTE, and for COMPUTE before its reads).",
              ""]
    text = "\n".join(lines)
    print(text)
    if args.update_docs:
        doc = DOC.read_text()
        if BEGIN not in doc:
            doc = doc.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
        start, stop = doc.index(BEGIN) + len(BEGIN), doc.index(END)
        DOC.write_text(doc[:start] + "\n" + text.strip("\n") + "\n" + doc[stop:])
        print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Design-space sweep benchmark: ``hbfp-hw sweep`` on the LFE5U-85F and the iCE40 UP5K.

Runs ``hbfp-hw sweep`` (the real command, through :func:`hbfp_hw.cli.main`) for each target:

- ``ecp5-85f``: mantissa bits x block sizes (default the issue's full grid 4,6,8,12 x 8,16,32),
  the FP32 baseline, the LUT-multiplier variants of bfp8 and of the baseline for the full-chip
  estimate, and (``--with-accuracy``) the digits accuracy of every format;
- ``ice40-up5k``: a small grid (default 4,8 x 2,4, BF16 operands as on the iCEBreaker).

Every point is cached by `hbfp-hw sweep` (per Verilog hash, tool versions, part and seed), so a
rerun only re-renders. With ``--update-docs`` the tables, critical paths, full-chip estimate and
target check replace the section between ``<!-- sweep:begin -->`` and ``<!-- sweep:end -->``
of ``docs/benchmarks.md``, and the plots are written to ``docs/sweep_*.png``.

The bfp8 targets of the issue are checked and reported, not asserted: Fmax >= 150 MHz,
MAC/s per LUT >= 10x the FP32 baseline, full-chip GMAC/s >= 20x FP32 MACs filling the part.

Usage::

    .venv/bin/python bench/sweep.py --update-docs
    .venv/bin/python bench/sweep.py --targets ice40-up5k --ice40-mantissa-bits 4 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

from docs_section import DOC, update_section

from hbfp_hw import cli
from hbfp_hw.fpga.sweep import full_chip_estimate, markdown_report

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## Design-space sweep: BFP dot-product units vs FP32 MACs (`hbfp-hw sweep`)"
SHORT = {"ecp5-85f": "ecp5", "ice40-up5k": "ice40"}
#: The bfp8 targets of the sweep issue.
TARGET_FMAX_MHZ = 150.0
TARGET_PER_LUT = 10.0
TARGET_FULL_CHIP = 20.0


def sweep_argv(target, args):
    """The ``hbfp-hw sweep`` arguments for ``target`` (plots go to ``docs/``)."""
    short = SHORT[target]
    if target == "ecp5-85f":
        grid = ["--mantissa-bits", args.ecp5_mantissa_bits, "--block-size", args.ecp5_block_size]
    else:
        grid = ["--mantissa-bits", args.ice40_mantissa_bits, "--block-size",
                args.ice40_block_size, "--input-format", "bf16"]
    argv = ["sweep", "--target", target, *grid, "--jobs", str(args.jobs),
            "--plot", f"docs/sweep_{short}_mac_per_lut.png"]
    if args.with_accuracy and target == "ecp5-85f":
        argv += ["--with-accuracy"]
    if args.full_chip and target == "ecp5-85f":
        argv += ["--full-chip", args.full_chip]
    if args.timeout:
        argv += ["--timeout", f"{args.timeout:g}"]
    return argv


def run_target(target, args):
    """Run the sweep of ``target``; return (command, doc)."""
    argv = sweep_argv(target, args)
    with tempfile.TemporaryDirectory() as tmp:
        json_path = Path(tmp) / "sweep.json"
        print(f"[bench/sweep] hbfp-hw {shlex.join(argv)}", file=sys.stderr, flush=True)
        rc = cli.main([*argv, "--json", str(json_path)])
        if not json_path.exists():
            raise SystemExit(f"hbfp-hw sweep --target {target} failed (exit code {rc})")
        doc = json.loads(json_path.read_text())
    return "hbfp-hw " + shlex.join(argv), doc


def target_check(doc):
    """Lines comparing the bfp8 point with the issue's targets."""
    bfp8 = next((r for r in doc["points"] if r["label"] == "bfp8"), None)
    if bfp8 is None or bfp8.get("status") != "ok":
        return ["- bfp8 was not measured"]

    def verdict(ok):
        return "met" if ok else "**not met**"

    per_lut = bfp8.get("vs_baseline", {}).get("mac_per_s_per_lut")
    lines = [f"- Fmax >= {TARGET_FMAX_MHZ:g} MHz: {bfp8['fmax_mhz']:.1f} MHz -> "
             f"{verdict(bfp8['fmax_mhz'] >= TARGET_FMAX_MHZ)}"]
    if per_lut is not None:
        lines.append(f"- MAC/s per LUT >= {TARGET_PER_LUT:g}x the FP32 baseline: {per_lut:.2f}x "
                     f"-> {verdict(per_lut >= TARGET_PER_LUT)}")
    full = doc.get("full_chip")
    if full and full.get("ratio") is not None:
        lines.append(f"- full chip >= {TARGET_FULL_CHIP:g}x FP32 MACs filling the part: "
                     f"{full['ratio']:.1f}x -> {verdict(full['ratio'] >= TARGET_FULL_CHIP)}")
    return lines


def render(results):
    """The Markdown of the ``sweep`` section."""
    parts = []
    for target, (command, doc) in results.items():
        short = SHORT[target]
        plots = [("MAC/s per LUT against mantissa bits", f"sweep_{short}_mac_per_lut.png"),
                 ("Fmax per configuration", f"sweep_{short}_fmax.png")]
        if any("accuracy" in r for r in doc["points"]):
            plots.append(("Digits accuracy against area per throughput",
                          f"sweep_{short}_pareto.png"))
        full_chip = doc.get("full_chip")
        if full_chip is None and target == "ecp5-85f":
            # --full-chip none: the LUT-multiplier variants were not measured; the estimate
            # from the DSP variants alone is still measured data, and says so
            full_chip = full_chip_estimate(doc, "bfp8")
            if full_chip is not None:
                doc["full_chip"] = full_chip
                parts.append("Full-chip estimate from the DSP-multiplier variants only (this "
                             "run skipped the LUT-multiplier variants, `--full-chip none`).\n")
        parts.append(markdown_report(doc, command=command, plots=plots,
                                           full_chip=full_chip))
        if target == "ecp5-85f":
            parts.append("bfp8 (w=8, block 16) against the targets of the sweep issue:\n\n"
                         + "\n".join(target_check(doc)) + "\n")
        if doc.get("pareto_front"):
            setup = doc["accuracy_setup"]
            parts.append(f"Accuracy/area Pareto front (digits {setup['model']}, "
                         f"{setup['epochs']} epochs, as `{setup['command']}`), cheapest "
                         f"first: {', '.join(doc['pareto_front'])}.\n")
    return "\n".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="ecp5-85f,ice40-up5k",
                        help="comma-separated targets (default both)")
    parser.add_argument("--ecp5-mantissa-bits", default="4,6,8,12")
    parser.add_argument("--ecp5-block-size", default="8,16,32")
    parser.add_argument("--ice40-mantissa-bits", default="4,8")
    parser.add_argument("--ice40-block-size", default="2,4")
    parser.add_argument("--with-accuracy", action=argparse.BooleanOptionalAction, default=True,
                        help="join the digits accuracy on the ECP5 sweep (default on)")
    parser.add_argument("--full-chip", metavar="FORMAT",
                        help="format of the ECP5 full-chip estimate (default: the command's, "
                             "bfp8, which adds its LUT-multiplier variants; 'none' skips it)")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--timeout", type=float, metavar="MIN",
                        help="per tool run, passed to hbfp-hw sweep")
    parser.add_argument("--update-docs", action="store_true",
                        help=f"write the section into {DOC.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    os.chdir(ROOT)      # the plot paths of the commands are relative to the repository
    results = {}
    for target in [t.strip() for t in args.targets.split(",") if t.strip()]:
        if target not in SHORT:
            parser.error(f"--targets must name {', '.join(SHORT)}, not {target!r}")
        results[target] = run_target(target, args)
    text = render(results)
    print(text)
    if args.update_docs:
        update_section("sweep", text, HEADING)
    return 0


if __name__ == "__main__":
    sys.exit(main())

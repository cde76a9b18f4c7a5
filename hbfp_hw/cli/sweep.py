"""``hbfp-hw sweep``: hardware cost and Fmax of a grid of BFP formats against FP32.

The work is done by :mod:`hbfp_hw.fpga.sweep`, and with ``--with-accuracy`` by
:mod:`hbfp_hw.cli.sweep_accuracy`; parsing imports neither matplotlib nor torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hbfp_hw.formats import MANTISSA_BITS_RANGE

from . import args as cli_args

__all__ = ["add_parser", "validate", "run", "build_points", "DEFAULT_FULL_CHIP"]

#: Format of the full-chip estimate per target (None: no estimate by default).
DEFAULT_FULL_CHIP = {"ecp5-85f": "bfp8", "ice40-up5k": None}


def _stages(text):
    from hbfp_hw.fpga.sweep import parse_stages

    try:
        return parse_stages(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_parser(sub):
    from hbfp_hw.fpga.sweep import TARGETS

    w_lo, w_hi = MANTISSA_BITS_RANGE
    n_lo, n_hi = cli_args.RTL_BLOCK_SIZE_RANGE
    p = sub.add_parser(
        "sweep", help="synthesize and place-and-route a grid of BFP units against FP32",
        description="Synthesize and place-and-route, out of context on an FPGA part, every "
                    "DotProductUnit configuration of a grid of mantissa widths and block sizes "
                    "and the FP32 MAC baseline from the same generator (every port "
                    "registered). Reports LUT4/logic cells, FF, DSP, BRAM and carry cells, the "
                    "worse Fmax of the nextpnr seeds, MAC/s, MAC/s per LUT and per "
                    "DSP-equivalent and the ratios to FP32; writes a table, JSON and PNG plots, "
                    "a full-chip estimate, and with --with-accuracy the accuracy/area Pareto "
                    "front. Results are cached per configuration hash, so a rerun is instant. "
                    "See docs/hardware.md, 'Design-space sweep'.")
    p.add_argument("--target", choices=sorted(TARGETS), default="ecp5-85f",
                   help="FPGA part (default ecp5-85f: LFE5U-85F-6BG381; ice40-up5k: "
                        "iCE40UP5K-SG48)")
    p.add_argument("--mantissa-bits", type=cli_args.int_list("--mantissa-bits", w_lo, w_hi),
                   default=[4, 6, 8, 12], metavar="W,...",
                   help="element widths w, sign included (default 4,6,8,12)")
    p.add_argument("--block-size", default=[8, 16, 32], metavar="N,...",
                   type=cli_args.int_list("--block-size", n_lo, n_hi, power_of_two=True,
                                          why=" for the RTL"),
                   help=f"block sizes, powers of two from {n_lo} to {n_hi} (default 8,16,32)")
    p.add_argument("--formats", type=_presets, default=[], metavar="PRESET,...",
                   help="add one dot-product unit per preset, as the preset defines it "
                        "(element type, block size, rounding): the minifloat presets "
                        "(mxfp8_e4m3, ..., bm6_e3m2) or integer ones (bfp8, mxint8)")
    p.add_argument("--input-format", choices=["fp32", "bf16"], default="fp32",
                   help="float format of the dot-product unit's operands (default fp32)")
    p.add_argument("--rounding", choices=["nearest-even", "toward-zero", "stochastic"],
                   default="nearest-even", help="rounding of the BFP formats")
    p.add_argument("--stages", type=_stages, default={}, metavar="KEY=VALUE,...",
                   help="hardware parameters, applied to every unit that takes them: "
                        "align_stages, mac_stages, convert_stages, adder_stages, mul_stages, "
                        "channels; a value is an integer, 'max' or 'default'; a bare 'max' or "
                        "'default' sets every pipeline depth. Default: the deepest pipelines "
                        "('max') on ecp5-85f, the constructors' defaults on ice40-up5k (the "
                        "deepest do not fit), and the fewest channels that sustain one block "
                        "pair per cycle")
    p.add_argument("--multipliers", choices=["dsp", "lut", "both", "mixed"],
                   help="map multipliers to DSP blocks (the grid's default), to LUTs (synth "
                        "-nodsp / no -dsp), or sweep both; --fill-chip: 'mixed' (its "
                        "default: the part's DSPs, then LUTs), 'dsp', 'lut' or 'both'")
    p.add_argument("--seeds", type=cli_args.int_list("--seeds", 0, 0xFFFFFFFF), default=[1, 2],
                   metavar="S,...", help="nextpnr seeds; Fmax is the worse (default 1,2)")
    p.add_argument("--freq", type=cli_args.positive_float("--freq"), metavar="MHZ",
                   help="nextpnr --freq target (default 150 on ecp5-85f, 50 on ice40-up5k)")
    p.add_argument("--router", choices=["router2", "router1"], default="router2",
                   help="nextpnr router (default router2: router1 stalls for tens of minutes "
                        "on the larger units of the LFE5U-85F)")
    p.add_argument("--io", choices=["serial", "ooc"], default="serial",
                   help="how the registered ports leave the part: 'serial' (default; 4 pins, "
                        "global clock) or 'ooc' (nextpnr --out-of-context, ECP5 only)")
    p.add_argument("--full-chip", metavar="FORMAT",
                   help="format of the full-chip estimate, a preset or wWbN ('none' to skip; "
                        "default bfp8 on ecp5-85f, none on ice40-up5k); adds its "
                        "LUT-multiplier variants to the sweep")
    p.add_argument("--fill-chip", action="store_true",
                   help="instead of the grid: find, by bisection over array shapes, the BFP "
                        "systolic array (--format) and the FP32 array that maximise MACs/cycle "
                        "x Fmax on the part, and report both and their ratio (with --multipliers "
                        "both, the default here, each mapping is searched)")
    p.add_argument("--format", metavar="FORMAT", default="bfp8", dest="array_format",
                   help="BFP format of --fill-chip: a preset or wWbN (default bfp8)")
    p.add_argument("--max-side", type=cli_args.integer("--max-side", 1, 64), default=32,
                   help="largest rows and columns --fill-chip tries (default 32)")
    p.add_argument("--fill", type=cli_args.number("--fill", 0, 1, lo_open=True), default=0.85,
                   help="fraction of the logic cells and FFs a full chip may use (default "
                        "0.85)")
    p.add_argument("--with-accuracy", action="store_true",
                   help="train the digits model in every format (as `hbfp-hw train`, "
                        "cached) and plot accuracy against area (needs PyTorch)")
    p.add_argument("--accuracy-model", choices=["mlp", "cnn"], default="mlp",
                   help="digits model for --with-accuracy (default mlp)")
    p.add_argument("--accuracy-epochs", type=cli_args.positive_int("--accuracy-epochs"),
                   default=30, help="training epochs for --with-accuracy (default 30)")
    p.add_argument("--jobs", "-j", type=cli_args.positive_int("--jobs", 256), default=1,
                   help="tool runs in parallel (default 1; each nextpnr uses one core)")
    p.add_argument("--timeout", type=cli_args.positive_float("--timeout"), metavar="MIN",
                   help="stop a tool run after MIN minutes (the point is reported as timed "
                        "out, not cached)")
    p.add_argument("--out", metavar="DIR",
                   help="write sweep.json, sweep.txt, the plots and every point's logs here")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--plot", metavar="PNG",
                   help="write the MAC/s-per-LUT plot here (the Fmax plot goes next to it, "
                        "'mac_per_lut' replaced by 'fmax', or with '_fmax' added)")
    p.add_argument("--fmax-plot", metavar="PNG", help="write the Fmax plot here")
    p.add_argument("--pareto-plot", metavar="PNG",
                   help="write the accuracy/area Pareto plot here (with --with-accuracy)")
    p.add_argument("--cache", metavar="DIR",
                   help="cache directory (default $HBFP_HW_CACHE/sweep or "
                        "~/.cache/hbfp-hw/sweep)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def _presets(text):
    """``type=`` of ``--formats``: comma-separated preset names, minifloat ones included."""
    parse = cli_args.format_preset("--formats", minifloat=True)
    formats = [parse(item) for item in str(text).split(",") if item.strip()]
    if not formats:
        raise argparse.ArgumentTypeError("--formats needs at least one preset")
    return list(dict.fromkeys(formats))


def _sibling(path, name):
    path = Path(path)
    if "mac_per_lut" in path.stem:
        return path.with_name(path.stem.replace("mac_per_lut", name) + path.suffix)
    return path.with_name(f"{path.stem}_{name}{path.suffix}")


def build_points(args):
    """Return the sweep points of parsed ``sweep`` arguments and the full-chip format.

    Raises
    ------
    ValueError
        Naming the flag (``--full-chip``, ``--stages``) of a bad value.
    """
    from hbfp_hw.fpga.sweep import TARGETS, make_points, parse_format_spec

    full_chip = args.full_chip if args.full_chip is not None else DEFAULT_FULL_CHIP[args.target]
    if full_chip is not None and full_chip.lower() == "none":
        full_chip = None
    fmt = None
    if full_chip is not None:
        try:
            fmt = parse_format_spec(full_chip).replace(rounding=args.rounding)
        except ValueError as e:
            raise ValueError(f"--full-chip must be 'none', a preset name or wWbN (such as "
                             f"w8b16), not {full_chip!r}") from e
    mode = args.multipliers or "dsp"
    if mode == "mixed":
        raise ValueError("--multipliers mixed applies to --fill-chip (systolic arrays), not "
                         "to the grid")
    modes = ["dsp", "lut"] if mode == "both" else [mode]
    stages = TARGETS[args.target].stages_with(args.stages)
    points = []
    try:
        for mode in modes:
            points += make_points(args.mantissa_bits, args.block_size,
                                  input_format=args.input_format, rounding=args.rounding,
                                  stages=stages, multipliers=mode, formats=args.formats)
    except ValueError as e:
        raise ValueError(f"--stages: {e}") from None
    if fmt is not None:
        try:
            for mode in ("dsp", "lut"):
                extra = make_points([fmt.mantissa_bits], [fmt.block_size],
                                    input_format="fp32", rounding=args.rounding, stages=stages,
                                    multipliers=mode)
                for point in extra:
                    if point not in points:
                        points.append(point)
        except ValueError as e:
            raise ValueError(f"--full-chip {full_chip}: {e}") from None
    return points, fmt


def validate(args):
    if args.io == "ooc" and args.target != "ecp5-85f":
        raise cli_args.UsageError(
            f"--io ooc needs nextpnr --out-of-context, which {args.target} does not support; "
            f"use --io serial")
    try:
        args._points, args._full_chip = build_points(args)
    except (TypeError, ValueError) as e:
        raise cli_args.UsageError(cli_args.one_line(e)) from None
    if args.with_accuracy:
        try:
            import torch  # noqa: F401
        except ImportError:
            raise cli_args.UsageError(
                "--with-accuracy trains the digits models with PyTorch, which is not "
                "installed; install the extra: pip install 'hbfp-hw[torch]'") from None
    if args.fill_chip:
        from hbfp_hw.fpga.sweep import parse_format_spec

        try:
            args._array_format = parse_format_spec(args.array_format).replace(
                rounding=args.rounding)
        except ValueError:
            raise cli_args.UsageError(f"--format must be a preset name or wWbN (such as "
                                      f"w8b16), not {args.array_format!r}") from None
        if args.with_accuracy:
            raise cli_args.UsageError("--with-accuracy applies to the grid, not --fill-chip")
    cli_args.check_output_dir("--out", args.out)
    cli_args.check_output_dir("--cache", args.cache)
    cli_args.check_output_file("--json", args.json, create_parents=True)
    for flag, path in (("--plot", args.plot), ("--fmax-plot", args.fmax_plot),
                       ("--pareto-plot", args.pareto_plot)):
        cli_args.check_output_file(flag, path, create_parents=True)
    if args.plot:
        for name in ("fmax", "pareto") if args.with_accuracy else ("fmax",):
            cli_args.check_output_file("--plot", _sibling(args.plot, name), create_parents=True)


def run(args):
    """Run ``hbfp-hw sweep``; returns the exit status."""
    if args.fill_chip:
        return _run_fill_chip(args)
    from hbfp_hw.fpga.sweep import (
        format_full_chip,
        format_table,
        full_chip_estimate,
        plot_fmax,
        plot_mac_per_lut,
        plot_pareto,
        run_sweep,
    )

    points, full_chip = args._points, args._full_chip
    out = Path(args.out) if args.out else None
    try:
        doc = run_sweep(points, args.target, seeds=args.seeds, jobs=args.jobs, io=args.io,
                        freq_mhz=args.freq, router=args.router,
                        timeout=None if args.timeout is None else args.timeout * 60,
                        progress=not args.quiet, cache=args.cache,
                        logs_dir=None if out is None else out / "logs")
    except KeyboardInterrupt:
        print("\ninterrupted: the tools were stopped; finished steps are cached, so the same "
              "command resumes where this one stopped", file=sys.stderr)
        return 130
    doc["options"] = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    doc["options"]["formats"] = [f.name for f in args.formats]      # JSON: names, not objects
    if args.with_accuracy:
        # The command line, not the sweep, joins the hardware rows and the accuracy results.
        from .sweep_accuracy import AccuracyUnavailable, attach_accuracy

        def log(text):
            if not args.quiet:
                print(f"[hbfp-hw sweep] {text}", file=sys.stderr, flush=True)
        try:
            attach_accuracy(doc, model=args.accuracy_model, epochs=args.accuracy_epochs,
                            cache=args.cache, progress=not args.quiet, log=log)
        except AccuracyUnavailable as e:
            raise cli_args.CommandError(str(e)) from None
    estimate = None
    if full_chip is not None:
        estimate = full_chip_estimate(doc, full_chip, fill=args.fill)
        doc["full_chip"] = estimate
    text = format_table(doc)
    if full_chip is not None:
        text += "\n\n" + format_full_chip(estimate)
    if args.with_accuracy and doc.get("pareto_front"):
        text += ("\n\nAccuracy/area Pareto front (cheapest first): "
                 + ", ".join(doc["pareto_front"]))
    print(text)

    plots = {}
    if out is not None:
        plots = {"mac_per_lut": out / "mac_per_lut.png", "fmax": out / "fmax.png"}
        if args.with_accuracy:
            plots["pareto"] = out / "pareto.png"
    if args.plot:
        plots["mac_per_lut"] = Path(args.plot)
        plots["fmax"] = _sibling(args.plot, "fmax")
        if args.with_accuracy:
            plots["pareto"] = _sibling(args.plot, "pareto")
    if args.fmax_plot:
        plots["fmax"] = Path(args.fmax_plot)
    if args.pareto_plot:
        if not args.with_accuracy:
            print("warning: --pareto-plot needs --with-accuracy; not written", file=sys.stderr)
        else:
            plots["pareto"] = Path(args.pareto_plot)
    writers = {"mac_per_lut": plot_mac_per_lut, "fmax": plot_fmax, "pareto": plot_pareto}
    try:
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        for name, path in plots.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            writers[name](doc, path)
            print(f"wrote {path}")
        doc["plots"] = {k: str(v) for k, v in plots.items()}
        if out is not None:
            cli_args.write_json(out / "sweep.json", doc, flag="--out", announce=False)
            (out / "sweep.txt").write_text(text + "\n")
            print(f"wrote {out / 'sweep.json'}, {out / 'sweep.txt'}, logs in {out / 'logs'}")
    except OSError as e:
        raise cli_args.CommandError(f"cannot write {e.filename or ''}: {e.strerror or e}") \
            from None
    cli_args.write_json(args.json, doc, create_parents=True)
    broken = [r for r in doc["points"] if r["status"] not in ("ok", "does not fit")]
    if broken:
        print("error: " + "; ".join(f"{r['label']}: {r['status']}" for r in broken),
              file=sys.stderr)
        return 1
    return 0


def _run_fill_chip(args):
    from hbfp_hw.fpga.sweep import fill_chip, format_fill_chip, plot_fill_chip

    mode = args.multipliers or "mixed"
    modes = ["dsp", "lut"] if mode == "both" else [mode]
    try:
        doc = fill_chip(args._array_format, args.target, multipliers=tuple(modes),
                        max_side=args.max_side, seeds=args.seeds, jobs=args.jobs, io=args.io,
                        freq_mhz=args.freq, router=args.router,
                        timeout=None if args.timeout is None else args.timeout * 60,
                        progress=not args.quiet, cache=args.cache)
    except KeyboardInterrupt:
        print("\ninterrupted: the tools were stopped; finished points are cached, so the same "
              "command resumes where this one stopped", file=sys.stderr)
        return 130
    doc["options"] = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    doc["options"]["formats"] = [f.name for f in args.formats]      # JSON: names, not objects
    print(format_fill_chip(doc))
    plot = args.plot or (str(Path(args.out) / "fill_chip.png") if args.out else None)
    try:
        if plot:
            Path(plot).parent.mkdir(parents=True, exist_ok=True)
            plot_fill_chip(doc, plot)
            print(f"wrote {plot}")
            doc["plots"] = {"fill_chip": plot}
        if args.out:
            cli_args.write_json(Path(args.out) / "fill_chip.json", doc, flag="--out")
    except OSError as e:
        raise cli_args.CommandError(f"cannot write {e.filename or ''}: {e.strerror or e}") \
            from None
    cli_args.write_json(args.json, doc, create_parents=True)
    return 0 if doc["bfp"] and doc["fp32"] else 1

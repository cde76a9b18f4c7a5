"""``hbfp-hw train``: train FP32 and HBFP models (digits, or the sort-task Transformer) and
compare them.

Parsing and validation do not import torch; :mod:`hbfp_hw.torch.train` does the work.
"""

from __future__ import annotations

from hbfp_hw.formats import Accumulator, split_accumulator

from . import args as cli_args

__all__ = ["add_parser", "validate", "run"]


def add_parser(sub):
    p = sub.add_parser(
        "train", help="train FP32 and HBFP models on real data and compare them",
        description="Train a small model in FP32 and in HBFP formats, from the same seed and "
                    "initialization, and compare them: on the digits data set (bundled with "
                    "scikit-learn; MLP or CNN, test accuracy and loss), or a Transformer on "
                    "the sort task generated in code (validation loss, mean over --seeds).")
    p.add_argument("--dataset", choices=["digits", "markov", "sort"], default="digits",
                   help="digits (8x8 images, fixed stratified 80/20 split), markov (an order-2 "
                        "Markov chain's sequences) or sort (12 digits and their sorted copy); "
                        "the last two are made in code; default digits")
    p.add_argument("--model", choices=["mlp", "cnn", "transformer"],
                   help="digits: mlp (default) or cnn; markov, sort: transformer (default)")
    p.add_argument("--format", default="bfp8", metavar="FMT",
                   type=cli_args.format_name(minifloat=True, operand_pairs=True,
                                             accumulators=True),
                   help="HBFP format to train (preset name, default bfp8; the MX and Block "
                        "Minifloat presets with --backend emulate; A/G: activations and "
                        "weights in A, gradients in G, e.g. mxfp8_e4m3/mxfp8_e5m2; a suffix "
                        "_fp32kahan, _bf16rne, _bf16sr or _exact sets the GEMMs' accumulator, "
                        "e.g. bfp8_bf16sr; the posits posit8_es0, posit8_es2, posit16_es1 with "
                        "a quire; these with --backend emulate)")
    p.add_argument("--formats", metavar="LIST",
                   type=cli_args.format_names(minifloat=True, operand_pairs=True,
                                              accumulators=True),
                   help="comma-separated formats, e.g. bfp8,bfp4,fp32 (overrides --format); "
                        "fp32 is always trained as the reference")
    p.add_argument("--layer", action="append", metavar="PATTERN=FMT",
                   help="per-layer format, repeatable, first match wins: PATTERN is a glob on "
                        "the qualified module name or re:REGEX, FMT a preset name or fp32 "
                        "(convert's layers=); applies to every HBFP format")
    p.add_argument("--epochs", type=cli_args.positive_int("--epochs"), default=20,
                   help="digits: training epochs (default 20)")
    p.add_argument("--steps", type=cli_args.positive_int("--steps", 1_000_000), default=600,
                   help="markov, sort: training steps per run (default 600)")
    p.add_argument("--seeds", type=cli_args.int_list("--seeds", 0, 0xFFFFFFFF),
                   help="markov, sort: comma-separated training seeds, one run each (default "
                        "0,1,2)")
    p.add_argument("--batch-size", type=cli_args.positive_int("--batch-size"), default=64)
    p.add_argument("--lr", type=cli_args.positive_float("--lr"),
                   help="learning rate: digits SGD with momentum 0.9 (default 0.05); markov, "
                        "sort: AdamW peak (default 0.003)")
    p.add_argument("--backend", choices=["emulate", "device"], default="emulate")
    p.add_argument("--device", metavar="URL", type=cli_args.device_url(),
                   help="device URL for --backend device (default sim: the simulated board; "
                        "also sim://?instance=N, tcp://HOST:PORT, serial:///dev/ttyUSB0)")
    p.add_argument("--seed", type=cli_args.seed(), default=0)
    p.add_argument("--json", metavar="PATH", help="write results and curves as JSON")
    p.add_argument("--plot", metavar="PNG",
                   help="write the training curves here (default train_DATASET_MODEL.png)")
    p.add_argument("--threads", type=cli_args.positive_int("--threads", 1024),
                   help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


def validate(args):
    models = {"digits": ("mlp", "cnn")}.get(args.dataset, ("transformer",))
    if args.model is None:
        args.model = models[0]
    elif args.model not in models:
        raise cli_args.UsageError(f"--model must be {' or '.join(models)} for --dataset "
                                  f"{args.dataset}, not {args.model!r}")
    if args.dataset == "digits" and args.seeds is not None:
        raise cli_args.UsageError("--seeds is for --dataset markov or sort (digits takes "
                                  "--seed)")
    if args.lr is None:
        args.lr = 0.05 if args.dataset == "digits" else 0.003
    if args.device is not None and args.backend != "device":
        raise cli_args.UsageError("--device needs --backend device")
    if args.device is not None:
        cli_args.check_sim_options("--device", args.device)
    # FP32, the reference, always comes first.
    args._formats = list(dict.fromkeys(["fp32", *(args.formats or [args.format])]))
    if args.backend == "device":
        flag = "--formats" if args.formats else "--format"
        for name in args._formats:
            if "/" in name:
                raise cli_args.UsageError(
                    f"{flag}: {name} gives the gradients their own format, which the device "
                    f"does not implement (one format for both operands); train it with "
                    f"--backend emulate")
            if name != "fp32" and split_accumulator(name)[1] is not Accumulator.FP32:
                raise cli_args.UsageError(
                    f"{flag}: {name} accumulates in {split_accumulator(name)[1]}, which the "
                    f"device does not implement (it accumulates in fp32); train it with "
                    f"--backend emulate")
    args._plot = args.plot or f"train_{args.dataset}_{args.model}.png"
    cli_args.check_output_file("--plot", args._plot)
    cli_args.check_output_file("--json", args.json)
    try:
        import torch  # noqa: F401
    except ImportError:
        raise cli_args.UsageError("train needs PyTorch, which is not installed; install the "
                                  "extra: pip install 'hbfp-hw[torch]'") from None
    args._layers = _check_layers(args) if args.layer else None


def _check_layers(args):
    """Parse --layer and convert the model once (emulate backend, no training), so that a
    pattern that matches no layer is reported before the data is loaded."""
    import warnings

    from hbfp_hw.torch.modules import convert
    from hbfp_hw.torch.seqtask import TASKS, task_model
    from hbfp_hw.torch.train import build_model, parse_layer_rules

    try:
        rules = parse_layer_rules(args.layer)
        hbfp = [f for f in args._formats if f != "fp32"]
        if hbfp:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = task_model(TASKS[args.dataset]) if args.model == "transformer" else \
                    build_model(args.model)
                convert(model, fmt=hbfp[0], layers=rules)
    except (TypeError, ValueError) as e:
        text = cli_args.one_line(e)
        raise cli_args.UsageError(text if text.startswith("--layer") else f"--layer: {text}") \
            from None
    return rules


def run(args):
    """Run ``hbfp-hw train``; returns the exit status."""
    from hbfp_hw.torch import seqtask, train

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.dataset != "digits":
        task = seqtask
        run = seqtask.train_sequence(args.dataset, args._formats, seeds=args.seeds or (0, 1, 2),
                                     steps=args.steps, batch=args.batch_size, lr=args.lr,
                                     backend=args.backend, device=args.device,
                                     layers=args._layers, progress=not args.no_progress)
    else:
        task = train
        run = train.train_formats(args.model, args._formats, epochs=args.epochs,
                                  batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                  backend=args.backend, device=args.device,
                                  progress=not args.no_progress, layers=args._layers)
    print(task.format_table(run))
    try:
        task.plot_curves(run, args._plot)
    except OSError as e:
        raise cli_args.CommandError(f"--plot: cannot write {args._plot!r}: {e.strerror or e}") \
            from None
    print(f"wrote {args._plot}")
    if args.json:
        run["plot"] = args._plot
        try:
            train.write_json(run, args.json)
        except OSError as e:
            raise cli_args.CommandError(f"--json: cannot write {args.json!r}: "
                                        f"{e.strerror or e}") from None
        print(f"wrote {args.json}")
    return 0

"""The ``hbfp-hw train`` subcommand. Importing this module does not import torch."""

from __future__ import annotations

import sys

from hbfp_hw.cliargs import positive_float, positive_int, seed

__all__ = ["register", "cmd_train"]


def register(subparsers):
    """Add the ``train`` subcommand to an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "train", help="train FP32 and HBFP models on real data and compare them",
        description="Train a small model on the digits data set (bundled with scikit-learn) in "
                    "FP32 and in HBFP formats, from the same seed and initialization, and "
                    "compare test accuracy and loss.")
    p.add_argument("--dataset", choices=["digits"], default="digits",
                   help="data set (default digits: 8x8 images, fixed stratified 80/20 split)")
    p.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    p.add_argument("--format", default="bfp8", metavar="FMT",
                   help="HBFP format to train (preset name, default bfp8)")
    p.add_argument("--formats", metavar="LIST",
                   help="comma-separated formats, e.g. bfp8,bfp4,fp32 (overrides --format); "
                        "fp32 is always trained as the reference")
    p.add_argument("--epochs", type=positive_int("--epochs"), default=20)
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=64)
    p.add_argument("--lr", type=positive_float("--lr"), default=0.05,
                   help="SGD learning rate (momentum 0.9), default 0.05")
    p.add_argument("--backend", choices=["emulate", "device"], default="emulate")
    p.add_argument("--device", metavar="URL",
                   help="device URL for --backend device (default sim: the simulated board; "
                        "also sim://?instance=N, tcp://HOST:PORT, serial:///dev/ttyUSB0)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--json", metavar="PATH", help="write results and curves as JSON")
    p.add_argument("--plot", metavar="PNG",
                   help="write the training curves here (default train_digits_MODEL.png)")
    p.add_argument("--threads", type=positive_int("--threads"),
                   help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=cmd_train)


def cmd_train(args):
    """Run ``hbfp-hw train``; returns the exit status."""
    from hbfp_hw.fpga.driver import DeviceError
    from hbfp_hw.torch import train
    from hbfp_hw.torch.backends import BackendUnavailableError

    try:
        formats = train.parse_formats(args.formats, None if args.formats else args.format)
    except ValueError as e:
        print(f"error: --formats: {e}", file=sys.stderr)
        return 2
    if args.device is not None and args.backend != "device":
        print("error: --device needs --backend device", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        run = train.train_formats(args.model, formats, epochs=args.epochs,
                                  batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                  backend=args.backend, device=args.device,
                                  progress=not args.no_progress)
    except (BackendUnavailableError, DeviceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(train.format_table(run))
    plot = args.plot or f"train_digits_{args.model}.png"
    train.plot_curves(run, plot)
    print(f"wrote {plot}")
    if args.json:
        run["plot"] = plot
        train.write_json(run, args.json)
        print(f"wrote {args.json}")
    return 0

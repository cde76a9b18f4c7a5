"""The ``hbfp-hw`` command line: one entry point, one module per subcommand.

Each subcommand module has ``add_parser(subparsers)``, ``validate(args)`` and ``run(args)``.
The CLI only parses, validates and calls: the work is done by the product modules, which are
imported inside ``run`` (parsing imports neither torch nor cocotb). :func:`main` checks every
argument before any work starts; a bad argument is one line on stderr naming the flag, exit
code 2, and so is a failure that is the user's to fix (a device that is not there, a build
tool that is missing, an output that cannot be written).
"""

from __future__ import annotations

import importlib
import sys

from .args import CommandError, Parser, UsageError, one_line

__all__ = ["main", "build_parser", "COMMANDS"]

#: Subcommand modules, in the order of ``hbfp-hw --help``.
COMMANDS = ["demo", "formats", "generate", "verify", "build", "sweep", "gemm", "serve", "train"]


def build_parser():
    """Return the ``hbfp-hw`` argument parser (every subcommand registered)."""
    parser = Parser(
        prog="hbfp-hw",
        description="Hardware generator for Hybrid Block Floating Point (HBFP) arithmetic: "
                    "bit-exact golden model, RTL generators, verification, FPGA builds and "
                    "PyTorch offload.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        p = module.add_parser(sub)
        p.set_defaults(_module=module, _parser=p)
    return parser


def _user_faults():
    """Exception classes of the product modules that mean "the user's to fix", from the
    modules already imported (a module that was never imported raised nothing)."""
    found = [CommandError]
    for module, names in (("hbfp_hw.fpga.host.transport", ("DeviceError",)),
                          ("hbfp_hw.fpga.boards.build", ("BuildError",)),
                          ("hbfp_hw.fpga.host.simboard.simboard", ("BuildError",)),
                          ("hbfp_hw.torch.backends", ("BackendUnavailableError",))):
        mod = sys.modules.get(module)
        for name in names:
            cls = getattr(mod, name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                found.append(cls)
    return tuple(found)


def main(argv=None):
    """Run ``hbfp-hw`` with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    A bad argument prints one line, ``hbfp-hw CMD: error: --flag ...``, and returns 2 before
    any work; so does a failure that is the user's to fix (``hbfp-hw: error: ...``).
    ``--help`` returns 0. Other exceptions are bugs and propagate.
    """
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        module, sub = args._module, args._parser
        if extra:
            sub.error(f"unrecognized arguments: {' '.join(extra)}")
        try:
            module.validate(args)
        except UsageError as e:
            sub.error(str(e))
        try:
            return module.run(args)
        except UsageError as e:
            sub.error(str(e))
    except SystemExit as e:       # argparse: --help (0) or a bad argument (2)
        return 0 if e.code is None else e.code
    except _user_faults() as e:
        print(f"hbfp-hw: error: {one_line(e)}", file=sys.stderr)
        return 2

"""The ``hbfp-hw`` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

import numpy as np

from hbfp_hw import cliargs
from hbfp_hw.formats import PRESETS, resolve_format

#: Modules that contribute subcommands through ``register(subparsers)``.
COMMAND_MODULES = [
    "hbfp_hw.rtl_gen.commands",   # generate
    "hbfp_hw.sim.commands",       # verify
    "hbfp_hw.fpga.commands",      # build
    "hbfp_hw.fpga.sweep_commands",  # sweep
    "hbfp_hw.fpga.driver_commands",  # gemm, serve
    "hbfp_hw.torch.commands",     # train
]


def _format_arg(text):
    try:
        return resolve_format(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--format must be one of the presets {', '.join(PRESETS)}, not {text!r}") from None


def _write_json(path, payload):
    if path:
        with open(path, "w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
        print(f"wrote {path}")


# -- formats ------------------------------------------------------------------------------------

def cmd_formats(args):
    rows = []
    for fmt in PRESETS.values():
        d = fmt.to_dict()
        d["max_mantissa"] = fmt.max_mantissa
        d["product_bits"] = fmt.product_bits
        d["default"] = fmt is PRESETS["bfp8"]
        rows.append(d)
    print(f"{'preset':8} {'w':>3} {'block':>5} {'rounding':13} {'exp bits':>8} {'MAC width':>9}")
    for d in rows:
        mark = "  (default)" if d["default"] else ""
        print(f"{d['name']:8} {d['mantissa_bits']:>3} {d['block_size']:>5} {d['rounding']:13} "
              f"{d['exponent_bits']:>8} {d['product_bits']:>9}{mark}")
    _write_json(args.json, {"presets": rows})
    return 0


# -- demo ---------------------------------------------------------------------------------------

def _reference_by_blocks(a, b, fmt, seed):
    """The contract spelled out step by step: quantize, block dots, sequential FP32 sums."""
    from hbfp_hw import golden

    seed_b = None if seed is None else (seed + 1) % (1 << 32)
    qa = golden.quantize(a, fmt, axis=1, seed=seed)
    qb = golden.quantize(b, fmt, axis=0, seed=seed_b)
    dots = golden.dot(
        golden.BFPTensor(qa.exponents[:, None], qa.mantissas[:, None], fmt, qa.shape, 1),
        golden.BFPTensor(qb.exponents[None], qb.mantissas[None], fmt, qb.shape, 0))
    return golden.accumulate(dots, axis=-1)


def cmd_demo(args):
    from hbfp_hw import golden

    rng = np.random.default_rng(args.seed)
    m, n, k = args.m, args.n, args.k
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    fp32 = a @ b
    scale = np.abs(exact).max()

    formats = [args.format] + [f for f in (PRESETS["mxint8"], PRESETS["bfp4"])
                               if f != args.format]
    print(f"hbfp-hw demo: HBFP GEMM [{m}x{k}] @ [{k}x{n}] on the golden model "
          f"(numpy, bit-exact contract of docs/numerics.md)")
    print(f"{'format':10} {'bit-exact vs step-by-step':>26} {'max |err| / max|C|':>19} "
          f"{'time':>9}")
    results = []
    ok = True
    for fmt in formats:
        t0 = time.perf_counter()
        c = golden.gemm(a, b, fmt, seed=args.seed)
        elapsed = time.perf_counter() - t0
        ref = _reference_by_blocks(a, b, fmt, args.seed)
        same = bool(np.array_equal(c.view(np.uint32), ref.view(np.uint32)))
        ok &= same
        err = float(np.abs(c - exact).max() / scale)
        results.append({"format": fmt.to_dict(), "bit_exact": same, "rel_error": err,
                        "seconds": elapsed})
        print(f"{fmt.name:10} {'yes' if same else 'NO':>26} {err:>19.3e} "
              f"{elapsed * 1e3:>7.1f}ms")
    fp32_err = float(np.abs(fp32 - exact).max() / scale)
    print(f"{'fp32':10} {'-':>26} {fp32_err:>19.3e}")
    if not ok:
        print("error: the fast golden GEMM disagrees with the step-by-step contract",
              file=sys.stderr)

    offload = None
    if args.device != "none":
        from hbfp_hw.fpga.driver import demo_offload

        print(f"\nThe same kind of GEMM offloaded to the device {args.device!r} "
              f"(the simulated board runs the real gateware under Verilator; the first run "
              f"builds it, which takes a minute):")
        offload = demo_offload(url=args.device)
        ok &= offload
    _write_json(args.json, {"shape": [m, n, k], "results": results, "fp32_rel_error": fp32_err,
                            "offload_bit_exact": offload})
    return 0 if ok else 1


# -- parser -------------------------------------------------------------------------------------

def build_parser():
    parser = argparse.ArgumentParser(
        prog="hbfp-hw",
        description="Hardware generator for Hybrid Block Floating Point (HBFP) arithmetic: "
                    "bit-exact golden model, RTL generators, verification, FPGA builds and "
                    "PyTorch offload.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("demo", help="run the main job on the embedded default",
                       description="Run an HBFP GEMM on the embedded default and check it "
                                   "bit for bit against the step-by-step contract.")
    p.add_argument("--format", type=_format_arg, default=PRESETS["bfp8"],
                   help=f"preset name ({', '.join(PRESETS)}); default bfp8")
    p.add_argument("--m", type=cliargs.positive_int("--m"), default=64)
    p.add_argument("--n", type=cliargs.positive_int("--n"), default=64)
    p.add_argument("--k", type=cliargs.positive_int("--k"), default=256)
    p.add_argument("--seed", type=cliargs.seed, default=0)
    p.add_argument("--device", default="sim", metavar="URL",
                   help="device for the offloaded GEMM (default: sim, the simulated board; "
                        "'none' skips it)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("formats", help="list the BFP format presets",
                       description="List the BFP format presets.")
    p.add_argument("--json", metavar="PATH", help="write the presets as JSON")
    p.set_defaults(func=cmd_formats)

    # Subcommands that live with their subsystem. Each module's register(sub) adds its
    # parsers without importing heavy dependencies (torch, cocotb) at parse time.
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "build_parser"]

"""``hbfp-hw demo``: an HBFP GEMM on the golden model, checked against the step-by-step
contract, then offloaded to a device (``make demo``)."""

from __future__ import annotations

import sys
import time

from hbfp_hw.formats import PRESETS

from . import args as cli_args

__all__ = ["add_parser", "validate", "run"]


def add_parser(sub):
    p = sub.add_parser("demo", help="run the main job on the embedded default",
                       description="Run an HBFP GEMM on the embedded default and check it "
                                   "bit for bit against the step-by-step contract.")
    p.add_argument("--format", type=cli_args.format_preset(minifloat=True),
                   default=PRESETS["bfp8"],
                   help=f"preset name ({', '.join(PRESETS)}); default bfp8. The offload runs "
                        f"in it too: on 'sim', a simulated board built for it")
    p.add_argument("--m", type=cli_args.positive_int("--m"), default=64)
    p.add_argument("--n", type=cli_args.positive_int("--n"), default=64)
    p.add_argument("--k", type=cli_args.positive_int("--k"), default=256)
    p.add_argument("--seed", type=cli_args.seed(), default=0)
    p.add_argument("--device", default="sim", metavar="URL",
                   type=cli_args.device_url(allow_none=True),
                   help="device for the offloaded GEMM (default: sim, the simulated board; "
                        "'none' skips it)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    return p


def validate(args):
    if args.device != "none":
        cli_args.check_sim_options("--device", args.device)
    cli_args.check_shape(args.m, args.n, args.k)
    cli_args.check_output_file("--json", args.json)


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


def run(args):
    import numpy as np

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
        from hbfp_hw.fpga.host.driver import demo_offload

        print(f"\nThe same kind of GEMM offloaded to the device {args.device!r} "
              f"(the simulated board runs the real gateware under Verilator; the first run "
              f"builds it, which takes a minute):")
        offload = demo_offload(url=args.device, fmt=args.format)
        ok &= offload
    cli_args.write_json(args.json, {"shape": [m, n, k], "results": results,
                                    "fp32_rel_error": fp32_err, "offload_bit_exact": offload})
    return 0 if ok else 1

"""``hbfp-hw gemm``: offload a random GEMM to a device and check it bit for bit."""

from __future__ import annotations

import time

from . import args as cli_args

__all__ = ["add_parser", "validate", "run"]


def add_parser(sub):
    p = sub.add_parser(
        "gemm", help="run a random GEMM on a device and check it against the golden model",
        description="Run a random GEMM C = A @ B (A: M x K, B: K x N, float32 normal values) "
                    "on a device, check it bit for bit against hbfp_hw.golden.gemm for the "
                    "device's format, and print whether it is bit-exact, the time and the "
                    "throughput. Device URLs: 'sim' (the simulated board, built on first use), "
                    "'serial:///dev/ttyUSB0?baud=3000000', 'tcp://127.0.0.1:7777'.")
    p.add_argument("--device", default="sim", metavar="URL", type=cli_args.device_url(),
                   help="device URL (default: sim)")
    p.add_argument("--m", type=cli_args.positive_int("--m"), default=64)
    p.add_argument("--n", type=cli_args.positive_int("--n"), default=64)
    p.add_argument("--k", type=cli_args.positive_int("--k"), default=64)
    p.add_argument("--wire", choices=("bfp", "fp32"), default="bfp",
                   help="send host-quantized BFP blocks (default) or raw FP32 values")
    p.add_argument("--seed", type=cli_args.seed(), default=0, help="seed of the random operands")
    p.add_argument("--json", metavar="PATH", help="write the result as JSON")
    return p


def validate(args):
    cli_args.check_sim_options("--device", args.device)
    cli_args.check_shape(args.m, args.n, args.k)
    cli_args.check_output_file("--json", args.json)


def run(args):
    import numpy as np

    from hbfp_hw import golden
    from hbfp_hw.fpga.host.driver import Device

    rng = np.random.default_rng(args.seed)
    a = rng.standard_normal((args.m, args.k)).astype(np.float32)
    b = rng.standard_normal((args.k, args.n)).astype(np.float32)
    t0 = time.perf_counter()
    with Device.open(args.device) as dev:
        t1 = time.perf_counter()
        info = dev.info()
        c = dev.gemm(a, b, wire=args.wire)
        t2 = time.perf_counter()
        stats = dict(dev.stats)
    ref = golden.gemm(a, b, info.fmt, input_format=info.input_format)
    exact = bool(np.array_equal(c.view(np.uint32), ref.view(np.uint32)))
    seconds = t2 - t1
    gflops = 2.0 * args.m * args.n * args.k / seconds / 1e9
    print(f"device: {args.device} ({info.fmt.name}, {info.lanes} lanes, "
          f"{info.input_format.value} input)")
    print(f"gemm: [{args.m}x{args.k}] @ [{args.k}x{args.n}], wire={args.wire}")
    print(f"bit-exact: {'yes' if exact else 'no'}")
    print(f"time: {seconds * 1e3:.1f} ms (open {(t1 - t0) * 1e3:.0f} ms)")
    print(f"throughput: {gflops * 1e3:.3f} MFLOP/s, "
          f"{(stats['tx_bytes'] + stats['rx_bytes']) / seconds / 1e3:.1f} kB/s on the link")
    if stats["retries"] or stats["lost"]:
        print(f"link: {stats['retries']} retries, {stats['lost']} lost replies")
    cli_args.write_json(args.json, {
        "device": args.device, "format": info.fmt.to_dict(), "m": args.m, "n": args.n,
        "k": args.k, "wire": args.wire, "seed": args.seed, "bit_exact": exact,
        "seconds": seconds, "gflops": gflops, "stats": stats})
    return 0 if exact else 1

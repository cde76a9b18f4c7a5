"""``hbfp-hw gemm`` and ``hbfp-hw serve``: offload a GEMM to a device, share a device."""

from __future__ import annotations

import json
import signal
import sys
import time

from hbfp_hw.cliargs import positive_int, seed

__all__ = ["register", "cmd_gemm", "cmd_serve"]


def register(subparsers):
    """Add the ``gemm`` and ``serve`` subcommands (the driver is imported when they run)."""
    p = subparsers.add_parser(
        "gemm", help="run a random GEMM on a device and check it against the golden model",
        description="Run a random GEMM C = A @ B (A: M x K, B: K x N, float32 normal values) "
                    "on a device, check it bit for bit against hbfp_hw.golden.gemm for the "
                    "device's format, and print whether it is bit-exact, the time and the "
                    "throughput. Device URLs: 'sim' (the simulated board, built on first use), "
                    "'serial:///dev/ttyUSB0?baud=3000000', 'tcp://127.0.0.1:7777'.")
    p.add_argument("--device", default="sim", metavar="URL", help="device URL (default: sim)")
    p.add_argument("--m", type=positive_int("--m"), default=64)
    p.add_argument("--n", type=positive_int("--n"), default=64)
    p.add_argument("--k", type=positive_int("--k"), default=64)
    p.add_argument("--wire", choices=("bfp", "fp32"), default="bfp",
                   help="send host-quantized BFP blocks (default) or raw FP32 values")
    p.add_argument("--seed", type=seed, default=0, help="seed of the random operands")
    p.add_argument("--json", metavar="PATH", help="write the result as JSON")
    p.set_defaults(func=cmd_gemm)

    p = subparsers.add_parser(
        "serve", help="share a device with other processes over TCP",
        description="Expose one device on a TCP port: clients open it as tcp://HOST:PORT. "
                    "Clients are served one at a time; only valid frames within the device's "
                    "max payload are forwarded. Binds loopback unless --allow-remote is given.")
    p.add_argument("--device", default="sim", metavar="URL", help="device URL (default: sim)")
    p.add_argument("--listen", default="127.0.0.1:7777", metavar="HOST:PORT",
                   help="address to listen on (default 127.0.0.1:7777)")
    p.add_argument("--allow-remote", action="store_true",
                   help="permit a non-loopback listen address (the protocol has no "
                        "authentication: use only on a trusted network)")
    p.set_defaults(func=cmd_serve)


def cmd_gemm(args):
    import numpy as np

    from hbfp_hw import golden
    from hbfp_hw.fpga.driver import Device, DeviceError

    rng = np.random.default_rng(args.seed)
    a = rng.standard_normal((args.m, args.k)).astype(np.float32)
    b = rng.standard_normal((args.k, args.n)).astype(np.float32)
    try:
        t0 = time.perf_counter()
        with Device.open(args.device) as dev:
            t1 = time.perf_counter()
            info = dev.info()
            c = dev.gemm(a, b, wire=args.wire)
            t2 = time.perf_counter()
            stats = dict(dev.stats)
    except (DeviceError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "format": info.fmt.to_dict(),
                       "m": args.m, "n": args.n, "k": args.k, "wire": args.wire,
                       "seed": args.seed, "bit_exact": exact, "seconds": seconds,
                       "gflops": gflops, "stats": stats}, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")
    return 0 if exact else 1


def cmd_serve(args):
    from hbfp_hw.fpga.driver import DeviceError
    from hbfp_hw.fpga.server import DeviceServer, parse_listen

    try:
        listen = parse_listen(args.listen)
        server = DeviceServer(args.device, listen, allow_remote=args.allow_remote,
                              log=lambda msg: print(msg, flush=True))
    except (PermissionError, ValueError, DeviceError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    host, port = server.address
    info = server.info
    print(f"serving {args.device} ({info.fmt.name}, {info.lanes} lanes) on tcp://{host}:{port}"
          f" -- Ctrl-C to stop", flush=True)
    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopping")
    finally:
        server.close()
    return 0

"""``hbfp-hw serve``: share a device with other processes over TCP."""

from __future__ import annotations

import signal
import socket

from . import args as cli_args

__all__ = ["add_parser", "validate", "run"]


def add_parser(sub):
    p = sub.add_parser(
        "serve", help="share a device with other processes over TCP",
        description="Expose one device on a TCP port: clients open it as tcp://HOST:PORT. "
                    "Clients are served one at a time; only valid frames within the device's "
                    "max payload are forwarded. Binds loopback unless --allow-remote is given.")
    p.add_argument("--device", default="sim", metavar="URL", type=cli_args.device_url(),
                   help="device URL (default: sim)")
    p.add_argument("--listen", default="127.0.0.1:7777", metavar="HOST:PORT",
                   type=cli_args.listen_address(),
                   help="address to listen on (default 127.0.0.1:7777)")
    p.add_argument("--allow-remote", action="store_true",
                   help="permit a non-loopback listen address (the protocol has no "
                        "authentication: use only on a trusted network)")
    return p


def validate(args):
    from hbfp_hw.fpga.host.server import is_loopback

    cli_args.check_sim_options("--device", args.device)

    host, port = args.listen
    if not args.allow_remote and not is_loopback(host):
        raise cli_args.UsageError(
            f"--listen {host}:{port} is not a loopback address; the protocol has no "
            f"authentication, so serving other machines needs --allow-remote")
    # Bind once now: an address in use or not of this machine is reported before the device
    # is opened (the simulated board may take a minute to build).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as e:
        raise cli_args.UsageError(f"--listen {host}:{port}: cannot listen there "
                                  f"({e.strerror or e})") from None


def run(args):
    from hbfp_hw.fpga.host.server import DeviceServer

    try:
        server = DeviceServer(args.device, args.listen, allow_remote=args.allow_remote,
                              log=lambda msg: print(msg, flush=True))
    except (PermissionError, ValueError) as exc:
        raise cli_args.CommandError(str(exc)) from None
    except OSError as exc:
        host, port = args.listen
        raise cli_args.CommandError(f"--listen {host}:{port}: {exc.strerror or exc}") from None
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

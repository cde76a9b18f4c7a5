"""``hbfp-hw serve``: TCP clients run the same driver; loopback only unless allowed."""

import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from hbfp_hw.fpga import protocol
from hbfp_hw.fpga.host.driver import Device, DeviceNotFound
from hbfp_hw.fpga.host.server import DeviceServer, is_loopback, parse_listen
from hbfp_hw.fpga.protocol import Cmd, FrameParser

from .conftest import assert_bit_exact, random_operands


@pytest.fixture(scope="module")
def server(sim_config):
    with DeviceServer("sim://?instance=server", ("127.0.0.1", 0)) as srv:
        srv.start()
        yield srv


def url(srv):
    host, port = srv.address
    return f"tcp://{host}:{port}"


def test_refuses_non_loopback_without_flag(sim_config):
    with pytest.raises(PermissionError, match=r"not a loopback address.*--allow-remote"):
        DeviceServer("sim", ("0.0.0.0", 0))
    with pytest.raises(PermissionError):
        DeviceServer("sim", ("192.0.2.1", 0))
    # With the flag it binds (all interfaces here).
    with DeviceServer("sim", ("0.0.0.0", 0), allow_remote=True) as srv:
        assert srv.address[0] == "0.0.0.0"


def test_cli_serve_refuses_non_loopback(sim_config):
    proc = subprocess.run([sys.executable, "-m", "hbfp_hw.cli", "serve", "--device", "sim",
                           "--listen", "0.0.0.0:0"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "not a loopback address" in proc.stderr and "--allow-remote" in proc.stderr


def test_listen_parsing():
    assert parse_listen("127.0.0.1:7777") == ("127.0.0.1", 7777)
    assert parse_listen("[::1]:80") == ("::1", 80)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen("7777x")
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")


def test_gemm_over_tcp(server):
    rng = np.random.default_rng(0)
    with Device.open(url(server)) as dev:
        assert dev.info() == server.info
        for m, k, n, wire in [(1, 1, 1, "bfp"), (33, 70, 20, "bfp"), (64, 64, 64, "fp32")]:
            a, b = random_operands(rng, m, k, n)
            assert_bit_exact(dev.gemm(a, b, wire=wire), a, b, dev.info())


def test_clients_are_serialized(server):
    rng = np.random.default_rng(1)
    a, b = random_operands(rng, 8, 20, 8)
    with Device.open(url(server)) as first:
        first.gemm(a, b)
        # A second client waits for its turn: it cannot get INFO while the first is served.
        sock = socket.create_connection(server.address)
        sock.sendall(protocol.encode_frame(Cmd.INFO, 1))
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(100)
        assert_bit_exact(first.gemm(a, b), a, b, first.info())
    sock.settimeout(10)
    parser = FrameParser()
    frames = []
    while not frames:
        frames = parser.feed(sock.recv(1000))
    assert frames[0].seq == 1 and protocol.Info.from_bytes(frames[0].body) == server.info
    sock.close()


def test_disconnect_mid_frame_and_oversize_requests(server):
    # A client that leaves in the middle of a frame...
    sock = socket.create_connection(server.address)
    frame = protocol.request_write(Cmd.WRITE_A, 3, 0, 10, bytes(170), protocol.Wire.BFP)
    sock.sendall(frame[:50])
    sock.close()
    # ... and one that sends an oversize frame, garbage and a bad CRC: nothing is forwarded,
    # and the client is answered only for its valid frame.
    sock = socket.create_connection(server.address)
    big = protocol.encode_frame(Cmd.WRITE_A, 4, bytes(server.info.max_payload + 1))
    bad = bytearray(protocol.encode_frame(Cmd.INFO, 5))
    bad[-1] ^= 0xFF
    sock.sendall(big + bytes(range(256)) + bytes(bad) + protocol.encode_frame(Cmd.STATUS, 6))
    sock.settimeout(10)
    parser = FrameParser()
    frames = []
    while not frames:
        frames = parser.feed(sock.recv(1000))
    assert [(f.cmd, f.seq) for f in frames] == [(Cmd.STATUS | 0x80, 6)]
    sock.close()
    # The device state survived: a full GEMM still works.
    rng = np.random.default_rng(2)
    a, b = random_operands(rng, 5, 30, 6)
    with Device.open(url(server)) as dev:
        assert_bit_exact(dev.gemm(a, b), a, b, dev.info())


def test_too_much_garbage_disconnects(server):
    sock = socket.create_connection(server.address)
    junk = b"".join(protocol.encode_frame(Cmd.INFO, i)[:-1] + b"\0" for i in range(80))
    sock.sendall(junk)
    sock.settimeout(10)
    deadline = time.monotonic() + 10
    data = b"x"
    while data and time.monotonic() < deadline:
        data = sock.recv(1000)
    assert data == b""                         # the server closed the connection
    sock.close()


def test_server_gone(sim_config):
    srv = DeviceServer("sim://?instance=gone", ("127.0.0.1", 0)).start()
    address = url(srv)
    dev = Device.open(address)
    srv.close()
    with pytest.raises(DeviceNotFound):
        dev.gemm(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32))
    dev.close()


def test_cli_gemm_over_tcp(server, capsys):
    from hbfp_hw.cli import main
    assert main(["gemm", "--device", url(server), "--m", "16", "--n", "16", "--k", "16"]) == 0
    assert "bit-exact: yes" in capsys.readouterr().out


def test_cli_serve_end_to_end(sim_config):
    import re
    import signal

    with subprocess.Popen([sys.executable, "-m", "hbfp_hw.cli", "serve", "--device",
                           "sim://?instance=cli", "--listen", "127.0.0.1:0"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        try:
            line = proc.stdout.readline()
            match = re.search(r"on (tcp://127\.0\.0\.1:\d+)", line)
            assert match, line
            rng = np.random.default_rng(8)
            a, b = random_operands(rng, 12, 50, 10)
            with Device.open(match.group(1)) as dev:
                assert_bit_exact(dev.gemm(a, b), a, b, dev.info())
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0


def test_replies_of_a_departed_client_do_not_reach_the_next(server):
    # A client pipelines many requests and leaves at once; the device answers them all
    # after it has gone. The next client must see none of those replies.
    sock = socket.create_connection(server.address)
    frames = [protocol.request_write(Cmd.WRITE_A, s, 0, 50, bytes(50 * 17), protocol.Wire.BFP)
              for s in range(40)]
    frames += [protocol.request_read(s, 0, 0, 1, rows=1, cols=1) for s in range(40, 80)]
    sock.sendall(b"".join(frames))
    sock.close()
    sock = socket.create_connection(server.address)
    sock.sendall(protocol.encode_frame(Cmd.INFO, 200))
    sock.settimeout(20)
    parser = FrameParser()
    frames = []
    while not frames:
        frames = parser.feed(sock.recv(1 << 16))
    assert [(f.cmd, f.seq) for f in frames] == [(Cmd.INFO | 0x80, 200)]
    sock.close()

"""``hbfp-hw serve``: share one board with other processes and machines over TCP.

The server is a frame-level relay. It opens the device with the driver (which checks the
protocol version), then accepts TCP clients. A client sends request frames and receives the
device's reply bytes, so a :class:`~hbfp_hw.fpga.host.transport.TcpTransport` client runs the same
driver code as a local one.

- **Loopback by default.** A non-loopback listen address is refused unless ``allow_remote``
  (``--allow-remote``) is given; the protocol has no authentication.
- **One client at a time.** The device's buffers hold one client's tiles, so sessions are
  serialized: a client that connects while another is served waits (up to ``max_waiting``
  clients; more are turned away).
- **Disconnects.** A client that goes away mid-frame leaves at most a partial frame in the
  device; the server then drains the device's replies until it has been silent for a whole
  idle timeout before it serves the next client, so the device is in a known state and no
  reply of one client reaches another.
- **Bounded requests.** Only complete frames with a valid CRC and ``length <= max_payload``
  (from INFO) are forwarded; anything else is dropped, and a client that sends too much
  garbage is disconnected. Nothing is ever unpickled or evaluated: the server parses bytes
  with :class:`~hbfp_hw.fpga.protocol.FrameParser` only.
"""

from __future__ import annotations

import ipaddress
import socket
import threading

from ..protocol.frames import FrameParser, encode_frame
from .driver import Device
from .transport import DeviceError

__all__ = ["DeviceServer", "parse_listen", "is_loopback", "DEFAULT_LISTEN"]

DEFAULT_LISTEN = ("127.0.0.1", 7777)


def parse_listen(text):
    """Parse ``host:port`` (``[::1]:7777`` for IPv6) into ``(host, port)``."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen must be HOST:PORT, not {text!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def is_loopback(host):
    """Return whether ``host`` (a name or an address) is a loopback address only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DeviceServer:
    """Serve the device at ``device_url`` on ``listen``.

    Parameters
    ----------
    device_url : str
        Any driver URL (``sim``, ``serial://...``).
    listen : (str, int)
        Address to bind; port 0 picks a free port (see :attr:`address`).
    allow_remote : bool
        Permit a non-loopback bind.
    max_waiting : int
        Clients that may wait for their turn.
    max_errors : int
        Rejected frames after which a client is disconnected.

    Raises
    ------
    PermissionError
        A non-loopback ``listen`` without ``allow_remote``.
    """

    def __init__(self, device_url, listen=DEFAULT_LISTEN, *, allow_remote=False,
                 max_waiting=8, max_errors=64, progress=True, log=None):
        host, port = listen
        if not is_loopback(host) and not allow_remote:
            raise PermissionError(
                f"refusing to listen on {host}: it is not a loopback address and the device "
                f"protocol has no authentication; pass --allow-remote (allow_remote=True) if "
                f"the network is trusted, or use an SSH tunnel to 127.0.0.1")
        self.log = log or (lambda msg: None)
        self.device = Device.open(device_url, progress=progress)
        self.info = self.device.info()
        self._t = self.device._t
        self._settle = self.device._settle_time()
        self._max_waiting = max_waiting
        self._max_errors = max_errors
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError:
            self._sock.close()
            self.device.close()
            raise
        self._sock.listen(max_waiting + 1)
        self.address = self._sock.getsockname()[:2]
        self._session = threading.Lock()
        self._waiting = 0
        self._count_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self.sessions = 0

    # -- running -------------------------------------------------------------------------------

    def start(self):
        """Serve in a background thread; return self."""
        self._thread = threading.Thread(target=self.serve_forever, name="hbfp-hw serve",
                                        daemon=True)
        self._thread.start()
        return self

    def serve_forever(self):
        """Accept clients until :meth:`close`."""
        while not self._stop.is_set():
            try:
                conn, peer = self._sock.accept()
            except OSError:
                break
            with self._count_lock:
                if self._waiting >= self._max_waiting:
                    conn.close()
                    continue
                self._waiting += 1
            threading.Thread(target=self._client, args=(conn, peer), daemon=True).start()

    def close(self):
        """Stop accepting, end the sessions and release the device."""
        self._stop.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._session:
            self.device.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- one client ----------------------------------------------------------------------------

    def _client(self, conn, peer):
        try:
            with self._session, self.device._lock:
                with self._count_lock:
                    self._waiting -= 1
                if self._stop.is_set():
                    return
                self.sessions += 1
                self.log(f"client {peer[0]}:{peer[1]} connected")
                try:
                    self._relay(conn)
                finally:
                    self._quiesce()
                self.log(f"client {peer[0]}:{peer[1]} done")
        finally:
            conn.close()

    def _quiesce(self):
        """Wait until the device has finished the last client's frames and is silent.

        The device answers every frame it received, in order; the replies to a departed
        client's pipelined requests must not reach the next client. Drain until three idle
        timeouts (at least 0.1 s) pass without a byte (at most 200 rounds).
        """
        silence = max(3 * self._settle, 0.1)
        for _ in range(200):
            try:
                if not self._t.drain(silence):
                    return
            except DeviceError:
                return

    def _relay(self, conn):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        done = threading.Event()

        def device_to_client():
            while not done.is_set():
                try:
                    data = self._t.read(0.05)
                except DeviceError:
                    done.set()
                    break
                if data:
                    try:
                        conn.sendall(data)
                    except OSError:
                        done.set()

        pump = threading.Thread(target=device_to_client, daemon=True)
        pump.start()
        parser = FrameParser(max_payload=self.info.max_payload)
        conn.settimeout(0.2)
        try:
            while not done.is_set() and not self._stop.is_set():
                try:
                    data = conn.recv(1 << 16)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not data:
                    break
                for frame in parser.feed(data):
                    self._t.write(encode_frame(frame.cmd, frame.seq, frame.payload))
                if parser.errors > self._max_errors:
                    self.log("client sent too many bad frames; disconnecting")
                    break
        finally:
            done.set()
            pump.join()

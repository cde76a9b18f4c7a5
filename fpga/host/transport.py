"""Byte transports between the host driver and a GEMM device.

A :class:`Transport` moves raw bytes; the driver (:mod:`hbfp_hw.fpga.host.driver`) does the framing,
the sequence numbers and the retries on top of it, so the same driver code runs against all of
them:

- :class:`SerialTransport`: a real board on a UART (pyserial), locked per device path so that a
  second opener gets a clear :class:`DeviceBusy` instead of a garbled link.
- :class:`TcpTransport`: a board behind ``hbfp-hw serve`` (:mod:`hbfp_hw.fpga.host.server`).
- :class:`SimTransport`: the simulated board, the real gateware under Verilator
  (:mod:`hbfp_hw.fpga.host.simboard`), through its stdin/stdout pipes.

The exception classes of the driver live here, so transports raise the same types.
"""

from __future__ import annotations

import abc
import errno
import fcntl
import os
import re
import select
import socket
import tempfile
import threading
import time
from pathlib import Path

from ..protocol import frames as _protocol

__all__ = [
    "DeviceError", "DeviceNotFound", "DeviceBusy", "ProtocolError", "DeviceTimeout",
    "FormatMismatch", "ShapeError",
    "Transport", "SerialTransport", "TcpTransport", "SimTransport",
    "PipeTransport", "lock_dir",
]


# -- errors -------------------------------------------------------------------------------------

class DeviceError(Exception):
    """Base class of every error the driver raises."""


class DeviceNotFound(DeviceError):
    """The device could not be opened (no such port, nothing listening, no simulator)."""


class DeviceBusy(DeviceNotFound):
    """The device is already opened by another process (its lock is held)."""


class ProtocolError(DeviceError, _protocol.ProtocolError):
    """The device answered something the protocol does not allow (or a different version)."""


class DeviceTimeout(DeviceError):
    """The device did not give a valid reply within the bounded number of retries."""


class FormatMismatch(DeviceError):
    """The device's BFP format (or build) is not the one that was asked for."""


class ShapeError(DeviceError, ValueError):
    """The operands of a GEMM have shapes the device cannot take."""


# -- the interface ------------------------------------------------------------------------------

class Transport(abc.ABC):
    """A bidirectional byte pipe to one device.

    Members
    -------
    name : str
        Human-readable description (the URL).
    byte_time : float
        Seconds per byte on the line, or a bound on the device's time per byte if that is
        longer (the driver's reply timeouts scale with it).
    cycle_rate : float or None
        Device clock cycles per second of host time, if not the clock that INFO reports (a
        simulation runs slower).
    latency : float
        A bound on the round-trip time of a short frame, beyond the line time, in seconds.
    window_bytes : int or None
        How many request bytes may be in flight ahead of the device (its receive FIFO), or
        None for "as many as the driver likes".
    rx_fifo_bytes : int or None
        The device's receive FIFO, in bytes, if the line has no flow control and a byte that
        arrives while the FIFO is full is lost: the driver then never has more request bytes
        queued behind a frame whose reply has not fully arrived than this (the device takes no
        input while it executes a frame, nor while its transmit buffer has no room for a
        reply once its decoder holds the next frame: docs/protocol.md 1). None: the line does
        not lose bytes, or ``window_bytes`` already bounds everything in flight.
    cycles_per_byte : float or None
        Device clock cycles per byte time of the line, if not INFO's ``clock_hz`` times
        ``byte_time`` (a simulated line runs on a virtual clock): the driver's bound on how
        long the device takes no input (with ``rx_fifo_bytes``).
    """

    name = "transport"
    byte_time = 0.0
    cycle_rate = None
    latency = 0.05
    window_bytes = None
    rx_fifo_bytes = None
    cycles_per_byte = None

    @abc.abstractmethod
    def write(self, data):
        """Send ``data`` (bytes)."""

    @abc.abstractmethod
    def read(self, timeout):
        """Return the bytes that arrive within ``timeout`` seconds (``b""`` if none).

        Returns as soon as at least one byte is available.
        """

    @abc.abstractmethod
    def close(self):
        """Release the device."""

    def drain(self, duration):
        """Read and discard input for ``duration`` seconds; return the bytes discarded."""
        end = time.monotonic() + duration
        dropped = 0
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return dropped
            dropped += len(self.read(left))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<{type(self).__name__} {self.name}>"


class _BufferedReader:
    """A thread that drains a blocking file descriptor into a buffer (never lets a pipe fill)."""

    def __init__(self, fileno, name):
        self._fd = fileno
        self._buf = bytearray()
        self._cond = threading.Condition()
        self.closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            try:
                data = os.read(self._fd, 1 << 16)
            except OSError:
                data = b""
            with self._cond:
                if not data:
                    self.closed = True
                    self._cond.notify_all()
                    return
                self._buf += data
                self._cond.notify_all()

    def read(self, timeout):
        end = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while not self._buf and not self.closed:
                left = end - time.monotonic()
                if left <= 0:
                    return b""
                self._cond.wait(left)
            data = bytes(self._buf)
            self._buf.clear()
            return data


# -- pipes and the simulated board --------------------------------------------------------------

class PipeTransport(Transport):
    """Bytes over a pair of file descriptors (used by :class:`SimTransport` and the tests)."""

    def __init__(self, read_fd, write_fd, name="pipe"):
        self.name = name
        self._wfd = write_fd
        self._reader = _BufferedReader(read_fd, f"hbfp-hw reader {name}")

    def write(self, data):
        view = memoryview(bytes(data))
        while view:
            try:
                n = os.write(self._wfd, view)
            except BrokenPipeError:
                raise DeviceNotFound(f"{self.name}: the device went away (broken pipe); "
                                     f"open it again") from None
            view = view[n:]

    def read(self, timeout):
        data = self._reader.read(timeout)
        if not data and self._reader.closed:
            raise DeviceNotFound(f"{self.name}: the device closed the link; open it again")
        return data

    def close(self):
        """Do nothing: the descriptors belong to whoever passed them in, who closes them
        (:class:`SimTransport` closes its child's pipes itself)."""


class SimTransport(PipeTransport):
    """The simulated board (``GemmSystem`` under Verilator) as a child process.

    Parameters
    ----------
    config : hbfp_hw.fpga.host.simboard.SimConfig
        The build; built and cached on first use (a minute or two).
    progress : bool
        Report the first build on stderr.
    """

    latency = 0.05
    # The Verilator model runs at a few hundred thousand cycles per second and takes about
    # two cycles per byte; these bounds leave room for a loaded machine. Without the
    # virtual-time line model the harness buffers whatever the host sends, and the window only
    # bounds how much is resent after an error; with it, rx_fifo_bytes is the board's FIFO.
    cycle_rate = 50_000.0
    byte_time = 4e-5
    window_bytes = 65536

    def __init__(self, config=None, *, progress=True, name="sim"):
        from . import simboard

        self.config = config or simboard.SimConfig()
        fd, self._stats_path = tempfile.mkstemp(prefix="hbfp-simboard-", suffix=".stats")
        os.close(fd)
        try:
            self._proc = simboard.launch(self.config, progress=progress,
                                         stats=self._stats_path)
        except simboard.BuildError as exc:
            raise DeviceNotFound(str(exc)) from exc
        if self.config.baud:
            self.byte_time = max(self.byte_time, 10.0 / self.config.baud)
        if self.config.baud and self.config.vclock_hz and self.config.rx_fifo:
            self.rx_fifo_bytes = self.config.rx_fifo        # the line model loses bytes
            self.cycles_per_byte = self.config.vclock_hz * 10.0 / self.config.baud
        super().__init__(self._proc.stdout.fileno(), self._proc.stdin.fileno(), name=name)

    @property
    def pid(self):
        return self._proc.pid

    def link_stats(self):
        """Return the harness counters as of its last idle moment.

        A dict with ``virtual_seconds`` (the line model's clock; 0 without ``vclock_hz``),
        ``cycles``, ``bytes_in``, ``bytes_out``, ``host_wait_seconds`` (the part of the
        virtual time during which the device waited for the host) and ``idle_since`` (the
        :func:`time.monotonic` time at which the harness's current or last wait for the host
        began: a wait counts as line time from then on).
        """
        try:
            fields = Path(self._stats_path).read_text().split()
            vt, cycles, bin_, bout = float(fields[0]), *map(int, fields[1:4])
            host_wait, idle_since = float(fields[4]), float(fields[5])
            overruns = int(fields[6])
        except (OSError, ValueError, IndexError):
            return None
        return {"virtual_seconds": vt, "cycles": cycles, "bytes_in": bin_, "bytes_out": bout,
                "host_wait_seconds": host_wait, "idle_since": idle_since,
                "overruns": overruns}

    def close(self):
        if self._proc.poll() is None:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
            try:
                self._proc.wait(timeout=5)
            except Exception:
                self._proc.kill()
                self._proc.wait()
        self._proc.stdout.close()
        try:
            os.unlink(self._stats_path)
        except OSError:
            pass


# -- TCP ----------------------------------------------------------------------------------------

class TcpTransport(Transport):
    """A board behind ``hbfp-hw serve`` (:mod:`hbfp_hw.fpga.host.server`)."""

    latency = 0.2

    def __init__(self, host, port, *, connect_timeout=5.0):
        self.name = f"tcp://{host}:{port}"
        try:
            self._sock = socket.create_connection((host, port), timeout=connect_timeout)
        except OSError as exc:
            raise DeviceNotFound(f"{self.name}: cannot connect ({exc.strerror or exc}); is "
                                 f"`hbfp-hw serve` running there?") from None
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.settimeout(None)
        self._closed = False

    def write(self, data):
        try:
            self._sock.sendall(bytes(data))
        except OSError as exc:
            raise DeviceNotFound(f"{self.name}: connection lost ({exc}); open it again") \
                from None

    def read(self, timeout):
        if self._closed:
            raise DeviceNotFound(f"{self.name}: the server closed the connection")
        ready, _, _ = select.select([self._sock], [], [], max(0.0, timeout))
        if not ready:
            return b""
        try:
            data = self._sock.recv(1 << 16)
        except OSError as exc:
            raise DeviceNotFound(f"{self.name}: connection lost ({exc}); open it again") \
                from None
        if not data:
            self._closed = True
            raise DeviceNotFound(f"{self.name}: the server closed the connection (another "
                                 f"client's session, a server restart, or a bad request)")
        return data

    def close(self):
        try:
            self._sock.close()
        except OSError:
            pass


# -- serial -------------------------------------------------------------------------------------

def lock_dir():
    """Directory of the per-device lock files (``$HBFP_HW_LOCK_DIR`` or the temp dir)."""
    path = Path(os.environ.get("HBFP_HW_LOCK_DIR", Path(tempfile.gettempdir()) / "hbfp-hw-locks"))
    path.mkdir(parents=True, exist_ok=True)
    return path


class _DeviceLock:
    """An exclusive ``flock`` on a lock file named after a device path; released on close.

    ``flock`` locks belong to the open file, so the kernel releases them when the process dies:
    a crashed holder never leaves a stale lock.
    """

    def __init__(self, device_path):
        real = os.path.realpath(device_path)
        self.path = lock_dir() / (re.sub(r"[^A-Za-z0-9_.-]", "_", real.strip("/")) + ".lock")
        self._f = open(self.path, "a+")
        try:
            fcntl.flock(self._f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._f.seek(0)
            owner = self._f.read().strip() or "another process"
            self._f.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise DeviceBusy(f"{device_path} is already in use by {owner} (lock "
                                 f"{self.path}); close that program, or share the board with "
                                 f"`hbfp-hw serve --device serial://{device_path}`") from None
            raise
        self._f.seek(0)
        self._f.truncate()
        self._f.write(f"pid {os.getpid()}\n")
        self._f.flush()

    def release(self):
        if not self._f.closed:
            self._f.seek(0)
            self._f.truncate()
            fcntl.flock(self._f, fcntl.LOCK_UN)
            self._f.close()


class SerialTransport(Transport):
    """A real board on a serial port (pyserial), with an exclusive lock per device path.

    Parameters
    ----------
    path : str
        The device, e.g. ``/dev/ttyUSB0``.
    baud : int
        Line rate (8N1).
    window_bytes : int
        Request bytes the driver may send ahead of the device: the board's receive FIFO
        (512 bytes on the ULX3S build).
    """

    latency = 0.05

    def __init__(self, path, baud=3_000_000, *, window_bytes=512):
        import serial

        self.name = f"serial://{path}?baud={baud}"
        if not os.path.exists(path):
            raise DeviceNotFound(f"{path} does not exist; is the board plugged in? (try "
                                 f"`ls /dev/ttyUSB* /dev/ttyACM*`)")
        self._lock = _DeviceLock(path)
        try:
            self._port = serial.Serial(path, baud, timeout=0, write_timeout=10)
        except (serial.SerialException, OSError) as exc:
            self._lock.release()
            raise DeviceNotFound(f"cannot open {path}: {exc}; check the permissions (the "
                                 f"dialout group) and that the board is attached") from None
        self.byte_time = 10.0 / baud
        self.window_bytes = window_bytes

    def write(self, data):
        import serial
        try:
            self._port.write(bytes(data))
        except (serial.SerialException, OSError) as exc:
            raise DeviceNotFound(f"{self.name}: write failed ({exc}); is the board still "
                                 f"attached?") from None

    def read(self, timeout):
        import serial
        try:
            ready, _, _ = select.select([self._port.fileno()], [], [], max(0.0, timeout))
            if not ready:
                return b""
            return self._port.read(max(1, self._port.in_waiting))
        except (serial.SerialException, OSError) as exc:
            raise DeviceNotFound(f"{self.name}: read failed ({exc}); is the board still "
                                 f"attached?") from None

    def close(self):
        try:
            self._port.close()
        finally:
            self._lock.release()

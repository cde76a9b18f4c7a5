"""The host driver of the GEMM device: ``Device.open(url)``, ``dev.info()``, ``dev.gemm(a, b)``.

URLs (see docs/driver.md):

- ``"sim"`` or ``"sim://?mantissa_bits=8&block_size=16&lanes=4&baud=0&instance=0"``: the
  simulated board (the real gateware under Verilator, :mod:`hbfp_hw.fpga.host.simboard`), started on
  demand; built once per configuration and cached. Devices opened with the same configuration
  and ``instance`` in one process share one board (and one lock).
- ``"serial:///dev/ttyUSB0?baud=3000000"``: a real board through pyserial.
- ``"tcp://127.0.0.1:7777"``: a board behind ``hbfp-hw serve``.

A GEMM is a program of writes, COMPUTEs and reads that the driver streams to the device
without waiting for replies: every request is a CRC-checked frame, and the device executes the
sequenced ones (WRITE, COMPUTE, READ_C) exactly once and in sequence-number order
(docs/protocol.md 2.2), so an OK reply acknowledges every frame before it as well. After an
error (a NACK, a refused out-of-order frame, a damaged or missing reply) the driver stops,
asks STATUS for the device's next sequence number, reads again the results whose replies were
lost and sends again the frames that were not executed, in smaller frames if they failed.
After ``retries`` failed attempts of one request it raises :class:`DeviceTimeout`. A reply is
accepted only with the expected sequence number, command and length, so a result that is
returned is the device's result for exactly the data that was sent.

:class:`Device` is the API; the work is done by :class:`~hbfp_hw.fpga.host.planning.Planner`
(the program of a GEMM), :mod:`~hbfp_hw.fpga.host.flow` (the window, frame sizes, timeouts
and the model of the device's input) and :mod:`~hbfp_hw.fpga.host.session` (the frames,
their sequence numbers and the recovery after errors).
"""

from __future__ import annotations

import threading
import time
from urllib.parse import parse_qs, urlparse

import numpy as np

from hbfp_hw import golden
from hbfp_hw.formats import PRESETS, resolve_format

from ..protocol import frames as protocol
from ..protocol.frames import Cmd, Wire
from .planning import Planner, growth_first, growth_steps, tile_sizes
from .session import Session, Stream
from .transport import (
    DeviceBusy,
    DeviceError,
    DeviceNotFound,
    DeviceTimeout,
    FormatMismatch,
    ProtocolError,
    SerialTransport,
    ShapeError,
    SimTransport,
    TcpTransport,
    Transport,
)

__all__ = [
    "Device", "DeviceError", "DeviceNotFound", "DeviceBusy", "ProtocolError", "DeviceTimeout",
    "FormatMismatch", "ShapeError", "open_transport", "tile_sizes", "growth_steps",
    "growth_first", "demo_offload", "sim_url_for", "WIRES",
]

#: ``wire=`` names accepted by :meth:`Device.gemm`.
WIRES = {"bfp": Wire.BFP, "fp32": Wire.FLOAT, "float": Wire.FLOAT, "bf16": Wire.FLOAT}


# -- URLs ---------------------------------------------------------------------------------------

_SIM_BOARDS = {}
_SIM_LOCK = threading.Lock()


class _SharedSim:
    """One simulated board shared by the Devices of a process (reference counted)."""

    def __init__(self, key, transport):
        self.key = key
        self.transport = transport
        self.lock = threading.RLock()
        self.refs = 0

    def release(self):
        with _SIM_LOCK:
            self.refs -= 1
            if self.refs == 0:
                _SIM_BOARDS.pop(self.key, None)
                self.transport.close()


def sim_url_for(fmt):
    """A ``sim://`` URL of a simulated board built for ``fmt`` (for error messages)."""
    for name, preset in PRESETS.items():
        if preset == fmt:
            return f"sim://?format={name}"
    base = next((name for name, p in PRESETS.items()
                 if p.element == fmt.element and p.element is not None), None)
    if base is None:
        return f"sim://?mantissa_bits={fmt.mantissa_bits}&block_size={fmt.block_size}"
    preset = PRESETS[base]
    url = f"sim://?format={base}"
    for key in ("block_size", "rounding", "scale_rule", "exponent_bits"):
        value = getattr(fmt, key)
        if value != getattr(preset, key):
            url += f"&{key}={getattr(value, 'value', value)}"
    return url


def _sim_config(url):
    from .simboard import SimConfig
    parsed = urlparse(url) if url != "sim" else urlparse("sim://")
    if parsed.netloc or parsed.path not in ("", "/"):
        raise DeviceNotFound(f"{url!r}: a sim URL has no host or path; use "
                             f"'sim' or 'sim://?lanes=4&instance=1'")
    try:
        config = SimConfig.from_query(parsed.query)
    except (ValueError, TypeError) as exc:
        raise DeviceNotFound(f"{url!r}: {exc}") from None
    instance = parse_qs(parsed.query).get("instance", ["0"])[-1]
    return config, instance


def open_transport(url, *, progress=True):
    """Open the transport that ``url`` names; return ``(transport, shared_or_None)``."""
    if not isinstance(url, str):
        raise TypeError(f"Device URL must be a string, not {url!r}")
    scheme = url.split(":", 1)[0] if ":" in url else url
    if scheme == "sim":
        config, instance = _sim_config(url)
        key = (config, instance)
        with _SIM_LOCK:
            shared = _SIM_BOARDS.get(key)
            if shared is None:
                shared = _SharedSim(key, SimTransport(config, progress=progress, name=url))
                _SIM_BOARDS[key] = shared
            shared.refs += 1
        return shared.transport, shared
    parsed = urlparse(url)
    query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    if scheme == "serial":
        path = parsed.path or parsed.netloc
        if not path:
            raise DeviceNotFound(f"{url!r} names no device; use serial:///dev/ttyUSB0")
        try:
            baud = int(query.get("baud", 3_000_000))
            window = int(query.get("window", 512))
        except ValueError:
            raise DeviceNotFound(f"{url!r}: baud and window must be integers") from None
        return SerialTransport(path, baud, window_bytes=window), None
    if scheme == "tcp":
        if not parsed.hostname or not parsed.port:
            raise DeviceNotFound(f"{url!r} needs a host and a port: tcp://127.0.0.1:7777")
        return TcpTransport(parsed.hostname, parsed.port), None
    raise DeviceNotFound(f"Unknown device URL {url!r}; use 'sim', "
                         f"'serial:///dev/ttyUSB0?baud=3000000' or 'tcp://host:port'")



# -- the device ---------------------------------------------------------------------------------

class Device:
    """A GEMM device behind a transport. Thread-safe; a context manager.

    Use :meth:`open` rather than the constructor.

    Parameters
    ----------
    transport : Transport
    fmt : BFPFormat, str or None
        The format the caller expects; :class:`FormatMismatch` if the device has another one.
    retries : int
        Further attempts of one request after the first before the driver raises
        :class:`DeviceTimeout`.
    timeout : float or None
        Reply timeout in seconds (default: from the transport's latency and line rate).

    Members
    -------
    stats : dict
        Counters: ``frames`` (requests executed), ``retries`` (timeouts), ``nacks``,
        ``timeouts``, ``lost`` (replies lost, found by a later one), ``crc_errors`` (reply
        frames with a bad CRC), ``out_of_order`` (refused frames after a loss), ``recoveries``
        (STATUS queries after an error), ``resent`` (frames sent again), ``splits``,
        ``stale``, ``tx_bytes``/``rx_bytes`` (link bytes) and ``tx_payload``/``rx_payload``
        (frame payload bytes).
    """

    def __init__(self, transport, *, fmt=None, retries=16, timeout=None, url=None,
                 _shared=None):
        if not isinstance(transport, Transport):
            raise TypeError(f"transport must be a Transport, not {transport!r}")
        self.url = url or transport.name
        self._t = transport
        self._shared = _shared
        self._lock = _shared.lock if _shared else threading.RLock()
        self._closed = False
        self._session = Session(transport, self.url, retries=retries, timeout=timeout)
        self.stats = self._session.stats
        try:
            with self._lock:
                self._info = self._query_info()
                self._session.flow.info = self._info
            self._check_format(fmt)
        except BaseException:
            self.close()
            raise

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def open(cls, url="sim", *, fmt=None, retries=16, timeout=None, progress=True):
        """Open the device that ``url`` names (``sim``, ``serial://...``, ``tcp://...``).

        Raises
        ------
        DeviceNotFound, DeviceBusy
            The device cannot be opened (the message says what to check).
        ProtocolError
            It speaks another protocol version.
        FormatMismatch
            ``fmt`` was given and the device has another format.
        DeviceTimeout
            It does not answer INFO.
        """
        transport, shared = open_transport(url, progress=progress)
        if shared is None:
            try:
                return cls(transport, fmt=fmt, retries=retries, timeout=timeout, url=url)
            except BaseException:
                transport.close()
                raise
        dev = cls(transport, fmt=fmt, retries=retries, timeout=timeout, url=url,
                  _shared=shared)
        # What the simulated board's SystemConfig says it is (no elaboration).
        expected = shared.key[0].system.info()
        if dev.info() != expected:
            dev.close()
            raise FormatMismatch(f"the simulated board reports {dev.info()} but its "
                                 f"configuration is {expected}; delete the build cache "
                                 f"($HBFP_HW_CACHE/simboard) and open it again")
        return dev

    def _check_format(self, fmt):
        if fmt is None:
            return
        want = resolve_format(fmt)
        have = self._info.fmt
        if want.accumulator is not have.accumulator:
            raise FormatMismatch(f"{self.url} accumulates in {have.accumulator} but "
                                 f"{want.name} asks for {want.accumulator}, which the GEMM "
                                 f"system does not implement yet; the golden model and the "
                                 f"PyTorch emulation compute it")
        if want != have:
            raise FormatMismatch(f"{self.url} computes {have.name} but {want.name} was asked "
                                 f"for; open a device built for that format (e.g. "
                                 f"{sim_url_for(want)}) or pass fmt=None")

    def _query_info(self):
        reply = self._query(Cmd.INFO, None)
        if not reply:
            raise ProtocolError(f"{self.url}: empty INFO reply")
        version = reply[0]
        if version != protocol.PROTOCOL_VERSION:
            raise ProtocolError(f"{self.url} speaks protocol version {version}, this driver "
                                f"version {protocol.PROTOCOL_VERSION}; install the hbfp-hw that "
                                f"matches the bitstream, or rebuild and flash the board")
        try:
            return protocol.Info.from_bytes(reply)
        except (ValueError, KeyError) as exc:
            raise ProtocolError(f"{self.url}: malformed INFO reply ({exc})") from None

    def close(self):
        """Release the device (the shared simulated board stops with its last user)."""
        if self._closed:
            return
        self._closed = True
        if self._shared is not None:
            self._shared.release()
        else:
            self._t.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<Device {self.url} {self._info.fmt.name if hasattr(self, '_info') else ''}>"

    # -- queries ------------------------------------------------------------------------------

    def info(self):
        """Return the device's :class:`~hbfp_hw.fpga.protocol.Info`: format, lanes, capacities."""
        return self._info

    @property
    def fmt(self):
        return self._info.fmt

    @property
    def transport(self):
        """The :class:`~hbfp_hw.fpga.host.transport.Transport` this device talks through."""
        return self._t

    def status(self):
        """Return the STATUS counters as a dict (docs/protocol.md 3)."""
        with self._lock:
            if self._closed:
                raise DeviceNotFound(f"{self.url} is closed; open it again")
            return self._session.status()

    def reset(self):
        """Send RESET: forget C, clear the counters and the sequence number (A and B stay)."""
        with self._lock:
            state = self._session.state
            state.next_seq = None
            self._query(Cmd.RESET, 0)
            state.next_seq = 0

    # -- GEMM ---------------------------------------------------------------------------------

    def gemm(self, a, b, *, wire="bfp", seed=None):
        """Return ``A @ B`` computed on the device, bit-exact with ``golden.gemm``.

        Parameters
        ----------
        a : array_like, shape ``[M, K]``
        b : array_like, shape ``[K, N]``
            float32 (or BF16: ``ml_dtypes.bfloat16`` arrays, torch tensors) values. Any
            ``M, N, K >= 1``: C is tiled to the buffers, and a K that does not fit is split
            into chunks that the device accumulates in order (:func:`tile_sizes`).
        wire : {"bfp", "fp32"}
            ``"bfp"``: the host quantizes (``golden.quantize``) and sends blocks, about 3.8x
            less traffic for bfp8. ``"fp32"``: raw floats (BF16 on a BF16-input build); the
            device quantizes.
        seed : int or None
            Stochastic rounding only: the seed of A (B uses ``seed + 1``), as in
            ``golden.gemm``.

        Returns
        -------
        numpy.ndarray
            float32 ``[M, N]``.

        Raises
        ------
        ShapeError
            Shapes that do not match.
        TypeError
            Operands that are not float32 / BF16 values.
        DeviceTimeout, ProtocolError
            The link failed beyond the retries (no partial result is returned).
        """
        a = _as_f32(a, "A")
        b = _as_f32(b, "B")
        if a.ndim != 2 or b.ndim != 2:
            raise ShapeError(f"gemm takes 2-D operands, not {a.shape} and {b.shape}")
        m, k = a.shape
        k2, n = b.shape
        if k != k2:
            raise ShapeError(f"inner dimensions differ: A is {m}x{k} and B is {k2}x{n}")
        if 0 in (m, n, k):
            raise ShapeError(f"M, N and K must be at least 1, not M={m}, N={n}, K={k}")
        try:
            wire_code = WIRES[wire]
        except (KeyError, TypeError):
            raise ValueError(f"wire must be 'bfp' or 'fp32', not {wire!r}") from None
        info = self._info
        if wire_code not in info.wire_formats:
            raise FormatMismatch(f"{self.url} does not accept wire={wire!r} (format "
                                 f"{info.fmt.name}); use wire='bfp'")
        with self._lock:
            if self._closed:
                raise DeviceNotFound(f"{self.url} is closed; open it again")
            try:
                return self._gemm(a, b, wire_code, seed).view(np.float32)
            except BaseException:
                self._session.state.next_seq = None     # ask STATUS before the next GEMM
                raise

    def _gemm(self, a, b, wire, seed):
        c, program, tiles = Planner(self._info).plan(a, b, wire, seed)
        Stream(self._session, self._info, program, tiles).run()
        return c

    # -- the link -----------------------------------------------------------------------------

    def _settle_time(self):
        """Return how long the device takes to drop a partial frame (``hbfp-hw serve``)."""
        return self._session.flow.settle_time()

    def _query(self, cmd, reply_len):
        """Send an unsequenced request (INFO, STATUS, RESET) and return its reply body."""
        if self._closed:
            raise DeviceNotFound(f"{self.url} is closed; open it again")
        return self._session.query(cmd, reply_len)


def _as_f32(x, name):
    """Return ``x`` as a float32 numpy array (exact for float32 and BF16 inputs)."""
    if hasattr(x, "detach") and hasattr(x, "dtype"):              # a torch tensor
        import torch
        if x.dtype not in (torch.float32, torch.bfloat16):
            raise TypeError(f"{name} must be float32 or bfloat16, not {x.dtype}")
        return x.detach().to("cpu", torch.float32).numpy()
    arr = np.asarray(x)
    if arr.dtype == np.float32:
        return arr
    if arr.dtype.name == "bfloat16":                               # ml_dtypes
        return arr.astype(np.float32)
    raise TypeError(f"{name} must be float32 or bfloat16, not {arr.dtype}; convert it "
                    f"explicitly (e.g. a.astype(np.float32)) so that any rounding is yours")


# -- demo ---------------------------------------------------------------------------------------

def demo_offload(print=print, url="sim", m=64, n=64, k=64, seed=0, fmt="bfp8"):   # noqa: A002
    """Run an ``m x k @ k x n`` GEMM in ``fmt`` on ``url`` (default: the simulated board).

    ``url="sim"`` with a format other than the default simulated board's opens the simulated
    board built for ``fmt`` (:func:`sim_url_for`; the first run builds it); any other device
    must compute ``fmt`` (else :class:`FormatMismatch`). Checks the result bit for bit against
    ``golden.gemm``, prints a short report (shape, bit exact, time, throughput) and returns
    whether it was bit-exact. ``make demo`` calls it.
    """
    fmt = resolve_format(fmt)
    if url == "sim":
        from .simboard import SimConfig
        if fmt != SimConfig.system.fmt:
            url = sim_url_for(fmt)
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    t0 = time.perf_counter()
    with Device.open(url, fmt=fmt) as dev:
        t1 = time.perf_counter()
        c = dev.gemm(a, b, wire="bfp")
        t2 = time.perf_counter()
        info = dev.info()
    ref = golden.gemm(a, b, info.fmt, input_format=info.input_format)
    exact = bool(np.array_equal(c.view(np.uint32), ref.view(np.uint32)))
    flops = 2.0 * m * n * k
    print(f"offload: {m}x{k} @ {k}x{n} {info.fmt.name} GEMM on {url} ({info.lanes} lanes): "
          f"bit-exact vs golden.gemm: {'yes' if exact else 'NO'}; "
          f"{(t2 - t1) * 1e3:.0f} ms ({flops / (t2 - t1) / 1e6:.2f} MFLOP/s), "
          f"open {(t1 - t0) * 1e3:.0f} ms")
    return exact

"""The host driver of the GEMM device: ``Device.open(url)``, ``dev.info()``, ``dev.gemm(a, b)``.

URLs (see docs/driver.md):

- ``"sim"`` or ``"sim://?mantissa_bits=8&block_size=16&lanes=4&baud=0&instance=0"``: the
  simulated board (the real gateware under Verilator, :mod:`hbfp_hw.fpga.simboard`), started on
  demand; built once per configuration and cached. Devices opened with the same configuration
  and ``instance`` in one process share one board (and one lock).
- ``"serial:///dev/ttyUSB0?baud=3000000"``: a real board through pyserial.
- ``"tcp://127.0.0.1:7777"``: a board behind ``hbfp-hw serve``.

Reliability: every request is a CRC-checked frame with a fresh sequence number, and every
command is idempotent (docs/protocol.md 5). A NACK, a reply that fails its CRC, a lost reply
(a later one arrives first, or none within the reply timeout) makes the driver resend the
request, after the device's idle timeout when the link state is unknown. A request that fails
repeatedly is split into smaller frames. After ``retries`` failed attempts of one request the
driver raises :class:`DeviceTimeout`. A reply is accepted only with the expected sequence
number, command and length, so a result that is returned is the device's result for exactly
the data that was sent.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from urllib.parse import parse_qs, urlparse

import numpy as np

from . import protocol
from .protocol import NACK, REPLY_FLAG, Cmd, FrameParser, Status, Wire
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
    "FormatMismatch", "ShapeError", "open_transport", "tile_sizes", "demo_offload",
    "WIRES",
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


def _sim_config(url):
    from .simboard import SimConfig
    parsed = urlparse(url) if url != "sim" else urlparse("sim://")
    if parsed.netloc or parsed.path not in ("", "/"):
        raise DeviceNotFound(f"{url!r}: a sim URL has no host or path; use "
                             f"'sim' or 'sim://?lanes=4&instance=1'")
    try:
        config = SimConfig.from_query(parsed.query)
        config.fmt  # noqa: B018 -- validates the format
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


# -- requests -----------------------------------------------------------------------------------

@dataclass
class _Req:
    """One request: a command, its argument fields and data, and what to do with the reply."""

    cmd: Cmd
    args: dict
    data: bytes = b""
    unit: int = 1              # bytes per block (writes)
    reply_len: int = 0         # expected reply body length (after the status byte)
    on_reply: object = None    # callable(req, body)
    attempts: int = 0
    seconds: float = 0.0       # device time to execute (COMPUTE), for the reply timeout

    def payload(self):
        if self.cmd in (Cmd.WRITE_A, Cmd.WRITE_B):
            return protocol.to_bytes(protocol.WRITE_ARGS_LAYOUT, self.args) + self.data
        if self.cmd is Cmd.COMPUTE:
            return protocol.to_bytes(protocol.COMPUTE_ARGS_LAYOUT, self.args)
        if self.cmd is Cmd.READ_C:
            return protocol.to_bytes(protocol.READ_ARGS_LAYOUT,
                                     {k: self.args[k] for k in ("row", "col", "count", "flags")})
        return b""

    def split(self):
        """Return two requests that do the same work in smaller frames, or None."""
        count = self.args.get("count", 1)
        if self.cmd not in (Cmd.WRITE_A, Cmd.WRITE_B, Cmd.READ_C) or count < 2:
            return None
        half = count // 2
        if self.cmd is Cmd.READ_C:
            first = self.args["first"]
            return [_read_req(first, half, self.args["ncols"], self.on_reply, self.attempts),
                    _read_req(first + half, count - half, self.args["ncols"], self.on_reply,
                              self.attempts)]
        out = []
        for lo, n in ((0, half), (half, count - half)):
            args = dict(self.args, count=n, start=self.args["start"] + lo)
            out.append(_Req(self.cmd, args, self.data[lo * self.unit:(lo + n) * self.unit],
                            self.unit, attempts=self.attempts))
        return out


def _read_req(first, count, ncols, on_reply, attempts=0):
    args = {"row": first // ncols, "col": first % ncols, "count": count, "flags": 0,
            "first": first, "ncols": ncols}
    return _Req(Cmd.READ_C, args, reply_len=4 * count, on_reply=on_reply, attempts=attempts)


def tile_sizes(info, k):
    """Largest ``(rows, cols)`` tile of C that fits the device's buffers for this K.

    Raises
    ------
    ShapeError
        K does not fit: the whole K of a row and of a column must be in the buffers.
    """
    kb = protocol.kblocks(k, info.fmt)
    if kb > info.a_blocks or kb > info.b_depth:
        kmax = min(info.a_blocks, info.b_depth) * info.fmt.block_size
        raise ShapeError(f"K = {k} does not fit this device (at most {kmax}: a row of A and a "
                         f"column of B must fit its buffers); split K on the host or use a "
                         f"build with larger a_blocks/b_blocks (e.g. sim://?b_blocks=4096)")
    cols = min(info.b_depth // kb * info.lanes, 0xFFFF)
    rows = min(info.a_blocks // kb, 0xFFFF)
    rows = min(rows, max(1, info.c_depth // protocol.column_groups(cols, info.lanes)))
    return rows, cols


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
        Counters: ``frames`` (requests answered OK), ``retries``, ``nacks``, ``timeouts``,
        ``lost`` (replies overtaken), ``crc_errors`` (reply frames with a bad CRC),
        ``splits``, ``tx_bytes``/``rx_bytes`` (link bytes) and
        ``tx_payload``/``rx_payload`` (frame payload bytes).
    """

    def __init__(self, transport, *, fmt=None, retries=16, timeout=None, url=None,
                 _shared=None):
        if not isinstance(transport, Transport):
            raise TypeError(f"transport must be a Transport, not {transport!r}")
        self.url = url or transport.name
        self._t = transport
        self._shared = _shared
        self._lock = _shared.lock if _shared else threading.RLock()
        self._retries = int(retries)
        self._timeout = timeout
        self._parser = FrameParser()
        self._seq = int(time.monotonic_ns()) & 0xFF
        self._closed = False
        self._frame_limit = None
        self._ok_streak = 0
        self.stats = dict.fromkeys(("frames", "retries", "nacks", "timeouts", "lost",
                                    "crc_errors", "splits", "resent", "stale", "tx_bytes",
                                    "rx_bytes", "tx_payload", "rx_payload"), 0)
        try:
            with self._lock:
                self._info = self._query_info()
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
        expected = shared.key[0].info
        if dev.info() != expected:
            dev.close()
            raise FormatMismatch(f"the simulated board reports {dev.info()} but its "
                                 f"configuration is {expected}; delete the build cache "
                                 f"($HBFP_HW_CACHE/simboard) and open it again")
        return dev

    def _check_format(self, fmt):
        if fmt is None:
            return
        from hbfp_hw.formats import resolve_format
        want = resolve_format(fmt)
        have = self._info.fmt
        if want != have:
            raise FormatMismatch(f"{self.url} computes {have} but {want} was asked for; open a "
                                 f"device built for that format (e.g. sim://?mantissa_bits="
                                 f"{want.mantissa_bits}&block_size={want.block_size}) or "
                                 f"pass fmt=None")

    def _query_info(self):
        reply = self._run([_Req(Cmd.INFO, {}, reply_len=None)])[0]
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
        """The :class:`~hbfp_hw.fpga.transport.Transport` this device talks through."""
        return self._t

    def status(self):
        """Return the STATUS counters as a dict (docs/protocol.md 3)."""
        with self._lock:
            body = self._run([_Req(Cmd.STATUS, {}, reply_len=protocol.layout_bytes(
                protocol.STATUS_LAYOUT))])[0]
        return protocol.from_bytes(protocol.STATUS_LAYOUT, body)

    def reset(self):
        """Send RESET: forget C, clear the counters (the A and B buffers stay)."""
        with self._lock:
            self._run([_Req(Cmd.RESET, {}, reply_len=0)])

    # -- GEMM ---------------------------------------------------------------------------------

    def gemm(self, a, b, *, wire="bfp", seed=None):
        """Return ``A @ B`` computed on the device, bit-exact with ``golden.gemm``.

        Parameters
        ----------
        a : array_like, shape ``[M, K]``
        b : array_like, shape ``[K, N]``
            float32 (or BF16: ``ml_dtypes.bfloat16`` arrays, torch tensors) values. Any
            ``M, N >= 1``; ``K >= 1`` up to what the buffers hold (:func:`tile_sizes`).
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
            Shapes that do not match or do not fit.
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
            return self._gemm(a, b, wire_code, seed).view(np.float32)

    def _gemm(self, a, b, wire, seed):
        info = self._info
        fmt = info.fmt
        m, k = a.shape
        n = b.shape[1]
        rows, cols = tile_sizes(info, k)
        kb = protocol.kblocks(k, fmt)
        bb = protocol.block_bytes(fmt, wire, info.input_format)
        seed_b = None if seed is None else (seed + 1) % (1 << 32)
        _, a_raw = protocol.a_blocks_payload(a, fmt, wire, input_format=info.input_format,
                                             seed=seed)
        _, b_raw = protocol.b_blocks_payload(b, fmt, wire, 1, input_format=info.input_format,
                                             seed=seed_b)
        b_cols = np.frombuffer(b_raw, np.uint8).reshape(n, kb, bb)
        c = np.zeros((m, n), np.uint32)
        tiles = [(r0, c0) for c0 in range(0, n, cols) for r0 in range(0, m, rows)]
        pending_reads = []
        a_loaded = b_loaded = None
        for r0, c0 in tiles:
            rn, cn = min(rows, m - r0), min(cols, n - c0)
            writes = []
            if b_loaded != c0:
                dev = protocol.b_device_order(b_cols[c0:c0 + cn], info.lanes)
                writes += self._write_reqs(Cmd.WRITE_B, dev.tobytes(), bb, wire)
                b_loaded = c0
            if a_loaded != r0:
                writes += self._write_reqs(Cmd.WRITE_A, a_raw[r0 * kb * bb:(r0 + rn) * kb * bb],
                                           bb, wire)
                a_loaded = r0
            # The reads of the previous tile's C overlap the writes of this tile's A and B.
            self._run(pending_reads + writes)
            groups = protocol.column_groups(cn, info.lanes)
            cycles = rn * -(-groups // info.channels) * info.channels * kb + 1000
            rate = self._t.cycle_rate or info.clock_hz
            self._run([_Req(Cmd.COMPUTE, {"m": rn, "n": cn, "k": k, "flags": 0},
                            reply_len=protocol.layout_bytes(protocol.COMPUTE_REPLY_LAYOUT),
                            seconds=2.0 * cycles / rate)])
            pending_reads = self._read_reqs(c, r0, c0, rn, cn)
        self._run(pending_reads)
        return c

    def _limit(self):
        info = getattr(self, "_info", None)
        return self._frame_limit or (info.max_payload if info else 0xFFFF)

    def _write_reqs(self, cmd, raw, bb, wire):
        per = max(1, (self._limit() - protocol.ARGS_BYTES) // bb)
        nblocks = len(raw) // bb
        return [_Req(cmd, {"wire": int(wire), "flags": 0, "count": min(per, nblocks - s),
                           "start": s}, raw[s * bb:(s + min(per, nblocks - s)) * bb], bb,
                     reply_len=0)
                for s in range(0, nblocks, per)]

    def _read_reqs(self, c, r0, c0, rn, cn):
        tile = np.zeros(rn * cn, np.uint32)

        def place(req, body, tile=tile):
            first, count = req.args["first"], req.args["count"]
            tile[first:first + count] = protocol.c_from_payload(body)
            c[r0:r0 + rn, c0:c0 + cn] = tile.reshape(rn, cn)

        per = max(1, min(self._info.max_read_words, (self._limit() - 1) // 4))
        return [_read_req(f, min(per, rn * cn - f), cn, place) for f in range(0, rn * cn, per)]

    # -- the reliable request engine ----------------------------------------------------------

    def _next_seq(self):
        self._seq = (self._seq + 1) & 0xFF
        return self._seq

    def _settle_time(self):
        info = getattr(self, "_info", None)
        dev_timeout = info.timeout_cycles / info.clock_hz if info else 0.1
        return dev_timeout + min(self._t.latency, 0.005)

    @property
    def _grace(self):
        return min(self._t.latency, 0.01) + 64 * self._t.byte_time

    def _reply_timeout(self, inflight_bytes, failures, seconds=0.0):
        base = self._timeout if self._timeout is not None else (
            self._t.latency + 2.0 * inflight_bytes * self._t.byte_time + seconds)
        return base * (2 ** min(max(0, failures - 1), 5))

    def _run(self, reqs):
        """Execute independent requests (pipelined) until each has an OK reply.

        Returns the reply bodies in request order (after splitting, those of the parts).
        """
        if self._closed:
            raise DeviceNotFound(f"{self.url} is closed; open it again")
        queue = deque(reqs)
        order = list(reqs)
        out = {id(r): None for r in reqs}
        inflight = OrderedDict()            # seq -> (req, frame bytes, reply bytes)
        window_bytes = self._t.window_bytes or (1 << 16)
        failures = 0
        while queue or inflight:
            sent_bytes = sum(x[1] + x[2] for x in inflight.values())
            while queue and len(inflight) < 64:
                req = queue[0]
                payload = req.payload()
                if inflight and sent_bytes + len(payload) + 10 > window_bytes:
                    break
                queue.popleft()
                seq = self._next_seq()
                frame = protocol.encode_frame(int(req.cmd), seq, payload)
                reply_bytes = 11 + (req.reply_len if req.reply_len is not None else 40)
                inflight[seq] = (req, len(frame), reply_bytes)
                sent_bytes += len(frame) + reply_bytes
                self.stats["tx_bytes"] += len(frame)
                self.stats["tx_payload"] += len(payload)
                self._t.write(frame)
            busy = sum(x[0].seconds for x in inflight.values())
            reason, failed = self._await_reply(inflight, out,
                                               self._reply_timeout(sent_bytes, failures, busy))
            # Requests that got a NACK or were overtaken by a later reply (replies come in
            # request order) are sent again at once: the device answered after them, so it is
            # in sync.
            again = []
            for req in failed:
                again += self._again(req, order, out, reason or "reply lost")
            queue.extendleft(reversed(again))
            if reason != "timeout":
                if not failed:
                    failures = 0
                continue
            # No reply at all: the link state is unknown. Wait until the device has dropped any
            # partial frame, forget what arrived meanwhile, and send everything in flight again
            # with fresh sequence numbers (only the oldest request is charged an attempt).
            failures += 1
            self.stats["retries"] += 1
            self.stats["rx_bytes"] += self._t.drain(self._settle_time())
            self._parser.reset()
            again = []
            for i, (req, _, _) in enumerate(inflight.values()):
                again += self._again(req, order, out, reason) if i == 0 else [req]
            inflight.clear()
            queue.extendleft(reversed(again))
        return [out[id(r)] for r in order]

    def _again(self, req, order, out, reason):
        """Count a failed attempt of ``req``; return the requests that replace it.

        A request that failed is split into frames of at most half its size (down to 64 payload
        bytes or one block): under a high error rate short frames get through.
        """
        req.attempts += 1
        self.stats["resent"] += 1
        if req.attempts > self._retries:
            raise DeviceTimeout(
                f"{self.url}: no valid reply to {req.cmd.name} after {req.attempts} attempts "
                f"(last problem: {reason}); check the cable, the baud rate and that the "
                f"board runs the hbfp-hw bitstream, then open the device again")
        size = len(req.payload())
        self._frame_limit = max(64, min(self._limit(), size // 2))
        self._ok_streak = 0
        parts = [req]
        while True:
            new = []
            for p in parts:
                halves = p.split() if len(p.payload()) > self._frame_limit else None
                new += halves or [p]
            if len(new) == len(parts):
                break
            parts = new
        if len(parts) == 1:
            return parts
        self.stats["splits"] += 1
        pos = order.index(req)
        order[pos:pos + 1] = parts
        del out[id(req)]
        for p in parts:
            out[id(p)] = None
        return parts

    def _await_reply(self, inflight, out, timeout):
        """Wait for the next reply(ies) and handle them.

        Returns ``(reason, failed)``: ``reason`` is None, ``"timeout"`` (nothing valid arrived
        in time) or what went wrong; ``failed`` are the requests that were NACKed or overtaken
        by a later reply (removed from ``inflight``).
        """
        end = time.monotonic() + timeout
        lost = []
        while True:
            left = end - time.monotonic()
            if left <= 0:
                self.stats["timeouts"] += 1
                return "timeout", lost
            raw = self._t.read(left)
            if not raw:
                continue
            self.stats["rx_bytes"] += len(raw)
            errors = self._parser.errors
            frames = self._parser.feed(raw)
            self.stats["crc_errors"] += self._parser.errors - errors
            if not frames and (self._parser.errors != errors or not self._parser._buf):
                # A damaged reply (bad CRC, or bytes without a sync marker): unless a valid
                # one follows at once, give up on the oldest request soon.
                end = min(end, time.monotonic() + self._grace)
            failed = None
            progress = False
            for f in frames:
                if f.cmd == NACK:
                    if f.seq in inflight:
                        self.stats["nacks"] += 1
                        failed = failed or f"NACK {_status_name(f.payload)}"
                        for seq in list(inflight):      # this one and any before it
                            lost.append(inflight.pop(seq)[0])
                            if seq == f.seq:
                                break
                    continue
                entry = inflight.get(f.seq)
                if entry is None or f.cmd != int(entry[0].cmd) | REPLY_FLAG:
                    continue                        # stale or foreign reply
                req = entry[0]
                if not f.payload or f.payload[0] != Status.OK:
                    raise ProtocolError(
                        f"{self.url} refused {req.cmd.name} {req.args} with "
                        f"{_status_name(f.payload)}: the driver and the device disagree; "
                        f"report this as a bug together with `dev.info()`")
                body = f.payload[1:]
                if req.reply_len is not None and len(body) != req.reply_len:
                    # A stale reply whose sequence number came round again: not ours.
                    self.stats["stale"] += 1
                    continue
                for seq in list(inflight):
                    if seq == f.seq:
                        break
                    lost.append(inflight.pop(seq)[0])
                    self.stats["lost"] += 1
                del inflight[f.seq]
                progress = True
                self.stats["frames"] += 1
                self.stats["rx_payload"] += len(f.payload)
                out[id(req)] = body
                if req.on_reply is not None:
                    req.on_reply(req, body)
                self._ok_streak += 1
                if self._frame_limit and self._ok_streak >= 32:
                    self._frame_limit *= 2
                    if self._frame_limit >= self._info.max_payload:
                        self._frame_limit = None
                    self._ok_streak = 0
            if failed or progress:
                return failed, lost


def _status_name(payload):
    if not payload:
        return "without status"
    try:
        return Status(payload[0]).name
    except ValueError:
        return f"status {payload[0]}"


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

def demo_offload(print=print, url="sim", m=64, n=64, k=64, seed=0):   # noqa: A002
    """Run an ``m x k @ k x n`` bfp8 GEMM on ``url`` (default: the simulated board).

    Checks the result bit for bit against ``golden.gemm``, prints a short report (shape, bit
    exact, time, throughput) and returns whether it was bit-exact. ``make demo`` calls it.
    """
    from hbfp_hw import golden

    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    t0 = time.perf_counter()
    with Device.open(url, fmt="bfp8") as dev:
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

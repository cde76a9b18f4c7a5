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
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from urllib.parse import parse_qs, urlparse

import numpy as np

from hbfp_hw.formats import Rounding

from ..protocol import frames as protocol
from ..protocol.frames import NACK, REPLY_FLAG, Cmd, FrameParser, Status, Wire
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
    "growth_first", "demo_offload", "WIRES",
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


# -- the plan of a GEMM -------------------------------------------------------------------------
#
# A GEMM becomes a program: an ordered list of operations (writes of A and B blocks, COMPUTEs,
# reads of C). The device executes sequenced frames exactly once and in order (docs/protocol.md
# 2.2), so the driver streams the program without waiting for replies: a COMPUTE can follow
# the writes it needs at once, and the writes of the next tile can follow that COMPUTE even
# when they overwrite its operands. The only thing the driver waits for is free space in C: a
# region of C is reused only after the result in it has been received.

def tile_sizes(info, m, n, k):
    """Return ``(rows, cols, chunk)``: the C tile and the k-blocks per COMPUTE for a GEMM.

    If the whole of A and B fits the buffers the result is ``(m, n, KB)``: everything is
    loaded once and C is computed in tiles of growing size (see :func:`growth_steps`).
    Otherwise C is computed in tiles of ``rows x cols``, and K is split into chunks of
    ``chunk`` k-blocks whose COMPUTEs accumulate on the device (``chunk == KB``: no split).
    """
    kb = protocol.kblocks(k, info.fmt)
    lanes = info.lanes
    groups = protocol.column_groups(n, lanes)
    if (m * kb <= info.a_blocks and groups * kb <= info.b_depth
            and max(m, n, k) <= 0xFFFF):              # COMPUTE's M, N, K are 16 bits
        return m, n, kb
    # C tiles: as large as C allows (half of it when C needs several tiles, so that one tile
    # is computed while the previous one is read), then the largest chunk that fits A and B.
    whole = m * groups <= info.c_depth
    c_cap = info.c_depth if whole else max(1, info.c_depth // 2)
    c_cap = min(c_cap, max(1, (protocol.MAX_READ_WORDS - 1) // lanes))
    best = None
    for rows in sorted({min(m, r, 0xFFFF) for r in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512,
                                                    1024, 4096, 16384, m)}):
        g = min(groups, c_cap // rows, 0xFFFF // lanes)
        if g < 1:
            break
        chunk = min(kb, info.a_blocks // rows, info.b_depth // g,
                    0xFFFF // info.fmt.block_size)
        if chunk < 1:
            continue
        tiles = -(-m // rows) * -(-groups // g)
        # Bytes uploaded (A once per column tile, B once per row tile) plus per-COMPUTE cost.
        cost = (m * kb * -(-groups // g) + groups * lanes * kb * -(-m // rows)
                + 64 * tiles * -(-kb // chunk))
        if best is None or cost < best[0]:
            best = (cost, rows, g * lanes, chunk)
    if best is None:
        raise ShapeError(f"this device cannot hold one row of A and one column of B even "
                         f"for one k-block ({info}); it is misconfigured")
    return best[1], min(best[2], n), best[3]


class _LineModel:
    """Model of a full-duplex line at one byte per time unit each way, for planning.

    Frames are ``(request bytes, reply bytes or None)`` in sequence order, or ``(request
    bytes, reply bytes, C words)`` for a COMPUTE whose result takes that many elements of C.
    The device takes each frame as it arrives and executes it at once (its execution time is
    neglected), and its transmit buffer holds the reply until the device-to-host direction has
    sent the replies before it (docs/protocol.md 1), so a reply starts at the later of the
    two. (A device without a transmit buffer takes no more than one frame while it replies;
    the plan is then slower than the model says, but still correct.) With ``c_words``, the
    host sends a COMPUTE only once C has room for its result: the results before it leave C
    when they have arrived, and the frames behind it wait too. ``idle`` is the time the
    device-to-host direction waited for a reply to exist while the GEMM was under way (after
    its first reply could have started)."""

    __slots__ = ("up", "down", "idle", "c_words", "live", "used")

    def __init__(self, up=0, down=0, idle=0, c_words=None):
        self.up, self.down, self.idle = up, down, idle
        self.c_words = c_words
        self.live = deque()             # (arrival time, C words) of the results in C
        self.used = 0

    def copy(self):
        line = _LineModel(self.up, self.down, self.idle, self.c_words)
        line.live = deque(self.live)
        line.used = self.used
        return line

    def add(self, frames):
        for req, rep, *c in frames:
            words = c[0] if c and self.c_words is not None else 0
            while words and self.live and self.used + words > self.c_words:
                done, freed = self.live.popleft()
                self.used -= freed
                self.up = max(self.up, done)
            self.up += req
            if rep is not None:
                if self.up > self.down:
                    self.idle += self.up - self.down
                    self.down = self.up
                self.down += rep
            if words:
                self.live.append((self.down, words))
                self.used += words
        return self

    @property
    def end(self):
        return max(self.up, self.down)


def _frames_time(frames, c_words=None):
    """Time of the last byte of ``frames`` on the line model (:class:`_LineModel`)."""
    return _LineModel(c_words=c_words).add(frames).end


#: Largest first step of :func:`growth_steps`, in units of ``max(4, lanes)``.
_GROWTH_FIRST_MAX = 6

#: The step sizes that :func:`growth_steps` weighs at each step, in units of ``max(4,
#: lanes)`` (and the step to the whole of C).
_GROWTH_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)


def growth_first(m, n, lanes):
    """Return the first step of :func:`growth_steps` (no planning), so that a GEMM can start
    while the rest of its steps are chosen: ``log2(min(m, n) / 8)`` units of ``max(4,
    lanes)`` rows and columns (1 to :data:`_GROWTH_FIRST_MAX`; 12 for a 64 x 64 C with 4
    lanes)."""
    units = min(_GROWTH_FIRST_MAX, max(1, (min(m, n) // 8).bit_length() - 1))
    f = units * max(4, lanes)
    return min(f, m), min(f, n)


@functools.lru_cache(maxsize=256)
def growth_steps(m, n, lanes, row_bytes, col_bytes, max_write, tile_words, c_words=None):
    """Return the order in which a resident GEMM loads A and B: ``((rows, cols), ...)``.

    Step ``i`` loads the rows and columns beyond step ``i-1`` and computes the new part of C.
    Before the first element of C exists the host has to send a row and a column of the whole
    K, and while few results exist each result frame is soon sent and the device-to-host
    direction waits for the next one; so the steps start small (results flow back early) and
    grow once the results already computed keep that direction busy (fewer frames, less
    framing). The steps are those of :func:`_growth_iter`, which the driver runs step by step.
    ``c_words`` (None: no bound) is the capacity of C, which holds the results until they
    have arrived.
    """
    return tuple(_growth_iter(m, n, lanes, row_bytes, col_bytes, max_write, tile_words,
                              c_words))


def _growth_iter(m, n, lanes, row_bytes, col_bytes, max_write, tile_words, c_words=None):
    """Yield the steps of :func:`growth_steps`, each chosen when the step before it is sent.

    The first is :func:`growth_first`. Each next step is chosen greedily on the model of the
    full-duplex line (:class:`_LineModel`, framing and the room in C included): of the sizes
    :data:`_GROWTH_SIZES`, the one (the largest of equals) whose model time plus a bound on
    the rest (the remaining operands and results in frames of the largest size, each
    direction on its own) is the least. A few tens of microseconds per step. A device with a
    transmit buffer takes about the model's time: the simulated board 0.3% longer (it
    leaves out the device's execution times).
    """
    unit = max(4, lanes)
    kw = {"lanes": lanes, "row_bytes": row_bytes, "col_bytes": col_bytes,
          "max_write": max_write, "tile_words": tile_words}
    # What the rest costs at least: operands and results in frames of the largest size.
    per_row = row_bytes * (1 + (protocol.FRAME_OVERHEAD + protocol.ARGS_BYTES) / max_write)
    per_col = col_bytes * (1 + (protocol.FRAME_OVERHEAD + protocol.ARGS_BYTES) / max_write)
    per_word = 4 + 15 / tile_words
    rows, cols = growth_first(m, n, lanes)
    line = _LineModel(c_words=c_words).add(_step_frames(0, 0, rows, cols, **kw))
    yield rows, cols
    while rows < m or cols < n:
        best = None
        for size in _GROWTH_SIZES + (max(m, n),):
            r1, c1 = min(m, rows + size * unit), min(n, cols + size * unit)
            new = line.copy().add(_step_frames(rows, cols, r1, c1, **kw))
            bound = max(new.up + (m - r1) * per_row + (n - c1) * per_col,
                        new.down + (m * n - r1 * c1) * per_word)
            if best is None or bound <= best[0]:
                best = (bound, new, r1, c1)
            if (r1, c1) == (m, n):
                break
        _, line, rows, cols = best
        yield rows, cols


def _step_frames(rows, cols, r1, c1, *, lanes, row_bytes, col_bytes, max_write, tile_words):
    """Model frames of one growth step from ``rows x cols`` to ``r1 x c1`` (as the driver
    sends it: the new columns of B, their results, the new rows of A, their results)."""
    frames = []

    def write(nbytes):
        while nbytes > 0:
            x = min(max_write, nbytes)
            frames.append((x + 18, None))
            nbytes -= x

    def tiles(rn, cn):
        per = max(1, tile_words // cn)
        for r in range(0, rn, per):
            rn1 = min(per, rn - r)
            frames.append((30, 15 + 4 * rn1 * cn, rn1 * protocol.padded_columns(cn, lanes)))

    if c1 > cols:
        write(protocol.padded_columns(c1 - cols, lanes) * col_bytes)
        if rows:
            tiles(rows, c1 - cols)
    if r1 > rows:
        write((r1 - rows) * row_bytes)
        tiles(r1 - rows, c1)
    return frames


def _growth_frames(steps, lanes, row_bytes, col_bytes, max_write, tile_words):
    """Model frames of a whole growth sequence ``steps`` (see :func:`growth_steps`)."""
    frames = []
    rows = cols = 0
    for r1, c1 in steps:
        frames += _step_frames(rows, cols, r1, c1, lanes=lanes, row_bytes=row_bytes,
                               col_bytes=col_bytes, max_write=max_write, tile_words=tile_words)
        rows, cols = max(rows, r1), max(cols, c1)
    return frames


class _Blocks:
    """The wire blocks of the rows of A, or of the columns of B: ``[rows, KB, block bytes]``.

    Encoded (quantized, with ``Wire.BFP``) when the plan first asks for them, so that the first
    frames of a GEMM go out before the rest of its operands are encoded. A stochastic format is
    encoded whole at once: its random bits follow the block order of the whole matrix (rows of
    A, or columns of B, each along K, as ``golden.gemm`` quantizes them), so the blocks are
    those of ``golden.gemm`` however the GEMM is cut.
    """

    def __init__(self, x, fmt, wire, input_format, seed, kb, bb):
        self._x = np.ascontiguousarray(x, np.float32)         # [rows, K]
        self._args = (fmt, wire)
        self._kw = {"input_format": input_format, "seed": seed}
        self._arr = np.empty((self._x.shape[0], kb, bb), np.uint8)
        self._done = np.zeros(self._x.shape[0], bool)
        self.shape = self._arr.shape
        if fmt.rounding is Rounding.STOCHASTIC:
            self._encode(0, self._x.shape[0])

    def _encode(self, r0, r1):
        _, raw = protocol.a_blocks_payload(self._x[r0:r1], *self._args, **self._kw)
        self._arr[r0:r1] = np.frombuffer(raw, np.uint8).reshape(r1 - r0, *self.shape[1:])
        self._done[r0:r1] = True

    def __getitem__(self, key):
        rows = key[0] if isinstance(key, tuple) else key
        r0, r1, _ = rows.indices(self.shape[0])
        if not self._done[r0:r1].all():
            self._encode(r0, r1)
        return self._arr[key]


class _Tile:
    """One rectangle of C: where it is on the device and which of its words have arrived."""

    def __init__(self, c, r0, rn, c0, cn, lanes):
        self.c, self.r0, self.rn, self.c0, self.cn = c, r0, rn, c0, cn
        self.words = rn * protocol.column_groups(cn, lanes)   # C bank words per bank
        self.base = None                                        # C bank word, once placed
        self.data = np.zeros(rn * cn, np.uint32)
        self.have = np.zeros(rn * cn, bool)
        self.done = False

    def put(self, first, words):
        self.data[first:first + len(words)] = words
        self.have[first:first + len(words)] = True
        if not self.done and self.have.all():
            self.done = True
            self.c[self.r0:self.r0 + self.rn, self.c0:self.c0 + self.cn] = \
                self.data.reshape(self.rn, self.cn)
            return True
        return False


class _CRing:
    """Allocation of C regions (bank words) in ring order; a region is freed when the tile in
    it has been received."""

    def __init__(self, depth):
        self.depth = depth
        self.head = 0
        self.live = []                  # [(base, size, tile)]

    def _free(self, lo, hi):
        return all(b + s <= lo or b >= hi for b, s, t in self.live if not t.done)

    def place(self, tile):
        self.live = [x for x in self.live if not x[2].done]
        size = tile.words
        for base in (self.head, 0):
            if base + size <= self.depth and self._free(base, base + size):
                tile.base = base
                self.live.append((base, size, tile))
                self.head = base + size if base + size < self.depth else 0
                return True
        return False


@dataclass
class _Op:
    """One operation of the program: a write, a COMPUTE or a read of C."""

    cmd: Cmd
    args: dict
    data: bytes = b""
    unit: int = 1               # bytes per block (writes)
    tile: _Tile = None
    attempts: int = 0
    last: bool = False          # COMPUTE: the last chunk of its tile (the result is final)
    readback: bool = None       # COMPUTE: the reply carries the result (decided when sent)
    resent: bool = False        # sent again after a failure (its attempt is counted)

    def count(self):
        return self.args.get("count", 1)

    def head(self, n):
        """Split off the first ``n`` blocks (writes) or words (reads); return that part."""
        if self.cmd is Cmd.READ_C:
            part = _Op(Cmd.READ_C, dict(self.args, count=n), tile=self.tile,
                       attempts=self.attempts)
            self.args = dict(self.args, first=self.args["first"] + n,
                             count=self.args["count"] - n)
            return part
        part = _Op(self.cmd, dict(self.args, count=n), self.data[:n * self.unit], self.unit,
                   attempts=self.attempts)
        self.args = dict(self.args, start=self.args["start"] + n,
                         count=self.args["count"] - n)
        self.data = self.data[n * self.unit:]
        return part


class _Program:
    """The operations still to send: a deque in front of a lazy plan (a generator), so that
    the first frames go out while the rest of the GEMM is still being planned."""

    def __init__(self, plan):
        self._ops = deque()
        self._plan = iter(plan)

    def _fill(self):
        if not self._ops and self._plan is not None:
            op = next(self._plan, None)
            if op is None:
                self._plan = None
            else:
                self._ops.append(op)
        return self._ops

    def __bool__(self):
        return bool(self._fill())

    def __getitem__(self, index):
        return self._fill()[index]

    def popleft(self):
        return self._fill().popleft()

    def appendleft(self, op):
        self._ops.appendleft(op)

    def extendleft(self, ops):
        self._ops.extendleft(ops)


def _read_op(tile, first, count):
    return _Op(Cmd.READ_C, {"first": first, "count": count}, tile=tile)


@dataclass
class _Frame:
    seq: int
    op: _Op
    nbytes: int                 # bytes of the frame
    reply_len: int              # expected reply body length; None: QUIET, no reply
    payload_len: int
    seconds: float = 0.0        # device time to execute (COMPUTE), for the reply timeout
    end: int = 0                # request bytes of the stream sent up to the end of this frame
    # The device's input model (_RxModel), in byte times of the line: a bound on the time
    # from the start of the frame's execution until the decoder is released, and on the time
    # to put its reply into the transmit buffer; the reply's bytes (whole frame, 0: none); the
    # time from which its reply cannot wait for room in the buffer (None: it may).
    exec: float = 0.0
    push: float = 0.0
    reply_bytes: int = 0
    clear_at: float = None
    released_at: float = None   # its reply has started arriving: released by then


class _RxModel:
    """The host's model of the device's input, which keeps its receive FIFO from overrunning
    (docs/protocol.md 1).

    Times are in byte times of the line, on the axis of the request bytes sent in one stream:
    byte ``x`` arrives at the device at time ``x`` at the earliest (back to back). Arriving
    later only gives the device more time, so the model takes the earliest arrival. A frame's
    execution starts at the later of its arrival and the end of the frame before it; its
    decoder is released ``exec`` later (a replied frame's when the reply starts, a QUIET
    frame's once it has executed), and the frame ends when its reply is in the transmit buffer,
    ``push`` later. While the device executes a frame its decoder holds that frame and the FIFO
    takes the bytes behind it: at most ``room`` bytes may arrive between the end of a frame and
    its release. After its release the decoder takes the next frame, which waits in the decoder
    until the device has ended the frame before it.

    A reply can wait for room in the transmit buffer only while more reply bytes are
    outstanding (expected by the host, not yet received) up to its end than the buffer holds
    (``tx_buffer``): the bytes the host has received have left the buffer. Such a frame's end
    is unknown (infinite) until the host has received enough, and from then on it is at most
    ``push`` away. A reply that arrives says that its frame and all before it have ended by the
    time the host reads it, when at most :attr:`sent` bytes can have arrived.

    Parameters
    ----------
    room : int
        Bytes of the receive FIFO less a margin.
    tx_buffer : int
        Bytes of the device's transmit buffer (INFO).
    cycles_per_byte : float
        Device clock cycles per byte time of the line.
    """

    def __init__(self, room, tx_buffer, cycles_per_byte):
        self.room = room
        self.tx_buffer = tx_buffer
        self.cycles_per_byte = cycles_per_byte
        self.sent = 0                   # request bytes sent in this stream
        self.anchor = 0.0               # every frame before the ones in flight ended by then

    def times(self, frames):
        """Yield ``(frame, release, end)`` for the frames in flight, oldest first."""
        t = self.anchor
        outstanding = 0
        for f in frames:
            release = max(f.end, t) + f.exec
            if f.released_at is not None:
                release = min(release, f.released_at)
            if f.reply_bytes:
                outstanding += f.reply_bytes
                if f.clear_at is None and outstanding <= self.tx_buffer:
                    f.clear_at = self.sent
                t = math.inf if f.clear_at is None else max(release, f.clear_at) + f.push
            else:
                t = release
            yield f, release, t

    def free(self, frames, arriving=None):
        """Return how many more request bytes may be sent now (None: no bound).

        ``arriving`` is ``(cmd, seq)`` of the reply whose header has arrived and the rest not
        yet (:meth:`FrameParser.partial_header`): its frame has been released.
        """
        if arriving is not None:
            for f in frames:
                if f.reply_bytes and (int(f.op.cmd) | REPLY_FLAG, f.seq) == arriving:
                    if f.released_at is None:
                        f.released_at = self.sent
                    break
        limit = None
        for f, release, _ in self.times(frames):
            if release > f.end + self.room:
                x = f.end + self.room - self.sent
                limit = x if limit is None else min(limit, x)
        return limit

    def holds(self, frames, nbytes, cycles):
        """Return whether the bytes behind a frame of ``nbytes`` that executes in ``cycles``
        and is sent now would be bounded by it (:meth:`free`): then it needs a reply, or
        nothing would ever lift the bound."""
        ends = [end for _, _, end in self.times(frames)]
        last = ends[-1] if ends else self.anchor
        release = max(self.sent + nbytes, last) + cycles / self.cycles_per_byte
        return release > self.sent + nbytes + self.room

    def retire(self, frames, count):
        """The first ``count`` frames have ended (a reply arrived); call before they leave."""
        for i, (_, _, end) in enumerate(self.times(frames)):
            if i == count - 1:
                self.anchor = min(end, self.sent)
                return

    def restart(self):
        """Forget the frames in flight: the device has ended them (or will not run them)."""
        self.anchor = self.sent

    def frame(self, frames, f, cycles):
        """Set the model fields of ``f``, just sent behind ``frames`` (in flight), which
        executes in at most ``cycles``."""
        self.sent += f.nbytes
        f.end = self.sent
        f.exec = cycles / self.cycles_per_byte
        if f.reply_len is not None:
            f.reply_bytes = protocol.FRAME_OVERHEAD + 1 + f.reply_len
            f.push = (2 * f.reply_bytes + 64) / self.cycles_per_byte
            if f.reply_bytes + sum(x.reply_bytes for x in frames) <= self.tx_buffer:
                f.clear_at = 0.0                # its reply never waits for room


class _LinkState:
    """What the driver knows of a device's sequence number, shared by the Devices that share
    a transport (a simulated board shared within a process). None: unknown, ask STATUS."""

    def __init__(self):
        self.next_seq = None


def _link_state(transport):
    state = getattr(transport, "_hbfp_link_state", None)
    if state is None:
        state = _LinkState()
        transport._hbfp_link_state = state
    return state


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
        self._retries = int(retries)
        self._timeout = timeout
        self._parser = FrameParser()
        self._useq = int(time.monotonic_ns()) & 0xFF        # seq of unsequenced requests
        self._link = _link_state(transport)
        self._closed = False
        self._frame_limit = None
        self._ok_streak = 0
        self._window_frames = 96            # frames in flight: 1 after an error, then grows
        self.stats = dict.fromkeys(("frames", "retries", "nacks", "timeouts", "lost",
                                    "crc_errors", "out_of_order", "recoveries", "splits",
                                    "resent", "stale", "tx_bytes", "rx_bytes", "tx_payload",
                                    "rx_payload"), 0)
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
        from hbfp_hw.formats import resolve_format
        want = resolve_format(fmt)
        have = self._info.fmt
        if want != have:
            raise FormatMismatch(f"{self.url} computes {have} but {want} was asked for; open a "
                                 f"device built for that format (e.g. sim://?mantissa_bits="
                                 f"{want.mantissa_bits}&block_size={want.block_size}) or "
                                 f"pass fmt=None")

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
            body = self._query(Cmd.STATUS, protocol.layout_bytes(protocol.STATUS_LAYOUT))
            status = protocol.from_bytes(protocol.STATUS_LAYOUT, body)
            self._link.next_seq = status["next_seq"]
        return status

    def reset(self):
        """Send RESET: forget C, clear the counters and the sequence number (A and B stay)."""
        with self._lock:
            self._link.next_seq = None
            self._query(Cmd.RESET, 0)
            self._link.next_seq = 0

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
                self._link.next_seq = None          # ask STATUS before the next GEMM
                raise

    def _gemm(self, a, b, wire, seed):
        info = self._info
        fmt = info.fmt
        m, k = a.shape
        n = b.shape[1]
        kb = protocol.kblocks(k, fmt)
        bb = protocol.block_bytes(fmt, wire, info.input_format)
        seed_b = None if seed is None else (seed + 1) % (1 << 32)
        a_blk = _Blocks(a, fmt, wire, info.input_format, seed, kb, bb)
        b_blk = _Blocks(b.T, fmt, wire, info.input_format, seed_b, kb, bb)
        c = np.zeros((m, n), np.uint32)
        rows, cols, chunk = tile_sizes(info, m, n, k)
        tiles = []
        if (rows, cols, chunk) == (m, n, kb):
            plan = self._plan_resident(a_blk, b_blk, c, k, wire, tiles)
        else:
            plan = self._plan_tiles(a_blk, b_blk, c, k, wire, rows, cols, chunk, tiles)
        self._stream(_Program(plan), tiles)
        return c

    def _write(self, cmd, start, blocks, bb, wire):
        raw = np.ascontiguousarray(blocks).tobytes()
        return _Op(cmd, {"wire": int(wire), "flags": 0, "count": len(raw) // bb,
                         "start": start}, raw, bb)

    def _b_write(self, b_blk, c0, c1, k0, k1, word, bb, wire):
        """WRITE_B of the columns ``c0:c1`` (padded to lanes), k-blocks ``k0:k1``, placed from
        B bank word ``word`` on."""
        dev = protocol.b_device_order(b_blk[c0:c1, k0:k1], self._info.lanes)
        return self._write(Cmd.WRITE_B, word * self._info.lanes, dev, bb, wire)

    def _compute(self, tile, k, kb_chunk, a_base, b_base, accumulate, last):
        flags = protocol.Flag.ACCUMULATE if accumulate else 0
        return _Op(Cmd.COMPUTE, {"m": tile.rn, "n": tile.cn, "k": k, "flags": int(flags),
                                 "a_base": a_base, "b_base": b_base, "kb": kb_chunk},
                   tile=tile, last=last)

    def _plan_resident(self, a_blk, b_blk, c, k, wire, tiles):
        """A and B fit the buffers: load each row and column once, in growing steps
        (:func:`growth_steps`), each row of A at ``row * KB``, each column group of B at
        ``group * KB``; compute every new part of C as soon as its operands are sent.

        A generator: each step is chosen (:func:`_growth_iter`) when the frames of the step
        before it have been taken, while they are on the line."""
        info = self._info
        lanes = info.lanes
        m, kb, bb = a_blk.shape
        n = b_blk.shape[0]
        tile_words = max(lanes, min(info.c_words // 4, protocol.MAX_READ_WORDS - 1))
        model = (m, n, lanes, kb * bb, kb * bb, info.max_payload - 8, tile_words,
                 info.c_words)

        def compute(r0, rn, c0, cn):
            col_per = min(protocol.padded_columns(cn, lanes),
                          max(lanes, tile_words // lanes * lanes))
            for cc in range(c0, c0 + cn, col_per):
                cw = min(col_per, c0 + cn - cc)
                per = max(1, min(rn, tile_words // protocol.padded_columns(cw, lanes)))
                for r in range(r0, r0 + rn, per):
                    tile = _Tile(c, r, min(per, r0 + rn - r), cc, cw, lanes)
                    tiles.append(tile)
                    yield self._compute(tile, k, kb, r * kb, cc // lanes * kb, False, True)

        rows = cols = 0
        for r1, c1 in _growth_iter(*model):
            if c1 > cols:
                yield self._b_write(b_blk, cols, c1, 0, kb, cols // lanes * kb, bb, wire)
                if rows:
                    yield from compute(0, rows, cols, c1 - cols)
            if r1 > rows:
                yield self._write(Cmd.WRITE_A, rows * kb, a_blk[rows:r1], bb, wire)
                yield from compute(rows, r1 - rows, 0, c1)
            rows, cols = max(rows, r1), max(cols, c1)

    def _plan_tiles(self, a_blk, b_blk, c, k, wire, rows, cols, chunk, tiles):
        """C in tiles of ``rows x cols``; K in chunks of ``chunk`` k-blocks, accumulated on the
        device in order (the first chunk of a tile starts from +0.0, the others ACCUMULATE).
        A and B chunks go to slots of the buffers; a chunk still in a slot is not sent again."""
        info = self._info
        lanes = info.lanes
        bs = info.fmt.block_size
        m, kb, bb = a_blk.shape
        n = b_blk.shape[0]
        a_size = rows * chunk
        b_size = protocol.column_groups(cols, lanes) * chunk
        a_slots = _Slots(info.a_blocks // a_size, a_size)
        b_slots = _Slots(info.b_depth // b_size, b_size)
        for c0 in range(0, n, cols):
            c1 = min(n, c0 + cols)
            for r0 in range(0, m, rows):
                r1 = min(m, r0 + rows)
                tile = _Tile(c, r0, r1 - r0, c0, c1 - c0, lanes)
                tiles.append(tile)
                for q, k0 in enumerate(range(0, kb, chunk)):
                    k1 = min(kb, k0 + chunk)
                    a_at, new = a_slots.get((r0, k0))
                    if new:
                        yield self._write(Cmd.WRITE_A, a_at, a_blk[r0:r1, k0:k1], bb, wire)
                    b_at, new = b_slots.get((c0, k0))
                    if new:
                        yield self._b_write(b_blk, c0, c1, k0, k1, b_at, bb, wire)
                    k_elems = min(k, k1 * bs) - k0 * bs
                    yield self._compute(tile, k_elems, k1 - k0, a_at, b_at, q > 0, k1 == kb)

    # -- the request engine ---------------------------------------------------------------------

    def _limit(self):
        info = getattr(self, "_info", None)
        return self._frame_limit or (info.max_payload if info else 0xFFFF)

    def _reply_limit(self):
        return self._frame_limit or 16 * 1024

    def _settle_time(self):
        info = getattr(self, "_info", None)
        dev_timeout = info.timeout_cycles / info.clock_hz if info else 0.1
        return dev_timeout + min(self._t.latency, 0.005)

    @property
    def _grace(self):
        """How long to wait after a damaged reply for a valid one before acting."""
        return min(self._t.latency, 0.003) + 64 * self._t.byte_time

    def _reply_timeout(self, inflight_bytes, failures, seconds=0.0):
        base = self._timeout if self._timeout is not None else (
            self._t.latency + 2.0 * inflight_bytes * self._t.byte_time + seconds)
        return base * (2 ** min(max(0, failures - 1), 5))

    def _send(self, cmd, seq, payload):
        frame = protocol.encode_frame(int(cmd), seq, payload)
        self.stats["tx_bytes"] += len(frame)
        self.stats["tx_payload"] += len(payload)
        self._t.write(frame)
        return len(frame)

    def _read_frames(self, timeout):
        """Return the frames that arrive within ``timeout`` and whether a damaged one did."""
        raw = self._t.read(timeout)
        if not raw:
            return [], False
        self.stats["rx_bytes"] += len(raw)
        errors = self._parser.errors
        frames = self._parser.feed(raw)
        self.stats["crc_errors"] += self._parser.errors - errors
        # Damaged: a frame failed its CRC, or bytes arrived that hold no sync marker.
        damaged = self._parser.errors != errors or (not frames and not self._parser._buf)
        return frames, damaged

    def _resync(self):
        """Wait for the device's idle timeout (it drops any partial frame) and forget what
        arrived meanwhile."""
        self.stats["rx_bytes"] += self._t.drain(self._settle_time())
        self._parser.reset()

    def _query(self, cmd, reply_len):
        """Send an unsequenced request (INFO, STATUS, RESET) and return its reply body.

        Only one request is in flight; it is retried after a NACK, a damaged reply or a
        timeout, up to ``retries`` more times.
        """
        if self._closed:
            raise DeviceNotFound(f"{self.url} is closed; open it again")
        attempts = 0
        reason = None
        while True:
            if attempts > self._retries:
                raise DeviceTimeout(
                    f"{self.url}: no valid reply to {cmd.name} after {attempts} attempts "
                    f"(last problem: {reason}); check the cable, the baud rate and that the "
                    f"board runs the hbfp-hw bitstream, then open the device again")
            self._useq = (self._useq + 1) & 0xFF
            seq = self._useq
            size = self._send(cmd, seq, b"")
            deadline = time.monotonic() + self._reply_timeout(size + 64, attempts)
            attempts += 1
            reason = "timeout"
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.stats["timeouts"] += 1
                    self.stats["retries"] += 1
                    self._resync()
                    break
                frames, damaged = self._read_frames(left)
                if damaged:
                    deadline = min(deadline, time.monotonic() + self._grace)
                    reason = "damaged reply"
                for f in frames:
                    if f.cmd == NACK and f.seq == seq:
                        self.stats["nacks"] += 1
                        reason = f"NACK {_status_name(f.payload)}"
                        deadline = 0
                    elif f.seq == seq and f.cmd == int(cmd) | REPLY_FLAG:
                        if not f.payload or f.payload[0] != Status.OK:
                            raise ProtocolError(
                                f"{self.url} refused {cmd.name} with "
                                f"{_status_name(f.payload)}; report this as a bug")
                        body = f.payload[1:]
                        if reply_len is not None and len(body) != reply_len:
                            self.stats["stale"] += 1
                            continue
                        self.stats["frames"] += 1
                        self.stats["rx_payload"] += len(f.payload)
                        return body
                if deadline == 0:
                    self.stats["resent"] += 1
                    break

    def _sync(self):
        """Make sure the driver knows the device's next sequence number."""
        if self._link.next_seq is None:
            body = self._query(Cmd.STATUS, protocol.layout_bytes(protocol.STATUS_LAYOUT))
            self._link.next_seq = protocol.from_bytes(protocol.STATUS_LAYOUT, body)["next_seq"]

    def _next_op(self, queue, c_ring, room=None):
        """Take the operation of the next frame from the head of ``queue``; None if it waits.

        Writes and reads longer than the frame limit are split, and the rest stays at the
        head of the queue. ``room`` (bytes, None: no limit) is what the device's receive FIFO
        can take now: a write is cut to fit it (but not below two blocks), and nothing larger
        is taken. A COMPUTE that starts a tile first takes a region of C (and waits
        if none is free); the last COMPUTE of a tile returns the result (READBACK) if that
        reply fits the limit, otherwise READ_C requests for it follow.
        """
        op = queue[0]
        if op.cmd in (Cmd.WRITE_A, Cmd.WRITE_B):
            per = max(1, (self._limit() - protocol.ARGS_BYTES) // op.unit)
            if room is not None:
                fits = (room - protocol.FRAME_OVERHEAD - protocol.ARGS_BYTES) // op.unit
                if fits < min(2, op.count()):
                    return None
                per = min(per, fits)
            return op.head(per) if op.count() > per else queue.popleft()
        # Checked before a COMPUTE takes a C region: no READ_C or COMPUTE is sent into less
        # room than a COMPUTE frame.
        if room is not None and room < protocol.FRAME_OVERHEAD + protocol.layout_bytes(
                protocol.COMPUTE_ARGS_LAYOUT):
            return None
        if op.cmd is Cmd.READ_C:
            per = max(1, min(protocol.MAX_READ_WORDS, (self._reply_limit() - 1) // 4))
            return op.head(per) if op.count() > per else queue.popleft()
        tile = op.tile
        if tile.base is None and not c_ring.place(tile):
            if not c_ring.live:
                raise ProtocolError(f"a tile of {tile.words} C words does not fit "
                                    f"{self._info.c_depth}; report this as a bug")
            return None
        queue.popleft()
        if op.last and op.readback is None:
            op.readback = 5 + 4 * tile.rn * tile.cn <= self._reply_limit()
            if not op.readback:
                queue.appendleft(_read_op(tile, 0, tile.rn * tile.cn))
        return op

    def _payload(self, op, quiet):
        """Return the payload of ``op``'s frame and the length of the reply body it expects
        (None: no reply, QUIET)."""
        if op.cmd in (Cmd.WRITE_A, Cmd.WRITE_B):
            flags = int(protocol.Flag.QUIET) if quiet else 0
            return (protocol.to_bytes(protocol.WRITE_ARGS_LAYOUT, dict(op.args, flags=flags))
                    + op.data), (None if quiet else 0)
        tile = op.tile
        if op.cmd is Cmd.READ_C:
            first = op.args["first"]
            return protocol.to_bytes(protocol.READ_ARGS_LAYOUT, {
                "row": first // tile.cn, "col": first % tile.cn, "count": op.args["count"],
                "flags": 0, "base": tile.base, "rows": tile.rn, "cols": tile.cn}), \
                4 * op.args["count"]
        flags = op.args["flags"]
        readback = bool(op.last and op.readback)
        # Behind a receive FIFO every COMPUTE has a reply: the device takes no input while it
        # computes, and the reply says when the FIFO is being read again (see _stream).
        replied = readback or self._t.rx_fifo_bytes is not None
        if readback:
            flags |= protocol.Flag.READBACK
        elif not replied:
            flags |= protocol.Flag.QUIET
        return protocol.to_bytes(protocol.COMPUTE_ARGS_LAYOUT, {
            "m": tile.rn, "n": tile.cn, "k": op.args["k"], "flags": int(flags),
            "a_base": op.args["a_base"], "b_base": op.args["b_base"],
            "c_base": tile.base}), (4 + 4 * tile.rn * tile.cn * readback if replied else None)

    def _stream(self, queue, tiles):
        """Run a program: stream its frames, and recover from errors, until every tile of C
        has arrived.

        Frames are sent ahead of their replies, up to the transport's window (bytes) and an
        adaptive number of frames. The device executes sequenced frames in order, so an OK
        reply acknowledges every frame before it too, and writes and COMPUTEs without results
        ask for no reply (QUIET), except one write in every quarter window.

        Errors: an OUT_OF_ORDER reply says which sequence number the device expects, so the
        frames before it were executed (a result among them whose reply was lost is read
        again). A single frame in flight that failed (NACK, damaged or missing reply) is sent
        again with the same sequence number: the device executes it if it has not yet, and
        refuses it as OUT_OF_ORDER if it has. With several frames in flight the driver stops
        and asks STATUS for the device's next sequence number instead, then sends again, with
        the same numbers, the frames that were not executed. After an error it sends one frame
        at a time, and doubles the number after every 16 good frames.
        """
        self._sync()
        info = self._info
        c_ring = _CRing(info.c_depth)
        inflight = deque()                  # _Frame, in sequence order
        window = self._t.window_bytes or (1 << 16)
        quiet_budget = max(256, window // 4)
        quiet_run = 0
        inflight_bytes = 0
        recovery = None                     # (STATUS seq, deadline) while asking STATUS
        failures = 0                        # consecutive timeouts
        deadline = None
        reason = None
        damaged = False                     # the deadline is a grace period after a bad reply
        rate = self._t.cycle_rate or info.clock_hz
        max_frames = 96
        # The receive FIFO (docs/protocol.md 1): a byte that arrives while it is full is lost.
        # The device takes no input while it executes a frame, nor once its decoder holds the
        # next frame while a reply waits for room in the transmit buffer: _RxModel bounds the
        # bytes that can pile up in the FIFO meanwhile. The margin covers the rounding of the
        # device times.
        fifo = self._t.rx_fifo_bytes
        model = None
        if fifo is not None:
            per_byte = self._t.cycles_per_byte or info.clock_hz * self._t.byte_time
            model = _RxModel(max(1, fifo - 16), info.tx_buffer, per_byte)

        def fifo_free():
            """Bytes the device can take now (None: any number)."""
            return None if model is None else model.free(inflight,
                                                         self._parser.partial_header())

        def retire(count):
            """The first ``count`` frames in flight have ended: a reply says so."""
            if model is not None:
                model.retire(inflight, count)

        def pending():
            """Bytes of the frames in flight and their expected replies, and device time."""
            return (inflight_bytes + sum(f.reply_len or 0 for f in inflight) + 64,
                    sum(f.seconds for f in inflight))

        def shrink(f):
            """Short frames get through a noisy link: halve the frame (or reply) size, down to
            64 bytes or one block; it grows again after 32 good frames."""
            size = max(f.payload_len, f.reply_len or 0)
            if size > 64:
                new_limit = max(64, min(self._limit(), size // 2))
                if new_limit < self._limit():
                    self._frame_limit = new_limit
                    self.stats["splits"] += 1

        def failed(why):
            """An error: from now on one frame at a time, growing again after good frames."""
            nonlocal reason
            reason = why
            self._window_frames = 1
            self._ok_streak = 0

        def lost_result(f):
            """``f`` was executed but its result did not arrive: read it again (in smaller
            replies), counting the attempt."""
            op = f.op
            if op.cmd is Cmd.READ_C:
                again = _read_op(op.tile, op.args["first"], op.args["count"])
            elif op.cmd is Cmd.COMPUTE and op.readback and op.last:
                again = _read_op(op.tile, 0, op.tile.rn * op.tile.cn)
            else:
                return
            # The loss is one failed attempt (already counted if the frame was sent again).
            again.attempts = op.attempts + (0 if op.resent else 1)
            if again.attempts > self._retries:
                raise DeviceTimeout(
                    f"{self.url}: the result of {op.cmd.name} was lost {again.attempts} times "
                    f"(last problem: {reason}); check the cable, the baud rate and that the "
                    f"board runs the hbfp-hw bitstream, then open the device again")
            shrink(f)
            queue.appendleft(again)

        def executed(f, body):
            """``f`` was executed; ``body`` is its reply, or None if the reply was lost."""
            nonlocal inflight_bytes
            inflight_bytes -= f.nbytes
            self.stats["frames"] += 1
            self._ok_streak += 1
            if self._ok_streak % 16 == 0:
                self._window_frames = min(max_frames, 2 * self._window_frames)
            if self._frame_limit and self._ok_streak >= 32:
                self._frame_limit *= 2
                if self._frame_limit >= self._info.max_payload:
                    self._frame_limit = None
                self._ok_streak = 0
            op = f.op
            if body is None:
                if f.reply_len is not None:
                    self.stats["lost"] += 1
                    lost_result(f)
                return
            if op.cmd is Cmd.READ_C:
                op.tile.put(op.args["first"], protocol.c_from_payload(body))
            elif op.cmd is Cmd.COMPUTE and op.readback and op.last:
                op.tile.put(0, protocol.c_from_payload(body[4:]))

        def executed_before(seq):
            """The device expects ``seq``: every frame in flight before it was executed."""
            done = (seq - inflight[0].seq) & 0xFF if inflight else 0
            if done > len(inflight):
                self._link.next_seq = None
                raise ProtocolError(
                    f"{self.url} expects sequence number {seq}, which the driver has not sent "
                    f"yet: another program reset or used the device during this GEMM; run it "
                    f"again")
            retire(done)
            for _ in range(done):
                executed(inflight.popleft(), None)

        def send_again():
            """Send the frames in flight again (none of them was executed), with the same
            sequence numbers; the first one counts a failed attempt."""
            nonlocal inflight_bytes
            if not inflight:
                return
            first = inflight[0]
            first.op.attempts += 1
            first.op.resent = True
            if first.op.attempts > self._retries:
                raise DeviceTimeout(
                    f"{self.url}: {first.op.cmd.name} failed {first.op.attempts} times (last "
                    f"problem: {reason}); check the cable, the baud rate and that the board "
                    f"runs the hbfp-hw bitstream, then open the device again")
            shrink(first)
            self.stats["resent"] += len(inflight)
            queue.extendleft(reversed([f.op for f in inflight]))
            self._link.next_seq = first.seq
            inflight.clear()
            inflight_bytes = 0
            if model is not None:
                model.restart()

        def start_recovery(settle):
            """After an error: one frame in flight is simply sent again; with several, ask
            STATUS (it comes after all of them) before sending anything else."""
            nonlocal recovery, deadline
            deadline = None
            if settle:
                self._resync()
            if len(inflight) <= 1:
                send_again()
                return
            self.stats["recoveries"] += 1
            self._useq = (self._useq + 1) & 0xFF
            size = self._send(Cmd.STATUS, self._useq, b"")
            if model is not None:
                model.sent += size
            nbytes, seconds = pending()
            recovery = (self._useq, time.monotonic() + self._reply_timeout(
                nbytes + size, failures, seconds))

        while True:
            # -- send ------------------------------------------------------------------------
            while recovery is None and queue and len(inflight) < self._window_frames and (
                    not inflight or inflight_bytes + self._limit() + 16 <= window):
                room = fifo_free()
                op = self._next_op(queue, c_ring, room)
                if op is None:
                    break
                quiet = (op.cmd in (Cmd.WRITE_A, Cmd.WRITE_B) and self._window_frames > 1
                         and quiet_run + len(op.data) + 18 <= quiet_budget)
                payload, reply_len = self._payload(op, quiet)
                if room is not None and len(payload) + protocol.FRAME_OVERHEAD > room:
                    queue.appendleft(op)            # a READ_C or COMPUTE that does not fit
                    break
                seconds = 0.0
                if op.cmd is Cmd.COMPUTE:
                    groups = protocol.column_groups(op.tile.cn, info.lanes)
                    cycles = op.tile.rn * (-(-groups // info.channels) * info.channels) * (
                        op.args["kb"] + 1) + 1000
                    seconds = 2.0 * cycles / rate
                else:
                    # A write takes a cycle per byte and a few per block; a read, a few.
                    cycles = 64 + len(payload) + 16 * op.count() * (op.cmd is not Cmd.READ_C)
                if quiet and model is not None and model.holds(
                        inflight, len(payload) + protocol.FRAME_OVERHEAD, cycles):
                    # Only a reply could say when the device has taken this frame: ask for one.
                    payload, reply_len = self._payload(op, False)
                quiet_run = quiet_run + len(payload) + 10 if reply_len is None else 0
                seq = self._link.next_seq
                nbytes = self._send(op.cmd, seq, payload)
                frame = _Frame(seq, op, nbytes, reply_len, len(payload), seconds)
                if model is not None:
                    model.frame(inflight, frame, cycles)
                inflight.append(frame)
                inflight_bytes += nbytes
                self._link.next_seq = (seq + 1) & 0xFF
                deadline = None
            if not (queue or inflight or recovery):
                if all(t.done for t in tiles):
                    return
                raise ProtocolError(f"{self.url}: the driver lost track of a result; report "
                                    f"this as a bug")
            if not (inflight or recovery):
                continue                    # a re-read was queued: send it
            # -- wait ------------------------------------------------------------------------
            now = time.monotonic()
            if recovery is not None:
                until = recovery[1]
            else:
                if deadline is None:
                    nbytes, seconds = pending()
                    deadline = now + self._reply_timeout(nbytes, failures, seconds)
                until = deadline
            left = until - now
            if left <= 0:
                self.stats["retries"] += 1
                if not damaged:
                    self.stats["timeouts"] += 1
                failures += 1
                if failures > self._retries + 1:
                    raise DeviceTimeout(
                        f"{self.url}: no valid reply after {failures} attempts (last problem: "
                        f"{reason}); check the cable, the baud rate and that the board runs "
                        f"the hbfp-hw bitstream, then open the device again")
                failed("damaged reply" if damaged else "timeout")
                recovery = None
                start_recovery(settle=not damaged)
                damaged = False
                continue
            frames, bad = self._read_frames(left)
            if bad and recovery is None:
                # A damaged reply: unless a valid one follows at once, act as on a timeout
                # (the request arrived, so the device need not time out a partial frame).
                deadline = min(deadline or until, time.monotonic() + self._grace)
                damaged = True
            for f in frames:
                if f.cmd == NACK:
                    self.stats["nacks"] += 1
                    if recovery is None and inflight:
                        failed(f"NACK {_status_name(f.payload)}")
                        start_recovery(settle=False)
                    continue
                if f.cmd == Cmd.STATUS | REPLY_FLAG:
                    if recovery is not None and f.seq == recovery[0] and len(f.payload) == \
                            1 + protocol.layout_bytes(protocol.STATUS_LAYOUT):
                        st = protocol.from_bytes(protocol.STATUS_LAYOUT, f.payload[1:])
                        recovery = None
                        deadline = None
                        executed_before(st["next_seq"])
                        send_again()
                    continue
                entry = next((x for x in inflight if x.seq == f.seq), None)
                if entry is None or f.cmd != int(entry.op.cmd) | REPLY_FLAG:
                    self.stats["stale"] += 1
                    continue
                status = f.payload[0] if f.payload else None
                if status == Status.OUT_OF_ORDER and len(f.payload) == 2:
                    # The device expects f.payload[1]: the frames before it were executed.
                    self.stats["out_of_order"] += 1
                    executed_before(f.payload[1])
                    if recovery is None and inflight:
                        failed("a frame was lost")
                        start_recovery(settle=False)
                    deadline = None
                    continue
                if status != Status.OK:
                    self._link.next_seq = None
                    raise ProtocolError(
                        f"{self.url} refused {entry.op.cmd.name} {entry.op.args} with "
                        f"{_status_name(f.payload)}: the driver and the device disagree; "
                        f"report this as a bug together with `dev.info()`")
                body = f.payload[1:]
                if entry.reply_len is None or len(body) != entry.reply_len:
                    self.stats["stale"] += 1
                    continue
                executed_before(entry.seq)
                retire(1)
                inflight.popleft()
                self.stats["rx_payload"] += len(f.payload)
                executed(entry, body)
                deadline = None
                damaged = False
                failures = 0


class _Slots:
    """Slots of one buffer (A or B) that hold chunks of operands, reused least recently first."""

    def __init__(self, count, size):
        self.size = size
        self.held = OrderedDict((i, None) for i in range(max(1, count)))

    def get(self, key):
        """Return ``(address, new)``: where ``key`` is, and whether it must be sent."""
        for slot, held in self.held.items():
            if held == key:
                self.held.move_to_end(slot)
                return slot * self.size, False
        slot = next(iter(self.held))
        self.held[slot] = key
        self.held.move_to_end(slot)
        return slot * self.size, True


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

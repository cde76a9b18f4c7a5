"""Flow control of the driver: how much it sends ahead of the device, and how long it waits.

- :class:`_LineModel`: the full-duplex line at one byte per time unit each way, on which the
  planner (:mod:`hbfp_hw.fpga.host.planning`) chooses the growth steps of a resident GEMM.
- :class:`_RxModel`: the host's model of the device's input, which keeps the device's receive
  FIFO from overrunning (docs/protocol.md 1), over the :class:`_Frame` in flight.
- :class:`FlowControl`: the window (frames and bytes in flight), the frame size limit that
  shrinks after errors and grows back after good frames, and the reply timeouts.
- :class:`_LinkState`: the device's next sequence number, shared by the Devices of a transport.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..protocol import frames as protocol
from ..protocol.frames import REPLY_FLAG

if TYPE_CHECKING:
    from .planning import _Op

__all__ = ["FlowControl"]


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




def _rx_model(transport, info):
    """Return the :class:`_RxModel` of the device behind ``transport`` (None: its input loses
    no bytes, ``transport.rx_fifo_bytes`` is None).

    The receive FIFO (docs/protocol.md 1): a byte that arrives while it is full is lost. The
    device takes no input while it executes a frame, nor once its decoder holds the next frame
    while a reply waits for room in the transmit buffer: the model bounds the bytes that can
    pile up in the FIFO meanwhile. The margin of 16 bytes covers the rounding of the device
    times.
    """
    fifo = transport.rx_fifo_bytes
    if fifo is None:
        return None
    per_byte = transport.cycles_per_byte or info.clock_hz * transport.byte_time
    return _RxModel(max(1, fifo - 16), info.tx_buffer, per_byte)


class FlowControl:
    """How much the driver sends ahead of the device, in which frame sizes, and how long it
    waits for a reply. One per Device: what it learnt of the link outlasts a GEMM.

    Up to :attr:`window_bytes` request bytes and :attr:`window_frames` frames are in flight.
    After an error one frame at a time (:meth:`failed`); the number doubles after every 16
    good frames (:meth:`succeeded`), up to :attr:`MAX_FRAMES`. A frame that failed halves the
    frame and reply size (:meth:`shrink`, down to 64 bytes), which doubles again after 32 good
    frames.

    Parameters
    ----------
    transport : Transport
        Its ``latency``, ``byte_time`` and ``window_bytes`` hints.
    timeout : float or None
        Reply timeout in seconds (None: from the transport's latency and line rate).

    Members
    -------
    info : Info or None
        The device's INFO, once it has been read (its ``max_payload`` is the frame limit, its
        idle timeout the settle time).
    window_frames : int
        Frames that may be in flight now.
    frame_limit : int or None
        Payload bytes of a frame (and of a reply) after errors; None: the device's limits.
    ok_streak : int
        Good frames since the last error or the last growth of :attr:`frame_limit`.
    """

    #: Most frames in flight.
    MAX_FRAMES = 96

    def __init__(self, transport, timeout=None):
        self._t = transport
        self.timeout = timeout
        self.info = None
        self.frame_limit = None
        self.ok_streak = 0
        self.window_frames = self.MAX_FRAMES

    # -- sizes --------------------------------------------------------------------------------

    @property
    def window_bytes(self):
        """Request bytes that may be in flight (the transport's, 64 KiB if it has none)."""
        return self._t.window_bytes or (1 << 16)

    @property
    def quiet_budget(self):
        """Request bytes of QUIET frames in a row before one asks for a reply."""
        return max(256, self.window_bytes // 4)

    def limit(self):
        """Return the payload bytes of a request frame."""
        return self.frame_limit or (self.info.max_payload if self.info else 0xFFFF)

    def reply_limit(self):
        """Return the payload bytes of a reply frame."""
        return self.frame_limit or 16 * 1024

    def can_send(self, frames, nbytes):
        """Return whether another frame may follow ``frames`` frames of ``nbytes`` in flight."""
        return frames < self.window_frames and (
            not frames or nbytes + self.limit() + 16 <= self.window_bytes)

    # -- adapting to the link -----------------------------------------------------------------

    def shrink(self, f):
        """Short frames get through a noisy link: halve the frame (or reply) size of the
        :class:`_Frame` ``f`` that failed, down to 64 bytes or one block; return whether the
        limit shrank."""
        size = max(f.payload_len, f.reply_len or 0)
        if size > 64:
            new_limit = max(64, min(self.limit(), size // 2))
            if new_limit < self.limit():
                self.frame_limit = new_limit
                return True
        return False

    def failed(self):
        """An error: from now on one frame at a time, growing again after good frames."""
        self.window_frames = 1
        self.ok_streak = 0

    def succeeded(self):
        """A frame was executed: grow the window and the frame size back."""
        self.ok_streak += 1
        if self.ok_streak % 16 == 0:
            self.window_frames = min(self.MAX_FRAMES, 2 * self.window_frames)
        if self.frame_limit and self.ok_streak >= 32:
            self.frame_limit *= 2
            if self.frame_limit >= self.info.max_payload:
                self.frame_limit = None
            self.ok_streak = 0

    # -- timeouts -----------------------------------------------------------------------------

    def settle_time(self):
        """Return how long the device takes to drop a partial frame (its idle timeout)."""
        info = self.info
        dev_timeout = info.timeout_cycles / info.clock_hz if info else 0.1
        return dev_timeout + min(self._t.latency, 0.005)

    @property
    def grace(self):
        """How long to wait after a damaged reply for a valid one before acting."""
        return min(self._t.latency, 0.003) + 64 * self._t.byte_time

    def reply_timeout(self, inflight_bytes, failures, seconds=0.0):
        """Return how long to wait for a reply with ``inflight_bytes`` of requests and replies
        on the line and ``seconds`` of device time ahead of it, after ``failures``
        consecutive timeouts (each doubles it, up to 32 times)."""
        base = self.timeout if self.timeout is not None else (
            self._t.latency + 2.0 * inflight_bytes * self._t.byte_time + seconds)
        return base * (2 ** min(max(0, failures - 1), 5))

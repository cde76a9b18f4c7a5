"""The driver's conversation with a device: requests, replies, retries and recovery.

- :class:`Session`: one per Device. It frames requests (and counts the link bytes in
  :attr:`Session.stats`), parses replies, asks unsequenced requests (INFO, STATUS, RESET) one
  at a time with retries, and knows the device's next sequence number.
- :class:`Stream`: one program (:mod:`hbfp_hw.fpga.host.planning`) sent through a session:
  its frames in flight, their sequence numbers, and the recovery after a NACK, a refused
  out-of-order frame, a damaged or a lost reply (docs/driver.md, "Reliability").
"""

from __future__ import annotations

import time
from collections import deque

from ..protocol import frames as protocol
from ..protocol.frames import NACK, REPLY_FLAG, Cmd, FrameParser, Status
from .flow import FlowControl, _Frame, _link_state, _rx_model
from .planning import _CRing, _read_op
from .transport import DeviceTimeout, ProtocolError

__all__ = ["Session", "Stream"]


def _status_name(payload):
    if not payload:
        return "without status"
    try:
        return Status(payload[0]).name
    except ValueError:
        return f"status {payload[0]}"


class Session:
    """Frames, replies and unsequenced requests over one transport.

    Parameters
    ----------
    transport : Transport
    url : str
        The device's name in messages.
    retries : int
        Further attempts of one request after the first before :class:`DeviceTimeout`.
    timeout : float or None
        Reply timeout in seconds (None: from the transport, :class:`FlowControl`).

    Members
    -------
    stats : dict
        The link counters (see :class:`~hbfp_hw.fpga.host.driver.Device`).
    flow : FlowControl
    state : _LinkState
        The device's next sequence number, shared by the sessions of one transport.
    """

    def __init__(self, transport, url, *, retries=16, timeout=None):
        self.transport = transport
        self.url = url
        self.retries = int(retries)
        self.flow = FlowControl(transport, timeout)
        self.state = _link_state(transport)
        self.parser = FrameParser()
        self._useq = int(time.monotonic_ns()) & 0xFF        # seq of unsequenced requests
        self.stats = dict.fromkeys(("frames", "retries", "nacks", "timeouts", "lost",
                                    "crc_errors", "out_of_order", "recoveries", "splits",
                                    "resent", "stale", "tx_bytes", "rx_bytes", "tx_payload",
                                    "rx_payload"), 0)

    def next_useq(self):
        """Return the sequence number of the next unsequenced request."""
        self._useq = (self._useq + 1) & 0xFF
        return self._useq

    def send(self, cmd, seq, payload):
        """Send one frame; return its length in bytes."""
        frame = protocol.encode_frame(int(cmd), seq, payload)
        self.stats["tx_bytes"] += len(frame)
        self.stats["tx_payload"] += len(payload)
        self.transport.write(frame)
        return len(frame)

    def read_frames(self, timeout):
        """Return the frames that arrive within ``timeout`` and whether a damaged one did."""
        raw = self.transport.read(timeout)
        if not raw:
            return [], False
        self.stats["rx_bytes"] += len(raw)
        errors = self.parser.errors
        frames = self.parser.feed(raw)
        self.stats["crc_errors"] += self.parser.errors - errors
        # Damaged: a frame failed its CRC, or bytes arrived that hold no sync marker.
        damaged = self.parser.errors != errors or (not frames and not self.parser._buf)
        return frames, damaged

    def resync(self):
        """Wait for the device's idle timeout (it drops any partial frame) and forget what
        arrived meanwhile."""
        self.stats["rx_bytes"] += self.transport.drain(self.flow.settle_time())
        self.parser.reset()

    def query(self, cmd, reply_len):
        """Send an unsequenced request (INFO, STATUS, RESET) and return its reply body.

        Only one request is in flight; it is retried after a NACK, a damaged reply or a
        timeout, up to ``retries`` more times.
        """
        attempts = 0
        reason = None
        while True:
            if attempts > self.retries:
                raise DeviceTimeout(
                    f"{self.url}: no valid reply to {cmd.name} after {attempts} attempts "
                    f"(last problem: {reason}); check the cable, the baud rate and that the "
                    f"board runs the hbfp-hw bitstream, then open the device again")
            seq = self.next_useq()
            size = self.send(cmd, seq, b"")
            deadline = time.monotonic() + self.flow.reply_timeout(size + 64, attempts)
            attempts += 1
            reason = "timeout"
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.stats["timeouts"] += 1
                    self.stats["retries"] += 1
                    self.resync()
                    break
                frames, damaged = self.read_frames(left)
                if damaged:
                    deadline = min(deadline, time.monotonic() + self.flow.grace)
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

    def status(self):
        """Ask STATUS; return its counters as a dict and remember the next sequence number."""
        body = self.query(Cmd.STATUS, protocol.layout_bytes(protocol.STATUS_LAYOUT))
        status = protocol.from_bytes(protocol.STATUS_LAYOUT, body)
        self.state.next_seq = status["next_seq"]
        return status

    def sync(self):
        """Make sure the driver knows the device's next sequence number."""
        if self.state.next_seq is None:
            self.status()


class Stream:
    """Run one program through a session: stream its frames, and recover from errors, until
    every tile of C has arrived (:meth:`run`).

    Frames are sent ahead of their replies, up to the window of the session's
    :class:`FlowControl`. The device executes sequenced frames in order, so an OK reply
    acknowledges every frame before it too, and writes and COMPUTEs without results ask for no
    reply (QUIET), except one write in every quarter window.

    Errors: an OUT_OF_ORDER reply says which sequence number the device expects, so the frames
    before it were executed (a result among them whose reply was lost is read again). A single
    frame in flight that failed (NACK, damaged or missing reply) is sent again with the same
    sequence number: the device executes it if it has not yet, and refuses it as OUT_OF_ORDER
    if it has. With several frames in flight the stream stops and asks STATUS for the device's
    next sequence number instead, then sends again, with the same numbers, the frames that were
    not executed.

    Parameters
    ----------
    session : Session
    info : Info
        The device's INFO.
    queue : _Program
        The operations still to send.
    tiles : list of _Tile
        The tiles of C, which the program fills in as it is taken.
    """

    def __init__(self, session, info, queue, tiles):
        self.session = session
        self.flow = session.flow
        self.stats = session.stats
        self.info = info
        self.queue = queue
        self.tiles = tiles
        self.c_ring = _CRing(info.c_depth)
        self.inflight = deque()             # _Frame, in sequence order
        self.inflight_bytes = 0
        self.quiet_run = 0                  # bytes of QUIET frames since the last replied one
        self.recovery = None                # (STATUS seq, deadline) while asking STATUS
        self.failures = 0                   # consecutive timeouts
        self.deadline = None
        self.reason = None                  # the last problem, for the messages
        self.damaged = False                # the deadline is a grace period after a bad reply
        t = session.transport
        self.rate = t.cycle_rate or info.clock_hz
        self.model = _rx_model(t, info)     # None: the device's input loses no bytes

    @property
    def url(self):
        return self.session.url

    def run(self):
        """Send the program and receive its results; raise :class:`DeviceTimeout` after
        ``retries`` failed attempts of one request."""
        self.session.sync()
        while True:
            self._send_ready()
            if not (self.queue or self.inflight or self.recovery):
                if all(t.done for t in self.tiles):
                    return
                raise ProtocolError(f"{self.url}: the driver lost track of a result; report "
                                    f"this as a bug")
            if not (self.inflight or self.recovery):
                continue                    # a re-read was queued: send it
            self._wait()

    # -- sending ------------------------------------------------------------------------------

    def _send_ready(self):
        """Send frames while the window, the device's input and the room in C allow."""
        while self.recovery is None and self.queue and self.flow.can_send(
                len(self.inflight), self.inflight_bytes):
            room = self._fifo_free()
            op = self._next_op(room)
            if op is None or not self._send_op(op, room):
                break

    def _send_op(self, op, room):
        """Send the frame of ``op`` (taken from the queue); return False (and put it back) if
        it does not fit the ``room`` of the device's input."""
        quiet = (op.cmd in (Cmd.WRITE_A, Cmd.WRITE_B) and self.flow.window_frames > 1
                 and self.quiet_run + len(op.data) + 18 <= self.flow.quiet_budget)
        payload, reply_len = self._payload(op, quiet)
        if room is not None and len(payload) + protocol.FRAME_OVERHEAD > room:
            self.queue.appendleft(op)       # a READ_C or COMPUTE that does not fit
            return False
        cycles, seconds = self._cost(op, payload)
        if quiet and self.model is not None and self.model.holds(
                self.inflight, len(payload) + protocol.FRAME_OVERHEAD, cycles):
            # Only a reply could say when the device has taken this frame: ask for one.
            payload, reply_len = self._payload(op, False)
        self.quiet_run = self.quiet_run + len(payload) + 10 if reply_len is None else 0
        state = self.session.state
        seq = state.next_seq
        nbytes = self.session.send(op.cmd, seq, payload)
        frame = _Frame(seq, op, nbytes, reply_len, len(payload), seconds)
        if self.model is not None:
            self.model.frame(self.inflight, frame, cycles)
        self.inflight.append(frame)
        self.inflight_bytes += nbytes
        state.next_seq = (seq + 1) & 0xFF
        self.deadline = None
        return True

    def _cost(self, op, payload):
        """Return ``(cycles, seconds)``: a bound on the device cycles of ``op``, and the device
        time that the reply timeout allows for it (COMPUTE only)."""
        info = self.info
        if op.cmd is Cmd.COMPUTE:
            groups = protocol.column_groups(op.tile.cn, info.lanes)
            kb = op.args["kb"] + 1
            cycles = op.tile.rn * (-(-groups // info.channels) * info.channels) * kb + 1000
            if info.channels == 1:
                # A systolic array (docs/hardware.md): each pass of up to 64 k-blocks of a
                # column group waits at most its B load, and each chunk of k-blocks a drain.
                cycles += kb * (groups + 1) * 1024
            return cycles, 2.0 * cycles / self.rate
        # A write takes a cycle per byte and a few per block; a read, a few.
        return 64 + len(payload) + 16 * op.count() * (op.cmd is not Cmd.READ_C), 0.0

    def _next_op(self, room=None):
        """Take the operation of the next frame from the head of the queue; None if it waits.

        Writes and reads longer than the frame limit are split, and the rest stays at the
        head of the queue. ``room`` (bytes, None: no limit) is what the device's receive FIFO
        can take now: a write is cut to fit it (but not below two blocks), and nothing larger
        is taken. A COMPUTE that starts a tile first takes a region of C (and waits
        if none is free); the last COMPUTE of a tile returns the result (READBACK) if that
        reply fits the limit, otherwise READ_C requests for it follow.
        """
        queue = self.queue
        op = queue[0]
        if op.cmd in (Cmd.WRITE_A, Cmd.WRITE_B):
            per = max(1, (self.flow.limit() - protocol.ARGS_BYTES) // op.unit)
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
            per = max(1, min(protocol.MAX_READ_WORDS, (self.flow.reply_limit() - 1) // 4))
            return op.head(per) if op.count() > per else queue.popleft()
        tile = op.tile
        if tile.base is None and not self.c_ring.place(tile):
            if not self.c_ring.live:
                raise ProtocolError(f"a tile of {tile.words} C words does not fit "
                                    f"{self.info.c_depth}; report this as a bug")
            return None
        queue.popleft()
        if op.last and op.readback is None:
            op.readback = 5 + 4 * tile.rn * tile.cn <= self.flow.reply_limit()
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
        # computes, and the reply says when the FIFO is being read again (see _RxModel).
        replied = readback or self.session.transport.rx_fifo_bytes is not None
        if readback:
            flags |= protocol.Flag.READBACK
        elif not replied:
            flags |= protocol.Flag.QUIET
        return protocol.to_bytes(protocol.COMPUTE_ARGS_LAYOUT, {
            "m": tile.rn, "n": tile.cn, "k": op.args["k"], "flags": int(flags),
            "a_base": op.args["a_base"], "b_base": op.args["b_base"],
            "c_base": tile.base}), (4 + 4 * tile.rn * tile.cn * readback if replied else None)

    # -- the frames in flight -----------------------------------------------------------------

    def _fifo_free(self):
        """Bytes the device can take now (None: any number)."""
        if self.model is None:
            return None
        return self.model.free(self.inflight, self.session.parser.partial_header())

    def _retire(self, count):
        """The first ``count`` frames in flight have ended: a reply says so."""
        if self.model is not None:
            self.model.retire(self.inflight, count)

    def _pending(self):
        """Bytes of the frames in flight and their expected replies, and device time."""
        return (self.inflight_bytes + sum(f.reply_len or 0 for f in self.inflight) + 64,
                sum(f.seconds for f in self.inflight))

    def _shrink(self, f):
        if self.flow.shrink(f):
            self.stats["splits"] += 1

    def _failed(self, why):
        """An error: from now on one frame at a time, growing again after good frames."""
        self.reason = why
        self.flow.failed()

    def _lost_result(self, f):
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
        if again.attempts > self.session.retries:
            raise DeviceTimeout(
                f"{self.url}: the result of {op.cmd.name} was lost {again.attempts} times "
                f"(last problem: {self.reason}); check the cable, the baud rate and that the "
                f"board runs the hbfp-hw bitstream, then open the device again")
        self._shrink(f)
        self.queue.appendleft(again)

    def _executed(self, f, body):
        """``f`` was executed; ``body`` is its reply, or None if the reply was lost."""
        self.inflight_bytes -= f.nbytes
        self.stats["frames"] += 1
        self.flow.succeeded()
        op = f.op
        if body is None:
            if f.reply_len is not None:
                self.stats["lost"] += 1
                self._lost_result(f)
            return
        if op.cmd is Cmd.READ_C:
            op.tile.put(op.args["first"], protocol.c_from_payload(body))
        elif op.cmd is Cmd.COMPUTE and op.readback and op.last:
            op.tile.put(0, protocol.c_from_payload(body[4:]))

    def _executed_before(self, seq):
        """The device expects ``seq``: every frame in flight before it was executed."""
        inflight = self.inflight
        done = (seq - inflight[0].seq) & 0xFF if inflight else 0
        if done > len(inflight):
            self.session.state.next_seq = None
            raise ProtocolError(
                f"{self.url} expects sequence number {seq}, which the driver has not sent "
                f"yet: another program reset or used the device during this GEMM; run it "
                f"again")
        self._retire(done)
        for _ in range(done):
            self._executed(inflight.popleft(), None)

    # -- recovery -----------------------------------------------------------------------------

    def _send_again(self):
        """Send the frames in flight again (none of them was executed), with the same
        sequence numbers; the first one counts a failed attempt."""
        inflight = self.inflight
        if not inflight:
            return
        first = inflight[0]
        first.op.attempts += 1
        first.op.resent = True
        if first.op.attempts > self.session.retries:
            raise DeviceTimeout(
                f"{self.url}: {first.op.cmd.name} failed {first.op.attempts} times (last "
                f"problem: {self.reason}); check the cable, the baud rate and that the board "
                f"runs the hbfp-hw bitstream, then open the device again")
        self._shrink(first)
        self.stats["resent"] += len(inflight)
        self.queue.extendleft(reversed([f.op for f in inflight]))
        self.session.state.next_seq = first.seq
        inflight.clear()
        self.inflight_bytes = 0
        if self.model is not None:
            self.model.restart()

    def _start_recovery(self, settle):
        """After an error: one frame in flight is simply sent again; with several, ask
        STATUS (it comes after all of them) before sending anything else."""
        self.deadline = None
        if settle:
            self.session.resync()
        if len(self.inflight) <= 1:
            self._send_again()
            return
        self.stats["recoveries"] += 1
        useq = self.session.next_useq()
        size = self.session.send(Cmd.STATUS, useq, b"")
        if self.model is not None:
            self.model.sent += size
        nbytes, seconds = self._pending()
        self.recovery = (useq, time.monotonic() + self.flow.reply_timeout(
            nbytes + size, self.failures, seconds))

    # -- receiving ----------------------------------------------------------------------------

    def _wait(self):
        """Wait for replies until the deadline (or the STATUS of a recovery) and take them."""
        now = time.monotonic()
        if self.recovery is not None:
            until = self.recovery[1]
        else:
            if self.deadline is None:
                nbytes, seconds = self._pending()
                self.deadline = now + self.flow.reply_timeout(nbytes, self.failures, seconds)
            until = self.deadline
        left = until - now
        if left <= 0:
            self._timed_out()
            return
        frames, bad = self.session.read_frames(left)
        if bad and self.recovery is None:
            # A damaged reply: unless a valid one follows at once, act as on a timeout
            # (the request arrived, so the device need not time out a partial frame).
            self.deadline = min(self.deadline or until, time.monotonic() + self.flow.grace)
            self.damaged = True
        for f in frames:
            self._receive(f)

    def _timed_out(self):
        """No valid reply in time (or only a damaged one): recover, or give up."""
        self.stats["retries"] += 1
        if not self.damaged:
            self.stats["timeouts"] += 1
        self.failures += 1
        if self.failures > self.session.retries + 1:
            raise DeviceTimeout(
                f"{self.url}: no valid reply after {self.failures} attempts (last problem: "
                f"{self.reason}); check the cable, the baud rate and that the board runs "
                f"the hbfp-hw bitstream, then open the device again")
        self._failed("damaged reply" if self.damaged else "timeout")
        self.recovery = None
        self._start_recovery(settle=not self.damaged)
        self.damaged = False

    def _receive(self, f):
        """Take one reply frame ``f``."""
        if f.cmd == NACK:
            self.stats["nacks"] += 1
            if self.recovery is None and self.inflight:
                self._failed(f"NACK {_status_name(f.payload)}")
                self._start_recovery(settle=False)
            return
        if f.cmd == Cmd.STATUS | REPLY_FLAG:
            if self.recovery is not None and f.seq == self.recovery[0] and len(f.payload) == \
                    1 + protocol.layout_bytes(protocol.STATUS_LAYOUT):
                st = protocol.from_bytes(protocol.STATUS_LAYOUT, f.payload[1:])
                self.recovery = None
                self.deadline = None
                self._executed_before(st["next_seq"])
                self._send_again()
            return
        entry = next((x for x in self.inflight if x.seq == f.seq), None)
        if entry is None or f.cmd != int(entry.op.cmd) | REPLY_FLAG:
            self.stats["stale"] += 1
            return
        status = f.payload[0] if f.payload else None
        if status == Status.OUT_OF_ORDER and len(f.payload) == 2:
            # The device expects f.payload[1]: the frames before it were executed.
            self.stats["out_of_order"] += 1
            self._executed_before(f.payload[1])
            if self.recovery is None and self.inflight:
                self._failed("a frame was lost")
                self._start_recovery(settle=False)
            self.deadline = None
            return
        if status != Status.OK:
            self.session.state.next_seq = None
            raise ProtocolError(
                f"{self.url} refused {entry.op.cmd.name} {entry.op.args} with "
                f"{_status_name(f.payload)}: the driver and the device disagree; "
                f"report this as a bug together with `dev.info()`")
        body = f.payload[1:]
        if entry.reply_len is None or len(body) != entry.reply_len:
            self.stats["stale"] += 1
            return
        self._executed_before(entry.seq)
        self._retire(1)
        self.inflight.popleft()
        self.stats["rx_payload"] += len(f.payload)
        self._executed(entry, body)
        self.deadline = None
        self.damaged = False
        self.failures = 0

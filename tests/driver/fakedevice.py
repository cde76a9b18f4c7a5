"""A protocol-level stand-in for the device, in Python, for the session's unit tests.

:class:`FakeDevice` is a :class:`Transport` that answers the driver's frames at once, with the
sequencing rules of docs/protocol.md 2.2 (execute ``next_seq`` only, refuse others with
OUT_OF_ORDER, QUIET, READBACK, STATUS). It computes no GEMM: a COMPUTE stores, in the C
region it names, words that depend on its operand addresses and the element, so a result
that arrives in the wrong place or not at all shows. Faults are scripted by frame index:
requests that never arrive, replies that are lost, and requests answered with a NACK.
"""

import time

import numpy as np

from hbfp_hw.fpga import protocol
from hbfp_hw.fpga.host.transport import Transport
from hbfp_hw.fpga.protocol import NACK, REPLY_FLAG, Cmd, Flag, FrameParser, Status


def _args(layout, payload):
    return protocol.from_bytes(layout, payload[:protocol.layout_bytes(layout)])


class FakeDevice(Transport):
    """Answer requests in Python; lose the requests and replies numbered in ``drop_requests``,
    ``drop_replies`` (counting every request frame / every reply from 0), and NACK the
    requests in ``nack``."""

    name = "fake"
    latency = 0.0

    def __init__(self, *, drop_requests=(), drop_replies=(), nack=()):
        self.drop_requests = set(drop_requests)
        self.drop_replies = set(drop_replies)
        self.nack = set(nack)
        self.next_seq = 0
        self.executed = []          # (cmd, seq) of the sequenced frames executed, in order
        self.regions = {}           # C base -> [rows, cols] uint32
        self.replies = []           # (cmd, payload) of every reply, lost ones included
        self._parser = FrameParser()
        self._out = bytearray()
        self._requests = 0

    # -- the transport ------------------------------------------------------------------------

    def write(self, data):
        for f in self._parser.feed(bytes(data)):
            index = self._requests
            self._requests += 1
            if index in self.drop_requests:
                continue
            if index in self.nack:
                self._reply(NACK, f.seq, bytes([Status.BAD_CRC]))
                continue
            self._frame(f)

    def read(self, timeout):
        if not self._out:
            time.sleep(min(timeout, 0.0005))
            return b""
        out, self._out = bytes(self._out), bytearray()
        return out

    def drain(self, duration):
        return len(self.read(0))

    def close(self):
        """Nothing to release: the device lives in this object."""

    # -- the device ---------------------------------------------------------------------------

    def _reply(self, cmd, seq, payload):
        index = len(self.replies)
        self.replies.append((cmd, payload))
        if index not in self.drop_replies:
            self._out += protocol.encode_frame(cmd, seq, payload)

    def _ok(self, f, body=b""):
        self._reply(f.cmd | REPLY_FLAG, f.seq, bytes([Status.OK]) + body)

    def _frame(self, f):
        cmd = Cmd(f.cmd)
        if cmd is Cmd.STATUS:
            self._ok(f, protocol.to_bytes(protocol.STATUS_LAYOUT, {
                "last_error": 0, "c_valid": 0, "frames": 0, "rx_errors": 0, "c_rows": 0,
                "c_cols": 0, "next_seq": self.next_seq}))
            return
        if f.seq != self.next_seq:
            self._reply(f.cmd | REPLY_FLAG, f.seq, bytes([Status.OUT_OF_ORDER, self.next_seq]))
            return
        self.next_seq = (self.next_seq + 1) & 0xFF
        self.executed.append((cmd, f.seq))
        if cmd in (Cmd.WRITE_A, Cmd.WRITE_B):
            if not _args(protocol.WRITE_ARGS_LAYOUT, f.payload)["flags"] & Flag.QUIET:
                self._ok(f)
        elif cmd is Cmd.COMPUTE:
            self._compute(f, _args(protocol.COMPUTE_ARGS_LAYOUT, f.payload))
        elif cmd is Cmd.READ_C:
            a = _args(protocol.READ_ARGS_LAYOUT, f.payload)
            flat = self.regions[a["base"]].reshape(-1)
            first = a["row"] * a["cols"] + a["col"]
            self._ok(f, flat[first:first + a["count"]].astype("<u4").tobytes())

    def _compute(self, f, a):
        m, n = a["m"], a["n"]
        rows, cols = np.meshgrid(np.arange(m), np.arange(n), indexing="ij")
        words = (a["a_base"] * 7919 + a["b_base"] * 104729 + rows * 131 + cols
                 + 1).astype(np.uint32)
        region = self.regions.get(a["c_base"])
        if a["flags"] & Flag.ACCUMULATE and region is not None and region.shape == (m, n):
            words = region + words
        self.regions[a["c_base"]] = words
        if a["flags"] & Flag.QUIET:
            return
        body = protocol.to_bytes(protocol.COMPUTE_REPLY_LAYOUT, {"cycles": 1})
        if a["flags"] & Flag.READBACK:
            body += words.astype("<u4").tobytes()
        self._ok(f, body)


def small_info(**changes):
    """Return the INFO of the ``"sim"`` preset with ``changes`` (no gateware is built)."""
    from hbfp_hw.fpga.config import SystemConfig
    return SystemConfig.preset("sim").replace(**changes).info()

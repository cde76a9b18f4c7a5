"""Gateware of the host link framing: frame decoder, reply encoder and a streaming CRC-32.

The frame format and every constant come from :mod:`hbfp_hw.fpga.protocol`;
``docs/protocol.md`` is the specification.

- :class:`FrameDecoder` hunts for the sync marker, parses the header, checks the length against
  the payload capacity *before* buffering anything, stores the payload in a RAM, captures the
  first :data:`~hbfp_hw.fpga.protocol.ARGS_LATCH_BYTES` payload bytes as an argument register,
  and
  checks the CRC. It then presents one *event* (a good frame, or an error for a NACK) and holds
  ``i_stream.ready`` low until the event is taken, so the payload RAM is stable while the
  command executes. An inter-byte idle timeout ends a truncated frame, so no input can wedge it.
- :class:`FrameEncoder` turns a reply header plus a stream of payload bytes into a frame.
"""

from amaranth.hdl import Cat, Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..protocol.frames import ARGS_LATCH_BYTES, HEADER_LAYOUT, SYNC, Status, crc32_byte

__all__ = ["crc32_next", "FrameDecoder", "FrameEncoder", "frame_event_layout"]


def _crc_matrix():
    """For each bit of the next CRC register, the register and data bits it is the XOR of.

    One byte step of the reflected LFSR is linear over GF(2), so it is found by stepping the
    Python model (:func:`protocol.crc32_byte`) from every unit vector.
    """
    rows = [([], []) for _ in range(32)]
    for i in range(32):
        out = crc32_byte(1 << i, 0)
        for j in range(32):
            if out >> j & 1:
                rows[j][0].append(i)
    for i in range(8):
        out = crc32_byte(0, 1 << i)
        for j in range(32):
            if out >> j & 1:
                rows[j][1].append(i)
    return rows


_CRC_MATRIX = _crc_matrix()


def crc32_next(crc, byte):
    """Return the expression of the CRC-32 register ``crc`` advanced by ``byte``.

    ``crc`` holds the non-inverted register (start value 0xFFFFFFFF); the result equals
    :func:`hbfp_hw.fpga.protocol.crc32_byte` (eight reflected LFSR steps with polynomial
    0xEDB88320), written as 32 XOR trees.
    """
    bits = []
    for crc_bits, data_bits in _CRC_MATRIX:
        terms = [crc[i] for i in crc_bits] + [byte[i] for i in data_bits]
        bits.append(Cat(*terms).xor())
    return Cat(*bits)


def frame_event_layout():
    """Layout of a :class:`FrameDecoder` event: a header, the argument bytes and a status.

    ``status`` is :data:`Status.OK` for a frame with a good CRC, otherwise the reason for a
    NACK (``BAD_CRC``, ``TIMEOUT``, ``TOO_LONG``); then ``seq`` is the received one if the
    header got that far (else 0) and the other fields are meaningless.
    """
    return data.StructLayout({
        "status": unsigned(8),
        "cmd": unsigned(8),
        "seq": unsigned(8),
        "length": unsigned(16),
        "args": unsigned(8 * ARGS_LATCH_BYTES),
    })


def _check_int(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, not {value!r}")
    return value


class FrameDecoder(wiring.Component):
    """Parse request frames from a byte stream.

    Parameters
    ----------
    max_payload : int
        Payload capacity in bytes (``ARGS_LATCH_BYTES..65535``); a header with a longer ``length``
        is rejected with ``TOO_LONG`` before any payload byte is stored.
    timeout_cycles : int
        Inter-byte idle timeout inside a frame, in clock cycles (at least 1). A frame that
        has seen its full sync marker and then waits longer than this for its next byte is
        dropped with a ``TIMEOUT`` event.

    Members
    -------
    i_stream : ``In(stream.Signature(8))``
        Received bytes. ``ready`` is 0 while an event waits on ``o_event``.
    o_event : ``Out(stream.Signature(frame_event_layout()))``
        One event per frame (good or bad). Taking it (``ready``) resumes reception.
    rd_addr : ``In(range(max_payload))``
    rd_data : ``Out(8)``
        Payload RAM read port, one cycle of latency (``rd_data`` is the byte at the
        ``rd_addr`` of the previous cycle). Byte ``i`` of the payload is at address ``i``.

    Raises
    ------
    TypeError, ValueError
        On invalid parameters.
    """

    def __init__(self, *, max_payload, timeout_cycles):
        self._max_payload = _check_int("max_payload", max_payload, ARGS_LATCH_BYTES, 0xFFFF)
        self._timeout = _check_int("timeout_cycles", timeout_cycles, 1, 2**32 - 1)
        super().__init__({
            "i_stream": In(stream.Signature(8)),
            "o_event": Out(stream.Signature(frame_event_layout())),
            "rd_addr": In(range(self._max_payload)),
            "rd_data": Out(8),
        })

    @property
    def max_payload(self):
        return self._max_payload

    @property
    def timeout_cycles(self):
        return self._timeout

    def elaborate(self, platform):
        m = Module()
        m.submodules.ram = ram = Memory(shape=unsigned(8), depth=self._max_payload, init=[])
        wr = ram.write_port()
        rd = ram.read_port()
        m.d.comb += [rd.addr.eq(self.rd_addr), self.rd_data.eq(rd.data)]

        ev = self.o_event.payload
        byte = self.i_stream.payload
        take = Signal()
        m.d.comb += take.eq(self.i_stream.valid & self.i_stream.ready)

        crc = Signal(32, init=0xFFFFFFFF)
        crc_next = Signal(32)
        m.d.comb += crc_next.eq(crc32_next(crc, byte))
        header = Signal(HEADER_LAYOUT)
        index = Signal(16)               # byte index within the header / payload / CRC
        rx_crc = Signal(32)
        idle = Signal(range(self._timeout + 1))

        m.d.comb += [wr.addr.eq(index), wr.data.eq(byte)]

        def emit(status):
            m.d.sync += ev.status.eq(status)
            m.next = "EVENT"

        with m.FSM(name="rx"):
            with m.State("HUNT"):
                m.d.comb += self.i_stream.ready.eq(1)
                m.d.sync += [crc.eq(0xFFFFFFFF), index.eq(0), idle.eq(0)]
                with m.If(take & (byte == SYNC[0])):
                    m.next = "SYNC1"

            with m.State("SYNC1"):
                m.d.comb += self.i_stream.ready.eq(1)
                with m.If(take):
                    m.d.sync += idle.eq(0)
                    with m.If(byte == SYNC[1]):
                        m.next = "HEADER"
                    with m.Elif(byte != SYNC[0]):
                        m.next = "HUNT"
                with m.Elif(idle == self._timeout):
                    m.next = "HUNT"            # a lone first sync byte: nothing to NACK
                with m.Else():
                    m.d.sync += idle.eq(idle + 1)

            with m.State("HEADER"):
                m.d.comb += self.i_stream.ready.eq(1)
                # The seq and the arguments start from 0, cleared while the first header
                # byte is awaited: their enables come from registers. (Cleared as the sync
                # marker's byte was compared, the received byte reached the enables of all
                # the argument bits: the 4 x 4 array system's critical path, seed 2.)
                with m.If(index == 0):
                    m.d.sync += [ev.seq.eq(0), ev.args.eq(0)]
                with m.If(take):
                    m.d.sync += [idle.eq(0), crc.eq(crc_next), index.eq(index + 1)]
                    m.d.sync += header.as_value().word_select(index[:2], 8).eq(byte)
                    with m.If(index == 1):
                        m.d.sync += ev.seq.eq(byte)
                    with m.If(index == 3):
                        length = Cat(header.as_value()[16:24], byte)
                        m.d.sync += index.eq(0)
                        with m.If(length > self._max_payload):
                            emit(Status.TOO_LONG)
                        with m.Elif(length == 0):
                            m.next = "CRC"
                        with m.Else():
                            m.next = "PAYLOAD"
                with m.Elif(idle == self._timeout):
                    emit(Status.TIMEOUT)
                with m.Else():
                    m.d.sync += idle.eq(idle + 1)

            with m.State("PAYLOAD"):
                m.d.comb += self.i_stream.ready.eq(1)
                with m.If(take):
                    m.d.comb += wr.en.eq(1)
                    m.d.sync += [idle.eq(0), crc.eq(crc_next), index.eq(index + 1)]
                    with m.If(index < ARGS_LATCH_BYTES):
                        arg_bits = (ARGS_LATCH_BYTES - 1).bit_length()
                        m.d.sync += ev.args.word_select(index[:arg_bits], 8).eq(byte)
                    with m.If(index == header.length - 1):
                        m.d.sync += index.eq(0)
                        m.next = "CRC"
                with m.Elif(idle == self._timeout):
                    emit(Status.TIMEOUT)
                with m.Else():
                    m.d.sync += idle.eq(idle + 1)

            with m.State("CRC"):
                m.d.comb += self.i_stream.ready.eq(1)
                with m.If(take):
                    m.d.sync += [idle.eq(0), index.eq(index + 1),
                                 rx_crc.word_select(index[:2], 8).eq(byte)]
                    with m.If(index == 3):
                        received = Cat(rx_crc[:24], byte)
                        with m.If(received == (crc ^ 0xFFFFFFFF)):
                            emit(Status.OK)
                        with m.Else():
                            emit(Status.BAD_CRC)
                with m.Elif(idle == self._timeout):
                    emit(Status.TIMEOUT)
                with m.Else():
                    m.d.sync += idle.eq(idle + 1)

            with m.State("EVENT"):
                m.d.comb += self.o_event.valid.eq(1)
                with m.If(self.o_event.ready):
                    m.next = "HUNT"

        m.d.comb += [ev.cmd.eq(header.cmd), ev.length.eq(header.length)]
        return m


class FrameEncoder(wiring.Component):
    """Frame reply payloads: sync marker, header, payload bytes, CRC-32.

    Members
    -------
    i_header : ``In(stream.Signature(HEADER_LAYOUT))``
        ``{cmd, seq, length}`` of the next frame; accepted when the encoder is idle.
    i_stream : ``In(stream.Signature(8))``
        Exactly ``length`` payload bytes of the accepted header.
    o_stream : ``Out(stream.Signature(8))``
        Frame bytes.
    busy : ``Out(1)``
        A frame is being sent.
    """

    i_header: In(stream.Signature(HEADER_LAYOUT))
    i_stream: In(stream.Signature(8))
    o_stream: Out(stream.Signature(8))
    busy: Out(1)

    def elaborate(self, platform):
        m = Module()
        header = Signal(HEADER_LAYOUT)
        crc = Signal(32, init=0xFFFFFFFF)
        index = Signal(16)
        out = self.o_stream
        sent = Signal()
        m.d.comb += sent.eq(out.valid & out.ready)
        # One CRC update for the header and the payload bytes: the frame byte being sent.
        crc_next = Signal(32)
        m.d.comb += crc_next.eq(crc32_next(crc, out.payload))

        with m.FSM(name="tx"):
            with m.State("IDLE"):
                m.d.comb += self.i_header.ready.eq(1)
                m.d.sync += [crc.eq(0xFFFFFFFF), index.eq(0)]
                with m.If(self.i_header.valid):
                    m.d.sync += header.eq(self.i_header.payload)
                    m.next = "SYNC0"
            with m.State("SYNC0"):
                m.d.comb += [out.valid.eq(1), out.payload.eq(SYNC[0])]
                with m.If(sent):
                    m.next = "SYNC1"
            with m.State("SYNC1"):
                m.d.comb += [out.valid.eq(1), out.payload.eq(SYNC[1])]
                with m.If(sent):
                    m.next = "HEADER"
            with m.State("HEADER"):
                byte = header.as_value().word_select(index[:2], 8)
                m.d.comb += [out.valid.eq(1), out.payload.eq(byte)]
                with m.If(sent):
                    m.d.sync += [crc.eq(crc_next), index.eq(index + 1)]
                    with m.If(index == 3):
                        m.d.sync += index.eq(0)
                        with m.If(header.length == 0):
                            m.next = "CRC"
                        with m.Else():
                            m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                m.d.comb += [
                    out.valid.eq(self.i_stream.valid),
                    out.payload.eq(self.i_stream.payload),
                    self.i_stream.ready.eq(out.ready),
                ]
                with m.If(sent):
                    m.d.sync += [crc.eq(crc_next), index.eq(index + 1)]
                    with m.If(index == header.length - 1):
                        m.d.sync += index.eq(0)
                        m.next = "CRC"
            with m.State("CRC"):
                m.d.comb += [out.valid.eq(1),
                             out.payload.eq((crc ^ 0xFFFFFFFF).word_select(index[:2], 8))]
                with m.If(sent):
                    m.d.sync += index.eq(index + 1)
                    with m.If(index == 3):
                        m.next = "IDLE"
        m.d.comb += self.busy.eq(~self.i_header.ready)
        return m

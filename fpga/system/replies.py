"""The replies of GemmSystem: their fixed part (:class:`ReplyFormatter`) and the transmit
buffer behind the encoder (:class:`TransmitBuffer`)."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFO, SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from hbfp_hw.rtl_gen.common import platform_family

from ..protocol.frames import (
    COMPUTE_REPLY_LAYOUT,
    INFO_LAYOUT,
    STATUS_LAYOUT,
    Status,
    info_to_bytes,
)

__all__ = ["ReplyKind", "ReplyFormatter", "TransmitBuffer"]


class ReplyKind:
    """What follows the status byte of an OK reply (:class:`ReplyFormatter` ``kind``)."""
    STATUS_ONLY = 0
    INFO = 1
    STATUS = 2
    COMPUTE = 3


class ReplyFormatter(wiring.Component):
    """The fixed part of a reply (the status byte and what its kind adds), a byte at a time.

    An OUT_OF_ORDER reply adds the sequence number the device expects; any other error
    reply is its status byte; an OK reply adds INFO, STATUS or COMPUTE's cycle count
    (``kind``). The C words of a READ_C or READBACK reply follow it (:class:`CReadout`).

    Parameters
    ----------
    info : Info
        What INFO replies (a constant).
    cap_bits : int
        Width of ``c_rows`` and ``c_cols``.

    Members
    -------
    status : ``In(8)``
    kind : ``In(2)``
        The reply's status and :class:`ReplyKind`.
    next_seq, last_error, c_valid, frames, rx_errors, c_rows, c_cols : ``In``
        The device state STATUS reports (``c_rows``, ``c_cols`` as 0 without ``c_valid``).
    cycles : ``In(32)``
        The engine's cycle count (a COMPUTE reply).
    length : ``Out(8)``
        Bytes of the fixed part.
    start : ``In(1)``
        The reply starts (the executor enters SEND): latch the fixed part and start at its
        first byte.
    byte : ``Out(8)``
    last : ``Out(1)``
        The byte being sent, and that it is the last of the fixed part.
    next : ``In(1)``
        The byte was taken: go to the next one.
    """

    def __init__(self, info, *, cap_bits):
        self._info = info
        self._kind_len = [1, 1 + INFO_LAYOUT.size // 8, 1 + STATUS_LAYOUT.size // 8,
                          1 + COMPUTE_REPLY_LAYOUT.size // 8]
        super().__init__({
            "status": In(8), "kind": In(2), "next_seq": In(8), "last_error": In(8),
            "c_valid": In(1), "frames": In(16), "rx_errors": In(16), "c_rows": In(cap_bits),
            "c_cols": In(cap_bits), "cycles": In(32), "length": Out(8),
            "start": In(1), "byte": Out(8), "last": Out(1), "next": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        kind_len, status, kind = self._kind_len, self.status, self.kind
        fixed_len = Signal(8)
        out_of_order = Signal()
        m.d.comb += out_of_order.eq(status == Status.OUT_OF_ORDER)
        m.d.comb += fixed_len.eq(Mux(out_of_order, 2,
                                     Mux(status != Status.OK, 1,
                                         Mux(kind == 1, kind_len[1],
                                             Mux(kind == 2, kind_len[2],
                                                 Mux(kind == 3, kind_len[3], 1))))))
        m.d.comb += self.length.eq(fixed_len)
        info_bits = int.from_bytes(info_to_bytes(self._info), "little")
        status_view = Signal(STATUS_LAYOUT)
        m.d.comb += [
            status_view.last_error.eq(self.last_error), status_view.c_valid.eq(self.c_valid),
            status_view.frames.eq(self.frames), status_view.rx_errors.eq(self.rx_errors),
            status_view.c_rows.eq(Mux(self.c_valid, self.c_rows, 0)),
            status_view.c_cols.eq(Mux(self.c_valid, self.c_cols, 0)),
            status_view.next_seq.eq(self.next_seq),
        ]
        fixed = Signal(8 * max(kind_len))
        m.d.comb += fixed.eq(Mux(out_of_order, Cat(status, self.next_seq),
                             Mux(kind == 1, Cat(status, Const(info_bits, INFO_LAYOUT.size)),
                                 Mux(kind == 2, Cat(status, status_view.as_value()),
                                     Mux(kind == 3, Cat(status, self.cycles), status)))))
        # The fixed part is latched when the header goes out and shifted out a byte at a time:
        # a byte multiplexer over all of INFO in front of the encoder's CRC was once the ULX3S
        # critical path (docs/hardware.md). Not on the iCE40, where the 328 flip-flops of
        # the latch would each take a logic cell the UP5K does not have; it reads the fixed
        # part through the multiplexer (its values do not change while a reply is sent).
        latch_fixed = platform_family(platform) != "ice40"
        fixed_sr = Signal(8 * max(kind_len))
        fixed_last = Signal(8)                  # index of its last byte
        tx_index = Signal(8)
        m.d.comb += self.last.eq(tx_index == fixed_last)
        if latch_fixed:
            m.d.comb += self.byte.eq(fixed_sr[:8])
        else:
            m.d.comb += self.byte.eq(fixed.word_select(tx_index, 8))
        with m.If(self.start):
            m.d.sync += [tx_index.eq(0), fixed_last.eq(fixed_len - 1)]
            if latch_fixed:
                m.d.sync += fixed_sr.eq(fixed)
        with m.If(self.next):
            m.d.sync += tx_index.eq(tx_index + 1)
            if latch_fixed:
                m.d.sync += fixed_sr.eq(fixed_sr >> 8)
        return m


class TransmitBuffer(wiring.Component):
    """A byte FIFO of ``depth`` entries whose output comes from flip-flops.

    Its last two entries are a :class:`~amaranth.lib.fifo.SyncFIFO` (``tx_out``), so that
    ``o_stream`` comes from a register and not from the block RAMs' read data of the
    :class:`~amaranth.lib.fifo.SyncFIFOBuffered` in front of it (``tx_buffer``, with
    ``depth > 2``), late without their output register: into the UART that was once the ULX3S
    critical path (docs/history.md has the figures). Together they hold exactly ``depth`` bytes.

    With ``depth > 4``, ``i_stream.ready`` does not come from the FIFOs, which sit by the UART
    pins, across the die from the producer (from the block RAM FIFO's level through the reply
    FSM was the 4 x 4 array system's critical path, 79.1 MHz; two flip-flop entries in front
    of it, which nextpnr placed beside it, did not help: 79.6 MHz). The producer's side keeps
    a credit counter instead, ``depth`` bytes at reset: a byte accepted takes one, a byte that
    leaves on ``o_stream`` gives it back a cycle later (a registered pulse), and ``ready`` is
    ``credits != 0``. Accepted bytes are registered before they are written, so both paths
    across the die run from a register into one small piece of logic. With every credit
    taken the FIFOs hold every accepted byte, so none is lost.

    Parameters
    ----------
    depth : int
        Bytes, at least 1.

    Members
    -------
    i_stream : ``In(stream.Signature(8))``
    o_stream : ``Out(stream.Signature(8))``
    """

    i_stream: In(stream.Signature(8))
    o_stream: Out(stream.Signature(8))

    #: Above this depth ``ready`` comes from the credit counter.
    CREDITS_ABOVE = 4

    def __init__(self, depth):
        if isinstance(depth, bool) or not isinstance(depth, int):
            raise TypeError(f"Depth must be an integer, not {depth!r}")
        if depth < 1:
            raise ValueError(f"Depth must be at least 1, not {depth!r}")
        self._depth = depth
        super().__init__()

    depth = property(lambda self: self._depth)

    def elaborate(self, platform):
        m = Module()
        depth = self._depth
        m.submodules.tx_out = out = SyncFIFO(width=8, depth=min(2, depth))
        m.d.comb += [self.o_stream.payload.eq(out.r_data), self.o_stream.valid.eq(out.r_rdy),
                     out.r_en.eq(self.o_stream.ready)]
        tx = out
        if depth > 2:
            m.submodules.tx_buffer = tx = SyncFIFOBuffered(width=8, depth=depth - 2)
            m.d.comb += [tx.r_en.eq(out.w_rdy), out.w_en.eq(tx.r_rdy),
                         out.w_data.eq(tx.r_data)]
        if depth <= self.CREDITS_ABOVE:
            m.d.comb += [tx.w_data.eq(self.i_stream.payload), tx.w_en.eq(self.i_stream.valid),
                         self.i_stream.ready.eq(tx.w_rdy)]
            return m
        credits = Signal(range(depth + 1), init=depth)
        freed = Signal()                         # a byte left last cycle
        w_valid, w_data = Signal(), Signal(8)    # the accepted byte, written next cycle
        take = self.i_stream.valid & self.i_stream.ready
        m.d.comb += self.i_stream.ready.eq(credits != 0)
        m.d.sync += [freed.eq(self.o_stream.valid & self.o_stream.ready),
                     w_valid.eq(take), w_data.eq(self.i_stream.payload),
                     credits.eq(credits - take + freed)]
        m.d.comb += [tx.w_en.eq(w_valid), tx.w_data.eq(w_data)]
        return m

"""The device top level: :class:`GemmSystem`, the executor that sequences its components.

:class:`GemmSystem` is what boards and the simulated device instantiate. Behind one pair of
8-bit streams it holds a :class:`~hbfp_hw.fpga.system.decoder.FrameDecoder`, the command
executor (an FSM, here), and the components the executor sequences with one-cycle commands:

- :class:`~hbfp_hw.fpga.system.payload.BlockWriter` reads WRITE's tile data from the
  decoder's payload RAM, assembles blocks (quantizing FP32/BF16 tile data as it is written, so
  each element is quantized once) and writes them to A or B;
- :class:`~hbfp_hw.fpga.system.checks.CheckUnit` checks the arguments of WRITE, COMPUTE and
  READ_C against the buffers;
- :class:`~hbfp_hw.fpga.system.array.GemmEngine` (re-exported here) holds the buffers and
  the array of dot-product units, or (``SystemConfig.rows`` > 0)
  :class:`~hbfp_hw.fpga.system.systolic.SystolicEngine` the same buffers and a systolic
  array;
- :class:`~hbfp_hw.fpga.system.readout.CReadout` reads results out of C;
- :class:`~hbfp_hw.fpga.system.replies.ReplyFormatter` builds a reply's fixed part for the
  :class:`~hbfp_hw.fpga.system.decoder.FrameEncoder`, and (``tx_buffer > 0``)
  :class:`~hbfp_hw.fpga.system.replies.TransmitBuffer` holds the replies while they leave at
  the line rate.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hbfp_hw.rtl_gen.block_dot import TERM_BUFFER_LATENCY
from hbfp_hw.rtl_gen.common import check_rtl_format, check_stages
from hbfp_hw.rtl_gen.float_to_minifloat import quantizer_class

from ..config import SystemConfig
from ..protocol import frames as protocol
from ..protocol.frames import (
    ARGS_BYTES,
    ARGS_LATCH_BYTES,
    NACK,
    REPLY_FLAG,
    WRITE_ARGS_LAYOUT,
    Cmd,
    Status,
    Wire,
)
from .array import BlockDotUnit, GemmEngine, block_dot_input_layout, check_int
from .checks import CheckUnit
from .decoder import FrameDecoder, FrameEncoder
from .payload import BlockWriter
from .readout import CReadout
from .replies import ReplyFormatter, ReplyKind, TransmitBuffer
from .skid import SkidBuffer
from .systolic import SystolicEngine

__all__ = ["BlockDotUnit", "block_dot_input_layout", "GemmEngine", "GemmSystem"]


class GemmSystem(wiring.Component):
    """The device: a GEMM engine behind the framed byte protocol of docs/protocol.md.

    Parameters
    ----------
    config : SystemConfig
        The whole configuration (:class:`~hbfp_hw.fpga.config.SystemConfig`: format, input
        format, float wire, lanes, buffer capacities, payload RAM, clock and timeout, pipeline
        depths, transmit buffer, build hash); its presets are the builds that exist. Without
        ``float_wire`` (and always with a stochastic format) the device has no quantizer,
        INFO lists ``Wire.BFP`` only, and a ``Wire.FLOAT`` write gets ``UNSUPPORTED``: the
        host quantizes. The transmit buffer (``tx_buffer`` bytes) sits between the reply
        encoder and ``o_stream``: a reply goes into it at up to one byte per cycle and leaves
        at the rate of ``o_stream``; the device executes the next frames as soon as the whole
        reply is in it, and waits only while it is full. With 0 the device sends each reply
        at the rate of ``o_stream`` before it executes the next frame.

    Members
    -------
    i_stream : ``In(stream.Signature(8))``
        Request bytes from the host. ``ready`` is low while a command executes. Once it has
        executed, its reply is sent (into the transmit buffer, if any) while the decoder
        receives the next frame (``ready`` is high again until that frame is complete); that
        frame executes once the whole reply has been sent (or is in the transmit buffer).
    o_stream : ``Out(stream.Signature(8))``
        Reply bytes to the host.
    busy : ``Out(1)``
        The device has work it can do without the link: a command executes, or a received
        frame waits to be executed, and the device is not waiting to send a reply byte (for
        a LED; the simulated board's harness skips cycles while it is 0 and the link is
        idle).
    error : ``Out(1)``
        The last reply that was not OK since RESET had an error status (STATUS
        ``last_error != 0``), or the engine's ``overrun`` is set (for a LED).

    Raises
    ------
    TypeError
        If ``config`` is not a :class:`~hbfp_hw.fpga.config.SystemConfig`.
    ValueError
        If the configuration does not fit the generators: a block size outside the RTL range,
        a pipeline deeper than its unit allows for the format, or a payload RAM too small for
        one block (``SystemConfig`` itself checks what does not need the generators).
    """

    def __init__(self, config):
        if not isinstance(config, SystemConfig):
            raise TypeError(f"config must be a SystemConfig, not {config!r}")
        self._config = config
        fmt = self._fmt = check_rtl_format(config.fmt, minifloat=True)
        self._input_format = config.input_format
        self._float_wire = config.effective_float_wire
        self._align_stages = check_stages("align_stages", config.align_stages,
                                          quantizer_class(fmt).max_stages_for(fmt))
        self._timeout = config.effective_timeout_cycles
        biggest = max(protocol.block_bytes(fmt, w, self._input_format) for w in self._wires)
        self._max_payload = check_int("max_payload", config.max_payload,
                                       max(ARGS_LATCH_BYTES, ARGS_BYTES + biggest), 0xFFFF)
        self._tx_buffer = config.tx_buffer
        # The engine is built by elaborate(): a component that is created but never elaborated
        # makes Amaranth warn, and hosts build a GemmSystem only to read its `info`.
        if config.rows:
            self._engine_class = SystolicEngine
            self._engine_params = SystolicEngine.check_params(
                fmt, rows=config.rows, lanes=config.lanes, a_blocks=config.a_blocks,
                b_blocks=config.b_blocks, c_words=config.c_words,
                product_stages=config.mac_stages, convert_stages=config.convert_stages,
                adder_stages=config.adder_stages, multipliers=config.multipliers,
                dsp_pes=config.dsp_pes)
        else:
            self._engine_class = GemmEngine
            self._engine_params = GemmEngine.check_params(
                fmt, lanes=config.lanes, channels=config.channels, a_blocks=config.a_blocks,
                b_blocks=config.b_blocks, c_words=config.c_words, mac_stages=config.mac_stages,
                convert_stages=config.convert_stages, adder_stages=config.adder_stages)
        self._info = config.info()
        self._build_hash = self._info.build_hash
        super().__init__({
            "i_stream": In(stream.Signature(8)),
            "o_stream": Out(stream.Signature(8)),
            "busy": Out(1),
            "error": Out(1),
        })

    @property
    def info(self):
        """The :class:`~hbfp_hw.fpga.protocol.Info` this build reports."""
        return self._info

    config = property(lambda self: self._config)
    fmt = property(lambda self: self._fmt)
    float_wire = property(lambda self: self._float_wire)

    @property
    def _wires(self):
        return frozenset({Wire.BFP, Wire.FLOAT} if self._float_wire else {Wire.BFP})

    @property
    def sliced(self):
        """Whether the byte streams have register slices (:class:`SkidBuffer`): with the
        ECP5's transmit buffer (credits, ``tx_buffer > 4``); each holds
        ``SkidBuffer.DEPTH`` bytes."""
        return self._tx_buffer > TransmitBuffer.CREDITS_ABOVE

    @property
    def latency(self):
        """Cycles from the buffer read of a last block pair to its result in C (for the
        systolic engine: from the request of the last item to ``done``, at most)."""
        p = self._engine_params
        if self._engine_class is SystolicEngine:
            return SystolicEngine.drain_for(self._fmt, **p) + 3
        return (1 + p["mac_stages"] + p["convert_stages"] + TERM_BUFFER_LATENCY
                + p["adder_stages"])
    build_hash = property(lambda self: self._build_hash)
    timeout_cycles = property(lambda self: self._timeout)
    max_payload = property(lambda self: self._max_payload)
    tx_buffer = property(lambda self: self._tx_buffer)

    def elaborate(self, platform):
        m = Module()
        fmt = self._fmt
        eng = self._engine_class(fmt, **self._engine_params)
        self._engine = eng              # for tests: the engine of the latest elaboration
        # The capacity checks' width (checks.saturate): every size and base that passes them
        # is below 2**cap_bits.
        cap_bits = max(eng.a_blocks, eng.b_blocks, eng.c_words).bit_length() + 1

        m.submodules.decoder = dec = FrameDecoder(max_payload=self._max_payload,
                                                  timeout_cycles=self._timeout)
        m.submodules.encoder = enc = FrameEncoder()
        m.submodules.engine = eng
        m.submodules.writer = writer = BlockWriter(
            fmt, input_format=self._input_format, float_wire=self._float_wire,
            align_stages=self._align_stages, max_payload=self._max_payload, cap_bits=cap_bits)
        m.submodules.checks = checks = CheckUnit(
            fmt, input_format=self._input_format, float_wire=self._float_wire,
            lanes=eng.lanes, a_blocks=eng.a_blocks, b_blocks=eng.b_blocks,
            c_words=eng.c_words, max_payload=self._max_payload)
        m.submodules.readout = readout = CReadout(lanes=eng.lanes, c_depth=eng.c_depth,
                                                  cap_bits=cap_bits)
        m.submodules.replies = replies = ReplyFormatter(self._info, cap_bits=cap_bits)
        # With the ECP5's transmit buffer (credits, depth > 4), each byte stream between units
        # nextpnr places apart has a register slice: the received bytes before the decoder's
        # logic (from the UART's register by the pins through it was a critical path of the
        # 4 x 4 array system), and the reply bytes between the executor and the encoder, so
        # that the FSM's ready is a register beside it (the transmit credits through the
        # encoder into the FSM's enables was another). The iCEBreaker has no room for them.
        payload_out = enc.i_stream
        if self.sliced:
            m.submodules.rx_slice = rx_slice = SkidBuffer(8)
            m.submodules.reply_slice = reply_slice = SkidBuffer(8)
            wiring.connect(m, wiring.flipped(self.i_stream), rx_slice.i_stream)
            wiring.connect(m, rx_slice.o_stream, dec.i_stream)
            wiring.connect(m, reply_slice.o_stream, enc.i_stream)
            payload_out = reply_slice.i_stream
        else:
            wiring.connect(m, wiring.flipped(self.i_stream), dec.i_stream)
        if self._tx_buffer:
            m.submodules.tx = tx = TransmitBuffer(self._tx_buffer)
            wiring.connect(m, enc.o_stream, tx.i_stream)
            wiring.connect(m, tx.o_stream, wiring.flipped(self.o_stream))
        else:
            wiring.connect(m, enc.o_stream, wiring.flipped(self.o_stream))

        ev = dec.o_event.payload
        arg = checks.arg
        wargs = data.View(WRITE_ARGS_LAYOUT, ev.args[:WRITE_ARGS_LAYOUT.size])
        x = _Executor(m, cap_bits, dec=dec, enc=enc, payload_out=payload_out, eng=eng,
                      writer=writer, checks=checks, readout=readout, replies=replies)
        m.d.comb += [
            dec.rd_addr.eq(writer.rd_addr), writer.rd_data.eq(dec.rd_data),
            writer.first.eq(arg.start), writer.count.eq(arg.count),
            writer.bfp.eq(wargs.wire == Wire.BFP), writer.to_b.eq(x.is_b),
            eng.a_waddr.eq(writer.waddr), eng.b_waddr.eq(writer.waddr),
            eng.a_wdata.eq(writer.wdata), eng.b_wdata.eq(writer.wdata),
            eng.a_we.eq(writer.a_we), eng.b_we.eq(writer.b_we),
            checks.event.eq(ev), checks.is_read.eq(x.is_read), checks.is_b.eq(x.is_b),
            checks.c_valid.eq(x.c_valid), checks.c_rows.eq(x.c_rows),
            checks.c_cols.eq(x.c_cols), checks.c_at.eq(x.c_at),
            eng.m.eq(arg.m), eng.groups.eq(arg.groups_req), eng.kblocks.eq(arg.kb_req),
            eng.a_base.eq(arg.a_base), eng.b_base.eq(arg.b_base), eng.c_base.eq(arg.c_base),
            eng.accumulate.eq(checks.accumulate),
            eng.c_raddr.eq(readout.c_raddr), eng.c_rlane.eq(readout.c_rlane),
            readout.c_rdata.eq(eng.c_rdata),
            replies.status.eq(x.status), replies.kind.eq(x.reply_kind),
            replies.next_seq.eq(x.next_seq), replies.last_error.eq(x.last_error),
            replies.c_valid.eq(x.c_valid), replies.frames.eq(x.frames),
            replies.rx_errors.eq(x.rx_errors), replies.c_rows.eq(x.c_rows),
            replies.c_cols.eq(x.c_cols), replies.cycles.eq(eng.cycles),
            self.error.eq((x.last_error != 0) | eng.overrun),
        ]
        fsm = x.build(self._float_wire)
        # Busy: a command executes or a frame waits, unless the reply path is full (the device
        # then waits for the link to take a byte).
        m.d.comb += self.busy.eq((~fsm.ongoing("IDLE") | dec.o_event.valid)
                                 & ~(enc.o_stream.valid & ~enc.o_stream.ready))
        return m


class _Executor:
    """The command executor of :class:`GemmSystem`: its state and the FSM ``exec``.

    The FSM takes a frame's event in IDLE, runs the command's states (WRITE_*, QUANTIZE*,
    COMPUTE_*, READ_*), each a cycle or a wait on a component, and sends the reply (SEND,
    SEND_FIXED, SEND_C_*), or skips it for a QUIET success, before DONE. The components do
    the work on its one-cycle commands; it keeps the device state STATUS reports, the
    sequence number and the reply's status.
    """

    def __init__(self, m, cap_bits, *, dec, enc, payload_out, eng, writer, checks, readout,
                 replies):
        # `payload_out`: where the reply's payload bytes go (the encoder's i_stream, or the
        # register slice in front of it).
        self.m, self.dec, self.enc, self.eng = m, dec, enc, eng
        self.payload_out = payload_out
        self.writer, self.checks, self.readout, self.replies = writer, checks, readout, replies
        # -- device state ---------------------------------------------------------------------
        self.frames = Signal(16)
        self.rx_errors = Signal(16)
        self.last_error = Signal(8)
        self.next_seq = Signal(8)       # the seq of the next sequenced frame to execute
        self.in_order = Signal()        # the frame being executed is the next sequenced one
        self.quiet = Signal()           # ... and asks for no reply if it succeeds
        self.c_valid = Signal()
        self.c_rows = Signal(cap_bits)  # shape and place of the last COMPUTE's result
        self.c_cols = Signal(cap_bits)
        self.c_at = Signal(cap_bits)
        self.is_b = Signal()            # the command is WRITE_B
        self.is_read = Signal()         # the command is READ_C
        # -- reply ----------------------------------------------------------------------------
        self.status = Signal(8)
        self.reply_cmd = Signal(8)
        # The reply's seq, latched from the event: the event is released when the reply
        # starts (SEND), and the decoder then parses the next frame into it while the reply
        # is sent.
        self.reply_seq = Signal(8)
        self.released = Signal()        # the event of the frame being replied to was released
        self.reply_kind = Signal(2)     # a ReplyKind
        # The reply's fixed part is latched as SEND is entered (its inputs are registers set
        # with the transition), not when the encoder takes the header: from the transmit
        # buffer's level through the FSM into the latch's enable crossed the die three times
        # in the 4 x 4 array system (74.0 MHz, seed 2).
        self.send_start = Signal()
        self.read_count = Signal(range(protocol.MAX_READ_WORDS + 1))  # C words in the reply

    def reply(self, status, kind=ReplyKind.STATUS_ONLY):
        self.m.d.sync += [self.status.eq(status), self.reply_kind.eq(kind),
                          self.read_count.eq(0)]
        self.send()

    def send(self):
        self.m.d.sync += self.send_start.eq(1)
        self.m.next = "SEND"

    def succeed(self, kind=ReplyKind.STATUS_ONLY):
        """The command succeeded: reply OK, unless the frame asked for no reply."""
        m = self.m
        m.d.sync += [self.status.eq(Status.OK), self.reply_kind.eq(kind),
                     self.read_count.eq(0)]
        with m.If(self.quiet):
            m.next = "DONE"
        with m.Else():
            self.send()

    def build(self, float_wire):
        """Add the FSM to the module; return it."""
        self.m.d.sync += self.send_start.eq(0)          # a pulse: the states set it
        self.m.d.comb += self.replies.start.eq(self.send_start)
        with self.m.FSM(name="exec") as fsm:
            self._idle()
            self._write(float_wire)
            self._compute()
            self._read()
            self._send()
        return fsm

    def _idle(self):
        m, ev = self.m, self.dec.o_event.payload
        with m.State("IDLE"):
            with m.If(self.dec.o_event.valid):
                m.d.sync += [self.reply_cmd.eq(ev.cmd | REPLY_FLAG), self.reply_seq.eq(ev.seq),
                             self.in_order.eq(0), self.quiet.eq(0)]
                with m.If(ev.status != Status.OK):
                    m.d.sync += [self.reply_cmd.eq(NACK), self.rx_errors.eq(self.rx_errors + 1)]
                    self.reply(ev.status)
                with m.Else():
                    m.d.sync += self.frames.eq(self.frames + 1)
                    with m.Switch(ev.cmd):
                        with m.Case(Cmd.INFO, Cmd.STATUS, Cmd.RESET):
                            with m.If(ev.length != 0):
                                self.reply(Status.BAD_LENGTH)
                            with m.Elif(ev.cmd == Cmd.INFO):
                                self.reply(Status.OK, ReplyKind.INFO)
                            with m.Elif(ev.cmd == Cmd.STATUS):
                                self.reply(Status.OK, ReplyKind.STATUS)
                            with m.Else():
                                m.d.sync += [self.c_valid.eq(0), self.frames.eq(0),
                                             self.next_seq.eq(0), self.rx_errors.eq(0),
                                             self.last_error.eq(0)]
                                self.reply(Status.OK)
                        with m.Case(*sorted(protocol.SEQUENCED)):
                            # Exactly once, in order: anything but the next sequence number is
                            # refused without being executed.
                            with m.If(ev.seq != self.next_seq):
                                self.reply(Status.OUT_OF_ORDER)
                            with m.Else():
                                m.d.sync += [self.in_order.eq(1),
                                             self.is_read.eq(ev.cmd == Cmd.READ_C)]
                                with m.Switch(ev.cmd):
                                    with m.Case(Cmd.WRITE_A, Cmd.WRITE_B):
                                        m.d.sync += self.is_b.eq(ev.cmd == Cmd.WRITE_B)
                                        m.next = "WRITE_LEN"
                                    with m.Case(Cmd.COMPUTE):
                                        m.next = "COMPUTE_CHECK"
                                    with m.Default():
                                        m.next = "READ_CHECK"
                        with m.Default():
                            self.reply(Status.UNKNOWN_CMD)

    def _write(self, float_wire):
        m, writer, checks = self.m, self.writer, self.checks
        with m.State("WRITE_LEN"):
            # The expected length (a multiply) gets a cycle of its own.
            m.d.comb += checks.write_len.eq(1)
            m.next = "WRITE_CMP"

        with m.State("WRITE_CMP"):
            m.next = "WRITE_CHECK"          # the status compares the product: valid next cycle

        with m.State("WRITE_CHECK"):
            m.d.comb += writer.setup.eq(1)
            m.d.sync += self.quiet.eq(checks.write_quiet)
            with m.If(checks.write_status != Status.OK):
                self.reply(checks.write_status)
            with m.Elif(checks.write_empty):
                m.next = "WRITE_EMPTY"
            with m.Else():
                m.d.comb += writer.begin.eq(1)
                m.next = "WRITE_LOAD"

        with m.State("WRITE_EMPTY"):
            self.succeed()

        with m.State("WRITE_LOAD"):
            with m.If(writer.block_end):
                if float_wire:
                    with m.If(writer.is_bfp):
                        m.next = "WRITE_STORE"
                    with m.Else():
                        m.next = "QUANTIZE"
                else:
                    m.next = "WRITE_STORE"

        if float_wire:
            with m.State("QUANTIZE"):
                m.d.comb += writer.quantize.eq(1)
                m.next = "QUANTIZE_WAIT"

            with m.State("QUANTIZE_WAIT"):
                with m.If(writer.quantized):
                    m.d.comb += writer.store_quantized.eq(1)
                    self._stored()

        with m.State("WRITE_STORE"):
            m.d.comb += writer.store.eq(1)
            self._stored()

    def _stored(self):
        with self.m.If(self.writer.last_block):
            self.succeed()
        with self.m.Else():
            self.m.next = "WRITE_LOAD"

    def _compute(self):
        m, checks, arg = self.m, self.checks, self.checks.arg
        with m.State("COMPUTE_CHECK"):
            m.d.sync += self.quiet.eq(checks.compute_quiet)
            with m.If(checks.compute_status != Status.OK):
                self.reply(checks.compute_status)
            with m.Else():
                m.next = "COMPUTE_MUL"

        with m.State("COMPUTE_MUL"):
            m.next = "COMPUTE_SUM"          # the check products are valid next cycle

        with m.State("COMPUTE_SUM"):
            m.d.comb += checks.compute_sum.eq(1)
            m.next = "COMPUTE_CMP"

        with m.State("COMPUTE_CMP"):
            m.next = "COMPUTE_CHECK2"       # the comparisons are valid next cycle

        with m.State("COMPUTE_CHECK2"):
            with m.If(checks.compute_cap_status != Status.OK):
                self.reply(checks.compute_cap_status)
            with m.Else():
                m.d.sync += self.c_valid.eq(0)
                m.next = "COMPUTE_START"

        with m.State("COMPUTE_START"):
            m.d.comb += self.eng.start.eq(1)
            m.next = "COMPUTE_RUN"

        with m.State("COMPUTE_RUN"):
            with m.If(self.eng.done):
                m.d.sync += [self.c_valid.eq(1), self.c_rows.eq(arg.m), self.c_cols.eq(arg.n),
                             self.c_at.eq(arg.c_base)]
                m.d.comb += [self.readout.set_row.eq(1), self.readout.row_base.eq(arg.c_base),
                             self.readout.set_cols.eq(1), self.readout.cols.eq(arg.n),
                             self.readout.groups.eq(arg.groups_req)]
                self.succeed(ReplyKind.COMPUTE)
                with m.If(checks.readback):
                    m.d.sync += self.read_count.eq(checks.prod_mn)

    def _read(self):
        m, checks, arg, readout = self.m, self.checks, self.checks.arg, self.readout
        with m.State("READ_CHECK"):
            m.d.comb += [readout.set_cols.eq(1), readout.first_col.eq(arg.col),
                         readout.cols.eq(arg.cols), readout.groups.eq(arg.read_groups)]
            m.next = "READ_MUL"             # the status is valid next cycle

        with m.State("READ_MUL"):
            with m.If(checks.read_status != Status.OK):
                self.reply(checks.read_status)
            with m.Else():
                m.next = "READ_SUM"         # the check products are valid next cycle

        with m.State("READ_SUM"):
            m.d.comb += [checks.read_sum.eq(1), readout.set_row.eq(1),
                         readout.row_base.eq(checks.read_row_base)]
            m.next = "READ_CMP"

        with m.State("READ_CMP"):
            m.next = "READ_CHECK2"          # the comparison is valid next cycle

        with m.State("READ_CHECK2"):
            with m.If(checks.read_cap_status != Status.OK):
                self.reply(checks.read_cap_status)
            with m.Else():
                m.d.sync += [self.status.eq(Status.OK), self.reply_kind.eq(0),
                             self.read_count.eq(checks.read_words)]
                self.send()

    def _send(self):
        # -- reply: header, fixed part, then `read_count` words of C --------------------------
        # The command has executed: the event is released as the reply starts, so the decoder
        # receives the next frame while the reply is sent. From here on nothing depends on
        # the event, its arguments or the payload RAM (the check unit's registers change with
        # the next frame): the reply uses `status`, `reply_cmd`, `reply_seq`, `reply_kind`,
        # `read_count`, the readout's registers and the device state.
        m, enc, dec, replies, readout = self.m, self.enc, self.dec, self.replies, self.readout
        out = self.payload_out
        with m.State("SEND"):
            hdr = enc.i_header.payload
            m.d.comb += [
                enc.i_header.valid.eq(1),
                hdr.cmd.eq(self.reply_cmd), hdr.seq.eq(self.reply_seq),
                hdr.length.eq(replies.length + (self.read_count << 2)),
            ]
            with m.If(self.status != Status.OK):
                m.d.sync += self.last_error.eq(self.status)
            with m.If(enc.i_header.ready):
                # One cycle per frame: SEND is left in this cycle.
                m.d.comb += dec.o_event.ready.eq(1)
                m.d.sync += self.released.eq(1)
                m.next = "SEND_FIXED"

        with m.State("SEND_FIXED"):
            m.d.comb += [out.valid.eq(1), out.payload.eq(replies.byte)]
            with m.If(out.ready):
                m.d.comb += replies.next.eq(1)
                with m.If(replies.last):
                    with m.If(self.read_count != 0):
                        m.next = "SEND_C_ADDR"
                    with m.Else():
                        m.next = "DONE"

        with m.State("SEND_C_ADDR"):
            m.next = "SEND_C_WAIT"         # the address is applied; data two cycles on

        with m.State("SEND_C_WAIT"):
            m.next = "SEND_C_LATCH"

        with m.State("SEND_C_LATCH"):
            m.d.comb += readout.latch.eq(1)
            m.next = "SEND_C_BYTES"

        with m.State("SEND_C_BYTES"):
            m.d.comb += [out.valid.eq(1), out.payload.eq(readout.byte)]
            with m.If(out.ready):
                m.d.comb += readout.next_byte.eq(1)
                with m.If(readout.last_byte):
                    m.d.sync += self.read_count.eq(self.read_count - 1)
                    with m.If(self.read_count == 1):
                        m.next = "DONE"
                    with m.Else():
                        m.next = "SEND_C_ADDR"

        with m.State("DONE"):
            # A frame without a reply (QUIET success) releases its event here; one that was
            # replied to released it in SEND, and the decoder's event now (if valid) is the
            # next frame's, which IDLE takes.
            m.d.comb += dec.o_event.ready.eq(~self.released)
            m.d.sync += self.released.eq(0)
            # A sequenced frame that succeeded has been executed: the next one may follow.
            # One that failed its checks keeps the sequence number, so no later frame runs
            # after it until the host has seen (or asked STATUS about) the failure.
            with m.If(self.in_order & (self.status == Status.OK)):
                m.d.sync += self.next_seq.eq(self.next_seq + 1)
            m.next = "IDLE"

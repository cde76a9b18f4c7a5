"""The GEMM engine and the host-link system around it.

- :class:`~hbfp_hw.rtl_gen.block_dot.BlockDotUnit` (from the generators, with ``init=True``)
  is a :class:`~hbfp_hw.rtl_gen.dot_product.DotProductUnit` whose quantizers are hoisted out:
  it takes BFP blocks (``MacTree -> BlockToFloat -> FPAccumulator``) with the same
  ``channel/first/last`` interface, plus ``init`` transfers that start a running sum from a
  given FP32 value (accumulation across COMPUTEs).
- :class:`GemmEngine` holds the A, B and C buffers (``amaranth.lib.memory``) and an array of
  ``lanes`` :class:`BlockDotUnit` s, and computes ``C = A @ B`` from the buffered blocks with the
  contract's exact semantics (docs/numerics.md 3.3): each element of C is one accumulator
  channel that sees its k-blocks in increasing order from +0.0. With ``accumulate`` it starts
  each running sum from the value already in C instead, so a K split into chunks at multiples
  of the block size gives exactly the sum over the whole K.
- :class:`GemmSystem` is the top level that boards and the simulated device instantiate: a
  :class:`~hbfp_hw.fpga.system.decoder.FrameDecoder`, a command executor, a
  :class:`~hbfp_hw.rtl_gen.float_to_block.FloatToBlock` that quantizes FP32/BF16 tile data as it
  is written (so each element is quantized once), the engine, a
  :class:`~hbfp_hw.fpga.system.decoder.FrameEncoder` and (``tx_buffer > 0``) a transmit buffer that
  holds the replies while they leave at the line rate, behind one pair of 8-bit streams.

Buffer organization (docs/protocol.md has the host's view):

- A: ``a_blocks`` blocks, block index ``a_base + m * KB + kb``.
- B: ``lanes`` banks of ``b_blocks // lanes`` blocks. Columns are grouped by ``lanes``
  (``n = g * lanes + l``); bank ``l``, address ``b_base + g * KB + kb`` holds block index
  ``(b_base + g * KB + kb) * lanes + l``, so one address reads the same k-block of ``lanes``
  adjacent columns.
- C: ``lanes`` banks of ``c_words // lanes`` FP32 words; ``C[m, g * lanes + l]`` is bank ``l``,
  address ``c_base + m * G + g`` with ``G = ceil(N / lanes)``.

Schedule: for each row ``m``, for each pass of up to ``channels`` column groups, (with
``accumulate``: one cycle per group ``c`` of the pass that issues the C value of its element
as an ``init`` term), then for each ``kb``, for each group ``c`` of the pass: one cycle issues
``A[m, kb]`` to every unit and ``B[g0 + c, kb]`` of lane ``l`` to unit ``l``, on channel ``c``.
A channel's terms are ``channels`` cycles apart, so with ``channels >= adder_stages`` the units
accept one block pair per cycle.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO, SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hbfp_hw.rtl_gen.block_dot import (
    TERM_BUFFER_LATENCY,
    BlockDotUnit,
    block_dot_input_layout,
)
from hbfp_hw.rtl_gen.common import (
    check_rtl_format,
    check_stages,
    platform_family,
    registered_multiply,
)
from hbfp_hw.rtl_gen.float_to_block import FloatToBlock
from hbfp_hw.rtl_gen.layout import (
    block_layout,
)

from ..config import SystemConfig
from ..protocol import frames as protocol
from ..protocol.frames import (
    ARGS_BYTES,
    ARGS_LATCH_BYTES,
    COMPUTE_ARGS_LAYOUT,
    COMPUTE_REPLY_LAYOUT,
    INFO_LAYOUT,
    NACK,
    READ_ARGS_LAYOUT,
    REPLY_FLAG,
    STATUS_LAYOUT,
    WRITE_ARGS_LAYOUT,
    Cmd,
    Flag,
    Status,
    Wire,
)
from .decoder import FrameDecoder, FrameEncoder

__all__ = ["BlockDotUnit", "block_dot_input_layout", "GemmEngine", "GemmSystem"]


def _check_int(name, value, lo, hi=None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ValueError(f"{name} must be {rng}, not {value!r}")
    return value


def _check_pow2(name, value, lo, hi):
    _check_int(name, value, lo, hi)
    if value & (value - 1):
        raise ValueError(f"{name} must be a power of two between {lo} and {hi}, not {value!r}")
    return value


def _saturate(value, bits):
    """``value`` if it is below ``2**bits``, else ``2**bits - 1`` (a ``bits``-wide value).

    The capacity checks of :class:`GemmSystem` run on protocol fields (16 and 32 bits) clamped
    this way to ``bits = capacity.bit_length() + 1``: a clamped operand is above every
    capacity, and sums and products of non-negative operands stay above it (a product only
    with a non-zero other factor, and then the true product is too), so every ``x > capacity``
    comes out as it would at full width, from narrow adders and multipliers.
    """
    if len(value) <= bits:
        return value
    return Mux(value[bits:].any(), (1 << bits) - 1, value[:bits])


class GemmEngine(wiring.Component):
    """Buffers and a ``lanes``-wide array of block dot-product units computing ``C = A @ B``.

    Parameters
    ----------
    fmt : BFPFormat
    lanes : int
        Dot-product units (a power of two, 1..64); unit ``l`` computes the columns ``n`` with
        ``n % lanes == l``.
    channels : int or None
        Column groups interleaved per pass (default: the accumulator's ``min_channels``, the
        fewest that give one block pair per cycle).
    a_blocks, b_blocks, c_words : int
        Buffer capacities in blocks (A, B) and FP32 words (C); ``b_blocks`` and ``c_words``
        must be multiples of ``lanes``.
    mac_stages, convert_stages, adder_stages : int
        Pipeline depths of the units.

    Members
    -------
    a_we, a_waddr, a_wdata : ``In``
        Write the block ``a_wdata`` at A block index ``a_waddr``.
    b_we, b_waddr, b_wdata : ``In``
        Write the block ``b_wdata`` at B block index ``b_waddr`` (device order).
    c_rlane, c_raddr : ``In``
    c_rdata : ``Out(32)``
        Read C bank ``c_rlane`` at ``c_raddr``; ``c_rdata`` follows two cycles later. The C
        read ports belong to the engine while it is ``busy`` (it reads the start values of
        an ``accumulate`` computation through them).
    start : ``In(1)``
        Start a computation of ``m`` rows, ``groups`` column groups and ``kblocks``
        k-blocks (the inputs below are held stable until ``done``). Ignored while ``busy``.
    m, groups, kblocks : ``In``
        At most :attr:`max_m`, :attr:`max_groups` and :attr:`max_kblocks`, the most the
        buffers can hold (the caller checks that the whole computation fits them).
    a_base, b_base, c_base : ``In``
        First A block, first B bank word and first C bank word of the computation.
    accumulate : ``In(1)``
        Start each running sum from the element's value in C instead of +0.0.
    busy : ``Out(1)``
    done : ``Out(1)``
        One-cycle pulse when every result is in C.
    cycles : ``Out(32)``
        Cycles of the last computation.
    overrun : ``Out(1)``
        Set (until reset) if a unit ever refused a block pair: the issue schedule makes that
        impossible, and the bit is there to check it (the tests do; it lights the error LED).
    """

    def __init__(self, fmt, *, lanes, channels, a_blocks, b_blocks, c_words, mac_stages,
                 convert_stages, adder_stages):
        params = self.check_params(fmt, lanes=lanes, channels=channels, a_blocks=a_blocks,
                                   b_blocks=b_blocks, c_words=c_words, mac_stages=mac_stages,
                                   convert_stages=convert_stages, adder_stages=adder_stages)
        self._fmt = fmt
        self._params = params
        self._lanes = lanes
        self._channels = params["channels"]
        self._a_blocks, self._b_blocks, self._c_words = a_blocks, b_blocks, c_words
        self._unit_params = BlockDotUnit.check_params(
            fmt, channels=self._channels, mac_stages=mac_stages,
            convert_stages=convert_stages, adder_stages=adder_stages)
        blk = block_layout(fmt)
        super().__init__({
            "a_we": In(1), "a_waddr": In(range(a_blocks)), "a_wdata": In(blk),
            "b_we": In(1), "b_waddr": In(range(b_blocks)), "b_wdata": In(blk),
            "c_rlane": In(range(lanes)), "c_raddr": In(range(self.c_depth)),
            "c_rdata": Out(32),
            "start": In(1), "m": In(range(self.max_m + 1)),
            "groups": In(range(self.max_groups + 1)),
            "kblocks": In(range(self.max_kblocks + 1)),
            "a_base": In(range(a_blocks)), "b_base": In(range(self.b_depth)),
            "c_base": In(range(self.c_depth)), "accumulate": In(1),
            "busy": Out(1), "done": Out(1), "cycles": Out(32), "overrun": Out(1),
        })

    @staticmethod
    def check_params(fmt, *, lanes, channels, a_blocks, b_blocks, c_words, mac_stages,
                     convert_stages, adder_stages):
        """Validate the constructor parameters; return them as a dict (``channels`` resolved).

        Raises
        ------
        TypeError, ValueError
            As the constructor.
        """
        check_rtl_format(fmt)
        _check_pow2("lanes", lanes, 1, 64)
        if channels is None:
            channels = adder_stages
        _check_int("channels", channels, 1, 256)
        _check_int("a_blocks", a_blocks, 1, 1 << 24)
        _check_int("b_blocks", b_blocks, lanes, 1 << 24)
        _check_int("c_words", c_words, lanes, 1 << 24)
        for name, value in (("b_blocks", b_blocks), ("c_words", c_words)):
            if value % lanes:
                raise ValueError(f"{name} must be a multiple of lanes ({lanes}), not {value!r}")
        BlockDotUnit.check_params(fmt, channels=channels, mac_stages=mac_stages,
                                  convert_stages=convert_stages, adder_stages=adder_stages)
        return dict(lanes=lanes, channels=channels, a_blocks=a_blocks, b_blocks=b_blocks,
                    c_words=c_words, mac_stages=mac_stages, convert_stages=convert_stages,
                    adder_stages=adder_stages)

    fmt = property(lambda self: self._fmt)
    lanes = property(lambda self: self._lanes)
    channels = property(lambda self: self._channels)
    a_blocks = property(lambda self: self._a_blocks)
    b_blocks = property(lambda self: self._b_blocks)
    c_words = property(lambda self: self._c_words)

    @property
    def latency(self):
        """Cycles from the buffer read of a last block pair to its result in C."""
        p = self._unit_params
        return (1 + p["mac_stages"] + p["convert_stages"] + TERM_BUFFER_LATENCY
                + p["adder_stages"])

    @property
    def max_m(self):
        """Most rows of a computation: each needs a C word and an A block."""
        return min(self.c_depth, self._a_blocks)

    @property
    def max_groups(self):
        """Most column groups: each needs a C word and a B bank word."""
        return min(self.c_depth, self.b_depth)

    @property
    def max_kblocks(self):
        """Most k-blocks: each needs an A block and a B bank word."""
        return min(self._a_blocks, self.b_depth)

    @property
    def b_depth(self):
        """Words of one B bank: ``b_blocks // lanes``."""
        return self._b_blocks // self._lanes

    @property
    def c_depth(self):
        """Words of one C bank: ``c_words // lanes``."""
        return self._c_words // self._lanes

    def elaborate(self, platform):
        m = Module()
        fmt = self._fmt
        lanes = self._lanes
        lane_bits = (lanes - 1).bit_length()
        ch = self._channels
        blk = block_layout(fmt)

        m.submodules.a_mem = a_mem = Memory(shape=blk, depth=self._a_blocks, init=[])
        a_wr = a_mem.write_port()
        a_rd = a_mem.read_port()
        m.d.comb += [a_wr.en.eq(self.a_we), a_wr.addr.eq(self.a_waddr),
                     a_wr.data.eq(self.a_wdata)]

        running = Signal()
        c_init_addr = Signal(range(self.c_depth))
        b_rds, c_rds, c_wrs = [], [], []
        for lane in range(lanes):
            b_mem = Memory(shape=blk, depth=self.b_depth, init=[])
            c_mem = Memory(shape=unsigned(32), depth=self.c_depth, init=[])
            m.submodules[f"b_mem{lane}"] = b_mem
            m.submodules[f"c_mem{lane}"] = c_mem
            b_wr = b_mem.write_port()
            m.d.comb += [
                b_wr.en.eq(self.b_we & ((self.b_waddr[:lane_bits] == lane) if lane_bits
                                        else 1)),
                b_wr.addr.eq(self.b_waddr >> lane_bits),
                b_wr.data.eq(self.b_wdata),
            ]
            b_rds.append(b_mem.read_port())
            # The C read port is shared: the engine reads the start values of an accumulating
            # computation through it while it runs; the host reads results when it does not.
            c_rd = c_mem.read_port()
            m.d.comb += c_rd.addr.eq(Mux(running, c_init_addr, self.c_raddr))
            c_rds.append(c_rd)
            c_wrs.append(c_mem.write_port())
        # The block RAMs' read data is registered before the bank multiplexer: from a DP16KD
        # without its output register (5.8 ns clock-to-output) through the multiplexer into
        # the readout was the ULX3S critical path at 86.7 MHz (11.5 ns).
        rlane = Signal.like(self.c_rlane)
        rlane2 = Signal.like(self.c_rlane)
        m.d.sync += [rlane.eq(self.c_rlane), rlane2.eq(rlane)]
        # (Not on the iCE40, whose block RAMs are fast and whose flip-flops are logic cells:
        # there the read data is held, as the address is, until the readout takes it.)
        if platform_family(platform) == "ice40":
            c_q = [rd.data for rd in c_rds]
        else:
            c_q = [Signal(32, name=f"c_q{lane}", reset_less=True) for lane in range(lanes)]
            m.d.sync += [q.eq(rd.data) for q, rd in zip(c_q, c_rds, strict=True)]
        c_data = c_q[0]
        for lane in range(1, lanes):
            c_data = Mux(rlane2 == lane, c_q[lane], c_data)
        m.d.comb += self.c_rdata.eq(c_data)

        units = []
        for lane in range(lanes):
            unit = BlockDotUnit(fmt, **self._unit_params, init=True)
            m.submodules[f"unit{lane}"] = unit
            units.append(unit)

        # -- issue counters ---------------------------------------------------------------
        # The engine never stalls: it issues at most one block pair per cycle, and no term of
        # a channel follows the one before it by fewer than `spacing` cycles (the units'
        # min_channels), so no accumulator waits on a read-after-write hazard and, with C
        # always taking results, no unit ever holds its input ready low. A pass of fewer
        # column groups than that fills each round with idle slots instead (as the hazard
        # stalls did before). Every register here loads every cycle: no ready-derived enable
        # fans out from the lanes to the counters, buffer reads and operand registers (on the
        # ULX3S that network was the critical path, 13.0 ns, 10.6 of them routing).
        spacing = self._unit_params["adder_stages"]
        slots = max(ch, spacing)
        row = Signal.like(self.m)
        kb = Signal.like(self.kblocks)
        c = Signal(range(slots))
        a_row = Signal(range(self._a_blocks + 1))     # row * KB
        b_pass = Signal(range(self.b_depth + 1))      # g0 * KB
        ckb = Signal(range(self.b_depth + 1))         # c * KB + kb
        init_round = Signal()    # issuing the start values of the pass (accumulate)
        init_index = Signal(range(self.c_depth + 1))  # element index of the next start value
        # Column groups from the pass's first one on, and those of the pass (min(left, ch)):
        # registers updated once per pass, so no subtract-and-compare precedes the counters.
        left = Signal.like(self.groups)
        pass_groups = Signal(range(ch + 1))
        round_len = Signal(range(slots + 1))          # max(pass_groups, spacing)

        def pass_size(groups):
            """(pass_groups, round_len) of a pass over ``groups`` column groups or more."""
            return [pass_groups.eq(Mux(groups < ch, groups, ch)),
                    round_len.eq(Mux(groups < ch, Mux(groups < spacing, spacing, groups),
                                     max(ch, spacing)))]

        issuing = Signal()
        s2_valid = Signal()
        s2_channel = Signal(range(ch))
        s2_first = Signal()
        s2_last = Signal()
        s2_init = Signal()
        # s3: the buffer read data and the flags of s2, registered before they fan out to the
        # units (the block RAMs' clock-to-output is long).
        s3_valid = Signal()
        s3_channel = Signal(range(ch))
        s3_first = Signal()
        s3_last = Signal()
        s3_init = Signal()
        s3_a = Signal(blk)
        s3_b = [Signal(blk, name=f"s3_b{lane}") for lane in range(lanes)]
        s3_c = [Signal(32, name=f"s3_c{lane}") for lane in range(lanes)]
        m.d.sync += [
            s3_valid.eq(s2_valid), s3_channel.eq(s2_channel), s3_first.eq(s2_first),
            s3_last.eq(s2_last), s3_init.eq(s2_init), s3_a.eq(a_rd.data),
        ]
        m.d.sync += [s3_b[lane].eq(b_rds[lane].data) for lane in range(lanes)]
        m.d.sync += [s3_c[lane].eq(c_rds[lane].data) for lane in range(lanes)]
        # The schedule above guarantees that every unit takes what it is given; `overrun`
        # records (until reset) if one ever did not.
        refused = Signal()
        m.d.comb += refused.eq(s3_valid & ~Cat(*[u.i_stream.ready for u in units]).all())
        with m.If(refused):
            m.d.sync += self.overrun.eq(1)

        m.d.comb += [a_rd.addr.eq(self.a_base + a_row + kb),
                     c_init_addr.eq(self.c_base + init_index)]
        for rd in b_rds:
            m.d.comb += rd.addr.eq(self.b_base + b_pass + ckb)
        for lane, unit in enumerate(units):
            p = unit.i_stream.payload
            m.d.comb += [
                unit.i_stream.valid.eq(s3_valid),
                p.a.eq(s3_a),
                p.b.eq(s3_b[lane]),
                p.channel.eq(s3_channel),
                p.first.eq(s3_first),
                p.last.eq(s3_last),
                p.init.eq(s3_init),
                p.c.eq(s3_c[lane]),
            ]

        # Slot c of a round issues column group c of the pass if c < pass_groups; the rest of
        # the round (up to round_len) is idle.
        in_pass = Signal()
        m.d.comb += in_pass.eq(c < pass_groups)
        m.d.sync += [
            s2_valid.eq(issuing & in_pass),
            s2_channel.eq(c),
            s2_init.eq(init_round),
            # An init term starts the sum; without one the first k-block does.
            s2_first.eq(init_round | ((kb == 0) & ~self.accumulate)),
            s2_last.eq(~init_round & (kb == self.kblocks - 1)),
        ]
        with m.If(issuing & init_round):
            with m.If(in_pass):
                m.d.sync += init_index.eq(init_index + 1)
            with m.If(c + 1 < round_len):
                m.d.sync += c.eq(c + 1)
            with m.Else():
                m.d.sync += [c.eq(0), init_round.eq(0)]
        with m.Elif(issuing):
            with m.If(c + 1 < round_len):
                m.d.sync += c.eq(c + 1)
                with m.If(c + 1 < pass_groups):
                    m.d.sync += ckb.eq(ckb + self.kblocks)
            with m.Else():
                m.d.sync += c.eq(0)
                with m.If(kb + 1 < self.kblocks):
                    m.d.sync += [kb.eq(kb + 1), ckb.eq(kb + 1)]
                with m.Else():
                    m.d.sync += [kb.eq(0), ckb.eq(0), init_round.eq(self.accumulate)]
                    with m.If(left > ch):
                        rest = left - ch
                        # ckb = c * KB + kb is now (ch - 1) * KB + KB - 1: the next pass
                        # starts ch * KB further on, without a multiplier on the path.
                        m.d.sync += [b_pass.eq(b_pass + ckb + 1), left.eq(rest),
                                     *pass_size(rest)]
                    with m.Else():
                        m.d.sync += [b_pass.eq(0), left.eq(self.groups),
                                     *pass_size(self.groups)]
                        with m.If(row + 1 < self.m):
                            m.d.sync += [row.eq(row + 1), a_row.eq(a_row + self.kblocks)]
                        with m.Else():
                            m.d.sync += issuing.eq(0)

        # -- write-back: every unit writes its results to its own C bank, in order -----------
        # total = m * groups, the results to wait for: the multiply gets a cycle of its own
        # after start (the completion check runs three cycles later at the earliest).
        total = Signal(range(self.c_depth + 1))
        total_m = Signal.like(self.m)
        total_groups = Signal.like(self.groups)
        m.d.sync += total.eq(total_m * total_groups)
        written = [Signal(range(self.c_depth + 1), name=f"written{lane}")
                   for lane in range(lanes)]
        for lane, unit in enumerate(units):
            m.d.comb += [
                unit.o_stream.ready.eq(1),
                c_wrs[lane].en.eq(unit.o_stream.valid),
                c_wrs[lane].addr.eq(self.c_base + written[lane]),
                c_wrs[lane].data.eq(unit.o_stream.payload.value),
            ]
            with m.If(unit.o_stream.valid):
                m.d.sync += written[lane].eq(written[lane] + 1)

        m.d.comb += self.busy.eq(running)
        finished = Cat(*[w == total for w in written]).all()
        with m.If(running):
            m.d.sync += self.cycles.eq(self.cycles + 1)
            with m.If(~issuing & ~s2_valid & ~s3_valid & finished):
                m.d.sync += running.eq(0)
                m.d.comb += self.done.eq(1)
        with m.Elif(self.start):
            m.d.sync += [
                running.eq(1), issuing.eq(1), self.cycles.eq(0),
                row.eq(0), kb.eq(0), c.eq(0), a_row.eq(0), b_pass.eq(0), ckb.eq(0),
                left.eq(self.groups), *pass_size(self.groups),
                init_round.eq(self.accumulate), init_index.eq(0),
                total_m.eq(self.m), total_groups.eq(self.groups),
            ]
            m.d.sync += [w.eq(0) for w in written]
        return m


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
        fmt = self._fmt = check_rtl_format(config.fmt)
        self._input_format = config.input_format
        self._float_wire = config.effective_float_wire
        self._align_stages = check_stages("align_stages", config.align_stages,
                                          FloatToBlock.max_stages_for(fmt))
        self._timeout = config.effective_timeout_cycles
        biggest = max(protocol.block_bytes(fmt, w, self._input_format) for w in self._wires)
        self._max_payload = _check_int("max_payload", config.max_payload,
                                       max(ARGS_LATCH_BYTES, ARGS_BYTES + biggest), 0xFFFF)
        self._tx_buffer = config.tx_buffer
        # The engine is built by elaborate(): a component that is created but never elaborated
        # makes Amaranth warn, and hosts build a GemmSystem only to read its `info`.
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
    def latency(self):
        """Cycles from the buffer read of a last block pair to its result in C."""
        p = self._engine_params
        return (1 + p["mac_stages"] + p["convert_stages"] + TERM_BUFFER_LATENCY
                + p["adder_stages"])
    build_hash = property(lambda self: self._build_hash)
    timeout_cycles = property(lambda self: self._timeout)
    max_payload = property(lambda self: self._max_payload)
    tx_buffer = property(lambda self: self._tx_buffer)

    def elaborate(self, platform):
        m = Module()
        fmt = self._fmt
        info = self._info
        eng = GemmEngine(fmt, **self._engine_params)
        self._engine = eng              # for tests: the engine of the latest elaboration
        lanes = eng.lanes
        lane_bits = (lanes - 1).bit_length()
        bs = fmt.block_size
        bs_bits = (bs - 1).bit_length()
        mb = protocol.mantissa_bytes(fmt)
        bb_float = protocol.block_bytes(fmt, Wire.FLOAT, self._input_format)
        bb_bfp = protocol.block_bytes(fmt, Wire.BFP)
        float_wire = self._float_wire
        vec_bytes = max(bb_float, bb_bfp) if float_wire else bb_bfp

        m.submodules.decoder = dec = FrameDecoder(max_payload=self._max_payload,
                                                  timeout_cycles=self._timeout)
        m.submodules.encoder = enc = FrameEncoder()
        m.submodules.engine = eng
        if float_wire:
            m.submodules.quantizer = q = FloatToBlock(fmt, input_format=self._input_format,
                                                      stages=self._align_stages)
            m.d.comb += [q.seed.eq(0), q.reseed.eq(0)]
        wiring.connect(m, wiring.flipped(self.i_stream), dec.i_stream)
        if self._tx_buffer:
            # The transmit buffer: the encoder writes a reply at up to a byte per cycle, and
            # the executor goes on with the next frames while it leaves at the line rate.
            # Its last two entries are flip-flops (a SyncFIFO), so that o_stream comes from a
            # register and not from the block RAMs' read data (5.8 ns clock-to-output without
            # their output register; into the UART that was the ULX3S critical path, 12.4 ns).
            # Together they hold exactly tx_buffer bytes.
            m.submodules.tx_out = out = SyncFIFO(width=8, depth=min(2, self._tx_buffer))
            m.d.comb += [self.o_stream.payload.eq(out.r_data), self.o_stream.valid.eq(out.r_rdy),
                         out.r_en.eq(self.o_stream.ready)]
            if self._tx_buffer > 2:
                m.submodules.tx_buffer = tx = SyncFIFOBuffered(width=8,
                                                               depth=self._tx_buffer - 2)
                m.d.comb += [tx.r_en.eq(out.w_rdy), out.w_en.eq(tx.r_rdy),
                             out.w_data.eq(tx.r_data)]
            else:
                tx = out
            m.d.comb += [
                tx.w_data.eq(enc.o_stream.payload), tx.w_en.eq(enc.o_stream.valid),
                enc.o_stream.ready.eq(tx.w_rdy),
            ]
        else:
            wiring.connect(m, enc.o_stream, wiring.flipped(self.o_stream))

        ev = dec.o_event.payload
        wargs = data.View(WRITE_ARGS_LAYOUT, ev.args[:WRITE_ARGS_LAYOUT.size])
        cargs = data.View(COMPUTE_ARGS_LAYOUT, ev.args[:COMPUTE_ARGS_LAYOUT.size])
        rargs = data.View(READ_ARGS_LAYOUT, ev.args[:READ_ARGS_LAYOUT.size])

        # -- state ------------------------------------------------------------------------
        frames = Signal(16)
        rx_errors = Signal(16)
        last_error = Signal(8)
        next_seq = Signal(8)          # the seq of the next sequenced frame to execute
        in_order = Signal()           # the frame being executed is the next sequenced one
        quiet = Signal()              # ... and asks for no reply if it succeeds
        c_valid = Signal()
        # The capacity checks' width (see _saturate): every size and base that passes them is
        # below 2**cap_bits.
        cap_bits = max(eng.a_blocks, eng.b_blocks, eng.c_words).bit_length() + 1
        c_rows = Signal(cap_bits)     # shape and place of the last COMPUTE's result
        c_cols = Signal(cap_bits)
        c_at = Signal(cap_bits)

        # -- reply --------------------------------------------------------------------------
        status = Signal(8)
        reply_cmd = Signal(8)
        # The reply's seq, latched from the event: the event is released when the reply starts
        # (SEND), and the decoder then parses the next frame into it while the reply is sent.
        reply_seq = Signal(8)
        released = Signal()           # the event of the frame being replied to was released
        reply_kind = Signal(2)        # 0: status only, 1: INFO, 2: STATUS, 3: COMPUTE
        read_count = Signal(range(protocol.MAX_READ_WORDS + 1))  # C words in the reply
        kind_len = [1, 1 + INFO_LAYOUT.size // 8, 1 + STATUS_LAYOUT.size // 8,
                    1 + COMPUTE_REPLY_LAYOUT.size // 8]
        fixed_len = Signal(8)
        out_of_order = Signal()
        m.d.comb += out_of_order.eq(status == Status.OUT_OF_ORDER)
        m.d.comb += fixed_len.eq(Mux(out_of_order, 2,
                                     Mux(status != Status.OK, 1,
                                         Mux(reply_kind == 1, kind_len[1],
                                             Mux(reply_kind == 2, kind_len[2],
                                                 Mux(reply_kind == 3, kind_len[3], 1))))))
        info_bits = int.from_bytes(protocol.info_to_bytes(info), "little")
        status_view = Signal(STATUS_LAYOUT)
        m.d.comb += [
            status_view.last_error.eq(last_error), status_view.c_valid.eq(c_valid),
            status_view.frames.eq(frames), status_view.rx_errors.eq(rx_errors),
            status_view.c_rows.eq(Mux(c_valid, c_rows, 0)),
            status_view.c_cols.eq(Mux(c_valid, c_cols, 0)),
            status_view.next_seq.eq(next_seq),
        ]
        fixed = Signal(8 * max(kind_len))
        # The fixed part is latched when the header goes out and shifted out a byte at a time:
        # a byte multiplexer over all of INFO in front of the encoder's CRC was the ULX3S
        # critical path at 97.6 MHz (10.3 ns). Not on the iCE40, where the 328 flip-flops of
        # the latch would each take a logic cell the UP5K does not have; it reads the fixed
        # part through the multiplexer (its values do not change while a reply is sent).
        latch_fixed = platform_family(platform) != "ice40"
        fixed_sr = Signal(8 * max(kind_len))
        fixed_last = Signal(8)                  # index of its last byte
        # An OUT_OF_ORDER reply also says which sequence number the device expects.
        m.d.comb += fixed.eq(Mux(out_of_order, Cat(status, next_seq),
                             Mux(reply_kind == 1, Cat(status, Const(info_bits, INFO_LAYOUT.size)),
                                 Mux(reply_kind == 2, Cat(status, status_view.as_value()),
                                     Mux(reply_kind == 3, Cat(status, eng.cycles), status)))))

        # -- payload reader: rd_data is the payload byte at `ptr` ---------------------------
        # The RAM's read address depends on two flag registers only, not on the FSM's state
        # decode (on the ULX3S that decode, which also enables the 8 * vec_bytes flip-flops of
        # `vec`, sat 12.2 ns in front of the address): `loading` is set exactly in WRITE_LOAD,
        # where the address steps, and `writing` from WRITE_LOAD's first entry to the write's
        # last block, where it holds. Anywhere else it rests at ARGS_BYTES, the first tile
        # byte, so that WRITE_LOAD's first cycle reads it.
        ptr = Signal(range(self._max_payload))
        ptr_next = Signal(range(self._max_payload))
        loading = Signal()
        writing = Signal()
        m.d.comb += [ptr_next.eq(Mux(loading, ptr + 1, Mux(writing, ptr, ARGS_BYTES))),
                     dec.rd_addr.eq(ptr_next)]
        m.d.sync += ptr.eq(ptr_next)
        byte = dec.rd_data

        # -- block assembly -----------------------------------------------------------------
        vec = Signal(8 * vec_bytes)
        bcount = Signal(range(vec_bytes + 1))
        remaining = Signal(cap_bits)
        # Flag registers for the FSM's write states, so that their decisions come from
        # flip-flops rather than comparisons: `last_block` is remaining == 1, `block_end` that
        # WRITE_LOAD takes the block's last byte in this cycle.
        last_block = Signal()
        block_end = Signal()
        waddr = Signal(cap_bits)
        is_b = Signal()
        is_bfp = Signal()
        bfp_bits = vec[8 * (vec_bytes - bb_bfp):]
        block_from_wire = Signal(block_layout(fmt))
        m.d.comb += block_from_wire.exponent.eq(bfp_bits[:fmt.exponent_bits])
        for i in range(bs):
            lo = 8 + 8 * mb * i
            m.d.comb += block_from_wire.mantissas[i].eq(bfp_bits[lo:lo + fmt.mantissa_bits])
        block = Signal(block_layout(fmt))
        block_we = Signal()
        m.d.comb += [
            eng.a_waddr.eq(waddr), eng.b_waddr.eq(waddr),
            eng.a_wdata.eq(block), eng.b_wdata.eq(block),
            eng.a_we.eq(block_we & ~is_b), eng.b_we.eq(block_we & is_b),
        ]
        if float_wire:
            m.d.comb += [q.i_stream.payload.eq(vec[8 * (vec_bytes - bb_float):]),
                         q.o_stream.ready.eq(1)]
            # The quantizer's block, registered before the FSM and the A/B write ports use it
            # (from its output FIFO's LUT RAM across the die into the FSM was the ULX3S
            # critical path, 12.1 ns).
            q_valid = Signal()
            q_block = Signal.like(q.o_stream.payload)
            m.d.sync += [q_valid.eq(q.o_stream.valid), q_block.eq(q.o_stream.payload)]

        # -- C readout (READ_C, and the result of a READBACK COMPUTE) -----------------------
        rd_row_base = Signal.like(eng.c_raddr)  # C bank word of the row's first column group
        rd_col = Signal(cap_bits)
        rd_cols = Signal(cap_bits)    # columns of the result being read
        rd_groups = Signal(cap_bits)
        word = Signal(32)
        m.d.comb += [eng.c_raddr.eq(rd_row_base + (rd_col >> lane_bits)),
                     eng.c_rlane.eq(rd_col[:lane_bits] if lane_bits else 0)]

        # -- checks -------------------------------------------------------------------------
        # Registered every cycle: the arguments are stable from the event in IDLE until the
        # reply starts (SEND, or DONE without a reply), so these are valid from the first CHECK
        # state on; the reply does not use them. Sizes and bases are clamped to
        # cap_bits (_saturate): exact for every request that passes the checks, and above
        # every capacity for the others.
        sources = {
            "m": cargs.m, "n": cargs.n, "a_base": cargs.a_base, "b_base": cargs.b_base,
            "c_base": cargs.c_base, "row": rargs.row, "col": rargs.col, "rows": rargs.rows,
            "cols": rargs.cols, "base": rargs.base, "start": wargs.start, "count": wargs.count,
            "kb_req": (cargs.k + (bs - 1)) >> bs_bits,
            "groups_req": (cargs.n + (lanes - 1)) >> lane_bits,
            "read_groups": (rargs.cols + (lanes - 1)) >> lane_bits,
        }
        a = {name: Signal(cap_bits, name=f"arg_{name}") for name in sources}
        m.d.sync += [a[name].eq(_saturate(value, cap_bits)) for name, value in sources.items()]
        kb_req, groups_req, read_groups = a["kb_req"], a["groups_req"], a["read_groups"]
        # READ_C's count, clamped above MAX_READ_WORDS (READ_CHECK refuses more).
        read_words = Signal(range(2 * protocol.MAX_READ_WORDS + 1))
        m.d.sync += read_words.eq(_saturate(rargs.count, len(read_words)))
        # The capacity checks: products registered every cycle (valid from the SUM states on;
        # computed outside the FSM, so that no state-driven multiplexer sits between the
        # argument registers and the multipliers). COMPUTE and READ_C share four multipliers:
        # `is_read`, set when the command is dispatched, selects their operands (one LUT
        # level from registers), so the iCE40's eight DSPs suffice.
        is_read = Signal()
        sum_bits = max(2 * cap_bits, len(read_words)) + 2
        prod_a = Signal(sum_bits)
        prod_b = Signal(sum_bits)
        prod_c = Signal(sum_bits)
        # The capacity comparisons, registered every cycle from the sums above (the *_CMP
        # states wait for them): a compare chain straight into the FSM's next-state logic was
        # the ULX3S critical path at 91.5 MHz (10.9 ns).
        compute_over = Signal()
        read_over = Signal()
        operands = [(a["m"], kb_req, a["row"], a["cols"]),
                    (groups_req, kb_req, a["rows"], a["cols"]),
                    (a["m"], groups_req, a["rows"], read_groups),
                    (a["m"], a["n"], a["row"], read_groups)]
        # Two cycles from the operands to the product, in registers around the multiplier (on
        # the ECP5 the MULT18X18D's own: a combinational DSP between fabric registers was the
        # ULX3S critical path at 93.5 MHz, 10.7 ns); the *_MUL states wait for them.
        mul = [registered_multiply(m, platform, f"check_mul{i}", Mux(is_read, r0, c0),
                                   Mux(is_read, r1, c1))
               for i, (c0, c1, r0, r1) in enumerate(operands)]
        # COMPUTE: m*kblocks, groups*kblocks, m*groups, m*n; READ_C: row*cols, rows*cols,
        # rows*groups, row*groups.
        prod_mn = mul[3]
        # WRITE's expected length, ARGS_BYTES + count * block bytes: the block size is a
        # register (valid in WRITE_LEN), the product is registered in WRITE_LEN and compared
        # with the registered payload length in WRITE_CHECK. The count is clamped above the
        # largest payload (the decoder refuses longer frames).
        w_bytes = Signal(range(max(bb_bfp, bb_float if float_wire else 0) + 1))
        w_count = Signal(range(2 * self._max_payload + 1))
        w_prod = Signal(len(w_count) + len(w_bytes))
        w_body = Signal(len(ev.length))
        # (Without float_wire, WRITE_CHECK refuses Wire.FLOAT before it compares lengths.)
        m.d.sync += [w_bytes.eq(Mux(wargs.wire == Wire.BFP, bb_bfp, bb_float) if float_wire
                                else bb_bfp),
                     w_count.eq(_saturate(wargs.count, len(w_count))),
                     w_body.eq(ev.length - ARGS_BYTES)]
        byte_index = Signal(3)
        tx_index = Signal(8)
        accumulate = Signal()
        readback = Signal()
        m.d.comb += [
            eng.m.eq(a["m"]), eng.groups.eq(groups_req), eng.kblocks.eq(kb_req),
            eng.a_base.eq(a["a_base"]), eng.b_base.eq(a["b_base"]),
            eng.c_base.eq(a["c_base"]), eng.accumulate.eq(accumulate),
            accumulate.eq((cargs.flags & Flag.ACCUMULATE) != 0),
            readback.eq((cargs.flags & Flag.READBACK) != 0),
        ]
        m.d.sync += [
            compute_over.eq((prod_a > eng.a_blocks) | (prod_b > eng.b_depth)
                            | (prod_c > eng.c_depth)
                            | (readback & (prod_mn > protocol.MAX_READ_WORDS - 1))),
            read_over.eq((prod_a > prod_b) | (prod_c > eng.c_depth)),
        ]

        def reply(st, kind=0):
            m.d.sync += [status.eq(st), reply_kind.eq(kind), read_count.eq(0)]
            m.next = "SEND"

        def succeed(kind=0):
            """The command succeeded: reply OK, unless the frame asked for no reply."""
            m.d.sync += [status.eq(Status.OK), reply_kind.eq(kind), read_count.eq(0)]
            with m.If(quiet):
                m.next = "DONE"
            with m.Else():
                m.next = "SEND"

        # Block assembly while loading (exactly the WRITE_LOAD cycles): a byte per cycle into
        # `vec`, whose 8 * vec_bytes enables then come from one flag register.
        block_bytes = Mux(is_bfp, bb_bfp, bb_float) if float_wire else bb_bfp
        with m.If(loading):
            m.d.sync += [vec.eq(Cat(vec[8:], byte)), bcount.eq(bcount + 1),
                         block_end.eq(bcount == block_bytes - 2)]
        m.d.comb += self.error.eq((last_error != 0) | eng.overrun)
        with m.FSM(name="exec") as fsm:
            with m.State("IDLE"):
                with m.If(dec.o_event.valid):
                    m.d.sync += [reply_cmd.eq(ev.cmd | REPLY_FLAG), reply_seq.eq(ev.seq),
                                 in_order.eq(0), quiet.eq(0)]
                    with m.If(ev.status != Status.OK):
                        m.d.sync += [reply_cmd.eq(NACK), rx_errors.eq(rx_errors + 1)]
                        reply(ev.status)
                    with m.Else():
                        m.d.sync += frames.eq(frames + 1)
                        with m.Switch(ev.cmd):
                            with m.Case(Cmd.INFO, Cmd.STATUS, Cmd.RESET):
                                with m.If(ev.length != 0):
                                    reply(Status.BAD_LENGTH)
                                with m.Elif(ev.cmd == Cmd.INFO):
                                    reply(Status.OK, 1)
                                with m.Elif(ev.cmd == Cmd.STATUS):
                                    reply(Status.OK, 2)
                                with m.Else():
                                    m.d.sync += [c_valid.eq(0), frames.eq(0), next_seq.eq(0),
                                                 rx_errors.eq(0), last_error.eq(0)]
                                    reply(Status.OK)
                            with m.Case(*sorted(protocol.SEQUENCED)):
                                # Exactly once, in order: anything but the next sequence
                                # number is refused without being executed.
                                with m.If(ev.seq != next_seq):
                                    reply(Status.OUT_OF_ORDER)
                                with m.Else():
                                    m.d.sync += [in_order.eq(1),
                                                 is_read.eq(ev.cmd == Cmd.READ_C)]
                                    with m.Switch(ev.cmd):
                                        with m.Case(Cmd.WRITE_A, Cmd.WRITE_B):
                                            m.d.sync += is_b.eq(ev.cmd == Cmd.WRITE_B)
                                            m.next = "WRITE_LEN"
                                        with m.Case(Cmd.COMPUTE):
                                            m.next = "COMPUTE_CHECK"
                                        with m.Default():
                                            m.next = "READ_CHECK"
                            with m.Default():
                                reply(Status.UNKNOWN_CMD)

            with m.State("WRITE_LEN"):
                # The expected length (a multiply) gets a cycle of its own.
                m.d.sync += w_prod.eq(w_count * w_bytes)
                m.next = "WRITE_CHECK"

            with m.State("WRITE_CHECK"):
                cap = Mux(is_b, eng.b_blocks, eng.a_blocks)
                m.d.sync += [waddr.eq(a["start"]), remaining.eq(a["count"]),
                             last_block.eq(a["count"] == 1), block_end.eq(0),
                             is_bfp.eq(wargs.wire == Wire.BFP), bcount.eq(0),
                             quiet.eq((wargs.flags & Flag.QUIET) != 0)]
                with m.If(ev.length < ARGS_BYTES):
                    reply(Status.BAD_LENGTH)
                with m.Elif((wargs.wire > Wire.BFP) | ((wargs.flags & ~int(Flag.QUIET)) != 0)):
                    reply(Status.BAD_ARG)
                with m.Elif((wargs.wire == Wire.FLOAT) & (not float_wire)):
                    reply(Status.UNSUPPORTED)
                with m.Elif(w_body != w_prod):      # ev.length >= ARGS_BYTES here
                    reply(Status.BAD_LENGTH)
                with m.Elif(a["start"] + a["count"] > cap):
                    reply(Status.CAPACITY)
                with m.Elif(wargs.count == 0):
                    m.next = "WRITE_EMPTY"
                with m.Else():
                    m.d.sync += [loading.eq(1), writing.eq(1)]
                    m.next = "WRITE_LOAD"

            with m.State("WRITE_EMPTY"):
                succeed()

            with m.State("WRITE_LOAD"):
                # (vec and bcount advance on `loading`, outside the FSM.)
                with m.If(block_end):
                    m.d.sync += [bcount.eq(0), loading.eq(0), block_end.eq(0)]
                    if float_wire:
                        with m.If(is_bfp):
                            m.next = "WRITE_STORE"
                        with m.Else():
                            m.next = "QUANTIZE"
                    else:
                        m.next = "WRITE_STORE"

            if float_wire:
                with m.State("QUANTIZE"):
                    m.d.comb += q.i_stream.valid.eq(1)
                    with m.If(q.i_stream.ready):
                        m.next = "QUANTIZE_WAIT"

                with m.State("QUANTIZE_WAIT"):
                    with m.If(q_valid):
                        m.d.comb += [block.eq(q_block), block_we.eq(1)]
                        m.d.sync += [waddr.eq(waddr + 1), remaining.eq(remaining - 1),
                                     last_block.eq(remaining == 2)]
                        with m.If(last_block):
                            m.d.sync += writing.eq(0)
                            succeed()
                        with m.Else():
                            m.d.sync += loading.eq(1)
                            m.next = "WRITE_LOAD"

            with m.State("WRITE_STORE"):
                m.d.comb += [block.eq(block_from_wire), block_we.eq(1)]
                m.d.sync += [waddr.eq(waddr + 1), remaining.eq(remaining - 1),
                             last_block.eq(remaining == 2)]
                with m.If(last_block):
                    m.d.sync += writing.eq(0)
                    succeed()
                with m.Else():
                    m.d.sync += loading.eq(1)
                    m.next = "WRITE_LOAD"

            with m.State("COMPUTE_CHECK"):
                m.d.sync += [quiet.eq((cargs.flags & Flag.QUIET) != 0)]
                flags_ok = (cargs.flags & ~int(Flag.QUIET | Flag.ACCUMULATE | Flag.READBACK)) == 0
                with m.If(ev.length != COMPUTE_ARGS_LAYOUT.size // 8):
                    reply(Status.BAD_LENGTH)
                with m.Elif(~flags_ok | (((cargs.flags & Flag.QUIET) != 0) & readback)):
                    reply(Status.BAD_ARG)
                with m.Elif((cargs.m == 0) | (cargs.n == 0) | (cargs.k == 0)):
                    reply(Status.BAD_ARG)
                with m.Else():
                    m.next = "COMPUTE_MUL"

            with m.State("COMPUTE_MUL"):
                m.next = "COMPUTE_SUM"          # the check products are valid next cycle

            with m.State("COMPUTE_SUM"):
                m.d.sync += [prod_a.eq(a["a_base"] + mul[0]), prod_b.eq(a["b_base"] + mul[1]),
                             prod_c.eq(a["c_base"] + mul[2])]
                m.next = "COMPUTE_CMP"

            with m.State("COMPUTE_CMP"):
                m.next = "COMPUTE_CHECK2"       # compute_over is valid next cycle

            with m.State("COMPUTE_CHECK2"):
                with m.If(compute_over):
                    reply(Status.CAPACITY)
                with m.Elif(accumulate & ~c_valid):
                    reply(Status.NO_RESULT)
                with m.Elif(accumulate & ((a["m"] != c_rows) | (a["n"] != c_cols)
                                          | (a["c_base"] != c_at))):
                    reply(Status.MISMATCH)
                with m.Else():
                    m.d.sync += c_valid.eq(0)
                    m.next = "COMPUTE_START"

            with m.State("COMPUTE_START"):
                m.d.comb += eng.start.eq(1)
                m.next = "COMPUTE_RUN"

            with m.State("COMPUTE_RUN"):
                with m.If(eng.done):
                    m.d.sync += [c_valid.eq(1), c_rows.eq(a["m"]), c_cols.eq(a["n"]),
                                 c_at.eq(a["c_base"]),
                                 rd_row_base.eq(a["c_base"]), rd_col.eq(0),
                                 rd_cols.eq(a["n"]), rd_groups.eq(groups_req)]
                    succeed(3)
                    with m.If(readback):
                        m.d.sync += read_count.eq(prod_mn)

            with m.State("READ_CHECK"):
                m.d.sync += [rd_col.eq(a["col"]), rd_cols.eq(a["cols"]),
                             rd_groups.eq(read_groups)]
                with m.If(ev.length != READ_ARGS_LAYOUT.size // 8):
                    reply(Status.BAD_LENGTH)
                with m.Elif(rargs.flags != 0):
                    reply(Status.BAD_ARG)
                with m.Elif(~c_valid):
                    reply(Status.NO_RESULT)
                with m.Elif((a["row"] >= a["rows"]) | (a["col"] >= a["cols"])
                            | (read_words > protocol.MAX_READ_WORDS)):
                    reply(Status.CAPACITY)
                with m.Else():
                    m.next = "READ_MUL"

            with m.State("READ_MUL"):
                m.next = "READ_SUM"             # the check products are valid next cycle

            with m.State("READ_SUM"):
                m.d.sync += [prod_a.eq(mul[0] + a["col"] + read_words), prod_b.eq(mul[1]),
                             prod_c.eq(a["base"] + mul[2]),
                             rd_row_base.eq(a["base"] + mul[3])]
                m.next = "READ_CMP"

            with m.State("READ_CMP"):
                m.next = "READ_CHECK2"          # read_over is valid next cycle

            with m.State("READ_CHECK2"):
                with m.If(read_over):
                    reply(Status.CAPACITY)
                with m.Else():
                    m.d.sync += [status.eq(Status.OK), reply_kind.eq(0),
                                 read_count.eq(read_words)]
                    m.next = "SEND"

            # -- reply: header, fixed part, then `read_count` words of C ----------------------
            # The command has executed: the event is released as the reply starts, so the
            # decoder receives the next frame while the reply is sent. From here on nothing
            # depends on the event, its arguments or the payload RAM (the registers derived
            # from them every cycle, `a`, `w_body`, `read_words` and the check products, change
            # with the next frame): the reply uses `status`, `reply_cmd`, `reply_seq`,
            # `reply_kind`, `read_count`, the `rd_*` readout registers and the device state.
            with m.State("SEND"):
                hdr = enc.i_header.payload
                m.d.comb += [
                    enc.i_header.valid.eq(1),
                    hdr.cmd.eq(reply_cmd), hdr.seq.eq(reply_seq),
                    hdr.length.eq(fixed_len + (read_count << 2)),
                ]
                with m.If(status != Status.OK):
                    m.d.sync += last_error.eq(status)
                with m.If(enc.i_header.ready):
                    # One cycle per frame: SEND is left in this cycle.
                    m.d.comb += dec.o_event.ready.eq(1)
                    m.d.sync += [tx_index.eq(0), released.eq(1), fixed_last.eq(fixed_len - 1)]
                    if latch_fixed:
                        m.d.sync += fixed_sr.eq(fixed)
                    m.next = "SEND_FIXED"

            with m.State("SEND_FIXED"):
                m.d.comb += enc.i_stream.valid.eq(1)
                if latch_fixed:
                    m.d.comb += enc.i_stream.payload.eq(fixed_sr[:8])
                    with m.If(enc.i_stream.ready):
                        m.d.sync += fixed_sr.eq(fixed_sr >> 8)
                else:
                    m.d.comb += enc.i_stream.payload.eq(fixed.word_select(tx_index, 8))
                with m.If(enc.i_stream.ready):
                    m.d.sync += tx_index.eq(tx_index + 1)
                    with m.If(tx_index == fixed_last):
                        with m.If(read_count != 0):
                            m.next = "SEND_C_ADDR"
                        with m.Else():
                            m.next = "DONE"

            with m.State("SEND_C_ADDR"):
                m.next = "SEND_C_WAIT"         # the address is applied; data two cycles on

            with m.State("SEND_C_WAIT"):
                m.next = "SEND_C_LATCH"

            with m.State("SEND_C_LATCH"):
                m.d.sync += [word.eq(eng.c_rdata), byte_index.eq(0)]
                with m.If(rd_col + 1 == rd_cols):
                    m.d.sync += [rd_col.eq(0), rd_row_base.eq(rd_row_base + rd_groups)]
                with m.Else():
                    m.d.sync += rd_col.eq(rd_col + 1)
                m.next = "SEND_C_BYTES"

            with m.State("SEND_C_BYTES"):
                m.d.comb += [enc.i_stream.valid.eq(1),
                             enc.i_stream.payload.eq(word.word_select(byte_index[:2], 8))]
                with m.If(enc.i_stream.ready):
                    m.d.sync += byte_index.eq(byte_index + 1)
                    with m.If(byte_index == 3):
                        m.d.sync += read_count.eq(read_count - 1)
                        with m.If(read_count == 1):
                            m.next = "DONE"
                        with m.Else():
                            m.next = "SEND_C_ADDR"

            with m.State("DONE"):
                # A frame without a reply (QUIET success) releases its event here; one that was
                # replied to released it in SEND, and the decoder's event now (if valid) is the
                # next frame's, which IDLE takes.
                m.d.comb += dec.o_event.ready.eq(~released)
                m.d.sync += released.eq(0)
                # A sequenced frame that succeeded has been executed: the next one may follow.
                # One that failed its checks keeps the sequence number, so no later frame runs
                # after it until the host has seen (or asked STATUS about) the failure.
                with m.If(in_order & (status == Status.OK)):
                    m.d.sync += next_seq.eq(next_seq + 1)
                m.next = "IDLE"
        # Busy: a command executes or a frame waits, unless the reply path is full (the device
        # then waits for the link to take a byte).
        m.d.comb += self.busy.eq((~fsm.ongoing("IDLE") | dec.o_event.valid)
                                 & ~(enc.o_stream.valid & ~enc.o_stream.ready))
        return m

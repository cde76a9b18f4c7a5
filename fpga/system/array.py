"""The GEMM engine: the A, B and C buffers and the array of block dot-product units.

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

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hbfp_hw.rtl_gen.block_dot import (
    TERM_BUFFER_LATENCY,
    BlockDotUnit,
    block_dot_input_layout,
)
from hbfp_hw.rtl_gen.common import check_rtl_format, platform_family
from hbfp_hw.rtl_gen.layout import block_layout

__all__ = ["BlockDotUnit", "block_dot_input_layout", "GemmEngine", "check_int", "c_readout",
           "bc_banks", "engine_members"]


def check_int(name, value, lo, hi=None):
    """Return ``value``; raise TypeError unless it is an integer, ValueError unless it is in
    ``lo..hi`` (``hi`` None: no upper bound)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ValueError(f"{name} must be {rng}, not {value!r}")
    return value


def _check_pow2(name, value, lo, hi):
    check_int(name, value, lo, hi)
    if value & (value - 1):
        raise ValueError(f"{name} must be a power of two between {lo} and {hi}, not {value!r}")
    return value


def engine_members(engine):
    """The members of a GEMM engine (see :class:`GemmEngine`), from its capacities."""
    blk = block_layout(engine.fmt)
    return {
        "a_we": In(1), "a_waddr": In(range(engine.a_blocks)), "a_wdata": In(blk),
        "b_we": In(1), "b_waddr": In(range(engine.b_blocks)), "b_wdata": In(blk),
        "c_rlane": In(range(engine.lanes)), "c_raddr": In(range(engine.c_depth)),
        "c_rdata": Out(32),
        "start": In(1), "m": In(range(engine.max_m + 1)),
        "groups": In(range(engine.max_groups + 1)),
        "kblocks": In(range(engine.max_kblocks + 1)),
        "a_base": In(range(engine.a_blocks)), "b_base": In(range(engine.b_depth)),
        "c_base": In(range(engine.c_depth)), "accumulate": In(1),
        "busy": Out(1), "done": Out(1), "cycles": Out(32), "overrun": Out(1),
    }


def bc_banks(m, engine, running, c_addrs):
    """Add ``engine``'s B and C banks and the B write ports; return the B read ports, the C
    read ports (addressed at ``c_addrs[lane]`` while ``running``, at ``c_raddr`` otherwise)
    and the C write ports, one of each per lane."""
    blk = block_layout(engine.fmt)
    lane_bits = (engine.lanes - 1).bit_length()
    b_rds, c_rds, c_wrs = [], [], []
    for lane in range(engine.lanes):
        b_mem = Memory(shape=blk, depth=engine.b_depth, init=[])
        c_mem = Memory(shape=unsigned(32), depth=engine.c_depth, init=[])
        m.submodules[f"b_mem{lane}"] = b_mem
        m.submodules[f"c_mem{lane}"] = c_mem
        b_wr = b_mem.write_port()
        m.d.comb += [
            b_wr.en.eq(engine.b_we & ((engine.b_waddr[:lane_bits] == lane) if lane_bits
                                      else 1)),
            b_wr.addr.eq(engine.b_waddr >> lane_bits),
            b_wr.data.eq(engine.b_wdata),
        ]
        b_rds.append(b_mem.read_port())
        # The C read port is shared: the engine reads the start values of an accumulating
        # computation through it while it runs; the host reads results when it does not.
        c_rd = c_mem.read_port()
        m.d.comb += c_rd.addr.eq(Mux(running, c_addrs[lane], engine.c_raddr))
        c_rds.append(c_rd)
        c_wrs.append(c_mem.write_port())
    return b_rds, c_rds, c_wrs


def c_readout(m, platform, engine, c_rds):
    """Drive ``engine.c_rdata`` from the C bank ``engine.c_rlane``, two cycles after the
    address (``c_rds``: the banks' read ports)."""
    # The block RAMs' read data is registered before the bank multiplexer: from a DP16KD
    # without its output register (a slow clock-to-output) through the multiplexer into
    # the readout was once the ULX3S critical path (docs/hardware.md has the figures).
    rlane = Signal.like(engine.c_rlane, name="rlane")
    rlane2 = Signal.like(engine.c_rlane, name="rlane2")
    m.d.sync += [rlane.eq(engine.c_rlane), rlane2.eq(rlane)]
    # (Not on the iCE40, whose block RAMs are fast and whose flip-flops are logic cells:
    # there the read data is held, as the address is, until the readout takes it.)
    if platform_family(platform) == "ice40":
        c_q = [rd.data for rd in c_rds]
    else:
        c_q = [Signal(32, name=f"c_q{lane}", reset_less=True)
               for lane in range(engine.lanes)]
        m.d.sync += [q.eq(rd.data) for q, rd in zip(c_q, c_rds, strict=True)]
    c_data = c_q[0]
    for lane in range(1, engine.lanes):
        c_data = Mux(rlane2 == lane, c_q[lane], c_data)
    m.d.comb += engine.c_rdata.eq(c_data)


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
        super().__init__(engine_members(self))

    @staticmethod
    def check_params(fmt, *, lanes, channels, a_blocks, b_blocks, c_words, mac_stages,
                     convert_stages, adder_stages):
        """Validate the constructor parameters; return them as a dict (``channels`` resolved).

        Raises
        ------
        TypeError, ValueError
            As the constructor.
        """
        check_rtl_format(fmt, minifloat=True)
        _check_pow2("lanes", lanes, 1, 64)
        if channels is None:
            channels = adder_stages
        check_int("channels", channels, 1, 256)
        check_int("a_blocks", a_blocks, 1, 1 << 24)
        check_int("b_blocks", b_blocks, lanes, 1 << 24)
        check_int("c_words", c_words, lanes, 1 << 24)
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
        running = Signal()
        c_init_addr = Signal(range(self.c_depth))
        a_rd = self._a_buffer(m)
        b_rds, c_rds, c_wrs = bc_banks(m, self, running, [c_init_addr] * self._lanes)
        c_readout(m, platform, self, c_rds)
        units = []
        for lane in range(self._lanes):
            unit = BlockDotUnit(self._fmt, **self._unit_params, init=True)
            m.submodules[f"unit{lane}"] = unit
            units.append(unit)

        issue = _IssueState(self)
        # -- buffer reads at the issue schedule's position ----------------------------------
        m.d.comb += [a_rd.addr.eq(self.a_base + issue.a_row + issue.kb),
                     c_init_addr.eq(self.c_base + issue.init_index)]
        for rd in b_rds:
            m.d.comb += rd.addr.eq(self.b_base + issue.b_pass + issue.ckb)
        s3_valid = self._operands(m, issue, a_rd, b_rds, c_rds, units)
        self._issue(m, issue)
        total_m, total_groups, written, finished = self._write_back(m, units, c_wrs)

        # -- control: start, completion, cycle count -----------------------------------------
        m.d.comb += self.busy.eq(running)
        with m.If(running):
            m.d.sync += self.cycles.eq(self.cycles + 1)
            with m.If(~issue.issuing & ~issue.s2_valid & ~s3_valid & finished):
                m.d.sync += running.eq(0)
                m.d.comb += self.done.eq(1)
        with m.Elif(self.start):
            m.d.sync += [running.eq(1), self.cycles.eq(0), *issue.start(self),
                         total_m.eq(self.m), total_groups.eq(self.groups)]
            m.d.sync += [w.eq(0) for w in written]
        return m

    def _a_buffer(self, m):
        """Add the A buffer and its write port; return its read port."""
        m.submodules.a_mem = a_mem = Memory(shape=block_layout(self._fmt),
                                            depth=self._a_blocks, init=[])
        a_wr = a_mem.write_port()
        a_rd = a_mem.read_port()
        m.d.comb += [a_wr.en.eq(self.a_we), a_wr.addr.eq(self.a_waddr),
                     a_wr.data.eq(self.a_wdata)]
        return a_rd


    def _operands(self, m, issue, a_rd, b_rds, c_rds, units):
        """Register the buffer read data and the flags of ``issue`` (stage s3) and give them
        to the units; record refused block pairs in ``overrun``. Return s3's valid bit."""
        # s3: the buffer read data and the flags of s2, registered before they fan out to the
        # units (the block RAMs' clock-to-output is long).
        blk = block_layout(self._fmt)
        ch = self._channels
        s3_valid = Signal(name="s3_valid")
        s3_channel = Signal(range(ch), name="s3_channel")
        s3_first = Signal(name="s3_first")
        s3_last = Signal(name="s3_last")
        s3_init = Signal(name="s3_init")
        s3_a = Signal(blk, name="s3_a")
        s3_b = [Signal(blk, name=f"s3_b{lane}") for lane in range(self._lanes)]
        s3_c = [Signal(32, name=f"s3_c{lane}") for lane in range(self._lanes)]
        m.d.sync += [
            s3_valid.eq(issue.s2_valid), s3_channel.eq(issue.s2_channel),
            s3_first.eq(issue.s2_first), s3_last.eq(issue.s2_last), s3_init.eq(issue.s2_init),
            s3_a.eq(a_rd.data),
        ]
        m.d.sync += [s3_b[lane].eq(b_rds[lane].data) for lane in range(self._lanes)]
        m.d.sync += [s3_c[lane].eq(c_rds[lane].data) for lane in range(self._lanes)]
        # The schedule guarantees that every unit takes what it is given; `overrun` records
        # (until reset) if one ever did not.
        refused = Signal()
        m.d.comb += refused.eq(s3_valid & ~Cat(*[u.i_stream.ready for u in units]).all())
        with m.If(refused):
            m.d.sync += self.overrun.eq(1)
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
        return s3_valid

    def _issue(self, m, issue):
        """Step the issue schedule (the registers of ``issue``) and register the flags of the
        block pair whose buffers are read in this cycle (stage s2)."""
        ch = self._channels
        # Slot c of a round issues column group c of the pass if c < pass_groups; the rest of
        # the round (up to round_len) is idle.
        c, kb, ckb = issue.c, issue.kb, issue.ckb
        in_pass = Signal()
        m.d.comb += in_pass.eq(c < issue.pass_groups)
        m.d.sync += [
            issue.s2_valid.eq(issue.issuing & in_pass),
            issue.s2_channel.eq(c),
            issue.s2_init.eq(issue.init_round),
            # An init term starts the sum; without one the first k-block does.
            issue.s2_first.eq(issue.init_round | ((kb == 0) & ~self.accumulate)),
            issue.s2_last.eq(~issue.init_round & (kb == self.kblocks - 1)),
        ]
        with m.If(issue.issuing & issue.init_round):
            with m.If(in_pass):
                m.d.sync += issue.init_index.eq(issue.init_index + 1)
            with m.If(c + 1 < issue.round_len):
                m.d.sync += c.eq(c + 1)
            with m.Else():
                m.d.sync += [c.eq(0), issue.init_round.eq(0)]
        with m.Elif(issue.issuing):
            with m.If(c + 1 < issue.round_len):
                m.d.sync += c.eq(c + 1)
                with m.If(c + 1 < issue.pass_groups):
                    m.d.sync += ckb.eq(ckb + self.kblocks)
            with m.Else():
                m.d.sync += c.eq(0)
                with m.If(kb + 1 < self.kblocks):
                    m.d.sync += [kb.eq(kb + 1), ckb.eq(kb + 1)]
                with m.Else():
                    m.d.sync += [kb.eq(0), ckb.eq(0), issue.init_round.eq(self.accumulate)]
                    with m.If(issue.left > ch):
                        rest = issue.left - ch
                        # ckb = c * KB + kb is now (ch - 1) * KB + KB - 1: the next pass
                        # starts ch * KB further on, without a multiplier on the path.
                        m.d.sync += [issue.b_pass.eq(issue.b_pass + ckb + 1),
                                     issue.left.eq(rest), *issue.pass_size(rest)]
                    with m.Else():
                        m.d.sync += [issue.b_pass.eq(0), issue.left.eq(self.groups),
                                     *issue.pass_size(self.groups)]
                        with m.If(issue.row + 1 < self.m):
                            m.d.sync += [issue.row.eq(issue.row + 1),
                                         issue.a_row.eq(issue.a_row + self.kblocks)]
                        with m.Else():
                            m.d.sync += issue.issuing.eq(0)

    def _write_back(self, m, units, c_wrs):
        """Write every unit's results to its own C bank, in order. Return the registers that
        ``start`` loads with ``m`` and ``groups``, the per-lane counts of written results
        (``start`` clears them) and whether every count has reached ``m * groups``."""
        # total = m * groups, the results to wait for: the multiply gets a cycle of its own
        # after start (the completion check runs three cycles later at the earliest).
        total = Signal(range(self.c_depth + 1), name="total")
        total_m = Signal.like(self.m, name="total_m")
        total_groups = Signal.like(self.groups, name="total_groups")
        m.d.sync += total.eq(total_m * total_groups)
        written = [Signal(range(self.c_depth + 1), name=f"written{lane}")
                   for lane in range(self._lanes)]
        for lane, unit in enumerate(units):
            m.d.comb += [
                unit.o_stream.ready.eq(1),
                c_wrs[lane].en.eq(unit.o_stream.valid),
                c_wrs[lane].addr.eq(self.c_base + written[lane]),
                c_wrs[lane].data.eq(unit.o_stream.payload.value),
            ]
            with m.If(unit.o_stream.valid):
                m.d.sync += written[lane].eq(written[lane] + 1)
        finished = Cat(*[w == total for w in written]).all()
        return total_m, total_groups, written, finished


class _IssueState:
    """The registers of :class:`GemmEngine`'s issue schedule.

    The engine never stalls: it issues at most one block pair per cycle, and no term of a
    channel follows the one before it by fewer than ``spacing`` cycles (the units'
    ``min_channels``), so no accumulator waits on a read-after-write hazard and, with C always
    taking results, no unit ever holds its input ready low. A pass of fewer column groups than
    that fills each round with idle slots instead (as the hazard stalls did before). Every
    register here loads every cycle: no ready-derived enable fans out from the lanes to the
    counters, buffer reads and operand registers (on the ULX3S that network was once the
    critical path, most of it routing; docs/history.md has the figures).
    """

    def __init__(self, engine):
        ch = self.ch = engine.channels
        spacing = self.spacing = engine._unit_params["adder_stages"]
        slots = max(ch, spacing)
        self.row = Signal.like(engine.m, name="row")
        self.kb = Signal.like(engine.kblocks, name="kb")
        self.c = Signal(range(slots), name="c")
        self.a_row = Signal(range(engine.a_blocks + 1), name="a_row")      # row * KB
        self.b_pass = Signal(range(engine.b_depth + 1), name="b_pass")     # g0 * KB
        self.ckb = Signal(range(engine.b_depth + 1), name="ckb")           # c * KB + kb
        # Issuing the start values of the pass (accumulate), and the element index of the
        # next start value.
        self.init_round = Signal(name="init_round")
        self.init_index = Signal(range(engine.c_depth + 1), name="init_index")
        # Column groups from the pass's first one on, and those of the pass (min(left, ch)):
        # registers updated once per pass, so no subtract-and-compare precedes the counters.
        self.left = Signal.like(engine.groups, name="left")
        self.pass_groups = Signal(range(ch + 1), name="pass_groups")
        self.round_len = Signal(range(slots + 1), name="round_len")  # max(pass_groups, spacing)
        self.issuing = Signal(name="issuing")
        # s2: the flags of the block pair whose buffers are read.
        self.s2_valid = Signal(name="s2_valid")
        self.s2_channel = Signal(range(ch), name="s2_channel")
        self.s2_first = Signal(name="s2_first")
        self.s2_last = Signal(name="s2_last")
        self.s2_init = Signal(name="s2_init")

    def pass_size(self, groups):
        """Return the assignments of ``pass_groups`` and ``round_len`` for a pass over
        ``groups`` column groups or more."""
        ch, spacing = self.ch, self.spacing
        return [self.pass_groups.eq(Mux(groups < ch, groups, ch)),
                self.round_len.eq(Mux(groups < ch, Mux(groups < spacing, spacing, groups),
                                      max(ch, spacing)))]

    def start(self, engine):
        """Return the assignments that start ``engine``'s computation."""
        return [self.issuing.eq(1), self.row.eq(0), self.kb.eq(0), self.c.eq(0),
                self.a_row.eq(0), self.b_pass.eq(0), self.ckb.eq(0),
                self.left.eq(engine.groups), *self.pass_size(engine.groups),
                self.init_round.eq(engine.accumulate), self.init_index.eq(0)]

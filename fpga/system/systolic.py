"""The GEMM engine on the systolic array: buffers, the pass sequencer and the skewed edges.

:class:`SystolicEngine` has :class:`~hbfp_hw.fpga.system.array.GemmEngine`'s members and
buffer organization (docs/protocol.md: A by block index, B and C in ``lanes`` banks), so the
host sees the same device; it computes on a
:class:`~hbfp_hw.rtl_gen.systolic.SystolicArray` of ``rows x lanes`` PEs instead of ``lanes``
dot-product units:

- a *pass* multiplies ``rows`` k-blocks (a *chunk*) of every row of A by those of the
  ``lanes`` columns of a column group; its B blocks are loaded into the PEs while the
  previous pass computes. Passes run chunk-major: every column group of chunk 0, then of
  chunk 1, and so on;
- a column's starting sums are +0.0 in chunk 0 (unless ``accumulate``) and otherwise the
  C values the previous chunk wrote, read at the top as its results are written at the
  bottom, so each element of C is the contract's sum in increasing k order. Before a chunk
  after the first, the sequencer waits until the array has drained;
- A is held in ``rows`` replicas (one read port per array row); row ``i`` reads its replica
  :attr:`~hbfp_hw.rtl_gen.systolic.SystolicArray.row_skew` cycles after row ``i - 1``, and
  column ``c`` of B and C one cycle after column ``c - 1``, through chains of registers along
  the edges, so the array's skew costs no operand delay lines. Every buffer read is
  registered before it enters the array.
"""

from amaranth.hdl import Cat, Module, Mux, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.memory import Memory

from hbfp_hw.rtl_gen.layout import block_layout
from hbfp_hw.rtl_gen.systolic import MAX_ROWS, SystolicArray

from .array import _check_pow2, bc_banks, c_readout, check_int, engine_members

__all__ = ["SystolicEngine"]

#: Cycles from a buffer read request to the array's port: the read and the register after it.
READ_LATENCY = 2


class SystolicEngine(wiring.Component):
    """Buffers and a ``rows x lanes`` systolic array computing ``C = A @ B``.

    Parameters
    ----------
    fmt : BFPFormat
    rows : int
        k-blocks per pass (array rows), 1..64.
    lanes : int
        Array columns, a power of two 1..64; column ``l`` computes the columns ``n`` of C with
        ``n % lanes == l``.
    a_blocks, b_blocks, c_words : int
        As :class:`~hbfp_hw.fpga.system.array.GemmEngine`.
    product_stages, convert_stages, adder_stages : int
        Pipeline depths of the PEs (:class:`~hbfp_hw.rtl_gen.systolic.ProcessingElement`).
    multipliers : {"dsp", "lut"}
    dsp_pes : int or None
        As :class:`~hbfp_hw.rtl_gen.systolic.SystolicArray`.

    Members
    -------
    The members of :class:`~hbfp_hw.fpga.system.array.GemmEngine`, with the same meaning.
    ``overrun`` is set (until reset) if a result leaves the array when the write-back did
    not expect one, or the other way round: the schedule makes that impossible, and the bit
    is there to check it. The array has no reset: for its
    :attr:`~hbfp_hw.rtl_gen.systolic.SystolicArray.flush` cycles after a reset, a ``start``
    waits (``busy`` is high).
    """

    def __init__(self, fmt, *, rows, lanes, a_blocks, b_blocks, c_words, product_stages,
                 convert_stages, adder_stages, multipliers="dsp", dsp_pes=None):
        self.check_params(fmt, rows=rows, lanes=lanes, a_blocks=a_blocks, b_blocks=b_blocks,
                          c_words=c_words, product_stages=product_stages,
                          convert_stages=convert_stages, adder_stages=adder_stages,
                          multipliers=multipliers, dsp_pes=dsp_pes)
        self._dsp_pes = dsp_pes
        self._fmt = fmt
        self._rows, self._lanes = rows, lanes
        self._a_blocks, self._b_blocks, self._c_words = a_blocks, b_blocks, c_words
        self._array_params = dict(product_stages=product_stages, convert_stages=convert_stages,
                                  adder_stages=adder_stages, multipliers=multipliers)
        # The geometry of the array (its latencies), without elaborating one.
        self._geometry = SystolicArray.geometry(fmt, rows=rows, cols=lanes,
                                                **self._array_params)
        super().__init__(engine_members(self))

    @staticmethod
    def check_params(fmt, *, rows, lanes, a_blocks, b_blocks, c_words, product_stages,
                     convert_stages, adder_stages, multipliers="dsp", dsp_pes=None):
        """Validate the parameters; return them as a dict.

        Raises
        ------
        TypeError, ValueError
            Naming the parameter and its range.
        """
        check_int("rows", rows, 1, MAX_ROWS)
        _check_pow2("lanes", lanes, 1, 64)
        check_int("a_blocks", a_blocks, 1, 1 << 24)
        for name, value in (("b_blocks", b_blocks), ("c_words", c_words)):
            check_int(name, value, lanes, 1 << 24)
            if value % lanes:
                raise ValueError(f"{name} must be a multiple of lanes ({lanes}), not {value!r}")
        SystolicArray.geometry(fmt, rows=rows, cols=lanes, product_stages=product_stages,
                               convert_stages=convert_stages, adder_stages=adder_stages,
                               multipliers=multipliers)
        if dsp_pes is not None:
            check_int("dsp_pes", dsp_pes, 0, rows * lanes)
        return dict(rows=rows, lanes=lanes, a_blocks=a_blocks, b_blocks=b_blocks,
                    c_words=c_words, product_stages=product_stages,
                    convert_stages=convert_stages, adder_stages=adder_stages,
                    multipliers=multipliers, dsp_pes=dsp_pes)

    fmt = property(lambda self: self._fmt)
    rows = property(lambda self: self._rows)
    lanes = property(lambda self: self._lanes)
    a_blocks = property(lambda self: self._a_blocks)
    b_blocks = property(lambda self: self._b_blocks)
    c_words = property(lambda self: self._c_words)
    max_m = property(lambda self: min(self.c_depth, self._a_blocks))
    max_groups = property(lambda self: min(self.c_depth, self.b_depth))
    max_kblocks = property(lambda self: min(self._a_blocks, self.b_depth))
    b_depth = property(lambda self: self._b_blocks // self._lanes)
    c_depth = property(lambda self: self._c_words // self._lanes)

    @staticmethod
    def drain_for(fmt, *, rows, lanes, product_stages, convert_stages, adder_stages,
                  multipliers="dsp", **_unused):
        """:attr:`drain` of an engine with these parameters."""
        g = SystolicArray.geometry(fmt, rows=rows, cols=lanes, product_stages=product_stages,
                                   convert_stages=convert_stages, adder_stages=adder_stages,
                                   multipliers=multipliers)
        return (lanes - 1) + g.sum_offset + READ_LATENCY + g.latency + 1

    @property
    def drain(self):
        """Cycles from the request of a pass's last item to the write of its last result."""
        return self.drain_for(self._fmt, rows=self._rows, lanes=self._lanes,
                              **self._array_params)

    @property
    def latency(self):
        """Cycles from the request of the last item to ``done`` (at most)."""
        return self.drain + 3

    def elaborate(self, platform):
        m = Module()
        g = self._geometry
        rows, lanes = self._rows, self._lanes
        m.submodules.array = array = SystolicArray(self._fmt, rows=rows, cols=lanes,
                                                   dsp_pes=self._dsp_pes, **self._array_params)
        running = Signal()
        seq = _Sequencer(m, self, g)
        self._a_side(m, seq, array, g)
        self._c_engine_addr = [Signal(range(self.c_depth), name=f"c_eaddr{lane}")
                               for lane in range(lanes)]
        b_rds, c_rds, c_wrs = bc_banks(m, self, running, self._c_engine_addr)
        self._b_side(m, seq, array, b_rds)
        # The array has no reset: after one, it flushes; a start waits, results are ignored.
        flushing = Signal(range(g.flush + 1), init=g.flush, name="flushing")
        settled = Signal(name="settled")
        pending = Signal(name="pending")
        with m.If(flushing != 0):
            m.d.sync += flushing.eq(flushing - 1)
        m.d.sync += settled.eq(flushing == 0)
        self._c_side(m, seq, array, g, c_rds, c_wrs, settled)
        c_readout(m, platform, self, c_rds)

        # `start` comes from the executor's FSM and `done` goes back to it, across the die
        # from the sequencer: both are registered here (a cycle each), and so is the
        # sequencer's `go` (the start decision, from `settled` rather than the flush counter:
        # the decision straight into the enables of the sequencer's registers was the 4 x 4
        # array system's critical path, 90.0 MHz).
        start, done, go = Signal(name="start_r"), Signal(name="done_r"), Signal(name="go")
        m.d.sync += [start.eq(self.start), done.eq(0), go.eq(0)]
        m.d.comb += [self.busy.eq(running | pending), self.done.eq(done), seq.go.eq(go)]
        with m.If(running):
            m.d.sync += self.cycles.eq(self.cycles + 1)
            with m.If(seq.finished):
                m.d.sync += [running.eq(0), done.eq(1)]
        with m.Elif(start | pending):
            with m.If(settled):
                m.d.sync += [running.eq(1), pending.eq(0), self.cycles.eq(0), go.eq(1)]
            with m.Else():
                m.d.sync += pending.eq(1)
        return m

    # -- buffers --------------------------------------------------------------------------------

    def _a_side(self, m, seq, array, g):
        """Add the A replicas and the row chain: row ``i`` reads its replica ``row_skew``
        cycles after row ``i - 1``, at k-block ``i`` of the item's chunk."""
        blk = block_layout(self._fmt)
        request = seq.item            # {valid, swap, addr, kleft} of row 0, this cycle
        for i in range(self._rows):
            mem = Memory(shape=blk, depth=self._a_blocks, init=[])
            m.submodules[f"a_mem{i}"] = mem
            wr = mem.write_port()
            m.d.comb += [wr.en.eq(self.a_we), wr.addr.eq(self.a_waddr), wr.data.eq(self.a_wdata)]
            rd = mem.read_port()
            use = Signal(name=f"a_use{i}")
            m.d.comb += [rd.addr.eq(request["addr"] + i),
                         use.eq(request["valid"] & (request["kleft"] > i))]
            # The read data, registered (zero outside the chunk's k-blocks), with the flags
            # delayed to match.
            use1, swap1 = Signal(name=f"a_use1_{i}"), Signal(name=f"a_swap1_{i}")
            data = Signal(blk, name=f"a_data{i}", reset_less=True)
            swap2 = Signal(name=f"a_swap2_{i}")
            m.d.sync += [use1.eq(use), swap1.eq(request["swap"]), swap2.eq(swap1),
                         data.eq(Mux(use1, rd.data, 0))]
            m.d.comb += [array.a[i].data.eq(data), array.a[i].swap.eq(swap2)]
            if i + 1 < self._rows:
                request = _delay(m, request, g.row_skew, name=f"a_req{i + 1}")

    def _b_side(self, m, seq, array, b_rds):
        """Connect the B loader's requests to the banks through the column chain."""
        blk = block_layout(self._fmt)
        request = seq.load            # {valid, row, addr, zero} of column 0, this cycle
        for lane in range(self._lanes):
            rd = b_rds[lane]
            m.d.comb += rd.addr.eq(request["addr"])
            valid1 = Signal(name=f"b_valid1_{lane}")
            zero1 = Signal(name=f"b_zero1_{lane}")
            row1 = Signal(range(self._rows), name=f"b_row1_{lane}")
            word = array.b[lane]
            data = Signal(blk, name=f"b_data{lane}", reset_less=True)
            valid2 = Signal(name=f"b_valid2_{lane}")
            row2 = Signal(range(self._rows), name=f"b_row2_{lane}")
            m.d.sync += [valid1.eq(request["valid"]), zero1.eq(request["zero"]),
                         row1.eq(request["row"]), valid2.eq(valid1), row2.eq(row1),
                         data.eq(Mux(zero1, 0, rd.data))]
            m.d.comb += [word.valid.eq(valid2), word.row.eq(row2), word.data.eq(data)]
            if lane + 1 < self._lanes:
                request = _delay(m, request, 1, name=f"b_req{lane + 1}")

    def _c_side(self, m, seq, array, g, c_rds, c_wrs, settled):
        """Starting sums at the top (from C, or +0.0), results to C at the bottom (once the
        array has ``settled`` after a reset)."""
        request = _delay(m, seq.top, g.sum_offset, name="c_top0")   # {valid, from_c, addr}
        # The bottom: column 0's write address leaves the array with its result.
        bottom = _delay(m, request, READ_LATENCY + g.latency, name="c_bot0")
        mismatch = []
        for lane in range(self._lanes):
            m.d.comb += self._c_engine_addr[lane].eq(request["addr"])
            valid1, from1 = Signal(name=f"c_valid1_{lane}"), Signal(name=f"c_from1_{lane}")
            valid2 = Signal(name=f"c_valid2_{lane}")
            value = Signal(32, name=f"c_start{lane}", reset_less=True)
            m.d.sync += [valid1.eq(request["valid"]), from1.eq(request["from_c"]),
                         valid2.eq(valid1), value.eq(Mux(from1, c_rds[lane].data, 0))]
            m.d.comb += [array.s_top[lane].valid.eq(valid2), array.s_top[lane].value.eq(value)]
            out = array.s_bottom[lane]
            m.d.comb += [c_wrs[lane].en.eq(out.valid & settled),
                         c_wrs[lane].addr.eq(bottom["addr"]), c_wrs[lane].data.eq(out.value)]
            mismatch.append(settled & (out.valid != bottom["valid"]))
            if lane + 1 < self._lanes:
                request = _delay(m, request, 1, name=f"c_top{lane + 1}")
                bottom = _delay(m, bottom, 1, name=f"c_bot{lane + 1}")
        with m.If(Cat(*mismatch).any()):
            m.d.sync += self.overrun.eq(1)


def _delay(m, fields, cycles, *, name):
    """Return ``fields`` (a dict of values) delayed by ``cycles`` registers. Only ``valid``
    is reset."""
    for k in range(cycles):
        out = {}
        for key, value in fields.items():
            reg = Signal(Value.cast(value).shape(), name=f"{name}_{key}{k}",
                         reset_less=key != "valid")
            m.d.sync += reg.eq(value)
            out[key] = reg
        fields = out
    return fields


class _Sequencer:
    """The pass schedule of :class:`SystolicEngine`, in row 0's time (one item per cycle).

    Members (driven each cycle)
    ---------------------------
    item : dict
        Row 0's request: ``valid`` (an A row of the current pass), ``swap`` (after this
        item, the PEs use the next pass's B), ``addr`` (A block of k-block 0 of the chunk),
        ``kleft`` (k-blocks left from the chunk's first).
    load : dict
        Column 0's B load request: ``valid``, ``row``, ``addr``, ``zero`` (k-block past K).
    top : dict
        Column 0's starting-sum request: ``valid``, ``from_c``, ``addr`` (C bank word).
    go : Signal, in
        Start (the engine's ``start`` accepted).
    finished : Signal
        Every result of the computation is in C.
    """

    def __init__(self, m, eng, g):
        self.go = Signal(name="seq_go")
        self.finished = Signal(name="seq_finished")
        rows = eng.rows
        kb, groups, mrows = eng.kblocks, eng.groups, eng.m
        # The position: pass (group, chunk) and item row; the running products of them.
        group = Signal.like(groups, name="group")
        row = Signal.like(mrows, name="row")
        chunk_k = Signal(range(eng.max_kblocks + rows + 1), name="chunk_k")  # chunk * rows
        b_group = Signal(range(eng.b_depth + 1), name="b_group")    # group * KB
        a_row = Signal(range(eng.a_blocks + 1), name="a_row")       # row * KB
        c_row = Signal(range(eng.c_depth + 1), name="c_row")        # row * groups
        # The loader issues its first word the cycle after its trigger, so two swaps are one
        # cycle further apart than the array needs.
        mp = g.min_pass + 1
        wait = Signal(range(max(mp, eng.drain) + 2), name="wait")
        since = Signal(range(mp + 1), name="since_swap")
        # The loader: its pass's first B word, the k-blocks left, its row and spacing.
        ld_busy = Signal(name="ld_busy")
        ld_addr = Signal(range(eng.b_depth + rows + 1), name="ld_addr")
        ld_kleft = Signal(range(eng.max_kblocks + 1), name="ld_kleft")
        ld_row = Signal(range(rows), name="ld_row")
        ld_gap = Signal(range(g.load_spacing + 1), name="ld_gap")
        # The next pass (the one the loader loads): its group and chunk offsets.
        nx_group = Signal.like(groups, name="nx_group")
        nx_chunk_k = Signal.like(chunk_k, name="nx_chunk_k")
        nx_b_group = Signal.like(b_group, name="nx_b_group")
        nx_last = Signal(name="nx_none")                            # no pass follows

        kleft = Signal(range(eng.max_kblocks + 1), name="kleft")
        m.d.comb += kleft.eq(kb - chunk_k)
        valid, swap = Signal(name="item_valid"), Signal(name="item_swap")
        self.item = {"valid": valid, "swap": swap, "addr": eng.a_base + a_row + chunk_k,
                     "kleft": kleft}
        self.top = {"valid": valid, "from_c": eng.accumulate | (chunk_k != 0),
                    "addr": eng.c_base + c_row + group}
        self.load = {"valid": ld_busy & (ld_gap == 0), "row": ld_row,
                     "addr": eng.b_base + ld_addr + ld_row, "zero": ld_row >= ld_kleft}

        def trigger_load():
            """Start loading the next pass (nx_*) and advance nx_* past it."""
            m.d.sync += [ld_busy.eq(~nx_last), ld_addr.eq(nx_b_group + nx_chunk_k),
                         ld_kleft.eq(kb - nx_chunk_k), ld_row.eq(0), ld_gap.eq(0)]
            with m.If(nx_group + 1 < groups):
                m.d.sync += [nx_group.eq(nx_group + 1), nx_b_group.eq(nx_b_group + kb)]
            with m.Else():
                m.d.sync += [nx_group.eq(0), nx_b_group.eq(0),
                             nx_chunk_k.eq(nx_chunk_k + rows)]
                with m.If(nx_chunk_k + rows >= kb):
                    m.d.sync += nx_last.eq(1)

        # The loader's steps.
        with m.If(ld_busy):
            with m.If(ld_gap == 0):
                with m.If(ld_row == rows - 1):
                    m.d.sync += ld_busy.eq(0)
                with m.Else():
                    m.d.sync += [ld_row.eq(ld_row + 1), ld_gap.eq(g.load_spacing - 1)]
            with m.Else():
                m.d.sync += ld_gap.eq(ld_gap - 1)
        with m.If(since != mp):
            m.d.sync += since.eq(since + 1)

        # Where the position is, in registers updated with it (the FSM's decisions from
        # comparisons of the counters were the critical path of a GemmSystem on the array):
        last_item = Signal(name="last_item")        # row + 1 == m
        last_group = Signal(name="last_group")      # group + 1 >= groups: a chunk ends
        last_chunk = Signal(name="last_chunk")      # chunk_k + rows >= kb

        def next_pass():
            """Move the position to the pass after the current one (the loader's order)."""
            m.d.sync += [row.eq(0), a_row.eq(0), c_row.eq(0), last_item.eq(mrows <= 1)]
            with m.If(~last_group):
                m.d.sync += [group.eq(group + 1), b_group.eq(b_group + kb),
                             last_group.eq(group + 2 >= groups)]
            with m.Else():
                m.d.sync += [group.eq(0), b_group.eq(0), chunk_k.eq(chunk_k + rows),
                             last_group.eq(groups <= 1), last_chunk.eq(chunk_k + 2 * rows >= kb)]

        last_pass = Signal(name="last_pass")
        m.d.comb += last_pass.eq(last_group & last_chunk)
        with m.FSM(name="seq"):
            with m.State("IDLE"):
                with m.If(self.go):
                    m.d.sync += [group.eq(0), row.eq(0), chunk_k.eq(0), b_group.eq(0),
                                 a_row.eq(0), c_row.eq(0), nx_group.eq(0), nx_chunk_k.eq(0),
                                 nx_b_group.eq(0), nx_last.eq(0), since.eq(mp),
                                 last_item.eq(mrows <= 1), last_group.eq(groups <= 1),
                                 last_chunk.eq(rows >= kb)]
                    m.next = "FIRST"
            with m.State("FIRST"):
                # Load the first pass, then wait until it is in the shadows.
                trigger_load()
                m.d.sync += wait.eq(mp)
                m.next = "WAIT"
            with m.State("WAIT"):
                with m.If(wait != 0):
                    m.d.sync += wait.eq(wait - 1)
                with m.Elif(since == mp):
                    m.next = "SWAP"
            with m.State("SWAP"):
                # An idle item that swaps: the current pass's B is in use after it.
                m.d.comb += swap.eq(1)
                m.d.sync += since.eq(1)
                trigger_load()
                m.next = "ITEMS"
            with m.State("ITEMS"):
                m.d.comb += valid.eq(1)
                with m.If(~last_item):
                    m.d.sync += [row.eq(row + 1), a_row.eq(a_row + kb), c_row.eq(c_row + groups),
                                 last_item.eq(row + 2 >= mrows)]
                with m.Elif(last_pass):
                    m.d.sync += wait.eq(eng.drain)
                    m.next = "DRAIN"
                with m.Elif(last_group):
                    # The next chunk starts from these results: wait until they are in C.
                    next_pass()
                    m.d.sync += wait.eq(eng.drain)
                    m.next = "WAIT"
                with m.Elif(since == mp):
                    # The next pass follows at once: this item swaps.
                    m.d.comb += swap.eq(1)
                    m.d.sync += since.eq(1)
                    trigger_load()
                    next_pass()
                with m.Else():
                    next_pass()
                    m.next = "WAIT"
            with m.State("DRAIN"):
                with m.If(wait != 0):
                    m.d.sync += wait.eq(wait - 1)
                with m.Else():
                    m.d.comb += self.finished.eq(1)
                    m.next = "IDLE"

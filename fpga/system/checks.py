"""The argument checks of GemmSystem's commands: :class:`CheckUnit`."""

from amaranth.hdl import Const, Module, Mux, Shape, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hbfp_hw.rtl_gen.common import registered_multiply

from ..protocol.frames import (
    ARGS_BYTES,
    COMPUTE_ARGS_LAYOUT,
    MAX_READ_WORDS,
    READ_ARGS_LAYOUT,
    WRITE_ARGS_LAYOUT,
    Flag,
    Status,
    Wire,
    block_bytes,
)
from .decoder import frame_event_layout

__all__ = ["CheckUnit", "saturate", "times_constant"]

#: The argument registers of :class:`CheckUnit` (``arg`` fields): the sizes and bases of
#: COMPUTE, READ_C and WRITE, and COMPUTE's k-blocks and column groups and READ_C's groups.
ARG_NAMES = ("m", "n", "a_base", "b_base", "c_base", "row", "col", "rows", "cols", "base",
             "start", "count", "kb_req", "groups_req", "read_groups")


def times_constant(value, constant):
    """``value * constant`` (a non-negative integer) as a sum of shifted copies of ``value``,
    one per set bit of ``constant``: adders in logic, never a multiplier block."""
    terms = [value << k for k in range(constant.bit_length()) if constant >> k & 1]
    return sum(terms[1:], terms[0]) if terms else Const(0)


def saturate(value, bits):
    """``value`` if it is below ``2**bits``, else ``2**bits - 1`` (a ``bits``-wide value).

    The capacity checks run on protocol fields (16 and 32 bits) clamped this way to
    ``bits = capacity.bit_length() + 1``: a clamped operand is above every capacity, and sums
    and products of non-negative operands stay above it (a product only with a non-zero other
    factor, and then the true product is too), so every ``x > capacity`` comes out as it would
    at full width, from narrow adders and multipliers.
    """
    if len(value) <= bits:
        return value
    return Mux(value[bits:].any(), (1 << bits) - 1, value[:bits])


class CheckUnit(wiring.Component):
    """Check the arguments of the event's WRITE, COMPUTE or READ_C against the buffers.

    Every register loads every cycle from the event: the arguments are stable from IDLE until
    the reply starts, so the argument registers and COMPUTE's first status are valid from the
    first CHECK state on, READ_C's first status a cycle later (``READ_MUL``), the products two
    cycles after the operands (the ``*_MUL`` states), the sums when the executor pulses
    ``compute_sum`` or ``read_sum`` and the comparisons a cycle after those (the ``*_CMP``
    states); WRITE's status two cycles after ``write_len`` (``WRITE_CHECK``). Every status is
    a register or one multiplexer from registers: a status computed from the argument
    registers straight into the executor's next-state logic was the critical path of a
    GemmSystem on the systolic array (docs/hardware.md).

    Parameters
    ----------
    fmt : BFPFormat
    input_format : FloatFormat
    float_wire : bool
        The device takes ``Wire.FLOAT`` tile data.
    lanes, a_blocks, b_blocks, c_words : int
        As :class:`~hbfp_hw.fpga.system.array.GemmEngine` (the capacities checked).
    max_payload : int
        The payload RAM's size (WRITE's ``count`` is clamped above it).

    Members
    -------
    event : ``In(frame_event_layout())``
        The decoder's event.
    is_read, is_b : ``In(1)``
        The command is READ_C (the shared multipliers take its operands) / WRITE_B.
    c_valid : ``In(1)``
    c_rows, c_cols, c_at : ``In(cap_bits)``
        The shape and place of the last COMPUTE's result (ACCUMULATE must match them).
    write_len, compute_sum, read_sum : ``In(1)``
        Register WRITE's expected length / COMPUTE's / READ_C's capacity sums.
    arg : ``Out(StructLayout)``
        The arguments, each clamped to ``cap_bits`` (:func:`saturate`).
    read_words : ``Out``
        READ_C's count, clamped above :data:`MAX_READ_WORDS`.
    read_row_base : ``Out``
        C bank word of READ_C's first row (valid with ``read_sum``).
    prod_mn : ``Out``
        COMPUTE's ``m * n`` (its READBACK word count).
    accumulate, readback, write_quiet, compute_quiet : ``Out(1)``
        Flags of the event's COMPUTE / WRITE.
    write_status, write_empty, compute_status, compute_cap_status, read_status, \
read_cap_status : ``Out``
        The status of each check (``Status.OK``: passed), and that a WRITE has no blocks.
    """

    def __init__(self, fmt, *, input_format, float_wire, lanes, a_blocks, b_blocks, c_words,
                 max_payload):
        self._fmt, self._input_format, self._float_wire = fmt, input_format, float_wire
        self._lanes, self._a_blocks = lanes, a_blocks
        self._b_depth, self._c_depth = b_blocks // lanes, c_words // lanes
        self._b_blocks, self._max_payload = b_blocks, max_payload
        # Every size and base that passes the checks is below 2**cap_bits.
        self._cap_bits = cap_bits = max(a_blocks, b_blocks, c_words).bit_length() + 1
        self._read_words_shape = Shape.cast(range(2 * MAX_READ_WORDS + 1))
        self._prod_bits = 2 * cap_bits
        super().__init__({
            "event": In(frame_event_layout()), "is_read": In(1), "is_b": In(1),
            "c_valid": In(1), "c_rows": In(cap_bits), "c_cols": In(cap_bits),
            "c_at": In(cap_bits),
            "write_len": In(1), "compute_sum": In(1), "read_sum": In(1),
            "arg": Out(data.StructLayout({name: cap_bits for name in ARG_NAMES})),
            "read_words": Out(self._read_words_shape),
            "read_row_base": Out(self._prod_bits + 1),
            "prod_mn": Out(self._prod_bits),
            "accumulate": Out(1), "readback": Out(1),
            "write_quiet": Out(1), "compute_quiet": Out(1),
            "write_status": Out(8), "write_empty": Out(1), "compute_status": Out(8),
            "compute_cap_status": Out(8), "read_status": Out(8), "read_cap_status": Out(8),
        })

    cap_bits = property(lambda self: self._cap_bits)

    def elaborate(self, platform):
        m = Module()
        fmt, lanes, cap_bits = self._fmt, self._lanes, self._cap_bits
        lane_bits = (lanes - 1).bit_length()
        bs_bits = (fmt.block_size - 1).bit_length()
        ev = self.event
        wargs = data.View(WRITE_ARGS_LAYOUT, ev.args[:WRITE_ARGS_LAYOUT.size])
        cargs = data.View(COMPUTE_ARGS_LAYOUT, ev.args[:COMPUTE_ARGS_LAYOUT.size])
        rargs = data.View(READ_ARGS_LAYOUT, ev.args[:READ_ARGS_LAYOUT.size])

        sources = {
            "m": cargs.m, "n": cargs.n, "a_base": cargs.a_base, "b_base": cargs.b_base,
            "c_base": cargs.c_base, "row": rargs.row, "col": rargs.col, "rows": rargs.rows,
            "cols": rargs.cols, "base": rargs.base, "start": wargs.start, "count": wargs.count,
            "kb_req": (cargs.k + (fmt.block_size - 1)) >> bs_bits,
            "groups_req": (cargs.n + (lanes - 1)) >> lane_bits,
            "read_groups": (rargs.cols + (lanes - 1)) >> lane_bits,
        }
        a = {name: Signal(cap_bits, name=f"arg_{name}") for name in sources}
        m.d.sync += [a[name].eq(saturate(value, cap_bits)) for name, value in sources.items()]
        m.d.comb += [getattr(self.arg, name).eq(a[name]) for name in ARG_NAMES]
        kb_req, groups_req, read_groups = a["kb_req"], a["groups_req"], a["read_groups"]
        read_words = Signal(self._read_words_shape)
        m.d.sync += read_words.eq(saturate(rargs.count, len(read_words)))
        m.d.comb += self.read_words.eq(read_words)

        # The capacity checks: products registered every cycle, computed here and not in the
        # executor, so that no state-driven multiplexer sits between the argument registers
        # and the multipliers. COMPUTE and READ_C share four multipliers: `is_read`, set when
        # the command is dispatched, selects their operands (one LUT level from registers),
        # so the iCE40's eight DSPs suffice. Two cycles from the operands to the product, in
        # registers around the multiplier (on the ECP5 the MULT18X18D's own: a combinational
        # DSP between fabric registers was once the ULX3S critical path; docs/hardware.md).
        operands = [(a["m"], kb_req, a["row"], a["cols"]),
                    (groups_req, kb_req, a["rows"], a["cols"]),
                    (a["m"], groups_req, a["rows"], read_groups),
                    (a["m"], a["n"], a["row"], read_groups)]
        # COMPUTE: m*kblocks, groups*kblocks, m*groups, m*n; READ_C: row*cols, rows*cols,
        # rows*groups, row*groups.
        mul = [registered_multiply(m, platform, f"check_mul{i}", Mux(self.is_read, r0, c0),
                                   Mux(self.is_read, r1, c1))
               for i, (c0, c1, r0, r1) in enumerate(operands)]
        m.d.comb += [self.prod_mn.eq(mul[3]), self.read_row_base.eq(a["base"] + mul[3])]
        sum_bits = max(2 * cap_bits, len(read_words)) + 2
        prod_a = Signal(sum_bits)
        prod_b = Signal(sum_bits)
        prod_c = Signal(sum_bits)
        # m*n against the readback's limit, registered with the sums: straight from the
        # DSP's product register into the comparison below, it was the 4 x 4 array system's
        # critical path (94.2 MHz, seed 1).
        mn_over = Signal()
        with m.If(self.compute_sum):
            m.d.sync += [prod_a.eq(a["a_base"] + mul[0]), prod_b.eq(a["b_base"] + mul[1]),
                         prod_c.eq(a["c_base"] + mul[2]),
                         mn_over.eq(mul[3] > MAX_READ_WORDS - 1)]
        with m.If(self.read_sum):
            m.d.sync += [prod_a.eq(mul[0] + a["col"] + read_words), prod_b.eq(mul[1]),
                         prod_c.eq(a["base"] + mul[2])]
        # The comparisons, registered every cycle from the sums (the *_CMP states wait for
        # them): a compare chain straight into the FSM's next-state logic was once the ULX3S
        # critical path (docs/hardware.md).
        compute_over = Signal()
        read_over = Signal()
        readback = self.readback
        m.d.comb += [self.accumulate.eq((cargs.flags & Flag.ACCUMULATE) != 0),
                     readback.eq((cargs.flags & Flag.READBACK) != 0)]
        m.d.sync += [
            compute_over.eq((prod_a > self._a_blocks) | (prod_b > self._b_depth)
                            | (prod_c > self._c_depth)
                            | (readback & mn_over)),
            read_over.eq((prod_a > prod_b) | (prod_c > self._c_depth)),
        ]

        self._write_checks(m, wargs, a)
        self._compute_checks(m, cargs, a, compute_over)
        self._read_checks(m, rargs, a, read_over)
        return m

    def _write_checks(self, m, wargs, a):
        # WRITE's expected length, ARGS_BYTES + count * block bytes: the block size is a
        # register (valid in WRITE_LEN), the product is registered in WRITE_LEN and compared
        # with the registered payload length in WRITE_CHECK. The count is clamped above the
        # largest payload (the decoder refuses longer frames).
        fmt, float_wire = self._fmt, self._float_wire
        bb_bfp = block_bytes(fmt, Wire.BFP)
        bb_float = block_bytes(fmt, Wire.FLOAT, self._input_format)
        length = self.event.length
        w_bfp = Signal()
        w_count = Signal(range(2 * self._max_payload + 1))
        w_prod = Signal(len(w_count) + max(bb_bfp, bb_float).bit_length())
        w_body = Signal(len(length))
        # (Without float_wire, Wire.FLOAT is refused before the lengths are compared.)
        m.d.sync += [w_bfp.eq((wargs.wire == Wire.BFP) | (not float_wire)),
                     w_count.eq(saturate(wargs.count, len(w_count))),
                     w_body.eq(length - ARGS_BYTES)]
        # The block sizes are constants: shifts and adds in logic. (A register operand made
        # Yosys map the product to a MULT18X18D with no registers of its own, between fabric
        # registers: 104.1 MHz, the 4 x 4 array system's critical path with seed 1.)
        with m.If(self.write_len):
            m.d.sync += w_prod.eq(Mux(w_bfp, times_constant(w_count, bb_bfp),
                                      times_constant(w_count, bb_float)))
        cap = Mux(self.is_b, self._b_blocks, self._a_blocks)
        st = self.write_status
        m.d.comb += [self.write_quiet.eq((wargs.flags & Flag.QUIET) != 0),
                     self.write_empty.eq(wargs.count == 0)]
        # Registered every cycle: valid a cycle after the product (WRITE_CMP -> WRITE_CHECK).
        with m.If(length < ARGS_BYTES):
            m.d.sync += st.eq(Status.BAD_LENGTH)
        with m.Elif((wargs.wire > Wire.BFP) | ((wargs.flags & ~int(Flag.QUIET)) != 0)):
            m.d.sync += st.eq(Status.BAD_ARG)
        with m.Elif((wargs.wire == Wire.FLOAT) & (not float_wire)):
            m.d.sync += st.eq(Status.UNSUPPORTED)
        with m.Elif(w_body != w_prod):      # length >= ARGS_BYTES here
            m.d.sync += st.eq(Status.BAD_LENGTH)
        with m.Elif(a["start"] + a["count"] > cap):
            m.d.sync += st.eq(Status.CAPACITY)
        with m.Else():
            m.d.sync += st.eq(Status.OK)

    def _compute_checks(self, m, cargs, a, compute_over):
        quiet = (cargs.flags & Flag.QUIET) != 0
        flags_ok = (cargs.flags & ~int(Flag.QUIET | Flag.ACCUMULATE | Flag.READBACK)) == 0
        # Registered every cycle from the event: valid in COMPUTE_CHECK.
        st = self.compute_status
        m.d.comb += self.compute_quiet.eq(quiet)
        with m.If(self.event.length != COMPUTE_ARGS_LAYOUT.size // 8):
            m.d.sync += st.eq(Status.BAD_LENGTH)
        with m.Elif(~flags_ok | (quiet & self.readback)):
            m.d.sync += st.eq(Status.BAD_ARG)
        with m.Elif((cargs.m == 0) | (cargs.n == 0) | (cargs.k == 0)):
            m.d.sync += st.eq(Status.BAD_ARG)
        with m.Else():
            m.d.sync += st.eq(Status.OK)

        # ACCUMULATE's checks, registered from the argument registers (valid from COMPUTE_MUL),
        # after the capacity comparison (valid in COMPUTE_CHECK2).
        result_status = Signal(8)
        accumulate = self.accumulate
        with m.If(accumulate & ~self.c_valid):
            m.d.sync += result_status.eq(Status.NO_RESULT)
        with m.Elif(accumulate & ((a["m"] != self.c_rows) | (a["n"] != self.c_cols)
                                  | (a["c_base"] != self.c_at))):
            m.d.sync += result_status.eq(Status.MISMATCH)
        with m.Else():
            m.d.sync += result_status.eq(Status.OK)
        m.d.comb += self.compute_cap_status.eq(Mux(compute_over, Status.CAPACITY,
                                                   result_status))

    def _read_checks(self, m, rargs, a, read_over):
        # Registered from the argument registers: valid a cycle after READ_CHECK (READ_MUL).
        st = self.read_status
        with m.If(self.event.length != READ_ARGS_LAYOUT.size // 8):
            m.d.sync += st.eq(Status.BAD_LENGTH)
        with m.Elif(rargs.flags != 0):
            m.d.sync += st.eq(Status.BAD_ARG)
        with m.Elif(~self.c_valid):
            m.d.sync += st.eq(Status.NO_RESULT)
        with m.Elif((a["row"] >= a["rows"]) | (a["col"] >= a["cols"])
                    | (self.read_words > MAX_READ_WORDS)):
            m.d.sync += st.eq(Status.CAPACITY)
        with m.Else():
            m.d.sync += st.eq(Status.OK)
        m.d.comb += self.read_cap_status.eq(Mux(read_over, Status.CAPACITY, Status.OK))

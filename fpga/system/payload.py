"""The payload reader and block assembly of GemmSystem's WRITE: :class:`BlockWriter`."""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hbfp_hw.rtl_gen.float_to_minifloat import block_quantizer
from hbfp_hw.rtl_gen.layout import block_layout

from ..protocol.frames import ARGS_BYTES, Wire, block_bytes, mantissa_bytes

__all__ = ["BlockWriter"]


class BlockWriter(wiring.Component):
    """Read a WRITE's tile data from the payload RAM, assemble blocks, write them to A or B.

    A block's bytes are read one per cycle into a shift register; a ``Wire.BFP`` block is then
    unpacked, a ``Wire.FLOAT`` block goes through the quantizer
    (``block_quantizer``: FloatToBlock or FloatToMinifloatBlock, ``float_wire`` only). The
    executor sequences the steps with one-cycle commands (``setup``, ``begin``, ``quantize``,
    ``store``, ``store_quantized``) from its WRITE states. The commands are registered here
    and take effect a cycle later, and every output is a register: no path runs from the
    executor's state through this unit's logic and back (in a GemmSystem on the 4 x 4 array,
    such a path crossed the die twice, docs/hardware.md).

    Parameters
    ----------
    fmt : BFPFormat
    input_format : FloatFormat
    float_wire : bool
        Take ``Wire.FLOAT`` tile data (and build the quantizer).
    align_stages : int
        Pipeline depth of the quantizer.
    max_payload : int
        Size of the payload RAM.
    cap_bits : int
        Width of the block addresses and counts.

    Members
    -------
    rd_addr : ``Out(range(max_payload))``
    rd_data : ``In(8)``
        The decoder's payload RAM read port (one cycle of latency). The address depends on two
        flag registers only (``loading`` and ``writing``), not on the executor's state: it
        steps while a block loads, holds between the blocks of a write and otherwise rests at
        ``ARGS_BYTES``, the first tile byte, so that loading starts with it.
    first, count : ``In(cap_bits)``
        First block index and number of blocks of the write (taken on ``setup``).
    bfp : ``In(1)``
        The write is ``Wire.BFP`` (taken on ``setup``).
    to_b : ``In(1)``
        Write to B instead of A.
    setup : ``In(1)``
        Start a write: load ``first``, ``count`` and ``bfp``.
    begin : ``In(1)``
        Start loading the first block's bytes.
    quantize : ``In(1)``
        Offer the loaded float block to the quantizer (it takes it when it can).
    store, store_quantized : ``In(1)``
        Write the loaded BFP block / the quantized block (after ``quantized``), advance to
        the next block, and start loading it unless it was the last one.
    block_end : ``Out(1)``
        The byte loaded in this cycle is the block's last; loading stops after it.
    last_block : ``Out(1)``
        The block being assembled is the write's last.
    is_bfp, quantized : ``Out(1)``
        The write is ``Wire.BFP``; a quantized block is ready (a one-cycle pulse; the block
        is kept until the next one).
    a_we, b_we : ``Out(1)``
    waddr : ``Out(cap_bits)``
    wdata : ``Out(block_layout(fmt))``
        Block write ports of the engine's A and B buffers.
    """

    def __init__(self, fmt, *, input_format, float_wire, align_stages, max_payload, cap_bits):
        self._fmt, self._input_format, self._float_wire = fmt, input_format, float_wire
        self._align_stages, self._max_payload = align_stages, max_payload
        super().__init__({
            "rd_addr": Out(range(max_payload)), "rd_data": In(8),
            "first": In(cap_bits), "count": In(cap_bits), "bfp": In(1), "to_b": In(1),
            "setup": In(1), "begin": In(1), "quantize": In(1),
            "store": In(1), "store_quantized": In(1),
            "block_end": Out(1), "last_block": Out(1), "is_bfp": Out(1), "quantized": Out(1),
            "a_we": Out(1), "b_we": Out(1), "waddr": Out(cap_bits),
            "wdata": Out(block_layout(fmt)),
        })

    def elaborate(self, platform):
        m = Module()
        fmt, float_wire = self._fmt, self._float_wire
        mb = mantissa_bytes(fmt)
        bb_float = block_bytes(fmt, Wire.FLOAT, self._input_format)
        bb_bfp = block_bytes(fmt, Wire.BFP)
        vec_bytes = max(bb_float, bb_bfp) if float_wire else bb_bfp
        cmd = {name: Signal(name=f"cmd_{name}")
               for name in ("setup", "begin", "quantize", "store", "store_quantized")}
        m.d.sync += [reg.eq(getattr(self, name)) for name, reg in cmd.items()]

        # -- payload reader: rd_data is the payload byte at `ptr` -----------------------------
        # (The executor's state decode in front of the address, which also enabled the
        # flip-flops of `vec`, was once the ULX3S critical path (docs/history.md): hence the flags.)
        ptr = Signal(range(self._max_payload))
        ptr_next = Signal(range(self._max_payload))
        loading = Signal()        # exactly while a block's bytes load
        writing = Signal()        # from the first load to the write's last block
        m.d.comb += [ptr_next.eq(Mux(loading, ptr + 1, Mux(writing, ptr, ARGS_BYTES))),
                     self.rd_addr.eq(ptr_next)]
        m.d.sync += ptr.eq(ptr_next)

        # -- block assembly -------------------------------------------------------------------
        vec = Signal(8 * vec_bytes)
        bcount = Signal(range(vec_bytes + 1))
        remaining = Signal(len(self.count))
        # Flag registers, so that the executor's decisions come from flip-flops rather than
        # comparisons: `last_block` is remaining == 1, `block_end` that the block's last byte
        # loads in this cycle.
        last_block = self.last_block
        block_end = Signal()
        waddr = Signal(len(self.waddr))
        is_bfp = Signal()
        m.d.comb += [self.block_end.eq(block_end), self.is_bfp.eq(is_bfp),
                     self.waddr.eq(waddr)]
        bfp_bits = vec[8 * (vec_bytes - bb_bfp):]
        block_from_wire = Signal(block_layout(fmt))
        m.d.comb += block_from_wire.exponent.eq(bfp_bits[:fmt.exponent_bits])
        for i in range(fmt.block_size):
            lo = 8 + 8 * mb * i
            m.d.comb += block_from_wire.mantissas[i].eq(bfp_bits[lo:lo + fmt.mantissa_bits])
        block = Signal(block_layout(fmt))
        block_we = Signal()
        m.d.comb += [self.wdata.eq(block), self.a_we.eq(block_we & ~self.to_b),
                     self.b_we.eq(block_we & self.to_b)]
        if float_wire:
            # Every block it produces is registered here, so it never waits: no output FIFO,
            # no credits, and no path from here back into it (its credit path through logic
            # placed by the writer was the 4 x 4 array system's critical path, 71.7 MHz).
            m.submodules.quantizer = q = block_quantizer(fmt, input_format=self._input_format,
                                                         stages=self._align_stages,
                                                         always_ready=True)
            # The block is offered until the quantizer takes it (`vec` holds it until the
            # next block loads, after the store).
            q_pending = Signal()
            m.d.comb += [q.seed.eq(0), q.reseed.eq(0),
                         q.i_stream.payload.eq(vec[8 * (vec_bytes - bb_float):]),
                         q.i_stream.valid.eq(q_pending)]
            with m.If(q.i_stream.ready):
                m.d.sync += q_pending.eq(0)
            with m.If(cmd["quantize"]):
                m.d.sync += q_pending.eq(1)
            # The quantizer's block, registered before the executor and the A/B write ports
            # use it (from its output FIFO's LUT RAM across the die into the FSM was once the
            # ULX3S critical path; docs/history.md has the figures), and kept for the store.
            # (Loaded every cycle: with the FIFO's valid as its enable, that net across the
            # die was the 4 x 4 array system's critical path, 91.9 MHz.)
            q_valid = Signal()
            q_block = Signal.like(q.o_stream.payload)
            q_kept = Signal.like(q.o_stream.payload)
            m.d.sync += [q_valid.eq(q.o_stream.valid), q_block.eq(q.o_stream.payload)]
            with m.If(q_valid):
                m.d.sync += q_kept.eq(q_block)
            m.d.comb += self.quantized.eq(q_valid)

        block_size = Mux(is_bfp, bb_bfp, bb_float) if float_wire else bb_bfp
        with m.If(loading):
            m.d.sync += [vec.eq(Cat(vec[8:], self.rd_data)), bcount.eq(bcount + 1),
                         block_end.eq(bcount == block_size - 2)]
            with m.If(block_end):       # the last byte loads: stop
                m.d.sync += [bcount.eq(0), loading.eq(0), block_end.eq(0)]

        with m.If(cmd["setup"]):
            m.d.sync += [waddr.eq(self.first), remaining.eq(self.count),
                         last_block.eq(self.count == 1), block_end.eq(0),
                         is_bfp.eq(self.bfp), bcount.eq(0)]
        with m.If(cmd["begin"]):
            m.d.sync += [loading.eq(1), writing.eq(1)]
        stores = [(cmd["store"], block_from_wire)]
        if float_wire:
            stores.append((cmd["store_quantized"], q_kept))
        for store, source in stores:
            with m.If(store):
                m.d.comb += [block.eq(source), block_we.eq(1)]
                m.d.sync += [waddr.eq(waddr + 1), remaining.eq(remaining - 1),
                             last_block.eq(remaining == 2)]
                with m.If(last_block):
                    m.d.sync += writing.eq(0)
                with m.Else():
                    m.d.sync += loading.eq(1)
        return m

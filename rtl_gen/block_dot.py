"""HBFP dot products of already-quantized BFP blocks: ``MacTree -> BlockToFloat -> FPAccumulator``.

:class:`BlockDotUnit` is the part of a :class:`~hbfp_hw.rtl_gen.dot_product.DotProductUnit`
after its two quantizers. The GEMM engine (:mod:`hbfp_hw.fpga.system.engine`), whose buffers hold
blocks, uses it directly; :class:`~hbfp_hw.rtl_gen.dot_product.DotProductUnit` puts two
:class:`~hbfp_hw.rtl_gen.float_to_block.FloatToBlock` in front of it.

The channel flags travel beside the data path in a FIFO. A buffer in front of the
accumulator cuts the ready path: the accumulator's ready (its read-after-write hazard check)
only reaches that buffer, and the rest of the pipeline stalls on the buffer's registered fill
level. The buffer's output is a register (:class:`~amaranth.lib.fifo.SyncFIFOBuffered`), so
the term enters the accumulator's hazard check, running-sum read and forwarding multiplexer
straight from a flip-flop rather than through a LUT-RAM read.
"""

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from .block_to_float import BlockToFloat
from .common import check_rtl_format, check_stages
from .fp_accumulator import MAX_CHANNELS, FPAccumulator
from .layout import accumulator_output_layout, block_layout, channel_shape
from .mac_tree import MacTree

__all__ = ["BlockDotUnit", "block_dot_input_layout", "BUFFER_LATENCY", "TERM_BUFFER_LATENCY"]

#: Cycles that a two-entry :class:`~amaranth.lib.fifo.SyncFIFO` adds between two pipeline parts
#: (written in one cycle, readable in the next; one transfer per cycle).
BUFFER_LATENCY = 1

#: Cycles that the term buffer in front of the accumulator adds (a three-entry
#: :class:`~amaranth.lib.fifo.SyncFIFOBuffered`: registered output, one transfer per cycle).
TERM_BUFFER_LATENCY = 2


def block_dot_input_layout(fmt, channels, *, init=False):
    """Layout of one :class:`BlockDotUnit` transfer ``{a, b, channel, first, last}``.

    With ``init``, two more fields: a transfer with ``init`` set adds the FP32 value ``c``
    (bits) to its channel instead of the dot product of ``a`` and ``b``; with ``first`` it
    starts the running sum from ``c``.
    """
    fields = {
        "a": block_layout(fmt),
        "b": block_layout(fmt),
        "channel": channel_shape(channels),
        "first": 1,
        "last": 1,
    }
    if init:
        fields.update(init=1, c=unsigned(32))
    return data.StructLayout(fields)


class BlockDotUnit(wiring.Component):
    """HBFP dot products of BFP blocks: a DotProductUnit without its two quantizers.

    Same semantics as :class:`~hbfp_hw.rtl_gen.dot_product.DotProductUnit` (one transfer is one
    block pair of a channel; ``first`` starts its running sum at +0.0, ``last`` completes it),
    but the operands are already-quantized blocks.

    With ``init=True`` a transfer may carry an FP32 value ``c`` instead (``init`` set): it is
    added to the channel in place of a dot product. With ``first`` the running sum is then
    ``+0.0 + c``, which is ``c`` exactly (bit for bit) for every ``c`` except -0.0, which
    becomes +0.0, and a NaN, which becomes the canonical NaN; a result of the contract's
    accumulation is never -0.0 and its NaNs are canonical, so such a sum continues exactly
    where an earlier one stopped.

    Parameters
    ----------
    fmt : BFPFormat
    channels : int
        Number of independent running sums.
    mac_stages, convert_stages, adder_stages : int
        Pipeline registers of the MacTree, BlockToFloat and the accumulator's FP32 adder.
    init : bool
        Add the ``init``/``c`` fields to the input.

    Members
    -------
    i_stream : ``In(stream.Signature(block_dot_input_layout(fmt, channels, init=init)))``
    o_stream : ``Out(stream.Signature(accumulator_output_layout(channels)))``
    """

    def __init__(self, fmt, *, channels, mac_stages=2, convert_stages=3, adder_stages=3,
                 init=False):
        # MacTree, BlockToFloat and the accumulator all take minifloat elements.
        self._fmt = check_rtl_format(fmt, minifloat=True)
        self._params = self.check_params(fmt, channels=channels, mac_stages=mac_stages,
                                         convert_stages=convert_stages,
                                         adder_stages=adder_stages)
        self._init = bool(init)
        self._mac = MacTree(fmt, stages=mac_stages)
        self._to_float = BlockToFloat(fmt, stages=convert_stages)
        self._acc = FPAccumulator(channels=channels, adder_stages=adder_stages)
        super().__init__({
            "i_stream": In(stream.Signature(block_dot_input_layout(fmt, channels,
                                                                   init=self._init))),
            "o_stream": Out(stream.Signature(accumulator_output_layout(channels))),
        })

    @staticmethod
    def check_params(fmt, *, channels, mac_stages, convert_stages, adder_stages):
        """Validate the parameters (as the subunits do) and return them as a dict.

        Hosts and containers (the GEMM engine) call it to check a configuration without
        building a unit, which would leave unused elaboratables behind.
        """
        check_rtl_format(fmt, minifloat=True)
        check_stages("channels", channels, MAX_CHANNELS, 1)
        check_stages("mac_stages", mac_stages, MacTree.max_stages_for(fmt))
        check_stages("convert_stages", convert_stages, BlockToFloat.MAX_STAGES)
        check_stages("adder_stages", adder_stages, FPAccumulator.MAX_ADDER_STAGES, 1)
        return dict(channels=channels, mac_stages=mac_stages, convert_stages=convert_stages,
                    adder_stages=adder_stages)

    @property
    def fmt(self):
        return self._fmt

    @property
    def channels(self):
        return self._params["channels"]

    @property
    def min_channels(self):
        """Fewest round-robin channels that sustain one block pair per cycle."""
        return self._params["adder_stages"]

    @property
    def latency(self):
        """Cycles from accepting a ``last`` block pair to its dot product on ``o_stream``."""
        p = self._params
        return p["mac_stages"] + p["convert_stages"] + TERM_BUFFER_LATENCY + p["adder_stages"]

    @property
    def throughput(self):
        """Block pairs per cycle (with at least :attr:`min_channels` channels interleaved)."""
        return 1

    def elaborate(self, platform):
        m = Module()
        m.submodules.mac = mac = self._mac
        m.submodules.to_float = to_float = self._to_float
        m.submodules.acc = acc = self._acc
        # The side FIFO carries what the MacTree and BlockToFloat do not: the channel flags
        # and, for an init transfer, the value that replaces the dot product.
        side_fields = {"channel": channel_shape(self.channels), "first": 1, "last": 1}
        if self._init:
            side_fields.update(init=1, c=unsigned(32))
        side_layout = data.StructLayout(side_fields)
        depth = mac.latency + to_float.latency + 4
        m.submodules.side = side = SyncFIFOBuffered(width=side_layout.size, depth=depth)

        i_p = self.i_stream.payload
        side_in = Signal(side_layout)
        m.d.comb += [side_in.channel.eq(i_p.channel), side_in.first.eq(i_p.first),
                     side_in.last.eq(i_p.last)]
        if self._init:
            m.d.comb += [side_in.init.eq(i_p.init), side_in.c.eq(i_p.c)]
        m.d.comb += [
            mac.i_stream.payload.a.eq(i_p.a),
            mac.i_stream.payload.b.eq(i_p.b),
            side.w_data.eq(side_in),
            mac.i_stream.valid.eq(self.i_stream.valid & side.w_rdy),
            side.w_en.eq(self.i_stream.valid & mac.i_stream.ready),
            self.i_stream.ready.eq(mac.i_stream.ready & side.w_rdy),
        ]
        wiring.connect(m, mac.o_stream, to_float.i_stream)

        # Join the FP32 block product with its sideband, into the buffer in front of the
        # accumulator.
        side_out = data.View(side_layout, side.r_data)
        term = Signal(acc.i_stream.payload.shape())
        value = to_float.o_stream.payload
        if self._init:
            value = Mux(side_out.init, side_out.c, value)
        m.submodules.term_buf = term_buf = SyncFIFOBuffered(width=len(Cat(term)), depth=3)
        m.d.comb += [
            term.value.eq(value),
            term.channel.eq(side_out.channel),
            term.first.eq(side_out.first),
            term.last.eq(side_out.last),
            term_buf.w_en.eq(to_float.o_stream.valid & side.r_rdy),
            term_buf.w_data.eq(term),
            to_float.o_stream.ready.eq(term_buf.w_rdy & side.r_rdy),
            side.r_en.eq(term_buf.w_rdy & to_float.o_stream.valid),
            acc.i_stream.valid.eq(term_buf.r_rdy),
            acc.i_stream.payload.eq(term_buf.r_data),
            term_buf.r_en.eq(acc.i_stream.ready),
        ]
        wiring.connect(m, acc.o_stream, wiring.flipped(self.o_stream))
        return m

"""The BFP dot-product unit: FP32/BF16 vectors in, FP32 dot products over any K out.

:class:`DotProductUnit` composes the generators of this package::

    i_stream {a, b, channel, first, last}
      ├─ a ─> quantizer ─┐
      ├─ b ─> quantizer ─┼─> buffer ─> BlockDotUnit ─> o_stream
      └─ {channel, first, last} ─> side FIFO ─┘

    BlockDotUnit: MacTree ─> BlockToFloat ─┬─> buffer ─> FPAccumulator
                  {channel, first, last} ─> side FIFO ─┘

The quantizers are :class:`FloatToBlock` for integer elements and
:class:`~hbfp_hw.rtl_gen.float_to_minifloat.FloatToMinifloatBlock` for minifloat ones
(:func:`~hbfp_hw.rtl_gen.float_to_minifloat.block_quantizer`). The two-entry buffers cut the
ready path (stalls propagate through registered fill levels), and
:class:`~hbfp_hw.rtl_gen.block_dot.BlockDotUnit` is also what the GEMM engine's lanes are.

One transfer carries one block of a row of A and one block of a column of B
(``block_size`` lanes each). ``channel`` names the running sum the block product goes to,
``first`` starts that sum at +0.0 and ``last`` completes it, so a dot product over K elements
is ``ceil(K / block_size)`` transfers of one channel, block 0 first (the contract's order).
Interleaving at least :attr:`DotProductUnit.min_channels` channels gives one block pair per
cycle.
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO, SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from hbfp_hw.formats import FloatFormat

from .block_dot import BUFFER_LATENCY, BlockDotUnit, block_dot_input_layout
from .common import check_rtl_format
from .float_to_minifloat import block_quantizer
from .layout import accumulator_output_layout, channel_shape, float_vector_layout

__all__ = ["DotProductUnit", "dot_input_layout"]

def dot_input_layout(fmt, input_format, channels):
    """Layout of one block pair ``{a, b, channel, first, last}`` of a :class:`DotProductUnit`."""
    lanes = float_vector_layout(fmt, input_format)
    return data.StructLayout({
        "a": lanes,
        "b": lanes,
        "channel": channel_shape(channels),
        "first": 1,
        "last": 1,
    })


class DotProductUnit(wiring.Component):
    """FP32 (or BF16) dot products in HBFP: BFP block products, FP32 accumulation.

    Bit-exact with the contract: a channel's result equals
    ``accumulate(dot(quantize(a_blocks), quantize(b_blocks)))`` over its transfers in order,
    i.e. one element of :func:`hbfp_hw.golden.gemm`. With stochastic rounding, the A side's
    PRNG is seeded with ``seed`` and the B side's with ``seed + 1`` (as ``golden.gemm`` does),
    and the ``i``-th block pair accepted after a reseed uses step ``i`` of both.

    Parameters
    ----------
    fmt : BFPFormat
        The format (block size 2..64), integer or minifloat elements.
    input_format : {"fp32", "bf16"}
    channels : int or None
        Number of independent running sums (default: the accumulator's :attr:`min_channels`).
    align_stages, mac_stages, convert_stages, adder_stages : int
        Pipeline registers of the quantizer (:class:`FloatToBlock` or
        :class:`FloatToMinifloatBlock`), :class:`MacTree`,
        :class:`BlockToFloat` and FP32 adder of the accumulator.

    Members
    -------
    i_stream : ``In(stream.Signature(dot_input_layout(fmt, input_format, channels)))``
    o_stream : ``Out(stream.Signature(accumulator_output_layout(channels)))``
        ``{value, channel}``: a completed FP32 dot product.
    seed : ``In(32)``
    reseed : ``In(1)``
        Stochastic rounding: load the PRNGs from ``seed`` (A) and ``seed + 1`` (B).
    """

    def __init__(self, fmt, *, input_format="fp32", channels=None, align_stages=2,
                 mac_stages=2, convert_stages=3, adder_stages=3):
        self._fmt = check_rtl_format(fmt, minifloat=True)
        self._align_a = block_quantizer(fmt, input_format=input_format, stages=align_stages)
        self._align_b = block_quantizer(fmt, input_format=input_format, stages=align_stages)
        if channels is None:
            channels = adder_stages
        self._core = BlockDotUnit(fmt, channels=channels, mac_stages=mac_stages,
                                  convert_stages=convert_stages, adder_stages=adder_stages)
        self._input_format = FloatFormat(input_format)
        super().__init__({
            "i_stream": In(stream.Signature(
                dot_input_layout(fmt, self._input_format, channels))),
            "o_stream": Out(stream.Signature(accumulator_output_layout(channels))),
            "seed": In(32),
            "reseed": In(1),
        })

    @property
    def fmt(self):
        return self._fmt

    @property
    def input_format(self):
        return self._input_format

    @property
    def channels(self):
        return self._core.channels

    @property
    def min_channels(self):
        """Fewest round-robin channels that sustain one block pair per cycle."""
        return self._core.min_channels

    @property
    def latency(self):
        """Cycles from accepting a ``last`` block pair to its dot product on ``o_stream``."""
        return self._align_a.latency + BUFFER_LATENCY + self._core.latency

    @property
    def throughput(self):
        """Block pairs per cycle (with at least :attr:`min_channels` channels interleaved)."""
        return 1

    def elaborate(self, platform):
        m = Module()
        m.submodules.align_a = align_a = self._align_a
        m.submodules.align_b = align_b = self._align_b
        m.submodules.core = core = self._core

        side_layout = data.StructLayout({"channel": channel_shape(self.channels),
                                         "first": 1, "last": 1})
        # Holds the sideband of every block pair in flight in the aligners; deep enough that
        # it never throttles the data path.
        depth = align_a.latency + BUFFER_LATENCY + 4
        m.submodules.side = side = SyncFIFOBuffered(width=side_layout.size, depth=depth)

        i_p = self.i_stream.payload
        # Fork: the two aligners and the side FIFO take a block pair together.
        m.d.comb += [
            align_a.i_stream.payload.eq(i_p.a),
            align_b.i_stream.payload.eq(i_p.b),
            side.w_data.eq(Cat(i_p.channel, i_p.first, i_p.last)),
            align_a.i_stream.valid.eq(self.i_stream.valid & align_b.i_stream.ready & side.w_rdy),
            align_b.i_stream.valid.eq(self.i_stream.valid & align_a.i_stream.ready & side.w_rdy),
            side.w_en.eq(self.i_stream.valid & align_a.i_stream.ready
                         & align_b.i_stream.ready),
            self.i_stream.ready.eq(align_a.i_stream.ready & align_b.i_stream.ready
                                   & side.w_rdy),
        ]
        seed_b = Signal(32)
        m.d.comb += [
            seed_b.eq(self.seed + 1),
            align_a.seed.eq(self.seed),
            align_b.seed.eq(seed_b),
            align_a.reseed.eq(self.reseed),
            align_b.reseed.eq(self.reseed),
        ]

        # Join: both aligners run in lockstep (same latency, same stalls). The block pair and
        # its sideband go through a two-entry buffer, whose registered fill level (not the
        # core's ready) stalls the aligners: it cuts the ready path of the pipeline.
        side_out = data.View(side_layout, side.r_data)
        pair = Signal(block_dot_input_layout(self._fmt, self.channels))
        m.submodules.pair_buf = pair_buf = SyncFIFO(width=len(Cat(pair)), depth=2)
        both = align_a.o_stream.valid & align_b.o_stream.valid & side.r_rdy
        m.d.comb += [
            pair.a.eq(align_a.o_stream.payload),
            pair.b.eq(align_b.o_stream.payload),
            pair.channel.eq(side_out.channel),
            pair.first.eq(side_out.first),
            pair.last.eq(side_out.last),
            pair_buf.w_en.eq(both),
            pair_buf.w_data.eq(pair),
            align_a.o_stream.ready.eq(pair_buf.w_rdy & align_b.o_stream.valid & side.r_rdy),
            align_b.o_stream.ready.eq(pair_buf.w_rdy & align_a.o_stream.valid & side.r_rdy),
            side.r_en.eq(pair_buf.w_rdy & align_a.o_stream.valid & align_b.o_stream.valid),
            core.i_stream.valid.eq(pair_buf.r_rdy),
            core.i_stream.payload.eq(pair_buf.r_data),
            pair_buf.r_en.eq(core.i_stream.ready),
        ]
        wiring.connect(m, core.o_stream, wiring.flipped(self.o_stream))
        return m

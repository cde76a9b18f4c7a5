"""A register slice for a stream between units placed apart: :class:`SkidBuffer`."""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SkidBuffer"]


class SkidBuffer(wiring.Component):
    """A two-entry stream register slice: ``o_stream`` comes from a register and
    ``i_stream.ready`` is a register too, so no combinational path crosses it in either
    direction.

    The producer sees ``ready`` from the slice's own flip-flop, not from the consumer's logic:
    between the units of a ``GemmSystem``, which nextpnr places across the die from each other,
    a consumer's ``ready`` through the producer's FSM into its enables was the critical path
    (docs/benchmarks.md). Transfers keep their order; one per cycle while the consumer is
    ready, one cycle of latency.

    Parameters
    ----------
    width : int
        Payload bits.

    Members
    -------
    i_stream : ``In(stream.Signature(width))``
    o_stream : ``Out(stream.Signature(width))``
    """

    DEPTH = 2   # transfers the slice holds: the output register and the skid

    def __init__(self, width):
        if isinstance(width, bool) or not isinstance(width, int):
            raise TypeError(f"width must be an integer, not {width!r}")
        if width < 1:
            raise ValueError(f"width must be at least 1, not {width!r}")
        super().__init__({"i_stream": In(stream.Signature(width)),
                          "o_stream": Out(stream.Signature(width))})

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream
        main_valid, main = Signal(), Signal.like(o.payload)     # the output register
        skid_valid, skid = Signal(), Signal.like(i.payload)     # taken while the output stalls
        m.d.comb += [o.valid.eq(main_valid), o.payload.eq(main), i.ready.eq(~skid_valid)]
        with m.If(~main_valid | o.ready):
            # The output register is free after this cycle: the skid's entry first (no
            # input is taken then), else the input.
            with m.If(skid_valid):
                m.d.sync += [main_valid.eq(1), main.eq(skid), skid_valid.eq(0)]
            with m.Else():
                m.d.sync += [main_valid.eq(i.valid), main.eq(i.payload)]
        with m.Elif(i.valid & ~skid_valid):
            m.d.sync += [skid_valid.eq(1), skid.eq(i.payload)]
        return m

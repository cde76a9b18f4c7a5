"""The C readout of GemmSystem's replies (READ_C, a READBACK COMPUTE): :class:`CReadout`."""

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["CReadout"]


class CReadout(wiring.Component):
    """Walk a window of the result in C, a word at a time, and serialize each word to bytes.

    Element ``(row, col)`` of a result of ``groups`` column groups is C bank ``col % lanes``,
    bank word ``row_base + col // lanes`` with ``row_base`` the bank word of the row's first
    group. The executor sets the window (``set_cols``, ``set_row``), then for each word applies
    the address (``c_raddr``, ``c_rlane`` follow the registers), waits for the engine's read
    data (two cycles), pulses ``latch`` and takes the word's four bytes, least significant
    first, with ``next_byte``.

    Parameters
    ----------
    lanes : int
    c_depth : int
        Words of one C bank.
    cap_bits : int
        Width of the column counters.

    Members
    -------
    set_cols : ``In(1)``
        Load ``first_col``, ``cols`` (columns of the result) and ``groups``.
    first_col, cols, groups : ``In(cap_bits)``
    set_row : ``In(1)``
        Load ``row_base``.
    row_base : ``In(range(c_depth))``
    latch : ``In(1)``
        Take ``c_rdata`` as the next word and step to the next element (row by row).
    next_byte : ``In(1)``
        Step to the word's next byte.
    byte : ``Out(8)``
    last_byte : ``Out(1)``
        The word's byte being sent, and that it is the fourth.
    c_raddr, c_rlane : ``Out``
    c_rdata : ``In(32)``
        The engine's C read port.
    """

    def __init__(self, *, lanes, c_depth, cap_bits):
        self._lanes = lanes
        super().__init__({
            "set_cols": In(1), "first_col": In(cap_bits), "cols": In(cap_bits),
            "groups": In(cap_bits), "set_row": In(1), "row_base": In(range(c_depth)),
            "latch": In(1), "next_byte": In(1), "byte": Out(8), "last_byte": Out(1),
            "c_raddr": Out(range(c_depth)), "c_rlane": Out(range(lanes)), "c_rdata": In(32),
        })

    def elaborate(self, platform):
        m = Module()
        lane_bits = (self._lanes - 1).bit_length()
        rd_row_base = Signal.like(self.c_raddr)    # C bank word of the row's first group
        rd_col = Signal.like(self.cols)
        rd_cols = Signal.like(self.cols)           # columns of the result being read
        rd_groups = Signal.like(self.cols)
        word = Signal(32)
        byte_index = Signal(3)
        m.d.comb += [self.c_raddr.eq(rd_row_base + (rd_col >> lane_bits)),
                     self.c_rlane.eq(rd_col[:lane_bits] if lane_bits else 0),
                     self.byte.eq(word.word_select(byte_index[:2], 8)),
                     self.last_byte.eq(byte_index == 3)]
        with m.If(self.set_cols):
            m.d.sync += [rd_col.eq(self.first_col), rd_cols.eq(self.cols),
                         rd_groups.eq(self.groups)]
        with m.If(self.set_row):
            m.d.sync += rd_row_base.eq(self.row_base)
        with m.If(self.latch):
            m.d.sync += [word.eq(self.c_rdata), byte_index.eq(0)]
            with m.If(rd_col + 1 == rd_cols):
                m.d.sync += [rd_col.eq(0), rd_row_base.eq(rd_row_base + rd_groups)]
            with m.Else():
                m.d.sync += rd_col.eq(rd_col + 1)
        with m.If(self.next_byte):
            m.d.sync += byte_index.eq(byte_index + 1)
        return m

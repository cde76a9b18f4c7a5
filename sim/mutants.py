"""Deliberately broken variants of the units, to prove that verification catches bugs.

Each fault names one kind of bug that matters for bit-exactness and is a subclass (a mutant)
of the unit it breaks, overriding the one small method of the unit that the bug changes; the
units themselves carry no trace of it. :func:`inject` turns the matching parts of a freshly
built unit (the unit itself, or the ones inside a :class:`DotProductUnit`) into the mutant
before it is elaborated. ``hbfp-hw verify --inject-fault NAME`` and the test suite use them to
show that the testbench reports a mismatch for each.
"""

from __future__ import annotations

from typing import NamedTuple

from amaranth.hdl import Array, C, Cat, Const, Elaboratable, Mux, Signal

from hbfp_hw.rtl_gen.float_to_block import FloatToBlock
from hbfp_hw.rtl_gen.float_to_minifloat import FloatToMinifloatBlock
from hbfp_hw.rtl_gen.fp_accumulator import FPAccumulator, build_pipeline, fp32_add_steps
from hbfp_hw.rtl_gen.mac_tree import MacTree

__all__ = [
    "Fault",
    "FAULTS",
    "inject",
    "StickyLostFloatToBlock",
    "TiesAwayFloatToBlock",
    "WrapFloatToMinifloatBlock",
    "SubnormalFlushFloatToMinifloatBlock",
    "NaNCodeFloatToMinifloatBlock",
    "LeadingZerosFloatToMinifloatBlock",
    "ExponentOffByOneMacTree",
    "NaNDropMacTree",
    "PairwiseFPAccumulator",
]


class StickyLostFloatToBlock(FloatToBlock):
    """Nearest-even rounding that ignores the bits below the guard bit (no sticky bit)."""

    @staticmethod
    def _nearest_up(guard, sticky, lsb):
        return guard & lsb


class TiesAwayFloatToBlock(FloatToBlock):
    """Nearest rounding that sends ties away from zero, not to even."""

    @staticmethod
    def _nearest_up(guard, sticky, lsb):
        return guard


class WrapFloatToMinifloatBlock(FloatToMinifloatBlock):
    """Minifloat elements beyond the largest wrap around (the code's high bits are dropped)
    instead of saturating."""

    @staticmethod
    def _saturate(magnitude, max_code):
        return magnitude


class SubnormalFlushFloatToMinifloatBlock(FloatToMinifloatBlock):
    """Elements below the smallest normal are flushed to zero instead of kept as
    subnormals."""

    def _magnitude(self, base, q, up):
        normal = (base != 0) | q[self.fmt.element.mantissa_bits]
        return Mux(normal, super()._magnitude(base, q, up), 0)


class NaNCodeFloatToMinifloatBlock(FloatToMinifloatBlock):
    """The reserved codes count as numbers: saturation goes to the all-ones code (E4M3's
    NaN, E5M2's NaN), not to the largest finite one."""

    def _max_code(self):
        return (1 << (self.fmt.element.width - 1)) - 1


class LeadingZerosFloatToMinifloatBlock(FloatToMinifloatBlock):
    """FP32 subnormal inputs are aligned as if their leading bit were set: their element
    lands on the grid of the wrong binade."""

    @staticmethod
    def _leading_zeros(sig, limit):
        return C(0, range(limit + 1))


class ExponentOffByOneMacTree(MacTree):
    """A block product whose exponent is one too large."""

    def _exponent_bias(self):
        return super()._exponent_bias() - 1


class NaNDropMacTree(MacTree):
    """A block product that never propagates a NaN block."""

    def _nan(self, a, b):
        return C(0, 1)


class PairwiseFPAccumulator(FPAccumulator):
    """Sums the even and the odd terms of a channel separately and adds the two partial sums at
    the end: a plausible "pairwise" speed-up that changes the order of the FP32 additions the
    contract fixes."""

    def _sum_slots(self):
        return 2 * self._channels

    def _term_slot(self, m, i_p, accept):
        parity = Signal()          # parity of the incoming term within its sum
        fresh = Signal()           # the term starts its partial sum at +0.0
        counts = Array(Signal(2, name=f"count{c}") for c in range(self._channels))
        count = Signal(2)
        m.d.comb += [
            count.eq(Mux(i_p.first, 0, counts[i_p.channel])),
            parity.eq(count[0]),
            fresh.eq(count < 2),
        ]
        # _result adds the counter update, after the adder pipeline
        self._count_update = (accept, counts[i_p.channel], count)
        return Cat(parity, i_p.channel), fresh

    def _result(self, m, sums, out_bits, out_carry):
        accept, counter, count = self._count_update
        with m.If(accept):
            m.d.sync += counter.eq(Mux(count == 3, 2, count + 1))
        rd_other = sums.read_port(domain="comb")
        m.d.comb += rd_other.addr.eq(out_carry["slot"] ^ 1)
        other = Mux(out_carry["single"], 0, rd_other.data)
        combined, _, _, _ = build_pipeline(
            m, fp32_add_steps(name="pair"), stages=0, enable=Const(1), name="pair",
            inputs={"a": out_bits, "b": other}, valid=Const(1))
        return combined["bits"]


class Fault(NamedTuple):
    """One injectable fault."""

    #: The unit class the fault breaks.
    unit: type
    #: Its broken subclass.
    mutant: type
    description: str


#: fault name -> :class:`Fault`
FAULTS = {
    "sticky": Fault(FloatToBlock, StickyLostFloatToBlock,
                    "alignment drops the sticky bit: only the guard bit and the LSB decide "
                    "nearest-even rounding"),
    "ties-away": Fault(FloatToBlock, TiesAwayFloatToBlock,
                       "nearest rounding sends ties away from zero, not to even"),
    "saturation-wrap": Fault(FloatToMinifloatBlock, WrapFloatToMinifloatBlock,
                             "minifloat elements beyond the largest wrap around instead of "
                             "saturating"),
    "subnormal-flush": Fault(FloatToMinifloatBlock, SubnormalFlushFloatToMinifloatBlock,
                             "minifloat elements below the smallest normal are flushed to zero"),
    "nan-code-as-number": Fault(FloatToMinifloatBlock, NaNCodeFloatToMinifloatBlock,
                                "saturation reaches the reserved codes (E4M3's NaN code is "
                                "taken for a number)"),
    "leading-zeros-ignored": Fault(FloatToMinifloatBlock, LeadingZerosFloatToMinifloatBlock,
                                   "FP32 subnormal inputs are aligned as normal numbers"),
    "exponent-off-by-one": Fault(MacTree, ExponentOffByOneMacTree,
                                 "block-product exponent one too large"),
    "nan-drop": Fault(MacTree, NaNDropMacTree,
                      "a NaN block exponent is not propagated to the product"),
    "accumulation-order": Fault(FPAccumulator, PairwiseFPAccumulator,
                                "even and odd k-blocks are summed separately and combined at "
                                "the end (pairwise, not sequential)"),
}


def _targets(component, cls, seen=None):
    """The instances of ``cls`` among ``component`` and the units it built (its attributes,
    recursively), each once."""
    seen = set() if seen is None else seen
    if id(component) in seen:
        return []
    seen.add(id(component))
    if isinstance(component, cls):
        return [component]
    found = []
    for child in getattr(component, "__dict__", {}).values():
        if isinstance(child, Elaboratable):
            found += _targets(child, cls, seen)
    return found


def inject(component, fault):
    """Turn the parts of ``component`` that ``fault`` applies to into its mutant (before
    elaboration); return the component.

    Raises
    ------
    ValueError
        If the fault is unknown or the unit has no part that the fault applies to.
    """
    if fault not in FAULTS:
        raise ValueError(f"fault must be one of {', '.join(FAULTS)}, not {fault!r}")
    cls, mutant, _ = FAULTS[fault]
    targets = _targets(component, cls)
    if not targets:
        raise ValueError(f"fault {fault!r} applies to units containing a {cls.__name__}, "
                         f"not to {type(component).__name__}")
    for target in targets:
        target.__class__ = mutant
    return component

"""Deliberately broken variants of the generators, to prove that verification catches bugs.

Each fault names one kind of bug that matters for bit-exactness. :func:`inject` switches it on
in a freshly built unit (or in the right part of a :class:`DotProductUnit`) before it is
elaborated. Real builds never set a fault; ``hbfp-hw verify --inject-fault NAME`` and the
test suite use them to show that the testbench reports a mismatch for each.
"""

from .block_dot import BlockDotUnit
from .dot_product import DotProductUnit
from .float_to_block import FloatToBlock
from .fp_accumulator import FPAccumulator
from .mac_tree import MacTree

__all__ = ["FAULTS", "inject"]

#: fault name -> (class that implements it, description)
FAULTS = {
    "sticky": (FloatToBlock, "alignment drops the sticky bit: only the guard bit and the LSB "
                             "decide nearest-even rounding"),
    "ties-away": (FloatToBlock, "nearest rounding sends ties away from zero, not to even"),
    "exponent-off-by-one": (MacTree, "block-product exponent one too large"),
    "nan-drop": (MacTree, "a NaN block exponent is not propagated to the product"),
    "accumulation-order": (FPAccumulator, "even and odd k-blocks are summed separately and "
                                          "combined at the end (pairwise, not sequential)"),
}


def _targets(component, cls):
    if isinstance(component, cls):
        return [component]
    if isinstance(component, DotProductUnit):
        core = component._core
        parts = [component._align_a, component._align_b, core._mac, core._acc]
        return [p for p in parts if isinstance(p, cls)]
    if isinstance(component, BlockDotUnit):
        parts = [component._mac, component._acc]
        return [p for p in parts if isinstance(p, cls)]
    return []


def inject(component, fault):
    """Switch ``fault`` on in ``component`` (before elaboration); return the component.

    Raises
    ------
    ValueError
        If the fault is unknown or the unit has no part that the fault applies to.
    """
    if fault not in FAULTS:
        raise ValueError(f"fault must be one of {', '.join(FAULTS)}, not {fault!r}")
    cls, _ = FAULTS[fault]
    targets = _targets(component, cls)
    if not targets:
        raise ValueError(f"fault {fault!r} applies to units containing a {cls.__name__}, "
                         f"not to {type(component).__name__}")
    for target in targets:
        target._fault = fault
    return component

"""The mutants of :mod:`hbfp_hw.sim.mutants` by elaboration alone (no simulator): each one is
a real change of its unit's netlist, :func:`inject` reaches the parts of a composite unit, and
the registry is what ``hbfp-hw verify --inject-fault`` offers."""

import argparse

import pytest
from amaranth.back import rtlil

from hbfp_hw.cli import build_parser
from hbfp_hw.formats import BFPFormat, resolve_format
from hbfp_hw.rtl_gen.block_dot import BlockDotUnit
from hbfp_hw.rtl_gen.dot_product import DotProductUnit
from hbfp_hw.rtl_gen.float_to_block import FloatToBlock
from hbfp_hw.rtl_gen.float_to_minifloat import FloatToMinifloatBlock
from hbfp_hw.rtl_gen.fp_accumulator import FPAccumulator
from hbfp_hw.rtl_gen.mac_tree import MacTree
from hbfp_hw.sim.mutants import FAULTS, inject

#: A small nearest-even format (the rounding faults change only nearest-even), and a small
#: minifloat one for the faults of the minifloat quantizer.
FMT = BFPFormat(4, 4)
MINIFLOAT_FMT = resolve_format("mxfp8_e4m3").replace(block_size=4)


def _format_for(cls):
    return MINIFLOAT_FMT if issubclass(cls, FloatToMinifloatBlock) else FMT


def _small(cls):
    if cls is FPAccumulator:
        return FPAccumulator(channels=2, adder_stages=2)
    return cls(_format_for(cls))


def _netlist(component):
    return rtlil.convert(component, name="top", emit_src=False)


def _unused(component):
    # Built only to look at its parts: tell Amaranth that it and its subunits are not
    # forgotten designs.
    if hasattr(component, "_MustUse__silence"):
        component._MustUse__silence = True
        for child in vars(component).values():
            _unused(child)
    return component


def test_registry_is_what_the_cli_offers():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices["verify"]._actions if "--inject-fault" in a.option_strings)
    assert sorted(action.choices) == sorted(FAULTS)
    for name, fault in FAULTS.items():
        assert issubclass(fault.mutant, fault.unit) and fault.mutant is not fault.unit, name
        assert fault.description


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_mutant_changes_the_netlist(name):
    unit, mutant, _ = FAULTS[name]
    real = _netlist(_small(unit))
    injected = inject(_small(unit), name)
    assert type(injected) is mutant
    broken = _netlist(injected)
    assert broken != real
    assert _netlist(_small(unit)) == real       # the class itself is untouched


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_inject_reaches_the_parts_of_a_dot_product_unit(name):
    unit, mutant, _ = FAULTS[name]
    dot = _unused(DotProductUnit(_format_for(unit), channels=2, adder_stages=2))
    core = dot._core
    parts = [dot._align_a, dot._align_b, core._mac, core._acc]
    expected = [type(p) if not isinstance(p, unit) else mutant for p in parts]
    assert inject(dot, name) is dot
    assert type(dot) is DotProductUnit and type(core) is BlockDotUnit
    assert [type(p) for p in parts] == expected
    assert mutant in expected


def test_real_units_have_no_fault_switch():
    for cls in (FloatToBlock, FloatToMinifloatBlock, MacTree, FPAccumulator):
        assert not any("fault" in attr for attr in vars(cls)), cls

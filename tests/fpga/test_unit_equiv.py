# amaranth: UnusedElaboratable=no
"""The single-unit equivalence harness (tests/fpga/unit_equiv.py) proves and refutes.

``HBFP_UNIT_EQUIV_GOLD=DIR`` (netlists that ``unit_equiv.py write DIR`` wrote on another
commit) also proves this commit's units equivalent to them.
"""

import os

import pytest
from amaranth.lib.memory import Memory

from hbfp_hw.fpga.system.array import GemmEngine
from hbfp_hw.rtl_gen.layout import block_layout

from . import unit_equiv

pytestmark = [pytest.mark.slow, pytest.mark.synth]

ENGINE = "gemm_engine-lanes1-sim"


class _ShiftedWriteEngine(GemmEngine):
    """An engine that writes each A block one address too far (a change seen only through a
    memory port)."""

    def _a_buffer(self, m):
        m.submodules.a_mem = a_mem = Memory(shape=block_layout(self.fmt), depth=self.a_blocks,
                                            init=[])
        a_wr = a_mem.write_port()
        a_rd = a_mem.read_port()
        m.d.comb += [a_wr.en.eq(self.a_we), a_wr.addr.eq(self.a_waddr + 1),
                     a_wr.data.eq(self.a_wdata)]
        return a_rd


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    make, platform, _ = unit_equiv.configurations()[ENGINE]
    engine = make()
    shifted = _ShiftedWriteEngine(engine.fmt, **engine._params)
    dirs = {}
    for side, unit in (("gold", engine), ("shifted", shifted)):
        dirs[side] = tmp_path_factory.mktemp(side)
        (dirs[side] / f"{ENGINE}.il").write_text(unit_equiv.netlist(unit, platform))
    return dirs


def test_proves_itself(engines, tmp_path):
    report = unit_equiv.check(engines["gold"], engines["gold"], ENGINE, work=tmp_path,
                              force=True)
    assert "memories, identical, cut at their" in report
    assert "proven equivalent" in report


def test_refutes_shifted_write(engines, tmp_path):
    with pytest.raises(AssertionError, match=r"NOT proven equivalent"):
        unit_equiv.check(engines["gold"], engines["shifted"], ENGINE, work=tmp_path)


@pytest.mark.skipif("HBFP_UNIT_EQUIV_GOLD" not in os.environ,
                    reason="HBFP_UNIT_EQUIV_GOLD not set")
@pytest.mark.parametrize("name", sorted(unit_equiv.configurations()))
def test_equivalent_to_gold(name, tmp_path):
    unit_equiv.write(tmp_path, [name])
    print(unit_equiv.check(os.environ["HBFP_UNIT_EQUIV_GOLD"], tmp_path, name, work=tmp_path))

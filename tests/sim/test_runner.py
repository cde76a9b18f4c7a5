"""The cocotb build cache of sim/runner.py: what makes a build reusable."""

import pytest

from hbfp_hw.sim import runner
from hbfp_hw.tools import simulators

pytestmark = pytest.mark.skipif(not simulators.have_verilator(), reason="Verilator is missing")


@pytest.fixture
def compiles(tmp_path, monkeypatch):
    """Build into a private cache with a compiler stand-in that records its calls."""
    monkeypatch.setenv("HBFP_HW_CACHE", str(tmp_path))
    calls = []

    def fake_compile(verilog, top, sim, waves, build_dir):
        calls.append(build_dir)
        (build_dir / "build.ok").write_text("ok\n")

    monkeypatch.setattr(runner, "_compile", fake_compile)
    return calls


def test_build_is_reused_for_the_same_text(compiles):
    first = runner.build("module t; endmodule\n", "t")
    assert runner.build("module t; endmodule\n", "t") == first
    assert compiles == [first]
    other = runner.build("module t; wire w; endmodule\n", "t")
    assert other != first and compiles == [first, other]


def test_build_of_another_cocotb_installation_is_not_reused(compiles, monkeypatch):
    """A Verilator model loads cocotb's VPI library from the absolute path it was linked
    with, so a cache made under another virtualenv must not be reused."""
    from cocotb_tools import config

    first = runner.build("module t; endmodule\n", "t")
    monkeypatch.setattr(config, "libs_dir", "/elsewhere/cocotb/libs")
    second = runner.build("module t; endmodule\n", "t")
    assert second != first and compiles == [first, second]

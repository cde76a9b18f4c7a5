# amaranth: UnusedElaboratable=no
"""Board definitions: PLL divider search, configuration checks, top-level elaboration."""

import pytest
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hbfp_hw.fpga.boards import BOARDS, BoardTop, BuildConfig, ecp5_pll, ice40_pll


class Echo(wiring.Component):
    """Stand-in for GemmSystem with the same port shape (bytes in, bytes out)."""

    i_stream: In(stream.Signature(8))
    o_stream: Out(stream.Signature(8))
    error: Out(1)

    def elaborate(self, platform):
        m = Module()
        wiring.connect(m, wiring.flipped(self.i_stream), wiring.flipped(self.o_stream))
        return m


# -- PLLs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("mhz", [50, 62.5, 75, 100, 112.5, 125, 150, 200])
def test_ecp5_pll_exact(mhz):
    pll = ecp5_pll(25e6, mhz * 1e6)
    p = pll.params
    assert pll.f_out == pytest.approx(mhz * 1e6)
    # The frequencies follow from the dividers, within the EHXPLLL limits.
    assert 25e6 / p["CLKI_DIV"] * p["CLKFB_DIV"] == pytest.approx(pll.f_out)
    assert pll.f_vco == pytest.approx(pll.f_out * p["CLKOP_DIV"])
    assert 400e6 <= pll.f_vco <= 800e6
    assert 3.125e6 <= 25e6 / p["CLKI_DIV"] <= 400e6
    assert 1 <= p["CLKI_DIV"] <= 128 and 1 <= p["CLKFB_DIV"] <= 80
    assert p["CLKOP_CPHASE"] == p["CLKOP_DIV"] // 2


def test_ecp5_pll_100mhz_matches_ecppll():
    # `ecppll -i 25 -o 100` gives CLKI_DIV=1, CLKFB_DIV=4, CLKOP_DIV=6 (VCO 600 MHz).
    p = ecp5_pll(25e6, 100e6).params
    assert (p["CLKI_DIV"], p["CLKFB_DIV"], p["CLKOP_DIV"]) == (1, 4, 6)


def test_ecp5_pll_nearest():
    # With the PFD at >= 3.125 MHz the output steps are 25 MHz * k / d for d <= 8.
    assert ecp5_pll(25e6, 101.3e6).f_out == pytest.approx(100e6)
    assert ecp5_pll(25e6, 103.5e6).f_out == pytest.approx(25e6 * 29 / 7)


def test_ecp5_pll_errors():
    with pytest.raises(ValueError, match=r"^ECP5 PLL output must be between 10 and 400 MHz, "
                                         r"not 500 MHz$"):
        ecp5_pll(25e6, 500e6)
    with pytest.raises(ValueError, match=r"^ECP5 PLL input must be between 8 and 400 MHz, "
                                         r"not 1 MHz$"):
        ecp5_pll(1e6, 100e6)
    with pytest.raises(TypeError, match=r"^f_out must be a number, not '100'$"):
        ecp5_pll(25e6, "100")


@pytest.mark.parametrize("mhz", [18, 24, 30, 36, 48])
def test_ice40_pll(mhz):
    pll = ice40_pll(12e6, mhz * 1e6)
    p = pll.params
    f_pfd = 12e6 / (p["DIVR"] + 1)
    assert pll.f_vco == pytest.approx(f_pfd * (p["DIVF"] + 1))
    assert pll.f_out == pytest.approx(pll.f_vco / 2 ** p["DIVQ"])
    assert pll.f_out == pytest.approx(mhz * 1e6, rel=0.01)
    assert 533e6 <= pll.f_vco <= 1066e6
    assert 1 <= p["FILTER_RANGE"] <= 6


def test_ice40_pll_errors():
    with pytest.raises(ValueError, match=r"^iCE40 PLL output must be between 16 and 275 MHz, "
                                         r"not 12 MHz$"):
        ice40_pll(12e6, 12e6)


# -- configuration ------------------------------------------------------------------------------

def test_config_defaults():
    c = BuildConfig()
    assert c.board == "ulx3s-85f"
    assert c.fmt == BOARDS["ulx3s-85f"].fmt
    assert c.clock_hz == pytest.approx(100e6)
    assert c.pll.params["CLKFB_DIV"] == 4
    ice = BuildConfig(board="icebreaker")
    assert ice.pll is None and ice.clock_hz == 12e6
    assert ice.to_dict()["clock_mhz"] == 12.0


def test_config_errors():
    with pytest.raises(ValueError, match=r"^board must be one of ulx3s-85f, icebreaker, "
                                         r"not 'de10'$"):
        BuildConfig(board="de10")
    with pytest.raises(ValueError, match=r"^lanes must be a power of two between 1 and 64, "
                                         r"not 0$"):
        BuildConfig.for_board(lanes=0)
    with pytest.raises(TypeError, match=r"^fmt must be a BFPFormat, not 'bfp8'$"):
        BuildConfig.for_board(fmt="bfp8")
    with pytest.raises(TypeError, match=r"^system must be a SystemConfig, not 'bfp8'$"):
        BuildConfig(system="bfp8")
    # 3 Mbaud cannot be made from a 20 MHz clock (6.67 cycles per bit).
    with pytest.raises(ValueError, match=r"^Baud rate 3000000 is off by"):
        BuildConfig(board="ulx3s-85f", clock_mhz=20)
    with pytest.raises(TypeError, match=r"^config must be a BuildConfig, not 'x'$"):
        BoardTop("x")


# -- elaboration --------------------------------------------------------------------------------

@pytest.mark.parametrize("board,clock_mhz,baud", [
    ("ulx3s-85f", None, 3_000_000), ("ulx3s-85f", 25, 1_000_000),
    ("icebreaker", None, 3_000_000), ("icebreaker", 24, 3_000_000)])
def test_elaborate(board, clock_mhz, baud):
    """The top-level elaborates into the board's RTLIL (PLL instance, pins, constraints)."""
    config = BuildConfig(board=board, clock_mhz=clock_mhz, baud=baud)
    platform = config.spec.platform()
    plan = platform.prepare(BoardTop(config, system_factory=lambda c: Echo()), name="top",
                            debug_verilog=False)
    rtlil = plan.files["top.il"]
    if config.pll is None:
        assert "EHXPLLL" not in rtlil and "SB_PLL40" not in rtlil
    elif board == "ulx3s-85f":
        assert "EHXPLLL" in rtlil
        p = config.pll.params
        assert f"parameter \\CLKFB_DIV {p['CLKFB_DIV']}" in rtlil
        assert f'attribute \\FREQUENCY_PIN_CLKOP "{config.clock_hz / 1e6:g}"' in rtlil
    else:
        assert "SB_PLL40_PAD" in rtlil
    constraints = plan.files["top.lpf" if board == "ulx3s-85f" else "top.pcf"]
    # Only the oscillator pin is constrained; nextpnr derives the PLL output from it.
    osc = config.spec.osc_hz
    assert (f'FREQUENCY PORT "clk25_0__io" {osc:.1f} HZ' in constraints
            or f"set_frequency clk12_0__io {osc / 1e6:g}" in constraints)


def test_default_system_is_gemm_system():
    """Without a factory the top instantiates and elaborates the real GemmSystem."""
    from hbfp_hw.fpga.system.engine import GemmSystem

    config = BuildConfig(board="icebreaker")
    systems = []

    def factory(c):
        from hbfp_hw.fpga.boards.boards import default_system
        systems.append(default_system(c))
        return systems[-1]

    plan = config.spec.platform().prepare(BoardTop(config, system_factory=factory), name="top",
                                          debug_verilog=False)
    assert "top.il" in plan.files
    (system,) = systems
    assert isinstance(system, GemmSystem)
    assert system.info.lanes == config.lanes
    assert system.info.clock_hz == 12_000_000
    assert system.signature.members["i_stream"].signature == stream.Signature(8).flip()
    assert system.signature.members["o_stream"].signature == stream.Signature(8)

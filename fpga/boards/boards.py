"""Board definitions and top-levels: clock, reset, UART PHY, ``GemmSystem`` and status LEDs.

Two boards come from ``amaranth-boards``:

``ulx3s-85f`` (default)
    ULX3S with the LFE5U-85F (ECP5). An ``EHXPLLL`` makes the compute clock (default 100 MHz)
    from the 25 MHz oscillator; :func:`ecp5_pll` computes its dividers. LEDs 0..7: heartbeat,
    activity, error, PLL lock, busy, and the low bits of the lane count.
``icebreaker``
    iCEBreaker (iCE40UP5K), with a reduced configuration (the ``"icebreaker"`` preset of
    :data:`hbfp_hw.fpga.config.PRESETS`). The default is to run the whole design from the
    12 MHz oscillator, no PLL: the small configuration does not need more, 3 Mbaud is exactly
    4 cycles per bit at 12 MHz, and the slow clock leaves timing slack. Another
    ``--clock-mhz`` instantiates ``SB_PLL40_PAD`` with dividers from :func:`ice40_pll`. Green
    LED: heartbeat, blinking faster while bytes move; red LED: error.

Every top-level (:class:`BoardTop`) is::

    clock ─> PLL ─> sync domain (reset: !lock | button, asynchronous, released through a
                    ResetSynchronizer; on the ECP5 on a global network, through a DCCA)
    uart.rx ─> UARTReceiver ─> SyncFIFOBuffered ─> register ─> GemmSystem
    GemmSystem ─> UARTTransmitter ─> uart.tx
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import ClockDomain, Const, Elaboratable, Instance, Module, Mux, Signal
from amaranth.lib import io, wiring
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.lib.fifo import SyncFIFOBuffered

from hbfp_hw.formats import BFPFormat
from hbfp_hw.rtl_gen.block_to_float import BlockToFloat
from hbfp_hw.rtl_gen.float_to_minifloat import quantizer_class
from hbfp_hw.rtl_gen.fp_accumulator import FPAccumulator
from hbfp_hw.rtl_gen.mac_tree import MacTree
from hbfp_hw.rtl_gen.systolic import max_product_stages

from ..config import SystemConfig
from ..system.uart import UARTReceiver, UARTTransmitter, baud_divisor

__all__ = [
    "Board",
    "BOARDS",
    "DEFAULT_BOARD",
    "DEFAULT_BAUD",
    "BuildConfig",
    "deepest_stages",
    "PLLConfig",
    "ecp5_pll",
    "ice40_pll",
    "BoardTop",
    "default_system",
]

DEFAULT_BAUD = 3_000_000


@dataclass(frozen=True)
class Board:
    """A supported board and its default (fitting) configuration.

    Parameters
    ----------
    name : str
        The ``--board`` name.
    family : {"ecp5", "ice40"}
    device : str
        FPGA part, for reports.
    osc_hz : int
        Frequency of the board oscillator.
    rx_fifo_depth : int
        Bytes buffered between the UART receiver and the ``GemmSystem``.
    programmer : str
        Tool used by ``--program``.
    dsp_blocks : int
        Hard multiplier blocks of the part (MULT18X18D, SB_MAC16): how many PEs of a systolic
        array multiply in them (:meth:`SystemConfig.fit_multipliers`).
    system : SystemConfig
        The default ``GemmSystem`` configuration of the board: a preset of
        :data:`hbfp_hw.fpga.config.PRESETS` (format, lanes, clock, buffers, pipelines).
    """

    name: str
    family: str
    device: str
    osc_hz: int
    rx_fifo_depth: int
    programmer: str
    dsp_blocks: int
    system: SystemConfig

    @property
    def fmt(self):
        """Default format (``system.fmt``)."""
        return self.system.fmt

    @property
    def lanes(self):
        """Default number of dot-product lanes (``system.lanes``)."""
        return self.system.lanes

    @property
    def clock_mhz(self):
        """Default compute clock in MHz (``system.clock_hz``)."""
        return self.system.clock_hz / 1e6

    @property
    def input_format(self):
        """Default float format of the operands on the link (``system.input_format``)."""
        return self.system.input_format.value

    def platform(self):
        """Return a fresh ``amaranth-boards`` platform object for this board."""
        if self.name == "ulx3s-85f":
            from amaranth_boards.ulx3s import ULX3S_85F_Platform
            return ULX3S_85F_Platform()
        from amaranth_boards.icebreaker import ICEBreakerPlatform
        return ICEBreakerPlatform()


#: Supported boards by ``--board`` name. Each board's ``GemmSystem`` is the preset of its name
#: (:data:`hbfp_hw.fpga.config.PRESETS` says why each is what it is; the measured utilisation
#: and Fmax of each are in docs/hardware.md).
BOARDS = {
    "ulx3s-85f": Board(
        name="ulx3s-85f", family="ecp5", device="LFE5U-85F-6BG381C", osc_hz=25_000_000,
        rx_fifo_depth=512, programmer="openFPGALoader", dsp_blocks=156,
        system=SystemConfig.preset("ulx3s-85f")),
    "icebreaker": Board(
        name="icebreaker", family="ice40", device="iCE40UP5K-SG48", osc_hz=12_000_000,
        rx_fifo_depth=64, programmer="iceprog", dsp_blocks=8,
        system=SystemConfig.preset("icebreaker")),
}

DEFAULT_BOARD = "ulx3s-85f"


# -- PLLs ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PLLConfig:
    """Divider settings of a PLL and the frequencies they give (all in Hz)."""

    family: str
    f_in: float
    f_out: float
    f_vco: float
    params: dict

    @property
    def f_out_mhz(self):
        return self.f_out / 1e6


def _check_freq(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {value!r}")
    if not value > 0:
        raise ValueError(f"{name} must be positive, not {value!r}")


def ecp5_pll(f_in, f_out):
    """Compute ``EHXPLLL`` dividers for ``f_out`` from ``f_in`` (both in Hz).

    Feedback comes from CLKOP, so ``f_out = f_in / CLKI_DIV * CLKFB_DIV`` and
    ``f_vco = f_out * CLKOP_DIV``. Searches like Trellis' ``ecppll``: input 8..400 MHz, PFD
    3.125..400 MHz, VCO 400..800 MHz, output 10..400 MHz; the closest output wins, ties go to
    the VCO nearest 600 MHz.

    Raises
    ------
    ValueError
        If a frequency is out of range.
    """
    _check_freq("f_in", f_in)
    _check_freq("f_out", f_out)
    if not 8e6 <= f_in <= 400e6:
        raise ValueError(f"ECP5 PLL input must be between 8 and 400 MHz, not {f_in / 1e6:g} MHz")
    if not 10e6 <= f_out <= 400e6:
        raise ValueError(
            f"ECP5 PLL output must be between 10 and 400 MHz, not {f_out / 1e6:g} MHz")
    best = None
    for clki_div in range(1, 129):
        f_pfd = f_in / clki_div
        if not 3.125e6 <= f_pfd <= 400e6:
            continue
        for clkfb_div in range(1, 81):
            fout = f_pfd * clkfb_div
            for clkop_div in range(1, 129):
                fvco = fout * clkop_div
                if not 400e6 <= fvco <= 800e6:
                    continue
                key = (abs(fout - f_out), abs(fvco - 600e6))
                if best is None or key < best[0]:
                    best = (key, clki_div, clkfb_div, clkop_div, fout, fvco)
    _, clki_div, clkfb_div, clkop_div, fout, fvco = best
    return PLLConfig("ecp5", f_in, fout, fvco, {
        "CLKI_DIV": clki_div,
        "CLKFB_DIV": clkfb_div,
        "CLKOP_DIV": clkop_div,
        # Lattice's tools shift the primary output by 180 degrees; ecppll does the same.
        "CLKOP_CPHASE": clkop_div // 2,
        "CLKOP_FPHASE": 0,
    })


def _ice40_filter_range(f_pfd):
    for limit, value in ((17e6, 1), (26e6, 2), (44e6, 3), (66e6, 4), (101e6, 5)):
        if f_pfd < limit:
            return value
    return 6


def ice40_pll(f_in, f_out):
    """Compute ``SB_PLL40`` dividers (SIMPLE feedback) for ``f_out`` from ``f_in`` (Hz).

    ``f_out = f_in * (DIVF + 1) / ((DIVR + 1) * 2**DIVQ)``, with the ``icepll`` limits: input
    10..133 MHz, PFD 10..133 MHz, VCO 533..1066 MHz, output 16..275 MHz.

    Raises
    ------
    ValueError
        If a frequency is out of range.
    """
    _check_freq("f_in", f_in)
    _check_freq("f_out", f_out)
    if not 10e6 <= f_in <= 133e6:
        raise ValueError(
            f"iCE40 PLL input must be between 10 and 133 MHz, not {f_in / 1e6:g} MHz")
    if not 16e6 <= f_out <= 275e6:
        raise ValueError(
            f"iCE40 PLL output must be between 16 and 275 MHz, not {f_out / 1e6:g} MHz")
    best = None
    for divr in range(16):
        f_pfd = f_in / (divr + 1)
        if not 10e6 <= f_pfd <= 133e6:
            continue
        for divf in range(128):
            fvco = f_pfd * (divf + 1)
            if not 533e6 <= fvco <= 1066e6:
                continue
            for divq in range(1, 7):
                fout = fvco / (1 << divq)
                key = abs(fout - f_out)
                if best is None or key < best[0]:
                    best = (key, divr, divf, divq, fout, fvco, f_pfd)
    if best is None:
        raise ValueError(f"No iCE40 PLL setting reaches {f_out / 1e6:g} MHz")
    _, divr, divf, divq, fout, fvco, f_pfd = best
    return PLLConfig("ice40", f_in, fout, fvco, {
        "DIVR": divr, "DIVF": divf, "DIVQ": divq, "FILTER_RANGE": _ice40_filter_range(f_pfd),
    })


# -- configuration ------------------------------------------------------------------------------

def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value!r}")


def deepest_stages(fmt, *, array):
    """Return the deepest pipeline of each dot-product unit (or, with ``array``, each PE of a
    systolic array: :func:`~hbfp_hw.rtl_gen.systolic.max_product_stages`) and the quantizer
    for ``fmt``.

    On the ECP5 the pipelines default to their deepest setting (the FP32 adder of the
    accumulators fully registered, and so on), as the 100 MHz target needs;
    ``docs/benchmarks.md`` says what still limits the clock.
    """
    return dict(align_stages=quantizer_class(fmt).max_stages_for(fmt),
                mac_stages=max_product_stages(fmt) if array else MacTree.max_stages_for(fmt),
                convert_stages=BlockToFloat.MAX_STAGES,
                adder_stages=FPAccumulator.MAX_ADDER_STAGES)


@dataclass(frozen=True)
class BuildConfig:
    """Everything that determines a bitstream: a board, its ``GemmSystem``, clock and baud.

    Parameters
    ----------
    board : str
        A key of :data:`BOARDS`.
    system : SystemConfig, optional
        The ``GemmSystem`` configuration (defaults to the board's, ``BOARDS[board].system``).
        Its ``clock_hz`` is replaced by the frequency the board's clocking actually produces.
    clock_mhz : float, optional
        Requested compute clock (defaults to ``system.clock_hz``). On the ULX3S the PLL gets
        as close as its dividers allow; :attr:`clock_hz` is the frequency actually produced.
    baud : int
        UART baud rate.

    Raises
    ------
    TypeError, ValueError
        On a bad board name or parameter.
    """

    board: str = DEFAULT_BOARD
    system: SystemConfig | None = None
    clock_mhz: float | None = None
    baud: int = DEFAULT_BAUD

    def __post_init__(self):
        if self.board not in BOARDS:
            raise ValueError(f"board must be one of {', '.join(BOARDS)}, not {self.board!r}")
        spec = BOARDS[self.board]
        system = spec.system if self.system is None else self.system
        if not isinstance(system, SystemConfig):
            raise TypeError(f"system must be a SystemConfig, not {system!r}")
        if self.clock_mhz is None:
            object.__setattr__(self, "clock_mhz", system.clock_hz / 1e6)
        _check_freq("clock_mhz", self.clock_mhz)
        _check_freq("baud", self.baud)
        # The gateware reports (and times out by) the clock it actually runs at.
        object.__setattr__(self, "system", system.replace(clock_hz=int(round(self.clock_hz))))
        # Fail early on a PLL or UART that cannot be made.
        baud_divisor(self.clock_hz, self.baud)

    @classmethod
    def for_board(cls, board=DEFAULT_BOARD, *, fmt=None, lanes=None, clock_mhz=None,
                  baud=DEFAULT_BAUD, input_format=None, **changes):
        """Return the build of ``board`` with its system changed as the ``build`` command does.

        ``fmt``, ``lanes`` and ``input_format`` (None: the board's) and ``changes`` (other
        :class:`SystemConfig` fields) replace fields of the board's system. Unless
        ``changes`` sets ``multipliers``, they are fitted to the part
        (:meth:`SystemConfig.fit_multipliers` of :attr:`Board.dsp_blocks`; ``dsp_pes`` in
        ``changes`` then overrides the count). On the ECP5 the
        pipeline depths are the deepest for the format (:func:`deepest_stages`) unless
        ``changes`` gives them.

        Raises
        ------
        TypeError, ValueError
            As the constructor and :class:`SystemConfig`.
        """
        if board not in BOARDS:
            raise ValueError(f"board must be one of {', '.join(BOARDS)}, not {board!r}")
        spec = BOARDS[board]
        given = {k: v for k, v in
                 dict(fmt=fmt, lanes=lanes, input_format=input_format).items() if v is not None}
        if "fmt" in given and not isinstance(given["fmt"], BFPFormat):
            raise TypeError(f"fmt must be a BFPFormat, not {given['fmt']!r}")
        fit = "multipliers" not in changes
        # (The board's dsp_pes may not suit the new shape: it is fitted again.)
        system = spec.system.replace(**given, **{**changes, **({"dsp_pes": None} if fit else {})})
        if fit:
            system = system.fit_multipliers(spec.dsp_blocks)
            if "dsp_pes" in changes:
                system = system.replace(dsp_pes=changes["dsp_pes"])
        if spec.family == "ecp5":
            deepest = deepest_stages(system.fmt, array=system.rows > 0)
            system = system.replace(**{**deepest, **{k: v for k, v in changes.items()
                                                     if k in deepest}})
        return cls(board=board, system=system, clock_mhz=clock_mhz, baud=baud)

    @property
    def spec(self):
        """The :class:`Board`."""
        return BOARDS[self.board]

    fmt = property(lambda self: self.system.fmt, doc="The format (``system.fmt``).")
    lanes = property(lambda self: self.system.lanes, doc="Lanes (``system.lanes``).")
    input_format = property(lambda self: self.system.input_format.value,
                            doc="Float format on the link (``system.input_format``).")

    @property
    def pll(self):
        """The :class:`PLLConfig`, or None when the oscillator clocks the design directly."""
        spec = self.spec
        if abs(self.clock_mhz * 1e6 - spec.osc_hz) < 1:
            return None
        if spec.family == "ecp5":
            return ecp5_pll(spec.osc_hz, self.clock_mhz * 1e6)
        return ice40_pll(spec.osc_hz, self.clock_mhz * 1e6)

    @property
    def clock_hz(self):
        """Frequency of the compute (``sync``) clock actually produced."""
        pll = self.pll
        return self.spec.osc_hz if pll is None else pll.f_out

    def to_dict(self):
        return {
            "board": self.board,
            "device": self.spec.device,
            "format": self.fmt.to_dict(),
            "input_format": self.input_format,
            "lanes": self.lanes,
            "clock_mhz_requested": self.clock_mhz,
            "clock_mhz": self.clock_hz / 1e6,
            "baud": self.baud,
            "system": self.system.to_dict(),
        }


def default_system(config):
    """Return the ``GemmSystem`` of ``config`` (a :class:`BuildConfig`): what a board build
    makes unless given another ``system_factory``."""
    from ..system.engine import GemmSystem
    return GemmSystem(config.system)


# -- top-level ----------------------------------------------------------------------------------

def _input(m, platform, name, number=0):
    buf = io.Buffer("i", platform.request(name, number, dir="-"))
    m.submodules[f"{name}_{number}_buf"] = buf
    return buf.i


def _output(m, platform, name, number=0):
    buf = io.Buffer("o", platform.request(name, number, dir="-"))
    m.submodules[f"{name}_{number}_buf"] = buf
    return buf.o


class BoardTop(Elaboratable):
    """Top-level of one board: clock, reset, UART PHY, ``GemmSystem`` and LEDs.

    Parameters
    ----------
    config : BuildConfig
    system_factory : callable, optional
        ``system_factory(config)`` returns the component between the UART streams (anything
        with ``i_stream: In(stream.Signature(8))`` and ``o_stream: Out(stream.Signature(8))``).
        Defaults to ``hbfp_hw.fpga.system.engine.GemmSystem``. Optional 1-bit outputs ``error`` and
        ``busy`` of that component drive LEDs.

    Raises
    ------
    TypeError
        If ``config`` is not a :class:`BuildConfig`.
    """

    def __init__(self, config, *, system_factory=None):
        if not isinstance(config, BuildConfig):
            raise TypeError(f"config must be a BuildConfig, not {config!r}")
        self._config = config
        self._system_factory = default_system if system_factory is None else system_factory

    @property
    def config(self):
        return self._config

    # Clock and reset generation; returns the PLL lock signal (1 when there is no PLL).
    def _clocking(self, m, platform):
        config = self._config
        spec = config.spec
        # The reset is asynchronous (released synchronously by the ResetSynchronizer), so it
        # reaches only the flip-flops' set/reset inputs, no logic (a synchronous reset was
        # folded into LUTs in front of registers across the die: 85.5 MHz in the 4 x 4 array
        # system). Released, the registers leave reset within a cycle or two of each other,
        # which is harmless: nothing moves until the first byte arrives on the UART.
        m.domains.sync = cd_sync = ClockDomain("sync", async_reset=True)
        pll = config.pll
        locked = Signal(init=0 if pll is not None else 1)

        if spec.family == "ecp5":
            clk_in = _input(m, platform, "clk25")
            button = _input(m, platform, "button_fire")
            if pll is None:
                m.d.comb += cd_sync.clk.eq(clk_in)
            else:
                p = pll.params
                m.submodules.pll = Instance(
                    "EHXPLLL",
                    a_FREQUENCY_PIN_CLKI=f"{pll.f_in / 1e6:g}",
                    a_FREQUENCY_PIN_CLKOP=f"{pll.f_out / 1e6:g}",
                    a_ICP_CURRENT="12", a_LPF_RESISTOR="8",
                    a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
                    p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED",
                    p_STDBY_ENABLE="DISABLED", p_DPHASE_SOURCE="DISABLED",
                    p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
                    p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
                    p_CLKI_DIV=p["CLKI_DIV"], p_CLKOP_ENABLE="ENABLED",
                    p_CLKOP_DIV=p["CLKOP_DIV"], p_CLKOP_CPHASE=p["CLKOP_CPHASE"],
                    p_CLKOP_FPHASE=p["CLKOP_FPHASE"], p_FEEDBK_PATH="CLKOP",
                    p_CLKFB_DIV=p["CLKFB_DIV"],
                    i_RST=Const(0), i_STDBY=Const(0), i_CLKI=clk_in,
                    o_CLKOP=cd_sync.clk, i_CLKFB=cd_sync.clk,
                    i_PHASESEL0=Const(0), i_PHASESEL1=Const(0), i_PHASEDIR=Const(1),
                    i_PHASESTEP=Const(1), i_PHASELOADREG=Const(1), i_PLLWAKESYNC=Const(0),
                    i_ENCLKOP=Const(0), o_LOCK=locked)
        else:
            button = _input(m, platform, "button")
            if pll is None:
                m.d.comb += cd_sync.clk.eq(_input(m, platform, "clk12"))
            else:
                p = pll.params
                clk_port = platform.request("clk12", dir="-")
                m.submodules.pll = Instance(
                    "SB_PLL40_PAD",
                    p_FEEDBACK_PATH="SIMPLE", p_PLLOUT_SELECT="GENCLK",
                    p_DIVR=Const(p["DIVR"], 4), p_DIVF=Const(p["DIVF"], 7),
                    p_DIVQ=Const(p["DIVQ"], 3), p_FILTER_RANGE=Const(p["FILTER_RANGE"], 3),
                    io_PACKAGEPIN=clk_port.io,
                    i_RESETB=Const(1), i_BYPASS=Const(0),
                    o_PLLOUTGLOBAL=cd_sync.clk, o_LOCK=locked)
        # No explicit constraint on the compute clock: nextpnr derives it from the PLL
        # parameters and the oscillator's pin constraint (an explicit one would name a net
        # that flattening has renamed, and be ignored with a warning).
        if spec.family == "ecp5":
            # The released reset reaches the control registers of the whole chip: from the
            # synchronizer it goes through a DCCA onto a global network (as general routing,
            # the net across the die was the 4 x 4 array system's critical path, 90.2 MHz).
            m.domains.reset_src = cd_src = ClockDomain("reset_src", async_reset=True)
            m.d.comb += cd_src.clk.eq(cd_sync.clk)
            m.submodules.reset_sync = ResetSynchronizer(~locked | button, domain="reset_src")
            m.submodules.reset_dcc = Instance("DCCA", i_CLKI=cd_src.rst, i_CE=Const(1),
                                              o_CLKO=cd_sync.rst)
        else:
            m.submodules.reset_sync = ResetSynchronizer(~locked | button, domain="sync")
        return locked

    def elaborate(self, platform):
        config = self._config
        spec = config.spec
        m = Module()
        locked = self._clocking(m, platform)

        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx_buf = uart_rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx_buf = uart_tx = io.Buffer("o", uart.tx)
        m.submodules.rx = rx = UARTReceiver(clock_hz=config.clock_hz, baud=config.baud)
        m.submodules.tx = tx = UARTTransmitter(clock_hz=config.clock_hz, baud=config.baud)
        m.submodules.rx_fifo = rx_fifo = SyncFIFOBuffered(width=8, depth=spec.rx_fifo_depth)
        m.submodules.system = system = self._system_factory(config)

        m.d.comb += [
            rx.rx.eq(uart_rx.i),
            uart_tx.o.eq(tx.tx),
            rx_fifo.w_data.eq(rx.o_stream.payload),
            rx_fifo.w_en.eq(rx.o_stream.valid),
            rx.o_stream.ready.eq(rx_fifo.w_rdy),
        ]
        # A register after the FIFO: the block RAM's clock-to-output time (about 6 ns on the
        # ECP5) would otherwise start the decoder's paths.
        in_valid = Signal()
        in_data = Signal(8)
        take = ~in_valid | system.i_stream.ready
        m.d.comb += [
            rx_fifo.r_en.eq(take),
            system.i_stream.valid.eq(in_valid),
            system.i_stream.payload.eq(in_data),
        ]
        with m.If(take):
            m.d.sync += [in_valid.eq(rx_fifo.r_rdy), in_data.eq(rx_fifo.r_data)]
        wiring.connect(m, system.o_stream, tx.i_stream)

        # Status: heartbeat (1 Hz), activity (stretched to ~50 ms), sticky error.
        clock_hz = int(config.clock_hz)
        heartbeat = Signal()
        beat = Signal(range(clock_hz // 2 + 1))
        with m.If(beat == 0):
            m.d.sync += [beat.eq(clock_hz // 2), heartbeat.eq(~heartbeat)]
        with m.Else():
            m.d.sync += beat.eq(beat - 1)

        activity = Signal()
        stretch = Signal(range(clock_hz // 20 + 1))
        # The byte pulses come from the system's stream handshakes; registered, they stay off
        # the paths of the system's control logic.
        moved = Signal()
        m.d.sync += moved.eq((rx.o_stream.valid & rx.o_stream.ready)
                             | (tx.i_stream.valid & tx.i_stream.ready))
        with m.If(moved):
            m.d.sync += stretch.eq(clock_hz // 20)
        with m.Elif(stretch != 0):
            m.d.sync += stretch.eq(stretch - 1)
        m.d.comb += activity.eq(stretch != 0)

        members = system.signature.members
        error = Signal()
        sys_error = system.error if "error" in members else Const(0)
        busy = system.busy if "busy" in members else Const(0)
        with m.If(rx.framing_error | rx.overflow | sys_error):
            m.d.sync += error.eq(1)

        if spec.family == "ecp5":
            leds = [_output(m, platform, "led", i) for i in range(8)]
            m.d.comb += [
                leds[0].eq(heartbeat),
                leds[1].eq(activity),
                leds[2].eq(error),
                leds[3].eq(locked),
                leds[4].eq(busy),
                leds[5].eq(config.lanes & 1),
                leds[6].eq((config.lanes >> 1) & 1),
                leds[7].eq((config.lanes >> 2) & 1),
            ]
        else:
            led_r = _output(m, platform, "led_r")
            led_g = _output(m, platform, "led_g")
            # Activity makes the heartbeat flicker at ~8 Hz.
            flicker = beat[max(0, (clock_hz // 16).bit_length() - 1)]
            m.d.comb += [
                led_g.eq(Mux(activity, flicker, heartbeat)),
                led_r.eq(error),
            ]
        return m

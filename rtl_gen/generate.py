"""Build any unit by name and emit it as integration-ready IP.

:func:`emit` writes three files for a unit:

- ``<name>.v``: Verilog from Amaranth (no ``src`` attributes, so the text depends only on
  the parameters), linted with ``verilator --lint-only -Wall`` when Verilator is available;
- ``<name>.json``: module name, format, every port (name, width, direction, role, stream,
  payload field layout), latency and throughput;
- ``<name>.core``: a FuseSoC CAPI2 core file.

Names are deterministic: the same parameters always give the same module and file names.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import Shape
from amaranth.lib import data, wiring

from hbfp_hw import __version__
from hbfp_hw.formats import BFPFormat, FloatFormat
from hbfp_hw.tools import process, simulators

from .block_to_float import BlockToFloat
from .dot_product import DotProductUnit
from .float_to_minifloat import block_quantizer
from .fp32_mac import Fp32MacBaseline
from .fp_accumulator import FPAccumulator
from .mac_tree import MacTree

__all__ = ["UNITS", "FORMAT_FREE_UNITS", "build_unit", "unit_name", "describe", "emit", "lint"]

#: Unit names of ``hbfp-hw generate --unit`` and the hardware parameters each accepts.
UNITS = {
    "dot": ("DotProductUnit", ("channels", "align_stages", "mac_stages", "convert_stages",
                               "adder_stages")),
    "align": ("FloatToBlock or FloatToMinifloatBlock", ("stages",)),
    "mac": ("MacTree", ("stages",)),
    "to-float": ("BlockToFloat", ("stages",)),
    "accumulator": ("FPAccumulator", ("channels", "adder_stages")),
    "fp32-baseline": ("Fp32MacBaseline", ("channels", "mul_stages", "adder_stages")),
}
#: Units whose hardware does not depend on the BFP format.
FORMAT_FREE_UNITS = ("accumulator", "fp32-baseline")


def _check_unit(unit):
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {', '.join(UNITS)}, not {unit!r}")
    return unit


def build_unit(unit, fmt=None, *, input_format="fp32", **hw):
    """Return the Component for ``unit`` (a key of :data:`UNITS`).

    ``hw`` holds the unit's hardware parameters (see :data:`UNITS`); unknown ones raise
    TypeError, bad values raise the unit's own ValueError.
    """
    _check_unit(unit)
    allowed = UNITS[unit][1]
    unknown = sorted(set(hw) - set(allowed))
    if unknown:
        raise TypeError(f"unit {unit!r} takes the hardware parameters {', '.join(allowed)}, "
                        f"not {', '.join(unknown)}")
    if unit in FORMAT_FREE_UNITS:
        hw.setdefault("channels", hw.get("adder_stages", 3))
        cls = FPAccumulator if unit == "accumulator" else Fp32MacBaseline
        return cls(**hw)
    if not isinstance(fmt, BFPFormat):
        raise TypeError(f"fmt must be a BFPFormat, not {fmt!r}")
    if unit == "dot":
        return DotProductUnit(fmt, input_format=input_format, **hw)
    if unit == "align":
        return block_quantizer(fmt, input_format=input_format, **hw)
    if unit == "mac":
        return MacTree(fmt, **hw)
    return BlockToFloat(fmt, **hw)


_ABBREV = {"channels": "c", "stages": "s", "align_stages": "as", "mac_stages": "ms",
           "convert_stages": "cs", "adder_stages": "fs", "mul_stages": "xs"}


def unit_name(unit, fmt=None, *, input_format="fp32", **hw):
    """Return the deterministic module name, e.g. ``hbfp_dot_bfp8_fp32``."""
    _check_unit(unit)
    parts = ["hbfp", unit.replace("-", "_")]
    if unit not in FORMAT_FREE_UNITS:
        parts.append(fmt.name)
    if unit in ("dot", "align"):
        parts.append(FloatFormat(input_format).value)
    # Non-default hardware parameters, abbreviated, in a fixed order.
    for key in UNITS[unit][1]:
        if key in hw:
            parts.append(f"{_ABBREV[key]}{int(hw[key])}")
    return "_".join(parts)


def _describe_shape(shape):
    if isinstance(shape, data.StructLayout):
        return {"kind": "struct", "width": shape.size, "fields": [
            {"name": name, "offset": field.offset, **_describe_shape(field.shape)}
            for name, field in shape]}
    if isinstance(shape, data.ArrayLayout):
        return {"kind": "array", "width": shape.size, "length": shape.length,
                "element": _describe_shape(shape.elem_shape)}
    shape = Shape.cast(shape)
    return {"kind": "signed" if shape.signed else "unsigned", "width": shape.width}


_ROLES = {"valid": "valid", "ready": "ready", "payload": "payload"}


def describe(component, name, unit, fmt=None, input_format=None):
    """Return the JSON-ready description of a generated unit."""
    ports = [
        {"name": "clk", "width": 1, "direction": "input", "role": "clock", "stream": None},
        {"name": "rst", "width": 1, "direction": "input", "role": "reset", "stream": None},
    ]
    for path, member in component.signature.members.flatten():
        if not member.is_port:
            continue
        port = {
            "name": "__".join(map(str, path)),
            "width": Shape.cast(member.shape).width if not isinstance(member.shape, data.Layout)
            else member.shape.size,
            "direction": "input" if member.flow == wiring.In else "output",
            "role": _ROLES.get(path[-1], "control") if len(path) > 1 else "control",
            "stream": path[0] if len(path) > 1 else None,
        }
        if port["role"] == "payload" or isinstance(member.shape, data.Layout):
            port["layout"] = _describe_shape(member.shape)
        ports.append(port)
    desc = {
        "module": name,
        "unit": unit,
        "class": type(component).__name__,
        "generator": f"hbfp-hw {__version__}",
        "format": fmt.to_dict() if fmt is not None else None,
        "input_format": FloatFormat(input_format).value if input_format else None,
        "ports": ports,
        "latency": component.latency,
        "throughput": component.throughput,
    }
    for attr in ("channels", "min_channels"):
        if hasattr(component, attr):
            desc[attr] = getattr(component, attr)
    return desc


def _core_file(name, desc):
    fmt = desc["format"]
    what = f" for {fmt['name']}" if fmt else ""
    return f"""CAPI=2:
name: hbfp-hw:ip:{name}:{__version__}
description: hbfp-hw {desc['class']}{what} (latency {desc['latency']} cycles, \
throughput {desc['throughput']} per cycle)

filesets:
  rtl:
    files:
      - {name}.v
    file_type: verilogSource

targets:
  default:
    filesets: [rtl]
    toplevel: {name}
  lint:
    default_tool: verilator
    filesets: [rtl]
    toplevel: {name}
    tools:
      verilator:
        mode: lint-only
        verilator_options: [-Wall]
"""


def lint(path):
    """Run ``verilator --lint-only -Wall`` on ``path``.

    Returns ``{"tool", "errors", "warnings": {category: count}}``, or None when Verilator is
    missing.
    """
    if not simulators.verilator_env():
        return None
    proc = process.run(["verilator", "--lint-only", "-Wall", "-Wno-fatal", str(path)],
                       capture=True)
    text = proc.stdout + proc.stderr
    warnings = {}
    for cat in re.findall(r"%Warning-([A-Z0-9_]+):", text):
        warnings[cat] = warnings.get(cat, 0) + 1
    errors = len(re.findall(r"%Error", text))
    if proc.returncode != 0 and errors == 0:
        errors = 1
    return {"tool": "verilator --lint-only -Wall", "errors": errors, "warnings": warnings,
            "log": text[-4000:] if errors else ""}


def emit(unit, fmt=None, out_dir=".", *, input_format="fp32", run_lint=True, **hw):
    """Generate ``unit`` into ``out_dir``; return its description (with file paths).

    Raises RuntimeError if Verilator's lint reports errors.
    """
    component = build_unit(unit, fmt, input_format=input_format, **hw)
    name = unit_name(unit, fmt, input_format=input_format, **hw)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = verilog.convert(component, name=name, emit_src=False)
    vpath = out / f"{name}.v"
    vpath.write_text(text)
    desc = describe(component, name, unit, None if unit in FORMAT_FREE_UNITS else fmt,
                    input_format if unit in ("dot", "align") else None)
    desc["hardware_parameters"] = hw
    if run_lint:
        desc["lint"] = lint(vpath)
        if desc["lint"] and desc["lint"]["errors"]:
            raise RuntimeError(f"verilator lint found errors in {vpath}:\n"
                               f"{desc['lint']['log']}")
    (out / f"{name}.json").write_text(json.dumps(desc, indent=2) + "\n")
    (out / f"{name}.core").write_text(_core_file(name, desc))
    desc["files"] = {"verilog": str(vpath), "json": str(out / f"{name}.json"),
                     "core": str(out / f"{name}.core")}
    return desc

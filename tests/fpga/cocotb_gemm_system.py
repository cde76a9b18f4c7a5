"""cocotb testbench of GemmSystem: replay request frames, record the reply frames.

Run by ``tests/fpga/test_verilator.py`` through :func:`hbfp_hw.sim.runner.build` and the
cocotb runner. The configuration (JSON named by ``HBFP_TB_CONFIG``) holds the request frames
(hex) and the result path; the result holds one reply ``[cmd, seq, payload hex]`` per request
and the cycles each request took. The host logic (what to send, what to expect) stays in the
pytest process.
"""

import json
import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge

from hbfp_hw.fpga.protocol import FrameParser


@cocotb.test()
async def gemm_system_session(dut):
    """Send every request frame, wait for its reply frame, record it."""
    with open(os.environ["HBFP_TB_CONFIG"]) as f:
        cfg = json.load(f)
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.i_stream__valid.value = 0
    dut.o_stream__ready.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0

    parser = FrameParser()
    pending = []

    async def monitor():
        while True:
            await RisingEdge(dut.clk)
            if int(dut.o_stream__valid.value):
                pending.extend(parser.feed(bytes([int(dut.o_stream__payload.value)])))

    cocotb.start_soon(monitor())
    replies, cycles = [], []
    for request in cfg["requests"]:
        start = cocotb.utils.get_sim_time("ns")
        for byte in bytes.fromhex(request):
            dut.i_stream__payload.value = byte
            dut.i_stream__valid.value = 1
            while True:
                await RisingEdge(dut.clk)
                if int(dut.i_stream__ready.value):
                    break
        dut.i_stream__valid.value = 0
        waited = 0
        while not pending:
            await RisingEdge(dut.clk)
            waited += 1
            assert waited < cfg["reply_timeout"], "no reply"
        frame = pending.pop(0)
        replies.append([frame.cmd, frame.seq, frame.payload.hex()])
        cycles.append(int((cocotb.utils.get_sim_time("ns") - start) // 10))
    with open(cfg["result"], "w") as f:
        json.dump({"replies": replies, "cycles": cycles}, f)

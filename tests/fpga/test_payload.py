# amaranth: UnusedElaboratable=no
"""BlockWriter on its own: WRITE tile data from a payload RAM to block writes, in the simulator.

A testbench plays the executor of GemmSystem (its WRITE states, optionally with idle cycles
where the interface allows them) in front of a real payload RAM with one cycle of read
latency. The blocks written must be the ones the driver's encoders put on the wire
(``protocol.a_blocks_payload``) quantized by the golden model (``golden.quantize``), at
``first .. first+count-1`` of A or B.
"""

import random

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from hbfp_hw import golden
from hbfp_hw.formats import BFPFormat, FloatFormat
from hbfp_hw.fpga import protocol
from hbfp_hw.fpga.protocol import ARGS_BYTES, Wire
from hbfp_hw.fpga.system.payload import BlockWriter
from hbfp_hw.rtl_gen.layout import block_layout, unpack

FMT = BFPFormat(8, 4)
MAX_PAYLOAD = 256


def rtl_write(fmt, writes, *, input_format=FloatFormat.FP32, float_wire=True, stall_seed=None,
              cap_bits=6):
    """Run ``writes`` (each ``(payload bytes, first, count, wire, to_b)``) through BlockWriter.

    Returns, per write, the list of ``(buffer, address, exponent, mantissas)`` block writes
    (``buffer`` is ``"a"`` or ``"b"``). With ``stall_seed`` the executor waits random cycles
    between ``setup`` and ``begin``, and between a block's last byte and its store/quantize.
    The writer registers its commands: a block write comes the cycle after ``store``.
    """
    dut = BlockWriter(fmt, input_format=input_format, float_wire=float_wire, align_stages=2,
                      max_payload=MAX_PAYLOAD, cap_bits=cap_bits)
    top = Module()
    top.submodules.dut = dut
    # One RAM per write would need separate simulations; the testbench rewrites its contents.
    top.submodules.ram = ram = Memory(shape=8, depth=MAX_PAYLOAD, init=[])
    rd = ram.read_port()
    top.d.comb += [rd.addr.eq(dut.rd_addr), dut.rd_data.eq(rd.data)]
    layout = block_layout(fmt)
    rng = random.Random(stall_seed)
    results = []

    async def idle(ctx):
        if stall_seed is not None:
            for _ in range(rng.choice([0, 0, 1, 3])):
                await ctx.tick()

    async def bench(ctx):
        for payload, first, count, wire, to_b in writes:
            assert ctx.get(dut.rd_addr) == ARGS_BYTES          # at rest on the first tile byte
            for i, byte in enumerate(payload):
                ctx.set(ram.data[i], byte)
            ctx.set(dut.first, first)
            ctx.set(dut.count, count)
            ctx.set(dut.bfp, wire == Wire.BFP)
            ctx.set(dut.to_b, to_b)
            # WRITE_CHECK: setup and begin (in one cycle, as GemmSystem does, unless stalled).
            ctx.set(dut.setup, 1)
            if stall_seed is not None and rng.random() < 0.5:
                await ctx.tick()
                ctx.set(dut.setup, 0)
                await idle(ctx)
                assert ctx.get(dut.rd_addr) == ARGS_BYTES
            ctx.set(dut.begin, 1)
            await ctx.tick()
            ctx.set(dut.setup, 0)
            ctx.set(dut.begin, 0)
            stored = []
            for _ in range(count):
                cycles = 0
                while not ctx.get(dut.block_end):               # WRITE_LOAD
                    await ctx.tick()
                    cycles += 1
                    assert cycles < 200, "block_end never came"
                await ctx.tick()                                # the last byte loads
                await idle(ctx)
                assert not ctx.get(dut.block_end), "loading did not stop"
                assert ctx.get(dut.is_bfp) == (wire == Wire.BFP)
                if wire == Wire.FLOAT:
                    ctx.set(dut.quantize, 1)                     # QUANTIZE
                    await ctx.tick()
                    ctx.set(dut.quantize, 0)
                    cycles = 0
                    while not ctx.get(dut.quantized):            # QUANTIZE_WAIT
                        await ctx.tick()
                        cycles += 1
                        assert cycles < 50, "the quantizer gave no block"
                    store = dut.store_quantized
                else:
                    store = dut.store                            # WRITE_STORE
                ctx.set(store, 1)
                assert not ctx.get(dut.a_we) and not ctx.get(dut.b_we)
                await ctx.tick()
                ctx.set(store, 0)
                a_we, b_we = ctx.get(dut.a_we), ctx.get(dut.b_we)
                assert a_we + b_we == 1, (a_we, b_we)
                block = unpack(layout, ctx.get(dut.wdata.as_value()))
                stored.append(("b" if b_we else "a", ctx.get(dut.waddr), block["exponent"],
                               list(block["mantissas"])))
                last = ctx.get(dut.last_block)
                await ctx.tick()
                assert last == (len(stored) == count), "last_block out of step"
            # The writes' end: no more block writes, the address rests again.
            for _ in range(3):
                assert not ctx.get(dut.a_we) and not ctx.get(dut.b_we)
                await ctx.tick()
            results.append(stored)

    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return results


def expected_writes(codes, mantissas, first, to_b):
    buf = "b" if to_b else "a"
    return [(buf, first + i, int(c), [int(x) for x in mant])
            for i, (c, mant) in enumerate(zip(codes, mantissas))]


def golden_blocks(fmt, a, input_format=FloatFormat.FP32):
    """The golden model's blocks of ``A`` in device order (row-major, as a_blocks_payload)."""
    q = golden.quantize(a, fmt, axis=1, input_format=input_format)
    return (q.exponent_codes.reshape(-1).astype(np.int64),
            q.mantissas.reshape(-1, fmt.block_size).astype(np.int64))


def write_payload(fmt, a, wire, input_format=FloatFormat.FP32, args=b"\xEE" * ARGS_BYTES):
    """A WRITE payload: argument bytes (ignored by BlockWriter) and A's blocks on the wire."""
    nblocks, body = protocol.a_blocks_payload(a, fmt, wire, input_format=input_format)
    return nblocks, args + body


F32 = np.float32
#: Rows of four elements (one block each): zeros, NaN and Inf, values that round up past
#: the largest mantissa (the quantizer saturates), subnormals, the largest finite values.
SPECIAL_ROWS = np.array([
    [0.0, 0.0, 0.0, 0.0],
    [-0.0, 0.0, -0.0, -0.0],
    [1.0, np.nan, 2.0, 3.0],
    [np.inf, 1.0, 0.0, -1.0],
    [-np.inf, 0.0, 0.0, 0.0],
    [1.9999999, -1.9999999, 1.99, 0.5],           # rounds to 2**(w-1): saturates
    [-1.9999999, 1.0, 0.25, -0.125],
    [1e-45, -3e-44, 1e-40, 0.0],                  # subnormal block
    [3.4028235e38, -3.4028235e38, 1.0, 0.0],      # max finite
    [1.0, 0.5 / 64, 1.5 / 64, -2.5 / 64],         # ties at the element grid
], dtype=F32)


def test_special_rows_are_what_the_test_says():
    codes, mant = golden_blocks(FMT, SPECIAL_ROWS)
    nan_code = (1 << FMT.exponent_bits) - 1
    assert codes[2] == nan_code and codes[3] == nan_code and codes[4] == nan_code
    assert (mant[0] == 0).all() and (mant[1] == 0).all()
    assert mant[5, 0] == (1 << (FMT.mantissa_bits - 1)) - 1      # saturated, not wrapped


@pytest.mark.parametrize("wire", [Wire.FLOAT, Wire.BFP])
def test_special_values_against_golden(wire):
    nblocks, payload = write_payload(FMT, SPECIAL_ROWS, wire)
    [got] = rtl_write(FMT, [(payload, 3, nblocks, wire, False)], cap_bits=6)
    assert got == expected_writes(*golden_blocks(FMT, SPECIAL_ROWS), 3, False)


@pytest.mark.parametrize("wire", [Wire.FLOAT, Wire.BFP])
def test_random_blocks_with_stalls_to_b(wire):
    rng = np.random.default_rng(int(wire))
    a = (rng.standard_normal((6, 8)) * 2.0 ** rng.integers(-20, 20, (6, 1))).astype(F32)
    nblocks, payload = write_payload(FMT, a, wire)
    [got] = rtl_write(FMT, [(payload, 17, nblocks, wire, True)], stall_seed=5, cap_bits=6)
    assert got == expected_writes(*golden_blocks(FMT, a), 17, True)


def test_consecutive_writes_of_both_wires_and_single_blocks():
    """Writes of one block (last at once), BFP after FLOAT (another block size), A then B:
    every write starts afresh at ``first``."""
    rng = np.random.default_rng(3)
    rows = [rng.standard_normal((1, 4)).astype(F32), SPECIAL_ROWS[2:6],
            rng.standard_normal((2, 4)).astype(F32), SPECIAL_ROWS[:1]]
    wires = [Wire.FLOAT, Wire.BFP, Wire.FLOAT, Wire.BFP]
    firsts, to_bs = [0, 5, 31, 63], [False, True, True, False]
    writes, want = [], []
    for a, wire, first, to_b in zip(rows, wires, firsts, to_bs):
        n, payload = write_payload(FMT, a, wire)
        writes.append((payload, first, n, wire, to_b))
        want.append(expected_writes(*golden_blocks(FMT, a), first, to_b))
    assert rtl_write(FMT, writes, stall_seed=11, cap_bits=7) == want


def test_bf16_wire():
    a = golden.to_bf16(np.concatenate([SPECIAL_ROWS[:7], [[3.0, -0.375, 1e-39, 6.5]]]))
    nblocks, payload = write_payload(FMT, a, Wire.FLOAT, FloatFormat.BF16)
    assert len(payload) == ARGS_BYTES + nblocks * 2 * FMT.block_size
    [got] = rtl_write(FMT, [(payload, 0, nblocks, Wire.FLOAT, False)],
                      input_format=FloatFormat.BF16)
    assert got == expected_writes(*golden_blocks(FMT, a, FloatFormat.BF16), 0, False)


def test_wide_mantissas_bfp_bytes_by_hand():
    """Mantissas of two bytes (w = 12), little-endian, negative ones sign-extended on the wire:
    the device keeps the low w bits. Written by hand from docs/protocol.md 4.1."""
    fmt = BFPFormat(12, 4)
    mants = [[2047, -2047, 1, -1], [0, 0x123, -0x456, 0x7FF]]
    codes = [0x81, 0xFF]
    body = b""
    for code, block in zip(codes, mants):
        body += bytes([code]) + b"".join((m & 0xFFFF).to_bytes(2, "little") for m in block)
    assert len(body) == 2 * protocol.block_bytes(fmt, Wire.BFP)
    [got] = rtl_write(fmt, [(bytes(ARGS_BYTES) + body, 9, 2, Wire.BFP, False)],
                      float_wire=False)
    assert got == [("a", 9, 0x81, mants[0]), ("a", 10, 0xFF, mants[1])]

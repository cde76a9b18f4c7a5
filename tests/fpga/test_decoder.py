# amaranth: UnusedElaboratable=no
"""The protocol decoder and command executor of GemmSystem, in the Amaranth simulator.

Every command, and every way a request can be wrong: bad CRC, truncated frames, wrong lengths,
unknown commands, oversize requests, random garbage, sequence numbers out of order. Each error
gets its reply and leaves the device's state (the buffers and C) as it was.
"""

import random

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from hbfp_hw import golden
from hbfp_hw.formats import BFPFormat
from hbfp_hw.fpga import protocol
from hbfp_hw.fpga.config import SystemConfig
from hbfp_hw.fpga.protocol import (
    COMPUTE_ARGS_LAYOUT,
    NACK,
    READ_ARGS_LAYOUT,
    REPLY_FLAG,
    WRITE_ARGS_LAYOUT,
    Cmd,
    Status,
    Wire,
    to_bytes,
)
from hbfp_hw.fpga.system.decoder import crc32_next
from hbfp_hw.fpga.system.engine import GemmSystem
from hbfp_hw.fpga.system.skid import SkidBuffer

from .link import LinkTimeout, device_gemm, read_c, run_link

FMT = BFPFormat(8, 4)
TIMEOUT = 100


#: The decoder tests' device (SMALL.replace(...) for variants).
SMALL = SystemConfig(fmt=FMT, lanes=2, a_blocks=16, b_blocks=16, c_words=16, max_payload=128,
                     timeout_cycles=TIMEOUT, clock_hz=12_000_000, build_hash=0x1234ABCD)


def small_system(**kw):
    return GemmSystem(SMALL.replace(**kw))


def write_args(wire=Wire.BFP, count=0, start=0, flags=0):
    return to_bytes(WRITE_ARGS_LAYOUT, {"wire": int(wire), "flags": flags, "count": count,
                                        "start": start})


def compute_args(m, n, k, flags=0, a_base=0, b_base=0, c_base=0):
    return to_bytes(COMPUTE_ARGS_LAYOUT, {"m": m, "n": n, "k": k, "flags": int(flags),
                                          "a_base": a_base, "b_base": b_base, "c_base": c_base})


def read_args(row, col, count, flags=0, rows=3, cols=3, base=0):
    return to_bytes(READ_ARGS_LAYOUT, {"row": row, "col": col, "count": count, "flags": flags,
                                       "base": base, "rows": rows, "cols": cols})


def operands(seed=0, m=3, k=6, n=3):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((m, k)).astype(np.float32),
            rng.standard_normal((k, n)).astype(np.float32))


async def expect(link, cmd, payload, status, *, reply_cmd=None):
    reply = await link.request(cmd, payload)
    assert reply.cmd == (cmd | REPLY_FLAG if reply_cmd is None else reply_cmd)
    assert reply.status is status, (reply.status, status)
    return reply


def test_crc32_next_matches_python():
    crc, byte, out = Signal(32), Signal(8), Signal(32)
    m = Module()
    m.d.comb += out.eq(crc32_next(crc, byte))
    rng = random.Random(0)
    cases = [(0xFFFFFFFF, 0), (0, 0xFF), (0x12345678, 0xA5)] + [
        (rng.getrandbits(32), rng.getrandbits(8)) for _ in range(50)]

    async def bench(ctx):
        for c, b in cases:
            ctx.set(crc, c)
            ctx.set(byte, b)
            assert ctx.get(out) == protocol.crc32_byte(c, b)

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


def test_info_reset_status():
    dut = small_system()

    async def test(link):
        info = await link.info()
        assert info == dut.info
        assert info.version == protocol.PROTOCOL_VERSION
        assert (info.fmt, info.lanes, info.a_blocks, info.max_payload) == (FMT, 2, 16, 128)
        assert (info.clock_hz, info.build_hash, info.timeout_cycles) == (
            12_000_000, 0x1234ABCD, TIMEOUT)
        assert info.wire_formats == {Wire.FLOAT, Wire.BFP}
        st = await link.status()
        assert st == {"last_error": 0, "c_valid": 0, "frames": 2, "rx_errors": 0,
                      "c_rows": 0, "c_cols": 0, "next_seq": 0}
        await expect(link, Cmd.READ_C, read_args(0, 0, 1), Status.NO_RESULT)
        st = await link.status()
        assert st["last_error"] == Status.NO_RESULT and st["frames"] == 4
        assert st["next_seq"] == 0                      # a refused frame keeps the number
        await expect(link, Cmd.WRITE_A, write_args(), Status.OK)
        assert (await link.status())["next_seq"] == 1
        await expect(link, Cmd.RESET, b"", Status.OK)
        st = await link.status()
        assert st == {"last_error": 0, "c_valid": 0, "frames": 1, "rx_errors": 0,
                      "c_rows": 0, "c_cols": 0, "next_seq": 0}

    run_link(dut, test)


def test_write_compute_read_every_command():
    dut = small_system()
    a, b = operands()
    expected = golden.f32_to_bits(golden.gemm(a, b, FMT))

    async def test(link):
        info = await link.info()
        # WRITE_B: 2 column groups x 2 k-blocks x 2 lanes; WRITE_A: 3 rows x 2 k-blocks.
        nb, raw_b = protocol.b_blocks_payload(b, FMT, Wire.FLOAT, info.lanes)
        half = len(raw_b) // 2
        await expect(link, Cmd.WRITE_B, write_args(Wire.FLOAT, nb // 2) + raw_b[:half],
                     Status.OK)
        await expect(link, Cmd.WRITE_B, write_args(Wire.FLOAT, nb // 2, nb // 2)
                     + raw_b[half:], Status.OK)
        na, raw_a = protocol.a_blocks_payload(a, FMT, Wire.BFP)
        bb = protocol.block_bytes(FMT, Wire.BFP)
        # In two frames, the second one first: the order of writes does not matter.
        await expect(link, Cmd.WRITE_A, write_args(Wire.BFP, na - 2, 2) + raw_a[2 * bb:],
                     Status.OK)
        await expect(link, Cmd.WRITE_A, write_args(Wire.BFP, 2, 0) + raw_a[:2 * bb],
                     Status.OK)
        reply = await expect(link, Cmd.COMPUTE, compute_args(3, 3, 6), Status.OK)
        cycles = protocol.from_bytes(protocol.COMPUTE_REPLY_LAYOUT, reply.body)["cycles"]
        assert 0 < cycles < 200
        st = await link.status()
        assert (st["c_valid"], st["c_rows"], st["c_cols"]) == (1, 3, 3)
        reply = await expect(link, Cmd.READ_C, read_args(1, 2, 4), Status.OK)
        assert list(protocol.c_from_payload(reply.body)) == list(expected.reshape(-1)[5:9])
        reply = await expect(link, Cmd.READ_C, read_args(2, 2, 0), Status.OK)
        assert reply.body == b""
        return await read_c(link, 3, 3, info)

    assert (run_link(dut, test) == expected).all()


async def _setup_c(link, a, b):
    info = await link.info()
    return info, await device_gemm(link, a, b, info, Wire.BFP, tile=(a.shape[0], b.shape[1]))


async def _check_status_then_state(link, status_reply, next_seq, last_error, info, a, b, c):
    """A STATUS reply says ``next_seq`` and ``last_error``, no frame is left unanswered, and
    the state is intact (:func:`_check_state`, sequenced from ``next_seq``)."""
    st = protocol.from_bytes(protocol.STATUS_LAYOUT, status_reply.body)
    assert st["next_seq"] == next_seq
    assert st["last_error"] == last_error
    assert not link.frames
    link.order = next_seq
    await _check_state(link, info, a, b, c)


async def _check_state(link, info, a, b, c):
    """C reads back unchanged, and recomputing from the buffers gives it again."""
    assert (await read_c(link, *c.shape, info) == c).all()
    await expect(link, Cmd.COMPUTE, compute_args(a.shape[0], b.shape[1], a.shape[1]), Status.OK)
    assert (await read_c(link, *c.shape, info) == c).all()


def test_bad_crc_is_nacked_and_changes_nothing():
    dut = small_system()
    a, b = operands(1)

    async def test(link):
        info, c = await _setup_c(link, a, b)
        # A WRITE_A of other data whose CRC is corrupted must not reach the buffer.
        na, raw = protocol.a_blocks_payload(-a, FMT, Wire.BFP)
        for position in [2, 3, 5, 12, -1]:                   # cmd, seq, length, payload, CRC
            frame = bytearray(protocol.encode_frame(Cmd.WRITE_A, 0x77,
                                                    write_args(Wire.BFP, na) + raw))
            frame[position] ^= 0x04
            await link.send(frame)
            if position == 5:                                # length now too long: TOO_LONG
                reply = await link.recv()
                assert reply.status is Status.TOO_LONG
                await link.idle(2 * TIMEOUT)                 # the rest is garbage; settle
                link.frames.clear()
                continue
            reply = await link.recv()
            assert reply.cmd == NACK and reply.status is Status.BAD_CRC
            assert reply.seq == (0x73 if position == 3 else 0x77)
        st = await link.status()
        assert st["last_error"] == Status.BAD_CRC and st["rx_errors"] >= 4
        await _check_state(link, info, a, b, c)

    run_link(dut, test)


@pytest.mark.parametrize("cut", [3, 5, 8, 14, 28])          # in the header, payload, CRC
def test_truncated_frame_times_out(cut):
    dut = small_system()

    async def test(link):
        frame = protocol.encode_frame(Cmd.COMPUTE, 0x33, compute_args(1, 1, 1))   # 30 bytes
        await link.send(frame[:cut])
        start = link.cycle
        reply = await link.recv()
        assert reply.cmd == NACK and reply.status is Status.TIMEOUT
        assert reply.seq == (0x33 if cut > 3 else 0)
        assert TIMEOUT <= link.cycle - start <= TIMEOUT + 40
        info = await link.info()                            # the decoder is back in sync
        assert info == dut.info
        st = await link.status()
        assert st["c_valid"] == 0 and st["rx_errors"] == 1

    run_link(dut, test)


def test_wrong_lengths_and_arguments():
    dut = small_system()
    a, b = operands(2)

    async def test(link):
        info, c = await _setup_c(link, a, b)
        one_bfp = bytes(protocol.block_bytes(FMT, Wire.BFP))
        for cmd in (Cmd.INFO, Cmd.RESET, Cmd.STATUS):
            await expect(link, cmd, b"\x00", Status.BAD_LENGTH)
        await expect(link, Cmd.WRITE_A, b"\x01\x00\x01", Status.BAD_LENGTH)
        await expect(link, Cmd.WRITE_A, write_args(Wire.BFP, 2) + one_bfp, Status.BAD_LENGTH)
        await expect(link, Cmd.WRITE_B, write_args(Wire.BFP, 1) + one_bfp + b"\x00",
                     Status.BAD_LENGTH)
        await expect(link, Cmd.WRITE_B, write_args(Wire.FLOAT, 1) + one_bfp, Status.BAD_LENGTH)
        await expect(link, Cmd.WRITE_A, write_args(2, 1) + one_bfp, Status.BAD_ARG)
        await expect(link, Cmd.WRITE_A, write_args(Wire.BFP, 1, flags=2) + one_bfp,
                     Status.BAD_ARG)
        await expect(link, Cmd.COMPUTE, compute_args(1, 1, 1)[:8], Status.BAD_LENGTH)
        await expect(link, Cmd.COMPUTE, compute_args(1, 1, 1) + b"\x00", Status.BAD_LENGTH)
        for args in [(0, 1, 1), (1, 0, 1), (1, 1, 0)]:
            await expect(link, Cmd.COMPUTE, compute_args(*args), Status.BAD_ARG)
        await expect(link, Cmd.COMPUTE, compute_args(1, 1, 1, flags=8), Status.BAD_ARG)
        await expect(link, Cmd.COMPUTE, compute_args(
            1, 1, 1, flags=protocol.Flag.QUIET | protocol.Flag.READBACK), Status.BAD_ARG)
        await expect(link, Cmd.READ_C, read_args(0, 0, 1)[:8], Status.BAD_LENGTH)
        await expect(link, Cmd.READ_C, read_args(0, 0, 1, flags=2), Status.BAD_ARG)
        st = await link.status()
        assert st["last_error"] == Status.BAD_ARG and st["rx_errors"] == 0
        await _check_state(link, info, a, b, c)

    run_link(dut, test)


@pytest.mark.parametrize("cmd", [0x00, 0x04, 0x12, 0x21, 0x7F, 0x80, 0xFE])
def test_unknown_command(cmd):
    dut = small_system()

    async def test(link):
        reply = await link.request(cmd, b"abc")
        assert reply.cmd == cmd | REPLY_FLAG and reply.status is Status.UNKNOWN_CMD
        assert (await link.info()) == dut.info

    run_link(dut, test)


def test_oversize_requests():
    dut = small_system()
    a, b = operands(3)

    async def test(link):
        info, c = await _setup_c(link, a, b)
        # A length field above max_payload is refused before any payload byte is stored.
        big = protocol.encode_frame(Cmd.WRITE_A, 9, bytes(info.max_payload + 1))
        await link.send(big[:6])
        reply = await link.recv()
        assert reply.cmd == NACK and reply.seq == 9 and reply.status is Status.TOO_LONG
        bb = protocol.block_bytes(FMT, Wire.BFP)
        blocks = bytes(range(bb)) * 2
        await expect(link, Cmd.WRITE_A, write_args(Wire.BFP, 2, 15) + blocks, Status.CAPACITY)
        await expect(link, Cmd.WRITE_B, write_args(Wire.BFP, 2, 0xFFFFFFFF) + blocks,
                     Status.CAPACITY)
        await expect(link, Cmd.WRITE_B, write_args(Wire.BFP, 1, 16) + blocks[:bb],
                     Status.CAPACITY)
        # Exactly max_payload bytes pass the decoder (and then fail the capacity check).
        full = write_args(Wire.BFP, 24) + bytes(24 * bb)
        assert len(full) == info.max_payload
        await expect(link, Cmd.WRITE_A, full, Status.CAPACITY)
        # The last block of each buffer can be written (unused by the C below).
        await expect(link, Cmd.WRITE_A, write_args(Wire.BFP, 1, 15) + blocks[:bb], Status.OK)
        await expect(link, Cmd.WRITE_B, write_args(Wire.BFP, 1, 15) + blocks[:bb], Status.OK)
        await expect(link, Cmd.COMPUTE, compute_args(17, 1, 1), Status.CAPACITY)   # A
        await expect(link, Cmd.COMPUTE, compute_args(2, 1, 33), Status.CAPACITY)   # A (K)
        await expect(link, Cmd.COMPUTE, compute_args(1, 17, 1), Status.CAPACITY)   # B
        await expect(link, Cmd.COMPUTE, compute_args(9, 3, 4), Status.CAPACITY)    # C
        await expect(link, Cmd.COMPUTE, compute_args(0xFFFF, 0xFFFF, 0xFFFF), Status.CAPACITY)
        # ... and with base addresses (A 16 blocks, B and C 8 words per bank).
        await expect(link, Cmd.COMPUTE, compute_args(1, 1, 8, a_base=15), Status.CAPACITY)
        await expect(link, Cmd.COMPUTE, compute_args(1, 1, 1, a_base=0xFFFFFFFF),
                     Status.CAPACITY)
        await expect(link, Cmd.COMPUTE, compute_args(1, 1, 1, b_base=8), Status.CAPACITY)
        await expect(link, Cmd.COMPUTE, compute_args(1, 3, 1, c_base=7), Status.CAPACITY)
        await expect(link, Cmd.COMPUTE, compute_args(
            128, 128, 4, flags=protocol.Flag.READBACK), Status.CAPACITY)      # reply too long
        await expect(link, Cmd.READ_C, read_args(3, 0, 1), Status.CAPACITY)
        await expect(link, Cmd.READ_C, read_args(0, 3, 1), Status.CAPACITY)
        await expect(link, Cmd.READ_C, read_args(2, 2, 2), Status.CAPACITY)
        await expect(link, Cmd.READ_C, read_args(0, 0, 16384, rows=200, cols=200),
                     Status.CAPACITY)                                    # reply too long
        await expect(link, Cmd.READ_C, read_args(0, 0, 1, base=7), Status.CAPACITY)
        await expect(link, Cmd.READ_C, read_args(0, 0, 1, rows=9, cols=1), Status.CAPACITY)
        st = await link.status()
        assert st["last_error"] == Status.CAPACITY and st["c_valid"] == 1
        await _check_state(link, info, a, b, c)

    run_link(dut, test)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_garbage_then_info(seed):
    dut = small_system()
    a, b = operands(4)

    async def test(link):
        info, c = await _setup_c(link, a, b)
        rng = random.Random(seed)
        garbage = bytearray(rng.randrange(256) for _ in range(400))
        for _ in range(8):                 # plenty of sync markers and valid-looking headers
            pos = rng.randrange(len(garbage) - 6)
            garbage[pos:pos + 6] = b"\xA5\x5A" + bytes([rng.randrange(256), rng.randrange(256),
                                                         rng.randrange(40), 0])
        garbage += protocol.encode_frame(Cmd.INFO, 1)[:7]            # and a cut frame
        await link.send(garbage)
        # Without waiting for the idle timeout: like the host driver, wait for the reply with
        # our sequence number (dropping NACKs of the garbage), retry after a silent period.
        reply = None
        for attempt in range(4):
            seq = 200 + attempt
            await link.send(protocol.encode_frame(Cmd.INFO, seq))
            while reply is None:
                try:
                    got = await link.recv(max_cycles=2 * TIMEOUT)
                except LinkTimeout:
                    break
                if got.seq == seq and got.cmd == Cmd.INFO | REPLY_FLAG:
                    reply = got
            if reply is not None:
                break
        assert reply is not None, "no INFO reply after garbage"
        assert protocol.Info.from_bytes(reply.body) == dut.info
        # After an idle gap the very first request is answered.
        await link.idle(2 * TIMEOUT)
        link.frames.clear()
        assert (await link.info()) == dut.info
        await _check_state(link, info, a, b, c)

    run_link(dut, test)


def test_stochastic_rejects_float_wire():
    fmt = BFPFormat(8, 4, "stochastic")
    dut = GemmSystem(SystemConfig(fmt=fmt, lanes=1, a_blocks=8, b_blocks=8, c_words=8,
                                  max_payload=96, timeout_cycles=TIMEOUT))

    async def test(link):
        info = await link.info()
        assert info.wire_formats == {Wire.BFP} and info.fmt == fmt
        one = bytes(protocol.block_bytes(fmt, Wire.FLOAT))
        await expect(link, Cmd.WRITE_A, write_args(Wire.FLOAT, 1) + one, Status.UNSUPPORTED)

    run_link(dut, test)


def test_without_float_wire_the_host_quantizes():
    # The iCEBreaker's reduced configuration: no on-device quantizer.
    dut = small_system(float_wire=False)
    a, b = operands(7)

    async def test(link):
        info = await link.info()
        assert info.wire_formats == {Wire.BFP}
        one = bytes(protocol.block_bytes(FMT, Wire.FLOAT))
        await expect(link, Cmd.WRITE_A, write_args(Wire.FLOAT, 1) + one, Status.UNSUPPORTED)
        c = await device_gemm(link, a, b, info, Wire.BFP, tile=(3, 3))
        assert (c == golden.f32_to_bits(golden.gemm(a, b, FMT))).all()

    run_link(dut, test)


def _expected_status(cmd, args, *, c_valid, a_blocks=16, b_depth=8, c_depth=8, lanes=2):
    """The device's reply status for a valid-length request, at full width (docs/protocol.md)."""
    if cmd == Cmd.COMPUTE:
        m, n, k, flags, a_base, b_base, c_base = args
        kb, g = -(-k // FMT.block_size), -(-n // lanes)
        if (a_base + m * kb > a_blocks or b_base + g * kb > b_depth or c_base + m * g > c_depth
                or (flags & protocol.Flag.READBACK and m * n > protocol.MAX_READ_WORDS - 1)):
            return Status.CAPACITY
        return Status.OK
    if cmd == Cmd.READ_C:
        row, col, count, base, rows, cols = args
        if not c_valid:
            return Status.NO_RESULT
        if (row >= rows or col >= cols or count > protocol.MAX_READ_WORDS
                or row * cols + col + count > rows * cols or base + rows * -(-cols // lanes)
                > c_depth):
            return Status.CAPACITY
        return Status.OK
    start, count = args
    return Status.CAPACITY if start + count > a_blocks else Status.OK


def _random_field(rng, bits):
    """Mostly values near the small system's capacities and near powers of two, some huge."""
    kind = rng.random()
    if kind < 0.5:
        return rng.randrange(0, 20)
    if kind < 0.8:
        return min((1 << rng.randrange(3, bits)) + rng.randrange(-2, 3), (1 << bits) - 1)
    return rng.randrange(0, 1 << bits)


@pytest.mark.parametrize("seed", [0, 1])
def test_capacity_checks_match_full_width_reference(seed):
    """The checks run on clamped narrow values (engine._saturate); every reply must be the one
    the full-width arithmetic of the protocol gives, for sizes and bases up to 2**32 - 1."""
    dut = small_system()
    rng = random.Random(seed)
    a, b = operands(8)
    bb = protocol.block_bytes(FMT, Wire.BFP)

    async def test(link):
        await _setup_c(link, a, b)
        for _ in range(100):
            which = rng.random()
            if which < 0.45:
                m, n, k = (max(1, _random_field(rng, 16)) for _ in range(3))
                flags = rng.choice([0, int(protocol.Flag.READBACK)])
                bases = [rng.choice([0, 0, 1, 7, 8, 15, 16, _random_field(rng, 32)])
                         for _ in range(3)]
                args = (m, n, k, flags, *bases)
                payload = compute_args(m, n, k, flags, *bases)
                cmd = Cmd.COMPUTE
            elif which < 0.9:
                row, col, count, rows, cols = (_random_field(rng, 16) for _ in range(5))
                base = rng.choice([0, 0, 1, 7, 8, _random_field(rng, 32)])
                args = (row, col, count, base, rows, cols)
                payload = read_args(row, col, count, rows=rows, cols=cols, base=base)
                cmd = Cmd.READ_C
            else:
                count = rng.randrange(0, 4)
                start = rng.choice([0, 13, 14, 15, 16, _random_field(rng, 32)])
                args = (start, count)
                payload = write_args(Wire.BFP, count, start) + bytes(count * bb)
                cmd = Cmd.WRITE_A
            want = _expected_status(cmd, args, c_valid=True)
            reply = await expect(link, cmd, payload, want)
            if cmd == Cmd.READ_C and want is Status.OK:
                assert len(reply.body) == 4 * args[2]

    run_link(dut, test)


def test_sequence_numbers_are_echoed():
    dut = small_system()

    async def test(link):
        for seq in [0, 1, 0x7F, 0x80, 0xFF]:
            reply = await link.request(Cmd.STATUS, seq=seq)
            assert reply.seq == seq
        one = bytes(protocol.block_bytes(FMT, Wire.BFP))
        reply = await link.request(Cmd.WRITE_A, write_args(Wire.BFP, 1, 3) + one, seq=0)
        assert reply.status is Status.OK and reply.seq == 0

    run_link(dut, test)


def test_sequenced_frames_run_exactly_once_in_order():
    dut = small_system()
    a, b = operands(5)

    async def test(link):
        info, c = await _setup_c(link, a, b)
        st = await link.status()
        start = st["next_seq"]
        assert start == link.order > 0
        na, raw = protocol.a_blocks_payload(-a, FMT, Wire.BFP)
        other = write_args(Wire.BFP, na) + raw
        # Ahead of the next number, or a repeat of an executed one: refused, not executed.
        for seq in [(start + 1) & 0xFF, (start + 0x7F) & 0xFF, (start - 1) & 0xFF]:
            reply = await link.request(Cmd.WRITE_A, other, seq=seq)
            assert reply.status is Status.OUT_OF_ORDER and reply.seq == seq
            assert reply.body == bytes([start])             # the number it expects
        for seq in [(start + 2) & 0xFF, (start - 3) & 0xFF]:
            reply = await link.request(Cmd.COMPUTE, compute_args(3, 3, 6), seq=seq)
            assert reply.status is Status.OUT_OF_ORDER
            reply = await link.request(Cmd.READ_C, read_args(0, 0, 1), seq=seq)
            assert reply.status is Status.OUT_OF_ORDER
        st = await link.status()
        assert st["next_seq"] == start and st["last_error"] == Status.OUT_OF_ORDER
        await _check_state(link, info, a, b, c)
        # Unsequenced commands do not take a number; RESET sets it back to 0.
        seq = link.order
        await link.info()
        assert (await link.status())["next_seq"] == seq
        await expect(link, Cmd.RESET, b"", Status.OK)
        assert link.order == 0 and (await link.status())["next_seq"] == 0
        reply = await link.request(Cmd.WRITE_A, other, seq=seq)
        assert seq != 0 and reply.status is Status.OUT_OF_ORDER
        await expect(link, Cmd.WRITE_A, other, Status.OK)            # seq 0
        assert (await link.status())["next_seq"] == 1

    run_link(dut, test)


def test_quiet_frames_reply_only_on_error():
    dut = small_system()
    a, b = operands(6)
    expected = golden.f32_to_bits(golden.gemm(a, b, FMT))
    quiet = protocol.Flag.QUIET

    async def test(link):
        await link.info()
        nb, raw_b = protocol.b_blocks_payload(b, FMT, Wire.BFP, 2)
        na, raw_a = protocol.a_blocks_payload(a, FMT, Wire.BFP)
        # Three quiet frames back to back, then READ_C: the only reply is the READ_C one.
        await link.send_quiet(Cmd.WRITE_B, write_args(Wire.BFP, nb, flags=quiet) + raw_b)
        await link.send_quiet(Cmd.WRITE_A, write_args(Wire.BFP, na, flags=quiet) + raw_a)
        await link.send_quiet(Cmd.COMPUTE, compute_args(3, 3, 6, flags=quiet))
        reply = await link.request(Cmd.READ_C, read_args(0, 0, 9))
        assert reply.seq == link.order - 1 and reply.status is Status.OK
        assert list(protocol.c_from_payload(reply.body)) == list(expected.reshape(-1))
        assert not link.frames
        # A quiet frame that fails is answered, and keeps its sequence number.
        seq = link.order
        await link.send(protocol.encode_frame(Cmd.COMPUTE, seq, compute_args(
            9, 9, 9, flags=quiet)))
        reply = await link.recv()
        assert reply.seq == seq and reply.status is Status.CAPACITY
        assert (await link.status())["next_seq"] == seq
        # A quiet write with nothing to write is still a sequenced frame.
        await link.send_quiet(Cmd.WRITE_A, write_args(Wire.BFP, 0, flags=quiet))
        assert (await link.status())["next_seq"] == (seq + 1) & 0xFF

    run_link(dut, test)


@pytest.mark.parametrize(("kw", "error", "match"), [
    ({"lanes": 3}, ValueError, r"^lanes must be a power of two between 1 and 64, not 3$"),
    ({"lanes": 2.0}, TypeError, r"^lanes must be an integer, not 2\.0$"),
    ({"b_blocks": 15}, ValueError, r"^b_blocks must be a multiple of lanes \(2\), not 15$"),
    ({"max_payload": 10}, ValueError, r"^max_payload must be between 24 and 65535, not 10$"),
    ({"timeout_cycles": 0}, ValueError, r"^timeout_cycles must be between 1 and 4294967295"),
    ({"build_hash": -1}, ValueError, r"^build_hash must be between 0 and 4294967295"),
    ({"tx_buffer": -1}, ValueError, r"^tx_buffer must be between 0 and 16777216, not -1$"),
    ({"tx_buffer": 1 << 25}, ValueError, r"^tx_buffer must be between 0 and 16777216, not "),
    ({"tx_buffer": 512.0}, TypeError, r"^tx_buffer must be an integer, not 512\.0$"),
])
def test_constructor_validation(kw, error, match):
    with pytest.raises(error, match=match):
        small_system(**kw)


# -- a request received while a reply is sent ----------------------------------------------------

def overlap_system(tx_buffer=0):
    """A system whose C holds an 8 x 8 result: a READ_C reply of 64 words takes ~400 cycles."""
    return small_system(a_blocks=16, b_blocks=16, c_words=64, tx_buffer=tx_buffer)


async def _send_during_reply(link, first, then):
    """Send the frame ``first``, then the frames ``then`` at once (the host does not wait for
    the first reply); return how many bytes of ``then`` the device took while it was still
    sending the first reply (the frame bytes it has to send, ``reply_len``, known to the
    caller: the reply bytes received so far are in ``link.rx_bytes``)."""
    start = link.rx_bytes
    await link.send(first)
    mark = len(link.taken_at)
    await link.send(b"".join(then))
    return start, link.taken_at[mark:]


@pytest.mark.parametrize(("ready_prob", "tx_buffer"), [(1.0, 0), (0.5, 0), (0.5, 512)])
def test_next_frame_is_received_while_a_reply_is_sent(ready_prob, tx_buffer):
    dut = overlap_system(tx_buffer)
    a, b = operands(7, m=8, k=6, n=8)
    expected = golden.f32_to_bits(golden.gemm(a, b, FMT))

    async def test(link):
        info, c = await _setup_c(link, a, b)
        assert (c == expected).all()
        s = link.order
        first = protocol.encode_frame(Cmd.READ_C, s, read_args(0, 0, 64, rows=8, cols=8))
        reply_len = protocol.FRAME_OVERHEAD + 1 + 4 * 64
        second = protocol.encode_frame(Cmd.READ_C, (s + 1) & 0xFF,
                                       read_args(2, 3, 9, rows=8, cols=8))
        start, taken = await _send_during_reply(link, first, [second])
        # Every byte of the second request went in while the first reply was being sent
        # (the device used to take none until that reply was complete).
        assert len(taken) == len(second)
        assert all(t - start < reply_len for t in taken), (taken[0] - start, reply_len)
        r1 = await link.recv()
        r2 = await link.recv()
        assert (r1.seq, r1.cmd, r1.status) == (s, Cmd.READ_C | REPLY_FLAG, Status.OK)
        assert (r2.seq, r2.cmd, r2.status) == ((s + 1) & 0xFF, Cmd.READ_C | REPLY_FLAG,
                                               Status.OK)
        assert list(protocol.c_from_payload(r1.body)) == list(expected.reshape(-1))
        assert list(protocol.c_from_payload(r2.body)) == list(expected.reshape(-1)[19:28])
        link.order = (s + 2) & 0xFF
        st = await link.status()
        assert st["next_seq"] == link.order and st["last_error"] == 0
        await _check_state(link, info, a, b, c)

    run_link(dut, test, ready_prob=ready_prob)


@pytest.mark.parametrize(("tx_buffer", "byte_cycles"), [(0, 1), (512, 1), (512, 20)])
def test_frames_behind_a_reply_run_exactly_once_in_order(tx_buffer, byte_cycles):
    """Behind a long reply: a quiet write, an out-of-order frame, a COMPUTE that reads it
    back, a STATUS; each executes once, in order, after the reply before it (with a transmit
    buffer, while the reply before it still leaves at a UART's pace: 20 cycles a byte)."""
    dut = overlap_system(tx_buffer)
    a, b = operands(8, m=8, k=6, n=8)
    expected = golden.f32_to_bits(golden.gemm(a, b, FMT))
    neg = golden.f32_to_bits(golden.gemm(-a, b, FMT))
    quiet = protocol.Flag.QUIET

    async def test(link):
        info, c = await _setup_c(link, a, b)
        s = link.order
        na, raw = protocol.a_blocks_payload(-a, FMT, Wire.BFP)
        bb = protocol.block_bytes(FMT, Wire.BFP)
        per = (info.max_payload - protocol.ARGS_BYTES) // bb
        frames = [protocol.encode_frame(Cmd.READ_C, s, read_args(0, 0, 64, rows=8, cols=8))]
        seq = s + 1
        for first in range(0, na, per):           # -A, quiet, in frames of the largest size
            count = min(per, na - first)
            frames.append(protocol.encode_frame(Cmd.WRITE_A, seq & 0xFF, write_args(
                Wire.BFP, count, first, flags=quiet) + raw[first * bb:(first + count) * bb]))
            seq += 1
        # A frame ahead of its turn is refused (the next one then has its number).
        frames.append(protocol.encode_frame(Cmd.COMPUTE, (seq + 1) & 0xFF,
                                            compute_args(8, 8, 6)))
        frames.append(protocol.encode_frame(Cmd.COMPUTE, seq & 0xFF, compute_args(
            8, 8, 6, flags=protocol.Flag.READBACK)))
        frames.append(protocol.encode_frame(Cmd.STATUS, 0x42))
        await link.send(frames[0])
        await link.send(b"".join(frames[1:]))
        replies = [await link.recv() for _ in range(4)]
        assert [(r.seq, r.status) for r in replies] == [
            (s, Status.OK), ((seq + 1) & 0xFF, Status.OUT_OF_ORDER), (seq & 0xFF, Status.OK),
            (0x42, Status.OK)]
        assert list(protocol.c_from_payload(replies[0].body)) == list(expected.reshape(-1))
        assert replies[1].body == bytes([seq & 0xFF])
        assert list(protocol.c_from_payload(replies[2].body[4:])) == list(neg.reshape(-1))
        await _check_status_then_state(link, replies[3], (seq + 1) & 0xFF, Status.OUT_OF_ORDER,
                                       info, -a, b, neg)

    run_link(dut, test, byte_cycles=byte_cycles)


@pytest.mark.parametrize(("seed", "tx_buffer", "byte_cycles"),
                         [(0, 0, 1), (1, 0, 1), (0, 512, 20), (1, 64, 20)])
def test_bad_frames_during_a_reply(seed, tx_buffer, byte_cycles):
    """A corrupted frame, then garbage, arrive while a long reply is sent (with a transmit
    buffer of the whole reply or of less, while it drains at a UART's pace): the reply is
    intact, the bad frame is NACKed and not executed, and the device answers again
    afterwards."""
    dut = overlap_system(tx_buffer)
    a, b = operands(9, m=8, k=6, n=8)
    expected = golden.f32_to_bits(golden.gemm(a, b, FMT))

    async def test(link):
        info, c = await _setup_c(link, a, b)
        s = link.order
        first = protocol.encode_frame(Cmd.READ_C, s, read_args(0, 0, 64, rows=8, cols=8))
        na, raw = protocol.a_blocks_payload(-a, FMT, Wire.BFP)
        bad = bytearray(protocol.encode_frame(Cmd.WRITE_A, (s + 1) & 0xFF,
                                              write_args(Wire.BFP, 4) + raw[:4 * 5]))
        bad[12] ^= 0x10
        rng = random.Random(seed)
        garbage = bytes(rng.choice([0xA5, 0x5A, 0x00, 0x13, 0xFF]) for _ in range(40))
        start, taken = await _send_during_reply(link, first, [bytes(bad), garbage])
        assert sum(t - start < 10 + 1 + 256 for t in taken) >= len(bad)
        r1 = await link.recv()
        assert (r1.seq, r1.status) == (s, Status.OK)
        assert list(protocol.c_from_payload(r1.body)) == list(expected.reshape(-1))
        r2 = await link.recv()
        assert r2.cmd == NACK and r2.status is Status.BAD_CRC and r2.seq == (s + 1) & 0xFF
        await link.idle(2 * TIMEOUT)              # the garbage times out
        link.frames.clear()
        link.order = (s + 1) & 0xFF
        st = await link.status()
        assert st["next_seq"] == link.order and st["rx_errors"] >= 1
        await _check_state(link, info, a, b, c)

    run_link(dut, test, byte_cycles=byte_cycles)


# -- the transmit buffer -------------------------------------------------------------------------

#: Cycles per reply byte in the tests of the transmit buffer: a UART's pace, far slower than
#: the device writes a reply into the buffer (about a byte per cycle).
UART = 20


def test_info_reports_the_transmit_buffer():
    for tx_buffer in (0, 37, 512):
        dut = small_system(tx_buffer=tx_buffer)
        assert dut.tx_buffer == dut.info.tx_buffer == tx_buffer

    async def test(link):
        return await link.info()

    assert run_link(small_system(tx_buffer=300), test).tx_buffer == 300


async def _quiet_writes(link, seq, x, cmd=Cmd.WRITE_A):
    """Quiet WRITE frames of all the blocks of ``x`` (as A) from ``seq`` on, in frames of at
    most 10 blocks; return them and the next sequence number."""
    count, raw = protocol.a_blocks_payload(x, FMT, Wire.BFP)
    bb = protocol.block_bytes(FMT, Wire.BFP)
    frames = []
    for first in range(0, count, 10):
        n = min(10, count - first)
        frames.append(protocol.encode_frame(cmd, seq & 0xFF, write_args(
            Wire.BFP, n, first, flags=protocol.Flag.QUIET) + raw[first * bb:(first + n) * bb]))
        seq += 1
    return frames, seq


@pytest.mark.parametrize("tx_buffer", [300, 4096])
def test_writes_execute_while_a_long_reply_drains(tx_buffer):
    """With a transmit buffer that holds the reply, the device executes the frames behind a
    long reply while the reply still leaves at a UART's pace: writes, a COMPUTE whose result
    goes into the buffer behind it, a STATUS. It takes every byte of them before the first
    reply has left (without the buffer it took one frame and waited)."""
    dut = overlap_system(tx_buffer)
    a, b = operands(10, m=8, k=6, n=8)
    expected = golden.f32_to_bits(golden.gemm(a, b, FMT))
    neg = golden.f32_to_bits(golden.gemm(-a, b, FMT))

    async def test(link):
        info, c = await _setup_c(link, a, b)
        assert (c == expected).all()
        s = link.order
        read = protocol.encode_frame(Cmd.READ_C, s, read_args(0, 0, 64, rows=8, cols=8))
        reply_len = protocol.FRAME_OVERHEAD + 1 + 4 * 64
        writes, seq = await _quiet_writes(link, s + 1, -a)
        assert len(writes) >= 2
        compute = protocol.encode_frame(Cmd.COMPUTE, seq & 0xFF, compute_args(
            8, 8, 6, flags=protocol.Flag.READBACK))
        status = protocol.encode_frame(Cmd.STATUS, 0x42)
        behind = b"".join(writes) + compute + status
        start, taken = await _send_during_reply(link, read, [behind])
        # The whole of it went in while the first reply was leaving, one byte per UART cycles.
        assert len(taken) == len(behind)
        assert max(t - start for t in taken) < reply_len // 2, (max(taken) - start, reply_len)
        replies = [await link.recv() for _ in range(3)]
        assert [(r.seq, r.cmd, r.status) for r in replies] == [
            (s, Cmd.READ_C | REPLY_FLAG, Status.OK),
            (seq & 0xFF, Cmd.COMPUTE | REPLY_FLAG, Status.OK),
            (0x42, Cmd.STATUS | REPLY_FLAG, Status.OK)]
        assert list(protocol.c_from_payload(replies[0].body)) == list(expected.reshape(-1))
        assert list(protocol.c_from_payload(replies[1].body[4:])) == list(neg.reshape(-1))
        assert link.parser.errors == 0
        await _check_status_then_state(link, replies[2], (seq + 1) & 0xFF, 0, info, -a, b, neg)

    run_link(dut, test, byte_cycles=UART)


@pytest.mark.parametrize(("tx_buffer", "ready_prob", "seed"),
                         [(16, 1.0, 0), (16, 0.3, 1), (37, 0.5, 2), (1, 0.7, 3)])
def test_full_transmit_buffer_stalls_without_loss(tx_buffer, ready_prob, seed):
    """A transmit buffer smaller than the replies: a burst of requests sent at once (reads of
    C regions, INFO, STATUS, a COMPUTE that reads its result back, quiet writes), replies
    taken at a UART's pace and at random. Every reply arrives whole, in order, with the right
    bytes; and the device takes no frame beyond the next one while a reply does not fit the
    buffer (it executes frame j + 2 only once reply j is in the buffer)."""
    dut = overlap_system(tx_buffer)
    a, b = operands(11, m=8, k=6, n=8)
    expected = golden.f32_to_bits(golden.gemm(a, b, FMT)).reshape(-1)
    neg = golden.f32_to_bits(golden.gemm(-a, b, FMT)).reshape(-1)
    rng = random.Random(seed)

    async def test(link):
        info, _ = await _setup_c(link, a, b)
        seq = link.order
        frames, replies = [], []       # per frame: bytes; per reply: (seq, cmd, check)
        for i in range(6):
            first = rng.randrange(0, 40)
            count = rng.randrange(1, 64 - first)
            frames.append(protocol.encode_frame(Cmd.READ_C, seq & 0xFF, read_args(
                first // 8, first % 8, count, rows=8, cols=8)))
            words = list(expected[first:first + count])
            replies.append((seq & 0xFF, Cmd.READ_C,
                            lambda body, w=words: list(protocol.c_from_payload(body)) == w))
            seq += 1
            if i == 2:
                frames.append(protocol.encode_frame(Cmd.INFO, 0x90))
                replies.append((0x90, Cmd.INFO,
                                lambda body: protocol.Info.from_bytes(body) == info))
        writes, seq = await _quiet_writes(link, seq, -a)
        frames += writes
        frames.append(protocol.encode_frame(Cmd.COMPUTE, seq & 0xFF, compute_args(
            8, 8, 6, flags=protocol.Flag.READBACK)))
        replies.append((seq & 0xFF, Cmd.COMPUTE,
                        lambda body: list(protocol.c_from_payload(body[4:])) == list(neg)))
        seq += 1
        frames.append(protocol.encode_frame(Cmd.STATUS, 0x91))
        replies.append((0x91, Cmd.STATUS, lambda body: protocol.from_bytes(
            protocol.STATUS_LAYOUT, body)["next_seq"] == seq & 0xFF))
        start = link.rx_bytes
        mark = len(link.taken_at)
        await link.send(b"".join(frames))
        got = [await link.recv(max_cycles=400_000) for _ in replies]
        for r, (rseq, cmd, check) in zip(got, replies, strict=True):
            assert (r.seq, r.cmd, r.status) == (rseq, cmd | REPLY_FLAG, Status.OK)
            assert check(r.body), Cmd(cmd).name
        assert link.parser.errors == 0 and not link.frames
        # When the device took the first byte of frame j + 2, reply j was in the buffer but
        # for its CRC (the encoder adds it after the last payload byte, while the device goes
        # on): at most tx_buffer + 4 of its bytes had not yet reached the host. With the
        # register slices, the input slice takes its bytes ahead of the decoder and the
        # reply slice holds as many besides the buffer.
        slice_bytes = SkidBuffer.DEPTH if dut.sliced else 0
        taken = link.taken_at[mark:]
        ends, offset, reply_end = [], 0, start
        replied = iter(got)
        for f in frames:
            ends.append((offset, None))
            offset += len(f)
            cmd, fseq = f[2], f[3]
            quiet = cmd in (Cmd.WRITE_A, Cmd.WRITE_B)
            if not quiet:
                r = next(replied)
                assert r.seq == fseq
                reply_end += protocol.FRAME_OVERHEAD + len(r.payload)
                ends[-1] = (ends[-1][0], reply_end)
        for j, (_, reply_end) in enumerate(ends[:-2]):
            if reply_end is not None:
                first_byte = ends[j + 2][0] + slice_bytes
                assert taken[first_byte] >= reply_end - tx_buffer - 4 - 1 - slice_bytes, (
                    j, taken[first_byte], reply_end)
        link.order = seq & 0xFF

    run_link(dut, test, ready_prob=ready_prob, byte_cycles=UART, seed=seed)

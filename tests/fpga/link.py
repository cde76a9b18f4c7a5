"""Amaranth-simulator harness of the host-link tests: a byte link to a GemmSystem.

:func:`run_link` runs an async test function against the gateware; the function talks to the
device through a :class:`SimLink` (send bytes, receive frames), so the tests read like host
code. :func:`device_gemm` is a small host: it tiles a GEMM over M and N to fit the buffers,
writes A and B in frames, computes and reads C back.
"""

import random

import numpy as np
from amaranth.sim import Simulator

from hbfp_hw.fpga import protocol
from hbfp_hw.fpga.protocol import Cmd, FrameParser, Status


class LinkTimeout(AssertionError):
    pass


class SimLink:
    """Host end of the byte streams of a :class:`~hbfp_hw.fpga.engine.GemmSystem`."""

    def __init__(self, ctx, dut, *, ready_prob=1.0, gap_prob=0.0, seed=0):
        self.ctx = ctx
        self.dut = dut
        self.ready_prob = ready_prob      # chance that the host accepts a reply byte in a cycle
        self.gap_prob = gap_prob          # chance of an idle cycle before each request byte
        self.rng = random.Random(seed)
        self.parser = FrameParser()
        self.frames = []
        self.cycle = 0
        self.seq = 0

    async def _cycle(self, valid=0, byte=0):
        i, o = self.dut.i_stream, self.dut.o_stream
        self.ctx.set(i.valid, valid)
        self.ctx.set(i.payload, byte)
        ready = self.ready_prob >= 1 or self.rng.random() < self.ready_prob
        self.ctx.set(o.ready, ready)
        _, _, iready, ovalid, obyte = await self.ctx.tick().sample(i.ready, o.valid, o.payload)
        self.cycle += 1
        if ovalid and ready:
            self.frames.extend(self.parser.feed(bytes([obyte])))
        return iready

    async def send(self, raw, *, max_stall=100_000):
        """Send bytes (waiting while the device holds ``ready`` low)."""
        for byte in bytes(raw):
            while self.gap_prob and self.rng.random() < self.gap_prob:
                await self._cycle()
            stall = 0
            while not await self._cycle(1, byte):
                stall += 1
                if stall > max_stall:
                    raise LinkTimeout("the device never took a byte")
        self.ctx.set(self.dut.i_stream.valid, 0)

    async def idle(self, cycles):
        for _ in range(cycles):
            await self._cycle()

    async def recv(self, *, max_cycles=200_000):
        """Return the next reply frame."""
        waited = 0
        while not self.frames:
            await self._cycle()
            waited += 1
            if waited > max_cycles:
                raise LinkTimeout("no reply")
        return self.frames.pop(0)

    def next_seq(self):
        self.seq = (self.seq + 1) & 0xFF
        return self.seq

    async def request(self, cmd, payload=b"", *, seq=None):
        """Send one request frame and return its reply (checking the echoed sequence)."""
        seq = self.next_seq() if seq is None else seq
        await self.send(protocol.encode_frame(cmd, seq, payload))
        reply = await self.recv()
        assert reply.seq == seq, f"reply seq {reply.seq} != {seq}"
        return reply

    async def info(self):
        reply = await self.request(Cmd.INFO)
        assert reply.cmd == Cmd.INFO | protocol.REPLY_FLAG
        assert reply.status is Status.OK
        return protocol.Info.from_bytes(reply.body)

    async def status(self):
        reply = await self.request(Cmd.STATUS)
        assert reply.status is Status.OK
        return protocol.from_bytes(protocol.STATUS_LAYOUT, reply.body)


def run_link(dut, test, **link_args):
    """Run ``await test(link)`` against ``dut`` in the Amaranth simulator; return its result.

    ``link_args`` go to :class:`SimLink` (random reply backpressure, request byte gaps).
    """
    result = {}

    async def bench(ctx):
        link = SimLink(ctx, dut, **link_args)
        result["value"] = await test(link)
        result["cycles"] = link.cycle

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return result["value"]


def _write_steps(cmd, nblocks, raw, wire, info):
    """Requests that write ``nblocks`` blocks (bytes ``raw``) from block 0 on, in maximal frames."""
    bb = protocol.block_bytes(info.fmt, wire, info.input_format)
    per = info.max_blocks_per_write(wire)
    for first in range(0, nblocks, per):
        count = min(per, nblocks - first)
        args = protocol.to_bytes(protocol.WRITE_ARGS_LAYOUT, {
            "wire": int(wire), "flags": 0, "count": count, "start": first})
        yield cmd, args + raw[first * bb:(first + count) * bb], None


def _read_steps(m, n, info, origin=(0, 0)):
    """READ_C requests for ``C [m, n]``; their tags say where the words go in the big C."""
    per = info.max_read_words
    for first in range(0, m * n, per):
        count = min(per, m * n - first)
        args = protocol.to_bytes(protocol.READ_ARGS_LAYOUT, {
            "row": first // n, "col": first % n, "count": count, "flags": 0})
        yield Cmd.READ_C, args, (origin, (m, n), first, count)


def tile_sizes(info, k):
    """Largest (rows, cols) tile of C that fits the buffers for this K."""
    kb = protocol.kblocks(k, info.fmt)
    if kb > info.a_blocks or kb > info.b_depth:
        raise ValueError(f"K = {k} does not fit the buffers")
    cols = min(info.b_depth // kb * info.lanes, 0xFFFF)
    rows = min(info.a_blocks // kb, 0xFFFF)
    rows = min(rows, max(1, info.c_depth // protocol.column_groups(cols, info.lanes)))
    return rows, cols


def gemm_plan(a, b, info, wire, *, seed=None, tile=None):
    """Return the requests ``(cmd, payload, tag)`` of a whole GEMM, tiled over M and N.

    Every request must get an OK reply; the READ_C replies, placed with
    :func:`place_read`, make up C.
    """
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    m, k = a.shape
    n = b.shape[1]
    rows, cols = tile or tile_sizes(info, k)
    seed_b = None if seed is None else (seed + 1) % (1 << 32)
    # With stochastic rounding the blocks must be those of the whole matrices (the PRNG order
    # is global), so quantize once and cut the tiles from the quantized blocks.
    a_raw = protocol.a_blocks_payload(a, info.fmt, wire, input_format=info.input_format,
                                      seed=seed)[1]
    kb = protocol.kblocks(k, info.fmt)
    bb = protocol.block_bytes(info.fmt, wire, info.input_format)
    b_cols = _b_columns(b, info, wire, seed_b)
    steps = []
    for c0 in range(0, n, cols):
        cn = min(cols, n - c0)
        dev = protocol.b_device_order(np.stack(b_cols[c0:c0 + cn]), info.lanes)
        steps += _write_steps(Cmd.WRITE_B, dev.shape[0] * dev.shape[1] * dev.shape[2],
                              dev.tobytes(), wire, info)
        for r0 in range(0, m, rows):
            rn = min(rows, m - r0)
            steps += _write_steps(Cmd.WRITE_A, rn * kb,
                                  a_raw[r0 * kb * bb:(r0 + rn) * kb * bb], wire, info)
            steps.append((Cmd.COMPUTE, protocol.to_bytes(
                protocol.COMPUTE_ARGS_LAYOUT, {"m": rn, "n": cn, "k": k, "flags": 0}), None))
            steps += _read_steps(rn, cn, info, (r0, c0))
    return steps


def place_read(c, tag, body):
    """Put the words of a READ_C reply ``body`` (request tag ``tag``) into ``c``."""
    (r0, c0), (m, n), first, count = tag
    words = protocol.c_from_payload(body)
    assert len(words) == count
    tile = c[r0:r0 + m, c0:c0 + n].reshape(-1).copy()
    tile[first:first + count] = words
    c[r0:r0 + m, c0:c0 + n] = tile.reshape(m, n)


async def read_c(link, m, n, info):
    """Read ``C [m, n]`` (FP32 bit patterns) of the last COMPUTE in maximal READ_C frames."""
    c = np.zeros((m, n), np.uint32)
    for cmd, payload, tag in _read_steps(m, n, info):
        reply = await link.request(cmd, payload)
        assert reply.status is Status.OK, reply.status
        place_read(c, tag, reply.body)
    return c


async def device_gemm(link, a, b, info, wire, *, seed=None, tile=None):
    """Compute ``golden.gemm(a, b)`` on the device: tile, write, compute, read.

    Returns the FP32 bit patterns of C.
    """
    c = np.zeros((np.shape(a)[0], np.shape(b)[1]), np.uint32)
    for cmd, payload, tag in gemm_plan(a, b, info, wire, seed=seed, tile=tile):
        reply = await link.request(cmd, payload)
        assert reply.status is Status.OK, (Cmd(cmd), reply.status)
        if tag is not None:
            place_read(c, tag, reply.body)
    return c


def _b_columns(b, info, wire, seed):
    """Per column of B, its blocks as a uint8 array ``[KB, block_bytes]`` (wire bytes)."""
    n = b.shape[1]
    # Quantize/encode with lanes=1: device order is then plain column order.
    _, raw = protocol.b_blocks_payload(b, info.fmt, wire, 1, input_format=info.input_format,
                                       seed=seed)
    kb = protocol.kblocks(b.shape[0], info.fmt)
    bb = protocol.block_bytes(info.fmt, wire, info.input_format)
    arr = np.frombuffer(raw, np.uint8).reshape(n, kb, bb)
    return [arr[i] for i in range(n)]

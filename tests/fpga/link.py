"""Amaranth-simulator harness of the host-link tests: a byte link to a GemmSystem.

:func:`run_link` runs an async test function against the gateware; the function talks to the
device through a :class:`SimLink` (send bytes, receive frames), so the tests read like host
code. :func:`device_gemm` is a small host: it tiles a GEMM over M and N to fit the buffers
(and splits K into chunks that it accumulates on the device), writes A and B in frames,
computes and reads C back, one request at a time.

Sequenced commands (WRITE_A/B, COMPUTE, READ_C) carry the device's next sequence number: the
link counts it from 0 (the value after reset) and advances it on every OK reply.
"""

import random

import numpy as np
from amaranth.sim import Simulator

from hbfp_hw.fpga import protocol
from hbfp_hw.fpga.protocol import Cmd, FrameParser, Status


class LinkTimeout(AssertionError):
    pass


class SimLink:
    """Host end of the byte streams of a :class:`~hbfp_hw.fpga.system.engine.GemmSystem`."""

    def __init__(self, ctx, dut, *, ready_prob=1.0, gap_prob=0.0, byte_cycles=1, seed=0):
        self.ctx = ctx
        self.dut = dut
        self.ready_prob = ready_prob      # chance that the host accepts a reply byte in a cycle
        self.gap_prob = gap_prob          # chance of an idle cycle before each request byte
        self.byte_cycles = byte_cycles    # a reply byte takes this many cycles (a UART's pace)
        self.next_free = 0                # the cycle from which the next reply byte is taken
        self.rng = random.Random(seed)
        self.parser = FrameParser()
        self.frames = []
        self.cycle = 0
        self.rx_bytes = 0                 # reply bytes received so far
        self.taken_at = []                # per request byte taken: rx_bytes at that moment
        self.seq = 0
        self.order = 0                    # the device's next sequence number

    async def _cycle(self, valid=0, byte=0):
        i, o = self.dut.i_stream, self.dut.o_stream
        self.ctx.set(i.valid, valid)
        self.ctx.set(i.payload, byte)
        ready = (self.ready_prob >= 1 or self.rng.random() < self.ready_prob) and \
            self.cycle >= self.next_free
        self.ctx.set(o.ready, ready)
        _, _, iready, ovalid, obyte = await self.ctx.tick().sample(i.ready, o.valid, o.payload)
        self.cycle += 1
        if valid and iready:
            self.taken_at.append(self.rx_bytes)
        if ovalid and ready:
            self.rx_bytes += 1
            self.next_free = self.cycle - 1 + self.byte_cycles
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
        """Send one request frame and return its reply (checking the echoed sequence).

        A sequenced command gets the device's next sequence number unless ``seq`` is given.
        """
        sequenced = cmd in protocol.SEQUENCED
        if seq is None:
            seq = self.order if sequenced else self.next_seq()
        await self.send(protocol.encode_frame(cmd, seq, payload))
        reply = await self.recv()
        assert reply.seq == seq, f"reply seq {reply.seq} != {seq}"
        if sequenced and seq == self.order and reply.cmd == cmd | protocol.REPLY_FLAG \
                and reply.status is Status.OK:
            self.order = (self.order + 1) & 0xFF
        if cmd == Cmd.RESET and reply.status is Status.OK:
            self.order = 0
        return reply

    async def send_quiet(self, cmd, payload):
        """Send a sequenced request with the QUIET flag set (no reply expected if it works)."""
        await self.send(protocol.encode_frame(cmd, self.order, payload))
        self.order = (self.order + 1) & 0xFF

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

    ``link_args`` go to :class:`SimLink` (random reply backpressure, request byte gaps, the
    cycles a reply byte takes).
    """
    result = {}

    async def bench(ctx):
        link = SimLink(ctx, dut, **link_args)
        result["value"] = await test(link)
        result["cycles"] = link.cycle
        # The engine's issue schedule never offers a unit a block pair it cannot take.
        assert not ctx.get(dut._engine.overrun), "a dot-product unit refused a block pair"

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


def read_args(row, col, count, rows, cols, base=0):
    """The READ_C arguments for ``count`` words of the ``rows x cols`` result at ``base``."""
    return protocol.to_bytes(protocol.READ_ARGS_LAYOUT, {
        "row": row, "col": col, "count": count, "flags": 0, "base": base, "rows": rows,
        "cols": cols})


def compute_args(m, n, k, flags=0, a_base=0, b_base=0, c_base=0):
    """The COMPUTE arguments."""
    return protocol.to_bytes(protocol.COMPUTE_ARGS_LAYOUT, {
        "m": m, "n": n, "k": k, "flags": int(flags), "a_base": a_base, "b_base": b_base,
        "c_base": c_base})


def _read_steps(m, n, info, origin=(0, 0), per=None):
    """READ_C requests for ``C [m, n]``; their tags say where the words go in the big C."""
    per = per or (info.max_payload - 1) // 4
    for first in range(0, m * n, per):
        count = min(per, m * n - first)
        yield (Cmd.READ_C, read_args(first // n, first % n, count, m, n),
               (origin, (m, n), first, count))


def tile_sizes(info, k, kc=None):
    """Largest (rows, cols) tile of C that fits the buffers for ``kc`` k-blocks per chunk."""
    kb = kc or protocol.kblocks(k, info.fmt)
    if kb > info.a_blocks or kb > info.b_depth:
        raise ValueError(f"K = {k} does not fit the buffers")
    cols = min(info.b_depth // kb * info.lanes, 0xFFFF)
    rows = min(info.a_blocks // kb, 0xFFFF)
    rows = min(rows, max(1, info.c_depth // protocol.column_groups(cols, info.lanes)))
    return rows, cols


def gemm_plan(a, b, info, wire, *, seed=None, tile=None, chunk=None):
    """Return the requests ``(cmd, payload, tag)`` of a whole GEMM, tiled over M and N.

    K is split into chunks of ``chunk`` k-blocks (default: the whole K if it fits); the first
    chunk of a tile is a plain COMPUTE, the others ACCUMULATE into its C. Every request must
    get an OK reply; the READ_C replies, placed with :func:`place_read`, make up C.
    """
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    m, k = a.shape
    n = b.shape[1]
    kb = protocol.kblocks(k, info.fmt)
    chunk = chunk or kb
    rows, cols = tile or tile_sizes(info, k, min(chunk, kb))
    seed_b = None if seed is None else (seed + 1) % (1 << 32)
    # With stochastic rounding the blocks must be those of the whole matrices (the PRNG order
    # is global), so quantize once and cut the tiles from the quantized blocks.
    bb = protocol.block_bytes(info.fmt, wire, info.input_format)
    a_raw = np.frombuffer(protocol.a_blocks_payload(a, info.fmt, wire,
                                                    input_format=info.input_format,
                                                    seed=seed)[1], np.uint8).reshape(m, kb, bb)
    b_cols = _b_columns(b, info, wire, seed_b)
    bsz = info.fmt.block_size
    steps = []

    def write_b(c0, cn, k0, kn):
        dev = protocol.b_device_order(
            np.stack([col[k0:k0 + kn] for col in b_cols[c0:c0 + cn]]), info.lanes)
        return list(_write_steps(Cmd.WRITE_B, dev.shape[0] * dev.shape[1] * dev.shape[2],
                                 dev.tobytes(), wire, info))

    for c0 in range(0, n, cols):
        cn = min(cols, n - c0)
        if chunk >= kb:                       # one chunk: B once per column block
            steps += write_b(c0, cn, 0, kb)
        for r0 in range(0, m, rows):
            rn = min(rows, m - r0)
            for q, k0 in enumerate(range(0, kb, chunk)):
                kn = min(chunk, kb - k0)
                if chunk < kb:
                    steps += write_b(c0, cn, k0, kn)
                steps += _write_steps(Cmd.WRITE_A, rn * kn,
                                      a_raw[r0:r0 + rn, k0:k0 + kn].tobytes(), wire, info)
                k_elems = min(kn * bsz, k - k0 * bsz)
                flags = protocol.Flag.ACCUMULATE if q else 0
                steps.append((Cmd.COMPUTE, compute_args(rn, cn, k_elems, flags), None))
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


async def read_c(link, m, n, info, per=None):
    """Read ``C [m, n]`` (FP32 bit patterns) of the last COMPUTE in READ_C frames of ``per``
    words (default: as many as ``max_payload`` bytes hold)."""
    c = np.zeros((m, n), np.uint32)
    for cmd, payload, tag in _read_steps(m, n, info, per=per):
        reply = await link.request(cmd, payload)
        assert reply.status is Status.OK, reply.status
        place_read(c, tag, reply.body)
    return c


async def device_gemm(link, a, b, info, wire, *, seed=None, tile=None, chunk=None):
    """Compute ``golden.gemm(a, b)`` on the device: tile, write, compute, read.

    Returns the FP32 bit patterns of C.
    """
    c = np.zeros((np.shape(a)[0], np.shape(b)[1]), np.uint32)
    for cmd, payload, tag in gemm_plan(a, b, info, wire, seed=seed, tile=tile, chunk=chunk):
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

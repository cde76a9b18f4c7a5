"""The planner (no device): the tiles of C cover it exactly once, the K chunks of a tile cover
K once and in order, every COMPUTE finds its operands where the writes before it put them,
and the helpers (C ring, buffer slots, splitting, the lazy program) keep their promises."""

import numpy as np
import pytest

from hbfp_hw.fpga import protocol
from hbfp_hw.fpga.host.planning import (
    Planner,
    _CRing,
    _Op,
    _Program,
    _Slots,
    _Tile,
    tile_sizes,
)
from hbfp_hw.fpga.protocol import Cmd, Flag, Wire

from .fakedevice import small_info

DEFAULT = small_info()
SMALL = small_info(a_blocks=64, b_blocks=64, c_words=64, max_payload=256)

SHAPES = [(DEFAULT, 64, 64, 64), (DEFAULT, 5, 13, 7), (DEFAULT, 100, 300, 70),
          (DEFAULT, 3, 5000, 9), (SMALL, 9, 1000, 11), (SMALL, 33, 40, 17), (SMALL, 1, 16, 1)]


def plan(info, m, k, n, wire=Wire.BFP):
    rng = np.random.default_rng(m + k + n)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    c, program, tiles = Planner(info).plan(a, b, wire, None)
    ops = []
    while program:
        ops.append(program.popleft())
    return a, b, c, ops, tiles


@pytest.mark.parametrize(("info", "m", "k", "n"), SHAPES)
def test_tiles_cover_c_exactly_once(info, m, k, n):
    _, _, c, ops, tiles = plan(info, m, k, n)
    cover = np.zeros(c.shape, int)
    for t in tiles:
        assert t.c is c and t.rn >= 1 and t.cn >= 1
        assert t.r0 + t.rn <= m and t.c0 + t.cn <= n
        assert t.words <= info.c_depth
        cover[t.r0:t.r0 + t.rn, t.c0:t.c0 + t.cn] += 1
    assert (cover == 1).all()
    assert {id(op.tile) for op in ops if op.cmd is Cmd.COMPUTE} == {id(t) for t in tiles}


@pytest.mark.parametrize(("info", "m", "k", "n"), SHAPES)
def test_the_chunks_of_a_tile_cover_k_once_in_order(info, m, k, n):
    _, _, _, ops, tiles = plan(info, m, k, n)
    kb = protocol.kblocks(k, info.fmt)
    chunks = {id(t): [] for t in tiles}
    for op in ops:
        if op.cmd is Cmd.COMPUTE:
            chunks[id(op.tile)].append(op)
    for computes in chunks.values():
        assert sum(op.args["kb"] for op in computes) == kb
        assert sum(op.args["k"] for op in computes) == k
        assert [bool(op.args["flags"] & Flag.ACCUMULATE) for op in computes] == \
            [False] + [True] * (len(computes) - 1)
        assert [op.last for op in computes] == [False] * (len(computes) - 1) + [True]
        assert all(op.args["kb"] <= 0xFFFF // info.fmt.block_size for op in computes)


@pytest.mark.parametrize(("info", "m", "k", "n"), SHAPES)
def test_every_compute_finds_its_operands(info, m, k, n):
    """Replay the writes into models of the A and B buffers: each COMPUTE reads the blocks of
    its rows of A and its columns of B, for its k-blocks."""
    a, b, _, ops, _ = plan(info, m, k, n)
    fmt, lanes = info.fmt, info.lanes
    bb = protocol.block_bytes(fmt, Wire.BFP)
    kb = protocol.kblocks(k, fmt)
    a_want = np.frombuffer(protocol.a_blocks_payload(a, fmt, Wire.BFP)[1],
                           np.uint8).reshape(m, kb, bb)
    b_want = np.frombuffer(protocol.a_blocks_payload(b.T, fmt, Wire.BFP)[1],
                           np.uint8).reshape(n, kb, bb)
    a_mem, b_mem = {}, {}
    k_done = {}
    for op in ops:
        if op.cmd in (Cmd.WRITE_A, Cmd.WRITE_B):
            mem = a_mem if op.cmd is Cmd.WRITE_A else b_mem
            assert len(op.data) == op.count() * op.unit == op.count() * bb
            for i in range(op.count()):
                mem[op.args["start"] + i] = op.data[i * bb:(i + 1) * bb]
            limit = info.a_blocks if op.cmd is Cmd.WRITE_A else info.b_blocks
            assert op.args["start"] + op.count() <= limit
            continue
        assert op.cmd is Cmd.COMPUTE
        t, chunk = op.tile, op.args["kb"]
        k0 = k_done.get(id(t), 0)
        k_done[id(t)] = k0 + chunk
        for r in range(t.rn):
            for j in range(chunk):
                got = a_mem[op.args["a_base"] + r * chunk + j]
                assert got == a_want[t.r0 + r, k0 + j].tobytes()
        for col in range(t.cn):
            group, lane = divmod(col, lanes)
            for j in range(chunk):
                got = b_mem[(op.args["b_base"] + group * chunk + j) * lanes + lane]
                assert got == b_want[t.c0 + col, k0 + j].tobytes()


def test_a_and_b_that_fit_are_sent_once():
    _, _, _, ops, _ = plan(DEFAULT, 64, 64, 64)
    kb = protocol.kblocks(64, DEFAULT.fmt)
    assert tile_sizes(DEFAULT, 64, 64, 64) == (64, 64, kb)
    assert sum(op.count() for op in ops if op.cmd is Cmd.WRITE_A) == 64 * kb
    assert sum(op.count() for op in ops if op.cmd is Cmd.WRITE_B) == 64 * kb


@pytest.mark.parametrize(("info", "m", "k", "n"), SHAPES)
def test_tile_sizes_fit_the_buffers(info, m, k, n):
    rows, cols, chunk = tile_sizes(info, m, n, k)
    kb = protocol.kblocks(k, info.fmt)
    groups = protocol.column_groups(cols, info.lanes)
    assert 1 <= rows <= m and 1 <= cols <= n and 1 <= chunk <= kb
    assert rows * chunk <= info.a_blocks and groups * chunk <= info.b_depth
    if (rows, cols, chunk) != (m, n, kb):
        assert rows * groups <= info.c_depth


def test_c_ring_reuses_a_region_only_once_its_tile_has_arrived():
    c = np.zeros((8, 8), np.uint32)
    ring = _CRing(8)
    t1, t2, t3 = (_Tile(c, r, 1, 0, 4, 4) for r in range(3))
    t1.words = t2.words = t3.words = 4
    assert ring.place(t1) and ring.place(t2)
    assert (t1.base, t2.base) == (0, 4)
    assert not ring.place(t3)                       # C is full until a result arrives
    assert t1.put(0, np.arange(4, dtype=np.uint32))
    assert ring.place(t3) and t3.base == 0
    assert (c[0, :4] == np.arange(4)).all()


def test_slots_are_reused_least_recently_first():
    slots = _Slots(2, 10)
    assert slots.get("a") == (0, True)
    assert slots.get("b") == (10, True)
    assert slots.get("a") == (0, False)             # still there: not sent again
    assert slots.get("c") == (10, True)             # b was the least recently used
    assert slots.get("b") == (0, True)


def test_op_head_splits_writes_and_reads():
    w = _Op(Cmd.WRITE_A, {"wire": 1, "flags": 0, "count": 5, "start": 100}, bytes(range(10)), 2)
    part = w.head(2)
    assert (part.args["start"], part.count(), part.data) == (100, 2, bytes(range(4)))
    assert (w.args["start"], w.count(), w.data) == (102, 3, bytes(range(4, 10)))
    tile = _Tile(np.zeros((2, 2), np.uint32), 0, 2, 0, 2, 4)
    r = _Op(Cmd.READ_C, {"first": 1, "count": 3}, tile=tile, attempts=2)
    part = r.head(1)
    assert part.args == {"first": 1, "count": 1} and part.tile is tile and part.attempts == 2
    assert r.args == {"first": 2, "count": 2}


def test_the_program_is_planned_lazily():
    taken = []

    def plan():
        for i in range(3):
            taken.append(i)
            yield i

    program = _Program(plan())
    assert not taken
    assert program[0] == 0 and taken == [0]
    assert program.popleft() == 0
    program.extendleft([9, 8])
    program.appendleft(7)
    assert [program.popleft() for _ in range(4)] == [7, 8, 9, 1]
    assert program.popleft() == 2 and not program and taken == [0, 1, 2]

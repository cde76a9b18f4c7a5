"""The plan of a GEMM: the operations that :class:`~hbfp_hw.fpga.host.driver.Device` streams.

:class:`Planner` turns ``A @ B`` into a program of writes, COMPUTEs and reads of C
(:class:`_Op`, in a lazy :class:`_Program`) for one device's buffers: :func:`tile_sizes`
chooses between a resident plan (A and B loaded once, in the growing steps of
:func:`growth_steps`) and a tiled one (C in tiles, K in chunks accumulated on the device).
The session (:mod:`hbfp_hw.fpga.host.session`) sends the program; no I/O happens here.
"""

from __future__ import annotations

import functools
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np

from hbfp_hw.formats import Rounding

from ..protocol import frames as protocol
from ..protocol.frames import Cmd
from .flow import _LineModel
from .transport import ShapeError

__all__ = ["tile_sizes", "growth_first", "growth_steps", "Planner"]


# -- the plan of a GEMM -------------------------------------------------------------------------
#
# A GEMM becomes a program: an ordered list of operations (writes of A and B blocks, COMPUTEs,
# reads of C). The device executes sequenced frames exactly once and in order (docs/protocol.md
# 2.2), so the driver streams the program without waiting for replies: a COMPUTE can follow
# the writes it needs at once, and the writes of the next tile can follow that COMPUTE even
# when they overwrite its operands. The only thing the driver waits for is free space in C: a
# region of C is reused only after the result in it has been received.

def tile_sizes(info, m, n, k):
    """Return ``(rows, cols, chunk)``: the C tile and the k-blocks per COMPUTE for a GEMM.

    If the whole of A and B fits the buffers the result is ``(m, n, KB)``: everything is
    loaded once and C is computed in tiles of growing size (see :func:`growth_steps`).
    Otherwise C is computed in tiles of ``rows x cols``, and K is split into chunks of
    ``chunk`` k-blocks whose COMPUTEs accumulate on the device (``chunk == KB``: no split).
    """
    kb = protocol.kblocks(k, info.fmt)
    lanes = info.lanes
    groups = protocol.column_groups(n, lanes)
    if (m * kb <= info.a_blocks and groups * kb <= info.b_depth
            and max(m, n, k) <= 0xFFFF):              # COMPUTE's M, N, K are 16 bits
        return m, n, kb
    # C tiles: as large as C allows (half of it when C needs several tiles, so that one tile
    # is computed while the previous one is read), then the largest chunk that fits A and B.
    whole = m * groups <= info.c_depth
    c_cap = info.c_depth if whole else max(1, info.c_depth // 2)
    c_cap = min(c_cap, max(1, (protocol.MAX_READ_WORDS - 1) // lanes))
    best = None
    for rows in sorted({min(m, r, 0xFFFF) for r in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512,
                                                    1024, 4096, 16384, m)}):
        g = min(groups, c_cap // rows, 0xFFFF // lanes)
        if g < 1:
            break
        chunk = min(kb, info.a_blocks // rows, info.b_depth // g,
                    0xFFFF // info.fmt.block_size)
        if chunk < 1:
            continue
        tiles = -(-m // rows) * -(-groups // g)
        # Bytes uploaded (A once per column tile, B once per row tile) plus per-COMPUTE cost.
        cost = (m * kb * -(-groups // g) + groups * lanes * kb * -(-m // rows)
                + 64 * tiles * -(-kb // chunk))
        if best is None or cost < best[0]:
            best = (cost, rows, g * lanes, chunk)
    if best is None:
        raise ShapeError(f"this device cannot hold one row of A and one column of B even "
                         f"for one k-block ({info}); it is misconfigured")
    return best[1], min(best[2], n), best[3]


#: Largest first step of :func:`growth_steps`, in units of ``max(4, lanes)``.
_GROWTH_FIRST_MAX = 6

#: The step sizes that :func:`growth_steps` weighs at each step, in units of ``max(4,
#: lanes)`` (and the step to the whole of C).
_GROWTH_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)


def growth_first(m, n, lanes):
    """Return the first step of :func:`growth_steps` (no planning), so that a GEMM can start
    while the rest of its steps are chosen: ``log2(min(m, n) / 8)`` units of ``max(4,
    lanes)`` rows and columns (1 to :data:`_GROWTH_FIRST_MAX`; 12 for a 64 x 64 C with 4
    lanes)."""
    units = min(_GROWTH_FIRST_MAX, max(1, (min(m, n) // 8).bit_length() - 1))
    f = units * max(4, lanes)
    return min(f, m), min(f, n)


@functools.lru_cache(maxsize=256)
def growth_steps(m, n, lanes, row_bytes, col_bytes, max_write, tile_words, c_words=None):
    """Return the order in which a resident GEMM loads A and B: ``((rows, cols), ...)``.

    Step ``i`` loads the rows and columns beyond step ``i-1`` and computes the new part of C.
    Before the first element of C exists the host has to send a row and a column of the whole
    K, and while few results exist each result frame is soon sent and the device-to-host
    direction waits for the next one; so the steps start small (results flow back early) and
    grow once the results already computed keep that direction busy (fewer frames, less
    framing). The steps are those of :func:`_growth_iter`, which the driver runs step by step.
    ``c_words`` (None: no bound) is the capacity of C, which holds the results until they
    have arrived.
    """
    return tuple(_growth_iter(m, n, lanes, row_bytes, col_bytes, max_write, tile_words,
                              c_words))


def _growth_iter(m, n, lanes, row_bytes, col_bytes, max_write, tile_words, c_words=None):
    """Yield the steps of :func:`growth_steps`, each chosen when the step before it is sent.

    The first is :func:`growth_first`. Each next step is chosen greedily on the model of the
    full-duplex line (:class:`_LineModel`, framing and the room in C included): of the sizes
    :data:`_GROWTH_SIZES`, the one (the largest of equals) whose model time plus a bound on
    the rest (the remaining operands and results in frames of the largest size, each
    direction on its own) is the least. A few tens of microseconds per step. A device with a
    transmit buffer takes about the model's time: the simulated board 0.3% longer (it
    leaves out the device's execution times).
    """
    unit = max(4, lanes)
    kw = {"lanes": lanes, "row_bytes": row_bytes, "col_bytes": col_bytes,
          "max_write": max_write, "tile_words": tile_words}
    # What the rest costs at least: operands and results in frames of the largest size.
    per_row = row_bytes * (1 + (protocol.FRAME_OVERHEAD + protocol.ARGS_BYTES) / max_write)
    per_col = col_bytes * (1 + (protocol.FRAME_OVERHEAD + protocol.ARGS_BYTES) / max_write)
    per_word = 4 + 15 / tile_words
    rows, cols = growth_first(m, n, lanes)
    line = _LineModel(c_words=c_words).add(_step_frames(0, 0, rows, cols, **kw))
    yield rows, cols
    while rows < m or cols < n:
        best = None
        for size in _GROWTH_SIZES + (max(m, n),):
            r1, c1 = min(m, rows + size * unit), min(n, cols + size * unit)
            new = line.copy().add(_step_frames(rows, cols, r1, c1, **kw))
            bound = max(new.up + (m - r1) * per_row + (n - c1) * per_col,
                        new.down + (m * n - r1 * c1) * per_word)
            if best is None or bound <= best[0]:
                best = (bound, new, r1, c1)
            if (r1, c1) == (m, n):
                break
        _, line, rows, cols = best
        yield rows, cols


def _step_frames(rows, cols, r1, c1, *, lanes, row_bytes, col_bytes, max_write, tile_words):
    """Model frames of one growth step from ``rows x cols`` to ``r1 x c1`` (as the driver
    sends it: the new columns of B, their results, the new rows of A, their results)."""
    frames = []

    def write(nbytes):
        while nbytes > 0:
            x = min(max_write, nbytes)
            frames.append((x + 18, None))
            nbytes -= x

    def tiles(rn, cn):
        per = max(1, tile_words // cn)
        for r in range(0, rn, per):
            rn1 = min(per, rn - r)
            frames.append((30, 15 + 4 * rn1 * cn, rn1 * protocol.padded_columns(cn, lanes)))

    if c1 > cols:
        write(protocol.padded_columns(c1 - cols, lanes) * col_bytes)
        if rows:
            tiles(rows, c1 - cols)
    if r1 > rows:
        write((r1 - rows) * row_bytes)
        tiles(r1 - rows, c1)
    return frames


class _Blocks:
    """The wire blocks of the rows of A, or of the columns of B: ``[rows, KB, block bytes]``.

    Encoded (quantized, with ``Wire.BFP``) when the plan first asks for them, so that the first
    frames of a GEMM go out before the rest of its operands are encoded. A stochastic format is
    encoded whole at once: its random bits follow the block order of the whole matrix (rows of
    A, or columns of B, each along K, as ``golden.gemm`` quantizes them), so the blocks are
    those of ``golden.gemm`` however the GEMM is cut.
    """

    def __init__(self, x, fmt, wire, input_format, seed, kb, bb):
        self._x = np.ascontiguousarray(x, np.float32)         # [rows, K]
        self._args = (fmt, wire)
        self._kw = {"input_format": input_format, "seed": seed}
        self._arr = np.empty((self._x.shape[0], kb, bb), np.uint8)
        self._done = np.zeros(self._x.shape[0], bool)
        self.shape = self._arr.shape
        if fmt.rounding is Rounding.STOCHASTIC:
            self._encode(0, self._x.shape[0])

    def _encode(self, r0, r1):
        _, raw = protocol.a_blocks_payload(self._x[r0:r1], *self._args, **self._kw)
        self._arr[r0:r1] = np.frombuffer(raw, np.uint8).reshape(r1 - r0, *self.shape[1:])
        self._done[r0:r1] = True

    def __getitem__(self, key):
        rows = key[0] if isinstance(key, tuple) else key
        r0, r1, _ = rows.indices(self.shape[0])
        if not self._done[r0:r1].all():
            self._encode(r0, r1)
        return self._arr[key]


class _Tile:
    """One rectangle of C: where it is on the device and which of its words have arrived."""

    def __init__(self, c, r0, rn, c0, cn, lanes):
        self.c, self.r0, self.rn, self.c0, self.cn = c, r0, rn, c0, cn
        self.words = rn * protocol.column_groups(cn, lanes)   # C bank words per bank
        self.base = None                                        # C bank word, once placed
        self.data = np.zeros(rn * cn, np.uint32)
        self.have = np.zeros(rn * cn, bool)
        self.done = False

    def put(self, first, words):
        self.data[first:first + len(words)] = words
        self.have[first:first + len(words)] = True
        if not self.done and self.have.all():
            self.done = True
            self.c[self.r0:self.r0 + self.rn, self.c0:self.c0 + self.cn] = \
                self.data.reshape(self.rn, self.cn)
            return True
        return False


class _CRing:
    """Allocation of C regions (bank words) in ring order; a region is freed when the tile in
    it has been received."""

    def __init__(self, depth):
        self.depth = depth
        self.head = 0
        self.live = []                  # [(base, size, tile)]

    def _free(self, lo, hi):
        return all(b + s <= lo or b >= hi for b, s, t in self.live if not t.done)

    def place(self, tile):
        self.live = [x for x in self.live if not x[2].done]
        size = tile.words
        for base in (self.head, 0):
            if base + size <= self.depth and self._free(base, base + size):
                tile.base = base
                self.live.append((base, size, tile))
                self.head = base + size if base + size < self.depth else 0
                return True
        return False


@dataclass
class _Op:
    """One operation of the program: a write, a COMPUTE or a read of C."""

    cmd: Cmd
    args: dict
    data: bytes = b""
    unit: int = 1               # bytes per block (writes)
    tile: _Tile = None
    attempts: int = 0
    last: bool = False          # COMPUTE: the last chunk of its tile (the result is final)
    readback: bool = None       # COMPUTE: the reply carries the result (decided when sent)
    resent: bool = False        # sent again after a failure (its attempt is counted)

    def count(self):
        return self.args.get("count", 1)

    def head(self, n):
        """Split off the first ``n`` blocks (writes) or words (reads); return that part."""
        if self.cmd is Cmd.READ_C:
            part = _Op(Cmd.READ_C, dict(self.args, count=n), tile=self.tile,
                       attempts=self.attempts)
            self.args = dict(self.args, first=self.args["first"] + n,
                             count=self.args["count"] - n)
            return part
        part = _Op(self.cmd, dict(self.args, count=n), self.data[:n * self.unit], self.unit,
                   attempts=self.attempts)
        self.args = dict(self.args, start=self.args["start"] + n,
                         count=self.args["count"] - n)
        self.data = self.data[n * self.unit:]
        return part


class _Program:
    """The operations still to send: a deque in front of a lazy plan (a generator), so that
    the first frames go out while the rest of the GEMM is still being planned."""

    def __init__(self, plan):
        self._ops = deque()
        self._plan = iter(plan)

    def _fill(self):
        if not self._ops and self._plan is not None:
            op = next(self._plan, None)
            if op is None:
                self._plan = None
            else:
                self._ops.append(op)
        return self._ops

    def __bool__(self):
        return bool(self._fill())

    def __getitem__(self, index):
        return self._fill()[index]

    def popleft(self):
        return self._fill().popleft()

    def appendleft(self, op):
        self._ops.appendleft(op)

    def extendleft(self, ops):
        self._ops.extendleft(ops)


def _read_op(tile, first, count):
    return _Op(Cmd.READ_C, {"first": first, "count": count}, tile=tile)



class _Slots:
    """Slots of one buffer (A or B) that hold chunks of operands, reused least recently first."""

    def __init__(self, count, size):
        self.size = size
        self.held = OrderedDict((i, None) for i in range(max(1, count)))

    def get(self, key):
        """Return ``(address, new)``: where ``key`` is, and whether it must be sent."""
        for slot, held in self.held.items():
            if held == key:
                self.held.move_to_end(slot)
                return slot * self.size, False
        slot = next(iter(self.held))
        self.held[slot] = key
        self.held.move_to_end(slot)
        return slot * self.size, True


class Planner:
    """Turn GEMMs into programs for one device.

    Parameters
    ----------
    info : Info
        The device's INFO (:class:`~hbfp_hw.fpga.protocol.Info`): its format, lanes and
        buffer capacities.
    """

    def __init__(self, info):
        self.info = info

    def plan(self, a, b, wire, seed):
        """Return ``(c, program, tiles)`` for ``a @ b`` (float32 ``[M, K]`` and ``[K, N]``).

        ``c`` is the ``[M, N]`` uint32 array that the tiles fill as their results arrive
        (:meth:`_Tile.put`), ``program`` the :class:`_Program` of operations, planned lazily
        while it is sent, and ``tiles`` the list of the :class:`_Tile` of C, which grows as
        the program is taken.
        """
        info = self.info
        fmt = info.fmt
        m, k = a.shape
        n = b.shape[1]
        kb = protocol.kblocks(k, fmt)
        bb = protocol.block_bytes(fmt, wire, info.input_format)
        seed_b = None if seed is None else (seed + 1) % (1 << 32)
        a_blk = _Blocks(a, fmt, wire, info.input_format, seed, kb, bb)
        b_blk = _Blocks(b.T, fmt, wire, info.input_format, seed_b, kb, bb)
        c = np.zeros((m, n), np.uint32)
        rows, cols, chunk = tile_sizes(info, m, n, k)
        tiles = []
        if (rows, cols, chunk) == (m, n, kb):
            plan = self._plan_resident(a_blk, b_blk, c, k, wire, tiles)
        else:
            plan = self._plan_tiles(a_blk, b_blk, c, k, wire, rows, cols, chunk, tiles)
        return c, _Program(plan), tiles

    def _write(self, cmd, start, blocks, bb, wire):
        raw = np.ascontiguousarray(blocks).tobytes()
        return _Op(cmd, {"wire": int(wire), "flags": 0, "count": len(raw) // bb,
                         "start": start}, raw, bb)

    def _b_write(self, b_blk, c0, c1, k0, k1, word, bb, wire):
        """WRITE_B of the columns ``c0:c1`` (padded to lanes), k-blocks ``k0:k1``, placed from
        B bank word ``word`` on."""
        dev = protocol.b_device_order(b_blk[c0:c1, k0:k1], self.info.lanes)
        return self._write(Cmd.WRITE_B, word * self.info.lanes, dev, bb, wire)

    def _compute(self, tile, k, kb_chunk, a_base, b_base, accumulate, last):
        flags = protocol.Flag.ACCUMULATE if accumulate else 0
        return _Op(Cmd.COMPUTE, {"m": tile.rn, "n": tile.cn, "k": k, "flags": int(flags),
                                 "a_base": a_base, "b_base": b_base, "kb": kb_chunk},
                   tile=tile, last=last)

    def _plan_resident(self, a_blk, b_blk, c, k, wire, tiles):
        """A and B fit the buffers: load each row and column once, in growing steps
        (:func:`growth_steps`), each row of A at ``row * KB``, each column group of B at
        ``group * KB``; compute every new part of C as soon as its operands are sent.

        A generator: each step is chosen (:func:`_growth_iter`) when the frames of the step
        before it have been taken, while they are on the line."""
        info = self.info
        lanes = info.lanes
        m, kb, bb = a_blk.shape
        n = b_blk.shape[0]
        tile_words = max(lanes, min(info.c_words // 4, protocol.MAX_READ_WORDS - 1))
        model = (m, n, lanes, kb * bb, kb * bb, info.max_payload - 8, tile_words,
                 info.c_words)

        def compute(r0, rn, c0, cn):
            col_per = min(protocol.padded_columns(cn, lanes),
                          max(lanes, tile_words // lanes * lanes))
            for cc in range(c0, c0 + cn, col_per):
                cw = min(col_per, c0 + cn - cc)
                per = max(1, min(rn, tile_words // protocol.padded_columns(cw, lanes)))
                for r in range(r0, r0 + rn, per):
                    tile = _Tile(c, r, min(per, r0 + rn - r), cc, cw, lanes)
                    tiles.append(tile)
                    yield self._compute(tile, k, kb, r * kb, cc // lanes * kb, False, True)

        rows = cols = 0
        for r1, c1 in _growth_iter(*model):
            if c1 > cols:
                yield self._b_write(b_blk, cols, c1, 0, kb, cols // lanes * kb, bb, wire)
                if rows:
                    yield from compute(0, rows, cols, c1 - cols)
            if r1 > rows:
                yield self._write(Cmd.WRITE_A, rows * kb, a_blk[rows:r1], bb, wire)
                yield from compute(rows, r1 - rows, 0, c1)
            rows, cols = max(rows, r1), max(cols, c1)

    def _plan_tiles(self, a_blk, b_blk, c, k, wire, rows, cols, chunk, tiles):
        """C in tiles of ``rows x cols``; K in chunks of ``chunk`` k-blocks, accumulated on the
        device in order (the first chunk of a tile starts from +0.0, the others ACCUMULATE).
        A and B chunks go to slots of the buffers; a chunk still in a slot is not sent again."""
        info = self.info
        lanes = info.lanes
        bs = info.fmt.block_size
        m, kb, bb = a_blk.shape
        n = b_blk.shape[0]
        a_size = rows * chunk
        b_size = protocol.column_groups(cols, lanes) * chunk
        a_slots = _Slots(info.a_blocks // a_size, a_size)
        b_slots = _Slots(info.b_depth // b_size, b_size)
        for c0 in range(0, n, cols):
            c1 = min(n, c0 + cols)
            for r0 in range(0, m, rows):
                r1 = min(m, r0 + rows)
                tile = _Tile(c, r0, r1 - r0, c0, c1 - c0, lanes)
                tiles.append(tile)
                for q, k0 in enumerate(range(0, kb, chunk)):
                    k1 = min(kb, k0 + chunk)
                    a_at, new = a_slots.get((r0, k0))
                    if new:
                        yield self._write(Cmd.WRITE_A, a_at, a_blk[r0:r1, k0:k1], bb, wire)
                    b_at, new = b_slots.get((c0, k0))
                    if new:
                        yield self._b_write(b_blk, c0, c1, k0, k1, b_at, bb, wire)
                    k_elems = min(k, k1 * bs) - k0 * bs
                    yield self._compute(tile, k_elems, k1 - k0, a_at, b_at, q > 0, k1 == kb)

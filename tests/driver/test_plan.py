"""The driver's plan of a resident GEMM: the line model and the growth steps (no device)."""

import functools

import pytest

from hbfp_hw.fpga import protocol
from hbfp_hw.fpga.driver import (
    _frames_time,
    _growth_frames,
    _LineModel,
    _step_frames,
    growth_first,
    growth_steps,
)


def test_line_model_by_hand():
    # Up: 10 (write) | 5 (compute) -> its 20-byte reply runs 15..35 | 30 (compute) arrives at
    # 45, so the down direction waits 10 -> reply 45..48.
    line = _LineModel().add([(10, None), (5, 20), (30, 3)])
    assert (line.up, line.down, line.end) == (45, 48, 48)
    assert line.idle == 15 + 10
    assert _frames_time([(10, None), (5, 20), (30, 3)]) == 48
    # A reply that is due before the previous one has been sent waits for it.
    assert _frames_time([(1, 100), (1, 100)]) == 201
    # Only requests: the up direction bounds the time.
    assert _frames_time([(7, None), (8, None)]) == 15


def _model(m, n, k, lanes=4, fmt="bfp8", max_payload=1024, c_words=4096):
    kb = protocol.kblocks(k, fmt)
    bb = protocol.block_bytes(fmt, protocol.Wire.BFP)
    return (m, n, lanes, kb * bb, kb * bb, max_payload - 8, c_words // 4)


def _best_plan_time(m, n, lanes, row_bytes, col_bytes, max_write, tile_words):
    """The slow reference: the shortest model time over all growth sequences in units of
    ``max(4, lanes)`` that start with ``growth_first`` and grow one side per step (dynamic
    programming over (rows, cols) with the Pareto set of (up, down) line states)."""
    unit = max(4, lanes)
    frame = functools.partial(_step_frames, lanes=lanes, row_bytes=row_bytes,
                              col_bytes=col_bytes, max_write=max_write, tile_words=tile_words)
    first = growth_first(m, n, lanes)
    sizes = sorted({min(m, r) for r in range(first[0], m + unit, unit)})
    sizes_c = sorted({min(n, c) for c in range(first[1], n + unit, unit)})
    front = {first: [_LineModel().add(frame(0, 0, *first))]}
    for rows in sizes:
        for cols in sizes_c:
            for line in front.get((rows, cols), []):
                for r1, c1 in [(r, cols) for r in sizes if r > rows] + \
                              [(rows, c) for c in sizes_c if c > cols]:
                    new = line.copy().add(frame(rows, cols, r1, c1))
                    states = front.setdefault((r1, c1), [])
                    if any(s.up <= new.up and s.down <= new.down for s in states):
                        continue
                    states[:] = [s for s in states if not (new.up <= s.up and
                                                           new.down <= s.down)]
                    states.append(new)
    return min(s.end for s in front[(m, n)])


SHAPES = [(64, 64, 64), (128, 128, 128), (256, 64, 256), (64, 512, 64), (3, 300, 33),
          (7, 33, 300), (16, 16, 16), (1, 1, 1), (1, 200, 16), (40, 100, 9)]


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_growth_steps_cover_c_in_order(m, n, k):
    model = _model(m, n, k)
    steps = growth_steps(*model)
    assert steps[0] == growth_first(*model[:3])
    assert steps[-1] == (m, n)
    assert all(r0 <= r1 and c0 <= c1 and (r0, c0) != (r1, c1)
               for (r0, c0), (r1, c1) in zip(steps, steps[1:]))
    # Columns in whole column groups (B is stored per group of lanes) except at the end.
    assert all(c % 4 == 0 or c == n for _, c in steps)


@pytest.mark.parametrize("m,n,k,within", [
    (64, 64, 64, 0.01), (128, 128, 128, 0.01), (32, 32, 32, 0.01),         # link-bound
    (16, 16, 16, 0.03), (3, 300, 33, 0.03), (40, 100, 9, 0.03), (64, 64, 128, 0.03)])
def test_growth_steps_near_the_best_plan(m, n, k, within):
    """Close to the best growth sequence of the model (with the same first step)."""
    model = _model(m, n, k)
    got = _frames_time(_growth_frames(growth_steps(*model), *model[2:]))
    best = _best_plan_time(*model)
    assert best <= got <= (1 + within) * best, (got, best)


def test_growth_steps_first_step_grows_with_c():
    # 12 rows and columns for a 64 x 64 C with 4 lanes; fewer for a smaller C, more for a
    # larger one, and never more than C.
    assert growth_first(64, 64, 4) == (12, 12)
    assert growth_first(16, 16, 4) == (4, 4)
    assert growth_first(128, 128, 4) == (16, 16)
    assert growth_first(3, 300, 4) == (3, 4)
    assert growth_first(1, 1, 8) == (1, 1)

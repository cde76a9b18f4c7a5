"""The reference schedule of :class:`~hbfp_hw.rtl_gen.systolic.SystolicArray`, and a driver
that runs a whole GEMM through the array in Amaranth's simulator.

:func:`plan` turns a GEMM's shape into the array's pass schedule: column groups of ``cols``,
k-chunks of ``rows`` k-blocks, chunk-major (every column group of chunk 0, then of chunk 1...),
each pass's B loaded while the previous pass computes, each pass's ``swap`` at least
``min_pass`` cycles after the previous one and, for a chunk after the first, after the results
it starts from have left the array. :func:`run` drives the ports cycle by cycle.
"""

from dataclasses import dataclass

import numpy as np
from amaranth.sim import Simulator

from hbfp_hw.formats import BFPFormat
from hbfp_hw.rtl_gen.layout import pack

__all__ = ["Pass", "plan", "run", "zero_operand"]


@dataclass(frozen=True)
class Pass:
    group: int          # column group: columns group * cols ...
    chunk: int          # k-chunk: k-blocks chunk * rows ...
    swap: int           # row-0 cycle of the operand after which this pass's B is used
    load: int           # row-0 cycle of the first B load word


def plan(array, m, kblocks, ncols, *, gap=0):
    """Return the passes of an ``m x kblocks`` by ``kblocks x ncols`` GEMM (``gap`` idle
    cycles added between passes, to vary the timing)."""
    rows, cols = array.rows, array.cols
    groups = -(-ncols // cols)
    chunks = -(-kblocks // rows)
    passes, previous, by_group = [], None, {}
    for chunk in range(chunks):
        for group in range(groups):
            if previous is None:
                load = 0
                swap = array.min_pass
            else:
                load = previous.swap
                swap = previous.swap + max(m, array.min_pass) + gap
            if chunk:
                # Its starting sums are the results of the group's previous chunk.
                swap = max(swap, by_group[group].swap + array.latency + 1)
            p = Pass(group, chunk, swap, load)
            passes.append(p)
            by_group[group] = previous = p
    return passes


def zero_operand(element):
    return {"exponent": 0, "mantissas": [0] * element.block_size} \
        if isinstance(element, BFPFormat) else 0


def run(array, a_ops, b_ops, *, gap=0, check_hazards=True, garbage=0):
    """Compute ``C = A @ B`` on ``array`` in the simulator; return ``C`` as FP32 bits.

    ``a_ops[m][kb]`` and ``b_ops[kb][n]`` are operands as :func:`pack` takes them (dicts of
    ``exponent`` code and ``mantissas`` for BFP, FP32 bit patterns for FP32).

    With ``garbage``, the schedule starts after that many cycles of random bits on every
    input (the state a reset leaves in the array, which has none) followed by
    ``array.flush`` cycles of zeros: from then on, only the schedule's results may appear.
    """
    element = array.element
    rows, cols = array.rows, array.cols
    m_rows, kblocks, ncols = len(a_ops), len(b_ops), len(b_ops[0])
    passes = plan(array, m_rows, kblocks, ncols, gap=gap)
    zero = zero_operand(element)
    la, off, lat, d = array.row_skew, array.sum_offset, array.latency, array.load_spacing
    a_in, b_in, s_in = {}, {}, {}       # cycle -> {index: value}
    reads = {}                          # cycle -> [(column, m, n)]: starting sums to look up
    outs = {}                           # cycle -> [(column, m, n)]: results to collect
    for p in passes:
        k0, n0 = p.chunk * rows, p.group * cols
        for i in range(rows):
            a_in.setdefault(p.swap + i * la, {})[i] = dict(
                data=a_in.get(p.swap + i * la, {}).get(i, {}).get("data", zero), swap=1)
            for c in range(cols):
                k, n = k0 + i, n0 + c
                word = b_ops[k][n] if k < kblocks and n < ncols else zero
                b_in.setdefault(p.load + i * d + c, {})[c] = dict(valid=1, row=i, data=word)
        for mi in range(m_rows):
            x = p.swap + 1 + mi
            for i in range(rows):
                k = k0 + i
                entry = a_in.setdefault(x + i * la, {})
                entry[i] = dict(data=a_ops[mi][k] if k < kblocks else zero,
                                swap=entry.get(i, {}).get("swap", 0))
            for c in range(cols):
                n = n0 + c
                if n >= ncols:
                    continue
                if p.chunk:
                    reads.setdefault(x + c + off, []).append((c, mi, n))
                else:
                    s_in.setdefault(x + c + off, {})[c] = dict(valid=1, value=0)
                outs.setdefault(x + c + off + lat, []).append((c, mi, n))
    pre = garbage and garbage + array.flush
    a_in, b_in, s_in, reads, outs = ({t + pre: v for t, v in d.items()}
                                     for d in (a_in, b_in, s_in, reads, outs))
    noise = np.random.default_rng(garbage)
    end = max(outs) + 1
    result = {}

    def random_bits(port):
        width = len(port.as_value())
        return int.from_bytes(noise.bytes(width // 8 + 1), "little") & ((1 << width) - 1)

    async def bench(ctx):
        for t in range(end + 1):
            if t < garbage:
                for port in (*array.a, *array.b, *array.s_top):
                    ctx.set(port.as_value(), random_bits(port))
                await ctx.tick()
                continue
            a_now, b_now = a_in.get(t, {}), b_in.get(t, {})
            s_now = dict(s_in.get(t, {}))
            for c, mi, n in reads.get(t, ()):
                if check_hazards:
                    assert (mi, n) in result, f"cycle {t}: the start of C[{mi}, {n}] is missing"
                s_now[c] = dict(valid=1, value=result.get((mi, n), 0))
            for i in range(rows):
                ctx.set(array.a[i].as_value(), pack(array.a[i].shape(),
                                         a_now.get(i, dict(data=zero, swap=0))))
            for c in range(cols):
                ctx.set(array.b[c].as_value(), pack(array.b[c].shape(),
                                         b_now.get(c, dict(valid=0, row=0, data=zero))))
                ctx.set(array.s_top[c].as_value(), pack(array.s_top[c].shape(),
                                             s_now.get(c, dict(valid=0, value=0))))
            due = outs.get(t, ())
            got = {c: (ctx.get(array.s_bottom[c].valid), ctx.get(array.s_bottom[c].value))
                   for c in range(cols)}
            for c, mi, n in due:
                valid, value = got[c]
                assert valid, f"cycle {t}: no result in column {c} for C[{mi}, {n}]"
                result[(mi, n)] = value
            stray = {c for c in range(cols) if got[c][0]} - {c for c, _, _ in due}
            assert t < pre or not stray, f"cycle {t}: unexpected results in columns {sorted(stray)}"
            await ctx.tick()

    sim = Simulator(array)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    out = np.zeros((m_rows, ncols), dtype=np.uint32)
    for (mi, n), value in result.items():
        out[mi, n] = value
    return out

# amaranth: UnusedElaboratable=no
"""The block product in logic (``block_product(multipliers="lut")``: Baugh-Wooley rows of every
product summed in one unsigned tree plus one constant) against the exact integer dot product:
every pair of mantissas for small widths, extremes and random blocks for bfp8 and w12, every
pipeline depth."""

import random

import pytest
from amaranth.hdl import Const, Module, Signal, signed
from amaranth.sim import Simulator

from hbfp_hw.formats import BFP8, BFPFormat
from hbfp_hw.rtl_gen.layout import block_layout, pack
from hbfp_hw.rtl_gen.mac_tree import (
    MacTree,
    block_product,
    lut_dot_steps,
    max_block_product_stages,
)


def run(fmt, stages, cases, multipliers="lut"):
    """Stream ``cases``, one a cycle, and return the products read exactly ``stages`` cycles
    later (with the valid bit high): a pipeline one register short or long fails."""
    m = Module()
    a, b = Signal(block_layout(fmt)), Signal(block_layout(fmt))
    res, valid = block_product(m, None, fmt, a, b, Const(1), stages=stages,
                               multipliers=multipliers)
    tick = Signal()
    m.d.sync += tick.eq(~tick)              # a clock domain even when combinational
    got = []

    async def bench(ctx):
        for i in range(len(cases) + stages):
            if i < len(cases):
                ma, mb = cases[i]
                ctx.set(a.as_value(), pack(block_layout(fmt), {"exponent": 3, "mantissas": ma}))
                ctx.set(b.as_value(), pack(block_layout(fmt), {"exponent": 4, "mantissas": mb}))
            if i >= stages:
                assert ctx.get(valid), (stages, i)
                got.append(ctx.get(res.value))
            await ctx.tick()
    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got


def cases_for(fmt, exhaustive, seed=0):
    w, n = fmt.mantissa_bits, fmt.block_size
    lo, hi = -(1 << (w - 1)), (1 << (w - 1)) - 1
    r = random.Random(seed)
    cases = [([x] * n, [y] * n) for x in range(lo, hi + 1) for y in range(lo, hi + 1)] \
        if exhaustive else []
    cases += [([lo] * n, [lo] * n), ([lo] * n, [hi] * n), ([hi] * n, [hi] * n)]
    for _ in range(200):
        cases.append(([r.choice([lo, hi, 0, r.randint(lo, hi)]) for _ in range(n)],
                      [r.choice([lo, hi, 0, r.randint(lo, hi)]) for _ in range(n)]))
    return cases


@pytest.mark.parametrize("fmt,exhaustive", [(BFPFormat(4, 4), True), (BFPFormat(2, 2), True),
                                            (BFPFormat(5, 8), True), (BFP8, False),
                                            (BFPFormat(12, 4), False)])
def test_lut_block_product_is_exact(fmt, exhaustive):
    # Every depth, the deepest (the operands and every rank of the tree) included.
    assert max_block_product_stages(fmt) == lut_dot_steps(fmt) + 1 > MacTree.max_stages_for(fmt)
    for stages in range(max_block_product_stages(fmt) + 1):
        cases = cases_for(fmt, exhaustive and stages in (0, 3), seed=stages)
        got = run(fmt, stages, cases)
        want = [sum(x * y for x, y in zip(ma, mb, strict=True)) for ma, mb in cases]
        assert got == want, (fmt, stages)


@pytest.mark.parametrize("fmt", [BFP8, BFPFormat(4, 4)])
def test_dsp_block_product_lines_up(fmt):
    """The multiplier form (``*`` off the ECP5) at the depths beyond MacTree's, which a mixed
    array gives it to match its logic PEs: registers after the last level, same products."""
    for stages in range(MacTree.max_stages_for(fmt), max_block_product_stages(fmt) + 1):
        cases = cases_for(fmt, False, seed=stages)[:40]
        got = run(fmt, stages, cases, multipliers="dsp")
        assert got == [sum(x * y for x, y in zip(ma, mb, strict=True)) for ma, mb in cases]


def test_lut_dot_steps():
    # 16 products of 8 rows each: 128 rows, 7 ranks, and the constant.
    assert lut_dot_steps(BFP8) == 8 and max_block_product_stages(BFP8) == 9
    assert lut_dot_steps(BFPFormat(4, 4)) == 5 and lut_dot_steps(BFPFormat(8, 32)) == 9


@pytest.mark.parametrize("wa,wb", [(5, 5), (3, 6), (24, 24)])
def test_lut_multiply_is_exact(wa, wb):
    from hbfp_hw.rtl_gen.mac_tree import lut_multiply

    m = Module()
    a, b = Signal(wa), Signal(wb)
    p = lut_multiply(m, "mul", a, b)
    r = random.Random(wa * wb)
    if wa + wb <= 10:
        cases = [(x, y) for x in range(1 << wa) for y in range(1 << wb)]
    else:
        edge = [0, 1, (1 << wa) - 1, 1 << (wa - 1)]
        cases = [(x, y) for x in edge for y in edge]
        cases += [(r.randrange(1 << wa), r.randrange(1 << wb)) for _ in range(2000)]

    async def bench(ctx):
        for x, y in cases:
            ctx.set(a, x)
            ctx.set(b, y)
            assert ctx.get(p) == x * y, (x, y)
    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    with pytest.raises(TypeError, match="unsigned operands"):
        lut_multiply(Module(), "x", Signal(signed(4)), Signal(4))


def test_lut_block_product_registers_every_rank(monkeypatch):
    """At its deepest, the logic form registers its operands and every step of the tree (the
    constant's addition last), not two ranks in one step with registers piled at the end."""
    from hbfp_hw.rtl_gen import mac_tree
    from hbfp_hw.rtl_gen.common import Pipeline

    cuts = []

    class Recording(Pipeline):
        def cut(self, name, values, register):
            if register:
                cuts.append(name)
            return super().cut(name, values, register)

    monkeypatch.setattr(mac_tree, "Pipeline", Recording)
    a, b = Signal(block_layout(BFP8)), Signal(block_layout(BFP8))
    block_product(Module(), None, BFP8, a, b, Const(1), stages=9, multipliers="lut")
    assert cuts == ["l0"] + [f"t{step}_0" for step in range(1, 9)]
    # MacTree's deepest plus one (what mixed arrays used before): the same count, spread.
    cuts.clear()
    block_product(Module(), None, BFP8, a, b, Const(1), stages=7, multipliers="lut")
    assert len(cuts) == 7 and cuts[0] == "l0" and not any(c.startswith("lx") for c in cuts)

# amaranth: UnusedElaboratable=no
"""GemmSystem on the systolic array (``SystemConfig.rows`` > 0): end-to-end GEMMs through the
byte protocol, bit-exact against golden.gemm, as tests/fpga/test_engine.py does for the
dot-product units."""

import dataclasses

import numpy as np
import pytest
from amaranth.hdl import ClockDomain, Module
from amaranth.sim import Simulator

from hbfp_hw import golden
from hbfp_hw.fpga.config import SystemConfig
from hbfp_hw.fpga.protocol import Wire
from hbfp_hw.fpga.system.engine import GemmSystem
from hbfp_hw.fpga.system.systolic import SystolicEngine
from hbfp_hw.rtl_gen.layout import block_layout

from .test_engine import SHAPES, SMALL, check, random_matrix


def system(**kw):
    return GemmSystem(SMALL.replace(**{"rows": 2, **kw}))


@pytest.mark.parametrize("rows,lanes,wire", [(2, 2, Wire.BFP), (1, 2, Wire.FLOAT),
                                             (3, 1, Wire.BFP), (2, 4, Wire.FLOAT)])
def test_random_shapes(rows, lanes, wire):
    rng = np.random.default_rng(rows * 10 + lanes)
    cases = [(random_matrix(rng, (m, k), "wide"), random_matrix(rng, (k, n), "wide"))
             for m, k, n in SHAPES]
    check(system(rows=rows, lanes=lanes), cases, wire)


@pytest.mark.parametrize("chunk", [1, 3])
def test_k_in_chunks_accumulated_on_the_device(chunk):
    rng = np.random.default_rng(40 + chunk)
    shapes = [(1, 1, 1), (2, 9, 3), (5, 13, 7), (2, 70, 3)]
    cases = [(random_matrix(rng, (m, k), "wide"), random_matrix(rng, (k, n), "wide"))
             for m, k, n in shapes]
    check(system(), cases, Wire.BFP, chunk=chunk)


def test_special_values():
    rng = np.random.default_rng(8)
    a = random_matrix(rng, (4, 10), "wide")
    b = random_matrix(rng, (10, 3), "wide")
    a[0, 1] = np.nan
    b[5, 2] = np.inf
    a[1, :] = 0
    a[2, :4] = 3e38
    b[:4, 0] = [3e38, 3e38, -3e38, 3e38]
    a[3, :] = np.float32(1e-41)
    b[:, 1] = np.float32(2e-39)
    check(system(rows=3), [(a, b), (b.T.copy(), a.T.copy())], Wire.BFP)


def test_config():
    cfg = SMALL.replace(rows=4, lanes=4)
    assert cfg.macs_per_cycle == 4 * 4 * 4
    assert cfg.info().channels == 1
    assert cfg.default_build_hash() != cfg.replace(rows=2).default_build_hash()
    assert SMALL.default_build_hash() == SystemConfig(**{**SMALL.to_dict(), "rows": 0,
                                                          "fmt": SMALL.fmt}).default_build_hash()
    with pytest.raises(ValueError, match="rows must be between 0 and 64"):
        SMALL.replace(rows=65)
    with pytest.raises(ValueError, match="multipliers must be 'dsp' or 'lut'"):
        SMALL.replace(multipliers="bram")
    with pytest.raises(ValueError, match="adder_stages must be between 1 and 11"):
        SystolicEngine.check_params(SMALL.fmt, rows=2, lanes=2, a_blocks=16, b_blocks=16,
                                    c_words=16, product_stages=2, convert_stages=3,
                                    adder_stages=0)


def test_a_short_drain_is_caught(monkeypatch):
    """Mutant: the sequencer starts a k-chunk before the previous chunk's results are in C."""
    monkeypatch.setattr(SystolicEngine, "drain_for", staticmethod(lambda *a, **k: 3))
    rng = np.random.default_rng(9)
    a, b = random_matrix(rng, (2, 9), "wide"), random_matrix(rng, (9, 3), "wide")
    with pytest.raises(AssertionError, match="mismatches"):
        check(system(rows=1), [(a, b)], Wire.BFP)


def _block(q, row, kb):
    """Block ``(row, kb)`` of a BFPTensor as the engine's buffers hold it."""
    return {"exponent": int(q.exponents[row, kb]) + q.fmt.exponent_bias,
            "mantissas": [int(v) for v in q.mantissas[row, kb]]}


def _run_engine(engine, a, b, *, warm_reset_at):
    """Load A and B into ``engine``'s buffers, start at once after the reset, reset it
    ``warm_reset_at`` cycles into the computation and start again at once; return C's bits,
    the cycles the second start waited, and ``overrun``."""
    fmt, lanes = engine.fmt, engine.lanes
    qa, qb = golden.quantize(a, fmt, axis=1), golden.quantize(b, fmt, axis=0)
    mrows, kb, ncols = a.shape[0], qa.nblocks, b.shape[1]
    groups = -(-ncols // lanes)
    blk = block_layout(fmt)
    out = {}

    async def bench(ctx):
        for r in range(mrows):
            for k in range(kb):
                ctx.set(engine.a_we, 1)
                ctx.set(engine.a_waddr, r * kb + k)
                ctx.set(engine.a_wdata, blk.const(_block(qa, r, k)))
                await ctx.tick()
        ctx.set(engine.a_we, 0)
        zero = {"exponent": 0, "mantissas": [0] * fmt.block_size}
        for n in range(groups * lanes):
            for k in range(kb):
                word = _block(qb, n, k) if n < ncols else zero
                ctx.set(engine.b_we, 1)
                ctx.set(engine.b_waddr, (((n // lanes) * kb + k) * lanes) + n % lanes)
                ctx.set(engine.b_wdata, blk.const(word))
                await ctx.tick()
        ctx.set(engine.b_we, 0)
        ctx.set(engine.m, mrows)
        ctx.set(engine.groups, groups)
        ctx.set(engine.kblocks, kb)
        for start_after in (warm_reset_at, None):
            ctx.set(engine.start, 1)
            await ctx.tick()
            ctx.set(engine.start, 0)
            waited = 0
            while start_after is None or waited < start_after:
                if ctx.get(engine.done):
                    break
                waited += 1
                await ctx.tick()
            if start_after is not None:
                ctx.set(domain.rst, 1)       # a warm reset in the middle of the passes
                await ctx.tick()
                ctx.set(domain.rst, 0)
        out["waited"] = waited
        await ctx.tick()                        # C's read port is the engine's until then
        out["overrun"] = ctx.get(engine.overrun)
        c = np.zeros((mrows, ncols), dtype=np.uint32)
        for r in range(mrows):
            for n in range(ncols):
                ctx.set(engine.c_rlane, n % lanes)
                ctx.set(engine.c_raddr, r * groups + n // lanes)
                await ctx.tick().repeat(2)          # the readout's latency
                c[r, n] = ctx.get(engine.c_rdata)
        out["c"] = c

    top = Module()
    top.domains.sync = domain = ClockDomain()
    top.submodules.engine = engine
    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    want = np.asarray(golden.f32_to_bits(golden.gemm_quantized(qa, qb)), dtype=np.uint32)
    return out["c"], want.reshape(mrows, ncols), out["waited"], out["overrun"]


class _NoFlush(SystolicEngine):
    def elaborate(self, platform):
        self._geometry = dataclasses.replace(self._geometry, flush=0)
        return super().elaborate(platform)


@pytest.mark.parametrize("flush", [True, False])
def test_start_waits_for_the_array_to_flush(flush):
    """The array has no reset. A start at once after a reset waits ``flush`` cycles; a warm
    reset in the middle of a computation leaves operations in the array, which the engine
    ignores while it flushes; the next computation is exact and ``overrun`` stays 0. Without
    the wait (the mutant), the old results reach C or raise ``overrun``."""
    rng = np.random.default_rng(21)
    a, b = random_matrix(rng, (4, 9), "wide"), random_matrix(rng, (9, 3), "wide")
    engine = (SystolicEngine if flush else _NoFlush)(
        SMALL.fmt, rows=2, lanes=2, a_blocks=16, b_blocks=16, c_words=16, product_stages=2,
        convert_stages=3, adder_stages=2, multipliers="lut")
    got, want, waited, overrun = _run_engine(engine, a, b, warm_reset_at=20)
    if flush:
        assert np.array_equal(got, want) and not overrun
        assert waited > engine._geometry.flush
    else:
        assert overrun or not np.array_equal(got, want)

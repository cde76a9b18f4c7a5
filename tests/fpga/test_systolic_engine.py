# amaranth: UnusedElaboratable=no
"""GemmSystem on the systolic array (``SystemConfig.rows`` > 0): end-to-end GEMMs through the
byte protocol, bit-exact against golden.gemm, as tests/fpga/test_engine.py does for the
dot-product units."""

import numpy as np
import pytest

from hbfp_hw.fpga.config import SystemConfig
from hbfp_hw.fpga.protocol import Wire
from hbfp_hw.fpga.system.engine import GemmSystem
from hbfp_hw.fpga.system.systolic import SystolicEngine

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

"""cocotb verification grid: every unit against the golden model on Verilator and Icarus.

Each configuration streams at least 10,000 seeded vectors (random data over the whole FP32
range plus the contract's corner cases) with random input gaps and output backpressure, and
scores every output bit for bit. Builds are cached per generated Verilog (see
hbfp_hw.sim.runner), so reruns only simulate.

The default run has the whole grid on Verilator and, on Icarus, one configuration per unit
as a cross-simulator check (:data:`ICARUS_QUICK`, the wide ones with fewer vectors); the whole
grid on Icarus at 10,000 vectors is under ``-m slow``.
"""

import pytest

from hbfp_hw.formats import BFPFormat, resolve_format
from hbfp_hw.sim.verify import verify
from hbfp_hw.tools import simulators

VECTORS = 10_000

# (unit, mantissa_bits, block_size, rounding, input_format, exponent_bits, hardware params)
GRID = [
    ("dot", 2, 2, "nearest-even", "fp32", 8, {}),
    ("dot", 4, 4, "toward-zero", "bf16", 8, {}),
    ("dot", 6, 8, "stochastic", "fp32", 8, {}),
    ("dot", 8, 16, "nearest-even", "fp32", 8, {}),            # bfp8, the default
    ("dot", 8, 32, "nearest-even", "bf16", 8, {}),            # MXINT8 block, BF16 lanes
    ("dot", 12, 8, "nearest-even", "fp32", 8, {"channels": 5}),
    ("dot", 16, 4, "stochastic", "bf16", 8, {}),
    ("dot", 8, 16, "stochastic", "bf16", 5, {}),
    ("align", 16, 64, "stochastic", "fp32", 8, {}),
    ("align", 4, 32, "nearest-even", "bf16", 5, {}),
    ("mac", 12, 64, "nearest-even", "fp32", 8, {}),
    ("to-float", 16, 16, "nearest-even", "fp32", 8, {}),
    ("accumulator", None, None, None, None, None, {"channels": 4}),
    ("fp32-baseline", None, None, None, None, None, {}),
]


def _id(cfg):
    unit, w, n, rounding, fin, e, hw = cfg
    if w is None:
        return f"{unit}-{'-'.join(f'{k}{v}' for k, v in hw.items()) or 'default'}"
    return f"{unit}-w{w}b{n}-{rounding}-{fin}" + (f"-e{e}" if e != 8 else "")


def _run(cfg, sim, seed, count=VECTORS):
    reason = simulators.missing_reason(sim)
    if reason:
        pytest.skip(reason)
    unit, w, n, rounding, fin, e, hw = cfg
    fmt = None if w is None else BFPFormat(w, n, rounding, e)
    return verify(unit, fmt, input_format=fin or "fp32", sim=sim, count=count, seed=seed,
                  **hw)


def _check(result, count):
    assert result["vectors"] >= count
    assert result["received"] == result["expected"] > 0
    assert result["extra"] == 0
    assert result["passed"], result["first_mismatch"]


# Icarus repeats on the same Verilog what Verilator checks (every GRID point runs on both);
# it adds a second, four-state simulator (X propagation, its own scheduling). An interpreter,
# it is slow on the wide units (align-w16b64-stochastic took 558 s at 10,000 vectors), so the
# whole grid runs on it only under -m slow (test_grid[...-icarus]).
@pytest.mark.parametrize("sim", ["verilator", pytest.param("icarus", marks=pytest.mark.slow)])
@pytest.mark.parametrize("cfg", GRID, ids=_id)
def test_grid(cfg, sim):
    _check(_run(cfg, sim, seed=1), VECTORS)


#: The Icarus cross-check of the default run: one grid point per unit (id -> vectors). The
#: narrow units keep the full count. align and mac take 64 lanes per vector, and a vector
#: costs about in proportion to its payload (docs/benchmarks.md: 17 ms per bfp8 dot-product
#: vector of 2 x 16 lanes on Icarus; align-w16b64: 56 ms), so they run 1,000: align's blocks
#: draw their stimulus category (wide range, clusters, exact ties, corner values, huge, tiny,
#: sparse, one NaN/Inf lane) with probability >= 5 % each, mac's codes are NaN or zero with
#: 5 % and all-extreme mantissas with 10 %, so 1,000 vectors still hold about 50 or more of
#: each. The full 10,000 of every point is test_grid[...-icarus] (slow), on the same cached
#: build. align-w16b64-stochastic is the align point because stochastic rounding (the LFSRs,
#: their seed and reseed pulse) is the sequential state where the simulators may differ.
ICARUS_QUICK = {
    "dot-w2b2-nearest-even-fp32": VECTORS,
    "align-w16b64-stochastic-fp32": 1_000,
    "mac-w12b64-nearest-even-fp32": 1_000,
    "to-float-w16b16-nearest-even-fp32": VECTORS,
    "accumulator-channels4": VECTORS,
    "fp32-baseline-default": VECTORS,
}


@pytest.mark.parametrize("cfg", [c for c in GRID if _id(c) in ICARUS_QUICK], ids=_id)
def test_grid_icarus_quick(cfg):
    count = ICARUS_QUICK[_id(cfg)]
    _check(_run(cfg, "icarus", seed=1, count=count), count)


def test_icarus_quick_has_one_point_per_unit():
    by_id = {_id(c): c for c in GRID}
    assert set(ICARUS_QUICK) <= set(by_id)
    units = [by_id[i][0] for i in ICARUS_QUICK]
    assert sorted(units) == sorted({c[0] for c in GRID})
    assert all(1_000 <= n <= VECTORS for n in ICARUS_QUICK.values())


def test_grid_covers_the_required_space():
    ws = {c[1] for c in GRID if c[1]}
    ns = {c[2] for c in GRID if c[2]}
    assert {2, 4, 6, 8, 12, 16} <= ws
    assert {2, 4, 8, 16, 32, 64} <= ns
    assert {c[3] for c in GRID if c[3]} == {"nearest-even", "toward-zero", "stochastic"}
    assert {c[4] for c in GRID if c[4]} == {"fp32", "bf16"}
    assert len(GRID) >= 12


# Minifloat elements (OCP MX, Block Minifloat, numerics.md 5): every unit, on Verilator with
# the full count and narrow points on Icarus. mac's codes cover every element code (reserved
# ones included), all-extreme and sparse blocks; to-float takes the widest products (71 bits
# for E5M2); align and dot quantize FP32/BF16 lanes under each scale rule.
MINIFLOAT_GRID = [("mac", "mxfp8_e4m3", "floor", "verilator", VECTORS),
                  ("mac", "mxfp8_e5m2", "floor", "verilator", VECTORS),
                  ("mac", "bm6_e3m2", "floor", "verilator", VECTORS),
                  ("to-float", "mxfp8_e5m2", "floor", "verilator", VECTORS),
                  ("align", "mxfp8_e4m3", "rceil", "verilator", VECTORS),
                  ("align", "bm8_e2m5", "ceil", "verilator", VECTORS),
                  ("dot", "mxfp8_e5m2", "floor", "verilator", VECTORS),
                  ("dot", "mxfp6_e3m2", "rceil", "verilator", VECTORS),
                  ("mac", "mxfp4_e2m1", "floor", "icarus", 1_000),
                  ("to-float", "mxfp6_e2m3", "floor", "icarus", VECTORS),
                  ("align", "mxfp6_e2m3", "ceil", "icarus", 1_000),
                  ("dot", "mxfp4_e2m1", "floor", "icarus", 1_000)]


@pytest.mark.parametrize(("unit", "name", "rule", "sim", "count"), MINIFLOAT_GRID,
                         ids=[f"{u}-{n}-{r}-{s}" for u, n, r, s, _ in MINIFLOAT_GRID])
def test_minifloat_grid(unit, name, rule, sim, count):
    reason = simulators.missing_reason(sim)
    if reason:
        pytest.skip(reason)
    fmt = resolve_format(name).replace(scale_rule=rule)
    _check(verify(unit, fmt, sim=sim, count=count, seed=3), count)


SLOW_GRID = [
    ("dot", w, n, r, fin, 8, {})
    for w, n in [(16, 64), (12, 32), (2, 64), (6, 16)]
    for r, fin in [("nearest-even", "fp32"), ("stochastic", "bf16")]
]


@pytest.mark.slow
@pytest.mark.parametrize("sim", ["verilator"])
@pytest.mark.parametrize("cfg", SLOW_GRID, ids=_id)
def test_grid_deep(cfg, sim):
    result = _run(cfg, sim, seed=7)
    assert result["passed"], result["first_mismatch"]


# The ECP5 netlist variant: the MacTree's multipliers as MULT18X18D primitives holding the
# pipeline registers around them (hbfp_hw.sim.models simulates the primitive).
ECP5_CASES = [("mac", 8, 16, {"stages": 6}), ("mac", 8, 16, {"stages": 5}),
              ("mac", 4, 4, {"stages": 1}), ("dot", 8, 16, {"mac_stages": 6})]


@pytest.mark.parametrize(("unit", "w", "n", "hw"), ECP5_CASES,
                         ids=[f"{u}-w{w}b{n}-" + "-".join(f"{k}{v}" for k, v in hw.items())
                              for u, w, n, hw in ECP5_CASES])
def test_ecp5_primitives(unit, w, n, hw):
    reason = simulators.missing_reason("verilator")
    if reason:
        pytest.skip(reason)
    result = verify(unit, BFPFormat(w, n), sim="verilator", count=3000, seed=3,
                    family="ecp5", **hw)
    assert result["module"].endswith("_ecp5")
    assert result["received"] == result["expected"] > 0
    assert result["passed"], result["first_mismatch"]


def test_ecp5_netlist_has_registered_dsps():
    from amaranth.back import verilog

    from hbfp_hw.rtl_gen.common import TargetFamily
    from hbfp_hw.rtl_gen.mac_tree import MacTree

    fmt = BFPFormat(8, 16)
    text = verilog.convert(MacTree(fmt, stages=6), platform=TargetFamily("ecp5"))
    assert text.count("MULT18X18D ") == 16
    assert text.count('.REG_INPUTA_CLK("CLK0")') == 16
    assert text.count('.REG_OUTPUT_CLK("CLK0")') == 16
    assert "MULT18X18D" not in verilog.convert(MacTree(fmt, stages=6))
    with pytest.raises(ValueError, match="family must be one of"):
        verify("mac", fmt, family="xc7", count=10)

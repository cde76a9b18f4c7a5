# amaranth: UnusedElaboratable=no
"""The systolic array (rtl_gen/systolic.py) against ``golden.gemm`` bit for bit, in Amaranth's
simulator, driven by the reference schedule of ``systolic_drive``."""

import numpy as np
import pytest
from amaranth.hdl import Const, Signal

from hbfp_hw import golden
from hbfp_hw.formats import BFP8, BFPFormat, Rounding, resolve_format
from hbfp_hw.rtl_gen import systolic
from hbfp_hw.rtl_gen.block_to_float import build_pipeline
from hbfp_hw.rtl_gen.fp_accumulator import fp32_add_steps
from hbfp_hw.rtl_gen.systolic import ProcessingElement, SystolicArray

from . import systolic_drive as drive

SMALL = BFPFormat(4, 4)


def block_ops(q, axis_blocks_first):
    """Operands of a BFPTensor quantized along K, as ``[row][kblock]`` dicts (element codes
    for minifloat formats)."""
    codes = q.exponent_codes.astype(np.int64)
    elements = q.element_codes() if q.fmt.is_minifloat else q.mantissas
    return [[{"exponent": int(codes[r, kb]), "mantissas": [int(v) for v in elements[r, kb]]}
             for kb in range(q.nblocks)] for r in range(codes.shape[0])]


def bfp_gemm(array, a, b, **kw):
    fmt = array.element
    qa = golden.quantize(a, fmt, axis=1)
    qb = golden.quantize(b, fmt, axis=0)
    a_ops = block_ops(qa, True)
    b_cols = block_ops(qb, True)                       # [n][kb]
    b_ops = [[b_cols[n][kb] for n in range(len(b_cols))] for kb in range(qa.nblocks)]
    got = drive.run(array, a_ops, b_ops, **kw)
    want = golden.f32_to_bits(golden.gemm_quantized(qa, qb))
    return got, np.asarray(want, dtype=np.uint32).reshape(got.shape)


def fp32_reference(a, b):
    """The FP32 twin's contract: each product rounded to FP32, summed in k order from +0.0."""
    with np.errstate(all="ignore"):
        prods = golden.canonicalize_nan(a[:, :, None].astype(np.float32)
                                        * b[None, :, :].astype(np.float32))
    return golden.f32_to_bits(golden.accumulate(prods, axis=1))


def rich(rng, shape, *, specials=True):
    """Random FP32 values over many binades, with zeros, subnormals and (optionally) NaN/Inf."""
    x = (rng.standard_normal(shape) * np.exp2(rng.integers(-20, 20, shape))).astype(np.float32)
    u = rng.random(shape)
    x[u < 0.05] = 0.0
    x[(u >= 0.05) & (u < 0.08)] = np.float32(1e-40)
    if specials:
        x[(u >= 0.08) & (u < 0.09)] = np.inf
        x[(u >= 0.09) & (u < 0.095)] = np.nan
    return x


@pytest.mark.parametrize("rows,cols,m,k,n,stages", [
    (1, 1, 3, 8, 1, (0, 0, 1)),
    (2, 3, 5, 20, 7, (2, 3, 3)),        # partial chunk and partial group
    (3, 2, 4, 12, 4, (1, 2, 2)),        # K exactly 3 chunks of one block
    (2, 2, 1, 16, 3, (3, 7, 5)),        # one row: passes limited by min_pass and the drain
])
def test_bfp_array_matches_golden(rows, cols, m, k, n, stages):
    rng = np.random.default_rng(rows * 100 + cols * 10 + m)
    array = SystolicArray(SMALL, rows=rows, cols=cols, product_stages=stages[0],
                          convert_stages=stages[1], adder_stages=stages[2], multipliers="lut")
    got, want = bfp_gemm(array, rich(rng, (m, k)), rich(rng, (k, n)))
    assert np.array_equal(got, want), np.argwhere(got != want)


@pytest.mark.parametrize("fmt", [BFP8, BFPFormat(8, 16, Rounding.TOWARD_ZERO),
                                 BFPFormat(6, 8), BFPFormat(2, 2)])
def test_formats(fmt):
    rng = np.random.default_rng(7)
    array = SystolicArray(fmt, rows=2, cols=2, adder_stages=2)
    k = fmt.block_size * 3
    got, want = bfp_gemm(array, rich(rng, (3, k)), rich(rng, (k, 3)), gap=1)
    assert np.array_equal(got, want)


@pytest.mark.parametrize(("name", "multipliers", "stages"), [
    ("mxfp8_e4m3", "lut", (2, 3, 2)), ("mxfp8_e5m2", "dsp", (6, 7, 11)),
    ("mxfp4_e2m1", "lut", (0, 0, 1)), ("bm6_e3m2", "dsp", (3, 2, 3)),
])
def test_minifloat_formats(name, multipliers, stages):
    """Minifloat blocks (element codes; their products always in logic, numerics.md 5.4):
    NaN/Inf, subnormal and wide-range data, several passes, against golden.gemm."""
    fmt = resolve_format(name).replace(block_size=4)
    rng = np.random.default_rng(len(name))
    array = SystolicArray(fmt, rows=2, cols=3, product_stages=stages[0],
                          convert_stages=stages[1], adder_stages=stages[2],
                          multipliers=multipliers)
    got, want = bfp_gemm(array, rich(rng, (4, 20)), rich(rng, (20, 5)), gap=1)
    assert np.array_equal(got, want), np.argwhere(got != want)


def test_fp32_twin_matches_products_summed_in_order():
    rng = np.random.default_rng(3)
    a, b = rich(rng, (4, 7)), rich(rng, (7, 5))
    for mult in ("dsp", "lut"):
        array = SystolicArray("fp32", rows=3, cols=2, product_stages=3, convert_stages=0,
                              adder_stages=2, multipliers=mult)
        a_ops = [[int(v) for v in golden.f32_to_bits(row)] for row in a]
        b_ops = [[int(v) for v in golden.f32_to_bits(row)] for row in b]
        got = drive.run(array, a_ops, b_ops)
        assert np.array_equal(got, fp32_reference(a, b).reshape(got.shape))


def test_geometry():
    array = SystolicArray(BFP8, rows=4, cols=3, product_stages=2, convert_stages=3,
                          adder_stages=5)
    assert array.macs_per_cycle == 4 * 3 * 16
    assert (array.row_skew, array.sum_offset, array.latency) == (5, 5, 21)
    assert (array.load_spacing, array.min_pass) == (4, 13)
    assert array.flush == 21 + 4 + 3
    assert SystolicArray("fp32", rows=2, cols=2, convert_stages=0).macs_per_cycle == 4


@pytest.mark.parametrize("kwargs,match", [
    (dict(rows=0, cols=1), "rows must be between 1 and 64"),
    (dict(rows=1, cols=65), "cols must be between 1 and 64"),
    (dict(rows=1, cols=1, adder_stages=0), "adder_stages must be between 1 and 11"),
    (dict(rows=1, cols=1, multipliers="bram"), "multipliers must be one of"),
    (dict(rows=1, cols=1, product_stages=10), "product_stages must be between 0 and 9"),
])
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SystolicArray(BFP8, **kwargs)
    with pytest.raises(TypeError, match="element must be"):
        SystolicArray("bf16", rows=1, cols=1)
    with pytest.raises(ValueError, match="convert_stages must be between 0 and 0"):
        ProcessingElement("fp32", row=0, rows=1, product_stages=2, convert_stages=3,
                          adder_stages=1)


# -- mutants: each must make a GEMM differ from the golden model ---------------------------------

class _NoARegister(ProcessingElement):
    """The A operand is not registered: it reaches every PE of a row in the same cycle."""

    def _operands(self, m, platform):
        data, active = super()._operands(m, platform)
        m.d.comb += self.a_out.eq(self.a_in)
        return self.a_in.data, active


class _SkewedSum(ProcessingElement):
    """The partial sum from above is delayed by a cycle: a term joins the wrong sum."""

    def _accumulate(self, m, term):
        late = Signal.like(self.s_in)
        m.d.sync += late.eq(self.s_in)
        outputs, valid, _, _ = build_pipeline(
            m, fp32_add_steps(), stages=self._adder_stages, enable=Const(1), name="add",
            inputs={"a": late.value, "b": term}, valid=self.s_in.valid)
        m.d.comb += [self.s_out.value.eq(outputs["bits"]), self.s_out.valid.eq(valid)]


def _wrong_exponent(original):
    def block_product(m, platform, fmt, a, b, valid, **kw):
        result, valid = original(m, platform, fmt, a, b, valid, **kw)
        wrong = Signal.like(result)
        m.d.comb += [wrong.eq(result), wrong.exponent.eq(result.exponent + 1)]
        return wrong, valid
    return block_product


@pytest.mark.parametrize("mutant", ["no_a_register", "skewed_sum", "wrong_exponent"])
def test_mutants_are_caught(monkeypatch, mutant):
    if mutant == "wrong_exponent":
        monkeypatch.setattr(systolic, "block_product", _wrong_exponent(systolic.block_product))
    else:
        monkeypatch.setattr(systolic, "ProcessingElement",
                            {"no_a_register": _NoARegister, "skewed_sum": _SkewedSum}[mutant])
    rng = np.random.default_rng(11)
    array = SystolicArray(SMALL, rows=2, cols=2, adder_stages=2, multipliers="lut")
    try:
        got, want = bfp_gemm(array, rich(rng, (4, 12), specials=False),
                             rich(rng, (12, 3), specials=False), check_hazards=False)
    except AssertionError:
        return                          # the driver saw results at the wrong time
    assert not np.array_equal(got, want)


@pytest.mark.parametrize("product_stages", [2, 5, 6])  # 6: the deepest (every rank in logic)
def test_mixed_multipliers(product_stages):
    """PEs with DSP multipliers (here the simulator's ``*``) beside PEs in logic."""
    rng = np.random.default_rng(5)
    array = SystolicArray(SMALL, rows=2, cols=3, multipliers="lut", dsp_pes=4,
                          product_stages=product_stages)
    assert [array.pe_multipliers(i, c) for i in range(2) for c in range(3)] == \
        ["dsp"] * 4 + ["lut"] * 2
    got, want = bfp_gemm(array, rich(rng, (3, 8)), rich(rng, (8, 5)))
    assert np.array_equal(got, want)
    with pytest.raises(ValueError, match="dsp_pes must be between 0 and 6"):
        SystolicArray(SMALL, rows=2, cols=3, dsp_pes=7)


class _ShortFlush(SystolicArray):
    flush = property(lambda self: self.latency - 1)


@pytest.mark.parametrize("short", [False, True])
def test_no_reset_flushes(short):
    """The array has no reset: after random bits on every input (what a reset leaves in it),
    ``flush`` cycles of zeros clear it, and a GEMM after them is exact with no stray result.
    One cycle less than the sum chain's latency (the mutant) leaves strays."""
    rng = np.random.default_rng(13)
    array = (_ShortFlush if short else SystolicArray)(SMALL, rows=2, cols=2, adder_stages=2,
                                                      multipliers="lut")
    a, b = rich(rng, (3, 12), specials=False), rich(rng, (12, 3), specials=False)
    if short:
        with pytest.raises(AssertionError, match="unexpected results"):
            bfp_gemm(array, a, b, garbage=30)
        return
    got, want = bfp_gemm(array, a, b, garbage=30)
    assert np.array_equal(got, want)


def _flip_flop(m, name, d, *, late=False):
    """A model of ``ecp5_flip_flop`` (``late``: a mutant one cycle later)."""
    q = Signal(name=f"{name}_q")
    if late:
        q0 = Signal(name=f"{name}_q0")
        m.d.sync += q0.eq(d)
        d = q0
    m.d.sync += q.eq(d)
    return q


@pytest.mark.parametrize("late", [False, True])
def test_ecp5_swap_copies(monkeypatch, late):
    """On the ECP5 each segment of the B operand in use (a block's exponent, each element)
    takes its own copy of the swap bit; with a copy one cycle late (the mutant) the first A
    operand of each pass meets the previous pass's B, and the results are wrong."""
    monkeypatch.setattr(systolic, "ecp5_flip_flop",
                        lambda m, name, d: _flip_flop(m, name, d, late=late))
    monkeypatch.setattr(systolic, "platform_family", lambda platform: "ecp5")
    rng = np.random.default_rng(12)
    array = SystolicArray(SMALL, rows=2, cols=2, adder_stages=2, multipliers="lut")
    got, want = bfp_gemm(array, rich(rng, (3, 16), specials=False),
                         rich(rng, (16, 5), specials=False))
    assert np.array_equal(got, want) != late


@pytest.mark.parametrize("stages", [2, 5, 7, 13])
def test_fp32_twin_with_ecp5_dsps(monkeypatch, stages):
    """The FP32 PEs' DSP path (four MULT18X18D pieces per product, operands and products
    registered inside them), with the primitive replaced by a model of its registers; the
    fewest registers, some before the DSPs, all of them (max_product_stages). Subnormal
    operands with every leading-zero count (the multiplier normalizes them before the DSPs)."""
    def model(m, name, a, b, *, is_signed, input_register, output_register):
        assert not is_signed and input_register and output_register
        ra, rb = Signal.like(a, name=f"{name}_ra"), Signal.like(b, name=f"{name}_rb")
        p = Signal(len(a) + len(b), name=f"{name}_p")
        m.d.sync += [ra.eq(a), rb.eq(b), p.eq(ra * rb)]
        return p
    monkeypatch.setattr(systolic, "ecp5_multiply", model)
    monkeypatch.setattr(systolic, "ecp5_flip_flop", _flip_flop)
    monkeypatch.setattr(systolic, "platform_family", lambda platform: "ecp5")
    rng = np.random.default_rng(4)
    a, b = rich(rng, (4, 6)), rich(rng, (6, 3))
    a[0, 0], b[1, 2] = np.float32(3e-39), np.float32(1e-3)       # a subnormal product path
    zeros = rng.permutation(23)
    sub = (np.uint32(1) << (22 - zeros).astype(np.uint32)) | \
        rng.integers(0, 1 << 22, 23, dtype=np.uint32) >> (zeros + 1).astype(np.uint32)
    a[1:, :] = sub[:18].view(np.float32).reshape(3, 6)              # every leading-zero count
    b[:, 0] = (sub[17:] | np.uint32(0x80000000)).view(np.float32)
    b[:, 1] = np.float32(2.0 ** 100)                                # products back to normal
    assert systolic.max_product_stages("fp32") == 13
    array = SystolicArray("fp32", rows=2, cols=2, product_stages=stages, convert_stages=0,
                          adder_stages=2, multipliers="dsp")
    a_ops = [[int(v) for v in golden.f32_to_bits(row)] for row in a]
    b_ops = [[int(v) for v in golden.f32_to_bits(row)] for row in b]
    got = drive.run(array, a_ops, b_ops)
    assert np.array_equal(got, fp32_reference(a, b).reshape(got.shape))

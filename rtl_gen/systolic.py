"""The systolic GEMM array: processing elements wired neighbour to neighbour.

The dataflow is weight-stationary with the partial sums moving down the columns, which is the
contract's accumulation order made into wires (docs/numerics.md 3.3):

- PE ``(i, c)`` holds one B operand (a BFP block, or an FP32 element for the FP32 twin): k-block
  ``i`` of column ``c`` of the current pass;
- the A operands of one output row enter row ``i`` at the left edge (k-block ``i`` of that row)
  and move one PE to the right per cycle;
- each PE turns its A and B operands into one FP32 term (the exact block dot product rounded
  once to FP32 by :func:`~hbfp_hw.rtl_gen.block_to_float.block_to_float_steps`, or the FP32
  product), adds it to the partial sum arriving from the PE above, and passes the sum down. A
  column is a chain of FP32 adders in increasing k order, started at the top from +0.0 or from
  a result of an earlier pass, so the bottom of the column delivers exactly ``golden.gemm``'s
  element, NaN, infinities and subnormals included. No PE holds a running sum, so none stalls
  or waits on a hazard: the array accepts one row of A per cycle, always.

B is double-buffered in every PE: a column's B words move down a load chain (one register per
PE), each tagged with the row of the PE that keeps it (in a shadow register); a ``swap`` bit
travelling with an A operand makes the PE take the shadow as its operand after that A operand.
So the next pass's B loads while the current pass computes, and no net but the clock reaches
more than one PE: every operand, load word and partial sum moves between neighbours through
registers.

Not even the reset reaches the PEs: a net to every PE of a large array is a long route (it
was the critical path of a 2 x 3 array, 10 ns of routing). Every register starts at 0 when
the part is configured, and every ``valid`` and ``swap`` bit inside comes from a neighbour or
an edge, so once the edges' bits have been 0 for :attr:`SystolicArray.flush` cycles (the
engine's are reset) the array holds no operation of its own: after a reset, the array's user
waits that long before it starts one.

The array's edges expect skewed streams (the GEMM engine produces them from its buffers by
reading them at skewed times, so the skew costs no delay lines): row ``i``'s A stream
:attr:`SystolicArray.row_skew` cycles per row behind row 0's, column ``c``'s top sums and B
load words ``c`` cycles behind column 0's. A pass's B load words for rows ``0, 1, ...`` are
presented :attr:`~SystolicArray.load_spacing` cycles apart, starting with the previous pass's
``swap`` operand (in row 0's time), and a pass's ``swap`` follows the previous one by at least
:attr:`~SystolicArray.min_pass` cycles. ``tests/rtl/systolic_drive.py`` is the reference
schedule in Python; the GEMM engine implements it.
"""

from dataclasses import dataclass

from amaranth.hdl import Const, Module, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hbfp_hw.formats import BFPFormat, FloatFormat

from .block_to_float import (
    BlockToFloat,
    block_to_float_steps,
    build_pipeline,
    comb_signal,
    compact_steps,
)
from .common import (
    Pipeline,
    check_rtl_format,
    check_stages,
    ecp5_flip_flop,
    ecp5_multiply,
    platform_family,
)
from .fp32_mac import MULTIPLIER_STEPS, fp32_mul_steps, multiply_exponent
from .fp_accumulator import ADDER_STEPS, fp32_add_steps
from .layout import block_layout
from .mac_tree import block_product, check_multipliers, lut_multiply, max_block_product_stages

__all__ = ["ProcessingElement", "SystolicArray", "ArrayGeometry", "max_product_stages",
           "check_element", "operand_shape",
           "a_layout", "b_load_layout", "sum_layout", "MAX_ROWS", "MAX_COLS"]

#: Largest rows and columns of an array.
MAX_ROWS = 64
MAX_COLS = 64


def check_element(element):
    """Return the array's element: a :class:`BFPFormat` the RTL supports, or
    ``FloatFormat.FP32`` (also given as ``"fp32"``) for the FP32 twin."""
    if isinstance(element, BFPFormat):
        return check_rtl_format(element, minifloat=True)
    if element in ("fp32", FloatFormat.FP32):
        return FloatFormat.FP32
    raise TypeError(f"element must be a BFPFormat or 'fp32', not {element!r}")


def operand_shape(element):
    """Shape of one operand: a BFP block (``block_layout``) or an FP32 bit pattern."""
    return block_layout(element) if isinstance(element, BFPFormat) else unsigned(32)


def a_layout(element):
    """Layout of one row's A input: the operand and ``swap`` (after this operand, the PEs of
    the row take their shadow B as operand)."""
    return data.StructLayout({"data": operand_shape(element), "swap": 1})


def b_load_layout(element, rows):
    """Layout of one column's B load word: ``valid``, ``row`` (the PE that keeps it) and the
    operand."""
    return data.StructLayout({"valid": 1, "row": range(rows), "data": operand_shape(element)})


def sum_layout():
    """Layout of a partial sum between PEs: ``valid`` and the FP32 ``value``."""
    return data.StructLayout({"valid": 1, "value": unsigned(32)})


def max_product_stages(element):
    """The deepest term product of a PE: every step registered, the operands inside the DSPs
    too, and a fabric copy of the DSPs' products (the DSP sites are far from the PE's logic);
    a block product in logic registers its operands and every rank of its adder tree
    (:func:`~hbfp_hw.rtl_gen.mac_tree.max_block_product_stages`). The shallower form puts
    registers after its last step, so that the PEs of a mixed array line up."""
    if isinstance(element, BFPFormat):
        return max_block_product_stages(element)
    # The DSP form: MULTIPLIER_STEPS with the multiply step as four (two DSP registers, the
    # fabric copy, the partial products' sum), a copy of the operands before them and the
    # unpacking in two steps.
    return MULTIPLIER_STEPS + 5


def _check_params(element, *, rows, product_stages, convert_stages, adder_stages,
                  multipliers):
    element = check_element(element)
    check_stages("rows", rows, MAX_ROWS, 1)
    check_multipliers(multipliers)
    check_stages("product_stages", product_stages, max_product_stages(element))
    if isinstance(element, BFPFormat):
        check_stages("convert_stages", convert_stages, BlockToFloat.MAX_STAGES)
    else:
        check_stages("convert_stages", convert_stages, 0)
    check_stages("adder_stages", adder_stages, ADDER_STEPS, 1)
    return element


@dataclass(frozen=True)
class ArrayGeometry:
    """The timing of a :class:`SystolicArray` (see its properties of the same names)."""

    macs_per_cycle: int
    row_skew: int
    sum_offset: int
    latency: int
    load_spacing: int
    min_pass: int
    flush: int


class ProcessingElement(wiring.Component):
    """One PE: a stationary B operand, the A operand passing through, one FP32 term per cycle
    added to the partial sum passing down.

    Parameters
    ----------
    element : BFPFormat or "fp32"
        A BFP format (a term is the exact dot product of two blocks rounded once to FP32) or
        ``"fp32"`` (a term is the FP32 product of two FP32 elements, rounded to nearest even).
    row : int
        The PE's row: it keeps the B load words tagged with it.
    rows : int
        Rows of the array (the width of the load words' tag).
    product_stages : int
        Registers of the term's product: the block product's
        (:func:`~hbfp_hw.rtl_gen.mac_tree.block_product`) or
        the FP32 multiplier's (its rounding included); up to :func:`max_product_stages`.
    convert_stages : int
        Registers of the conversion of the block product to FP32 (BFP only; 0 for FP32).
    adder_stages : int
        Registers of the FP32 adder, 1..11 (the last one is the partial sum's output
        register).
    multipliers : {"dsp", "lut"}
        ``"dsp"``: ECP5 ``MULT18X18D`` primitives (BFP) or a ``*`` that Yosys maps to DSPs
        (FP32); ``"lut"``: multipliers written as additions, in the logic.

    Members
    -------
    a_in : ``In(a_layout(element))``
        The A operand from the left neighbour (or the edge), registered here.
    a_out : ``Out(a_layout(element))``
        That register, to the right neighbour.
    b_in : ``In(b_load_layout(element, rows))``
        The B load word from the neighbour above, registered here.
    b_out : ``Out(b_load_layout(element, rows))``
        That register, to the neighbour below.
    s_in : ``In(sum_layout())``
        The partial sum from above (a register of the neighbour, or of the edge).
    s_out : ``Out(sum_layout())``
        ``s_in + term``, :attr:`term_latency` + ``adder_stages`` cycles after the A operand
        was registered (the adder's output register).
    """

    def __init__(self, element, *, row, rows, product_stages, convert_stages, adder_stages,
                 multipliers="dsp"):
        self._element = _check_params(element, rows=rows, product_stages=product_stages,
                                      convert_stages=convert_stages, adder_stages=adder_stages,
                                      multipliers=multipliers)
        self._row = check_stages("row", row, rows - 1)
        self._rows = rows
        self._product_stages = product_stages
        self._convert_stages = convert_stages
        self._adder_stages = adder_stages
        self._multipliers = multipliers
        a, b = a_layout(self._element), b_load_layout(self._element, rows)
        super().__init__({"a_in": In(a), "a_out": Out(a), "b_in": In(b), "b_out": Out(b),
                          "s_in": In(sum_layout()), "s_out": Out(sum_layout())})

    @property
    def term_latency(self):
        """Cycles from the A operand's register to its term at the adder's input."""
        return self._product_stages + self._convert_stages

    def elaborate(self, platform):
        m = Module()
        self._compact = compact_steps(platform)
        a, active = self._operands(m, platform)
        self._accumulate(m, self._term(m, platform, a, active))
        return m

    def _operands(self, m, platform):
        """Add the operand registers (A passing right, the load word passing down, B's shadow
        and the B operand in use); return the A operand and the B operand."""
        operand = operand_shape(self._element)
        a = Signal(a_layout(self._element), name="a", reset_less=True)
        load = Signal(b_load_layout(self._element, self._rows), name="load", reset_less=True)
        shadow = Signal(operand, name="shadow", reset_less=True)
        active = Signal(operand, name="active", reset_less=True)
        m.d.sync += [a.eq(self.a_in), load.eq(self.b_in)]
        m.d.comb += [self.a_out.eq(a), self.b_out.eq(load)]
        keep = load.valid & (load.row == self._row)
        keep_in = self.b_in.valid & (self.b_in.row == self._row)
        segments = zip(_segments(shadow, load.data), _segments(active, shadow))
        for k, ((shadow_k, load_k), (active_k, _)) in enumerate(segments):
            with m.If(self._enable(m, platform, keep, keep_in, f"keep{k}")):
                m.d.sync += shadow_k.eq(load_k)
            with m.If(self._enable(m, platform, a.swap, self.a_in.swap, f"swap{k}")):
                m.d.sync += active_k.eq(shadow_k)
        return a.data, active

    @staticmethod
    def _enable(m, platform, value, value_in, name):
        """The enable of one segment of the B registers: ``value`` (a function of this PE's
        registers); on the ECP5 a copy of it per segment (``value_in`` registered), so that
        the segments, spread over the PE's DSP sites, are not all on one net."""
        if platform_family(platform) != "ecp5":
            return value
        return ecp5_flip_flop(m, name, value_in)

    def _accumulate(self, m, term):
        """Add the adder: ``s_out`` is ``s_in + term``, ``adder_stages`` cycles on."""
        outputs, valid, _, _ = build_pipeline(
            m, fp32_add_steps(compact=self._compact), stages=self._adder_stages,
            enable=Const(1), name="add", reset_valid=False,
            inputs={"a": self.s_in.value, "b": term}, valid=self.s_in.valid)
        m.d.comb += [self.s_out.value.eq(outputs["bits"]), self.s_out.valid.eq(valid)]

    def _term(self, m, platform, a, b):
        """Add the term's pipeline; return its FP32 bits, :attr:`term_latency` cycles after
        ``a`` and ``b``."""
        one = Const(1)
        if isinstance(self._element, BFPFormat):
            product, valid = block_product(m, platform, self._element, a, b, one,
                                           stages=self._product_stages,
                                           multipliers=self._multipliers)
            outputs, _, _, _ = build_pipeline(
                m, block_to_float_steps(self._element, compact=self._compact),
                stages=self._convert_stages,
                enable=one, name="b2f", valid=valid,
                inputs={"value": product.value, "exp": product.exponent, "nan": product.nan})
            return outputs["bits"]
        if self._multipliers == "dsp" and platform_family(platform) == "ecp5" and \
                self._product_stages >= 2:
            return _fp32_dsp_term(m, a, b, stages=self._product_stages)
        multiply = lut_multiply if self._multipliers == "lut" else None
        stages = min(self._product_stages, MULTIPLIER_STEPS)
        outputs, _, _, _ = build_pipeline(
            m, fp32_mul_steps(multiply=multiply, compact=self._compact), stages=stages,
            enable=one,
            name="mul", valid=one, inputs={"a": a, "b": b})
        bits = outputs["bits"]
        for k in range(self._product_stages - stages):
            reg = Signal(32, name=f"mul_x{k}", reset_less=True)
            m.d.sync += reg.eq(bits)
            bits = reg
        return bits


def _segments(dst, src):
    """Pairs of the parts of two B registers: a BFP block's exponent and each element, or the
    FP32 word."""
    if isinstance(dst.shape(), data.StructLayout):
        return [(dst.exponent, src.exponent), *zip(dst.mantissas, src.mantissas)]
    return [(dst, src)]


def _fp32_dsp_term(m, a, b, *, stages):
    """The FP32 product of ``a`` and ``b`` with the significands multiplied in four ECP5
    ``MULT18X18D`` s (18- and 6-bit pieces) that register their operands and products, as
    the BFP PEs' DSPs do. Returns the bits, ``stages`` cycles on.

    The two DSP registers come first; of the other ``stages - 2``, the first is a fabric copy
    of the products (the DSP sites are far from the PE's logic), the next two follow the
    multiplier's unpacking and normalizing steps, before the DSPs, the next is a copy of the
    operands in front of the unpacking (the A register sits by the next PE's, the B register
    by the DSPs: the route from them into the unpacking was the 5 x 6 FP32 array's critical
    path, 4.3 of 13.3 ns), the next splits the unpacking after the operands' fields and
    classes (the unpacking in one step, spread over the die by the placer, was the next
    one, 13.1 ns), and the rest go to the partial products' sum and the rounding steps.
    """
    fields, unpack, normalize, _multiply, *rounding = fp32_mul_steps(name="mul", classify=True)
    rest = stages - 2
    copy, rest = min(rest, 1), rest - min(rest, 1)
    before, rest = min(rest, 4), rest - min(rest, 4)
    pipe = Pipeline(m, Const(1))
    operands = pipe.cut("mul_i", {"a": a, "b": b}, before >= 3)
    v = pipe.cut("mul_c", fields(m, operands), before >= 4)
    v = pipe.cut("mul_u", unpack(m, v), before >= 1)
    v = pipe.cut("mul_n", normalize(m, v), before >= 2)
    pieces = {}
    for (ka, sa), (kb, sb) in product_pieces():
        pieces[ka + kb] = ecp5_multiply(m, f"dsp_{ka}{kb}", v["siga"][sa], v["sigb"][sb],
                                        is_signed=False, input_register=True,
                                        output_register=True)
    side = pipe.cut("mul_d0", {k: v[k] for k in ("sign", "effs", "lza", "lzb", "nan", "inf")},
                    True)
    side = {**{k: side[k] for k in ("sign", "nan", "inf")},
            "exp": multiply_exponent(m, "mul", side)}
    side = pipe.cut("mul_d1", side, True)
    if copy:
        cut = pipe.cut("mul_f", {**side, **pieces}, True)
        side, pieces = {k: cut[k] for k in side}, {k: cut[k] for k in pieces}
    steps_regs = min(rest, 1 + len(rounding))

    def total(m, w):
        mag = (w["ll"] + ((w["lh"] + w["hl"]) << 18) + (w["hh"] << 36))[:48]
        return {**{k: w[k] for k in side}, "mag": comb_signal(m, "mul_mag", unsigned(48), mag)}

    outputs, _, _, _ = build_pipeline(m, [total, *rounding], stages=steps_regs,
                                      enable=Const(1), name="mul", valid=Const(1),
                                      inputs={**side, **pieces})
    bits = outputs["bits"]
    for k in range(rest - steps_regs):
        reg = Signal(32, name=f"mul_x{k}", reset_less=True)
        m.d.sync += reg.eq(bits)
        bits = reg
    return bits


def product_pieces():
    """The 18-bit low and 6-bit high pieces of two 24-bit significands, paired."""
    pieces = (("l", slice(0, 18)), ("h", slice(18, 24)))
    return [(x, y) for x in pieces for y in pieces]


class SystolicArray(wiring.Component):
    """``rows x cols`` :class:`ProcessingElement` s computing FP32 sums of products down the
    columns (see the module docstring).

    Parameters
    ----------
    element : BFPFormat or "fp32"
    rows, cols : int
        1..64 each. A pass multiplies ``rows`` k-blocks (k-elements for FP32) of A by those of
        ``cols`` columns of B.
    product_stages, convert_stages, adder_stages, multipliers
        As :class:`ProcessingElement`.
    dsp_pes : int or None
        With a number, the first ``dsp_pes`` PEs (row by row) use ``"dsp"`` multipliers and
        the others ``multipliers``: an array that uses the part's DSP blocks and fills the
        rest of it with logic multipliers.

    Members
    -------
    a : ``In(data.ArrayLayout(a_layout(element), rows))``
        Row ``i``'s A operand and ``swap`` bit; row ``i`` runs :attr:`row_skew` ``* i`` cycles
        behind row 0.
    b : ``In(data.ArrayLayout(b_load_layout(element, rows), cols))``
        Column ``c``'s B load word (``c`` cycles behind column 0).
    s_top : ``In(data.ArrayLayout(sum_layout(), cols))``
        Column ``c``'s starting sum (+0.0 or an earlier result): for the row-0 A operand
        presented in cycle ``x``, it is presented in cycle ``x + c +`` :attr:`sum_offset`.
    s_bottom : ``Out(data.ArrayLayout(sum_layout(), cols))``
        Column ``c``'s result, :attr:`latency` cycles after its starting sum.
    """

    def __init__(self, element, *, rows, cols, product_stages=2, convert_stages=3,
                 adder_stages=3, multipliers="dsp", dsp_pes=None):
        self._element = _check_params(element, rows=rows, product_stages=product_stages,
                                      convert_stages=convert_stages, adder_stages=adder_stages,
                                      multipliers=multipliers)
        self._rows = rows
        self._cols = check_stages("cols", cols, MAX_COLS, 1)
        self._dsp_pes = None if dsp_pes is None else check_stages("dsp_pes", dsp_pes,
                                                                  rows * cols)
        self._pe_params = dict(rows=rows, product_stages=product_stages,
                               convert_stages=convert_stages, adder_stages=adder_stages,
                               multipliers=multipliers)
        super().__init__({
            "a": In(data.ArrayLayout(a_layout(self._element), rows)),
            "b": In(data.ArrayLayout(b_load_layout(self._element, rows), cols)),
            "s_top": In(data.ArrayLayout(sum_layout(), cols)),
            "s_bottom": Out(data.ArrayLayout(sum_layout(), cols)),
        })

    @classmethod
    def geometry(cls, element, *, rows, cols, product_stages=2, convert_stages=3,
                 adder_stages=3, multipliers="dsp"):
        """Return the :class:`ArrayGeometry` of an array with these parameters (validated),
        without building one."""
        element = _check_params(element, rows=rows, product_stages=product_stages,
                                convert_stages=convert_stages, adder_stages=adder_stages,
                                multipliers=multipliers)
        check_stages("cols", cols, MAX_COLS, 1)
        n = element.block_size if isinstance(element, BFPFormat) else 1
        spacing = max(adder_stages - 1, 1)
        return ArrayGeometry(
            macs_per_cycle=rows * cols * n, row_skew=adder_stages,
            sum_offset=product_stages + convert_stages, latency=rows * adder_stages + 1,
            load_spacing=spacing, min_pass=(rows - 1) * spacing + 1,
            flush=rows * adder_stages + 1 + rows + cols)

    element = property(lambda self: self._element)
    rows = property(lambda self: self._rows)
    cols = property(lambda self: self._cols)
    adder_stages = property(lambda self: self._pe_params["adder_stages"])

    def _geometry(self):
        return self.geometry(self._element, cols=self._cols, **self._pe_params)

    def pe_multipliers(self, row, col):
        """The multipliers of PE ``(row, col)``."""
        if self._dsp_pes is not None and row * self._cols + col < self._dsp_pes:
            return "dsp"
        return self._pe_params["multipliers"]

    @property
    def macs_per_cycle(self):
        """Multiply-accumulates per cycle: ``rows * cols`` PEs, each ``block_size`` products
        (one for FP32)."""
        return self._geometry().macs_per_cycle

    @property
    def row_skew(self):
        """Cycles by which row ``i + 1``'s A stream follows row ``i``'s: the adder's latency."""
        return self._geometry().row_skew

    @property
    def sum_offset(self):
        """Cycles from a row-0 A operand at the edge to column 0's starting sum for it."""
        return self._geometry().sum_offset

    @property
    def latency(self):
        """Cycles from a column's starting sum to its result at the bottom."""
        return self._geometry().latency

    @property
    def load_spacing(self):
        """Cycles between the load words of rows ``i`` and ``i + 1`` of one pass."""
        return self._geometry().load_spacing

    @property
    def flush(self):
        """Cycles after which no ``valid`` or ``swap`` bit is left inside the array once the
        ``valid`` and ``swap`` bits of its inputs are all 0 (the array has no reset; see the
        module docstring)."""
        return self._geometry().flush

    @property
    def min_pass(self):
        """Fewest cycles between the ``swap`` operands of two passes (the load of a pass's B
        takes that long)."""
        return self._geometry().min_pass

    def elaborate(self, platform):
        m = Module()
        rows, cols = self._rows, self._cols
        pes = [[ProcessingElement(self._element, row=i, **{
                    **self._pe_params, "multipliers": self.pe_multipliers(i, c)})
                for c in range(cols)] for i in range(rows)]
        for i in range(rows):
            for c in range(cols):
                m.submodules[f"pe_{i}_{c}"] = pe = pes[i][c]
                m.d.comb += pe.a_in.eq(self.a[i] if c == 0 else pes[i][c - 1].a_out)
                m.d.comb += pe.b_in.eq(self.b[c] if i == 0 else pes[i - 1][c].b_out)
                if i:
                    m.d.comb += pe.s_in.eq(pes[i - 1][c].s_out)
        # The starting sums are registered at the top edge, as every other input is in the
        # PEs.
        for c in range(cols):
            top = Signal(sum_layout(), name=f"top{c}", reset_less=True)
            m.d.sync += top.eq(self.s_top[c])
            m.d.comb += [pes[0][c].s_in.eq(top), self.s_bottom[c].eq(pes[rows - 1][c].s_out)]
        return m

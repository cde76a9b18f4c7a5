"""Exact integer block dot product: multipliers and an adder tree (docs/numerics.md, 3.1).

:class:`MacTree` takes two BFP blocks per transfer and produces their exact dot product
``S * 2**Ep`` with ``S = sum_i ma_i * mb_i`` at the full width ``2w + ceil(log2 N)`` and
``Ep = Ea + Eb - 2(w-2)``, bit-exact with :func:`hbfp_hw.golden.int_dot` and
:func:`hbfp_hw.golden.product_exponent`.

On the ECP5 (an elaboration platform whose ``family`` is ``"ecp5"``: an amaranth-boards
platform, or :class:`~hbfp_hw.rtl_gen.common.TargetFamily` for out-of-context Verilog) the
multipliers of a pipeline with registers around them are ``MULT18X18D`` primitives that hold
those registers themselves (``REG_INPUTA/B_CLK``, ``REG_OUTPUT_CLK``). Yosys does not pack
flip-flops into ECP5 DSPs, so a behavioural multiplier between two registers is a combinational
DSP with a route on each side, the critical path of the GEMM system; inside the DSP the product
is register to register. Anywhere else (simulation, the iCE40) the same registers are ordinary
flip-flops; ``tests/rtl/test_mac_tree.py`` checks the primitive version bit for bit in Verilator
against a model of the primitive's documented behaviour.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hbfp_hw.formats import Special

from .common import (
    ECP5_DSP_WIDTH,
    CreditOutput,
    Pipeline,
    check_rtl_format,
    check_stages,
    ecp5_multiply,
    platform_family,
)
from .layout import block_pair_layout, product_exponent_shape, product_layout

__all__ = ["MacTree", "block_product", "lut_multiply", "registered_levels", "lut_dot_steps",
           "max_block_product_stages", "MULTIPLIERS",
           "check_multipliers"]


class MacTree(wiring.Component):
    """Exact dot product of two BFP blocks per transfer.

    The datapath has ``1 + log2(block_size)`` logic levels: the ``block_size`` multipliers,
    then one level per adder-tree rank (each rank one bit wider than the one before, so no
    intermediate sum can overflow). The deepest pipeline also registers the operands in front
    of the multipliers (level 0), so that each multiplier sits between two registers: on the
    ECP5 those are the DSP block's own (see the module docstring).

    Parameters
    ----------
    fmt : BFPFormat
        The block format; ``block_size`` must be a power of two from 2 to 64. The rounding is
        irrelevant here.
    stages : int
        Number of pipeline registers, 0 to ``2 + log2(block_size)``. Up to ``levels = 1 +
        log2(block_size)``, register ``j`` (of ``1..stages``) follows logic level
        ``round(j * levels / stages)``, so the last one is always the output register and the
        rest are spread evenly; ``levels + 1`` registers every level and the operands (level
        0). 0 makes the component combinational.

    Members
    -------
    i_stream : ``In(stream.Signature(block_pair_layout(fmt)))``
        The operands ``{a, b}``, each a ``block_layout(fmt)`` (biased exponent code and
        mantissas).
    o_stream : ``Out(stream.Signature(product_layout(fmt)))``
        ``{value, exponent, nan}``: ``value`` is the exact ``S`` (signed, ``fmt.product_bits``
        wide), ``exponent`` is ``Ep`` (signed, unbiased), ``nan`` is 1 when either operand
        has the NaN exponent code; ``value`` and ``exponent`` are then 0.

    Raises
    ------
    TypeError
        If a parameter has the wrong type.
    ValueError
        If a parameter is out of range.
    """

    def __init__(self, fmt, *, stages=2):
        self._fmt = check_rtl_format(fmt, minifloat=True)
        self._stages = check_stages("stages", stages, self.max_stages_for(fmt))
        super().__init__({
            "i_stream": In(stream.Signature(block_pair_layout(fmt))),
            "o_stream": Out(stream.Signature(product_layout(fmt))),
        })

    @staticmethod
    def max_stages_for(fmt):
        """Return the largest ``stages`` for ``fmt``: ``2 + log2(block_size)`` (every logic
        level registered, and the operands)."""
        return 2 + (fmt.block_size - 1).bit_length()

    @property
    def fmt(self):
        """The :class:`BFPFormat` of the operand blocks."""
        return self._fmt

    @property
    def stages(self):
        """Number of pipeline registers."""
        return self._stages

    @property
    def latency(self):
        """Cycles from an accepted input transfer until its product is valid on ``o_stream``.

        Equal to :attr:`stages` (when ``o_stream.ready`` stays high).
        """
        return self._stages

    @property
    def throughput(self):
        """Transfers per cycle when ``o_stream.ready`` stays high: 1."""
        return 1

    def _registered_levels(self):
        """Return the set of logic levels (1-based; 0: the operands) followed by a register."""
        return registered_levels(self._fmt, self._stages)

    def _nan(self, a, b):
        """:func:`block_nan` (a hook of the fault-injection mutants, ``hbfp_hw.sim.mutants``)."""
        return block_nan(self._fmt, a, b)

    def _exponent_bias(self):
        """:func:`product_bias` (a mutants' hook, too)."""
        return product_bias(self._fmt)

    def elaborate(self, platform):
        m = Module()
        # Free-running pipeline; back-pressure through the credits of the output FIFO.
        out = CreditOutput(m, self.o_stream, stages=self._stages, name="out")
        m.d.comb += self.i_stream.ready.eq(out.ready)
        result, valid = block_product(
            m, platform, self._fmt, self.i_stream.payload.a, self.i_stream.payload.b,
            out.admit(self.i_stream.valid), stages=self._stages, nan=self._nan,
            bias=self._exponent_bias())
        out.drive(valid, result)
        return m


def lut_dot_steps(fmt):
    """Return the steps of a block product in logic (``multipliers="lut"``): the ranks of one
    adder tree over every Baugh-Wooley row of every product, then the constant's addition."""
    return _tree_steps(fmt.block_size * fmt.mantissa_bits)


def _tree_steps(rows):
    """Steps of :func:`_lut_dot` over ``rows`` Baugh-Wooley rows: the adder ranks, then the
    constant."""
    return (rows - 1).bit_length() + 1


def max_block_product_stages(fmt):
    """Return the largest ``stages`` of :func:`block_product` for ``fmt``: with DSP
    multipliers, :meth:`MacTree.max_stages_for` and a fabric copy of the products; in logic,
    the operands and every step of :func:`lut_dot_steps`. Whichever is the larger, the other
    form adds registers after its last step, so that the two line up in a mixed array."""
    return max(MacTree.max_stages_for(fmt) + 1, lut_dot_steps(fmt) + 1)


def registered_levels(fmt, stages):
    """Return the logic levels of a block product (1-based; 0: the operands) that ``stages``
    registers follow (see :class:`MacTree`)."""
    levels = MacTree.max_stages_for(fmt) - 1
    if stages > levels:
        return set(range(levels + 1))
    if not stages:
        return set()
    return {(j * levels + stages // 2) // stages for j in range(1, stages + 1)}


def _bw_rows(a, b):
    """The rows of a Baugh-Wooley product of two's-complement ``a`` and ``b`` (``w`` bits
    each): ``a * b = sum(rows) + C`` with every row a non-negative ``(bits, offset)`` and
    ``C = 2**w - 2**(2w - 1)``. A negative-weight term ``-x * 2**k`` (``x`` a bit) is written
    ``(1 - x) * 2**k - 2**k``; the ``- 2**k`` of all of them add up to ``C``."""
    w = len(a)
    rows = []
    for j in range(w):
        bits = []
        for i in range(w):
            term = a[i] & b[j]
            negative = (i == w - 1) != (j == w - 1)
            bits.append(~term if negative else term)
        rows.append((Cat(*bits), j))
    return rows


def _add_shifted(m, name, x, y):
    """Return ``(value, offset)`` = ``x + y`` for non-negative ``(value, offset)`` operands;
    the bits below the higher offset pass through, the adder covers the rest."""
    (vx, ox), (vy, oy) = sorted((x, y), key=lambda t: t[1])
    low = oy - ox
    if low >= len(vx):
        out = Signal(len(vx) + max(0, low - len(vx)) + len(vy), name=name)
        m.d.comb += out.eq(Cat(vx, Const(0, low - len(vx)), vy))
        return out, ox
    high = vx[low:]
    width = max(len(high), len(vy)) + 1
    out = Signal(low + width, name=name)
    m.d.comb += out.eq(Cat(vx[:low], (high + vy)[:width]))
    return out, ox


def _lut_dot(m, a, b, pipe, nregs, *, side):
    """The exact dot product of the mantissa lists ``a`` and ``b`` in logic: every Baugh-Wooley
    row of every product summed in one tree of unsigned adders of the widths they need, then
    the products' constants added once. ``nregs`` registers are spread over the tree's ranks
    and the constant's addition (the last one after it); ``side`` values travel alongside.

    Returns the dict ``side`` with ``sum`` (the signed dot product) added.
    """
    w = len(a[0])
    n = len(a)
    terms = []
    for i in range(n):
        terms += _bw_rows(a[i], b[i])
    constant = n * (2 ** w - 2 ** (2 * w - 1))
    steps = _tree_steps(len(terms))
    after = [((j + 1) * steps) // nregs for j in range(nregs)]

    def cut(name, values, count):
        for k in range(count):
            values = pipe.cut(f"{name}_{k}", values, True)
        return values

    values = cut("t0", {"v": [v for v, _ in terms], **side}, after.count(0))
    offsets = [o for _, o in terms]
    for step in range(1, steps):
        terms = list(zip(values["v"], offsets, strict=True))
        pairs = [_add_shifted(m, f"dot{step}_{i // 2}", terms[i], terms[i + 1])
                 for i in range(0, len(terms) - 1, 2)]
        if len(terms) % 2:
            pairs.append(terms[-1])
        offsets = [o for _, o in pairs]
        values = cut(f"t{step}", {**{k: values[k] for k in side}, "v": [v for v, _ in pairs]},
                     after.count(step))
    (value,), (offset,) = values["v"], offsets
    total = Signal(signed(2 * w + (n - 1).bit_length() + 1), name="dot_total")
    m.d.comb += total.eq(Cat(Const(0, offset), value) + constant)
    out = cut(f"t{steps}", {**{k: values[k] for k in side}, "sum": total}, after.count(steps))
    return out


def lut_multiply(m, name, a, b):
    """Return the exact product of the unsigned values ``a`` and ``b`` as a tree of adders
    of the widths they need over the rows ``a & b[j]`` (shifted by ``j``).

    Yosys maps a ``*`` on the ECP5 to ``MULT18X18D`` s unless the whole design is synthesized
    without DSPs; written as additions it stays in the logic, so one design can mix DSP and
    logic multipliers.
    """
    a, b = Value.cast(a), Value.cast(b)
    if a.shape().signed or b.shape().signed:
        raise TypeError("lut_multiply takes unsigned operands")
    terms = [(Cat(*[a[i] & b[j] for i in range(len(a))]), j) for j in range(len(b))]
    level = 0
    while len(terms) > 1:
        level += 1
        pairs = [_add_shifted(m, f"{name}_s{level}_{i // 2}", terms[i], terms[i + 1])
                 for i in range(0, len(terms) - 1, 2)]
        if len(terms) % 2:
            pairs.append(terms[-1])
        terms = pairs
    (value, offset), = terms
    product = Signal(len(a) + len(b), name=f"{name}_p")
    m.d.comb += product.eq(Cat(Const(0, offset), value))
    return product


#: Kinds of multiplier a block product can use.
MULTIPLIERS = ("dsp", "lut")


def check_multipliers(multipliers):
    """Validate a multiplier kind (one of :data:`MULTIPLIERS`) and return it."""
    if multipliers not in MULTIPLIERS:
        raise ValueError(f"multipliers must be one of {', '.join(map(repr, MULTIPLIERS))}, "
                         f"not {multipliers!r}")
    return multipliers


def block_nan(fmt, a, b):
    """Whether the product of blocks ``a`` and ``b`` is NaN: either one is (its exponent is
    the NaN code, or, for minifloat elements, it holds a reserved element code)."""
    nan = (a.exponent == fmt.nan_code) | (b.exponent == fmt.nan_code)
    if fmt.is_minifloat:
        for block in (a, b):
            for code in block.mantissas:
                nan = nan | element_special(fmt.element, code)
    return nan


def element_special(element, code):
    """Whether the minifloat ``code`` is reserved (Inf or NaN) under ``element.special``."""
    e, m = element.exponent_bits, element.mantissa_bits
    field, fraction = code[m:m + e], code[:m]
    if element.special is Special.IEEE:
        return field == (1 << e) - 1
    if element.special is Special.FN:
        return (field == (1 << e) - 1) & (fraction == (1 << m) - 1)
    return Const(0, 1)


def decode_element(element, code):
    """Split a minifloat ``code`` into ``(sign, significand, shift)``: its integer on the
    element grid is ``(-1)**sign * significand << shift`` (numerics.md 5.1); the significand
    has ``m + 1`` bits (the implicit bit is 0 for subnormals), the shift is
    ``max(field - 1, 0)``."""
    e, m = element.exponent_bits, element.mantissa_bits
    field = code[m:m + e]
    normal = field != 0
    significand = Cat(code[:m], normal) if m else normal
    shift = Mux(normal, field - 1, 0)[:e]
    return code[m + e], significand, shift


def minifloat_product(m, name, element, code_a, code_b):
    """The exact product of two minifloat element codes as a signed integer on the product grid
    (``n_a * n_b``): the significands multiplied in logic, shifted by the sum of the shifts."""
    sa, ga, ha = decode_element(element, code_a)
    sb, gb, hb = decode_element(element, code_b)
    magnitude = Signal(2 * element.max_int.bit_length(), name=f"{name}_mag")
    m.d.comb += magnitude.eq(lut_multiply(m, name, ga, gb) << (ha + hb))
    product = Signal(signed(len(magnitude) + 1), name=name)
    m.d.comb += product.eq(Mux(sa ^ sb, -magnitude, magnitude))
    return product


def product_bias(fmt):
    """What a block product's exponent code subtracts from the sum of the two codes: the bias
    twice and the fraction bits of both mantissas."""
    return 2 * fmt.exponent_bias + 2 * fmt.fraction_bits


def block_product(m, platform, fmt, a, b, valid, *, stages, multipliers="dsp", nan=None,
                  bias=None):
    """Add the exact dot product of blocks ``a`` and ``b`` (``block_layout(fmt)`` values) to
    ``m`` as a free-running pipeline of ``stages`` registers (see :class:`MacTree`; up to
    :func:`max_block_product_stages`). Beyond ``MacTree.max_stages_for(fmt)``, the DSP form
    copies the DSPs' products into the fabric and then adds registers after its last level;
    the logic form registers its operands and spreads the rest over the ranks of its adder
    tree (:func:`lut_dot_steps`), every rank with enough of them.

    ``multipliers="dsp"`` makes the multipliers ``MULT18X18D`` primitives holding the operand
    and product registers on the ECP5 (when those are registered) and ``*`` elsewhere;
    ``"lut"`` writes them as additions (:func:`lut_multiply`), which stay in the logic on every
    target.

    Returns
    -------
    tuple
        ``(result, valid)``: a ``product_layout(fmt)`` value and its valid bit, ``stages``
        cycles after ``valid``.
    """
    check_multipliers(multipliers)
    n = fmt.block_size
    w = fmt.mantissa_bits
    operand_bits = fmt.max_mantissa.bit_length() + 1      # w for integer elements
    # One register more than MacTree's deepest: on the DSP path a fabric copy of the DSPs'
    # product registers (the DSP sites are far from the adder tree: that route was the
    # critical path of the systolic PEs), elsewhere a register after the last level.
    extra = max(0, stages - MacTree.max_stages_for(fmt))
    registered = registered_levels(fmt, stages - extra)
    pipe = Pipeline(m, valid)

    # ``nan`` and ``bias`` replace block_nan and product_bias, for MacTree's fault-injection
    # hooks.
    bias = product_bias(fmt) if bias is None else bias
    is_nan = block_nan(fmt, a, b) if nan is None else nan(a, b)
    nan = Signal()
    m.d.comb += nan.eq(is_nan)
    exponent = Signal(product_exponent_shape(fmt))
    m.d.comb += exponent.eq(Mux(nan, 0, a.exponent + b.exponent - bias))

    # Level 0, the operand registers, and level 1, the multipliers.
    side = {"exponent": exponent, "nan": nan}
    # Minifloat elements take the last form: decoded and multiplied in logic (their
    # significands have at most 8 bits).
    if multipliers == "lut" and not fmt.is_minifloat:
        nregs = len(registered - {0})
        if extra:
            # The tree has more ranks than MacTree has levels: the registers beyond its
            # deepest go between the ranks (two ranks in one step were the critical path of
            # the logic PEs of a chip-filling array), the rest after the tree.
            nregs = min(stages - 1, lut_dot_steps(fmt))
            extra = stages - 1 - nregs
        ops = pipe.cut("l0", dict(side, a=list(a.mantissas), b=list(b.mantissas)),
                       0 in registered)
        total = _lut_dot(m, ops["a"], ops["b"], pipe, nregs,
                         side={"exponent": ops["exponent"], "nan": ops["nan"]})
        values = {"sum": [total["sum"]], "exponent": total["exponent"], "nan": total["nan"]}
    elif platform_family(platform) == "ecp5" and w <= ECP5_DSP_WIDTH and \
            registered & {0, 1} and not fmt.is_minifloat:
        side = pipe.cut("l1", pipe.cut("l0", side, 0 in registered), 1 in registered)
        products = [ecp5_multiply(m, f"dsp{i}", a.mantissas[i], b.mantissas[i],
                                  is_signed=True, input_register=0 in registered,
                                  output_register=1 in registered)
                    for i in range(n)]
        values = pipe.cut("l1f", dict(side, sum=products), extra > 0)
        extra = max(0, extra - 1)
    else:
        ops = pipe.cut("l0", dict(side, a=list(a.mantissas), b=list(b.mantissas)),
                       0 in registered)
        products = []
        for i in range(n):
            if fmt.is_minifloat:
                product = minifloat_product(m, f"product{i}", fmt.element, ops["a"][i],
                                            ops["b"][i])
            else:
                product = Signal(signed(2 * w), name=f"product{i}")
                m.d.comb += product.eq(ops["a"][i] * ops["b"][i])
            products.append(product)
        values = pipe.cut("l1", {"sum": products, "exponent": ops["exponent"],
                                 "nan": ops["nan"]}, 1 in registered)

    # Levels 2..: the adder tree, one bit wider per rank.
    level = 1
    while len(values["sum"]) > 1:
        level += 1
        width = 2 * operand_bits + level - 1
        sums = []
        terms = values["sum"]
        for i in range(0, len(terms), 2):
            s = Signal(signed(width), name=f"sum{level}_{i // 2}")
            m.d.comb += s.eq(terms[i] + terms[i + 1])
            sums.append(s)
        values = pipe.cut(f"l{level}", dict(values, sum=sums), level in registered)

    for k in range(extra):
        values = pipe.cut(f"lx{k}", values, True)
    result = Signal(product_layout(fmt))
    m.d.comb += [
        result.value.eq(Mux(values["nan"], 0, values["sum"][0])),
        result.exponent.eq(values["exponent"]),
        result.nan.eq(values["nan"]),
    ]
    return result, pipe.valid

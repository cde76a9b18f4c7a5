"""FP32/BF16 to BFP block quantizer (docs/numerics.md, section 2).

:class:`FloatToBlock` turns ``block_size`` IEEE float lanes into one BFP block: a biased shared
exponent code and ``block_size`` two's-complement mantissas, bit-exact with
:func:`hbfp_hw.golden.quantize`.

How the contract maps to hardware
---------------------------------
- **Shared exponent.** ``floor(log2|x|)`` of a normal float is its exponent field minus 127; a
  subnormal gives at most -127, which is never above ``Emin`` (-127 for 8-bit exponents, more
  for narrower ones). So ``E = clamp(max_i f_i - 127, Emin, Emax)`` with ``f_i`` the raw
  exponent fields (0 for zeros and subnormals): a max tree over 8-bit fields, no leading-zero
  counters. An exponent field of 255 (NaN or Inf) in any lane makes a NaN block.
- **Alignment.** ``|x| = sig * 2**(fe - 150)`` with ``sig`` the 24-bit significand and
  ``fe = max(f, 1)``, so ``a = |x| * 2**((w-2) - E) = sig * 2**-s`` with
  ``s = E - fe + 152 - w``. A right shift of ``sig`` (extended by ``P`` zero bits so the shift
  distance is never negative) keeps ``FB`` fraction bits; everything shifted out below them
  is ORed into a sticky bit. ``FB`` is 1 for nearest-even (guard bit; the sticky bit makes the
  rest exact), 16 for stochastic rounding and 0 for toward-zero. Since ``E >= fe`` for every
  lane but a saturating one (and ``E >= fe - 1`` for a subnormal one), the shift is at least
  ``K - 1 = 24 - w - FB + P``: the significand bits below that are reduced to a sticky bit
  (nearest-even) or dropped before the max tree, and only the ``w + FB + 1`` bits above them
  travel with the lane and go through the shifter (for bfp8: 9 of 24 bits).
- **Rounding and sign in one adder.** ``-(q + up) = ~q + (1 - up)``, so the signed mantissa
  is ``(q ^ S) + (S ^ up)``; ``q + up`` saturates exactly when ``q`` is the largest mantissa
  and ``up`` is set.
- **Upper clamp.** With ``exponent_bits < 8``, a lane with ``f - 127 > E`` has ``a >= 2**(w-1)``
  and saturates to ``±(2**(w-1) - 1)``, as does any rounding that reaches ``2**(w-1)``.
- **Stochastic rounding.** One xorshift32 per lane (section 2.4). The random bits of a block are
  drawn when the block is accepted and travel with it through the pipeline, so reseeding never
  disturbs blocks in flight.
"""

from typing import NamedTuple

from amaranth.hdl import C, Cat, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hbfp_hw.formats import SR_RANDOM_BITS, FloatFormat, Rounding, as_float_format

from .common import CreditOutput, Pipeline, check_rtl_format, check_stages
from .layout import block_layout, float_vector_layout

__all__ = ["BlockQuantizer", "FloatToBlock", "XORSHIFT_LANE_CONSTANT", "DEFAULT_SEED"]

#: Lane ``l`` of the stochastic-rounding PRNG starts from ``seed ^ (C * (l + 1) mod 2**32)``.
XORSHIFT_LANE_CONSTANT = 0x9E3779B9
#: Seed that the PRNG states hold after reset (as if reseeded with 0).
DEFAULT_SEED = 0

#: Largest ``stages`` of any block size (64); :meth:`FloatToBlock.max_stages_for` gives it per
#: format.
MAX_STAGES = 13
_MASK32 = 0xFFFFFFFF


def lane_start_state(seed, lane):
    """Return the start state of PRNG lane ``lane`` for ``seed`` (Python integers)."""
    const = (XORSHIFT_LANE_CONSTANT * (lane + 1)) & _MASK32
    state = seed ^ const
    return state if state else const


def _xorshift32(s):
    s = s ^ (s << 13)[:32]
    s = s ^ (s >> 17)
    return s ^ (s << 5)[:32]


def lane_random_bits(m, lanes, seed, reseed, accepted):
    """Add one xorshift32 generator per lane to ``m`` (numerics.md 2.4); return each lane's
    ``SR_RANDOM_BITS`` random bits for the block accepted in this cycle (``accepted``).

    While ``reseed`` is high, lane ``l`` loads :func:`lane_start_state` of ``seed``.
    """
    rand = []
    for i in range(lanes):
        state = Signal(32, name=f"prng_state{i}", init=lane_start_state(DEFAULT_SEED, i))
        nxt = Signal(32, name=f"prng_next{i}")
        m.d.comb += nxt.eq(_xorshift32(state))
        const = (XORSHIFT_LANE_CONSTANT * (i + 1)) & _MASK32
        start = Mux(seed == const, const, seed ^ const)
        with m.If(reseed):
            m.d.sync += state.eq(start)
        with m.Elif(accepted):
            m.d.sync += state.eq(nxt)
        rand.append(nxt[32 - SR_RANDOM_BITS:])
    return rand


class _AlignWidths(NamedTuple):
    """Widths of :class:`FloatToBlock`'s alignment datapath (see the module docstring).

    ``frac_bits`` (``FB``) fraction bits are kept below the mantissa; the 24-bit significand is
    extended by ``pad`` (``P``) zero bits to ``width`` bits; the aligned lane has ``kept``
    bits; the ``low`` bits below ``top_width`` are always shifted out; ``saturating`` formats
    (exponent narrower than 8 bits) clamp lanes above the shared exponent.
    """

    frac_bits: int
    pad: int
    width: int
    kept: int
    low: int
    top_width: int
    saturating: bool


class BlockQuantizer(wiring.Component):
    """What the block quantizers share: their ports, parameters and stream behaviour.

    :class:`FloatToBlock` (integer elements) and
    :class:`~hbfp_hw.rtl_gen.float_to_minifloat.FloatToMinifloatBlock` (minifloat elements)
    take ``(fmt, *, input_format="fp32", stages=2, always_ready=False)`` and have the members
    ``i_stream``, ``o_stream``, ``seed`` and ``reseed`` (see :class:`FloatToBlock`). A
    subclass gives ``_check_format(fmt)`` and ``_cut_order(fmt)``, its cut points in order of
    preference; ``stages`` registers take the first ``stages`` of them.
    """

    def __init__(self, fmt, *, input_format="fp32", stages=2, always_ready=False):
        self._fmt = self._check_format(fmt)
        self._input_format = as_float_format(input_format)
        self._stages = check_stages("stages", stages, self.max_stages_for(fmt))
        if not isinstance(always_ready, bool):
            raise TypeError(f"always_ready must be a bool, not {always_ready!r}")
        super().__init__({
            "i_stream": In(stream.Signature(float_vector_layout(fmt, self._input_format))),
            "o_stream": Out(stream.Signature(block_layout(fmt), always_ready=always_ready)),
            "seed": In(32),
            "reseed": In(1),
        })

    @property
    def fmt(self):
        """The :class:`BFPFormat` of the produced blocks."""
        return self._fmt

    @property
    def input_format(self):
        """The :class:`FloatFormat` of the input lanes."""
        return self._input_format

    @property
    def stages(self):
        """Number of pipeline registers."""
        return self._stages

    @property
    def latency(self):
        """Cycles from an accepted input transfer until its block is valid on ``o_stream``.

        Equal to :attr:`stages` (when ``o_stream.ready`` stays high).
        """
        return self._stages

    @property
    def throughput(self):
        """Transfers per cycle when ``o_stream.ready`` stays high: 1."""
        return 1

    @classmethod
    def max_stages_for(cls, fmt):
        """Return the largest ``stages`` for ``fmt``: the number of its cut points."""
        return len(cls._cut_order(fmt))

    def _cut_points(self):
        """Return, for every cut point, whether it holds a register."""
        order = self._cut_order(self._fmt)
        chosen = set(order[:self._stages])
        return {name: name in chosen for name in order}

    def _front(self, m):
        """Add the stream's front: a credit-counted output and a free-running pipeline
        (stochastic rounding accepts nothing while ``reseed``). Return ``(out, pipe,
        values)`` with the values of the accepted block, registered at the ``input`` cut:
        ``lane``, the lanes as FP32 patterns (BF16 widened), and for stochastic rounding
        ``rand``, each lane's random bits (drawn on acceptance, so they travel with it)."""
        fmt = self._fmt
        out = CreditOutput(m, self.o_stream, stages=self._stages, name="out")
        if fmt.rounding is Rounding.STOCHASTIC:
            in_valid = self.i_stream.valid & ~self.reseed
            m.d.comb += self.i_stream.ready.eq(out.ready & ~self.reseed)
        else:
            in_valid = self.i_stream.valid
            m.d.comb += self.i_stream.ready.eq(out.ready)
        pipe = Pipeline(m, out.admit(in_valid))
        lanes = [self.i_stream.payload[i] for i in range(fmt.block_size)]
        if self._input_format is FloatFormat.BF16:
            lanes = [Cat(C(0, 16), lane) for lane in lanes]
        values = {"lane": lanes}
        if fmt.rounding is Rounding.STOCHASTIC:
            values["rand"] = lane_random_bits(m, fmt.block_size, self.seed, self.reseed,
                                              out.accept)
        return out, pipe, pipe.cut("s_in", values, self._cut_points()["input"])

    @staticmethod
    def _nearest_up(guard, sticky, lsb):
        """Return the rounding increment of nearest-even from the guard bit, the sticky bit
        (the OR of the bits below the guard bit) and the kept LSB: round up above half, and
        on a tie (guard set, sticky clear) only to make the LSB even."""
        return guard & (sticky | lsb)

    def _round_up(self, aligned, frac_bits, sticky, rand):
        """Return the rounding increment of the magnitude ``aligned``, which holds
        ``frac_bits`` fraction bits below the kept ones (1, the guard bit, for nearest-even
        with ``sticky`` the OR of the bits below it; 16 for stochastic rounding with the
        lane's random bits ``rand``; 0 for toward zero)."""
        rounding = self._fmt.rounding
        if rounding is Rounding.STOCHASTIC:
            return (aligned[:frac_bits] + rand)[frac_bits]
        if rounding is Rounding.NEAREST_EVEN:
            return self._nearest_up(aligned[0], sticky, aligned[frac_bits])
        return C(0, 1)

    def _drive(self, m, out, pipe, code, elements):
        """Drive ``o_stream`` from the pipeline's last values: the block's exponent code and
        its ``block_size`` elements."""
        block = Signal(block_layout(self._fmt))
        m.d.comb += block.exponent.eq(code)
        m.d.comb += [block.mantissas[i].eq(elements[i]) for i in range(self._fmt.block_size)]
        out.drive(pipe.valid, block)


class FloatToBlock(BlockQuantizer):
    """Quantize ``block_size`` FP32 or BF16 values to one BFP block per transfer.

    Bit-exact with :func:`hbfp_hw.golden.quantize` (docs/numerics.md, section 2), including the
    stochastic-rounding PRNG: after reset (the ``sync`` domain reset restores the PRNG states)
    the generator behaves like ``quantize(..., seed=0)`` (:data:`DEFAULT_SEED`); after
    ``reseed`` with ``seed = S`` the blocks accepted from then on are quantized like
    ``quantize(x, fmt, seed=S)`` of those blocks in order. Every accepted block steps every
    lane's generator once, whatever its data (zeros, NaN).

    Parameters
    ----------
    fmt : BFPFormat
        The block format; ``block_size`` must be a power of two from 2 to 64.
    input_format : FloatFormat or str
        ``"fp32"`` (32-bit lanes) or ``"bf16"`` (16-bit lanes, widened by appending 16 zero
        bits).
    stages : int
        Number of pipeline registers, 0 to :meth:`max_stages_for` (``8 + log2(block_size)``).
        They are placed, in this order of preference, at the output, after the exponent max
        tree, after the alignment shifters, at the input, after the rounding, after the shift
        distances' clamp, between the coarse and the fine shift, between the shift distances'
        subtraction and their clamp, halfway up the max tree, after the per-lane exponent
        clamp, and after each remaining level of the max tree. 0 makes the
        component combinational. The deepest setting is the one for a high clock.
    always_ready : bool
        The consumer never stalls: ``o_stream`` has no ready (its signature is
        ``always_ready``), the output is the last pipeline register, and there is neither
        output FIFO nor credit counter, so ``i_stream.ready`` is 1 (0 only during
        ``reseed``). For a consumer that registers every block (the GEMM system's block
        writer): no path then leads from it back into the quantizer.

    Members
    -------
    i_stream : ``In(stream.Signature(float_vector_layout(fmt, input_format)))``
        Raw float lanes, lane ``i`` (element ``i`` of the block) in the low bits.
    o_stream : ``Out(stream.Signature(block_layout(fmt), always_ready=always_ready))``
        The block: biased exponent code (all ones for NaN blocks) and the mantissas.
    seed : ``In(32)``
        Seed loaded by ``reseed``.
    reseed : ``In(1)``
        While high, the PRNG state of lane ``l`` is loaded from ``seed`` (``seed ^ C_l``, or
        ``C_l`` if that is zero) at every clock edge and ``i_stream.ready`` is held low, so no
        block is accepted in a reseed cycle. Blocks already accepted are not affected (their
        random bits were drawn on acceptance). Both ports exist for every rounding so that
        integrators need no special case; only stochastic formats use them (and only they get
        PRNG hardware).

    Raises
    ------
    TypeError
        If a parameter has the wrong type.
    ValueError
        If a parameter is out of range.
    """

    @staticmethod
    def _check_format(fmt):
        return check_rtl_format(fmt)

    @staticmethod
    def _cut_order(fmt):
        """Cut points in order of preference (see ``stages``); ``max{k}`` is after ``k``
        levels of the exponent max tree (``max0``: after the per-lane clamp)."""
        levels = (fmt.block_size - 1).bit_length()
        tree = [f"max{levels // 2}"] + [f"max{k}" for k in range(levels) if k != levels // 2]
        return ["output", "exponent", "align", "input", "round", "distance", "coarse",
                "subtract", *tree]

    def _widths(self):
        """Return the widths of the alignment datapath (:class:`_AlignWidths`)."""
        fmt = self._fmt
        w = fmt.mantissa_bits
        if fmt.rounding is Rounding.STOCHASTIC:
            frac_bits = SR_RANDOM_BITS
        elif fmt.rounding is Rounding.NEAREST_EVEN:
            frac_bits = 1
        else:
            frac_bits = 0
        pad = max(0, frac_bits + w - 24)          # keeps the shift distance non-negative
        width = 24 + pad                          # width of the extended significand
        # distance = E - fe + 152 - w - FB + P = E_field - fe + K. It is at least K - 1 for
        # every lane that does not saturate (K - 1 only for a subnormal lane of a block with
        # E_field = 0), so the low `low` bits of the extended significand are always shifted
        # out: they are reduced to a sticky bit before the max tree, and only the `top` bits
        # above them travel with the lane and go through the shifter.
        low = 25 - w - frac_bits + pad - 1
        return _AlignWidths(frac_bits=frac_bits, pad=pad, width=width,
                            kept=w - 1 + frac_bits, low=low, top_width=width - low,
                            saturating=fmt.max_exponent < 127)

    def elaborate(self, platform):
        m = Module()
        cuts = self._cut_points()
        widths = self._widths()

        out, pipe, values = self._front(m)
        values = self._lane_fields(m, values, widths)
        values = self._exponent_tree(m, pipe, cuts, values)
        values = pipe.cut("s_exp", values, cuts["exponent"])
        values = pipe.cut("s_sub", self._shift_distances(m, values), cuts["subtract"])
        values = pipe.cut("s_dist", self._clamp_distances(m, values, widths), cuts["distance"])
        values = pipe.cut("s_coarse", self._coarse_shift(m, values, widths), cuts["coarse"])
        values = pipe.cut("s_align", self._fine_shift(m, values, widths), cuts["align"])
        values = pipe.cut("s_round", self._round(m, values, widths), cuts["round"])
        values = pipe.cut("s_out", self._saturate(m, values), cuts["output"])
        self._drive(m, out, pipe, values["code"], values["mantissas"])
        return m

    def _lane_fields(self, m, values, widths):
        """Split each lane into the fields the rest of the pipeline needs, computed beside the
        exponent max tree: the clamped exponent field (``level``, the tree's leaves), the
        significand bits that go through the shifter (``top``), the sign, the effective
        exponent field ``fe`` (``eff``), the NaN flag of the block and, depending on the
        format, the sticky bit of the bits below ``top`` (``low_nz``) and the raw field."""
        fmt = self._fmt
        nearest = fmt.rounding is Rounding.NEAREST_EVEN
        lo_field = fmt.min_exponent + 127         # E clamped to [Emin, Emax], as a biased field
        hi_field = fmt.max_exponent + 127
        low = widths.low
        fields, clamped_fields = [], []
        lane_values = {"top": [], "sign": [], "eff": []}
        if nearest:
            lane_values["low_nz"] = []
        if widths.saturating:
            lane_values["field"] = []
        for i, lane in enumerate(values["lane"]):
            field = lane[23:31]
            fields.append(field)
            clamped = field
            if hi_field < 255:
                clamped = Mux(field > hi_field, hi_field, clamped)
            if lo_field > 0:
                clamped = Mux(field < lo_field, lo_field, clamped)
            clamped_field = Signal(8, name=f"clamped{i}")
            m.d.comb += clamped_field.eq(clamped)
            clamped_fields.append(clamped_field)
            # Signals, not expressions: Amaranth copies a bare expression into the netlist
            # at every read, and these are read several times
            is_normal = Signal(name=f"normal{i}")
            ext = Signal(widths.width, name=f"ext{i}")
            eff = Signal(8, name=f"eff{i}")
            m.d.comb += [is_normal.eq(field != 0),
                         ext.eq(Cat(C(0, widths.pad), lane[:23], is_normal)),
                         eff.eq(Cat(field[0] | ~is_normal, field[1:]))]
            lane_values["top"].append(ext[low:])
            lane_values["sign"].append(lane[31])
            lane_values["eff"].append(eff)
            if nearest:
                lane_values["low_nz"].append(ext[:low].any() if low else C(0, 1))
            if widths.saturating:
                lane_values["field"].append(field)
        nan = Cat(*[f == 0xFF for f in fields]).any()
        carried = {"rand": values["rand"]} if "rand" in values else {}
        return dict(carried, level=clamped_fields, nan=nan, **lane_values)

    def _exponent_tree(self, m, pipe, cuts, values):
        """Reduce the clamped fields (``level``) to the biased shared exponent ``e_field`` and
        ``e_next = e_field + 1``, with the max tree's cut points."""
        # max(clamp(f_i)) == clamp(max(f_i)): the clamp is monotonic, so it is done per lane,
        # in parallel, and the tree ends at the biased shared exponent.
        def max_level(level):
            # Signals, not expressions: each operand is read twice
            nodes = []
            for a, b in zip(level[0::2], level[1::2], strict=True):
                node = Signal(8, name=f"max{len(level)}_{len(nodes)}")
                m.d.comb += node.eq(Mux(a > b, a, b))
                nodes.append(node)
            return nodes

        levels = (self._fmt.block_size - 1).bit_length()
        for depth in range(levels - 1):
            values = pipe.cut(f"s_max{depth}", values, cuts[f"max{depth}"])
            values["level"] = max_level(values["level"])
        values = pipe.cut(f"s_max{levels - 1}", values, cuts[f"max{levels - 1}"])
        # Last level: E_field + 1, which every lane's shift distance starts from, is formed
        # beside the comparison (two increments per block), so that the distance stage is one
        # subtraction per lane and not an increment shared by all lanes, then a subtraction.
        a, b = values.pop("level")
        a_wins = Signal(name="a_wins")
        e_field = Signal(8, name="e_field")
        e_next = Signal(9, name="e_next")
        m.d.comb += [a_wins.eq(a > b), e_field.eq(Mux(a_wins, a, b)),
                     e_next.eq(Mux(a_wins, a + 1, b + 1))]
        values["e_field"] = e_field
        values["e_next"] = e_next
        return values

    def _shift_distances(self, m, values):
        """Replace ``e_next`` by each lane's shift distance (``distance``), ``E_field + 1 -
        fe``: one subtraction per lane. (With the clamp behind it in the same step, the
        shared ``e_next`` register, placed far from some lanes, through a lane's carry chain
        and the clamp was the 4 x 4 array system's critical path.)"""
        e_next = values.pop("e_next")
        distances = []
        for i, eff in enumerate(values.pop("eff")):
            distance = Signal(signed(10), name=f"distance{i}")
            m.d.comb += distance.eq(e_next - eff)
            distances.append(distance)
        values["distance"] = distances
        return values

    def _clamp_distances(self, m, values, widths):
        """Replace the distances by each lane's shift (``shift``), and add the saturation
        flags of a format with a narrow exponent and the block's exponent code (``code``)."""
        # distance - low = E_field - fe + 1, clamped to [0, top_width]
        fmt = self._fmt
        top_width = widths.top_width
        saturating = widths.saturating
        e_field = values.pop("e_field")
        shifts, saturate = [], []
        k = top_width.bit_length()
        for i, distance in enumerate(values.pop("distance")):
            clamped = Signal(range(top_width + 1), name=f"shift{i}")
            # Only a lane that saturates (its field above E_field) has a negative distance.
            below = distance[-1] if saturating else C(0, 1)
            # distance > top_width from the high bits and a k-bit comparison: LUTs, not a
            # second carry chain behind the subtraction.
            above = Signal(name=f"above{i}")
            m.d.comb += above.eq(~distance[-1] & (distance[k:-1].any()
                                                  | (distance[:k] > top_width)))
            m.d.comb += clamped.eq(Mux(below, 0, Mux(above, top_width, distance[:len(clamped)])))
            shifts.append(clamped)
            if saturating:
                saturate.append(values["field"][i] > e_field)
        values.pop("field", None)
        values["shift"] = shifts
        if saturating:
            values["saturate"] = saturate
        values["code"] = Mux(values["nan"], fmt.nan_code,
                             e_field - 127 + fmt.exponent_bias)[:fmt.exponent_bits]
        return values

    def _coarse_shift(self, m, values, widths):
        """Shift each lane's ``top`` right by the multiple of 8 in its shift distance; keep the
        rest of the distance (``fine``) and, for nearest-even, form the sticky bit."""
        # aligned = (top >> shift)[:kept]; for nearest-even, the sticky bit is the low bits'
        # and those of `top` below the shift: bit j is shifted out exactly when j < shift.
        nearest = self._fmt.rounding is Rounding.NEAREST_EVEN
        coarse_list, fine_list, sticky = [], [], []
        for i, top in enumerate(values.pop("top")):
            shift = values["shift"][i]
            coarse = Signal(widths.kept + 7, name=f"coarse{i}")
            m.d.comb += coarse.eq(top >> Cat(C(0, 3), shift[3:]))
            coarse_list.append(coarse)
            fine_list.append(shift[:3])
            if nearest:
                out_bits = Cat(*[top[j] & (shift > j) for j in range(widths.top_width)])
                bit = Signal(name=f"sticky{i}")
                m.d.comb += bit.eq(values["low_nz"][i] | out_bits.any())
                sticky.append(bit)
        values.pop("shift")
        values.pop("low_nz", None)
        values["coarse"] = coarse_list
        values["fine"] = fine_list
        if nearest:
            values["sticky"] = sticky
        return values

    def _fine_shift(self, m, values, widths):
        """Finish the alignment: shift each coarse-shifted lane by the rest of its distance."""
        aligned = []
        for i, coarse in enumerate(values.pop("coarse")):
            shifted = Signal(widths.kept, name=f"aligned{i}")
            m.d.comb += shifted.eq(coarse >> values["fine"][i])
            aligned.append(shifted)
        values.pop("fine")
        values["aligned"] = aligned
        return values

    def _round(self, m, values, widths):
        """Round each aligned lane and apply its sign; flag the lanes that saturate."""
        # rounded = q + up, signed = S ? -rounded : rounded. -(q + up) = ~q + (1 - up), so one
        # adder gives both: (q ^ S) + (S ^ up), w bits. q + up reaches 2**(w-1) (saturates)
        # exactly when q is the largest mantissa and up.
        fmt = self._fmt
        w = fmt.mantissa_bits
        frac_bits = widths.frac_bits
        signed_values, too_big_list = [], []
        for i in range(fmt.block_size):
            x = values["aligned"][i]
            q = x[frac_bits:]
            up = self._round_up(x, frac_bits, values.get("sticky", [None] * fmt.block_size)[i],
                                values.get("rand", [None] * fmt.block_size)[i])
            sign = values["sign"][i]
            value = Signal(signed(w), name=f"rounded{i}")
            m.d.comb += value.eq((Cat(q, C(0, 1)) ^ sign.replicate(w)) + (sign ^ up))
            too_big = (q == fmt.max_mantissa) & up
            if widths.saturating:
                too_big = too_big | values["saturate"][i]
            big = Signal(name=f"too_big{i}")
            m.d.comb += big.eq(too_big)
            signed_values.append(value)
            too_big_list.append(big)
        return {"value": signed_values, "too_big": too_big_list, "sign": values["sign"],
                "nan": values["nan"], "code": values["code"]}

    def _saturate(self, m, values):
        """Return the block's code and mantissas: saturated lanes clamped, NaN blocks zeroed."""
        fmt = self._fmt
        mantissas = []
        for i in range(fmt.block_size):
            mantissa = Signal(signed(fmt.mantissa_bits), name=f"mantissa{i}")
            limit = Mux(values["sign"][i], -fmt.max_mantissa, fmt.max_mantissa)
            m.d.comb += mantissa.eq(Mux(values["nan"], 0,
                                        Mux(values["too_big"][i], limit, values["value"][i])))
            mantissas.append(mantissa)
        return {"code": values["code"], "mantissas": mantissas}

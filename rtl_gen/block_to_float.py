"""Exact block dot product to IEEE FP32, and the pipelining helpers shared by the FP32 units.

:class:`BlockToFloat` turns the exact result of a block dot product, ``value * 2**exponent``
(see ``docs/numerics.md``, section 3.1), into the FP32 bit pattern ``RNE_fp32(value *
2**exponent)``: leading-zero count and normalization, gradual underflow (subnormals) and
round-to-nearest-even with guard and sticky bits, overflow to infinity, canonical NaN.

The rounding core, :func:`fp32_round_steps`, is written as a list of combinational *steps*
that :func:`build_pipeline` strings together, with a register after some of them. The FP32
adder and multiplier (:mod:`hbfp_hw.rtl_gen.fp_accumulator`, :mod:`hbfp_hw.rtl_gen.fp32_mac`)
reuse both: every FP32 result in hbfp-hw is rounded by the same logic.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hbfp_hw.formats import CANONICAL_NAN_BITS

from .common import CreditOutput, check_rtl_format, check_stages, platform_family
from .layout import product_exponent_shape, product_layout

__all__ = [
    "BlockToFloat",
    "block_to_float_steps",
    "compact_steps",
    "build_pipeline",
    "fp32_round_steps",
    "normalize_shift",
    "check_stages",
    "comb_signal",
    "shift_right_sticky",
    "FP32_INF_BITS",
]

#: Bit pattern of +Inf in FP32 (the sign is ORed in for -Inf).
FP32_INF_BITS = 0x7F800000

#: Block sizes that the RTL generators accept (powers of two).

_FP32_BIAS = 127
_FP32_FRACTION_BITS = 23
# Width of the significand kept for rounding: 24 significand bits and one guard bit. Every
# bit below goes into the sticky bit.
_KEEP_BITS = _FP32_FRACTION_BITS + 2
# A denormalizing shift of 25 or more moves every kept bit into the sticky bit.
_MAX_DENORM_SHIFT = _KEEP_BITS


def _cut_points(nsteps, stages):
    """Return the indices of the steps that are followed by a register.

    The registers are spread evenly; whenever ``stages >= 1`` the last step is registered, so
    the output of the pipeline always comes from a flip-flop.
    """
    return {((i + 1) * nsteps) // stages - 1 for i in range(stages)}


def build_pipeline(m, steps, *, stages, inputs, valid, enable, carry=None, name="p",
                   reset_valid=True):
    """Chain combinational ``steps`` and insert ``stages`` register stages between them.

    Each step is a callable ``step(m, values) -> dict`` that receives a dict of named values and
    returns the dict of values that the next step needs. The ``carry`` values (side-band data
    such as a channel number) bypass the steps and travel through the same registers, so they
    stay aligned with the data. All registers, including the valid bits, load when ``enable``
    is 1; with one enable for the whole pipeline, a stalled output stalls every stage.

    Parameters
    ----------
    m : Module
        Module that receives the logic.
    steps : list of callable
        The combinational steps, in order.
    stages : int
        Number of register stages, ``0..len(steps)``. With ``0`` the pipeline is combinational.
    inputs : dict of str to Value
        Values handed to the first step.
    valid : Value
        Valid bit entering the pipeline with ``inputs``.
    enable : Value
        Load enable of every register.
    carry : dict of str to Value, optional
        Side-band values carried alongside the data.
    name : str
        Prefix of the register names.
    reset_valid : bool
        Whether the valid bits are reset (the data registers never are). Without: they start
        at 0 and clear themselves once ``valid`` has been 0 for ``stages`` cycles.

    Returns
    -------
    tuple
        ``(outputs, out_valid, out_carry, registered)``: the values returned by the last step,
        the valid bit and side-band values at the output, and for each register stage (in
        order) a tuple ``(valid, carry)`` of its registers.
    """
    cuts = _cut_points(len(steps), stages)
    values = dict(inputs)
    carry = dict(carry or {})
    registered = []
    for index, step in enumerate(steps):
        values = step(m, values)
        if index not in cuts:
            continue
        stage = len(registered) + 1
        new_values = {}
        for key, value in values.items():
            if isinstance(value, Const):
                new_values[key] = value
                continue
            reg = Signal.like(value, name=f"{name}{stage}_{key}", reset_less=True)
            with m.If(enable):
                m.d.sync += reg.eq(value)
            new_values[key] = reg
        new_carry = {}
        for key, value in carry.items():
            reg = Signal.like(value, name=f"{name}{stage}_{key}", reset_less=True)
            with m.If(enable):
                m.d.sync += reg.eq(value)
            new_carry[key] = reg
        valid_reg = Signal(name=f"{name}{stage}_valid", reset_less=not reset_valid)
        with m.If(enable):
            m.d.sync += valid_reg.eq(valid)
        values, carry, valid = new_values, new_carry, valid_reg
        registered.append((valid_reg, new_carry))
    return values, valid, carry, registered


def comb_signal(m, name, shape, value):
    """Return a new ``Signal(shape, name=name)`` driven combinationally by ``value``."""
    sig = Signal(shape, name=name)
    m.d.comb += sig.eq(value)
    return sig


def shift_right_sticky(m, name, value, amount, *, bits=None, sticky=None):
    """Shift ``value`` right by ``amount`` and return ``(shifted, sticky)``.

    ``sticky`` is the OR of every bit shifted out. The shift is a logarithmic shifter, one
    multiplexer level per bit of ``amount``; an amount of ``len(value)`` or more leaves 0.
    ``bits`` (a range of bit indices of ``amount``, default all of them) applies only those
    levels, and ``sticky`` is an incoming sticky bit, so that a shift can be split over two
    pipeline steps.
    """
    width = len(value)
    sticky = Const(0, 1) if sticky is None else sticky
    for k in (range(len(amount)) if bits is None else bits):
        dist = 1 << k
        lost = value[:dist] != 0 if dist < width else value != 0
        value = comb_signal(m, f"{name}_sh{k}", unsigned(width),
                      Mux(amount[k], value >> dist, value))
        sticky = comb_signal(m, f"{name}_st{k}", 1, sticky | (amount[k] & lost))
    return value, sticky


def _ge_const(x, c):
    """``x >= c`` for a signed ``x`` and a constant ``c >= 1``, from the sign bit, an OR of the
    high bits and a comparison of the low ``c.bit_length()`` bits: LUTs, no carry chain."""
    k = c.bit_length()
    if k >= len(x) - 1:
        return x >= c
    return ~x[-1] & (x[k:-1].any() | (x[:k] >= c))


def normalize_shift(m, name, value, lzc, ks):
    """Shift ``value`` left by ``2**k`` for each ``k`` in ``ks`` (in that order) where its top
    ``2**k`` bits are zero; return the shifted value and ``lzc`` ORed with the shifts.

    With ``ks`` the levels of a leading-zero count, largest first, and ``lzc`` 0, this
    normalizes ``value`` (its leading one to the top bit) and counts its leading zeros; split
    over several calls, the count builds up from disjoint powers of two, so OR adds them.
    """
    width = len(value)
    for k in ks:
        dist = 1 << k
        top_zero = value[width - dist:] == 0
        value = comb_signal(m, f"{name}_norm{k}", unsigned(width),
                            Mux(top_zero, value << dist, value)[:width])
        lzc = comb_signal(m, f"{name}_lzc{k}", unsigned(len(lzc)), lzc | Mux(top_zero, dist, 0))
    return value, lzc


def fp32_round_steps(mag_width, exp_shape, *, name="rnd", compact=False, normalize_steps=2,
                     lead_zeros=None):
    """Return the steps that round ``(-1)**sign * mag * 2**exp`` to an FP32 bit pattern.

    The steps expect the keys ``sign`` (1 bit), ``mag`` (``unsigned(mag_width)``), ``exp``
    (``exp_shape``), ``nan`` and ``inf`` (1 bit each) and produce the key ``bits``
    (``unsigned(32)``). Rounding is IEEE roundTiesToEven with gradual underflow: a magnitude
    whose rounded value reaches ``2**128`` gives infinity, and a magnitude that rounds to 0 gives
    a zero with the given sign (so ``mag == 0`` with ``sign == 1`` gives -0.0). ``nan`` forces the
    canonical NaN, otherwise ``inf`` forces an infinity with the given sign.

    ``normalize_steps`` (1 to 3, at most the shift's levels) is the number of steps the
    normalizing shift takes, the larger shifts first. ``lead_zeros``, if given, is the most
    leading zeros a non-zero ``mag`` has (the shift then has only the levels that count
    them): 1 for the product of two normalized significands, which the FP32 multiplier makes
    so that its 48-bit product needs one level, not six (six levels, in two steps or three,
    were the FP32 twin's critical path on the ECP5).

    ``compact`` decides whether the value is normal, the denormalizing shift, overflow and the
    exponent field right after the exponent's subtractions, in the same step: fewer registers
    and comparators (the iCE40 form, where every flip-flop is a logic cell and the UP5K is
    full) and a longer path (the ECP5 form puts the comparisons beside the subtractions and the
    rest a register later).

    The steps are: normalization (leading-zero count and left shift, in ``normalize_steps``
    steps of about as many levels each), biased-exponent computation, denormalizing right shift
    (subnormal results, in two steps), rounding and packing.
    """
    mag_width = int(mag_width)
    exp_shape = Shape.cast(exp_shape)
    lzc_bits = max(1, (mag_width - 1).bit_length())
    levels = (mag_width - 1 if lead_zeros is None else lead_zeros).bit_length()
    # Biased exponent if the value is normal: exp + (position of the leading one) + bias.
    be_width = max(exp_shape.width, (mag_width + _FP32_BIAS).bit_length() + 1) + 2

    # The levels are split over `normalize_steps` steps, the larger shifts first.
    if normalize_steps not in range(1, min(3, levels) + 1):
        raise ValueError(f"normalize_steps must be 1..{min(3, levels)} for {levels} levels, "
                         f"not {normalize_steps!r}")
    bounds = [-(-levels * i // normalize_steps) for i in range(normalize_steps + 1)]
    parts = [range(lo, hi) for lo, hi in zip(bounds, bounds[1:])][::-1]   # larger first

    def normalize_high(m, v):
        mag = v["mag"]
        norm, lzc = normalize_shift(m, name, mag, Const(0, lzc_bits), reversed(parts[0]))
        # The exponent step subtracts the leading-zero count from three offsets of `exp`,
        # formed here beside the normalization: be = expc - lzc, be - 1 and 1 - be. Each is
        # then one subtraction (or addition) in parallel, not an addition, a comparison and a
        # subtraction in a row.
        expc = v["exp"] + (mag_width - 1 + _FP32_BIAS)
        out = {
            "sign": v["sign"], "nan": v["nan"], "inf": v["inf"],
            "expc": comb_signal(m, f"{name}_expc", signed(be_width), expc),
            "expc1": comb_signal(m, f"{name}_expc1", signed(be_width), expc - 1),
            "expn": comb_signal(m, f"{name}_expn", signed(be_width), 1 - expc),
            "zero": comb_signal(m, f"{name}_zero", 1, mag == 0),
            "norm": norm, "lzc": lzc,
        }
        if not compact:
            # 1 - be >= the largest shift  <=>  lzc >= clamp_at.
            out["clamp_at"] = comb_signal(m, f"{name}_clamp_at", signed(be_width + 1),
                                          _MAX_DENORM_SHIFT - (1 - expc))
            # The next step's decisions `lzc <= expc1` (normal) and `lzc >= clamp_at` (clamp),
            # with 0 <= lzc <= lz_max: settled here, from `exp` beside the additions, when the
            # bound is outside lzc's range; otherwise a comparison of lzc's few bits there.
            # (With the bounds' carry chains after the count, a PE's `normal` was the 4 x 4
            # array system's critical path, the count's register placed far from the chain.)
            lz_max, c0 = (1 << lzc_bits) - 1, mag_width - 1 + _FP32_BIAS
            exp = v["exp"]
            for key, value in (("normal_all", exp >= lz_max + 1 - c0),
                               ("normal_none", exp < 1 - c0),
                               ("clamp_all", exp <= 1 - _MAX_DENORM_SHIFT - c0),
                               ("clamp_none", exp > lz_max + 1 - _MAX_DENORM_SHIFT - c0)):
                out[key] = comb_signal(m, f"{name}_{key}", 1, value)
        return out

    def normalize_more(ks):
        def normalize(m, v):
            norm, lzc = normalize_shift(m, name, v["norm"], v["lzc"], reversed(ks))
            return dict(v, norm=norm, lzc=lzc)
        return normalize

    normalize = [normalize_high, *(normalize_more(ks) for ks in parts[1:])]

    def kept_and_sticky(norm):
        """The bits of the normalized magnitude that rounding keeps, and the OR of the rest."""
        if mag_width >= _KEEP_BITS:
            kept = norm[mag_width - _KEEP_BITS:]
            sticky = norm[:mag_width - _KEEP_BITS] != 0 if mag_width > _KEEP_BITS else Const(0, 1)
        else:
            kept = Cat(Const(0, _KEEP_BITS - mag_width), norm)
            sticky = Const(0, 1)
        return kept, sticky

    def exponent(m, v):
        kept, sticky = kept_and_sticky(v["norm"])
        # be: the biased exponent if the value is normal; be - 1 and 1 - be beside it. What
        # follows from them (normal or not, the denormalizing shift, overflow, the exponent
        # field) is decided in the next step, from registers: after these carry chains it was
        # the critical path of the systolic PEs' adders on the ECP5.
        lzc = v["lzc"]
        normal = v["normal_all"] | (~v["normal_none"] & (lzc <= v["expc1"][:lzc_bits]))
        clamp = v["clamp_all"] | (~v["clamp_none"] & (lzc >= v["clamp_at"][:lzc_bits]))
        return {
            "sign": v["sign"], "nan": v["nan"], "zero": v["zero"], "inf": v["inf"],
            "normal": comb_signal(m, f"{name}_normal", 1, normal),              # be >= 1
            "clamp": comb_signal(m, f"{name}_clamp", 1, clamp),
            # Each a carry chain of its own, side by side.
            "be_m1": comb_signal(m, f"{name}_be_m1", signed(be_width), v["expc1"] - v["lzc"]),
            "one_m_be": comb_signal(m, f"{name}_one_m_be", signed(be_width),
                                    v["expn"] + v["lzc"]),
            "kept": comb_signal(m, f"{name}_kept", unsigned(_KEEP_BITS), kept),
            "sticky": comb_signal(m, f"{name}_sticky0", 1, sticky),
        }

    rs_levels = _MAX_DENORM_SHIFT.bit_length()

    def shift_amount(m, one_m_be, normal, clamp):
        """The denormalizing shift: 0 for a normal value, else 1 - be, at most the largest."""
        rs_width = _MAX_DENORM_SHIFT.bit_length()
        return comb_signal(m, f"{name}_rs", unsigned(rs_width),
                           Mux(normal, 0, Mux(clamp, _MAX_DENORM_SHIFT, one_m_be[:rs_width])))

    def overflow_and_field(m, v, be_m1, normal):
        return {
            "inf": comb_signal(m, f"{name}_ovf", 1,
                               v["inf"] | (_ge_const(be_m1, 254) & ~v["zero"])),  # be >= 255
            # Exponent field minus one for normal values (the hidden bit adds the one), 0 for
            # subnormal ones. Only meaningful when the value does not overflow.
            "efield": comb_signal(m, f"{name}_efield", unsigned(8), Mux(normal, be_m1, 0)[:8]),
        }

    def denormalize_low(m, v):
        rs = shift_amount(m, v["one_m_be"], v["normal"], v["clamp"])
        kept, sticky = shift_right_sticky(m, f"{name}_dn", v["kept"], rs,
                                          bits=range(2), sticky=v["sticky"])
        return {
            "sign": v["sign"], "nan": v["nan"], "zero": v["zero"],
            **overflow_and_field(m, v, v["be_m1"], v["normal"]),
            "kept": kept, "rs": rs,
            "sticky": comb_signal(m, f"{name}_sticky1", 1, sticky),
        }

    def exponent_compact(m, v):
        kept, sticky = kept_and_sticky(v["norm"])
        # be: the biased exponent if the value is normal; be - 1 and 1 - be beside it.
        be_m1 = comb_signal(m, f"{name}_be_m1", signed(be_width), v["expc1"] - v["lzc"])
        one_m_be = comb_signal(m, f"{name}_one_m_be", signed(be_width), v["expn"] + v["lzc"])
        normal = comb_signal(m, f"{name}_normal", 1, ~be_m1[-1])          # be >= 1
        rs = shift_amount(m, one_m_be, normal, _ge_const(one_m_be, _MAX_DENORM_SHIFT))
        return {
            "sign": v["sign"], "nan": v["nan"], "zero": v["zero"],
            **overflow_and_field(m, v, be_m1, normal),
            "kept": comb_signal(m, f"{name}_kept", unsigned(_KEEP_BITS), kept),
            "sticky": comb_signal(m, f"{name}_sticky0", 1, sticky),
            "rs": rs,
        }

    def denormalize_low_compact(m, v):
        kept, sticky = shift_right_sticky(m, f"{name}_dn", v["kept"], v["rs"],
                                          bits=range(2), sticky=v["sticky"])
        return dict(v, kept=kept, sticky=comb_signal(m, f"{name}_sticky1", 1, sticky))

    def denormalize_high(m, v):
        kept, sticky = shift_right_sticky(m, f"{name}_dn", v["kept"], v["rs"],
                                          bits=range(2, rs_levels), sticky=v["sticky"])
        return {
            "sign": v["sign"], "nan": v["nan"], "zero": v["zero"], "inf": v["inf"],
            "efield": v["efield"], "kept": kept,
            "sticky": comb_signal(m, f"{name}_sticky", 1, sticky),
        }

    def round_pack(m, v):
        kept = v["kept"]
        sig = kept[1:]
        guard = kept[0]
        round_up = guard & (v["sticky"] | sig[0])
        # The carry of the increment runs into the exponent field: into the next binade, from
        # the largest subnormal into the smallest normal, and from the largest finite value
        # into infinity (0x7F800000).
        magnitude = comb_signal(m, f"{name}_rmag", unsigned(31),
                          (v["efield"] << _FP32_FRACTION_BITS) + sig + round_up)
        bits = Signal(32, name=f"{name}_bits")
        with m.If(v["nan"]):
            m.d.comb += bits.eq(CANONICAL_NAN_BITS)
        with m.Elif(v["inf"]):
            m.d.comb += bits.eq(Cat(Const(FP32_INF_BITS, 31), v["sign"]))
        with m.Elif(v["zero"]):
            m.d.comb += bits.eq(Cat(Const(0, 31), v["sign"]))
        with m.Else():
            m.d.comb += bits.eq(Cat(magnitude, v["sign"]))
        return {"bits": bits}

    if compact:
        return [*normalize, exponent_compact, denormalize_low_compact, denormalize_high,
                round_pack]
    return [*normalize, exponent, denormalize_low, denormalize_high, round_pack]


class BlockToFloat(wiring.Component):
    """Round exact block dot products to FP32.

    Each input transfer carries one exact product ``value * 2**exponent`` (or NaN). The output
    transfer carries the FP32 bit pattern of ``RNE_fp32(value * 2**exponent)``, as defined in
    ``docs/numerics.md`` section 3.1 step 3: round to nearest, ties to even, with subnormals,
    overflow to ±Inf, ``value == 0`` gives +0.0, a tiny negative product that rounds to zero
    gives -0.0, and NaN gives the canonical NaN ``0x7FC00000``.

    The unit is a pipeline of :attr:`MAX_STAGES` combinational steps (absolute value,
    normalization in two steps, exponent, denormalization in two steps, rounding); ``stages``
    of them are followed by a
    register. It accepts one transfer per cycle while ``o_stream.ready`` is 1 and honours
    backpressure: the pipeline runs freely and its results wait in an output FIFO, whose
    credits (:class:`~hbfp_hw.rtl_gen.common.CreditOutput`) gate ``i_stream.ready``.

    Parameters
    ----------
    fmt : BFPFormat
        Block format; fixes the widths of the product payload. ``block_size`` must be a power of
        two between 2 and 64.
    stages : int
        Number of register stages, ``0..MAX_STAGES``. 0 gives a combinational unit.

    Members
    -------
    i_stream : ``In(stream.Signature(product_layout(fmt)))``
        Exact products: ``value`` (``signed(fmt.product_bits)``), ``exponent``, ``nan``.
    o_stream : ``Out(stream.Signature(unsigned(32)))``
        FP32 bit patterns, in input order.

    Raises
    ------
    TypeError
        If ``fmt`` is not a :class:`BFPFormat` or ``stages`` is not an integer.
    ValueError
        If ``fmt.block_size`` is outside the RTL range or ``stages`` is out of range.
    """

    #: Number of combinational steps, hence the largest ``stages``.
    MAX_STAGES = 7

    def __init__(self, fmt, *, stages=3):
        # It sees only the product's width, so it takes minifloat formats too.
        self._fmt = check_rtl_format(fmt, minifloat=True)
        self._stages = check_stages("stages", stages, self.MAX_STAGES)
        super().__init__({
            "i_stream": In(stream.Signature(product_layout(fmt))),
            "o_stream": Out(stream.Signature(unsigned(32))),
        })

    @property
    def fmt(self):
        """The block format (:class:`BFPFormat`)."""
        return self._fmt

    @property
    def stages(self):
        """Number of register stages."""
        return self._stages

    @property
    def latency(self):
        """Cycles from an accepted input to its output being valid: equal to ``stages``."""
        return self._stages

    @property
    def throughput(self):
        """Transfers per cycle while ``o_stream.ready`` is 1: always 1."""
        return 1

    def elaborate(self, platform):
        m = Module()
        payload = self.i_stream.payload
        # Free-running pipeline; back-pressure through the credits of the output FIFO.
        out = CreditOutput(m, self.o_stream, stages=self._stages, name="out")
        m.d.comb += self.i_stream.ready.eq(out.ready)
        outputs, out_valid, _, _ = build_pipeline(
            m, block_to_float_steps(self._fmt, compact=compact_steps(platform)),
            stages=self._stages, enable=Const(1),
            name="b2f", inputs={"value": payload.value, "exp": payload.exponent,
                                "nan": payload.nan},
            valid=out.admit(self.i_stream.valid))
        out.drive(out_valid, outputs["bits"])
        return m


def compact_steps(platform):
    """Whether the FP32 steps take their compact form on ``platform`` (the iCE40)."""
    return platform_family(platform) == "ice40"


def block_to_float_steps(fmt, *, compact=False):
    """Return the :attr:`BlockToFloat.MAX_STAGES` steps of the conversion of an exact block
    product to FP32: keys ``value``, ``exp`` and ``nan`` (a ``product_layout(fmt)``'s fields)
    in, key ``bits`` out."""
    width = fmt.product_bits

    def absolute(m, v):
        value = v["value"]
        sign = comb_signal(m, "b2f_sign", 1, value[-1])
        mag = comb_signal(m, "b2f_mag", unsigned(width), Mux(sign, -value, value)[:width])
        return {"sign": sign, "mag": mag, "exp": v["exp"], "nan": v["nan"],
                "inf": Const(0, 1)}

    return [absolute, *fp32_round_steps(width, product_exponent_shape(fmt), compact=compact)]

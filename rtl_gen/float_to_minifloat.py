"""FP32/BF16 to minifloat block quantizer (docs/numerics.md, section 5).

:class:`FloatToMinifloatBlock` turns ``block_size`` IEEE float lanes into one block of ``ExMy``
elements under a shared E8M0 scale: the biased scale code and ``block_size`` element codes
(sign, exponent field, fraction), bit-exact with :func:`hbfp_hw.golden.quantize` for every
scale rule and rounding. :func:`block_quantizer` picks it or :class:`FloatToBlock` by format.

How the contract maps to hardware
---------------------------------
- **The block maximum.** For non-negative floats the order of the bit patterns is the order of
  the values, so ``amax`` is a max tree over the lanes' 31-bit magnitudes (the ``floor`` rule
  needs only the 8-bit exponent fields). A lane with exponent field 255 makes a NaN block.
- **Scale rules, exactly from the bits.** With ``f`` and ``t`` the exponent field and fraction
  of ``amax`` and ``emax`` the element's largest exponent:

  - ``floor``: ``X = f - 127 - emax`` (a subnormal or zero ``amax`` lands below the clamp);
  - ``ceil``: one more unless ``t == 0`` (``amax`` a power of two); a subnormal ``amax``
    reaches above the clamp only when ``emax == 0``, as ``-126`` for ``t > 2**22``;
  - ``rceil``: ``X = ceil(log2(d))`` with ``d = fp32(amax * c)`` rounded to nearest-even and
    ``c`` the FP32 constant ``1 / max_normal`` (``2**ce <= c < 2**(ce+1)``, significand
    ``cs``). While ``d`` is normal, ``X = f - 127 + ce + g`` where ``g`` counts how far the
    24-bit significand ``s`` of ``amax`` lies above two constants: ``s * cs`` above
    ``2**46 + 2**22`` no longer rounds to ``2**46`` (``g >= 1``), above ``2**47 + 2**23`` it
    rounds above ``2**47`` (``g = 2``). Below that, ``d`` is subnormal or ``2**-126``: ``X`` is
    ``-127`` up to the largest ``amax`` whose ``d`` is at most ``2**-127`` (one 31-bit
    comparison with a constant) and ``-126`` above it.

  All are then clamped to the scale's range; an all-zero block gets its bottom.
- **Elements without a normaliser.** A lane ``|x| = s * 2**(fe - 150)`` (``fe = max(f, 1)``)
  lies in the binade ``ee = fe - 127 - X`` of the scaled value, minus the leading zeros of
  ``s`` (only an FP32 subnormal has any; counting ``L = 2 - emin`` of them is enough, since an
  FP32 subnormal scaled by at most ``2**127`` stays below ``2**1``). With ``u = ee - emin``
  and ``k = min(u, leading zeros)``, the element's grid step is ``2**(emin + u - k - m)``
  in scaled units, so ``q = s >> (23 - m - k)`` are its ``m + 1`` significant bits (for a
  subnormal element: fewer), ``u - k`` the exponent field minus one of a normal element
  (0 for a subnormal one), and ``((u - k) << m) + q`` is the element's magnitude code: the
  implicit bit of ``q`` adds the missing one to the field, and a rounding carry out of the
  fraction moves to the next binade (a subnormal rounds up to the smallest normal) by itself.
- **Rounding and saturation.** ``q`` is rounded on the magnitude (nearest-even with a guard
  and a sticky bit, toward zero, or stochastically with 16 kept fraction bits and the
  contract's PRNG, as :class:`FloatToBlock` does); a code above the largest finite one (past
  the top binade, or into a reserved code) saturates to it. A zero element is ``+0``, and a
  NaN block holds zero codes.
"""

import struct
from typing import NamedTuple

from amaranth.hdl import C, Cat, Module, Mux, Signal, signed

from hbfp_hw.formats import (
    SR_RANDOM_BITS,
    Rounding,
    ScaleRule,
    Special,
)

from .common import check_rtl_format
from .float_to_block import BlockQuantizer, FloatToBlock

__all__ = ["FloatToMinifloatBlock", "block_quantizer", "quantizer_class", "rceil_constants"]


class RceilConstants(NamedTuple):
    """Constants of the ``rceil`` rule for one element type (see the module docstring)."""

    ce: int         # floor(log2(c))
    g1: int         # largest significand s with s * cs <= 2**46 + 2**22
    g2: int         # largest significand s with s * cs <= 2**47 + 2**23
    low: int        # largest 31-bit amax pattern with fp32(amax * c) <= 2**-127


def rceil_constants(element):
    """Return the :class:`RceilConstants` of ``element``, from exact integer arithmetic on
    the FP32 constant ``c = fp32(1 / max_normal)`` (numerics.md 5.2)."""
    # 1 / max_normal rounded to FP32 (nearest-even), as golden.minifloat.reciprocal_max
    bits = struct.unpack("<I", struct.pack("<f", 1.0 / element.max_normal))[0]
    field, frac = bits >> 23, bits & 0x7FFFFF
    assert 1 <= field <= 254, "1 / max_normal is a normal FP32 number (max_normal >= 1)"
    cs, ce = (1 << 23) | frac, field - 127

    def at_most_low(pattern):
        # amax * c <= 2**-127 + 2**-150 (the tie there rounds down to the even 2**-127)
        f, t = pattern >> 23, pattern & 0x7FFFFF
        s = t | ((f != 0) << 23)
        shift = max(f, 1) - 150 + ce - 23 + 150             # amax * c = s * cs * 2**shift / 2**150
        lhs, rhs = s * cs, (1 << 23) + 1
        return lhs << shift <= rhs if shift >= 0 else lhs <= rhs << -shift

    lo, hi = 0, 0x7F7FFFFF                                   # at_most_low(lo) holds
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if at_most_low(mid) else (lo, mid - 1)
    return RceilConstants(ce=ce, g1=((1 << 46) + (1 << 22)) // cs,
                          g2=((1 << 47) + (1 << 23)) // cs, low=lo)


def quantizer_class(fmt):
    """The quantizer class of ``fmt``'s blocks: :class:`FloatToMinifloatBlock` for minifloat
    elements, :class:`FloatToBlock` for integer ones (same ports and parameters; both have
    ``max_stages_for(fmt)``)."""
    return FloatToMinifloatBlock if getattr(fmt, "is_minifloat", False) else FloatToBlock


def block_quantizer(fmt, **kwargs):
    """Return the quantizer of ``fmt``'s blocks, an instance of :func:`quantizer_class`."""
    return quantizer_class(fmt)(fmt, **kwargs)


class _Widths(NamedTuple):
    frac_bits: int      # FB: fraction bits kept below q (1 guard bit, 16 for SR, 0 for TZ)
    pad: int            # P: zero bits below the significand so the shift is never negative
    width: int          # the extended significand: 24 + FB + P
    leading: int        # L: leading zeros counted (clamped)
    kept: int           # bits of the aligned lane: m + 1 + FB


class FloatToMinifloatBlock(BlockQuantizer):
    """Quantize ``block_size`` FP32 or BF16 values to one minifloat block per transfer.

    The minifloat counterpart of :class:`FloatToBlock`, with the same ports, stream behaviour
    and PRNG (reset seed 0, ``reseed``), bit-exact with :func:`hbfp_hw.golden.quantize`
    (docs/numerics.md, section 5) for every scale rule (``floor``, ``ceil``, ``rceil``) and
    rounding.

    Parameters
    ----------
    fmt : BFPFormat
        A format with minifloat elements; ``block_size`` a power of two from 2 to 64.
    input_format : FloatFormat or str
        ``"fp32"`` or ``"bf16"``.
    stages : int
        Pipeline registers, 0 to :meth:`max_stages_for` (``6 + log2(block_size)``): in this
        order of preference at the output, after the scale, after the alignment shifters, at
        the input, after the shift distances, between the max tree and the scale rule,
        halfway up the max tree, and before each other level of the max tree (the first:
        after the lanes' fields and leading-zero counts).
    always_ready : bool
        As for :class:`FloatToBlock`: a consumer that never stalls.

    Members
    -------
    i_stream : ``In(stream.Signature(float_vector_layout(fmt, input_format)))``
    o_stream : ``Out(stream.Signature(block_layout(fmt), always_ready=always_ready))``
        The scale code (all ones for NaN blocks) and the element codes.
    seed : ``In(32)``
    reseed : ``In(1)``
    """

    @staticmethod
    def _check_format(fmt):
        fmt = check_rtl_format(fmt, minifloat=True)
        if not fmt.is_minifloat:
            raise ValueError(f"fmt must have minifloat elements, not {fmt.name!r} "
                             f"(FloatToBlock quantizes integer elements)")
        return fmt

    @staticmethod
    def _cut_order(fmt):
        """Cut points in order of preference (see ``stages``); ``tree{k}`` is before level
        ``k`` of the max tree."""
        levels = (fmt.block_size - 1).bit_length()
        tree = [f"tree{levels // 2}"] + [f"tree{k}" for k in range(levels) if k != levels // 2]
        return ["output", "exponent", "align", "input", "distance", "amax", *tree]

    def _widths(self):
        fmt, element = self._fmt, self._fmt.element
        m = element.mantissa_bits
        frac_bits = {Rounding.NEAREST_EVEN: 1, Rounding.TOWARD_ZERO: 0,
                     Rounding.STOCHASTIC: SR_RANDOM_BITS}[fmt.rounding]
        leading = 2 - element.emin
        pad = max(0, leading + m - 23)
        return _Widths(frac_bits=frac_bits, pad=pad, width=24 + frac_bits + pad,
                       leading=leading, kept=m + 1 + frac_bits)

    def elaborate(self, platform):
        m = Module()
        cuts = {name for name, cut in self._cut_points().items() if cut}
        widths = self._widths()

        out, pipe, values = self._front(m)
        values = self._lane_fields(m, values, widths)
        values = pipe.cut("s_amax", self._max_tree(m, pipe, cuts, values), "amax" in cuts)
        values = pipe.cut("s_exp", self._scale(m, values), "exponent" in cuts)
        values = pipe.cut("s_dist", self._distances(m, values, widths), "distance" in cuts)
        values = pipe.cut("s_align", self._align(m, values, widths), "align" in cuts)
        values = pipe.cut("s_out", self._encode(m, values, widths), "output" in cuts)
        self._drive(m, out, pipe, values["code"], values["elements"])
        return m

    def _lane_fields(self, m, values, widths):
        """Per lane: sign, ``fe``, the 24-bit significand, its leading zeros (clamped to
        ``L``) and the max tree's key; and the block's NaN flag."""
        floor_rule = self._fmt.scale_rule is ScaleRule.FLOOR
        lanes = values.pop("lane")
        fields = dict(values, sign=[], fe=[], sig=[], lead=[], key=[])
        for i, lane in enumerate(lanes):
            field = lane[23:31]
            normal = Signal(name=f"normal{i}")
            sig = Signal(24, name=f"sig{i}")
            fe = Signal(8, name=f"fe{i}")
            m.d.comb += [normal.eq(field != 0), sig.eq(Cat(lane[:23], normal)),
                         fe.eq(Cat(field[0] | ~normal, field[1:]))]
            lead_sig = Signal(range(widths.leading + 1), name=f"lead{i}")
            m.d.comb += lead_sig.eq(self._leading_zeros(sig, widths.leading))
            fields["sign"].append(lane[31])
            fields["fe"].append(fe)
            fields["sig"].append(sig)
            fields["lead"].append(lead_sig)
            fields["key"].append(field if floor_rule else lane[:31])
        fields["nan"] = Cat(*[lane[23:31] == 0xFF for lane in lanes]).any()
        return fields

    @staticmethod
    def _leading_zeros(sig, limit):
        """The leading zeros of the 24-bit significand ``sig``, at most ``limit``."""
        lead = C(limit, range(limit + 1))
        for j in reversed(range(min(limit, 24))):
            lead = Mux(sig[23 - j], j, lead)
        return lead

    def _max_tree(self, m, pipe, cuts, values):
        """Reduce the lanes' keys to the block's largest (``amax``, or its field), with a
        register before level ``k`` where ``cuts`` holds ``tree{k}``."""
        level = values.pop("key")
        depth = 0
        while len(level) > 1:
            values["key"] = level
            values = pipe.cut(f"s_tree{depth}", values, f"tree{depth}" in cuts)
            level = values.pop("key")
            nodes = []
            for a, b in zip(level[0::2], level[1::2], strict=True):
                node = Signal(len(a), name=f"max{len(level)}_{len(nodes)}")
                m.d.comb += node.eq(Mux(a > b, a, b))
                nodes.append(node)
            level = nodes
            depth += 1
        values["amax"] = level[0]
        return values

    def _scale(self, m, values):
        """Replace ``amax`` by the shared exponent ``X`` (signed) and the scale code."""
        fmt, element = self._fmt, self._fmt.element
        amax = values.pop("amax")
        field = amax[-8:]
        x = Signal(signed(11), name="x_rule")
        if fmt.scale_rule is ScaleRule.FLOOR:
            m.d.comb += x.eq(field - 127 - element.emax)
        elif fmt.scale_rule is ScaleRule.CEIL:
            frac = amax[:23]
            if element.emax == 0:
                inc = Mux(field != 0, frac != 0, frac > 0x400000)
            else:
                inc = frac != 0
            m.d.comb += x.eq(field - 127 - element.emax + inc)
        else:
            k = rceil_constants(element)
            sig = Cat(amax[:23], field != 0)
            g = (sig > k.g1).as_unsigned() + (sig > k.g2).as_unsigned()
            formula = Signal(signed(11), name="x_formula")
            m.d.comb += formula.eq(field - 127 + k.ce + g)
            m.d.comb += x.eq(Mux(amax <= k.low, -127, Mux(formula < -126, -126, formula)))
        clamped = Signal(signed(9), name="x")
        m.d.comb += clamped.eq(Mux(x < fmt.min_exponent, fmt.min_exponent,
                                   Mux(x > fmt.max_exponent, fmt.max_exponent, x)))
        values["x"] = clamped
        values["code"] = Mux(values["nan"], fmt.nan_code,
                             clamped + fmt.exponent_bias)[:fmt.exponent_bits]
        return values

    def _distances(self, m, values, widths):
        """Per lane: ``u = fe - 127 - X - emin``, ``k = min(u, leading zeros)``, the field base
        ``u - k`` and the shift distance ``23 - m - k + P`` (clamped to the width)."""
        element = self._fmt.element
        x = values.pop("x")
        base0 = 23 - element.mantissa_bits + widths.pad
        bases, shifts = [], []
        for i, (fe, lead) in enumerate(zip(values.pop("fe"), values.pop("lead"), strict=True)):
            u = Signal(signed(11), name=f"u{i}")
            k = Signal(signed(11), name=f"k{i}")
            m.d.comb += [u.eq(fe - 127 - element.emin - x), k.eq(Mux(u < lead, u, lead))]
            base = Signal(range(512), name=f"base{i}")
            m.d.comb += base.eq(u - k)
            distance = Signal(signed(12), name=f"distance{i}")
            m.d.comb += distance.eq(base0 - k)
            shift = Signal(range(widths.width + 1), name=f"shift{i}")
            m.d.comb += shift.eq(Mux(distance > widths.width, widths.width, distance))
            bases.append(base)
            shifts.append(shift)
        values["base"] = bases
        values["shift"] = shifts
        return values

    def _align(self, m, values, widths):
        """Shift each significand to its element grid (``kept`` bits: q and FB fraction bits)
        and, for nearest-even, form the sticky bit of what is shifted out below the guard."""
        nearest = self._fmt.rounding is Rounding.NEAREST_EVEN
        low = widths.frac_bits + widths.pad
        aligned_list, sticky = [], []
        for i, sig in enumerate(values.pop("sig")):
            shift = values["shift"][i]
            ext = Cat(C(0, low), sig)
            aligned = Signal(widths.kept, name=f"aligned{i}")
            m.d.comb += aligned.eq(ext >> shift)
            aligned_list.append(aligned)
            if nearest:
                # the guard bit is ext[shift]: significand bit j (ext bit j + low) is below it
                # exactly when j + low < shift
                out_bits = Cat(*[sig[j] & (shift > j + low) for j in range(24)])
                bit = Signal(name=f"sticky{i}")
                m.d.comb += bit.eq(out_bits.any())
                sticky.append(bit)
        values.pop("shift")
        values["aligned"] = aligned_list
        if nearest:
            values["sticky"] = sticky
        return values

    def _encode(self, m, values, widths):
        """Round each lane's magnitude, form its code, saturate it, apply the sign."""
        fmt, element = self._fmt, self._fmt.element
        fb = widths.frac_bits
        max_code = self._max_code()
        elements = []
        for i in range(fmt.block_size):
            aligned = values["aligned"][i]
            q = aligned[fb:]
            up = self._round_up(aligned, fb, values.get("sticky", [None] * fmt.block_size)[i],
                                values.get("rand", [None] * fmt.block_size)[i])
            magnitude = Signal(element.mantissa_bits + 10, name=f"magnitude{i}")
            m.d.comb += magnitude.eq(self._magnitude(values["base"][i], q, up))
            code = Signal(element.width - 1, name=f"code{i}")
            m.d.comb += code.eq(self._saturate(magnitude, max_code))
            element_code = Signal(element.width, name=f"element{i}")
            sign = values["sign"][i] & (code != 0)
            m.d.comb += element_code.eq(Mux(values["nan"], 0, Cat(code, sign)))
            elements.append(element_code)
        return {"code": values["code"], "elements": elements}

    def _magnitude(self, base, q, up):
        """The rounded magnitude code: ``(base << m) + q + up`` (see the module docstring)."""
        return (base << self._fmt.element.mantissa_bits) + q + up

    def _max_code(self):
        """The largest finite magnitude code (exponent field and fraction)."""
        return _max_magnitude_code(self._fmt.element)

    @staticmethod
    def _saturate(magnitude, max_code):
        """Clamp a magnitude code above the largest finite one to it."""
        return Mux(magnitude > max_code, max_code, magnitude)


def _max_magnitude_code(element):
    """The largest finite magnitude code (exponent field and fraction) of ``element``."""
    m = element.mantissa_bits
    top_fraction = (1 << m) - (2 if element.special is Special.FN else 1)
    return (element.top_field << m) | top_fraction

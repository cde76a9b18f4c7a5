"""Number formats: the one `BFPFormat` object that flows through every layer of hbfp-hw.

The golden model, the RTL generators, the testbenches, the host driver and the PyTorch
integration all take the same frozen :class:`BFPFormat`. Its exact semantics are written down in
``docs/numerics.md``; :mod:`hbfp_hw.golden` is the executable form of that contract.

A block's elements are integers (BFP, MXINT8) or small floating-point numbers, :class:`Minifloat`
``ExMy`` (the OCP MX formats MXFP8/6/4 and Block Minifloat), under one shared power-of-two scale.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "Rounding",
    "Special",
    "ScaleRule",
    "Accumulator",
    "as_accumulator",
    "ACCUMULATOR_SUFFIXES",
    "split_accumulator",
    "EXACT_MAX_KBLOCKS",
    "Minifloat",
    "Posit",
    "posit_format",
    "minifloat_format",
    "require_integer_elements",
    "check_operand_formats",
    "FloatFormat",
    "BFPFormat",
    "PRESETS",
    "MXINT8",
    "BFP8",
    "DEFAULT_FORMAT",
    "resolve_format",
    "as_float_format",
    "CANONICAL_NAN_BITS",
    "SR_RANDOM_BITS",
]

#: Bit pattern of the canonical quiet NaN that every NaN result is replaced by.
CANONICAL_NAN_BITS = 0x7FC00000

#: Number of random bits that stochastic rounding adds below the kept LSB (see numerics.md).
SR_RANDOM_BITS = 16

MANTISSA_BITS_RANGE = (2, 16)
BLOCK_SIZE_RANGE = (1, 4096)
EXPONENT_BITS_RANGE = (2, 8)
#: Exponent and mantissa (fraction) widths of a minifloat element.
ELEMENT_EXPONENT_BITS_RANGE = (1, 5)
ELEMENT_MANTISSA_BITS_RANGE = (0, 7)


class _Named(enum.Enum):
    """An enum whose members print as their value (``str(Rounding.STOCHASTIC)``)."""

    def __str__(self):
        return self.value


class Rounding(_Named):
    """Rounding of the aligned element mantissas to ``mantissa_bits``-wide integers."""

    NEAREST_EVEN = "nearest-even"
    TOWARD_ZERO = "toward-zero"
    STOCHASTIC = "stochastic"

class Accumulator(_Named):
    """How a GEMM sums its block dot products over the k-blocks (docs/numerics.md section 6).

    ``fp32``: an FP32 running sum, nearest-even (the default). ``fp32-kahan``: Kahan-compensated
    FP32. ``bf16-rne`` / ``bf16-sr``: a BF16 running sum rounded to nearest-even or
    stochastically. ``exact``: a fixed-point (Kulisch) sum of the exact block products, rounded
    once to FP32. Block dot products themselves do not depend on it.
    """

    FP32 = "fp32"
    FP32_KAHAN = "fp32-kahan"
    BF16_RNE = "bf16-rne"
    BF16_SR = "bf16-sr"
    EXACT = "exact"

    @property
    def stochastic(self):
        """Whether it rounds with random bits (and so takes a seed)."""
        return self is Accumulator.BF16_SR


#: Most k-blocks the ``exact`` accumulator sums (its guard bits: docs/numerics.md 6.5).
EXACT_MAX_KBLOCKS = 1 << 20


class FloatFormat(_Named):
    """Floating-point format of the values that enter the quantizer.

    BF16 values are a subset of FP32 values, so quantizing a BF16 value gives exactly the
    same block as quantizing the same value given as FP32. The format only matters to the
    hardware (lane width) and to validation.
    """

    FP32 = "fp32"
    BF16 = "bf16"

    @property
    def width(self):
        """Width of one encoded value in bits."""
        return 32 if self is FloatFormat.FP32 else 16

def _check_int(name, value, lo, hi, *, power_of_two=False):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if power_of_two:
        if not (lo <= value <= hi) or value & (value - 1):
            raise ValueError(
                f"{name} must be a power of two between {lo} and {hi}, not {value!r}")
    elif not (lo <= value <= hi):
        raise ValueError(f"{name} must be between {lo} and {hi}, not {value!r}")


def _coerce_enum(enum_cls, name, value):
    if isinstance(value, enum_cls):
        return value
    if isinstance(value, str):
        try:
            return enum_cls(value)
        except ValueError:
            pass
        allowed = ", ".join(repr(m.value) for m in enum_cls)
        raise ValueError(f"{name} must be one of {allowed}, not {value!r}")
    raise TypeError(f"{name} must be a {enum_cls.__name__} or a string, not {value!r}")


def as_accumulator(value, name="accumulator"):
    """Return ``value`` (an :class:`Accumulator` or its name) as an :class:`Accumulator`;
    ``ValueError``/``TypeError`` naming ``name`` and the allowed names otherwise."""
    return _coerce_enum(Accumulator, name, value)


def as_float_format(value, name="input_format"):
    """Return ``value`` (a FloatFormat or ``"fp32"``/``"bf16"``) as a :class:`FloatFormat`."""
    return _coerce_enum(FloatFormat, name, value)


class Special(_Named):
    """Which codes of a minifloat element are not numbers.

    ``ieee``: the all-ones exponent field is reserved, Inf (fraction 0) and NaN (as OCP E5M2).
    ``fn``: finite; only ``S.1...1.1...1`` is NaN (as OCP E4M3). ``none``: every code is a
    number (as OCP FP6 and FP4). The convention fixes the largest normal value.
    """

    IEEE = "ieee"
    FN = "fn"
    NONE = "none"

class ScaleRule(_Named):
    """How a block's shared exponent is chosen from its largest magnitude ``amax``.

    ``floor``: ``floor(log2 amax) - emax`` (OCP MX, the default); ``ceil``:
    ``ceil(log2 amax) - emax`` (no element saturates below the top of the scale range);
    ``rceil``: the power of two at or above ``amax * (1/max_normal)`` computed in FP32, as
    torchao's and cuBLAS's MXFP8 recipe does. docs/numerics.md section 5 has the exact rules.
    """

    FLOOR = "floor"
    CEIL = "ceil"
    RCEIL = "rceil"

@dataclass(frozen=True)
class Minifloat:
    """A minifloat element type ``ExMy``: sign, ``e`` exponent bits, ``m`` fraction bits.

    A code with exponent field ``f`` and fraction ``t`` is ``(-1)^s * t * 2^(1 - bias - m)``
    when ``f == 0`` (subnormal) and ``(-1)^s * (2^m + t) * 2^(f - bias - m)`` otherwise, except
    the codes that ``special`` reserves. Every value is an integer multiple of
    ``2^-fraction_bits``; the golden model and the hardware hold elements as those integers.

    Parameters
    ----------
    exponent_bits : int
        ``e``, 1 to 5 (2 to 5 with ``special="ieee"``).
    mantissa_bits : int
        ``m``, 0 to 7 (1 to 7 with ``special="fn"``).
    special : Special or str
        ``"ieee"`` (default), ``"fn"`` or ``"none"``.
    bias : int or None
        Exponent bias, 0 to ``2**(e-1)``; ``None`` means the IEEE bias ``2**(e-1) - 1``.
    """

    exponent_bits: int
    mantissa_bits: int
    special: Special = Special.IEEE
    bias: int | None = None

    def __post_init__(self):
        _check_int("exponent_bits", self.exponent_bits, *ELEMENT_EXPONENT_BITS_RANGE)
        _check_int("mantissa_bits", self.mantissa_bits, *ELEMENT_MANTISSA_BITS_RANGE)
        special = _coerce_enum(Special, "special", self.special)
        object.__setattr__(self, "special", special)
        e, m = self.exponent_bits, self.mantissa_bits
        if special is Special.IEEE and e < 2:
            raise ValueError(f"exponent_bits must be between 2 and 5 for special='ieee' (the "
                             f"all-ones exponent is reserved), not {e}")
        if special is Special.FN and m < 1:
            raise ValueError(f"mantissa_bits must be between 1 and 7 for special='fn' (the "
                             f"all-ones code is NaN), not {m}")
        if self.bias is None:
            object.__setattr__(self, "bias", (1 << (e - 1)) - 1)
        else:
            _check_int("bias", self.bias, 0, 1 << (e - 1))

    @property
    def width(self):
        """Bits of one encoded element: ``1 + e + m``."""
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def top_field(self):
        """Largest exponent field that holds numbers."""
        top = (1 << self.exponent_bits) - 1
        return top - 1 if self.special is Special.IEEE else top

    @property
    def emin(self):
        """Exponent of the smallest normal binade, ``1 - bias``."""
        return 1 - self.bias

    @property
    def emax(self):
        """Exponent of the largest binade: ``floor(log2(max_normal))``."""
        return self.top_field - self.bias

    @property
    def fraction_bits(self):
        """The element grid's step is ``2^-fraction_bits``: ``m + bias - 1``."""
        return self.mantissa_bits + self.bias - 1

    @property
    def max_int(self):
        """Largest magnitude as an integer on the element grid: ``max_normal * 2^fraction_bits``."""
        m = self.mantissa_bits
        top_fraction = (1 << m) - (2 if self.special is Special.FN else 1)
        return ((1 << m) + top_fraction) << (self.top_field - 1)

    @property
    def max_normal(self):
        """Largest finite magnitude, as a float (exact): 448 for OCP E4M3."""
        return self.max_int * 2.0 ** -self.fraction_bits

    @property
    def name(self):
        """``e4m3fn``, ``e5m2``, ``e2m1nr`` (no reserved codes); ``_biasN`` if not IEEE's."""
        suffix = {Special.IEEE: "", Special.FN: "fn", Special.NONE: "nr"}[self.special]
        default = (1 << (self.exponent_bits - 1)) - 1
        bias = "" if self.bias == default else f"_bias{self.bias}"
        return f"e{self.exponent_bits}m{self.mantissa_bits}{suffix}{bias}"

    def to_dict(self):
        """Return a JSON-ready description."""
        return {"exponent_bits": self.exponent_bits, "mantissa_bits": self.mantissa_bits,
                "special": self.special.value, "bias": self.bias}

    @classmethod
    def from_dict(cls, d):
        """Rebuild an element type from :meth:`to_dict` output."""
        return cls(int(d["exponent_bits"]), int(d["mantissa_bits"]), d.get("special", "ieee"),
                   None if d.get("bias") is None else int(d["bias"]))


@dataclass(frozen=True)
class BFPFormat:
    """A block floating-point format.

    A block holds ``block_size`` elements that share one exponent ``E``. Element ``i`` is a
    ``mantissa_bits``-wide two's-complement integer ``m_i``, clamped symmetrically to
    ``±(2**(mantissa_bits-1) - 1)``, and its value is ``m_i * 2**(E - (mantissa_bits - 2))``.

    Parameters
    ----------
    mantissa_bits : int
        Width ``w`` of an element, sign included. 2 to 16.
    block_size : int
        Number of elements that share one exponent. A power of two, 1 to 4096 (the RTL
        generators accept 2 to 64).
    rounding : Rounding or str
        ``"nearest-even"`` (default), ``"toward-zero"`` or ``"stochastic"``.
    exponent_bits : int
        Width of the shared exponent code, 2 to 8. ``E`` ranges over
        ``[-(2**(exponent_bits-1) - 1), 2**(exponent_bits-1) - 1]`` and the all-ones code is NaN.
        With 8 bits this is OCP's E8M0 scale.
    element : Minifloat or None
        ``None`` (default): integer elements as above. A :class:`Minifloat`: each element is
        that ``ExMy`` number times ``2**E`` (OCP MX: ``E`` is the scale ``X``), held as the
        integer ``m_i = value * 2**(fraction_bits - E)``; ``mantissa_bits`` must then be the
        element's width ``1 + e + m``. :func:`minifloat_format` builds such formats.
    scale_rule : ScaleRule or str
        How ``E`` is chosen: ``"floor"`` (default), ``"ceil"`` or ``"rceil"``; integer elements
        take ``"floor"`` only.
    accumulator : Accumulator or str
        How a GEMM sums the block dot products over K: ``"fp32"`` (default), ``"fp32-kahan"``,
        ``"bf16-rne"``, ``"bf16-sr"`` or ``"exact"`` (:class:`Accumulator`).

    Raises
    ------
    TypeError
        If a parameter has the wrong type.
    ValueError
        If a parameter is out of range; the message names the parameter and its range.
    """

    mantissa_bits: int
    block_size: int
    rounding: Rounding = Rounding.NEAREST_EVEN
    exponent_bits: int = 8
    element: Minifloat | None = None
    scale_rule: ScaleRule = ScaleRule.FLOOR
    accumulator: Accumulator = Accumulator.FP32

    def __post_init__(self):
        _check_int("mantissa_bits", self.mantissa_bits, *MANTISSA_BITS_RANGE)
        _check_int("block_size", self.block_size, *BLOCK_SIZE_RANGE, power_of_two=True)
        _check_int("exponent_bits", self.exponent_bits, *EXPONENT_BITS_RANGE)
        object.__setattr__(self, "rounding", _coerce_enum(Rounding, "rounding", self.rounding))
        rule = _coerce_enum(ScaleRule, "scale_rule", self.scale_rule)
        object.__setattr__(self, "scale_rule", rule)
        object.__setattr__(self, "accumulator",
                           _coerce_enum(Accumulator, "accumulator", self.accumulator))
        if self.element is None:
            if rule is not ScaleRule.FLOOR:
                raise ValueError(f"scale_rule must be 'floor' for integer elements, "
                                 f"not {rule.value!r}")
        elif isinstance(self.element, Posit):
            self._check_posit()
        elif not isinstance(self.element, Minifloat):
            raise TypeError(f"element must be a Minifloat, a Posit or None, not "
                            f"{self.element!r}")
        elif self.mantissa_bits != self.element.width:
            raise ValueError(f"mantissa_bits must be the element's width "
                             f"{self.element.width} for {self.element.name} elements, "
                             f"not {self.mantissa_bits}")

    def _check_posit(self):
        el = self.element
        if self.mantissa_bits != el.n:
            raise ValueError(f"mantissa_bits must be the element's width {el.n} for "
                             f"{el.name} elements, not {self.mantissa_bits}")
        if self.scale_rule is not ScaleRule.FLOOR:
            raise ValueError(f"scale_rule must be 'floor' for posit elements (plain posits "
                             f"have no scale), not {self.scale_rule.value!r}")
        if self.rounding is not Rounding.NEAREST_EVEN:
            raise ValueError(f"rounding must be 'nearest-even' for posit elements (rounded on "
                             f"the encoding), not {self.rounding.value!r}")
        if self.accumulator is not Accumulator.EXACT:
            raise ValueError(f"accumulator must be 'exact' for posit elements (their products "
                             f"sum in the quire), not {self.accumulator.value!r}")

    @property
    def is_minifloat(self):
        """Whether the elements are :class:`Minifloat` numbers."""
        return isinstance(self.element, Minifloat)

    @property
    def is_posit(self):
        """Whether the elements are :class:`Posit` numbers (plain: no shared scale)."""
        return isinstance(self.element, Posit)

    @property
    def element_name(self):
        """``"int8"`` for 8-bit integer elements, else the minifloat's name (``"e4m3fn"``)."""
        return f"int{self.mantissa_bits}" if self.element is None else self.element.name

    # -- derived constants ------------------------------------------------------------------

    @property
    def max_mantissa(self):
        """Largest element magnitude as an integer: ``2**(w-1) - 1`` (the clamp is symmetric);
        for minifloat elements ``max_normal * 2**fraction_bits`` (229,376 for E4M3); for posit
        elements, whose :class:`BFPTensor` holds codes, the largest positive code."""
        if self.is_posit:
            return (1 << (self.element.n - 1)) - 1
        if self.element is not None:
            return self.element.max_int
        return (1 << (self.mantissa_bits - 1)) - 1

    @property
    def fraction_bits(self):
        """Number of fractional bits of an element relative to ``2**E``: ``w - 2``; for
        minifloat elements the element's ``m + bias - 1``; 0 for posit elements (codes)."""
        if self.is_posit:
            return 0
        if self.element is not None:
            return self.element.fraction_bits
        return self.mantissa_bits - 2

    @property
    def element_emax(self):
        """``floor(log2)`` of the largest element magnitude relative to ``2**E``: 0 for
        integer elements, 8 for E4M3, ``log2 maxpos`` for posits. The scale rules subtract
        it from ``log2 amax``."""
        if self.is_posit:
            return self.element.max_exponent
        return 0 if self.element is None else self.element.emax

    @property
    def exponent_bias(self):
        """Bias of the shared-exponent code: ``2**(exponent_bits-1) - 1`` (127 for 8 bits)."""
        return (1 << (self.exponent_bits - 1)) - 1

    @property
    def min_exponent(self):
        """Smallest shared exponent ``E`` (-127 for 8 bits); all-zero blocks get this."""
        return -self.exponent_bias

    @property
    def max_exponent(self):
        """Largest shared exponent ``E`` (127 for 8 bits)."""
        return self.exponent_bias

    @property
    def nan_exponent(self):
        """Unbiased value that marks a NaN block in ``BFPTensor.exponents`` (128 for 8 bits)."""
        return self.exponent_bias + 1

    @property
    def nan_code(self):
        """Biased shared-exponent code of a NaN block: all ones (255 for 8 bits)."""
        return (1 << self.exponent_bits) - 1

    @property
    def product_bits(self):
        """Full width of the exact integer block dot product: ``2w + ceil(log2(block_size))``
        for integer elements (``w - 1`` magnitude bits and a sign per operand); for posit
        elements the quire's, from ``minpos**2`` to ``maxpos**2`` with carry bits for the
        block and a sign."""
        if self.is_posit:
            return 4 * self.element.max_exponent + (self.block_size - 1).bit_length() + 1
        operand = self.max_mantissa.bit_length() + 1
        return 2 * operand + (self.block_size - 1).bit_length()

    @property
    def name(self):
        """Short, deterministic name such as ``bfp8`` or ``w6b32_tz``, used for files."""
        for preset_name, preset in PRESETS.items():
            if preset == self:
                return preset_name
        suffix = {Rounding.NEAREST_EVEN: "", Rounding.TOWARD_ZERO: "_tz",
                  Rounding.STOCHASTIC: "_sr"}[self.rounding]
        if self.is_posit:                       # the quire is part of a posit format
            return f"{self.element.name}b{self.block_size}"
        if self.accumulator is not Accumulator.FP32:
            base = self.replace(accumulator=Accumulator.FP32).name
            return f"{base}_{self.accumulator.value.replace('-', '')}"
        ebits = "" if self.exponent_bits == 8 else f"e{self.exponent_bits}"
        if self.element is None:
            return f"w{self.mantissa_bits}b{self.block_size}{ebits}{suffix}"
        rule = "" if self.scale_rule is ScaleRule.FLOOR else f"_{self.scale_rule.value}"
        return f"{self.element.name}b{self.block_size}{ebits}{rule}{suffix}"

    def replace(self, **changes):
        """Return a copy with the given fields changed (and validated).

        Changing ``element`` alone also sets ``mantissa_bits`` to the new element's width.
        """
        fields = dict(mantissa_bits=self.mantissa_bits, block_size=self.block_size,
                      rounding=self.rounding, exponent_bits=self.exponent_bits,
                      element=self.element, scale_rule=self.scale_rule,
                      accumulator=self.accumulator)
        if changes.get("element") is not None and "mantissa_bits" not in changes:
            if isinstance(changes["element"], Minifloat):
                fields["mantissa_bits"] = changes["element"].width
        fields.update(changes)
        return BFPFormat(**fields)

    def to_dict(self):
        """Return a JSON-ready description (``element``, ``scale_rule`` and ``accumulator``
        only when they are not the integer/FP32 defaults, so that those formats keep their old
        description)."""
        d = {
            "name": self.name,
            "mantissa_bits": self.mantissa_bits,
            "block_size": self.block_size,
            "rounding": self.rounding.value,
            "exponent_bits": self.exponent_bits,
        }
        if self.element is not None:
            d["element"] = self.element.to_dict()
            d["scale_rule"] = self.scale_rule.value
        if self.accumulator is not Accumulator.FP32:
            d["accumulator"] = self.accumulator.value
        return d

    @classmethod
    def from_dict(cls, d):
        """Rebuild a format from :meth:`to_dict` output."""
        element = d.get("element")
        return cls(int(d["mantissa_bits"]), int(d["block_size"]),
                   d.get("rounding", "nearest-even"), int(d.get("exponent_bits", 8)),
                   None if element is None else
                   (Posit if "posit_n" in element else Minifloat).from_dict(element),
                   d.get("scale_rule", "floor"), d.get("accumulator", "fp32"))


#: Width ``n`` and exponent size ``es`` of a posit element.
POSIT_WIDTH_RANGE = (6, 16)
POSIT_ES_RANGE = (0, 2)


@dataclass(frozen=True)
class Posit:
    """A posit element type ``posit(n, es)`` (docs/numerics.md section 7): the 2022 posit
    standard's encoding with ``es`` exponent bits (the standard fixes ``es = 2``; 0 and 1 as
    SoftPosit generalises it).

    A code is an ``n``-bit two's-complement word: 0 is zero, ``1 << (n-1)`` is NaR (not a
    real), and the others are ``±useed**k * 2**e * (1 + f)`` with ``useed = 2**(2**es)``,
    ``k`` from the regime, ``e`` from up to ``es`` exponent bits (missing ones are 0) and the
    fraction ``f``. The values run from ``minpos = 2**-((n-2) * 2**es)`` to
    ``maxpos = 2**((n-2) * 2**es)``.

    Parameters
    ----------
    n : int
        Width of a code, 6 to 16.
    es : int
        Exponent bits, 0 to 2.
    """

    n: int
    es: int

    def __post_init__(self):
        _check_int("n", self.n, *POSIT_WIDTH_RANGE)
        _check_int("es", self.es, *POSIT_ES_RANGE)

    @property
    def width(self):
        """Bits of a code: ``n``."""
        return self.n

    @property
    def max_exponent(self):
        """``log2 maxpos = (n - 2) * 2**es`` (and ``log2 minpos`` is its negative)."""
        return (self.n - 2) << self.es

    @property
    def nar_code(self):
        """The code of NaR: ``1 << (n - 1)``."""
        return 1 << (self.n - 1)

    @property
    def name(self):
        """``posit8_es2``."""
        return f"posit{self.n}_es{self.es}"

    def to_dict(self):
        """Return a JSON-ready description."""
        return {"posit_n": self.n, "posit_es": self.es}

    @classmethod
    def from_dict(cls, d):
        """Rebuild an element type from :meth:`to_dict` output."""
        return cls(int(d["posit_n"]), int(d["posit_es"]))


def posit_format(n, es, block_size=16):
    """Return a :class:`BFPFormat` of plain ``posit(n, es)`` elements (numerics.md 7): no
    shared scale (the blocks' exponent is 0), rounded on the encoding, the products of a GEMM
    summed exactly in the quire (``accumulator="exact"``). ``block_size`` only groups the
    elements of a :class:`~hbfp_hw.golden.BFPTensor` (the quire makes it irrelevant to the
    result)."""
    element = Posit(n, es)
    return BFPFormat(element.n, block_size, element=element, accumulator=Accumulator.EXACT)


def minifloat_format(exponent_bits, mantissa_bits, block_size=32, *, special="ieee", bias=None,
                     rounding=Rounding.NEAREST_EVEN, scale_rule=ScaleRule.FLOOR,
                     scale_bits=8):
    """Return a :class:`BFPFormat` with ``ExMy`` minifloat elements under a shared scale.

    ``minifloat_format(4, 3, special="fn")`` is OCP MXFP8 E4M3 (block 32, E8M0 scale).
    ``scale_bits`` is the width of the shared exponent (8: E8M0).
    """
    element = Minifloat(exponent_bits, mantissa_bits, special, bias)
    return BFPFormat(element.width, block_size, rounding, scale_bits, element, scale_rule)


def check_operand_formats(fa, fb):
    """Raise ``ValueError`` unless A's format ``fa`` and B's ``fb`` can meet in a dot product:
    the same block size, shared-exponent width and accumulator (their elements and roundings
    may differ)."""
    if fa == fb:
        return
    if fa.block_size != fb.block_size or fa.exponent_bits != fb.exponent_bits:
        raise ValueError(f"the operands' formats must share the block size and the shared "
                         f"exponent's width, not {fa.name} (block {fa.block_size}, "
                         f"{fa.exponent_bits}-bit exponent) and {fb.name} (block "
                         f"{fb.block_size}, {fb.exponent_bits}-bit exponent)")
    if fa.is_posit != fb.is_posit:
        raise ValueError(f"posit elements meet posit elements only (in the quire), not "
                         f"{fa.name} and {fb.name}")
    if fa.accumulator is not fb.accumulator:
        raise ValueError(f"the operands' formats must have the same accumulator (a GEMM has "
                         f"one), not {fa.name} ({fa.accumulator}) and {fb.name} "
                         f"({fb.accumulator})")


def require_integer_elements(fmt, where):
    """Raise ``ValueError`` if ``fmt`` has minifloat elements, which ``where`` (a phrase such as
    ``"the RTL generators"``) does not implement yet; return ``fmt`` otherwise."""
    if getattr(fmt, "element", None) is not None:
        kind = "posit" if fmt.is_posit else "minifloat"
        raise ValueError(
            f"fmt {fmt.name!r} has {fmt.element.name} {kind} elements, which {where} does "
            f"not implement yet (integer-element formats only: BFP presets and mxint8); the "
            f"golden model and the PyTorch emulation compute it")
    return fmt


#: OCP Microscaling MXINT8: w=8, 32-element blocks, E8M0 scale, nearest-even.
MXINT8 = BFPFormat(8, 32)
#: The project's default format: w=8, 16-element blocks.
BFP8 = BFPFormat(8, 16)

PRESETS = {
    "bfp8": BFP8,
    "mxint8": MXINT8,
    "bfp2": BFPFormat(2, 16),
    "bfp4": BFPFormat(4, 16),
    "bfp6": BFPFormat(6, 16),
    "bfp12": BFPFormat(12, 16),
    "bfp16": BFPFormat(16, 16),
    # OCP Microscaling v1.0: 32-element blocks, E8M0 scale, saturating nearest-even elements.
    "mxfp8_e4m3": minifloat_format(4, 3, special="fn"),       # max 448
    "mxfp8_e5m2": minifloat_format(5, 2, special="ieee"),     # max 57344
    "mxfp6_e3m2": minifloat_format(3, 2, special="none"),     # max 28
    "mxfp6_e2m3": minifloat_format(2, 3, special="none"),     # max 7.5
    "mxfp4_e2m1": minifloat_format(2, 1, special="none"),     # max 6
    # Block Minifloat (Fox et al., ICLR 2021): the paper's 8-bit and 6-bit (e, m) pairs, forward
    # (weights, activations) and backward (gradients); no reserved codes, subnormals, no bias of
    # the element's own (the 8-bit shared exponent is the bias); blocks of 16 along K
    # (docs/numerics.md section 5.5 says why).
    "bm8_e2m5": minifloat_format(2, 5, 16, special="none", bias=0),
    "bm8_e4m3": minifloat_format(4, 3, 16, special="none", bias=0),
    "bm6_e2m3": minifloat_format(2, 3, 16, special="none", bias=0),
    "bm6_e3m2": minifloat_format(3, 2, 16, special="none", bias=0),
    # Plain posits (no shared scale; products summed in the quire): PositNN's posit8 with
    # es 0 and es 2 (the 2022 standard's), and SoftPosit's posit16.
    "posit8_es0": posit_format(8, 0),
    "posit8_es2": posit_format(8, 2),
    "posit16_es1": posit_format(16, 1),
}

DEFAULT_FORMAT = BFP8


def resolve_format(fmt):
    """Turn a preset name (``"bfp8"``, ``"MXINT8"``...; with an accumulator suffix,
    ``"bfp8_bf16sr"``, that preset with that accumulator) or a :class:`BFPFormat` into a
    format.

    Raises
    ------
    TypeError
        If ``fmt`` is neither a string nor a :class:`BFPFormat`.
    ValueError
        If ``fmt`` is an unknown preset name.
    """
    if isinstance(fmt, BFPFormat):
        return fmt
    if isinstance(fmt, str):
        base, accumulator = split_accumulator(fmt)
        if base in PRESETS:
            preset = PRESETS[base]
            return preset if accumulator is Accumulator.FP32 else \
                preset.replace(accumulator=accumulator)
        raise ValueError(f"fmt must be a BFPFormat or one of the presets "
                         f"{', '.join(PRESETS)} (optionally with an accumulator suffix: "
                         f"{', '.join('_' + x for x in ACCUMULATOR_SUFFIXES)}), not {fmt!r}")
    raise TypeError(f"fmt must be a BFPFormat or a preset name, not {fmt!r}")


#: Name suffixes of the accumulators other than FP32 (``"bfp8_bf16sr"``), as
#: :attr:`BFPFormat.name` writes them.
ACCUMULATOR_SUFFIXES = {a.value.replace("-", ""): a for a in Accumulator
                        if a is not Accumulator.FP32}


def split_accumulator(name):
    """``(preset key, Accumulator)`` of a format name: ``"bfp8_exact"`` gives
    ``("bfp8", Accumulator.EXACT)``, ``"bfp8"`` ``("bfp8", Accumulator.FP32)`` (the key is
    lower-cased and not checked)."""
    key = name.strip().lower()
    base, _, suffix = key.rpartition("_")
    if base and suffix in ACCUMULATOR_SUFFIXES:
        return base, ACCUMULATOR_SUFFIXES[suffix]
    return key, Accumulator.FP32

"""Number formats: the one `BFPFormat` object that flows through every layer of hbfp-hw.

The golden model, the RTL generators, the testbenches, the host driver and the PyTorch
integration all take the same frozen :class:`BFPFormat`. Its exact semantics are written down in
``docs/numerics.md``; :mod:`hbfp_hw.golden` is the executable form of that contract.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "Rounding",
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


class Rounding(enum.Enum):
    """Rounding of the aligned element mantissas to ``mantissa_bits``-wide integers."""

    NEAREST_EVEN = "nearest-even"
    TOWARD_ZERO = "toward-zero"
    STOCHASTIC = "stochastic"

    def __str__(self):
        return self.value


class FloatFormat(enum.Enum):
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

    def __str__(self):
        return self.value


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


def as_float_format(value, name="input_format"):
    """Return ``value`` (a FloatFormat or ``"fp32"``/``"bf16"``) as a :class:`FloatFormat`."""
    return _coerce_enum(FloatFormat, name, value)


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

    def __post_init__(self):
        _check_int("mantissa_bits", self.mantissa_bits, *MANTISSA_BITS_RANGE)
        _check_int("block_size", self.block_size, *BLOCK_SIZE_RANGE, power_of_two=True)
        _check_int("exponent_bits", self.exponent_bits, *EXPONENT_BITS_RANGE)
        object.__setattr__(self, "rounding", _coerce_enum(Rounding, "rounding", self.rounding))

    # -- derived constants ------------------------------------------------------------------

    @property
    def max_mantissa(self):
        """Largest mantissa magnitude, ``2**(w-1) - 1`` (the clamp is symmetric)."""
        return (1 << (self.mantissa_bits - 1)) - 1

    @property
    def fraction_bits(self):
        """Number of fractional bits of an element relative to ``2**E``: ``w - 2``."""
        return self.mantissa_bits - 2

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
        """Full width of the exact integer block dot product: ``2w + ceil(log2(block_size))``."""
        return 2 * self.mantissa_bits + (self.block_size - 1).bit_length()

    @property
    def name(self):
        """Short, deterministic name such as ``bfp8`` or ``w6b32_tz``, used for files."""
        for preset_name, preset in PRESETS.items():
            if preset == self:
                return preset_name
        suffix = {Rounding.NEAREST_EVEN: "", Rounding.TOWARD_ZERO: "_tz",
                  Rounding.STOCHASTIC: "_sr"}[self.rounding]
        ebits = "" if self.exponent_bits == 8 else f"e{self.exponent_bits}"
        return f"w{self.mantissa_bits}b{self.block_size}{ebits}{suffix}"

    def replace(self, **changes):
        """Return a copy with the given fields changed (and validated)."""
        fields = dict(mantissa_bits=self.mantissa_bits, block_size=self.block_size,
                      rounding=self.rounding, exponent_bits=self.exponent_bits)
        fields.update(changes)
        return BFPFormat(**fields)

    def to_dict(self):
        """Return a JSON-ready description."""
        return {
            "name": self.name,
            "mantissa_bits": self.mantissa_bits,
            "block_size": self.block_size,
            "rounding": self.rounding.value,
            "exponent_bits": self.exponent_bits,
        }

    @classmethod
    def from_dict(cls, d):
        """Rebuild a format from :meth:`to_dict` output."""
        return cls(int(d["mantissa_bits"]), int(d["block_size"]),
                   d.get("rounding", "nearest-even"), int(d.get("exponent_bits", 8)))


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
}

DEFAULT_FORMAT = BFP8


def resolve_format(fmt):
    """Turn a preset name (``"bfp8"``, ``"MXINT8"``...) or a :class:`BFPFormat` into a format.

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
        key = fmt.strip().lower()
        if key in PRESETS:
            return PRESETS[key]
        raise ValueError(f"fmt must be a BFPFormat or one of the presets "
                         f"{', '.join(sorted(PRESETS))}, not {fmt!r}")
    raise TypeError(f"fmt must be a BFPFormat or a preset name, not {fmt!r}")

"""Bit layouts shared by the generators, the testbenches and the host driver.

Every payload that crosses a stream is described here once, as an ``amaranth.lib.data``
layout built from the one :class:`~hbfp_hw.formats.BFPFormat`. Python code that needs the bits
(cocotb testbenches, the driver) packs and unpacks with :func:`pack` / :func:`unpack`, which
walk the same layout objects, so there is no second description to keep in sync.
"""

from amaranth.hdl import Shape, signed, unsigned
from amaranth.lib import data

from hbfp_hw.formats import BFPFormat, FloatFormat

__all__ = [
    "block_layout",
    "float_vector_layout",
    "product_layout",
    "product_exponent_shape",
    "pack",
    "unpack",
]


def _check_format(fmt):
    if not isinstance(fmt, BFPFormat):
        raise TypeError(f"fmt must be a BFPFormat, not {fmt!r}")


def block_layout(fmt):
    """Layout of one BFP block.

    ``exponent`` is the biased shared-exponent code (``E + bias``; all ones is NaN), and
    ``mantissas`` the ``block_size`` two's-complement elements, element 0 in the low bits; for
    minifloat elements the element codes (sign, exponent field, fraction: unsigned), as
    :meth:`hbfp_hw.golden.BFPTensor.element_codes` gives them.
    """
    _check_format(fmt)
    element = unsigned if fmt.is_minifloat else signed
    return data.StructLayout({
        "exponent": unsigned(fmt.exponent_bits),
        "mantissas": data.ArrayLayout(element(fmt.mantissa_bits), fmt.block_size),
    })


def float_vector_layout(fmt, input_format=FloatFormat.FP32):
    """Layout of ``block_size`` raw IEEE float lanes (FP32 or BF16 bit patterns)."""
    _check_format(fmt)
    input_format = FloatFormat(input_format)
    return data.ArrayLayout(unsigned(input_format.width), fmt.block_size)


def product_exponent_shape(fmt):
    """Signed shape that holds every product exponent ``Ea + Eb - 2(w-2)``."""
    _check_format(fmt)
    largest = 2 * fmt.exponent_bias + 2 * fmt.fraction_bits
    return signed(largest.bit_length() + 1)


def product_layout(fmt):
    """Layout of an exact block dot product: ``value * 2**exponent``, or NaN when ``nan``."""
    _check_format(fmt)
    return data.StructLayout({
        "value": signed(fmt.product_bits),
        "exponent": product_exponent_shape(fmt),
        "nan": unsigned(1),
    })


def _to_field_bits(shape, value):
    shape = Shape.cast(shape)
    value = int(value)
    lo = -(1 << (shape.width - 1)) if shape.signed else 0
    hi = (1 << (shape.width - 1)) - 1 if shape.signed else (1 << shape.width) - 1
    if not lo <= value <= hi:
        raise ValueError(f"value {value} does not fit {shape}")
    return value & ((1 << shape.width) - 1)


def pack(layout, value):
    """Pack a nested dict/list ``value`` into an integer with the bit layout ``layout``.

    Struct layouts take dicts keyed by field name, array layouts take sequences, plain shapes
    take integers (signed shapes accept negative numbers).
    """
    if isinstance(layout, data.StructLayout):
        bits = 0
        for name, field in layout:
            bits |= pack(field.shape, value[name]) << field.offset
        return bits
    if isinstance(layout, data.ArrayLayout):
        if len(value) != layout.length:
            raise ValueError(f"expected {layout.length} elements, got {len(value)}")
        elem_width = Shape.cast(layout.elem_shape).width
        bits = 0
        for i, elem in enumerate(value):
            bits |= pack(layout.elem_shape, elem) << (i * elem_width)
        return bits
    return _to_field_bits(layout, value)


def unpack(layout, bits):
    """Inverse of :func:`pack`: turn an integer into nested dicts/lists of Python ints."""
    bits = int(bits)
    if isinstance(layout, data.StructLayout):
        out = {}
        for name, field in layout:
            width = Shape.cast(field.shape).width
            out[name] = unpack(field.shape, (bits >> field.offset) & ((1 << width) - 1))
        return out
    if isinstance(layout, data.ArrayLayout):
        elem_width = Shape.cast(layout.elem_shape).width
        mask = (1 << elem_width) - 1
        return [unpack(layout.elem_shape, (bits >> (i * elem_width)) & mask)
                for i in range(layout.length)]
    shape = Shape.cast(layout)
    bits &= (1 << shape.width) - 1
    if shape.signed and bits >> (shape.width - 1):
        bits -= 1 << shape.width
    return bits


# -- FP32 units (block_to_float, fp_accumulator, fp32_mac) ----------------------------------------


def _check_channels(channels):
    if isinstance(channels, bool) or not isinstance(channels, int):
        raise TypeError(f"channels must be an integer, not {channels!r}")
    if channels < 1:
        raise ValueError(f"channels must be a positive integer, not {channels!r}")


def channel_shape(channels):
    """Shape of a channel number: ``unsigned(max(1, ceil(log2(channels))))``."""
    _check_channels(channels)
    return unsigned(max(1, (channels - 1).bit_length()))


def fp32_pair_layout():
    """Layout of two FP32 operands (bit patterns) ``{a, b}``, the input of the FP32 adder."""
    return data.StructLayout({"a": unsigned(32), "b": unsigned(32)})


def accumulator_input_layout(channels):
    """Layout of one accumulator term ``{value, channel, first, last}``.

    ``value`` is an FP32 bit pattern; ``first`` starts a new sum of ``channel`` at +0.0 and
    ``last`` completes it after this term.
    """
    return data.StructLayout({
        "value": unsigned(32),
        "channel": channel_shape(channels),
        "first": unsigned(1),
        "last": unsigned(1),
    })


def accumulator_output_layout(channels):
    """Layout of one completed sum ``{value, channel}`` (``value`` an FP32 bit pattern)."""
    return data.StructLayout({
        "value": unsigned(32),
        "channel": channel_shape(channels),
    })


def mac_input_layout(channels):
    """Layout of one FP32 multiply-accumulate term ``{a, b, channel, first, last}``."""
    return data.StructLayout({
        "a": unsigned(32),
        "b": unsigned(32),
        "channel": channel_shape(channels),
        "first": unsigned(1),
        "last": unsigned(1),
    })


__all__ += [
    "channel_shape",
    "fp32_pair_layout",
    "accumulator_input_layout",
    "accumulator_output_layout",
    "mac_input_layout",
]


def block_pair_layout(fmt):
    """Layout of the two operand blocks ``a`` and ``b`` of one block dot product."""
    _check_format(fmt)
    return data.StructLayout({"a": block_layout(fmt), "b": block_layout(fmt)})


__all__ += ["block_pair_layout"]

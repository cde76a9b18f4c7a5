"""Helpers shared by the generators: parameter checks and staged pipeline registers."""

from amaranth.hdl import Signal, Value

from hbfp_hw.formats import BFPFormat

__all__ = ["RTL_BLOCK_SIZE_RANGE", "check_stages", "check_rtl_format", "Pipeline"]

RTL_BLOCK_SIZE_RANGE = (2, 64)


def check_stages(name, value, maximum, minimum=0):
    """Validate an integer hardware parameter (a pipeline depth, a count) and return it.

    Raises
    ------
    TypeError
        If ``value`` is not an integer.
    ValueError
        If ``value`` is outside ``minimum..maximum``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if not minimum <= value <= maximum:
        raise ValueError(f"{name} must be between {minimum} and {maximum}, not {value!r}")
    return value


def check_rtl_format(fmt):
    """Validate that ``fmt`` is a :class:`BFPFormat` the RTL generators support.

    Raises
    ------
    TypeError
        If ``fmt`` is not a :class:`BFPFormat`.
    ValueError
        If its block size is outside the RTL range (a power of two from 2 to 64).
    """
    if not isinstance(fmt, BFPFormat):
        raise TypeError(f"fmt must be a BFPFormat, not {fmt!r}")
    lo, hi = RTL_BLOCK_SIZE_RANGE
    if not lo <= fmt.block_size <= hi:
        raise ValueError(f"block_size must be a power of two between {lo} and {hi} for the RTL, "
                         f"not {fmt.block_size!r}")
    return fmt


class Pipeline:
    """Optional pipeline registers, all advanced by one global enable.

    Each :meth:`cut` either passes its values through (no register at that point) or registers
    them, together with a valid bit, while ``enable`` is high. Values may be signals or lists
    of signals.
    """

    def __init__(self, m, enable, valid):
        self.m = m
        self.enable = enable
        self.valid = valid

    def cut(self, name, values, register):
        if not register:
            return values
        out = {}
        with self.m.If(self.enable):
            for key, value in values.items():
                if isinstance(value, list):
                    regs = [Signal(Value.cast(v).shape(), name=f"{name}_{key}{i}")
                            for i, v in enumerate(value)]
                    self.m.d.sync += [r.eq(v) for r, v in zip(regs, value, strict=True)]
                    out[key] = regs
                else:
                    reg = Signal(Value.cast(value).shape(), name=f"{name}_{key}")
                    self.m.d.sync += reg.eq(value)
                    out[key] = reg
            valid = Signal(name=f"{name}_valid")
            self.m.d.sync += valid.eq(self.valid)
        self.valid = valid
        return out

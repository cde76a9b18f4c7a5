"""Plain FP32 multiply-accumulate unit: the baseline that BFP hardware is compared with.

:class:`Fp32MacBaseline` computes, per channel, ``acc = fp32_add(acc, RNE_fp32(a * b))``: a
non-fused multiply-add. The product is rounded to FP32 (round-to-nearest-even, subnormals,
overflow to ±Inf, canonical NaN for NaN operands and for ``Inf * 0``), then added with the
same :class:`~hbfp_hw.rtl_gen.fp_accumulator.FPAccumulator` that accumulates the BFP block
products, so the two designs differ only in how their terms are made.
"""

from amaranth.hdl import Const, Module, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .block_to_float import (
    build_pipeline,
    check_stages,
    comb_signal,
    compact_steps,
    fp32_round_steps,
    normalize_shift,
)
from .fp_accumulator import MAX_CHANNELS, FPAccumulator, fp32_unpack
from .layout import accumulator_output_layout, mac_input_layout

__all__ = ["Fp32MacBaseline", "fp32_mul_steps", "multiply_exponent", "MULTIPLIER_STEPS"]


def fp32_mul_steps(*, name="mul", multiply=None, compact=False, classify=False):
    """Return the steps of the FP32 multiplier: keys ``a`` and ``b`` in, key ``bits`` out.

    ``multiply(m, name, x, y)``, if given, returns the 48-bit product of the significands
    (e.g. :func:`~hbfp_hw.rtl_gen.mac_tree.lut_multiply`); by default it is ``x * y``.

    Steps: unpack and classify, normalize the 24-bit significands (a subnormal operand's
    leading one to bit 23, its exponent lowered by as much; the shifts by 16 and 8 with the
    unpacking, those by 4, 2 and 1 in a step of their own), multiply them exactly (48 bits,
    the leading one of a non-zero product at bit 46 or 47), then the rounding steps of
    :func:`~hbfp_hw.rtl_gen.block_to_float.fp32_round_steps` with a one-level normalizing
    shift. Normalizing the operands, not the product, makes the widest shift 24 bits wide
    and puts it before the multiplier: the product's 48-bit shift after the DSP blocks was
    the FP32 twin's critical path.

    With ``classify``, the unpacking is two steps: the fields and classes of each operand
    (:func:`~hbfp_hw.rtl_gen.fp_accumulator.fp32_unpack`), then the first shifts and the
    product's classes.
    """

    lzc_bits = 5                        # a zero significand counts 31

    unpacked = ("sign", "eff", "sig", "zero", "inf", "nan")

    def fields(m, v):
        return {f"{key}_{f}": x[f] for key in ("a", "b")
                for x in [fp32_unpack(m, f"{name}_{key}", v[key])] for f in unpacked}

    def unpack(m, v):
        if not classify:
            v = fields(m, v)
        out = {}
        for key in ("a", "b"):
            x = {f: v[f"{key}_{f}"] for f in unpacked}
            out[f"sig{key}"], out[f"lz{key}"] = normalize_shift(
                m, f"{name}_{key}", x["sig"], Const(0, lzc_bits), (4, 3))
            out[f"eff{key}"] = x["eff"]
            out[key] = x
        a, b = out.pop("a"), out.pop("b")
        return {
            **out,
            "sign": comb_signal(m, f"{name}_sign", 1, a["sign"] ^ b["sign"]),
            "nan": comb_signal(m, f"{name}_isnan", 1,
                         a["nan"] | b["nan"] | (a["inf"] & b["zero"]) | (a["zero"] & b["inf"])),
            "inf": comb_signal(m, f"{name}_isinf", 1, a["inf"] | b["inf"]),
        }

    def normalize(m, v):
        out = {k: v[k] for k in ("sign", "nan", "inf")}
        for key in ("a", "b"):
            out[f"sig{key}"], out[f"lz{key}"] = normalize_shift(
                m, f"{name}_{key}", v[f"sig{key}"], v[f"lz{key}"], (2, 1, 0))
        # The exponents' sum, beside the shifts' last levels: the sum of the counts after
        # them was the FP32 1x1 PE's critical path. Its rest comes with the multiply.
        out["effs"] = comb_signal(m, f"{name}_effs", signed(11),
                                  v["effa"] + v["effb"] - 2 * (127 + 23))
        return out

    mul = multiply

    def multiply(m, v):
        return {
            "sign": v["sign"], "nan": v["nan"], "inf": v["inf"],
            "exp": multiply_exponent(m, name, v),
            "mag": comb_signal(m, f"{name}_prod", unsigned(48),
                               v["siga"] * v["sigb"] if mul is None
                               else mul(m, f"{name}_lut", v["siga"], v["sigb"])),
        }

    return [*([fields] if classify else []), unpack, normalize, multiply,
            *fp32_round_steps(48, signed(11), name=f"{name}_r", compact=compact,
                              normalize_steps=1, lead_zeros=1)]


def multiply_exponent(m, name, v):
    """The exponent of the normalized significands' product (the multiplier's normalizing
    step gives ``effs``, ``lza`` and ``lzb``):
    ``value = siga * sigb * 2**(effa - lza + effb - lzb - 2 * (bias + 23))``."""
    return comb_signal(m, f"{name}_exp", signed(11), v["effs"] - v["lza"] - v["lzb"])


#: Number of combinational steps of the FP32 multiplier, hence its largest number of stages.
MULTIPLIER_STEPS = len(fp32_mul_steps())


class Fp32MacBaseline(wiring.Component):
    """Per-channel FP32 multiply-accumulate, non-fused, for hardware-cost comparisons.

    An input transfer carries two FP32 operands and the same channel/``first``/``last``
    controls as :class:`~hbfp_hw.rtl_gen.fp_accumulator.FPAccumulator`. The product is
    rounded to FP32 by a pipelined multiplier (``mul_stages`` register stages out of 8 steps)
    and fed to an ``FPAccumulator(channels=channels, adder_stages=adder_stages)``; a completed
    sum ``fp32_add(...fp32_add(+0.0, a0*b0)..., an*bn)`` leaves on ``o_stream``. The whole unit
    honours backpressure and accepts one term per cycle when at least :attr:`min_channels`
    channels interleave.

    Parameters
    ----------
    channels : int
        Number of channels (running sums), ``1..4096``.
    mul_stages : int
        Register stages of the multiplier, ``0..8``.
    adder_stages : int
        Register stages of the accumulating adder, ``1..11``.

    Members
    -------
    i_stream : ``In(stream.Signature(mac_input_layout(channels)))``
        Terms ``{a: unsigned(32), b: unsigned(32), channel, first: 1, last: 1}``.
    o_stream : ``Out(stream.Signature(accumulator_output_layout(channels)))``
        Completed sums ``{value: unsigned(32), channel}``.

    Raises
    ------
    TypeError
        If a parameter is not an integer.
    ValueError
        If a parameter is out of range.
    """

    MAX_MUL_STAGES = MULTIPLIER_STEPS

    def __init__(self, *, channels, mul_stages=3, adder_stages=3):
        self._channels = check_stages("channels", channels, MAX_CHANNELS, 1)
        self._mul_stages = check_stages("mul_stages", mul_stages, self.MAX_MUL_STAGES)
        self._adder_stages = check_stages("adder_stages", adder_stages,
                                          FPAccumulator.MAX_ADDER_STAGES, 1)
        super().__init__({
            "i_stream": In(stream.Signature(mac_input_layout(channels))),
            "o_stream": Out(stream.Signature(accumulator_output_layout(channels))),
        })

    @property
    def channels(self):
        """Number of channels."""
        return self._channels

    @property
    def mul_stages(self):
        """Register stages of the multiplier."""
        return self._mul_stages

    @property
    def adder_stages(self):
        """Register stages of the accumulating adder."""
        return self._adder_stages

    @property
    def latency(self):
        """Cycles from an accepted ``last`` term to its sum: ``mul_stages + adder_stages``."""
        return self._mul_stages + self._adder_stages

    @property
    def throughput(self):
        """Terms per cycle when at least :attr:`min_channels` channels interleave: 1."""
        return 1

    @property
    def min_channels(self):
        """Fewest round-robin channels that give one term per cycle: ``adder_stages``."""
        return self._adder_stages

    def elaborate(self, platform):
        m = Module()
        m.submodules.acc = acc = FPAccumulator(channels=self._channels,
                                               adder_stages=self._adder_stages)
        i_p = self.i_stream.payload
        enable = Signal()
        outputs, out_valid, out_carry, _ = build_pipeline(
            m, fp32_mul_steps(compact=compact_steps(platform)), stages=self._mul_stages,
            enable=enable, name="mul",
            inputs={"a": i_p.a, "b": i_p.b},
            carry={"channel": i_p.channel, "first": i_p.first, "last": i_p.last},
            valid=self.i_stream.valid)
        m.d.comb += [
            acc.i_stream.payload.value.eq(outputs["bits"]),
            acc.i_stream.payload.channel.eq(out_carry["channel"]),
            acc.i_stream.payload.first.eq(out_carry["first"]),
            acc.i_stream.payload.last.eq(out_carry["last"]),
            acc.i_stream.valid.eq(out_valid),
        ]
        if self._mul_stages == 0:
            m.d.comb += self.i_stream.ready.eq(acc.i_stream.ready)
        else:
            m.d.comb += [
                enable.eq(~out_valid | acc.i_stream.ready),
                self.i_stream.ready.eq(enable),
            ]
        wiring.connect(m, acc.o_stream, wiring.flipped(self.o_stream))
        return m

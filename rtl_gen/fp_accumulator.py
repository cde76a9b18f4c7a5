"""IEEE FP32 adder and a multi-channel FP32 accumulator built on it.

:class:`FP32Adder` adds two FP32 numbers exactly as ``docs/numerics.md`` section 3.2 says:
round-to-nearest-even, gradual underflow (no flush-to-zero), infinities, ``Inf - Inf`` and every
NaN input give the canonical NaN ``0x7FC00000``, ``x + (-x) = +0``, ``(-0) + (-0) = -0``.

:class:`FPAccumulator` keeps one running FP32 sum per channel and adds incoming terms in arrival
order, which is the accumulation of section 3.3: every sum starts from +0.0.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .block_to_float import (
    build_pipeline,
    check_stages,
    comb_signal,
    compact_steps,
    fp32_round_steps,
    shift_right_sticky,
)
from .layout import accumulator_input_layout, accumulator_output_layout, fp32_pair_layout

__all__ = [
    "FP32Adder",
    "FPAccumulator",
    "fp32_add_steps",
    "fp32_unpack",
    "ADDER_STEPS",
    "MAX_CHANNELS",
]

#: Largest number of accumulator channels.
MAX_CHANNELS = 4096

# Extra low-order bits of the aligned significands: guard, round and sticky.
_EXTRA = 3
# Where the adder's magnitude comparison splits the low 31 bits of the operands.
_HALF = 16


def fp32_unpack(m, name, bits):
    """Split FP32 ``bits`` into fields and classify the value.

    Returns a dict with ``sign``, ``efield`` (biased exponent field), ``eff`` (effective biased
    exponent: 1 for subnormals), ``sig`` (24-bit significand with the hidden bit), ``zero``,
    ``inf`` and ``nan``.
    """
    efield = bits[23:31]
    frac = bits[:23]
    return {
        "sign": bits[31],
        "efield": efield,
        "eff": comb_signal(m, f"{name}_eff", unsigned(8), Mux(efield == 0, 1, efield)),
        "sig": comb_signal(m, f"{name}_sig", unsigned(24), Cat(frac, efield != 0)),
        "zero": comb_signal(m, f"{name}_zero", 1, bits[:31] == 0),
        "inf": comb_signal(m, f"{name}_inf", 1, (efield == 0xFF) & (frac == 0)),
        "nan": comb_signal(m, f"{name}_nan", 1, (efield == 0xFF) & (frac != 0)),
    }


def fp32_add_steps(*, name="add", compact=False):
    """Return the steps of the FP32 adder: keys ``a`` and ``b`` in, key ``bits`` out.

    Steps: unpack and compare magnitudes, order the operands, align the smaller operand
    (guard, round and sticky bits, in two steps), add or subtract, then the six rounding steps
    of :func:`fp32_round_steps`. The
    sticky bit is ORed into the LSB of the aligned operand; since the rounding position is
    always at least two bits above it whenever a bit was shifted out, the rounded result is
    the same as that of the exact sum.
    """
    sig_ext = 24 + _EXTRA

    def classify(m, v):
        a = fp32_unpack(m, f"{name}_a", v["a"])
        b = fp32_unpack(m, f"{name}_b", v["b"])
        # The magnitudes of IEEE numbers are ordered like their low 31 bits as integers. The
        # comparison is split in two halves (two short carry chains side by side), joined by
        # the next step: a 31-bit chain after the running-sum multiplexer was the critical
        # path of the accumulator on the ECP5.
        return {
            "gt_hi": comb_signal(m, f"{name}_gt_hi", 1, v["b"][_HALF:31] > v["a"][_HALF:31]),
            "eq_hi": comb_signal(m, f"{name}_eq_hi", 1, v["b"][_HALF:31] == v["a"][_HALF:31]),
            "gt_lo": comb_signal(m, f"{name}_gt_lo", 1, v["b"][:_HALF] > v["a"][:_HALF]),
            # Both orders of the exponent difference, beside the comparison.
            "dab": comb_signal(m, f"{name}_dab", unsigned(8), a["eff"] - b["eff"]),
            "dba": comb_signal(m, f"{name}_dba", unsigned(8), b["eff"] - a["eff"]),
            "asign": a["sign"], "bsign": b["sign"], "aeff": a["eff"], "beff": b["eff"],
            "asig": a["sig"], "bsig": b["sig"],
            "zsign": comb_signal(m, f"{name}_zsign", 1, a["sign"] & b["sign"]),
            "sub": comb_signal(m, f"{name}_sub", 1, a["sign"] ^ b["sign"]),
            "nan": comb_signal(m, f"{name}_isnan", 1,
                         a["nan"] | b["nan"] | (a["inf"] & b["inf"] & (a["sign"] ^ b["sign"]))),
            "inf": comb_signal(m, f"{name}_isinf", 1, a["inf"] | b["inf"]),
        }

    def order(m, v):
        swap = comb_signal(m, f"{name}_swap", 1, v["gt_hi"] | (v["eq_hi"] & v["gt_lo"]))
        diff = Mux(swap, v["dba"], v["dab"])
        shift_bits = sig_ext.bit_length()
        return {
            "sign": comb_signal(m, f"{name}_sign", 1, Mux(swap, v["bsign"], v["asign"])),
            "zsign": v["zsign"], "sub": v["sub"], "nan": v["nan"], "inf": v["inf"],
            "ebig": comb_signal(m, f"{name}_ebig", unsigned(8), Mux(swap, v["beff"], v["aeff"])),
            "sbig": comb_signal(m, f"{name}_sbig", unsigned(24), Mux(swap, v["bsig"], v["asig"])),
            "ssmall": comb_signal(m, f"{name}_ssmall", unsigned(24),
                                  Mux(swap, v["asig"], v["bsig"])),
            "shift": comb_signal(m, f"{name}_shift", unsigned(shift_bits),
                           Mux(diff >= sig_ext, sig_ext, diff)),
        }

    def align_low(m, v):
        small, sticky = shift_right_sticky(m, f"{name}_al",
                                           Cat(Const(0, _EXTRA), v["ssmall"]), v["shift"],
                                           bits=range(2))
        out = dict(v, small=small, sticky=sticky)
        del out["ssmall"]
        return out

    def align(m, v):
        small, sticky = shift_right_sticky(m, f"{name}_al", v["small"], v["shift"],
                                           bits=range(2, len(v["shift"])), sticky=v["sticky"])
        out = {k: v[k] for k in ("sign", "zsign", "sub", "ebig", "nan", "inf")}
        out["big"] = comb_signal(m, f"{name}_bigx", unsigned(sig_ext),
                                 Cat(Const(0, _EXTRA), v["sbig"]))
        out["small"] = comb_signal(m, f"{name}_smallx", unsigned(sig_ext), small | sticky)
        return out

    def add(m, v):
        total = comb_signal(m, f"{name}_sum", unsigned(sig_ext + 1),
                      Mux(v["sub"], v["big"] - v["small"], v["big"] + v["small"]))
        # The sum is exactly zero when equal magnitudes cancel or both are zero: decided from
        # the operands beside the carry chain, not from its result (``total == 0`` after the
        # chain was the critical path of the systolic PEs on the ECP5); compact: from it.
        if compact:
            zero = total == 0
        else:
            zero = comb_signal(m, f"{name}_zero", 1, Mux(v["sub"], v["big"] == v["small"],
                                                        (v["big"] | v["small"]) == 0))
        return {
            # An exact zero is +0 unless both operands are -0 (IEEE, round to nearest).
            "sign": comb_signal(m, f"{name}_rsign", 1, Mux(zero, v["zsign"], v["sign"])),
            "mag": total,
            # value = total * 2**(ebig - bias - 23 - EXTRA)
            "exp": comb_signal(m, f"{name}_exp", signed(10), v["ebig"] - (127 + 23 + _EXTRA)),
            "nan": v["nan"], "inf": v["inf"],
        }

    return [classify, order, align_low, align, add,
            *fp32_round_steps(sig_ext + 1, signed(10), name=f"{name}_r", compact=compact)]


#: Number of combinational steps of the FP32 adder, hence its largest number of stages.
ADDER_STEPS = len(fp32_add_steps())


class FP32Adder(wiring.Component):
    """Pipelined IEEE 754 binary32 adder (``docs/numerics.md`` section 3.2).

    Round-to-nearest-even with gradual underflow; ``±Inf + finite = ±Inf``, ``Inf + (-Inf)``
    and any NaN operand give the canonical NaN ``0x7FC00000``; ``x + (-x) = +0``,
    ``(-0) + (-0) = -0``; overflow gives ±Inf.

    The adder is a chain of :data:`ADDER_STEPS` (11) combinational steps (compare, order
    operands, align in two steps, add, normalize in two steps, exponent, denormalize in two
    steps, round); ``stages`` of them are followed by a
    register. It accepts one transfer per cycle while ``o_stream.ready`` is 1 and stalls as a
    whole while its output is not accepted.

    Parameters
    ----------
    stages : int
        Number of register stages, ``0..11``; 0 gives a combinational adder.

    Members
    -------
    i_stream : ``In(stream.Signature(fp32_pair_layout()))``
        Operand pairs ``{a: unsigned(32), b: unsigned(32)}`` (FP32 bit patterns).
    o_stream : ``Out(stream.Signature(unsigned(32)))``
        Sums ``a + b`` (FP32 bit patterns), in input order.

    Raises
    ------
    TypeError
        If ``stages`` is not an integer.
    ValueError
        If ``stages`` is out of range.
    """

    MAX_STAGES = ADDER_STEPS

    def __init__(self, *, stages=3):
        self._stages = check_stages("stages", stages, self.MAX_STAGES)
        super().__init__({
            "i_stream": In(stream.Signature(fp32_pair_layout())),
            "o_stream": Out(stream.Signature(unsigned(32))),
        })

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
        enable = Signal()
        outputs, out_valid, _, _ = build_pipeline(
            m, fp32_add_steps(compact=compact_steps(platform)), stages=self._stages,
            enable=enable, name="add",
            inputs={"a": self.i_stream.payload.a, "b": self.i_stream.payload.b},
            valid=self.i_stream.valid)
        m.d.comb += [
            self.o_stream.payload.eq(outputs["bits"]),
            self.o_stream.valid.eq(out_valid),
        ]
        if self._stages == 0:
            m.d.comb += self.i_stream.ready.eq(self.o_stream.ready)
        else:
            m.d.comb += [
                enable.eq(~self.o_stream.valid | self.o_stream.ready),
                self.i_stream.ready.eq(enable),
            ]
        return m


class FPAccumulator(wiring.Component):
    """Per-channel sequential FP32 accumulation (``docs/numerics.md`` section 3.3).

    Every channel holds one running FP32 sum in a small memory. An input transfer carries one
    term for one channel. ``first`` starts a new sum at +0.0 (the term is *added* to +0.0, so
    a first term of -0.0 gives +0.0); otherwise the term is added to the channel's running
    sum. Terms of one channel are added in arrival order. ``last`` marks the final term of a
    sum: after adding it the sum is sent on ``o_stream`` (a term may be both ``first`` and
    ``last``). Channels are independent and their terms may be interleaved in any order.

    The adder is pipelined with ``adder_stages`` register stages, so a sum is ready
    ``adder_stages`` cycles after its term was accepted; the result of the last stage is
    forwarded to a term of the same channel entering in that cycle. A term whose channel still
    has an addition in the earlier stages waits (``i_stream.ready`` is 0: read-after-write
    hazard). The unit accepts one term per cycle when consecutive terms of one channel are at
    least :attr:`min_channels` transfers apart, for example when at least that many channels
    are interleaved round-robin; a single channel fed back to back runs at
    ``1 / adder_stages`` terms per cycle, with the same results.

    Parameters
    ----------
    channels : int
        Number of channels (running sums), ``1..4096``. Terms must use channels below it.
    adder_stages : int
        Register stages of the adder, ``1..11``.

    Members
    -------
    i_stream : ``In(stream.Signature(accumulator_input_layout(channels)))``
        Terms ``{value: unsigned(32), channel, first: 1, last: 1}``.
    o_stream : ``Out(stream.Signature(accumulator_output_layout(channels)))``
        Completed sums ``{value: unsigned(32), channel}``, in the order of their last terms.

    Raises
    ------
    TypeError
        If a parameter is not an integer.
    ValueError
        If a parameter is out of range.
    """

    MAX_ADDER_STAGES = ADDER_STEPS

    def __init__(self, *, channels, adder_stages=3):
        self._channels = check_stages("channels", channels, MAX_CHANNELS, 1)
        self._adder_stages = check_stages("adder_stages", adder_stages, self.MAX_ADDER_STAGES, 1)
        super().__init__({
            "i_stream": In(stream.Signature(accumulator_input_layout(channels))),
            "o_stream": Out(stream.Signature(accumulator_output_layout(channels))),
        })

    @property
    def channels(self):
        """Number of channels."""
        return self._channels

    @property
    def adder_stages(self):
        """Register stages of the adder."""
        return self._adder_stages

    @property
    def latency(self):
        """Cycles from an accepted ``last`` term to its sum being valid: ``adder_stages``."""
        return self._adder_stages

    @property
    def throughput(self):
        """Terms per cycle when at least :attr:`min_channels` channels interleave: 1."""
        return 1

    @property
    def min_channels(self):
        """Fewest round-robin channels that give one term per cycle: ``adder_stages``."""
        return self._adder_stages

    def _sum_slots(self):
        """Return the number of partial sums the memory holds: one per channel."""
        return self._channels

    def _term_slot(self, m, i_p, accept):
        """Return ``(slot, fresh)`` for the incoming term ``i_p``: the memory word of the
        partial sum it is added to, and whether it starts that sum at +0.0.

        The contract fixes the order of the FP32 additions: one sequential sum per channel,
        so the slot is the channel and a sum starts at its ``first`` term. ``accept`` is high
        when the term enters the adder.
        """
        fresh = Signal()           # the term starts its partial sum at +0.0
        m.d.comb += fresh.eq(i_p.first)
        return i_p.channel, fresh

    def _result(self, m, sums, out_bits, out_carry):
        """Return the sum reported when a channel's last term leaves the adder with partial sum
        ``out_bits``: that partial sum (``sums`` is the partial-sum memory, ``out_carry`` what
        the adder carries along with the term)."""
        return out_bits

    def elaborate(self, platform):
        m = Module()
        i_p = self.i_stream.payload
        o_p = self.o_stream.payload

        m.submodules.sums = sums = Memory(shape=unsigned(32), depth=self._sum_slots(), init=[])
        rd = sums.read_port(domain="comb")
        wr = sums.write_port()

        enable = Signal()
        accept = Signal()
        operand = Signal(32)
        slot, fresh = self._term_slot(m, i_p, accept)
        outputs, out_valid, out_carry, registered = build_pipeline(
            m, fp32_add_steps(compact=compact_steps(platform)), stages=self._adder_stages,
            enable=enable, name="acc",
            inputs={"a": operand, "b": i_p.value},
            carry={"channel": i_p.channel, "last": i_p.last, "slot": slot,
                   "single": i_p.first & i_p.last},
            valid=accept)
        out_bits = outputs["bits"]
        out_channel = out_carry["channel"]

        # The last stage writes its sum back this cycle (when the pipeline moves); a term of
        # the same channel entering now takes the sum from there instead of the memory.
        forward = comb_signal(m, "acc_forward", 1, out_valid & (out_carry["slot"] == slot))
        hazard = Const(0, 1)
        for valid, carry in registered[:-1]:
            hazard = hazard | (valid & (carry["channel"] == i_p.channel))
        hazard = comb_signal(m, "acc_hazard", 1, hazard & ~i_p.first)

        result = self._result(m, sums, out_bits, out_carry)

        m.d.comb += [
            rd.addr.eq(slot),
            operand.eq(Mux(fresh, 0, Mux(forward, out_bits, rd.data))),
            enable.eq(~self.o_stream.valid | self.o_stream.ready),
            self.i_stream.ready.eq(enable & ~hazard),
            accept.eq(self.i_stream.valid & self.i_stream.ready),
            wr.addr.eq(out_carry["slot"]),
            wr.data.eq(out_bits),
            wr.en.eq(out_valid & enable),
            o_p.value.eq(result),
            o_p.channel.eq(out_channel),
            self.o_stream.valid.eq(out_valid & out_carry["last"]),
        ]
        return m

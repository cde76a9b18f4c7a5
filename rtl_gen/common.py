"""Helpers shared by the generators: parameter checks, the registers of a free-running
pipeline and its credit-counted output."""

from amaranth.hdl import (
    ClockSignal,
    Const,
    Instance,
    Mux,
    Signal,
    Value,
    signed,
    unsigned,
)
from amaranth.lib.fifo import SyncFIFO

from hbfp_hw.formats import Accumulator, BFPFormat, require_integer_elements

__all__ = ["RTL_BLOCK_SIZE_RANGE", "check_stages", "check_rtl_format", "Pipeline",
           "CreditOutput", "TargetFamily", "platform_family", "ECP5_DSP_WIDTH",
           "ecp5_multiply", "ecp5_flip_flop", "registered_multiply"]

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


def check_rtl_format(fmt, *, minifloat=False):
    """Validate that ``fmt`` is a :class:`BFPFormat` the RTL generators support.

    ``minifloat``: the caller (the block product) also takes minifloat elements; the other
    units take integer elements only so far.

    Raises
    ------
    TypeError
        If ``fmt`` is not a :class:`BFPFormat`.
    ValueError
        If its block size is outside the RTL range (a power of two from 2 to 64), it has
        minifloat elements and the caller does not take them, or its accumulator is not
        FP32.
    """
    if not isinstance(fmt, BFPFormat):
        raise TypeError(f"fmt must be a BFPFormat, not {fmt!r}")
    if not minifloat or fmt.is_posit:
        require_integer_elements(fmt, "this RTL unit")
    if fmt.accumulator is not Accumulator.FP32:
        raise ValueError(f"fmt {fmt.name!r} accumulates in {fmt.accumulator}, which the RTL "
                         f"does not implement yet (accumulator 'fp32' only); the golden model "
                         f"and the PyTorch emulation compute it")
    lo, hi = RTL_BLOCK_SIZE_RANGE
    if not lo <= fmt.block_size <= hi:
        raise ValueError(f"block_size must be a power of two between {lo} and {hi} for the RTL, "
                         f"not {fmt.block_size!r}")
    return fmt


class TargetFamily:
    """A stand-in elaboration platform for out-of-context Verilog of one FPGA family.

    ``verilog.convert(unit, platform=TargetFamily("ecp5"))`` elaborates the generators as a
    board build for that family would (see :func:`platform_family`) without a board: the
    design-space sweep synthesizes units this way. It provides nothing else, so the library's
    own cells (memories, FIFOs) elaborate as they do without a platform.
    """

    def __init__(self, family):
        self.family = family

    def __repr__(self):
        return f"TargetFamily({self.family!r})"


def platform_family(platform):
    """Return the FPGA family of an elaboration ``platform`` in lower case (Amaranth's Lattice
    platforms say ``"ecp5"`` and ``"iCE40"``), or None without a platform or for one that does
    not say."""
    family = getattr(platform, "family", None)
    return family.lower() if isinstance(family, str) else None


#: Operand width of an ECP5 ``MULT18X18D``.
ECP5_DSP_WIDTH = 18


def ecp5_multiply(m, name, a, b, *, is_signed, input_register, output_register):
    """Return ``a * b`` from an ECP5 ``MULT18X18D`` added to ``m`` as submodule ``name``.

    ``a`` and ``b`` are at most 18 bits wide, two's complement if ``is_signed`` (sign-extended
    to the DSP's width), else unsigned (zero-extended). The DSP's input registers (A and B) and
    its output register hold the pipeline registers asked for, on the ``sync`` clock, always
    enabled and never reset: Yosys does not pack fabric flip-flops into ECP5 DSPs, so this is
    how a multiplier between two registers times register to register inside the DSP block.
    ``hbfp_hw.sim.models`` simulates the primitive.
    """
    wa, wb = len(a), len(b)
    if max(wa, wb) > ECP5_DSP_WIDTH:
        raise ValueError(f"operands must be at most {ECP5_DSP_WIDTH} bits wide, not {wa} "
                         f"and {wb}")
    ports = {"i_SIGNEDA": Const(int(is_signed)), "i_SIGNEDB": Const(int(is_signed)),
             "i_SOURCEA": Const(0), "i_SOURCEB": Const(0), "i_CLK0": ClockSignal("sync"),
             "i_CE0": Const(1), "i_RST0": Const(0)}
    for port, value in (("A", a), ("B", b)):
        for i in range(ECP5_DSP_WIDTH):
            if i < len(value):
                ports[f"i_{port}{i}"] = value[i]
            else:                                   # sign- or zero-extended
                ports[f"i_{port}{i}"] = value[-1] if is_signed else Const(0)
    for i in range(ECP5_DSP_WIDTH):
        ports[f"i_C{i}"] = Const(0)
    product = Signal((signed if is_signed else unsigned)(wa + wb), name=f"{name}_p")
    for i in range(wa + wb):
        ports[f"o_P{i}"] = product[i]
    clock = {True: "CLK0", False: "NONE"}
    m.submodules[name] = Instance(
        "MULT18X18D",
        p_REG_INPUTA_CLK=clock[input_register], p_REG_INPUTB_CLK=clock[input_register],
        p_REG_OUTPUT_CLK=clock[output_register], **ports)
    return product


def ecp5_flip_flop(m, name, d):
    """Return a register of ``d`` (one bit, on the ``sync`` clock, initially 0, never reset)
    that is an ECP5 ``TRELLIS_FF`` added to ``m`` as submodule ``name``.

    Yosys merges flip-flops of its own with the same input into one; it leaves instantiated
    primitives alone (and this one is marked ``keep``). So several of these with the same
    ``d`` stay several registers, which nextpnr places apart, each near the logic it drives:
    the way to fan one control bit out to logic spread over many DSP sites without one long
    net. ``hbfp_hw.sim.models`` simulates the primitive.
    """
    q = Signal(name=f"{name}_q")
    m.submodules[name] = Instance(
        "TRELLIS_FF", a_keep=1,
        p_GSR="DISABLED", p_CEMUX="1", p_CLKMUX="CLK", p_LSRMUX="LSR", p_REGSET="RESET",
        p_SRMODE="LSR_OVER_CE",
        i_CLK=ClockSignal("sync"), i_LSR=Const(0), i_DI=d, o_Q=q)
    return q


def registered_multiply(m, platform, name, a, b, *, is_signed=False):
    """Return a register that holds ``a * b`` at most two cycles after the operands.

    On the ECP5 (see :func:`platform_family`), with operands of at most 18 bits, the operands
    and the product are registered in a ``MULT18X18D`` (:func:`ecp5_multiply`): two cycles.
    Anywhere else only the product is registered (one cycle; on the iCE40 every extra
    flip-flop is a logic cell). Callers wait two cycles with the operands held.
    """
    if platform_family(platform) == "ecp5" and max(len(a), len(b)) <= ECP5_DSP_WIDTH:
        return ecp5_multiply(m, name, a, b, is_signed=is_signed, input_register=True,
                             output_register=True)
    shape = signed if is_signed else unsigned
    product = Signal(shape(len(a) + len(b)), name=f"{name}_p", reset_less=True)
    m.d.sync += product.eq(a * b)
    return product


class Pipeline:
    """Optional registers of a free-running pipeline (they load every cycle; back-pressure is
    taken by a :class:`CreditOutput`).

    Each :meth:`cut` either passes its values through (no register at that point) or registers
    them, together with a valid bit. Values may be signals or lists of signals.

    Only the valid bits are reset. The data registers are ``reset_less``: what they hold
    without a valid bit is never used, and a reset reaching thousands of data flip-flops is a
    high-fanout net that limits the clock (in the out-of-context sweep it was once the critical
    path of the bfp8 unit, routing from the reset register: docs/history.md has the figures).
    """

    def __init__(self, m, valid):
        self.m = m
        self.valid = valid

    def cut(self, name, values, register):
        if not register:
            return values
        out = {}
        for key, value in values.items():
            if isinstance(value, list):
                regs = [Signal(Value.cast(v).shape(), name=f"{name}_{key}{i}", reset_less=True)
                        for i, v in enumerate(value)]
                self.m.d.sync += [r.eq(v) for r, v in zip(regs, value, strict=True)]
                out[key] = regs
            else:
                reg = Signal(Value.cast(value).shape(), name=f"{name}_{key}", reset_less=True)
                self.m.d.sync += reg.eq(value)
                out[key] = reg
        valid = Signal(name=f"{name}_valid")
        self.m.d.sync += valid.eq(self.valid)
        self.valid = valid
        return out


class CreditOutput:
    """Output stage of a free-running pipeline: a FIFO and a credit counter.

    The pipeline registers of a unit load every cycle (no enable), so no stall signal fans
    out to them; back-pressure is handled at the two ends instead. Each transfer accepted at
    the input takes one of ``stages + 1`` credits and gives it back when it leaves on
    ``o_stream``. Its result, ``stages`` cycles later, goes straight to ``o_stream`` when the
    FIFO is empty and the consumer is ready, and into the FIFO (``stages + 1`` entries)
    otherwise; with every credit taken, the FIFO can hold every transfer in flight, so none
    is lost. ``i_stream.ready`` is then :attr:`ready`, a function of the credit counter alone:
    ``o_stream.ready`` reaches only the FIFO and the counter, not the input.

    The stream semantics are those of a stalling pipeline: the same outputs in the same
    order, ``stages`` cycles of latency and one transfer per cycle while ``o_stream.ready``
    stays high (a transfer leaving frees its credit at the next clock edge, and ``stages``
    transfers are in flight). With ``stages == 0`` the pipeline is combinational and the
    output is wired through: :attr:`ready` is ``o_stream.ready``. When ``o_stream``'s
    signature is ``always_ready`` (a consumer that never stalls), there is neither FIFO nor
    counter: :attr:`ready` is the constant 1 and the output is the last register, so no
    path leads from the consumer back into the pipeline.

    Parameters
    ----------
    m : Module
        Module that receives the logic.
    o_stream : stream interface
        The unit's output stream (``valid``, ``ready``, ``payload``).
    stages : int
        Register stages of the pipeline, its latency.
    name : str
        Prefix of the signal and submodule names.

    Members
    -------
    ready : Signal(1)
        A credit is free: the pipeline may accept a transfer in this cycle.
    accept : Signal(1)
        A transfer enters the pipeline in this cycle (``valid & ready``; see :meth:`admit`).
    """

    def __init__(self, m, o_stream, *, stages, name="out"):
        self._m = m
        self._o_stream = o_stream
        self._stages = stages
        self._name = name
        self.accept = Signal(name=f"{name}_accept")
        self._free = stages == 0 or o_stream.signature.always_ready
        if self._free:
            self.ready = o_stream.ready
            return
        self.ready = Signal(name=f"{name}_credit")
        depth = stages + 1
        self._used = used = Signal(range(depth + 1), name=f"{name}_used")
        self._sent = sent = Signal(name=f"{name}_sent")
        m.d.comb += [self.ready.eq(used != depth), sent.eq(o_stream.valid & o_stream.ready)]
        with m.If(self.accept & ~sent):
            m.d.sync += used.eq(used + 1)
        with m.Elif(sent & ~self.accept):
            m.d.sync += used.eq(used - 1)

    def admit(self, valid):
        """Drive :attr:`accept` from the input's ``valid``; return the pipeline's input valid.

        That is :attr:`accept` for a registered pipeline and ``valid`` itself for a
        combinational one (whose output valid must not depend on ``o_stream.ready``).
        """
        self._m.d.comb += self.accept.eq(valid & self.ready)
        return valid if self._stages == 0 else self.accept

    @property
    def depth(self):
        """Credits, and entries of the FIFO: ``stages + 1`` (0 when combinational or when
        ``o_stream`` is ``always_ready``)."""
        return 0 if self._free else self._stages + 1

    def drive(self, valid, payload):
        """Connect the pipeline's output: ``valid`` and ``payload`` of its last register."""
        m, o_stream, name = self._m, self._o_stream, self._name
        if self._free:
            m.d.comb += [o_stream.valid.eq(valid), o_stream.payload.eq(payload)]
            return
        payload = Value.cast(payload)
        fifo = SyncFIFO(width=len(payload), depth=self.depth)
        m.submodules[f"{name}_fifo"] = fifo
        # The FIFO is bypassed while it is empty, so the latency stays ``stages``; once it
        # holds a transfer, later results queue behind it.
        bypass = ~fifo.r_rdy
        m.d.comb += [
            fifo.w_data.eq(payload),
            fifo.w_en.eq(valid & ~(bypass & o_stream.ready)),
            fifo.r_en.eq(o_stream.ready),
            o_stream.valid.eq(fifo.r_rdy | valid),
            o_stream.payload.eq(Mux(bypass, payload, fifo.r_data)),
        ]

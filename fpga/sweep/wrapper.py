"""The top level a sweep point is built in: :class:`RegisteredPorts` puts a register on every
port of a unit, so that every timed path is register to register (``io`` modes: see
:mod:`~hbfp_hw.fpga.sweep.flow`).

The source text of :class:`RegisteredPorts` and :func:`_port_list` is part of the
generation cache key (:func:`~hbfp_hw.fpga.sweep.cache.generator_digest`): a change to
either regenerates every point.
"""

from __future__ import annotations

from amaranth.hdl import (
    Cat,
    ClockDomain,
    ClockSignal,
    DomainRenamer,
    Module,
    ResetSignal,
    Signal,
    Value,
)
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .targets import IO_MODES, _check_choice

__all__ = ["RegisteredPorts"]


def _port_list(unit):
    ports = []
    for path, member, value in unit.signature.flatten(unit):
        ports.append(("__".join(map(str, path)), member.flow, Value.cast(value)))
    return ports


class RegisteredPorts(wiring.Component):
    """Top level that registers every port of ``unit``, for out-of-context timing.

    The unit runs in a clock domain ``unit`` driven by the ``sync`` clock, with the ``sync``
    reset registered once (``rst`` has no combinational path into the unit).

    Parameters
    ----------
    unit : wiring.Component
    io : {"serial", "ooc"}
        ``"ooc"``: a registered top-level port per unit port (same name and width).
        ``"serial"``: ports ``si``/``so`` only; the input registers form a shift chain from
        ``si``, the output registers (and the chain's last bit) are XOR-reduced into ``so``
        by a tree of registered 4-input XORs.

    Members
    -------
    port_bits : dict
        ``{"in": n, "out": n}``: widths of the unit's input and output ports.
    """

    def __init__(self, unit, *, io="serial"):
        if not isinstance(unit, wiring.Component):
            raise TypeError(f"unit must be a wiring.Component, not {unit!r}")
        self._unit = unit
        self._io = _check_choice("io", io, IO_MODES)
        self._ports = _port_list(unit)
        if io == "serial":
            members = {"si": In(1), "so": Out(1)}
        else:
            members = {name: (In if flow == In else Out)(len(value))
                       for name, flow, value in self._ports}
        super().__init__(members)

    @property
    def port_bits(self):
        return {"in": sum(len(v) for _, f, v in self._ports if f == In),
                "out": sum(len(v) for _, f, v in self._ports if f == Out)}

    def elaborate(self, platform):
        m = Module()
        m.domains.unit = cd_unit = ClockDomain("unit")
        rst_q = Signal(init=1, reset_less=True)
        m.d.sync += rst_q.eq(ResetSignal("sync"))
        m.d.comb += [cd_unit.clk.eq(ClockSignal("sync")), cd_unit.rst.eq(rst_q)]
        m.submodules.unit = DomainRenamer("unit")(self._unit)

        inputs = [(name, value) for name, flow, value in self._ports if flow == In]
        outputs = [(name, value) for name, flow, value in self._ports if flow == Out]
        out_regs = []
        for name, value in outputs:
            reg = Signal(len(value), name=f"out_{name}", reset_less=True)
            m.d.sync += reg.eq(value)
            out_regs.append((name, reg))

        if self._io == "ooc":
            for name, value in inputs:
                reg = Signal(len(value), name=f"in_{name}", reset_less=True)
                m.d.sync += reg.eq(getattr(self, name))
                m.d.comb += value.eq(reg)
            for name, reg in out_regs:
                m.d.comb += getattr(self, name).eq(reg)
            return m

        total = sum(len(value) for _, value in inputs)
        chain = Signal(total, reset_less=True)
        m.d.sync += chain.eq(Cat(self.si, chain[:-1]) if total > 1 else self.si)
        offset = 0
        for _, value in inputs:
            m.d.comb += value.eq(chain[offset:offset + len(value)])
            offset += len(value)
        bits = [reg[i] for _, reg in out_regs for i in range(len(reg))] + [chain[-1]]
        level = 0
        while len(bits) > 1:
            reduced = []
            for i in range(0, len(bits), 4):
                reg = Signal(name=f"xor{level}_{i // 4}", reset_less=True)
                acc = bits[i]
                for bit in bits[i + 1:i + 4]:
                    acc = acc ^ bit
                m.d.sync += reg.eq(acc)
                reduced.append(reg)
            bits = reduced
            level += 1
        m.d.comb += self.so.eq(bits[0])
        return m

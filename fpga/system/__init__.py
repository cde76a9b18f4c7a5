"""The device gateware: :mod:`~hbfp_hw.fpga.system.engine` (``GemmSystem``, the top level and
its command executor), the components it sequences, :mod:`~hbfp_hw.fpga.system.payload`
(``BlockWriter``), :mod:`~hbfp_hw.fpga.system.checks` (``CheckUnit``),
:mod:`~hbfp_hw.fpga.system.array` (``GemmEngine``, also importable from ``engine``),
:mod:`~hbfp_hw.fpga.system.readout` (``CReadout``) and :mod:`~hbfp_hw.fpga.system.replies`
(``ReplyFormatter``, ``TransmitBuffer``), :mod:`~hbfp_hw.fpga.system.skid` (``SkidBuffer``, the
register slices on its byte streams), and :mod:`~hbfp_hw.fpga.system.decoder` (frame decoder
and encoder) and :mod:`~hbfp_hw.fpga.system.uart` (the UART PHY).

Nothing is imported here: the host side (driver, simulated board) must not pay for Amaranth.
"""

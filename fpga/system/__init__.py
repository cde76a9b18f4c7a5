"""The device gateware: :mod:`~hbfp_hw.fpga.system.engine` (``GemmSystem``, ``GemmEngine``),
:mod:`~hbfp_hw.fpga.system.decoder` (frame decoder and encoder) and
:mod:`~hbfp_hw.fpga.system.uart` (the UART PHY).

Nothing is imported here: the host side (driver, simulated board) must not pay for Amaranth.
"""

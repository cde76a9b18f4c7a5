"""The host side: :mod:`~hbfp_hw.fpga.host.driver` (``Device``) over
:mod:`~hbfp_hw.fpga.host.planning`, :mod:`~hbfp_hw.fpga.host.flow` and
:mod:`~hbfp_hw.fpga.host.session`; :mod:`~hbfp_hw.fpga.host.transport`,
:mod:`~hbfp_hw.fpga.host.server` (``hbfp-hw serve``) and :mod:`~hbfp_hw.fpga.host.simboard`
(the real gateware under Verilator behind a byte pipe).

Nothing is imported here, so that importing one of them stays cheap.
"""

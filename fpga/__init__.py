"""Board tops, the build flow, the host link and the driver (imported as ``hbfp_hw.fpga``).

The driver names are imported lazily, so that ``import hbfp_hw.fpga`` stays cheap:
``from hbfp_hw.fpga import Device`` loads :mod:`hbfp_hw.fpga.host.driver` on first use.
"""

_DRIVER_NAMES = ("Device", "DeviceError", "DeviceNotFound", "DeviceBusy", "ProtocolError",
                 "DeviceTimeout", "FormatMismatch", "ShapeError", "demo_offload")

__all__ = list(_DRIVER_NAMES)


def __getattr__(name):
    if name in _DRIVER_NAMES:
        from .host import driver
        return getattr(driver, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

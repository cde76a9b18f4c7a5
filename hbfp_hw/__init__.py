__version__ = "0.1.0"


def __getattr__(name):
    # hbfp_hw.Device is the host driver (hbfp_hw.fpga.host.driver), imported on first use.
    if name == "Device":
        from hbfp_hw.fpga.host.driver import Device
        return Device
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The simulated board (imported as ``hbfp_hw.fpga.host.simboard``).

The code is :mod:`hbfp_hw.fpga.host.simboard.simboard`, the C++ harness ``harness.cpp`` next to
it; this package re-exports the module's public names.
"""

from . import simboard
from .simboard import *  # noqa: F403

__all__ = list(simboard.__all__)

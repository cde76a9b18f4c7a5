"""The host <-> device wire protocol (imported as ``hbfp_hw.fpga.protocol``).

Everything lives in :mod:`hbfp_hw.fpga.protocol.frames`; this package re-exports its public
names, so ``from hbfp_hw.fpga.protocol import Cmd`` and ``protocol.Cmd`` keep working.
"""

from . import frames
from .frames import *  # noqa: F403
from .frames import FRAME_OVERHEAD  # used by the tests, not in frames.__all__

__all__ = [*frames.__all__, "FRAME_OVERHEAD"]

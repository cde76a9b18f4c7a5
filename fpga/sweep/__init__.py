"""The design-space sweep (imported as ``hbfp_hw.fpga.sweep``).

The code is :mod:`hbfp_hw.fpga.sweep.sweep`; this package re-exports its public names. Patch
(monkeypatch) names on that module, where they are looked up.
"""

from . import sweep
from .sweep import *  # noqa: F403

__all__ = list(sweep.__all__)

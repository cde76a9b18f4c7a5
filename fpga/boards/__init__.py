"""Board tops and the build flow: :mod:`~hbfp_hw.fpga.boards.boards` (the boards, ``BuildConfig``,
``BoardTop``), :mod:`~hbfp_hw.fpga.boards.build` (synthesis, place and route, programming) and
:mod:`~hbfp_hw.fpga.boards.build_report`.

This package re-exports the public names of :mod:`hbfp_hw.fpga.boards.boards`
(``from hbfp_hw.fpga.boards import BOARDS, BuildConfig``); the build flow is imported from its
own module (``from hbfp_hw.fpga.boards.build import build``).
"""

from . import boards
from .boards import *  # noqa: F403

__all__ = list(boards.__all__)

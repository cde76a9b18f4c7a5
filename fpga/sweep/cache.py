"""The sweep's cache: its root (:func:`cache_root`), the digests that key generation
(:func:`generator_digest`, :func:`verilog_digest`, :data:`FLOW_VERSION`), compressed
netlists and the generator-source snapshots that critical paths are shown from.

Keys are made and entries read and written with the shared helpers of
:mod:`hbfp_hw.tools.cache`.
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import json
import os
import re
import shutil
import threading
from pathlib import Path

import amaranth

from hbfp_hw import formats, rtl_gen
from hbfp_hw.tools.cache import cache_root as hbfp_cache_root

from .wrapper import RegisteredPorts, _port_list

__all__ = ["FLOW_VERSION", "cache_root", "verilog_digest", "generator_digest"]


#: Bumped when the flow (wrapper, scripts, parsing) changes in a way that changes results.
FLOW_VERSION = 1


_SRC_ATTR = re.compile(r'\(\* src = "(?:[^"\\]|\\.)*" \*\)\s*')


def verilog_digest(text):
    """SHA-256 of Verilog text with its ``src`` attributes removed (the hardware only)."""
    return hashlib.sha256(_SRC_ATTR.sub("", text).encode()).hexdigest()


def generator_digest():
    """Hash of what the Verilog of a point depends on besides its parameters."""
    h = hashlib.sha256()
    h.update(f"amaranth {amaranth.__version__}\0flow {FLOW_VERSION}\0".encode())
    for path in sorted(Path(rtl_gen.__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(Path(formats.__file__).read_bytes())
    h.update(inspect.getsource(RegisteredPorts).encode())
    h.update(inspect.getsource(_port_list).encode())
    return h.hexdigest()


def cache_root(root=None):
    """Root of the sweep cache: ``root``, else ``$HBFP_HW_CACHE/sweep``, else
    ``~/.cache/hbfp-hw/sweep`` (the same cache as the simulator builds)."""
    if root is None:
        root = hbfp_cache_root() / "sweep"
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return root


def _gzip_file(path):
    path = Path(path)
    if path.exists():
        tmp = path.with_name(path.name + f".gz.{threading.get_ident()}.tmp")
        with open(path, "rb") as src, gzip.open(tmp, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, str(path) + ".gz")
        path.unlink()


def _gunzip_file(path):
    path = Path(path)
    gz = Path(str(path) + ".gz")
    if not path.exists() and gz.exists():
        tmp = path.with_name(path.name + f".{threading.get_ident()}.tmp")
        with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, path)
    return path


def _snapshot_sources(root, digest):
    """Keep the generator sources a Verilog was made from, so that the lines named by a
    critical path can be shown as they were, whatever the working tree holds later."""
    path = root / "sources" / f"{digest[:24]}.json.gz"
    if path.exists():
        return
    files = {f"rtl_gen/{f.name}": f.read_text()
             for f in sorted(Path(rtl_gen.__file__).parent.glob("*.py"))}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with gzip.open(tmp, "wt") as f:
        json.dump(files, f)
    os.replace(tmp, path)


def _source_lines(root, snapshot, locations):
    """``{"rtl_gen/x.py:76": "the text of that line"}`` from a source snapshot."""
    try:
        with gzip.open(root / "sources" / f"{snapshot}.json.gz", "rt") as f:
            files = json.load(f)
    except (OSError, ValueError):
        return {}
    lines = {}
    for loc in locations:
        name, _, line = loc.rpartition(":")
        text = files.get(name)
        if text is not None and line.isdigit() and 0 < int(line) <= text.count("\n") + 1:
            lines[loc] = text.splitlines()[int(line) - 1].strip()
    return lines

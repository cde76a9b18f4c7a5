"""Reading the tools' output: error lines of a log, the utilisation of a target's resources,
and the critical path of a nextpnr ``--report`` (:func:`parse_critical_path`).
"""

from __future__ import annotations

import re

__all__ = ["parse_critical_path"]


_ERROR_LINE = re.compile(r"^ERROR:\s*(.*)$", re.M)


def _utilisation_summary(utilisation, target):
    out = {}
    for resource, bel in target.bels.items():
        if bel in utilisation:
            out[resource] = {"used": utilisation[bel]["used"], "total": utilisation[bel]["total"]}
    return out


def parse_critical_path(report, project_root=None):
    """Summarize the worst register-to-register path of a nextpnr ``--report`` JSON.

    Returns
    -------
    dict or None
        ``{"clock", "delay_ns", "logic_ns", "routing_ns", "logic_levels", "from", "to",
        "sources"}``: ``from``/``to`` are the start and end cells, ``sources`` the project
        source locations (``file:line``, relative to ``project_root``) along the path, in
        order; None if the report has no clock-to-clock path.
    """
    paths = [p for p in report.get("critical_paths", [])
             if p.get("from", "").startswith("posedge") or p.get("from", "").startswith("negedge")]
    paths = [p for p in paths if p.get("path")]
    if not paths:
        return None
    path = max(paths, key=lambda p: sum(s.get("delay", 0.0) for s in p["path"]))
    logic = sum(s["delay"] for s in path["path"] if s["type"] in ("logic", "clk-to-q", "setup"))
    routing = sum(s["delay"] for s in path["path"] if s["type"] == "routing")
    sources = []
    root = None if project_root is None else str(project_root).rstrip("/") + "/"
    for step in path["path"]:
        for src in step.get("sources", []):
            # Keep the generator's Python lines; drop Yosys' techmap cells and Verilog lines.
            src = src.split("|")[0]
            if not re.search(r"\.py:\d+", src):
                continue
            if root is not None and src.startswith(root):
                src = src[len(root):]
            if src not in sources:
                sources.append(src)
    return {
        "clock": path.get("to", "").split(" ", 1)[-1],
        "delay_ns": round(logic + routing, 3),
        "logic_ns": round(logic, 3),
        "routing_ns": round(routing, 3),
        "logic_levels": sum(1 for s in path["path"] if s["type"] == "logic"),
        "from": path["path"][0].get("from", {}).get("cell"),
        "to": path["path"][-1].get("to", {}).get("cell"),
        "from_signal": _signal_name(path["path"][0].get("from", {}).get("cell")),
        "to_signal": _signal_name(path["path"][-1].get("to", {}).get("cell")),
        "sources": sources,
    }


_TECHMAP_SUFFIX = re.compile(
    r"(?:_(?:TRELLIS|SB|LUT4|CCU2C|PFUMX|L6MUX21|MULT18X18D|ALU54B|DPR16X4|DP16KD|ICESTORM)"
    r"(?:_|$|\b).*|\$.*)$")


def _signal_name(cell):
    """The Amaranth signal a placed cell was named after (``unit.acc.sum`` from
    ``unit.acc.sum_TRELLIS_FF_Q_3``), or the cell name if it has no techmap suffix."""
    if not cell:
        return cell
    return _TECHMAP_SUFFIX.sub("", cell) or cell

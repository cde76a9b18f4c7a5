"""Metrics of a sweep document.

Derived numbers (:func:`derive_metrics`):

- **MACs per cycle**: ``block_size * throughput`` for a dot-product unit (one block pair per
  cycle with at least ``min_channels`` interleaved running sums), ``throughput`` (1) for the
  FP32 baseline; **MAC/s** = MACs per cycle x the worse Fmax.
- **LUT** in *MAC/s per LUT* means a LUT4-equivalent logic cell as placed by nextpnr:
  ``TRELLIS_COMB`` on the ECP5 (a LUT4, half a CCU2C carry cell or a LUTRAM slice half),
  ``ICESTORM_LC`` on the iCE40 (a LUT4 with its flip-flop and carry). That is the unit in which
  the parts' capacity is counted (83,640 on the LFE5U-85F, 5,280 on the UP5K).
- **DSP-equivalent**: the die area of one DSP block, counted in logic cells as the part's
  logic-cell total over its DSP total (536 on the LFE5U-85F, 660 on the UP5K). A design's
  DSP-equivalents are ``dsp + logic_cells / that ratio``, which is never zero, so designs with
  and without DSPs compare on one scale.
- **vs FP32**: each ratio is the point's value over the FP32 baseline's value, same part, same
  I/O mode, same multiplier mapping.

:func:`full_chip_estimate` answers "how many units fill the part": the most units that fit the
logic cells (at a fill factor, default 85 %), flip-flops, DSPs and block RAMs, mixing a DSP and
a LUT-multiplier variant of the unit when both were measured, and the resulting GMAC/s against
FP32 MACs filling the same part.
"""

from __future__ import annotations

import math

from .targets import parse_format_spec

__all__ = ["derive_metrics", "full_chip_estimate", "pareto_front", "area_per_gmacs"]


def _lc_per_dsp(row):
    util = row.get("utilisation", {})
    lc, dsp = util.get("logic_cells"), util.get("dsp")
    if lc and dsp and dsp["total"]:
        return lc["total"] / dsp["total"]
    return None


def derive_metrics(doc):
    """Add MAC/s, MAC/s per LUT, MAC/s per DSP-equivalent and the ratios to the baseline.

    Works on the rows of ``doc["points"]`` in place (rows that did not finish get none) and
    returns ``doc``. A row's ``vs_baseline`` compares it with the FP32 baseline measured with
    the same multiplier mapping.
    """
    for row in doc["points"]:
        if row.get("status") != "ok" or "fmax_mhz" not in row:
            continue
        res = row["resources"]
        mac_per_s = row["macs_per_cycle"] * row["fmax_mhz"] * 1e6
        row["mac_per_s"] = mac_per_s
        lc = res.get("logic_cells") or res["lut"]
        row["mac_per_s_per_lut"] = mac_per_s / lc if lc else None
        row["mac_per_s_per_dsp"] = mac_per_s / res["dsp"] if res["dsp"] else None
        ratio = _lc_per_dsp(row)
        if ratio:
            row["lc_per_dsp"] = round(ratio, 3)
            row["dsp_equivalents"] = res["dsp"] + lc / ratio
            row["lut_equivalents"] = lc + res["dsp"] * ratio
            row["mac_per_s_per_dsp_eq"] = mac_per_s / row["dsp_equivalents"]
    baselines = {row["multipliers"]: row for row in doc["points"]
                 if row["kind"] == "fp32-baseline" and "mac_per_s" in row}
    for row in doc["points"]:
        base = baselines.get(row["multipliers"])
        if base is None or "mac_per_s" not in row or row is base:
            continue
        row["vs_baseline"] = {
            key: (row[key] / base[key]) if row.get(key) and base.get(key) else None
            for key in ("mac_per_s", "mac_per_s_per_lut", "mac_per_s_per_dsp_eq",
                        "fmax_mhz")}
    return doc


def _fit(row, capacity, fill):
    """Units of ``row`` that fit ``capacity``: (count, binding resource, {resource: count})."""
    usage = _unit_usage(row)
    limits = {}
    for resource, total in capacity.items():
        used = usage.get(resource, 0)
        if used:
            scale = fill if resource in ("logic_cells", "ff") else 1.0
            limits[resource] = math.floor(scale * total / used)
    if not limits:
        return 0, None, {}
    binding = min(limits, key=limits.get)
    return limits[binding], binding, limits


def _unit_usage(row):
    util = row.get("utilisation", {})
    usage = {r: u["used"] for r, u in util.items()}
    usage.setdefault("dsp", row["resources"]["dsp"])
    usage.setdefault("bram", row["resources"]["bram"])
    return usage


def _capacity(rows):
    for row in rows:
        util = row.get("utilisation", {})
        if util:
            return {r: u["total"] for r, u in util.items()}
    return None


def _best_mix(dsp_row, lut_row, capacity, fill):
    """Most units from a DSP variant and a LUT-multiplier variant sharing the part."""
    rows = [r for r in (dsp_row, lut_row) if r is not None]
    best = None
    for row in rows:
        n, binding, limits = _fit(row, capacity, fill)
        cand = {"units": n, "dsp_units": n if row is dsp_row else 0,
                "lut_units": n if row is lut_row else 0, "binding": binding, "limits": limits}
        if best is None or cand["units"] > best["units"]:
            best = cand
    if dsp_row is not None and lut_row is not None:
        ud, ul = _unit_usage(dsp_row), _unit_usage(lut_row)
        n_dsp_max, _, _ = _fit(dsp_row, capacity, fill)
        for nd in range(0, n_dsp_max + 1):
            room = {}
            for resource, total in capacity.items():
                scale = fill if resource in ("logic_cells", "ff") else 1.0
                room[resource] = scale * total - nd * ud.get(resource, 0)
            if min(room.values()) < 0:
                break
            limits = {r: math.floor(room[r] / ul[r]) for r in room if ul.get(r)}
            nl = min(limits.values()) if limits else 0
            if nd + nl > best["units"]:
                binding = min(limits, key=limits.get) if limits else None
                best = {"units": nd + nl, "dsp_units": nd, "lut_units": nl,
                        "binding": f"{binding} (mixed)" if nd and nl else binding,
                        "limits": limits}
    return best


def full_chip_estimate(doc, fmt, *, fill=0.85):
    """Estimate how many units of ``fmt`` fill the part, and FP32 MACs filling the same part.

    The per-unit costs are the measured ones (logic cells, flip-flops, DSP and block RAM as
    placed, port registers of the wrapper included). Logic cells and flip-flops are used up
    to ``fill`` of the part (routing needs room); DSPs and block RAMs fully. When the sweep
    holds both a DSP and a LUT-multiplier variant of a design, the best mix of the two is
    used. The clock of the filled part is the worse Fmax of the variants used, measured on a
    single unit; a full part routes slower, so this is an upper bound.

    Returns
    -------
    dict or None
        ``{"format", "fill", "capacity", "bfp": {...}, "fp32": {...}, "ratio"}``, None if the
        sweep lacks the measurements.
    """
    rows = [r for r in doc["points"] if r.get("status") == "ok" and "mac_per_s" in r]
    capacity = _capacity(rows)
    if capacity is None:
        return None
    fmt = parse_format_spec(fmt) if isinstance(fmt, str) else fmt

    def pick(pred):
        found = {r["multipliers"]: r for r in rows if pred(r)}
        return found.get("dsp"), found.get("lut")

    bfp = pick(lambda r: r["kind"] == "dot" and r["format"] == fmt.to_dict()
               and r["input_format"] == "fp32")
    fp32 = pick(lambda r: r["kind"] == "fp32-baseline")
    if not any(bfp) or not any(fp32):
        return None

    def estimate(variants, name):
        mix = _best_mix(*variants, capacity, fill)
        used = [r for r, key in zip(variants, ("dsp_units", "lut_units"))
                if r is not None and mix[key]]
        fmax = min((r["fmax_mhz"] for r in used), default=None)
        macs = used[0]["macs_per_cycle"] if used else 0
        per_variant = {}
        for r, key in zip(variants, ("dsp_units", "lut_units")):
            if r is not None:
                per_variant[r["multipliers"]] = {
                    "label": r["label"], "units": mix[key], "fmax_mhz": r["fmax_mhz"],
                    "usage": _unit_usage(r), "fit_alone": _fit(r, capacity, fill)[0]}
        gmacs = mix["units"] * macs * fmax / 1e3 if fmax else 0.0
        return {"name": name, "units": mix["units"], "binding": mix["binding"],
                "macs_per_cycle_per_unit": macs, "fmax_mhz": fmax, "gmac_per_s": gmacs,
                "variants": per_variant}

    bfp_est = estimate(bfp, fmt.name)
    fp32_est = estimate(fp32, "fp32-mac")
    ratio = (bfp_est["gmac_per_s"] / fp32_est["gmac_per_s"]) if fp32_est["gmac_per_s"] else None
    return {"format": fmt.to_dict(), "fill": fill, "capacity": capacity,
            "device": doc["target"]["device"], "bfp": bfp_est, "fp32": fp32_est,
            "ratio": ratio}


def pareto_front(points):
    """Indices of the ``(cost, accuracy)`` pairs not dominated (lower cost, higher accuracy),
    by increasing cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def area_per_gmacs(row):
    """Area per throughput of a sweep row: LUT-equivalents per GMAC/s (None if unmeasured)."""
    if row.get("lut_equivalents") is None or not row.get("mac_per_s"):
        return None
    return row["lut_equivalents"] / (row["mac_per_s"] / 1e9)

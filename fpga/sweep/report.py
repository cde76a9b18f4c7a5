"""Text output of a sweep document: the aligned table (:func:`format_table`), the full-chip
estimate (:func:`format_full_chip`) and the Markdown section of ``docs/benchmarks.md``
(:func:`markdown_report`).
"""

from __future__ import annotations

__all__ = ["table_rows", "format_table", "format_full_chip", "markdown_table", "markdown_report",
           "format_fill_chip"]


def _fmt_si(value, unit=""):
    if value is None:
        return "-"
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def _ratio(value):
    return "-" if value is None else f"{value:.2f}x"


def table_rows(doc):
    """Rows of the result table as lists of strings (header first)."""
    accuracy = any("accuracy" in r for r in doc["points"])
    header = ["config", "w", "block", "mult", "LUT4", "LC", "FF", "DSP", "BRAM", "CCU2",
              "Fmax MHz (seeds)", "MAC/cyc", "MAC/s", "MAC/s/LUT", "MAC/s/DSPeq",
              "per LUT vs FP32", "per DSPeq vs FP32"]
    if accuracy:
        header.append("digits acc")
    rows = [header]
    for r in doc["points"]:
        res = r.get("resources", {})
        seeds = "/".join(f"{s['fmax_mhz']:.1f}" for s in r.get("seeds", [])
                         if s.get("status") == "ok")
        if r["status"] == "ok":
            fmax = f"{r['fmax_mhz']:.1f} ({seeds})"
        else:
            fmax = r["status"]
        vs = r.get("vs_baseline", {})
        line = [r["label"], str(r["mantissa_bits"] or "fp32"), str(r["block_size"] or "-"),
                r["multipliers"], str(res.get("lut", "-")), str(res.get("logic_cells", "-")),
                str(res.get("ff", "-")), str(res.get("dsp", "-")), str(res.get("bram", "-")),
                str(res.get("carry", "-")), fmax, str(r.get("macs_per_cycle", "-")),
                _fmt_si(r.get("mac_per_s")), _fmt_si(r.get("mac_per_s_per_lut")),
                _fmt_si(r.get("mac_per_s_per_dsp_eq")),
                "1 (ref)" if r["kind"] == "fp32-baseline" and "mac_per_s" in r
                else _ratio(vs.get("mac_per_s_per_lut")),
                "1 (ref)" if r["kind"] == "fp32-baseline" and "mac_per_s" in r
                else _ratio(vs.get("mac_per_s_per_dsp_eq"))]
        if accuracy:
            acc = r.get("accuracy")
            line.append("-" if not acc else f"{acc['test_acc']:.2f}%")
        rows.append(line)
    return rows


def format_table(doc):
    """Return the result table as aligned text, with a header line."""
    rows = table_rows(doc)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    t = doc["target"]
    lines = [f"{t['device']} ({t['name']}), {doc['io']} I/O, nextpnr --freq "
             f"{doc['freq_mhz']:g} MHz --router {doc.get('router', 'router1')}, "
             f"Fmax = worse of seeds "
             f"{', '.join(map(str, doc['seeds']))}; {doc['tools']['yosys']}, "
             f"{doc['tools']['nextpnr']}"]
    for i, row in enumerate(rows):
        lines.append("  ".join(c.rjust(w) if j else c.ljust(w)
                               for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    for r in doc["points"]:
        if r.get("status") not in ("ok", None) and r.get("error"):
            lines.append(f"{r['label']}: {r['status']}: {r['error']}")
    return "\n".join(lines)


def format_full_chip(est):
    """Return the full-chip estimate as text."""
    if est is None:
        return "full-chip estimate: not available (needs the format and the FP32 baseline)"
    cap = est["capacity"]
    caps = ", ".join(f"{k} {v}" for k, v in cap.items())
    lines = [f"Full-chip estimate on the {est['device']} ({caps}; logic cells and FFs filled "
             f"to {est['fill']:.0%}):"]
    for key in ("bfp", "fp32"):
        e = est[key]
        mix = ", ".join(f"{v['units']} x {v['label']}" for v in e["variants"].values()
                        if v["units"])
        fmax = "-" if e["fmax_mhz"] is None else f"{e['fmax_mhz']:.1f} MHz"
        lines.append(f"  {e['name']:>9}: {e['units']} units ({mix or 'none'}), limited by "
                     f"{e['binding']}, x {e['macs_per_cycle_per_unit']} MAC/cycle at {fmax} "
                     f"= {e['gmac_per_s']:.1f} GMAC/s")
    if est["ratio"] is not None:
        lines.append(f"  ratio: {est['ratio']:.1f}x the FP32 MAC throughput of the same part")
    return "\n".join(lines)


def markdown_table(doc):
    """The result table as a Markdown table."""
    rows = table_rows(doc)
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


def _critical_path_text(row):
    cp = row.get("critical_path")
    if not cp:
        return None
    lines = cp.get("source_lines", {})
    src = ", ".join(f"`{s}`" + (f" (`{lines[s]}`)" if s in lines else "")
                    for s in cp["sources"][:6]) or "no generator line named on the path"
    return (f"{row['label']} (seed {row['fmax_seed']}): {cp['delay_ns']:.2f} ns = "
            f"{cp['logic_ns']:.2f} ns logic ({cp['logic_levels']} levels) + "
            f"{cp['routing_ns']:.2f} ns routing, from `{cp['from_signal']}` to "
            f"`{cp['to_signal']}`; through {src}")


def markdown_report(doc, *, command, plots=(), full_chip=None):
    """A Markdown section for ``docs/benchmarks.md``: command, table, critical paths, plots."""
    t = doc["target"]
    lines = [f"### {t['device']} (`--target {t['name']}`)", "", f"Command: `{command}`  ",
             f"Tools: {doc['tools']['yosys']}, {doc['tools']['nextpnr']}; {doc['io']} I/O; "
             f"nextpnr `--freq {doc['freq_mhz']:g}`; Fmax is the worse of seeds "
             f"{', '.join(map(str, doc['seeds']))}. LC = logic cells as placed (the LUT of "
             f"MAC/s/LUT); DSPeq = DSP-equivalents (see docs/hardware.md).", "",
             markdown_table(doc), ""]
    failed = [r for r in doc["points"] if r.get("status") != "ok"]
    for r in failed:
        lines.append(f"- {r['label']}: {r['status']}: {r.get('error') or ''}")
    if failed:
        lines.append("")
    paths = [p for p in (_critical_path_text(r) for r in doc["points"]) if p]
    if paths:
        lines.append("Critical paths (worse seed):")
        lines.append("")
        lines += [f"- {p}" for p in paths]
        lines.append("")
    if full_chip is not None:
        lines += ["```", format_full_chip(full_chip), "```", ""]
    for title, path in plots:
        lines.append(f"![{title}]({path})")
    return "\n".join(lines).rstrip() + "\n"


def format_fill_chip(doc):
    """Text table of a :func:`~hbfp_hw.fpga.sweep.fill.fill_chip` document: every array
    measured, then the best of each kind and their ratio."""
    lines = [f"{'array':<22} {'mult':<4} {'status':<14} {'MAC/cyc':>7} {'LC':>7} {'FF':>7} "
             f"{'DSP':>4} {'BRAM':>4} {'Fmax':>7} {'GMAC/s':>7}"]
    for r in doc["points"]:
        res = r.get("resources") or {}
        fmax = r.get("fmax_mhz")
        lines.append(
            f"{r['label']:<22} {r['multipliers']:<4} {r['status']:<14} "
            f"{r.get('macs_per_cycle') or '':>7} {res.get('logic_cells', res.get('lut', '')):>7} "
            f"{res.get('ff', ''):>7} {res.get('dsp', ''):>4} {res.get('bram', ''):>4} "
            f"{f'{fmax:.1f}' if fmax else '':>7} {r.get('gmacs') or '':>7}")
    for key, name in (("bfp", doc["format"]["name"]), ("fp32", "FP32")):
        best = doc.get(key)
        lines.append(f"best {name} array: " + (
            f"{best['label']} ({best['multipliers']}), {best['macs_per_cycle']} MACs/cycle x "
            f"{best['fmax_mhz']:.1f} MHz = {best['gmacs']:.2f} GMAC/s" if best else "none fits"))
    if doc.get("ratio"):
        lines.append(f"ratio: {doc['ratio']:.2f}x")
    lines.append(f"({doc['seconds']:.0f} s)")
    return "\n".join(lines)

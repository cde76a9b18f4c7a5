"""Plots of a sweep document (matplotlib, imported on the first plot): MAC/s per LUT, Fmax,
and accuracy against area with its Pareto front.
"""

from __future__ import annotations

from .metrics import area_per_gmacs, pareto_front

__all__ = ["plot_mac_per_lut", "plot_fmax", "plot_pareto", "plot_fill_chip"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _finish(plt, fig, ax, path, title, doc, **grid):
    """Title, grid and legend (if anything is labelled), then write ``path`` and close."""
    ax.set_title(f"{title}\n{_title(doc)}", fontsize=10)
    ax.grid(alpha=0.3, **grid)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _title(doc):
    t = doc["target"]
    return f"{t['device']} ({doc['io']} I/O, worse of nextpnr seeds {doc['seeds']})"


def _minifloat(row):
    """Whether a sweep row is a unit with minifloat elements (an MX or BM preset)."""
    return (row.get("format") or {}).get("element") is not None


def _short_label(row):
    """``w8b16`` for integer-element units, the preset name for minifloat ones, the label
    for the FP32 kinds."""
    if row["kind"] == "fp32-baseline" or _minifloat(row):
        return row["label"]
    return f"w{row['mantissa_bits']}b{row['block_size']}"


def plot_mac_per_lut(doc, path):
    """MAC/s per LUT against element bits: one line per block size of the integer-element
    units, one labelled marker per minifloat unit, the FP32 baseline marked."""
    plt = _pyplot()
    from matplotlib.ticker import EngFormatter

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    rows = [r for r in doc["points"] if r.get("mac_per_s_per_lut")]
    for mult, marker in (("dsp", "D"), ("lut", "v")):
        mini = [r for r in rows if r["kind"] == "dot" and r["multipliers"] == mult
                and _minifloat(r)]
        if mini:
            suffix = "" if mult == "dsp" else ", multipliers in LUTs"
            ax.plot([r["mantissa_bits"] for r in mini], [r["mac_per_s_per_lut"] for r in mini],
                    marker, linestyle="none", color="tab:purple",
                    label=f"minifloat elements (MX, BM){suffix}")
            for r in mini:
                ratio = r.get("vs_baseline", {}).get("mac_per_s_per_lut")
                text = r["label"] + (f" {ratio:.1f}x" if ratio else "")
                ax.annotate(text, (r["mantissa_bits"], r["mac_per_s_per_lut"]),
                            textcoords="offset points", xytext=(5, 3), fontsize=7,
                            color="tab:purple")
    for mult, style in (("dsp", "-o"), ("lut", "--s")):
        dots = [r for r in rows if r["kind"] == "dot" and r["multipliers"] == mult
                and not _minifloat(r)]
        for n in sorted({r["block_size"] for r in dots}):
            pts = sorted((r["mantissa_bits"], r["mac_per_s_per_lut"]) for r in dots
                         if r["block_size"] == n)
            suffix = "" if mult == "dsp" else ", multipliers in LUTs"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style,
                    label=f"block {n}{suffix}")
            for r in dots:
                ratio = r.get("vs_baseline", {}).get("mac_per_s_per_lut")
                if r["block_size"] == n and ratio:
                    ax.annotate(f"{ratio:.1f}x", (r["mantissa_bits"], r["mac_per_s_per_lut"]),
                                textcoords="offset points", xytext=(5, -10), fontsize=7)
    for r in rows:
        if r["kind"] == "fp32-baseline":
            style = ":" if r["multipliers"] == "dsp" else "-."
            ax.axhline(r["mac_per_s_per_lut"], color="k", linestyle=style,
                       label=f"FP32 MAC baseline ({r['multipliers']} multipliers)")
    ax.set_xlabel("element bits w (sign included)")
    ax.set_ylabel("MAC/s per LUT (LUT = logic cell as placed)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(EngFormatter())
    ax.yaxis.set_minor_formatter(EngFormatter())
    ws = sorted({r["mantissa_bits"] for r in rows if r["mantissa_bits"]})
    if ws:
        ax.set_xticks(ws)
    _finish(plt, fig, ax, path, "Throughput per logic cell (labels: ratio to the FP32 baseline)",
            doc, which="both")


def plot_fmax(doc, path):
    """Fmax (worse seed, each seed marked) of every configuration, with the target."""
    plt = _pyplot()
    rows = [r for r in doc["points"] if r.get("status") == "ok"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(rows) + 2), 4.5))
    xs = range(len(rows))
    colors = ["0.35" if r["kind"] == "fp32-baseline" else "tab:blue" for r in rows]
    ax.bar(xs, [r["fmax_mhz"] for r in rows], color=colors, alpha=0.8)
    for x, r in zip(xs, rows):
        seeds = [s["fmax_mhz"] for s in r["seeds"] if s.get("status") == "ok"]
        ax.plot([x] * len(seeds), seeds, "k.", markersize=5)
    ax.axhline(doc["freq_mhz"], color="tab:red", linestyle="--",
               label=f"nextpnr target {doc['freq_mhz']:g} MHz")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([_short_label(r)
                        + ("\nLUT mul" if r["multipliers"] == "lut" else "")
                        for r in rows], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("Fmax (MHz), worse seed; dots: each seed")
    _finish(plt, fig, ax, path, "Fmax per configuration (grey: FP32 MAC baseline)", doc,
            axis="y")


def plot_pareto(doc, path):
    """Digits test accuracy against area per throughput, with the Pareto front."""
    plt = _pyplot()
    rows = [r for r in doc["points"] if r.get("accuracy") and area_per_gmacs(r)]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    pts = [(area_per_gmacs(r), r["accuracy"]["test_acc"]) for r in rows]
    for r, (x, y) in zip(rows, pts):
        base = r["kind"] == "fp32-baseline"
        ax.plot(x, y, "s" if base else "o", color="k" if base else "tab:blue")
        ax.annotate(_short_label(r),
                    (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    front = pareto_front(pts)
    if front:
        fx = [pts[i][0] for i in front]
        fy = [pts[i][1] for i in front]
        ax.step(fx, fy, where="post", color="tab:orange", label="Pareto front")
        ax.plot(fx, fy, "o", mfc="none", mec="tab:orange", markersize=10)
    ax.set_xscale("log")
    ax.set_xlabel("area per throughput: LUT-equivalents (logic cells + DSPs x "
                  f"{rows[0]['lc_per_dsp']:.0f}) per GMAC/s" if rows else "area per GMAC/s")
    acc = doc.get("accuracy_setup", {})
    ax.set_ylabel(f"digits test accuracy (%), {acc.get('model', '')} "
                  f"{acc.get('epochs', '')} epochs")
    _finish(plt, fig, ax, path, "Accuracy vs hardware cost", doc, which="both")


def plot_fill_chip(doc, path):
    """GMAC/s against MACs/cycle of every array :func:`~hbfp_hw.fpga.sweep.fill.fill_chip`
    placed and routed, one line per array kind and multiplier mapping, the best ones ringed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = {}
    for row in doc["points"]:
        if row.get("status") == "ok":
            series.setdefault((row["kind"], row["multipliers"]), []).append(row)
    styles = {"array": "tab:blue", "fp32-array": "0.35"}
    for (kind, mult), rows in sorted(series.items()):
        rows.sort(key=lambda r: r["macs_per_cycle"])
        name = (doc["format"]["name"] if kind == "array" else "FP32") + f" array ({mult})"
        ax.plot([r["macs_per_cycle"] for r in rows], [r["gmacs"] for r in rows],
                marker="o" if mult == "lut" else "s", color=styles[kind],
                linestyle="-" if mult == "lut" else "--", label=name)
        for r in rows:
            ax.annotate(r["label"].split("-")[-1].split("+")[0],
                        (r["macs_per_cycle"], r["gmacs"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    for key in ("bfp", "fp32"):
        best = doc.get(key)
        if best:
            ax.plot([best["macs_per_cycle"]], [best["gmacs"]], "o", markersize=14,
                    markerfacecolor="none", markeredgecolor="tab:red")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("MACs per cycle (array size)")
    ax.set_ylabel("GMAC/s (MACs/cycle x worse Fmax)")
    ratio = doc.get("ratio")
    title = "Systolic arrays filling the part" + (f": BFP/FP32 = {ratio:.1f}x" if ratio else "")
    _finish(plt, fig, ax, path, title, doc)

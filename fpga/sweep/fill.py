"""Fill the chip: the largest systolic array of each kind that the part holds, by bisection.

:func:`fill_chip` measures, for a BFP format and for FP32, the
:class:`~hbfp_hw.rtl_gen.systolic.SystolicArray` that maximises MACs/cycle x Fmax on a part.
Each candidate is one sweep point (:func:`~hbfp_hw.fpga.sweep.flow.run_sweep`: every port
registered, the worse Fmax of the seeds, cached), so a rerun is instant and an interrupted
search resumes where it stopped.

The candidates are the shapes of :func:`shape_ladder`, in increasing PE count (square, then
one column more). For each array kind and multiplier mapping the search doubles the ladder
index until a shape does not fit (or fails timing so badly that its GMAC/s falls below half
the best so far), then bisects between the last that fit and the first that did not. The
result of the kind is the best GMAC/s among the shapes it placed and routed.
"""

from __future__ import annotations

import time

from hbfp_hw.rtl_gen.block_to_float import BlockToFloat
from hbfp_hw.rtl_gen.fp32_mac import MULTIPLIER_STEPS
from hbfp_hw.rtl_gen.mac_tree import MacTree
from hbfp_hw.rtl_gen.systolic import max_product_stages

from .flow import run_sweep
from .targets import SweepPoint, _check_choice, _target

__all__ = ["shape_ladder", "fill_chip", "array_stages", "ADDER_STAGES"]

#: The FP32 adder's pipeline depth in the arrays the search builds.
ADDER_STAGES = 11


def array_stages(kind, fmt, multipliers):
    """Pipeline depths of the arrays the search builds: every step of the term registered,
    the adder :data:`ADDER_STAGES` deep. A block product in logic only does not register its
    operands again (the PE's operand registers are right in front of it); one with DSP
    multipliers does, inside the ``MULT18X18D``, and copies the products into the fabric
    (:func:`~hbfp_hw.rtl_gen.systolic.max_product_stages`: the DSP sites are far from the
    PE's logic; without those registers the routes into and out of the DSPs were the
    critical paths, 75 and 88 MHz for 2 x 3 PEs)."""
    if kind == "fp32-array":
        product = max_product_stages("fp32") if multipliers != "lut" else MULTIPLIER_STEPS
        return {"product_stages": product, "convert_stages": 0, "adder_stages": ADDER_STAGES}
    product = (max_product_stages(fmt) if multipliers != "lut"
               else MacTree.max_stages_for(fmt) - 1)
    return {"product_stages": product, "convert_stages": BlockToFloat.MAX_STAGES,
            "adder_stages": ADDER_STAGES}


def shape_ladder(max_side=32):
    """Return the candidate ``(rows, cols)`` shapes: ``(1, 1), (1, 2), (2, 2), (2, 3), ...``."""
    shapes = []
    for side in range(1, max_side + 1):
        shapes.append((side, side))
        if side < max_side:
            shapes.append((side, side + 1))
    return shapes


def dsps_per_pe(kind, fmt):
    """DSP blocks one PE's multipliers take: one per element of a block, four for an FP32
    product (24 x 24 bits in 18 x 18 multipliers)."""
    return 4 if kind == "fp32-array" else fmt.block_size


def _point(kind, fmt, shape, multipliers, target):
    rows, cols = shape
    params = {**array_stages(kind, fmt, multipliers),
              "rows": rows, "cols": cols}
    if multipliers == "mixed":
        params["dsp_pes"] = min(rows * cols, target.dsps // dsps_per_pe(kind, fmt))
    return SweepPoint(kind, fmt if kind == "array" else None, params=tuple(params.items()),
                      multipliers=multipliers)


def _pes(row):
    """PEs of a measured array (its parameters' rows x cols)."""
    return row["params"]["rows"] * row["params"]["cols"]


def _gmacs(row):
    return row["macs_per_cycle"] * row["fmax_mhz"] / 1e3 if row.get("fmax_mhz") else 0.0


class _Search:
    """Bisection over the ladder for one (kind, multipliers); keeps every row measured."""

    def __init__(self, kind, fmt, multipliers, ladder, measure, say, target):
        self.kind, self.fmt, self.multipliers = kind, fmt, multipliers
        self.target = target
        self.ladder, self.measure, self.say = ladder, measure, say
        self.rows = {}                  # ladder index -> sweep row

    def fits(self, index):
        if index not in self.rows:
            shape = self.ladder[index]
            point = _point(self.kind, self.fmt, shape, self.multipliers, self.target)
            too_big = self._estimate(shape)
            if too_big:
                self.say(f"{self.kind} {self.multipliers}: {shape[0]}x{shape[1]} {too_big}")
                self.rows[index] = {"label": point.label, "multipliers": self.multipliers,
                                    "status": "does not fit", "estimated": True,
                                    "error": too_big}
            else:
                self.say(f"{self.kind} {self.multipliers}: trying {shape[0]}x{shape[1]}")
                self.rows[index] = self.measure(point)
        row = self.rows[index]
        if row.get("status") != "ok":
            return False
        best = max((_gmacs(r) for r in self.rows.values()), default=0.0)
        return _gmacs(row) >= best / 2

    def _estimate(self, shape):
        """Why ``shape`` cannot fit, judged from the largest array placed so far (its logic
        cells per PE times the PEs of ``shape``, over the part's), or None. A PE with DSP
        multipliers takes fewer logic cells than one without, and a larger array of a mixed
        search has a larger share of the latter, so the estimate is low, never high: only
        arrays that certainly do not fit are skipped."""
        placed = [r for r in self.rows.values()
                  if r.get("status") == "ok" and "logic_cells" in r.get("utilisation", {})]
        if not placed:
            return None
        row = max(placed, key=_pes)
        cells = row["utilisation"]["logic_cells"]
        per_pe = cells["used"] / _pes(row)
        estimate = per_pe * shape[0] * shape[1]
        if estimate <= cells["total"]:
            return None
        return (f"does not fit (estimated: {estimate:,.0f} of {cells['total']:,} logic "
                f"cells at {per_pe:,.0f} per PE, as in {row['label']})")

    def run(self):
        if not self.fits(0):
            return self
        lo, hi = 0, None
        step = 1
        while hi is None:
            probe = min(lo + step, len(self.ladder) - 1)
            if probe == lo:
                break
            if self.fits(probe):
                lo = probe
                step *= 2
            else:
                hi = probe
        while hi is not None and hi - lo > 1:
            mid = (lo + hi) // 2
            if self.fits(mid):
                lo = mid
            else:
                hi = mid
        return self

    def best(self):
        ok = [r for r in self.rows.values() if r.get("status") == "ok"]
        return max(ok, key=_gmacs) if ok else None


def fill_chip(fmt, target="ecp5-85f", *, multipliers=("mixed",), max_side=32,
              progress=True, **sweep_options):
    """Find the BFP array and the FP32 array that maximise GMAC/s on ``target``.

    Parameters
    ----------
    fmt : BFPFormat
    target : str
        A key of :data:`~hbfp_hw.fpga.sweep.targets.TARGETS`.
    multipliers : tuple of {"mixed", "dsp", "lut"}
        The multiplier mappings to search, each separately. "mixed" (the default): as many
        PEs as the part's DSP blocks hold multiply in DSPs, the others in logic; "dsp": every
        PE in DSPs (as many PEs as the DSPs allow); "lut": every PE in logic.
    max_side : int
        Largest rows (and columns) tried.
    sweep_options
        Passed to :func:`~hbfp_hw.fpga.sweep.flow.run_sweep` (seeds, jobs, io, freq_mhz,
        router, timeout, cache, logs_dir).

    Returns
    -------
    dict
        ``bfp_gmacs``, ``fp32_gmacs``, ``ratio``, ``bfp_fmax_mhz``, ``fp32_fmax_mhz``,
        ``bfp_macs_per_cycle``, ``fp32_macs_per_cycle``, ``bfp`` and ``fp32`` (the best rows,
        with their resources), ``points`` (every row measured, with ``gmacs``), ``target``,
        ``seconds``.
    """
    target = _target(target)
    for mult in multipliers:
        _check_choice("multipliers", mult, ("mixed", "dsp", "lut"))
    ladder = shape_ladder(max_side)
    t0 = time.monotonic()
    doc_meta = {}

    def say(text):
        if progress:
            print(f"[fill-chip {time.monotonic() - t0:6.0f} s] {text}", flush=True)

    def measure(point):
        doc = run_sweep([point], target, progress=progress, **sweep_options)
        doc_meta.update({k: doc[k] for k in ("target", "io", "freq_mhz", "router", "seeds",
                                             "tools", "flow_version")})
        row = doc["points"][0]
        row["gmacs"] = round(_gmacs(row), 3)
        fmax = row.get("fmax_mhz")
        say(f"{row['label']} ({row['multipliers']}): {row['status']}"
            + (f", {fmax:.1f} MHz, {row['gmacs']:.2f} GMAC/s" if fmax else ""))
        return row

    best, points = {}, []
    for kind, key in (("array", "bfp"), ("fp32-array", "fp32")):
        candidates = []
        for mult in multipliers:
            search = _Search(kind, fmt, mult, ladder, measure, say, target).run()
            points.extend(search.rows[i] for i in sorted(search.rows))
            if search.best() is not None:
                candidates.append(search.best())
        best[key] = max(candidates, key=_gmacs) if candidates else None

    def field(key, name):
        return best[key][name] if best[key] else None

    bfp_g, fp32_g = field("bfp", "gmacs"), field("fp32", "gmacs")
    return {
        **doc_meta,
        "format": fmt.to_dict(),
        "bfp_gmacs": bfp_g,
        "fp32_gmacs": fp32_g,
        "ratio": round(bfp_g / fp32_g, 3) if bfp_g and fp32_g else None,
        "bfp_fmax_mhz": field("bfp", "fmax_mhz"),
        "fp32_fmax_mhz": field("fp32", "fmax_mhz"),
        "bfp_macs_per_cycle": field("bfp", "macs_per_cycle"),
        "fp32_macs_per_cycle": field("fp32", "macs_per_cycle"),
        "bfp_resources": field("bfp", "resources"),
        "fp32_resources": field("fp32", "resources"),
        "bfp": best["bfp"],
        "fp32": best["fp32"],
        "points": points,
        "seconds": round(time.monotonic() - t0, 1),
    }

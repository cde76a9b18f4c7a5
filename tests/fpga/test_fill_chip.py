# amaranth: UnusedElaboratable=no
"""fill_chip's search (with the tools replaced by a model of the part) and its CLI."""

import json

import pytest

from hbfp_hw.cli import main
from hbfp_hw.formats import BFP8
from hbfp_hw.fpga.sweep import fill as fill_mod
from hbfp_hw.fpga.sweep import fill_chip, shape_ladder


def fake_part(capacity, fmax):
    """A run_sweep stand-in: a point fits while its PEs x cost <= capacity; Fmax per kind."""
    calls = []

    def run_sweep(points, target, **_):
        (point,) = points
        p = dict(point.params)
        pes = p["rows"] * p["cols"]
        cost = {"array": 1.0, "fp32-array": 3.0}[point.kind]
        fits = pes * cost <= capacity
        calls.append(point.label)
        macs = pes * (16 if point.kind == "array" else 1)
        row = {"label": point.label, "kind": point.kind, "multipliers": point.multipliers,
               "status": "ok" if fits else "does not fit", "macs_per_cycle": macs,
               "resources": {"logic_cells": int(pes * cost * 100), "ff": 1, "dsp": 0,
                             "bram": 0},
               "params": p,
               "utilisation": {"logic_cells": {"used": int(pes * cost * 100),
                                               "total": int(capacity * 100)}}}
        if fits:
            row["fmax_mhz"] = fmax[point.kind] - pes * 0.1
        return {"target": {"device": "X"}, "io": "serial", "freq_mhz": 150, "router": "r",
                "seeds": [1, 2], "tools": {}, "flow_version": 1, "points": [row]}
    return run_sweep, calls


def test_bisection_finds_the_largest_array_that_fits(monkeypatch):
    run_sweep, calls = fake_part(capacity=40, fmax={"array": 130.0, "fp32-array": 110.0})
    monkeypatch.setattr(fill_mod, "run_sweep", run_sweep)
    doc = fill_chip(BFP8, multipliers=("lut",), progress=False)
    ladder = shape_ladder(32)
    assert doc["bfp"]["label"] == "bfp8-6x6+lutmul"           # 36 PEs <= 40 < 42 (6x7)
    assert doc["fp32"]["label"] == "fp32-3x4+lutmul"          # 12 x 3 <= 40 < 48
    assert doc["bfp_macs_per_cycle"] == 36 * 16
    assert doc["ratio"] == pytest.approx(doc["bfp_gmacs"] / doc["fp32_gmacs"], rel=1e-3)
    # Bisection, not the whole ladder: far fewer points than shapes up to the first misfit.
    assert len(calls) < ladder.index((6, 7)) + ladder.index((4, 4))
    for key in ("bfp_gmacs", "fp32_gmacs", "ratio", "bfp_fmax_mhz", "fp32_fmax_mhz",
                "bfp_macs_per_cycle", "fp32_macs_per_cycle", "bfp_resources",
                "fp32_resources"):
        assert doc[key], key


def test_arrays_certainly_too_large_are_not_built(monkeypatch):
    """A shape whose logic cells, at the largest placed array's per PE, exceed the part's is
    reported as not fitting without a build (this part's cost is exactly linear, so every
    misfit is known before it is built)."""
    run_sweep, calls = fake_part(capacity=40, fmax={"array": 130.0, "fp32-array": 110.0})
    monkeypatch.setattr(fill_mod, "run_sweep", run_sweep)
    doc = fill_chip(BFP8, multipliers=("lut",), progress=False)
    skipped = [r for r in doc["points"] if r.get("estimated")]
    assert skipped and all(r["status"] == "does not fit" for r in skipped)
    assert "estimated: 4,200 of 4,000 logic cells at 100 per PE, as in bfp8-4x5+lutmul" \
        in skipped[0]["error"]
    assert not {r["label"] for r in skipped} & set(calls)
    assert all(r["status"] == "ok" for r in doc["points"] if not r.get("estimated"))


def test_nothing_fits(monkeypatch):
    run_sweep, _ = fake_part(capacity=0.5, fmax={"array": 1.0, "fp32-array": 1.0})
    monkeypatch.setattr(fill_mod, "run_sweep", run_sweep)
    doc = fill_chip(BFP8, multipliers=("dsp",), progress=False)
    assert doc["bfp"] is None and doc["ratio"] is None


def test_cli_runs_and_writes_json(monkeypatch, tmp_path, capsys):
    run_sweep, _ = fake_part(capacity=20, fmax={"array": 120.0, "fp32-array": 100.0})
    monkeypatch.setattr(fill_mod, "run_sweep", run_sweep)
    out = tmp_path / "fill.json"
    rc = main(["sweep", "--fill-chip", "--format", "bfp8", "--multipliers", "lut",
               "--json", str(out), "--plot", str(tmp_path / "fill.png"), "--quiet"])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["bfp"]["label"] == "bfp8-4x5+lutmul"
    assert (tmp_path / "fill.png").stat().st_size > 1000
    assert "ratio:" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--format", "bfp9"], "--format must be a preset name or wWbN"),
    (["--max-side", "0"], "--max-side"),
    (["--with-accuracy"], "--with-accuracy applies to the grid"),
])
def test_cli_rejects_bad_input(argv, message, capsys):
    try:
        rc = main(["sweep", "--fill-chip", *argv])
    except SystemExit as e:                 # argparse's own checks
        rc = e.code
    assert rc == 2
    assert message in capsys.readouterr().err

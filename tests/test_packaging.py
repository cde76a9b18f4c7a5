"""The package declares version ranges; the set-up pins exact builds in .ci/constraints.txt."""

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")
requirements = pytest.importorskip("packaging.requirements")
version = pytest.importorskip("packaging.version")

ROOT = Path(__file__).resolve().parents[1]


def _extra(name):
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {requirements.Requirement(r).name: requirements.Requirement(r)
            for r in meta["project"]["optional-dependencies"][name]}


def test_torch_extra_is_a_range_and_ci_pins_it():
    torch_req = _extra("torch")["torch"]
    specs = list(torch_req.specifier)
    assert specs and not any(s.operator in ("==", "===") for s in specs), \
        "the torch extra must declare a range, not pin one release"
    pins = [requirements.Requirement(line) for line in
            (ROOT / ".ci/constraints.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    torch_pin = next(r for r in pins if r.name == "torch")
    pinned = version.Version(str(torch_pin.specifier).removeprefix("=="))
    assert torch_req.specifier.contains(pinned), "CI must test a release inside the range"
    assert "-c $(CONSTRAINTS)" in (ROOT / "Makefile").read_text()


def test_installed_torch_is_in_the_declared_range():
    torch = pytest.importorskip("torch")
    installed = version.Version(torch.__version__.split("+")[0])
    assert _extra("torch")["torch"].specifier.contains(installed)

"""Bitstream builds with the YoWASP toolchain, progress display, and parsed resource reports.

:func:`toolchain_env` points Amaranth's tool variables (``YOSYS``, ``NEXTPNR_ECP5``,
``ECPPACK``, ``NEXTPNR_ICE40``, ``ICEPACK``) at the ``yowasp-*`` entry points installed with
this package, so nobody sets them by hand. :func:`build` prepares the Amaranth build plan of a
:class:`~hbfp_hw.fpga.boards.BoardTop`, runs the plan's commands one stage at a time (Yosys,
nextpnr, pack) with a progress line, and parses the logs into a report:

- resources from the last ``stat`` of the Yosys log (``top.rpt``);
- device utilisation and ``Max frequency for clock`` lines from the nextpnr log (``top.tim``).

nextpnr runs with ``--timing-allow-fail`` so that a failing design still gets a report;
:func:`build` then raises :class:`TimingError`, which names the critical clock.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth._toolchain import tool_env_var

from hbfp_hw.tools import process
from hbfp_hw.tools.process import last_progress_line
from hbfp_hw.tools.yowasp import YOWASP_PACKAGES, YOWASP_TOOLS, find_entry_point, missing_tools

from .boards import BOARDS, BoardTop, BuildConfig

__all__ = [
    "YOWASP_TOOLS",
    "toolchain_env",
    "missing_tools",
    "parse_yosys_stat",
    "parse_nextpnr_log",
    "last_progress_line",
    "BuildError",
    "TimingError",
    "BuildResult",
    "build",
    "DEFAULT_SEED",
    "DEFAULT_SEED_ATTEMPTS",
    "program",
    "programmer_missing_reason",
    "INSTALL_HINTS",
]

#: How to install the programmers used by ``--program``.
INSTALL_HINTS = {
    "openFPGALoader": ("openFPGALoader is not installed. Install it with "
                       "`apt-get install openfpgaloader` (Debian/Ubuntu), `brew install "
                       "openfpgaloader` (macOS), or build it from "
                       "https://github.com/trabucayre/openFPGALoader; or set OPENFPGALOADER "
                       "to its path."),
    "iceprog": ("iceprog is not installed. Install it with `apt-get install fpga-icestorm` "
                "(Debian/Ubuntu), from the OSS CAD Suite "
                "(https://github.com/YosysHQ/oss-cad-suite-build), or build it from "
                "https://github.com/YosysHQ/icestorm; or set ICEPROG to its path."),
}


def toolchain_env(family, environ=None):
    """Set Amaranth's tool variables for ``family`` to the YoWASP entry points.

    Variables already set in ``environ`` (default ``os.environ``) are kept, so a native
    toolchain can still be chosen explicitly. Returns the variables for this family.

    Raises
    ------
    BuildError
        If a YoWASP tool is missing; the message says what to install.
    """
    if family not in YOWASP_TOOLS:
        raise ValueError(f"family must be one of {', '.join(YOWASP_TOOLS)}, not {family!r}")
    environ = os.environ if environ is None else environ
    result = {}
    for tool, script in YOWASP_TOOLS[family].items():
        var = tool_env_var(tool)
        if var not in environ:
            path = find_entry_point(script)
            if path is None:
                raise BuildError(f"{script} is missing: pip install {YOWASP_PACKAGES[script]}")
            environ[var] = path
        result[var] = environ[var]
    return result


# -- log parsing --------------------------------------------------------------------------------

#: Cell types counted in each resource class, per family.
_CELL_CLASSES = {
    "ecp5": {
        "lut": ("LUT4", "TRELLIS_COMB"),
        "ff": ("TRELLIS_FF",),
        "carry": ("CCU2C",),
        "dsp": ("MULT18X18D", "ALU54B"),
        "bram": ("DP16KD", "PDPW16KD"),
        "lutram": ("TRELLIS_DPR16X4", "DPR16X4C"),
    },
    "ice40": {
        "lut": ("SB_LUT4",),
        "ff": ("SB_DFF*",),
        "carry": ("SB_CARRY",),
        "dsp": ("SB_MAC16",),
        "bram": ("SB_RAM40_4K",),
        "spram": ("SB_SPRAM256KA",),
    },
}

_STAT_TOP = re.compile(r"^=== (\S+) ===\s*$", re.M)
_STAT_CELL_OLD = re.compile(r"^\s+(?P<cell>[A-Za-z_$][\w$\\.]*)\s+(?P<count>\d+)\s*$")
_STAT_CELL_NEW = re.compile(r"^\s+(?P<count>\d+)\s+(?:[\d.]+\s+)?(?P<cell>[A-Za-z_$][\w$\\.]*)\s*$")


def parse_yosys_stat(text, family):
    """Parse the last ``stat`` report of a Yosys log into resource counts.

    Understands both the old layout (``  TRELLIS_FF   123``) and the one of Yosys >= 0.50
    (``  123   TRELLIS_FF``). The last design-level section wins: the hierarchy total when
    there is one, else the last module printed (synthesis flattens, so that is the top).

    Returns
    -------
    dict
        ``{"cells": {type: count}, "lut": n, "ff": n, "carry": n, "dsp": n, "bram": n, ...}``.

    Raises
    ------
    ValueError
        If the log holds no statistics.
    """
    start = text.rfind("Printing statistics.")
    if start < 0:
        raise ValueError("no Yosys statistics found in the log")
    section = text[start:]
    modules = set(_STAT_TOP.findall(section)) | {"submodules", "cells", "wires", "memories",
                                                  "processes", "ports", "bits"}
    # Keep the last block: the design hierarchy total when yosys prints one, else the
    # last (after flattening: the only) module.
    blocks = re.split(r"^=== .* ===\s*$", section, flags=re.M)
    body = blocks[-1] if len(blocks) > 1 else section
    cells = {}
    for line in body.splitlines():
        match = _STAT_CELL_NEW.match(line) or _STAT_CELL_OLD.match(line)
        if not match or match.group("cell") in modules:
            continue
        cells[match.group("cell")] = int(match.group("count"))
    cells.pop("$scopeinfo", None)
    report = {"cells": cells}
    for key, names in _CELL_CLASSES[family].items():
        total = 0
        for name in names:
            if name.endswith("*"):
                total += sum(v for k, v in cells.items() if k.startswith(name[:-1]))
            else:
                total += cells.get(name, 0)
        report[key] = total
    return report


_UTIL_LINE = re.compile(r"^Info:\s+(?P<bel>\w+):\s+(?P<used>\d+)/\s*(?P<total>\d+)\s+(?P<pct>\d+)%")
_FMAX_LINE = re.compile(
    r"^(?:Info|Warning|ERROR):\s+Max frequency for clock\s+'(?P<clock>[^']+)':\s+"
    r"(?P<fmax>[\d.]+)\s+MHz\s+\((?P<status>PASS|FAIL)\s+at\s+(?P<target>[\d.]+)\s+MHz\)")


def parse_nextpnr_log(text):
    """Parse a nextpnr log: device utilisation and the final Fmax of every clock.

    nextpnr prints ``Max frequency for clock`` after placement and again after routing; the
    last value of each clock (post-route) is kept.

    Returns
    -------
    dict
        ``{"utilisation": {bel: {"used", "total", "percent"}}, "clocks": [{"name",
        "fmax_mhz", "target_mhz", "passed"}], "timing_passed": bool or None}``.
    """
    utilisation = {}
    util_start = text.rfind("Device utilisation:")
    if util_start >= 0:
        for line in text[util_start:].splitlines()[1:]:
            match = _UTIL_LINE.match(line.replace("\t", " "))
            if match:
                utilisation[match.group("bel")] = {
                    "used": int(match.group("used")), "total": int(match.group("total")),
                    "percent": int(match.group("pct"))}
            elif utilisation or not line.strip().startswith("Info:"):
                break
    clocks = {}
    for line in text.splitlines():
        match = _FMAX_LINE.match(line.strip())
        if match:
            clocks[match.group("clock")] = {
                "name": match.group("clock"),
                "fmax_mhz": float(match.group("fmax")),
                "target_mhz": float(match.group("target")),
                "passed": match.group("status") == "PASS",
            }
    clock_list = list(clocks.values())
    return {
        "utilisation": utilisation,
        "clocks": clock_list,
        "timing_passed": all(c["passed"] for c in clock_list) if clock_list else None,
    }


# -- running ------------------------------------------------------------------------------------

class BuildError(Exception):
    """A build step failed (the message says which and where its log is)."""


class TimingError(BuildError):
    """The design does not meet timing.

    Members
    -------
    clock : dict
        The critical clock (lowest Fmax / target ratio) as in the report's ``clocks``.
    report : dict
        The full build report.
    """

    def __init__(self, clock, report):
        self.clock = clock
        self.report = report
        super().__init__(
            f"timing failed: clock {clock['name']!r} reaches {clock['fmax_mhz']:.2f} MHz, "
            f"{clock['target_mhz']:.2f} MHz required")


@dataclass
class BuildResult:
    """Outcome of :func:`build`: the report dict and the bitstream path."""

    report: dict
    bitstream: Path
    build_dir: Path


_STAGE_NAMES = {
    "yosys": "synthesis (yosys)",
    "nextpnr-ecp5": "place & route (nextpnr-ecp5)",
    "nextpnr-ice40": "place & route (nextpnr-ice40)",
    "ecppack": "bitstream (ecppack)",
    "icepack": "bitstream (icepack)",
}


class _Progress:
    """A status line per stage: tqdm when stderr is a terminal, plain lines otherwise."""

    def __init__(self, enabled, total):
        self.enabled = enabled
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="stage", file=sys.stderr,
                            bar_format="{desc} [{n_fmt}/{total_fmt}] {elapsed}{postfix}",
                            disable=not sys.stderr.isatty())
            self.tty = sys.stderr.isatty()

    def stage(self, name):
        if not self.enabled:
            return
        if self.tty:
            self.bar.set_description_str(name)
        else:
            print(f"[hbfp-hw build] {name} ...", file=sys.stderr, flush=True)

    def note(self, text):
        if self.enabled and self.tty:
            self.bar.set_postfix_str(text, refresh=True)

    def done(self, name, seconds):
        if not self.enabled:
            return
        self.bar.update(1)
        if self.tty:
            self.bar.write(f"{name}: done in {seconds:.1f} s", file=sys.stderr)
        else:
            print(f"[hbfp-hw build] {name} done in {seconds:.1f} s", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


#: nextpnr placement seed of a build that names none. nextpnr's own default (no ``--seed``) is
#: a fixed state too; an explicit seed makes the report say which placement it is.
DEFAULT_SEED = 1
#: Placement seeds ``hbfp-hw build`` tries (DEFAULT_SEED, DEFAULT_SEED + 1, ...) before it
#: reports a timing failure. nextpnr's placement, and so the Fmax, of the ULX3S default varies
#: from seed to seed (docs/hardware.md); a retry costs one more nextpnr run.
DEFAULT_SEED_ATTEMPTS = 3


def build(config, out_dir, *, name="top", system_factory=None, progress=True, seed=None,
          seed_attempts=1, allow_timing_fail=False, timeout=None):
    """Build the bitstream of ``config`` into ``out_dir`` and return a :class:`BuildResult`.

    Parameters
    ----------
    config : BuildConfig
    out_dir : str or Path
        Build directory (created). Holds the bitstream, the logs (``top.rpt`` from Yosys,
        ``top.tim`` from nextpnr, ``<stage>.out`` with each tool's console output) and
        ``report.json``.
    system_factory : callable, optional
        Passed to :class:`~hbfp_hw.fpga.boards.BoardTop` (default: the real ``GemmSystem``).
    progress : bool
        Show a progress line on stderr.
    seed : int, optional
        nextpnr placement seed (default :data:`DEFAULT_SEED`).
    seed_attempts : int
        When timing fails, place and route again with the next seed (``seed + 1``, ...), up
        to this many runs in all; synthesis runs once per attempt. The report's
        ``seed_attempts`` lists every run (seed, Fmax, passed, seconds), and ``seed`` is the
        one whose bitstream and logs are in ``out_dir``: the first that met timing, else the
        last.
    allow_timing_fail : bool
        Return normally when timing fails (the report says so) instead of raising.
    timeout : float, optional
        Wall-clock limit of each attempt in seconds; a tool still running then is stopped
        and :class:`BuildError` raised.

    Raises
    ------
    BuildError
        If a tool is missing or a step fails.
    TimingError
        If a clock misses its target (unless ``allow_timing_fail``).
    """
    if not isinstance(config, BuildConfig):
        raise TypeError(f"config must be a BuildConfig, not {config!r}")
    seed = DEFAULT_SEED if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise ValueError(f"seed must be an integer in [0, 2**31), not {seed!r}")
    if (isinstance(seed_attempts, bool) or not isinstance(seed_attempts, int)
            or not 1 <= seed_attempts <= 100):
        raise ValueError(f"seed_attempts must be an integer in [1, 100], not {seed_attempts!r}")
    attempts = []
    for i in range(seed_attempts):
        report = _build_once(config, out_dir, name=name, system_factory=system_factory,
                             progress=progress, seed=seed + i, timeout=timeout)
        attempts.append({"seed": seed + i, "fmax_mhz": report.get("fmax_mhz"),
                         "timing_passed": report["timing_passed"],
                         "seconds": report["total_seconds"]})
        report["seed_attempts"] = attempts
        Path(report["build_dir"], "report.json").write_text(json.dumps(report, indent=2) + "\n")
        if report["timing_passed"] is not False:
            break
        if progress and i + 1 < seed_attempts:
            print(f"[hbfp-hw build] seed {seed + i}: timing failed (Fmax "
                  f"{report['fmax_mhz']:.2f} MHz, {report['target_mhz']:.2f} MHz required); "
                  f"placing again with seed {seed + i + 1} "
                  f"(attempt {i + 2} of {seed_attempts})", file=sys.stderr, flush=True)
    if report["timing_passed"] is False and not allow_timing_fail:
        critical = next(c for c in report["clocks"] if c["name"] == report["critical_clock"])
        raise TimingError(critical, report)
    return BuildResult(report, Path(report["bitstream"]), Path(report["build_dir"]))


def _build_once(config, out_dir, *, name, system_factory, progress, seed, timeout):
    """One synthesis, place-and-route and packing run; return the report (timing unchecked)."""
    spec = config.spec
    family = spec.family
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    tools = toolchain_env(family, env)

    t_start = time.monotonic()
    top = BoardTop(config, system_factory=system_factory)
    platform = spec.platform()
    nextpnr_opts = ["--timing-allow-fail", "--seed", str(seed)]
    # iCE40: let Yosys map multipliers to the UP5K's SB_MAC16 blocks (it does not by default).
    synth_opts = "-dsp" if family == "ice40" else ""
    overrides = {}
    if family == "ecp5" and config.system.rows:
        # Yosys 0.70's abc9 fails an assertion (ABC_OPS_REINTEGRATE) on GemmSystems with a
        # systolic array, flat or module by module (docs/hardware.md): their LUTs are mapped
        # by abc instead.
        synth_opts = "-run :map_luts"
        overrides["script_after_synth"] = (
            "techmap -map +/lattice/latches_map.v\nabc -lut 4 -dress\nclean\n"
            "synth_ecp5 -top top -run map_cells:\nstat")
    if family == "ice40":
        # The iCE40 has no LUT RAM, so Yosys builds small memories from flip-flops, a logic
        # cell each. The dot-product units' two sync-read FIFOs (BlockDotUnit's side and term
        # buffers) go to the spare SB_RAM40_4K instead: about 300 logic cells on the UP5K.
        overrides["script_after_read"] = (
            'setattr -set ram_style "block" *.side/storage *.term_buf/storage')
    plan = platform.prepare(top, name=name, nextpnr_opts=" ".join(nextpnr_opts),
                            synth_opts=synth_opts, debug_verilog=False, **overrides)
    plan.extract(str(out_dir))
    t_prepare = time.monotonic() - t_start
    commands = json.loads(plan.files[f"build_{name}.json"])["commands"]

    stages = []
    bar = _Progress(progress, len(commands))
    try:
        for argv in commands:
            tool = argv[0]
            stage = _STAGE_NAMES.get(tool, tool)
            bar.stage(stage)
            watch = out_dir / (f"{name}.rpt" if tool == "yosys" else f"{name}.tim")
            log_path = out_dir / f"{tool}.out"
            t0 = time.monotonic()
            left = None if timeout is None else max(0.0, t_start + timeout - t0)

            def note(_elapsed, watch=watch):
                bar.note(last_progress_line(watch))

            result = process.run([env[tool_env_var(tool)], *argv[1:]], cwd=out_dir, env=env,
                                 log=log_path, timeout=left, tool=stage, progress=note)
            seconds = time.monotonic() - t0
            stages.append({"stage": stage, "tool": tool, "seconds": round(seconds, 1),
                           "command": shlex.join(argv)})
            if result.timed_out:
                raise BuildError(f"{stage} did not finish within {timeout / 60:.0f} min "
                                 f"(stopped); log: {watch}")
            try:
                result.check()
            except process.ToolError as exc:
                raise BuildError(str(exc)) from exc
            bar.done(stage, seconds)
    finally:
        bar.close()

    synth = parse_yosys_stat((out_dir / f"{name}.rpt").read_text(errors="replace"), family)
    pnr = parse_nextpnr_log((out_dir / f"{name}.tim").read_text(errors="replace"))
    bitstream = out_dir / (f"{name}.bit" if family == "ecp5" else f"{name}.bin")
    if not bitstream.exists():
        raise BuildError(f"the build finished but {bitstream} is missing")

    # The compute clock is the PLL output / oscillator; it is the one with our constraint.
    target = config.clock_hz / 1e6
    resources = {k: v for k, v in synth.items() if k != "cells"}
    # Logic cells after packing: an ECP5 TRELLIS_COMB is a LUT4 or half a CCU2C carry; an
    # iCE40 ICESTORM_LC is a LUT4 and/or a flip-flop.
    for bel in ("TRELLIS_COMB", "ICESTORM_LC"):
        if bel in pnr["utilisation"]:
            resources["logic_cells"] = pnr["utilisation"][bel]["used"]
            resources["logic_cells_total"] = pnr["utilisation"][bel]["total"]
    report = {
        "config": config.to_dict(),
        "resources": resources,
        "cells": synth["cells"],
        "utilisation": pnr["utilisation"],
        "clocks": pnr["clocks"],
        "timing_passed": pnr["timing_passed"],
        "target_mhz": target,
        "bitstream": str(bitstream),
        "build_dir": str(out_dir),
        "seed": seed,
        "stages": stages,
        "prepare_seconds": round(t_prepare, 1),
        "total_seconds": round(time.monotonic() - t_start, 1),
        "tools": tools,
    }
    report["macs_per_cycle"] = config.system.macs_per_cycle
    if pnr["clocks"]:
        critical = min(pnr["clocks"], key=lambda c: c["fmax_mhz"] / c["target_mhz"])
        report["critical_clock"] = critical["name"]
        report["fmax_mhz"] = critical["fmax_mhz"]
        # peak throughput at the achieved Fmax: MACs/cycle x Fmax / 1e9
        report["gmacs"] = round(report["macs_per_cycle"] * critical["fmax_mhz"] / 1e3, 3)
    return report


# -- programming --------------------------------------------------------------------------------

def _programmer_path(programmer):
    env_var = "OPENFPGALOADER" if programmer == "openFPGALoader" else "ICEPROG"
    return shutil.which(os.environ.get(env_var, programmer))


def programmer_missing_reason(programmer):
    """Return an install hint if ``programmer`` is not available, else None."""
    if _programmer_path(programmer) is None:
        return INSTALL_HINTS[programmer]
    return None


def program(board, bitstream):
    """Load ``bitstream`` into ``board`` (SRAM, not flash) with its programmer.

    Raises
    ------
    BuildError
        If the programmer is missing (with install hints) or fails.
    """
    spec = BOARDS[board]
    reason = programmer_missing_reason(spec.programmer)
    if reason is not None:
        raise BuildError(reason)
    tool = _programmer_path(spec.programmer)
    if spec.programmer == "openFPGALoader":
        argv = [tool, "-b", "ulx3s", str(bitstream)]
    else:
        argv = [tool, "-S", str(bitstream)]
    rc = process.run(argv).returncode
    if rc != 0:
        raise BuildError(f"{shlex.join(argv)} failed with exit code {rc}")
    return argv

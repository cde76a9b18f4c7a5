"""The one way hbfp-hw runs a tool: :func:`run`, or :meth:`Runner.run` for several at once.

A tool runs in a process group of its own (a new session), so that a timeout, an interrupt
(``KeyboardInterrupt`` in the caller) or :meth:`Runner.stop` kills the tool *and* what it
started (``make`` and its compilers, the Python process behind a YoWASP entry point). Its
standard input is ``/dev/null``. Its output goes to one of three places:

- ``log=path``: standard output and standard error, merged, into that file;
- ``capture=True``: kept apart and returned as text (:attr:`Completed.stdout`,
  :attr:`Completed.stderr`);
- neither: inherited from this process (a programmer that talks to the user).

While the tool runs, ``progress(elapsed_seconds)`` is called every ``poll`` seconds, e.g. to
show :func:`last_progress_line` of its log. A run that passes ``timeout`` is killed and
reported with ``returncode`` None. :class:`ToolError` names the tool, its exit code and the
tail of its log; ``check=True`` raises it for a failed or timed-out run.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["run", "Runner", "Completed", "ToolError", "last_progress_line", "log_tail",
           "shell_join"]

#: Lines of the log that :class:`ToolError` quotes.
TAIL_LINES = 15


class ToolError(RuntimeError):
    """A tool failed or was stopped at its timeout.

    Members
    -------
    tool : str
        The name the caller gave the run (default: the program's file name).
    returncode : int or None
        The exit code; None when the run was stopped at its timeout.
    log : Path or None
        The log file, if the run had one.
    tail : str
        The last :data:`TAIL_LINES` lines of the log (or of the captured standard error).
    """

    def __init__(self, tool, returncode, *, log=None, tail="", message=None):
        self.tool = tool
        self.returncode = returncode
        self.log = None if log is None else Path(log)
        self.tail = tail
        if message is None:
            what = ("did not finish in time (stopped)" if returncode is None
                    else f"failed (exit code {returncode})")
            message = f"{tool} {what}"
            if log is not None:
                message += f"; log: {log}\n{tail}"
            elif tail:
                message += f"\n{tail}"
        super().__init__(message)

    @property
    def timed_out(self):
        """Whether the run was stopped at its timeout."""
        return self.returncode is None


@dataclass
class Completed:
    """The outcome of a run.

    ``returncode`` is None when the run was stopped at its timeout; ``stdout`` and ``stderr``
    hold the output when it was captured; ``seconds`` is the wall time of the run.
    """

    tool: str
    argv: list
    returncode: int | None
    seconds: float
    log: Path | None = None
    stdout: str | None = None
    stderr: str | None = None

    @property
    def timed_out(self):
        return self.returncode is None

    def tail(self, lines=TAIL_LINES):
        """Return the last ``lines`` lines of the log (else of the captured stderr)."""
        if self.log is not None:
            return log_tail(self.log, lines)
        return "\n".join((self.stderr or "").splitlines()[-lines:])

    def check(self):
        """Return self if the tool exited with 0, else raise :class:`ToolError`."""
        if self.returncode != 0:
            raise ToolError(self.tool, self.returncode, log=self.log, tail=self.tail())
        return self


def log_tail(path, lines=TAIL_LINES):
    """Return the last ``lines`` lines of the text file at ``path`` (``""`` if unreadable)."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def last_progress_line(path):
    """Return the last non-blank line of the log at ``path`` (its last 4 kB read), cut to 70
    characters, for a progress display; ``""`` if there is none or the file cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        line = line.strip()
        if line:
            return line[:70]
    return ""


def shell_join(argv):
    """Return ``argv`` as one shell-quoted command line (for reports and messages)."""
    return shlex.join(str(a) for a in argv)


def _kill_group(proc):
    """Kill the process group that ``proc`` leads, then reap ``proc``."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


class Runner:
    """Runs tools, possibly from several threads, and remembers the live ones so that
    :meth:`stop` can kill them all (a sweep's parallel jobs on an interrupt).

    Parameters
    ----------
    env : dict, optional
        The environment of every run that gives none (default: this process's).
    """

    def __init__(self, env=None):
        self.env = env
        self._procs = set()
        self._lock = threading.Lock()
        self.stopping = False

    def run(self, argv, *, cwd=None, env=None, timeout=None, log=None, capture=False,
            progress=None, poll=1.0, tool=None, check=False):
        """Run ``argv`` to its end and return a :class:`Completed`.

        Parameters
        ----------
        argv : list
            The program and its arguments (``str`` or path-like).
        cwd : path, optional
        env : dict, optional
            The tool's whole environment (default: the runner's, else this process's).
        timeout : float, optional
            Seconds after which the tool is killed; the result's ``returncode`` is then None.
        log : path, optional
            File that receives the tool's standard output and error (truncated first).
        capture : bool
            Return standard output and error as text instead (not with ``log``).
        progress : callable, optional
            Called with the elapsed seconds every ``poll`` seconds while the tool runs.
        tool : str, optional
            The tool's name in results and errors (default: the program's file name).
        check : bool
            Raise :class:`ToolError` unless the tool exits with 0.

        Raises
        ------
        KeyboardInterrupt
            If :meth:`stop` was called before or during the run (the tool is killed).
        OSError
            If the program cannot be started.
        """
        if log is not None and capture:
            raise ValueError("a run either logs to a file or captures its output, not both")
        if self.stopping:
            raise KeyboardInterrupt
        argv = [str(a) for a in argv]
        tool = tool or Path(argv[0]).name
        env = env if env is not None else self.env
        t0 = time.monotonic()
        deadline = None if timeout is None else t0 + timeout
        out = err = None
        logf = open(log, "wb") if log is not None else None
        try:
            if logf is not None:
                streams = {"stdout": logf, "stderr": subprocess.STDOUT}
            elif capture:
                streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
            else:
                streams = {}
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                    start_new_session=True, **streams)
            with self._lock:
                self._procs.add(proc)
            try:
                while True:
                    try:
                        if capture:
                            out, err = proc.communicate(timeout=poll)
                            rc = proc.returncode
                        else:
                            rc = proc.wait(timeout=poll)
                        if self.stopping and rc != 0:
                            raise KeyboardInterrupt     # killed by stop(), not a tool failure
                        break
                    except subprocess.TimeoutExpired:
                        if progress is not None:
                            progress(time.monotonic() - t0)
                        if self.stopping:
                            _kill_group(proc)
                            raise KeyboardInterrupt from None
                        if deadline is not None and time.monotonic() > deadline:
                            _kill_group(proc)
                            if capture:
                                out, err = proc.communicate()
                            rc = None
                            break
            except BaseException:
                # An interrupt or an error in the progress callback: the tool must not outlive
                # its caller.
                if proc.returncode is None:
                    _kill_group(proc)
                raise
            finally:
                with self._lock:
                    self._procs.discard(proc)
        finally:
            if logf is not None:
                logf.close()
        result = Completed(tool, argv, rc, time.monotonic() - t0,
                           None if log is None else Path(log), out, err)
        return result.check() if check else result

    def stop(self):
        """Kill every tool this runner is running; their runs raise ``KeyboardInterrupt``,
        and so does every later run."""
        self.stopping = True
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    proc.kill()


def run(argv, **kwargs):
    """Run ``argv`` on a runner of its own; see :meth:`Runner.run` for the arguments."""
    return Runner().run(argv, **kwargs)

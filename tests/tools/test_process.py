"""The process runner (hbfp_hw/tools/process.py): output, exit codes, timeouts that kill the
whole process group, a stop from another thread, and the error that names the tool."""

import os
import sys
import threading
import time

import pytest

from hbfp_hw.tools import process
from hbfp_hw.tools.process import Runner, ToolError, last_progress_line, run

PY = sys.executable


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_log_gets_both_streams_and_the_exit_code(tmp_path):
    code = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"
    result = run([PY, "-c", code], log=tmp_path / "t.log", tool="t")
    assert result.returncode == 3 and not result.timed_out
    assert sorted((tmp_path / "t.log").read_text().split()) == ["err", "out"]
    with pytest.raises(ToolError, match=r"^t failed \(exit code 3\); log: .*t\.log\n") as info:
        result.check()
    assert (info.value.tool, info.value.returncode) == ("t", 3)
    assert sorted(info.value.tail.split()) == ["err", "out"]


def test_capture_keeps_the_streams_apart():
    code = "import sys; print('out'); print('err', file=sys.stderr)"
    result = run([PY, "-c", code], capture=True, check=True)
    assert (result.stdout, result.stderr) == ("out\n", "err\n")


def test_the_tool_gets_the_environment_and_the_folder(tmp_path):
    code = "import os; print(os.getcwd(), os.environ['HBFP_T'])"
    result = run([PY, "-c", code], cwd=tmp_path, env={**os.environ, "HBFP_T": "x"},
                 capture=True)
    assert result.stdout.split() == [str(tmp_path), "x"]


def test_timeout_kills_the_whole_group(tmp_path):
    """A tool that started a child of its own: both are gone after the timeout."""
    code = ("import subprocess, sys, time; "
            f"p = subprocess.Popen([{PY!r}, '-c', 'import time; time.sleep(60)']); "
            "print(p.pid, flush=True); time.sleep(60)")
    seen = []
    t0 = time.monotonic()
    result = run([PY, "-c", code], log=tmp_path / "t.log", timeout=1.5, poll=0.2,
                 progress=seen.append)
    assert result.timed_out and result.returncode is None
    assert time.monotonic() - t0 < 20
    assert seen and seen == sorted(seen)
    child = int((tmp_path / "t.log").read_text().split()[0])
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
    with pytest.raises(ToolError, match=r"did not finish in time \(stopped\)") as info:
        result.check()
    assert info.value.timed_out


def test_stop_kills_every_run_and_refuses_new_ones(tmp_path):
    runner = Runner()
    errors = []

    def job(i):
        try:
            runner.run([PY, "-c", "import time; time.sleep(60)"], log=tmp_path / f"{i}.log",
                       poll=0.1)
        except KeyboardInterrupt:
            errors.append(i)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    runner.stop()
    for t in threads:
        t.join(20)
    assert sorted(errors) == [0, 1]
    with pytest.raises(KeyboardInterrupt):
        runner.run([PY, "-c", "pass"])


def test_a_missing_program_raises_oserror():
    with pytest.raises(OSError):
        run(["/nonexistent/hbfp-tool"])


def test_log_and_capture_exclude_each_other(tmp_path):
    with pytest.raises(ValueError, match=r"^a run either logs to a file or captures"):
        run([PY, "-c", "pass"], log=tmp_path / "x", capture=True)


def test_last_progress_line(tmp_path):
    log = tmp_path / "x.log"
    assert last_progress_line(log) == ""
    log.write_text("first\n" + "x" * 100 + "\n\n  \n")
    assert last_progress_line(log) == "x" * 70
    assert process.shell_join(["a b", tmp_path]) == f"'a b' {tmp_path}"

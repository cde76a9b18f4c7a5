"""Transports without a device: the fault injector, the pipe transport, the device lock."""

import os
import subprocess
import sys

import pytest

from hbfp_hw.fpga.host.transport import (
    DeviceBusy,
    DeviceNotFound,
    PipeTransport,
    _DeviceLock,
)

from .faults import FaultInjectingTransport


class Loopback(PipeTransport):
    """What is written comes back (one pipe)."""

    def __init__(self):
        r, w = os.pipe()
        self._fds = (r, w)
        super().__init__(r, w, name="loopback")

    def close(self):
        os.close(self._fds[1])


def collect(t, n):
    out = b""
    while len(out) < n:
        data = t.read(1.0)
        if not data:
            break
        out += data
    return out


def test_pipe_round_trip_and_closed_link():
    t = Loopback()
    t.write(b"hello" * 1000)
    assert collect(t, 5000) == b"hello" * 1000
    assert t.read(0.01) == b""
    t.close()
    with pytest.raises(DeviceNotFound, match="closed the link"):
        t.read(1.0)


def test_faults_are_reproducible_and_at_the_given_rate():
    data = bytes(range(256)) * 200
    outs = []
    for _ in range(2):
        f = FaultInjectingTransport(Loopback(), corrupt=0.01, seed=5, directions="tx")
        f.write(data)
        outs.append(collect(f, len(data)))
        counts = f.counts
        f.close()
    assert outs[0] == outs[1]                            # fixed seed, same damage
    diff = sum(a != b for a, b in zip(outs[0], data))
    assert diff == counts["corrupt"]
    assert 0.007 * len(data) < diff < 0.013 * len(data)


def test_drop_duplicate_truncate_garbage():
    f = FaultInjectingTransport(Loopback(), drop=0.02, duplicate=0.02, seed=1,
                                directions="tx")
    data = bytes(10000)
    f.write(data)
    out = collect(f, len(data) - f.counts["drop"] + f.counts["duplicate"])
    assert len(out) == len(data) - f.counts["drop"] + f.counts["duplicate"]
    assert 100 < f.counts["drop"] < 300 and 100 < f.counts["duplicate"] < 300

    f = FaultInjectingTransport(Loopback(), truncate=1.0, seed=2)
    f.write(b"x" * 100)
    assert 1 <= len(collect(f, 99)) < 100 and f.counts["truncate"] == 1

    f = FaultInjectingTransport(Loopback(), garbage=1.0, max_garbage=8, seed=3)
    f.write(b"frame")
    out = collect(f, 6)
    out += f.read(0.05)
    assert out.endswith(b"frame") and 6 <= len(out) <= 13 and f.counts["garbage"] == 1


def test_rx_faults_and_validation():
    f = FaultInjectingTransport(Loopback(), corrupt=1.0, seed=4, directions="rx")
    f.write(b"\x00" * 50)
    assert all(collect(f, 50))                          # every byte arrived XORed nonzero
    with pytest.raises(ValueError, match="between 0 and 1"):
        FaultInjectingTransport(Loopback(), corrupt=2)
    with pytest.raises(ValueError, match="directions"):
        FaultInjectingTransport(Loopback(), directions="up")


def test_device_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("HBFP_HW_LOCK_DIR", str(tmp_path))
    dev = tmp_path / "ttyFAKE0"
    dev.write_text("")
    lock = _DeviceLock(str(dev))
    with pytest.raises(DeviceBusy, match=rf"already in use by pid {os.getpid()}"):
        _DeviceLock(str(dev))
    code = ("import sys\nfrom hbfp_hw.fpga.host.transport import _DeviceLock, DeviceBusy\n"
            f"try:\n    _DeviceLock({str(dev)!r})\nexcept DeviceBusy as e:\n"
            "    print('BUSY', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, HBFP_HW_LOCK_DIR=str(tmp_path)), timeout=60)
    assert proc.stdout.startswith("BUSY"), proc.stderr
    lock.release()
    _DeviceLock(str(dev)).release()                      # free again
    # A holder that dies releases the lock (flock belongs to the open file).
    subprocess.run([sys.executable, "-c", f"from hbfp_hw.fpga.host.transport import _DeviceLock\n"
                    f"_DeviceLock({str(dev)!r})\n"],
                   env=dict(os.environ, HBFP_HW_LOCK_DIR=str(tmp_path)), check=True,
                   timeout=60)
    _DeviceLock(str(dev)).release()

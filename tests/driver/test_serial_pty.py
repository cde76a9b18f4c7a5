"""serial:// against a pseudo-terminal with the simulated board attached; the device lock."""

import os
import select
import subprocess
import sys
import threading
import tty

import numpy as np
import pytest

from hbfp_hw.fpga.host.driver import Device, DeviceBusy
from hbfp_hw.fpga.host.transport import SimTransport

from .conftest import assert_bit_exact, random_operands


class PtyBoard:
    """A pty whose far end is the simulated board: bytes are bridged by a thread."""

    def __init__(self, config):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.board = SimTransport(config, name="sim-behind-pty")
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._to_board, daemon=True),
                         threading.Thread(target=self._to_host, daemon=True)]
        for t in self._threads:
            t.start()

    def _to_board(self):
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if ready:
                try:
                    data = os.read(self.master, 1 << 16)
                except OSError:
                    return
                self.board.write(data)

    def _to_host(self):
        while not self._stop.is_set():
            data = self.board.read(0.05)
            view = memoryview(data)
            while view:
                view = view[os.write(self.master, view):]

    def close(self):
        self._stop.set()
        for t in self._threads:
            t.join()
        self.board.close()
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture(scope="module")
def pty_board(sim_config):
    board = PtyBoard(sim_config)
    yield board
    board.close()


def test_gemm_over_serial_pty(pty_board):
    url = f"serial://{pty_board.path}?baud=3000000"
    rng = np.random.default_rng(4)
    with Device.open(url, fmt="bfp8") as dev:
        assert dev.info().lanes == 4
        for m, k, n, wire in [(1, 1, 1, "bfp"), (20, 50, 13, "bfp"), (64, 64, 64, "fp32")]:
            a, b = random_operands(rng, m, k, n)
            assert_bit_exact(dev.gemm(a, b, wire=wire), a, b, dev.info())


def test_second_opener_gets_a_clear_error(pty_board):
    url = f"serial://{pty_board.path}"
    with Device.open(url):
        # The same process...
        with pytest.raises(DeviceBusy, match=r"already in use by pid \d+.*hbfp-hw serve"):
            Device.open(url)
        # ... and another process.
        code = ("from hbfp_hw.fpga.host.driver import Device, DeviceBusy\n"
                "try:\n"
                f"    Device.open({url!r})\n"
                "except DeviceBusy as exc:\n"
                "    print('BUSY', exc)\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=120)
        assert proc.stdout.startswith("BUSY"), proc.stdout + proc.stderr
        assert f"pid {os.getpid()}" in proc.stdout
    # Released on close: it opens again.
    with Device.open(url) as dev:
        assert dev.info().fmt.name == "bfp8"

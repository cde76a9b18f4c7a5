"""The session and the stream of a program against a device in Python (no simulator): the
frames go out in sequence, and every kind of fault is recovered from without a frame executed
twice or a result in the wrong place."""

import contextlib
import signal

import numpy as np
import pytest

from hbfp_hw.fpga import protocol
from hbfp_hw.fpga.host.planning import Planner
from hbfp_hw.fpga.host.session import Session, Stream
from hbfp_hw.fpga.host.transport import DeviceTimeout, ProtocolError
from hbfp_hw.fpga.protocol import REPLY_FLAG, Cmd, Wire

from .fakedevice import FakeDevice, small_info

INFO = small_info(a_blocks=64, b_blocks=64, c_words=64, max_payload=256)


@contextlib.contextmanager
def deadline(seconds=30):
    """Fail instead of hanging: a stream that lost track of a result could wait forever."""
    def expire(*_):
        raise AssertionError(f"the stream did not end within {seconds} s")
    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run(device, m=9, k=100, n=11, retries=16, info=INFO):
    """Stream an ``m x k @ k x n`` GEMM to ``device``; return ``(c, session)``."""
    rng = np.random.default_rng(m * k * n)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    session = Session(device, "fake", retries=retries, timeout=0.02)
    session.flow.info = info
    c, program, tiles = Planner(info).plan(a, b, Wire.BFP, None)
    with deadline():
        Stream(session, info, program, tiles).run()
    assert all(t.done for t in tiles)
    return c, session


def assert_once_in_order(device):
    """The device executed consecutive sequence numbers from 0: nothing twice, nothing
    skipped."""
    seqs = [seq for _, seq in device.executed]
    assert seqs == [i & 0xFF for i in range(len(seqs))]


@pytest.fixture(scope="module")
def clean():
    device = FakeDevice()
    c, session = run(device)
    return c, session, device


def test_a_clean_stream(clean):
    c, session, device = clean
    assert (c != 0).all()
    assert_once_in_order(device)
    stats = session.stats
    assert stats["frames"] == len(device.executed) + 1            # and the first STATUS
    assert not any(stats[k] for k in ("retries", "nacks", "lost", "out_of_order",
                                      "recoveries", "resent", "splits", "stale"))
    assert session.state.next_seq == device.next_seq


def test_a_lost_request_is_sent_again(clean):
    device = FakeDevice(drop_requests={3})
    c, session = run(device)
    assert np.array_equal(c, clean[0])
    assert_once_in_order(device)
    assert session.stats["out_of_order"] >= 1 and session.stats["resent"] >= 1
    assert session.flow.window_frames < session.flow.MAX_FRAMES     # it backed off


def test_a_nack_recovers(clean):
    device = FakeDevice(nack={4})
    c, session = run(device)
    assert np.array_equal(c, clean[0])
    assert_once_in_order(device)
    assert session.stats["nacks"] == 1


def test_a_lost_result_is_read_again(clean):
    # The reply of the first READBACK COMPUTE of the clean run is lost.
    first = next(i for i, (cmd, payload) in enumerate(clean[2].replies)
                 if cmd == Cmd.COMPUTE | REPLY_FLAG and len(payload) > 5)
    device = FakeDevice(drop_replies={first})
    c, session = run(device)
    assert np.array_equal(c, clean[0])
    assert_once_in_order(device)
    assert session.stats["lost"] >= 1
    reads = [seq for cmd, seq in device.executed if cmd is Cmd.READ_C]
    assert reads, "the lost result was not read again with READ_C"


def test_lost_replies_and_requests_everywhere(clean):
    device = FakeDevice(drop_requests=range(5, 200, 17), drop_replies=range(2, 200, 13),
                        nack=range(7, 200, 23))
    c, session = run(device)
    assert np.array_equal(c, clean[0])
    assert_once_in_order(device)
    assert session.stats["recoveries"] >= 1


def test_a_dead_link_raises_after_the_retries():
    device = FakeDevice()
    device.drop_requests = set(range(1, 10_000))           # only the first STATUS arrives
    with pytest.raises(DeviceTimeout, match=r"failed 3 times|after \d+ attempts"):
        run(device, retries=2)


def test_a_device_ahead_of_the_driver_is_a_protocol_error():
    device = FakeDevice()
    session = Session(device, "fake", timeout=0.02)
    session.flow.info = INFO
    session.state.next_seq = 0
    device.next_seq = 100                                  # someone else used the device
    c, program, tiles = Planner(INFO).plan(np.ones((2, 16), np.float32),
                                          np.ones((16, 2), np.float32), Wire.BFP, None)
    with pytest.raises(ProtocolError, match=r"expects sequence number 100"):
        Stream(session, INFO, program, tiles).run()
    assert session.state.next_seq is None                  # ask STATUS before the next GEMM


def test_session_query_retries_and_counts():
    device = FakeDevice(drop_requests={0}, nack={1})
    session = Session(device, "fake", retries=3, timeout=0.01)
    status = session.status()
    assert status["next_seq"] == 0 and session.state.next_seq == 0
    assert session.stats["timeouts"] == 1 and session.stats["nacks"] == 1
    assert session.stats["frames"] == 1
    device.drop_requests = set(range(100))
    with pytest.raises(DeviceTimeout, match=r"no valid reply to STATUS after 4 attempts"):
        session.query(Cmd.STATUS, protocol.layout_bytes(protocol.STATUS_LAYOUT))


def test_writes_are_quiet_when_results_acknowledge_them(clean):
    # Every COMPUTE here returns its result (READBACK), and its reply acknowledges the writes
    # before it too: no write asks for a reply.
    device = clean[2]
    writes = [seq for cmd, seq in device.executed if cmd in (Cmd.WRITE_A, Cmd.WRITE_B)]
    acks = [cmd for cmd, _ in device.replies if cmd & ~REPLY_FLAG in (Cmd.WRITE_A, Cmd.WRITE_B)]
    computes = [seq for cmd, seq in device.executed if cmd is Cmd.COMPUTE]
    results = [p for cmd, p in device.replies if cmd == Cmd.COMPUTE | REPLY_FLAG]
    assert writes and not acks
    assert len(results) == len(computes) and all(len(p) > 5 for p in results)


def test_a_long_run_of_writes_asks_for_a_reply_now_and_then():
    # Resident, 64 x 1024 x 64 on the default board: more than a quarter window (16 KiB) of
    # writes before the first COMPUTE, so some of them ask for a reply.
    device = FakeDevice()
    c, session = run(device, m=64, k=1024, n=64, info=small_info())
    writes = [seq for cmd, seq in device.executed if cmd in (Cmd.WRITE_A, Cmd.WRITE_B)]
    acks = [cmd for cmd, _ in device.replies if cmd & ~REPLY_FLAG in (Cmd.WRITE_A, Cmd.WRITE_B)]
    assert 0 < len(acks) < len(writes)
    assert_once_in_order(device)

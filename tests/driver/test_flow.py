"""Flow control without a device: the window, the frame limit that shrinks after errors and
grows back, the reply timeouts, and the input model it chooses."""

from types import SimpleNamespace

import pytest

from hbfp_hw.fpga.host.flow import FlowControl, _Frame, _rx_model
from hbfp_hw.fpga.host.planning import _Op
from hbfp_hw.fpga.protocol import Cmd

from .fakedevice import small_info

INFO = small_info()                 # max_payload 1024, clock 200 kHz, timeout 2000 cycles


def line(**kw):
    fields = {"latency": 0.01, "byte_time": 1e-5, "window_bytes": None, "rx_fifo_bytes": None,
              "cycles_per_byte": None}
    return SimpleNamespace(**{**fields, **kw})


def frame(payload_len, reply_len=None):
    return _Frame(0, _Op(Cmd.WRITE_A, {}), payload_len + 10, reply_len, payload_len)


def test_limits_before_and_after_info():
    flow = FlowControl(line())
    assert flow.limit() == 0xFFFF and flow.reply_limit() == 16 * 1024
    assert flow.settle_time() == pytest.approx(0.1 + 0.005)
    flow.info = INFO
    assert flow.limit() == INFO.max_payload
    assert flow.settle_time() == pytest.approx(2000 / 200_000 + 0.005)
    assert flow.grace == pytest.approx(0.003 + 64e-5)


def test_window():
    flow = FlowControl(line(window_bytes=4096))
    flow.info = INFO
    assert flow.window_bytes == 4096 and flow.quiet_budget == 1024
    assert flow.can_send(0, 0)
    assert flow.can_send(1, 4096 - 1024 - 16) and not flow.can_send(1, 4096 - 1024 - 15)
    assert not flow.can_send(flow.MAX_FRAMES, 0)
    assert FlowControl(line()).window_bytes == 1 << 16
    assert FlowControl(line()).quiet_budget == 1 << 14


def test_an_error_backs_off_and_good_frames_grow_it_back():
    flow = FlowControl(line())
    flow.info = INFO
    assert flow.shrink(frame(1000))
    assert flow.frame_limit == 500
    assert flow.shrink(frame(0, reply_len=400)) and flow.frame_limit == 200
    assert not flow.shrink(frame(60))                     # 64 bytes is the least
    assert not flow.shrink(frame(400))                    # half of it is the limit already
    flow.failed()
    assert flow.window_frames == 1 and not flow.can_send(1, 0)
    for _ in range(16):
        flow.succeeded()
    assert flow.window_frames == 2 and flow.frame_limit == 200
    for _ in range(16):
        flow.succeeded()
    assert flow.window_frames == 4 and flow.frame_limit == 400 and flow.ok_streak == 0
    for _ in range(32):
        flow.succeeded()
    assert flow.frame_limit == 800
    for _ in range(32):
        flow.succeeded()
    assert flow.frame_limit is None                       # back to the device's limit
    for _ in range(16 * 10):
        flow.succeeded()
    assert flow.window_frames == flow.MAX_FRAMES


def test_reply_timeouts_double_after_each_timeout():
    flow = FlowControl(line())
    base = 0.01 + 2.0 * 1000 * 1e-5 + 0.5
    assert flow.reply_timeout(1000, 0, 0.5) == pytest.approx(base)
    assert flow.reply_timeout(1000, 1, 0.5) == pytest.approx(base)
    assert flow.reply_timeout(1000, 2, 0.5) == pytest.approx(2 * base)
    assert flow.reply_timeout(1000, 9, 0.5) == pytest.approx(32 * base)
    fixed = FlowControl(line(), timeout=0.25)
    assert fixed.reply_timeout(10**6, 3) == pytest.approx(1.0)


def test_the_input_model_is_there_only_behind_a_fifo_that_loses_bytes():
    assert _rx_model(line(), INFO) is None
    model = _rx_model(line(rx_fifo_bytes=512), INFO)
    assert model.room == 496 and model.tx_buffer == INFO.tx_buffer
    assert model.cycles_per_byte == pytest.approx(INFO.clock_hz * 1e-5)
    model = _rx_model(line(rx_fifo_bytes=8, cycles_per_byte=33.0), INFO)
    assert model.room == 1 and model.cycles_per_byte == 33.0

"""The driver's model of the device's input (``_RxModel``): how many request bytes may be sent
without overrunning the receive FIFO (docs/protocol.md 1). No device; the simulated board's
line model checks the same rules end to end (``test_driver_sim.py``: no overruns, and
overruns without them)."""

import math
from collections import deque

from hbfp_hw.fpga import protocol
from hbfp_hw.fpga.host.flow import _Frame, _RxModel
from hbfp_hw.fpga.host.planning import _Op
from hbfp_hw.fpga.protocol import Cmd

ROOM = 496                  # the board's 512-byte FIFO less the driver's margin
CPB = 1000.0                # device cycles per byte time


def send(model, frames, cmd, nbytes, reply_len=None, cycles=0):
    """Add a frame of ``nbytes`` (``reply_len``: its reply body, None: QUIET) to ``frames``."""
    f = _Frame(len(frames), _Op(cmd, {}), nbytes, reply_len, nbytes - 10)
    model.frame(frames, f, cycles)
    frames.append(f)
    return f


def test_without_transmit_buffer_one_frame_and_the_fifo_behind_a_reply():
    model, frames = _RxModel(ROOM, 0, CPB), deque()
    read = send(model, frames, Cmd.READ_C, 26, 4096)
    # The read is released (its reply starts) at once; the device takes the next frame whole
    # while it sends the reply, whatever its size ...
    assert model.free(frames) is None
    write = send(model, frames, Cmd.WRITE_A, 1034)
    # ... and then nothing until the reply has left: the FIFO's bytes behind that frame.
    assert model.free(frames) == ROOM
    assert model.holds(frames, 300, 64)        # a frame sent now needs a reply
    send(model, frames, Cmd.WRITE_A, 300, 0)
    assert model.free(frames) == ROOM - 300
    # The reply has arrived: the read ended by now, when at most every byte sent has
    # arrived; the device executes the write at once, the next frame from then on, and
    # takes a frame behind that one while it replies to it.
    model.retire(frames, 1)
    frames.popleft()
    assert model.anchor == model.sent == read.end + 1034 + 300 == write.end + 300
    assert model.free(frames) is None
    behind = send(model, frames, Cmd.COMPUTE, 30, 4, cycles=1000)
    assert model.free(frames) == behind.end + ROOM - model.sent == ROOM


def test_transmit_buffer_holds_the_replies():
    model, frames = _RxModel(ROOM, 65536, CPB), deque()
    for _ in range(10):                         # 10 x 4 KB of results outstanding
        send(model, frames, Cmd.COMPUTE, 30, 4 + 4096, cycles=2000)
        send(model, frames, Cmd.WRITE_A, 1034)
    assert all(f.clear_at is not None for f in frames if f.reply_bytes)
    assert model.free(frames) is None           # nothing waits: the device takes it all
    assert not model.holds(frames, 1034, 1098)


def test_a_reply_beyond_the_transmit_buffer_waits_until_the_host_has_room():
    model, frames = _RxModel(ROOM, 10_000, CPB), deque()
    first = send(model, frames, Cmd.READ_C, 26, 6000)
    second = send(model, frames, Cmd.READ_C, 26, 6000)    # 12022 bytes outstanding
    behind = send(model, frames, Cmd.WRITE_A, 1034)
    times = {id(f): (release, end) for f, release, end in model.times(frames)}
    assert first.clear_at == 0 and second.clear_at is None
    assert times[id(second)][1] == math.inf and times[id(behind)][0] == math.inf
    assert model.free(frames) == ROOM           # behind the frame the decoder holds
    model.retire(frames, 1)                     # the first reply has arrived
    frames.popleft()
    assert model.free(frames) is None and second.clear_at == model.sent


def test_a_long_compute_bounds_the_bytes_behind_it():
    model, frames = _RxModel(ROOM, 65536, CPB), deque()
    compute = send(model, frames, Cmd.COMPUTE, 30, 4, cycles=2_000_000)   # 2000 byte times
    assert model.free(frames) == ROOM
    assert model.holds(frames, 100, 64)
    # Its reply has started: the COMPUTE has executed and the device takes input again.
    assert model.free(frames, (Cmd.COMPUTE | protocol.REPLY_FLAG, compute.seq)) is None
    assert compute.released_at == model.sent


def test_the_model_starts_a_frame_when_it_arrives_and_the_one_before_has_ended():
    model, frames = _RxModel(ROOM, 65536, CPB), deque()
    send(model, frames, Cmd.COMPUTE, 30, 4, cycles=400_000)               # 400 byte times
    send(model, frames, Cmd.COMPUTE, 30, 4, cycles=400_000)
    (f1, r1, e1), (f2, r2, e2) = model.times(frames)
    assert r1 == 30 + 400 and r2 == e1 + 400          # after the first one's reply
    assert e1 == r1 + f1.push and e2 == r2 + f2.push
    # The second one's release is more than the FIFO beyond its end: bytes behind it wait.
    assert model.free(frames) == f2.end + ROOM - model.sent

"""The driver against the simulated board: INFO, bit-exact GEMMs for both wires, errors."""

import threading
import time

import numpy as np
import pytest

import hbfp_hw
from hbfp_hw import golden
from hbfp_hw.fpga import protocol
from hbfp_hw.fpga.host import driver
from hbfp_hw.fpga.host.driver import (
    Device,
    DeviceNotFound,
    FormatMismatch,
    ShapeError,
    growth_steps,
    tile_sizes,
)

from .conftest import assert_bit_exact, random_operands


def test_info_matches_the_build(sim_device, sim_config):
    info = sim_device.info()
    assert info == sim_config.info
    assert info.version == protocol.PROTOCOL_VERSION
    assert info.fmt.name == "bfp8"
    assert info.lanes == 4 and info.a_blocks == 1024 and info.c_words == 4096
    assert info.wire_formats == {protocol.Wire.FLOAT, protocol.Wire.BFP}
    # The ULX3S's transmit buffer holds the whole C buffer's words (a READ_C of all of C
    # waits for its last 15 bytes, header and status, to find room).
    assert info.tx_buffer == 16384 == 4 * info.c_words


@pytest.mark.parametrize("wire", ["bfp", "fp32"])
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (1, 16, 1), (3, 17, 5), (64, 64, 64),
                                   (40, 100, 9), (7, 33, 300)])
def test_gemm_bit_exact(sim_device, wire, m, k, n):
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    a, b = random_operands(rng, m, k, n, spread=20)
    c = sim_device.gemm(a, b, wire=wire)
    assert_bit_exact(c, a, b, sim_device.info())


def test_gemm_spans_several_tiles(sim_device):
    # A does not fit the buffers (300 rows x 4 k-blocks > 1024 blocks): C in fixed tiles.
    info = sim_device.info()
    m, k, n = 300, 64, 40
    rows, cols, chunk = tile_sizes(info, m, n, k)
    assert chunk == 4 and (rows < m or cols < n)
    rng = np.random.default_rng(5)
    a, b = random_operands(rng, m, k, n)
    before = sim_device.stats["frames"]
    c = sim_device.gemm(a, b)
    assert_bit_exact(c, a, b, info)
    st = sim_device.status()
    assert (st["c_rows"], st["c_cols"]) == ((m - 1) % rows + 1, (n - 1) % cols + 1)
    tiles = -(-m // rows) * -(-n // cols)
    assert tiles > 1 and sim_device.stats["frames"] - before >= 2 * tiles


def test_resident_gemm_grows_its_tiles(sim_device):
    # A and B fit: each is sent once, and C comes back in growing steps.
    info = sim_device.info()
    assert tile_sizes(info, 64, 64, 64) == (64, 64, 4)
    steps = growth_steps(64, 64, info.lanes, 4 * 17, 4 * 17, info.max_payload - 8,
                         info.c_words // 4, info.c_words)
    assert steps[-1] == (64, 64) and len(steps) > 2
    assert all(r0 <= r1 and c0 <= c1 for (r0, c0), (r1, c1) in zip(steps, steps[1:]))
    assert steps[0][0] < 64 and all(c % info.lanes == 0 for _, c in steps[:-1])
    rng = np.random.default_rng(6)
    a, b = random_operands(rng, 64, 64, 64)
    before = sim_device.stats["tx_payload"]
    assert_bit_exact(sim_device.gemm(a, b, wire="bfp"), a, b, info)
    data = 2 * 64 * 4 * 17                       # A and B blocks, each sent once
    assert data < sim_device.stats["tx_payload"] - before < 1.1 * data


def test_special_values(sim_device):
    rng = np.random.default_rng(9)
    a, b = random_operands(rng, 6, 40, 7)
    a[1, 3] = np.nan
    b[20, 2] = -np.inf
    a[2, :] = np.float32(3e38)
    b[:, 5] = np.float32(1e-41)              # subnormal
    for wire in ("bfp", "fp32"):
        assert_bit_exact(sim_device.gemm(a, b, wire=wire), a, b, sim_device.info())


def test_bf16_operands_via_torch(sim_device):
    torch = pytest.importorskip("torch")
    a = torch.randn(5, 20).to(torch.bfloat16)
    b = torch.randn(20, 6).to(torch.bfloat16)
    c = sim_device.gemm(a, b)
    assert_bit_exact(c, a.float().numpy(), b.float().numpy(), sim_device.info())


def test_shape_and_type_errors(sim_device):
    a = np.ones((3, 4), np.float32)
    with pytest.raises(ShapeError, match="inner dimensions differ"):
        sim_device.gemm(a, np.ones((5, 2), np.float32))
    with pytest.raises(ShapeError, match="2-D"):
        sim_device.gemm(np.ones(4, np.float32), a)
    with pytest.raises(ShapeError, match="at least 1"):
        sim_device.gemm(np.ones((0, 4), np.float32), np.ones((4, 2), np.float32))
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        sim_device.gemm(np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="wire must be"):
        sim_device.gemm(a, np.ones((4, 2), np.float32), wire="int8")
    assert isinstance(ShapeError("x"), ValueError)


def test_format_mismatch_and_bad_urls(sim_config):
    with pytest.raises(FormatMismatch, match=r"asked for; open a device built for"):
        Device.open("sim", fmt="mxint8")
    with Device.open("sim", fmt="bfp8") as dev:
        assert dev.fmt.name == "bfp8"
    with pytest.raises(DeviceNotFound, match="Unknown device URL"):
        Device.open("usb://x")
    with pytest.raises(DeviceNotFound, match="Unknown sim:// option 'lanez'"):
        Device.open("sim://?lanez=4")
    with pytest.raises(DeviceNotFound, match="does not exist"):
        Device.open("serial:///dev/does-not-exist-hbfp")
    with pytest.raises(DeviceNotFound, match="cannot connect"):
        Device.open("tcp://127.0.0.1:1")


def test_shared_and_separate_instances(sim_config):
    held = {k: v.refs for k, v in driver._SIM_BOARDS.items()}
    with Device.open("sim") as d1, Device.open("sim") as d2, \
            Device.open("sim://?instance=2") as d3:
        assert d1._t is d2._t                  # one board per configuration and instance
        assert d3._t is not d1._t
        rng = np.random.default_rng(1)
        a, b = random_operands(rng, 4, 20, 4)
        assert_bit_exact(d3.gemm(a, b), a, b, d3.info())
    assert d1._shared.refs == held.get(d1._shared.key, 0)
    assert d3._shared.refs == 0 and d3._shared.key not in driver._SIM_BOARDS


def test_thread_safe(sim_device):
    rng = np.random.default_rng(3)
    cases = [random_operands(rng, 9 + i, 30 + i, 11 + 2 * i) for i in range(6)]
    results = [None] * len(cases)
    errors = []

    def work(i):
        try:
            results[i] = sim_device.gemm(*cases[i], wire=("bfp", "fp32")[i % 2])
        except Exception as exc:                      # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for (a, b), c in zip(cases, results):
        assert_bit_exact(c, a, b, sim_device.info())


def test_lazy_reexports():
    assert hbfp_hw.Device is Device
    from hbfp_hw.fpga import Device as D2
    from hbfp_hw.fpga import DeviceTimeout
    assert D2 is Device and DeviceTimeout is driver.DeviceTimeout


def test_demo_offload(sim_config):
    lines = []
    assert driver.demo_offload(print=lines.append) is True
    assert len(lines) == 1 and "64x64 @ 64x64" in lines[0] and "bit-exact" in lines[0]
    assert "yes" in lines[0]


def test_cli_gemm(sim_config, tmp_path, capsys):
    import json

    from hbfp_hw.cli import main
    out = tmp_path / "r.json"
    assert main(["gemm", "--device", "sim", "--m", "20", "--n", "9", "--k", "40",
                 "--wire", "fp32", "--seed", "3", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "bit-exact: yes" in text and "throughput:" in text and "time:" in text
    result = json.loads(out.read_text())
    assert result["bit_exact"] is True and result["wire"] == "fp32"


def test_line_models(sim_config):
    rng = np.random.default_rng(6)
    a, b = random_operands(rng, 16, 64, 16)
    # Wall-clock pacing at 1 Mbaud: 100 kB/s each way.
    with Device.open("sim://?baud=1000000") as dev:
        t0 = time.perf_counter()
        assert_bit_exact(dev.gemm(a, b), a, b, dev.info())
        elapsed = time.perf_counter() - t0
        assert elapsed >= 0.9 * dev.stats["rx_bytes"] / 100_000
    # Virtual time at 3 Mbaud: the harness's clock covers every byte at the line rate.
    with Device.open("sim://?baud=3000000&vclock_hz=100000000") as dev:
        dev.status()
        t_reply = time.monotonic()
        time.sleep(0.05)
        s0 = dev.transport.link_stats()
        # The harness began to wait for the host when it had sent the reply (same clock).
        assert abs(s0["idle_since"] - t_reply) < 0.02
        before = dict(dev.stats)
        t_gemm = time.monotonic()
        assert_bit_exact(dev.gemm(a, b), a, b, dev.info())
        time.sleep(0.05)
        s1 = dev.transport.link_stats()
        assert t_gemm < s1["idle_since"] < time.monotonic()
        vt = s1["virtual_seconds"] - s0["virtual_seconds"]
        down = s1["bytes_out"] - s0["bytes_out"]
        assert down == dev.stats["rx_bytes"] - before["rx_bytes"]
        assert vt >= down / 300_000
        assert s1["cycles"] > s0["cycles"]


# -- K beyond the buffers: chunks accumulated on the device ----------------------------------

def test_k_beyond_the_buffers(small_sim_url):
    """K two to three times what one COMPUTE can hold: the device accumulates the chunks."""
    with Device.open(small_sim_url) as dev:
        info = dev.info()
        k_cap = min(info.a_blocks, info.b_depth) * info.fmt.block_size      # 256
        rng = np.random.default_rng(40)
        for m, k, n, wire in [(1, 1, 1, "bfp"), (1, 3 * k_cap, 1, "fp32"),
                              (5, 2 * k_cap + 7, 9, "bfp"), (3, 3 * k_cap - 5, 6, "fp32"),
                              (9, 2 * k_cap, 13, "bfp")]:
            rows, cols, chunk = tile_sizes(info, m, n, k)
            assert chunk * info.fmt.block_size < k or k == 1
            a, b = random_operands(rng, m, k, n, spread=20)
            assert_bit_exact(dev.gemm(a, b, wire=wire), a, b, info)


def test_k_beyond_the_buffers_special_values_and_bf16(small_sim_url):
    """NaN, Inf and a running sum that overflows only across chunks; BF16 operands."""
    torch = pytest.importorskip("torch")
    with Device.open(small_sim_url) as dev:
        info = dev.info()
        k = 600
        rng = np.random.default_rng(41)
        a, b = random_operands(rng, 4, k, 3)
        a[0, 500] = np.nan                          # in the last chunk
        b[300, 1] = -np.inf                         # in the second chunk
        a[2, :] = np.float32(2.0 ** 119)            # each chunk finite, their sum overflows
        b[:, 2] = np.float32(1.0)
        ref = golden.gemm(a, b, info.fmt)
        assert np.isnan(ref[0]).all() and np.isnan(ref[:, 1]).all() and ref[2, 2] == np.inf
        assert np.isfinite(golden.gemm(a[:, :256], b[:256], info.fmt)[2, 2])
        for wire in ("bfp", "fp32"):
            assert_bit_exact(dev.gemm(a, b, wire=wire), a, b, info)
        a16 = torch.from_numpy(a).to(torch.bfloat16)
        b16 = torch.from_numpy(b).to(torch.bfloat16)
        for wire in ("bfp", "fp32"):
            c = dev.gemm(a16, b16, wire=wire)
            assert_bit_exact(c, a16.float().numpy(), b16.float().numpy(), info)


def test_accumulate_refused_when_it_does_not_continue_c(small_sim_url):
    """An ACCUMULATE that does not match the last result gets MISMATCH; the device goes on."""
    from hbfp_hw.fpga.protocol import REPLY_FLAG, Cmd, Flag, FrameParser, Status
    with Device.open(small_sim_url) as dev:
        info = dev.info()
        rng = np.random.default_rng(42)
        a, b = random_operands(rng, 3, 40, 4)
        assert_bit_exact(dev.gemm(a, b), a, b, info)
        seq = dev.status()["next_seq"]
        dev.transport.write(protocol.request_compute(seq, 2, 4, 40, Flag.ACCUMULATE))
        parser, frames = FrameParser(), []
        while not frames:
            frames = parser.feed(dev.transport.read(5.0))
        assert frames[0].cmd == Cmd.COMPUTE | REPLY_FLAG and frames[0].seq == seq
        assert frames[0].status is Status.MISMATCH
        st = dev.status()
        assert st["next_seq"] == seq and st["last_error"] == Status.MISMATCH
        assert_bit_exact(dev.gemm(a, b), a, b, info)


def test_rx_fifo_and_tx_buffer_are_the_boards():
    from hbfp_hw.fpga.boards import BOARDS, DEFAULT_BOARD
    from hbfp_hw.fpga.host.simboard import SimConfig
    assert SimConfig().rx_fifo == BOARDS[DEFAULT_BOARD].rx_fifo_depth
    assert SimConfig().system.tx_buffer == BOARDS[DEFAULT_BOARD].system.tx_buffer


#: The virtual-time line model at 3 Mbaud with the board's 512-byte receive FIFO.
LINE = "sim://?baud=3000000&vclock_hz=100000000"
#: The same without a transmit buffer: the device takes one frame while it sends a reply.
LINE_NO_TX = LINE + "&tx_buffer=0"
#: With a transmit buffer smaller than a result reply (4 KB): long replies wait for room.
LINE_SMALL_TX = LINE + "&tx_buffer=2048"


def _gemm_without_overruns(url, shape, wire, seed=7):
    rng = np.random.default_rng(seed)
    a, b = random_operands(rng, *shape)
    with Device.open(url) as dev:
        assert dev.transport.rx_fifo_bytes == 512
        s0 = dev.transport.link_stats() or {"overruns": 0}
        assert_bit_exact(dev.gemm(a, b, wire=wire), a, b, dev.info())
        dev.status()
        time.sleep(0.05)
        s1 = dev.transport.link_stats()
        return s1["overruns"] - s0["overruns"], dict(dev.stats)


@pytest.mark.parametrize("wire", ["bfp", "fp32"])
@pytest.mark.parametrize("shape", [(37, 70, 45), (64, 64, 64), (96, 48, 80), (128, 128, 128),
                                   (256, 64, 256), (32, 6144, 32)])
def test_rx_fifo_never_overruns(sim_config, wire, shape):
    """Through the virtual-time line model (the board's 512-byte receive FIFO) the driver
    streams the benchmark's GEMMs, whose results far exceed the FIFO, without losing a byte
    (and one whose K is split into long accumulating COMPUTEs)."""
    overruns, stats = _gemm_without_overruns(LINE, shape, wire)
    assert overruns == 0
    assert stats["resent"] == 0 and stats["retries"] == 0


@pytest.mark.parametrize("url", [LINE_NO_TX, LINE_SMALL_TX], ids=["no_tx", "small_tx"])
@pytest.mark.parametrize(("wire", "shape"), [("bfp", (64, 64, 64)), ("fp32", (64, 64, 64)),
                                             ("bfp", (96, 48, 80)), ("fp32", (37, 70, 45))])
def test_rx_fifo_never_overruns_with_little_tx_buffer(sim_config, url, wire, shape):
    """A device whose transmit buffer is smaller than a reply (or that has none) takes no
    input while a reply waits for room, once it holds the next frame: the driver keeps to
    that too, without overruns or timeouts. (Without its accounting these overrun.)"""
    overruns, stats = _gemm_without_overruns(url, shape, wire)
    assert overruns == 0
    assert stats["resent"] == 0 and stats["retries"] == 0


def test_rx_fifo_loses_bytes_when_full(sim_config):
    """A host that ignores the FIFO loses bytes, as on the board: the model is no more
    generous than the board (a device without a transmit buffer, behind a long reply)."""
    from hbfp_hw.fpga.protocol import Cmd
    with Device.open(LINE_NO_TX + "&instance=overrun") as dev:
        info = dev.info()
        assert info.tx_buffer == 0
        dev.gemm(np.ones((64, 16), np.float32), np.ones((16, 64), np.float32))
        seq = dev.status()["next_seq"]
        # A READ_C of the whole 64 x 64 result (16 KB of reply), then three WRITE_A frames of
        # the largest size at once behind it (refused: out of order): the device takes the
        # first one while it replies and the FIFO 512 bytes of the rest; the others are lost.
        read = protocol.to_bytes(protocol.READ_ARGS_LAYOUT, {
            "row": 0, "col": 0, "count": 4096, "flags": 0, "base": 0, "rows": 64, "cols": 64})
        lost, expected = _lost_behind(dev, protocol.encode_frame(int(Cmd.READ_C), seq, read),
                                      seq)
        assert expected > 1000 and expected - 8 <= lost <= expected, (lost, expected)
        assert info.c_words >= 4096


def test_rx_fifo_loses_bytes_behind_a_full_tx_buffer(sim_config):
    """With a transmit buffer the device takes the frames behind long replies until the
    buffer is full: behind READ_C replies of which the last does not fit, it takes the next
    frame and its FIFO 512 bytes of the rest; the others are lost."""
    with Device.open(LINE + "&instance=overrun") as dev:
        info = dev.info()
        words = info.tx_buffer // 16
        reply = 4 * words + 15                             # frame, status and the words
        # The last reply does not fit by far (while the requests arrive, the buffer drains a
        # little), the one before it does.
        reads = info.tx_buffer // reply + 2
        assert (reads - 2) * reply <= info.tx_buffer < (reads - 1) * reply
        dev.gemm(np.ones((64, 16), np.float32), np.ones((16, 64), np.float32))
        seq = dev.status()["next_seq"]
        ahead = b"".join(protocol.request_read((seq + i) & 0xFF, 0, 0, words, rows=64, cols=64)
                         for i in range(reads))
        lost, expected = _lost_behind(dev, ahead, seq)
        assert expected > 1000 and expected - 8 <= lost <= expected, (lost, expected)


def _lost_behind(dev, ahead, seq):
    """Send the frames ``ahead`` and three WRITE_A frames of the largest size at once behind
    them (sequence numbers from ``seq + 9``: refused, out of order); return the bytes the
    receive FIFO lost, and how many it loses if the device takes the first write and the
    FIFO 512 bytes of the rest."""
    info = dev.info()
    bb = protocol.block_bytes(info.fmt, protocol.Wire.BFP)
    blocks = (info.max_payload - protocol.ARGS_BYTES) // bb
    write = protocol.to_bytes(protocol.WRITE_ARGS_LAYOUT, {
        "wire": int(protocol.Wire.BFP), "flags": 0, "count": blocks, "start": 0}) + bytes(
        blocks * bb)
    frames = [protocol.encode_frame(int(protocol.Cmd.WRITE_A), (seq + 9 + i) & 0xFF, write)
              for i in range(3)]
    s0 = dev.transport.link_stats()
    dev.transport.write(ahead + b"".join(frames))
    time.sleep(1.0)
    dev.transport.read(0.5)
    dev.status()
    time.sleep(0.05)
    lost = dev.transport.link_stats()["overruns"] - s0["overruns"]
    return lost, 2 * len(frames[0]) - 512

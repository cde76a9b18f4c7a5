"""The Python mirror of the host-link protocol: CRC-32, frames, layouts, tile encodings."""

import dataclasses
import random
import zlib

import numpy as np
import pytest

from hbfp_hw import golden
from hbfp_hw.formats import BFPFormat, FloatFormat, resolve_format
from hbfp_hw.fpga import protocol
from hbfp_hw.fpga.protocol import (
    COMPUTE_ARGS_LAYOUT,
    HEADER_LAYOUT,
    INFO_LAYOUT,
    READ_ARGS_LAYOUT,
    STATUS_LAYOUT,
    WRITE_ARGS_LAYOUT,
    Cmd,
    FrameParser,
    Wire,
)


def test_crc32_matches_zlib():
    rng = random.Random(0)
    for length in [0, 1, 2, 3, 4, 7, 64, 1000]:
        raw = bytes(rng.randrange(256) for _ in range(length))
        reg = 0xFFFFFFFF
        for byte in raw:
            reg = protocol.crc32_byte(reg, byte)
        assert protocol.crc32(raw) == zlib.crc32(raw) == reg ^ 0xFFFFFFFF
    assert protocol.crc32(b"123456789") == 0xCBF43926        # the standard check value


def test_crc32_byte_is_the_register_step():
    raw = b"hbfp-hw frame"
    reg = 0xFFFFFFFF
    for byte in raw:
        reg = protocol.crc32_byte(reg, byte)
    assert reg ^ 0xFFFFFFFF == zlib.crc32(raw)


def test_crc32_continues():
    assert protocol.crc32(b"world", protocol.crc32(b"hello ")) == zlib.crc32(b"hello world")


def test_layouts_are_byte_aligned_and_sized():
    assert protocol.layout_bytes(HEADER_LAYOUT) == 4
    assert protocol.layout_bytes(WRITE_ARGS_LAYOUT) == protocol.ARGS_BYTES == 8
    assert protocol.layout_bytes(COMPUTE_ARGS_LAYOUT) == 20
    assert protocol.layout_bytes(READ_ARGS_LAYOUT) == 16
    # The decoder latches enough bytes for every argument block.
    assert protocol.ARGS_LATCH_BYTES == max(protocol.layout_bytes(x) for x in (
        WRITE_ARGS_LAYOUT, COMPUTE_ARGS_LAYOUT, READ_ARGS_LAYOUT))
    assert protocol.layout_bytes(INFO_LAYOUT) == 45
    assert protocol.layout_bytes(STATUS_LAYOUT) == 11
    assert protocol.MAX_READ_WORDS == 16383 and 1 + 4 * protocol.MAX_READ_WORDS <= 0xFFFF


def test_sequenced_commands_and_flags():
    assert protocol.SEQUENCED == {Cmd.WRITE_A, Cmd.WRITE_B, Cmd.COMPUTE, Cmd.READ_C}
    flags = protocol.Flag
    assert (int(flags.QUIET), int(flags.ACCUMULATE), int(flags.READBACK)) == (1, 2, 4)
    frame = protocol.request_compute(7, 2, 3, 40, flags.ACCUMULATE, a_base=5, b_base=6,
                                     c_base=0x01020304)
    (parsed,) = protocol.FrameParser().feed(frame)
    assert parsed.seq == 7 and protocol.from_bytes(COMPUTE_ARGS_LAYOUT, parsed.payload) == {
        "m": 2, "n": 3, "k": 40, "flags": 2, "a_base": 5, "b_base": 6, "c_base": 0x01020304}
    (parsed,) = protocol.FrameParser().feed(protocol.request_read(9, 1, 2, 3, rows=4, cols=5,
                                                                  base=6))
    assert protocol.from_bytes(READ_ARGS_LAYOUT, parsed.payload) == {
        "row": 1, "col": 2, "count": 3, "flags": 0, "base": 6, "rows": 4, "cols": 5}


def test_to_bytes_is_little_endian_in_field_order():
    raw = protocol.to_bytes(WRITE_ARGS_LAYOUT, {"wire": 1, "flags": 2, "count": 0x0304,
                                                "start": 0x05060708})
    assert raw == bytes([1, 2, 4, 3, 8, 7, 6, 5])
    assert protocol.from_bytes(WRITE_ARGS_LAYOUT, raw) == {
        "wire": 1, "flags": 2, "count": 0x0304, "start": 0x05060708}


def test_encode_frame_layout():
    frame = protocol.encode_frame(Cmd.WRITE_A, 0x42, b"\x01\x02\x03")
    assert frame[:2] == b"\xA5\x5A"
    assert frame[2:6] == bytes([0x10, 0x42, 3, 0])
    assert frame[6:9] == b"\x01\x02\x03"
    assert frame[9:] == zlib.crc32(frame[2:9]).to_bytes(4, "little")
    assert len(frame) == protocol.FRAME_OVERHEAD + 3


@pytest.mark.parametrize(("cmd", "seq"), [(-1, 0), (256, 0), (1, 256)])
def test_encode_frame_rejects_bad_bytes(cmd, seq):
    with pytest.raises(ValueError, match=r"^cmd and seq must be bytes"):
        protocol.encode_frame(cmd, seq)


def test_parser_roundtrip_in_pieces():
    rng = random.Random(1)
    frames = [(rng.randrange(256), rng.randrange(256),
               bytes(rng.randrange(256) for _ in range(rng.randrange(40))))
              for _ in range(20)]
    stream = b"".join(protocol.encode_frame(*f) for f in frames)
    parser = FrameParser()
    got = []
    pos = 0
    while pos < len(stream):
        step = rng.randrange(1, 9)
        got += parser.feed(stream[pos:pos + step])
        pos += step
    assert [(f.cmd, f.seq, f.payload) for f in got] == frames
    assert parser.errors == 0


def test_parser_drops_bad_crc_and_resyncs_after_garbage():
    good = protocol.encode_frame(Cmd.INFO, 7)
    bad = bytearray(protocol.encode_frame(Cmd.STATUS, 8, b"xyz"))
    bad[7] ^= 0x10
    rng = random.Random(2)
    garbage = bytes(rng.randrange(256) for _ in range(300)).replace(b"\xA5", b"\x00")
    parser = FrameParser()
    frames = parser.feed(garbage + bytes(bad) + good + b"\xA5" + good)
    assert [(f.cmd, f.seq) for f in frames] == [(Cmd.INFO, 7), (Cmd.INFO, 7)]
    assert parser.errors == 1


def test_parser_rejects_too_long():
    parser = FrameParser(max_payload=4)
    frames = parser.feed(protocol.encode_frame(1, 1, b"12345") + protocol.encode_frame(1, 2))
    assert [f.seq for f in frames] == [2]
    assert parser.errors == 1


def test_reply_status_and_body():
    frame = protocol.Frame(Cmd.READ_C | protocol.REPLY_FLAG, 3, b"\x00abcd")
    assert frame.is_reply and frame.status is protocol.Status.OK and frame.body == b"abcd"
    with pytest.raises(protocol.ProtocolError):
        _ = protocol.Frame(0x81, 0, b"").status


def test_info_roundtrip():
    info = protocol.Info(version=1, fmt=BFPFormat(6, 32, "toward-zero", 5),
                         input_format=FloatFormat.BF16,
                         wire_formats=frozenset({Wire.BFP}), lanes=4, channels=3,
                         max_payload=1024, a_blocks=512, b_blocks=256, c_words=128,
                         clock_hz=48_000_000, timeout_cycles=4_800_000, build_hash=0xDEADBEEF,
                         tx_buffer=70_000)
    assert protocol.Info.from_bytes(info.to_bytes()) == info
    assert protocol.Info.from_bytes(info.to_bytes()).tx_buffer == 70_000
    # minifloat elements: the element type and the scale rule travel in INFO
    from hbfp_hw.formats import minifloat_format
    for fmt in (resolve_format("mxfp8_e4m3"), resolve_format("bm6_e2m3"),
                minifloat_format(5, 7, 8, special="none", bias=3, scale_rule="rceil",
                                 rounding="stochastic")):
        mx = dataclasses.replace(info, fmt=fmt)
        assert protocol.Info.from_bytes(mx.to_bytes()) == mx
    assert info.b_depth == 64 and info.c_depth == 32
    assert info.max_read_words == 16383                 # replies are not bound by max_payload


def test_block_bytes():
    assert protocol.block_bytes("bfp8", Wire.FLOAT) == 64
    assert protocol.block_bytes("bfp8", Wire.FLOAT, "bf16") == 32
    assert protocol.block_bytes("bfp8", Wire.BFP) == 17
    assert protocol.block_bytes(BFPFormat(12, 16), Wire.BFP) == 33


@pytest.mark.parametrize("fmt", [BFPFormat(8, 4), BFPFormat(12, 8), BFPFormat(3, 2, "stochastic")])
def test_bfp_payload_decodes_to_golden_blocks(fmt):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((3, 11)).astype(np.float32)
    nblocks, raw = protocol.a_blocks_payload(a, fmt, Wire.BFP, seed=5)
    q = golden.quantize(a, fmt, axis=1, seed=5)
    assert nblocks == 3 * protocol.kblocks(11, fmt)
    mb = protocol.mantissa_bytes(fmt)
    arr = np.frombuffer(raw, np.uint8).reshape(nblocks, -1)
    assert (arr[:, 0] == q.exponent_codes.reshape(-1)).all()
    words = arr[:, 1:].reshape(nblocks, fmt.block_size, mb).astype(np.int64)
    value = sum(words[..., j] << (8 * j) for j in range(mb))
    value = np.where(value >= 1 << (8 * mb - 1), value - (1 << (8 * mb)), value)
    assert (value == q.mantissas.reshape(nblocks, -1)).all()


def test_float_payload_is_padded_raw_bits():
    fmt = BFPFormat(8, 4)
    a = np.arange(1, 7, dtype=np.float32).reshape(1, 6)
    nblocks, raw = protocol.a_blocks_payload(a, fmt, Wire.FLOAT)
    assert nblocks == 2
    vals = np.frombuffer(raw, "<f4")
    assert list(vals) == [1, 2, 3, 4, 5, 6, 0, 0]
    nblocks, raw = protocol.a_blocks_payload(a, fmt, Wire.FLOAT, input_format="bf16")
    assert np.frombuffer(raw, "<u2")[0] == 0x3F80


def test_b_device_order():
    cols = np.arange(5 * 2).reshape(5, 2)        # [N=5, KB=2]
    dev = protocol.b_device_order(cols, 2)       # [G=3, KB, L]
    assert dev.shape == (3, 2, 2)
    assert dev[1, 0, 1] == cols[3, 0] and dev[2, 1, 0] == cols[4, 1] and dev[2, 1, 1] == 0
    nblocks, raw = protocol.b_blocks_payload(np.ones((5, 3), np.float32), BFPFormat(8, 4),
                                             Wire.FLOAT, 2)
    assert nblocks == 2 * 2 * 2                  # K=5: KB 2; N=3: 2 groups of 2 lanes


def test_info_fits():
    info = protocol.Info(version=1, fmt=BFPFormat(8, 4), input_format=FloatFormat.FP32,
                         wire_formats=frozenset(Wire), lanes=2, channels=3, max_payload=256,
                         a_blocks=32, b_blocks=32, c_words=32, clock_hz=1, timeout_cycles=1,
                         build_hash=0)
    assert info.fits(8, 4, 16)                  # 8*4 A blocks, 2*4 B words, 8*2 C words
    assert not info.fits(9, 4, 16)
    assert not info.fits(1, 9, 16)              # 5 groups * 4 kb > 16 B words
    assert info.fits(8, 4, 1)                   # 8 * 2 C words == c_depth
    assert not info.fits(9, 4, 1)

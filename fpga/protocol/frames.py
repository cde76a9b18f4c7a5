"""The host link protocol of the GEMM engine: the one description of every frame.

The gateware (:mod:`hbfp_hw.fpga.system.decoder`, :mod:`hbfp_hw.fpga.system.engine`) and the
host side (the
driver, the testbenches) both import this module. Fixed-size structures (the frame header, the
argument blocks of the commands, the INFO and STATUS replies) are ``amaranth.lib.data``
layouts; the gateware views its registers through them, and the Python mirror packs and unpacks
bytes with the same layout objects (:func:`to_bytes`, :func:`from_bytes`). Multi-byte fields are
little-endian, field 0 first. ``docs/protocol.md`` is the written specification.

Frame (both directions)::

    A5 5A | cmd u8 | seq u8 | length u16 | payload[length] | crc32 u32

The CRC-32 is the IEEE 802.3 one (reflected, polynomial 0xEDB88320, init and final XOR
0xFFFFFFFF, i.e. ``zlib.crc32``) over ``cmd, seq, length, payload``. A reply echoes ``seq``,
has ``cmd | 0x80`` as its command (or :data:`NACK` for a frame that could not be decoded),
and its payload starts with a :class:`Status` byte.

The commands that change or read the buffers (:data:`SEQUENCED`: WRITE_A, WRITE_B, COMPUTE,
READ_C) are executed exactly once and in order: the device executes such a frame only if its
``seq`` is the device's next sequence number (reported by STATUS), and refuses any other with
``OUT_OF_ORDER`` without executing it. So a host can stream requests without waiting for
their replies, and after an error it learns from STATUS which of them were executed.
"""

from __future__ import annotations

import enum
import zlib
from dataclasses import dataclass

import numpy as np
from amaranth.hdl import unsigned
from amaranth.lib import data

from hbfp_hw.formats import (
    BFPFormat,
    FloatFormat,
    Minifloat,
    Rounding,
    ScaleRule,
    Special,
    resolve_format,
)
from hbfp_hw.golden import quantize
from hbfp_hw.rtl_gen.layout import pack, unpack

__all__ = [
    "PROTOCOL_VERSION", "SYNC", "REPLY_FLAG", "NACK", "ARGS_BYTES", "ARGS_LATCH_BYTES",
    "CRC_POLY", "MAX_REPLY", "MAX_READ_WORDS", "SEQUENCED", "Flag",
    "HEADER_LAYOUT", "WRITE_ARGS_LAYOUT", "COMPUTE_ARGS_LAYOUT", "READ_ARGS_LAYOUT",
    "INFO_LAYOUT", "STATUS_LAYOUT", "COMPUTE_REPLY_LAYOUT",
    "Cmd", "Status", "Wire", "ROUNDING_CODES", "INPUT_FORMAT_CODES",
    "crc32", "crc32_byte", "to_bytes", "from_bytes", "layout_bytes",
    "encode_frame", "Frame", "FrameParser", "ProtocolError",
    "block_bytes", "element_bytes", "mantissa_bytes",
    "a_blocks_payload", "b_blocks_payload", "b_device_order", "padded_columns",
    "kblocks", "column_groups", "Info", "info_to_bytes",
    "request_write", "request_compute", "request_read", "c_from_payload",
]

#: Version reported by INFO; bumped on any incompatible change of this module.
#: Version 2: sequenced (exactly-once, in-order) WRITE/COMPUTE/READ_C, buffer base addresses
#: and the ACCUMULATE, READBACK and QUIET flags of COMPUTE, C regions in READ_C.
#: Version 3: the device receives the next frame while it sends a reply (a host may then have
#: one more frame in flight than the receive FIFO holds; docs/protocol.md 1).
#: Version 4: a transmit buffer of ``tx_buffer`` bytes (INFO) holds the replies; the device
#: executes the next frames while earlier replies leave, and waits only while it is full.
PROTOCOL_VERSION = 5
#: The start-of-frame marker.
SYNC = b"\xA5\x5A"
#: Set in the command byte of every reply.
REPLY_FLAG = 0x80
#: Command byte of the reply to a frame that could not be decoded (bad CRC, timeout, too long).
NACK = 0xFF
#: Size of the argument block of WRITE_A / WRITE_B: their tile data starts at this offset.
ARGS_BYTES = 8
#: The decoder latches this many leading payload bytes: enough for every argument block.
ARGS_LATCH_BYTES = 20
#: Largest reply payload (the 16-bit length field); READ_C and READBACK replies are bounded by
#: it, not by ``max_payload`` (which bounds requests).
MAX_REPLY = 0xFFFF
#: Largest ``count`` of one READ_C: ``(MAX_REPLY - 1) // 4``.
MAX_READ_WORDS = (MAX_REPLY - 1) // 4
#: Reflected CRC-32 polynomial (IEEE 802.3).
CRC_POLY = 0xEDB88320
#: Bytes of the frame around the payload: sync (2), header (4), CRC (4).
FRAME_OVERHEAD = 10


class Cmd(enum.IntEnum):
    """Request commands (the command byte of a request, below :data:`REPLY_FLAG`)."""

    INFO = 0x01       #: no payload; reply: status + INFO_LAYOUT
    RESET = 0x02      #: no payload; forget C, clear counters and the last error
    STATUS = 0x03     #: no payload; reply: status + STATUS_LAYOUT
    WRITE_A = 0x10    #: WRITE_ARGS_LAYOUT + ``count`` blocks of A
    WRITE_B = 0x11    #: WRITE_ARGS_LAYOUT + ``count`` blocks of B (device order)
    COMPUTE = 0x20    #: COMPUTE_ARGS_LAYOUT; reply: status + COMPUTE_REPLY_LAYOUT
    READ_C = 0x30     #: READ_ARGS_LAYOUT; reply: status + ``count`` FP32 words of C


#: Commands executed exactly once, in sequence-number order (docs/protocol.md 2.2).
SEQUENCED = frozenset({Cmd.WRITE_A, Cmd.WRITE_B, Cmd.COMPUTE, Cmd.READ_C})


class Flag(enum.IntFlag):
    """Bits of the ``flags`` argument of WRITE_A / WRITE_B (QUIET only) and COMPUTE."""

    QUIET = 1         #: no reply if the command succeeds (errors are still replied)
    ACCUMULATE = 2    #: COMPUTE: each running sum starts from the C value, not from +0.0
    READBACK = 4      #: COMPUTE: the reply also holds the result (M x N words, row-major)


class Status(enum.IntEnum):
    """First payload byte of every reply."""

    OK = 0
    BAD_CRC = 1          #: NACK: the CRC did not match
    TIMEOUT = 2          #: NACK: the frame stopped before its end (inter-byte idle timeout)
    TOO_LONG = 3         #: NACK: length field above the device's max payload
    UNKNOWN_CMD = 4      #: the command byte is not a :class:`Cmd`
    BAD_LENGTH = 5       #: the payload length does not match the command / its arguments
    BAD_ARG = 6          #: an argument is invalid (zero size, unknown wire format, flags)
    CAPACITY = 7         #: the request exceeds a buffer capacity (or C's extent)
    UNSUPPORTED = 8      #: valid but not supported by this build (see docs/protocol.md)
    NO_RESULT = 9        #: READ_C or ACCUMULATE before a successful COMPUTE (or after RESET)
    OUT_OF_ORDER = 10    #: a sequenced frame whose seq is not the next one: not executed
    MISMATCH = 11        #: ACCUMULATE that does not continue the last COMPUTE's result


class Wire(enum.IntEnum):
    """Encoding of tile data in WRITE_A / WRITE_B (``wire`` argument)."""

    FLOAT = 0   #: raw FP32 (or BF16, per INFO input format) values; the device quantizes
    BFP = 1     #: quantized blocks: exponent code byte + block_size mantissas


ROUNDING_CODES = {Rounding.NEAREST_EVEN: 0, Rounding.TOWARD_ZERO: 1, Rounding.STOCHASTIC: 2}
INPUT_FORMAT_CODES = {FloatFormat.FP32: 0, FloatFormat.BF16: 1}
SPECIAL_CODES = {Special.IEEE: 0, Special.FN: 1, Special.NONE: 2}
SCALE_RULE_CODES = {ScaleRule.FLOOR: 0, ScaleRule.CEIL: 1, ScaleRule.RCEIL: 2}

# -- layouts ------------------------------------------------------------------------------------

#: Frame header after the sync marker (covered by the CRC).
HEADER_LAYOUT = data.StructLayout({"cmd": unsigned(8), "seq": unsigned(8),
                                   "length": unsigned(16)})
#: Arguments of WRITE_A / WRITE_B: ``count`` blocks from block index ``start`` on.
WRITE_ARGS_LAYOUT = data.StructLayout({"wire": unsigned(8), "flags": unsigned(8),
                                       "count": unsigned(16), "start": unsigned(32)})
#: Arguments of COMPUTE: ``C[M, N] (+)= A[M, K] @ B[K, N]`` from the buffers. A is read from
#: block ``a_base`` on, B from bank word ``b_base`` on, C is written from bank word ``c_base``
#: on (docs/protocol.md 4).
COMPUTE_ARGS_LAYOUT = data.StructLayout({"m": unsigned(16), "n": unsigned(16),
                                         "k": unsigned(16), "flags": unsigned(16),
                                         "a_base": unsigned(32), "b_base": unsigned(32),
                                         "c_base": unsigned(32)})
#: Arguments of READ_C: ``count`` consecutive row-major elements from ``C[row, col]`` on, of
#: the ``rows x cols`` result stored from C bank word ``base`` on.
READ_ARGS_LAYOUT = data.StructLayout({"row": unsigned(16), "col": unsigned(16),
                                      "count": unsigned(16), "flags": unsigned(16),
                                      "base": unsigned(32), "rows": unsigned(16),
                                      "cols": unsigned(16)})
#: Reply of COMPUTE after the status byte.
COMPUTE_REPLY_LAYOUT = data.StructLayout({"cycles": unsigned(32)})
#: Reply of INFO after the status byte.
INFO_LAYOUT = data.StructLayout({
    "version": unsigned(8),
    "mantissa_bits": unsigned(8),
    "exponent_bits": unsigned(8),
    "rounding": unsigned(8),          # ROUNDING_CODES
    "block_size": unsigned(16),
    "input_format": unsigned(8),      # INPUT_FORMAT_CODES: lane width of Wire.FLOAT
    "wire_formats": unsigned(8),      # bit i set: Wire(i) accepted by WRITE_A/WRITE_B
    "lanes": unsigned(8),
    "channels": unsigned(8),
    "max_payload": unsigned(16),
    "a_blocks": unsigned(32),
    "b_blocks": unsigned(32),
    "c_words": unsigned(32),
    "clock_hz": unsigned(32),
    "timeout_cycles": unsigned(32),
    "build_hash": unsigned(32),
    "tx_buffer": unsigned(32),        # bytes of the transmit buffer that holds the replies
    # minifloat elements (numerics.md 5): exponent bits (0: integer elements), mantissa bits,
    # reserved codes (SPECIAL_CODES), exponent bias; the scale rule (SCALE_RULE_CODES)
    "element_exponent_bits": unsigned(8),
    "element_mantissa_bits": unsigned(8),
    "element_special": unsigned(8),
    "element_bias": unsigned(8),
    "scale_rule": unsigned(8),
})
#: Reply of STATUS after the status byte.
STATUS_LAYOUT = data.StructLayout({
    "last_error": unsigned(8),        # the last non-OK Status sent (0 after RESET)
    "c_valid": unsigned(8),           # 1 once a COMPUTE succeeded (C holds c_rows x c_cols)
    "frames": unsigned(16),           # frames executed (valid CRC), wraps
    "rx_errors": unsigned(16),        # NACKed frames, wraps
    "c_rows": unsigned(16),           # shape of the last COMPUTE's result
    "c_cols": unsigned(16),
    "next_seq": unsigned(8),          # the seq the next sequenced frame must carry
})


def layout_bytes(layout):
    """Return the size of a byte-aligned layout in bytes."""
    assert layout.size % 8 == 0
    return layout.size // 8


def to_bytes(layout, fields):
    """Pack a dict of fields with ``layout`` into little-endian bytes."""
    return pack(layout, fields).to_bytes(layout_bytes(layout), "little")


def from_bytes(layout, raw):
    """Unpack bytes produced by :func:`to_bytes` (or the gateware) into a dict of ints."""
    raw = bytes(raw)
    if len(raw) != layout_bytes(layout):
        raise ValueError(f"expected {layout_bytes(layout)} bytes, got {len(raw)}")
    return unpack(layout, int.from_bytes(raw, "little"))


# -- CRC-32 -------------------------------------------------------------------------------------

def crc32_byte(crc, byte):
    """Advance a (non-inverted) CRC-32 register by one byte, bit-serially (the hardware's step)."""
    crc ^= byte
    for _ in range(8):
        crc = (crc >> 1) ^ (CRC_POLY if crc & 1 else 0)
    return crc


def crc32(raw, crc=0):
    """Return the IEEE CRC-32 of ``raw``: ``zlib.crc32`` (fast), which the hardware's
    :func:`crc32_byte` steps reproduce.

    ``crc`` is a previous result to continue from.
    """
    return zlib.crc32(bytes(raw), crc)


# -- frames -------------------------------------------------------------------------------------

class ProtocolError(Exception):
    """A reply that is malformed or unexpected."""


@dataclass(frozen=True)
class Frame:
    """One decoded frame: command byte, sequence number and payload."""

    cmd: int
    seq: int
    payload: bytes

    @property
    def is_reply(self):
        return self.cmd >= REPLY_FLAG

    @property
    def status(self):
        """The :class:`Status` of a reply (its first payload byte)."""
        if not self.payload:
            raise ProtocolError("reply without a status byte")
        try:
            return Status(self.payload[0])
        except ValueError:
            raise ProtocolError(f"unknown status code {self.payload[0]}") from None

    @property
    def body(self):
        """The payload of a reply after its status byte."""
        return self.payload[1:]


def encode_frame(cmd, seq, payload=b""):
    """Return the bytes of one frame."""
    payload = bytes(payload)
    if not 0 <= cmd <= 0xFF or not 0 <= seq <= 0xFF:
        raise ValueError(f"cmd and seq must be bytes, not {cmd!r} and {seq!r}")
    if len(payload) > 0xFFFF:
        raise ValueError(f"payload must be at most 65535 bytes, not {len(payload)}")
    body = to_bytes(HEADER_LAYOUT, {"cmd": cmd, "seq": seq, "length": len(payload)}) + payload
    return SYNC + body + crc32(body).to_bytes(4, "little")


class FrameParser:
    """Incremental frame decoder, the Python mirror of
    :class:`~hbfp_hw.fpga.system.decoder.FrameDecoder`.

    :meth:`feed` takes any bytes and returns the complete frames found; frames with a bad CRC
    or a length above ``max_payload`` are counted in :attr:`errors` and skipped, and the parser
    resynchronizes on the next sync marker (like the gateware, it does not rescan the bytes of
    a rejected frame).
    """

    def __init__(self, max_payload=0xFFFF):
        self.max_payload = max_payload
        self.errors = 0
        self._buf = bytearray()

    def reset(self):
        """Drop any partial frame (the host's equivalent of the idle timeout)."""
        self._buf.clear()

    def partial_header(self):
        """Return ``(cmd, seq)`` of the frame being received (its header has arrived, the rest
        of it not yet), or None."""
        buf = self._buf
        if len(buf) < 6 or buf[:2] != SYNC:
            return None
        return buf[2], buf[3]

    def feed(self, raw):
        self._buf += bytes(raw)
        frames = []
        buf = self._buf
        while True:
            start = buf.find(SYNC)
            if start < 0:
                # Keep a trailing first sync byte, drop the rest.
                del buf[:len(buf) - 1 if buf.endswith(SYNC[:1]) else len(buf)]
                return frames
            del buf[:start]
            if len(buf) < 6:
                return frames
            header = from_bytes(HEADER_LAYOUT, buf[2:6])
            if header["length"] > self.max_payload:
                self.errors += 1
                del buf[:6]
                continue
            total = 6 + header["length"] + 4
            if len(buf) < total:
                return frames
            body = bytes(buf[2:6 + header["length"]])
            crc = int.from_bytes(buf[total - 4:total], "little")
            del buf[:total]
            if crc != crc32(body):
                self.errors += 1
                continue
            frames.append(Frame(header["cmd"], header["seq"], body[4:]))


# -- tile data ----------------------------------------------------------------------------------

def _fmt_and_input(fmt, input_format):
    return resolve_format(fmt), FloatFormat(input_format)


def _elements(q):
    """The block wire's elements of a quantized tensor: two's complement mantissas (sign
    extended over their bytes), or the element codes of minifloat elements."""
    return q.element_codes().astype(np.int64) if q.fmt.is_minifloat else q.mantissas


def mantissa_bytes(fmt):
    """Bytes of one mantissa on the wire: ``ceil(mantissa_bits / 8)``."""
    return (resolve_format(fmt).mantissa_bits + 7) // 8


def element_bytes(input_format="fp32"):
    """Bytes of one float element with ``Wire.FLOAT``: 4 (FP32) or 2 (BF16)."""
    return FloatFormat(input_format).width // 8


def block_bytes(fmt, wire, input_format="fp32"):
    """Bytes of one block on the wire for ``wire`` (a :class:`Wire`)."""
    fmt = resolve_format(fmt)
    if Wire(wire) is Wire.FLOAT:
        return fmt.block_size * element_bytes(input_format)
    return 1 + fmt.block_size * mantissa_bytes(fmt)


def kblocks(k, fmt):
    """Number of k-blocks: ``ceil(K / block_size)``."""
    n = resolve_format(fmt).block_size
    return -(-int(k) // n)


def column_groups(n, lanes):
    """Number of column groups of ``lanes`` columns: ``ceil(N / lanes)``."""
    return -(-int(n) // lanes)


def padded_columns(n, lanes):
    """N rounded up to a multiple of ``lanes`` (the columns of B the device stores)."""
    return column_groups(n, lanes) * lanes


def _float_blocks(blocks, input_format):
    """Raw little-endian bytes of float blocks ``[..., block_size]`` (FP32 or BF16 lanes)."""
    bits = np.ascontiguousarray(blocks, dtype=np.float32).view(np.uint32)
    if FloatFormat(input_format) is FloatFormat.BF16:
        return (bits >> 16).astype("<u2").tobytes()
    return bits.astype("<u4").tobytes()


def _bfp_blocks(codes, mantissas, fmt):
    """Bytes of quantized blocks: per block the exponent code, then the mantissas (each the
    low ``mantissa_bytes`` bytes of its little-endian two's complement; minifloat element
    codes as they are)."""
    mb = mantissa_bytes(fmt)
    codes = np.asarray(codes).reshape(-1)
    nblocks = codes.shape[0]
    out = np.empty((nblocks, 1 + fmt.block_size * mb), np.uint8)
    out[:, 0] = codes
    words = np.asarray(mantissas).astype("<i8").reshape(nblocks, fmt.block_size, 1)
    out[:, 1:] = words.view(np.uint8)[:, :, :mb].reshape(nblocks, -1)
    return out.tobytes()


def _a_blocks(a, fmt):
    a = np.asarray(a, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"A must be 2-D, not of shape {a.shape}")
    n = fmt.block_size
    kb = kblocks(a.shape[1], fmt)
    padded = np.zeros((a.shape[0], kb * n), np.float32)
    padded[:, :a.shape[1]] = a
    return padded.reshape(a.shape[0], kb, n)          # [M, KB, bs]


def b_device_order(x, lanes):
    """Reorder per-column data ``[Ncols, KB, ...]`` into the device's B order.

    Columns are padded (with zeros) to a multiple of ``lanes`` and the result is indexed
    ``[group, kb, lane, ...]`` with column ``n = group * lanes + lane``: block index
    ``(group * KB + kb) * lanes + lane`` is what WRITE_B's ``start`` counts.
    """
    x = np.asarray(x)
    ncols = x.shape[0]
    npad = padded_columns(ncols, lanes)
    if npad != ncols:
        x = np.concatenate([x, np.zeros((npad - ncols, *x.shape[1:]), x.dtype)])
    g = npad // lanes
    x = x.reshape(g, lanes, *x.shape[1:])              # [G, L, KB, ...]
    return np.swapaxes(x, 1, 2)                        # [G, KB, L, ...]


def a_blocks_payload(a, fmt, wire, *, input_format="fp32", seed=None):
    """Return ``(nblocks, data)``: the blocks of ``A [M, K]`` in device order (row-major).

    Block index ``m * KB + kb`` holds the k-block ``kb`` of row ``m``. With ``Wire.BFP`` the
    host quantizes with :func:`hbfp_hw.golden.quantize` (``seed`` for stochastic rounding, as
    ``golden.gemm`` uses it for A); the data is the same whichever way it is split into frames.
    """
    fmt, input_format = _fmt_and_input(fmt, input_format)
    blocks = _a_blocks(a, fmt)
    if Wire(wire) is Wire.FLOAT:
        return blocks.shape[0] * blocks.shape[1], _float_blocks(blocks, input_format)
    q = quantize(np.asarray(a, np.float32), fmt, axis=1, seed=seed, input_format=input_format)
    codes = q.exponent_codes
    return codes.size, _bfp_blocks(codes, _elements(q), fmt)


def b_blocks_payload(b, fmt, wire, lanes, *, input_format="fp32", seed=None):
    """Return ``(nblocks, data)``: the blocks of ``B [K, N]`` in device order.

    See :func:`b_device_order`. With ``Wire.BFP`` B is quantized along K (its columns) with
    ``seed`` (``golden.gemm`` uses ``seed + 1`` for B; pass that).
    """
    fmt, input_format = _fmt_and_input(fmt, input_format)
    b = np.asarray(b, dtype=np.float32)
    if b.ndim != 2:
        raise ValueError(f"B must be 2-D, not of shape {b.shape}")
    if Wire(wire) is Wire.FLOAT:
        cols = _a_blocks(b.T, fmt)                          # [N, KB, bs]
        dev = b_device_order(cols, lanes)
        return dev.shape[0] * dev.shape[1] * dev.shape[2], _float_blocks(dev, input_format)
    q = quantize(b, fmt, axis=0, seed=seed, input_format=input_format)
    codes = b_device_order(q.exponent_codes.astype(np.int64), lanes)     # [G, KB, L]
    mant = b_device_order(_elements(q).astype(np.int64), lanes)         # [G, KB, L, bs]
    return codes.size, _bfp_blocks(codes, mant, fmt)


# -- requests -----------------------------------------------------------------------------------

def request_write(cmd, seq, start, count, blocks, wire, flags=0):
    """Return a WRITE_A / WRITE_B frame carrying ``count`` blocks (bytes) from ``start`` on."""
    args = to_bytes(WRITE_ARGS_LAYOUT, {"wire": int(wire), "flags": int(flags), "count": count,
                                        "start": start})
    return encode_frame(int(cmd), seq, args + bytes(blocks))


def request_compute(seq, m, n, k, flags=0, *, a_base=0, b_base=0, c_base=0):
    """Return a COMPUTE frame (``flags``: a combination of :class:`Flag`)."""
    return encode_frame(Cmd.COMPUTE, seq, to_bytes(COMPUTE_ARGS_LAYOUT, {
        "m": m, "n": n, "k": k, "flags": int(flags), "a_base": a_base, "b_base": b_base,
        "c_base": c_base}))


def request_read(seq, row, col, count, *, rows, cols, base=0):
    """Return a READ_C frame for ``count`` words of the ``rows x cols`` result at ``base``."""
    return encode_frame(Cmd.READ_C, seq, to_bytes(READ_ARGS_LAYOUT, {
        "row": row, "col": col, "count": count, "flags": 0, "base": base, "rows": rows,
        "cols": cols}))


def c_from_payload(body):
    """Return the FP32 bit patterns (uint32 array) of a READ_C reply body."""
    if len(body) % 4:
        raise ProtocolError(f"READ_C body of {len(body)} bytes is not whole words")
    return np.frombuffer(bytes(body), dtype="<u4").astype(np.uint32)


# -- INFO ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Info:
    """Decoded INFO reply: what a device build is and what it can hold."""

    version: int
    fmt: BFPFormat
    input_format: FloatFormat
    wire_formats: frozenset
    lanes: int
    channels: int
    max_payload: int
    a_blocks: int
    b_blocks: int
    c_words: int
    clock_hz: int
    timeout_cycles: int
    build_hash: int
    #: Bytes of the device's transmit buffer: reply bytes it holds while they leave at the
    #: line rate (0: none; docs/protocol.md 1).
    tx_buffer: int = 0

    @classmethod
    def from_bytes(cls, raw):
        f = from_bytes(INFO_LAYOUT, raw)
        rounding = {v: k for k, v in ROUNDING_CODES.items()}[f["rounding"]]
        input_format = {v: k for k, v in INPUT_FORMAT_CODES.items()}[f["input_format"]]
        fmt = BFPFormat(f["mantissa_bits"], f["block_size"], rounding, f["exponent_bits"])
        if f["element_exponent_bits"]:
            special = {v: k for k, v in SPECIAL_CODES.items()}[f["element_special"]]
            rule = {v: k for k, v in SCALE_RULE_CODES.items()}[f["scale_rule"]]
            element = Minifloat(f["element_exponent_bits"], f["element_mantissa_bits"],
                                special, f["element_bias"])
            fmt = fmt.replace(element=element, scale_rule=rule)
        return cls(
            version=f["version"],
            fmt=fmt,
            input_format=input_format,
            wire_formats=frozenset(w for w in Wire if f["wire_formats"] >> w & 1),
            lanes=f["lanes"], channels=f["channels"], max_payload=f["max_payload"],
            a_blocks=f["a_blocks"], b_blocks=f["b_blocks"], c_words=f["c_words"],
            clock_hz=f["clock_hz"], timeout_cycles=f["timeout_cycles"],
            build_hash=f["build_hash"], tx_buffer=f["tx_buffer"])

    def to_bytes(self):
        return info_to_bytes(self)

    @property
    def b_depth(self):
        """Words (column groups x k-blocks) per B bank: ``b_blocks // lanes``."""
        return self.b_blocks // self.lanes

    @property
    def c_depth(self):
        """Words per C bank: ``c_words // lanes``."""
        return self.c_words // self.lanes

    def fits(self, m, n, k):
        """Return whether ``COMPUTE(m, n, k)`` with zero bases fits the buffers."""
        kb = kblocks(k, self.fmt)
        g = column_groups(n, self.lanes)
        return (m * kb <= self.a_blocks and g * kb <= self.b_depth
                and m * g <= self.c_depth)

    def max_blocks_per_write(self, wire):
        """Largest ``count`` of one WRITE frame."""
        return (self.max_payload - ARGS_BYTES) // block_bytes(self.fmt, wire, self.input_format)

    @property
    def max_read_words(self):
        """Largest ``count`` of one READ_C (:data:`MAX_READ_WORDS`; replies are not bounded by
        ``max_payload``)."""
        return MAX_READ_WORDS


def info_to_bytes(info):
    """Serialize an :class:`Info` with :data:`INFO_LAYOUT` (the gateware's INFO ROM)."""
    return to_bytes(INFO_LAYOUT, {
        "version": info.version,
        "mantissa_bits": info.fmt.mantissa_bits,
        "exponent_bits": info.fmt.exponent_bits,
        "rounding": ROUNDING_CODES[info.fmt.rounding],
        "block_size": info.fmt.block_size,
        "input_format": INPUT_FORMAT_CODES[info.input_format],
        "wire_formats": sum(1 << int(w) for w in info.wire_formats),
        "lanes": info.lanes,
        "channels": info.channels,
        "max_payload": info.max_payload,
        "a_blocks": info.a_blocks,
        "b_blocks": info.b_blocks,
        "c_words": info.c_words,
        "clock_hz": info.clock_hz,
        "timeout_cycles": info.timeout_cycles,
        "build_hash": info.build_hash,
        "tx_buffer": info.tx_buffer,
        **_element_fields(info.fmt),
    })


def _element_fields(fmt):
    """INFO's element fields of ``fmt`` (zeros for integer elements)."""
    el = fmt.element
    return {"element_exponent_bits": el.exponent_bits if el else 0,
            "element_mantissa_bits": el.mantissa_bits if el else 0,
            "element_special": SPECIAL_CODES[el.special] if el else 0,
            "element_bias": el.bias if el else 0,
            "scale_rule": SCALE_RULE_CODES[fmt.scale_rule]}


"""The system configuration: one frozen object that names a build of the device.

A :class:`SystemConfig` is built once and handed whole to the gateware
(:class:`~hbfp_hw.fpga.system.engine.GemmSystem`), the board build
(:class:`~hbfp_hw.fpga.boards.BuildConfig`), the simulated board
(:class:`~hbfp_hw.fpga.host.simboard.SimConfig`) and the driver's INFO check. It holds the one
set of
defaults (the field defaults below) and the named presets of the builds that exist
(:data:`PRESETS`, :meth:`SystemConfig.preset`).

This module imports no Amaranth: host code reads configurations without the gateware
generators. The checks that need them (the format's RTL range, the deepest pipeline of each
unit for a format, the smallest payload RAM for a block) are made by ``GemmSystem``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zlib
from dataclasses import dataclass

from hbfp_hw.formats import (
    BFP8,
    BFPFormat,
    FloatFormat,
    Rounding,
    resolve_format,
)

__all__ = ["SystemConfig", "PRESETS", "DEFAULT_PRESET"]

#: The protocol version the build hash covers (``protocol.PROTOCOL_VERSION``, checked by a test:
#: protocol/frames.py imports Amaranth, this module does not).
_PROTOCOL_VERSION = 5


def _check_int(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, not {value!r}")


def _check_optional_int(name, value, lo, hi):
    if value is not None:
        _check_int(name, value, lo, hi)


@dataclass(frozen=True)
class SystemConfig:
    """Everything that determines a ``GemmSystem``: format, wires, lanes, buffers, pipelines.

    The field defaults are the one set of defaults; :data:`PRESETS` names the configurations of
    the ULX3S build, the iCEBreaker build and the simulated board. Change fields with
    :meth:`replace`; the object is immutable and hashable.

    Parameters
    ----------
    fmt : BFPFormat or str
        The BFP format (block size 2..64 for the RTL). A preset name (``"bfp8"``) is resolved
        once, here; the field holds the :class:`~hbfp_hw.formats.BFPFormat`.
    input_format : FloatFormat or {"fp32", "bf16"}
        Element format of ``Wire.FLOAT`` tile data (4 or 2 bytes per element).
    float_wire : bool
        Accept ``Wire.FLOAT`` tile data, quantized on the device. Without it (and always with a
        stochastic format) the device has no quantizer and the host quantizes.
    lanes : int
        Dot-product units, or columns of the systolic array; a power of two 1..64.
    rows : int
        0: the engine is ``lanes`` dot-product units
        (:class:`~hbfp_hw.fpga.system.array.GemmEngine`); 1..64: a systolic array of
        ``rows x lanes`` PEs (:class:`~hbfp_hw.fpga.system.systolic.SystolicEngine`), each
        multiplying one block pair per cycle.
    multipliers : {"dsp", "lut"}
        The array's multipliers: ECP5 DSP blocks or logic (``rows`` > 0 only).
    dsp_pes : int or None
        With a number, the first ``dsp_pes`` PEs of the array (row by row) use DSP blocks and
        the others ``multipliers`` (``rows`` > 0 only).
    channels : int or None
        Column groups interleaved per unit (None: ``adder_stages``); ``rows`` = 0 only.
    clock_hz : int
        Clock frequency, reported by INFO (and the default timeout base).
    build_hash : int or None
        32-bit build identifier reported by INFO (None: :meth:`default_build_hash`).
    a_blocks, b_blocks, c_words : int
        Buffer capacities: blocks of A, blocks of B, FP32 words of C (``b_blocks`` and
        ``c_words`` multiples of ``lanes``), each at most 2**24.
    max_payload : int
        Largest request payload in bytes (the payload RAM), at most 65535; ``GemmSystem``
        requires room for the arguments and one block of either wire format.
    timeout_cycles : int or None
        Inter-byte idle timeout within a frame (None: ``clock_hz // 10``, 100 ms).
    mac_stages, convert_stages, adder_stages, align_stages : int
        Pipeline depths of the MAC tree (the block product), the block-to-float conversion and
        the FP32 adder of the dot-product units or PEs, and of the quantizer of float tile
        data. Their maxima depend on
        the format (``GemmSystem`` checks them).
    tx_buffer : int
        Bytes of the transmit buffer between the reply encoder and ``o_stream`` (0..2**24;
        0: none).

    Raises
    ------
    TypeError
        If a field has the wrong type.
    ValueError
        If a field is out of its range (the message names the field and the range).
    """

    fmt: BFPFormat = BFP8
    input_format: FloatFormat = FloatFormat.FP32
    float_wire: bool = True
    lanes: int = 2
    rows: int = 0
    multipliers: str = "dsp"
    dsp_pes: int | None = None
    channels: int | None = None
    clock_hz: int = 50_000_000
    build_hash: int | None = None
    a_blocks: int = 256
    b_blocks: int = 256
    c_words: int = 256
    max_payload: int = 1024
    timeout_cycles: int | None = None
    mac_stages: int = 2
    convert_stages: int = 3
    adder_stages: int = 3
    align_stages: int = 2
    tx_buffer: int = 0

    def __post_init__(self):
        if isinstance(self.fmt, str):
            object.__setattr__(self, "fmt", resolve_format(self.fmt))
        if not isinstance(self.fmt, BFPFormat):
            raise TypeError(f"fmt must be a BFPFormat or a preset name, not {self.fmt!r}")
        if not isinstance(self.input_format, (str, FloatFormat)):
            raise TypeError(f"input_format must be a FloatFormat or a string, "
                            f"not {self.input_format!r}")
        try:
            object.__setattr__(self, "input_format", FloatFormat(self.input_format))
        except ValueError:
            raise ValueError(f"input_format must be one of 'fp32', 'bf16', "
                             f"not {self.input_format!r}") from None
        if not isinstance(self.float_wire, bool):
            raise TypeError(f"float_wire must be True or False, not {self.float_wire!r}")
        lanes = self.lanes
        if isinstance(lanes, bool) or not isinstance(lanes, int):
            raise TypeError(f"lanes must be an integer, not {lanes!r}")
        if not 1 <= lanes <= 64 or lanes & (lanes - 1):
            raise ValueError(f"lanes must be a power of two between 1 and 64, not {lanes!r}")
        _check_int("rows", self.rows, 0, 64)
        if self.multipliers not in ("dsp", "lut"):
            raise ValueError(f"multipliers must be 'dsp' or 'lut', not {self.multipliers!r}")
        _check_optional_int("dsp_pes", self.dsp_pes, 0, max(self.rows, 1) * lanes)
        _check_optional_int("channels", self.channels, 1, 256)
        _check_int("clock_hz", self.clock_hz, 1, 2**32 - 1)
        _check_optional_int("build_hash", self.build_hash, 0, 2**32 - 1)
        _check_int("a_blocks", self.a_blocks, 1, 1 << 24)
        for name in ("b_blocks", "c_words"):
            value = getattr(self, name)
            _check_int(name, value, lanes, 1 << 24)
            if value % lanes:
                raise ValueError(f"{name} must be a multiple of lanes ({lanes}), not {value!r}")
        _check_int("max_payload", self.max_payload, 1, 0xFFFF)
        _check_optional_int("timeout_cycles", self.timeout_cycles, 1, 2**32 - 1)
        for name in ("mac_stages", "convert_stages", "adder_stages", "align_stages"):
            _check_int(name, getattr(self, name), 0, 256)
        _check_int("tx_buffer", self.tx_buffer, 0, 1 << 24)

    def fit_multipliers(self, blocks):
        """Return this configuration with its multipliers fitted to a part with ``blocks``
        hard multipliers (MULT18X18D, SB_MAC16): the first ``blocks // block_size`` PEs of
        an array (at most all of them) multiply in them and the others in logic; dot-product
        units (``rows`` = 0) multiply in them."""
        if self.rows:
            return self.replace(multipliers="lut", dsp_pes=min(
                blocks // self.fmt.block_size, self.rows * self.lanes))
        return self.replace(multipliers="dsp", dsp_pes=None)

    # -- presets and changes --------------------------------------------------------------------

    @classmethod
    def preset(cls, name):
        """Return the preset ``name`` (a key of :data:`PRESETS`).

        Raises
        ------
        ValueError
            If there is no such preset.
        """
        try:
            return PRESETS[name]
        except (KeyError, TypeError):
            raise ValueError(f"preset must be one of {', '.join(map(repr, PRESETS))}, "
                             f"not {name!r}") from None

    def replace(self, **changes):
        """Return a copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    # -- derived values -------------------------------------------------------------------------

    @property
    def effective_channels(self):
        """``channels``, or ``adder_stages`` when it is None; 1 for a systolic array (whose
        PEs hold no running sums)."""
        if self.rows:
            return 1
        return self.adder_stages if self.channels is None else self.channels

    @property
    def macs_per_cycle(self):
        """Peak multiply-accumulates per clock cycle: every lane (or PE) multiplies one block
        pair (``block_size`` products) per cycle."""
        return max(self.rows, 1) * self.lanes * self.fmt.block_size

    @property
    def effective_timeout_cycles(self):
        """``timeout_cycles``, or ``clock_hz // 10`` (at least 1) when it is None."""
        if self.timeout_cycles is None:
            return max(1, self.clock_hz // 10)
        return self.timeout_cycles

    @property
    def effective_float_wire(self):
        """Whether the device takes float tile data: ``float_wire`` and a non-stochastic
        format (a stochastic format is quantized by the host only, docs/protocol.md)."""
        return self.float_wire and self.fmt.rounding is not Rounding.STOCHASTIC

    def default_build_hash(self):
        """Return the 32-bit CRC of every gateware parameter and the protocol version."""
        fmt = self.fmt
        params = dict(
            fmt=fmt.name, rounding=fmt.rounding.value, w=fmt.mantissa_bits,
            n=fmt.block_size, e=fmt.exponent_bits, input_format=self.input_format.value,
            lanes=self.lanes, channels=self.effective_channels, a_blocks=self.a_blocks,
            b_blocks=self.b_blocks, c_words=self.c_words, max_payload=self.max_payload,
            timeout=self.effective_timeout_cycles, clock_hz=self.clock_hz,
            stages=(self.mac_stages, self.convert_stages, self.adder_stages,
                    self.align_stages),
            float_wire=self.effective_float_wire, tx_buffer=self.tx_buffer)
        if self.rows:
            params.update(rows=self.rows, multipliers=self.multipliers, dsp_pes=self.dsp_pes)
        text = ";".join(f"{k}={params[k]}" for k in sorted(params))
        return zlib.crc32(f"hbfp-hw-gemm;v{_PROTOCOL_VERSION};{text}".encode())

    @property
    def effective_build_hash(self):
        """``build_hash``, or :meth:`default_build_hash` when it is None."""
        return self.default_build_hash() if self.build_hash is None else self.build_hash

    def info(self):
        """Return the :class:`~hbfp_hw.fpga.protocol.Info` a device of this configuration
        reports (what the driver checks a device's INFO against)."""
        from . import protocol

        wires = {protocol.Wire.BFP}
        if self.effective_float_wire:
            wires.add(protocol.Wire.FLOAT)
        return protocol.Info(
            version=protocol.PROTOCOL_VERSION, fmt=self.fmt, input_format=self.input_format,
            wire_formats=frozenset(wires), lanes=self.lanes, channels=self.effective_channels,
            max_payload=self.max_payload, a_blocks=self.a_blocks, b_blocks=self.b_blocks,
            c_words=self.c_words, clock_hz=self.clock_hz,
            timeout_cycles=self.effective_timeout_cycles,
            build_hash=self.effective_build_hash, tx_buffer=self.tx_buffer)

    # -- serialization --------------------------------------------------------------------------

    def to_dict(self):
        """Return a JSON-ready dict of every field (the format as ``BFPFormat.to_dict``)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["fmt"] = self.fmt.to_dict()
        d["input_format"] = self.input_format.value
        return d

    @classmethod
    def from_dict(cls, d):
        """Rebuild a configuration from :meth:`to_dict` output (missing keys: defaults).

        Raises
        ------
        ValueError
            On an unknown key.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"Unknown SystemConfig field(s): {', '.join(unknown)}")
        kwargs = dict(d)
        if isinstance(kwargs.get("fmt"), dict):
            kwargs["fmt"] = BFPFormat.from_dict(kwargs["fmt"])
        return cls(**kwargs)

    def key(self):
        """Return a stable hex digest of :meth:`to_dict` (the key of build caches)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


_DEFAULT = SystemConfig()

#: Named configurations: the builds that exist.
#:
#: ``"ulx3s-85f"``
#:     The default board (LFE5U-85F) at 100 MHz: bfp8 on a 4 x 4 systolic array (256 MACs per
#:     cycle, :class:`~hbfp_hw.fpga.system.systolic.SystolicEngine`), whose first nine PEs
#:     multiply in MULT18X18D blocks (144 of the 156) and the other seven in logic; the
#:     deepest pipelines of each PE and of the quantizer for bfp8 (the 100 MHz target needs
#:     them; a test checks they are the deepest), and a 16 KiB transmit buffer (8 of the 208
#:     DP16KD, one bit of a 16K-deep byte each, so no multiplexer behind their read data) that
#:     holds the largest reply (protocol.MAX_REPLY) and all of C: the device executes the next
#:     frames while long results leave at the line rate. docs/benchmarks.md has the builds
#:     (Fmax with nextpnr seeds 1, 2 and 3).
#: ``"icebreaker"``
#:     The iCE40 UP5K (5280 logic cells, 8 SB_MAC16, 30 SB_RAM40_4K). The GemmSystem's control
#:     logic and FP32 accumulator alone take most of it, so: one lane of 4-element blocks of
#:     4-bit mantissas, BF16 operands, small buffers, the 12 MHz oscillator, and no on-device
#:     quantizer (the host sends quantized blocks, wire=bfp; wire=fp32 is refused). The
#:     pipelines are as short as 12 MHz allows, since on the iCE40 every register and output
#:     FIFO entry is a logic cell: a combinational MAC tree, two conversion stages (one misses
#:     12 MHz) and three adder stages (two miss it from the term buffer's block RAM).
#:     docs/hardware.md has the measurements.
#: ``"sim"``
#:     The simulated board (``make demo``, CI, ``sim://``): bfp8 on a 2 x 4 systolic array, the
#:     default board's generator with half its rows (the Verilator model of the 4 x 4 array
#:     builds and runs slower), buffers large enough for the demo's GEMMs and the board's
#:     transmit buffer.
#:     ``clock_hz`` is nominal (the model runs as fast as the host allows); with
#:     ``timeout_cycles`` it makes the decoder timeout 10 ms of host time, what a host waits
#:     before it retries (docs/protocol.md 5).
_ULX3S = _DEFAULT.replace(
    rows=4, lanes=4, multipliers="lut", dsp_pes=9, clock_hz=100_000_000, mac_stages=9,
    convert_stages=7, adder_stages=11, align_stages=12, tx_buffer=16384)

PRESETS = {
    "ulx3s-85f": _ULX3S,
    "icebreaker": _DEFAULT.replace(
        fmt=BFPFormat(4, 4), input_format=FloatFormat.BF16, float_wire=False, lanes=1,
        clock_hz=12_000_000, a_blocks=32, b_blocks=32, c_words=32, max_payload=64,
        mac_stages=0, convert_stages=2, adder_stages=3),
    "sim": _DEFAULT.replace(
        fmt=_ULX3S.fmt, rows=2, lanes=_ULX3S.lanes, a_blocks=1024, b_blocks=1024, c_words=4096,
        clock_hz=200_000, timeout_cycles=2_000, tx_buffer=_ULX3S.tx_buffer),
}

#: The preset of the default board.
DEFAULT_PRESET = "ulx3s-85f"

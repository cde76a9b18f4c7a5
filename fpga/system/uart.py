"""UART PHY: 8N1 receiver and transmitter with 8-bit streams, baud rate set by a clock divider.

The board top-levels put these between the FTDI UART pins and the byte streams of the
``GemmSystem``::

    rx pin ─> UARTReceiver.o_stream ─> (FIFO) ─> GemmSystem.i_stream
    GemmSystem.o_stream ─> UARTTransmitter.i_stream ─> tx pin

Both run in the ``sync`` domain. One bit lasts :attr:`UARTReceiver.divisor` clock cycles,
``round(clock_hz / baud)``; the constructor refuses a divisor below 4 or a baud-rate error above
:data:`MAX_BAUD_ERROR` (at 3 Mbaud: 12 MHz gives 4 cycles per bit exactly, 100 MHz gives 33 with
1 % error).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["MAX_BAUD_ERROR", "MIN_DIVISOR", "baud_divisor", "UARTReceiver", "UARTTransmitter"]

#: Largest relative baud-rate error accepted (the receiver samples mid-bit, so an 8N1 frame
#: tolerates about 4 % in total between both ends; each end gets half of it).
MAX_BAUD_ERROR = 0.02

#: Fewest clock cycles per bit. The receiver needs a middle sample and the 2-FF synchronizer.
MIN_DIVISOR = 4


def baud_divisor(clock_hz, baud):
    """Return the clock cycles per bit for ``baud`` at ``clock_hz``.

    Raises
    ------
    TypeError
        If an argument is not a number.
    ValueError
        If an argument is not positive, the divisor is below :data:`MIN_DIVISOR`, or the
        achieved baud rate is off by more than :data:`MAX_BAUD_ERROR`.
    """
    for name, value in (("clock_hz", clock_hz), ("baud", baud)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, not {value!r}")
        if not value > 0:
            raise ValueError(f"{name} must be positive, not {value!r}")
    divisor = round(clock_hz / baud)
    if divisor < MIN_DIVISOR:
        raise ValueError(f"Baud rate {baud!r} needs at least {MIN_DIVISOR} clock cycles per bit, "
                         f"but the clock of {clock_hz!r} Hz gives {clock_hz / baud:.2f}")
    error = abs(clock_hz / divisor - baud) / baud
    if error > MAX_BAUD_ERROR:
        raise ValueError(f"Baud rate {baud!r} is off by {error:.1%} at {clock_hz!r} Hz "
                         f"(divisor {divisor}); at most {MAX_BAUD_ERROR:.0%} is allowed")
    return divisor


class _UARTBase(wiring.Component):
    def __init__(self, signature, *, clock_hz, baud):
        self._divisor = baud_divisor(clock_hz, baud)
        self._clock_hz = clock_hz
        self._baud = baud
        super().__init__(signature)

    @property
    def clock_hz(self):
        return self._clock_hz

    @property
    def baud(self):
        """Requested baud rate."""
        return self._baud

    @property
    def divisor(self):
        """Clock cycles per bit."""
        return self._divisor

    @property
    def actual_baud(self):
        """Baud rate the divider actually produces."""
        return self._clock_hz / self._divisor


class UARTReceiver(_UARTBase):
    """8N1 UART receiver: the ``rx`` line in, one byte per frame out.

    A falling edge on the idle line starts a frame. The start bit is checked again half a bit
    later (a shorter glitch is ignored), then the eight data bits (LSB first) and the stop bit
    are sampled in the middle of their bit times. A frame whose stop bit is 0 is dropped and
    pulses ``framing_error``; the receiver then waits for the line to go idle (high) before it
    looks for the next start bit, so a break does not produce bytes. The line cannot be held
    off, so a byte that arrives while the previous one is still waiting on ``o_stream`` is
    dropped and pulses ``overflow``; put a FIFO behind the receiver if the consumer can stall.

    Parameters
    ----------
    clock_hz : int or float
        Frequency of the ``sync`` domain.
    baud : int or float
        Baud rate (see :func:`baud_divisor` for the limits).

    Members
    -------
    rx : ``In(1)``
        The serial line (idle high); synchronized inside.
    o_stream : ``Out(stream.Signature(8))``
        Received bytes.
    framing_error : ``Out(1)``
        One-cycle pulse: a frame with a bad stop bit was dropped.
    overflow : ``Out(1)``
        One-cycle pulse: a received byte was dropped because ``o_stream`` was still full.
    """

    def __init__(self, *, clock_hz, baud=3_000_000):
        super().__init__({
            "rx": In(1, init=1),
            "o_stream": Out(stream.Signature(8)),
            "framing_error": Out(1),
            "overflow": Out(1),
        }, clock_hz=clock_hz, baud=baud)

    def elaborate(self, platform):
        m = Module()
        rx = Signal(init=1)
        m.submodules.rx_sync = FFSynchronizer(self.rx, rx, init=1)

        divisor = self._divisor
        timer = Signal(range(divisor + divisor // 2 + 1))
        bit = Signal(range(9))
        shreg = Signal(8)
        full = Signal()
        data_reg = Signal(8)

        m.d.comb += [
            self.o_stream.valid.eq(full),
            self.o_stream.payload.eq(data_reg),
        ]
        with m.If(self.o_stream.ready):
            m.d.sync += full.eq(0)
        m.d.sync += [self.framing_error.eq(0), self.overflow.eq(0)]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    # Half a bit to the middle of the start bit (minus the cycle spent here).
                    m.d.sync += timer.eq(divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(rx):
                    m.next = "IDLE"          # a glitch, not a start bit
                with m.Else():
                    m.d.sync += [timer.eq(divisor - 1), bit.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [shreg.eq(Cat(shreg[1:], rx)),
                                 timer.eq(divisor - 1),
                                 bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(rx):
                    with m.If(full & ~self.o_stream.ready):
                        m.d.sync += self.overflow.eq(1)
                    with m.Else():
                        m.d.sync += [data_reg.eq(shreg), full.eq(1)]
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += self.framing_error.eq(1)
                    m.next = "BREAK"
            with m.State("BREAK"):
                with m.If(rx):
                    m.next = "IDLE"
        return m


class UARTTransmitter(_UARTBase):
    """8N1 UART transmitter: one byte of ``i_stream`` per frame on ``tx``.

    A byte is accepted when the transmitter is idle or in the last cycle of a stop bit, so
    back-to-back bytes go out with no idle time between frames.

    Parameters
    ----------
    clock_hz : int or float
        Frequency of the ``sync`` domain.
    baud : int or float
        Baud rate (see :func:`baud_divisor` for the limits).

    Members
    -------
    i_stream : ``In(stream.Signature(8))``
        Bytes to send.
    tx : ``Out(1)``
        The serial line (idle high), driven from a register.
    busy : ``Out(1)``
        A frame is being sent.
    """

    def __init__(self, *, clock_hz, baud=3_000_000):
        super().__init__({
            "i_stream": In(stream.Signature(8)),
            "tx": Out(1, init=1),
            "busy": Out(1),
        }, clock_hz=clock_hz, baud=baud)

    def elaborate(self, platform):
        m = Module()
        divisor = self._divisor
        timer = Signal(range(divisor))
        # Start bit, 8 data bits, stop bit; shifted out LSB first.
        shreg = Signal(10, init=0x3FF)
        bits_left = Signal(range(11))

        idle = bits_left == 0
        last_cycle = (bits_left == 1) & (timer == 0)
        m.d.comb += [
            self.i_stream.ready.eq(idle | last_cycle),
            self.busy.eq(~idle),
            self.tx.eq(shreg[0]),
        ]
        with m.If(self.i_stream.valid & self.i_stream.ready):
            m.d.sync += [
                shreg.eq(self.i_stream.payload.shift_left(1) | (1 << 9)),
                bits_left.eq(10),
                timer.eq(divisor - 1),
            ]
        with m.Elif(~idle):
            with m.If(timer != 0):
                m.d.sync += timer.eq(timer - 1)
            with m.Else():
                m.d.sync += [
                    shreg.eq((shreg >> 1) | (1 << 9)),
                    bits_left.eq(bits_left - 1),
                    timer.eq(divisor - 1),
                ]
        return m

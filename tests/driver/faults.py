"""A transport that damages bytes, for the reliability tests (test-only code stays in tests/).

:class:`FaultInjectingTransport` wraps any transport and drops, corrupts, duplicates and delays
bytes, truncates frames and inserts garbage, at given rates with a fixed seed.
"""

import random
import threading
import time

from hbfp_hw.fpga.host.transport import Transport

__all__ = ["FaultInjectingTransport"]


class FaultInjectingTransport(Transport):
    """Wrap a transport and damage the bytes that pass through it, reproducibly.

    Parameters
    ----------
    inner : Transport
    corrupt, drop, duplicate : float
        Per-byte probabilities (both directions) that a byte is XORed with a random nonzero
        value, left out, or sent twice.
    delay : float
        Per-write probability of a pause of up to ``max_delay`` seconds before the bytes go out.
    truncate : float
        Per-write probability that the write (one frame) is cut at a random point.
    garbage : float
        Per-write probability that 1..``max_garbage`` random bytes are sent first.
    seed : int
        Seed of the fault pattern.
    directions : {"both", "tx", "rx"}
        Which direction the per-byte faults hit.

    Members
    -------
    counts : dict
        How many faults of each kind were injected.
    """

    def __init__(self, inner, *, corrupt=0.0, drop=0.0, duplicate=0.0, delay=0.0,
                 max_delay=0.002, truncate=0.0, garbage=0.0, max_garbage=32, seed=0,
                 directions="both"):
        for name, p in (("corrupt", corrupt), ("drop", drop), ("duplicate", duplicate),
                        ("delay", delay), ("truncate", truncate), ("garbage", garbage)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability between 0 and 1, not {p!r}")
        if directions not in ("both", "tx", "rx"):
            raise ValueError(f"directions must be 'both', 'tx' or 'rx', not {directions!r}")
        self.inner = inner
        self.name = f"faulty({inner.name})"
        self.byte_time = inner.byte_time
        self.cycle_rate = inner.cycle_rate
        self.latency = inner.latency
        self.window_bytes = inner.window_bytes
        self.rx_fifo_bytes = inner.rx_fifo_bytes
        self.cycles_per_byte = inner.cycles_per_byte
        self.corrupt, self.drop, self.duplicate = corrupt, drop, duplicate
        self.delay, self.max_delay = delay, max_delay
        self.truncate, self.garbage, self.max_garbage = truncate, garbage, max_garbage
        self.directions = directions
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.counts = {k: 0 for k in ("corrupt", "drop", "duplicate", "delay", "truncate",
                                      "garbage")}

    def _mangle(self, data):
        if not (self.corrupt or self.drop or self.duplicate):
            return bytes(data)
        rng = self._rng
        out = bytearray()
        p_any = self.corrupt + self.drop + self.duplicate
        for byte in bytes(data):
            r = rng.random()
            if r >= p_any:
                out.append(byte)
            elif r < self.corrupt:
                out.append(byte ^ rng.randrange(1, 256))
                self.counts["corrupt"] += 1
            elif r < self.corrupt + self.drop:
                self.counts["drop"] += 1
            else:
                out += bytes((byte, byte))
                self.counts["duplicate"] += 1
        return bytes(out)

    def write(self, data):
        with self._lock:
            rng = self._rng
            data = bytes(data)
            pre = b""
            pause = 0.0
            if self.delay and rng.random() < self.delay:
                pause = rng.uniform(0, self.max_delay)
                self.counts["delay"] += 1
            if self.garbage and rng.random() < self.garbage:
                pre = bytes(rng.randrange(256) for _ in range(rng.randint(1, self.max_garbage)))
                self.counts["garbage"] += 1
            if self.truncate and len(data) > 1 and rng.random() < self.truncate:
                data = data[:rng.randrange(1, len(data))]
                self.counts["truncate"] += 1
            if self.directions in ("both", "tx"):
                data = self._mangle(data)
        if pause:
            time.sleep(pause)
        self.inner.write(pre + data)

    def read(self, timeout):
        data = self.inner.read(timeout)
        if data and self.directions in ("both", "rx"):
            with self._lock:
                data = self._mangle(data)
        return data

    def close(self):
        self.inner.close()

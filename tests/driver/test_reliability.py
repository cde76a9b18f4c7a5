"""Many GEMMs through a damaged link: every result returned is bit-exact; failures are typed.

The fault-injecting transport wraps the simulated board. With 1% of the bytes corrupted in
both directions most frames of a few hundred bytes are hit, so the driver must handle NACKs,
refused out-of-order frames (it streams several frames before their replies), lost replies and
lost results, time out and resynchronize, fall back to one frame at a time, and shrink its
frames. The device executes sequenced frames exactly once, so a frame sent again is never
executed twice. The driver may give up on a GEMM (DeviceTimeout, counted and reported), but it
must never return a wrong result.
"""

import time

import numpy as np
import pytest

from hbfp_hw import golden
from hbfp_hw.fpga.host.driver import Device, DeviceError, DeviceTimeout
from hbfp_hw.fpga.host.transport import SimTransport

from .faults import FaultInjectingTransport


def run_campaign(config, count, seed, **faults):
    link = FaultInjectingTransport(SimTransport(config, name="sim-faulty"), seed=seed, **faults)
    rng = np.random.default_rng(seed)
    returned = exceptions = 0
    kinds = {}
    t0 = time.monotonic()
    with Device(link) as dev:
        info = dev.info()
        for i in range(count):
            m, k, n = (int(x) for x in rng.integers(1, [9, 41, 9]))
            a = (rng.standard_normal((m, k)) * 2.0 ** rng.integers(-8, 8, (m, k))).astype(
                np.float32)
            b = rng.standard_normal((k, n)).astype(np.float32)
            wire = ("bfp", "fp32")[i % 2]
            try:
                c = dev.gemm(a, b, wire=wire)
            except DeviceError as exc:
                exceptions += 1
                kinds[type(exc).__name__] = kinds.get(type(exc).__name__, 0) + 1
                assert isinstance(exc, DeviceTimeout), exc
                assert "check the cable" in str(exc)
                continue
            ref = golden.gemm(a, b, info.fmt)
            assert np.array_equal(c.view(np.uint32), ref.view(np.uint32)), \
                f"GEMM {i} ({m}x{k}x{n}, {wire}) returned a wrong result"
            returned += 1
        stats = dict(dev.stats)
    report = (f"{count} GEMMs: {returned} bit-exact, {exceptions} exceptions {kinds}, "
              f"{time.monotonic() - t0:.1f} s; faults {link.counts}; driver {stats}")
    print(report)
    return returned, exceptions, stats, link.counts


def check(returned, exceptions, stats, counts, count):
    assert returned + exceptions == count
    assert returned >= 0.95 * count            # the retries do their job
    assert stats["resent"] > 0                # and were needed


@pytest.mark.parametrize("count", [60, pytest.param(500, marks=pytest.mark.slow)])
def test_one_percent_byte_corruption(sim_config, count):
    returned, exceptions, stats, counts = run_campaign(sim_config, count, seed=11,
                                                       corrupt=0.01)
    check(returned, exceptions, stats, counts, count)
    assert counts["corrupt"] > 10 * count
    assert stats["nacks"] > 0 and stats["crc_errors"] > 0


@pytest.mark.parametrize("count", [60, pytest.param(500, marks=pytest.mark.slow)])
def test_truncation_and_garbage_between_frames(sim_config, count):
    returned, exceptions, stats, counts = run_campaign(
        sim_config, count, seed=12, truncate=0.05, garbage=0.05, drop=0.002, duplicate=0.002,
        delay=0.05, max_delay=0.003)
    check(returned, exceptions, stats, counts, count)
    assert counts["truncate"] > 0 and counts["garbage"] > 0
    assert counts["drop"] > 0 and counts["duplicate"] > 0


def test_dead_link_raises_within_bounded_time(sim_config):
    link = FaultInjectingTransport(SimTransport(sim_config), seed=1)
    with Device(link, retries=3) as dev:
        link.drop = 1.0                        # from now on nothing gets through
        t0 = time.monotonic()
        with pytest.raises(DeviceTimeout, match=r"after 4 attempts.*check the cable"):
            dev.gemm(np.ones((2, 16), np.float32), np.ones((16, 2), np.float32))
        assert time.monotonic() - t0 < 10
        link.drop = 0.0
        # The device recovers once the link does.
        c = dev.gemm(np.ones((2, 16), np.float32), np.ones((16, 2), np.float32))
        assert (c == 16).all()

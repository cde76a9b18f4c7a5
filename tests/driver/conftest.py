"""Fixtures of the driver tests: the simulated board (built once, cached) and helpers."""

import numpy as np
import pytest

from hbfp_hw import golden
from hbfp_hw.sim import toolchain


@pytest.fixture(scope="session")
def sim_config():
    from hbfp_hw.fpga.simboard import SimConfig, build
    reason = toolchain.missing_reason("verilator")
    if reason:
        pytest.skip(f"the simulated board needs Verilator: {reason}")
    config = SimConfig()
    build(config)                 # the first build takes about a minute; then cached
    return config


@pytest.fixture(scope="module")
def sim_device(sim_config):
    from hbfp_hw.fpga.driver import Device
    with Device.open("sim", progress=True) as dev:
        yield dev


def random_operands(rng, m, k, n, *, spread=0):
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    if spread:
        a *= (2.0 ** rng.integers(-spread, spread, (m, k))).astype(np.float32)
    return a, b


def assert_bit_exact(c, a, b, info, seed=None):
    ref = golden.gemm(a, b, info.fmt, seed=seed, input_format=info.input_format)
    assert c.dtype == np.float32 and c.shape == ref.shape
    got, exp = c.view(np.uint32), ref.view(np.uint32)
    assert np.array_equal(got, exp), f"{int((got != exp).sum())} of {got.size} elements differ"

"""Fixtures of the driver tests: the simulated board (built once, cached) and helpers."""

import numpy as np
import pytest

from hbfp_hw import golden
from hbfp_hw.tools import simulators


@pytest.fixture(scope="session")
def sim_config():
    from hbfp_hw.fpga.host.simboard import SimConfig, build
    reason = simulators.missing_reason("verilator")
    if reason:
        pytest.skip(f"the simulated board needs Verilator: {reason}")
    config = SimConfig()
    build(config)                 # the first build takes about a minute; then cached
    return config


#: A small simulated board: K up to 16 k-blocks (256 elements) per COMPUTE, C of 64 words.
SMALL = "a_blocks=64&b_blocks=64&c_words=64&max_payload=256"


@pytest.fixture(scope="session")
def small_sim_url():
    """URL of a small simulated board (built once, cached): large-K GEMMs are fast on it."""
    from hbfp_hw.fpga.host.simboard import SimConfig, build
    reason = simulators.missing_reason("verilator")
    if reason:
        pytest.skip(f"the simulated board needs Verilator: {reason}")
    build(SimConfig.from_query(SMALL))
    return f"sim://?{SMALL}"


@pytest.fixture(scope="module")
def sim_device(sim_config):
    from hbfp_hw.fpga.host.driver import Device
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

"""The GEMM system with minifloat elements on the simulated board: INFO reports the element
type and scale rule, and GEMMs over both wires (FP32 lanes quantized by the gateware, or blocks
of element codes quantized by the host) equal golden.gemm bit for bit; the PyTorch device
backend offloads to it."""

import numpy as np
import pytest

from hbfp_hw.formats import resolve_format
from hbfp_hw.fpga import protocol
from hbfp_hw.fpga.host import driver
from hbfp_hw.fpga.host.driver import Device, FormatMismatch
from hbfp_hw.tools import simulators

from .conftest import assert_bit_exact, random_operands

SMALL = "a_blocks=64&b_blocks=64&c_words=64&max_payload=256"
#: Two builds: OCP E4M3 under the default rule, E2M3 under RCEIL (the gateware's quantizer
#: serves the FP32 wire; a stochastic format takes only the block wire, as for BFP).
URLS = {"e4m3": f"sim://?format=mxfp8_e4m3&block_size=8&{SMALL}",
        "e2m3-rceil": f"sim://?format=mxfp6_e2m3&block_size=8&scale_rule=rceil&{SMALL}"}
FORMATS = {"e4m3": resolve_format("mxfp8_e4m3").replace(block_size=8),
           "e2m3-rceil": resolve_format("mxfp6_e2m3").replace(block_size=8,
                                                               scale_rule="rceil")}


@pytest.fixture(scope="module", params=sorted(URLS))
def device(request):
    reason = simulators.missing_reason("verilator")
    if reason:
        pytest.skip(f"the simulated board needs Verilator: {reason}")
    with Device.open(URLS[request.param], progress=True) as dev:
        yield request.param, dev


def test_info_names_the_element_type(device):
    name, dev = device
    info = dev.info()
    assert info.version == protocol.PROTOCOL_VERSION
    assert info.fmt == FORMATS[name]
    assert protocol.Info.from_bytes(info.to_bytes()) == info
    assert info.wire_formats == {protocol.Wire.FLOAT, protocol.Wire.BFP}


@pytest.mark.parametrize("wire", ["bfp", "fp32"])
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (3, 17, 5), (9, 40, 11)])
def test_gemm_bit_exact(device, wire, m, k, n):
    _, dev = device
    rng = np.random.default_rng(m * 100 + k + n)
    a, b = random_operands(rng, m, k, n, spread=30)
    assert_bit_exact(dev.gemm(a, b, wire=wire), a, b, dev.info())


def test_special_values_and_saturation(device):
    """NaN and Inf blocks, FP32 subnormals, elements that saturate and the scale's clamps."""
    _, dev = device
    rng = np.random.default_rng(3)
    a, b = random_operands(rng, 6, 24, 5, spread=60)
    a[0, 2], a[1, 9], b[4, 3] = np.inf, np.nan, -np.inf
    a[2] = np.float32(1e-41) * np.arange(24)                    # FP32 subnormals only
    a[3, :8] = np.float32(3e38)                                  # the top of FP32
    a[4, :8] = np.float32(1.0) + np.arange(8) * np.float32(0.37)    # near the element max
    for wire in ("bfp", "fp32"):
        assert_bit_exact(dev.gemm(a, b, wire=wire), a, b, dev.info())


def test_format_mismatch_names_a_url():
    reason = simulators.missing_reason("verilator")
    if reason:
        pytest.skip(reason)
    with pytest.raises(FormatMismatch, match=r"computes e4m3fnb8 but mxfp8_e5m2 was asked for; "
                                             r"open a device built for that format \(e\.g\. "
                                             r"sim://\?format=mxfp8_e5m2\)"):
        Device.open(URLS["e4m3"], fmt="mxfp8_e5m2")


def test_demo_offload_in_the_format(device):
    """``make demo``'s offload, run in the board's minifloat format."""
    name, _ = device
    lines = []
    assert driver.demo_offload(print=lines.append, url=URLS[name], fmt=FORMATS[name], m=5,
                               n=7, k=40) is True
    assert f"{FORMATS[name].name} GEMM" in lines[0] and "bit-exact vs golden.gemm: yes" in lines[0]


def test_cli_demo_on_another_format_is_one_line(capsys):
    """``hbfp-hw demo --format X`` on a device built for another format: one error line."""
    reason = simulators.missing_reason("verilator")
    if reason:
        pytest.skip(reason)
    from hbfp_hw.cli import main
    assert main(["demo", "--format", "mxfp6_e2m3", "--m", "4", "--n", "4", "--k", "32",
                 "--device", URLS["e4m3"]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hbfp-hw: error: ")
    assert "computes e4m3fnb8 but mxfp6_e2m3 was asked for" in err[0]


def test_torch_device_backend_offloads(device):
    torch = pytest.importorskip("torch")
    from hbfp_hw.torch import hbfp_linear

    name, dev = device
    fmt = FORMATS[name]
    x = torch.randn(4, 24)
    w = torch.randn(6, 24)
    on_device = hbfp_linear(x, w, None, fmt, backend="device", device=dev)
    emulated = hbfp_linear(x, w, None, fmt)
    assert torch.equal(on_device, emulated)

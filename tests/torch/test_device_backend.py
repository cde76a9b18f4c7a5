"""The ``device`` backend: HBFP training on an hbfp-hw device through ``hbfp_hw.Device``.

On the simulated board (the real gateware under Verilator; built once, about a minute, then
cached under ``$HBFP_HW_CACHE``) three full SGD steps of a small MLP match the ``emulate``
backend bit for bit: every forward output, every gradient and the final weights.
"""

import copy

import pytest
import torch
from torch import nn

from hbfp_hw.fpga.host.driver import DeviceNotFound, FormatMismatch
from hbfp_hw.tools import simulators
from hbfp_hw.torch import convert, hbfp_linear
from hbfp_hw.torch.backends import close_devices, get_backend


@pytest.fixture(scope="module")
def sim_board():
    reason = simulators.missing_reason("verilator")
    if reason:
        pytest.skip(f"the simulated board needs Verilator: {reason}")
    from hbfp_hw.fpga.host.simboard import SimConfig, build

    build(SimConfig())                  # the first build takes about a minute; then cached
    yield "sim"
    close_devices()


def _bits(t):
    return t.detach().contiguous().view(torch.int32)


def _train(model, x, y, steps=3, lr=0.1):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    record = []
    for _ in range(steps):
        opt.zero_grad()
        out = model(x)
        loss = nn.functional.cross_entropy(out, y)
        loss.backward()
        record.append((_bits(out), [_bits(p.grad) for p in model.parameters()]))
        opt.step()
    return record, [_bits(p) for p in model.parameters()]


def test_device_matches_emulate_over_three_training_steps(sim_board):
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    x, y = torch.randn(16, 64), torch.randint(0, 10, (16,))
    emu = convert(copy.deepcopy(base), "bfp8", backend="emulate")
    dev = convert(copy.deepcopy(base), "bfp8", backend="device", device=sim_board)
    rec_e, w_e = _train(emu, x, y)
    rec_d, w_d = _train(dev, x, y)
    for step, ((out_e, g_e), (out_d, g_d)) in enumerate(zip(rec_e, rec_d)):
        assert torch.equal(out_e, out_d), f"forward output differs at step {step}"
        for i, (a, b) in enumerate(zip(g_e, g_d)):
            assert torch.equal(a, b), f"gradient of parameter {i} differs at step {step}"
    for i, (a, b) in enumerate(zip(w_e, w_d)):
        assert torch.equal(a, b), f"final parameter {i} differs"
    assert not torch.equal(w_e[0], _bits(base[0].weight))          # the weights did change


def test_device_object_and_fp32_role(sim_board):
    from hbfp_hw import Device

    torch.manual_seed(1)
    x, w = torch.randn(5, 40), torch.randn(7, 40)
    ref = hbfp_linear(x, w, fmt="bfp8", backend="emulate")
    with Device.open(sim_board) as dev:
        out = hbfp_linear(x, w, fmt="bfp8", backend="device", device=dev)
        assert torch.equal(_bits(out), _bits(ref))
    # a role in fp32 stays in torch, whatever the device's format
    fmt = {"forward": "bfp8", "grad_input": "fp32", "grad_weight": "bfp8"}
    model = convert(nn.Linear(40, 7), fmt, backend="device", device=sim_board)
    assert model(x).shape == (5, 7)


def test_format_mismatch_names_the_role(sim_board):
    with pytest.raises(FormatMismatch, match=r"the grad_weight GEMM asks for bfp4 .* but sim "
                                             r"computes bfp8"):
        convert(nn.Linear(8, 4), {"grad_weight": "bfp4"}, backend="device", device=sim_board)
    backend = get_backend("device@sim")
    with pytest.raises(FormatMismatch, match=r"asks for bfp4"):
        hbfp_linear(torch.randn(2, 8), torch.randn(4, 8), fmt="bfp4", backend="device",
                    device=sim_board)
    assert get_backend("device@sim") is backend


def test_unreachable_device_url():
    with pytest.raises(DeviceNotFound, match=r"backend='device' could not open "
                                             r"'tcp://127.0.0.1:1'"):
        convert(nn.Linear(8, 4), "bfp8", backend="device", device="tcp://127.0.0.1:1")


@pytest.mark.slow
def test_stochastic_rounding_matches_emulate(sim_board):
    """A stochastic board (its own build, about a minute the first time) matches emulate too:
    the driver quantizes on the host with the same seeds (a: seed, b: seed + 1)."""
    from hbfp_hw.formats import BFPFormat

    fmt = BFPFormat(8, 16, "stochastic", 8)
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    x, y = torch.randn(16, 64), torch.randint(0, 10, (16,))
    emu = convert(copy.deepcopy(base), fmt, backend="emulate", seed=123)
    dev = convert(copy.deepcopy(base), fmt, backend="device", device="sim://?rounding=stochastic",
                  seed=123)
    (rec_e, w_e), (rec_d, w_d) = _train(emu, x, y), _train(dev, x, y)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(rec_e, rec_d))
    assert all(torch.equal(a, b) for a, b in zip(w_e, w_d))

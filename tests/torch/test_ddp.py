"""HBFP models under torchrun + DistributedDataParallel (gloo, 2 CPU processes): the emulate
backend, and the device backend with one simulated board per rank."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from hbfp_hw.torch import convert

from . import ddp_worker
from .helpers import same_bits


def _reference(world=2):
    """The same training, one process: per-rank HBFP gradients averaged like DDP's allreduce."""
    model = convert(ddp_worker.build_model(), "bfp8", backend="emulate")
    replicas = [convert(ddp_worker.build_model(), "bfp8") for _ in range(world)]
    opt = torch.optim.SGD(model.parameters(), lr=ddp_worker.LR)
    for x, y in ddp_worker.make_data():
        grads = []
        for rank, replica in enumerate(replicas):
            replica.load_state_dict(model.state_dict())
            replica.zero_grad()
            nn.functional.cross_entropy(replica(x[rank::world]), y[rank::world]).backward()
            grads.append([p.grad for p in replica.parameters()])
        for p, *gs in zip(model.parameters(), *grads):
            p.grad = (gs[0] + gs[1]) / world          # exact for two ranks, in any order
        opt.step()
    return [p.detach() for p in model.parameters()]


def _torchrun(out_dir, backend):
    """Run the worker on 2 ranks; a launch that fails is retried once (the rendezvous of
    torchrun and gloo on a loaded shared machine), a wrong result never is."""
    worker = Path(ddp_worker.__file__)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    errors = []
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone",
             "--nproc_per_node=2", str(worker), str(out_dir), backend], env=env,
            capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            return [torch.load(out_dir / f"rank{r}.pt") for r in range(2)]
        errors.append(proc.stderr[-3000:])
    raise AssertionError("torchrun failed twice:\n" + "\n-----\n".join(errors))


def _check_ranks(ranks):
    # both ranks hold identical weights after three steps, and every HBFP step ran
    assert all(same_bits(a, b) for a, b in zip(ranks[0]["params"], ranks[1]["params"]))
    assert ranks[0]["steps"] == ranks[1]["steps"] == [3, 3]
    # and they are exactly the single-process HBFP computation of the same data-parallel step
    reference = _reference()
    assert all(same_bits(a, b) for a, b in zip(ranks[0]["params"], reference))
    initial = list(ddp_worker.build_model().parameters())
    assert not any(torch.equal(a, b) for a, b in zip(initial, reference))


def test_ddp_two_processes(tmp_path):
    _check_ranks(_torchrun(tmp_path, "emulate"))


def test_ddp_device_backend_one_board_per_rank(tmp_path):
    """Each rank opens its own simulated board, ``sim://?instance=RANK`` (the real gateware
    under Verilator); the trained weights equal the emulate computation bit for bit."""
    from hbfp_hw.tools import simulators

    reason = simulators.missing_reason("verilator")
    if reason:
        pytest.skip(f"the simulated board needs Verilator: {reason}")
    from hbfp_hw.fpga.host.simboard import SimConfig, build

    build(SimConfig())                  # once, here: the two ranks must not race to build it
    ranks = _torchrun(tmp_path, "device")
    assert [r["backend"] for r in ranks] == ["'device@sim://?instance=0'",
                                             "'device@sim://?instance=1'"]
    _check_ranks(ranks)

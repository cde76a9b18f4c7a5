"""HBFP models under torchrun + DistributedDataParallel (gloo, 2 CPU processes, emulate)."""

import os
import subprocess
import sys
from pathlib import Path

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


def test_ddp_two_processes(tmp_path):
    worker = Path(ddp_worker.__file__)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(worker), str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # both ranks hold identical weights after three steps, and every HBFP step ran
    assert all(same_bits(a, b) for a, b in zip(ranks[0]["params"], ranks[1]["params"]))
    assert ranks[0]["steps"] == [3, 3]
    # and they are exactly the single-process HBFP computation of the same data-parallel step
    reference = _reference()
    assert all(same_bits(a, b) for a, b in zip(ranks[0]["params"], reference))
    initial = list(ddp_worker.build_model().parameters())
    assert not all(torch.equal(a, b) for a, b in zip(initial, reference))

"""DDP worker for test_ddp.py, run as ``torchrun --standalone --nproc_per_node 2 ddp_worker.py
OUT_DIR [BACKEND]``: trains an HBFP MLP with DDP over gloo and saves its parameters.

``BACKEND`` is ``emulate`` (the default) or ``device``: then every rank opens its own
simulated board, ``sim://?instance=RANK``.

Only absolute imports: torchrun runs this file as a script.
"""

import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hbfp_hw.torch import convert

STEPS = 3
LR = 0.1


def build_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 5))


def make_data():
    """STEPS global batches of 16; rank r trains on rows r::2."""
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 24, generator=gen), torch.randint(0, 5, (16,), generator=gen))
            for _ in range(STEPS)]


def main(out_dir, backend="emulate"):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = f"sim://?instance={rank}" if backend == "device" else None
    model = convert(build_model(), "bfp8", backend=backend, device=device)
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=LR)
    losses = []
    for x, y in make_data():
        loss = nn.functional.cross_entropy(ddp(x[rank::world]), y[rank::world])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    torch.save({"params": [p.detach().clone() for p in model.parameters()], "losses": losses,
                "steps": [int(m.hbfp_step) for m in model if hasattr(m, "hbfp_step")],
                "backend": repr(model[0].hbfp_config.key)},
               f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])

"""The PyTorch tests run with one intra-op thread: their tensors are small, and on shared CI
machines OpenMP worker threads that wait for a busy core make run times erratic."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_compiled_matches_eager(model, x, reset=None):
    """Run ``model(x).sum().backward()`` eagerly, then through ``torch.compile`` (aot_eager,
    fullgraph): the outputs and the parameters' gradients must be equal bit for bit.
    ``reset()`` runs between the two (to rewind stochastic rounding's step counters)."""
    eager = model(x)
    eager.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    if reset is not None:
        reset()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out = compiled(x)
    out.sum().backward()
    assert torch.equal(out, eager)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))

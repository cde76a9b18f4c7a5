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

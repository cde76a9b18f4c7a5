"""Shared helpers of the PyTorch tests: golden references built from the same GEMM steps."""

import numpy as np
import torch

from hbfp_hw import golden

from ..golden_checks import random_clustered


def same_bits(x, y):
    """Whether two float32 tensors/arrays are equal bit for bit (NaN payloads included)."""
    x = np.ascontiguousarray(x.detach().numpy() if isinstance(x, torch.Tensor) else x,
                             dtype=np.float32)
    y = np.ascontiguousarray(y.detach().numpy() if isinstance(y, torch.Tensor) else y,
                             dtype=np.float32)
    return x.shape == y.shape and np.array_equal(x.view(np.uint32), y.view(np.uint32))


def clustered(rng, shape, lo=-30, hi=30, spread=8):
    """Realistic random data: blocks of values around random exponents, some zeros."""
    n = int(np.prod(shape))
    return torch.from_numpy(random_clustered(rng, 1, n, lo=lo, hi=hi, spread=spread)
                            .reshape(shape))


def ggemm(a, b, fmt, seed):
    """golden.gemm on tensors (None format = plain FP32 matmul, like the fp32 role)."""
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else a
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else b
    if fmt is None:
        return torch.from_numpy(np.ascontiguousarray(a)) @ torch.from_numpy(
            np.ascontiguousarray(b))
    return torch.from_numpy(golden.gemm(np.ascontiguousarray(a), np.ascontiguousarray(b), fmt,
                                        seed=seed))

"""The digits data set (scikit-learn's bundled 8x8 handwritten digits; nothing is downloaded)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Digits", "load_digits", "TEST_FRACTION", "SPLIT_SEED"]

#: Fraction of the 1797 samples held out for testing, stratified by class.
TEST_FRACTION = 0.2
#: The split is fixed: it does not depend on the training seed.
SPLIT_SEED = 0


@dataclass(frozen=True)
class Digits:
    """Train and test tensors: images ``[n, 1, 8, 8]`` float32 in [0, 1], labels int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def num_classes(self):
        return 10


def load_digits():
    """Load the digits with a fixed, stratified 80/20 split (1437 train, 360 test samples)."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:                                   # pragma: no cover
        raise ImportError("the digits data set comes with scikit-learn: "
                          "pip install scikit-learn") from e
    data = sk_load_digits()
    x = (data.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = data.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_FRACTION,
                                              random_state=SPLIT_SEED, stratify=y)
    return Digits(*(torch.from_numpy(np.ascontiguousarray(a)) for a in (x_tr, y_tr, x_te, y_te)))

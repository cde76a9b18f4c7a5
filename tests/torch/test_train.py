"""The building blocks of ``hbfp-hw train``: the digits data, the models, the format list.

The command itself is tested in tests/cli/test_train.py."""

import pytest
import torch

from hbfp_hw.torch.data import load_digits
from hbfp_hw.torch.train import build_model, parse_formats


def test_data_split_is_fixed_and_stratified():
    a, b = load_digits(), load_digits()
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.x_train.shape == (1437, 1, 8, 8) and a.x_test.shape == (360, 1, 8, 8)
    assert 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0
    counts = torch.bincount(a.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37          # ~10% of 360 per class


def test_models_and_format_parsing():
    x = torch.zeros(2, 1, 8, 8)
    assert build_model("mlp")(x).shape == (2, 10) and build_model("cnn")(x).shape == (2, 10)
    with pytest.raises(ValueError, match=r"^model must be one of mlp, cnn, not 'vit'$"):
        build_model("vit")
    assert parse_formats("bfp4,fp32,bfp8", None) == ["fp32", "bfp4", "bfp8"]
    assert parse_formats(None, "MXINT8") == ["fp32", "mxint8"]
    assert parse_formats("MXFP8_E4M3/mxfp8_e5m2", None) == ["fp32", "mxfp8_e4m3/mxfp8_e5m2"]
    with pytest.raises(ValueError, match=r"^formats must be 'fp32', preset names or A/G pairs"):
        parse_formats("bfp8/bfp9", None)

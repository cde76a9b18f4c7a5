"""``hbfp-hw train`` smoke runs (tiny: one epoch) and its building blocks."""

import argparse
import json
import subprocess
import sys

import pytest
import torch

from hbfp_hw.torch import commands
from hbfp_hw.torch.data import load_digits
from hbfp_hw.torch.train import build_model, parse_formats


def _run(argv):
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", *argv])
    return args.func(args)


def test_commands_module_does_not_import_torch():
    """`hbfp-hw --help` and the train parser never import torch (hbfp_hw.torch is lazy)."""
    code = ("import sys, argparse; import hbfp_hw.torch.commands as c; "
            "p = argparse.ArgumentParser(); c.register(p.add_subparsers()); "
            "p.parse_args(['train', '--model', 'cnn']); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_train_smoke(model, tmp_path, capsys):
    js, png = tmp_path / "run.json", tmp_path / "curves.png"
    rc = _run(["--model", model, "--formats", "bfp8,bfp4", "--epochs", "1", "--batch-size",
               "64", "--threads", "1", "--no-progress", "--json", str(js), "--plot", str(png)])
    assert rc == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert any(line.startswith("fp32 ") for line in lines)
    assert any(line.startswith("bfp8 ") for line in lines)
    assert any(line.startswith("bfp4 ") for line in lines)
    assert "target: bfp8 test accuracy within 1.0 point of fp32" in out
    run = json.loads(js.read_text())
    assert list(run["results"]) == ["fp32", "bfp8", "bfp4"]
    assert run["train_samples"] == 1437 and run["test_samples"] == 360
    for r in run["results"].values():
        assert 0.0 <= r["test_acc"] <= 100.0 and r["test_loss"] > 0
        assert len(r["history"]["test_acc"]) == 1
    for name in ("fp32", "bfp8"):               # better than chance (10 classes) after 1 epoch
        assert run["results"][name]["test_acc"] > 20.0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_train_errors(capsys):
    assert _run(["--formats", "bfp8,bfp5", "--epochs", "1"]) == 2
    assert "formats must be 'fp32' or preset names, not 'bfp5'" in capsys.readouterr().err
    assert _run(["--backend", "device", "--device", "tcp://127.0.0.1:1", "--epochs", "1",
                 "--no-progress"]) == 2
    assert "error: backend='device' could not open 'tcp://127.0.0.1:1'" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        _run(["--epochs", "0"])
    assert "--epochs must be at least 1, not 0" in capsys.readouterr().err


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

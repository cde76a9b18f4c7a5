"""``hbfp-hw train`` smoke runs (tiny: one epoch) and its errors."""

import json

import pytest

from hbfp_hw.cli import main

pytest.importorskip("torch")
pytest.importorskip("sklearn")


def _run(argv):
    return main(["train", *argv])


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


def test_format_list():
    from hbfp_hw.cli import build_parser
    from hbfp_hw.cli.train import validate
    from hbfp_hw.torch.train import parse_formats

    for argv in (["--formats", "bfp4,FP32,bfp8,bfp4"], ["--format", "MXINT8"], [],
                 ["--formats", "mxfp8_e4m3/MXFP8_E5M2,bfp8"]):
        args = build_parser().parse_args(["train", "--plot", "/tmp/x.png", *argv])
        validate(args)
        if argv[:1] == ["--formats"]:
            assert args._formats == parse_formats(argv[1], None)
        else:
            assert args._formats == parse_formats(None, argv[1] if argv else "bfp8")


def test_train_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert _run(["--formats", "bfp8,bfp5", "--epochs", "1"]) == 2
    assert "--formats must be one of fp32, bfp8, mxint8" in capsys.readouterr().err
    # A device that is not there: found while working, reported on one line, exit code 2.
    assert _run(["--backend", "device", "--device", "tcp://127.0.0.1:1", "--epochs", "1",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hbfp-hw: error: backend='device' could not open "
                          "'tcp://127.0.0.1:1'") and err.count("\n") == 1
    assert _run(["--epochs", "0"]) == 2
    assert capsys.readouterr().err == "hbfp-hw train: error: --epochs must be at least 1, not 0\n"
    assert list(tmp_path.iterdir()) == []


def test_layer_rules(tmp_path, monkeypatch, capsys):
    """--layer is parsed and tried on the model (no training) before any work."""
    from hbfp_hw.cli import build_parser
    from hbfp_hw.cli.train import validate

    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["train", "--model", "cnn", "--layer", "0=fp32",
                                      "--layer", "re:.*=bfp4"])
    validate(args)
    assert args._layers == [("0", "fp32"), ("re:.*", "bfp4")]
    for layer, message in [("x", "--layer must be PATTERN=FORMAT"),
                           ("nope=fp32", "--layer: layers patterns 'nope' match no layer"),
                           ("re:(=fp32", "--layer: layers pattern 're:(' is not a valid"),
                           ("0=bfp5", "--layer '0=bfp5': the format must be 'fp32' or a preset")]:
        assert _run(["--model", "cnn", "--layer", layer]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"hbfp-hw train: error: {message}") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []

"""The misuse corpus: every subcommand crossed with bad values.

Each case must fail in validation, before any work: exit code 2, exactly one line on stderr
that names the flag, no traceback, and nothing written. Cases run in-process through
:func:`hbfp_hw.cli.main` (fast); a few run through the real entry points in a subprocess.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hbfp_hw.cli import COMMANDS, main

#: (subcommand, argv, flag the message must name). ``{tmp}`` is an empty directory, ``{file}``
#: an existing file in it. Paths under /proc cannot be created, even by root.
CORPUS = [
    # demo
    ("demo", ["--m", "0"], "--m"),
    ("demo", ["--m", "x"], "--m"),
    ("demo", ["--m"], "--m"),
    ("demo", ["--n", "-3"], "--n"),
    ("demo", ["--k", "1.5"], "--k"),
    ("demo", ["--m", "1000000", "--k", "1000000"], "--m"),
    ("demo", ["--format", "bfp5"], "--format"),
    ("demo", ["--seed", "-1"], "--seed"),
    ("demo", ["--seed", "4294967296"], "--seed"),
    ("demo", ["--device", "foo://"], "--device"),
    ("demo", ["--device", "tcp://host:99999"], "--device"),
    ("demo", ["--device", "tcp://host"], "--device"),
    ("demo", ["--device", "sim://host/x"], "--device"),
    ("demo", ["--device", "sim://?bogus=1"], "--device"),
    ("demo", ["--json", "/proc/nope/x.json"], "--json"),
    ("demo", ["--json", "{tmp}"], "--json"),
    ("demo", ["--json", "{file}/x.json"], "--json"),
    ("demo", ["--bogus"], "--bogus"),
    # formats
    ("formats", ["--json", "/proc/nope/x.json"], "--json"),
    ("formats", ["--json", "{tmp}"], "--json"),
    ("formats", ["--json"], "--json"),
    # generate
    ("generate", ["--mantissa-bits", "8", "--block-size", "128", "--out", "{tmp}/o"],
     "--block-size"),
    ("generate", ["--mantissa-bits", "8", "--block-size", "12", "--out", "{tmp}/o"],
     "--block-size"),
    ("generate", ["--mantissa-bits", "8", "--block-size", "x", "--out", "{tmp}/o"],
     "--block-size"),
    ("generate", ["--mantissa-bits", "17", "--block-size", "16", "--out", "{tmp}/o"],
     "--mantissa-bits"),
    ("generate", ["--mantissa-bits", "1", "--block-size", "16", "--out", "{tmp}/o"],
     "--mantissa-bits"),
    ("generate", ["--format", "bfp8", "--exponent-bits", "9", "--out", "{tmp}/o"],
     "--exponent-bits"),
    ("generate", ["--format", "bfp9", "--out", "{tmp}/o"], "--format"),
    ("generate", ["--format", "bfp4", "--scale-rule", "rceil", "--out", "{tmp}/o"],
     "--scale-rule"),
    ("generate", ["--format", "mxfp4_e2m1", "--scale-rule", "round", "--out", "{tmp}/o"],
     "--scale-rule"),
    ("verify", ["--format", "mxfp8_e4m3", "--unit", "align", "--stages", "99"], "--stages"),
    ("generate", ["--format", "bfp8", "--block-size", "16", "--out", "{tmp}/o"], "--format"),
    ("generate", ["--block-size", "16", "--out", "{tmp}/o"], "--mantissa-bits"),
    ("generate", ["--format", "bfp8", "--unit", "mac", "--channels", "3", "--out", "{tmp}/o"],
     "--channels"),
    ("generate", ["--format", "bfp8", "--unit", "mac", "--stages", "99", "--out", "{tmp}/o"],
     "--stages"),
    ("generate", ["--format", "bfp8", "--mac-stages", "-1", "--out", "{tmp}/o"],
     "--mac-stages"),
    ("generate", ["--format", "bfp8", "--unit", "accumulator", "--channels", "0",
                  "--out", "{tmp}/o"], "--channels"),
    ("generate", ["--format", "bfp8", "--unit", "nope", "--out", "{tmp}/o"], "--unit"),
    ("generate", ["--format", "bfp8", "--rounding", "up", "--out", "{tmp}/o"], "--rounding"),
    ("generate", ["--format", "bfp8", "--input-format", "fp16", "--out", "{tmp}/o"],
     "--input-format"),
    ("generate", ["--format", "bfp8", "--out", "/proc/nope"], "--out"),
    ("generate", ["--format", "bfp8", "--out", "{file}"], "--out"),
    ("generate", ["--format", "bfp8", "--out", "{file}/sub"], "--out"),
    ("generate", ["--format", "bfp8", "--out", "{tmp}/o", "--json", "/proc/nope/d.json"],
     "--json"),
    ("generate", ["--format", "bfp8", "--out", "{tmp}/o", "--json", "{tmp}"], "--json"),
    ("generate", ["--format", "bfp8"], "--out"),
    # verify
    ("verify", ["--format", "bfp8", "--vectors", "0"], "--vectors"),
    ("verify", ["--format", "bfp8", "--vectors", "x"], "--vectors"),
    ("verify", ["--format", "bfp8", "--vectors", "10000000000"], "--vectors"),
    ("verify", ["--format", "bfp8", "--seed", "-1"], "--seed"),
    ("verify", ["--mantissa-bits", "8", "--block-size", "128"], "--block-size"),
    ("verify", ["--format", "bfp8", "--unit", "mac", "--inject-fault", "sticky"],
     "--inject-fault"),
    ("verify", ["--format", "bfp8", "--inject-fault", "nope"], "--inject-fault"),
    ("verify", ["--format", "bfp8", "--sim", "modelsim"], "--sim"),
    ("verify", ["--format", "bfp8", "--unit", "to-float", "--stages", "99"], "--stages"),
    ("verify", ["--format", "bfp8", "--waves", "/proc/nope/w.fst"], "--waves"),
    ("verify", ["--format", "bfp8", "--json", "{tmp}"], "--json"),
    ("verify", ["--format", "bfp8", "--json", "/proc/nope/r.json"], "--json"),
    # build
    ("build", ["--block-size", "128"], "--block-size"),
    ("build", ["--block-size", "3"], "--block-size"),
    ("build", ["--mantissa-bits", "40"], "--mantissa-bits"),
    ("build", ["--lanes", "3"], "--lanes"),
    ("build", ["--lanes", "0"], "--lanes"),
    ("build", ["--lanes", "128"], "--lanes"),
    ("build", ["--clock-mhz", "0"], "--clock-mhz"),
    ("build", ["--clock-mhz", "500"], "--clock-mhz"),
    ("build", ["--clock-mhz", "nan"], "--clock-mhz"),
    ("build", ["--baud", "0"], "--baud"),
    ("build", ["--baud", "100000000"], "--baud"),
    ("build", ["--board", "de10"], "--board"),
    ("build", ["--format", "bfp5"], "--format"),
    ("build", ["--format", "bm8_e2m5"], "--format"),
    ("build", ["--format", "bfp8_bf16sr"], "--format"),            # accumulators: not in RTL
    ("build", ["--input-format", "fp16"], "--input-format"),
    ("build", ["--seed", "-3"], "--seed"),
    ("build", ["--seed-attempts", "101"], "--seed-attempts"),
    ("build", ["--out", "{file}"], "--out"),
    ("build", ["--out", "/proc/nope"], "--out"),
    ("build", ["--json", "/proc/nope/r.json"], "--json"),
    ("build", ["--json", "{tmp}"], "--json"),
    # sweep
    ("sweep", ["--mantissa-bits", "4,20"], "--mantissa-bits"),
    ("sweep", ["--mantissa-bits", "x"], "--mantissa-bits"),
    ("sweep", ["--block-size", "3"], "--block-size"),
    ("sweep", ["--formats", "mxfp8_e4m3,mxfp9"], "--formats"),
    ("sweep", ["--formats", ","], "--formats"),
    ("sweep", ["--formats", "mxint8_exact"], "--formats"),
    ("sweep", ["--formats", "posit8_es2"], "--formats"),
    ("demo", ["--format", "posit8_es0"], "--format"),
    ("sweep", ["--block-size", "128"], "--block-size"),
    ("sweep", ["--block-size", ","], "--block-size"),
    ("sweep", ["--seeds", "-1"], "--seeds"),
    ("sweep", ["--stages", "deep=1"], "--stages"),
    ("sweep", ["--stages", "mac_stages=9", "--block-size", "8"], "--stages"),
    ("sweep", ["--fill", "1.5"], "--fill"),
    ("sweep", ["--fill", "0"], "--fill"),
    ("sweep", ["--freq", "-1"], "--freq"),
    ("sweep", ["--jobs", "0"], "--jobs"),
    ("sweep", ["--timeout", "0"], "--timeout"),
    ("sweep", ["--accuracy-epochs", "0"], "--accuracy-epochs"),
    ("sweep", ["--target", "ecp5-25f"], "--target"),
    ("sweep", ["--io", "ooc", "--target", "ice40-up5k"], "--io"),
    ("sweep", ["--full-chip", "bfp9"], "--full-chip"),
    ("sweep", ["--out", "{file}"], "--out"),
    ("sweep", ["--out", "/proc/nope"], "--out"),
    ("sweep", ["--cache", "{file}"], "--cache"),
    ("sweep", ["--json", "/proc/nope/s.json"], "--json"),
    ("sweep", ["--plot", "{tmp}"], "--plot"),
    ("sweep", ["--fmax-plot", "{file}/f.png"], "--fmax-plot"),
    # gemm
    ("gemm", ["--m", "1000000", "--k", "1000000"], "--m"),
    ("gemm", ["--n", "0"], "--n"),
    ("gemm", ["--k", "-1"], "--k"),
    ("gemm", ["--device", "foo://"], "--device"),
    ("gemm", ["--device", "tcp://127.0.0.1:99999"], "--device"),
    ("gemm", ["--device", "tcp://:7777"], "--device"),
    ("gemm", ["--device", "serial://"], "--device"),
    ("gemm", ["--device", "serial:///dev/ttyUSB0?baud=x"], "--device"),
    ("gemm", ["--device", "sim://?lanes=3"], "--device"),
    ("gemm", ["--device", "sim://?lanes=x"], "--device"),
    ("gemm", ["--wire", "int8"], "--wire"),
    ("gemm", ["--seed", "x"], "--seed"),
    ("gemm", ["--json", "/proc/nope/g.json"], "--json"),
    ("gemm", ["--json", "{tmp}"], "--json"),
    # serve
    ("serve", ["--listen", "127.0.0.1:99999"], "--listen"),
    ("serve", ["--listen", "127.0.0.1:-1"], "--listen"),
    ("serve", ["--listen", "7777x"], "--listen"),
    ("serve", ["--listen", "127.0.0.1"], "--listen"),
    ("serve", ["--listen", "0.0.0.0:7777"], "--listen"),
    ("serve", ["--listen", "192.0.2.1:7777", "--allow-remote"], "--listen"),
    ("serve", ["--device", "foo://"], "--device"),
    ("serve", ["--device", "tcp://h:0"], "--device"),
    ("serve", ["--device", "sim://?block_size=128"], "--device"),
    # train
    ("train", ["--epochs", "0"], "--epochs"),
    ("train", ["--batch-size", "x"], "--batch-size"),
    ("train", ["--lr", "0"], "--lr"),
    ("train", ["--lr", "nan"], "--lr"),
    ("train", ["--formats", "bfp8,bfp5"], "--formats"),
    ("train", ["--format", "bfp5"], "--format"),
    ("train", ["--format", "mxfp6_e3m2x"], "--format"),
    ("train", ["--format", "mxfp8_e4m3/bfp8"], "--format"),           # blocks of 32 and 16
    ("train", ["--format", "mxfp8_e4m3/mxfp8_e5m2/bfp8"], "--format"),
    ("train", ["--formats", "mxfp8_e4m3/mxfp8_e5m2", "--backend", "device"], "--formats"),
    ("train", ["--formats", "bfp8_fp32kahan", "--backend", "device"], "--formats"),
    ("train", ["--formats", "bfp8_kahan"], "--formats"),
    ("train", ["--model", "vit"], "--model"),
    ("train", ["--dataset", "mnist"], "--dataset"),
    ("train", ["--device", "sim"], "--device"),
    ("train", ["--backend", "device", "--device", "foo://"], "--device"),
    ("train", ["--backend", "device", "--device", "sim://?mantissa_bits=40"], "--device"),
    ("train", ["--seed", "-1"], "--seed"),
    ("train", ["--threads", "0"], "--threads"),
    ("train", ["--json", "/proc/nope/t.json"], "--json"),
    ("train", ["--plot", "{tmp}"], "--plot"),
    ("train", ["--plot", "/proc/nope/c.png"], "--plot"),
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty directory that is also the working directory, with one file in it."""
    (tmp_path / "file").write_text("x")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HBFP_HW_CACHE", str(tmp_path / "cache"))
    return tmp_path


def _expand(argv, tmp):
    return [a.replace("{tmp}", str(tmp)).replace("{file}", str(tmp / "file")) for a in argv]


def _listing(tmp):
    return sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*"))


def _check(code, err, flag, command):
    lines = err.splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].strip(), err
    assert lines[0].startswith(f"hbfp-hw {command}: error: "), err
    assert flag in lines[0], err


def test_corpus_covers_every_subcommand():
    assert sorted({c for c, _, _ in CORPUS}) == sorted(COMMANDS)


@pytest.mark.parametrize("command, argv, flag", CORPUS,
                         ids=[f"{c}:{' '.join(a)}" for c, a, _ in CORPUS])
def test_misuse(workdir, capsys, command, argv, flag):
    before = _listing(workdir)
    code = main([command, *_expand(argv, workdir)])
    out, err = capsys.readouterr()
    _check(code, err, flag, command)
    assert out == ""
    assert _listing(workdir) == before, "a misuse case wrote something"


def test_listen_address_in_use(workdir, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        code = main(["serve", "--listen", f"127.0.0.1:{port}"])
    _check(code, capsys.readouterr().err, "--listen", "serve")


def test_build_program_without_programmer(workdir, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(workdir))
    monkeypatch.delenv("ICEPROG", raising=False)
    code = main(["build", "--board", "icebreaker", "--program", "--out", str(workdir / "b")])
    err = capsys.readouterr().err
    _check(code, err, "--program", "build")
    assert "iceprog is not installed" in err
    assert not (workdir / "b").exists()


def _entry_points():
    script = Path(sys.executable).with_name("hbfp-hw")
    points = [[sys.executable, "-m", "hbfp_hw.cli"]]
    if script.exists():
        points.append([str(script)])
    return points


@pytest.mark.parametrize("entry", _entry_points(), ids=lambda e: Path(e[-1]).name)
@pytest.mark.parametrize("command, argv, flag", [
    ("generate", ["--format", "bfp8", "--out", "/proc/nope"], "--out"),
    ("gemm", ["--m", "1000000", "--k", "1000000"], "--m"),
    ("serve", ["--listen", "127.0.0.1:99999"], "--listen"),
])
def test_misuse_through_the_entry_points(workdir, entry, command, argv, flag):
    before = _listing(workdir)
    proc = subprocess.run([*entry, command, *argv], capture_output=True, text=True,
                          cwd=workdir, env={**os.environ, "PYTHONWARNINGS": "error"},
                          timeout=120)
    _check(proc.returncode, proc.stderr, flag, command)
    assert _listing(workdir) == before

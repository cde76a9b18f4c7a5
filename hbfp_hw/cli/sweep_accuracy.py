"""``hbfp-hw sweep --with-accuracy``: the digits accuracy of each swept format, joined with the
hardware rows of the sweep.

The sweep (:mod:`hbfp_hw.fpga.sweep`) measures hardware only and the training
(:mod:`hbfp_hw.torch.train`) knows nothing of hardware; the command line joins the two here.
Imported by :func:`hbfp_hw.cli.sweep.run` only when ``--with-accuracy`` is given; torch itself
is imported on the first :func:`digits_accuracy` call.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

from hbfp_hw.formats import BFPFormat
from hbfp_hw.fpga.sweep import area_per_gmacs, cache_root, pareto_front, parse_format_spec
from hbfp_hw.tools.cache import cache_key, read_json, write_json_atomic

__all__ = ["AccuracyUnavailable", "digits_accuracy", "attach_accuracy"]


class AccuracyUnavailable(RuntimeError):
    """``--with-accuracy`` cannot run (PyTorch or scikit-learn is missing)."""


def _accuracy_digest():
    import hbfp_hw
    from hbfp_hw import golden

    h = hashlib.sha256()
    torch_dir = Path(hbfp_hw.__file__).parent / "torch"
    for folder in (torch_dir, Path(golden.__file__).parent):
        for path in sorted(folder.glob("*.py")):
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def digits_accuracy(fmt, *, model="mlp", epochs=30, batch_size=64, lr=0.05, seed=0,
                    cache=None, progress=False):
    """Digits test accuracy of ``model`` trained in ``fmt`` (a BFPFormat, or "fp32").

    The same training as ``hbfp-hw train`` (:func:`hbfp_hw.torch.train.train_formats`): one
    initialization from ``seed``, the same batches, SGD with momentum 0.9
    (:func:`hbfp_hw.torch.train.train_model`), every GEMM of the converted layers in ``fmt``
    on the emulate backend, one torch thread. Cached under the sweep's cache
    (:func:`hbfp_hw.fpga.sweep.cache_root`), in ``accuracy/``, by format, training settings,
    torch version and the sources of ``hbfp_hw.torch`` and ``hbfp_hw.golden``.

    Raises
    ------
    AccuracyUnavailable
        If PyTorch or scikit-learn is missing.
    """
    try:
        import torch

        from hbfp_hw.torch import train
        from hbfp_hw.torch.data import load_digits
        from hbfp_hw.torch.modules import convert
    except ImportError as e:
        raise AccuracyUnavailable(
            f"--with-accuracy trains the digits models with PyTorch, which is not installed "
            f"({e}); install the extra: pip install 'hbfp-hw[torch]'") from None
    name = "fp32" if fmt == "fp32" else None
    if name is None:
        fmt = parse_format_spec(fmt) if isinstance(fmt, str) else fmt
        if not isinstance(fmt, BFPFormat):
            raise TypeError(f"fmt must be a BFPFormat or 'fp32', not {fmt!r}")
    fmt_desc = "fp32" if name else fmt.to_dict()
    key = cache_key("digits", fmt_desc, model, epochs, batch_size, lr, seed, torch.__version__,
                    _accuracy_digest())
    path = cache_root(cache) / "accuracy" / f"{key[:24]}.json"
    cached = read_json(path)
    if cached is not None:
        return {**cached, "cached": True}
    try:
        data = load_digits()
    except ImportError as e:
        raise AccuracyUnavailable(str(e)) from None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # As train.train_formats: the initial state comes from one model built after seeding,
        # each format trains a fresh model loaded with it.
        torch.manual_seed(seed)
        init_state = train.build_model(model).state_dict()
        net = train.build_model(model)
        net.load_state_dict(init_state)
        if name is None:
            net = convert(net, fmt=fmt, backend="emulate", inplace=True, seed=seed)
        bar = None
        if progress:
            from tqdm import tqdm
            steps = epochs * -(-data.x_train.shape[0] // batch_size)
            bar = tqdm(total=steps, desc=f"digits {model} {name or fmt.name}",
                       file=sys.stderr, leave=False, dynamic_ncols=True)
        try:
            history = train.train_model(net, data, epochs, batch_size, lr, seed, bar)
        finally:
            if bar is not None:
                bar.close()
    finally:
        torch.set_num_threads(threads)
    result = {"format": fmt_desc, "model": model, "epochs": epochs, "batch_size": batch_size,
              "lr": lr, "seed": seed, "test_acc": history["test_acc"][-1],
              "test_loss": history["test_loss"][-1], "train_loss": history["train_loss"][-1],
              "seconds": round(history["seconds"][-1], 1), "torch": torch.__version__}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, result)
    return {**result, "cached": False}


def attach_accuracy(doc, *, model="mlp", epochs=30, seed=0, cache=None, progress=True,
                    log=None):
    """Add ``accuracy`` (digits test accuracy) to every row of the sweep document ``doc``,
    the area per GMAC/s of the rows that have one and the accuracy/area Pareto front
    (``doc["pareto_front"]``, labels, cheapest first); returns ``doc``."""
    done = {}
    doc["accuracy_setup"] = {"dataset": "digits", "model": model, "epochs": epochs,
                             "seed": seed, "backend": "emulate",
                             "command": f"hbfp-hw train --dataset digits --model {model} "
                                        f"--epochs {epochs} --seed {seed} --threads 1"}
    for row in doc["points"]:
        key = "fp32" if row["kind"] == "fp32-baseline" else json.dumps(row["format"],
                                                                         sort_keys=True)
        if key not in done:
            fmt = "fp32" if key == "fp32" else BFPFormat.from_dict(row["format"])
            t0 = time.monotonic()
            done[key] = digits_accuracy(fmt, model=model, epochs=epochs, seed=seed,
                                        cache=cache, progress=progress)
            if log is not None:
                how = "cached" if done[key]["cached"] else f"{time.monotonic() - t0:.1f} s"
                log(f"accuracy {row['label']}: {done[key]['test_acc']:.2f}% ({how})")
        row["accuracy"] = {k: done[key][k] for k in ("test_acc", "test_loss", "train_loss")}
        if "lut_equivalents" in row and row.get("mac_per_s"):
            row["lut_equivalents_per_gmacs"] = area_per_gmacs(row)
    pts = [(i, area_per_gmacs(r), r["accuracy"]["test_acc"])
           for i, r in enumerate(doc["points"]) if area_per_gmacs(r)]
    front = pareto_front([(c, a) for _, c, a in pts])
    doc["pareto_front"] = [doc["points"][pts[i][0]]["label"] for i in front]
    return doc

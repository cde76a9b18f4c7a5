"""``hbfp-hw train``: train FP32 and HBFP versions of a small model on the digits data set.

Every format starts from the same initialization (one ``torch.manual_seed``), sees the batches
in the same order and uses the same optimizer; only the GEMMs of the converted layers differ.
"""

from __future__ import annotations

import copy
import json
import sys
import time

import torch
from torch import nn

from hbfp_hw.formats import resolve_format
from hbfp_hw.torch.data import load_digits
from hbfp_hw.torch.modules import convert

__all__ = ["build_model", "parse_formats", "parse_layer_rules", "train_model", "train_formats",
           "format_table", "plot_curves", "MODELS"]

MODELS = ("mlp", "cnn")
#: bfp8 must end within this many accuracy points of FP32 (the issue's target).
TARGET_POINTS = 1.0


def build_model(name):
    """Return the digits model ``"mlp"`` or ``"cnn"`` (input ``[n, 1, 8, 8]``, 10 logits)."""
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128),
                             nn.ReLU(), nn.Linear(128, 10))
    if name == "cnn":
        return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
                             nn.Linear(64, 10))
    raise ValueError(f"model must be one of {', '.join(MODELS)}, not {name!r}")


def parse_formats(text, first=None):
    """Parse ``"bfp8,bfp4,fp32"`` into format names; FP32 (the reference) always comes first."""
    names = ["fp32"]
    for item in ([first] if first else []) + [t for t in (text or "").split(",") if t.strip()]:
        item = item.strip().lower()
        if item != "fp32":
            try:
                item = "/".join(resolve_format(part).name for part in item.split("/", 1))
            except ValueError:
                raise ValueError(f"formats must be 'fp32', preset names or A/G pairs of them, "
                                 f"not {item!r}") from None
        if item not in names:
            names.append(item)
    return names


def _evaluate(model, x, y):
    model.eval()
    with torch.no_grad():
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y).item()
        acc = (logits.argmax(dim=1) == y).float().mean().item() * 100.0
    model.train()
    return loss, acc


def train_model(model, data, epochs, batch_size, lr, seed, progress=None):
    """Train ``model`` on ``data`` as ``hbfp-hw train`` trains each format; return its history.

    SGD with momentum 0.9 and cross-entropy loss; each epoch visits the training set in an
    order drawn from a generator seeded with ``seed`` (the same batches for every model), then
    evaluates on the test set. Trains in place; the caller seeds the initialization, converts
    the model and sets the torch threads.

    Parameters
    ----------
    model : torch.nn.Module
        A :func:`build_model` model, converted or not.
    data : hbfp_hw.torch.data.Digits
        The data set (:func:`hbfp_hw.torch.data.load_digits`).
    epochs, batch_size : int
    lr : float
    seed : int
    progress : tqdm bar, optional
        Advanced once per batch; its postfix shows the loss and accuracy of each epoch.

    Returns
    -------
    dict
        ``{"train_loss", "test_loss", "test_acc", "seconds"}``, each a list with one value per
        epoch (accuracy in percent, seconds since the start).
    """
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    n = data.x_train.shape[0]
    history = {"train_loss": [], "test_loss": [], "test_acc": [], "seconds": []}
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        total, count = 0.0, 0
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            count += len(idx)
            if progress is not None:
                progress.update(1)
        test_loss, test_acc = _evaluate(model, data.x_test, data.y_test)
        history["train_loss"].append(total / count)
        history["test_loss"].append(test_loss)
        history["test_acc"].append(test_acc)
        history["seconds"].append(time.perf_counter() - start)
        if progress is not None:
            progress.set_postfix(loss=f"{total / count:.3f}", test_acc=f"{test_acc:.2f}%")
    return history


def parse_layer_rules(items):
    """Parse ``["PATTERN=FMT", ...]`` (``hbfp-hw train --layer``) into ``convert``'s
    ``layers`` pairs; FMT is a preset name or ``fp32``."""
    rules = []
    for item in items or ():
        pattern, sep, fmt = item.rpartition("=")
        if not sep or not pattern or not fmt.strip():
            raise ValueError(f"--layer must be PATTERN=FORMAT (e.g. '0=fp32' or "
                             f"'re:.*conv.*=bfp4'), not {item!r}")
        fmt = fmt.strip().lower()
        if fmt != "fp32":
            try:
                fmt = resolve_format(fmt).name
            except ValueError:
                raise ValueError(f"--layer {item!r}: the format must be 'fp32' or a preset "
                                 f"name, not {fmt!r}") from None
        rules.append((pattern, fmt))
    return rules


def train_formats(model_name="mlp", formats=("fp32", "bfp8"), epochs=20, batch_size=64,
                  lr=0.05, seed=0, backend="emulate", device=None, progress=True, layers=None):
    """Train one model per format from the same initialization; return a JSON-ready dict.

    ``layers`` (``convert``'s per-layer rules) applies to every HBFP format; the conversion
    report of each format is in the result (``results[FMT]["conversion"]``).
    """
    from tqdm import tqdm

    data = load_digits()
    torch.manual_seed(seed)
    base = build_model(model_name)
    init_state = copy.deepcopy(base.state_dict())
    steps = epochs * -(-data.x_train.shape[0] // batch_size)
    results = {}
    for name in formats:
        model = build_model(model_name)
        model.load_state_dict(init_state)
        conversion = None
        if name != "fp32":
            model = convert(model, fmt=name, backend=backend, device=device, inplace=True,
                            seed=seed, layers=layers)
            conversion = model.hbfp_report.to_dict()
        bar = tqdm(total=steps, desc=f"{model_name} {name:>5}", file=sys.stderr,
                   disable=not progress, leave=True, dynamic_ncols=True)
        try:
            history = train_model(model, data, epochs, batch_size, lr, seed, bar)
        finally:
            bar.close()
        results[name] = {"test_acc": history["test_acc"][-1],
                         "test_loss": history["test_loss"][-1],
                         "train_loss": history["train_loss"][-1],
                         "seconds": history["seconds"][-1], "history": history,
                         "conversion": conversion}
    out = {"dataset": "digits", "model": model_name, "epochs": epochs,
           "batch_size": batch_size, "lr": lr, "optimizer": "SGD momentum 0.9", "seed": seed,
           "backend": backend, "device": device, "layers": [list(r) for r in layers or ()],
           "train_samples": int(data.x_train.shape[0]),
           "test_samples": int(data.x_test.shape[0]), "results": results}
    if "fp32" in results and "bfp8" in results:
        gap = results["fp32"]["test_acc"] - results["bfp8"]["test_acc"]
        out["target"] = {"description": f"bfp8 test accuracy within {TARGET_POINTS} point of "
                                        f"fp32", "gap_points": gap,
                         "met": bool(gap <= TARGET_POINTS)}
    return out


def format_table(run):
    """Return the result table as text (one row per format)."""
    results = run["results"]
    ref = results.get("fp32", {}).get("test_acc")
    width = max(8, *map(len, results))
    lines = [f"digits {run['model']}, {run['epochs']} epochs, batch {run['batch_size']}, "
             f"backend {run['backend']}, seed {run['seed']}",
             f"{'format':{width}} {'test acc':>9} {'test loss':>10} {'vs fp32':>8} "
             f"{'train loss':>11} {'time':>8}"]
    if run.get("layers"):
        lines.insert(1, "per-layer rules: " + ", ".join(f"{p}={f}" for p, f in run["layers"]))
    for name, r in results.items():
        delta = "-" if ref is None or name == "fp32" else f"{r['test_acc'] - ref:+.2f}"
        lines.append(f"{name:{width}} {r['test_acc']:8.2f}% {r['test_loss']:10.4f} {delta:>8} "
                     f"{r['train_loss']:11.4f} {r['seconds']:7.1f}s")
    if "target" in run:
        t = run["target"]
        lines.append(f"target: {t['description']}: fp32 - bfp8 = {t['gap_points']:+.2f} points "
                     f"-> {'met' if t['met'] else 'NOT met'}")
    return "\n".join(lines)


def plot_curves(run, path):
    """Write the training curves (train loss, test accuracy per epoch) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    # more than ten formats: twenty colours, so that no two curves share one
    colors = plt.cm.tab20.colors if len(run["results"]) > 10 else plt.cm.tab10.colors
    others = iter(colors)
    for name, r in run["results"].items():
        epochs = range(1, len(r["history"]["train_loss"]) + 1)
        style = dict(color="k", linestyle="--") if name == "fp32" else dict(color=next(others))
        ax_loss.plot(epochs, r["history"]["train_loss"], label=name, **style)
        ax_acc.plot(epochs, r["history"]["test_acc"], label=name, **style)
    ax_loss.set(xlabel="epoch", ylabel="train loss", yscale="log", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small" if len(run["results"]) > 6 else None)
    fig.suptitle(f"digits {run['model']}: HBFP vs FP32 ({run['backend']} backend)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_json(run, path):
    with open(path, "w") as f:
        json.dump(run, f, indent=2)
        f.write("\n")

"""``hbfp-hw train --dataset sort``: a small Transformer on a sequence task made in code.

The task needs no download: each sequence is ``LENGTH`` random digits, a separator and the
same digits sorted; a causal Transformer language model learns to continue the sequence, and
its loss is the cross-entropy of the sorted half (the first half is random and cannot be
predicted). The training and validation sets are fixed (their own generator seeds); the
training seed sets the initialization and the batch order.

Every GEMM of the converted model is HBFP, attention included: the token and position
embeddings stay FP32 (lookups, no GEMM), the attention layers are
:class:`~hbfp_hw.torch.HBFPMultiheadAttention` (projections, ``q @ k^T`` and ``weights @ v``),
the feed-forward layers and the output head :class:`~hbfp_hw.torch.HBFPLinear`. Layer norms,
softmax and the loss are FP32.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from torch import nn

from hbfp_hw.torch.modules import convert

__all__ = ["LENGTH", "VOCAB", "make_data", "SortTransformer", "train_sort", "format_table",
           "plot_curves"]

LENGTH = 12                 # digits to sort
SEPARATOR = 10
VOCAB = 11
#: bfp8's final validation loss must be within this fraction of FP32's (mean over seeds).
TARGET_RELATIVE = 0.02


def make_data(count, seed):
    """``count`` sequences ``[count, 2 * LENGTH + 1]`` (int64) from generator ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    digits = torch.randint(0, 10, (count, LENGTH), generator=gen)
    sep = torch.full((count, 1), SEPARATOR)
    return torch.cat([digits, sep, digits.sort(dim=1).values], dim=1)


class SortTransformer(nn.Module):
    """A causal Transformer language model (pre-norm), ``d_model`` 64, 4 heads, 2 layers."""

    def __init__(self, d_model=64, heads=4, layers=2, ff=128):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d_model)
        self.pos = nn.Embedding(2 * LENGTH, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, ff, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, VOCAB)
        mask = torch.triu(torch.full((2 * LENGTH, 2 * LENGTH), float("-inf")), diagonal=1)
        self.register_buffer("causal", mask, persistent=False)

    def forward(self, tokens):
        n = tokens.shape[1]
        h = self.embed(tokens) + self.pos(torch.arange(n, device=tokens.device))
        h = self.encoder(h, mask=self.causal[:n, :n], is_causal=True)
        return self.head(self.norm(h))


def _loss(model, seqs):
    """Cross-entropy of the sorted half (the targets after the separator)."""
    logits = model(seqs[:, :-1])[:, LENGTH:]
    return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), seqs[:, LENGTH + 1:].reshape(-1))


def _evaluate(model, seqs):
    model.eval()
    with torch.no_grad():
        loss = _loss(model, seqs).item()
        pred = model(seqs[:, :-1])[:, LENGTH:].argmax(-1)
        exact = (pred == seqs[:, LENGTH + 1:]).all(dim=1).float().mean().item() * 100
    model.train()
    return loss, exact


def _train_one(model, train, valid, steps, batch, lr, seed, evals, bar):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    history = {"step": [], "train_loss": [], "val_loss": [], "val_exact": [], "seconds": []}
    start, running = time.perf_counter(), []
    for step in range(1, steps + 1):
        idx = torch.randint(0, train.shape[0], (batch,), generator=gen)
        loss = _loss(model, train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running.append(loss.item())
        if bar is not None:
            bar.update(1)
        if step % max(1, steps // evals) == 0 or step == steps:
            val_loss, exact = _evaluate(model, valid)
            history["step"].append(step)
            history["train_loss"].append(statistics.fmean(running))
            history["val_loss"].append(val_loss)
            history["val_exact"].append(exact)
            history["seconds"].append(time.perf_counter() - start)
            running = []
            if bar is not None:
                bar.set_postfix(val_loss=f"{val_loss:.4f}")
    return history


def train_sort(formats=("fp32", "bfp8"), seeds=(0, 1, 2), steps=600, batch=64, lr=3e-3,
               backend="emulate", device=None, layers=None, progress=True, evals=12):
    """Train the sort Transformer per format and seed (same initialization per seed for every
    format); return a JSON-ready dict with per-run histories and per-format means."""
    from tqdm import tqdm

    train = make_data(8192, 12345)
    valid = make_data(1024, 54321)
    results = {}
    for name in formats:
        runs = []
        for seed in seeds:
            torch.manual_seed(seed)
            model = SortTransformer()
            conversion = None
            if name != "fp32":
                model = convert(model, fmt=name, backend=backend, device=device, seed=seed,
                                layers=layers, inplace=True)
                conversion = model.hbfp_report.to_dict()
            bar = tqdm(total=steps, desc=f"sort {name:>5} seed {seed}", file=sys.stderr,
                       disable=not progress, leave=True, dynamic_ncols=True)
            try:
                history = _train_one(model, train, valid, steps, batch, lr, seed, evals, bar)
            finally:
                bar.close()
            runs.append({"seed": seed, "val_loss": history["val_loss"][-1],
                         "val_exact": history["val_exact"][-1],
                         "seconds": history["seconds"][-1], "history": history,
                         "conversion": conversion})
        results[name] = {"val_loss": statistics.fmean(r["val_loss"] for r in runs),
                         "val_exact": statistics.fmean(r["val_exact"] for r in runs),
                         "seconds": statistics.fmean(r["seconds"] for r in runs), "runs": runs}
    out = {"dataset": "sort", "model": "transformer", "length": LENGTH, "steps": steps,
           "batch_size": batch, "lr": lr, "optimizer": "AdamW (weight decay 0.01)",
           "seeds": list(seeds), "backend": backend, "device": device,
           "layers": [list(r) for r in layers or ()], "train_samples": 8192,
           "val_samples": 1024, "results": results}
    if "fp32" in results and "bfp8" in results:
        ref, got = results["fp32"]["val_loss"], results["bfp8"]["val_loss"]
        rel = (got - ref) / ref
        out["target"] = {"description": f"bfp8 mean validation loss within "
                                        f"{TARGET_RELATIVE:.0%} (relative) of fp32",
                         "relative_gap": rel, "met": bool(rel <= TARGET_RELATIVE)}
    return out


def format_table(run):
    """The result table as text (one row per format, means over seeds)."""
    lines = [f"sort {run['length']} digits, transformer, {run['steps']} steps, batch "
             f"{run['batch_size']}, backend {run['backend']}, seeds "
             f"{','.join(map(str, run['seeds']))}",
             f"{'format':8} {'val loss':>9} {'vs fp32':>8} {'exact %':>8} {'per-seed val loss':>30}"
             f" {'time':>8}"]
    ref = run["results"].get("fp32", {}).get("val_loss")
    for name, r in run["results"].items():
        rel = "-" if ref is None or name == "fp32" else f"{(r['val_loss'] - ref) / ref:+.1%}"
        per = " ".join(f"{x['val_loss']:.4f}" for x in r["runs"])
        lines.append(f"{name:8} {r['val_loss']:9.4f} {rel:>8} {r['val_exact']:8.1f} {per:>30} "
                     f"{r['seconds']:7.1f}s")
    if "target" in run:
        t = run["target"]
        lines.append(f"target: {t['description']}: {t['relative_gap']:+.2%} -> "
                     f"{'met' if t['met'] else 'NOT met'}")
    return "\n".join(lines)


def plot_curves(run, path):
    """Validation loss per evaluation step, every seed (thin) and the mean (thick)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, r) in enumerate(run["results"].items()):
        color = "k" if name == "fp32" else f"C{i}"
        curves = [x["history"]["val_loss"] for x in r["runs"]]
        steps = r["runs"][0]["history"]["step"]
        for c in curves:
            ax.plot(steps, c, color=color, alpha=0.3, lw=1)
        mean = [statistics.fmean(v) for v in zip(*curves)]
        ax.plot(steps, mean, color=color, lw=2, ls="--" if name == "fp32" else "-",
                label=f"{name} (mean of {len(curves)})")
    ax.set(xlabel="training step", ylabel="validation loss (sorted half)", yscale="log",
           title=f"sort task, Transformer: HBFP vs FP32 ({run['backend']} backend)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


"""``hbfp-hw train --dataset markov|sort``: a small Transformer on sequence tasks made in code.

The tasks need no download (:data:`TASKS`):

- ``markov``: sequences of 48 symbols from an order-2 Markov chain over 16 symbols with fixed,
  peaked (Dirichlet 0.3) transitions. A causal language model must attend to the two previous
  symbols; its loss can reach, but not pass, the chain's own cross-entropy on the validation
  set (the *loss floor*, reported), so a format's loss is comparable with FP32's at a
  meaningful level.
- ``sort``: 12 random digits, a separator and the same digits sorted, scored on the sorted
  half (loss floor 0).

The training and validation sets are fixed (their own generator seeds); the training seed
sets the initialization and the batch order. Training is AdamW with a warm-up and a cosine
decay to zero.

Every GEMM of the converted model is HBFP, attention included: the token and position
embeddings stay FP32 (lookups, no GEMM), the attention layers are
:class:`~hbfp_hw.torch.HBFPMultiheadAttention` (projections, ``q @ k^T`` and ``weights @ v``),
the feed-forward layers and the output head :class:`~hbfp_hw.torch.HBFPLinear`. Layer norms,
softmax and the loss are FP32.
"""

from __future__ import annotations

import functools
import math
import statistics
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn

from hbfp_hw.torch.modules import convert

__all__ = ["TASKS", "SeqTask", "TransformerLM", "SortTransformer", "task_model", "make_data",
           "train_sequence", "train_sort", "format_table", "plot_curves"]

#: bfp8's final validation loss must be within this fraction of FP32's (mean over seeds).
TARGET_RELATIVE = 0.02
LENGTH = 12                 # digits to sort (the sort task)


@dataclass(frozen=True)
class SeqTask:
    """A sequence task made in code: ``make(count, seed)`` gives ``[count, length]`` int64
    tokens; the loss scores the tokens from position ``start`` on; ``floor(seqs)`` is the
    loss of the true distribution on those tokens (the best any model can do), or None."""

    name: str
    vocab: int
    length: int
    start: int
    make: object
    floor: object = None
    description: str = ""


def _sort_data(count, seed):
    gen = torch.Generator().manual_seed(seed)
    digits = torch.randint(0, 10, (count, LENGTH), generator=gen)
    sep = torch.full((count, 1), 10)
    return torch.cat([digits, sep, digits.sort(dim=1).values], dim=1)


_MARKOV_SYMBOLS, _MARKOV_LENGTH = 16, 48


@functools.lru_cache(maxsize=1)
def _markov_table():
    """The order-2 transition table ``P[a, b, c] = P(next = c | previous two = a, b)``: each
    row a Dirichlet(0.3) draw from a fixed generator (peaked, not deterministic)."""
    gen = torch.Generator().manual_seed(2024)
    g = torch._standard_gamma(torch.full((_MARKOV_SYMBOLS, _MARKOV_SYMBOLS, _MARKOV_SYMBOLS),
                                         0.3, dtype=torch.float64), generator=gen)
    return g / g.sum(-1, keepdim=True)


def _markov_data(count, seed):
    gen = torch.Generator().manual_seed(seed)
    table = _markov_table()
    seqs = torch.empty(count, _MARKOV_LENGTH, dtype=torch.int64)
    seqs[:, :2] = torch.randint(0, _MARKOV_SYMBOLS, (count, 2), generator=gen)
    for t in range(2, _MARKOV_LENGTH):
        probs = table[seqs[:, t - 2], seqs[:, t - 1]]
        seqs[:, t] = torch.multinomial(probs, 1, generator=gen)[:, 0]
    return seqs


def _markov_floor(seqs):
    """Mean -log P_true of the scored tokens: the Bayes-optimal loss on ``seqs``."""
    table = _markov_table()
    p = table[seqs[:, :-2], seqs[:, 1:-1], seqs[:, 2:]]
    return float(-p.log().mean())


TASKS = {
    "sort": SeqTask("sort", 11, 2 * LENGTH + 1, LENGTH + 1, _sort_data, lambda seqs: 0.0,
                    f"{LENGTH} random digits, a separator, the same digits sorted; scored on "
                    f"the sorted half"),
    "markov": SeqTask("markov", _MARKOV_SYMBOLS, _MARKOV_LENGTH, 2, _markov_data, _markov_floor,
                      f"sequences of {_MARKOV_LENGTH} symbols from an order-2 Markov chain over "
                      f"{_MARKOV_SYMBOLS} symbols (fixed Dirichlet(0.3) transitions); scored "
                      f"from the third symbol on"),
}


def make_data(count, seed, task="sort"):
    """``count`` sequences of ``task`` (int64 ``[count, length]``) from generator ``seed``."""
    return TASKS[task].make(count, seed)


class TransformerLM(nn.Module):
    """A causal Transformer language model (pre-norm), ``d_model`` 64, 4 heads, 2 layers."""

    def __init__(self, vocab, max_len, d_model=64, heads=4, layers=2, ff=128):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, ff, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        mask = torch.triu(torch.full((max_len, max_len), float("-inf")), diagonal=1)
        self.register_buffer("causal", mask, persistent=False)

    def forward(self, tokens):
        n = tokens.shape[1]
        h = self.embed(tokens) + self.pos(torch.arange(n, device=tokens.device))
        h = self.encoder(h, mask=self.causal[:n, :n], is_causal=True)
        return self.head(self.norm(h))


def SortTransformer():
    """The :class:`TransformerLM` of the sort task."""
    task = TASKS["sort"]
    return TransformerLM(task.vocab, task.length - 1)


def task_model(task):
    """The :class:`TransformerLM` of ``task`` (a :class:`SeqTask`)."""
    return TransformerLM(task.vocab, task.length - 1)


def _loss(model, seqs, task=None):
    """Cross-entropy of the scored tokens (from ``task.start`` on; default the sort task)."""
    task = task or TASKS["sort"]
    logits = model(seqs[:, :-1])[:, task.start - 1:]
    return nn.functional.cross_entropy(logits.reshape(-1, task.vocab),
                                       seqs[:, task.start:].reshape(-1))


def _evaluate(model, seqs, task):
    """Validation loss and the share of sequences whose scored tokens are all predicted."""
    model.eval()
    with torch.no_grad():
        logits = model(seqs[:, :-1])[:, task.start - 1:]
        loss = nn.functional.cross_entropy(logits.reshape(-1, task.vocab),
                                           seqs[:, task.start:].reshape(-1)).item()
        exact = (logits.argmax(-1) == seqs[:, task.start:]).all(dim=1).float().mean().item()
    model.train()
    return loss, exact * 100


def _schedule(steps, warmup):
    """Linear warm-up, then a cosine decay to 0 (the final loss is not taken at a spike)."""
    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
    return factor


def _train_one(model, task, train, valid, steps, batch, lr, seed, evals, bar):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(steps, max(1, steps // 20)))
    gen = torch.Generator().manual_seed(seed)
    history = {"step": [], "train_loss": [], "val_loss": [], "val_exact": [], "seconds": []}
    start, running = time.perf_counter(), []
    for step in range(1, steps + 1):
        idx = torch.randint(0, train.shape[0], (batch,), generator=gen)
        loss = _loss(model, train[idx], task)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running.append(loss.item())
        if bar is not None:
            bar.update(1)
        if step % max(1, steps // evals) == 0 or step == steps:
            val_loss, exact = _evaluate(model, valid, task)
            history["step"].append(step)
            history["train_loss"].append(statistics.fmean(running))
            history["val_loss"].append(val_loss)
            history["val_exact"].append(exact)
            history["seconds"].append(time.perf_counter() - start)
            running = []
            if bar is not None:
                bar.set_postfix(val_loss=f"{val_loss:.4f}")
    return history


def train_sequence(task="markov", formats=("fp32", "bfp8"), seeds=(0, 1, 2), steps=600,
                   batch=64, lr=3e-3, backend="emulate", device=None, layers=None,
                   progress=True, evals=12):
    """Train the task's Transformer per format and seed (same initialization per seed for
    every format; AdamW, warm-up and cosine decay); return a JSON-ready dict with per-run
    histories, per-format means and the task's loss floor."""
    from tqdm import tqdm

    spec = TASKS[task]
    train = spec.make(8192, 12345)
    valid = spec.make(1024, 54321)
    results = {}
    for name in formats:
        runs = []
        for seed in seeds:
            torch.manual_seed(seed)
            model = task_model(spec)
            conversion = None
            if name != "fp32":
                model = convert(model, fmt=name, backend=backend, device=device, seed=seed,
                                layers=layers, inplace=True)
                conversion = model.hbfp_report.to_dict()
            bar = tqdm(total=steps, desc=f"{task} {name:>5} seed {seed}", file=sys.stderr,
                       disable=not progress, leave=True, dynamic_ncols=True)
            try:
                history = _train_one(model, spec, train, valid, steps, batch, lr, seed, evals,
                                     bar)
            finally:
                bar.close()
            runs.append({"seed": seed, "val_loss": history["val_loss"][-1],
                         "val_exact": history["val_exact"][-1],
                         "seconds": history["seconds"][-1], "history": history,
                         "conversion": conversion})
        results[name] = {"val_loss": statistics.fmean(r["val_loss"] for r in runs),
                         "val_exact": statistics.fmean(r["val_exact"] for r in runs),
                         "seconds": statistics.fmean(r["seconds"] for r in runs), "runs": runs}
    out = {"dataset": task, "task": spec.description, "model": "transformer",
           "steps": steps, "batch_size": batch, "lr": lr,
           "optimizer": "AdamW (weight decay 0.01), warm-up and cosine decay",
           "seeds": list(seeds), "backend": backend, "device": device,
           "layers": [list(r) for r in layers or ()], "train_samples": 8192,
           "val_samples": 1024, "loss_floor": spec.floor(valid) if spec.floor else None,
           "results": results}
    if "fp32" in results and "bfp8" in results:
        ref, got = results["fp32"]["val_loss"], results["bfp8"]["val_loss"]
        rel = (got - ref) / ref
        out["target"] = {"description": f"bfp8 mean validation loss within "
                                        f"{TARGET_RELATIVE:.0%} (relative) of fp32",
                         "relative_gap": rel, "met": bool(rel <= TARGET_RELATIVE)}
    return out


def train_sort(formats=("fp32", "bfp8"), **kwargs):
    """:func:`train_sequence` of the sort task."""
    return train_sequence("sort", formats, **kwargs)


def format_table(run):
    """The result table as text (one row per format, means over seeds)."""
    floor = run.get("loss_floor")
    width = max(8, *map(len, run["results"]))
    lines = [f"{run['dataset']} task, transformer, {run['steps']} steps, batch "
             f"{run['batch_size']}, backend {run['backend']}, seeds "
             f"{','.join(map(str, run['seeds']))}"
             + (f", loss floor {floor:.4f}" if floor else ""),
             f"{'format':{width}} {'val loss':>9} {'vs fp32':>8} {'exact %':>8} "
             f"{'per-seed val loss':>30} {'time':>8}"]
    ref = run["results"].get("fp32", {}).get("val_loss")
    for name, r in run["results"].items():
        rel = "-" if ref is None or name == "fp32" else f"{(r['val_loss'] - ref) / ref:+.1%}"
        per = " ".join(f"{x['val_loss']:.4f}" for x in r["runs"])
        lines.append(f"{name:{width}} {r['val_loss']:9.4f} {rel:>8} {r['val_exact']:8.1f} "
                     f"{per:>30} {r['seconds']:7.1f}s")
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
    ax.set(xlabel="training step", ylabel="validation loss (scored tokens)", yscale="log",
           title=f"{run['dataset']} task, Transformer: HBFP vs FP32 ({run['backend']} backend)")
    if run.get("loss_floor"):
        ax.axhline(run["loss_floor"], color="grey", lw=1, ls=":", label="loss floor")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


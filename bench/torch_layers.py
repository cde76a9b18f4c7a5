"""Benchmark: HBFP layers beyond Linear/Conv2d, side by side with FP32 in one run.

Usage::

    .venv/bin/python bench/torch_layers.py [--repeats 7] [--threads 1] [--compile]
                                           [--json PATH] [--update-docs]

Rows (each ratio = HBFP time / FP32 time of the same computation, sides alternating call by
call, process CPU time, median of per-round ratios with the 25th-75th percentiles):

1. SGD step of a 784-1024-1024-10 MLP at batch 256: bfp8 nearest-even and bfp8 stochastic
   rounding against FP32, and stochastic against nearest-even (target <= 1.5);
2. depthwise 3x3 convolution (64 channels, groups 64, input 16x64x16x16), forward and
   backward (target <= 3);
3. ``hbfp_matmul`` on attention shapes ``[8, 4, 64, 32] @ [8, 4, 32, 64]``, forward and
   backward (target <= 3);
4. the training step (AdamW) of the sort-task Transformer of ``hbfp-hw train --dataset sort``
   at batch 64 (target <= 3);
5. with ``--compile``: the time of the first call of ``torch.compile`` (inductor) on the
   converted Transformer's forward and backward, against the FP32 model's.

``--update-docs`` rewrites the torch_layers section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from docs_section import update_section
from torch import nn
from torch_overhead import _alternate, _spread

from hbfp_hw.formats import BFPFormat
from hbfp_hw.torch import convert, hbfp_matmul, seqtask

HEADING = ("## PyTorch layers: stochastic rounding, grouped convolution, attention "
           "(`bench/torch_layers.py`)")
TARGETS = {"mlp_sr_vs_ne": 1.5, "depthwise": 3.0, "attention_matmul": 3.0, "transformer": 3.0}


def _sgd_step(model, x, y, opt_cls=torch.optim.SGD, **opt_kw):
    opt = opt_cls(model.parameters(), **opt_kw)

    def step():
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def _ratio(res, name, ref):
    per = [a / b for a, b in zip(res["cpu"][name][1], res["cpu"][ref][1])]
    mid, lo, hi = _spread(per)
    return {"ratio": mid, "q25": lo, "q75": hi, "hbfp_s": res["cpu"][name][0],
            "ref_s": res["cpu"][ref][0]}


def measure_mlp(repeats):
    torch.manual_seed(0)
    fp32 = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                         nn.Linear(1024, 10))
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(256, 784, generator=gen), torch.randint(0, 10, (256,), generator=gen)
    fns = {"fp32": _sgd_step(fp32, x, y, lr=0.01),
           "ne": _sgd_step(convert(fp32, "bfp8"), x, y, lr=0.01),
           "sr": _sgd_step(convert(fp32, BFPFormat(8, 16, "stochastic")), x, y, lr=0.01)}
    res = _alternate(fns, repeats)
    return {"ne_vs_fp32": _ratio(res, "ne", "fp32"), "sr_vs_fp32": _ratio(res, "sr", "fp32"),
            "sr_vs_ne": _ratio(res, "sr", "ne")}


def measure_depthwise(repeats):
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 64, 3, padding=1, groups=64)
    x = torch.randn(16, 64, 16, 16)

    def run(m):
        def f():
            xi = x.clone().requires_grad_(True)
            m(xi).sum().backward()
        return f
    res = _alternate({"fp32": run(conv), "hbfp": run(convert(conv, "bfp8"))}, repeats)
    return _ratio(res, "hbfp", "fp32")


def measure_attention(repeats):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(8, 4, 64, 32, generator=gen, requires_grad=True)
    k = torch.randn(8, 4, 64, 32, generator=gen, requires_grad=True)

    def run(mm):
        def f():
            mm(q, k.transpose(-2, -1)).sum().backward()
        return f
    res = _alternate({"fp32": run(torch.matmul),
                      "hbfp": run(lambda a, b: hbfp_matmul(a, b, "bfp8"))}, repeats)
    return _ratio(res, "hbfp", "fp32")


def measure_transformer(repeats):
    torch.manual_seed(0)
    fp32 = seqtask.SortTransformer()
    hbfp = convert(fp32, "bfp8")
    seqs = seqtask.make_data(64, 7)

    def step(model):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def f():
            loss = seqtask._loss(model, seqs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return f
    res = _alternate({"fp32": step(fp32), "hbfp": step(hbfp)}, repeats)
    return _ratio(res, "hbfp", "fp32")


def measure_compile():
    """Compile time of each side, measured alike: inductor's on-disk caches off (a real
    compile every time), after a warm-up compile that pays inductor's one-time start-up."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = False
    functorch_config.enable_autograd_cache = False
    warm = torch.compile(lambda t: (t @ t).relu())
    warm(torch.ones(4, 4, requires_grad=True)).sum().backward()
    seqs = seqtask.make_data(64, 7)
    out = {}
    for name in ("fp32", "bfp8"):
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = seqtask.SortTransformer()
        if name != "fp32":
            model = convert(model, name)
        compiled = torch.compile(model)
        start = time.perf_counter()
        logits = compiled(seqs[:, :-1])
        logits.sum().backward()
        out[name] = time.perf_counter() - start
    return out


def _row(label, r, target):
    met = "yes" if r["ratio"] <= target else "**no**"
    return (f"| {label} | {r['ref_s'] * 1e3:.2f} ms | {r['hbfp_s'] * 1e3:.2f} ms "
            f"| **{r['ratio']:.2f}** [{r['q25']:.2f}-{r['q75']:.2f}] | <= {target} | {met} |")


def _section(rows, machine, command):
    mlp = rows["mlp"]
    lines = [f"Command: `{command}`  ",
             f"Machine: {machine['cpus']} shared cores, torch {machine['torch']}, "
             f"{machine['threads']} torch thread(s); process CPU time, sides alternating, "
             f"median ratio [25th-75th percentile].", "",
             "| computation | reference (CPU) | HBFP (CPU) | ratio | target | met |",
             "|---|---|---|---|---|---|",
             _row("MLP 784-1024-1024-10 SGD step, batch 256: bfp8 nearest-even vs FP32",
                  mlp["ne_vs_fp32"], float("inf")).replace("<= inf", "-").replace(
                      "| yes |", "| - |"),
             _row("same, bfp8 stochastic rounding vs FP32", mlp["sr_vs_fp32"],
                  float("inf")).replace("<= inf", "-").replace("| yes |", "| - |"),
             _row("same, stochastic vs nearest-even step", mlp["sr_vs_ne"],
                  TARGETS["mlp_sr_vs_ne"]),
             _row("depthwise 3x3 conv (groups 64), forward + backward", rows["depthwise"],
                  TARGETS["depthwise"]),
             _row("`hbfp_matmul` [8,4,64,32] @ [8,4,32,64], forward + backward",
                  rows["attention"], TARGETS["attention_matmul"]),
             _row("sort-task Transformer training step (AdamW, batch 64)",
                  rows["transformer"], TARGETS["transformer"])]
    if "compile" in rows:
        c = rows["compile"]
        lines += ["", f"`torch.compile` (inductor, its on-disk caches off, after a warm-up "
                      f"compile) of the sort-task Transformer, first forward and backward: "
                      f"FP32 {c['fp32']:.1f} s, bfp8 {c['bfp8']:.1f} s."]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = {}
    for name, fn in (("mlp", measure_mlp), ("depthwise", measure_depthwise),
                     ("attention", measure_attention), ("transformer", measure_transformer)):
        rows[name] = fn(args.repeats)
        print(name, json.dumps(rows[name]), flush=True)
    if args.compile:
        rows["compile"] = measure_compile()
        print("compile", rows["compile"], flush=True)
    machine = {"python": platform.python_version(), "torch": torch.__version__,
               "cpus": os.cpu_count(), "threads": torch.get_num_threads()}
    command = ".venv/bin/python bench/torch_layers.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, **rows}, indent=2))
    if args.update_docs:
        update_section("torch_layers", _section(rows, machine, command.strip()), HEADING)
    return 0


if __name__ == "__main__":
    sys.exit(main())

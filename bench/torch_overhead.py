"""Benchmark: the cost of HBFP emulation in PyTorch, measured side by side with FP32.

Usage::

    .venv/bin/python bench/torch_overhead.py [--repeats 11] [--sizes 256,512,1024]
                                             [--steps 21] [--threads N] [--json PATH]
                                             [--update-docs]

In one run it records

1. the emulate GEMM (``hbfp_hw.torch.emulate.gemm``, bit-exact with ``golden.gemm``: each
   timed product is checked against it once) against ``torch.matmul`` in FP32 at each size³;
   ``ratio = t(fp32) / t(emulate)`` is the emulation's throughput as a fraction of FP32
   (target >= 0.25);
2. the training step (forward, backward, SGD) of the digits CNN and MLP of ``hbfp-hw train``
   (batch 64, the same batch every step), HBFP (bfp8, emulate) against FP32;
   ``ratio = t(HBFP) / t(FP32)`` (target <= 3 for the CNN). The losses at the end are
   reported, so that a run in which either model diverged shows.

Both sides run alternately, pair by pair, so they see the same machine load. Every call is
timed twice: with the process CPU time (``time.process_time``: what the computation costs,
without the time other jobs on a shared machine take the core away) and with the wall clock.
Each ratio is the median of the per-pair ratios, with the 25th-75th percentile range as the
spread. ``--update-docs`` rewrites the torch_overhead section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from docs_section import update_section
from torch import nn

from hbfp_hw import golden
from hbfp_hw.formats import resolve_format
from hbfp_hw.torch import convert, native, register_backend
from hbfp_hw.torch.emulate import gemm as emulate_gemm
from hbfp_hw.torch.train import build_model

HEADING = "## PyTorch emulation overhead (`bench/torch_overhead.py`)"
GEMM_TARGET, STEP_TARGET = 0.25, 3.0


def _alternate(fns, repeats):
    """Time ``fns`` (a dict; the first one is the reference) in turn, ``repeats`` rounds.

    Returns ``{clock: {name: (median time, [per-round ratio time / reference time])}}`` for
    the clocks ``"cpu"`` and ``"wall"``."""
    for f in fns.values():
        f()                                      # warm-up
    times = {clock: {name: [] for name in fns} for clock in ("cpu", "wall")}
    for _ in range(repeats):
        for name, f in fns.items():
            c0, w0 = time.process_time(), time.perf_counter()
            f()
            c1, w1 = time.process_time(), time.perf_counter()
            times["cpu"][name].append(c1 - c0)
            times["wall"][name].append(w1 - w0)
    ref = next(iter(fns))
    return {clock: {name: (statistics.median(ts), [t / r for t, r in zip(ts, per[ref])])
                    for name, ts in per.items()}
            for clock, per in times.items()}


def _spread(values):
    """Median and 25th/75th percentiles."""
    q = statistics.quantiles(values, n=4, method="inclusive")
    return statistics.median(values), q[0], q[2]


def measure_gemm(size, fmt, repeats):
    gen = torch.Generator().manual_seed(size)
    a = torch.randn(size, size, generator=gen)
    b = torch.randn(size, size, generator=gen)
    if not np.array_equal(emulate_gemm(a, b, fmt).numpy().view(np.uint32),
                          golden.gemm(a.numpy(), b.numpy(), fmt).view(np.uint32)):
        raise SystemExit(f"emulate GEMM {size}^3 differs from golden.gemm: not timing it")
    with native.enabled(False):
        if not np.array_equal(emulate_gemm(a, b, fmt).numpy().view(np.uint32),
                              golden.gemm(a.numpy(), b.numpy(), fmt).view(np.uint32)):
            raise SystemExit(f"emulate GEMM {size}^3 (torch path) differs from golden.gemm")

    def torch_path():
        with native.enabled(False):
            emulate_gemm(a, b, fmt)

    res = _alternate({"fp32": lambda: torch.matmul(a, b),
                      "emulate": lambda: emulate_gemm(a, b, fmt),
                      "torch_path": torch_path}, repeats)
    row = {"size": size, "format": fmt.name, "bit_exact": True}
    for clock, per in res.items():
        ratio, lo, hi = _spread([1.0 / r for r in per["emulate"][1]])   # throughput fraction
        row[clock] = {"fp32_s": per["fp32"][0], "emulate_s": per["emulate"][0],
                      "ratio": ratio, "ratio_q25": lo, "ratio_q75": hi,
                      "torch_path_s": per["torch_path"][0],
                      "torch_path_ratio": statistics.median(1.0 / r
                                                            for r in per["torch_path"][1])}
    row["ratio"] = row["cpu"]["ratio"]
    return row


class _SkippedGemm:
    """A backend whose GEMMs return zeros at once: what an HBFP step costs besides its GEMMs
    (im2col, col2im, autograd functions, FP32 glue)."""

    name = "skip"

    def gemm(self, a, b, fmt, seed):
        return torch.zeros(a.shape[0], b.shape[1])


def measure_step(model_name, fmt, steps, batch=64):
    register_backend("skip-gemm", lambda device: _SkippedGemm())
    torch.manual_seed(0)
    fp32 = build_model(model_name)
    models = {"fp32": fp32, "hbfp": convert(fp32, fmt),
              "torch_path": convert(fp32, fmt),
              "no_gemm": convert(fp32, fmt, backend="skip-gemm")}
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 1, 8, 8, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    losses = {}

    def stepper(name):
        model = models[name]
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step():
            with native.enabled(name != "torch_path"):
                loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            losses[name] = loss.item()
        return step

    res = _alternate({name: stepper(name) for name in models}, steps)
    if not all(math.isfinite(v) for v in losses.values()):
        raise SystemExit(f"{model_name}: a loss is not finite after the run: {losses}")
    row = {"model": model_name, "format": fmt.name, "batch": batch, "final_loss": losses}
    for clock, per in res.items():
        ratio, lo, hi = _spread(per["hbfp"][1])
        row[clock] = {"fp32_s": per["fp32"][0], "hbfp_s": per["hbfp"][0],
                      "no_gemm_s": per["no_gemm"][0], "ratio": ratio, "ratio_q25": lo,
                      "ratio_q75": hi, "no_gemm_ratio": statistics.median(per["no_gemm"][1]),
                      "torch_path_s": per["torch_path"][0],
                      "torch_path_ratio": statistics.median(per["torch_path"][1])}
    row["ratio"] = row["cpu"]["ratio"]
    return row


def _ms(t):
    return f"{t * 1e3:.2f} ms"


def _section(args, machine, gemms, steps, command):
    lines = [f"Command: `{command}`  ",
             f"Machine: {machine['cpus']} shared cores, {machine['machine']}, torch "
             f"{machine['torch']}, {machine['threads']} torch thread(s). Sides alternate "
             f"call by call ({args.repeats} rounds per GEMM size, {args.steps} training "
             f"steps); times are medians; a ratio is the median of the per-round ratios, "
             f"with the 25th-75th percentile range. CPU = process CPU time (the cost of the "
             f"computation, whatever else the shared cores run), wall = wall clock.", "",
             f"Emulate GEMM ({gemms[0]['format']}, checked bit for bit against `golden.gemm` "
             f"before timing) vs `torch.matmul` FP32. Ratio = FP32 time / emulate time "
             f"(throughput fraction); target >= {GEMM_TARGET}.", "",
             "| shape | FP32 matmul (CPU) | emulate GEMM (CPU) | ratio CPU [q25-q75] "
             "| ratio wall [q25-q75] | torch path (fused kernel off): ratio CPU "
             "| target met (CPU) |",
             "|---|---|---|---|---|---|---|"]
    for r in gemms:
        c, w = r["cpu"], r["wall"]
        lines.append(f"| {r['size']}³ | {_ms(c['fp32_s'])} | {_ms(c['emulate_s'])} "
                     f"| **{c['ratio']:.3f}** [{c['ratio_q25']:.3f}-{c['ratio_q75']:.3f}] "
                     f"| {w['ratio']:.3f} [{w['ratio_q25']:.3f}-{w['ratio_q75']:.3f}] "
                     f"| {c['torch_path_ratio']:.3f} "
                     f"| {'yes' if c['ratio'] >= GEMM_TARGET else 'no'} |")
    lines += ["", f"Training step (forward + backward + SGD, batch {steps[0]['batch']}, the "
              f"same batch every step) of the `hbfp-hw train` digits models, HBFP "
              f"({steps[0]['format']}, emulate) vs FP32. Ratio = HBFP time / FP32 time; "
              f"target <= {STEP_TARGET} for the CNN. \"GEMMs skipped\" is the converted model "
              f"with a backend whose GEMMs return zeros at once: the cost of everything but "
              f"the emulated GEMMs; \"torch path\" is HBFP with the fused kernel off.", "",
              "| model | FP32 step (CPU) | HBFP step (CPU) | ratio CPU [q25-q75] "
              "| ratio wall [q25-q75] | torch path: ratio CPU | GEMMs skipped: ratio CPU "
              "| target met (CPU) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in steps:
        c, w = r["cpu"], r["wall"]
        met = ("yes" if c["ratio"] <= STEP_TARGET else "no") if r["model"] == "cnn" else "-"
        lines.append(f"| {r['model']} | {_ms(c['fp32_s'])} | {_ms(c['hbfp_s'])} "
                     f"| **{c['ratio']:.2f}** [{c['ratio_q25']:.2f}-{c['ratio_q75']:.2f}] "
                     f"| {w['ratio']:.2f} [{w['ratio_q25']:.2f}-{w['ratio_q75']:.2f}] "
                     f"| {c['torch_path_ratio']:.2f} | {c['no_gemm_ratio']:.2f} | {met} |")
    lines += ["", _where_the_time_goes(gemms, steps)]
    return "\n".join(lines)


def _where_the_time_goes(gemms, steps):
    cnn = next(r for r in steps if r["model"] == "cnn")["cpu"]
    torch_path = ", ".join(f"{r['cpu']['torch_path_ratio']:.2f} at {r['size']}³" for r in gemms)
    text = [
        "Where the time goes. The emulated GEMM is one call of a fused C kernel",
        "(`hbfp_hw/torch/_fused.c`, compiled with the system's C compiler on first use and",
        "cached): per operand one pass for the block maxima (from the bit patterns) and one",
        "that quantizes (`clamp(round(x * 2**k)) * 2**-k`, scales from the exponent field)",
        "straight into the packed panels of a register-blocked micro-kernel (6x32 with",
        "AVX-512, 3x16 with AVX2). The micro-kernel keeps its tile of C in registers across",
        "all k-blocks: each k-block's exact block product is formed in a second set of",
        "registers and added to C with one FP32 addition, so the contract's sequential",
        "accumulation costs one vector add per k-block instead of a pass over memory. The",
        "remaining gap to `torch.matmul` is that extra add and register set (fewer",
        "accumulators in flight than oneDNN's kernel), the two quantization passes, and no",
        "cache blocking of K. The torch path, used where no C compiler exists, gives the same",
        f"bits at a throughput fraction of {torch_path}: there the sequential",
        "accumulation is a pass over C per k-block, and some 30 torch calls per GEMM come on",
        "top. The digits models are tiny (8x8 images, batch 64), so fixed costs dominate",
        "their steps: three GEMMs per layer, im2col/col2im for the convolutions (the FP32",
        "convolution is a single oneDNN kernel), autograd functions and FP32 glue; the",
        f"converted CNN with its GEMMs skipped already costs {cnn['no_gemm_ratio']:.2f}x FP32.",
        "Timings are noisy: the 2 cores are shared with other jobs, hence the CPU-time",
        "ratios and the quartile ranges."]
    return " ".join(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--sizes", default="256,512,1024")
    parser.add_argument("--format", default="bfp8")
    parser.add_argument("--steps", type=int, default=21)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    fmt = resolve_format(args.format)
    if not native.available():
        raise SystemExit("the fused C kernel of the emulate backend did not build (see the "
                         "warning above); this benchmark measures it")

    gemms = []
    for size in [int(s) for s in args.sizes.split(",")]:
        row = measure_gemm(size, fmt, args.repeats)
        gemms.append(row)
        c, w = row["cpu"], row["wall"]
        print(f"gemm {size:>5}^3 {row['format']:6} fp32 {_ms(c['fp32_s']):>10}  emulate "
              f"{_ms(c['emulate_s']):>10}  ratio cpu {c['ratio']:.3f} "
              f"[{c['ratio_q25']:.3f}-{c['ratio_q75']:.3f}]  wall {w['ratio']:.3f}  "
              f"torch path {c['torch_path_ratio']:.3f}", flush=True)
    steps = []
    for model_name in ("cnn", "mlp"):
        row = measure_step(model_name, fmt, args.steps)
        steps.append(row)
        c, w = row["cpu"], row["wall"]
        print(f"train step {model_name}: fp32 {_ms(c['fp32_s'])}  hbfp {_ms(c['hbfp_s'])}  "
              f"ratio cpu {c['ratio']:.2f} [{c['ratio_q25']:.2f}-{c['ratio_q75']:.2f}]  wall "
              f"{w['ratio']:.2f}  torch path {c['torch_path_ratio']:.2f}  gemms skipped "
              f"{c['no_gemm_ratio']:.2f}  final losses "
              f"{row['final_loss']}", flush=True)

    machine = {"python": platform.python_version(), "torch": torch.__version__,
               "cpus": os.cpu_count(), "machine": platform.machine(),
               "threads": torch.get_num_threads()}
    command = ".venv/bin/python bench/torch_overhead.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "gemm": gemms,
                                               "train_step": steps}, indent=2))
    if args.update_docs:
        update_section("torch_overhead", _section(args, machine, gemms, steps, command.strip()),
                       HEADING)
    return 0


if __name__ == "__main__":
    sys.exit(main())

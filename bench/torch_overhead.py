"""Benchmark: the cost of HBFP emulation in PyTorch, measured side by side with FP32.

Usage::

    .venv/bin/python bench/torch_overhead.py [--repeats 7] [--sizes 256,512,1024]
                                             [--steps 15] [--threads N] [--json PATH]
                                             [--update-docs]

In one run it records

1. the emulate GEMM (``hbfp_hw.torch.emulate.gemm``, bit-exact with ``golden.gemm``) against
   ``torch.matmul`` in FP32 at each size³, timed alternately; ``ratio = t(fp32) / t(emulate)``
   is the emulation's throughput as a fraction of FP32 (target >= 0.25);
2. the training step (forward, backward, SGD) of the digits CNN and MLP of ``hbfp-hw train``
   (batch 64), HBFP (bfp8, emulate) against FP32, alternating steps;
   ``ratio = t(HBFP) / t(FP32)`` (target <= 3 for the CNN).

Both sides run alternately, so they see the same machine load; times are medians and each
ratio is the median of the per-pair ratios. ``--update-docs``
rewrites the torch_overhead section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from hbfp_hw.formats import resolve_format
from hbfp_hw.torch import convert
from hbfp_hw.torch.emulate import gemm as emulate_gemm
from hbfp_hw.torch.train import build_model

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
BEGIN, END = "<!-- torch_overhead:begin -->", "<!-- torch_overhead:end -->"
GEMM_TARGET, STEP_TARGET = 0.25, 3.0


def _alternate(f_ref, f_test, repeats):
    """Median times of ``f_ref`` and ``f_test`` run alternately, and the median of the
    per-pair ratios ``t_test / t_ref`` (robust to load that changes during the run)."""
    f_ref()
    f_test()                                     # warm-up
    t_ref, t_test = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f_ref()
        t1 = time.perf_counter()
        f_test()
        t2 = time.perf_counter()
        t_ref.append(t1 - t0)
        t_test.append(t2 - t1)
    ratio = statistics.median(b / a for a, b in zip(t_ref, t_test))
    return statistics.median(t_ref), statistics.median(t_test), ratio


def measure_gemm(size, fmt, repeats):
    gen = torch.Generator().manual_seed(size)
    a = torch.randn(size, size, generator=gen)
    b = torch.randn(size, size, generator=gen)
    t_fp32, t_emu, slowdown = _alternate(lambda: torch.matmul(a, b),
                                         lambda: emulate_gemm(a, b, fmt), repeats)
    return {"size": size, "format": fmt.name, "fp32_s": t_fp32, "emulate_s": t_emu,
            "ratio": 1.0 / slowdown, "emulate_gflops": 2 * size ** 3 / t_emu / 1e9}


def measure_step(model_name, fmt, steps, batch=64):
    torch.manual_seed(0)
    fp32 = build_model(model_name)
    hbfp = convert(fp32, fmt)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 1, 8, 8, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)

    def stepper(model):
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step():
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    t_fp32, t_hbfp, ratio = _alternate(stepper(fp32), stepper(hbfp), steps)
    return {"model": model_name, "format": fmt.name, "batch": batch, "fp32_s": t_fp32,
            "hbfp_s": t_hbfp, "ratio": ratio}


def _section(args, machine, gemms, steps, command):
    lines = [f"Command: `{command}`  ",
             f"Machine: {machine['cpus']} shared cores, {machine['machine']}, torch "
             f"{machine['torch']}, {machine['threads']} torch thread(s); medians over "
             f"{args.repeats} alternating GEMM runs and {args.steps} alternating training "
             f"steps (ratio = median of the per-pair ratios).", "",
             f"Emulate GEMM ({gemms[0]['format']}, bit-exact with `golden.gemm`) vs "
             f"`torch.matmul` FP32. Ratio = FP32 time / emulate time (throughput fraction); "
             f"target >= {GEMM_TARGET}.", "",
             "| shape | torch.matmul FP32 | emulate GEMM | ratio | target met |",
             "|---|---|---|---|---|"]
    for r in gemms:
        lines.append(f"| {r['size']}³ | {r['fp32_s'] * 1e3:.2f} ms | {r['emulate_s'] * 1e3:.2f} ms "
                     f"| {r['ratio']:.3f} | {'yes' if r['ratio'] >= GEMM_TARGET else 'no'} |")
    lines += ["", f"Training step (forward + backward + SGD, batch {steps[0]['batch']}) of the "
              f"`hbfp-hw train` digits models, HBFP ({steps[0]['format']}, emulate) vs FP32. "
              f"Ratio = HBFP time / FP32 time; target <= {STEP_TARGET} for the CNN.", "",
              "| model | FP32 step | HBFP step | ratio | target met |", "|---|---|---|---|---|"]
    for r in steps:
        met = ("yes" if r["ratio"] <= STEP_TARGET else "no") if r["model"] == "cnn" else "-"
        lines.append(f"| {r['model']} | {r['fp32_s'] * 1e3:.2f} ms | {r['hbfp_s'] * 1e3:.2f} ms "
                     f"| {r['ratio']:.2f} | {met} |")
    lines += ["", "Where the time goes: the emulation is a sequence of eager torch passes. Each "
              "operand is read about six times to quantize it (bit mask, block max, scale, "
              "round, clamp, dequantize), the block products of every k-block are written and "
              "read back once for the sequential FP32 accumulation (`index_add_` over the "
              "k-block axis), and each GEMM has a fixed cost of some 0.2-0.3 ms of Python and "
              "small-op overhead. The digits models are tiny (an FP32 MLP step takes well "
              "under a millisecond, the FP32 convolutions are single fused oneDNN kernels on "
              "8x8 images), so the fixed cost and the im2col passes dominate their HBFP steps. "
              "Fusing the quantizer into one kernel (or running the GEMMs on the device "
              "backend) is what closes the gap; the numbers are also noisy, the 2 cores being "
              "shared with other jobs."]
    return "\n".join(lines)


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

    gemms = []
    for size in [int(s) for s in args.sizes.split(",")]:
        row = measure_gemm(size, fmt, args.repeats)
        gemms.append(row)
        print(f"gemm {size:>5}^3 {row['format']:6} fp32 {row['fp32_s'] * 1e3:8.2f} ms  "
              f"emulate {row['emulate_s'] * 1e3:8.2f} ms  ratio {row['ratio']:.3f}", flush=True)
    steps = []
    for model_name in ("cnn", "mlp"):
        row = measure_step(model_name, fmt, args.steps)
        steps.append(row)
        print(f"train step {model_name}: fp32 {row['fp32_s'] * 1e3:7.2f} ms  hbfp "
              f"{row['hbfp_s'] * 1e3:7.2f} ms  ratio {row['ratio']:.2f}", flush=True)

    machine = {"python": platform.python_version(), "torch": torch.__version__,
               "cpus": os.cpu_count(), "machine": platform.machine(),
               "threads": torch.get_num_threads()}
    command = ".venv/bin/python bench/torch_overhead.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "gemm": gemms,
                                               "train_step": steps}, indent=2))
    if args.update_docs:
        text = DOC.read_text()
        if BEGIN not in text:
            text = text.rstrip("\n") + (
                "\n\n## PyTorch emulation overhead (`bench/torch_overhead.py`)\n\n"
                f"{BEGIN}\n{END}\n")
        start, stop = text.index(BEGIN) + len(BEGIN), text.index(END)
        section = _section(args, machine, gemms, steps, command.strip())
        DOC.write_text(text[:start] + "\n" + section + "\n" + text[stop:])
        print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

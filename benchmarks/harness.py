"""What every whole-run benchmark shares: the machine's measured matmul peak, timed child processes with their peak
memory, and per-step figures from the difference of a short and a long run.

Each method under test is a command line (a child process: litbert's `train.py fit ...`, the Hugging Face Trainer,
a plain PyTorch loop) that takes a number of optimiser steps. `compare` runs every method for `short` and for `long`
steps, alternating the methods (A short, B short, A long, B long, ... repeated) so that load from elsewhere hits all of
them alike, and takes per-step time = (T_long - T_short) / (long - short): start-up (imports, model loading,
tokenization, caching, `torch.compile`) cancels. Peak memory is the long run's peak RSS (`os.wait4` of the child,
which includes its own children, e.g. dataloader workers).

MFU: model FLOPs of the useful work (each example's non-padding tokens, the training factor 3 for a trained model and 1
for a frozen teacher; `models.flops`) per second, divided by the fp32 matrix-multiply rate this machine reaches
(`matmul_peak_flops`, measured at the start of the benchmark on large square products). The numerator is the same
for every method on the same data, so the ratio of two MFUs is their speed ratio.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]


def matmul_peak_flops(size: int = 2048, repeats: int = 10, rounds: int = 3, device: str = "cpu",
                      dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of a [size, size] @ [size, size] product, best of `rounds` timings of `repeats` products."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(rounds):
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync()
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * size ** 3 / best


@dataclass
class RunResult:
    wall_s: float
    peak_rss_mb: float
    output: str


def run_timed(cmd: list[str], env: dict | None = None, cwd: Path = REPO) -> RunResult:
    """Run `cmd` to the end; wall time and peak RSS of the child (and its children). Fails loudly on a non-zero exit."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read()
    if proc.returncode != 0:
        sys.exit(f"benchmark run failed (exit {proc.returncode}): {' '.join(cmd)}\n{output[-4000:]}")
    return RunResult(wall_s=wall, peak_rss_mb=usage.ru_maxrss / 1024, output=output)


@dataclass
class Method:
    """One way of doing the work: `command(steps)` is the command line of a run of `steps` optimiser steps."""
    name: str
    command: Callable[[int], list[str]]
    env: dict = field(default_factory=dict)


@dataclass
class Measured:
    name: str
    step_s: float          # median over repeats of (T_long - T_short) / (long - short)
    step_s_all: list[float]
    peak_rss_mb: float     # of the long runs, the largest
    startup_s: float       # T_short - short * step_s: what a run costs beyond its steps


def compare(methods: list[Method], short: int, long: int, repeats: int = 1, verbose: bool = True) -> list[Measured]:
    """Time every method at `short` and `long` steps, alternating methods, `repeats` times; see the module doc."""
    if long <= short:
        raise ValueError(f"long ({long}) must exceed short ({short})")
    runs: dict[tuple[str, int], list[RunResult]] = {}
    for r in range(repeats):
        for steps in (short, long):
            for method in methods:
                result = run_timed(method.command(steps), env=method.env)
                runs.setdefault((method.name, steps), []).append(result)
                if verbose:
                    print(f"  [{r + 1}/{repeats}] {method.name:<28} {steps:>5} steps  {result.wall_s:8.1f} s  "
                          f"peak RSS {result.peak_rss_mb:7.0f} MB", flush=True)
    measured = []
    for method in methods:
        shorts, longs = runs[(method.name, short)], runs[(method.name, long)]
        per_step = [(b.wall_s - a.wall_s) / (long - short) for a, b in zip(shorts, longs)]
        step_s = statistics.median(per_step)
        startup = statistics.median(a.wall_s for a in shorts) - short * step_s
        measured.append(Measured(method.name, step_s, per_step, max(b.peak_rss_mb for b in longs), startup))
    return measured


def print_table(measured: list[Measured], samples_per_step: float, tokens_per_sample: float,
                flops_per_sample: float, peak_flops: float, baseline: str | None = None) -> None:
    """A markdown table: s/step, samples/s, non-padding tokens/s, MFU, peak RSS, start-up and speed ratios."""
    base = {m.name: m for m in measured}.get(baseline) if baseline else None
    print("| method | s/step | samples/s | tokens/s | MFU | peak RSS | start-up | speed vs " + (baseline or "-") + " |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for m in measured:
        samples = samples_per_step / m.step_s
        mfu = samples * flops_per_sample / peak_flops
        ratio = f"{base.step_s / m.step_s:.2f}x" if base else "-"
        print(f"| {m.name} | {m.step_s:.3f} | {samples:.1f} | {samples * tokens_per_sample:,.0f} | {100 * mfu:.1f}% "
              f"| {m.peak_rss_mb / 1024:.2f} GB | {m.startup_s:.0f} s | {ratio} |")


def machine_line(peak_flops: float) -> str:
    """One line naming the machine: CPU model (or GPU), threads, torch version and the measured matmul peak."""
    if torch.cuda.is_available():
        chip = torch.cuda.get_device_name()
    else:
        chip = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), "cpu")
    return (f"machine: {chip}, {torch.get_num_threads()} threads, torch {torch.__version__}; measured fp32 matmul "
            f"peak {peak_flops / 1e9:.0f} GFLOP/s")

"""Benchmark: where one training step of a shipped config goes, against what the machine can do.

Runs `train.py fit --config <config>` twice in child processes over the same window of optimiser steps (the batch
order is a pure function of the seed): once under `torch.profiler` (`StepProfile`: every operator's own CPU time,
and the FLOPs of the matrix products) and once without it (`StepProfile(profile=False)`), for the true step time,
since the profiler slows the many small operators. It prints the profiled time by kind of work (matrix products,
the optimiser, casts and copies, zero fills, random draws, the other operators) and sets a floor of the step
against it: the matrix products at the measured matmul peak of the run's dtype (`harness.device_peak_flops`) plus
the optimiser's pass over its state as measured (fused AdamW reads the weight, the gradient and the two moments and
writes three of them back, 28 bytes per fp32 parameter; its rate is printed beside the machine's measured copy rate
for scale).

The default is the fine-tuning config of the README's "Speed" table (SST-2, MiniLM-L6, batch 32), where the steps
10-210 are the ones `finetune_glue.py` times; `--start 300` looks past the first uses of most batch lengths, which
cost more on a CPU (benchmarks/README.md). CPU only (the runs see no GPU): on a GPU an operator's CPU time is its
launch, not its work.

    DATA_DIR=../shared/data python benchmarks/step_breakdown.py --start 10 --steps 200
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import lightning.pytorch as pl
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import (REPO, child_env, device_peak_flops, lightning_precision, machine_line,  # noqa: E402
                                periodic_work_past, run_dtype, run_timed)
from datamodules.atomic import atomic_write_text  # noqa: E402

# Operator names of each kind of work (torch.profiler's keys); anything else is "other operators".
KINDS = {
    "matrix products": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm"),
    "optimiser": ("aten::_fused_adamw_", "aten::_fused_adam_"),
    "casts and copies": ("aten::copy_", "aten::_to_copy", "aten::clone"),
    "zero fills": ("aten::fill_", "aten::zero_"),
    "random draws (dropout)": ("aten::random_", "aten::bernoulli_", "aten::uniform_", "aten::native_dropout"),
}
ADAMW_BYTES_PER_PARAMETER = 28  # fp32: reads weight, gradient, both moments (16 B); writes weight and moments (12 B)


def kind_of(operator: str) -> str:
    """The kind of work an operator name belongs to (`KINDS`; the optimiser's `_foreach_*` ops count there too)."""
    if operator.startswith("aten::_foreach_"):
        return "optimiser"
    return next((kind for kind, names in KINDS.items() if operator in names), "other operators")


class StepProfile(pl.Callback):
    """Times (and with `profile`, profiles) the batches [start, start + steps) of a fit's first epoch (optimiser steps
    without gradient accumulation); rank 0 writes
    {"steps", "wall_s", "minor_faults", "trainable_parameters", "operators": {name: [self CPU us, calls, FLOPs]}}
    to `output` (minor page faults of the process during the window: memory taken fresh from the kernel).

    Args:
        start: index of the first batch of the window (the steps before it warm up).
        steps: batches in the window.
        output: the JSON file to write when the window ends.
        profile: run the window under torch.profiler (False: time it only).
    """

    def __init__(self, start: int, steps: int, output: str, profile: bool = True):
        self.start, self.steps, self.output, self.profile = start, steps, output, profile
        self._profiler = None
        self._began = 0.0
        self._faults = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.start:
            if self.profile:
                self._profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                        with_flops=True)
                self._profiler.__enter__()
            self._began = time.perf_counter()
            self._faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx != self.start + self.steps - 1:
            return
        wall = time.perf_counter() - self._began
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self._faults
        operators = {}
        if self._profiler is not None:
            self._profiler.__exit__(None, None, None)
            for event in self._profiler.key_averages():
                operators[event.key] = [event.self_cpu_time_total, event.count, event.flops or 0]
        if trainer.is_global_zero:
            trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
            atomic_write_text(self.output, json.dumps({"steps": self.steps, "wall_s": wall, "minor_faults": faults,
                                                       "operators": operators, "trainable_parameters": trainable}))


def copy_bandwidth(megabytes: int = 256, rounds: int = 5) -> float:
    """Bytes per second moved by the best of `rounds` copies of a `megabytes` fp32 tensor (read + write counted)."""
    src = torch.ones(megabytes * 2 ** 20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best


def by_kind(operators: dict[str, list[float]], steps: int) -> dict[str, dict[str, float]]:
    """{kind: {"ms": self CPU ms per step, "flops": FLOPs per step}} from `StepProfile`'s operator table."""
    kinds: dict[str, dict[str, float]] = defaultdict(lambda: {"ms": 0.0, "flops": 0.0})
    for name, (self_us, _calls, flops) in operators.items():
        if not name.startswith("aten::"):  # record_function ranges (Optimizer.step#...): their ops are counted
            continue
        kinds[kind_of(name)]["ms"] += self_us / 1e3 / steps
        kinds[kind_of(name)]["flops"] += flops / steps
    return dict(kinds)


def report(profiled: dict, timed: dict, peak_flops: float, bandwidth: float, dtype: str) -> str:
    """The text `main` prints: the unprofiled step, each kind's profiled ms per step and share, and the floor."""
    steps = profiled["steps"]
    kinds = by_kind(profiled["operators"], steps)
    total = sum(k["ms"] for k in kinds.values())
    step_ms = 1e3 * timed["wall_s"] / timed["steps"]
    lines = [f"step time without the profiler: {step_ms:.1f} ms; under it {1e3 * profiled['wall_s'] / steps:.1f} ms, "
             f"of which the operators' own time {total:.1f} ms (the rest: Python, the autograd engine, the profiler)",
             f"minor page faults per step: {timed['minor_faults'] / timed['steps']:,.0f} without the profiler, "
             f"{profiled['minor_faults'] / steps:,.0f} under it (the profiler's own memory can push large tensors "
             f"onto fresh pages, which the zero fills then pay for)",
             "", "| work | ms/step (profiled) | share of the operators | note |", "|---|---:|---:|---|"]
    matmul = kinds.get("matrix products", {"ms": 0.0, "flops": 0.0})
    optimiser_ms = kinds.get("optimiser", {"ms": 0.0})["ms"]
    mm_floor = 1e3 * matmul["flops"] / peak_flops
    optimiser_bytes = ADAMW_BYTES_PER_PARAMETER * profiled["trainable_parameters"]
    notes = {"matrix products": f"{matmul['flops'] / 1e9:.1f} GFLOP: {mm_floor:.1f} ms at the {dtype} peak "
                                f"({100 * mm_floor / max(matmul['ms'], 1e-9):.0f}% of peak)",
             "optimiser": f"{profiled['trainable_parameters'] / 1e6:.1f}M parameters x {ADAMW_BYTES_PER_PARAMETER} B: "
                          f"{optimiser_bytes / max(optimiser_ms, 1e-9) / 1e6:.1f} GB/s (copy bandwidth "
                          f"{bandwidth / 1e9:.1f} GB/s)"}
    for name in [*KINDS, "other operators"]:
        if name in kinds:
            lines.append(f"| {name} | {kinds[name]['ms']:.1f} | {100 * kinds[name]['ms'] / total:.0f}% | "
                         f"{notes.get(name, '')} |")
    floor = mm_floor + optimiser_ms
    lines += ["", f"floor (the matrix products at peak + the optimiser's pass as measured): "
                  f"{floor:.1f} ms, {100 * floor / step_ms:.0f}% of the unprofiled step; the rest "
                  f"({step_ms - floor:.1f} ms) is element-wise work, casts, fills, random draws and the Python and "
                  f"autograd overhead"]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs/finetune/glue.yaml"), help="the config to run")
    p.add_argument("--start", type=int, default=10, help="first batch of the window (those before warm up)")
    p.add_argument("--steps", type=int, default=200, help="batches in the window")
    p.add_argument("--data_dir", default=os.environ.get("DATA_DIR", "data"), help="the data folder (DATA_DIR)")
    args = p.parse_args()
    if not Path(args.config).is_file():
        sys.exit(f"--config {args.config}: no such file (expected a YAML config such as configs/finetune/glue.yaml)")
    dtype = run_dtype("cpu")
    peak = device_peak_flops("cpu", [dtype])
    bandwidth = copy_bandwidth()
    print(machine_line(peak, "cpu") + f"; copy bandwidth {bandwidth / 1e9:.1f} GB/s", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-breakdown-") as tmp:
        env = {**child_env(Path(tmp), "cpu"), "DATA_DIR": str(Path(args.data_dir).resolve())}
        # validation and checkpoints every N steps moved past the window (the config's own list, restated whole)
        periodic, moved = periodic_work_past(args.config, args.start + args.steps)
        configs = [Path(args.config).resolve()]
        if moved:
            configs.append(Path(tmp) / "periodic.yaml")
            configs[-1].write_text(yaml.safe_dump(periodic))
            print(f"  moved past the window: {', '.join(moved)}", flush=True)
        results = {}
        for profile in (False, True):
            output = Path(tmp) / f"window-{profile}.json"
            window = Path(tmp) / f"window-{profile}.yaml"
            init_args = {"start": args.start, "steps": args.steps, "output": str(output), "profile": profile}
            callback = {"class_path": "benchmarks.step_breakdown.StepProfile", "init_args": init_args}
            window.write_text(yaml.safe_dump({"trainer": {"max_steps": args.start + args.steps,
                                                          "callbacks+": [callback]}}))
            workdir = Path(tmp) / f"run-{profile}"
            workdir.mkdir()
            run_timed([sys.executable, str(REPO / "train.py"), "fit",
                       *[arg for config in [*configs, window] for arg in ("--config", str(config))],
                       "--trainer.default_root_dir", "root", *lightning_precision(dtype)], env=env, cwd=workdir)
            if not output.is_file():  # the run ended before the window did (batch_idx restarts each epoch)
                sys.exit(f"--start {args.start} --steps {args.steps}: the run ended before batch "
                         f"{args.start + args.steps - 1} of its first epoch; choose a window inside the first epoch")
            results[profile] = json.loads(output.read_text())
            print(f"  {'profiled' if profile else 'timed'} run: steps {args.start}..{args.start + args.steps} done",
                  flush=True)
    print(f"\n{Path(args.config).name}, steps {args.start}..{args.start + args.steps}, {dtype}\n")
    print(report(results[True], results[False], peak[dtype], bandwidth, dtype))


if __name__ == "__main__":
    main()

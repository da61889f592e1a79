"""What every whole-run benchmark shares: the machine's measured matmul peak, timed child processes with their peak
memory, and per-step figures from the difference of a short and a long run.

Each method under test is a command line (a child process: litbert's `train.py fit ...`, the Hugging Face Trainer, a
plain PyTorch loop) that takes a number of optimiser steps. `compare` runs every method for `short` and for `long`
steps, alternating the methods (A short, B short, A long, B long), in the reverse order every second repeat (B short,
A short, B long, A long), so that load from elsewhere, and a machine that slows or speeds up over the session (a
linear drift cancels over each pair of repeats), hits all of them alike, and takes per-step time = (T_long - T_short)
/ (long - short): start-up (imports, model loading, tokenization, caching, `torch.compile`) cancels. Peak memory is
the long run's peak RSS (`os.wait4` of the child, which also covers the descendants it waited for, e.g. dataloader
workers: the largest single process, not their sum). The same difference of the child's CPU time (user + system) gives
core-seconds per step, a hint on a shared machine: a process that waits for a core loses wall time without CPU time,
but its other threads may spin at a barrier meanwhile (OpenMP), which counts; neither figure is clean there, so final
figures come from an idle machine.

Every run starts in a fresh, empty working directory (removed afterwards), so that no run sees another's checkpoints
or logs; commands name the repository's files by absolute path (`REPO`). A method may say how many optimiser steps a
run really did (`Method.steps_done`, e.g. `lightning_steps_done`): a run that stopped early (a time cap, a diverged
loss) would otherwise pass for a fast one. Before the timed runs, each method runs once untimed (`warmup`): caches that
the first run fills (tokenized data, compiled kernels) would otherwise land in one timed run and bias the difference.
`child_env` points those caches into the benchmark's own folder, so every benchmark starts from the same state.

MFU: model FLOPs of the useful work (each example's non-padding tokens, the training factor 3 for a trained model and 1
for a frozen teacher; `models.flops`) per second, divided by the matrix-multiply rate this machine reaches in the
dtype each method computes in (`device_peak_flops`, measured at the start of the benchmark on large square products):
bf16 for a method under bf16 autocast, fp32 otherwise. Where the device multiplies bf16 natively (a GPU from Ampere on,
a CPU with AVX512-BF16 or AMX: `lightning_modules.precision.native_bf16`), litbert runs bf16-mixed (train.py's
default) and each reference runs at its best in bf16 too, beside the Hugging Face Trainer's fp32 defaults; `--fp32`
puts every method in fp32. The numerator is the same for every method on the same data, so the ratio of two MFUs in
the same dtype is their speed ratio.

Each benchmark also runs its best reference a second time as `<name>_malloc` (`with_litbert_malloc`): with glibc's
malloc set from the process start as litbert sets it in its own (`callbacks.cpu_malloc`, through `GLIBC_TUNABLES`).
That is not an option of the reference, but it is litbert's one CPU default that is about memory rather than the
computation, so the twin shows how much of litbert's lead it accounts for.
"""
from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from lightning_modules.precision import native_bf16

REPO = Path(__file__).resolve().parents[1]


def add_run_options(parser, short: int, long: int, data_help: str = "the data folder (default: $DATA_DIR)") -> None:
    """The options every whole-run benchmark takes: --short/--long optimiser steps of the two runs, --repeats,
    --data_dir (default $DATA_DIR) and --device (cuda when there is one)."""
    parser.add_argument("--short", type=int, default=short, help="optimiser steps of the short runs")
    parser.add_argument("--long", type=int, default=long, help="optimiser steps of the long runs")
    parser.add_argument("--repeats", type=int, default=1, help="short/long pairs per method (the median is reported)")
    parser.add_argument("--data_dir", default=os.environ.get("DATA_DIR", "data"), help=data_help)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--fp32", action="store_true", help="every method in fp32, as on hardware without native bf16 "
                        "(default: litbert's bf16-mixed and the references in bf16 where the device has it)")


def run_dtype(device: str, fp32: bool = False) -> str:
    """The dtype litbert computes in on `device` (train.py's default precision, `--trainer.precision` passed on
    explicitly) and the references at their best: "bf16" where the device multiplies bf16 natively, unless `fp32`."""
    return "bf16" if native_bf16(device) and not fp32 else "fp32"


def lightning_precision(dtype: str) -> list[str]:
    """train.py's option for computing in `dtype` ("bf16" or "fp32")."""
    return ["--trainer.precision", "bf16-mixed" if dtype == "bf16" else "32-true"]


def reference_precision(dtype: str) -> list[str]:
    """The reference scripts' option for computing in `dtype`: `--bf16` (autocast, the Trainer's `bf16=True`)."""
    return ["--bf16"] if dtype == "bf16" else []


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


def device_peak_flops(device: str, dtypes: list[str]) -> dict[str, float]:
    """{dtype: FLOP/s} of the matmul peak on `device` for each of `dtypes` ("fp32", "bf16"), on products large enough
    to fill the chip (8192 on a GPU, 2048 on a CPU)."""
    size = 8192 if device.startswith("cuda") else 2048
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}
    return {dtype: matmul_peak_flops(size=size, device=device, dtype=torch_dtype[dtype])
            for dtype in dict.fromkeys(dtypes)}


def child_env(cache_root: Path, device: str) -> dict:
    """Environment for the benchmarked runs: litbert's and `datasets`' caches under `cache_root` (fresh for each
    benchmark, filled by the warm-up runs), the hub offline (a network probe would add its time-out to one run), and
    no GPU visible when `device` is cpu (both litbert and the Trainer pick the GPU, and bf16, whenever they see one)."""
    env = {"LITBERT_CACHE": str(cache_root / "litbert"), "HF_DATASETS_CACHE": str(cache_root / "datasets"),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if not device.startswith("cuda"):
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


@dataclass
class RunResult:
    wall_s: float
    peak_rss_mb: float
    output: str
    cpu_s: float = 0.0     # user + system CPU time of the child and the descendants it waited for


def run_timed(cmd: list[str], env: dict | None = None, cwd: Path = REPO) -> RunResult:
    """Run `cmd` to the end; wall time and peak RSS of the child (and its children). Fails loudly on a non-zero exit."""
    # The repository first on the path, keeping the caller's PYTHONPATH after it.
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    full_env = {**os.environ, "PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
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
    return RunResult(wall_s=wall, peak_rss_mb=usage.ru_maxrss / 1024, output=output,
                     cpu_s=usage.ru_utime + usage.ru_stime)


def lightning_steps_done(workdir: Path, output: str) -> int:
    """Optimiser steps of a Lightning run that stopped at its `max_steps` (Lightning then prints "`Trainer.fit`
    stopped: `max_steps=N` reached.", N being the global step), -1 if it stopped otherwise (time cap, early stop)."""
    found = re.findall(r"`Trainer.fit` stopped: `max_steps=(\d+)` reached", output)
    return int(found[-1]) if found else -1


def periodic_work_past(config_path: str | Path, steps: int) -> tuple[dict, list[str]]:
    """An override for a Lightning config (a second `--config`) that moves its step-periodic work past `steps`
    optimiser steps, for a reference that does none (the Trainer with eval/save strategy "no"): validation every
    `val_check_interval` steps (an int; a float is per epoch) and `ModelCheckpoint(every_n_train_steps=...)`. The
    callbacks list is restated whole (a later config replaces a list). What runs once, at the start or the end (the
    sanity check, a final validation, the last checkpoint), stays: start-up and teardown cancel. Returns (override,
    what was moved)."""
    import copy

    import yaml

    trainer = yaml.safe_load(Path(config_path).read_text()).get("trainer") or {}
    override, moved = {}, []
    interval = trainer.get("val_check_interval")
    if isinstance(interval, int) and not isinstance(interval, bool) and interval <= steps:
        override["val_check_interval"] = steps + 1
        moved.append(f"validation every {interval} steps")
    callbacks = copy.deepcopy(trainer.get("callbacks") or [])
    for callback in callbacks:
        init_args = callback.get("init_args") or {}
        every = init_args.get("every_n_train_steps")
        if str(callback.get("class_path", "")).endswith("ModelCheckpoint") and every and every <= steps:
            init_args["every_n_train_steps"] = steps + 1
            override["callbacks"] = callbacks
            moved.append(f"checkpoints every {every} steps")
    return ({"trainer": override} if override else {}), moved


def reported_steps_done(workdir: Path, output: str) -> int:
    """Optimiser steps a run printed as `optimizer_steps=N` (the reference scripts print the Trainer's global step),
    -1 if it did not."""
    found = re.findall(r"^optimizer_steps=(\d+)$", output, flags=re.MULTILINE)
    return int(found[-1]) if found else -1


@dataclass
class Method:
    """One way of doing the work: `command(steps)` is the command line of a run of `steps` optimiser steps, run in a
    fresh empty working directory; `steps_done(workdir, output)`, if given, says how many steps the run really did."""
    name: str
    command: Callable[[int], list[str]]
    env: dict = field(default_factory=dict)
    steps_done: Callable[[Path, str], int] | None = None
    dtype: str = "fp32"    # what its matrix products compute in: "fp32", or "bf16" under autocast


def with_litbert_malloc(method: Method) -> Method:
    """`method` again as `<name>_malloc`, its process started with litbert's two process settings: `GLIBC_TUNABLES`
    set to its malloc thresholds (`callbacks.cpu_malloc.glibc_tunables`) and oneDNN's kernel-cache capacity
    (`callbacks.cpu_kernel_cache`; the twins of outputs before commit 90ecb88 had the malloc setting alone)."""
    from callbacks.cpu_kernel_cache import CAPACITY, CAPACITY_VARIABLE
    from callbacks.cpu_malloc import glibc_tunables

    settings = {"GLIBC_TUNABLES": glibc_tunables(), CAPACITY_VARIABLE: str(CAPACITY)}
    return replace(method, name=f"{method.name}_malloc", env={**method.env, **settings})


def run_method(method: Method, steps: int) -> RunResult:
    """One timed run of `method` for `steps` steps in a fresh temporary directory; fails loudly if it did not do
    them (`Method.steps_done`)."""
    cmd = method.command(steps)
    with tempfile.TemporaryDirectory(prefix=f"bench-{method.name}-") as workdir:
        result = run_timed(cmd, env=method.env, cwd=Path(workdir))
        if method.steps_done is not None:
            done = method.steps_done(Path(workdir), result.output)
            if done != steps:
                sys.exit(f"benchmark run {method.name} did {done} optimiser steps, not {steps} (-1: not found; a "
                         f"time cap or an early stop?): {' '.join(cmd)}\n{result.output[-4000:]}")
    return result


@dataclass
class Measured:
    name: str
    step_s: float          # median over repeats of (T_long - T_short) / (long - short)
    step_s_all: list[float]
    peak_rss_mb: float     # of the long runs, the largest
    startup_s: float       # T_short - short * step_s: what a run costs beyond its steps
    cpu_step_s: float = 0.0  # the same difference of CPU time: what a step costs in core-seconds
    dtype: str = "fp32"


def compare(methods: list[Method], short: int, long: int, repeats: int = 1, verbose: bool = True,
            warmup: bool = True) -> list[Measured]:
    """Time every method at `short` and `long` steps, alternating methods, `repeats` times, after one untimed run of
    each at `short` steps (`warmup`); see the module doc."""
    if long <= short:
        raise ValueError(f"long ({long}) must exceed short ({short})")
    for method in methods if warmup else []:
        result = run_method(method, short)
        if verbose:
            print(f"  [warm-up] {method.name:<28} {short:>5} steps  {result.wall_s:8.1f} s (untimed)", flush=True)
    runs: dict[tuple[str, int], list[RunResult]] = {}
    for r in range(repeats):
        order = methods if r % 2 == 0 else methods[::-1]  # A B, then B A: a drift over the session hits both alike
        for steps in (short, long):
            for method in order:
                result = run_method(method, steps)
                runs.setdefault((method.name, steps), []).append(result)
                if verbose:
                    print(f"  [{r + 1}/{repeats}] {method.name:<28} {steps:>5} steps  {result.wall_s:8.1f} s  "
                          f"CPU {result.cpu_s:8.1f} s  peak RSS {result.peak_rss_mb:7.0f} MB", flush=True)
    measured = []
    for method in methods:
        shorts, longs = runs[(method.name, short)], runs[(method.name, long)]
        per_step = [(b.wall_s - a.wall_s) / (long - short) for a, b in zip(shorts, longs)]
        step_s = statistics.median(per_step)
        startup = statistics.median(a.wall_s for a in shorts) - short * step_s
        cpu_step = statistics.median((b.cpu_s - a.cpu_s) / (long - short) for a, b in zip(shorts, longs))
        measured.append(Measured(method.name, step_s, per_step, max(b.peak_rss_mb for b in longs), startup, cpu_step,
                                 method.dtype))
    return measured


def print_table(measured: list[Measured], samples_per_step: float, tokens_per_sample: float,
                flops_per_sample: float, peak_flops: dict[str, float], baseline: str | list[str] | None = None) -> None:
    """A markdown table: precision, s/step, samples/s, non-padding tokens/s, MFU (against the peak of the method's
    dtype), CPU s/step, peak RSS, start-up, and one speed-ratio column per baseline method (its s/step over the
    row's: above 1 is faster than the baseline).

    CPU s/step (core-seconds): on an idle machine about threads x s/step; far from that, other processes held the
    cores during the runs (see the module doc)."""
    by_name = {m.name: m for m in measured}
    baselines = [baseline] if isinstance(baseline, str) else list(baseline or [])
    ratio_heads = "".join(f" speed vs {b} |" for b in baselines)
    print("| method | precision | s/step | samples/s | tokens/s | MFU | CPU s/step | peak RSS | start-up |"
          + ratio_heads)
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(baselines))
    for m in measured:
        samples = samples_per_step / m.step_s
        mfu = samples * flops_per_sample / peak_flops[m.dtype]
        ratios = "".join(f" {by_name[b].step_s / m.step_s:.2f}x |" for b in baselines)
        print(f"| {m.name} | {m.dtype} | {m.step_s:.3f} | {samples:.1f} | {samples * tokens_per_sample:,.0f} | "
              f"{100 * mfu:.1f}% | {m.cpu_step_s:.3f} | {m.peak_rss_mb / 1024:.2f} GB | {m.startup_s:.0f} s |{ratios}")


def print_whole_runs(measured: list[Measured], epochs: int, examples: int, tokens_per_example: float,
                     flops_per_sample: float, peak: dict[str, float], baseline: str) -> None:
    """The `epochs`-epoch run of each method (`measured` per epoch: a "step" of one epoch of `examples`), start-up
    and caching included (start-up + epochs x per-epoch time: the long runs' wall time for one repeat)."""
    totals = {m.name: m.startup_s + epochs * m.step_s for m in measured}
    print(f"\nWhole {epochs}-epoch runs, start-up included:\n")
    print(f"| method | precision | wall | samples/s | tokens/s | MFU | speed vs {baseline} |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for m in measured:
        samples = examples * epochs / totals[m.name]
        print(f"| {m.name} | {m.dtype} | {totals[m.name]:.1f} s | {samples:.1f} | {samples * tokens_per_example:,.0f} "
              f"| {100 * samples * flops_per_sample / peak[m.dtype]:.1f}% | {totals[baseline] / totals[m.name]:.2f}x |")


def machine_line(peak_flops: dict[str, float], device: str = "cpu") -> str:
    """One line naming the machine: CPU model (or GPU), threads, torch version and the measured matmul peaks."""
    if device.startswith("cuda"):
        chip = torch.cuda.get_device_name()
    else:
        chip = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), "cpu")
    peaks = ", ".join(f"{dtype} {flops / 1e9:,.0f} GFLOP/s" for dtype, flops in peak_flops.items())
    return (f"machine: {chip}, {torch.get_num_threads()} threads, torch {torch.__version__}; measured matmul peak "
            f"{peaks}")

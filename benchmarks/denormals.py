"""Benchmark: denormal floats in AdamW's moments during fine-tuning, and what flushing them to zero saves (CPU).

The fine-tuning step of `configs/finetune/glue.yaml` (rebuilt as `benchmarks/finetune_step.py` does: SST-2's batches
in glue.yaml's order, epoch after epoch up to its `max_epochs`, the packaged MiniLM-L6, bf16 autocast where native,
fused AdamW) trains `--steps` steps with denormals computed as the CPU computes them, printing every `--every` steps
the share of the optimiser's moments that are denormal and the time of the optimiser step. Then, from the state the
run reached (its moments and one more batch's gradients, restored before every timing), the optimiser step is timed
with denormals kept and with them flushed to zero in every thread (`callbacks/cpu_denormals.py`), alternated
`--repeats` rounds, and the parameters the two produce are compared bit for bit.

    DATA_DIR=../shared/data python benchmarks/denormals.py --steps 1600
    DATA_DIR=../shared/data python benchmarks/denormals.py --steps 6300 --every 300  # the three epochs
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.finetune_step import EPOCHS, Step, shipped_step  # noqa: E402
from benchmarks.harness import machine_line  # noqa: E402
from callbacks.cpu_denormals import set_flush_denormal_all_threads  # noqa: E402

TINY = torch.finfo(torch.float32).tiny  # the smallest normal fp32 (and bf16)


def denormal_shares(optimizer: torch.optim.Optimizer) -> tuple[float, float]:
    """The shares of the first and of the second moments' elements that are denormal."""
    total = first = second = 0
    for state in optimizer.state.values():
        total += state["exp_avg"].numel()
        first += int(((state["exp_avg"] != 0) & (state["exp_avg"].abs() < TINY)).sum())
        second += int(((state["exp_avg_sq"] != 0) & (state["exp_avg_sq"].abs() < TINY)).sum())
    return first / total, second / total


def optimiser_ms(step: Step, snapshot: dict, flush: bool, calls: int) -> tuple[float, list[torch.Tensor]]:
    """Mean ms of `calls` optimiser steps, each from `snapshot` (parameters and moments restored), with denormals
    flushed or not; and the parameters the last one produced."""
    params = [p for group in step.optimizer.param_groups for p in group["params"]]
    set_flush_denormal_all_threads(flush)
    seconds = 0.0
    for _ in range(calls):
        with torch.no_grad():
            for p in params:
                p.copy_(snapshot[p]["param"])
                for key in ("exp_avg", "exp_avg_sq", "step"):
                    step.optimizer.state[p][key].copy_(snapshot[p][key])
        start = time.perf_counter()
        step.optimizer.step()
        seconds += time.perf_counter() - start
    set_flush_denormal_all_threads(False)
    return 1000 * seconds / calls, [p.detach().clone() for p in params]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", default=os.environ.get("DATA_DIR", "data"), help="the data folder ($DATA_DIR)")
    p.add_argument("--steps", type=int, default=1600,
                   help="training steps from the first batch, denormals kept (within glue.yaml's max_epochs)")
    p.add_argument("--every", type=int, default=100, help="steps between the printed lines")
    p.add_argument("--repeats", type=int, default=5, help="alternated rounds of the optimiser-step timing")
    p.add_argument("--calls", type=int, default=10, help="optimiser steps timed in each round and mode")
    args = p.parse_args(argv)

    step, batches = shipped_step(args.data_dir, 0, args.steps + 1, epochs=EPOCHS)
    if len(batches) <= args.steps:
        sys.exit(f"denormals.py: --steps {args.steps} needs {args.steps + 1} batches of glue.yaml's {EPOCHS} "
                 f"epoch(s); they have {len(batches)} (--steps {len(batches) - 1} at most)")
    set_flush_denormal_all_threads(False)
    print(machine_line({}).split(";")[0])
    print(f"SST-2 batches 0..{args.steps} (batch 32, {EPOCHS} epoch(s) at most), packaged MiniLM-L6, "
          f"{'bf16' if step.autocast else 'fp32'}, fused AdamW (betas {tuple(step.optimizer.defaults['betas'])}), "
          f"denormals kept while training", flush=True)
    optimiser, whole = [], []
    for i, batch in enumerate(batches[:args.steps], start=1):
        start = time.perf_counter()
        step.backward(batch)
        middle = time.perf_counter()
        step.optimizer.step()
        end = time.perf_counter()
        step.optimizer.zero_grad(set_to_none=True)
        optimiser.append(end - middle)
        whole.append(end - start)
        if i % args.every == 0:
            first, second = denormal_shares(step.optimizer)
            print(f"  step {i:5d}: denormal moments {100 * first:.2f}% (first), {100 * second:.2f}% (second); "
                  f"the last {args.every} steps: optimiser {1000 * sum(optimiser[-args.every:]) / args.every:.1f} ms"
                  f", step {1000 * sum(whole[-args.every:]) / args.every:.1f} ms", flush=True)

    step.backward(batches[args.steps])  # one more batch's gradients, kept for every timed optimiser step
    params = [p for group in step.optimizer.param_groups for p in group["params"]]
    snapshot = {p: {"param": p.detach().clone(), **{k: v.clone() for k, v in step.optimizer.state[p].items()}}
                for p in params}
    first, second = denormal_shares(step.optimizer)
    print(f"\nthe optimiser step from the state at step {args.steps} ({100 * first:.2f}% / {100 * second:.2f}% of the "
          f"moments denormal), {args.calls} calls a round and mode, alternated:")
    times = {False: [], True: []}
    results = {}
    for round_ in range(args.repeats):
        for flush in (False, True):
            ms, results[flush] = optimiser_ms(step, snapshot, flush, args.calls)
            times[flush].append(ms)
            print(f"  [{round_ + 1}/{args.repeats}] denormals {'flushed' if flush else 'kept   '} {ms:6.1f} ms",
                  flush=True)
    kept, flushed = (sum(times[f]) / len(times[f]) for f in (False, True))
    same = all(torch.equal(a, b) for a, b in zip(results[False], results[True]))
    print(f"\nmean: denormals kept {kept:.1f} ms, flushed {flushed:.1f} ms ({kept / flushed:.2f}x); the parameters "
          f"after the step {'the same bit for bit' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()

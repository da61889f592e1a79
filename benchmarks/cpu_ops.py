"""Benchmark: the CPU facts behind litbert's CPU defaults and its benchmark windows, measured on the machine at hand.

1. bf16 against fp32 matrix products on the shapes of a `roberta_small` MLM step and a MiniLM-L6 layer (why train.py
   picks bf16-mixed on a CPU with AVX512-BF16 or AMX: `lightning_modules.precision.native_bf16`).
2. torch's CPU dropout against `models.cpu_dropout.masked_dropout` (its Bernoulli mask from 64-bit draws) on the
   attention probabilities and hidden states of that MLM step (why `callbacks.cpu_dropout.FastCPUDropout` is on).
3. glibc's malloc at its defaults against `callbacks.cpu_malloc.keep_freed_memory` (why `ReuseFreedMemory` is on):
   the word-embedding gradient's zeros alone, and a whole MiniLM-L6 fine-tuning step (bf16 autocast where native,
   32 x 13 tokens, fused AdamW), each setting in its own child process (a process cannot undo it): time, minor page
   faults and system CPU time per call.
4. The first matrix product of a new shape against the same product again, on a MiniLM-L6 projection ([32 x L, 384] x
   [384, 384], L a sentence length) in the dtype train.py picks: the CPU library (oneDNN) builds a kernel per new shape
   and caches it, so the first steps of a fine-tuning run, where SST-2's length-grouped batches keep bringing new
   lengths (41 by step 210, 57 in the epoch), pay a cost that later steps do not (benchmarks/README.md).
Each time is the best of `--rounds` timings of `--repeats` calls (the page faults and system time: of the last round).

    python benchmarks/cpu_ops.py
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_modules.precision import native_bf16  # noqa: E402
from models.cpu_dropout import masked_dropout  # noqa: E402
from callbacks.cpu_malloc import keep_freed_memory  # noqa: E402

# (rows, inner, cols): roberta_small at 32 x 128 tokens (hidden 256, FFN 1024, the sparse head over ~615 masked
# positions and a 16k vocabulary), then a 2048 square
MATMULS = [(4096, 256, 256), (4096, 256, 1024), (4096, 1024, 256), (615, 256, 16000), (2048, 2048, 2048)]
FIRST_USE_LENGTHS = (5, 9, 13, 17, 21, 33)  # L of [32 x L, 384] x [384, 384]: shapes no other table here uses
DROPOUTS = {"attention probabilities [32, 4, 128, 128]": (32, 4, 128, 128),
            "hidden states [32, 128, 256]": (32, 128, 256)}


def best_time(fn, repeats: int, rounds: int) -> float:
    fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def finetune_step():
    """One MiniLM-L6 sequence-classification step (32 x 13 tokens, dropout on, fused AdamW) as a function."""
    from transformers import AutoModelForSequenceClassification

    from models.pretrained import resolve_model_path
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path("packaged:all-minilm-l6-v2"),
                                                               num_labels=2).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    input_ids, labels = torch.randint(1000, 20000, (32, 13)), torch.randint(0, 2, (32,))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=native_bf16("cpu")):
            loss = F.cross_entropy(model(input_ids=input_ids).logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return step


def allocation_child(setting: str, repeats: int, rounds: int) -> None:
    """Child process: time the zeros and the step under one malloc setting; print JSON."""
    if setting == "keep_freed_memory" and not keep_freed_memory():
        raise SystemExit("keep_freed_memory: not glibc")
    results = {}
    for name, fn in (("zeros [30522, 384] (47 MB)", lambda: torch.zeros(30522, 384)),
                     ("MiniLM-L6 fine-tuning step", finetune_step())):
        seconds = best_time(fn, repeats, rounds)
        before = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(repeats):
            fn()
        after = resource.getrusage(resource.RUSAGE_SELF)
        results[name] = (seconds, (after.ru_minflt - before.ru_minflt) / repeats,
                         (after.ru_stime - before.ru_stime) / repeats)
    print(json.dumps(results))


def allocation_table(repeats: int, rounds: int) -> None:
    print("\n| glibc malloc: defaults -> keep_freed_memory | time | minor page faults | system CPU |")
    print("|---|---:|---:|---:|")
    runs = {}
    for setting in ("defaults", "keep_freed_memory"):
        out = subprocess.run([sys.executable, __file__, "--allocation-child", setting, "--repeats", str(repeats),
                              "--rounds", str(rounds)], capture_output=True, text=True, check=True).stdout
        runs[setting] = json.loads(out.strip().splitlines()[-1])
    for name, (t0, faults0, sys0) in runs["defaults"].items():
        t1, faults1, sys1 = runs["keep_freed_memory"][name]
        print(f"| {name} | {t0 * 1e3:.1f} -> {t1 * 1e3:.1f} ms | {faults0:,.0f} -> {faults1:,.0f} | "
              f"{sys0 * 1e3:.1f} -> {sys1 * 1e3:.1f} ms |")


def first_use_table(repeats: int, rounds: int) -> None:
    """Time of the first product of each new shape, and the best of `rounds` x `repeats` of the same product after;
    into an output written beforehand, so the first call's extra time is the new shape's, not fresh memory's."""
    dtype = torch.bfloat16 if native_bf16("cpu") else torch.float32
    weight = torch.randn(384, 384, dtype=dtype)
    name = str(dtype).removeprefix("torch.")
    print(f"\n| {name} product, a new shape | first call | the same again | first / again |")
    print("|---|---:|---:|---:|")
    for length in FIRST_USE_LENGTHS:
        x = torch.randn(32 * length, 384, dtype=dtype)
        out = torch.zeros(32 * length, 384, dtype=dtype)  # written before: the first call pays no fresh pages
        start = time.perf_counter()
        torch.mm(x, weight, out=out)
        first = time.perf_counter() - start
        again = best_time(lambda: torch.mm(x, weight, out=out), repeats, rounds)
        print(f"| {32 * length} x 384 x 384 | {first * 1e3:.2f} ms | {again * 1e3:.3f} ms | {first / again:.0f}x |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--allocation-child", choices=["defaults", "keep_freed_memory"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.allocation_child:
        return allocation_child(args.allocation_child, args.repeats, args.rounds)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: {native_bf16('cpu')}\n")
    print("| product (rows x inner x cols) | fp32 GFLOP/s | bf16 GFLOP/s | bf16 / fp32 |")
    print("|---|---:|---:|---:|")
    for m, k, n in MATMULS:
        a, b = torch.randn(m, k), torch.randn(k, n)
        a16, b16 = a.bfloat16(), b.bfloat16()
        fp32 = 2 * m * k * n / best_time(lambda: a @ b, args.repeats, args.rounds)
        bf16 = 2 * m * k * n / best_time(lambda: a16 @ b16, args.repeats, args.rounds)
        print(f"| {m} x {k} x {n} | {fp32 / 1e9:.0f} | {bf16 / 1e9:.0f} | {bf16 / fp32:.2f}x |")
    print("\n| dropout p = 0.1 on | torch F.dropout | masked_dropout | speed-up |")
    print("|---|---:|---:|---:|")
    for name, shape in DROPOUTS.items():
        x = torch.randn(shape)
        plain = best_time(lambda: F.dropout(x, 0.1, training=True), args.repeats, args.rounds)
        masked = best_time(lambda: masked_dropout(x, 0.1), args.repeats, args.rounds)
        ns = 1e9 / x.numel()
        print(f"| {name} | {plain * 1e3:.1f} ms ({plain * ns:.1f} ns/element) | {masked * 1e3:.1f} ms "
              f"({masked * ns:.1f} ns/element) | {plain / masked:.2f}x |")
    first_use_table(args.repeats, args.rounds)
    allocation_table(args.repeats, args.rounds)


if __name__ == "__main__":
    main()

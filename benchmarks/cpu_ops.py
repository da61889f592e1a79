"""Benchmark: the two CPU facts behind litbert's CPU defaults, measured on the machine at hand.

1. bf16 against fp32 matrix products on the shapes of a `roberta_small` MLM step and a MiniLM-L6 layer (why train.py
   picks bf16-mixed on a CPU with AVX512-BF16 or AMX: `lightning_modules.precision.native_bf16`).
2. torch's CPU dropout against `models.cpu_dropout.masked_dropout` (its Bernoulli mask from 64-bit draws) on the
   attention probabilities and hidden states of that MLM step (why `callbacks.cpu_dropout.FastCPUDropout` is on).
Each figure is the best of `--rounds` timings of `--repeats` calls.

    python benchmarks/cpu_ops.py
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_modules.precision import native_bf16  # noqa: E402
from models.cpu_dropout import masked_dropout  # noqa: E402

# (rows, inner, cols): roberta_small at 32 x 128 tokens (hidden 256, FFN 1024, the sparse head over ~615 masked
# positions and a 16k vocabulary), then a 2048 square
MATMULS = [(4096, 256, 256), (4096, 256, 1024), (4096, 1024, 256), (615, 256, 16000), (2048, 2048, 2048)]
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


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
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


if __name__ == "__main__":
    main()

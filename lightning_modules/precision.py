"""The one default of the Trainer's `precision`, read by train.py (the CLI default), scripts/evaluate_models.py and
the benchmarks, so every run of the project picks its precision the same way unless `--trainer.precision` says."""
from __future__ import annotations

import torch


def default_precision() -> str:
    """bf16 mixed precision on a GPU that supports it, full fp32 elsewhere (CPU bf16 autocast is slow)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"

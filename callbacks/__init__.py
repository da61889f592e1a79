"""litbert callbacks."""
from __future__ import annotations


def add_default_callbacks(trainer) -> None:
    """Append the callbacks train.py gives every Trainer, each unless the config lists one of its class already:
    `run_end.ValidateAtMaxSteps`, `run_end.FinalMetricsTable` and `cpu_dropout.FastCPUDropout`."""
    from callbacks.cpu_dropout import FastCPUDropout
    from callbacks.run_end import FinalMetricsTable, ValidateAtMaxSteps

    for callback_class in (ValidateAtMaxSteps, FinalMetricsTable, FastCPUDropout):
        if not any(isinstance(callback, callback_class) for callback in trainer.callbacks):
            trainer.callbacks.append(callback_class())

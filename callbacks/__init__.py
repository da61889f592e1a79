"""litbert callbacks."""
from __future__ import annotations


def add_default_callbacks(trainer) -> None:
    """Append the callbacks train.py gives every Trainer, each unless the config lists one of its class already:
    `hp_metric.HpMetric`, `run_end.ValidateAtMaxSteps`, `run_end.FinalMetricsTable`, `cpu_dropout.FastCPUDropout`,
    `cpu_malloc.ReuseFreedMemory`, `cpu_kernel_cache.KeepCPUKernels`, `cpu_embedding_grad.SparseEmbeddingGrad` and
    `cpu_denormals.FlushDenormals`."""
    from callbacks.cpu_denormals import FlushDenormals
    from callbacks.cpu_dropout import FastCPUDropout
    from callbacks.cpu_embedding_grad import SparseEmbeddingGrad
    from callbacks.cpu_kernel_cache import KeepCPUKernels
    from callbacks.cpu_malloc import ReuseFreedMemory
    from callbacks.hp_metric import HpMetric
    from callbacks.run_end import FinalMetricsTable, ValidateAtMaxSteps

    for callback_class in (HpMetric, ValidateAtMaxSteps, FinalMetricsTable, FastCPUDropout, ReuseFreedMemory,
                           KeepCPUKernels, SparseEmbeddingGrad, FlushDenormals):
        if not any(isinstance(callback, callback_class) for callback in trainer.callbacks):
            trainer.callbacks.append(callback_class())

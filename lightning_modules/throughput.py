"""`flops_per_batch` for Lightning's ThroughputMonitor, batch by batch.

How the monitor uses it (lightning 2.6, pytorch/callbacks/throughput_monitor.py): at the end of every train /
validation / test / predict batch it reads `pl_module.flops_per_batch` (it checks once that the attribute exists),
adds it to a window of `window_size` batches, and logs `<stage>|device/flops_per_sec` and, when the device's peak is
known, `<stage>|device/mfu` = flops_per_sec / peak (`get_available_flops`: CUDA chips by name, for the precision's
dtype, e.g. bf16 under bf16-mixed; None on CPU, where only flops_per_sec is logged). A fixed number set once would be
wrong here: the batch shape changes (dynamic padding, number of masked tokens) and evaluation runs only the forward.
So each `on_<stage>_batch_start` remembers the batch and the stage, and the property computes that batch's FLOPs
when the monitor reads it (on rank 0 only, after the monitor's own `cuda.synchronize`, so counting masked tokens
adds no extra device sync to the step).
"""
from __future__ import annotations

from typing import Any


class FlopsPerBatchMixin:
    """Mix into a LightningModule that implements `batch_flops(batch, stage) -> int` (stage: "train", "validate",
    "test" or "predict"): `self.flops_per_batch` is then the FLOPs of the batch being processed (None before any)."""

    _flops_batch: tuple[Any, str] | None = None

    def batch_flops(self, batch: Any, stage: str) -> int:
        raise NotImplementedError

    @property
    def flops_per_batch(self) -> int | None:
        if self._flops_batch is None:
            return None
        batch, stage = self._flops_batch
        return int(self.batch_flops(batch, stage))

    def on_train_batch_start(self, batch: Any, batch_idx: int):
        self._flops_batch = (batch, "train")
        return super().on_train_batch_start(batch, batch_idx)

    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._flops_batch = (batch, "validate")
        super().on_validation_batch_start(batch, batch_idx, dataloader_idx)

    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._flops_batch = (batch, "test")
        super().on_test_batch_start(batch, batch_idx, dataloader_idx)

    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._flops_batch = (batch, "predict")
        super().on_predict_batch_start(batch, batch_idx, dataloader_idx)

"""TemperatureAnnealing: anneal the distillation temperature of a LightningModule during training.

The value is a pure function of the training position (`trainer.global_step` for interval="step",
`trainer.current_epoch` for interval="epoch"), so a run resumed from a checkpoint continues the schedule where it
stopped. The resolved schedule length is also kept in the checkpoint (`state_dict`), so a resumed run whose
`max_steps` differs keeps the original schedule unless `total` is given explicitly.
"""
from __future__ import annotations

import math

from lightning.pytorch import Callback

SCHEDULES = ("constant", "linear", "cosine", "exponential")
INTERVALS = ("step", "epoch")


def annealed_value(schedule: str, t_start: float, t_end: float, progress: float) -> float:
    """Temperature at `progress` in [0, 1] (clamped): t_start at 0, t_end at 1 (constant: always t_start)."""
    p = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return t_start
    if schedule == "linear":
        return t_start + (t_end - t_start) * p
    if schedule == "cosine":  # half cosine from t_start down (or up) to t_end
        return t_end + (t_start - t_end) * 0.5 * (1.0 + math.cos(math.pi * p))
    if schedule == "exponential":  # geometric interpolation: constant ratio per step
        return t_start * (t_end / t_start) ** p
    raise ValueError(f"temperature schedule {schedule!r}: expected one of {SCHEDULES}")


class TemperatureAnnealing(Callback):
    """Set `pl_module.<attribute>` from a schedule before every training batch and log it as `train/temperature`.

    Args:
        schedule: "constant", "linear", "cosine" or "exponential".
        t_start, t_end: temperature at the first and at the last step (or epoch) of the schedule (> 0).
        interval: "step" (optimiser steps, `trainer.global_step`) or "epoch" (`trainer.current_epoch`).
        total: length of the schedule in steps or epochs; None -> `trainer.estimated_stepping_batches` (steps) or
            `trainer.max_epochs` (epochs). Index i in [0, total - 1] gets progress i / (total - 1); later ones t_end.
        attribute: name of the module attribute to set.
    """

    def __init__(self, schedule: str = "linear", t_start: float = 4.0, t_end: float = 1.0, interval: str = "step",
                 total: int | None = None, attribute: str = "temperature"):
        if schedule not in SCHEDULES:
            raise ValueError(f"TemperatureAnnealing schedule {schedule!r}: expected one of {SCHEDULES}")
        if interval not in INTERVALS:
            raise ValueError(f"TemperatureAnnealing interval {interval!r}: expected one of {INTERVALS}")
        if t_start <= 0 or t_end <= 0:
            raise ValueError(f"TemperatureAnnealing needs positive temperatures, got t_start={t_start}, t_end={t_end}")
        if total is not None and total < 1:
            raise ValueError(f"TemperatureAnnealing total must be >= 1, got {total}")
        self.schedule, self.t_start, self.t_end = schedule, float(t_start), float(t_end)
        self.interval, self.total, self.attribute = interval, total, attribute
        self.resolved_total: int | None = total
        self.current: float | None = None

    def value_at(self, index: int) -> float:
        """Temperature at step/epoch `index` once the schedule length is known."""
        total = self.resolved_total or 1
        return annealed_value(self.schedule, self.t_start, self.t_end, index / max(total - 1, 1))

    def _resolve_total(self, trainer) -> int:
        if self.resolved_total is None:
            if self.interval == "step":
                total = trainer.estimated_stepping_batches
            else:
                total = trainer.max_epochs
            if total is None or total < 1 or total == float("inf"):
                raise ValueError("TemperatureAnnealing: cannot infer the schedule length; set `total` or "
                                 f"trainer.{'max_steps' if self.interval == 'step' else 'max_epochs'}")
            self.resolved_total = int(total)
        return self.resolved_total

    def _apply(self, trainer, pl_module) -> float:
        if not hasattr(pl_module, self.attribute):
            raise AttributeError(f"TemperatureAnnealing: {type(pl_module).__name__} has no attribute "
                                 f"{self.attribute!r} to anneal")
        self._resolve_total(trainer)
        index = trainer.global_step if self.interval == "step" else trainer.current_epoch
        self.current = self.value_at(index)
        setattr(pl_module, self.attribute, self.current)
        return self.current

    def on_train_start(self, trainer, pl_module):
        self._apply(trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        value = self._apply(trainer, pl_module)
        pl_module.log("train/temperature", value, on_step=True, on_epoch=False, batch_size=1)

    def state_dict(self) -> dict:
        return {"resolved_total": self.resolved_total, "current": self.current, "schedule": self.schedule,
                "t_start": self.t_start, "t_end": self.t_end, "interval": self.interval}

    def load_state_dict(self, state_dict: dict) -> None:
        # An explicit `total` wins; otherwise continue the schedule planned by the run that wrote the checkpoint.
        if self.total is None and state_dict.get("interval") == self.interval:
            self.resolved_total = state_dict.get("resolved_total")
        self.current = state_dict.get("current")

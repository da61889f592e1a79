"""ProgressLog: plain progress lines for logs, where a progress bar shows nothing useful.

A job whose output goes to a file (`make train`, SLURM, nohup) or that runs with `enable_progress_bar: false` would
otherwise print nothing between its start and its end, for minutes or hours. This callback prints one line every
`every_n_steps` optimiser steps (or sooner, once `every_n_seconds` have passed since the previous line: a slow or
shared machine still shows progress), one at every epoch end and one after every validation, on global rank 0:

    train step 150/500 (30%) epoch 1/1 | loss 0.6421 | lr 8.40e-05 | 98.3 samples/s | elapsed 0:00:49 | ETA 0:01:54
    train epoch 1/1 done: step 500/500 | loss 0.4517 (epoch mean) | elapsed 0:02:41
    val step 500/500 | val/loss 0.3512 | val/score 84.98 | 6.2 s

and, in `validate`/`test`/`predict` (and long validations during fit), one line every `every_n_steps` batches
(or `every_n_seconds`).
`loss` is the mean training loss since the previous line (of rank 0's batches under DDP), `lr` the first parameter
group's, samples/s counts every process's examples; the ETA is the remaining optimiser steps at the mean pace of
this run so far (validations included), capped by the time left under `trainer.max_time`. On a terminal that shows
Lightning's progress bar the lines would break the bar: they are left out there unless `always` is set.

YAML (under `trainer:`; every shipped config has it, before HFExport, which stays the last callback):

    callbacks:
      - class_path: callbacks.progress.ProgressLog
        init_args: {every_n_steps: 50, every_n_seconds: 60}
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping

import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import Timer

def format_duration(seconds: float) -> str:
    """H:MM:SS (days as hours: 27:03:09)."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def format_number(value: float) -> str:
    """Four significant digits, fixed-point where readable (0.6421, 84.98, 1505), else scientific."""
    value = float(value)
    if value != 0 and not 1e-3 <= abs(value) < 1e5:
        return f"{value:.3e}"
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"


def batch_examples(batch) -> int:
    """Examples in a batch: the length of its first tensor (mapping, e.g. a BatchEncoding; list or tensor), else 0."""
    if isinstance(batch, torch.Tensor):
        return len(batch) if batch.dim() else 1
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        count = batch_examples(value)
        if count:
            return count
    return 0


class ProgressLog(Callback):
    """Print a plain progress line every `every_n_steps` optimiser steps, at every epoch end and after every
    validation: step/total, loss, learning rate, samples/s, elapsed time and ETA (rank 0 only).

    Args:
        every_n_steps: optimiser steps between two training lines (and batches between two evaluation lines).
        every_n_seconds: a line also once this many seconds have passed since the previous one (None: steps only).
        always: print the lines also while Lightning's progress bar shows on a terminal (where it would break the bar).
    """

    def __init__(self, every_n_steps: int = 50, every_n_seconds: float | None = 60.0, always: bool = False):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive number of steps, got {every_n_steps}")
        if every_n_seconds is not None and every_n_seconds <= 0:
            raise ValueError(f"every_n_seconds must be positive (or null: steps only), got {every_n_seconds}")
        self.every_n_steps, self.every_n_seconds = every_n_steps, every_n_seconds
        self.always = always
        self.clock = time.monotonic  # tests put a fake clock here
        self._start = self._eval_start = self._eval_line = 0.0
        self._start_step = self._prev_step = 0
        self._total: int | None = None
        self._window: dict = {"time": 0.0, "paused": 0.0, "examples": 0, "loss": 0.0, "batches": 0}
        self._epoch: dict = {"loss": 0.0, "batches": 0}
        self._eval_batches = 0

    # ---- output --------------------------------------------------------------------------------------------------
    def enabled(self, trainer) -> bool:
        """Rank 0, and no progress bar drawing on a terminal (unless `always`)."""
        if not trainer.is_global_zero:
            return False
        bar_on_terminal = trainer.progress_bar_callback is not None and sys.stdout.isatty()
        return self.always or not bar_on_terminal

    @staticmethod
    def emit(line: str) -> None:
        print(line, flush=True)

    def elapsed(self) -> float:
        return self.clock() - self._start

    def due(self, count: int, since: float) -> bool:
        """A line is due at a multiple of every_n_steps, or once every_n_seconds have passed since `since`."""
        late = self.every_n_seconds is not None and self.clock() - since >= self.every_n_seconds
        return count % self.every_n_steps == 0 or late

    # ---- training ------------------------------------------------------------------------------------------------
    @staticmethod
    def total_steps(trainer) -> int | None:
        """The run's optimiser steps (`estimated_stepping_batches`), None when unbounded (only max_time)."""
        total = trainer.estimated_stepping_batches
        return None if total is None or math.isinf(total) or total <= 0 else int(total)

    def eta(self, trainer, step: int) -> float | None:
        """Seconds left: the remaining steps at this run's mean pace, capped by the time left under max_time."""
        estimates = []
        done = step - self._start_step
        if self._total is not None and done > 0:
            estimates.append((self._total - step) * self.elapsed() / done)
        timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)
        remaining = timer.time_remaining() if timer is not None else None
        if remaining is not None:
            estimates.append(remaining)
        return max(0.0, min(estimates)) if estimates else None

    def position(self, step: int) -> str:
        return f"step {step}/{self._total}" if self._total else f"step {step}"

    @staticmethod
    def max_epochs(trainer) -> int | None:
        return trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None

    def epoch_text(self, trainer) -> str:
        max_epochs = self.max_epochs(trainer)
        return f"epoch {trainer.current_epoch + 1}" + (f"/{max_epochs}" if max_epochs else "")

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = self.clock()
        self._start_step = self._prev_step = trainer.global_step  # a resumed run counts its pace from here
        self._window = {"time": self._start, "paused": 0.0, "examples": 0, "loss": 0.0, "batches": 0}
        self._epoch = {"loss": 0.0, "batches": 0}
        self._total = self.total_steps(trainer)
        if self.enabled(trainer):
            plan = [f"{self._total} optimiser steps" if self._total else "no step limit (max_time)"]
            if self.max_epochs(trainer) and trainer.max_steps == -1:
                plan.append(f"{self.max_epochs(trainer)} epoch(s)")
            if trainer.global_step:
                plan.append(f"resumed at step {trainer.global_step}")
            plan.append(f"{trainer.world_size} process(es)")
            self.emit(f"train start: {', '.join(plan)}")

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch = {"loss": 0.0, "batches": 0}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            # Lightning divides the returned loss by accumulate_grad_batches: the line shows the model's own loss.
            # Kept a tensor until a line is printed, so a GPU is not synchronised at every batch.
            value = loss.detach() * trainer.accumulate_grad_batches
            for totals in (self._window, self._epoch):
                totals["loss"] += value
                totals["batches"] += 1
        self._window["examples"] += batch_examples(batch) * trainer.world_size
        step, stepped = trainer.global_step, trainer.global_step != self._prev_step
        self._prev_step = step
        if not stepped or not self.due(step, self._window["time"]):
            return  # no optimiser step at this batch (accumulating), or no line due yet
        if self.enabled(trainer):
            self.emit(self.train_line(trainer, step))
        self._window = {"time": self.clock(), "paused": 0.0, "examples": 0, "loss": 0.0, "batches": 0}

    def train_line(self, trainer, step: int) -> str:
        total = self._total
        parts = [f"train {self.position(step)}" + (f" ({step / total:.0%})" if total else "")
                 + f" {self.epoch_text(trainer)}"]
        if self._window["batches"]:
            parts.append(f"loss {format_number(float(self._window['loss']) / self._window['batches'])}")
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.2e}")
        seconds = self.clock() - self._window["time"] - self._window["paused"]  # training time: no validation
        if seconds > 0 and self._window["examples"]:
            parts.append(f"{self._window['examples'] / seconds:.1f} samples/s")
        parts.append(f"elapsed {format_duration(self.elapsed())}")
        eta = self.eta(trainer, step)
        if eta is not None:
            parts.append(f"ETA {format_duration(eta)}")
        return " | ".join(parts)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self.enabled(trainer):
            return
        step = trainer.global_step
        parts = [f"train {self.epoch_text(trainer)} done: {self.position(step)}"]
        if self._epoch["batches"]:
            parts.append(f"loss {format_number(float(self._epoch['loss']) / self._epoch['batches'])} (epoch mean)")
        parts.append(f"elapsed {format_duration(self.elapsed())}")
        eta = self.eta(trainer, step)
        if eta is not None and eta > 0:
            parts.append(f"ETA {format_duration(eta)}")
        self.emit(" | ".join(parts))

    # ---- evaluation (validation during fit; validate, test, predict) -------------------------------------------
    def _eval_start_hook(self, trainer, pl_module) -> None:
        self._eval_start, self._eval_batches = self.clock(), 0
        self._eval_line = self._eval_start

    on_validation_start = on_test_start = on_predict_start = _eval_start_hook

    def _eval_batch(self, trainer, name: str, counts: list) -> None:
        """One line every `every_n_steps` evaluation batches: batch/total, time so far, ETA."""
        if trainer.sanity_checking:
            return
        self._eval_batches += 1
        if not self.due(self._eval_batches, self._eval_line) or not self.enabled(trainer):
            return
        self._eval_line = self.clock()
        total = int(sum(c for c in counts if not math.isinf(c)))
        seconds = self.clock() - self._eval_start
        parts = [f"{name} batch {self._eval_batches}" + (f"/{total}" if total else ""), format_duration(seconds)]
        if total > self._eval_batches:
            parts.append(f"ETA {format_duration((total - self._eval_batches) * seconds / self._eval_batches)}")
        self.emit(" | ".join(parts))

    def on_validation_batch_end(self, trainer, *args, **kwargs) -> None:
        self._eval_batch(trainer, "val", trainer.num_val_batches)

    def on_test_batch_end(self, trainer, *args, **kwargs) -> None:
        self._eval_batch(trainer, "test", trainer.num_test_batches)

    def on_predict_batch_end(self, trainer, *args, **kwargs) -> None:
        self._eval_batch(trainer, "predict", trainer.num_predict_batches)

    def _eval_end(self, trainer, prefix: str) -> None:
        """The figures the evaluation logged (`<prefix>/...`, `<prefix>_distill/...`) and its time."""
        if trainer.sanity_checking or not self.enabled(trainer):
            return
        head = prefix + (f" {self.position(trainer.global_step)}" if trainer.state.fn.value == "fit" else "")
        figures = [f"{key} {format_number(value)}" for key, value in sorted(trainer.callback_metrics.items())
                   if key.startswith(prefix) and torch.as_tensor(value).numel() == 1]
        self.emit(" | ".join([head, *figures, f"{self.clock() - self._eval_start:.1f} s"]))

    def on_validation_end(self, trainer, pl_module) -> None:
        self._eval_end(trainer, "val")
        if not trainer.sanity_checking:
            self._window["paused"] += self.clock() - self._eval_start

    def on_test_end(self, trainer, pl_module) -> None:
        self._eval_end(trainer, "test")

    def on_predict_end(self, trainer, pl_module) -> None:
        if self.enabled(trainer):
            self.emit(f"predict done: {self._eval_batches} batches | {self.clock() - self._eval_start:.1f} s")

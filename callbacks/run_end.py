"""How a run ends: a last validation when `max_steps` stops training inside an epoch, and a table of the final
metrics after `fit`, `validate` and `test`. train.py adds both to every Trainer it builds
(`callbacks.add_default_callbacks`).
"""
from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint


class ValidateAtMaxSteps(Callback):
    """Validate once more when `trainer.max_steps` ends training inside an epoch.

    Lightning validates at epoch ends (or every `val_check_interval`) and stops at `max_steps` without validating, so
    the last steps of such a run never compete for ModelCheckpoint's and HFExport's `best`. Asking the Trainer to stop
    at that step (`should_stop`, as early stopping does) makes Lightning run its validation before stopping. Nothing
    changes where that step ends an epoch (one validation, as before) or where validation is off.
    """

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        if trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


def format_metrics_table(title: str, metrics: dict[str, float]) -> str:
    """`title`, then one `metric  value` line per metric, sorted by name, values to 6 significant digits."""
    width = max([len("metric"), *(len(name) for name in metrics)])
    lines = [title, f"  {'metric':<{width}}  value"]
    lines += [f"  {name:<{width}}  {value:.6g}" for name, value in sorted(metrics.items())]
    return "\n".join(lines)


class FinalMetricsTable(Callback):
    """Print the final metrics (the Trainer's `callback_metrics`) as a table at the end of `fit` (with the best
    checkpoint's score), `validate` and `test`, on global rank zero."""

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        extra = {}
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.monitor and callback.best_model_score is not None:
                extra[f"best {callback.monitor}"] = float(callback.best_model_score)
        self.show(trainer, f"final metrics of fit (step {trainer.global_step})", extra)
        best = [cb.best_model_path for cb in trainer.checkpoint_callbacks
                if isinstance(cb, ModelCheckpoint) and cb.best_model_path]
        if best and trainer.is_global_zero:
            print(f"  best checkpoint: {best[0]}")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "validate" and not trainer.sanity_checking:  # not the validations inside fit
            self.show(trainer, "final metrics of validate")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.show(trainer, "final metrics of test")

    @staticmethod
    def show(trainer: Trainer, title: str, extra: dict[str, float] | None = None) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items()
                   if getattr(value, "numel", lambda: 1)() == 1}
        metrics.update(extra or {})
        print(format_metrics_table(title, metrics) if metrics else f"{title}: nothing was logged")


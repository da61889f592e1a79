"""HpMetric: TensorBoard's `hp_metric` (the figure its HPARAMS tab compares runs by) is the run's main score.

Lightning's TensorBoardLogger writes hp_metric = -1 when it logs the hyper-parameters and never again, so every run
would show -1. After every validation (the sanity check excepted) this callback writes the run's main score as
hp_metric at the current step; the last value, the one the HPARAMS tab shows, is the final score. The main score is
`val/score` where the model logs one (GLUE and SQuAD fine-tuning, task distillation; higher is better), else
`val/loss` (MLM pretraining, general distillation; lower is better). train.py adds it to every run; loggers other
than TensorBoard are left alone (hp_metric is TensorBoard's notion).
"""
from __future__ import annotations

from lightning.pytorch import Callback
from lightning.pytorch.loggers import TensorBoardLogger

MAIN_SCORES = ("val/score", "val/loss")  # the first one the model logged is the run's main score


def main_score(metrics: dict) -> tuple[str, float] | None:
    """(name, value) of the main score among logged `metrics`, None when there is none."""
    for name in MAIN_SCORES:
        if name in metrics:
            return name, float(metrics[name])
    return None


class HpMetric(Callback):
    """Write the main score (`val/score`, else `val/loss`) as TensorBoard's hp_metric after every validation."""

    def on_validation_end(self, trainer, pl_module) -> None:
        score = main_score(trainer.callback_metrics)
        if trainer.sanity_checking or score is None:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_metrics({"hp_metric": score[1]}, step=trainer.global_step)

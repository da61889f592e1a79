"""StopOnNonFinite: stop training at the first NaN/inf loss, before it reaches the weights, and never checkpoint (or
export, see callbacks/hf_export.py) non-finite weights.

A diverging run (a learning rate far too high, an fp16 overflow, a bad batch) otherwise goes on with NaN weights,
writes NaN checkpoints over the good ones, exports NaN weights and exits 0. With this callback:

- every training batch's loss is checked before `backward` (all processes agree: one NaN rank stops them all); a
  non-finite loss raises `NonFiniteLossError` naming the global step, the epoch and batch, and every logged loss term
  (`train/loss`, and a distillation module's `train/loss_ce`, `train/loss_mlm`, `train/loss_cos`, `train/loss_hard`)
  that was non-finite, and where the last good checkpoint is. No backward or optimiser step runs on it, so the
  weights the run stops with are those of the last finite step;
- a checkpoint whose weights hold a NaN/inf is never written (`NonFiniteWeightsError` instead), so the checkpoints
  already on disk (`last.ckpt`, the best/recent ones) stay the last good ones;
- `train.py` prints the message as one line and exits with status 3.

YAML (under `trainer:`; the shipped configs have it):

    callbacks:
      - class_path: callbacks.nonfinite.StopOnNonFinite
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class NonFiniteWeightsError(RuntimeError):
    """Weights about to be checkpointed or exported hold NaN or infinite values."""


def non_finite_tensors(named_tensors: Iterable[tuple[str, object]]) -> list[str]:
    """Names of the floating-point tensors with a NaN or an infinite value."""
    return [name for name, tensor in named_tensors
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.numel()
            and not bool(torch.isfinite(tensor).all())]


def describe_names(names: list[str], limit: int = 3) -> str:
    """'a, b, c and 4 more' for an error message."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def last_good_checkpoint(trainer: Trainer) -> str | None:
    """The newest checkpoint file the run's ModelCheckpoint callbacks wrote (or resumed from), if any."""
    candidates = []
    for callback in trainer.checkpoint_callbacks:
        for path in (getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", ""),
                     getattr(callback, "_last_checkpoint_saved", "")):
            if path and os.path.isfile(path):
                candidates.append(path)
    if trainer.ckpt_path and os.path.isfile(str(trainer.ckpt_path)):
        candidates.append(str(trainer.ckpt_path))
    return max(candidates, key=os.path.getmtime) if candidates else None


class StopOnNonFinite(Callback):
    """Stop at the first non-finite training loss and refuse to checkpoint non-finite weights (module docstring).

    Args:
        loss_prefix: logged metrics whose name starts with this are the loss terms reported in the message.
        check_checkpoints: refuse to write a checkpoint whose weights hold a NaN or infinite value.
    """

    def __init__(self, loss_prefix: str = "train/loss", check_checkpoints: bool = True):
        self.loss_prefix = loss_prefix
        self.check_checkpoints = check_checkpoints

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if trainer.strategy.reduce_boolean_decision(not finite, all=False):
            raise NonFiniteLossError(self.message(trainer, loss, finite))

    def logged_terms(self, trainer: Trainer) -> dict[str, float]:
        """The loss terms logged by the current training step (name -> value)."""
        try:
            logged = trainer._results.metrics(on_step=True)["log"]  # this step's values, before they reach loggers
        except Exception:  # noqa: BLE001 (Lightning internals: report without the terms rather than fail here)
            return {}
        terms = {}
        for name, value in logged.items():
            name = name.removesuffix("_step")
            if name.startswith(self.loss_prefix) and isinstance(value, torch.Tensor) and value.numel() == 1:
                terms[name] = float(value)
        return terms

    def message(self, trainer: Trainer, loss: torch.Tensor, finite_here: bool) -> str:
        batch = trainer.fit_loop.epoch_loop.batch_idx
        where = f"global step {trainer.global_step} (epoch {trainer.current_epoch}, batch {batch})"
        terms = self.logged_terms(trainer)
        bad = {k: v for k, v in terms.items() if not math.isfinite(v)}
        if not finite_here:
            value = float(loss.detach().float().reshape(-1)[0]) if loss.numel() else float("nan")
            if bad:
                detail = "non-finite loss terms: " + ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
                good = sorted(k for k in terms if k not in bad)
                if good:
                    detail += f" (finite: {', '.join(good)})"
            else:
                detail = f"the training loss is {value}"
        else:
            detail = "another process's training loss is non-finite"
        checkpoint = last_good_checkpoint(trainer)
        kept = (f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint had been written yet")
        return (f"training stopped at {where}: {detail}. Nothing was applied to the weights, checkpointed or exported "
                f"after it; {kept}. Lower the learning rate or clip gradients (--trainer.gradient_clip_val 1.0), "
                f"then start again or resume from that checkpoint")

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        if not self.check_checkpoints:
            return
        bad = non_finite_tensors((checkpoint.get("state_dict") or {}).items())
        # every process dumps the checkpoint; under FSDP only rank 0 holds the full weights: decide together
        if trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            raise NonFiniteWeightsError(
                f"not writing a checkpoint at global step {trainer.global_step}: the weights hold NaN or infinite "
                f"values ({describe_names(bad) or 'on another process'}); the checkpoints already written are kept. "
                f"Lower the learning rate or clip gradients (--trainer.gradient_clip_val 1.0)")

"""HFExport: write the trained model as a Hugging Face directory that loads with `transformers` as it is.

Each export is `save_pretrained` weights (safetensors) + config, the DataModule's tokenizer and a model card README.md,
written atomically (temporary directory, then rename) by `models.convert.save_export`, and never with NaN or
infinite weights (`NonFiniteWeightsError`: the previous export is kept):

    <dirpath>/best      the best checkpoint by `monitor` (checked after every validation)
    <dirpath>/last      the model at the end of fit
    <dirpath>/step-N    every `every_n_steps` optimiser steps (optional)

YAML (under `trainer:`):

    callbacks:
      - class_path: callbacks.hf_export.HFExport
        init_args: {dirpath: artifacts/export/sst2, monitor: val/acc, mode: max}
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from callbacks.nonfinite import NonFiniteWeightsError, describe_names, non_finite_tensors
from lightning_modules.hf_checkpoint import unwrap_model
from models.convert import save_export
from models.hub import push_export_to_hub
from models.model_card import render_model_card


class HFExport(Callback):
    """Export `pl_module.model` (+ tokenizer + model card) to `dirpath`/{best,last,step-N}, on global rank zero only.

    Args:
        dirpath: root of the exports; None -> `<trainer.log_dir or default_root_dir>/hf_export`.
        monitor: logged metric that decides `best`; None -> the Trainer's ModelCheckpoint `monitor` (and its mode)
            if it has one, else no `best` export.
        mode: "min" or "max" for `monitor`.
        every_n_steps: also export to `step-N` every N optimiser steps (None: never).
        export_best / export_last: write `best` on improvement / `last` at the end of fit.
        push_to_hub: at the end of fit, upload `best` (or `last` when there is no `best`) to `hub_repo_id`.
        hub_repo_id: e.g. "user/litbert-sst2"; required with push_to_hub.
        hub_private: create the hub repository as private.
    """

    def __init__(self, dirpath: str | None = None, monitor: str | None = None, mode: str = "min",
                 every_n_steps: int | None = None, export_best: bool = True, export_last: bool = True,
                 push_to_hub: bool = False, hub_repo_id: str | None = None, hub_private: bool = False):
        if mode not in ("min", "max"):
            raise ValueError(f"HFExport: mode must be 'min' or 'max', got {mode!r}")
        if every_n_steps is not None and every_n_steps <= 0:
            raise ValueError(f"HFExport: every_n_steps must be a positive integer or null, got {every_n_steps}")
        if push_to_hub and not hub_repo_id:
            raise ValueError("HFExport: push_to_hub=true needs hub_repo_id (e.g. 'user/litbert-sst2')")
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.monitor, self.mode = monitor, mode
        self.every_n_steps = every_n_steps
        self.export_best, self.export_last = export_best, export_last
        self.push_to_hub, self.hub_repo_id, self.hub_private = push_to_hub, hub_repo_id, hub_private
        self.best_score: float | None = None
        self.best_step: int | None = None
        self._last_step_export: int | None = None
        self._warned_missing_metric = False

    # ---- set-up -------------------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not hasattr(pl_module, "model"):
            raise AttributeError(f"HFExport: {type(pl_module).__name__} has no `model` attribute to export")
        if self.monitor is None and trainer.checkpoint_callback is not None and trainer.checkpoint_callback.monitor:
            self.monitor, self.mode = trainer.checkpoint_callback.monitor, trainer.checkpoint_callback.mode
        if self.export_best and self.monitor is None:
            rank_zero_warn("HFExport: no monitor (and no ModelCheckpoint monitor): `best` will not be exported")
        if self.dirpath is None:
            self.dirpath = Path(trainer.log_dir or trainer.default_root_dir) / "hf_export"

    # ---- when to export -----------------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        step = trainer.global_step  # optimiser steps: unchanged during gradient accumulation
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._last_step_export:
            self._last_step_export = step
            self.export(trainer, pl_module, f"step-{step}", f"step {step}")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Only validation inside `fit` competes for "best": a stand-alone `validate` run is an evaluation, not training.
        if trainer.sanity_checking or trainer.state.fn != "fit" or not self.export_best or self.monitor is None:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            if not self._warned_missing_metric:
                rank_zero_warn(f"HFExport: monitored metric {self.monitor!r} was not logged; logged: "
                               f"{sorted(trainer.callback_metrics)}")
                self._warned_missing_metric = True
            return
        value = float(value)
        if not math.isfinite(value):
            return
        if self.best_score is None or (value < self.best_score if self.mode == "min" else value > self.best_score):
            self.best_score, self.best_step = value, trainer.global_step
            self.export(trainer, pl_module, "best", f"best {self.monitor} = {value:.6g} at step {trainer.global_step}")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.export_last:
            self.export(trainer, pl_module, "last", f"end of fit, step {trainer.global_step}")
        if self.push_to_hub and trainer.is_global_zero:
            folder = self.dirpath / ("best" if (self.dirpath / "best").is_dir() else "last")
            if not folder.is_dir():
                raise RuntimeError(f"HFExport: nothing to push to {self.hub_repo_id!r}: no export under {self.dirpath}")
            url = push_export_to_hub(folder, self.hub_repo_id, private=self.hub_private,
                                     commit_message=f"litbert export ({folder.name})")
            rank_zero_info(f"HFExport: pushed {folder} to {url}")

    # ---- the export itself --------------------------------------------------------------------------------------
    def export(self, trainer: Trainer, pl_module: LightningModule, name: str, reason: str) -> Path | None:
        """Write `<dirpath>/<name>` on global rank zero (other ranks return None)."""
        if not trainer.is_global_zero:
            return None
        datamodule = trainer.datamodule
        tokenizer = getattr(datamodule, "tokenizer", None)
        if tokenizer is None:
            rank_zero_warn("HFExport: the DataModule has no `tokenizer`; the export will have no tokenizer files")
        model = unwrap_model(pl_module.model)
        bad = non_finite_tensors(model.state_dict().items())
        if bad:  # a diverged run: never replace a good export with NaN weights
            raise NonFiniteWeightsError(f"HFExport: not exporting {self.dirpath / name} ({reason}): the weights hold "
                                        f"NaN or infinite values ({describe_names(bad)}); the previous export is kept")
        info = pl_module.model_card_info() if hasattr(pl_module, "model_card_info") else {}
        card = render_model_card(
            model,
            info,
            hyper_parameters=_plain(getattr(pl_module, "hparams", None)),
            data_hyper_parameters=_plain(getattr(datamodule, "hparams", None)),
            metrics=dict(trainer.callback_metrics),
            command=[sys.executable.split("/")[-1], *sys.argv],
            load_path=self.hub_repo_id or str(self.dirpath / name),
            note=f"Exported by litbert's HFExport callback: {reason}.",
        )
        out = save_export(model, self.dirpath / name, tokenizer, card)
        rank_zero_info(f"HFExport: wrote {out} ({reason})")
        return out

    # ---- resume: keep the best score so a resumed run does not overwrite a better `best` ---------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_step": self.best_step, "monitor": self.monitor}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("monitor") == self.monitor:  # setup() ran before Lightning restores callback states
            self.best_score, self.best_step = state_dict.get("best_score"), state_dict.get("best_step")


def _plain(hparams) -> dict[str, Any] | None:
    """A plain dict of saved hyper-parameters (Lightning's AttributeDict), or None."""
    return dict(hparams) if hparams else None

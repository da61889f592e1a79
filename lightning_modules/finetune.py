"""Fine-tuning on GLUE-style tasks: sequence classification and regression (STS-B), with GLUE's dev metrics.

    python train.py fit --config configs/finetune/glue.yaml --data.init_args.task sst2

`FineTuningModule` holds what every fine-tuning module shares (the recipe, the optimiser, the model card, gathering
evaluation outputs across processes); `SequenceClassificationModule` adds the classification/regression head, the
metrics of the task's spec in `datamodules.glue` and the GLUE submission TSVs written by `predict`.
The extractive QA module (lightning_modules/qa.py) derives from `FineTuningModule` too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MeanMetric
from transformers import AutoModelForSequenceClassification

from datamodules.tasks import GLUE_TASKS, custom_task_metrics, hub_dataset, normalize_task_name
from evaluation.glue_metrics import glue_metric_collection, main_score, predictions_from_logits
from evaluation.writers import glue_submission_filename, write_glue_predictions
from lightning_modules.distributed import log_epoch_means, true_on_any_rank
from lightning_modules.hf_checkpoint import HFCheckpointMixin
from lightning_modules.optim import configure_adamw_with_warmup
from models.inputs import model_inputs
from models.last_layer import last_layer_at
from models.pretrained import check_data_fits_model, load_config, load_for_training, resolve_model_path
from models.task_head import canonical_task, other_task_reason, reinitialise_head

# Every data fact train.py links into the model (train.DATA_TO_MODEL_LINKS), kept out of hparams (see __init__).
DATA_FACTS = ("task_name", "num_labels", "label_names", "label_display_names", "is_regression", "vocab_size",
              "pad_token_id")


def gather_objects(obj: Any) -> list:
    """Every process's `obj` as a list (one entry per rank); just `[obj]` when not distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, obj)
        return gathered
    return [obj]


def glue_task_metrics(task_name: str, is_regression: bool, num_labels: int = 2) -> tuple[list[str], list[str]]:
    """(metric names, evaluation set names) of a task, from the spec table `datamodules.tasks.GLUE_TASKS`.

    Tasks outside the table (task "custom": your own files) follow `datamodules.tasks.custom_task_metrics`:
    accuracy, plus F1 for two labels, or Pearson/Spearman for regression.
    """
    name = normalize_task_name(task_name) if task_name else "custom"
    if name in GLUE_TASKS:
        spec = GLUE_TASKS[name]
        return list(spec.metrics), [set_name for set_name, _, _ in spec.dev_files]
    return list(custom_task_metrics(num_labels, is_regression)), ["dev"]


class FineTuningModule(HFCheckpointMixin, pl.LightningModule):
    """Shared fine-tuning recipe: AdamW with linear warmup/decay (lightning_modules/optim.py) on `self.model`.

    Epochs and batch size are the Trainer's `max_epochs` and the DataModule's `batch_size`.

    Args:
        pretrained: a checkpoint directory, a hub name (online only) or `packaged:all-minilm-l6-v2`.
        task_name: the task, linked from the DataModule (e.g. "sst2", "squad"; names the metrics and prediction files).
        lr: AdamW's peak learning rate (after warmup).
        weight_decay: AdamW's decoupled weight decay (none on biases and LayerNorm weights).
        warmup_ratio: linear warmup over this fraction of the optimiser steps, then linear decay to 0.
        warmup_steps: linear warmup over this many optimiser steps (wins over warmup_ratio); None: use the ratio.
        betas: AdamW's (beta1, beta2).
        eps: AdamW's epsilon.
        output_dir: where `predict` writes its files (None: `<trainer.default_root_dir>/predictions`).
    """

    def __init__(self, pretrained: str, task_name: str | None = None, lr: float = 5e-5, weight_decay: float = 0.01,
                 warmup_ratio: float = 0.1, warmup_steps: int | None = None,
                 betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-6, output_dir: str | None = None):
        super().__init__()
        self.pretrained = pretrained
        self.task_name = task_name
        self.output_dir = output_dir
        self.final_metrics: dict[str, float] = {}  # the last evaluation's figures (for the model card)

    def build_model(self, auto_class, pretrained: str, **config_kwargs):
        """The model this module trains and exports: `pretrained` loaded with `auto_class`, in training mode
        (from_pretrained returns eval mode, and Lightning keeps sub-module modes as they are). Distillation builds its
        student here (lightning_modules/distill_base.py)."""
        return load_for_training(auto_class, pretrained, **config_kwargs)

    def input_option(self) -> str:
        """The option that chose `self.model`, named by the checks in `setup`."""
        return f"model.init_args.pretrained={self.pretrained}"

    def setup(self, stage: str) -> None:
        # Before the first batch: inputs longer than the model's positions, or token ids beyond its embeddings,
        # would otherwise fail deep inside the model ("index out of range").
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        check_data_fits_model(self.model, datamodule, self.input_option())

    def configure_optimizers(self):
        hp = self.hparams
        return configure_adamw_with_warmup(self, self.model, lr=hp.lr, weight_decay=hp.weight_decay, betas=hp.betas,
                                           eps=hp.eps, warmup_steps=hp.warmup_steps, warmup_ratio=hp.warmup_ratio)

    def prediction_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        return Path(self.trainer.default_root_dir) / "predictions"

    def model_card_info(self) -> dict[str, Any]:
        hp = self.hparams
        recipe = {"base_model": self.pretrained, "lr": hp.lr, "weight_decay": hp.weight_decay,
                  "warmup_ratio": hp.warmup_ratio, "warmup_steps": hp.warmup_steps, "betas": list(hp.betas),
                  "eps": hp.eps}
        data = {}
        trainer = self._trainer
        if trainer is not None:
            recipe.update(max_epochs=trainer.max_epochs, max_steps=trainer.max_steps,
                          accumulate_grad_batches=trainer.accumulate_grad_batches, precision=str(trainer.precision))
            datamodule = getattr(trainer, "datamodule", None)
            for key in ("batch_size", "max_seq_length", "doc_stride", "max_train_samples", "max_eval_samples",
                        "train_file", "eval_file", "articles", "max_samples"):
                if datamodule is not None and getattr(datamodule, key, None) is not None:
                    data[key] = getattr(datamodule, key)
        return {"task": self.task_name, "recipe": recipe, "data": data,
                "metrics": {k: round(float(v), 4) for k, v in self.final_metrics.items()}}


class SequenceClassificationModule(FineTuningModule):
    """Sequence classification (GLUE, your own labelled files) or regression (STS-B) on any encoder checkpoint.

    `task_name`, `num_labels`, `label_names`, `label_display_names`, `is_regression` come from the DataModule
    (train.py links them). The display names (else the label names) become `config.id2label`/`label2id`, so an export
    carries them; prediction files keep `label_names`, the data's own strings. Metrics (in percent) follow the
    task's spec in `datamodules.glue`; `val/score` is the task's main score (the mean of its pair where two, and over
    both MNLI dev sets), the one to select checkpoints on. `predict` writes the GLUE submission TSV(s).

    A checkpoint whose classification head was trained on another task (its `config.finetuning_task`, model card or
    labels say so: `models.task_head`) starts from a new head, with one log line; the same task keeps the trained head.
    The task is written into `config.finetuning_task` of the model, so checkpoints and exports record it.

    The arguments FineTuningModule documents (pretrained, the optimiser's, output_dir) are not repeated here.

    Args:
        num_labels: classes (1 for regression), linked from the DataModule.
        label_names: the label strings in class order, linked from the DataModule (None for regression).
        label_display_names: readable names of the classes for `id2label`, linked from the DataModule (None: the
            label names).
        is_regression: a regression task (STS-B: one output, MSE loss), linked from the DataModule.
        classifier_dropout: dropout before the classification head (None: the checkpoint's hidden dropout).
        metric_names: the metrics to compute, overriding the task spec (e.g. for your own task).
        main_metrics: the metrics whose mean is `val/score`, overriding the task spec (None: all of metric_names).
    """

    def __init__(self, pretrained: str, task_name: str = "custom", num_labels: int = 2,
                 label_names: list[str] | None = None, label_display_names: list[str] | None = None,
                 is_regression: bool = False, lr: float = 5e-5,
                 weight_decay: float = 0.01, warmup_ratio: float = 0.1, warmup_steps: int | None = None,
                 betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-6, classifier_dropout: float | None = None,
                 metric_names: list[str] | None = None, main_metrics: list[str] | None = None,
                 output_dir: str | None = None):
        super().__init__(pretrained, task_name, lr, weight_decay, warmup_ratio, warmup_steps, betas, eps, output_dir)
        if is_regression:
            num_labels = 1
        for name, names in (("label_names", label_names), ("label_display_names", label_display_names)):
            if names is not None and len(names) != num_labels:
                raise ValueError(f"{name} {names} has {len(names)} entries but num_labels is {num_labels}")
        # The data facts are left out of hparams: the DataModule's hparams hold its raw arguments under the same names
        # (e.g. label_names None = "infer"), and Lightning refuses to log two differing values for one key; and
        # LightningCLI stores links this module has no argument for (vocab_size), which `--ckpt_path` would pass back.
        # train.py links them again, and the checkpoint's `hf_model` config keeps num_labels/id2label/problem_type.
        self.save_hyperparameters(ignore=list(DATA_FACTS))
        self.num_labels, self.label_names, self.is_regression = num_labels, label_names, is_regression

        config_kwargs = {"num_labels": num_labels,
                         "problem_type": "regression" if is_regression else "single_label_classification"}
        names = label_display_names or label_names
        if names:
            config_kwargs["id2label"] = dict(enumerate(names))
            config_kwargs["label2id"] = {name: i for i, name in enumerate(names)}
        if classifier_dropout is not None:
            config_kwargs["classifier_dropout"] = classifier_dropout
        self.model = self.load_classifier(pretrained, **config_kwargs)

        spec_metrics, self.eval_set_names = glue_task_metrics(task_name, is_regression, num_labels)
        self.metric_names = metric_names or spec_metrics
        # GLUE convention: a task with two figures (MRPC/QQP F1 + accuracy, STS-B Pearson + Spearman) scores their mean
        self.main_metrics = main_metrics or self.metric_names
        # One metric collection per evaluation set (MNLI: matched, mismatched), for validation and for test.
        self.val_metrics = nn.ModuleList(self._metrics("val", name) for name in self.eval_set_names)
        self.test_metrics = nn.ModuleList(self._metrics("test", name) for name in self.eval_set_names)
        # the evaluation loss per set, weighted by examples (exact across processes with unequal shards)
        self.val_losses = nn.ModuleList(MeanMetric() for _ in self.eval_set_names)
        self.test_losses = nn.ModuleList(MeanMetric() for _ in self.eval_set_names)
        self._predictions: list[dict] = []

    # The argument that names the checkpoint __init__ loads, and what a head trained on another task gets there:
    # "new" (fine-tuning: start the task from a new head) or "refuse" (a distillation teacher must know the task).
    pretrained_option, other_task_head = "pretrained", "new"

    def other_task_reason(self, path: str, num_labels: int, id2label: dict | None) -> str | None:
        """Why the checkpoint at `path` holds a classification head trained on another task than this module's, or
        None (see models/task_head.py). The task's labels go by the names in `id2label` or the data's own."""
        names = [list(id2label.values()) if id2label else None, self.label_names]
        return other_task_reason(load_config(path), resolve_model_path(path), self.task_name, num_labels, names)

    def new_head(self, model: nn.Module, path: str, reason: str) -> None:
        """Re-initialise `model`'s classification head (loaded from `path`), saying why in one log line."""
        replaced = reinitialise_head(model)
        rank_zero_info(f"{path}: {reason}; fine-tuning on {canonical_task(self.task_name)} starts from a new "
                       f"classification head ({', '.join(replaced)})")

    def load_classifier(self, path: str, **config_kwargs) -> nn.Module:
        """`path` as a *ForSequenceClassification in training mode, with a new head when the checkpoint's was trained
        on another task; the task is recorded in `config.finetuning_task`."""
        reason = self.other_task_reason(path, config_kwargs["num_labels"], config_kwargs.get("id2label"))
        if reason and self.other_task_head == "refuse":
            raise ValueError(f"model.init_args.{self.pretrained_option}={path}: {reason}; give a model fine-tuned on "
                             f"{canonical_task(self.task_name)}")
        if reason:  # a head of another shape (2 labels -> 3) is replaced too, instead of failing to load
            config_kwargs["ignore_mismatched_sizes"] = True
        model = self.build_model(AutoModelForSequenceClassification, path, **config_kwargs)
        if reason:
            self.new_head(model, path, reason)
        model.config.finetuning_task = canonical_task(self.task_name)
        return model

    def model_card_info(self) -> dict[str, Any]:
        info = super().model_card_info()
        if self.task_name != "custom":
            info["datasets"] = [hub_dataset(self.task_name)[0]]  # nyu-mll/glue
        return info

    def _metrics(self, stage: str, set_name: str):
        prefix = f"{stage}/" if len(self.eval_set_names) == 1 else f"{stage}/{set_name}/"
        return glue_metric_collection(self.metric_names, max(self.num_labels, 2), prefix=prefix)

    def classify(self, batch: dict, labels: torch.Tensor | None = None, model: nn.Module | None = None):
        """The output of `model` (default: the trained model) on a batch, its last layer run at the first token only
        (all the head reads: models/last_layer.py, exact, ~14% fewer FLOPs for 6 layers); `.loss` too when `labels`
        are given."""
        model = self.model if model is None else model
        with last_layer_at(model):
            return model(**model_inputs(model, batch), labels=labels)

    def forward(self, batch: dict) -> torch.Tensor:
        """Logits (B, num_labels); (B, 1) for regression."""
        return self.classify(batch).logits

    def training_step(self, batch, batch_idx):
        loss = self.classify(batch, batch["labels"]).loss
        # synced: under DDP the logged figure is the mean over all ranks' examples (equal batch sizes per step)
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)
        return loss

    # ---- evaluation ------------------------------------------------------------------------------------------------
    def _eval_step(self, stage: str, collections: nn.ModuleList, batch, dataloader_idx: int):
        if dataloader_idx >= len(collections):
            raise ValueError(f"{stage} dataloader {dataloader_idx} but task {self.task_name!r} has "
                             f"{len(collections)} evaluation sets {self.eval_set_names}")
        logits = self(batch)
        if "labels" not in batch or (not self.is_regression and bool((batch["labels"] < 0).all())):
            return  # an unlabelled set (GLUE test files): nothing to score
        loss = self._loss(logits, batch["labels"])
        getattr(self, f"{stage}_losses")[dataloader_idx].update(loss.detach(), weight=len(logits))
        collections[dataloader_idx].update(predictions_from_logits(logits, self.is_regression), batch["labels"])

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.is_regression:
            return nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float())
        return nn.functional.cross_entropy(logits.float(), labels)

    def _eval_epoch_end(self, stage: str, collections: nn.ModuleList):
        losses = getattr(self, f"{stage}_losses")
        for i, loss in enumerate(losses):  # the keys `self.log(..., add_dataloader_idx=True)` would give
            key = f"{stage}/loss" if len(losses) == 1 else f"{stage}/loss/dataloader_idx_{i}"
            log_epoch_means(self, {key: loss}, add_dataloader_idx=False)
        values = {}
        for collection in collections:
            # nothing to compute for an unlabelled set; decided by all processes together, since compute() syncs
            if true_on_any_rank(self, any(m.update_count for m in collection.values())):
                values.update({k: 100.0 * float(v) for k, v in collection.compute().items()})
            collection.reset()
        if not values:
            return
        score = main_score(values, self.main_metrics)
        self.log_dict(values, sync_dist=False)  # already reduced across processes by torchmetrics
        self.log(f"{stage}/score", score, prog_bar=True)
        self.final_metrics = {**values, f"{stage}/score": score}

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._eval_step("val", self.val_metrics, batch, dataloader_idx)

    def on_validation_epoch_end(self):
        self._eval_epoch_end("val", self.val_metrics)

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._eval_step("test", self.test_metrics, batch, dataloader_idx)

    def on_test_epoch_end(self):
        self._eval_epoch_end("test", self.test_metrics)

    # ---- prediction files ------------------------------------------------------------------------------------------
    def on_predict_epoch_start(self):
        self._predictions = []

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0):
        preds = predictions_from_logits(self(batch), self.is_regression)
        self._predictions.append({"dataloader_idx": dataloader_idx, "example_index": batch["example_index"].cpu(),
                                  "predictions": preds.float().cpu() if self.is_regression else preds.cpu()})
        return preds

    def on_predict_epoch_end(self):
        outputs = [o for rank_outputs in gather_objects(self._predictions) for o in rank_outputs]
        self._predictions = []
        if not self.trainer.is_global_zero:
            return
        for idx in sorted({o["dataloader_idx"] for o in outputs}):
            chosen = [o for o in outputs if o["dataloader_idx"] == idx]
            indices = torch.cat([o["example_index"] for o in chosen]).tolist()
            preds = torch.cat([o["predictions"] for o in chosen]).tolist()
            # one prediction per example index (the DataModules' samplers never repeat one; other samplers may)
            unique = dict(zip(indices, preds))
            path = self.prediction_dir() / glue_submission_filename(self.task_name, idx)
            write_glue_predictions(path, list(unique), list(unique.values()), self.label_names, self.is_regression)
            print(f"wrote {len(unique)} predictions to {path}")
